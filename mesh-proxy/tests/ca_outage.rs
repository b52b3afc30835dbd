//! Two proxies get short-lived certificates from a real mesh-ca over gRPC.
//! The CA goes away for longer than a rotation interval while they carry
//! traffic: no request fails, no proxy restarts (the same running proxies
//! keep serving on their current certificates), and when the CA returns
//! both renew.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mesh_ca::auth::StaticTokens;
use mesh_ca::{Authority, CaStore, ServerConfig};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKENS: &str = r#"
"client-token-0123456": {namespace: client, serviceAccount: frontend}
"server-token-0123456": {namespace: server, serviceAccount: web}
"#;
/// Renewal (rotation) is due at half of it: every 10 s.
const TTL: &str = "20s";

async fn start_ca(store: &CaStore, addr: SocketAddr) -> mesh_ca::server::RunningServer {
    let authority = Authority::load_or_create(store, None).await.unwrap();
    let tokens = Arc::new(StaticTokens::from_yaml(TOKENS).unwrap());
    // The port may take a moment to be free again after a restart.
    for _ in 0..50 {
        if let Ok(l) = tokio::net::TcpListener::bind(addr).await {
            return mesh_ca::serve(l, authority, tokens, ServerConfig::default())
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot bind the CA port {addr}");
}

async fn get(addr: SocketAddr) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    if s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    out.starts_with(b"HTTP/1.1 200")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_survives_a_ca_outage_and_certificates_renew_when_it_returns() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let store = CaStore::Local(dir.path().join("ca"));
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ca_addr = probe.local_addr().unwrap();
    drop(probe);
    let ca = start_ca(&store, ca_addr).await;
    let root = dir.path().join("root.pem");
    let authority = Authority::load_or_create(&store, None).await.unwrap();
    std::fs::write(&root, authority.trust_bundle_pem().concat()).unwrap();
    for (f, t) in [
        ("client.token", "client-token-0123456"),
        ("server.token", "server-token-0123456"),
    ] {
        std::fs::write(dir.path().join(f), t).unwrap();
    }
    let ca_flags = |who: &str, ns: &str, sa: &str| -> Vec<String> {
        vec![
            "--ca-addr".into(),
            format!("https://{ca_addr}"),
            "--ca-server-name".into(),
            "localhost".into(),
            "--ca-root".into(),
            root.display().to_string(),
            "--ca-token-file".into(),
            dir.path()
                .join(format!("{who}.token"))
                .display()
                .to_string(),
            "--namespace".into(),
            ns.into(),
            "--service-account".into(),
            sa.into(),
            "--identity-ttl".into(),
            TTL.into(),
        ]
    };

    let app = http_backend("app").await;
    let mut server_args = vec![
        "--inbound-addr".to_string(),
        "127.0.0.1:0".into(),
        "--inbound-forward".into(),
        app.to_string(),
    ];
    server_args.extend(ca_flags("server", "server", "web"));
    let server_args: Vec<&str> = server_args.iter().map(String::as_str).collect();
    let server = start_proxy("inbound: {mode: STRICT}\n", &[], &server_args).await;
    let inbound = server.running.inbound_addr.unwrap();
    let client_args = ca_flags("client", "client", "frontend");
    let client_args: Vec<&str> = client_args.iter().map(String::as_str).collect();
    let client = start_proxy(
        &format!(
            "services:\n  - name: web\n    ports: [{{port: 80, protocol: HTTP1}}]\n    endpoints: [{{address: \"127.0.0.1\", ports: {{\"80\": {}}}, identity: \"spiffe://cluster.local/ns/server/sa/web\"}}]\n",
            inbound.port()
        ),
        &["web:80"],
        &client_args,
    )
    .await;

    // Both proxies obtain their certificates from the CA.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(client.running.shared.tls.is_ready() && server.running.shared.tls.is_ready()) {
        assert!(
            Instant::now() < deadline,
            "proxies got no certificate from the CA"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        server.running.shared.tls.identity().as_deref(),
        Some("spiffe://cluster.local/ns/server/sa/web")
    );
    let first_expiry: Vec<SystemTime> = [&client, &server]
        .iter()
        .map(|p| p.running.shared.tls.not_after().unwrap())
        .collect();

    // Steady traffic for the whole test.
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let load = {
        let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
        let addr = client.listener(0);
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                if get(addr).await {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The CA goes away for 12 s, longer than a rotation interval (10 s),
    // so the proxies' renewal time passes while it is away.
    ca.handle.abort();
    let _ = ca.handle.await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let during = failed.load(Ordering::Relaxed);
    for first in &first_expiry {
        assert!(
            SystemTime::now() + Duration::from_secs(10) > *first,
            "the outage covered the renewal time"
        );
    }
    for (p, first) in [&client, &server].iter().zip(&first_expiry) {
        assert_eq!(
            p.running.shared.tls.not_after().unwrap(),
            *first,
            "no renewal while the CA is down"
        );
    }

    // The CA comes back (same root, same port): both renew.
    let _ca = start_ca(&store, ca_addr).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let renewed = [&client, &server]
            .iter()
            .zip(&first_expiry)
            .all(|(p, first)| p.running.shared.tls.not_after().unwrap() > *first);
        if renewed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "certificates not renewed after the CA returned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    load.await.unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 100, "traffic flowed: {ok} requests");
    assert_eq!(during, 0, "no failures while the CA was down");
    assert_eq!(failed, 0, "no failed requests at all ({ok} succeeded)");
    let metrics = scrape(client.running.metrics_addr).await;
    assert!(
        metrics.contains("mesh_identity_cert_expiry_timestamp_seconds"),
        "{metrics}"
    );
}
