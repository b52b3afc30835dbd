fn main() {
    // Filled in by issue #7; until then the binary says so instead of pretending.
    eprintln!("mesh-injector: not implemented yet (issue #7)");
    std::process::exit(2);
}
