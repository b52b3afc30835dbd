use super::*;
use crate::testca::TestCa;

#[test]
fn material_from_pem_reads_identity_and_expiry() {
    let ca = TestCa::new("cluster.local");
    let (chain, key) = ca.issue("spiffe://cluster.local/ns/a/sa/b");
    let m = TlsMaterial::from_pem(&chain, &key, &ca.root_pem()).unwrap();
    assert_eq!(m.identity, "spiffe://cluster.local/ns/a/sa/b");
    assert!(m.not_after > SystemTime::now());
}

#[test]
fn rejects_material_without_identity_or_roots() {
    let ca = TestCa::new("cluster.local");
    let (chain, key) = ca.issue("spiffe://cluster.local/ns/a/sa/b");
    assert!(matches!(
        TlsMaterial::from_pem(&chain, &key, ""),
        Err(TlsError::NoCertificate("trust bundle"))
    ));
    assert!(TlsMaterial::from_pem("", &key, &ca.root_pem()).is_err());
    assert!(TlsMaterial::from_pem(&chain, "garbage", &ca.root_pem()).is_err());
}

#[test]
fn fuzz_logic_smoke() {
    let ca = TestCa::new("cluster.local");
    let (chain, _) = ca.issue("spiffe://cluster.local/ns/a/sa/b");
    let der = CertificateDer::pem_slice_iter(chain.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    fuzz_logic(&der);
    for cut in (0..der.len()).step_by(7) {
        fuzz_logic(&der[..cut]);
    }
    let mut x = 0x1234_5678_u32;
    for i in 0..200 {
        let mut bytes = der.to_vec();
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let at = x as usize % bytes.len();
        bytes[at] ^= (i as u8) | 1;
        fuzz_logic(&bytes);
    }
}

#[test]
fn fuzz_regressions_replay() {
    mesh_api::fuzzing::replay_regressions("svid", fuzz_logic);
}

#[test]
fn spiffe_id_needs_exactly_one_well_formed_uri() {
    let cert = |uris: &[&str]| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = uris
            .iter()
            .map(|u| rcgen::SanType::URI((*u).try_into().unwrap()))
            .collect();
        params.self_signed(&key).unwrap().der().clone()
    };
    let me = "spiffe://cluster.local/ns/a/sa/b";
    assert_eq!(spiffe_id(&cert(&[me])).as_deref(), Some(me));
    assert_eq!(
        spiffe_id(&cert(&["spiffe://example.org/workload"])).as_deref(),
        Some("spiffe://example.org/workload")
    );
    for bad in [
        &[me, "spiffe://cluster.local/ns/c/sa/d"][..],
        &["https://example.com/", me],
        &["spiffe://Cluster.local/ns/a/sa/b"],
        &["spiffe://cluster.local/ns/a/../sa/b"],
        &["spiffe://cluster.local/ns/a/sa/b/"],
        &["spiffe://cluster.local:8080/ns/a"],
        &["spiffe://cluster.local/ns/a?x=1"],
        &["spiffe:///ns/a/sa/b"],
    ] {
        assert_eq!(spiffe_id(&cert(bad)), None, "{bad:?}");
    }
}
