//! `mesh-injector`: the mutating admission webhook that injects the mesh
//! proxy into pods. A thin command line over the `mesh_injector` library.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mesh_injector::server::{self, tls::ReloadingCert, AdmissionHandler};
use mesh_injector::{InjectorConfig, NativeSidecar};

/// Mutating admission webhook that adds the mesh proxy to pods.
///
/// Examples:
///
///   # In the cluster (the Deployment `meshctl install` writes):
///   mesh-injector --config /etc/mesh-injector/config.yaml
///
///   # Locally, with a self-made certificate and no API server:
///   mesh-injector --listen 127.0.0.1:9443 --tls-cert tls.crt --tls-key tls.key --native-sidecar always
#[derive(Debug, Parser)]
#[command(name = "mesh-injector", version, verbatim_doc_comment)]
struct Cli {
    /// Address to serve HTTPS on.
    #[arg(long, env = "MESH_INJECTOR_LISTEN", default_value = "0.0.0.0:9443")]
    listen: SocketAddr,

    /// Serving certificate chain (PEM), from the Secret `mesh-injector-tls`;
    /// reloaded when it changes.
    #[arg(
        long,
        env = "MESH_INJECTOR_TLS_CERT",
        default_value = "/var/run/mesh/injector-tls/tls.crt"
    )]
    tls_cert: PathBuf,

    /// Serving key (PEM), from the same Secret.
    #[arg(
        long,
        env = "MESH_INJECTOR_TLS_KEY",
        default_value = "/var/run/mesh/injector-tls/tls.key"
    )]
    tls_key: PathBuf,

    /// Injector configuration (`config.yaml` of the ConfigMap
    /// `mesh-injector`); all defaults when the file does not exist.
    #[arg(
        long,
        env = "MESH_INJECTOR_CONFIG",
        default_value = "/etc/mesh-injector/config.yaml"
    )]
    config: PathBuf,

    /// Inject the proxy as a native sidecar: auto (ask the API server its
    /// version; 1.29 or later), always, or never. Overrides the config's
    /// `nativeSidecar`.
    #[arg(long, env = "MESH_INJECTOR_NATIVE_SIDECAR")]
    native_sidecar: Option<NativeSidecar>,

    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "MESH_INJECTOR_LOG", default_value = "info")]
    log: String,
}

/// Asks the API server whether it supports native sidecars; `false` with a
/// warning when it cannot be asked.
async fn cluster_supports_native_sidecars() -> bool {
    let ask = async {
        let client = kube::Client::try_default().await?;
        let v = client.apiserver_version().await?;
        Ok::<_, kube::Error>(v)
    };
    match tokio::time::timeout(Duration::from_secs(5), ask).await {
        Ok(Ok(v)) => {
            let yes = mesh_injector::supports_native_sidecars(&v.major, &v.minor);
            tracing::info!(version = %v.git_version, native_sidecars = yes, "API server version");
            yes
        }
        Ok(Err(e)) => {
            tracing::warn!("cannot ask the API server its version ({e}); injecting classic sidecars (set --native-sidecar to choose)");
            false
        }
        Err(_) => {
            tracing::warn!("the API server did not answer within 5 s; injecting classic sidecars (set --native-sidecar to choose)");
            false
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = InjectorConfig::load(&cli.config).context("injector configuration")?;
    if let Some(mode) = cli.native_sidecar {
        config.native_sidecar = mode;
    }
    let supported = match config.native_sidecar {
        NativeSidecar::Auto => cluster_supports_native_sidecars().await,
        NativeSidecar::Always => true,
        NativeSidecar::Never => false,
    };
    let cert =
        Arc::new(ReloadingCert::load(&cli.tls_cert, &cli.tls_key).context("serving certificate")?);
    let _reloader = cert.clone().spawn_reloader();
    let tls = server::tls::server_config(cert)?;
    let handler = Arc::new(AdmissionHandler::new(config, supported));
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    tracing::info!(
        listen = %cli.listen,
        native_sidecars = handler.config().native_sidecar.resolve(supported),
        proxy_image = %handler.config().proxy_image,
        "mesh-injector serving"
    );
    server::serve(listener, tls, server::router(handler), shutdown_signal()).await?;
    tracing::info!("mesh-injector stopped");
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // One crypto provider for every TLS user in the process (kube, ours).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mesh-injector: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-injector: {e:#}");
            ExitCode::FAILURE
        }
    }
}
