//! A tiny HTTPS mutating admission webhook served by the test process, so a test
//! can check that the API server reaches a webhook on the host (the injector's path).
//!
//! It answers every AdmissionReview with a JSONPatch that adds the label
//! `mesh-e2e/mutated: "true"` and counts the calls.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use k8s_openapi::ByteString;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};

/// Label the webhook adds.
pub const MUTATED_LABEL: &str = "mesh-e2e/mutated";

pub struct Webhook {
    /// `https://<ip>:<port>/mutate`
    pub url: String,
    /// PEM of the CA that signed the serving certificate (for `caBundle`).
    pub ca_pem: String,
    pub calls: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The JSONPatch that adds [`MUTATED_LABEL`] to `object`.
pub fn label_patch(object: &Value) -> Value {
    if object["metadata"]["labels"].is_object() {
        json!([{"op": "add", "path": format!("/metadata/labels/{}", MUTATED_LABEL.replace('/', "~1")), "value": "true"}])
    } else {
        json!([{"op": "add", "path": "/metadata/labels", "value": {MUTATED_LABEL: "true"}}])
    }
}

/// The AdmissionReview response for a request.
pub fn review_response(review: &Value) -> Result<Value> {
    let req = &review["request"];
    let uid = req["uid"]
        .as_str()
        .context("AdmissionReview without request.uid")?;
    let patch = serde_json::to_vec(&label_patch(&req["object"]))?;
    Ok(json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {
            "uid": uid,
            "allowed": true,
            "patchType": "JSONPatch",
            "patch": serde_json::to_value(ByteString(patch))?,
        }
    }))
}

impl Webhook {
    /// Serves on `bind_ip` (any port) with a certificate for `advertise_ip`.
    pub async fn start(bind_ip: IpAddr, advertise_ip: IpAddr) -> Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mesh-e2e webhook CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
        let leaf_key = KeyPair::generate()?;
        let leaf =
            CertificateParams::new(vec![advertise_ip.to_string()])?.signed_by(&leaf_key, &ca)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let mut cfg = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));

        let listener = tokio::net::TcpListener::bind(SocketAddr::new(bind_ip, 0)).await?;
        let port = listener.local_addr()?.port();
        let calls = Arc::new(AtomicU64::new(0));
        let calls2 = calls.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let calls = calls2.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let calls = calls.clone();
                        async move {
                            let body = req.into_body().collect().await?.to_bytes();
                            let (status, out) = match serde_json::from_slice::<Value>(&body)
                                .map_err(anyhow::Error::from)
                                .and_then(|v| review_response(&v))
                            {
                                Ok(v) => {
                                    calls.fetch_add(1, Ordering::SeqCst);
                                    (200, v.to_string())
                                }
                                Err(e) => (400, format!("bad AdmissionReview: {e:#}")),
                            };
                            let mut resp = http::Response::new(Full::new(Bytes::from(out)));
                            *resp.status_mut() = http::StatusCode::from_u16(status)
                                .unwrap_or(http::StatusCode::BAD_REQUEST);
                            resp.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static("application/json"),
                            );
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        let host = match advertise_ip {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        Ok(Self {
            url: format!("https://{host}:{port}/mutate"),
            ca_pem: ca.pem(),
            calls,
            task,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_adds_labels_map_or_key() {
        let p = label_patch(&json!({"metadata": {"name": "x"}}));
        assert_eq!(p[0]["path"], "/metadata/labels");
        assert_eq!(p[0]["value"][MUTATED_LABEL], "true");
        let p = label_patch(&json!({"metadata": {"labels": {"a": "b"}}}));
        assert_eq!(p[0]["path"], "/metadata/labels/mesh-e2e~1mutated");
    }

    #[test]
    fn response_echoes_uid_with_base64_patch() {
        let r = review_response(&json!({"request": {"uid": "u1", "object": {"metadata": {}}}}))
            .unwrap();
        assert_eq!(r["response"]["uid"], "u1");
        assert_eq!(r["response"]["allowed"], true);
        let b64 = r["response"]["patch"].as_str().unwrap();
        let bytes: ByteString = serde_json::from_value(json!(b64)).unwrap();
        let patch: Value = serde_json::from_slice(&bytes.0).unwrap();
        assert_eq!(patch[0]["op"], "add");
        assert!(review_response(&json!({})).is_err());
    }

    #[tokio::test]
    async fn serves_admission_reviews_over_tls() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let wh = Webhook::start(ip, ip).await.unwrap();
        assert!(wh.url.starts_with("https://127.0.0.1:"));
        assert!(wh.ca_pem.contains("BEGIN CERTIFICATE"));
    }
}
