//! The controller restarts while a real mesh-proxy carries traffic: no
//! request fails (the proxy keeps its last good config while the controller
//! is away), the proxy reconnects and resumes without a resend, and a change
//! made after the restart reaches it.
//!
//! Runs on loopback with no cluster: the controller in local mode (a
//! directory of YAML), the proxy and both in process, certificates from a
//! real mesh-ca authority.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_controller::identity::{Material, ServerTls};
use mesh_controller::push::Debounce;
use mesh_controller::run::{ControllerConfig, Running};
use mesh_controller::server::StreamConfig;
use mesh_controller::source::dir::DirSource;
use mesh_controller::testing::{self, write_atomic as write};
use mesh_controller::translate::TranslateConfig;
use tokio::net::TcpListener;

/// Issues a certificate for `ns/sa`.
fn issue(ca: &mesh_ca::authority::Authority, ns: &str, sa: &str) -> testing::Issued {
    testing::issue(ns, sa, |id, csr| {
        let leaf = ca.sign(id, csr, Duration::from_secs(3600)).unwrap();
        (leaf.cert_chain_pem, leaf.trust_bundle_pem)
    })
}

async fn backend(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(name))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn endpoint_slice(name: &str, port: u16) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: demo\n  labels: {{kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints: [{{addresses: [127.0.0.1]}}]\n"
    )
}

async fn start_controller(dir: &Path, listener: TcpListener, material: &Material) -> Running {
    mesh_controller::run::start(
        Arc::new(DirSource::new(dir, Duration::from_millis(100))),
        ServerTls::from_material(material).unwrap(),
        listener,
        None,
        ControllerConfig {
            translate: TranslateConfig::default(),
            debounce: Debounce {
                quiet: Duration::from_millis(20),
                max_wait: Duration::from_millis(200),
            },
            stream: StreamConfig {
                trust_domain: "cluster.local".into(),
                require_pod: false,
                max_concurrent_sends: 4,
            },
        },
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap()
}

async fn get(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Empty<Bytes>,
    >,
    proxy: SocketAddr,
) -> Result<String, String> {
    let req = http::Request::get(format!("http://{proxy}/"))
        .header("host", "web.demo.svc.cluster.local")
        .body(Empty::new())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status != 200 {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    Ok(String::from_utf8_lossy(&body).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_restart_under_traffic_fails_no_request_and_resyncs() {
    let work = tempfile::tempdir().unwrap();
    let conf: PathBuf = work.path().join("mesh");
    std::fs::create_dir(&conf).unwrap();
    let (a, b, c) = (backend("a").await, backend("b").await, backend("c").await);
    write(
        &conf,
        "web.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\nspec: {ports: [{name: http, port: 80}]}\n",
    );
    write(&conf, "web-a.yaml", &endpoint_slice("web-a", a.port()));
    write(&conf, "web-b.yaml", &endpoint_slice("web-b", b.port()));

    let ca = mesh_ca::authority::Authority::generate().unwrap();
    let controller_tls = issue(&ca, "mesh-system", "mesh-controller").material;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let controller_addr = listener.local_addr().unwrap();
    let controller = start_controller(&conf, listener, &controller_tls).await;

    let me = issue(&ca, "demo", "client");
    for (f, pem) in [
        ("cert.pem", &me.chain_pem),
        ("key.pem", &me.key_pem),
        ("bundle.pem", &me.trust_bundle_pem),
    ] {
        std::fs::write(work.path().join(f), pem).unwrap();
    }
    let p = |f: &str| work.path().join(f).display().to_string();
    let argv = [
        "mesh-proxy".to_string(),
        "run".into(),
        "--no-transparent".into(),
        "--listen".into(),
        "127.0.0.1:0=web.demo.svc.cluster.local:80".into(),
        "--admin-addr".into(),
        "127.0.0.1:0".into(),
        "--metrics-addr".into(),
        "127.0.0.1:0".into(),
        "--controller-addr".into(),
        controller_addr.to_string(),
        "--namespace".into(),
        "demo".into(),
        "--service-account".into(),
        "client".into(),
        "--pod".into(),
        "client-1".into(),
        "--identity-cert".into(),
        p("cert.pem"),
        "--identity-key".into(),
        p("key.pem"),
        "--trust-bundle".into(),
        p("bundle.pem"),
    ];
    let mesh_proxy::cli::Command::Run(args) =
        <mesh_proxy::cli::Cli as clap::Parser>::parse_from(argv).command
    else {
        unreachable!()
    };
    let proxy = mesh_proxy::start(*args).await.expect("proxy starts");
    let proxy_addr = proxy.explicit_addrs[0];
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Empty<Bytes>>();

    // The proxy has the config once requests reach a backend.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while get(&client, proxy_addr).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the proxy never got its config"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Traffic for the rest of the test: 4 workers, every failure counted.
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (client, ok, failures, stop) =
            (client.clone(), ok.clone(), failures.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                match get(&client, proxy_addr).await {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.lock().unwrap().push(e),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Restart: the controller goes away for a second, comes back on the
    // same address with the same directory.
    let before = controller.sync.report(0).proxies[0].proxy.acked.clone();
    assert!(!before.is_empty());
    controller.shutdown().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let listener = TcpListener::bind(controller_addr).await.unwrap();
    let controller = start_controller(&conf, listener, &controller_tls).await;

    // The proxy reconnects and resumes: same content, nothing resent.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let report = controller.sync.report(0);
        if let Some(p) = report.proxies.first() {
            if !p.proxy.acked.is_empty() {
                assert_eq!(
                    p.proxy.acked.rsplit('.').next(),
                    before.rsplit('.').next(),
                    "same content after the restart"
                );
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the proxy never reconnected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pushes_after_restart = controller.metrics.pushes.with_label_values(&["full"]).get();
    assert_eq!(
        pushes_after_restart, 0,
        "a resuming proxy gets no full resend"
    );

    // A change after the restart reaches the proxy: backend c takes traffic.
    write(&conf, "web-c.yaml", &endpoint_slice("web-c", c.port()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if get(&client, proxy_addr).await.as_deref() == Ok("c") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new endpoint never took traffic"
        );
    }
    let latest = controller.snapshots.borrow().as_ref().unwrap().version;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(controller.sync.report(latest).proxies[0].status, "SYNCED");

    stop.cancel();
    for w in workers {
        w.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    let ok = ok.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        ok as usize + failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 100, "only {ok} requests");
    proxy.shutdown().await;
    controller.shutdown().await;
}
