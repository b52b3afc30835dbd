//! The workload's identity: a P-256 key made in memory (never written or
//! sent anywhere), a CSR to mesh-ca authenticated by the pod's projected
//! ServiceAccount token, and renewal at half-life with jitter. While the CA
//! is unreachable the proxy keeps serving on its current certificate and
//! retries with backoff.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_proto::ca::v1::{certificates_client::CertificatesClient, SignRequest};
use rand::Rng;
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_util::sync::CancellationToken;

use crate::tls::{MeshTls, TlsMaterial};

/// First retry delay after a failed signing; doubles up to the maximum.
pub const RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest wait between signing attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// Where and how to get a certificate.
#[derive(Debug, Clone)]
pub struct CaClientConfig {
    /// e.g. `https://mesh-ca.mesh-system.svc:15012`
    pub ca_addr: String,
    /// TLS name the CA's serving certificate must carry.
    pub ca_server_name: String,
    /// PEM roots that the CA's serving certificate chains to.
    pub ca_root: PathBuf,
    /// The projected ServiceAccount token (audience `mesh-ca`), re-read on
    /// every request because the kubelet rotates it.
    pub token_file: PathBuf,
    /// `spiffe://<td>/ns/<ns>/sa/<sa>`: put in the CSR; the CA checks it
    /// against the token.
    pub identity: String,
    pub ttl: Duration,
}

/// Why signing failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("making the key or CSR: {0}")]
    Csr(#[from] rcgen::Error),
    #[error("connecting to the CA at {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the CA refused: {0}")]
    Refused(#[from] tonic::Status),
    #[error("the CA's answer is unusable: {0}")]
    Answer(#[from] crate::tls::TlsError),
}

fn read(path: &PathBuf) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(|source| IdentityError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// One signing round trip: new key, CSR, `Sign`, material.
pub async fn fetch(cfg: &CaClientConfig) -> Result<TlsMaterial, IdentityError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(cfg.identity.as_str().try_into()?)];
    let csr = params.serialize_request(&key)?.pem()?;
    let token = read(&cfg.token_file)?;
    let root = read(&cfg.ca_root)?;

    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&root))
        .domain_name(cfg.ca_server_name.clone());
    let channel = tonic::transport::Endpoint::from_shared(cfg.ca_addr.clone())
        .map_err(|source| IdentityError::Connect {
            addr: cfg.ca_addr.clone(),
            source,
        })?
        .tls_config(tls)
        .map_err(|source| IdentityError::Connect {
            addr: cfg.ca_addr.clone(),
            source,
        })?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|source| IdentityError::Connect {
            addr: cfg.ca_addr.clone(),
            source,
        })?;
    let mut req = tonic::Request::new(SignRequest {
        csr_pem: csr,
        ttl_seconds: cfg.ttl.as_secs(),
    });
    let bearer = format!("Bearer {}", token.trim());
    req.metadata_mut().insert(
        "authorization",
        bearer
            .parse()
            .map_err(|_| tonic::Status::invalid_argument("token is not a valid header value"))?,
    );
    let resp = CertificatesClient::new(channel)
        .sign(req)
        .await?
        .into_inner();
    let chain = resp
        .cert_chain_pem
        .iter()
        .flat_map(|p| CertificateDer::pem_slice_iter(p.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| crate::tls::TlsError::Pem {
            what: "signed chain",
            reason: e.to_string(),
        })?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let bundle = resp.trust_bundle_pem.join("\n");
    Ok(TlsMaterial::new(chain, key, &bundle)?)
}

/// When to renew: at half of the remaining lifetime, with ±10% jitter so
/// that a fleet started together does not renew together.
pub fn renew_delay(not_after: SystemTime, now: SystemTime) -> Duration {
    let left = not_after.duration_since(now).unwrap_or_default();
    let half = left / 2;
    let jitter = rand::rng().random_range(0.9..1.1);
    half.mul_f64(jitter)
}

/// Keeps a certificate installed in `tls` until `stop`.
pub async fn run(
    cfg: CaClientConfig,
    tls: Arc<MeshTls>,
    on_update: impl Fn(&MeshTls) + Send + 'static,
    stop: CancellationToken,
) {
    let mut backoff = RETRY_MIN;
    loop {
        let wait = match fetch(&cfg).await {
            Ok(material) => {
                let not_after = material.not_after;
                match tls.set(material) {
                    Ok(()) => {
                        on_update(&tls);
                        backoff = RETRY_MIN;
                        renew_delay(not_after, SystemTime::now())
                    }
                    Err(e) => {
                        tracing::warn!("certificate from the CA not usable: {e}");
                        backoff
                    }
                }
            }
            Err(e) => {
                let left = tls
                    .not_after()
                    .and_then(|t| t.duration_since(SystemTime::now()).ok());
                tracing::warn!(retry_in = ?backoff, current_cert_valid_for = ?left, "certificate signing failed: {e}");
                let w = backoff;
                backoff = (backoff * 2).min(RETRY_MAX);
                w
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_half_life_with_jitter() {
        let now = SystemTime::now();
        for _ in 0..100 {
            let d = renew_delay(now + Duration::from_secs(3600), now);
            assert!(
                d >= Duration::from_secs(1620) && d <= Duration::from_secs(1980),
                "{d:?}"
            );
        }
        assert_eq!(
            renew_delay(now - Duration::from_secs(1), now),
            Duration::ZERO
        );
    }
}
