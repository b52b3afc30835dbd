//! Golden tests of the injection rules and patch: every directory under
//! `tests/golden/` is a case with
//!
//! - `case.yaml`: `namespace`, `namespaceLabels`, `nativeSidecars` (what the
//!   cluster supports) and optional `config` (an `InjectorConfig`);
//! - `pod.yaml`: the pod as created;
//!
//! and the expected outputs, which the test compares byte for byte:
//!
//! - `decision.txt`: `inject`, `skip: <reason>` or `error: <message>`;
//! - `patch.json`: the RFC 6902 patch (`[]` when skipped);
//! - `injected.yaml`: the pod after the patch.
//!
//! Regenerate with `UPDATE_GOLDEN=1 cargo test -p mesh-injector --test golden`
//! and review the diff.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use mesh_injector::{inject, inject_pod, Decision, InjectorConfig, NamespaceInfo, SkipReason};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Case {
    namespace: String,
    #[serde(default)]
    namespace_labels: BTreeMap<String, String>,
    native_sidecars: bool,
    #[serde(default)]
    config: Option<serde_yaml::Value>,
}

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("tests/golden")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("pod.yaml").exists())
        .collect();
    dirs.sort();
    dirs
}

/// Compares `actual` with the file, or rewrites it under `UPDATE_GOLDEN=1`.
fn check(path: &Path, actual: &str, failures: &mut Vec<String>) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, actual).expect("writing golden file");
        return;
    }
    match std::fs::read_to_string(path) {
        Ok(expected) if expected == actual => {}
        Ok(expected) => failures.push(format!(
            "{} differs (UPDATE_GOLDEN=1 to accept):\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        )),
        Err(e) => failures.push(format!("{}: {e} (UPDATE_GOLDEN=1 to create)", path.display())),
    }
}

#[test]
fn golden_cases() {
    let dirs = cases();
    assert!(
        dirs.len() >= 9,
        "expected the golden cases, found {}",
        dirs.len()
    );
    let mut failures = Vec::new();
    for dir in &dirs {
        let case: Case = serde_yaml::from_str(
            &std::fs::read_to_string(dir.join("case.yaml")).expect("case.yaml"),
        )
        .unwrap_or_else(|e| panic!("{}: case.yaml: {e}", dir.display()));
        let pod: Pod =
            serde_yaml::from_str(&std::fs::read_to_string(dir.join("pod.yaml")).expect("pod.yaml"))
                .unwrap_or_else(|e| panic!("{}: pod.yaml: {e}", dir.display()));
        let config = match &case.config {
            Some(v) => {
                let text = serde_yaml::to_string(v).expect("config yaml");
                InjectorConfig::from_yaml(&text, "case.yaml config").expect("config")
            }
            None => InjectorConfig::default(),
        };
        let ns = NamespaceInfo::new(case.namespace.clone(), case.namespace_labels.clone());

        let (decision_text, patch_json, injected) =
            match inject_pod(&pod, &ns, &config, case.native_sidecars) {
                Ok((decision, out)) => {
                    let text = match &decision {
                        Decision::Inject(_) => "inject".to_string(),
                        Decision::Skip(r) => format!("skip: {r}"),
                    };
                    let patch = serde_json::to_string_pretty(&decision.patch()).unwrap();
                    if let Decision::Inject(_) = decision {
                        // Idempotent: the injected pod is left alone, also
                        // when the API server reinvokes the webhook.
                        let again = inject(&out, &ns, &config, case.native_sidecars).unwrap();
                        assert_eq!(
                            again,
                            Decision::Skip(SkipReason::AlreadyInjected),
                            "{}: injecting twice",
                            dir.display()
                        );
                    }
                    (text, patch, serde_yaml::to_string(&out).unwrap())
                }
                Err(e) => (
                    format!("error: {e}"),
                    "[]".to_string(),
                    serde_yaml::to_string(&pod).unwrap(),
                ),
            };
        check(
            &dir.join("decision.txt"),
            &(decision_text + "\n"),
            &mut failures,
        );
        check(&dir.join("patch.json"), &(patch_json + "\n"), &mut failures);
        check(&dir.join("injected.yaml"), &injected, &mut failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
