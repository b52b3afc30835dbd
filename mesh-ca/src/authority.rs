//! The mesh's signing authority: a root, an intermediate that signs, and the
//! trust bundle; generation on first start, plug-in CAs, intermediate
//! rotation, and the signing of workload leaves (X.509-SVIDs).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use mesh_api::WorkloadIdentity;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SignatureAlgorithm,
    PKCS_ECDSA_P256_SHA256,
};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::config::{
    CLOCK_SKEW_BACKDATE, INTERMEDIATE_RENEW_BEFORE, INTERMEDIATE_VALIDITY, ROOT_VALIDITY,
};
use crate::csr::{check_csr, CsrError};
use crate::metrics::Metrics;
use crate::store::{CaStore, StoreError};

/// Everything the CA keeps: what is stored in the Secret `mesh-ca` (kube
/// mode) or the CA directory (local mode). PEM strings throughout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaMaterial {
    /// The root the signing intermediate chains to.
    pub root_cert_pem: String,
    /// Its key; `None` with a plug-in intermediate (no automatic rotation then).
    pub root_key_pem: Option<String>,
    /// The certificate that signs leaves.
    pub intermediate_cert_pem: String,
    /// Its key (PKCS#8).
    pub intermediate_key_pem: String,
    /// Certificates between the intermediate and the root (plug-in chains), nearest first.
    pub chain_pem: Vec<String>,
    /// Every root workloads must trust: the signing root, plus the old or the
    /// next root during a root rotation.
    pub trust_bundle_pem: Vec<String>,
    /// A root staged for rotation (cert PEM, key PEM): already in the trust
    /// bundle, not yet signing (`mesh-ca root stage` / `activate`).
    pub staged_root: Option<(String, String)>,
}

/// Something wrong with the CA's own keys and certificates.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    /// A PEM or DER structure could not be read.
    #[error("{what}: {reason}")]
    Parse {
        /// Which item.
        what: String,
        /// Why.
        reason: String,
    },
    /// The material is readable but not usable (mismatched key, not a CA, expired…).
    #[error("{0}")]
    Invalid(String),
    /// rcgen refused to build a certificate.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a signing request was refused (after authentication).
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The CSR is malformed, unsupported or asks for another identity.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// Building or signing the certificate failed (a CA bug, not the caller's).
    #[error("signing failed: {0}")]
    Internal(String),
}

/// A plug-in CA given by the operator: a root, or an intermediate with the
/// chain up to its root.
#[derive(Clone, Debug)]
pub struct PluginCa {
    /// The CA certificate (PEM).
    pub cert_pem: String,
    /// Its key (PKCS#8 PEM).
    pub key_pem: String,
    /// For an intermediate: the certificates above it, its root last.
    pub chain_pem: Option<String>,
}

/// An issued workload certificate.
#[derive(Clone, Debug)]
pub struct IssuedLeaf {
    /// Leaf first, then the intermediate(s), PEM.
    pub cert_chain_pem: Vec<String>,
    /// Roots to trust.
    pub trust_bundle_pem: Vec<String>,
    /// Serial number, lowercase hex.
    pub serial_hex: String,
    /// Expiry.
    pub not_after: SystemTime,
}

/// The state that signs, swapped whole when the intermediate or bundle changes.
struct Signer {
    issuer: Issuer<'static, KeyPair>,
    /// Intermediate first, then `chain_pem`.
    chain_pem: Vec<String>,
    bundle_pem: Vec<String>,
    intermediate_not_after: OffsetDateTime,
    root_not_after: OffsetDateTime,
    material: CaMaterial,
}

/// The certificate authority: signs leaves for authenticated identities.
/// Cheap to share (`Arc<Authority>`); rotation swaps its state atomically.
pub struct Authority {
    signer: ArcSwap<Signer>,
    generation: AtomicU64,
    metrics: Metrics,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.signer.load();
        f.debug_struct("Authority")
            .field("intermediate_not_after", &s.intermediate_not_after)
            .field("root_not_after", &s.root_not_after)
            .field("bundle_len", &s.bundle_pem.len())
            .finish()
    }
}

impl Authority {
    /// Loads the CA from `store`, creating it on first start: with `plugin`,
    /// from the operator's CA; otherwise a new P-256 root (10 years) and
    /// intermediate (1 year). Re-issues the intermediate if it is near expiry.
    pub async fn load_or_create(
        store: &CaStore,
        plugin: Option<&PluginCa>,
    ) -> Result<Arc<Self>, AuthorityError> {
        let existing = store.load().await?;
        let material = match (plugin, existing) {
            (Some(p), existing) => {
                let m = material_from_plugin(p, existing.as_ref())?;
                if existing.as_ref() != Some(&m) {
                    store.save(&m).await?;
                    tracing::info!("stored plug-in CA");
                }
                m
            }
            (None, Some(m)) => {
                tracing::info!("loaded CA from store");
                m
            }
            (None, None) => {
                let m = generate_material()?;
                if store.create(&m).await? {
                    tracing::info!("generated a new root and intermediate");
                    m
                } else {
                    // Another replica created it first: use theirs.
                    store.load().await?.ok_or_else(|| {
                        AuthorityError::Invalid("CA store vanished after a create conflict".into())
                    })?
                }
            }
        };
        let authority = Arc::new(Self::from_material(material)?);
        authority.maintain(store).await?;
        Ok(authority)
    }

    /// An authority over `material`, checked (keys match, chain verifies).
    pub fn from_material(material: CaMaterial) -> Result<Self, AuthorityError> {
        let signer = Signer::new(material)?;
        let metrics = Metrics::new();
        let a = Self {
            signer: ArcSwap::from_pointee(signer),
            generation: AtomicU64::new(0),
            metrics,
        };
        a.update_expiry_metrics();
        Ok(a)
    }

    /// A fresh in-memory authority (tests, benchmarks, demos).
    pub fn generate() -> Result<Self, AuthorityError> {
        Self::from_material(generate_material()?)
    }

    /// The metrics of this CA (signing counters and expiry gauges).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Bumped every time the signing state changes (serving certificate refresh).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The stored form of the current state.
    pub fn material(&self) -> CaMaterial {
        self.signer.load().material.clone()
    }

    /// Roots workloads must trust, PEM.
    pub fn trust_bundle_pem(&self) -> Vec<String> {
        self.signer.load().bundle_pem.clone()
    }

    /// The intermediate and any certificates above it (without the root), PEM.
    pub fn intermediate_chain_pem(&self) -> Vec<String> {
        self.signer.load().chain_pem.clone()
    }

    /// Expiry of the signing intermediate.
    pub fn intermediate_not_after(&self) -> SystemTime {
        to_system_time(self.signer.load().intermediate_not_after)
    }

    /// Replaces the state with `material` (after a store change).
    pub fn replace(&self, material: CaMaterial) -> Result<(), AuthorityError> {
        let signer = Signer::new(material)?;
        self.signer.store(Arc::new(signer));
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.update_expiry_metrics();
        Ok(())
    }

    /// One maintenance pass: pick up changes in the store (e.g. a staged root
    /// in the trust bundle), and re-issue the intermediate from the root when
    /// less than 30 days are left.
    pub async fn maintain(&self, store: &CaStore) -> Result<(), AuthorityError> {
        if let Some(stored) = store.load().await? {
            if stored != self.material() {
                self.replace(stored)?;
                tracing::info!("CA store changed: reloaded");
            }
        }
        let left = self.signer.load().intermediate_not_after - OffsetDateTime::now_utc();
        if left
            < time::Duration::try_from(INTERMEDIATE_RENEW_BEFORE).unwrap_or(time::Duration::ZERO)
        {
            let current = self.material();
            match renew_intermediate(&current)? {
                Some(m) => {
                    store.save(&m).await?;
                    self.replace(m)?;
                    tracing::info!(
                        not_after = ?self.signer.load().intermediate_not_after,
                        "re-issued the intermediate from the root"
                    );
                }
                None => tracing::warn!(
                    days_left = left.whole_days(),
                    "intermediate expires soon and the root key is not here (plug-in intermediate): replace it"
                ),
            }
        }
        Ok(())
    }

    fn update_expiry_metrics(&self) {
        let s = self.signer.load();
        self.metrics
            .set_expiry("root", s.root_not_after.unix_timestamp());
        self.metrics
            .set_expiry("intermediate", s.intermediate_not_after.unix_timestamp());
    }

    /// Signs the CSR for `identity`, valid for `ttl` (already resolved by the
    /// [`crate::config::TtlPolicy`]) but never past the intermediate's expiry.
    /// The leaf follows the X.509-SVID rules: exactly one URI SAN (the
    /// identity), CA=false (critical), key usage digitalSignature (critical),
    /// EKU serverAuth + clientAuth, empty subject, random 128-bit serial,
    /// notBefore one minute in the past.
    pub fn sign(
        &self,
        identity: &WorkloadIdentity,
        csr_pem: &str,
        ttl: Duration,
    ) -> Result<IssuedLeaf, SignError> {
        let csr = check_csr(csr_pem, identity)?;
        let key = P256PublicKey::from_spki(&csr.spki_der)
            .ok_or_else(|| SignError::Internal("CSR key vanished".into()))?;
        let signer = self.signer.load();
        let now = OffsetDateTime::now_utc();
        let not_after = (now + ttl).min(signer.intermediate_not_after);
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.not_before = now - CLOCK_SKEW_BACKDATE;
        params.not_after = not_after;
        let serial = random_serial();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let uri = identity
            .uri()
            .try_into()
            .map_err(|e| SignError::Internal(format!("identity as URI: {e}")))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &signer.issuer)
            .map_err(|e| SignError::Internal(e.to_string()))?;
        let mut chain = Vec::with_capacity(1 + signer.chain_pem.len());
        chain.push(cert.pem());
        chain.extend(signer.chain_pem.iter().cloned());
        Ok(IssuedLeaf {
            cert_chain_pem: chain,
            trust_bundle_pem: signer.bundle_pem.clone(),
            serial_hex: hex(&serial),
            not_after: to_system_time(not_after),
        })
    }

    /// A serving certificate for the CA itself (TLS on 15012), issued by the
    /// intermediate: returns (chain PEM, leaf first; key PKCS#8 PEM).
    pub fn issue_serving_cert(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
        ttl: Duration,
    ) -> Result<(Vec<String>, String), AuthorityError> {
        let signer = self.signer.load();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "mesh-ca");
        params.not_before = now - CLOCK_SKEW_BACKDATE;
        params.not_after = (now + ttl).min(signer.intermediate_not_after);
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
        let mut sans = Vec::new();
        for d in dns_names {
            sans.push(SanType::DnsName(d.clone().try_into()?));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &signer.issuer)?;
        let mut chain = vec![cert.pem()];
        chain.extend(signer.chain_pem.iter().cloned());
        Ok((chain, key.serialize_pem()))
    }
}

impl Signer {
    fn new(m: CaMaterial) -> Result<Self, AuthorityError> {
        let root_der = cert_der("root certificate", &m.root_cert_pem)?;
        let root = parse_cert("root certificate", &root_der)?;
        let inter_der = cert_der("intermediate certificate", &m.intermediate_cert_pem)?;
        let inter = parse_cert("intermediate certificate", &inter_der)?;
        if !is_ca(&inter) {
            return Err(AuthorityError::Invalid(
                "intermediate certificate is not a CA (basicConstraints CA=true)".into(),
            ));
        }
        let key = key_pair("intermediate key", &m.intermediate_key_pem)?;
        if key.subject_public_key_info() != inter.tbs_certificate.subject_pki.raw {
            return Err(AuthorityError::Invalid(
                "intermediate key does not match the intermediate certificate".into(),
            ));
        }
        if let Some(rk) = &m.root_key_pem {
            let rk = key_pair("root key", rk)?;
            if rk.subject_public_key_info() != root.tbs_certificate.subject_pki.raw {
                return Err(AuthorityError::Invalid(
                    "root key does not match the root certificate".into(),
                ));
            }
        }
        // The chain must verify: intermediate ← chain… ← root.
        let chain_der = m
            .chain_pem
            .iter()
            .map(|p| cert_der("chain certificate", p))
            .collect::<Result<Vec<_>, _>>()?;
        let mut chain = Vec::new();
        for d in &chain_der {
            chain.push(parse_cert("chain certificate", d)?);
        }
        let mut child = &inter;
        for parent in chain.iter().chain(std::iter::once(&root)) {
            child
                .verify_signature(Some(&parent.tbs_certificate.subject_pki))
                .map_err(|e| {
                    AuthorityError::Invalid(format!(
                        "{} is not signed by {}: {e}",
                        child.subject(),
                        parent.subject()
                    ))
                })?;
            child = parent;
        }
        let mut bundle = m.trust_bundle_pem.clone();
        if !bundle.iter().any(|b| same_cert(b, &m.root_cert_pem)) {
            bundle.insert(0, m.root_cert_pem.clone());
        }
        let issuer = Issuer::from_ca_cert_der(&inter_der.clone().into(), key)?;
        let mut chain_pem = vec![m.intermediate_cert_pem.clone()];
        chain_pem.extend(m.chain_pem.iter().cloned());
        Ok(Self {
            issuer,
            chain_pem,
            bundle_pem: bundle,
            intermediate_not_after: not_after(&inter)?,
            root_not_after: not_after(&root)?,
            material: m,
        })
    }
}

/// A new root (10 years) and intermediate (1 year), both P-256.
pub fn generate_material() -> Result<CaMaterial, AuthorityError> {
    let (root_pem, root_key) = generate_root()?;
    let (inter_pem, inter_key) = issue_intermediate(&root_pem, &root_key)?;
    Ok(CaMaterial {
        root_cert_pem: root_pem.clone(),
        root_key_pem: Some(root_key),
        intermediate_cert_pem: inter_pem,
        intermediate_key_pem: inter_key,
        chain_pem: vec![],
        trust_bundle_pem: vec![root_pem],
        staged_root: None,
    })
}

/// A new self-signed P-256 root valid for 10 years: (cert PEM, key PEM).
pub fn generate_root() -> Result<(String, String), AuthorityError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let now = OffsetDateTime::now_utc();
    let mut params = ca_params("mesh root CA", IsCa::Ca(BasicConstraints::Unconstrained));
    params.not_before = now - CLOCK_SKEW_BACKDATE;
    params.not_after = now + ROOT_VALIDITY;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A new P-256 intermediate (1 year, pathLen 0) signed by the root: (cert PEM, key PEM).
pub fn issue_intermediate(
    root_cert_pem: &str,
    root_key_pem: &str,
) -> Result<(String, String), AuthorityError> {
    let root_key = key_pair("root key", root_key_pem)?;
    let root_der = cert_der("root certificate", root_cert_pem)?;
    let root = parse_cert("root certificate", &root_der)?;
    let root_not_after = not_after(&root)?;
    let issuer = Issuer::from_ca_cert_der(&root_der.clone().into(), root_key)?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let now = OffsetDateTime::now_utc();
    let mut params = ca_params(
        "mesh intermediate CA",
        IsCa::Ca(BasicConstraints::Constrained(0)),
    );
    params.not_before = now - CLOCK_SKEW_BACKDATE;
    params.not_after = (now + INTERMEDIATE_VALIDITY).min(root_not_after);
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn ca_params(cn: &str, is_ca: IsCa) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "mesh");
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = is_ca;
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    params
}

/// A new intermediate from the root in `m`, or `None` without a root key.
fn renew_intermediate(m: &CaMaterial) -> Result<Option<CaMaterial>, AuthorityError> {
    let Some(root_key) = &m.root_key_pem else {
        return Ok(None);
    };
    let (cert, key) = issue_intermediate(&m.root_cert_pem, root_key)?;
    Ok(Some(CaMaterial {
        intermediate_cert_pem: cert,
        intermediate_key_pem: key,
        chain_pem: vec![],
        ..m.clone()
    }))
}

/// The material for a plug-in CA; keeps the stored intermediate when the
/// plug-in is the same root that issued it.
fn material_from_plugin(
    p: &PluginCa,
    existing: Option<&CaMaterial>,
) -> Result<CaMaterial, AuthorityError> {
    let der = cert_der("plug-in certificate", &p.cert_pem)?;
    let cert = parse_cert("plug-in certificate", &der)?;
    if !is_ca(&cert) {
        return Err(AuthorityError::Invalid(
            "plug-in certificate is not a CA (basicConstraints CA=true)".into(),
        ));
    }
    let self_signed = cert.subject() == cert.issuer() && cert.verify_signature(None).is_ok();
    let cert_pem = pem_encode("CERTIFICATE", &der);
    if self_signed {
        if let Some(e) = existing {
            if same_cert(&e.root_cert_pem, &cert_pem)
                && e.root_key_pem.as_deref() == Some(p.key_pem.as_str())
                && Signer::new(e.clone()).is_ok()
            {
                return Ok(e.clone());
            }
        }
        let (inter, inter_key) = issue_intermediate(&cert_pem, &p.key_pem)?;
        let mut bundle = existing
            .map(|e| e.trust_bundle_pem.clone())
            .unwrap_or_default();
        if !bundle.iter().any(|b| same_cert(b, &cert_pem)) {
            bundle.insert(0, cert_pem.clone());
        }
        let m = CaMaterial {
            root_cert_pem: cert_pem,
            root_key_pem: Some(p.key_pem.clone()),
            intermediate_cert_pem: inter,
            intermediate_key_pem: inter_key,
            chain_pem: vec![],
            trust_bundle_pem: bundle,
            staged_root: existing.and_then(|e| e.staged_root.clone()),
        };
        Signer::new(m.clone())?;
        return Ok(m);
    }
    let chain_text = p.chain_pem.as_deref().ok_or_else(|| {
        AuthorityError::Invalid(
            "plug-in certificate is an intermediate: give the chain up to its root (--plugin-chain)"
                .into(),
        )
    })?;
    let mut chain = split_pem_certs(chain_text)?;
    let root = chain
        .pop()
        .ok_or_else(|| AuthorityError::Invalid("plug-in chain holds no certificate".into()))?;
    let mut bundle = existing
        .map(|e| e.trust_bundle_pem.clone())
        .unwrap_or_default();
    if !bundle.iter().any(|b| same_cert(b, &root)) {
        bundle.insert(0, root.clone());
    }
    let m = CaMaterial {
        root_cert_pem: root,
        root_key_pem: None,
        intermediate_cert_pem: cert_pem,
        intermediate_key_pem: p.key_pem.clone(),
        chain_pem: chain,
        trust_bundle_pem: bundle,
        staged_root: None,
    };
    Signer::new(m.clone())?;
    Ok(m)
}

/// A P-256 public key from a checked CSR, for rcgen.
struct P256PublicKey {
    point: Vec<u8>,
}

impl P256PublicKey {
    fn from_spki(spki_der: &[u8]) -> Option<Self> {
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der).ok()?;
        Some(Self {
            point: spki.subject_public_key.data.to_vec(),
        })
    }
}

impl PublicKeyData for P256PublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

/// 16 random bytes, positive and with a non-zero top byte, so the DER
/// serial always carries ≥ 120 bits of randomness (the spec asks ≥ 64).
fn random_serial() -> [u8; 16] {
    let mut s: [u8; 16] = rand::random();
    s[0] = (s[0] & 0x7f) | 0x40;
    s
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn to_system_time(t: OffsetDateTime) -> SystemTime {
    let secs = t.unix_timestamp();
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH
    }
}

fn key_pair(what: &str, pem: &str) -> Result<KeyPair, AuthorityError> {
    KeyPair::from_pem(pem).map_err(|e| AuthorityError::Parse {
        what: what.into(),
        reason: format!("{e} (keys must be PKCS#8 PEM: openssl pkcs8 -topk8 -nocrypt)"),
    })
}

/// The DER of the single certificate in `pem`.
fn cert_der(what: &str, pem: &str) -> Result<Vec<u8>, AuthorityError> {
    let mut certs = split_pem_certs(pem).map_err(|e| AuthorityError::Parse {
        what: what.into(),
        reason: e.to_string(),
    })?;
    if certs.len() != 1 {
        return Err(AuthorityError::Parse {
            what: what.into(),
            reason: format!("want one certificate, found {}", certs.len()),
        });
    }
    let one = certs.pop().unwrap_or_default();
    crate::csr::single_pem_block(&one, "CERTIFICATE").map_err(|e| AuthorityError::Parse {
        what: what.into(),
        reason: e.to_string(),
    })
}

fn parse_cert<'a>(what: &str, der: &'a [u8]) -> Result<X509Certificate<'a>, AuthorityError> {
    let (_, c) = X509Certificate::from_der(der).map_err(|e| AuthorityError::Parse {
        what: what.into(),
        reason: e.to_string(),
    })?;
    Ok(c)
}

fn is_ca(c: &X509Certificate<'_>) -> bool {
    matches!(c.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
}

fn not_after(c: &X509Certificate<'_>) -> Result<OffsetDateTime, AuthorityError> {
    OffsetDateTime::from_unix_timestamp(c.validity().not_after.timestamp())
        .map_err(|e| AuthorityError::Invalid(format!("certificate expiry out of range: {e}")))
}

/// Splits a PEM bundle into one PEM string per `CERTIFICATE` block
/// (normalised encoding); other blocks are an error.
pub fn split_pem_certs(pem: &str) -> Result<Vec<String>, AuthorityError> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| AuthorityError::Parse {
            what: "PEM bundle".into(),
            reason: e.to_string(),
        })?;
        if block.label != "CERTIFICATE" {
            return Err(AuthorityError::Parse {
                what: "PEM bundle".into(),
                reason: format!("unexpected PEM block {:?}", block.label),
            });
        }
        parse_cert("bundle certificate", &block.contents)?;
        out.push(pem_encode("CERTIFICATE", &block.contents));
    }
    Ok(out)
}

/// Whether two PEM strings hold the same certificate.
pub fn same_cert(a: &str, b: &str) -> bool {
    let der = |p: &str| crate::csr::single_pem_block(p, "CERTIFICATE").ok();
    match (der(a), der(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// PEM-encodes `der` under `label` (64-column base64).
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                b64.push(ALPHABET[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests;
