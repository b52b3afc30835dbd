use super::*;

/// An AdmissionReview creating `pod` in `namespace`.
fn review(pod: serde_json::Value, namespace: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "object": pod,
        }
    }))
    .unwrap()
}

fn golden_pods() -> Vec<serde_json::Value> {
    [
        include_str!("../../tests/golden/plain-pod/pod.yaml"),
        include_str!("../../tests/golden/probes-rewritten/pod.yaml"),
        include_str!("../../tests/golden/native-sidecar/pod.yaml"),
        include_str!("../../tests/golden/already-injected/pod.yaml"),
        include_str!("../../tests/golden/bad-annotation/pod.yaml"),
    ]
    .iter()
    .map(|y| serde_yaml::from_str(y).unwrap())
    .collect()
}

#[test]
fn fuzz_logic_smoke() {
    for pod in golden_pods() {
        let body = review(pod.clone(), "demo");
        // Both cluster kinds (the handler is chosen by the length's parity).
        fuzz_logic(&body);
        let mut odd = body.clone();
        odd.push(b' ');
        fuzz_logic(&odd);
        for cut in (0..body.len()).step_by(97) {
            fuzz_logic(&body[..cut]);
        }
        let text = String::from_utf8(body).unwrap();
        for (from, to) in [
            ("null", "{}"),
            ("\"demo\"", "null"),
            ("[", "[{},"),
            ("true", "1"),
        ] {
            fuzz_logic(text.replacen(from, to, 1).as_bytes());
        }
    }
    fuzz_logic(b"");
    fuzz_logic(b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\"}");
}

#[test]
fn fuzz_regressions_replay() {
    mesh_api::fuzzing::replay_regressions("admission_review", fuzz_logic);
}
