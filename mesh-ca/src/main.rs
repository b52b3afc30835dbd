//! `mesh-ca`: the mesh's certificate authority (see `mesh-ca --help`).
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = mesh_ca::cli::Cli::parse();
    mesh_ca::cli::init_tracing();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mesh-ca: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(mesh_ca::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-ca: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
