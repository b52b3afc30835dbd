//! A throwaway CA for tests: a root and SPIFFE leaves, like mesh-ca issues.
#![allow(missing_docs)]

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A self-signed root that issues SPIFFE leaves.
pub struct TestCa {
    root_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("test root {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("root");
        let root_pem = cert.pem();
        let issuer = Issuer::new(params, key);
        Self { root_pem, issuer }
    }

    pub fn root_pem(&self) -> String {
        self.root_pem.clone()
    }

    /// Issues a leaf for `spiffe_id`: (chain PEM, key PEM).
    pub fn issue(&self, spiffe_id: &str) -> (String, String) {
        self.issue_for(spiffe_id, std::time::Duration::from_secs(3600))
    }

    /// Issues a leaf that expires after `ttl`.
    pub fn issue_for(&self, spiffe_id: &str, ttl: std::time::Duration) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().expect("uri"))];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time_now();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + time::Duration::seconds(ttl.as_secs() as i64);
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        (cert.pem(), key.serialize_pem())
    }
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}
