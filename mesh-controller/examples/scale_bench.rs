//! Load generator of the controller scale benchmark (`bench/controller`).
//!
//! Writes a local-mode config directory (N namespaces × S services × E
//! endpoints, with their pods; the first X services of each namespace
//! exported to every namespace), starts the real `mesh-controller` binary on
//! it as a separate process, opens P mTLS config streams as simulated
//! proxies (one TLS connection each, client certificates from a mesh-ca
//! `Authority`, one per ServiceAccount; every response is ACKed at once,
//! as a proxy does), waits until every proxy ACKed its full config, then
//! changes one EndpointSlice file at a time (written aside, then renamed),
//! alternating between an exported service (every proxy affected) and a
//! namespace-private one (only that namespace's proxies), and measures for
//! each change the time to the last affected proxy ACKing the response
//! that carries the new endpoint: from the controller noticing the change
//! (its log line as it re-reads the directory), from the rename, and from
//! the snapshot's build. It also reads the controller's RSS and CPU from
//! /proc and its push-latency histogram from /metrics. Prints one JSON
//! object on stdout.
//!
//! ```text
//! scale_bench --controller target/release/mesh-controller [--namespaces 50]
//!     [--services-per-namespace 20] [--endpoints 10] [--exported-per-namespace 2]
//!     [--proxies 1000] [--changes 100] [--poll-interval 500ms] [--controller-cpu 1]
//!     [--gap-ms 300] [--wrap "heaptrack -o /tmp/ht"] [--keep-dir]
//! ```

use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use mesh_controller::testing;
use mesh_proto::config::v1::{
    config_discovery_client::ConfigDiscoveryClient, discovery_request, Ack, DiscoveryRequest,
    DiscoveryResponse, Hello,
};
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::mpsc;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone, Debug)]
struct Args {
    controller: PathBuf,
    namespaces: usize,
    services_per_namespace: usize,
    endpoints: usize,
    exported_per_namespace: usize,
    proxies: usize,
    changes: usize,
    poll_interval: Option<String>,
    controller_cpu: Option<String>,
    /// A command the controller runs under (profilers: `heaptrack`, `perf record -g --`).
    wrap: Vec<String>,
    /// Pause between changes (plus a random part up to one poll interval).
    gap: Duration,
    keep_dir: bool,
}

impl Args {
    fn parse() -> Result<Args, Error> {
        let mut a = Args {
            controller: PathBuf::from("target/release/mesh-controller"),
            namespaces: 50,
            services_per_namespace: 20,
            endpoints: 10,
            exported_per_namespace: 2,
            proxies: 1000,
            changes: 100,
            poll_interval: None,
            controller_cpu: None,
            wrap: Vec::new(),
            gap: Duration::from_millis(300),
            keep_dir: false,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            if flag == "--keep-dir" {
                a.keep_dir = true;
                continue;
            }
            let value = it.next().ok_or(format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--controller" => a.controller = value.into(),
                "--namespaces" => a.namespaces = value.parse()?,
                "--services-per-namespace" => a.services_per_namespace = value.parse()?,
                "--endpoints" => a.endpoints = value.parse()?,
                "--exported-per-namespace" => a.exported_per_namespace = value.parse()?,
                "--proxies" => a.proxies = value.parse()?,
                "--changes" => a.changes = value.parse()?,
                "--poll-interval" => a.poll_interval = Some(value),
                "--controller-cpu" => a.controller_cpu = Some(value),
                "--wrap" => a.wrap = value.split_whitespace().map(String::from).collect(),
                "--gap-ms" => a.gap = Duration::from_millis(value.parse()?),
                _ => return Err(format!("unknown flag {flag}").into()),
            }
        }
        if a.exported_per_namespace == 0 || a.exported_per_namespace >= a.services_per_namespace {
            return Err("need at least one exported and one private service per namespace".into());
        }
        Ok(a)
    }

    fn poll(&self) -> Duration {
        self.poll_interval
            .as_deref()
            .and_then(|p| mesh_api::parse_duration(p).ok())
            .unwrap_or(Duration::from_millis(500))
    }
}

// ---- the config directory ----

fn ns_name(n: usize) -> String {
    format!("team-{n:02}")
}

fn svc_name(s: usize) -> String {
    format!("svc-{s:02}")
}

fn pod_ip(n: usize, s: usize, e: usize) -> String {
    format!("10.{}.{}.{}", n, s, e + 1)
}

/// The address the `change`-th change gives the first endpoint.
fn marker_ip(change: usize) -> String {
    format!("10.255.{}.{}", change / 250, change % 250 + 1)
}

fn fqdn(n: usize, s: usize) -> String {
    format!("{}.{}.svc.cluster.local", svc_name(s), ns_name(n))
}

/// Writes `text` aside, then renames it over `path`; returns the instant
/// just before the rename (nothing can see the change before it).
fn write_atomic(path: &Path, text: &str) -> std::io::Result<Instant> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::write(&tmp, text)?;
    let at = Instant::now();
    std::fs::rename(&tmp, path)?;
    Ok(at)
}

fn service_yaml(a: &Args, n: usize, s: usize) -> String {
    let annotations = if s < a.exported_per_namespace {
        "  annotations: {mesh.dev/export-to: \"*\"}\n"
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {svc}\n  namespace: {ns}\n{annotations}spec:\n  selector: {{app: {svc}}}\n  ports:\n    - {{name: http, port: 80, targetPort: 8080, protocol: TCP}}\n    - {{name: grpc, port: 9090, targetPort: 9090, protocol: TCP, appProtocol: grpc}}\n",
        svc = svc_name(s),
        ns = ns_name(n),
    )
}

fn slice_yaml(a: &Args, n: usize, s: usize, first_ip: Option<&str>) -> String {
    let (ns, svc) = (ns_name(n), svc_name(s));
    let mut out = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {svc}-x7k2p\n  namespace: {ns}\n  labels: {{kubernetes.io/service-name: {svc}}}\naddressType: IPv4\nports:\n  - {{name: http, port: 8080, protocol: TCP}}\n  - {{name: grpc, port: 9090, protocol: TCP}}\nendpoints:\n"
    );
    for e in 0..a.endpoints {
        let ip = match (e, first_ip) {
            (0, Some(ip)) => ip.to_string(),
            _ => pod_ip(n, s, e),
        };
        out.push_str(&format!(
            "  - addresses: [{ip}]\n    conditions: {{ready: true}}\n    nodeName: node-{node}\n    targetRef: {{kind: Pod, namespace: {ns}, name: {svc}-{e}}}\n",
            node = (n + s + e) % 20,
        ));
    }
    out
}

fn pods_yaml(a: &Args, n: usize) -> String {
    let ns = ns_name(n);
    let mut out = String::new();
    for s in 0..a.services_per_namespace {
        let svc = svc_name(s);
        for e in 0..a.endpoints {
            let ip = pod_ip(n, s, e);
            out.push_str(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {svc}-{e}\n  namespace: {ns}\n  labels: {{app: {svc}, version: v1}}\nspec:\n  serviceAccountName: {svc}\n  containers:\n    - {{name: app, image: example/app:1}}\n    - {{name: mesh-proxy, image: mesh/proxy:1}}\nstatus:\n  podIP: {ip}\n  podIPs: [{{ip: {ip}}}]\n---\n"
            ));
        }
    }
    out
}

fn slice_path(dir: &Path, n: usize, s: usize) -> PathBuf {
    dir.join(ns_name(n))
        .join(format!("{}-slice.yaml", svc_name(s)))
}

fn write_config(a: &Args, dir: &Path) -> Result<(), Error> {
    let mut namespaces = String::new();
    for n in 0..a.namespaces {
        namespaces.push_str(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {}}}\n---\n",
            ns_name(n)
        ));
    }
    std::fs::write(dir.join("namespaces.yaml"), namespaces)?;
    std::fs::write(
        dir.join("mesh.yaml"),
        "apiVersion: security.mesh.dev/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: mesh-system}\nspec:\n  mtls: {mode: STRICT}\n",
    )?;
    for n in 0..a.namespaces {
        let nsdir = dir.join(ns_name(n));
        std::fs::create_dir_all(&nsdir)?;
        std::fs::write(nsdir.join("pods.yaml"), pods_yaml(a, n))?;
        for s in 0..a.services_per_namespace {
            std::fs::write(
                nsdir.join(format!("{}.yaml", svc_name(s))),
                service_yaml(a, n, s),
            )?;
            std::fs::write(slice_path(dir, n, s), slice_yaml(a, n, s, None))?;
        }
    }
    Ok(())
}

// ---- certificates ----

fn issue(ca: &mesh_ca::authority::Authority, ns: &str, sa: &str) -> testing::Issued {
    testing::issue(ns, sa, |id, csr| {
        let leaf = ca
            .sign(id, csr, Duration::from_secs(24 * 3600))
            .expect("signing a benchmark certificate");
        (leaf.cert_chain_pem, leaf.trust_bundle_pem)
    })
}

// ---- the simulated proxies ----

/// The change being measured: proxies look for `marker` among the
/// endpoints of `service`.
#[derive(Clone, Debug)]
struct Target {
    id: usize,
    service: String,
    marker: String,
}

#[derive(Clone, Debug)]
struct Hit {
    change: usize,
    proxy: usize,
    received: Instant,
    acked: Instant,
    version: String,
}

#[derive(Default)]
struct Shared {
    target: RwLock<Option<Target>>,
    hits: Mutex<Vec<Hit>>,
    /// Proxies that ACKed their first (full) response.
    synced: AtomicUsize,
    responses: AtomicU64,
    full_responses: AtomicU64,
    /// Streams that ended (errors are logged to stderr).
    ended: AtomicUsize,
    /// The measurement is over: streams end with the controller.
    stopping: std::sync::atomic::AtomicBool,
}

struct Proxy {
    index: usize,
    namespace: usize,
    service: usize,
    pod: usize,
}

async fn run_proxy(
    addr: SocketAddr,
    p: Proxy,
    config: Arc<rustls::ClientConfig>,
    shared: Arc<Shared>,
    opened: tokio::sync::oneshot::Sender<()>,
) {
    let r = async {
        let ch = testing::channel_with(addr, config).await?;
        let (tx, rx) = mpsc::channel(8);
        let sa = svc_name(p.service);
        tx.send(DiscoveryRequest {
            kind: Some(discovery_request::Kind::Hello(Hello {
                pod: format!("{sa}-{}", p.pod),
                namespace: ns_name(p.namespace),
                service_account: sa.clone(),
                ips: vec![pod_ip(p.namespace, p.service, p.pod)],
                proxy_version: "scale-bench".into(),
                resume_version: String::new(),
                labels: [
                    ("app".to_string(), sa.clone()),
                    ("version".into(), "v1".into()),
                ]
                .into_iter()
                .collect(),
            })),
        })
        .await?;
        let mut inbound = ConfigDiscoveryClient::new(ch)
            .max_decoding_message_size(64 << 20)
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let _ = opened.send(());
        let mut first = true;
        while let Some(resp) = inbound.message().await? {
            let received = Instant::now();
            let hit = shared
                .target
                .read()
                .ok()
                .and_then(|t| t.clone())
                .filter(|t| carries(&resp, t));
            tx.send(DiscoveryRequest {
                kind: Some(discovery_request::Kind::Ack(Ack {
                    version: resp.version.clone(),
                    nonce: resp.nonce.clone(),
                })),
            })
            .await?;
            let acked = Instant::now();
            shared.responses.fetch_add(1, Ordering::Relaxed);
            if resp.full {
                shared.full_responses.fetch_add(1, Ordering::Relaxed);
            }
            if first {
                first = false;
                shared.synced.fetch_add(1, Ordering::SeqCst);
            }
            if let Some(t) = hit {
                if let Ok(mut hits) = shared.hits.lock() {
                    hits.push(Hit {
                        change: t.id,
                        proxy: p.index,
                        received,
                        acked,
                        version: resp.version.clone(),
                    });
                }
            }
        }
        Ok::<_, Error>(())
    }
    .await;
    shared.ended.fetch_add(1, Ordering::SeqCst);
    if shared.stopping.load(Ordering::SeqCst) {
        return;
    }
    if let Err(e) = r {
        eprintln!("proxy {}: stream ended: {e}", p.index);
    }
}

fn carries(resp: &DiscoveryResponse, t: &Target) -> bool {
    resp.config.as_ref().is_some_and(|c| {
        c.services
            .iter()
            .any(|s| s.name == t.service && s.endpoints.iter().any(|e| e.address == t.marker))
    })
}

// ---- the controller process ----

#[derive(Clone, Debug)]
struct LogEvent {
    at: Instant,
    message: String,
    fields: Value,
}

struct Controller {
    child: Child,
    pid: u32,
    grpc: SocketAddr,
    admin: SocketAddr,
    log: Arc<Mutex<Vec<LogEvent>>>,
}

fn free_port() -> Result<SocketAddr, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

impl Controller {
    fn start(a: &Args, dir: &Path, tls: &Path) -> Result<Controller, Error> {
        let (grpc, admin) = (free_port()?, free_port()?);
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if let Some(cpu) = &a.controller_cpu {
            argv.extend(["taskset".into(), "-c".into(), cpu.into()]);
        }
        argv.extend(a.wrap.iter().map(Into::into));
        argv.push(a.controller.clone().into());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        cmd.arg("--config-dir")
            .arg(dir)
            .args(["--listen", &grpc.to_string(), "--admin", &admin.to_string()])
            .arg("--tls-cert")
            .arg(tls.join("cert.pem"))
            .arg("--tls-key")
            .arg(tls.join("key.pem"))
            .arg("--trust-bundle")
            .arg(tls.join("bundle.pem"));
        if let Some(p) = &a.poll_interval {
            cmd.args(["--poll-interval", p]);
        }
        cmd.env("MESH_LOG_FORMAT", "json")
            .env("RUST_LOG", "info,mesh_controller::push=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn()?;
        let pid = child.id();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().ok_or("no stdout")?;
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { return };
                    let at = Instant::now();
                    let Ok(v) = serde_json::from_str::<Value>(&line) else {
                        eprintln!("controller: {line}");
                        continue;
                    };
                    let level = v["level"].as_str().unwrap_or("");
                    let message = v["fields"]["message"].as_str().unwrap_or("").to_string();
                    if level == "WARN" || level == "ERROR" {
                        eprintln!("controller: {line}");
                    }
                    if message == "built snapshot" || message == "reading the config directory" {
                        if let Ok(mut l) = log.lock() {
                            l.push(LogEvent {
                                at,
                                message,
                                fields: v["fields"].clone(),
                            });
                        }
                    }
                }
            });
        }
        Ok(Controller {
            child,
            pid,
            grpc,
            admin,
            log,
        })
    }

    fn get(&self, path: &str) -> Result<String, Error> {
        let mut s = std::net::TcpStream::connect(self.admin)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.admin
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let (head, body) = out.split_once("\r\n\r\n").ok_or("no HTTP response")?;
        if !head.starts_with("HTTP/1.1 200") {
            return Err(format!("GET {path}: {}", head.lines().next().unwrap_or("")).into());
        }
        Ok(body.to_string())
    }

    fn status(&self) -> Result<ProcStatus, Error> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let kb = |key: &str| -> f64 {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        // Fields after the command name (which may contain spaces).
        let rest: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, r)| r.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| {
            rest.get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // utime and stime are fields 14 and 15 of stat; 12 and 13 after the name.
        let cpu = (ticks(11) + ticks(12)) / clock_ticks();
        Ok(ProcStatus {
            rss_mb: kb("VmRSS:") / 1024.0,
            hwm_mb: kb("VmHWM:") / 1024.0,
            anon_mb: kb("RssAnon:") / 1024.0,
            threads: kb("Threads:") as u64,
            cpu_seconds: cpu,
        })
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

#[derive(Clone, Copy, Debug)]
struct ProcStatus {
    rss_mb: f64,
    hwm_mb: f64,
    anon_mb: f64,
    threads: u64,
    cpu_seconds: f64,
}

impl ProcStatus {
    fn json(&self) -> Value {
        json!({
            "rss_mb": round1(self.rss_mb),
            "peak_rss_mb": round1(self.hwm_mb),
            "anon_rss_mb": round1(self.anon_mb),
            "threads": self.threads,
            "cpu_seconds": round3(self.cpu_seconds),
        })
    }
}

// ---- metrics ----

/// A Prometheus histogram: cumulative bucket counts by upper bound.
#[derive(Clone, Debug, Default)]
struct Histogram {
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

fn histogram(text: &str, name: &str) -> Histogram {
    let mut h = Histogram::default();
    for line in text.lines() {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if let Some(rest) = key.strip_prefix(&format!("{name}_bucket{{le=\"")) {
            let le = rest.trim_end_matches("\"}");
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            h.buckets.push((le, value));
        } else if key == format!("{name}_sum") {
            h.sum = value;
        } else if key == format!("{name}_count") {
            h.count = value;
        }
    }
    h
}

fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

impl Histogram {
    fn minus(&self, before: &Histogram) -> Histogram {
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|(le, c)| {
                    let b = before
                        .buckets
                        .iter()
                        .find(|(l, _)| l == le)
                        .map(|(_, c)| *c)
                        .unwrap_or(0.0);
                    (*le, c - b)
                })
                .collect(),
            sum: self.sum - before.sum,
            count: self.count - before.count,
        }
    }

    /// The upper bound of the bucket holding quantile `q`.
    fn quantile_bound(&self, q: f64) -> Option<f64> {
        let want = (q * self.count).ceil().max(1.0);
        self.buckets
            .iter()
            .find(|(_, c)| *c >= want)
            .map(|(le, _)| *le)
    }

    fn json(&self) -> Value {
        let ms = |v: Option<f64>| v.filter(|v| v.is_finite()).map(|v| round3(v * 1000.0));
        json!({
            "count": self.count,
            "mean_ms": if self.count > 0.0 { round3(self.sum / self.count * 1000.0) } else { 0.0 },
            "p50_le_ms": ms(self.quantile_bound(0.5)),
            "p99_le_ms": ms(self.quantile_bound(0.99)),
            "buckets_le_ms": self.buckets.iter().map(|(le, c)| {
                let le = if le.is_finite() { json!(round3(le * 1000.0)) } else { json!("+Inf") };
                json!([le, c])
            }).collect::<Vec<_>>(),
        })
    }
}

// ---- statistics ----

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of `v` (sorted ascending).
fn pct(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn summary(mut v: Vec<f64>) -> Value {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return json!({"n": 0});
    }
    json!({
        "n": v.len(),
        "p50_ms": round3(pct(&v, 0.5)),
        "p90_ms": round3(pct(&v, 0.9)),
        "p99_ms": round3(pct(&v, 0.99)),
        "max_ms": round3(v[v.len() - 1]),
        "mean_ms": round3(v.iter().sum::<f64>() / v.len() as f64),
    })
}

// ---- the run ----

#[derive(Clone, Debug)]
struct ChangeResult {
    kind: &'static str,
    service: String,
    affected: usize,
    acked: usize,
    responses: u64,
    /// Rename → the last affected proxy's ACK.
    all_acked_ms: f64,
    /// Rename → the controller logs that it re-reads the directory.
    detect_ms: Option<f64>,
    /// Rename → the controller logs the snapshot built.
    built_ms: Option<f64>,
    build_took_ms: Option<f64>,
    per_proxy_ms: Vec<f64>,
}

fn main() -> Result<(), Error> {
    let a = Args::parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(a))
}

async fn run(a: Args) -> Result<(), Error> {
    let tmp = tempfile::Builder::new()
        .prefix("mesh-controller-bench")
        .tempdir()?;
    let dir = tmp.path().join("config");
    let tls = tmp.path().join("tls");
    std::fs::create_dir_all(&dir)?;
    std::fs::create_dir_all(&tls)?;
    eprintln!("writing the config to {}", dir.display());
    write_config(&a, &dir)?;
    let services = a.namespaces * a.services_per_namespace;
    let endpoints = services * a.endpoints;

    // The cost of one re-read of the directory (what local mode does on
    // every change), measured in this process with the controller's code.
    let read_ms = {
        let source = mesh_controller::source::dir::DirSource::new(&dir, a.poll());
        let mut times = Vec::new();
        let mut objects = 0;
        for _ in 0..3 {
            let t = Instant::now();
            let c = source.read();
            times.push(ms(t.elapsed()));
            objects = c.objects.len();
            if !c.errors.is_empty() {
                return Err(format!("the config has errors: {:?}", &c.errors[..1]).into());
            }
        }
        times.sort_by(|x, y| x.total_cmp(y));
        eprintln!(
            "{objects} objects; one read of the directory: {:.1} ms",
            times[1]
        );
        times[1]
    };

    let ca = mesh_ca::authority::Authority::generate()?;
    let me = issue(&ca, "mesh-system", "mesh-controller");
    std::fs::write(tls.join("cert.pem"), &me.chain_pem)?;
    std::fs::write(tls.join("key.pem"), &me.key_pem)?;
    std::fs::write(tls.join("bundle.pem"), &me.trust_bundle_pem)?;
    // One certificate per (namespace, ServiceAccount) that has a proxy.
    let proxies: Vec<Proxy> = (0..a.proxies)
        .map(|i| Proxy {
            index: i,
            namespace: i % a.namespaces,
            service: (i / a.namespaces) % a.services_per_namespace,
            pod: (i / (a.namespaces * a.services_per_namespace)) % a.endpoints,
        })
        .collect();
    let mut configs: HashMap<(usize, usize), Arc<rustls::ClientConfig>> = HashMap::new();
    for p in &proxies {
        if let std::collections::hash_map::Entry::Vacant(v) =
            configs.entry((p.namespace, p.service))
        {
            let cert = issue(&ca, &ns_name(p.namespace), &svc_name(p.service));
            v.insert(testing::client_config(&cert.material));
        }
    }

    let controller = Controller::start(&a, &dir, &tls)?;
    let result = measure(&a, &controller, &dir, proxies, configs).await;
    controller.stop();
    if a.keep_dir {
        let kept = tmp.keep();
        eprintln!("kept {}", kept.display());
    }
    let mut result = result?;
    result["config"] = json!({
        "namespaces": a.namespaces,
        "services_per_namespace": a.services_per_namespace,
        "endpoints_per_service": a.endpoints,
        "exported_services": a.namespaces * a.exported_per_namespace,
        "services_seen_per_proxy": a.namespaces * a.exported_per_namespace
            + a.services_per_namespace
            - a.exported_per_namespace,
        "pods": endpoints,
        "dir_read_ms": round1(read_ms),
        "poll_interval_ms": ms(a.poll()),
        "debounce_quiet_ms": 50,
        "debounce_max_ms": 500,
        "controller_cpu": a.controller_cpu,
    });
    result["services"] = json!(services);
    result["endpoints"] = json!(endpoints);
    result["proxies"] = json!(a.proxies);
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

async fn measure(
    a: &Args,
    controller: &Controller,
    dir: &Path,
    proxies: Vec<Proxy>,
    configs: HashMap<(usize, usize), Arc<rustls::ClientConfig>>,
) -> Result<Value, Error> {
    // Ready (the first snapshot is built).
    let started = Instant::now();
    loop {
        if controller.get("/ready").is_ok() {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err("the controller was not ready within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready_s = started.elapsed().as_secs_f64();
    let before_proxies = controller.status()?;
    eprintln!(
        "controller ready after {ready_s:.2} s, RSS {:.1} MB",
        before_proxies.rss_mb
    );

    // Open every stream (at most 64 handshakes at once), then wait until
    // each proxy ACKed its full config.
    let shared = Arc::new(Shared::default());
    let n = proxies.len();
    let connect_start = Instant::now();
    let addr = controller.grpc;
    let opened: Vec<_> = futures::stream::iter(proxies.into_iter().map(|p| {
        let config = configs[&(p.namespace, p.service)].clone();
        let shared = shared.clone();
        async move {
            let (otx, orx) = tokio::sync::oneshot::channel();
            tokio::spawn(run_proxy(addr, p, config, shared, otx));
            orx.await.is_ok()
        }
    }))
    .buffer_unordered(64)
    .collect()
    .await;
    let failed = opened.iter().filter(|ok| !**ok).count();
    if failed > 0 {
        return Err(format!("{failed} of {n} streams failed to open").into());
    }
    while shared.synced.load(Ordering::SeqCst) < n {
        if connect_start.elapsed() > Duration::from_secs(300) {
            return Err(format!(
                "only {} of {n} proxies synced within 300 s",
                shared.synced.load(Ordering::SeqCst)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sync_s = connect_start.elapsed().as_secs_f64();
    eprintln!("{n} proxies synced in {sync_s:.2} s");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let metrics0 = controller.get("/metrics")?;
    let connected = counter(&metrics0, "mesh_controller_connected_proxies");
    if connected as usize != n {
        return Err(format!("the controller counts {connected} proxies, not {n}").into());
    }
    let synced = controller.status()?;
    let full_bytes = counter(
        &metrics0,
        "mesh_controller_config_bytes_total{kind=\"full\"}",
    );
    // Idle cost (polling the directory) over a quiet window.
    let idle_window = Duration::from_secs(5);
    tokio::time::sleep(idle_window).await;
    let idle_end = controller.status()?;
    let idle_cpu = (idle_end.cpu_seconds - synced.cpu_seconds) / idle_window.as_secs_f64();
    eprintln!(
        "synced: RSS {:.1} MB (peak {:.1} MB), idle CPU {:.3} cores",
        synced.rss_mb, synced.hwm_mb, idle_cpu
    );
    let metrics1 = controller.get("/metrics")?;
    let push0 = histogram(&metrics1, "mesh_controller_push_latency_seconds");
    let build0 = histogram(&metrics1, "mesh_controller_snapshot_build_seconds");
    let bytes0 = counter(&metrics1, "mesh_controller_config_bytes_total");

    // The changes.
    let mut results = Vec::new();
    let mut rng = rand::rng();
    let phase_start = Instant::now();
    let cpu_start = idle_end.cpu_seconds;
    let mut phase_wait = Duration::ZERO;
    let private_per_ns = a.services_per_namespace - a.exported_per_namespace;
    for i in 0..a.changes {
        let exported = i % 2 == 0;
        let k = i / 2;
        let (ns, svc) = if exported {
            (k % a.namespaces, k % a.exported_per_namespace)
        } else {
            (
                (k * 7 + 3) % a.namespaces,
                a.exported_per_namespace + k % private_per_ns,
            )
        };
        let affected: Vec<usize> = (0..n)
            .filter(|p| exported || p % a.namespaces == ns)
            .collect();
        let marker = marker_ip(i);
        *shared.target.write().map_err(|_| "poisoned")? = Some(Target {
            id: i,
            service: fqdn(ns, svc),
            marker: marker.clone(),
        });
        let responses_before = shared.responses.load(Ordering::SeqCst);
        let log_before = controller.log.lock().map(|l| l.len()).unwrap_or(0);
        let t0 = write_atomic(
            &slice_path(dir, ns, svc),
            &slice_yaml(a, ns, svc, Some(&marker)),
        )?;
        let deadline = t0 + Duration::from_secs(20);
        let hits: Vec<Hit> = loop {
            // The first hit of each proxy (a later full response would
            // carry the marker again).
            let mut seen = std::collections::HashSet::new();
            let hits: Vec<Hit> = shared
                .hits
                .lock()
                .map(|h| {
                    h.iter()
                        .filter(|h| h.change == i && seen.insert(h.proxy))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            if hits.len() >= affected.len() || Instant::now() > deadline {
                break hits;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        // Let stray pushes (there should be none) arrive before counting.
        let gap = a.gap + a.poll().mul_f64(rng.random::<f64>());
        tokio::time::sleep(gap).await;
        phase_wait += gap;
        let responses = shared.responses.load(Ordering::SeqCst) - responses_before;
        let events: Vec<LogEvent> = controller
            .log
            .lock()
            .map(|l| l[log_before.min(l.len())..].to_vec())
            .unwrap_or_default();
        let after = |msg: &str| events.iter().find(|e| e.message == msg && e.at >= t0);
        let built = after("built snapshot");
        let per_proxy: Vec<f64> = hits.iter().map(|h| ms(h.acked - t0)).collect();
        let all = per_proxy.iter().cloned().fold(0.0, f64::max);
        let r = ChangeResult {
            kind: if exported { "exported" } else { "private" },
            service: fqdn(ns, svc),
            affected: affected.len(),
            acked: hits.len(),
            responses,
            all_acked_ms: all,
            detect_ms: after("reading the config directory").map(|e| ms(e.at - t0)),
            built_ms: built.map(|e| ms(e.at - t0)),
            build_took_ms: built.and_then(|e| e.fields["took_ms"].as_f64()),
            per_proxy_ms: per_proxy,
        };
        let first_recv = hits.iter().map(|h| h.received).min();
        eprintln!(
            "change {i:3} {:8} {}: {}/{} ACKed, all in {:.1} ms (detected {:?} ms, built {:?} ms, first received {:?} ms), {} responses, version {}",
            r.kind,
            r.service,
            r.acked,
            r.affected,
            r.all_acked_ms,
            r.detect_ms.map(round1),
            r.built_ms.map(round1),
            first_recv.map(|f| round1(ms(f - t0))),
            r.responses,
            hits.first().map(|h| h.version.as_str()).unwrap_or("-"),
        );
        if r.acked < r.affected {
            return Err(format!(
                "change {i}: only {} of {} affected proxies ACKed within 20 s",
                r.acked, r.affected
            )
            .into());
        }
        results.push(r);
    }
    let phase = phase_start.elapsed();
    let after_changes = controller.status()?;
    let metrics2 = controller.get("/metrics")?;
    let push = histogram(&metrics2, "mesh_controller_push_latency_seconds").minus(&push0);
    let build = histogram(&metrics2, "mesh_controller_snapshot_build_seconds").minus(&build0);
    let bytes = counter(&metrics2, "mesh_controller_config_bytes_total") - bytes0;
    let nacks = counter(&metrics2, "mesh_controller_nacks_total");
    let ended = shared.ended.load(Ordering::SeqCst);
    if ended > 0 {
        return Err(format!("{ended} streams ended during the run").into());
    }

    let by_kind = |kind: &str| -> Value {
        let rs: Vec<&ChangeResult> = results.iter().filter(|r| r.kind == kind).collect();
        let opt = |f: &dyn Fn(&ChangeResult) -> Option<f64>| -> Vec<f64> {
            rs.iter().filter_map(|r| f(r)).collect()
        };
        let from = |f: &dyn Fn(&ChangeResult) -> Option<f64>| -> Vec<f64> {
            rs.iter()
                .filter_map(|r| f(r).map(|t| r.all_acked_ms - t))
                .collect()
        };
        json!({
            "changes": rs.len(),
            "affected_proxies": rs.first().map(|r| r.affected).unwrap_or(0),
            "responses_per_change": rs.iter().map(|r| r.responses).max().unwrap_or(0),
            "write_to_all_acked": summary(rs.iter().map(|r| r.all_acked_ms).collect()),
            "detected_to_all_acked": summary(from(&|r| r.detect_ms)),
            "built_to_all_acked": summary(from(&|r| r.built_ms)),
            "write_to_detected": summary(opt(&|r| r.detect_ms)),
            "write_to_built": summary(opt(&|r| r.built_ms)),
            "build_took": summary(opt(&|r| r.build_took_ms)),
            "write_to_proxy_acked": summary(rs.iter().flat_map(|r| r.per_proxy_ms.iter().cloned()).collect()),
        })
    };
    let all_changes: Vec<f64> = results.iter().map(|r| r.all_acked_ms).collect();
    let detected: Vec<f64> = results
        .iter()
        .filter_map(|r| r.detect_ms.map(|d| r.all_acked_ms - d))
        .collect();
    let mut sorted = all_changes.clone();
    sorted.sort_by(|x, y| x.total_cmp(y));
    let mut det_sorted = detected.clone();
    det_sorted.sort_by(|x, y| x.total_cmp(y));
    let busy = phase.saturating_sub(phase_wait);
    shared.stopping.store(true, Ordering::SeqCst);
    let change_cpu = after_changes.cpu_seconds - cpu_start;
    if det_sorted.len() != results.len() {
        return Err("the controller's log did not show every change being read".into());
    }
    Ok(json!({
        // From the controller noticing the change (a watch event in a
        // cluster; here the directory poll's hit) to the last ACK.
        "push_p50_ms": round1(pct(&det_sorted, 0.5)),
        "push_p99_ms": round1(pct(&det_sorted, 0.99)),
        // From the file's rename, with local mode's poll wait.
        "write_to_all_acked_p50_ms": round1(pct(&sorted, 0.5)),
        "write_to_all_acked_p99_ms": round1(pct(&sorted, 0.99)),
        "rss_mb": round1(after_changes.rss_mb.max(synced.rss_mb)),
        "peak_rss_mb": round1(after_changes.hwm_mb),
        "changes": results.len(),
        "by_kind": {
            "exported": by_kind("exported"),
            "private": by_kind("private"),
        },
        "all_changes": {
            "write_to_all_acked": summary(all_changes),
            "detected_to_all_acked": summary(detected),
        },
        "controller_push_latency_histogram": push.json(),
        "controller_snapshot_build_histogram": build.json(),
        "incremental_bytes_during_changes": bytes,
        "nacks": nacks,
        "startup": {
            "ready_s": round3(ready_s),
            "rss_before_proxies": before_proxies.json(),
            "proxies_synced_s": round3(sync_s),
            "full_responses": shared.full_responses.load(Ordering::SeqCst),
            "full_response_kb": round1(full_bytes / n.max(1) as f64 / 1024.0),
        },
        "process": {
            "after_sync": synced.json(),
            "after_changes": after_changes.json(),
            "idle_cpu_cores": round3(idle_cpu),
            "change_phase_s": round3(phase.as_secs_f64()),
            "change_phase_cpu_seconds": round3(change_cpu),
            "change_phase_cpu_cores": round3(change_cpu / phase.as_secs_f64()),
            "cpu_ms_per_change": round1(change_cpu * 1000.0 / results.len().max(1) as f64),
            "cpu_ms_per_change_minus_idle_polling": round1((change_cpu - idle_cpu * phase.as_secs_f64()) * 1000.0 / results.len().max(1) as f64),
            "busy_s": round3(busy.as_secs_f64()),
        },
    }))
}
