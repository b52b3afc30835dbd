//! Every signing decision is one audit line. In its own test binary: a
//! tracing subscriber scoped to one test races with tests on other threads
//! that hit the same callsites first (cached "not interested").

use std::sync::Arc;

use mesh_ca::auth::StaticTokens;
use mesh_ca::csr::new_workload_csr;
use mesh_ca::server::{CertificateService, AUDIT_TARGET};
use mesh_ca::{Authority, ServerConfig};
use mesh_proto::ca::v1::certificates_server::Certificates;
use mesh_proto::ca::v1::SignRequest;

/// A writer that keeps what the audit log writes.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn request(token: &str, csr_pem: &str) -> tonic::Request<SignRequest> {
    let mut r = tonic::Request::new(SignRequest {
        csr_pem: csr_pem.to_string(),
        ttl_seconds: 0,
    });
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

#[tokio::test(flavor = "current_thread")]
async fn every_decision_is_audited() {
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let tokens =
        StaticTokens::from_yaml("\"web-token-0123\": {namespace: shop, serviceAccount: web}\n")
            .unwrap();
    let svc = CertificateService::new(
        Arc::new(Authority::generate().unwrap()),
        Arc::new(tokens),
        ServerConfig::default(),
    );
    let (_, csr) = new_workload_csr(None).unwrap();
    svc.sign(request("web-token-0123", &csr)).await.unwrap();
    let _ = svc.sign(request("forged-token-xyz", &csr)).await;
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(AUDIT_TARGET)).collect();
    assert_eq!(lines.len(), 2, "{text}");
    for want in [
        "decision=\"signed\"",
        "identity=spiffe://cluster.local/ns/shop/sa/web",
        "serial=",
        "not_after=",
        "peer=",
    ] {
        assert!(lines[0].contains(want), "{want} missing: {}", lines[0]);
    }
    for want in [
        "decision=\"refused\"",
        "reason=\"unauthenticated\"",
        "peer=",
    ] {
        assert!(lines[1].contains(want), "{want} missing: {}", lines[1]);
    }
}
