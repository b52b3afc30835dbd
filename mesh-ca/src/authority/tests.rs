use std::process::Command;

use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::*;

use super::*;
use crate::csr::new_workload_csr;

fn web() -> WorkloadIdentity {
    WorkloadIdentity::new("cluster.local", "shop", "web").unwrap()
}

fn der(pem: &str) -> Vec<u8> {
    crate::csr::single_pem_block(pem, "CERTIFICATE").unwrap()
}

/// Every X.509-SVID rule, checked on a parsed leaf.
fn assert_svid(leaf_pem: &str, id: &WorkloadIdentity, inter_pem: &str) {
    let d = der(leaf_pem);
    let (rest, c) = X509Certificate::from_der(&d).unwrap();
    assert!(rest.is_empty());
    assert_eq!(c.version(), X509Version::V3);
    // Exactly one SAN, a URI, the identity.
    let san = c.subject_alternative_name().unwrap().expect("SAN present");
    assert_eq!(san.value.general_names.len(), 1);
    match &san.value.general_names[0] {
        GeneralName::URI(u) => assert_eq!(*u, id.uri()),
        other => panic!("SAN is {other:?}"),
    }
    // Subject empty (so the SAN extension must be critical, RFC 5280 4.2.1.6).
    assert_eq!(c.subject().iter_attributes().count(), 0);
    assert!(san.critical);
    // CA=false, basicConstraints critical.
    let bc = c.basic_constraints().unwrap().expect("basicConstraints");
    assert!(bc.critical);
    assert!(!bc.value.ca);
    assert!(bc.value.path_len_constraint.is_none());
    // Key usage critical: digitalSignature only (P-256: no keyEncipherment).
    let ku = c.key_usage().unwrap().expect("keyUsage");
    assert!(ku.critical);
    assert!(ku.value.digital_signature());
    assert!(!ku.value.key_encipherment());
    assert!(!ku.value.key_cert_sign());
    assert!(!ku.value.crl_sign());
    assert!(!ku.value.key_agreement());
    assert!(!ku.value.non_repudiation());
    // EKU: serverAuth + clientAuth, nothing else.
    let eku = c.extended_key_usage().unwrap().expect("EKU");
    assert!(eku.value.server_auth && eku.value.client_auth);
    assert!(!eku.value.any && !eku.value.code_signing && eku.value.other.is_empty());
    // No name constraints or other CA-only extensions on a leaf.
    for ext in c.extensions() {
        assert!(
            !matches!(ext.parsed_extension(), ParsedExtension::NameConstraints(_)),
            "leaf has name constraints"
        );
    }
    // Serial: positive, ≥ 64 bits.
    let serial = c.raw_serial();
    assert!(serial.len() >= 8, "serial {serial:?}");
    assert!(serial[0] & 0x80 == 0);
    assert!(c.serial.bits() >= 64);
    // P-256 key, ECDSA signature from the intermediate.
    assert_eq!(
        c.public_key().algorithm.algorithm,
        x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
    );
    let inter_der = der(inter_pem);
    let (_, inter) = X509Certificate::from_der(&inter_der).unwrap();
    c.verify_signature(Some(inter.public_key())).unwrap();
    assert_eq!(c.issuer(), inter.subject());
    // AKI matches the intermediate's SKI.
    let aki = c
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.clone(),
            _ => None,
        })
        .expect("AKI");
    let ski = inter
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.clone()),
            _ => None,
        })
        .expect("SKI");
    assert_eq!(aki.0, ski.0);
}

#[test]
fn leaf_follows_every_svid_rule() {
    let a = Authority::generate().unwrap();
    for with_san in [false, true] {
        let (_, csr) = new_workload_csr(with_san.then(web).as_ref()).unwrap();
        let before = OffsetDateTime::now_utc().unix_timestamp();
        let leaf = a.sign(&web(), &csr, Duration::from_secs(3600)).unwrap();
        assert_eq!(leaf.cert_chain_pem.len(), 2);
        assert_eq!(leaf.trust_bundle_pem, a.trust_bundle_pem());
        assert_svid(&leaf.cert_chain_pem[0], &web(), &leaf.cert_chain_pem[1]);
        let d = der(&leaf.cert_chain_pem[0]);
        let (_, c) = X509Certificate::from_der(&d).unwrap();
        let nb = c.validity().not_before.timestamp();
        let na = c.validity().not_after.timestamp();
        // Backdated ~1 minute for clock skew, valid for the TTL from now.
        assert!(
            (before - 70..=before - 50).contains(&nb),
            "notBefore {nb} vs {before}"
        );
        assert!(
            (before + 3590..=before + 3610).contains(&na),
            "notAfter {na}"
        );
        assert_eq!(
            leaf.serial_hex,
            c.raw_serial()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
    }
}

#[test]
fn serials_are_random() {
    let a = Authority::generate().unwrap();
    let (_, csr) = new_workload_csr(None).unwrap();
    let s: std::collections::HashSet<String> = (0..50)
        .map(|_| {
            a.sign(&web(), &csr, Duration::from_secs(60))
                .unwrap()
                .serial_hex
        })
        .collect();
    assert_eq!(s.len(), 50);
}

#[test]
fn ca_certificates_are_p256_root_10y_intermediate_1y() {
    let m = generate_material().unwrap();
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let rd = der(&m.root_cert_pem);
    let (_, root) = X509Certificate::from_der(&rd).unwrap();
    let id = der(&m.intermediate_cert_pem);
    let (_, inter) = X509Certificate::from_der(&id).unwrap();
    let days = |c: &X509Certificate<'_>| (c.validity().not_after.timestamp() - now) / 86400;
    assert!((3649..=3650).contains(&days(&root)), "{}", days(&root));
    assert!((364..=365).contains(&days(&inter)), "{}", days(&inter));
    for c in [&root, &inter] {
        assert!(c.basic_constraints().unwrap().unwrap().value.ca);
        assert!(c.key_usage().unwrap().unwrap().value.key_cert_sign());
        let curve = c
            .public_key()
            .algorithm
            .parameters
            .as_ref()
            .unwrap()
            .as_oid()
            .unwrap();
        assert_eq!(curve, x509_parser::oid_registry::OID_EC_P256);
    }
    assert_eq!(
        inter
            .basic_constraints()
            .unwrap()
            .unwrap()
            .value
            .path_len_constraint,
        Some(0)
    );
    inter.verify_signature(Some(root.public_key())).unwrap();
    root.verify_signature(None).unwrap();
}

#[test]
fn openssl_verifies_the_chain() {
    let a = Authority::generate().unwrap();
    let (_, csr) = new_workload_csr(None).unwrap();
    let leaf = a
        .sign(&web(), &csr, Duration::ZERO.max(Duration::from_secs(600)))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("root.pem"), a.trust_bundle_pem().concat()).unwrap();
    std::fs::write(p("intermediate.pem"), &leaf.cert_chain_pem[1]).unwrap();
    std::fs::write(p("leaf.pem"), &leaf.cert_chain_pem[0]).unwrap();
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(p("root.pem"))
        .arg("-untrusted")
        .arg(p("intermediate.pem"))
        .arg("-purpose")
        .arg("sslclient")
        .arg(p("leaf.pem"))
        .output()
        .expect("openssl CLI on the machine");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "openssl verify failed: {text}");
    assert!(text.contains(": OK"), "{text}");
    // And as a server certificate.
    let out = Command::new("openssl")
        .args(["verify", "-purpose", "sslserver", "-CAfile"])
        .arg(p("root.pem"))
        .arg("-untrusted")
        .arg(p("intermediate.pem"))
        .arg(p("leaf.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A leaf from another CA does not verify against this root.
    let other = Authority::generate().unwrap();
    let foreign = other.sign(&web(), &csr, Duration::from_secs(600)).unwrap();
    std::fs::write(p("foreign.pem"), &foreign.cert_chain_pem[0]).unwrap();
    std::fs::write(p("foreign-int.pem"), &foreign.cert_chain_pem[1]).unwrap();
    let out = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(p("root.pem"))
        .arg("-untrusted")
        .arg(p("foreign-int.pem"))
        .arg(p("foreign.pem"))
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn leaf_never_outlives_the_intermediate() {
    let a = Authority::generate().unwrap();
    let (_, csr) = new_workload_csr(None).unwrap();
    let leaf = a
        .sign(&web(), &csr, Duration::from_secs(400 * 86400))
        .unwrap();
    assert!(leaf.not_after <= a.intermediate_not_after());
}

#[test]
fn refusals_sign_nothing() {
    let a = Authority::generate().unwrap();
    let (_, other) = new_workload_csr(Some(
        &WorkloadIdentity::new("cluster.local", "shop", "admin").unwrap(),
    ))
    .unwrap();
    assert!(matches!(
        a.sign(&web(), &other, Duration::from_secs(60)),
        Err(SignError::Csr(CsrError::IdentityMismatch { .. }))
    ));
    assert!(matches!(
        a.sign(&web(), "garbage", Duration::from_secs(60)),
        Err(SignError::Csr(CsrError::Invalid(_)))
    ));
}

#[test]
fn serving_cert_has_the_service_names() {
    let a = Authority::generate().unwrap();
    let names: Vec<String> = crate::config::SERVING_DNS_NAMES
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (chain, key) = a
        .issue_serving_cert(
            &names,
            &["127.0.0.1".parse().unwrap()],
            Duration::from_secs(600),
        )
        .unwrap();
    assert!(key.contains("PRIVATE KEY"));
    let d = der(&chain[0]);
    let (_, c) = X509Certificate::from_der(&d).unwrap();
    let san = c.subject_alternative_name().unwrap().unwrap();
    let dns: Vec<String> = san
        .value
        .general_names
        .iter()
        .filter_map(|g| match g {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(dns, names);
    assert!(san
        .value
        .general_names
        .iter()
        .any(|g| matches!(g, GeneralName::IPAddress(ip) if *ip == [127, 0, 0, 1])));
}

#[test]
fn plugin_root_and_plugin_intermediate() {
    // A root from "the company PKI".
    let (root, root_key) = generate_root().unwrap();
    let p = PluginCa {
        cert_pem: root.clone(),
        key_pem: root_key.clone(),
        chain_pem: None,
    };
    let m = material_from_plugin(&p, None).unwrap();
    assert!(same_cert(&m.root_cert_pem, &root));
    assert!(m.root_key_pem.is_some());
    let a = Authority::from_material(m.clone()).unwrap();
    let (_, csr) = new_workload_csr(None).unwrap();
    a.sign(&web(), &csr, Duration::from_secs(60)).unwrap();
    // Same plug-in again keeps the stored intermediate.
    let again = material_from_plugin(&p, Some(&m)).unwrap();
    assert_eq!(again, m);

    // An intermediate from that PKI, with its chain (the root).
    let (inter, inter_key) = issue_intermediate(&root, &root_key).unwrap();
    let p = PluginCa {
        cert_pem: inter.clone(),
        key_pem: inter_key.clone(),
        chain_pem: Some(root.clone()),
    };
    let m = material_from_plugin(&p, None).unwrap();
    assert!(m.root_key_pem.is_none());
    let a = Authority::from_material(m).unwrap();
    let leaf = a.sign(&web(), &csr, Duration::from_secs(60)).unwrap();
    assert!(same_cert(&leaf.cert_chain_pem[1], &inter));
    // Without its chain, or with a wrong key, or with a leaf as "CA": refused.
    let no_chain = PluginCa {
        chain_pem: None,
        ..p.clone()
    };
    assert!(material_from_plugin(&no_chain, None).is_err());
    let (_, other_key) = generate_root().unwrap();
    let wrong_key = PluginCa {
        key_pem: other_key,
        ..p.clone()
    };
    assert!(material_from_plugin(&wrong_key, None).is_err());
    let leaf_as_ca = PluginCa {
        cert_pem: leaf.cert_chain_pem[0].clone(),
        ..p
    };
    assert!(material_from_plugin(&leaf_as_ca, None).is_err());
}

#[test]
fn mismatched_material_is_refused() {
    let a = generate_material().unwrap();
    let b = generate_material().unwrap();
    let mixed = CaMaterial {
        intermediate_cert_pem: b.intermediate_cert_pem.clone(),
        intermediate_key_pem: b.intermediate_key_pem.clone(),
        ..a.clone()
    };
    assert!(
        Authority::from_material(mixed).is_err(),
        "intermediate of another root"
    );
    let wrong_key = CaMaterial {
        intermediate_key_pem: b.intermediate_key_pem,
        ..a.clone()
    };
    assert!(Authority::from_material(wrong_key).is_err());
    let garbage = CaMaterial {
        root_cert_pem: "nope".into(),
        ..a
    };
    assert!(Authority::from_material(garbage).is_err());
}

#[tokio::test]
async fn first_start_creates_then_loads_the_same_ca() {
    let dir = tempfile::tempdir().unwrap();
    let store = CaStore::Local(dir.path().to_path_buf());
    let a = Authority::load_or_create(&store, None).await.unwrap();
    let b = Authority::load_or_create(&store, None).await.unwrap();
    assert_eq!(a.material(), b.material());
    assert_eq!(a.trust_bundle_pem().len(), 1);
}

#[tokio::test]
async fn intermediate_near_expiry_is_reissued_from_the_root() {
    // An intermediate with 10 days left.
    let m = generate_material().unwrap();
    let root_key = key_pair("root", m.root_key_pem.as_deref().unwrap()).unwrap();
    let root_der = der(&m.root_cert_pem);
    let issuer = Issuer::from_ca_cert_der(&root_der.into(), root_key).unwrap();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = ca_params("short", IsCa::Ca(rcgen::BasicConstraints::Constrained(0)));
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::from_secs(3600);
    params.not_after = now + Duration::from_secs(10 * 86400);
    let short = CaMaterial {
        intermediate_cert_pem: params.signed_by(&key, &issuer).unwrap().pem(),
        intermediate_key_pem: key.serialize_pem(),
        ..m
    };
    let dir = tempfile::tempdir().unwrap();
    let store = CaStore::Local(dir.path().to_path_buf());
    store.save(&short).await.unwrap();
    let a = Authority::load_or_create(&store, None).await.unwrap();
    let left = a
        .intermediate_not_after()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(left > Duration::from_secs(300 * 86400), "{left:?}");
    assert_ne!(
        a.material().intermediate_cert_pem,
        short.intermediate_cert_pem
    );
    assert_eq!(a.material().root_cert_pem, short.root_cert_pem);
    // Persisted, and the gauge shows the new expiry.
    assert_eq!(store.load().await.unwrap(), Some(a.material()));
    assert!(a
        .metrics()
        .render()
        .contains("mesh_ca_cert_expiry_timestamp_seconds{cert=\"intermediate\"}"));
}

#[test]
fn pem_encoding_round_trips() {
    for n in [0usize, 1, 2, 3, 4, 47, 48, 49, 100] {
        let data: Vec<u8> = (0..n as u8).collect();
        let pem = pem_encode("TEST", &data);
        let back = crate::csr::single_pem_block(&pem, "TEST");
        if n == 0 {
            continue;
        }
        assert_eq!(back.unwrap(), data, "{n}");
    }
}
