//! Gateway mode: the proxy as an ingress gateway. Two hosts and two paths
//! routed to the right backends, TLS terminated with a certificate from the
//! config (and from a mounted Secret directory), forwarded into the mesh over
//! mTLS (the backends' proxies are STRICT and see the gateway's identity).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_proxy::testca::TestCa;
use mesh_proxy::tls::TlsMaterial;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::ServerName;
use support::*;

const GATEWAY_ID: &str = "spiffe://cluster.local/ns/ingress/sa/edge";

/// An app that answers with its name, the path, the scheme the gateway saw
/// and the caller identity its proxy saw.
async fn app(name: &'static str) -> SocketAddr {
    http_app(move |req| async move {
        let h = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string()
        };
        format!(
            "{name} {} {} {}",
            req.uri().path(),
            h("x-forwarded-proto"),
            h("x-forwarded-client-cert")
        )
    })
    .await
}

/// A meshed backend: the app behind a STRICT proxy with identity `id`.
/// Returns the proxy (keep it alive) and its inbound address.
async fn meshed(ca: &TestCa, name: &'static str, id: &str) -> (TestProxy, SocketAddr) {
    let server = inbound_proxy(ca, "inbound: {mode: STRICT}\n", app(name).await, id).await;
    let inbound = server.running.inbound_addr.unwrap();
    (server, inbound)
}

/// A public-facing certificate for `hosts` from its own CA: (root PEM,
/// chain PEM, key PEM).
fn edge_certificate(hosts: &[&str]) -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_cert.pem(), leaf.pem(), key.serialize_pem())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on `port` (or stops, when
/// `open` is false).
async fn wait_port(port: u16, open: bool) {
    for _ in 0..100 {
        let ok = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok();
        if ok == open {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "port {port} did not become {}",
        if open { "open" } else { "closed" }
    );
}

fn indent(pem: &str, by: usize) -> String {
    pem.lines()
        .map(|l| format!("{}{l}", " ".repeat(by)))
        .collect::<Vec<_>>()
        .join("\n")
}

struct Mesh {
    _ca: TestCa,
    _backends: Vec<TestProxy>,
    services_yaml: String,
}

/// Three services: api and web meshed (STRICT), docs plain.
async fn mesh() -> Mesh {
    let ca = TestCa::new("mesh");
    let (api_proxy, api) = meshed(&ca, "api", "spiffe://cluster.local/ns/shop/sa/api").await;
    let (web_proxy, web) = meshed(&ca, "web", "spiffe://cluster.local/ns/shop/sa/web").await;
    let docs = app("docs").await;
    let services_yaml = format!(
        r#"
services:
  - name: api.shop.svc.cluster.local
    ports: [{{port: 8080, protocol: HTTP1}}]
    endpoints:
      - {{address: "127.0.0.1", ports: {{"8080": {api}}}, identity: "spiffe://cluster.local/ns/shop/sa/api"}}
  - name: web.shop.svc.cluster.local
    ports: [{{port: 80, protocol: HTTP1}}]
    endpoints:
      - {{address: "127.0.0.1", ports: {{"80": {web}}}, identity: "spiffe://cluster.local/ns/shop/sa/web"}}
  - name: docs.shop.svc.cluster.local
    ports: [{{port: 80, protocol: HTTP1}}]
    endpoints:
      - {{address: "127.0.0.1", ports: {{"80": {docs}}}}}
"#,
        api = api.port(),
        web = web.port(),
        docs = docs.port()
    );
    Mesh {
        _ca: ca,
        _backends: vec![api_proxy, web_proxy],
        services_yaml,
    }
}

const ROUTES: &str = r#"
    virtualHosts:
      - hosts: [shop.example.com]
        routes:
          - name: api
            matches: [{uri: {prefix: /api}}]
            destinations: [{destination: {service: api.shop.svc.cluster.local}}]
          - name: web
            destinations: [{destination: {service: web.shop.svc.cluster.local}}]
      - hosts: ["*.docs.example.com"]
        routes:
          - destinations: [{destination: {service: docs.shop.svc.cluster.local, port: 80}}]
"#;

async fn start_gateway(mesh: &Mesh, listeners_yaml: &str, extra: &[&str]) -> TestProxy {
    let ca = &mesh._ca;
    let mut args = vec!["--gateway-bind-ip", "127.0.0.1"];
    args.extend_from_slice(extra);
    let gw = start_proxy(
        &format!(
            "{}\ngatewayListeners:\n{listeners_yaml}",
            mesh.services_yaml
        ),
        &[],
        &args,
    )
    .await;
    let (chain, key) = ca.issue(GATEWAY_ID);
    gw.running
        .shared
        .tls
        .set(TlsMaterial::from_pem(&chain, &key, &ca.root_pem()).unwrap())
        .unwrap();
    gw
}

/// One request over TLS (`h2`: ALPN h2, else HTTP/1.1) with SNI and Host
/// `host`: (status, body).
async fn https_get(port: u16, root_pem: &str, host: &str, path: &str, h2: bool) -> (u16, String) {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = if h2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(host.to_string()).unwrap(), tcp)
        .await
        .expect("TLS handshake with the gateway");
    let io = TokioIo::new(tls);
    let req = http::Request::builder()
        .uri(format!("https://{host}{path}"))
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    };
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).to_string())
}

use rustls::pki_types::pem::PemObject;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_and_two_paths_over_tls_into_the_mesh() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mesh = mesh().await;
    let (root, chain, key) = edge_certificate(&[
        "shop.example.com",
        "*.docs.example.com",
        "other.example.com",
    ]);
    let port = free_port();
    let gw = start_gateway(
        &mesh,
        &format!(
            "  - port: {port}\n    name: https\n    tlsCertPem: |\n{}\n    tlsKeyPem: |\n{}\n{ROUTES}",
            indent(&chain, 6),
            indent(&key, 6)
        ),
        &[],
    )
    .await;
    wait_port(port, true).await;

    for h2 in [false, true] {
        let (status, body) = https_get(port, &root, "shop.example.com", "/api/orders", h2).await;
        assert_eq!(status, 200, "{body}");
        // Routed by path to api, over mesh mTLS: the STRICT backend proxy
        // saw the gateway's identity; the app learns the scheme was https.
        assert_eq!(
            body,
            format!(
                "api /api/orders https By=spiffe://cluster.local/ns/shop/sa/api;URI={GATEWAY_ID}"
            ),
            "h2={h2}"
        );
        let (status, body) = https_get(port, &root, "shop.example.com", "/cart", h2).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("web /cart https By="), "h2={h2}: {body}");
        // The second host, by wildcard, to a plain (unmeshed) backend.
        let (status, body) = https_get(port, &root, "v2.docs.example.com", "/intro", h2).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, "docs /intro https -", "h2={h2}");
    }

    // A host the gateway does not serve: 404 that names it.
    let (status, body) = https_get(port, &root, "other.example.com", "/", false).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("other.example.com"), "{body}");

    // Plaintext on the TLS port gets no HTTP answer.
    let (status, head, _) = plain_get(port, "shop.example.com", "/api").await;
    assert_eq!(status, 0, "plaintext on an HTTPS listener: {head}");

    let metrics = scrape(gw.running.metrics_addr).await;
    assert!(
        metrics.contains("direction=\"gateway\""),
        "gateway requests are counted: {metrics}"
    );
}

async fn plain_get(port: u16, host: &str, path: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_string(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_follow_the_config_and_certificates_come_from_secrets() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mesh = mesh().await;
    let creds = tempfile::tempdir().unwrap();
    let (root, chain, key) = edge_certificate(&["shop.example.com"]);
    let dir = creds.path().join("shop-cert");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tls.crt"), &chain).unwrap();
    std::fs::write(dir.join("tls.key"), &key).unwrap();

    // Plain HTTP first.
    let (http_port, https_port) = (free_port(), free_port());
    let plain = format!("  - port: {http_port}\n    name: http\n{ROUTES}");
    let creds_arg = creds.path().display().to_string();
    let gw = start_gateway(&mesh, &plain, &["--gateway-credentials-dir", &creds_arg]).await;
    wait_port(http_port, true).await;
    let (status, _, body) = plain_get(http_port, "shop.example.com", "/api/x").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("api /api/x http By="), "{body}");
    let (status, _, body) = plain_get(http_port, "SHOP.example.com.:80", "/").await;
    assert_eq!(status, 200, "hosts compare normalized: {body}");
    assert!(body.starts_with("web / http"), "{body}");

    // Add an HTTPS listener whose certificate is a mounted Secret, and drop
    // the HTTP one: the proxy opens and closes ports as the config says.
    let https =
        format!("  - port: {https_port}\n    name: https\n    credentialName: shop-cert\n{ROUTES}");
    std::fs::write(
        gw.config_path(),
        format!("{}\ngatewayListeners:\n{https}", mesh.services_yaml),
    )
    .unwrap();
    wait_port(https_port, true).await;
    wait_port(http_port, false).await;
    let (status, body) = https_get(https_port, &root, "shop.example.com", "/api/y", true).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("api /api/y https"), "{body}");

    // A listener whose Secret is missing serves nothing (never plaintext)
    // and says so in its metrics.
    let broken_port = free_port();
    let broken =
        format!("  - port: {broken_port}\n    name: broken\n    credentialName: missing\n{ROUTES}");
    std::fs::write(
        gw.config_path(),
        format!("{}\ngatewayListeners:\n{https}{broken}", mesh.services_yaml),
    )
    .unwrap();
    wait_port(broken_port, true).await;
    let (status, head, _) = plain_get(broken_port, "shop.example.com", "/").await;
    assert_eq!(status, 0, "{head}");
    let metrics = scrape(gw.running.metrics_addr).await;
    assert!(
        metrics.contains(&format!(
            "mesh_gateway_listener_errors_total{{port=\"{broken_port}\"}}"
        )),
        "{metrics}"
    );
}
