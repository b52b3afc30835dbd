//! `mesh-proxy`: the mesh's sidecar.
//!
//! A connection's path, outermost first:
//! 1. a listener accepts it (transparent outbound 15001 / inbound 15006 with
//!    `SO_ORIGINAL_DST`, or an explicit listener bound to one service port);
//! 2. the original destination is mapped to a service in O(1);
//! 3. the protocol is detected from the first bytes (or known: opaque ports);
//! 4. HTTP/1 passes the smuggling guard, then hyper; HTTP/2 goes to hyper;
//!    TLS and anything else are proxied as opaque TCP;
//! 5. each HTTP request is routed and balanced on its own (`http_proxy`).
#![forbid(unsafe_code)]

pub mod admin;
pub mod app_health;
pub mod authz;
pub mod balance;
pub mod body;
pub mod cli;
pub mod detect;
pub mod discovery;
pub mod gateway;
pub mod h1_guard;
pub mod http_proxy;
pub mod identity;
pub mod inbound;
pub mod init;
pub mod io;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod pool;
pub mod resilience;
pub mod routing;
pub mod tcp;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testca;
pub mod tls;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mesh_proto::config::v1 as pb;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use cli::RunArgs;
use http_proxy::{ConnInfo, Direction, Target};
use model::{ConfigError, MeshState};

/// How often the config file is checked for changes. Kubernetes updates
/// mounted ConfigMaps by swapping a symlink, which file-notify APIs miss;
/// polling one small file is cheap and always right.
pub const CONFIG_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Time allowed to read an HTTP/1 request head (slowloris protection). hyper
/// starts the clock when it starts waiting for a head, so it also closes
/// keep-alive connections idle this long. 30 s: well above any real client's
/// pause between requests, short enough that a slowloris client holds its
/// (small, see `docs/reliability.md`) connection state briefly.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Concurrent streams a downstream HTTP/2 connection may open.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;

/// Streams a downstream HTTP/2 client may reset before the proxy has even
/// accepted them, before the connection is closed with GOAWAY
/// (ENHANCE_YOUR_CALM): the "rapid reset" flood of CVE-2023-44487, where
/// each such stream would cost an upstream request. 20 (h2's own default):
/// a real client cancels streams it has waited on, not ones it opened a
/// moment ago by the thousand.
pub const H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;

/// Streams the proxy may reset because of a downstream client's protocol
/// errors before it closes the connection (the "MadeYouReset" pattern,
/// CVE-2025-8671: malformed frames that make the server reset, to the same
/// effect as a rapid reset). 1024 (h2's default, as many as
/// [`MAX_CONCURRENT_STREAMS`]): far more than a buggy client produces.
pub const H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// Response data the proxy buffers per downstream HTTP/2 stream before it
/// stops pulling from the upstream (h2's default is 400 KiB). A client that
/// opens every stream and never reads makes the proxy hold at most
/// `MAX_CONCURRENT_STREAMS` times this (64 MiB) on its connection; 64 KiB is
/// four full frames, enough to keep the socket busy.
pub const H2_MAX_SEND_BUF_SIZE: usize = 64 * 1024;

/// The workload this proxy belongs to.
#[derive(Debug, Clone, Default)]
pub struct LocalWorkload {
    pub workload: String,
    pub namespace: String,
    pub pod: String,
    pub labels: Option<BTreeMap<String, String>>,
}

/// State shared by every connection and the admin endpoints.
pub struct Shared {
    pub state: ArcSwap<MeshState>,
    pub metrics: metrics::Metrics,
    pub pool: pool::Pool,
    pub tls: Arc<tls::MeshTls>,
    pub local: LocalWorkload,
    pub access_log: bool,
    pub ready: AtomicBool,
    pub draining: AtomicBool,
    /// Retry budgets by destination service; they outlive config reloads.
    pub retry_budgets: std::sync::Mutex<HashMap<String, Arc<policy::RetryBudget>>>,
    /// Resolved host names of DNS-resolved services.
    pub dns: std::sync::Mutex<model::DnsCache>,
    /// Wakes the resolver when a config names hosts it has not resolved.
    pub dns_wake: tokio::sync::Notify,
    /// Wakes the gateway listeners when a config was applied.
    pub config_applied: tokio::sync::Notify,
    /// Ready only with a workload certificate (the CA is configured).
    pub needs_identity: bool,
    /// The app's kubelet probes, run on the kubelet's behalf.
    pub app_probes: app_health::AppProbes,
    /// Time allowed for an HTTP/1 request head, and for an idle keep-alive
    /// connection ([`HEADER_READ_TIMEOUT`] unless `--header-read-timeout`).
    pub header_read_timeout: Duration,
}

impl Shared {
    /// The retry budget of `service`.
    pub fn retry_budget(&self, service: &str) -> Arc<policy::RetryBudget> {
        let mut budgets = self.retry_budgets.lock().unwrap_or_else(|e| e.into_inner());
        budgets.entry(service.to_string()).or_default().clone()
    }

    /// Compiles and applies a new config; the old one stays on error.
    pub fn apply(&self, config: pb::ProxyConfig) -> Result<(), ConfigError> {
        let current = self.state.load_full();
        let dns = self.dns.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match MeshState::compile_with_dns(config, Some(&current), &dns) {
            Ok(next) => {
                if next.dns_names.iter().any(|n| !dns.0.contains_key(n)) {
                    self.dns_wake.notify_one();
                }
                let next = Arc::new(next);
                let live: std::collections::HashSet<SocketAddr> =
                    next.endpoints().map(|e| e.addr).collect();
                self.pool.retain(|a| live.contains(a));
                tracing::info!(version = %next.version, services = next.services().len(), "config applied");
                self.state.store(next);
                self.config_applied.notify_one();
                self.ready.store(true, Ordering::Relaxed);
                self.metrics
                    .config_reloads
                    .with_label_values(&["applied"])
                    .inc();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                self.metrics.config_version.set(now);
                Ok(())
            }
            Err(e) => {
                tracing::warn!("config rejected, keeping the last good one: {e}");
                self.metrics
                    .config_reloads
                    .with_label_values(&["rejected"])
                    .inc();
                Err(e)
            }
        }
    }
}

/// A started proxy: its bound addresses and a handle to stop it.
pub struct Running {
    pub shared: Arc<Shared>,
    pub outbound_addr: Option<SocketAddr>,
    pub inbound_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// Bound addresses of the `--listen` listeners, in order.
    pub explicit_addrs: Vec<SocketAddr>,
    shutdown: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting, drains in-flight work (up to the drain timeout) and waits.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.done.await;
    }

    /// A token that, when cancelled, starts the drain.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the proxy has stopped.
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// Binds every listener and starts serving. Port 0 binds an ephemeral port.
pub async fn start(args: RunArgs) -> anyhow::Result<Running> {
    let initial = match &args.config {
        Some(path) => Some(load_file(path)?),
        None => None,
    };
    let mesh_tls = Arc::new(tls::MeshTls::default());
    if let (Some(cert), Some(key), Some(bundle)) =
        (&args.identity_cert, &args.identity_key, &args.trust_bundle)
    {
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        let material = tls::TlsMaterial::from_pem(&read(cert)?, &read(key)?, &read(bundle)?)
            .map_err(|e| anyhow::anyhow!("workload certificate {}: {e}", cert.display()))?;
        mesh_tls.set(material)?;
    }
    let app_probes = app_health::AppProbes::parse(&args.app_probes, &args.pod_ip)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let keepalive = (!args.keepalive_interval.is_zero()).then_some(pool::Keepalive {
        interval: args.keepalive_interval,
        timeout: args.keepalive_timeout,
    });
    let shared = Arc::new(Shared {
        state: ArcSwap::from_pointee(MeshState::empty()),
        metrics: metrics::Metrics::new(),
        pool: pool::Pool::new(mesh_tls.clone(), keepalive),
        tls: mesh_tls,
        local: LocalWorkload {
            workload: args.workload.clone(),
            namespace: args.namespace.clone(),
            pod: args.pod.clone(),
            labels: None,
        },
        access_log: args.access_log,
        ready: AtomicBool::new(false),
        draining: AtomicBool::new(false),
        retry_budgets: Default::default(),
        dns: Default::default(),
        dns_wake: tokio::sync::Notify::new(),
        config_applied: tokio::sync::Notify::new(),
        needs_identity: args.ca_addr.is_some(),
        app_probes,
        header_read_timeout: args.header_read_timeout,
    });
    if let Some(cfg) = initial {
        shared.apply(cfg).map_err(|e| {
            anyhow::anyhow!(
                "{}: {e}",
                args.config
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            )
        })?;
    }

    let shutdown = CancellationToken::new();
    // The admin and metrics endpoints outlive the drain, so that /ready can
    // say "draining" and the last requests are still counted.
    let stopped = CancellationToken::new();
    let tracker = TaskTracker::new();

    let admin = TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("binding admin {}", args.admin_addr))?;
    let metrics_l = TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding metrics {}", args.metrics_addr))?;
    let admin_addr = admin.local_addr()?;
    let metrics_addr = metrics_l.local_addr()?;
    for (l, router) in [
        (admin, admin::admin_router(shared.clone())),
        (metrics_l, admin::metrics_router(shared.clone())),
    ] {
        let stop = stopped.clone();
        tokio::spawn(async move {
            let _ = axum::serve(l, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
    }

    let mut outbound_addr = None;
    let mut inbound_addr = None;
    if !args.no_transparent {
        let l = TcpListener::bind(args.outbound_addr)
            .await
            .with_context(|| format!("binding outbound {}", args.outbound_addr))?;
        outbound_addr = Some(l.local_addr()?);
        spawn_accept(l, Listener::Outbound, &shared, &shutdown, &tracker);
    }
    if !args.no_transparent || args.inbound_forward.is_some() {
        let l = TcpListener::bind(args.inbound_addr)
            .await
            .with_context(|| format!("binding inbound {}", args.inbound_addr))?;
        inbound_addr = Some(l.local_addr()?);
        spawn_accept(
            l,
            Listener::Inbound {
                forward: args.inbound_forward,
            },
            &shared,
            &shutdown,
            &tracker,
        );
    }
    let mut explicit_addrs = Vec::new();
    for e in &args.listen {
        let l = TcpListener::bind(e.bind)
            .await
            .with_context(|| format!("binding explicit listener {}", e.bind))?;
        explicit_addrs.push(l.local_addr()?);
        spawn_accept(
            l,
            Listener::Explicit {
                service: e.service.clone().into(),
                port: e.port,
            },
            &shared,
            &shutdown,
            &tracker,
        );
    }
    if args.config.is_none() && args.controller_addr.is_none() {
        // Nothing to wait for: an unconfigured proxy passes traffic through.
        shared.ready.store(true, Ordering::Relaxed);
    }
    if let Some(path) = args.config.clone() {
        tokio::spawn(watch_file(path, shared.clone(), shutdown.clone()));
    }
    tokio::spawn(resolve_dns(shared.clone(), shutdown.clone()));
    tokio::spawn(gateway::run(
        shared.clone(),
        gateway::GatewaySettings {
            bind_ip: args.gateway_bind_ip,
            credentials_dir: args.gateway_credentials_dir.clone(),
        },
        shutdown.clone(),
        tracker.clone(),
    ));
    if let Some(e) = shared.tls.expiry_unix() {
        shared.metrics.identity_expiry.set(e);
    }
    if let Some(d) = args.discovery_config()? {
        tokio::spawn(discovery::run(shared.clone(), d, stopped.clone()));
    }
    if let Some(ca) = args.ca_client_config()? {
        let shared2 = shared.clone();
        tokio::spawn(identity::run(
            ca,
            shared.tls.clone(),
            move |tls| {
                if let Some(e) = tls.expiry_unix() {
                    shared2.metrics.identity_expiry.set(e);
                }
            },
            stopped.clone(),
        ));
    }

    let drain_timeout = args.drain_timeout;
    let done = {
        let shutdown = shutdown.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            shared.draining.store(true, Ordering::Relaxed);
            tracker.close();
            tracing::info!(connections = tracker.len(), ?drain_timeout, "draining");
            if tokio::time::timeout(drain_timeout, tracker.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    connections = tracker.len(),
                    "drain deadline passed; closing"
                );
            }
            stopped.cancel();
        })
    };
    Ok(Running {
        shared,
        outbound_addr,
        inbound_addr,
        admin_addr,
        metrics_addr,
        explicit_addrs,
        shutdown,
        done,
    })
}

/// Runs the proxy until SIGTERM or SIGINT, then drains and returns.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let running = start(args).await?;
    tracing::info!(
        outbound = ?running.outbound_addr,
        inbound = ?running.inbound_addr,
        listen = ?running.explicit_addrs,
        admin = %running.admin_addr,
        metrics = %running.metrics_addr,
        "mesh-proxy started"
    );
    let token = running.shutdown_token();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
    token.cancel();
    running.wait().await;
    Ok(())
}

fn load_file(path: &PathBuf) -> anyhow::Result<pb::ProxyConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    MeshState::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

async fn watch_file(path: PathBuf, shared: Arc<Shared>, stop: CancellationToken) {
    let mut last = std::fs::read(&path).ok();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(CONFIG_POLL_INTERVAL) => {}
        }
        let Ok(now) = std::fs::read(&path) else {
            continue;
        };
        if last.as_ref() == Some(&now) {
            continue;
        }
        last = Some(now.clone());
        match String::from_utf8(now)
            .map_err(|e| ConfigError::Parse(e.to_string()))
            .and_then(|t| MeshState::parse(&t))
        {
            Ok(cfg) => {
                let _ = shared.apply(cfg);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), "config not reloaded: {e}");
                shared
                    .metrics
                    .config_reloads
                    .with_label_values(&["rejected"])
                    .inc();
            }
        }
    }
}

#[derive(Clone)]
enum Listener {
    Outbound,
    Inbound { forward: Option<SocketAddr> },
    Explicit { service: Arc<str>, port: u16 },
}

fn spawn_accept(
    l: TcpListener,
    kind: Listener,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) {
    let shared = shared.clone();
    let shutdown = shutdown.clone();
    let tracker = tracker.clone();
    tokio::spawn(async move {
        loop {
            let (stream, client) = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = l.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let shared = shared.clone();
            let kind = kind.clone();
            let stop = shutdown.clone();
            tracker.spawn(async move {
                if let Err(e) = serve_connection(shared, kind, stream, client, stop).await {
                    tracing::debug!(%client, "connection ended with error: {e}");
                }
            });
        }
    });
}

async fn serve_connection(
    shared: Arc<Shared>,
    kind: Listener,
    mut stream: TcpStream,
    client: SocketAddr,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let local = stream.local_addr()?;
    let state = shared.state.load_full();
    let target = match kind {
        Listener::Inbound { forward } => {
            drop(state);
            let dst = io::original_dst(&stream).ok().filter(|d| *d != local);
            let Some(dst) = dst.or(forward) else {
                tracing::debug!(%client, "inbound connection with no destination; closing");
                return Ok(());
            };
            // Boxed, as every stage after detection below: a connection
            // still being detected (or idle) holds only the small
            // detection state, not room for the largest stage.
            return Box::pin(inbound::serve(shared, stream, client, dst, stop)).await;
        }
        Listener::Explicit { service, port } => Target::Service {
            name: service,
            port,
        },
        Listener::Outbound => {
            let dst = io::original_dst(&stream).unwrap_or(local);
            if dst == local {
                // Not redirected (someone dialled 15001 directly): serving it
                // would loop back into ourselves.
                tracing::debug!(%client, "outbound connection without an original destination; closing");
                return Ok(());
            }
            match state.service_by_addr(dst) {
                Some(idx) => Target::Service {
                    name: state.service(idx).name.as_str().into(),
                    port: dst.port(),
                },
                None => {
                    // Unknown destinations pass through untouched, as plain TCP.
                    let name = dst.ip().to_string();
                    return Box::pin(tcp::proxy(
                        &shared,
                        stream,
                        Default::default(),
                        dst,
                        None,
                        pool::DEFAULT_CONNECT_TIMEOUT,
                        tcp::TcpLabels {
                            direction: Direction::Outbound.as_str(),
                            destination_service: &name,
                            destination_workload: "unknown",
                        },
                    ))
                    .await;
                }
            }
        }
    };
    let Target::Service { name, port } = &target else {
        unreachable!("outbound targets are services")
    };
    let declared = state
        .service_by_name(name)
        .and_then(|i| state.service(i).protocol(*port));
    let opaque = state.settings.opaque_ports.contains(port)
        || matches!(declared, Some(model::Protocol::Tcp | model::Protocol::Tls));
    let http_declared = matches!(
        declared,
        Some(model::Protocol::Http1 | model::Protocol::Http2 | model::Protocol::Grpc)
    );
    let (proto, prefix) = if opaque {
        (detect::Protocol::Opaque, Default::default())
    } else if http_declared {
        // A port declared HTTP speaks HTTP: detection only tells HTTP/1
        // from HTTP/2, and a client slow to send its first bytes (a busy
        // node) is waited for up to the header read timeout rather than
        // passed through as opaque TCP, which would skip routing, retries
        // and policy for the whole connection. Bytes that are not HTTP get
        // HTTP/1's 400. TLS passes as TLS.
        match detect::detect(&mut stream, shared.header_read_timeout).await? {
            (detect::Protocol::Opaque, buf) => (detect::Protocol::Http1, buf),
            other => other,
        }
    } else {
        detect::detect(&mut stream, state.settings.detect_timeout).await?
    };
    drop(state);
    let info = Arc::new(ConnInfo {
        target,
        client,
        direction: Direction::Outbound,
        peer: None,
    });
    let io = io::PrefixedIo::new(prefix, stream);
    match proto {
        detect::Protocol::Http1 => Box::pin(serve_http1(shared, io, info, stop)).await,
        detect::Protocol::Http2 => Box::pin(serve_http2(shared, io, info, stop)).await,
        detect::Protocol::Tls | detect::Protocol::Opaque => {
            let Target::Service { name, port } = &info.target else {
                unreachable!()
            };
            let picked = pick_tcp_endpoint(&shared.state.load_full(), name, *port, client);
            let Some((upstream, workload, identity, connect_timeout)) = picked else {
                tracing::debug!(service = %name, port, "no endpoint for TCP connection");
                return Ok(());
            };
            let (prefix, stream) = io.into_parts();
            Box::pin(tcp::proxy(
                &shared,
                stream,
                prefix,
                upstream,
                identity.as_deref(),
                connect_timeout,
                tcp::TcpLabels {
                    direction: Direction::Outbound.as_str(),
                    destination_service: name,
                    destination_workload: &workload,
                },
            ))
            .await
        }
    }
}

/// The per-request service of a downstream connection.
fn proxy_service(
    shared: Arc<Shared>,
    info: Arc<ConnInfo>,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<body::ProxyBody>,
    Error = std::convert::Infallible,
    Future = impl std::future::Future<
        Output = Result<http::Response<body::ProxyBody>, std::convert::Infallible>,
    > + Send,
> + Clone {
    service_fn(move |req| {
        let shared = shared.clone();
        let info = info.clone();
        async move { Ok::<_, std::convert::Infallible>(http_proxy::handle(shared, info, req).await) }
    })
}

/// Drives a connection until it ends; when the proxy drains, tells it to
/// finish gracefully (HTTP/1 closes after the current request, HTTP/2 sends
/// GOAWAY) and waits for that.
async fn until_drained<C, E>(
    conn: C,
    stop: CancellationToken,
    graceful_shutdown: impl FnOnce(std::pin::Pin<&mut C>),
) -> std::io::Result<()>
where
    C: std::future::Future<Output = Result<(), E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r.map_err(std::io::Error::other),
        _ = stop.cancelled() => {
            graceful_shutdown(conn.as_mut());
            conn.await.map_err(std::io::Error::other)
        }
    }
}

/// Serves HTTP/1 on `io` (after the smuggling guard) until it closes or the
/// proxy drains.
pub(crate) async fn serve_http1<I>(
    shared: Arc<Shared>,
    io: I,
    info: Arc<ConnInfo>,
    stop: CancellationToken,
) -> std::io::Result<()>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let direction = info.direction;
    let shared2 = shared.clone();
    let io = h1_guard::GuardedIo::new(io).on_reject(move |r| {
        shared2
            .metrics
            .refused
            .with_label_values(&[direction.as_str(), &r.status.to_string()])
            .inc();
    });
    let header_read_timeout = shared.header_read_timeout;
    let svc = proxy_service(shared, info);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(h1_guard::MAX_HEAD_BYTES * 2)
        // The guard's count, so that the two never disagree (hyper's own
        // default is 100).
        .max_headers(h1_guard::MAX_HEADERS)
        .serve_connection(TokioIo::new(io), svc);
    until_drained(conn, stop, |c| c.graceful_shutdown()).await
}

/// Serves HTTP/2 on `io` until it closes or the proxy drains.
pub(crate) async fn serve_http2<I>(
    shared: Arc<Shared>,
    io: I,
    info: Arc<ConnInfo>,
    stop: CancellationToken,
) -> std::io::Result<()>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let keepalive = shared.pool.keepalive();
    let svc = proxy_service(shared, info);
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    if let Some(k) = keepalive {
        // A client gone without closing (its node died) is found and its
        // connection freed.
        builder
            .keep_alive_interval(k.interval)
            .keep_alive_timeout(k.timeout);
    }
    let conn = builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESET_STREAMS)
        .max_send_buf_size(H2_MAX_SEND_BUF_SIZE)
        // The same 64 KiB as an HTTP/1 head (RFC 9113 6.5.2 size: names,
        // values and 32 bytes each); bigger lists are refused by h2.
        .max_header_list_size(h1_guard::MAX_HEAD_BYTES as u32)
        .initial_stream_window_size(pool::H2_STREAM_WINDOW)
        .initial_connection_window_size(pool::H2_CONN_WINDOW)
        .serve_connection(TokioIo::new(io), svc);
    until_drained(conn, stop, |c| c.graceful_shutdown()).await
}

/// Picks the endpoint for an opaque TCP connection: TCP routes by port with
/// weights, then the service's balancer for that port.
fn pick_tcp_endpoint(
    state: &MeshState,
    name: &str,
    port: u16,
    client: SocketAddr,
) -> Option<(SocketAddr, String, Option<Arc<str>>, Duration)> {
    let idx = state.service_by_name(name)?;
    let svc = state.service(idx);
    let (dest, subset, dport) = match svc
        .tcp_routes
        .iter()
        .find(|r| r.port == 0 || r.port == port)
        .and_then(|r| r.pick())
    {
        Some(d) => (
            d.service,
            d.subset.as_str(),
            if d.port == 0 { port } else { d.port },
        ),
        None => (idx, "", port),
    };
    let ctx = balance::PickContext {
        headers: None,
        source_ip: Some(client.ip()),
    };
    let backend = state.backend(dest, subset, dport)?;
    let ep = backend.pick(&ctx, |_| true)?;
    Some((
        ep.addr,
        ep.workload.clone(),
        ep.identity.clone(),
        backend.conn.connect_timeout,
    ))
}

/// How often host names of DNS-resolved services are resolved again.
pub const DNS_REFRESH: std::time::Duration = std::time::Duration::from_secs(30);

/// Keeps the addresses of DNS-resolved services (ServiceEntry
/// `resolution: DNS`) fresh: resolves every name the config needs when it
/// appears and every [`DNS_REFRESH`], and recompiles the config when an
/// answer changes. IPv4 answers are preferred when a name has both (most
/// clusters route IPv4 only); a failed lookup keeps the last answer.
async fn resolve_dns(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let names = shared.state.load().dns_names.clone();
        if !names.is_empty() {
            let mut cache = shared.dns.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let before = cache.clone();
            cache.0.retain(|n, _| names.contains(n));
            for name in &names {
                let lookup = tokio::net::lookup_host((name.as_str(), 0));
                match tokio::time::timeout(std::time::Duration::from_secs(5), lookup).await {
                    Ok(Ok(addrs)) => {
                        let ips: Vec<std::net::IpAddr> = addrs.map(|a| a.ip()).collect();
                        let v4: Vec<_> = ips.iter().copied().filter(|i| i.is_ipv4()).collect();
                        let mut chosen = if v4.is_empty() { ips } else { v4 };
                        chosen.sort();
                        chosen.dedup();
                        cache.0.insert(name.clone(), chosen);
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(%name, "resolving: {e}; keeping the last answer");
                        // Known (maybe with no address), so that applying
                        // the config does not wake this loop again at once.
                        cache.0.entry(name.clone()).or_default();
                    }
                    Err(_) => {
                        tracing::warn!(%name, "resolving timed out; keeping the last answer");
                        cache.0.entry(name.clone()).or_default();
                    }
                }
            }
            if cache != before {
                *shared.dns.lock().unwrap_or_else(|e| e.into_inner()) = cache;
                let config = shared.state.load().config.clone();
                if let Err(e) = shared.apply(config) {
                    tracing::warn!("recompiling with new DNS answers: {e}");
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = shared.dns_wake.notified() => {}
            _ = tokio::time::sleep(DNS_REFRESH) => {}
        }
    }
}
