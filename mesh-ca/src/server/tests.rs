//! The service's decisions with a fake authenticator: each refusal has its
//! precise code, and nothing is signed when refused.

use std::collections::HashMap;

use super::*;
use crate::auth::{AuthFuture, ServiceAccountRef};
use crate::csr::new_workload_csr;

/// Tokens named after what a real authenticator would say about them.
struct FakeAuth(HashMap<&'static str, Result<ServiceAccountRef, AuthError>>);

impl TokenAuthenticator for FakeAuth {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a> {
        let r = self
            .0
            .get(token)
            .cloned()
            .unwrap_or_else(|| Err(AuthError::Rejected("signature invalid".into())));
        Box::pin(async move { r })
    }
}

fn sa(ns: &str, name: &str) -> Result<ServiceAccountRef, AuthError> {
    Ok(ServiceAccountRef {
        namespace: ns.into(),
        service_account: name.into(),
    })
}

fn service(config: ServerConfig) -> (CertificateService, Arc<Authority>) {
    let authority = Arc::new(Authority::generate().unwrap());
    let auth = FakeAuth(HashMap::from([
        ("web-token", sa("shop", "web")),
        ("db-token", sa("data", "pg")),
        (
            "expired-token",
            Err(AuthError::Rejected("token has expired".into())),
        ),
        (
            "other-audience-token",
            Err(AuthError::WrongAudience("mesh-ca".into())),
        ),
        (
            "down-token",
            Err(AuthError::Unavailable("no API server".into())),
        ),
        ("bad-ns-token", sa("Not_A_Namespace", "web")),
    ]));
    (
        CertificateService::new(authority.clone(), Arc::new(auth), config),
        authority,
    )
}

fn request(token: Option<&str>, csr_pem: &str, ttl_seconds: u64) -> Request<SignRequest> {
    let mut r = Request::new(SignRequest {
        csr_pem: csr_pem.to_string(),
        ttl_seconds,
    });
    if let Some(t) = token {
        r.metadata_mut().insert("authorization", t.parse().unwrap());
    }
    r
}

fn web_id() -> WorkloadIdentity {
    WorkloadIdentity::new("cluster.local", "shop", "web").unwrap()
}

#[tokio::test]
async fn signs_for_the_token_identity() {
    let (svc, authority) = service(ServerConfig::default());
    let (_, csr) = new_workload_csr(None).unwrap();
    let resp = svc
        .sign(request(Some("Bearer web-token"), &csr, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.cert_chain_pem.len(), 2);
    assert_eq!(resp.trust_bundle_pem, authority.trust_bundle_pem());
    let d = crate::csr::single_pem_block(&resp.cert_chain_pem[0], "CERTIFICATE").unwrap();
    let (_, c) = x509_parser::parse_x509_certificate(&d).unwrap();
    let san = c.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        format!("{}", san.value.general_names[0]),
        format!("URI({})", web_id())
    );
    // Default TTL is 24 h.
    let life = c.validity().not_after.timestamp() - c.validity().not_before.timestamp();
    assert_eq!(life, 24 * 3600 + 60);
    assert_eq!(authority.metrics().signed.get(), 1);
    // The scheme is case-insensitive.
    svc.sign(request(Some("bearer web-token"), &csr, 0))
        .await
        .unwrap();
}

#[tokio::test]
async fn each_refusal_has_its_code_and_signs_nothing() {
    let (svc, authority) = service(ServerConfig::default());
    let (_, csr) = new_workload_csr(None).unwrap();
    let (_, admin_csr) = new_workload_csr(Some(
        &WorkloadIdentity::new("cluster.local", "shop", "admin").unwrap(),
    ))
    .unwrap();
    let (_, other_td_csr) = new_workload_csr(Some(
        &WorkloadIdentity::new("evil.example", "shop", "web").unwrap(),
    ))
    .unwrap();
    let hundred_years = 100 * 365 * 86400;
    let cases: Vec<(&str, Request<SignRequest>, Code, &str)> = vec![
        (
            "no token",
            request(None, &csr, 0),
            Code::Unauthenticated,
            "missing_token",
        ),
        (
            "empty bearer",
            request(Some("Bearer "), &csr, 0),
            Code::Unauthenticated,
            "missing_token",
        ),
        (
            "basic auth",
            request(Some("Basic d2ViOnRva2Vu"), &csr, 0),
            Code::Unauthenticated,
            "missing_token",
        ),
        (
            "forged",
            request(Some("Bearer forged-token"), &csr, 0),
            Code::Unauthenticated,
            "unauthenticated",
        ),
        (
            "expired",
            request(Some("Bearer expired-token"), &csr, 0),
            Code::Unauthenticated,
            "unauthenticated",
        ),
        (
            "wrong audience",
            request(Some("Bearer other-audience-token"), &csr, 0),
            Code::Unauthenticated,
            "wrong_audience",
        ),
        (
            "bad identity",
            request(Some("Bearer bad-ns-token"), &csr, 0),
            Code::Unauthenticated,
            "unauthenticated",
        ),
        (
            "API down",
            request(Some("Bearer down-token"), &csr, 0),
            Code::Unavailable,
            "auth_unavailable",
        ),
        (
            "other SA",
            request(Some("Bearer web-token"), &admin_csr, 0),
            Code::PermissionDenied,
            "identity_mismatch",
        ),
        (
            "other trust domain",
            request(Some("Bearer web-token"), &other_td_csr, 0),
            Code::PermissionDenied,
            "identity_mismatch",
        ),
        (
            "garbage CSR",
            request(
                Some("Bearer web-token"),
                "-----BEGIN CERTIFICATE REQUEST-----\nZm9v\n-----END CERTIFICATE REQUEST-----\n",
                0,
            ),
            Code::InvalidArgument,
            "invalid_csr",
        ),
        (
            "empty CSR",
            request(Some("Bearer web-token"), "", 0),
            Code::InvalidArgument,
            "invalid_csr",
        ),
        (
            "100 years",
            request(Some("Bearer web-token"), &csr, hundred_years),
            Code::InvalidArgument,
            "invalid_ttl",
        ),
        (
            "u64::MAX",
            request(Some("Bearer web-token"), &csr, u64::MAX),
            Code::InvalidArgument,
            "invalid_ttl",
        ),
    ];
    for (name, req, code, reason) in cases {
        let err = svc.sign(req).await.expect_err(name);
        assert_eq!(err.code(), code, "{name}: {}", err.message());
        assert!(!err.message().is_empty(), "{name}");
        let counted = authority
            .metrics()
            .refusals
            .with_label_values(&[reason])
            .get();
        assert!(counted >= 1, "{name}: reason {reason} not counted");
    }
    assert_eq!(
        authority.metrics().signed.get(),
        0,
        "a refusal signed something"
    );
    // The identity comes from the token: db's token with web's CSR is refused too.
    let (_, web_csr) = new_workload_csr(Some(&web_id())).unwrap();
    let err = svc
        .sign(request(Some("Bearer db-token"), &web_csr, 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(authority.metrics().signed.get(), 0);
}

#[tokio::test]
async fn ttl_between_max_and_a_year_is_clamped() {
    let (svc, _) = service(ServerConfig::default());
    let (_, csr) = new_workload_csr(None).unwrap();
    let resp = svc
        .sign(request(Some("Bearer web-token"), &csr, 30 * 86400))
        .await
        .unwrap()
        .into_inner();
    let d = crate::csr::single_pem_block(&resp.cert_chain_pem[0], "CERTIFICATE").unwrap();
    let (_, c) = x509_parser::parse_x509_certificate(&d).unwrap();
    let life = c.validity().not_after.timestamp() - c.validity().not_before.timestamp();
    assert_eq!(life, 24 * 3600 + 60);
}

#[tokio::test]
async fn rate_limit_per_identity() {
    let (svc, authority) = service(ServerConfig {
        rate_per_sec: 0.001,
        burst: 3,
        ..Default::default()
    });
    let (_, csr) = new_workload_csr(None).unwrap();
    for _ in 0..3 {
        svc.sign(request(Some("Bearer web-token"), &csr, 60))
            .await
            .unwrap();
    }
    let err = svc
        .sign(request(Some("Bearer web-token"), &csr, 60))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(authority.metrics().signed.get(), 3);
    // Another identity is not affected.
    svc.sign(request(Some("Bearer db-token"), &csr, 60))
        .await
        .unwrap();
    assert_eq!(
        authority
            .metrics()
            .refusals
            .with_label_values(&["rate_limited"])
            .get(),
        1
    );
}

#[test]
fn metrics_text_has_every_family() {
    let authority = Authority::generate().unwrap();
    authority.metrics().sign_duration.observe(0.001);
    authority.metrics().refused("invalid_csr");
    let text = authority.metrics().render();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    let names: std::collections::HashSet<&str> =
        scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for want in [
        "mesh_ca_certificates_signed_total",
        "mesh_ca_refusals_total",
        "mesh_ca_sign_duration_seconds_count",
        "mesh_ca_cert_expiry_timestamp_seconds",
    ] {
        assert!(names.contains(want), "{want} missing from:\n{text}");
    }
    let expiry: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "mesh_ca_cert_expiry_timestamp_seconds")
        .filter_map(|s| s.labels.get("cert").map(str::to_string))
        .collect();
    assert!(expiry.contains(&"root".to_string()) && expiry.contains(&"intermediate".to_string()));
}
