//! A webhook server on loopback and an HTTPS client for it, shared by the
//! server tests and the admission benchmark (`#[path]`-included there).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use mesh_injector::server::{self, tls::ReloadingCert, AdmissionHandler};
use mesh_injector::InjectorConfig;
use rustls::pki_types::{CertificateDer, ServerName};

/// A running server: its address, the certificate clients must trust, and
/// the handler (for its metrics).
pub struct TestServer {
    pub addr: SocketAddr,
    pub root: CertificateDer<'static>,
    pub handler: Arc<AdmissionHandler>,
    pub dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Starts the real server (TLS from files, reloading resolver) on
/// 127.0.0.1:0.
pub async fn start(native_sidecars: bool) -> TestServer {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&crt, cert.cert.pem()).unwrap();
    std::fs::write(&key, cert.signing_key.serialize_pem()).unwrap();
    let resolver = Arc::new(ReloadingCert::load(&crt, &key).unwrap());
    let tls = server::tls::server_config(resolver).unwrap();
    let handler = Arc::new(AdmissionHandler::new(
        InjectorConfig::default(),
        native_sidecars,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = server::router(handler.clone());
    tokio::spawn(async move {
        server::serve(listener, tls, app, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    TestServer {
        addr,
        root: cert.cert.der().clone(),
        handler,
        dir,
        _stop: stop,
    }
}

/// One keep-alive HTTP/1.1 connection over TLS.
pub struct Client {
    send: SendRequest<Full<Bytes>>,
}

impl Client {
    pub async fn connect(server: &TestServer) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(server.root.clone()).unwrap();
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Client { send }
    }

    /// Sends one request; returns the status and the body.
    pub async fn request(&mut self, method: &str, path: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        self.send.ready().await.unwrap();
        let resp = self.send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, body)
    }
}

/// An AdmissionReview for creating `object` (a Pod unless `kind` says
/// otherwise) in `namespace`.
pub fn review(uid: &str, namespace: &str, kind: &str, object: serde_json::Value) -> Vec<u8> {
    let resource = format!("{}s", kind.to_lowercase());
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": resource},
            "requestKind": {"group": "", "version": "v1", "kind": kind},
            "requestResource": {"group": "", "version": "v1", "resource": resource},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    }))
    .unwrap()
}

/// A pod as a Deployment creates it: two containers, probes, volumes,
/// a service account token mount, tolerations.
pub fn deployment_pod() -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "checkout-7d9f8b6c5-",
            "namespace": "shop",
            "labels": {"app": "checkout", "version": "v2", "pod-template-hash": "7d9f8b6c5"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-20T10:00:00Z"},
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "checkout-7d9f8b6c5",
                "uid": "3f1c2d4e-0000-4000-8000-000000000001", "controller": true,
                "blockOwnerDeletion": true
            }]
        },
        "spec": {
            "serviceAccountName": "checkout",
            "containers": [
                {
                    "name": "checkout",
                    "image": "registry.example/checkout:2.4.1",
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                              {"name": "grpc", "containerPort": 9090, "protocol": "TCP"}],
                    "env": [{"name": "DB_HOST", "value": "db.shop.svc"},
                            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                    "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
                    "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10},
                    "readinessProbe": {"grpc": {"port": 9090}, "periodSeconds": 5},
                    "volumeMounts": [
                        {"name": "config", "mountPath": "/etc/checkout"},
                        {"name": "kube-api-access-x7k2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}
                    ]
                },
                {
                    "name": "log-shipper",
                    "image": "registry.example/shipper:1.0",
                    "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
                    "livenessProbe": {"tcpSocket": {"port": 24224}},
                    "volumeMounts": [{"name": "kube-api-access-x7k2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]
                }
            ],
            "volumes": [
                {"name": "config", "configMap": {"name": "checkout-config"}},
                {"name": "kube-api-access-x7k2p", "projected": {"sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
                ]}}
            ],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "schedulerName": "default-scheduler",
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            ],
            "enableServiceLinks": true,
            "priority": 0
        },
        "status": {}
    })
}
