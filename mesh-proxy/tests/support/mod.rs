//! Shared pieces of the proxy's integration tests: backends on loopback and
//! a proxy started from a YAML config.
#![allow(dead_code)]

pub mod h2raw;
pub mod recorder;

pub mod netns;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_proxy::cli::{Cli, Command};
use mesh_testapps::echo::echo_server::{Echo, EchoServer};
use mesh_testapps::echo::{EchoReply, EchoRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A started proxy and the temp dir holding its config file.
pub struct TestProxy {
    pub running: mesh_proxy::Running,
    pub dir: tempfile::TempDir,
}

impl TestProxy {
    pub fn listener(&self, i: usize) -> SocketAddr {
        self.running.explicit_addrs[i]
    }

    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("proxy.yaml")
    }
}

/// Starts a proxy in explicit mode with `listen` listeners (`SERVICE:PORT`)
/// on ephemeral loopback ports.
pub async fn start_proxy(config_yaml: &str, listen: &[&str], extra: &[&str]) -> TestProxy {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, config_yaml).unwrap();
    let mut argv = vec![
        "mesh-proxy".to_string(),
        "run".into(),
        "--config".into(),
        path.display().to_string(),
        "--no-transparent".into(),
        "--admin-addr".into(),
        "127.0.0.1:0".into(),
        "--metrics-addr".into(),
        "127.0.0.1:0".into(),
        "--workload".into(),
        "test-client".into(),
        "--drain-timeout".into(),
        "2s".into(),
    ];
    for l in listen {
        argv.push("--listen".into());
        argv.push(format!("127.0.0.1:0={l}"));
    }
    argv.extend(extra.iter().map(|s| s.to_string()));
    let Command::Run(args) = Cli::parse_from(argv).command else {
        unreachable!()
    };
    let running = mesh_proxy::start(*args).await.expect("proxy starts");
    TestProxy { running, dir }
}

/// Gives `p` a workload certificate for `id` from `ca`.
pub fn give_certificate(p: &TestProxy, ca: &mesh_proxy::testca::TestCa, id: &str) {
    let (chain, key) = ca.issue(id);
    p.running
        .shared
        .tls
        .set(mesh_proxy::tls::TlsMaterial::from_pem(&chain, &key, &ca.root_pem()).unwrap())
        .unwrap();
}

/// A server-side proxy: inbound on an ephemeral port with `config_yaml`
/// (its mode and policies), forwarding to `app`, holding `id`'s certificate.
pub async fn inbound_proxy(
    ca: &mesh_proxy::testca::TestCa,
    config_yaml: &str,
    app: SocketAddr,
    id: &str,
) -> TestProxy {
    let p = inbound_only(config_yaml, app).await;
    give_certificate(&p, ca, id);
    p
}

/// [`inbound_proxy`] without a certificate (plaintext callers only).
pub async fn inbound_only(config_yaml: &str, app: SocketAddr) -> TestProxy {
    start_proxy(
        config_yaml,
        &[],
        &[
            "--inbound-addr",
            "127.0.0.1:0",
            "--inbound-forward",
            &app.to_string(),
        ],
    )
    .await
}

/// An HTTP/1.1 + HTTP/2 (h2c) app on loopback whose answer to each request
/// is `handle`'s body.
pub async fn http_app<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = String> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let handle = handle.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let answer = handle(req);
                    async move {
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(
                            answer.await,
                        ))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// An HTTP/1.1 + HTTP/2 (h2c) server that answers every request with its name.
pub async fn http_backend(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    serve_http(l, name);
    addr
}

/// Serves `http_backend`'s answers on `l`.
pub fn serve_http(l: TcpListener, name: &'static str) {
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = service_fn(
                    move |req: http::Request<hyper::body::Incoming>| async move {
                        let path = req.uri().path().to_string();
                        let _ = req.into_body().collect().await;
                        let mut resp = http::Response::new(Full::new(Bytes::from(name)));
                        resp.headers_mut()
                            .insert("x-backend", http::HeaderValue::from_static(name));
                        if path == "/fail" {
                            *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                        }
                        Ok::<_, Infallible>(resp)
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
}

struct NamedEcho(&'static str);

#[tonic::async_trait]
impl Echo for NamedEcho {
    async fn echo(
        &self,
        req: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoReply>, tonic::Status> {
        let metadata = req
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    Some((k.to_string(), v.to_str().unwrap_or("").to_string()))
                }
                _ => None,
            })
            .collect();
        Ok(tonic::Response::new(EchoReply {
            pod: self.0.to_string(),
            namespace: "test".into(),
            message: req.into_inner().message,
            metadata,
        }))
    }
}

/// A tonic gRPC Echo server that answers with its name.
pub async fn grpc_backend(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    serve_grpc(l, name);
    addr
}

/// Serves the Echo service on an already bound listener.
pub fn serve_grpc(l: TcpListener, name: &'static str) {
    let incoming = tokio_stream_from(l);
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(EchoServer::new(NamedEcho(name)))
            .serve_with_incoming(incoming)
            .await;
    });
}

fn tokio_stream_from(
    l: TcpListener,
) -> impl futures::Stream<Item = Result<tokio::net::TcpStream, std::io::Error>> {
    futures::stream::unfold(l, |l| async move {
        let r = l.accept().await.map(|(s, _)| s);
        Some((r, l))
    })
}

/// A TCP server that echoes every byte back and half-closes when the client does.
pub async fn tcp_echo_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    serve_tcp_echo(l);
    addr
}

/// Serves TCP echo on an already bound listener.
pub fn serve_tcp_echo(l: TcpListener) {
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
}

/// A server that speaks first: it sends `banner` on accept, then echoes.
pub async fn banner_backend(banner: &'static [u8]) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let _ = s.write_all(banner).await;
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Endpoint list YAML for `addrs`, each serving service port `port`.
pub fn endpoints_yaml(addrs: &[SocketAddr], port: u16) -> String {
    addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            format!(
                "      - {{address: \"{}\", ports: {{\"{port}\": {}}}, labels: {{app: backend, version: v{}}}, pod: backend-{i}}}\n",
                a.ip(),
                a.port(),
                i + 1
            )
        })
        .collect()
}

/// Asserts every count is within `tolerance` (fraction) of an even split.
pub fn assert_even(counts: &HashMap<String, usize>, n: usize, buckets: usize, tolerance: f64) {
    assert_eq!(
        counts.len(),
        buckets,
        "not every backend was used: {counts:?}"
    );
    let expected = n as f64 / buckets as f64;
    for (k, c) in counts {
        let share = *c as f64 / n as f64;
        assert!(
            (*c as f64 - expected).abs() <= tolerance * n as f64,
            "{k} got {c} of {n} ({:.1}%): {counts:?}",
            share * 100.0
        );
    }
}

/// Fetches the proxy's /metrics text.
pub async fn scrape(addr: SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    text.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// Sends `len` pseudo-random bytes to a TCP echo at `addr`, half-closes, and
/// reads everything back: true when the echo is byte-exact.
pub async fn echo_round_trip(addr: SocketAddr, len: u32) -> bool {
    let payload: Vec<u8> = (0..len)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut r, mut w) = s.split();
    let send = async {
        w.write_all(&payload).await.unwrap();
        // Half-close: done sending, still reading the echo.
        w.shutdown().await.unwrap();
    };
    let recv = async {
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        got
    };
    let (_, got) = tokio::join!(send, recv);
    got == payload
}

/// Counts the answers of `n` calls made 8 at a time.
pub async fn count_concurrently<F, Fut>(n: usize, call: F) -> HashMap<String, usize>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = String>,
{
    use futures::StreamExt;
    futures::stream::iter(0..n)
        .map(call)
        .buffer_unordered(8)
        .fold(HashMap::new(), |mut m, k| async move {
            *m.entry(k).or_default() += 1;
            m
        })
        .await
}

/// Sends raw bytes on a new connection and reads until the proxy closes it
/// (or `timeout`): the whole answer.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], timeout: std::time::Duration) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

/// How many HTTP/1 responses (status lines at the start of a line) a raw
/// answer holds.
pub fn count_responses(answer: &str) -> usize {
    let status_line = |l: &str| {
        (l.starts_with("HTTP/1.1 ") || l.starts_with("HTTP/1.0 "))
            && l.as_bytes()
                .get(9..12)
                .is_some_and(|c| c.iter().all(u8::is_ascii_digit))
    };
    // A body may end without a newline right before the next status line.
    answer
        .split('\n')
        .map(|l| {
            l.find("HTTP/1.")
                .map_or(0, |i| usize::from(status_line(&l[i..])))
        })
        .sum()
}
