//! mTLS handshakes per second per core through the proxy's inbound side.
//!
//!     cargo run --release -p mesh-proxy --features testing --example handshakes [SECONDS]
//!
//! A proxy (one worker thread) terminates mesh mTLS on its inbound listener;
//! a client on another thread opens a fresh TCP + TLS 1.3 connection
//! (P-256 certificates from a throwaway CA, client certificate, SPIFFE
//! verification on both sides) for each handshake and closes it. The figure
//! is handshakes divided by the CPU seconds of the whole process, so it
//! counts both ends: a conservative per-core rate for one side.
//! Prints one JSON object.

use std::time::{Duration, Instant};

use clap::Parser;
use mesh_proxy::cli::{Cli, Command};
use mesh_proxy::testca::TestCa;
use mesh_proxy::tls::{MeshTls, TlsMaterial, ALPN_TCP};
use tokio::io::AsyncWriteExt;

fn cpu_seconds() -> f64 {
    let r = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .expect("getrusage");
    let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    t(r.user_time()) + t(r.system_time())
}

fn main() {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let proxy_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let ca = TestCa::new("bench");
    let server_id = "spiffe://cluster.local/ns/bench/sa/server";
    let (running, _app) = proxy_rt.block_on(async {
        let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app_addr = app.local_addr().unwrap();
        // The app accepts and closes: we measure handshakes, not payload.
        tokio::spawn(async move {
            while let Ok((s, _)) = app.accept().await {
                drop(s);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("p.yaml");
        std::fs::write(&cfg, "inbound: {mode: STRICT}\n").unwrap();
        let argv = [
            "mesh-proxy",
            "run",
            "--config",
            cfg.to_str().unwrap(),
            "--no-transparent",
            "--inbound-addr",
            "127.0.0.1:0",
            "--inbound-forward",
            &app_addr.to_string(),
            "--admin-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--log",
            "error",
        ];
        let Command::Run(args) = Cli::parse_from(argv).command else {
            unreachable!()
        };
        let running = mesh_proxy::start(*args).await.unwrap();
        let (chain, key) = ca.issue(server_id);
        running
            .shared
            .tls
            .set(TlsMaterial::from_pem(&chain, &key, &ca.root_pem()).unwrap())
            .unwrap();
        (running, dir)
    });
    let inbound = running.inbound_addr.unwrap();
    let client_tls = MeshTls::default();
    let (chain, key) = ca.issue("spiffe://cluster.local/ns/bench/sa/client");
    client_tls
        .set(TlsMaterial::from_pem(&chain, &key, &ca.root_pem()).unwrap())
        .unwrap();
    let config = client_tls.client_config(server_id, ALPN_TCP).unwrap();

    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (n, elapsed, cpu) = client_rt.block_on(async move {
        let connector = tokio_rustls::TlsConnector::from(config);
        let name = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        // Warm up.
        for _ in 0..50 {
            let tcp = tokio::net::TcpStream::connect(inbound).await.unwrap();
            let mut s = connector.connect(name.clone(), tcp).await.unwrap();
            let _ = s.shutdown().await;
        }
        let (t0, c0) = (Instant::now(), cpu_seconds());
        let mut n = 0u64;
        while t0.elapsed() < Duration::from_secs(secs) {
            let tcp = tokio::net::TcpStream::connect(inbound).await.unwrap();
            let mut s = connector
                .connect(name.clone(), tcp)
                .await
                .expect("handshake");
            let _ = s.shutdown().await;
            n += 1;
        }
        (n, t0.elapsed().as_secs_f64(), cpu_seconds() - c0)
    });
    println!(
        "{}",
        serde_json::json!({
            "scenario": "mtls-handshake",
            "target": "mesh-proxy",
            "handshakes": n,
            "seconds": elapsed,
            "cpu_seconds": cpu,
            "handshakes_per_sec": n as f64 / elapsed,
            "handshakes_per_sec_per_core": n as f64 / cpu,
        })
    );
    drop(running);
}
