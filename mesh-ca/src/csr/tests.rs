use super::*;

fn id(sa: &str) -> WorkloadIdentity {
    WorkloadIdentity::new("cluster.local", "default", sa).unwrap()
}

fn csr_with(sans: Vec<rcgen::SanType>, alg: &'static rcgen::SignatureAlgorithm) -> String {
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = sans;
    params.serialize_request(&key).unwrap().pem().unwrap()
}

#[test]
fn accepts_no_san_and_own_identity() {
    let (_, pem) = new_workload_csr(None).unwrap();
    assert!(check_csr(&pem, &id("web")).is_ok());
    let (_, pem) = new_workload_csr(Some(&id("web"))).unwrap();
    let c = check_csr(&pem, &id("web")).unwrap();
    assert!(!c.spki_der.is_empty());
}

#[test]
fn refuses_other_identity_dns_ip_and_two_uris() {
    let (_, pem) = new_workload_csr(Some(&id("admin"))).unwrap();
    assert!(matches!(
        check_csr(&pem, &id("web")),
        Err(CsrError::IdentityMismatch { .. })
    ));
    let alg = &rcgen::PKCS_ECDSA_P256_SHA256;
    let dns = csr_with(
        vec![rcgen::SanType::DnsName("web".try_into().unwrap())],
        alg,
    );
    assert!(matches!(
        check_csr(&dns, &id("web")),
        Err(CsrError::IdentityMismatch { .. })
    ));
    let ip = csr_with(vec![rcgen::SanType::IpAddress([10, 0, 0, 1].into())], alg);
    assert!(matches!(
        check_csr(&ip, &id("web")),
        Err(CsrError::IdentityMismatch { .. })
    ));
    let uri = |s: &str| rcgen::SanType::URI(s.try_into().unwrap());
    let me = id("web").uri();
    let two = csr_with(vec![uri(&me), uri(&me)], alg);
    assert!(matches!(
        check_csr(&two, &id("web")),
        Err(CsrError::IdentityMismatch { .. })
    ));
}

#[test]
fn refuses_other_key_types() {
    let p384 = csr_with(vec![], &rcgen::PKCS_ECDSA_P384_SHA384);
    assert!(matches!(
        check_csr(&p384, &id("web")),
        Err(CsrError::UnsupportedKey(_))
    ));
    let ed = csr_with(vec![], &rcgen::PKCS_ED25519);
    assert!(matches!(
        check_csr(&ed, &id("web")),
        Err(CsrError::UnsupportedKey(_))
    ));
}

#[test]
fn refuses_garbage_and_tampering() {
    for bad in [
        "",
        "hello",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        "-----BEGIN CERTIFICATE REQUEST-----\n!!!!\n-----END CERTIFICATE REQUEST-----\n",
    ] {
        assert!(
            matches!(check_csr(bad, &id("web")), Err(CsrError::Invalid(_))),
            "{bad:?}"
        );
    }
    // A certificate is not a CSR.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::default()
        .self_signed(&key)
        .unwrap()
        .pem();
    assert!(matches!(
        check_csr(&cert, &id("web")),
        Err(CsrError::Invalid(_))
    ));
    // Two CSRs in one field.
    let (_, a) = new_workload_csr(None).unwrap();
    assert!(matches!(
        check_csr(&format!("{a}{a}"), &id("web")),
        Err(CsrError::Invalid(_))
    ));
    // Flip a byte of the signature: parse may succeed, verification must not.
    let der = single_pem_block(&a, "CERTIFICATE REQUEST").unwrap();
    let mut bad = der.clone();
    let n = bad.len();
    bad[n - 3] ^= 0x55;
    let pem = x509_pem("CERTIFICATE REQUEST", &bad);
    assert!(matches!(
        check_csr(&pem, &id("web")),
        Err(CsrError::Invalid(_))
    ));
    // Every truncation is refused, none panics.
    for cut in 0..der.len() {
        let pem = x509_pem("CERTIFICATE REQUEST", &der[..cut]);
        assert!(check_csr(&pem, &id("web")).is_err());
    }
}

fn x509_pem(label: &str, der: &[u8]) -> String {
    crate::authority::pem_encode(label, der)
}

#[test]
fn fuzz_logic_smoke() {
    let alg = &rcgen::PKCS_ECDSA_P256_SHA256;
    let uri = |s: &str| rcgen::SanType::URI(s.try_into().unwrap());
    let me = id("web").uri();
    let pems = [
        new_workload_csr(None).unwrap().1,
        new_workload_csr(Some(&id("web"))).unwrap().1,
        new_workload_csr(Some(&id("admin"))).unwrap().1,
        csr_with(vec![uri(&me), uri(&me)], alg),
        csr_with(vec![], &rcgen::PKCS_ECDSA_P384_SHA384),
    ];
    for pem in &pems {
        fuzz_logic(pem.as_bytes());
        let der = single_pem_block(pem, "CERTIFICATE REQUEST").unwrap();
        fuzz_logic(&der);
        for cut in (0..der.len()).step_by(5) {
            fuzz_logic(&der[..cut]);
        }
        for i in (0..der.len()).step_by(3) {
            let mut bad = der.clone();
            bad[i] ^= 0x41;
            fuzz_logic(&bad);
        }
    }
}

#[test]
fn fuzz_regressions_replay() {
    mesh_api::fuzzing::replay_regressions("csr", fuzz_logic);
}

#[test]
fn refuses_a_request_to_be_a_ca() {
    let alg = &rcgen::PKCS_ECDSA_P256_SHA256;
    let with = |f: &dyn Fn(&mut rcgen::CertificateParams)| {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(id("web").uri().try_into().unwrap())];
        f(&mut params);
        params.serialize_request(&key).unwrap().pem().unwrap()
    };
    let ca = with(&|p| p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained));
    assert_eq!(
        check_csr(&ca, &id("web")).unwrap_err(),
        CsrError::CaRequested("basicConstraints CA:true".into())
    );
    let signer = with(&|p| p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign]);
    assert!(matches!(
        check_csr(&signer, &id("web")),
        Err(CsrError::CaRequested(_))
    ));
    let crl = with(&|p| p.key_usages = vec![rcgen::KeyUsagePurpose::CrlSign]);
    assert!(matches!(
        check_csr(&crl, &id("web")),
        Err(CsrError::CaRequested(_))
    ));
    // Saying CA:false, or asking for the usages a leaf has, is fine.
    let leaf = with(&|p| {
        p.is_ca = rcgen::IsCa::ExplicitNoCa;
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    });
    assert!(check_csr(&leaf, &id("web")).is_ok());
}
