use super::checks::*;
use super::resolve_host;

#[test]
fn hosts() {
    let cases = [
        ("reviews", false, true),
        ("reviews.default.svc.cluster.local", false, true),
        ("*.example.com", true, true),
        ("*.example.com", false, false),
        ("*", true, false),
        ("a.*.com", true, false),
        ("Reviews", false, false),
        ("-bad.example.com", false, false),
        ("", false, false),
        ("under_score", false, false),
    ];
    for (host, wildcard, ok) in cases {
        assert_eq!(
            check_host(host, wildcard).is_ok(),
            ok,
            "{host} wildcard={wildcard}"
        );
    }
}

#[test]
fn short_names_resolve_in_the_resource_namespace() {
    let cases = [
        ("reviews", "shop", "reviews.shop.svc.cluster.local"),
        ("reviews.other", "shop", "reviews.other"),
        ("api.example.com", "shop", "api.example.com"),
        ("*.example.com", "shop", "*.example.com"),
    ];
    for (host, ns, want) in cases {
        assert_eq!(resolve_host(host, ns), want);
    }
    assert!(host_matches("*.example.com", "api.example.com"));
    assert!(!host_matches("*.example.com", "example.com"));
}

#[test]
fn small_values() {
    assert!(check_ip_or_cidr("10.0.0.0/8").is_ok());
    assert!(check_ip_or_cidr("fd00::/64").is_ok());
    assert!(check_ip_or_cidr("10.0.0.0/33").is_err());
    assert!(check_ip_or_cidr("example.com").is_err());
    assert!(check_authority("example.com:8443").is_ok());
    assert!(check_authority("example.com:0").is_err());
    assert!(check_retry_on("5xx, 503,reset").is_ok());
    assert!(check_retry_on("5xx,").is_err());
    assert!(check_gateway_ref("mesh").is_ok());
    assert!(check_gateway_ref("istio-system/ingress").is_ok());
    assert!(check_gateway_ref("a/b/c").is_err());
    assert!(check_percent(f64::NAN).is_err());
    assert!(check_wildcard_value("*suffix").is_ok());
    assert!(check_wildcard_value("prefix*").is_ok());
    assert!(check_wildcard_value("mid*dle").is_err());
}

#[test]
fn mutual_origination_needs_both_files_and_only_mutual_takes_them() {
    let dr = |tls: &str| -> crate::DestinationRule {
        serde_yaml::from_str(&format!(
            "apiVersion: networking.mesh.dev/v1\nkind: DestinationRule\nmetadata: {{name: x, namespace: n}}\nspec:\n  host: api.example.com\n  trafficPolicy:\n    tls: {tls}\n"
        ))
        .unwrap()
    };
    let errors = |tls: &str| {
        super::validate_destination_rule(&dr(tls))
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    };
    assert_eq!(
        errors("{mode: MUTUAL, clientCertificate: /etc/c/tls.crt, privateKey: /etc/c/tls.key}"),
        ""
    );
    assert!(errors("{mode: MUTUAL}").contains("needs clientCertificate and privateKey"));
    assert!(errors("{mode: MUTUAL, clientCertificate: /a}").contains("needs clientCertificate"));
    assert!(
        errors("{mode: SIMPLE, clientCertificate: /a, privateKey: /b}")
            .contains("only for mode MUTUAL")
    );
    assert!(
        errors("{mode: MUTUAL, clientCertificate: tls.crt, privateKey: /b}")
            .contains("clientCertificate: \"tls.crt\" must be an absolute path")
    );
}

#[test]
fn connection_idle_timeout_must_be_a_positive_duration() {
    let errors = |http: &str| {
        let dr: crate::DestinationRule = serde_yaml::from_str(&format!(
            "apiVersion: networking.mesh.dev/v1\nkind: DestinationRule\nmetadata: {{name: x, namespace: n}}\nspec:\n  host: web\n  trafficPolicy:\n    connectionPool: {{http: {http}}}\n"
        ))
        .unwrap();
        super::validate_destination_rule(&dr)
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    };
    assert_eq!(errors("{idleTimeout: 2s}"), "");
    assert_eq!(errors("{idleTimeout: 500ms}"), "");
    let zero = errors("{idleTimeout: 0s}");
    assert!(
        zero.contains("connectionPool.http.idleTimeout") && zero.contains("must be more than 0"),
        "{zero}"
    );
    let bad = errors("{idleTimeout: soon}");
    assert!(bad.contains("connectionPool.http.idleTimeout"), "{bad}");
}

#[test]
fn fuzz_logic_smoke() {
    let examples = [
        include_str!("../../testdata/good/networking.yaml"),
        include_str!("../../testdata/good/security.yaml"),
    ];
    for text in examples {
        super::fuzz_logic(text.as_bytes());
        for doc in text.split("\n---") {
            super::fuzz_logic(doc.as_bytes());
            for (from, to) in [
                (": ", ": -"),
                ("80", "99999"),
                ("s\n", "\n"),
                ("- ", "- []"),
            ] {
                super::fuzz_logic(doc.replacen(from, to, 1).as_bytes());
            }
        }
        for cut in (0..text.len()).step_by(211) {
            super::fuzz_logic(&text.as_bytes()[..cut]);
        }
    }
    super::fuzz_logic(b"apiVersion: networking.mesh.dev/v1\nkind: VirtualService\n");
    super::fuzz_logic(b"\xff");
}

#[test]
fn fuzz_regressions_replay() {
    crate::fuzzing::replay_regressions("crd_validation", super::fuzz_logic);
}
