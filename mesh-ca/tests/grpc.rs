//! gRPC end to end on loopback: the real tonic server over TLS (serving
//! certificate from the CA's own intermediate) and the real tonic client
//! verifying it with the trust bundle; StaticTokens authentication.

use std::sync::Arc;
use std::time::Duration;

use mesh_api::WorkloadIdentity;
use mesh_ca::auth::StaticTokens;
use mesh_ca::client::{self, ClientError};
use mesh_ca::csr::new_workload_csr;
use mesh_ca::{Authority, CaStore, ServerConfig};
use tonic::Code;

const TOKENS: &str = r#"
"web-token-0123": {namespace: shop, serviceAccount: web}
"db-token-45678": {namespace: data, serviceAccount: pg}
"#;

async fn start() -> (Arc<Authority>, String, tempfile::TempDir) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let store = CaStore::Local(dir.path().join("ca"));
    let authority = Authority::load_or_create(&store, None).await.unwrap();
    let tokens = Arc::new(StaticTokens::from_yaml(TOKENS).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = mesh_ca::serve(listener, authority.clone(), tokens, ServerConfig::default())
        .await
        .unwrap();
    let endpoint = format!("https://127.0.0.1:{}", server.local_addr.port());
    (authority, endpoint, dir)
}

fn code(e: ClientError) -> Code {
    match e {
        ClientError::Status(s) => s.code(),
        other => panic!("expected a status, got {other}"),
    }
}

#[tokio::test]
async fn signs_over_tls_and_refuses_wrong_token() {
    let (authority, endpoint, _dir) = start().await;
    let bundle = authority.trust_bundle_pem().concat();
    let (_key, csr) = new_workload_csr(None).unwrap();

    let resp = client::sign(
        &endpoint,
        &bundle,
        "web-token-0123",
        &csr,
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    assert_eq!(resp.cert_chain_pem.len(), 2);
    assert_eq!(resp.trust_bundle_pem, authority.trust_bundle_pem());
    let der = x509_parser::pem::parse_x509_pem(resp.cert_chain_pem[0].as_bytes())
        .unwrap()
        .1
        .contents;
    let (_, leaf) = x509_parser::parse_x509_certificate(&der).unwrap();
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    let want = WorkloadIdentity::new("cluster.local", "shop", "web").unwrap();
    assert_eq!(
        format!("{}", san.value.general_names[0]),
        format!("URI({want})")
    );
    assert_eq!(authority.metrics().signed.get(), 1);

    // Wrong token: UNAUTHENTICATED, nothing signed.
    let e = client::sign(
        &endpoint,
        &bundle,
        "not-a-token-at-all",
        &csr,
        Duration::ZERO,
    )
    .await
    .unwrap_err();
    assert_eq!(code(e), Code::Unauthenticated);
    // db's token asking for web's identity: PERMISSION_DENIED.
    let (_, web_csr) = new_workload_csr(Some(&want)).unwrap();
    let e = client::sign(
        &endpoint,
        &bundle,
        "db-token-45678",
        &web_csr,
        Duration::ZERO,
    )
    .await
    .unwrap_err();
    assert_eq!(code(e), Code::PermissionDenied);
    // 100 years: INVALID_ARGUMENT.
    let e = client::sign(
        &endpoint,
        &bundle,
        "web-token-0123",
        &csr,
        Duration::from_secs(100 * 365 * 86400),
    )
    .await
    .unwrap_err();
    assert_eq!(code(e), Code::InvalidArgument);
    assert_eq!(authority.metrics().signed.get(), 1);
}

#[tokio::test]
async fn client_refuses_a_ca_it_does_not_trust() {
    let (_authority, endpoint, _dir) = start().await;
    let stranger = Authority::generate().unwrap();
    let (_, csr) = new_workload_csr(None).unwrap();
    let e = client::sign(
        &endpoint,
        &stranger.trust_bundle_pem().concat(),
        "web-token-0123",
        &csr,
        Duration::ZERO,
    )
    .await
    .unwrap_err();
    assert!(
        !matches!(e, ClientError::Status(ref s) if s.code() == Code::Ok),
        "{e}"
    );
}

#[tokio::test]
async fn hostile_input_does_not_crash_the_server() {
    use tokio::io::AsyncWriteExt;
    let (authority, endpoint, _dir) = start().await;
    let bundle = authority.trust_bundle_pem().concat();
    // A 1 MiB "CSR": over the 64 KiB request cap.
    let huge = "A".repeat(1 << 20);
    let e = client::sign(&endpoint, &bundle, "web-token-0123", &huge, Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(code(e), Code::OutOfRange, "oversized request");
    // Plain-text garbage on the TLS port.
    let addr = endpoint.trim_start_matches("https://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    drop(s);
    // Still serving.
    let (_, csr) = new_workload_csr(None).unwrap();
    client::sign(&endpoint, &bundle, "web-token-0123", &csr, Duration::ZERO)
        .await
        .unwrap();
}

#[tokio::test]
async fn serving_certificate_names() {
    // The CA answers on localhost too (DNS SAN), verified with the bundle.
    let (authority, endpoint, _dir) = start().await;
    let port = endpoint.rsplit(':').next().unwrap();
    let (_, csr) = new_workload_csr(None).unwrap();
    client::sign(
        &format!("https://localhost:{port}"),
        &authority.trust_bundle_pem().concat(),
        "web-token-0123",
        &csr,
        Duration::ZERO,
    )
    .await
    .unwrap();
}
