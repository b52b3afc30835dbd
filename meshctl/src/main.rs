fn main() {
    // Filled in by issue #8; until then the binary says so instead of pretending.
    eprintln!("meshctl: not implemented yet (issue #8)");
    std::process::exit(2);
}
