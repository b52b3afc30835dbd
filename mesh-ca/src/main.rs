fn main() {
    // Filled in by issue #4; until then the binary says so instead of pretending.
    eprintln!("mesh-ca: not implemented yet (issue #4)");
    std::process::exit(2);
}
