//! `mesh-controller` command line.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::identity::{IdentitySource, ServerTls};
use crate::push::Debounce;
use crate::run::ControllerConfig;
use crate::server::StreamConfig;
use crate::source::dir::DirSource;
use crate::source::Source;
use crate::translate::{Export, TranslateConfig};

/// The mesh's control plane: watches Kubernetes (or a directory of YAML in
/// local mode), turns Services, EndpointSlices, Pods and the mesh resources
/// into per-proxy configuration, and streams it to every proxy over mTLS
/// (port 15010). Writes each mesh resource's `Accepted` condition.
#[derive(Debug, Parser)]
#[command(name = "mesh-controller", version, about, long_about = None)]
pub struct Cli {
    /// Local mode: read services, endpoints and mesh resources from this
    /// directory (re-read on change) instead of the Kubernetes API.
    #[arg(long, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// Config stream (gRPC over mTLS) listen address.
    #[arg(long, default_value = "0.0.0.0:15010")]
    pub listen: String,
    /// Admin listen address: /metrics, /ready, /debug/syncz,
    /// /debug/config_dump, /debug/status.
    #[arg(long, default_value = "0.0.0.0:15014")]
    pub admin: String,
    /// Trust domain of SPIFFE IDs.
    #[arg(long, default_value = mesh_api::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Namespace whose unselective PeerAuthentication and
    /// AuthorizationPolicy apply to the whole mesh.
    #[arg(long, default_value = mesh_api::INSTALL_NAMESPACE)]
    pub root_namespace: String,
    /// Which namespaces see a Service that has no `mesh.dev/export-to`
    /// annotation (on it or its namespace): `.` (its own namespace only),
    /// `*` (all), or namespaces separated by commas.
    #[arg(long, default_value = ".")]
    pub default_export_to: String,
    /// Build once no change arrived for this long.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    pub debounce_quiet: Duration,
    /// Build at the latest this long after the first change of a burst.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub debounce_max: Duration,
    /// Proxy views computed and sent at once.
    #[arg(long, default_value_t = 64)]
    pub max_concurrent_sends: usize,
    /// Config streams one pod may have open at once (0: no limit). A proxy
    /// holds one; a reconnect may overlap the old stream until keepalive
    /// ends it. More are refused with RESOURCE_EXHAUSTED; the proxy retries.
    #[arg(long, default_value_t = crate::limits::DEFAULT_MAX_STREAMS_PER_POD)]
    pub max_streams_per_pod: usize,
    /// Config streams one SPIFFE identity (ServiceAccount) may have open,
    /// all its pods together (0: no limit). Raise it above the replica count
    /// of the largest Deployment sharing one ServiceAccount.
    #[arg(long, default_value_t = crate::limits::DEFAULT_MAX_STREAMS_PER_IDENTITY)]
    pub max_streams_per_identity: usize,
    /// Local mode: how often the config directory is checked for changes.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// The controller's certificate chain (PEM), instead of asking mesh-ca.
    #[arg(long, value_name = "PEM", requires_all = ["tls_key", "trust_bundle"], conflicts_with = "ca_addr")]
    pub tls_cert: Option<PathBuf>,
    /// Its key (PKCS#8 PEM).
    #[arg(long, value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// Roots proxies' certificates must chain to (PEM).
    #[arg(long, value_name = "PEM")]
    pub trust_bundle: Option<PathBuf>,
    /// mesh-ca address to get the controller's certificate from.
    #[arg(long, default_value = mesh_api::svid::CA_ADDRESS)]
    pub ca_addr: String,
    /// Roots the CA's serving certificate chains to.
    #[arg(long, default_value = "/var/run/secrets/mesh/root-cert.pem")]
    pub ca_root: PathBuf,
    /// TLS name the CA's serving certificate must carry.
    #[arg(long, default_value = "mesh-ca.mesh-system.svc")]
    pub ca_server_name: String,
    /// ServiceAccount token (audience mesh-ca) proving the controller's identity.
    #[arg(long, default_value = "/var/run/secrets/tokens/mesh-ca-token")]
    pub ca_token_file: PathBuf,
    /// Namespace and ServiceAccount the controller runs as (its SPIFFE ID).
    #[arg(long, env = "POD_NAMESPACE", default_value = mesh_api::INSTALL_NAMESPACE)]
    pub namespace: String,
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "mesh-controller")]
    pub service_account: String,
    /// Holder identity in the status-writer Lease (default: pod name).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    mesh_api::parse_duration(s).map_err(|e| e.to_string())
}

/// Logs as JSON lines when `MESH_LOG_FORMAT=json`, text otherwise.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if std::env::var("MESH_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

impl Cli {
    fn identity(&self) -> anyhow::Result<IdentitySource> {
        if let (Some(cert), Some(key), Some(bundle)) =
            (&self.tls_cert, &self.tls_key, &self.trust_bundle)
        {
            return Ok(IdentitySource::Files {
                cert: cert.clone(),
                key: key.clone(),
                trust_bundle: bundle.clone(),
            });
        }
        let id = mesh_api::WorkloadIdentity::new(
            &self.trust_domain,
            &self.namespace,
            &self.service_account,
        )?;
        Ok(IdentitySource::Ca {
            addr: self.ca_addr.clone(),
            server_name: self.ca_server_name.clone(),
            ca_root: self.ca_root.clone(),
            token_file: self.ca_token_file.clone(),
            identity: id.uri(),
            ttl: Duration::from_secs(mesh_api::svid::DEFAULT_SVID_TTL_SECS),
        })
    }

    fn config(&self) -> ControllerConfig {
        ControllerConfig {
            translate: TranslateConfig {
                trust_domain: self.trust_domain.clone(),
                root_namespace: self.root_namespace.clone(),
                default_export: Export::parse(&self.default_export_to),
            },
            debounce: Debounce {
                quiet: self.debounce_quiet,
                max_wait: self.debounce_max,
            },
            stream: StreamConfig {
                trust_domain: self.trust_domain.clone(),
                require_pod: self.config_dir.is_none(),
                max_concurrent_sends: self.max_concurrent_sends,
            },
        }
    }
}

/// Runs the controller until SIGTERM/ctrl-c or a fatal error.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            tracing::info!("stopping");
            stop.cancel();
        });
    }
    let source: Arc<dyn Source> = match &cli.config_dir {
        Some(dir) => Arc::new(DirSource::new(dir, cli.poll_interval)),
        None => kube_source(&cli, stop.clone()).await?,
    };
    let tls = ServerTls::start(cli.identity()?, stop.clone()).await?;
    let grpc = tokio::net::TcpListener::bind(&cli.listen)
        .await
        .map_err(|e| anyhow::anyhow!("listening on {}: {e}", cli.listen))?;
    let admin = tokio::net::TcpListener::bind(&cli.admin)
        .await
        .map_err(|e| anyhow::anyhow!("listening on {}: {e}", cli.admin))?;
    let limits = crate::limits::StreamLimits {
        per_pod: cli.max_streams_per_pod,
        per_identity: cli.max_streams_per_identity,
    };
    let mut running = crate::run::start_with_limits(
        source,
        tls,
        grpc,
        Some(admin),
        cli.config(),
        limits,
        stop.clone(),
    )
    .await?;
    running.wait().await;
    stop.cancel();
    running.shutdown().await;
    Ok(())
}

async fn kube_source(cli: &Cli, stop: CancellationToken) -> anyhow::Result<Arc<dyn Source>> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| anyhow::anyhow!("connecting to the Kubernetes API: {e}"))?;
    let identity = cli
        .pod_name
        .clone()
        .unwrap_or_else(crate::leader::default_identity);
    let leader = crate::leader::spawn(
        client.clone(),
        crate::leader::LeaseConfig::new(&cli.namespace, identity),
        stop,
    );
    Ok(Arc::new(crate::source::kube::KubeSource::new(
        client,
        Some(leader),
    )))
}
