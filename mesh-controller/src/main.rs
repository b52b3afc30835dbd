fn main() {
    // Filled in by issue #5; until then the binary says so instead of pretending.
    eprintln!("mesh-controller: not implemented yet (issue #5)");
    std::process::exit(2);
}
