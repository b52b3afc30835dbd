//! Names shared by the CA and its clients (proxy, injector, meshctl) for
//! workload certificates (X.509-SVIDs) and the trust bundle.

/// Secret in [`crate::INSTALL_NAMESPACE`] that holds the CA's root and intermediate.
pub const CA_SECRET_NAME: &str = "mesh-ca";
/// ConfigMap published in every meshed namespace with the trust bundle.
pub const TRUST_BUNDLE_CONFIGMAP: &str = "mesh-root-ca";
/// Key of the trust bundle (all roots, PEM) in [`TRUST_BUNDLE_CONFIGMAP`].
pub const TRUST_BUNDLE_KEY: &str = "root-cert.pem";
/// Address of the CA inside the cluster (TLS, verified with the trust bundle).
pub const CA_ADDRESS: &str = "https://mesh-ca.mesh-system.svc:15012";
/// Metadata key that carries the caller's token, as `Bearer <token>`.
pub const AUTHORIZATION_METADATA: &str = "authorization";
/// Default lifetime of a workload certificate, in seconds (24 h).
pub const DEFAULT_SVID_TTL_SECS: u64 = 24 * 3600;

/// `Bearer <token>`, the value of the [`AUTHORIZATION_METADATA`] header.
pub fn bearer(token: &str) -> String {
    format!("Bearer {}", token.trim())
}

/// The SPIFFE ID of an X.509-SVID, given its URI SANs: the one URI, which
/// must be a well-formed `spiffe://` ID. A certificate with several URIs
/// names no one identity, and is treated as having none (the proxy's peer
/// checks and the controller's caller identity both rely on this).
pub fn svid_identity<'a>(mut uris: impl Iterator<Item = &'a str>) -> Option<String> {
    match (uris.next(), uris.next()) {
        (Some(u), None) if is_spiffe_id(u) => Some(u.to_string()),
        _ => None,
    }
}

/// The SPIFFE ID of a DER X.509-SVID: [`svid_identity`] over its URI
/// SANs; `None` if it does not parse.
pub fn der_identity(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    svid_identity(san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => Some(*u),
        _ => None,
    }))
}

/// SPIFFE ID syntax: `spiffe://` and a trust domain of `[a-z0-9.-_]`, then
/// path segments of `[A-Za-z0-9.-_]` that are neither empty, `.` nor `..`;
/// no port, user, query or fragment; at most 2048 bytes.
pub fn is_spiffe_id(id: &str) -> bool {
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return false;
    };
    let (td, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let segment_ok = |s: &str| {
        !matches!(s, "" | "." | "..")
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    };
    id.len() <= 2048
        && !td.is_empty()
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        && path.is_none_or(|p| p.split('/').all(segment_ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_trims_the_token_file_newline() {
        assert_eq!(bearer("abc\n"), "Bearer abc");
    }

    #[test]
    fn an_svid_names_its_one_well_formed_spiffe_uri() {
        let id = "spiffe://cluster.local/ns/a/sa/b";
        assert_eq!(svid_identity([id].into_iter()).as_deref(), Some(id));
        assert_eq!(svid_identity(std::iter::empty()), None);
        // Two URIs: which one would be meant? None.
        assert_eq!(
            svid_identity([id, "spiffe://cluster.local/ns/kube-system/sa/admin"].into_iter()),
            None
        );
        assert_eq!(svid_identity(["https://example.com", id].into_iter()), None);
        for bad in [
            "spiffe://",
            "spiffe://Cluster.local/ns/a",
            "spiffe://cluster.local:443/ns/a",
            "spiffe://cluster.local/ns/../sa/b",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe://cluster.local/ns/a?x=1",
            "spiffe://user@cluster.local/ns/a",
        ] {
            assert!(!is_spiffe_id(bad), "{bad}");
            assert_eq!(svid_identity([bad].into_iter()), None, "{bad}");
        }
    }
}
