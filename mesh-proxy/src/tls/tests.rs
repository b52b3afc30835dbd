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
