//! A ServiceEntry-style external service: the endpoint is a host name the
//! proxy resolves itself (`resolution: RESOLUTION_DNS`), and the proxy
//! originates TLS to it (`policy.tls.mode: SIMPLE`), verifying the server
//! against the CA given in the config. The "external" server is a local
//! TLS server with its own CA.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;

/// A TLS (HTTP/1.1) server on 127.0.0.1 for `name`, with a fresh CA;
/// returns its port and the CA's PEM.
async fn tls_server(name: &str) -> (u16, String) {
    tls_server_with(name, None).await
}

/// As [`tls_server`]; with `client_ca`, clients must present a certificate
/// from that CA (PEM).
async fn tls_server_with(name: &str, client_ca: Option<&str>) -> (u16, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "external test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            use rustls::pki_types::pem::PemObject;
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let body = format!("external over TLS: {}", req.uri().path());
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (port, ca_cert.pem())
}

fn config(port: u16, ca_pem: &str, sni: &str) -> String {
    let ca = ca_pem.replace('\n', "\\n");
    format!(
        r#"version: "1"
services:
  - name: api.external.example
    external: true
    resolution: RESOLUTION_DNS
    ports: [{{port: 80, protocol: HTTP1}}]
    endpoints:
      - {{address: localhost, ports: {{"80": {port}}}}}
    policy:
      tls: {{mode: SIMPLE, sni: {sni}, caCertificatesPem: "{ca}"}}
"#
    )
}

async fn get(proxy: std::net::SocketAddr) -> (u16, String) {
    let c = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let req = http::Request::get(format!("http://{proxy}/charge"))
        .header("host", "api.external.example")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_origination_to_a_dns_resolved_external_host() {
    let (port, ca) = tls_server("api.external.example").await;
    let proxy = start_proxy(
        &config(port, &ca, "api.external.example"),
        &["api.external.example:80"],
        &[],
    )
    .await;
    // The name resolves in the background; then requests go through.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (status, body) = loop {
        let (status, body) = get(proxy.listener(0)).await;
        if status == 200 || tokio::time::Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((status, body.as_str()), (200, "external over TLS: /charge"));
    proxy.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_the_expected_name_is_refused() {
    let (port, ca) = tls_server("someone-else.example").await;
    let proxy = start_proxy(
        &config(port, &ca, "api.external.example"),
        &["api.external.example:80"],
        &[],
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(proxy.listener(0)).await;
        if body.contains("TLS") || body.contains("certificate") {
            assert_eq!(status, 503, "{body}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "last answer: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.running.shutdown().await;
}

/// A CA and a client certificate from it: (CA PEM, chain PEM, key PEM).
fn client_identity() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["client.example".to_string()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let leaf = params.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), leaf.pem(), key.serialize_pem())
}

fn static_config(port: u16, tls: &str) -> String {
    format!(
        r#"version: "1"
services:
  - name: api.external.example
    external: true
    ports: [{{port: 80, protocol: HTTP1}}]
    endpoints:
      - {{address: "127.0.0.1", ports: {{"80": {port}}}}}
    policy:
      tls: {tls}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_origination_presents_the_client_certificate() {
    let (client_ca, chain, key) = client_identity();
    let (port, server_ca) = tls_server_with("api.external.example", Some(&client_ca)).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_path, chain).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let ca = server_ca.replace('\n', "\\n");
    let mutual = format!(
        "{{mode: MUTUAL, sni: api.external.example, caCertificatesPem: \"{ca}\", clientCertificatePath: {}, privateKeyPath: {}}}",
        cert_path.display(),
        key_path.display()
    );
    let proxy = start_proxy(
        &static_config(port, &mutual),
        &["api.external.example:80"],
        &[],
    )
    .await;
    assert_eq!(
        get(proxy.listener(0)).await,
        (200, "external over TLS: /charge".to_string())
    );
    proxy.running.shutdown().await;

    // The same server refuses a proxy that presents no certificate (SIMPLE).
    let simple =
        format!("{{mode: SIMPLE, sni: api.external.example, caCertificatesPem: \"{ca}\"}}");
    let proxy = start_proxy(
        &static_config(port, &simple),
        &["api.external.example:80"],
        &[],
    )
    .await;
    let (status, body) = get(proxy.listener(0)).await;
    // TLS 1.3: the handshake completes on the client before the server
    // refuses the missing certificate, so the refusal shows as a failed
    // request (502) rather than a TLS error (503).
    assert!(matches!(status, 502 | 503), "{status} {body}");
    proxy.running.shutdown().await;

    // A missing key file is a config error naming the field.
    let missing = mutual.replace(&key_path.display().to_string(), "/nonexistent/tls.key");
    let err = mesh_proxy::model::MeshState::compile(
        mesh_proxy::model::MeshState::parse(&static_config(port, &missing)).unwrap(),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("privateKeyPath") && err.contains("/nonexistent/tls.key"),
        "{err}"
    );
}
