#![forbid(unsafe_code)]
use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = mesh_controller::cli::Cli::parse();
    mesh_controller::cli::init_tracing();
    if let Err(e) = mesh_controller::cli::run(cli).await {
        eprintln!("mesh-controller: {e:#}");
        std::process::exit(1);
    }
}
