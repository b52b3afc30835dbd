//! The Istio-style examples in `testdata/good/` parse, round-trip through YAML
//! and JSON unchanged, cover every kind, and pass validation.

use std::collections::BTreeSet;

use mesh_api::validate::validate_set;
use mesh_api::{parse_yaml, MeshResource, ResourceSet};

const EXAMPLES: [(&str, &str); 2] = [
    (
        "networking.yaml",
        include_str!("../testdata/good/networking.yaml"),
    ),
    (
        "security.yaml",
        include_str!("../testdata/good/security.yaml"),
    ),
];

fn all_examples() -> Vec<MeshResource> {
    EXAMPLES
        .iter()
        .flat_map(|(file, text)| parse_yaml(text).unwrap_or_else(|e| panic!("{file}: {e}")))
        .collect()
}

#[test]
fn examples_cover_every_kind() {
    let kinds: BTreeSet<&str> = all_examples().iter().map(MeshResource::kind).collect();
    let want: BTreeSet<&str> = [
        "VirtualService",
        "DestinationRule",
        "ServiceEntry",
        "Gateway",
        "PeerAuthentication",
        "AuthorizationPolicy",
    ]
    .into();
    assert_eq!(kinds, want);
}

#[test]
fn examples_round_trip_through_yaml() {
    for resource in all_examples() {
        let yaml = resource.to_yaml().expect("serialises");
        let again = parse_yaml(&yaml).unwrap_or_else(|e| panic!("{yaml}\n{e}"));
        assert_eq!(again, vec![resource.clone()], "{yaml}");
        // Serialising again gives the same text: nothing is lost or defaulted.
        assert_eq!(again[0].to_yaml().expect("serialises"), yaml);
    }
}

#[test]
fn examples_round_trip_through_json() {
    // The API server hands resources to the controller as JSON.
    for resource in all_examples() {
        let json = match &resource {
            MeshResource::VirtualService(r) => serde_json::to_string(r),
            MeshResource::DestinationRule(r) => serde_json::to_string(r),
            MeshResource::ServiceEntry(r) => serde_json::to_string(r),
            MeshResource::Gateway(r) => serde_json::to_string(r),
            MeshResource::PeerAuthentication(r) => serde_json::to_string(r),
            MeshResource::AuthorizationPolicy(r) => serde_json::to_string(r),
        }
        .expect("serialises");
        // JSON is YAML, so the same parser reads it.
        let again = parse_yaml(&json).unwrap_or_else(|e| panic!("{json}\n{e}"));
        assert_eq!(again, vec![resource], "{json}");
    }
}

#[test]
fn examples_pass_validation() {
    let set: ResourceSet = all_examples().into_iter().collect();
    let errors = validate_set(&set);
    assert!(
        errors.is_empty(),
        "{}",
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn istio_field_names_are_kept() {
    // A few names whose spelling serde's camelCase would not give on its own
    // or that Istio users type from memory.
    let yaml = all_examples()
        .iter()
        .map(|r| r.to_yaml().expect("serialises"))
        .collect::<String>();
    for name in [
        "consecutive5xxErrors:",
        "http1MaxPendingRequests:",
        "http2MaxRequests:",
        "withoutHeaders:",
        "mirrorPercentage:",
        "perTryTimeout:",
        "portLevelMtls:",
        "notPrincipals:",
        "credentialName:",
        "match:",
    ] {
        assert!(
            yaml.contains(name),
            "{name} missing from serialised examples"
        );
    }
}
