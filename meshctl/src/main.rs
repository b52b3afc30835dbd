//! `meshctl`: the mesh's command line.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The mesh's command line. For now it has one command, `demo`, which runs a
/// whole mesh on this machine; the cluster commands are not implemented yet.
#[derive(Debug, Parser)]
#[command(name = "meshctl", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(about = meshctl::demo::ABOUT, long_about = meshctl::demo::LONG_ABOUT)]
    Demo(meshctl::demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One thread: the demo's children are tied to it (they get SIGKILL if
    // meshctl dies), and nothing here needs more.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "meshctl: cannot start the async runtime: {e}"
            );
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Demo(args) => rt.block_on(meshctl::demo::run(args)),
    }
}
