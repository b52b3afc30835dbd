use clap::Parser;

fn main() -> std::process::ExitCode {
    mesh_proxy::cli::main(mesh_proxy::cli::Cli::parse())
}
