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

#[cfg(test)]
mod tests {
    #[test]
    fn bearer_trims_the_token_file_newline() {
        assert_eq!(super::bearer("abc\n"), "Bearer abc");
    }
}
