//! Kubelet probes through the proxy: `GET :15020/app-health/<container>/<probe>`
//! runs the app's original check (from `MESH_APP_PROBES`) against the pod IP.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn status_of(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_probes_run_the_original_checks() {
    let web = http_backend("web").await;
    let grpc = grpc_backend("grpc").await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let probes = serde_json::json!({
        "/app-health/app/readyz": {"httpGet": {"path": "/healthz", "port": web.port(),
            "httpHeaders": [{"name": "X-Probe", "value": "ready"}]}},
        "/app-health/app/livez": {"httpGet": {"path": "/fail", "port": web.port()}, "timeoutSeconds": 2},
        "/app-health/app/startupz": {"tcpSocket": {"port": web.port()}},
        "/app-health/db/startupz": {"tcpSocket": {"port": closed}},
        "/app-health/rpc/readyz": {"grpc": {"port": grpc.port()}},
    })
    .to_string();
    let p = start_proxy(
        "services: []\n",
        &[],
        &["--app-probes", &probes, "--pod-ip", "127.0.0.1"],
    )
    .await;
    let m = p.running.metrics_addr;
    assert_eq!(status_of(m, "/app-health/app/readyz").await.0, 200);
    // The app answers 500: the probe fails (503).
    assert_eq!(status_of(m, "/app-health/app/livez").await.0, 503);
    assert_eq!(status_of(m, "/app-health/app/startupz").await.0, 200);
    let (code, body) = status_of(m, "/app-health/db/startupz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("connect"), "{body}");
    // A gRPC server without the health service is not SERVING.
    let (code, body) = status_of(m, "/app-health/rpc/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("gRPC"), "{body}");
    // Only configured probes are reachable.
    assert_eq!(status_of(m, "/app-health/app/other").await.0, 404);
    p.running.shutdown().await;
}

#[tokio::test]
async fn malformed_probe_json_is_a_startup_error_naming_it() {
    use clap::Parser;
    let argv = [
        "mesh-proxy",
        "run",
        "--no-transparent",
        "--app-probes",
        "{not json",
    ];
    let mesh_proxy::cli::Command::Run(args) = mesh_proxy::cli::Cli::parse_from(argv).command else {
        unreachable!()
    };
    let Err(e) = mesh_proxy::start(*args).await else {
        panic!("started with malformed probes")
    };
    assert!(e.to_string().contains("MESH_APP_PROBES"), "{e}");
}
