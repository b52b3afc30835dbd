//! Golden tests: mesh model (YAML under `tests/golden/<case>/input/`) →
//! each listed proxy's config (`tests/golden/<case>/<namespace>.<pod>.yaml`)
//! and each resource's status (`status.yaml`).
//!
//! `UPDATE_GOLDEN=1 cargo test -p mesh-controller --test golden` rewrites
//! the expected files; review the diff before committing it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mesh_controller::source::dir::DirSource;
use mesh_controller::translate::{TranslateConfig, Translator};
use mesh_controller::view::ProxyMeta;
use mesh_controller::world::{Change, World};

fn case_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(case)
}

/// Loads the case's input into a World (failing on unreadable documents).
fn world(case: &str) -> World {
    let source = DirSource::new(
        case_dir(case).join("input"),
        std::time::Duration::from_secs(1),
    );
    let contents = source.read();
    assert!(contents.errors.is_empty(), "{:?}", contents.errors);
    let mut world = World::default();
    for obj in contents.objects {
        world.apply(Change::Upsert(obj));
    }
    world
}

fn check(path: &Path, actual: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    if expected != actual {
        panic!(
            "{} differs from the translation; run with UPDATE_GOLDEN=1 and review the diff.\n--- actual ---\n{actual}",
            path.display()
        );
    }
}

/// A proxy: namespace, pod, labels.
type Proxy<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

/// Translates the case and compares each proxy's view and the statuses.
fn golden(case: &str, proxies: &[Proxy<'_>]) {
    let world = world(case);
    let mut t = Translator::new(TranslateConfig::default());
    let snapshot = t.build(&world, None, Arc::new(vec!["ROOT-PEM".into()]));
    for (ns, pod, labels) in proxies {
        let meta = ProxyMeta {
            namespace: ns.to_string(),
            pod: pod.to_string(),
            service_account: String::new(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let config = snapshot.view(&meta).to_config("golden");
        let yaml = serde_yaml::to_string(&serde_json::to_value(&config).unwrap()).unwrap();
        check(&case_dir(case).join(format!("{ns}.{pod}.yaml")), &yaml);
    }
    let statuses: Vec<String> = snapshot
        .statuses
        .iter()
        .map(|s| {
            format!(
                "{}: {} {}{}",
                s.resource,
                if s.accepted {
                    "Accepted"
                } else {
                    "NotAccepted"
                },
                s.reason,
                if s.message.is_empty() {
                    String::new()
                } else {
                    format!(" - {}", s.message)
                }
            )
        })
        .collect();
    check(
        &case_dir(case).join("status.txt"),
        &(statuses.join("\n") + "\n"),
    );
}

#[test]
fn routing_every_virtual_service_and_destination_rule_feature() {
    golden("routing", &[("shop", "frontend-1", &[("app", "frontend")])]);
}

#[test]
fn scoping_namespace_export_and_route_references() {
    golden(
        "scoping",
        &[
            ("a", "client-a", &[("app", "client")]),
            ("b", "client-b", &[("app", "client")]),
            ("c", "client-c", &[("app", "client")]),
        ],
    );
}

#[test]
fn security_peer_authentication_and_authorization_by_scope() {
    golden(
        "security",
        &[
            ("prod", "db-1", &[("app", "db")]),
            ("prod", "web-1", &[("app", "web")]),
            ("dev", "web-1", &[("app", "web")]),
        ],
    );
}

#[test]
fn service_entries_external_dns_and_static() {
    golden(
        "service-entry",
        &[("shop", "frontend-1", &[("app", "frontend")])],
    );
}

#[test]
fn gateway_listeners_for_the_selected_pod_only() {
    golden(
        "gateway",
        &[
            ("ingress", "edge-1", &[("app", "edge")]),
            ("shop", "web-1", &[("app", "web")]),
        ],
    );
}
