//! Load generator / client for the e2e tests.
//!
//! `mesh-client http --url http://echo.ns.svc.cluster.local:8080/ -n 100`
//! `mesh-client grpc --url http://grpc-echo.ns:9090 -n 100 --concurrency 4`
//!
//! By default all requests go over ONE connection (HTTP) or ONE channel (gRPC);
//! `--connection-per-request` opens a new one for every request (what kube-proxy
//! balances). `--rate R` sends at a fixed rate instead of as fast as possible.
//! Prints one JSON object: counts per answering pod, successes, failures by
//! reason, and latency percentiles.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_testapps::echo::echo_client::EchoClient;
use mesh_testapps::echo::EchoRequest;
use mesh_testapps::{percentiles, Report};
use tokio::sync::Mutex;

#[derive(Parser)]
#[command(
    name = "mesh-client",
    about = "HTTP/gRPC load generator for mesh e2e tests"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// HTTP/1.1 (or h2c with --h2c) requests; the answering pod is read from the JSON body.
    Http(Common),
    /// gRPC calls to mesh.testapps.echo.v1.Echo/Echo.
    Grpc(Common),
}

#[derive(Args, Clone)]
struct Common {
    /// Target URL, e.g. http://echo.default.svc.cluster.local:8080/path
    #[arg(long)]
    url: String,
    /// Number of requests.
    #[arg(short = 'n', long, default_value_t = 100)]
    requests: u64,
    /// Requests per second (0 = as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Stop after this many seconds even if not all requests were sent (0 = no limit).
    #[arg(long, default_value_t = 0.0)]
    duration: f64,
    /// Requests in flight at once (HTTP/1.1 over one connection is always 1).
    #[arg(long, default_value_t = 1)]
    concurrency: u64,
    /// Open a new connection / channel for every request.
    #[arg(long)]
    connection_per_request: bool,
    /// Use HTTP/2 with prior knowledge (h2c) for `http` mode.
    #[arg(long)]
    h2c: bool,
    /// Extra request header `name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Before the run, retry single requests (not counted) for up to this many
    /// seconds until one succeeds, e.g. while Service rules are being programmed.
    #[arg(long, default_value_t = 0.0)]
    wait_ready: f64,
    /// Message (gRPC) sent in each request.
    #[arg(long, default_value = "hello")]
    message: String,
}

#[derive(Clone)]
enum Sender {
    H1(Arc<Mutex<http1::SendRequest<Empty<Bytes>>>>),
    H2(http2::SendRequest<Empty<Bytes>>),
    Grpc(EchoClient<tonic::transport::Channel>),
}

struct Shared {
    opts: Common,
    uri: Uri,
    next: AtomicU64,
    connections: AtomicU64,
    start: Instant,
}

async fn connect(sh: &Shared, grpc: bool) -> anyhow::Result<Sender> {
    sh.connections.fetch_add(1, Ordering::Relaxed);
    let timeout = Duration::from_secs_f64(sh.opts.timeout);
    if grpc {
        let ch = tonic::transport::Endpoint::from_shared(sh.opts.url.clone())?
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect()
            .await?;
        return Ok(Sender::Grpc(EchoClient::new(ch)));
    }
    let host = sh
        .uri
        .host()
        .ok_or_else(|| anyhow::anyhow!("url has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = sh.uri.port_u16().unwrap_or(80);
    let addr = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{host} did not resolve"))?;
    let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await??;
    tcp.set_nodelay(true)?;
    let io = TokioIo::new(tcp);
    if sh.opts.h2c {
        let (send, conn) = http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        Ok(Sender::H2(send))
    } else {
        let (send, conn) = http1::handshake(io).await?;
        tokio::spawn(conn);
        Ok(Sender::H1(Arc::new(Mutex::new(send))))
    }
}

/// One request; Ok(pod) or Err(reason).
async fn one(sh: &Shared, sender: &Sender) -> Result<String, String> {
    let timeout = Duration::from_secs_f64(sh.opts.timeout);
    match sender {
        Sender::Grpc(client) => {
            let mut client = client.clone();
            let mut req = tonic::Request::new(EchoRequest {
                message: sh.opts.message.clone(),
                ..Default::default()
            });
            for h in &sh.opts.headers {
                if let Some((k, v)) = h.split_once(':') {
                    if let (Ok(k), Ok(v)) = (
                        k.trim()
                            .to_ascii_lowercase()
                            .parse::<tonic::metadata::MetadataKey<tonic::metadata::Ascii>>(),
                        v.trim().parse(),
                    ) {
                        req.metadata_mut().insert(k, v);
                    }
                }
            }
            match tokio::time::timeout(timeout, client.echo(req)).await {
                Ok(Ok(r)) => Ok(r.into_inner().pod),
                Ok(Err(s)) => Err(format!("grpc {:?}", s.code())),
                Err(_) => Err("timeout".into()),
            }
        }
        Sender::H1(_) | Sender::H2(_) => {
            let mut b = Request::builder().method("GET");
            b = if matches!(sender, Sender::H2(_)) {
                b.uri(sh.uri.clone())
            } else {
                let pq = sh.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
                let authority = sh.uri.authority().map(|a| a.as_str()).unwrap_or("");
                b.uri(pq).header(http::header::HOST, authority)
            };
            for h in &sh.opts.headers {
                if let Some((k, v)) = h.split_once(':') {
                    b = b.header(k.trim(), v.trim());
                }
            }
            let req = b.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
            let fut = async {
                let resp = match sender {
                    Sender::H1(s) => {
                        let mut s = s.lock().await;
                        s.ready().await.map_err(|e| format!("connection: {e}"))?;
                        s.send_request(req).await
                    }
                    Sender::H2(s) => {
                        let mut s = s.clone();
                        s.ready().await.map_err(|e| format!("connection: {e}"))?;
                        s.send_request(req).await
                    }
                    Sender::Grpc(_) => unreachable!(),
                }
                .map_err(|e| format!("request: {e}"))?;
                let status = resp.status();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| format!("body: {e}"))?
                    .to_bytes();
                if !status.is_success() {
                    return Err(format!("status {}", status.as_u16()));
                }
                let v: serde_json::Value =
                    serde_json::from_slice(&body).map_err(|_| "non-JSON answer".to_string())?;
                Ok(v["pod"].as_str().unwrap_or("unknown").to_string())
            };
            match tokio::time::timeout(timeout, fut).await {
                Ok(r) => r,
                Err(_) => Err("timeout".into()),
            }
        }
    }
}

fn closed(sender: &Sender) -> bool {
    match sender {
        Sender::H1(s) => s.try_lock().map(|s| s.is_closed()).unwrap_or(false),
        Sender::H2(s) => s.is_closed(),
        Sender::Grpc(_) => false,
    }
}

async fn worker(
    sh: Arc<Shared>,
    shared_sender: Option<Sender>,
    grpc: bool,
    report: Arc<Mutex<(Report, Vec<f64>)>>,
) {
    let mut own: Option<Sender> = shared_sender.clone();
    loop {
        let i = sh.next.fetch_add(1, Ordering::Relaxed);
        if i >= sh.opts.requests {
            return;
        }
        if sh.opts.rate > 0.0 {
            let due = sh.start + Duration::from_secs_f64(i as f64 / sh.opts.rate);
            tokio::time::sleep_until(due.into()).await;
        }
        if sh.opts.duration > 0.0 && sh.start.elapsed().as_secs_f64() > sh.opts.duration {
            return;
        }
        let t0 = Instant::now();
        if sh.opts.connection_per_request || own.as_ref().is_none_or(closed) {
            own = match connect(&sh, grpc).await {
                Ok(s) => Some(s),
                Err(e) => {
                    report.lock().await.0.record_err(format!("connect: {e}"));
                    None
                }
            };
        }
        let Some(sender) = own.as_ref() else { continue };
        let r = one(&sh, sender).await;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        let mut g = report.lock().await;
        match r {
            Ok(pod) => {
                g.0.record_ok(&pod);
                g.1.push(ms);
            }
            Err(e) => g.0.record_err(e),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (opts, grpc) = match cli.mode {
        Mode::Http(c) => (c, false),
        Mode::Grpc(c) => (c, true),
    };
    let uri: Uri = opts.url.parse()?;
    let new_shared = || {
        Arc::new(Shared {
            opts: opts.clone(),
            uri: uri.clone(),
            next: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            start: Instant::now(),
        })
    };
    let report = Arc::new(Mutex::new((
        Report {
            mode: if grpc { "grpc" } else { "http" }.into(),
            target: opts.url.clone(),
            ..Default::default()
        },
        Vec::new(),
    )));
    if opts.wait_ready > 0.0 {
        let sh = new_shared();
        let end = Instant::now() + Duration::from_secs_f64(opts.wait_ready);
        loop {
            let ok = match connect(&sh, grpc).await {
                Ok(s) => one(&sh, &s).await.is_ok(),
                Err(_) => false,
            };
            if ok || Instant::now() > end {
                if !ok {
                    eprintln!("mesh-client: target not ready after {}s", opts.wait_ready);
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let sh = new_shared();
    // One shared connection unless each request gets its own. HTTP/1.1 cannot
    // multiplex, so it gets one lane.
    let lanes = if !grpc && !opts.h2c && !opts.connection_per_request {
        1
    } else {
        opts.concurrency.max(1)
    };
    let shared = if opts.connection_per_request {
        None
    } else {
        match connect(&sh, grpc).await {
            Ok(s) => Some(s),
            Err(e) => {
                report.lock().await.0.record_err(format!("connect: {e}"));
                None
            }
        }
    };
    // Tests wait for this line before they disturb the target.
    eprintln!("mesh-client: sending");
    let mut tasks = Vec::new();
    for _ in 0..lanes {
        tasks.push(tokio::spawn(worker(
            sh.clone(),
            shared.clone(),
            grpc,
            report.clone(),
        )));
    }
    for t in tasks {
        t.await?;
    }
    let mut g = report.lock().await;
    let (r, lat) = &mut *g;
    r.latency_ms = percentiles(lat);
    r.duration_s = sh.start.elapsed().as_secs_f64();
    r.connections = sh.connections.load(Ordering::Relaxed);
    println!("{}", serde_json::to_string(r)?);
    Ok(())
}
