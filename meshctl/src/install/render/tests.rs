use super::*;

fn fixed_tls() -> WebhookTls {
    WebhookTls {
        ca_pem: "CA".into(),
        cert_pem: "CERT".into(),
        key_pem: "KEY".into(),
    }
}

fn rendered() -> Vec<Manifest> {
    render(&InstallOptions::default(), &fixed_tls())
}

#[test]
fn apply_order() {
    let kinds: Vec<&str> = rendered().iter().map(Manifest::kind).collect();
    let first = |k: &str| kinds.iter().position(|x| *x == k).unwrap();
    let last = |k: &str| kinds.iter().rposition(|x| *x == k).unwrap();
    assert_eq!(kinds[0], "Namespace");
    assert!(last("CustomResourceDefinition") < first("ServiceAccount"));
    assert!(last("RoleBinding") < first("Deployment"));
    assert!(first("Secret") < first("Deployment"));
    assert_eq!(*kinds.last().unwrap(), "MutatingWebhookConfiguration");
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "CustomResourceDefinition")
            .count(),
        6
    );
    let deployments: Vec<&str> = rendered()
        .iter()
        .filter(|m| m.kind() == "Deployment")
        .map(|m| m.name().to_string())
        .collect::<Vec<_>>()
        .iter()
        .map(|s| match s.as_str() {
            "mesh-ca" => "mesh-ca",
            "mesh-controller" => "mesh-controller",
            _ => "mesh-injector",
        })
        .collect();
    assert_eq!(deployments, ["mesh-ca", "mesh-controller", "mesh-injector"]);
}

#[test]
fn everything_but_cluster_objects_is_in_mesh_system() {
    for m in rendered() {
        let cluster_scoped = matches!(
            m,
            Manifest::Namespace(_)
                | Manifest::Crd(_)
                | Manifest::ClusterRole(_)
                | Manifest::ClusterRoleBinding(_)
                | Manifest::Webhook(_)
        );
        assert_eq!(
            m.namespace(),
            (!cluster_scoped).then_some("mesh-system"),
            "{}",
            m.reference()
        );
        let labels = m.metadata().labels.clone().unwrap_or_default();
        if !matches!(m, Manifest::Crd(_)) {
            assert_eq!(
                labels.get("app.kubernetes.io/part-of").map(String::as_str),
                Some("mesh")
            );
        }
    }
}

fn rules(kind: &str, name: &str) -> Vec<PolicyRule> {
    rendered()
        .into_iter()
        .find_map(|m| match m {
            Manifest::ClusterRole(r)
                if kind == "ClusterRole" && r.metadata.name.as_deref() == Some(name) =>
            {
                r.rules
            }
            Manifest::Role(r) if kind == "Role" && r.metadata.name.as_deref() == Some(name) => {
                r.rules
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("{kind} {name}"))
}

/// `group/resource verb [names]` lines, sorted.
fn grants(rules: &[PolicyRule]) -> Vec<String> {
    let mut out = Vec::new();
    for r in rules {
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    let names = r.resource_names.clone().unwrap_or_default().join(",");
                    out.push(format!("{g}/{res} {v} {names}").trim_end().to_string());
                }
            }
        }
    }
    out.sort();
    out
}

#[test]
fn least_privilege() {
    let ca = grants(&rules("ClusterRole", "mesh-ca"));
    assert_eq!(
        ca,
        [
            "/configmaps create",
            "/configmaps patch mesh-root-ca",
            "/namespaces list",
            "/namespaces watch",
            "authentication.k8s.io/tokenreviews create",
        ]
    );
    assert_eq!(
        grants(&rules("Role", "mesh-ca")),
        [
            "/secrets create",
            "/secrets get mesh-ca",
            "/secrets patch mesh-ca"
        ]
    );
    assert_eq!(
        grants(&rules("Role", "mesh-controller")),
        [
            "coordination.k8s.io/leases create",
            "coordination.k8s.io/leases get mesh-controller-status",
            "coordination.k8s.io/leases update mesh-controller-status",
        ]
    );
    let controller = grants(&rules("ClusterRole", "mesh-controller"));
    // Reads only, except status.
    for g in &controller {
        let verb = g.split(' ').nth(1).unwrap();
        if g.contains("/status ") {
            assert_eq!(verb, "patch", "{g}");
        } else {
            assert!(verb == "list" || verb == "watch", "{g}");
        }
    }
    for crd in mesh_api::crds::all() {
        let g = format!("{}/{}", crd.spec.group, crd.spec.names.plural);
        assert!(controller.contains(&format!("{g} watch")), "{g}");
        assert!(controller.contains(&format!("{g}/status patch")), "{g}");
    }
    assert!(controller.contains(&"discovery.k8s.io/endpointslices list".to_string()));
    assert!(!controller.iter().any(|g| g.contains("secrets")));
    // The injector gets nothing.
    assert!(!rendered().iter().any(
        |m| matches!(m, Manifest::ClusterRole(_) | Manifest::Role(_) if m.name() == "mesh-injector")
    ));
}

#[test]
fn deployments_are_hardened() {
    for m in rendered() {
        let Manifest::Deployment(d) = m else { continue };
        let name = d.metadata.name.clone().unwrap();
        let pod = d.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some(name.as_str()));
        let psc = pod.security_context.unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.run_as_user, Some(RUN_AS));
        let c = &pod.containers[0];
        assert_eq!(
            c.image.as_deref(),
            Some(format!("mesh.local/{name}:{}", env!("CARGO_PKG_VERSION")).as_str())
        );
        let sc = c.security_context.clone().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{name}");
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{name}");
        assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
        assert!(
            c.readiness_probe.is_some() && c.liveness_probe.is_some(),
            "{name}"
        );
        assert!(c.resources.as_ref().unwrap().requests.is_some(), "{name}");
    }
}

#[test]
fn injector_contract() {
    let d = rendered()
        .into_iter()
        .find_map(|m| match m {
            Manifest::Deployment(d) if d.metadata.name.as_deref() == Some("mesh-injector") => {
                Some(d)
            }
            _ => None,
        })
        .unwrap();
    let pod = d.spec.unwrap().template.spec.unwrap();
    let c = &pod.containers[0];
    let mounts: Vec<(String, String)> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.clone(), m.mount_path.clone()))
        .collect();
    assert!(mounts.contains(&("tls".into(), "/var/run/mesh/injector-tls".into())));
    assert!(mounts.contains(&("config".into(), "/etc/mesh/injector".into())));
    assert_eq!(
        c.args.clone().unwrap(),
        ["--config", "/etc/mesh/injector/config.yaml"]
    );
    let probe = c
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(probe.path.as_deref(), Some("/ready"));
    assert_eq!(probe.scheme.as_deref(), Some("HTTPS"));
    assert_eq!(probe.port, IntOrString::Int(9443));
    let svc = rendered()
        .into_iter()
        .find_map(|m| match m {
            Manifest::Service(s) if s.metadata.name.as_deref() == Some("mesh-injector") => Some(s),
            _ => None,
        })
        .unwrap();
    let port = &svc.spec.unwrap().ports.unwrap()[0];
    assert_eq!(
        (port.port, port.target_port.clone()),
        (443, Some(IntOrString::Int(9443)))
    );
    let secret = rendered()
        .into_iter()
        .find_map(|m| match m {
            Manifest::Secret(s) => Some(s),
            _ => None,
        })
        .unwrap();
    assert_eq!(secret.metadata.name.as_deref(), Some("mesh-injector-tls"));
    let keys: Vec<&String> = secret.data.as_ref().unwrap().keys().collect();
    assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"]);
}

#[test]
fn options_reach_the_objects() {
    let opts = InstallOptions {
        registry: "ghcr.io/acme".into(),
        tag: "9.9.9".into(),
        trust_domain: "prod.acme.com".into(),
        controller_replicas: 3,
        failure_policy: super::super::options::FailurePolicy::Ignore,
        ..Default::default()
    };
    let all = render(&opts, &fixed_tls());
    let yaml = super::super::manifest::to_yaml(&all).unwrap();
    assert!(yaml.contains("image: ghcr.io/acme/mesh-controller:9.9.9"));
    assert!(
        yaml.contains("proxyImage: ghcr.io/acme/mesh-proxy:9.9.9"),
        "the injected proxy"
    );
    assert!(yaml.contains("prod.acme.com"));
    assert!(yaml.contains("failurePolicy: Ignore"));
    assert!(yaml.contains("replicas: 3"));
}

#[test]
fn config_change_rolls_the_injector() {
    let a = deployment(
        Component::Injector,
        &InstallOptions::default(),
        &fixed_tls(),
    );
    let b = deployment(
        Component::Injector,
        &InstallOptions {
            tag: "other".into(),
            ..Default::default()
        },
        &fixed_tls(),
    );
    let fp = |d: &Deployment| {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .clone()
    };
    assert_ne!(fp(&a), fp(&b));
    assert_eq!(fingerprint(&["a", "b"]), fingerprint(&["a", "b"]));
    assert_ne!(fingerprint(&["ab", ""]), fingerprint(&["a", "b"]));
}
