//! `meshctl install --dry-run` through the real binary: the rendered
//! manifests against a golden file, and the command line's errors and exit
//! codes.
//!
//! The webhook certificate is new on every run, so its three PEM values and
//! the `caBundle` are replaced by placeholders before comparing (and the
//! injector's fingerprint annotation, which covers the certificate).
//! Regenerate after an intended change:
//!
//!     UPDATE_GOLDEN=1 cargo test -p meshctl --test install

use std::path::PathBuf;
use std::process::{Command, Output};

fn meshctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        // No cluster: these must not need one.
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("running meshctl")
}

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("golden")
        .join(name)
}

/// Replaces the values that change on every run, and each CRD by one
/// line: the CRDs are mesh-api's (checked below against
/// `mesh_api::crds::all()`, and in `deploy/crds/` by mesh-api's own test),
/// so a CRD change does not make this file stale.
fn redact(yaml: &str) -> String {
    let mut out = String::new();
    for doc in yaml.split("---\n").filter(|d| !d.is_empty()) {
        out.push_str("---\n");
        if doc.contains("\nkind: CustomResourceDefinition\n") {
            let v: serde_yaml::Value = serde_yaml::from_str(doc).unwrap();
            out.push_str(&format!(
                "# CustomResourceDefinition {} (from mesh_api::crds)\n",
                v["metadata"]["name"].as_str().unwrap()
            ));
            continue;
        }
        redact_doc(doc, &mut out);
    }
    out
}

fn redact_doc(doc: &str, out: &mut String) {
    for line in doc.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let key = [
            "ca.crt:",
            "tls.crt:",
            "tls.key:",
            "caBundle:",
            "mesh.dev/config-fingerprint:",
        ]
        .into_iter()
        .find(|k| trimmed.starts_with(k));
        match key {
            Some(k) => out.push_str(&format!("{indent}{k} <redacted>\n")),
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
}

fn check_golden(name: &str, actual: &str) {
    let path = golden_path(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; create it with UPDATE_GOLDEN=1 cargo test -p meshctl --test install",
            path.display()
        )
    });
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} is stale (first difference at line {}):\n  golden: {:?}\n  actual: {:?}\n\
             If the change is intended: UPDATE_GOLDEN=1 cargo test -p meshctl --test install",
            path.display(),
            first + 1,
            expected.lines().nth(first),
            actual.lines().nth(first),
        );
    }
}

#[test]
fn dry_run_yaml_matches_golden() {
    let out = meshctl(&["install", "--dry-run", "-o", "yaml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    // Every document parses, in apply order.
    let kinds: Vec<String> = serde_yaml::Deserializer::from_str(&yaml)
        .map(|d| {
            let v = <serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap();
            v["kind"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(kinds.first().map(String::as_str), Some("Namespace"));
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("MutatingWebhookConfiguration")
    );
    // The CRDs are exactly mesh-api's typed ones.
    let crds: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&yaml)
        .map(|d| <serde_json::Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|v| v["kind"] == "CustomResourceDefinition")
        .collect();
    let typed: Vec<serde_json::Value> = mesh_api::crds::all()
        .iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .collect();
    assert_eq!(crds, typed);
    check_golden("install-default.yaml", &redact(&yaml));
}

#[test]
fn dry_run_with_flags_matches_golden() {
    let out = meshctl(&[
        "install",
        "--dry-run=client",
        "-o",
        "yaml",
        "--registry",
        "ghcr.io/acme",
        "--tag",
        "1.2.3",
        "--trust-domain",
        "prod.acme.com",
        "--controller-replicas",
        "2",
        "--injector-replicas",
        "3",
        "--failure-policy",
        "Ignore",
        "--pull-policy",
        "Always",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    check_golden("install-custom.yaml", &redact(&yaml));
}

#[test]
fn dry_run_json_is_a_list() {
    let out = meshctl(&["install", "--dry-run", "-o", "json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "List");
    let items = v["items"].as_array().unwrap();
    assert_eq!(items[0]["kind"], "Namespace");
    // The CA bundle of the webhook is the CA in the Secret.
    let secret = items.iter().find(|i| i["kind"] == "Secret").unwrap();
    let hook = items.last().unwrap();
    assert_eq!(
        hook["webhooks"][0]["clientConfig"]["caBundle"],
        secret["data"]["ca.crt"]
    );
}

#[test]
fn bad_flags_exit_2_with_the_flag_named() {
    for (args, says) in [
        (&["install", "--tag", "a/b", "--dry-run"][..], "--tag"),
        (
            &["install", "--registry", "https://x", "--dry-run"][..],
            "--registry",
        ),
        (
            &["install", "--controller-replicas", "0", "--dry-run"][..],
            "--controller-replicas",
        ),
        (&["install", "--failure-policy", "maybe"][..], "maybe"),
        (&["uninstall", "--what"][..], "--what"),
    ] {
        let out = meshctl(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn no_cluster_exits_3_naming_the_kubeconfig() {
    for cmd in ["install", "uninstall", "upgrade"] {
        let out = meshctl(&[cmd]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{cmd}: {err}");
        assert!(err.contains("/nonexistent/kubeconfig"), "{cmd}: {err}");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "one line, no backtrace: {err}"
        );
        assert!(err.starts_with("meshctl: error: "), "{err}");
    }
}

#[test]
fn help_documents_exit_codes_and_examples() {
    let out = meshctl(&["install", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for needle in [
        "--kubeconfig",
        "--context",
        "--dry-run",
        "--failure-policy",
        "Examples:",
        "Exit codes:",
        "3  no cluster",
    ] {
        assert!(help.contains(needle), "missing {needle:?} in:\n{help}");
    }
}
