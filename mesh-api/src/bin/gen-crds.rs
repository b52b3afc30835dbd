//! Writes the mesh CRDs, generated from the `mesh-api` types, to `deploy/crds/`.
//!
//! Run: `cargo run -p mesh-api --bin gen-crds` (add `-- --check` to only report
//! whether the files are up to date, exiting 1 when not).

use std::process::ExitCode;

fn main() -> ExitCode {
    let dir = mesh_api::crds::default_dir();
    let check_only = std::env::args().skip(1).any(|a| a == "--check");
    if check_only {
        return match mesh_api::crds::stale_files(&dir) {
            Ok(drift) if drift.is_clean() => ExitCode::SUCCESS,
            Ok(drift) => {
                eprintln!(
                    "{} is stale: {drift:?}; run {}",
                    dir.display(),
                    mesh_api::crds::REGENERATE_COMMAND
                );
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("gen-crds: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match mesh_api::crds::write_files(&dir) {
        Ok(files) => {
            for f in files {
                println!("wrote {}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gen-crds: {e}");
            ExitCode::FAILURE
        }
    }
}
