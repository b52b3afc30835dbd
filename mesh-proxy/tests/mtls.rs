//! Mutual TLS between two proxies on loopback: identities, trust, STRICT and
//! PERMISSIVE, and authorization that path tricks cannot bypass.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioExecutor;
use mesh_proxy::testca::TestCa;
use mesh_proxy::tls::TlsMaterial;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVER_ID: &str = "spiffe://cluster.local/ns/server/sa/web";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/client/sa/frontend";

/// An app that answers with the path it got and the caller identity header.
async fn app() -> SocketAddr {
    http_app(|req| async move {
        let xfcc = req
            .headers()
            .get("x-forwarded-client-cert")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        format!("{} {:?} {}", req.uri().path(), req.version(), xfcc)
    })
    .await
}

fn server_config(mode: &str) -> String {
    format!(
        r#"
inbound:
  mode: {mode}
  authorization:
    - name: server/deny-admin
      action: DENY
      rules: [{{paths: ["/admin", "/admin/*"]}}]
"#
    )
}

struct Pair {
    client: TestProxy,
    server: TestProxy,
}

async fn pair(ca: &TestCa, expected_server_id: &str, mode: &str) -> Pair {
    let server = inbound_proxy(ca, &server_config(mode), app().await, SERVER_ID).await;
    let inbound = server.running.inbound_addr.unwrap();
    let client = start_proxy(
        &format!(
            r#"
services:
  - name: web.server.svc.cluster.local
    ports: [{{port: 80, protocol: HTTP1}}]
    endpoints:
      - {{address: "127.0.0.1", ports: {{"80": {}}}, identity: "{expected_server_id}"}}
"#,
            inbound.port()
        ),
        &["web.server.svc.cluster.local:80"],
        &[],
    )
    .await;
    give_certificate(&client, ca, CLIENT_ID);
    Pair { client, server }
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_string(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_request_carries_the_callers_identity() {
    let ca = TestCa::new("a");
    let p = pair(&ca, SERVER_ID, "STRICT").await;
    let (status, _, body) = get(p.client.listener(0), "/hello").await;
    assert_eq!(status, 200, "{body}");
    // HTTP/1.1 from the app, HTTP/2 between the proxies, HTTP/1.1 to the app.
    assert!(body.starts_with("/hello HTTP/1.1 "), "{body}");
    assert!(
        body.ends_with(&format!("By={SERVER_ID};URI={CLIENT_ID}")),
        "the app sees the caller's SPIFFE ID: {body}"
    );
    let metrics = scrape(p.server.running.metrics_addr).await;
    assert!(
        metrics.contains(
            "direction=\"inbound\",source_namespace=\"client\",source_workload=\"frontend\""
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_identity_or_foreign_root_is_refused() {
    let ca = TestCa::new("a");
    // The endpoint must be "other"; the server proves "web": refused.
    let p = pair(&ca, "spiffe://cluster.local/ns/server/sa/other", "STRICT").await;
    let (status, head, body) = get(p.client.listener(0), "/").await;
    assert_eq!(status, 503, "{head}{body}");
    assert!(head.contains("x-mesh-error: upstream-tls"), "{head}");
    assert!(body.contains("not the expected"), "{body}");

    // A client with a certificate from another root cannot get in.
    let foreign = TestCa::new("b");
    let (chain, key) = foreign.issue(CLIENT_ID);
    let m = TlsMaterial::from_pem(&chain, &key, &ca.root_pem()).unwrap();
    let tls = mesh_proxy::tls::MeshTls::default();
    tls.set(m).unwrap();
    let cfg = tls
        .client_config(SERVER_ID, mesh_proxy::tls::ALPN_H2)
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(p.server.running.inbound_addr.unwrap())
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let result = async {
        let mut s = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await?;
        // TLS 1.3: the client may finish before the server rejects its
        // certificate; the refusal shows on first use.
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed"));
        }
        Ok::<_, std::io::Error>(())
    }
    .await;
    assert!(
        result.is_err(),
        "a certificate from another root must be refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_refuses_plaintext_permissive_accepts_both() {
    let ca = TestCa::new("a");
    let p = pair(&ca, SERVER_ID, "STRICT").await;
    let inbound = p.server.running.inbound_addr.unwrap();
    let (status, head, _) = get(inbound, "/").await;
    assert_eq!(status, 0, "STRICT: plaintext gets no answer: {head}");

    std::fs::write(p.server.config_path(), server_config("PERMISSIVE")).unwrap();
    let mut ok = false;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (status, _, body) = get(inbound, "/plain").await;
        if status == 200 {
            assert!(
                body.ends_with(" -"),
                "no identity for plaintext callers: {body}"
            );
            ok = true;
            break;
        }
    }
    assert!(ok, "PERMISSIVE accepts plaintext");
    let (status, _, body) = get(p.client.listener(0), "/tls").await;
    assert_eq!(status, 200);
    assert!(
        body.contains(CLIENT_ID),
        "PERMISSIVE still takes mTLS: {body}"
    );
    // A plaintext caller cannot forge the identity header.
    let mut s = tokio::net::TcpStream::connect(inbound).await.unwrap();
    s.write_all(
        format!("GET /x HTTP/1.1\r\nHost: web\r\nx-forwarded-client-cert: URI={CLIENT_ID}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.ends_with(" -"), "forged XFCC stripped: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_on_admin_is_not_bypassed_by_path_tricks() {
    let ca = TestCa::new("a");
    let p = pair(&ca, SERVER_ID, "STRICT").await;
    let c = p.client.listener(0);
    for path in [
        "/admin",
        "//admin",
        "/./admin",
        "/%61dmin",
        "/x/../admin",
        "/admin/",
        "/ADMIN/../admin/x",
    ] {
        let (status, head, body) = get(c, path).await;
        assert_eq!(status, 403, "{path}: {head}{body}");
        assert!(body.contains("RBAC: access denied"), "{body}");
    }
    for path in ["/admin%2Fx", "/admin%5cx"] {
        let (status, _, _) = get(c, path).await;
        assert_eq!(status, 400, "{path} refused before authorization");
    }
    // What the app receives is the normalized path.
    let (status, _, body) = get(c, "/a//b/./c/../d").await;
    assert_eq!(status, 200);
    assert!(body.starts_with("/a/b/d "), "{body}");
}

/// `GET path` on `addr`: the status code.
async fn status_of(addr: SocketAddr, path: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out)
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_ca_the_proxy_is_ready_only_with_a_certificate() {
    // The CA is unreachable: the proxy has its config but no certificate.
    let p = start_proxy(
        "services: []\n",
        &[],
        &["--ca-addr", "127.0.0.1:1", "--ca-root", "/nonexistent"],
    )
    .await;
    // The kubelet probes the pod IP: /ready and /live are on the metrics port.
    let metrics = p.running.metrics_addr;
    assert_eq!(status_of(metrics, "/live").await, 200);
    assert_eq!(status_of(metrics, "/ready").await, 503);
    assert_eq!(status_of(p.running.admin_addr, "/ready").await, 503);
    give_certificate(&p, &TestCa::new("a"), CLIENT_ID);
    assert_eq!(status_of(metrics, "/ready").await, 200);
}

/// An app that answers after `delay`.
async fn slow_app(delay: Duration) -> SocketAddr {
    http_app(move |_| async move {
        tokio::time::sleep(delay).await;
        "ok".to_string()
    })
    .await
}

/// One of two server proxies drains (SIGTERM in a pod) while requests
/// stream through the client proxy's shared HTTP/2 connection to it: the
/// requests it had accepted finish, the ones it never took (sent as its
/// GOAWAY crossed them, or on a connection about to close) go to the other
/// endpoint, and no caller sees an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_server_proxy_costs_no_request() {
    let ca = TestCa::new("drain");
    let mut servers = Vec::new();
    for _ in 0..2 {
        let app = slow_app(Duration::from_millis(20)).await;
        servers.push(inbound_proxy(&ca, &server_config("STRICT"), app, SERVER_ID).await);
    }
    // Both endpoints are on 127.0.0.1, told apart by their ports.
    let endpoints: Vec<String> = servers
        .iter()
        .map(|s| {
            format!(
                "      - {{address: \"127.0.0.1\", ports: {{\"80\": {}}}, identity: \"{SERVER_ID}\"}}\n",
                s.running.inbound_addr.unwrap().port()
            )
        })
        .collect();
    let client = start_proxy(
        &format!(
            "services:\n  - name: web.server.svc.cluster.local\n    ports: [{{port: 80, protocol: HTTP1}}]\n    endpoints:\n{}",
            endpoints.concat()
        ),
        &["web.server.svc.cluster.local:80"],
        &[],
    )
    .await;
    give_certificate(&client, &ca, CLIENT_ID);
    let addr = client.listener(0);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let c = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                .build_http::<Full<Bytes>>();
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let req = http::Request::get(format!("http://{addr}/"))
                    .header("host", "web.server.svc.cluster.local")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                match c.request(req).await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => {
                        let status = r.status();
                        let body = r.into_body().collect().await.map(|b| b.to_bytes());
                        failed.push(format!("{status} {body:?}"))
                    }
                    Err(e) => failed.push(format!("client error: {e:?}")),
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let draining = servers.remove(0);
    draining.running.shutdown_token().cancel();
    draining.running.wait().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for w in workers {
        let (o, f) = w.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(ok > 200, "only {ok} requests went through");
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
}

/// A TCP relay to `to` that can go silent: after `black_hole` is set, the
/// connections it carried drop every byte without closing (a node that
/// died, a silent partition); connections opened later relay normally.
/// `closed_by_server` counts those silent connections the far side closed.
struct Relay {
    addr: SocketAddr,
    black_hole: std::sync::Arc<std::sync::atomic::AtomicBool>,
    closed_by_server: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

async fn relay(to: SocketAddr) -> Relay {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let black_hole = Arc::new(AtomicBool::new(false));
    let closed_by_server = Arc::new(AtomicU64::new(0));
    let (bh, closed) = (black_hole.clone(), closed_by_server.clone());
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(to).await else {
                continue;
            };
            // Only connections open when the hole opens go silent.
            let silent = Arc::new(AtomicBool::new(false));
            if !bh.load(Ordering::SeqCst) {
                let watch = (bh.clone(), silent.clone());
                tokio::spawn(async move {
                    while !watch.0.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    watch.1.store(true, Ordering::SeqCst);
                });
            }
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let s1 = silent.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    if !s1.load(Ordering::SeqCst) && sw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
            let closed = closed.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                loop {
                    match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => {
                            if silent.load(Ordering::SeqCst) {
                                closed.fetch_add(1, Ordering::SeqCst);
                            }
                            // Keep the client side open: it must find out
                            // by itself.
                            std::future::pending::<()>().await;
                        }
                        Ok(n) => {
                            if !silent.load(Ordering::SeqCst)
                                && cw.write_all(&buf[..n]).await.is_err()
                            {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    Relay {
        addr,
        black_hole,
        closed_by_server,
    }
}

/// A peer proxy that vanishes without closing (its node died): the client
/// proxy's pooled HTTP/2 connection to it stops answering PINGs, is closed
/// within interval + timeout, and the next request opens a new connection
/// instead of hanging on the dead one; the server proxy frees its side too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_gone_silent_is_found_by_keepalive_pings() {
    let ca = TestCa::new("keepalive");
    let keepalive = [
        "--keepalive-interval",
        "500ms",
        "--keepalive-timeout",
        "500ms",
    ];
    let app = slow_app(Duration::ZERO).await;
    let server = start_proxy(
        &server_config("STRICT"),
        &[],
        &[
            &[
                "--inbound-addr",
                "127.0.0.1:0",
                "--inbound-forward",
                &app.to_string(),
            ][..],
            &keepalive[..],
        ]
        .concat(),
    )
    .await;
    give_certificate(&server, &ca, SERVER_ID);
    let relay = relay(server.running.inbound_addr.unwrap()).await;
    let client = start_proxy(
        &format!(
            "services:\n  - name: web.server.svc.cluster.local\n    ports: [{{port: 80, protocol: HTTP1}}]\n    endpoints:\n      - {{address: \"127.0.0.1\", ports: {{\"80\": {}}}, identity: \"{SERVER_ID}\"}}\n",
            relay.addr.port()
        ),
        &["web.server.svc.cluster.local:80"],
        &keepalive,
    )
    .await;
    give_certificate(&client, &ca, CLIENT_ID);
    let addr = client.listener(0);
    let (status, _, body) = get(addr, "/").await;
    assert_eq!(status, 200, "{body}");
    relay
        .black_hole
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // Interval + timeout is 1 s; give it 3.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t = std::time::Instant::now();
    let (status, _, body) = get(addr, "/").await;
    assert_eq!(status, 200, "after the peer went silent: {body}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(
        relay
            .closed_by_server
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the server proxy closed its side of the silent connection"
    );
}
