//! The admission webhook's serving certificate and its registration.
//!
//! `meshctl install` makes a self-signed "mesh-injector webhook CA" and a
//! leaf for `mesh-injector.mesh-system.svc`, keeps both in the Secret
//! `mesh-injector-tls`, and gives the CA to the API server as the webhook's
//! `caBundle`. A later install reads the Secret back and keeps using it, so
//! that re-running install changes nothing.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use super::options::{FailurePolicy, NAMESPACE};
use super::render::{MANAGED_BY, PART_OF};

/// The injector's Service (the webhook's certificate names it).
pub const INJECTOR_SERVICE: &str = mesh_injector::SERVICE_NAME;

/// The webhook certificate lives ten years: it only ever authenticates the
/// injector to the API server, and is replaced by deleting the Secret and
/// re-running install (or automatically when it has less than
/// [`RENEW_BEFORE_DAYS`] left).
const VALIDITY_DAYS: i64 = 3650;
/// A reused certificate with less than this left is replaced.
pub const RENEW_BEFORE_DAYS: i64 = 30;

/// The webhook's serving certificate, key and CA (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTls {
    /// The self-signed CA (the webhook's `caBundle`).
    pub ca_pem: String,
    /// The leaf for the injector's Service DNS names.
    pub cert_pem: String,
    /// The leaf's key (PKCS#8).
    pub key_pem: String,
}

/// DNS names the injector's certificate carries.
pub fn dns_names() -> Vec<String> {
    vec![
        format!("{INJECTOR_SERVICE}.{NAMESPACE}.svc"),
        format!("{INJECTOR_SERVICE}.{NAMESPACE}.svc.cluster.local"),
        format!("{INJECTOR_SERVICE}.{NAMESPACE}"),
        INJECTOR_SERVICE.to_string(),
    ]
}

impl WebhookTls {
    /// A new CA and leaf (P-256).
    pub fn generate() -> Result<Self, rcgen::Error> {
        let now = time::OffsetDateTime::now_utc();
        let not_before = now - time::Duration::hours(1);
        let not_after = now + time::Duration::days(VALIDITY_DAYS);

        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "mesh-injector webhook CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params.not_before = not_before;
        ca_params.not_after = not_after;
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

        let leaf_key = KeyPair::generate()?;
        let mut leaf_params = CertificateParams::new(dns_names())?;
        leaf_params.distinguished_name.push(
            DnType::CommonName,
            format!("{INJECTOR_SERVICE}.{NAMESPACE}.svc"),
        );
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf_params.not_before = not_before;
        leaf_params.not_after = not_after;
        let leaf = leaf_params.signed_by(&leaf_key, &ca)?;
        Ok(Self {
            ca_pem: ca.pem(),
            cert_pem: leaf.pem(),
            key_pem: leaf_key.serialize_pem(),
        })
    }

    /// The material in an existing `mesh-injector-tls` Secret, if it is
    /// complete, for our Service and not close to expiry; `None` means make
    /// a new one.
    pub fn from_secret(secret: &Secret) -> Option<Self> {
        let data = secret.data.as_ref()?;
        let get = |k: &str| {
            data.get(k)
                .and_then(|ByteString(b)| String::from_utf8(b.clone()).ok())
                .filter(|s| !s.trim().is_empty())
        };
        let tls = Self {
            ca_pem: get("ca.crt")?,
            cert_pem: get("tls.crt")?,
            key_pem: get("tls.key")?,
        };
        tls.usable(time::OffsetDateTime::now_utc()).then_some(tls)
    }

    /// Whether the leaf names our Service and lives at least
    /// [`RENEW_BEFORE_DAYS`] past `now`.
    fn usable(&self, now: time::OffsetDateTime) -> bool {
        let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(self.cert_pem.as_bytes()) else {
            return false;
        };
        let Ok(cert) = pem.parse_x509() else {
            return false;
        };
        let renew_at = now + time::Duration::days(RENEW_BEFORE_DAYS);
        if cert.validity().not_after.timestamp() < renew_at.unix_timestamp() {
            return false;
        }
        let wanted = format!("{INJECTOR_SERVICE}.{NAMESPACE}.svc");
        match cert.subject_alternative_name() {
            Ok(Some(san)) => san.value.general_names.iter().any(
                |n| matches!(n, x509_parser::extensions::GeneralName::DNSName(d) if *d == wanted),
            ),
            _ => false,
        }
    }
}

/// The MutatingWebhookConfiguration: the injector's own
/// (`mesh_injector::webhook_configuration`, so its selectors and its
/// injection rules cannot drift apart) with `ca_pem` as the bundle, the
/// chosen failure policy, and meshctl's labels.
pub fn webhook_configuration(
    failure_policy: FailurePolicy,
    ca_pem: &str,
) -> MutatingWebhookConfiguration {
    let settings = mesh_injector::WebhookSettings {
        failure_policy: match failure_policy {
            FailurePolicy::Fail => mesh_injector::FailurePolicy::Fail,
            FailurePolicy::Ignore => mesh_injector::FailurePolicy::Ignore,
        },
        ..Default::default()
    };
    let mut w = mesh_injector::webhook_configuration(ca_pem.as_bytes(), &settings);
    let labels = w.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(PART_OF.0.to_string(), PART_OF.1.to_string());
    labels.insert(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string());
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_material_is_reused_from_its_secret() {
        let tls = WebhookTls::generate().unwrap();
        assert!(tls.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(tls.key_pem.contains("PRIVATE KEY"));
        let secret = Secret {
            data: Some(BTreeMap::from([
                ("ca.crt".into(), ByteString(tls.ca_pem.clone().into_bytes())),
                (
                    "tls.crt".into(),
                    ByteString(tls.cert_pem.clone().into_bytes()),
                ),
                (
                    "tls.key".into(),
                    ByteString(tls.key_pem.clone().into_bytes()),
                ),
            ])),
            ..Default::default()
        };
        assert_eq!(WebhookTls::from_secret(&secret), Some(tls.clone()));

        // Close to expiry: replaced.
        let later = time::OffsetDateTime::now_utc() + time::Duration::days(VALIDITY_DAYS - 10);
        assert!(!tls.usable(later));

        // Incomplete: replaced.
        let mut partial = secret.clone();
        partial.data.as_mut().unwrap().remove("tls.key");
        assert_eq!(WebhookTls::from_secret(&partial), None);
        let mut garbage = secret;
        garbage
            .data
            .as_mut()
            .unwrap()
            .insert("tls.crt".into(), ByteString(b"not a certificate".to_vec()));
        assert_eq!(WebhookTls::from_secret(&garbage), None);
    }

    #[test]
    fn webhook_follows_the_injector_contract() {
        let w = webhook_configuration(FailurePolicy::Ignore, "CA");
        assert_eq!(w.metadata.name.as_deref(), Some("mesh-injector"));
        let labels = w.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "meshctl");
        let hooks = w.webhooks.as_ref().unwrap();
        assert!(!hooks.is_empty());
        for hook in hooks {
            assert_eq!(hook.failure_policy.as_deref(), Some("Ignore"));
            let svc = hook.client_config.service.as_ref().unwrap();
            assert_eq!(
                (
                    svc.namespace.as_str(),
                    svc.name.as_str(),
                    svc.path.as_deref(),
                    svc.port
                ),
                ("mesh-system", "mesh-injector", Some("/inject"), Some(443))
            );
            assert_eq!(
                hook.client_config.ca_bundle,
                Some(ByteString(b"CA".to_vec()))
            );
            let sel = hook.namespace_selector.as_ref().unwrap();
            let never = sel
                .match_expressions
                .iter()
                .flatten()
                .find(|r| r.key == "kubernetes.io/metadata.name")
                .unwrap();
            assert_eq!(never.operator, "NotIn");
            assert!(never
                .values
                .as_ref()
                .unwrap()
                .contains(&"mesh-system".to_string()));
        }
    }
}
