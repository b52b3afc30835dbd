//! A small client of the CA: tonic over rustls, verifying the CA's serving
//! certificate with the trust bundle. The wire is exactly `mesh.ca.v1`, so
//! any other client (the proxy's) can talk to the same server.

use std::time::Duration;

use mesh_proto::ca::v1::certificates_client::CertificatesClient;
pub use mesh_proto::ca::v1::{SignRequest, SignResponse};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
/// gRPC status codes, to match on [`ClientError::Status`].
pub use tonic::Code;

/// What went wrong talking to the CA.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Bad endpoint, TLS or connection failure.
    #[error("connecting to the CA: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The CA answered with an error status (see its code).
    #[error("CA refused: {0}")]
    Status(#[from] tonic::Status),
    /// The token cannot be sent as metadata (e.g. contains a newline inside).
    #[error("token is not valid header text")]
    BadToken,
}

/// A channel to the CA at `endpoint` (`https://host:port`), trusting only
/// the roots in `ca_bundle_pem`.
pub async fn connect(endpoint: &str, ca_bundle_pem: &str) -> Result<Channel, ClientError> {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_bundle_pem));
    let channel = Endpoint::from_shared(endpoint.to_string())?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect()
        .await?;
    Ok(channel)
}

/// Sends one Sign request on `channel` with `token` as the bearer.
pub async fn sign_on(
    channel: Channel,
    token: &str,
    csr_pem: &str,
    ttl: Duration,
) -> Result<SignResponse, ClientError> {
    let mut req = tonic::Request::new(SignRequest {
        csr_pem: csr_pem.to_string(),
        ttl_seconds: ttl.as_secs(),
    });
    let value: MetadataValue<_> = mesh_api::svid::bearer(token)
        .parse()
        .map_err(|_| ClientError::BadToken)?;
    req.metadata_mut()
        .insert(mesh_api::svid::AUTHORIZATION_METADATA, value);
    let resp = CertificatesClient::new(channel).sign(req).await?;
    Ok(resp.into_inner())
}

/// Connects to the CA at `endpoint`, verifying it with `ca_bundle_pem`, and
/// asks it to sign `csr_pem` for `ttl` (zero = the CA's default).
pub async fn sign(
    endpoint: &str,
    ca_bundle_pem: &str,
    token: &str,
    csr_pem: &str,
    ttl: Duration,
) -> Result<SignResponse, ClientError> {
    let channel = connect(endpoint, ca_bundle_pem).await?;
    sign_on(channel, token, csr_pem, ttl).await
}

/// The URI SANs (SPIFFE IDs) of a PEM certificate, e.g. of an issued leaf.
pub fn uri_sans(cert_pem: &str) -> Result<Vec<String>, crate::authority::AuthorityError> {
    use x509_parser::extensions::GeneralName;
    let bad = |reason: String| crate::authority::AuthorityError::Parse {
        what: "certificate".into(),
        reason,
    };
    let der =
        crate::csr::single_pem_block(cert_pem, "CERTIFICATE").map_err(|e| bad(e.to_string()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| bad(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| bad(e.to_string()))?;
    Ok(san
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}
