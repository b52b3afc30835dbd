//! Faults on a real network: network namespaces joined by a bridge, with
//! real iptables rules cutting and restoring links.
//!
//! The proxy (the real binary) and its app share one namespace; the
//! controller (a real tonic server over mTLS, its own runtime) and three
//! backends each have their own. The app sends a steady 200 rps through the
//! proxy the whole time while:
//!
//! 1. the controller is partitioned from the proxy for 60 s (packets
//!    dropped both ways, so the TCP connection looks alive) and a new
//!    config is pushed meanwhile: no request fails, the proxy keeps serving
//!    the last config, and it converges once the partition heals;
//! 2. the controller process is killed, stays away, and comes back with a
//!    newer config: no request fails, the proxy converges;
//! 3. one of three endpoints flaps (its host resets every TCP packet for
//!    half of each second): retries and outlier detection keep success at
//!    99.9 % or more.
//!
//! Needs root, `ip` and `iptables` (CI has them); MESH_SKIP_NETNS=1 skips.

mod support;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use http_body_util::Empty;
use hyper_util::rt::TokioExecutor;
use mesh_proto::config::v1::{
    config_discovery_server::{ConfigDiscovery, ConfigDiscoveryServer},
    discovery_request::Kind,
    DiscoveryRequest, DiscoveryResponse, ProxyConfig,
};
use mesh_proxy::testca::TestCa;
use support::netns::*;
use support::*;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

const SUBNET: &str = "10.78.0";
const CONTROLLER: &str = "10.78.0.2:15010";
const CONTROLLER_ID: &str = "spiffe://cluster.local/ns/mesh-system/sa/mesh-controller";
const PROXY_ID: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
/// The app's view of the service, inside the proxy's namespace.
const LISTENER: &str = "127.0.0.1:18080";
const RATE_PER_SECOND: u64 = 200;
const PARTITION: Duration = Duration::from_secs(60);

/// A controller that always sends the latest config in full: on every new
/// stream and on every change. ACKed versions are published.
#[derive(Clone)]
struct Latest {
    config: watch::Receiver<ProxyConfig>,
    acked: Arc<watch::Sender<String>>,
}

type RespStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigDiscovery for Latest {
    type StreamStream = RespStream;

    async fn stream(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut inbound = req.into_inner();
        let acked = self.acked.clone();
        tokio::spawn(async move {
            while let Ok(Some(r)) = inbound.message().await {
                if let Some(Kind::Ack(a)) = r.kind {
                    acked.send_replace(a.version);
                }
            }
        });
        let mut config = self.config.clone();
        config.mark_changed();
        let out = futures::stream::unfold(config, |mut config| async move {
            config.changed().await.ok()?;
            let c = config.borrow_and_update().clone();
            let resp = DiscoveryResponse {
                version: c.version.clone(),
                nonce: format!("n-{}", c.version),
                full: true,
                config: Some(c),
                ..Default::default()
            };
            Some((Ok(resp), config))
        });
        Ok(Response::new(Box::pin(out)))
    }
}

/// The controller "process": its own runtime, so killing it closes every
/// socket it had, as the death of a real process would.
struct Controller {
    rt: Option<tokio::runtime::Runtime>,
}

impl Controller {
    fn start(t: &Topology, ca: &TestCa, svc: Latest) -> Controller {
        let listener = bind_in(&t.ns("k"), CONTROLLER);
        let (chain, key) = ca.issue(CONTROLLER_ID);
        let tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(chain, key))
            .client_ca_root(tonic::transport::Certificate::from_pem(ca.root_pem()));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.spawn(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            let incoming = futures::stream::unfold(l, |l| async move {
                Some((l.accept().await.map(|(s, _)| s), l))
            });
            let _ = tonic::transport::Server::builder()
                .tls_config(tls)
                .unwrap()
                .add_service(ConfigDiscoveryServer::new(svc))
                .serve_with_incoming(incoming)
                .await;
        });
        Controller { rt: Some(rt) }
    }

    fn kill(mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn config(version: &str, endpoints: &[(&str, u8)]) -> ProxyConfig {
    let eps: String = endpoints
        .iter()
        .map(|(pod, host)| {
            format!(
                "      - {{address: \"{SUBNET}.{host}\", ports: {{\"80\": 8080}}, pod: {pod}}}\n"
            )
        })
        .collect();
    let yaml = format!(
        r#"version: "{version}"
services:
  - name: web
    ports: [{{port: 80, protocol: HTTP1}}]
    endpoints:
{eps}    policy:
      outlierDetection: {{consecutive5xx: 2, intervalMs: 500, baseEjectionTimeMs: 2000, maxEjectionPercent: 50}}
    httpRoutes:
      - name: default
        destinations: [{{destination: {{service: web}}}}]
        retry: {{attempts: 3, retryOn: [connect-failure, reset, gateway-error]}}
        responseHeaders: {{set: {{x-config: "{version}"}}}}
"#
    );
    mesh_proxy::model::MeshState::parse(&yaml).unwrap()
}

const ALL: &[(&str, u8)] = &[("s1", 11), ("s2", 12), ("s3", 13)];

/// What the app saw in one phase of the test.
#[derive(Debug, Default, Clone)]
struct Seen {
    ok: u64,
    failed: u64,
    errors: Vec<String>,
    /// Responses by the config version that served them.
    versions: BTreeMap<String, u64>,
    /// Responses by the backend that answered.
    backends: BTreeMap<String, u64>,
}

/// The app: a steady rate of GETs through the proxy, counted per phase (the
/// phase current when the request started).
struct Load {
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(ns: &str, phases: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(vec![Seen::default(); phases]));
        let (s, p, v, ns) = (stop.clone(), phase.clone(), seen.clone(), ns.to_string());
        let thread = std::thread::spawn(move || {
            block_in_ns(&ns, move || async move {
                let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                    .build_http::<Empty<Bytes>>();
                let mut tick =
                    tokio::time::interval(Duration::from_micros(1_000_000 / RATE_PER_SECOND));
                let mut inflight = tokio::task::JoinSet::new();
                while !s.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let (client, phase, seen) =
                        (client.clone(), p.load(Ordering::Relaxed), v.clone());
                    inflight.spawn(async move {
                        let req = http::Request::get(format!("http://{LISTENER}/"))
                            .header("host", "web")
                            .body(Empty::new())
                            .unwrap();
                        let res =
                            tokio::time::timeout(Duration::from_secs(10), client.request(req))
                                .await;
                        let mut seen = seen.lock().unwrap();
                        let s = &mut seen[phase];
                        match res {
                            Ok(Ok(r)) if r.status() == 200 => {
                                s.ok += 1;
                                let v = r
                                    .headers()
                                    .get("x-config")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("none");
                                *s.versions.entry(v.to_string()).or_default() += 1;
                                let b = r
                                    .headers()
                                    .get("x-backend")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("none");
                                *s.backends.entry(b.to_string()).or_default() += 1;
                            }
                            other => {
                                s.failed += 1;
                                if s.errors.len() < 10 {
                                    s.errors.push(match other {
                                        Ok(Ok(r)) => format!("status {}", r.status()),
                                        Ok(Err(e)) => format!("{e:?}"),
                                        Err(_) => "timed out after 10 s".into(),
                                    });
                                }
                            }
                        }
                    });
                    while inflight.try_join_next().is_some() {}
                }
                while inflight.join_next().await.is_some() {}
            })
        });
        Load {
            stop,
            phase,
            seen,
            thread: Some(thread),
        }
    }

    fn next_phase(&self) {
        self.phase.fetch_add(1, Ordering::Relaxed);
    }

    fn finish(mut self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.seen.lock().unwrap().clone()
    }
}

/// Drops every packet between the proxy's namespace and the controller.
fn partition(t: &Topology, on: bool) {
    let op = if on { "-I" } else { "-D" };
    let ip = CONTROLLER.split(':').next().unwrap();
    in_ns(
        &t.ns("p"),
        &["iptables", op, "OUTPUT", "-d", ip, "-j", "DROP"],
    );
    in_ns(
        &t.ns("p"),
        &["iptables", op, "INPUT", "-s", ip, "-j", "DROP"],
    );
}

/// Resets every TCP packet from the proxy's namespace to `host`.
fn reset_host(t: &Topology, host: u8, on: bool) {
    let op = if on { "-I" } else { "-D" };
    let ip = format!("{SUBNET}.{host}");
    in_ns(
        &t.ns("p"),
        &[
            "iptables",
            op,
            "OUTPUT",
            "-d",
            &ip,
            "-p",
            "tcp",
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ],
    );
}

/// Waits until the proxy ACKs `version`; returns how long it took.
fn wait_acked(acked: &watch::Receiver<String>, version: &str, within: Duration) -> Duration {
    let start = Instant::now();
    while *acked.borrow() != version {
        assert!(
            start.elapsed() < within,
            "the proxy did not ACK version {version} within {within:?} (last ACK: {})",
            *acked.borrow()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

fn write(t: &Topology, name: &str, content: &str) -> String {
    let p = t.dir.path().join(name);
    std::fs::write(&p, content).unwrap();
    p.display().to_string()
}

#[test]
fn controller_partition_and_restart_and_flapping_endpoints_under_load() {
    if !netns_enabled("the faults test") {
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut t = Topology::new(
        "mf",
        SUBNET,
        &[("p", 1), ("k", 2), ("s1", 11), ("s2", 12), ("s3", 13)],
    );
    let ca = TestCa::new("mesh");

    // Backends, served from the test's runtime (their sockets live in their namespaces).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for (name, host) in ALL {
        let l = bind_in(&t.ns(name), &format!("{SUBNET}.{host}:8080"));
        rt.block_on(async { serve_http(tokio::net::TcpListener::from_std(l).unwrap(), name) });
    }

    let (config_tx, config_rx) = watch::channel(config("1", ALL));
    let (acked_tx, acked) = watch::channel(String::new());
    let svc = Latest {
        config: config_rx,
        acked: Arc::new(acked_tx),
    };
    let controller = Controller::start(&t, &ca, svc.clone());

    let (chain, key) = ca.issue(PROXY_ID);
    let cert = write(&t, "proxy.crt", &chain);
    let key = write(&t, "proxy.key", &key);
    let root = write(&t, "root.crt", &ca.root_pem());
    let log = std::fs::File::create(t.dir.path().join("proxy.log")).unwrap();
    t.children.push(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &t.ns("p"),
                env!("CARGO_BIN_EXE_mesh-proxy"),
                "run",
            ])
            .args(["--no-transparent", "--controller-addr", CONTROLLER])
            .args(["--controller-identity", CONTROLLER_ID])
            .args([
                "--identity-cert",
                &cert,
                "--identity-key",
                &key,
                "--trust-bundle",
                &root,
            ])
            .args(["--listen", &format!("{LISTENER}=web:80")])
            .args(["--namespace", "shop", "--service-account", "frontend"])
            .args(["--pod", "frontend-1", "--log", "info"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("proxy starts"),
    );
    let proxy_log = t.dir.path().join("proxy.log");
    let log_tail = move || {
        let text = std::fs::read_to_string(&proxy_log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    };
    wait_acked(&acked, "1", Duration::from_secs(30));

    let load = Load::start(&t.ns("p"), 4);
    std::thread::sleep(Duration::from_secs(3));

    // 1. A 60 s partition; the config changes on the far side meanwhile.
    load.next_phase();
    partition(&t, true);
    let cut = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    config_tx.send_replace(config("2", ALL));
    std::thread::sleep(PARTITION.saturating_sub(cut.elapsed()));
    assert_eq!(*acked.borrow(), "1", "nothing crossed the partition");
    partition(&t, false);
    let converged_after_partition = wait_acked(&acked, "2", Duration::from_secs(45));
    std::thread::sleep(Duration::from_secs(2));

    // 2. The controller is killed; a newer config waits for its return.
    load.next_phase();
    controller.kill();
    config_tx.send_replace(config("3", ALL));
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(*acked.borrow(), "2");
    let controller = Controller::start(&t, &ca, svc);
    let converged_after_restart = wait_acked(&acked, "3", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));

    // 3. s3 flaps: its packets are reset for 500 ms of every second, 20 times.
    load.next_phase();
    for _ in 0..20 {
        reset_host(&t, 13, true);
        std::thread::sleep(Duration::from_millis(500));
        reset_host(&t, 13, false);
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(1));
    let seen = load.finish();
    controller.kill();

    let alive = t.children[0].try_wait().unwrap().is_none();
    assert!(alive, "the proxy is still running:\n{}", log_tail());
    eprintln!(
        "faults: partition {:?}, converged {converged_after_partition:?} after it healed; controller restart converged in {converged_after_restart:?}\n{seen:#?}",
        PARTITION
    );
    let [warmup, partitioned, restarted, flapping] = &seen[..] else {
        unreachable!()
    };
    for (what, s, min) in [
        ("before the faults", warmup, 400),
        ("through the 60 s partition", partitioned, 60 * 150),
        ("through the controller restart", restarted, 10 * 150),
    ] {
        assert!(s.ok >= min, "{what}: only {} requests served: {s:?}", s.ok);
        assert_eq!(s.failed, 0, "{what}: {s:?}\nproxy log:\n{}", log_tail());
    }
    // The last good config served through the partition, the new one after.
    assert!(partitioned.versions.get("1").copied().unwrap_or(0) > 50 * 150);
    assert!(partitioned.versions.contains_key("2"), "{partitioned:?}");
    assert!(restarted.versions.contains_key("3"), "{restarted:?}");
    // The flapping really hurt s3: it served less than either steady endpoint.
    let by = |b: &str| flapping.backends.get(b).copied().unwrap_or(0);
    assert!(by("s3") < by("s1").min(by("s2")), "{flapping:?}");
    let total = flapping.ok + flapping.failed;
    assert!(total >= 15 * 150, "{flapping:?}");
    assert!(
        flapping.ok * 1000 >= total * 999,
        "with one endpoint flapping, {} of {total} requests failed: {flapping:?}",
        flapping.failed
    );
    drop(rt);
}
