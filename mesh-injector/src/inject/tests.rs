//! Rules the golden cases do not pin down one by one.

use super::*;
use crate::config::NativeSidecar;

fn pod(yaml: &str) -> Pod {
    serde_yaml::from_str(yaml).expect("pod yaml")
}

const APP: &str = r#"
metadata: {name: app, namespace: demo}
spec:
  containers:
  - name: app
    image: example/app:1
    ports: [{name: http, containerPort: 8080}]
    readinessProbe:
      httpGet: {path: /ready, port: web}
"#;

fn run(p: &Pod, ns: &NamespaceInfo, cfg: &InjectorConfig, native: bool) -> Pod {
    match inject_pod(p, ns, cfg, native).expect("inject") {
        (Decision::Inject(_), out) => out,
        (d, _) => panic!("not injected: {d:?}"),
    }
}

fn with_meta(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Pod {
    let mut p = pod(APP);
    let map = |kv: &[(&str, &str)]| {
        (!kv.is_empty()).then(|| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        })
    };
    p.metadata.labels = map(labels);
    p.metadata.annotations = map(annotations);
    p
}

#[test]
fn annotation_wins_over_label() {
    let ns = NamespaceInfo::new("legacy", BTreeMap::new());
    let cfg = InjectorConfig::default();
    // Label opts in where the namespace is not labelled.
    let p = with_meta(&[(INJECT, "true")], &[]);
    assert!(matches!(
        inject(&p, &ns, &cfg, true).unwrap(),
        Decision::Inject(_)
    ));
    // The annotation says no: no.
    let p = with_meta(&[(INJECT, "true")], &[(INJECT, "false")]);
    assert_eq!(
        inject(&p, &ns, &cfg, true).unwrap(),
        Decision::Skip(SkipReason::OptedOut)
    );
    // A label "false" in a labelled namespace opts out too.
    let p = with_meta(&[(INJECT, "false")], &[]);
    assert_eq!(
        inject(&p, &NamespaceInfo::enabled("demo"), &cfg, true).unwrap(),
        Decision::Skip(SkipReason::OptedOut)
    );
}

use crate::annotations::INJECT;

#[test]
fn bad_inject_value_is_an_error_naming_it() {
    let p = with_meta(&[], &[(INJECT, "yes")]);
    let e = inject(
        &p,
        &NamespaceInfo::enabled("demo"),
        &InjectorConfig::default(),
        true,
    )
    .unwrap_err();
    assert!(e.to_string().contains("mesh.dev/inject"), "{e}");
    // ...but never in a system namespace, which is not ours to judge.
    let d = inject(
        &p,
        &NamespaceInfo::enabled("mesh-system"),
        &InjectorConfig::default(),
        true,
    )
    .unwrap();
    assert_eq!(
        d,
        Decision::Skip(SkipReason::SystemNamespace("mesh-system".into()))
    );
}

#[test]
fn namespace_label_must_say_enabled() {
    let ns = NamespaceInfo::new(
        "demo",
        BTreeMap::from([(mesh_api::INJECTION_LABEL.into(), "disabled".into())]),
    );
    assert_eq!(
        inject(&pod(APP), &ns, &InjectorConfig::default(), true).unwrap(),
        Decision::Skip(SkipReason::NotSelected)
    );
}

#[test]
fn config_overrides_what_the_cluster_supports() {
    let ns = NamespaceInfo::enabled("demo");
    let mut cfg = InjectorConfig {
        native_sidecar: NativeSidecar::Never,
        ..Default::default()
    };
    let out = run(&pod(APP), &ns, &cfg, true);
    let spec = out.spec.unwrap();
    assert_eq!(spec.containers[0].name, PROXY_CONTAINER);
    assert_eq!(spec.containers[0].restart_policy, None);
    assert_eq!(spec.containers[0].startup_probe, None);
    assert_eq!(spec.init_containers.unwrap().len(), 1);

    cfg.native_sidecar = NativeSidecar::Always;
    let out = run(&pod(APP), &ns, &cfg, false);
    let spec = out.spec.unwrap();
    let init = spec.init_containers.unwrap();
    assert_eq!(init[0].name, INIT_CONTAINER);
    assert_eq!(init[1].name, PROXY_CONTAINER);
    assert_eq!(init[1].restart_policy.as_deref(), Some("Always"));
    assert!(spec.containers.iter().all(|c| c.name != PROXY_CONTAINER));
}

#[test]
fn probe_rewriting_can_be_turned_off() {
    let ns = NamespaceInfo::enabled("demo");
    let mut p = pod(APP);
    // A resolvable port, so that the default would rewrite it.
    p.spec.as_mut().unwrap().containers[0]
        .readiness_probe
        .as_mut()
        .unwrap()
        .http_get
        .as_mut()
        .unwrap()
        .port = IntOrString::String("http".into());
    let proxy_env = |out: &Pod| {
        let spec = out.spec.as_ref().unwrap();
        let proxy = spec
            .init_containers
            .iter()
            .flatten()
            .find(|c| c.name == PROXY_CONTAINER)
            .unwrap();
        proxy.env.clone().unwrap()
    };
    let out = run(&p, &ns, &InjectorConfig::default(), true);
    let probe = out.spec.as_ref().unwrap().containers[0]
        .readiness_probe
        .clone()
        .unwrap();
    assert_eq!(
        probe.http_get.unwrap().path.as_deref(),
        Some("/app-health/app/readyz")
    );
    let env = proxy_env(&out);
    let probes = env
        .iter()
        .find(|e| e.name == probes::APP_PROBES_ENV)
        .unwrap();
    let v: Value = serde_json::from_str(probes.value.as_deref().unwrap()).unwrap();
    assert_eq!(v["/app-health/app/readyz"]["httpGet"]["port"], 8080);
    assert_eq!(v["/app-health/app/readyz"]["httpGet"]["path"], "/ready");

    // Per pod...
    let mut off = p.clone();
    off.metadata.annotations = Some(BTreeMap::from([(
        annotations::REWRITE_PROBES.to_string(),
        "false".to_string(),
    )]));
    let out = run(&off, &ns, &InjectorConfig::default(), true);
    assert_eq!(
        out.spec.as_ref().unwrap().containers[0].readiness_probe,
        p.spec.as_ref().unwrap().containers[0].readiness_probe
    );
    assert!(proxy_env(&out)
        .iter()
        .all(|e| e.name != probes::APP_PROBES_ENV));
    // ...and for everyone.
    let cfg = InjectorConfig {
        rewrite_probes: false,
        ..Default::default()
    };
    let out = run(&p, &ns, &cfg, true);
    assert!(proxy_env(&out)
        .iter()
        .all(|e| e.name != probes::APP_PROBES_ENV));
}

#[test]
fn unresolvable_named_port_is_left_alone() {
    // APP's probe names port "web", which the container does not have.
    let p = pod(APP);
    let out = run(
        &p,
        &NamespaceInfo::enabled("demo"),
        &InjectorConfig::default(),
        true,
    );
    let app = out
        .spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .find(|c| c.name == "app")
        .unwrap();
    assert_eq!(
        app.readiness_probe,
        p.spec.unwrap().containers[0].readiness_probe
    );
}

#[test]
fn name_conflicts_are_refused() {
    let mut p = pod(APP);
    p.spec.as_mut().unwrap().volumes = Some(vec![Volume {
        name: KEYS_VOLUME.into(),
        ..Default::default()
    }]);
    let e = inject(
        &p,
        &NamespaceInfo::enabled("demo"),
        &InjectorConfig::default(),
        true,
    )
    .unwrap_err();
    assert!(
        matches!(e, InjectError::NameConflict { kind: "volume", .. }),
        "{e}"
    );
    assert!(e.to_string().contains("mesh-keys"));

    let mut p = pod(APP);
    p.spec.as_mut().unwrap().init_containers = Some(vec![Container {
        name: INIT_CONTAINER.into(),
        ..Default::default()
    }]);
    let e = inject(
        &p,
        &NamespaceInfo::enabled("demo"),
        &InjectorConfig::default(),
        true,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            InjectError::NameConflict {
                kind: "container",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn a_proxy_among_init_containers_counts_as_injected() {
    let mut p = pod(APP);
    p.spec.as_mut().unwrap().init_containers = Some(vec![Container {
        name: PROXY_CONTAINER.into(),
        ..Default::default()
    }]);
    assert_eq!(
        inject(
            &p,
            &NamespaceInfo::enabled("demo"),
            &InjectorConfig::default(),
            true
        )
        .unwrap(),
        Decision::Skip(SkipReason::AlreadyInjected)
    );
}

#[test]
fn empty_annotation_map_gets_a_key_not_a_new_map() {
    let mut p = pod(APP);
    p.metadata.annotations = Some(BTreeMap::new());
    let Decision::Inject(patch) = inject(
        &p,
        &NamespaceInfo::enabled("demo"),
        &InjectorConfig::default(),
        true,
    )
    .unwrap() else {
        panic!("not injected")
    };
    let paths: Vec<String> = patch.0.iter().map(|op| op.path().to_string()).collect();
    assert!(
        paths.contains(&"/metadata/annotations/mesh.dev~1injected".to_string()),
        "{paths:?}"
    );
    let out = apply_patch(&p, &patch).unwrap();
    assert_eq!(
        out.metadata
            .annotations
            .unwrap()
            .get(annotations::INJECTED)
            .map(String::as_str),
        Some(env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn pod_without_spec_is_an_error() {
    let p = Pod::default();
    assert!(matches!(
        inject(
            &p,
            &NamespaceInfo::enabled("demo"),
            &InjectorConfig::default(),
            true
        ),
        Err(InjectError::NoSpec)
    ));
}

#[test]
fn workload_names() {
    let p = pod(r#"
metadata:
  generateName: web-5f7b9-
  labels: {pod-template-hash: 5f7b9}
  ownerReferences:
  - {apiVersion: apps/v1, kind: ReplicaSet, name: web-5f7b9, uid: u, controller: true}
"#);
    assert_eq!(workload_name(&p), "web");
    let p = pod(r#"
metadata:
  name: db-0
  ownerReferences:
  - {apiVersion: apps/v1, kind: StatefulSet, name: db, uid: u, controller: true}
"#);
    assert_eq!(workload_name(&p), "db");
    // A ReplicaSet without a Deployment (no hash label) is the workload.
    let p = pod(r#"
metadata:
  generateName: rs-
  ownerReferences:
  - {apiVersion: apps/v1, kind: ReplicaSet, name: standalone, uid: u}
"#);
    assert_eq!(workload_name(&p), "standalone");
    assert_eq!(workload_name(&pod("metadata: {name: solo}")), "solo");
    assert_eq!(
        workload_name(&pod("metadata: {generateName: batch-}")),
        "batch"
    );
    assert_eq!(workload_name(&Pod::default()), "unknown");
}

#[test]
fn resources_come_from_annotations_then_config() {
    let p = with_meta(&[], &[(annotations::PROXY_MEMORY_LIMIT, "1Gi")]);
    let out = run(
        &p,
        &NamespaceInfo::enabled("demo"),
        &InjectorConfig::default(),
        false,
    );
    let proxy = &out.spec.unwrap().containers[0];
    let r = proxy.resources.clone().unwrap();
    assert_eq!(r.limits.unwrap()["memory"].0, "1Gi");
    let requests = r.requests.unwrap();
    assert_eq!(requests["cpu"].0, "10m");
    assert_eq!(requests["memory"].0, "32Mi");
}
