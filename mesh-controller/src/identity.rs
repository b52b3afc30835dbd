//! The controller's own workload identity and the mTLS of its config
//! stream.
//!
//! The controller is a mesh workload like any other: it makes a P-256 key
//! in memory, asks mesh-ca to sign it with its ServiceAccount token, and
//! renews at half-life (or reads a certificate from files). Proxies must
//! present a certificate chaining to the mesh trust bundle; the SPIFFE ID
//! in it is who they are.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use mesh_proto::ca::v1::{certificates_client::CertificatesClient, SignRequest};
use rand::Rng;
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Where the controller's certificate comes from.
#[derive(Clone, Debug)]
pub enum IdentitySource {
    /// PEM files (re-read every minute: cert-manager or a Secret mount may
    /// rotate them).
    Files {
        cert: PathBuf,
        key: PathBuf,
        trust_bundle: PathBuf,
    },
    /// mesh-ca, authenticated by a ServiceAccount token.
    Ca {
        addr: String,
        server_name: String,
        ca_root: PathBuf,
        token_file: PathBuf,
        identity: String,
        ttl: Duration,
    },
}

/// Why the identity could not be had.
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
    #[error("connecting to the CA at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("the CA refused: {0}")]
    Refused(#[from] tonic::Status),
    #[error("{what}: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
}

fn read(path: &PathBuf) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(|source| IdentityError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// A certificate, its key and the roots peers must chain to.
pub struct Material {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub trust_bundle_pem: Vec<String>,
    pub not_after: SystemTime,
}

fn certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let out = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if out.is_empty() {
        return Err(IdentityError::Pem {
            what,
            reason: "no certificate found".into(),
        });
    }
    Ok(out)
}

fn not_after(cert: &CertificateDer<'_>) -> SystemTime {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .ok()
        .and_then(|(_, c)| u64::try_from(c.validity().not_after.timestamp()).ok())
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
        .unwrap_or_else(|| SystemTime::now() + Duration::from_secs(3600))
}

/// Splits a PEM bundle into one PEM string per certificate.
fn split_bundle(pem: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in pem.lines() {
        cur.push_str(line);
        cur.push('\n');
        if line.starts_with("-----END") {
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

impl IdentitySource {
    /// Gets a certificate once.
    pub async fn fetch(&self) -> Result<Material, IdentityError> {
        match self {
            IdentitySource::Files {
                cert,
                key,
                trust_bundle,
            } => {
                let chain = certs(&read(cert)?, "certificate file")?;
                let key = PrivateKeyDer::from_pem_slice(read(key)?.as_bytes()).map_err(|e| {
                    IdentityError::Pem {
                        what: "key file",
                        reason: e.to_string(),
                    }
                })?;
                let bundle = read(trust_bundle)?;
                certs(&bundle, "trust bundle file")?;
                Ok(Material {
                    not_after: not_after(&chain[0]),
                    chain,
                    key,
                    trust_bundle_pem: split_bundle(&bundle),
                })
            }
            IdentitySource::Ca {
                addr,
                server_name,
                ca_root,
                token_file,
                identity,
                ttl,
            } => {
                let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
                let mut params = CertificateParams::default();
                params.subject_alt_names = vec![SanType::URI(identity.as_str().try_into()?)];
                let csr = params.serialize_request(&key)?.pem()?;
                let token = read(token_file)?;
                let root = read(ca_root)?;
                let connect_err = |reason: String| IdentityError::Connect {
                    addr: addr.clone(),
                    reason,
                };
                let tls = tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(&root))
                    .domain_name(server_name.clone());
                let channel = tonic::transport::Endpoint::from_shared(addr.clone())
                    .map_err(|e| connect_err(e.to_string()))?
                    .tls_config(tls)
                    .map_err(|e| connect_err(e.to_string()))?
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(Duration::from_secs(10))
                    .connect()
                    .await
                    .map_err(|e| connect_err(e.to_string()))?;
                let mut req = tonic::Request::new(SignRequest {
                    csr_pem: csr,
                    ttl_seconds: ttl.as_secs(),
                });
                let bearer = mesh_api::svid::bearer(token.trim());
                req.metadata_mut().insert(
                    mesh_api::svid::AUTHORIZATION_METADATA,
                    bearer.parse().map_err(|_| {
                        tonic::Status::invalid_argument("token is not a valid header value")
                    })?,
                );
                let resp = CertificatesClient::new(channel)
                    .sign(req)
                    .await?
                    .into_inner();
                let chain = certs(&resp.cert_chain_pem.join("\n"), "signed chain")?;
                Ok(Material {
                    not_after: not_after(&chain[0]),
                    chain,
                    key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
                    trust_bundle_pem: resp.trust_bundle_pem,
                })
            }
        }
    }
}

/// The stream's TLS: swapped whenever the certificate or bundle changes.
pub struct ServerTls {
    config: ArcSwap<rustls::ServerConfig>,
    bundle: watch::Sender<Arc<Vec<String>>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

/// A TLS 1.3 server config that requires a client certificate chaining to
/// `material`'s trust bundle.
pub fn server_config(material: &Material) -> Result<rustls::ServerConfig, IdentityError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for pem in &material.trust_bundle_pem {
        for c in certs(pem, "trust bundle")? {
            roots.add(c)?;
        }
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| IdentityError::Verifier(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(material.chain.clone(), material.key.clone_key())?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

impl ServerTls {
    /// Gets the first certificate (retrying with backoff until `stop`),
    /// then keeps it fresh in the background.
    pub async fn start(
        source: IdentitySource,
        stop: CancellationToken,
    ) -> Result<Arc<ServerTls>, IdentityError> {
        let mut delay = Duration::from_secs(1);
        let material = loop {
            match source.fetch().await {
                Ok(m) => break m,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "getting the controller's certificate");
                    tokio::select! {
                        _ = stop.cancelled() => return Err(e),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        };
        let tls = Arc::new(ServerTls {
            config: ArcSwap::from_pointee(server_config(&material)?),
            bundle: watch::channel(Arc::new(material.trust_bundle_pem.clone())).0,
        });
        let refresh = tls.clone();
        tokio::spawn(async move {
            let mut expires = material.not_after;
            loop {
                let wait = match &source {
                    IdentitySource::Files { .. } => Duration::from_secs(60),
                    IdentitySource::Ca { .. } => renew_delay(expires, SystemTime::now()),
                };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                match source
                    .fetch()
                    .await
                    .and_then(|m| Ok((server_config(&m)?, m)))
                {
                    Ok((config, m)) => {
                        expires = m.not_after;
                        refresh.config.store(Arc::new(config));
                        refresh.bundle.send_if_modified(|b| {
                            let changed = **b != m.trust_bundle_pem;
                            if changed {
                                *b = Arc::new(m.trust_bundle_pem.clone());
                            }
                            changed
                        });
                        tracing::debug!("refreshed the controller's certificate");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "refreshing the controller's certificate; keeping the current one");
                        expires = SystemTime::now() + Duration::from_secs(20);
                    }
                }
            }
        });
        Ok(tls)
    }

    /// From fixed material (tests).
    pub fn from_material(material: &Material) -> Result<Arc<ServerTls>, IdentityError> {
        Ok(Arc::new(ServerTls {
            config: ArcSwap::from_pointee(server_config(material)?),
            bundle: watch::channel(Arc::new(material.trust_bundle_pem.clone())).0,
        }))
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.load_full())
    }

    /// The mesh trust bundle, as proxies must receive it.
    pub fn trust_bundle(&self) -> watch::Receiver<Arc<Vec<String>>> {
        self.bundle.subscribe()
    }
}

/// Half the remaining lifetime, ±10%.
pub fn renew_delay(not_after: SystemTime, now: SystemTime) -> Duration {
    let left = not_after.duration_since(now).unwrap_or_default();
    (left / 2).mul_f64(rand::rng().random_range(0.9..1.1))
}

/// The SPIFFE ID of a DER X.509-SVID (see [`mesh_api::svid::svid_identity`]):
/// a client certificate with several URI SANs, or a malformed one, names
/// no proxy.
pub fn spiffe_id(cert: &CertificateDer<'_>) -> Option<String> {
    mesh_api::svid::der_identity(cert.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with_uris(uris: &[&str]) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = uris
            .iter()
            .map(|u| rcgen::SanType::URI(rcgen::string::Ia5String::try_from(*u).unwrap()))
            .collect();
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn a_caller_certificate_names_one_well_formed_identity_or_none() {
        let web = "spiffe://cluster.local/ns/shop/sa/web";
        assert_eq!(spiffe_id(&cert_with_uris(&[web])).as_deref(), Some(web));
        // The first URI used to win: a second one must not be ignored.
        assert_eq!(
            spiffe_id(&cert_with_uris(&[
                web,
                "spiffe://cluster.local/ns/mesh-system/sa/mesh-controller"
            ])),
            None
        );
        assert_eq!(
            spiffe_id(&cert_with_uris(&["spiffe://cluster.local/ns/../sa/x"])),
            None
        );
        assert_eq!(spiffe_id(&cert_with_uris(&[])), None);
    }
}
