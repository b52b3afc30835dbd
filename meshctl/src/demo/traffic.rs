//! The demo's traffic: gRPC calls over one channel and HTTP/1.1 requests
//! over one keep-alive connection, both into the client proxy, counting
//! which backend answered and who the backend's proxy says called it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Header in which a backend's proxy tells the app who called over mTLS:
/// `By=<the backend's identity>;URI=<the caller's identity>`.
pub const XFCC: &str = "x-forwarded-client-cert";

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// `mesh.testapps.echo.v1.EchoRequest` (e2e/apps/proto/echo.proto).
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(uint32, tag = "2")]
    pub delay_ms: u32,
    #[prost(int32, tag = "3")]
    pub fail_code: i32,
}

/// `mesh.testapps.echo.v1.EchoReply`: who answered, and the metadata it got.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub pod: String,
    #[prost(string, tag = "2")]
    pub namespace: String,
    #[prost(string, tag = "3")]
    pub message: String,
    #[prost(map = "string, string", tag = "4")]
    pub metadata: HashMap<String, String>,
}

const ECHO_METHOD: &str = "/mesh.testapps.echo.v1.Echo/Echo";

/// What a batch of requests found.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Requests sent.
    pub sent: u64,
    /// Successful answers per answering pod.
    pub by_pod: BTreeMap<String, u64>,
    /// Failures by reason.
    pub errors: BTreeMap<String, u64>,
    /// Answers whose `x-forwarded-client-cert` names the expected caller.
    pub from_client: u64,
    /// One `x-forwarded-client-cert` value seen, to show.
    pub xfcc_sample: Option<String>,
    /// Wall time of the batch.
    pub elapsed: Duration,
}

impl Tally {
    /// Successful answers.
    pub fn ok(&self) -> u64 {
        self.by_pod.values().sum()
    }

    /// Failed requests.
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    fn record(&mut self, pod: &str, xfcc: Option<&str>, caller: &str) {
        self.sent += 1;
        *self.by_pod.entry(pod.to_string()).or_default() += 1;
        if let Some(v) = xfcc {
            if xfcc_caller(v) == Some(caller) {
                self.from_client += 1;
            }
            if self.xfcc_sample.is_none() {
                self.xfcc_sample = Some(v.to_string());
            }
        }
    }

    fn record_err(&mut self, reason: String) {
        self.sent += 1;
        let mut reason = reason;
        reason.truncate(200);
        *self.errors.entry(reason).or_default() += 1;
    }

    /// The most frequent failure, for messages.
    pub fn top_error(&self) -> Option<(&str, u64)> {
        self.errors
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(e, n)| (e.as_str(), *n))
    }
}

/// The caller (`URI=`) in an `x-forwarded-client-cert` value.
pub fn xfcc_caller(v: &str) -> Option<&str> {
    v.split(';').find_map(|kv| kv.trim().strip_prefix("URI="))
}

/// `calls` unary gRPC calls over ONE channel to `addr`, `concurrency` in
/// flight at a time. `caller` is the SPIFFE ID the backends should see.
pub async fn grpc(addr: SocketAddr, calls: u64, concurrency: usize, caller: &str) -> Result<Tally> {
    let started = Instant::now();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .context("gRPC endpoint")?
        .connect_timeout(Duration::from_secs(2))
        .timeout(REQUEST_TIMEOUT)
        .connect()
        .await
        .with_context(|| format!("connecting a gRPC channel to {addr}"))?;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        // Clones of a Channel share its one HTTP/2 connection.
        let mut client = tonic::client::Grpc::new(channel.clone());
        let (tally, next, caller) = (tally.clone(), next.clone(), caller.to_string());
        tasks.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < calls {
                let result = async {
                    client
                        .ready()
                        .await
                        .map_err(|e| format!("channel not ready: {e}"))?;
                    let req = tonic::Request::new(EchoRequest {
                        message: "hello from meshctl demo".into(),
                        ..Default::default()
                    });
                    client
                        .unary(
                            req,
                            http::uri::PathAndQuery::from_static(ECHO_METHOD),
                            tonic_prost::ProstCodec::<EchoRequest, EchoReply>::default(),
                        )
                        .await
                        .map(tonic::Response::into_inner)
                        .map_err(|s| format!("gRPC {:?}: {}", s.code(), s.message()))
                }
                .await;
                let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                match result {
                    Ok(reply) => t.record(
                        &reply.pod,
                        reply.metadata.get(XFCC).map(String::as_str),
                        &caller,
                    ),
                    Err(e) => t.record_err(e),
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let mut t = tally.lock().unwrap_or_else(|e| e.into_inner()).clone();
    t.elapsed = started.elapsed();
    Ok(t)
}

type H1Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn h1_connect(addr: SocketAddr) -> Result<H1Sender> {
    let tcp = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connecting to {addr}: timed out"))?
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .with_context(|| format!("HTTP/1.1 handshake with {addr}"))?;
    tokio::spawn(conn);
    Ok(send)
}

/// `requests` HTTP/1.1 GETs, one after the other over ONE keep-alive
/// connection to `addr` (a new one only if the proxy closes it), with
/// `Host: host`. `caller` is the SPIFFE ID the backends should see.
pub async fn http(addr: SocketAddr, host: &str, requests: u64, caller: &str) -> Result<Tally> {
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut send = h1_connect(addr).await?;
    for _ in 0..requests {
        if send.is_closed() {
            send = match h1_connect(addr).await {
                Ok(s) => s,
                Err(e) => {
                    tally.record_err(format!("{e:#}"));
                    continue;
                }
            };
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, http_once(&mut send, host)).await {
            Ok(Ok((pod, xfcc))) => tally.record(&pod, xfcc.as_deref(), caller),
            Ok(Err(e)) => tally.record_err(e),
            Err(_) => tally.record_err(format!("no answer within {REQUEST_TIMEOUT:?}")),
        }
    }
    tally.elapsed = started.elapsed();
    Ok(tally)
}

/// One GET: the answering pod and the `x-forwarded-client-cert` it saw.
async fn http_once(send: &mut H1Sender, host: &str) -> Result<(String, Option<String>), String> {
    send.ready().await.map_err(|e| format!("connection: {e}"))?;
    let req = http::Request::get("/")
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    let mesh_error = resp
        .headers()
        .get("x-mesh-error")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(match mesh_error {
            Some(m) => format!("HTTP {} (x-mesh-error: {m})", status.as_u16()),
            None => format!("HTTP {}", status.as_u16()),
        });
    }
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|_| "the answer is not http-echo's JSON".to_string())?;
    let pod = v["pod"].as_str().unwrap_or("unknown").to_string();
    let xfcc = v["headers"][XFCC].as_str().map(str::to_string);
    Ok((pod, xfcc))
}

/// Sends a plaintext HTTP/1.1 request straight to a proxy's inbound mTLS
/// port. `Ok(how)` when it is refused (as STRICT mTLS requires), `Err` with
/// what came back when the request got through.
pub async fn plaintext_refused(addr: SocketAddr) -> Result<String, String> {
    let attempt = async {
        let mut tcp = match tokio::net::TcpStream::connect(addr).await {
            Ok(t) => t,
            Err(e) => return Err(format!("cannot connect to {addr}: {e}")),
        };
        let req = "GET / HTTP/1.1\r\nHost: web.demo.svc.cluster.local\r\nConnection: close\r\n\r\n";
        if let Err(e) = tcp.write_all(req.as_bytes()).await {
            return Ok(format!("connection reset ({e})"));
        }
        let mut buf = Vec::new();
        match tcp.read_to_end(&mut buf).await {
            Ok(_) if buf.is_empty() => Ok("connection closed without an answer".to_string()),
            Ok(_) => {
                let head = String::from_utf8_lossy(&buf);
                let line = head.lines().next().unwrap_or("").to_string();
                if line.contains(" 200 ") {
                    Err(format!("answered {line:?}"))
                } else {
                    Ok(format!("answered {line:?}"))
                }
            }
            Err(e) => Ok(format!("connection reset ({e})")),
        }
    };
    match tokio::time::timeout(Duration::from_secs(3), attempt).await {
        Ok(r) => r,
        Err(_) => Ok("no answer".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_caller_from_xfcc() {
        let v = "By=spiffe://cluster.local/ns/demo/sa/web;URI=spiffe://cluster.local/ns/demo/sa/demo-client";
        assert_eq!(
            xfcc_caller(v),
            Some("spiffe://cluster.local/ns/demo/sa/demo-client")
        );
        assert_eq!(xfcc_caller("By=x"), None);
    }

    #[test]
    fn tally_counts() {
        let mut t = Tally::default();
        t.record("a", Some("By=b;URI=me"), "me");
        t.record("a", Some("By=b;URI=someone-else"), "me");
        t.record("b", None, "me");
        t.record_err("boom".into());
        t.record_err("boom".into());
        assert_eq!((t.sent, t.ok(), t.failed(), t.from_client), (5, 3, 2, 1));
        assert_eq!(t.by_pod["a"], 2);
        assert_eq!(t.top_error(), Some(("boom", 2)));
        assert_eq!(t.xfcc_sample.as_deref(), Some("By=b;URI=me"));
    }

    /// A plaintext server that answers 200 is "not refused"; a server that
    /// hangs up is.
    #[tokio::test]
    async fn plaintext_probe() {
        let ok = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ok_addr = ok.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = ok.accept().await.unwrap();
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await;
        });
        assert!(plaintext_refused(ok_addr).await.is_err());
        let rude = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let rude_addr = rude.local_addr().unwrap();
        tokio::spawn(async move {
            let (s, _) = rude.accept().await.unwrap();
            drop(s);
        });
        assert!(plaintext_refused(rude_addr).await.is_ok());
    }
}
