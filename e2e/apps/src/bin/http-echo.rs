//! HTTP/1.1 + h2c echo server. Answers every request with JSON naming the pod,
//! namespace, method, path, query and headers it got.
//!
//! Env: `PORT` (8080), `POD_NAME`, `POD_NAMESPACE`, `FAIL_RATE` (0.0-1.0: answer
//! 500 to that fraction), `DELAY_MS` (sleep before answering), `DRAIN_MS`
//! (how long to keep serving after SIGTERM; 3000).
//! Query overrides per request: `?fail=0.5`, `?delay_ms=100`, `?status=503`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use mesh_testapps::{env_f64, parse_query, pod_name, pod_namespace};
use serde_json::{json, Map, Value};

struct Config {
    pod: String,
    namespace: String,
    fail_rate: f64,
    delay_ms: u64,
}

async fn handle(
    cfg: Arc<Config>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let q = parse_query(req.uri().query());
    let delay = q
        .get("delay_ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(cfg.delay_ms);
    let fail = q
        .get("fail")
        .and_then(|v| v.parse().ok())
        .unwrap_or(cfg.fail_rate);
    let mut status = q
        .get("status")
        .and_then(|v| v.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    if fail > 0.0 && rand::random::<f64>() < fail {
        status = StatusCode::INTERNAL_SERVER_ERROR;
    }
    let mut headers = Map::new();
    for (k, v) in req.headers() {
        headers.insert(
            k.as_str().to_string(),
            Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        );
    }
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let version = format!("{:?}", req.version());
    let body_len = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().len(),
        Err(_) => 0,
    };
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if path == "/healthz" {
        return Ok(Response::new(Full::new(Bytes::from_static(b"ok\n"))));
    }
    let body = json!({
        "pod": cfg.pod,
        "namespace": cfg.namespace,
        "method": method,
        "path": path,
        "query": query,
        "version": version,
        "headers": headers,
        "body_bytes": body_len,
        "peer": peer.to_string(),
        "status": status.as_u16(),
    });
    let mut resp = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = http::HeaderValue::from_str(&cfg.pod) {
        resp.headers_mut().insert("x-echo-pod", v);
    }
    Ok(resp)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let cfg = Arc::new(Config {
        pod: pod_name(),
        namespace: pod_namespace(),
        fail_rate: env_f64("FAIL_RATE", 0.0),
        delay_ms: env_f64("DELAY_MS", 0.0) as u64,
    });
    let listener = tokio::net::TcpListener::bind(("::", port))
        .await
        .or(tokio::net::TcpListener::bind(("0.0.0.0", port)).await)?;
    eprintln!(
        "http-echo: pod {} listening on {}",
        cfg.pod,
        listener.local_addr()?
    );
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // After SIGTERM, keep serving for DRAIN_MS (default 3 s): the pod's
    // endpoint takes a moment to leave every client's load balancer, as a
    // well-behaved Kubernetes app does.
    let drain = std::time::Duration::from_millis(env_f64("DRAIN_MS", 3000.0) as u64);
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let until = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => r?,
            _ = sigterm.recv(), if deadline.is_none() => {
                eprintln!("http-echo: SIGTERM, serving {drain:?} more");
                deadline = Some(tokio::time::Instant::now() + drain);
                continue;
            }
            _ = until => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        // Small HTTP/2 frames must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        let cfg = cfg.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(cfg.clone(), peer, req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
    eprintln!("http-echo: shutting down");
    Ok(())
}
