//! The webhook over real HTTPS on loopback: what the API server sees.

mod common;

use base64::Engine;
use common::{deployment_pod, review, Client};
use k8s_openapi::api::core::v1::Pod;
use mesh_injector::server::metrics::Outcome;
use mesh_injector::server::MAX_BODY_BYTES;
use serde_json::{json, Value};

fn json_body(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn pod_review_gets_a_patch_that_injects() {
    let server = common::start(true).await;
    let mut client = Client::connect(&server).await;
    let pod = deployment_pod();
    let (status, body) = client
        .request(
            "POST",
            "/inject",
            review("uid-1", "shop", "Pod", pod.clone()),
        )
        .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v = json_body(&body);
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(v["kind"], "AdmissionReview");
    assert_eq!(v["response"]["uid"], "uid-1");
    assert_eq!(v["response"]["allowed"], true);
    assert_eq!(v["response"]["patchType"], "JSONPatch");
    // The patch is a base64 string, as the API server expects.
    let patch_b64 = v["response"]["patch"].as_str().expect("patch is a string");
    let patch_json = base64::engine::general_purpose::STANDARD
        .decode(patch_b64)
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch_json).unwrap();
    let mut doc = pod;
    json_patch::patch(&mut doc, &patch.0).unwrap();
    let injected: Pod = serde_json::from_value(doc).unwrap();
    let spec = injected.spec.unwrap();
    let init: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(init, ["mesh-init", "mesh-proxy"]);
    assert_eq!(spec.containers.len(), 2);
    // Both app probes that reach the pod went through the proxy.
    let live = spec.containers[0].liveness_probe.as_ref().unwrap();
    assert_eq!(
        live.http_get.as_ref().unwrap().path.as_deref(),
        Some("/app-health/checkout/livez")
    );

    // Same connection (keep-alive), classic pod in the same call pattern.
    let (status, _) = client.request("GET", "/ready", vec![]).await;
    assert_eq!(status, 200);
    assert_eq!(server.handler.metrics.count(Outcome::Injected), 1);
}

#[tokio::test]
async fn classic_cluster_puts_the_proxy_first_in_containers() {
    let server = common::start(false).await;
    let mut client = Client::connect(&server).await;
    let pod = deployment_pod();
    let (status, body) = client
        .request("POST", "/inject", review("u", "shop", "Pod", pod.clone()))
        .await;
    assert_eq!(status, 200);
    let v = json_body(&body);
    let patch = base64::engine::general_purpose::STANDARD
        .decode(v["response"]["patch"].as_str().unwrap())
        .unwrap();
    let patch: Value = serde_json::from_slice(&patch).unwrap();
    assert!(patch
        .as_array()
        .unwrap()
        .iter()
        .any(|op| op["path"] == "/spec/containers/0" && op["value"]["name"] == "mesh-proxy"));
}

#[tokio::test]
async fn malformed_review_is_400_naming_the_field() {
    let server = common::start(true).await;
    let mut client = Client::connect(&server).await;

    let (status, body) = client
        .request("POST", "/inject", b"{not json".to_vec())
        .await;
    assert_eq!(status, 400);
    let text = String::from_utf8_lossy(&body);
    assert!(text.starts_with("malformed AdmissionReview"), "{text}");

    // A uid that is a number: the path says where.
    let mut r: Value =
        serde_json::from_slice(&review("u", "shop", "Pod", deployment_pod())).unwrap();
    r["request"]["uid"] = json!(5);
    let (status, body) = client
        .request("POST", "/inject", serde_json::to_vec(&r).unwrap())
        .await;
    assert_eq!(status, 400);
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("at request.uid"), "{text}");

    // A pod whose containers are not a list.
    let mut pod = deployment_pod();
    pod["spec"]["containers"] = json!("checkout");
    let (status, body) = client
        .request("POST", "/inject", review("u", "shop", "Pod", pod))
        .await;
    assert_eq!(status, 400);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("Pod in request.object at spec.containers"),
        "{text}"
    );

    // No request at all.
    let (status, body) = client
        .request(
            "POST",
            "/inject",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
        )
        .await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("has no request"));

    // The wrong version.
    let mut r: Value =
        serde_json::from_slice(&review("u", "shop", "Pod", deployment_pod())).unwrap();
    r["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let (status, body) = client
        .request("POST", "/inject", serde_json::to_vec(&r).unwrap())
        .await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("v1beta1"));

    // The connection is still good after all that.
    let (status, _) = client.request("GET", "/live", vec![]).await;
    assert_eq!(status, 200);
    assert_eq!(server.handler.metrics.count(Outcome::BadRequest), 5);
}

#[tokio::test]
async fn oversized_body_is_413() {
    let server = common::start(true).await;
    let mut client = Client::connect(&server).await;
    let mut pod = deployment_pod();
    pod["metadata"]["annotations"]["big"] = json!("x".repeat(MAX_BODY_BYTES + 1));
    let (status, body) = client
        .request("POST", "/inject", review("u", "shop", "Pod", pod))
        .await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    // The server is still serving (a new connection: it may close the
    // one whose body it did not read).
    let mut client = Client::connect(&server).await;
    let (status, _) = client
        .request(
            "POST",
            "/inject",
            review("u2", "shop", "Pod", deployment_pod()),
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn non_pod_is_allowed_unchanged_with_its_uid() {
    let server = common::start(true).await;
    let mut client = Client::connect(&server).await;
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "b"}});
    let (status, body) = client
        .request(
            "POST",
            "/inject",
            review("cm-uid-42", "shop", "ConfigMap", cm),
        )
        .await;
    assert_eq!(status, 200);
    let v = json_body(&body);
    assert_eq!(v["response"]["uid"], "cm-uid-42");
    assert_eq!(v["response"]["allowed"], true);
    assert!(v["response"].get("patch").is_none(), "{v}");
    assert!(v["response"].get("patchType").is_none(), "{v}");
}

#[tokio::test]
async fn bad_annotation_is_denied_with_the_reason() {
    let server = common::start(true).await;
    let mut client = Client::connect(&server).await;
    let mut pod = deployment_pod();
    pod["metadata"]["annotations"]["mesh.dev/proxy-memory"] = json!("lots");
    let (status, body) = client
        .request("POST", "/inject", review("deny-uid", "shop", "Pod", pod))
        .await;
    assert_eq!(status, 200);
    let v = json_body(&body);
    assert_eq!(v["response"]["uid"], "deny-uid");
    assert_eq!(v["response"]["allowed"], false);
    assert_eq!(v["response"]["status"]["code"], 400);
    let msg = v["response"]["status"]["message"].as_str().unwrap();
    assert!(msg.contains("mesh.dev/proxy-memory"), "{msg}");
    assert!(v["response"].get("patch").is_none());
    assert_eq!(server.handler.metrics.count(Outcome::Denied), 1);
}

#[tokio::test]
async fn opted_out_pod_is_allowed_without_patch() {
    let server = common::start(true).await;
    let mut client = Client::connect(&server).await;
    let mut pod = deployment_pod();
    pod["metadata"]["annotations"]["mesh.dev/inject"] = json!("false");
    let (status, body) = client
        .request("POST", "/inject", review("o", "shop", "Pod", pod))
        .await;
    assert_eq!(status, 200);
    let v = json_body(&body);
    assert_eq!(v["response"]["allowed"], true);
    assert!(v["response"].get("patch").is_none());
}

#[tokio::test]
async fn wrong_method_and_path() {
    let server = common::start(true).await;
    let mut client = Client::connect(&server).await;
    let (status, _) = client.request("GET", "/inject", vec![]).await;
    assert_eq!(status, 405);
    let (status, _) = client.request("POST", "/mutate", b"{}".to_vec()).await;
    assert_eq!(status, 404);
    let (status, body) = client.request("GET", "/metrics", vec![]).await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("mesh_injector_admissions_total"));
}

#[tokio::test]
async fn certificate_is_reloaded_from_disk() {
    use mesh_injector::server::tls::ReloadingCert;
    let server = common::start(true).await;
    let (crt, key) = (
        server.dir.path().join("tls.crt"),
        server.dir.path().join("tls.key"),
    );
    let r = ReloadingCert::load(&crt, &key).unwrap();
    assert!(!r.reload().unwrap(), "unchanged files are not reloaded");
    assert_eq!(r.leaf(), Some(server.root.clone()));
    let new = rcgen::generate_simple_self_signed(vec!["mesh-injector.mesh-system.svc".to_string()])
        .unwrap();
    std::fs::write(&crt, new.cert.pem()).unwrap();
    std::fs::write(&key, new.signing_key.serialize_pem()).unwrap();
    assert!(r.reload().unwrap());
    assert_eq!(r.leaf(), Some(new.cert.der().clone()));
    // A broken file keeps the last good key.
    std::fs::write(&crt, "garbage").unwrap();
    assert!(r.reload().is_err());
    assert_eq!(r.leaf(), Some(new.cert.der().clone()));
}
