//! Hostile and broken input at the proxy's edge: nothing panics, every bad
//! request gets a clear answer, and the proxy keeps serving everyone else.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn setup() -> (TestProxy, std::net::SocketAddr) {
    let http = http_backend("ok").await;
    let echo = tcp_echo_backend().await;
    let banner = banner_backend(b"220 server speaks first\r\n").await;
    let yaml = format!(
        r#"
settings:
  detectTimeoutMs: 200
services:
  - name: web
    ports: [{{port: 80}}]
    endpoints: [{{address: "127.0.0.1", ports: {{"80": {}}}}}]
  - name: refused
    ports: [{{port: 80}}]
    endpoints: [{{address: "127.0.0.1", ports: {{"80": 1}}}}]
  - name: echo
    ports: [{{port: 7}}]
    endpoints: [{{address: "127.0.0.1", ports: {{"7": {}}}}}]
  - name: smtp
    ports: [{{port: 2525}}]
    endpoints: [{{address: "127.0.0.1", ports: {{"2525": {}}}}}]
  - name: empty
    ports: [{{port: 80}}]
"#,
        http.port(),
        echo.port(),
        banner.port()
    );
    let p = start_proxy(
        &yaml,
        &["web:80", "refused:80", "echo:7", "smtp:2525", "empty:80"],
        &[],
    )
    .await;
    let web = p.listener(0);
    (p, web)
}

/// Sends raw bytes and reads the whole answer (the proxy closes after a refusal).
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

async fn good_request_works(addr: std::net::SocketAddr) {
    let resp = raw(
        addr,
        b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("ok"), "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_attempts_get_400_and_nothing_reaches_the_backend() {
    let (p, web) = setup().await;
    let cases: &[&[u8]] = &[
        b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: xchunked\r\n\r\n",
    ];
    for c in cases {
        let resp = raw(web, c).await;
        assert!(resp.starts_with("HTTP/1.1 400 Bad Request"), "{resp}");
        assert!(resp.contains("mesh-proxy:"), "the body says why: {resp}");
    }
    good_request_works(web).await;
    // Refusals are counted; no request reached the upstream.
    let text = scrape(p.running.metrics_addr).await;
    assert!(
        text.contains("mesh_refused_requests_total{code=\"400\",direction=\"outbound\"} 4"),
        "{text}"
    );
    assert!(!text.contains("code=\"400\",destination_service"), "{text}");
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() {
    let (p, web) = setup().await;
    let mut req = b"GET / HTTP/1.1\r\nHost: web\r\nx-big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 100 * 1024));
    req.extend(b"\r\n\r\n");
    let resp = raw(web, &req).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    good_request_works(web).await;
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_is_503_with_the_reason() {
    let (p, _) = setup().await;
    let resp = raw(
        p.listener(1),
        b"GET / HTTP/1.1\r\nHost: refused\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert!(resp.contains("x-mesh-error: upstream-connect"), "{resp}");
    assert!(
        resp.contains("upstream connect error to 127.0.0.1:1"),
        "{resp}"
    );
    let resp = raw(
        p.listener(4),
        b"GET / HTTP/1.1\r\nHost: empty\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert!(resp.contains("no endpoints for empty"), "{resp}");
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_falls_back_to_tcp_after_the_detection_timeout() {
    let (p, _) = setup().await;
    // The server speaks first; the client says nothing. After the detection
    // timeout the proxy connects through and the banner arrives.
    let mut s = TcpStream::connect(p.listener(3)).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .expect("banner within the timeout")
        .unwrap();
    assert_eq!(&buf[..n], b"220 server speaks first\r\n");
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_pass_through_as_opaque_tcp_byte_exact_with_half_close() {
    let (p, web) = setup().await;
    assert!(
        echo_round_trip(p.listener(2), 256 * 1024).await,
        "echo is byte-exact"
    );
    // Garbage on an HTTP port is refused without harming others.
    let resp = raw(web, b"\x16\x00garbage\r\n\r\n\x00\xff").await;
    assert!(
        resp.is_empty() || !resp.starts_with("HTTP/1.1 200"),
        "{resp}"
    );
    good_request_works(web).await;
    let text = scrape(p.running.metrics_addr).await;
    assert!(text.contains("mesh_tcp_sent_bytes_total"), "{text}");
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reload_keeps_connections_and_rejects_bad_files() {
    let a = http_backend("a").await;
    let b = http_backend("b").await;
    let cfg = |addr: std::net::SocketAddr| {
        format!("services:\n  - name: web\n    ports: [{{port: 80}}]\n    endpoints: [{{address: \"127.0.0.1\", ports: {{\"80\": {}}}}}]\n", addr.port())
    };
    let p = start_proxy(&cfg(a), &["web:80"], &[]).await;
    let stream = TcpStream::connect(p.listener(0)).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    async fn get(
        s: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    ) -> String {
        use http_body_util::BodyExt;
        s.ready().await.unwrap();
        let resp = s
            .send_request(
                http::Request::get("/")
                    .header("host", "web")
                    .body(Default::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).to_string()
    }
    assert_eq!(get(&mut sender).await, "a");
    // A broken file is refused; the last good config stays.
    std::fs::write(
        p.config_path(),
        "services: [{name: web, ports: [{port: 'x'}]}]",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(get(&mut sender).await, "a");
    // A good file is applied on the same client connection.
    std::fs::write(p.config_path(), cfg(b)).unwrap();
    let mut switched = false;
    for _ in 0..40 {
        if get(&mut sender).await == "b" {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(switched, "new config applied without reconnecting");
    let text = scrape(p.running.metrics_addr).await;
    assert!(
        text.contains("mesh_config_updates_total{result=\"rejected\"} 1"),
        "{text}"
    );
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_in_flight_requests() {
    // A backend that answers after 500 ms.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow")
                    .await;
            });
        }
    });
    let yaml = format!("services:\n  - name: slow\n    ports: [{{port: 80}}]\n    endpoints: [{{address: \"127.0.0.1\", ports: {{\"80\": {}}}}}]\n", slow.port());
    let p = start_proxy(&yaml, &["slow:80"], &[]).await;
    let addr = p.listener(0);
    let admin = p.running.admin_addr;
    let inflight =
        tokio::spawn(async move { raw(addr, b"GET / HTTP/1.1\r\nHost: slow\r\n\r\n").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let token = p.running.shutdown_token();
    token.cancel();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let ready = raw(
        admin,
        b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        ready.starts_with("HTTP/1.1 503"),
        "not ready while draining: {ready}"
    );
    assert!(ready.ends_with("draining\n"), "{ready}");
    let resp = inflight.await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("slow"), "{resp}");
    p.running.wait().await;
}

/// On a port declared HTTP a client slow to send its first bytes (longer
/// than the detection timeout, as on a busy node) is still proxied as HTTP,
/// routes and all, not passed through as opaque TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_on_a_declared_http_port_is_still_routed() {
    let http = http_backend("ok").await;
    let yaml = format!(
        "settings:\n  detectTimeoutMs: 100\nservices:\n  - name: web\n    ports: [{{port: 80, protocol: HTTP1}}]\n    endpoints: [{{address: \"127.0.0.1\", ports: {{\"80\": {}}}}}]\n    httpRoutes:\n      - name: all\n        destinations: [{{destination: {{service: web}}}}]\n        responseHeaders: {{set: {{x-routed: \"yes\"}}}}\n",
        http.port()
    );
    let p = start_proxy(&yaml, &["web:80"], &[]).await;
    let mut s = TcpStream::connect(p.listener(0)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.to_ascii_lowercase().contains("x-routed: yes"),
        "routed, not passed through: {out}"
    );
    p.running.shutdown().await;
}
