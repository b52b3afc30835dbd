//! Writes the seed corpora under `fuzz/seeds/<target>/` from the
//! repository's real inputs: golden pods, example resources, the
//! controller's golden proxy configs, CSRs and certificates made with
//! rcgen, and hand-written requests.
//!
//! cargo run --manifest-path fuzz/Cargo.toml --example make_seeds
//!
//! Seeds are small and meaningful; the fuzzer's own corpus grows in the
//! git-ignored `fuzz/corpus/<target>/` (see `fuzz/run`).

use std::fs;
use std::path::{Path, PathBuf};

use mesh_proto::config::v1 as pb;
use prost::Message;
use rcgen::{CertificateParams, KeyPair, SanType};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Replaces the seeds of `target` with `seeds`.
fn write(target: &str, seeds: Vec<(String, Vec<u8>)>) {
    let dir = root().join("fuzz/seeds").join(target);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("seed dir");
    for (name, bytes) in &seeds {
        fs::write(dir.join(name), bytes).expect("seed");
    }
    println!("{target}: {} seeds", seeds.len());
}

fn named(items: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
    items
        .iter()
        .map(|(n, b)| (n.to_string(), b.to_vec()))
        .collect()
}

/// Files of `dir` (relative to the repository) with their names.
fn files(dir: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = fs::read_dir(root().join(dir))
        .expect(dir)
        .map(|e| e.expect(dir).path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read_to_string(&p).expect("text"))
        })
        .collect();
    out.sort();
    out
}

fn detect() {
    write(
        "detect",
        named(&[
            (
                "http1-get",
                b"GET /index.html HTTP/1.1\r\nHost: web\r\n\r\n",
            ),
            (
                "http10",
                b"POST /submit HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
            ),
            (
                "h2-preface-settings",
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
            ),
            ("pri-http1", b"PRI * HTTP/1.1\r\n\r\n"),
            (
                "tls-client-hello",
                b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\x00\x01\x02\x03",
            ),
            ("ssh", b"SSH-2.0-OpenSSH_9.6\r\n"),
            ("redis", b"*1\r\n$4\r\nPING\r\n"),
            ("postgres", b"\x00\x00\x00\x08\x04\xd2\x16\x2f"),
        ]),
    );
}

fn h1_edge() {
    write(
        "h1_edge",
        named(&[
            ("get", b"GET / HTTP/1.1\r\nHost: web\r\nUser-Agent: curl/8\r\n\r\n"),
            (
                "post-content-length",
                b"POST /orders HTTP/1.1\r\nHost: shop\r\nContent-Length: 11\r\nContent-Type: application/json\r\n\r\n{\"id\": 42}\n",
            ),
            (
                "chunked-trailers",
                b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;name=x\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: 1\r\n\r\n",
            ),
            (
                "pipelined",
                b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nPOST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /c HTTP/1.1\r\nHost: a\r\n\r\n",
            ),
            ("http10", b"GET / HTTP/1.0\r\n\r\n"),
            (
                "cl-te",
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            ),
            (
                "te-obfuscated",
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
            ),
            (
                "grpc-web",
                b"POST /pkg.Svc/Call HTTP/1.1\r\nHost: a\r\nContent-Type: application/grpc-web\r\nContent-Length: 5\r\n\r\n\x00\x00\x00\x00\x00",
            ),
        ]),
    );
}

fn route_match() {
    write(
        "route_match",
        named(&[
            (
                "prefix",
                b"/api/v1/users?id=7\n{\"uri\":{\"prefix\":\"/api\"}}\nshop.example.com:8080",
            ),
            ("bypass", b"//admin/./x/../%61dmin%2e%2E\n/admin\nExample.COM."),
            (
                "regex-port",
                b"/a%2Fb\n{\"uri\":{\"regex\":\"/a.*\"},\"port\":80}\n[::1]:80",
            ),
            (
                "query",
                b"/%7e/~/%7E?q=1&v=2\n{\"queryParams\":[{\"name\":\"v\",\"value\":{\"exact\":\"2\"}}]}\n",
            ),
            (
                "headers",
                b"/reviews/1\n{\"headers\":[{\"name\":\"x-canary\",\"value\":{\"regex\":\"yes|true\"}},{\"name\":\"x-debug\",\"absent\":true}],\"method\":{\"exact\":\"GET\"}}\nreviews",
            ),
        ]),
    );
}

fn admission_review() {
    let mut seeds = Vec::new();
    for dir in fs::read_dir(root().join("mesh-injector/tests/golden")).expect("golden") {
        let dir = dir.expect("golden").path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let case: serde_yaml::Value =
            serde_yaml::from_str(&fs::read_to_string(dir.join("case.yaml")).expect("case"))
                .expect("case.yaml");
        let pod: serde_json::Value =
            serde_yaml::from_str(&fs::read_to_string(dir.join("pod.yaml")).expect("pod"))
                .expect("pod.yaml");
        let review = serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "namespace": case["namespace"].as_str().unwrap_or("default"),
                "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": pod,
                "oldObject": null,
                "dryRun": false,
                "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
            }
        });
        seeds.push((name, serde_json::to_vec(&review).expect("json")));
    }
    seeds.sort();
    write("admission_review", seeds);
}

fn csr() {
    let me = "spiffe://cluster.local/ns/default/sa/web";
    let csr = |sans: Vec<SanType>, alg: &'static rcgen::SignatureAlgorithm| {
        let key = KeyPair::generate_for(alg).expect("key");
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.serialize_request(&key).expect("csr").der().to_vec()
    };
    let uri = |s: &str| SanType::URI(s.try_into().expect("uri"));
    let p256 = &rcgen::PKCS_ECDSA_P256_SHA256;
    write(
        "csr",
        vec![
            ("no-san".into(), csr(vec![], p256)),
            ("own-identity".into(), csr(vec![uri(me)], p256)),
            (
                "other-identity".into(),
                csr(
                    vec![uri("spiffe://cluster.local/ns/default/sa/admin")],
                    p256,
                ),
            ),
            ("two-uris".into(), csr(vec![uri(me), uri(me)], p256)),
            (
                "dns-name".into(),
                csr(vec![SanType::DnsName("web".try_into().expect("dns"))], p256),
            ),
            (
                "p384".into(),
                csr(vec![uri(me)], &rcgen::PKCS_ECDSA_P384_SHA384),
            ),
            ("ed25519".into(), csr(vec![], &rcgen::PKCS_ED25519)),
        ],
    );
}

fn svid() {
    let cert = |sans: Vec<SanType>| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.self_signed(&key).expect("cert").der().to_vec()
    };
    let uri = |s: &str| SanType::URI(s.try_into().expect("uri"));
    let me = "spiffe://cluster.local/ns/default/sa/web";
    write(
        "svid",
        vec![
            ("svid".into(), cert(vec![uri(me)])),
            ("no-san".into(), cert(vec![])),
            (
                "dns-and-uri".into(),
                cert(vec![
                    SanType::DnsName("web".try_into().expect("dns")),
                    uri(me),
                ]),
            ),
            (
                "two-uris".into(),
                cert(vec![
                    uri("https://example.com/"),
                    uri("spiffe://cluster.local/ns/prod/sa/admin"),
                ]),
            ),
            (
                "other-scheme".into(),
                cert(vec![uri("https://web.default/")]),
            ),
            (
                "generic-spiffe".into(),
                cert(vec![uri("spiffe://example.org/workload/a-1")]),
            ),
        ],
    );
}

fn config_stream() {
    let mut seeds = Vec::new();
    for case in ["routing", "gateway", "security", "scoping", "service-entry"] {
        let dir = format!("mesh-controller/tests/golden/{case}");
        for (name, text) in files(&dir) {
            let Some(stem) = name.strip_suffix(".yaml") else {
                continue;
            };
            let config: pb::ProxyConfig = serde_yaml::from_str(&text).expect("golden config");
            let resp = pb::DiscoveryResponse {
                version: "7".into(),
                nonce: "1".into(),
                full: true,
                config: Some(config.clone()),
                removed_services: vec![],
            };
            seeds.push((format!("{case}.{stem}.full"), resp.encode_to_vec()));
            // The same services as an incremental update over the base.
            let inc = pb::DiscoveryResponse {
                full: false,
                removed_services: vec!["echo.demo.svc.cluster.local".into()],
                config: Some(pb::ProxyConfig {
                    services: config.services.into_iter().take(2).collect(),
                    ..Default::default()
                }),
                ..resp
            };
            seeds.push((format!("{case}.{stem}.incremental"), inc.encode_to_vec()));
        }
    }
    write("config_stream", seeds);
}

fn crd_validation() {
    let mut seeds = Vec::new();
    for (name, text) in files("mesh-api/testdata/good") {
        for (i, doc) in text.split("\n---").enumerate() {
            seeds.push((format!("{name}.{i}"), doc.trim_start_matches('\n').into()));
        }
    }
    for case in ["routing", "gateway", "security", "service-entry"] {
        for (name, text) in files(&format!("mesh-controller/tests/golden/{case}/input")) {
            seeds.push((format!("controller-{case}-{name}"), text.into_bytes()));
        }
    }
    write("crd_validation", seeds);
}

fn main() {
    detect();
    h1_edge();
    route_match();
    admission_review();
    csr();
    svid();
    config_stream();
    crd_validation();
}
