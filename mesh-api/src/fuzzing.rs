//! Support for the fuzz harnesses that live beside each parser: the kept
//! crashers under `fuzz/regressions/<target>/` are replayed by ordinary
//! `cargo test`, so a fixed crash stays fixed without a fuzzer in CI.

/// Runs `check` on every kept crasher of fuzz target `target` (files under
/// `fuzz/regressions/<target>/`, skipping dotfiles and the README).
///
/// # Panics
/// When the directory or a file can't be read, or `check` panics.
pub fn replay_regressions(target: &str, check: impl Fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if !name.starts_with('.') && !name.ends_with(".md") {
            let input = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("regression input {}: {e}", path.display()));
            check(&input);
        }
    }
}
