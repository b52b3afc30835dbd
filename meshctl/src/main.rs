//! `meshctl`: the mesh's command line.
#![forbid(unsafe_code)]

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use meshctl::install::{self, InstallArgs, UninstallArgs};

/// The long help's tail: conventions shared by the cluster commands.
const AFTER_LONG_HELP: &str = "\
Cluster commands (install, upgrade, uninstall) take --kubeconfig FILE and --context NAME \
(default: $KUBECONFIG, ~/.kube/config, or the in-cluster ServiceAccount) and -o table|yaml|json.

Exit codes:
  0  success
  1  the command failed, or refused (e.g. uninstall while pods still run the proxy)
  2  bad flags or arguments
  3  no cluster configured or reachable (the message names the kubeconfig and server)";

/// The mesh's command line: install the control plane into a cluster, or
/// run a whole mesh on this machine.
#[derive(Debug, Parser)]
#[command(name = "meshctl", version, about, after_long_help = AFTER_LONG_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(about = meshctl::demo::ABOUT, long_about = meshctl::demo::LONG_ABOUT)]
    Demo(meshctl::demo::DemoArgs),
    #[command(about = install::INSTALL_ABOUT, long_about = install::INSTALL_LONG_ABOUT, after_long_help = AFTER_LONG_HELP)]
    Install(InstallArgs),
    #[command(about = install::UPGRADE_ABOUT, long_about = install::UPGRADE_LONG_ABOUT, after_long_help = AFTER_LONG_HELP)]
    Upgrade(InstallArgs),
    #[command(about = install::UNINSTALL_ABOUT, long_about = install::UNINSTALL_LONG_ABOUT, after_long_help = AFTER_LONG_HELP)]
    Uninstall(UninstallArgs),
    #[command(about = meshctl::inject::INJECT_ABOUT, long_about = meshctl::inject::INJECT_LONG_ABOUT)]
    Inject(meshctl::inject::InjectArgs),
    #[command(about = meshctl::check::CHECK_ABOUT, long_about = meshctl::check::CHECK_LONG_ABOUT, after_long_help = AFTER_LONG_HELP)]
    Check(meshctl::check::CheckArgs),
    #[command(about = meshctl::views::PROXY_STATUS_ABOUT, long_about = meshctl::views::PROXY_STATUS_LONG_ABOUT, after_long_help = AFTER_LONG_HELP)]
    ProxyStatus(meshctl::views::ProxyStatusArgs),
    #[command(about = meshctl::views::PROXY_CONFIG_ABOUT, long_about = meshctl::views::PROXY_CONFIG_LONG_ABOUT, after_long_help = AFTER_LONG_HELP)]
    ProxyConfig(meshctl::views::ProxyConfigArgs),
    #[command(about = meshctl::views::VERSION_ABOUT, after_long_help = AFTER_LONG_HELP)]
    Version(meshctl::views::VersionArgs),
    #[command(about = meshctl::route::ABOUT, long_about = meshctl::route::LONG_ABOUT, after_long_help = AFTER_LONG_HELP)]
    Route(meshctl::route::RouteArgs),
    #[command(about = meshctl::canary::ABOUT, long_about = meshctl::canary::LONG_ABOUT, after_long_help = AFTER_LONG_HELP)]
    Canary(meshctl::canary::CanaryArgs),
    #[command(about = meshctl::stat::ABOUT, long_about = meshctl::stat::LONG_ABOUT, after_long_help = AFTER_LONG_HELP)]
    Stat(meshctl::stat::StatArgs),
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
            let _ = writeln!(
                std::io::stderr(),
                "meshctl: cannot start the async runtime: {e}"
            );
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Demo(args) => return rt.block_on(meshctl::demo::run(args)),
        Command::Install(args) => rt.block_on(install::run_install(args, false)),
        Command::Upgrade(args) => rt.block_on(install::run_install(args, true)),
        Command::Uninstall(args) => rt.block_on(install::uninstall::run_uninstall(args)),
        Command::Inject(args) => rt.block_on(meshctl::inject::run_inject(args)),
        Command::Check(args) => rt.block_on(meshctl::check::run_check(args)),
        Command::ProxyStatus(args) => rt.block_on(meshctl::views::run_proxy_status(args)),
        Command::ProxyConfig(args) => rt.block_on(meshctl::views::run_proxy_config(args)),
        Command::Version(args) => rt.block_on(meshctl::views::run_version(args)),
        Command::Route(args) => {
            return meshctl::route::exit(rt.block_on(meshctl::route::run(args)))
        }
        Command::Canary(args) => {
            return meshctl::route::exit(rt.block_on(meshctl::canary::run(args)))
        }
        Command::Stat(args) => return meshctl::route::exit(rt.block_on(meshctl::stat::run(args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "meshctl: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
