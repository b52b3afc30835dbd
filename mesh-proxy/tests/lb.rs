//! Per-request load balancing through the proxy: one client connection,
//! many requests, every backend gets its share. This is the problem
//! kube-proxy cannot solve (it balances connections).

mod support;

use std::collections::HashMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_testapps::echo::echo_client::EchoClient;
use mesh_testapps::echo::EchoRequest;
use support::*;

const N: usize = 3000;
const TOLERANCE: f64 = 0.05;

fn config(service: &str, port: u16, protocol: &str, backends: &[std::net::SocketAddr]) -> String {
    format!(
        "version: \"1\"\nservices:\n  - name: {service}\n    ports: [{{port: {port}, protocol: {protocol}}}]\n    endpoints:\n{}",
        endpoints_yaml(backends, port)
    )
}

/// Backends a, b and c serving `echo.test.svc.cluster.local:80`, declared
/// with `protocol`, behind a proxy's explicit listener.
async fn three_http_backends_behind_proxy(protocol: &str) -> TestProxy {
    let backends = vec![
        http_backend("a").await,
        http_backend("b").await,
        http_backend("c").await,
    ];
    start_proxy(
        &config("echo.test.svc.cluster.local", 80, protocol, &backends),
        &["echo.test.svc.cluster.local:80"],
        &[],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_one_channel_is_balanced_per_request() {
    let backends = vec![
        grpc_backend("a").await,
        grpc_backend("b").await,
        grpc_backend("c").await,
    ];
    let proxy = start_proxy(
        &config("echo-grpc.test.svc.cluster.local", 50051, "GRPC", &backends),
        &["echo-grpc.test.svc.cluster.local:50051"],
        &[],
    )
    .await;
    // One tonic channel: one HTTP/2 connection to the proxy.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", proxy.listener(0)))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client = EchoClient::new(channel);
    let counts = count_concurrently(N, |i| {
        let mut c = client.clone();
        async move {
            c.echo(EchoRequest {
                message: format!("m{i}"),
                ..Default::default()
            })
            .await
            .expect("rpc succeeds")
            .into_inner()
            .pod
        }
    })
    .await;
    assert_even(&counts, N, 3, TOLERANCE);
    proxy.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_one_keepalive_connection_is_balanced_per_request() {
    let proxy = three_http_backends_behind_proxy("HTTP1").await;
    let stream = tokio::net::TcpStream::connect(proxy.listener(0))
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..N {
        let req = http::Request::get("/")
            .header("host", "echo.test.svc.cluster.local")
            .body(Empty::<Bytes>::new())
            .unwrap();
        sender.ready().await.unwrap();
        let resp = sender
            .send_request(req)
            .await
            .expect("same connection keeps working");
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        *counts
            .entry(String::from_utf8_lossy(&body).into())
            .or_default() += 1;
    }
    assert!(!conn.is_finished(), "the client connection stayed open");
    assert_even(&counts, N, 3, TOLERANCE);

    // Must show 4: the metrics agree with what was sent, read by a real
    // Prometheus text parser.
    let text = scrape(proxy.running.metrics_addr).await;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("valid Prometheus text");
    let mut total = 0.0;
    let mut by_workload = 0;
    for s in &scrape.samples {
        if s.metric == "mesh_requests_total"
            && s.labels.get("destination_service") == Some("echo.test.svc.cluster.local")
            && s.labels.get("code") == Some("200")
            && s.labels.get("direction") == Some("outbound")
            && s.labels.get("source_workload") == Some("test-client")
        {
            if let prometheus_parse::Value::Counter(v) = s.value {
                total += v;
                by_workload += 1;
            }
        }
    }
    assert_eq!(total, N as f64, "mesh_requests_total counts every request");
    assert_eq!(
        by_workload, 1,
        "one series for the destination workload 'backend'"
    );
    let count = scrape
        .samples
        .iter()
        .find_map(|s| match (&s.metric[..], &s.value) {
            ("mesh_request_duration_seconds", prometheus_parse::Value::Histogram(h))
                if s.labels.get("destination_service") == Some("echo.test.svc.cluster.local") =>
            {
                h.last().map(|b| b.count)
            }
            _ => None,
        })
        .expect("latency histogram present");
    assert_eq!(count, N as f64, "the +Inf bucket counts every request");
    proxy.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_one_connection_is_balanced_per_request() {
    let proxy = three_http_backends_behind_proxy("HTTP2").await;
    let stream = tokio::net::TcpStream::connect(proxy.listener(0))
        .await
        .unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let counts = count_concurrently(N, |_| {
        let mut s = sender.clone();
        async move {
            let req = http::Request::get("http://echo.test.svc.cluster.local/")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = s.send_request(req).await.expect("request succeeds");
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8_lossy(&body).to_string()
        }
    })
    .await;
    if counts.len() != 3 || counts.values().any(|c| c.abs_diff(N / 3) > N / 20) {
        // Show the balancer's view (latency estimates, in-flight) on failure.
        eprintln!(
            "{}",
            admin_get(proxy.running.admin_addr, "/config_dump").await
        );
    }
    assert_even(&counts, N, 3, TOLERANCE);
    proxy.running.shutdown().await;
}

async fn admin_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_subsets_and_header_routes() {
    let backends = vec![http_backend("v1").await, http_backend("v2").await];
    let yaml = format!(
        r#"
services:
  - name: web
    ports: [{{port: 80}}]
    endpoints:
{}
    policy:
      subsets:
        - {{name: v1, labels: {{version: v1}}}}
        - {{name: v2, labels: {{version: v2}}}}
    httpRoutes:
      - matches: [{{headers: [{{name: x-canary, value: {{exact: "yes"}}}}]}}]
        destinations: [{{destination: {{service: web, subset: v2}}}}]
      - destinations:
          - {{destination: {{service: web, subset: v1}}, weight: 90}}
          - {{destination: {{service: web, subset: v2}}, weight: 10}}
"#,
        endpoints_yaml(&backends, 80)
    );
    let proxy = start_proxy(&yaml, &["web:80"], &[]).await;
    let stream = tokio::net::TcpStream::connect(proxy.listener(0))
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    async fn get(
        sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
        canary: bool,
    ) -> String {
        sender.ready().await.unwrap();
        let mut req = http::Request::get("/").header("host", "web");
        if canary {
            req = req.header("x-canary", "yes");
        }
        let resp = sender
            .send_request(req.body(Empty::<Bytes>::new()).unwrap())
            .await
            .expect("request succeeds");
        String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).to_string()
    }
    let mut v2 = 0;
    for _ in 0..5000 {
        if get(&mut sender, false).await == "v2" {
            v2 += 1;
        }
    }
    assert!(
        (350..=650).contains(&v2),
        "10% ± 3% to v2, got {v2} of 5000"
    );
    for _ in 0..50 {
        assert_eq!(
            get(&mut sender, true).await,
            "v2",
            "header match routes only to v2"
        );
    }
    proxy.running.shutdown().await;
}
