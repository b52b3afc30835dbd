//! The `mesh-ca` command line: `mesh-ca serve` and the root rotation steps.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::auth::{KubeTokenReview, StaticTokens, TokenAuthenticator};
use crate::authority::{
    generate_root, issue_intermediate, same_cert, split_pem_certs, Authority, PluginCa,
};
use crate::config::{parse_duration, TtlPolicy, MAINTENANCE_INTERVAL, PUBLISH_INTERVAL};
use crate::metrics::serve_metrics;
use crate::publish::BundlePublisher;
use crate::server::{serve, ServerConfig};
use crate::store::CaStore;

/// The mesh's certificate authority: signs short-lived SPIFFE X.509
/// certificates for workloads that prove their ServiceAccount with a token.
#[derive(Debug, Parser)]
#[command(name = "mesh-ca", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the CA: gRPC Sign over TLS, metrics, trust bundle publication.
    Serve(Box<ServeArgs>),
    /// Root rotation, one step at a time (see docs/ca.md): stage → wait →
    /// activate → wait → retire.
    Root {
        /// Where the CA is kept.
        #[command(flatten)]
        store: StoreArgs,
        /// The step.
        #[command(subcommand)]
        step: RootStep,
    },
}

/// A root rotation step.
#[derive(Debug, Subcommand)]
pub enum RootStep {
    /// Add a new root to the trust bundle (generated, or --cert/--key);
    /// leaves are still signed by the old root.
    Stage {
        /// New root certificate (PEM); generated when absent.
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// New root key (PKCS#8 PEM).
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
    },
    /// Sign with the staged root: new intermediate from it; the old root
    /// stays in the bundle.
    Activate,
    /// Drop every root but the signing one from the trust bundle.
    Retire,
}

/// Where the CA keeps its keys.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Local mode: keep the CA in this directory (0600 files).
    #[arg(long, value_name = "DIR", conflicts_with = "kube", global = true)]
    pub local_dir: Option<PathBuf>,
    /// Kube mode: keep the CA in Secret mesh-ca in mesh-system (uses the
    /// in-cluster config or KUBECONFIG).
    #[arg(long, global = true)]
    pub kube: bool,
}

/// `mesh-ca serve` flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where the CA is kept.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Local mode: the bootstrap token file (YAML/JSON map of token →
    /// {namespace, serviceAccount}); kube mode uses TokenReview instead.
    #[arg(long, value_name = "FILE", conflicts_with = "kube")]
    pub tokens_file: Option<PathBuf>,
    /// Trust domain of issued SPIFFE IDs.
    #[arg(long, default_value = mesh_api::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// gRPC (TLS) listen address.
    #[arg(long, default_value = "0.0.0.0:15012")]
    pub listen: SocketAddr,
    /// Prometheus /metrics listen address.
    #[arg(long, default_value = "0.0.0.0:15014")]
    pub metrics: SocketAddr,
    /// Longest leaf lifetime; longer requests are clamped (up to 1 year; above is refused).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub max_ttl: Duration,
    /// Leaf lifetime when the request asks for 0.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub default_ttl: Duration,
    /// Plug-in CA certificate (a root, or an intermediate with --plugin-chain).
    #[arg(long, value_name = "PEM", requires = "plugin_key")]
    pub plugin_cert: Option<PathBuf>,
    /// Plug-in CA key (PKCS#8 PEM).
    #[arg(long, value_name = "PEM", requires = "plugin_cert")]
    pub plugin_key: Option<PathBuf>,
    /// For a plug-in intermediate: the certificates above it, its root last.
    #[arg(long, value_name = "PEM", requires = "plugin_cert")]
    pub plugin_chain: Option<PathBuf>,
    /// Extra DNS names of the serving certificate (repeatable).
    #[arg(long = "serving-dns", value_name = "NAME")]
    pub serving_dns: Vec<String>,
    /// Extra IP addresses of the serving certificate (repeatable).
    #[arg(long = "serving-ip", value_name = "IP")]
    pub serving_ip: Vec<IpAddr>,
    /// Per-identity signings per second: a token bucket per ServiceAccount
    /// identity; a request over it is refused with RESOURCE_EXHAUSTED and a
    /// retry hint, without delaying other identities. A proxy signs once per
    /// half-life, so only a looping client meets it.
    #[arg(long, default_value_t = crate::config::DEFAULT_RATE_PER_SEC)]
    pub rate: f64,
    /// Per-identity burst: signings an identity may make at once (the pods of
    /// a Deployment share one identity and may all start together).
    #[arg(long, default_value_t = crate::config::DEFAULT_BURST)]
    pub burst: u32,
    /// Local mode: also write the trust bundle here (default DIR/trust-bundle.pem).
    #[arg(long, value_name = "FILE")]
    pub bundle_file: Option<PathBuf>,
}

/// Logs as JSON lines when `MESH_LOG_FORMAT=json`, text otherwise; level from `RUST_LOG`.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("MESH_LOG_FORMAT").as_deref() == Ok("json") {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}

async fn store_from(args: &StoreArgs) -> Result<(CaStore, Option<kube::Client>)> {
    match (&args.local_dir, args.kube) {
        (Some(dir), false) => Ok((CaStore::Local(dir.clone()), None)),
        (None, true) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let client = kube::Client::try_default()
                .await
                .context("kube mode: no cluster config (in-cluster or KUBECONFIG)")?;
            Ok((CaStore::kube(client.clone()), Some(client)))
        }
        _ => bail!("choose where the CA lives: --local-dir DIR or --kube"),
    }
}

fn read(path: &PathBuf) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Runs the command.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => run_serve(*args).await,
        Command::Root { store, step } => run_root(&store, step).await,
    }
}

async fn run_serve(args: ServeArgs) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    mesh_api::WorkloadIdentity::new(&args.trust_domain, "ns", "sa")
        .with_context(|| format!("--trust-domain {:?}", args.trust_domain))?;
    if args.max_ttl.is_zero() || args.max_ttl > crate::config::ABSURD_TTL {
        bail!("--max-ttl must be between 1s and 365d");
    }
    let (store, client) = store_from(&args.store).await?;
    let authenticator: Arc<dyn TokenAuthenticator> = match (&client, &args.tokens_file) {
        // One TokenReview per token per AUTH_CACHE_TTL, however many requests.
        (Some(c), _) => Arc::new(crate::authcache::CachedAuthenticator::new(
            KubeTokenReview::new(c.clone(), mesh_api::CA_TOKEN_AUDIENCE),
        )),
        (None, Some(f)) => Arc::new(StaticTokens::from_file(f)?),
        (None, None) => bail!("local mode needs --tokens-file (the bootstrap token file)"),
    };
    let plugin = match (&args.plugin_cert, &args.plugin_key) {
        (Some(c), Some(k)) => Some(PluginCa {
            cert_pem: read(c)?,
            key_pem: read(k)?,
            chain_pem: args.plugin_chain.as_ref().map(read).transpose()?,
        }),
        _ => None,
    };
    let authority = Authority::load_or_create(&store, plugin.as_ref())
        .await
        .with_context(|| format!("loading the CA from {store:?}"))?;
    let config = ServerConfig {
        trust_domain: args.trust_domain.clone(),
        ttl: TtlPolicy {
            default_ttl: args.default_ttl,
            max_ttl: args.max_ttl,
        },
        rate_per_sec: args.rate,
        burst: args.burst,
        extra_dns_names: args.serving_dns.clone(),
        extra_ips: args.serving_ip.clone(),
    };
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics)
        .await
        .with_context(|| format!("binding --metrics {}", args.metrics))?;
    let metrics_task = serve_metrics(metrics_listener, authority.metrics().clone());
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding --listen {}", args.listen))?;
    let server = serve(listener, authority.clone(), authenticator, config).await?;

    let publisher = match (&client, &args.store.local_dir) {
        (Some(c), _) => BundlePublisher::Kube(c.clone()),
        (None, Some(dir)) => BundlePublisher::File(
            args.bundle_file
                .clone()
                .unwrap_or_else(|| dir.join(crate::store::TRUST_BUNDLE)),
        ),
        (None, None) => unreachable!("store_from checked the mode"),
    };
    // In local mode the bundle file is the store's own trust-bundle.pem by
    // default, which the store already writes; publishing is then a no-op.
    publisher.spawn(authority.clone(), PUBLISH_INTERVAL);
    {
        let authority = authority.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = authority.maintain(&store).await {
                    tracing::warn!(error = %e, "CA maintenance failed");
                }
            }
        });
    }
    tracing::info!(
        listen = %server.local_addr,
        metrics = %args.metrics,
        trust_domain = %args.trust_domain,
        "mesh-ca ready"
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = server.handle => r??,
        r = metrics_task => r??,
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        _ = term.recv() => tracing::info!("SIGTERM"),
    }
    Ok(())
}

async fn run_root(args: &StoreArgs, step: RootStep) -> Result<()> {
    let (store, _) = store_from(args).await?;
    let mut m = store
        .load()
        .await?
        .context("no CA in the store yet: run `mesh-ca serve` once first")?;
    match step {
        RootStep::Stage { cert, key } => {
            let (cert, key) = match (cert, key) {
                (Some(c), Some(k)) => (read(&c)?, read(&k)?),
                _ => generate_root()?,
            };
            let cert = split_pem_certs(&cert)?
                .pop()
                .context("--cert holds no certificate")?;
            // Check the pair by issuing (and throwing away) an intermediate.
            issue_intermediate(&cert, &key).context("staged root and key do not work together")?;
            if !m.trust_bundle_pem.iter().any(|b| same_cert(b, &cert)) {
                m.trust_bundle_pem.push(cert.clone());
            }
            m.staged_root = Some((cert, key));
            store.save(&m).await?;
            println!(
                "staged a new root: the trust bundle now has {} roots. Wait until every workload \
                 has the new bundle (one leaf lifetime), then run `mesh-ca root activate`.",
                m.trust_bundle_pem.len()
            );
        }
        RootStep::Activate => {
            let (cert, key) = m
                .staged_root
                .take()
                .context("no staged root: run `mesh-ca root stage` first")?;
            let (inter, inter_key) = issue_intermediate(&cert, &key)?;
            m.root_cert_pem = cert;
            m.root_key_pem = Some(key);
            m.intermediate_cert_pem = inter;
            m.intermediate_key_pem = inter_key;
            m.chain_pem.clear();
            Authority::from_material(m.clone())?;
            store.save(&m).await?;
            println!(
                "the new root signs now (running CAs pick it up within a minute). Wait until \
                 every leaf was re-issued (one leaf lifetime), then run `mesh-ca root retire`."
            );
        }
        RootStep::Retire => {
            let root = m.root_cert_pem.clone();
            let before = m.trust_bundle_pem.len();
            m.trust_bundle_pem.retain(|b| same_cert(b, &root));
            if m.trust_bundle_pem.is_empty() {
                m.trust_bundle_pem.push(root);
            }
            store.save(&m).await?;
            println!(
                "removed {} old root(s) from the trust bundle",
                before.saturating_sub(m.trust_bundle_pem.len())
            );
        }
    }
    Ok(())
}
