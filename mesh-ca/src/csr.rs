//! Reading and checking a workload's certificate signing request.
//!
//! The CSR contributes only its public key: the identity comes from the
//! caller's token, and every other field of the leaf is set by the CA. The
//! CSR is still checked closely, because a CSR that *asks* for something else
//! (another identity, a DNS name) is a sign of a confused or hostile caller.

use mesh_api::WorkloadIdentity;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::FromDer;

/// Why a CSR is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsrError {
    /// Not one PEM `CERTIFICATE REQUEST` block, not DER, or a bad signature.
    #[error("invalid CSR: {0}")]
    Invalid(String),
    /// A key type other than ECDSA P-256.
    #[error("unsupported CSR key: {0} (only ECDSA P-256 keys are accepted)")]
    UnsupportedKey(String),
    /// The CSR asks to be a CA (basicConstraints CA:true, or keyCertSign /
    /// cRLSign key usage): a workload certificate never is.
    #[error("CSR asks for {0}, but a workload certificate is never a CA")]
    CaRequested(String),
    /// The CSR asks for a name the caller's token does not give it.
    #[error("CSR asks for {asked}, but the caller's identity is {identity}")]
    IdentityMismatch {
        /// What the CSR's SAN extension asks for.
        asked: String,
        /// The identity from the token.
        identity: String,
    },
}

/// The public key of a checked CSR, DER `SubjectPublicKeyInfo`.
#[derive(Debug, Clone)]
pub struct CheckedCsr {
    /// SubjectPublicKeyInfo of the CSR (P-256).
    pub spki_der: Vec<u8>,
}

/// Parses `csr_pem`, verifies its self-signature, requires a P-256 key,
/// refuses any SAN other than exactly `identity` (no SAN at all is fine) and
/// a request to be a CA.
pub fn check_csr(csr_pem: &str, identity: &WorkloadIdentity) -> Result<CheckedCsr, CsrError> {
    let der = single_pem_block(csr_pem, "CERTIFICATE REQUEST")?;
    let (rest, csr) = X509CertificationRequest::from_der(&der)
        .map_err(|e| CsrError::Invalid(format!("not a PKCS#10 request: {e}")))?;
    if !rest.is_empty() {
        return Err(CsrError::Invalid("trailing bytes after the request".into()));
    }
    let info = &csr.certification_request_info;
    let alg = &info.subject_pki.algorithm;
    if alg.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
        return Err(CsrError::UnsupportedKey(format!(
            "key algorithm {}",
            alg.algorithm
        )));
    }
    let curve = alg.parameters.as_ref().and_then(|p| p.as_oid().ok());
    if curve.as_ref() != Some(&OID_EC_P256) {
        return Err(CsrError::UnsupportedKey(match curve {
            Some(c) => format!("EC curve {c}"),
            None => "EC key without a named curve".into(),
        }));
    }
    // Uncompressed P-256 point: 0x04 || X || Y.
    let point = &info.subject_pki.subject_public_key.data;
    if point.len() != 65 || point[0] != 4 {
        return Err(CsrError::UnsupportedKey(
            "P-256 point is not 65 bytes uncompressed".into(),
        ));
    }
    csr.verify_signature()
        .map_err(|e| CsrError::Invalid(format!("signature does not verify: {e}")))?;
    check_requested_names(&csr, identity)?;
    Ok(CheckedCsr {
        spki_der: info.subject_pki.raw.to_vec(),
    })
}

fn check_requested_names(
    csr: &X509CertificationRequest<'_>,
    identity: &WorkloadIdentity,
) -> Result<(), CsrError> {
    let want = identity.uri();
    let Some(exts) = csr.requested_extensions() else {
        return Ok(());
    };
    for ext in exts {
        match ext {
            ParsedExtension::SubjectAlternativeName(san) => {
                let mismatch = |asked: String| CsrError::IdentityMismatch {
                    asked,
                    identity: want.clone(),
                };
                if san.general_names.len() > 1 {
                    return Err(mismatch(format!(
                        "{} subject alternative names (at most one URI is allowed)",
                        san.general_names.len()
                    )));
                }
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(u) if *u == want => {}
                        GeneralName::URI(u) => return Err(mismatch(format!("URI {u:?}"))),
                        other => return Err(mismatch(format!("SAN {other}"))),
                    }
                }
            }
            ParsedExtension::BasicConstraints(bc) if bc.ca => {
                return Err(CsrError::CaRequested("basicConstraints CA:true".into()));
            }
            ParsedExtension::KeyUsage(ku) if ku.key_cert_sign() || ku.crl_sign() => {
                return Err(CsrError::CaRequested(format!("key usage {ku}")));
            }
            ParsedExtension::UnsupportedExtension { .. }
            | ParsedExtension::ParseError { .. }
            | ParsedExtension::KeyUsage(_)
            | ParsedExtension::ExtendedKeyUsage(_)
            | ParsedExtension::BasicConstraints(_)
            | ParsedExtension::SubjectKeyIdentifier(_) => {
                // Ignored: the CA sets these itself, whatever the CSR asks.
            }
            _ => {}
        }
    }
    Ok(())
}

/// The DER content of the one PEM block with `label` in `pem`.
pub(crate) fn single_pem_block(pem: &str, label: &str) -> Result<Vec<u8>, CsrError> {
    let mut blocks = x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes());
    let first = match blocks.next() {
        Some(Ok(b)) => b,
        Some(Err(e)) => return Err(CsrError::Invalid(format!("bad PEM: {e}"))),
        None => return Err(CsrError::Invalid("no PEM block".into())),
    };
    if first.label != label {
        return Err(CsrError::Invalid(format!(
            "PEM block is {:?}, want {label:?}",
            first.label
        )));
    }
    if blocks.next().is_some() {
        return Err(CsrError::Invalid("more than one PEM block".into()));
    }
    Ok(first.contents)
}

/// A new P-256 key and a CSR for it, as a workload makes them: the key PEM
/// (PKCS#8) and the CSR PEM. With `identity`, the CSR carries it as its one
/// URI SAN; without, no SAN (the CA fills it in).
pub fn new_workload_csr(
    identity: Option<&WorkloadIdentity>,
) -> Result<(String, String), rcgen::Error> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(id) = identity {
        params.subject_alt_names = vec![rcgen::SanType::URI(id.uri().try_into()?)];
    }
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// Fuzzing entry point: `data` is a CSR as a workload sends it (PEM text
/// when it starts with `-----BEGIN`, else DER, wrapped in PEM here). The
/// identity the caller's token proves is fixed. Checking never panics, and a
/// CSR that is accepted is signed, into a leaf whose only SAN is exactly that
/// identity, whatever the CSR asked for.
#[cfg(any(test, fuzzing))]
pub fn fuzz_logic(data: &[u8]) {
    use std::sync::OnceLock;

    use crate::authority::{pem_encode, Authority};

    static CA: OnceLock<Authority> = OnceLock::new();
    let identity = WorkloadIdentity::new("cluster.local", "default", "web").expect("identity");
    let pem = if data.starts_with(b"-----BEGIN") {
        String::from_utf8_lossy(data).into_owned()
    } else {
        pem_encode("CERTIFICATE REQUEST", data)
    };
    if check_csr(&pem, &identity).is_err() {
        return;
    }
    let ca = CA.get_or_init(|| Authority::generate().expect("a test CA"));
    let leaf = ca
        .sign(&identity, &pem, std::time::Duration::from_secs(3600))
        .expect("an accepted CSR is signed");
    let der = single_pem_block(&leaf.cert_chain_pem[0], "CERTIFICATE").expect("leaf PEM");
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("leaf DER");
    let san = cert
        .subject_alternative_name()
        .expect("one SAN extension")
        .expect("a SAN extension");
    let want = identity.uri();
    assert_eq!(
        san.value.general_names,
        [GeneralName::URI(want.as_str())],
        "the leaf names exactly the caller's identity"
    );
}

#[cfg(test)]
mod tests;
