//! SPIFFE workload identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

use std::fmt;
use std::str::FromStr;

/// The identity of a workload: its trust domain, namespace and ServiceAccount.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadIdentity {
    /// Trust domain, e.g. `cluster.local`.
    pub trust_domain: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Kubernetes ServiceAccount name.
    pub service_account: String,
}

/// Why a string is not a workload SPIFFE ID.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// It does not start with `spiffe://`.
    #[error("not a SPIFFE ID (must start with spiffe://): {0:?}")]
    Scheme(String),
    /// The path is not `/ns/<ns>/sa/<sa>`.
    #[error("SPIFFE ID path must be /ns/<namespace>/sa/<service-account>: {0:?}")]
    Path(String),
    /// A segment has characters Kubernetes names cannot have.
    #[error("invalid {what} {value:?} in SPIFFE ID")]
    Segment {
        /// Which segment.
        what: &'static str,
        /// Its value.
        value: String,
    },
}

impl WorkloadIdentity {
    /// Builds an identity, checking every part.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        check_trust_domain(trust_domain)?;
        check_name("namespace", namespace)?;
        check_name("service account", service_account)?;
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        })
    }

    /// The identity as a `spiffe://` URI.
    pub fn uri(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for WorkloadIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for WorkloadIdentity {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| IdentityError::Scheme(s.to_string()))?;
        let (td, path) = rest
            .split_once('/')
            .ok_or_else(|| IdentityError::Path(s.to_string()))?;
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["ns", ns, "sa", sa] => Self::new(td, ns, sa),
            _ => Err(IdentityError::Path(s.to_string())),
        }
    }
}

fn check_trust_domain(td: &str) -> Result<(), IdentityError> {
    let ok = !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(IdentityError::Segment {
            what: "trust domain",
            value: td.to_string(),
        })
    }
}

/// Kubernetes DNS-1123 subdomain rules, which cover namespaces and ServiceAccounts.
fn check_name(what: &'static str, v: &str) -> Result<(), IdentityError> {
    let ok = !v.is_empty()
        && v.len() <= 253
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !v.starts_with(['-', '.'])
        && !v.ends_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(IdentityError::Segment {
            what,
            value: v.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let id: WorkloadIdentity = "spiffe://cluster.local/ns/default/sa/web".parse().unwrap();
        assert_eq!(id.namespace, "default");
        assert_eq!(id.service_account, "web");
        assert_eq!(id.uri(), "spiffe://cluster.local/ns/default/sa/web");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "http://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns/a/sa/b/extra",
            "spiffe://cluster.local/ns/A/sa/b",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe:///ns/a/sa/b",
            "spiffe://Cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a/sa/-b",
        ] {
            assert!(bad.parse::<WorkloadIdentity>().is_err(), "{bad} accepted");
        }
    }
}
