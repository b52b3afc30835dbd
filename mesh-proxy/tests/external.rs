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
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
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
