//! Mutual TLS between proxies with SPIFFE identities.
//!
//! A proxy holds one workload certificate (`TlsMaterial`). Outbound, it
//! verifies that the peer chains to the mesh's trust bundle **and** carries
//! exactly the SPIFFE ID the config says that endpoint must have (there are
//! no DNS names in SPIFFE certificates, so the usual hostname check does not
//! apply). Inbound, any peer chaining to the bundle is accepted and its
//! identity is handed to authorization.
//!
//! ALPN tells the two proxies what follows the handshake: `mesh-h2` (HTTP
//! of any version, carried as HTTP/2) or `mesh-tcp` (opaque bytes). A TLS
//! ClientHello without these is the app's own TLS, not the mesh's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// ALPN for HTTP between proxies (always HTTP/2 on the wire).
pub const ALPN_H2: &[u8] = b"mesh-h2";
/// ALPN for opaque TCP between proxies.
pub const ALPN_TCP: &[u8] = b"mesh-tcp";

/// Why TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no certificate in {0}")]
    NoCertificate(&'static str),
    #[error("no private key")]
    NoKey,
    #[error("bad PEM in {what}: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("certificate has no SPIFFE ID (URI SAN)")]
    NoIdentity,
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("trust bundle: {0}")]
    Verifier(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A workload certificate chain, its key and the roots peers must chain to.
pub struct TlsMaterial {
    pub identity: String,
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    pub roots: Arc<RootCertStore>,
    pub not_after: SystemTime,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("identity", &self.identity)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// Builds material from PEM: the chain (leaf first), the key, and the
    /// trust bundle (one or more roots).
    pub fn from_pem(chain_pem: &str, key_pem: &str, roots_pem: &str) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem {
                what: "certificate chain",
                reason: e.to_string(),
            })?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| TlsError::NoKey)?;
        Self::new(chain, key, roots_pem)
    }

    /// Builds material from DER chain and key and a PEM trust bundle.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots_pem: &str,
    ) -> Result<Self, TlsError> {
        let leaf = chain.first().ok_or(TlsError::NoCertificate("chain"))?;
        let identity = spiffe_id(leaf).ok_or(TlsError::NoIdentity)?;
        let not_after = not_after(leaf).ok_or(TlsError::NoCertificate("chain"))?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
            let cert = cert.map_err(|e| TlsError::Pem {
                what: "trust bundle",
                reason: e.to_string(),
            })?;
            roots.add(cert)?;
        }
        if roots.is_empty() {
            return Err(TlsError::NoCertificate("trust bundle"));
        }
        Ok(Self {
            identity,
            chain,
            key,
            roots: Arc::new(roots),
            not_after,
        })
    }

    /// Seconds since the Unix epoch when the leaf expires.
    pub fn expiry_unix(&self) -> f64 {
        self.not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    }
}

/// The SPIFFE ID of an X.509-SVID (see [`mesh_api::svid::svid_identity`]).
pub fn spiffe_id(cert: &CertificateDer<'_>) -> Option<String> {
    mesh_api::svid::der_identity(cert.as_ref())
}

fn not_after(cert: &CertificateDer<'_>) -> Option<SystemTime> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let secs = parsed.validity().not_after.timestamp();
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// Checks the server's chain against the trust bundle and its SPIFFE ID
/// against the one expected for the endpoint.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        match spiffe_id(end_entity) {
            Some(id) if id == self.expected => Ok(ServerCertVerified::assertion()),
            Some(id) => Err(rustls::Error::General(format!(
                "peer identity {id} is not the expected {}",
                self.expected
            ))),
            None => Err(rustls::Error::General(
                "peer certificate has no SPIFFE ID".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Client configs are cached per (expected peer identity, ALPN).
type ClientKey = (String, &'static [u8]);

/// The current certificate and the TLS configs derived from it.
struct Current {
    material: TlsMaterial,
    server: Arc<ServerConfig>,
    clients: Mutex<HashMap<ClientKey, Arc<ClientConfig>>>,
}

/// The proxy's TLS state; the certificate can be replaced at any time
/// (rotation) without touching established connections.
#[derive(Default)]
pub struct MeshTls {
    current: ArcSwapOption<Current>,
}

impl MeshTls {
    /// Installs a new workload certificate.
    pub fn set(&self, material: TlsMaterial) -> Result<(), TlsError> {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(material.roots.clone(), provider())
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(material.chain.clone(), material.key.clone_key())?;
        server.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_TCP.to_vec()];
        tracing::info!(identity = %material.identity, not_after = ?material.not_after, "workload certificate installed");
        self.current.store(Some(Arc::new(Current {
            material,
            server: Arc::new(server),
            clients: Mutex::new(HashMap::new()),
        })));
        Ok(())
    }

    /// Whether a certificate is installed.
    pub fn is_ready(&self) -> bool {
        self.current.load().is_some()
    }

    /// Our SPIFFE ID, once a certificate is installed.
    pub fn identity(&self) -> Option<String> {
        self.current
            .load()
            .as_ref()
            .map(|c| c.material.identity.clone())
    }

    /// Expiry of the current certificate (Unix seconds).
    pub fn expiry_unix(&self) -> Option<f64> {
        self.current
            .load()
            .as_ref()
            .map(|c| c.material.expiry_unix())
    }

    /// The current certificate's expiry.
    pub fn not_after(&self) -> Option<SystemTime> {
        self.current.load().as_ref().map(|c| c.material.not_after)
    }

    /// Server config for mesh mTLS on the inbound side.
    pub fn server_config(&self) -> Option<Arc<ServerConfig>> {
        self.current.load().as_ref().map(|c| c.server.clone())
    }

    /// Client config that requires the peer to be `expected`.
    pub fn client_config(&self, expected: &str, alpn: &'static [u8]) -> Option<Arc<ClientConfig>> {
        let current = self.current.load_full()?;
        let mut cache = current.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.get(&(expected.to_string(), alpn)) {
            return Some(c.clone());
        }
        let verifier = Arc::new(SpiffeServerVerifier {
            roots: current.material.roots.clone(),
            expected: expected.to_string(),
            provider: provider(),
        });
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .ok()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(
                current.material.chain.clone(),
                current.material.key.clone_key(),
            )
            .ok()?;
        config.alpn_protocols = vec![alpn.to_vec()];
        let config = Arc::new(config);
        cache.insert((expected.to_string(), alpn), config.clone());
        Some(config)
    }
}

/// Fuzzing entry point: `data` is a peer's leaf certificate (DER), as the
/// TLS handshake hands it over. Reading its SPIFFE ID and expiry never
/// panics, and an ID is only ever read from a certificate whose one URI SAN
/// is a well-formed `spiffe://` ID (the X.509-SVID rules).
#[cfg(any(test, fuzzing))]
pub fn fuzz_logic(data: &[u8]) {
    let cert = CertificateDer::from(data);
    let _ = not_after(&cert);
    let Some(id) = spiffe_id(&cert) else {
        return;
    };
    let (_, parsed) = x509_parser::parse_x509_certificate(data).expect("parsed by spiffe_id");
    let uris: Vec<&str> = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(uris, [id.as_str()], "an SVID has exactly one URI SAN");
    // SPIFFE ID syntax: spiffe://<trust domain>[/<segment>...], with the
    // trust domain in [a-z0-9.-_] and segments in [A-Za-z0-9.-_] that are
    // neither empty nor `.` or `..`; no port, user, query or fragment.
    let rest = id.strip_prefix("spiffe://").expect("spiffe scheme");
    let (td, path) = rest.split_once('/').unwrap_or((rest, ""));
    assert!(id.len() <= 2048, "{id:?}");
    assert!(!td.is_empty(), "{id:?}");
    assert!(
        td.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b)),
        "trust domain of {id:?}"
    );
    if !path.is_empty() || rest.ends_with('/') {
        for seg in path.split('/') {
            assert!(!matches!(seg, "" | "." | ".."), "segment {seg:?} of {id:?}");
            assert!(
                seg.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)),
                "segment {seg:?} of {id:?}"
            );
        }
    }
}

#[cfg(test)]
mod tests;
