//! Every object of an installation, built as typed k8s-openapi values from
//! [`InstallOptions`], in the order they are applied.
//!
//! RBAC follows what each component's code calls (see docs/install.md):
//! - `mesh-controller` (`mesh-controller/src/source/kube.rs`, `leader.rs`):
//!   list/watch Services, Pods, Namespaces, EndpointSlices and the six mesh
//!   CRDs; patch their `status`; get/update its Lease and create Leases in
//!   `mesh-system`.
//! - `mesh-ca` (`mesh-ca/src/auth.rs`, `store.rs`, `publish.rs`): create
//!   TokenReviews; create Secrets and get/patch its Secret `mesh-ca` in
//!   `mesh-system`; list Namespaces and apply ConfigMaps named `mesh-root-ca`
//!   (server-side apply is a `patch`, and also needs `create` when the
//!   ConfigMap does not exist yet; a create cannot be limited by name).
//! - `mesh-injector`: nothing.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, Namespace, ObjectFieldSelector, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile, Secret,
    SecretVolumeSource, SecurityContext, Service, ServiceAccount, ServiceAccountTokenProjection,
    ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;

use super::manifest::Manifest;
use super::options::{Component, InstallOptions, NAMESPACE};
use super::webhook::{webhook_configuration, WebhookTls};

/// Label every object carries; `meshctl uninstall` and the CA's published
/// ConfigMaps use it too.
pub const PART_OF: (&str, &str) = ("app.kubernetes.io/part-of", "mesh");
/// Who manages the objects.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "meshctl");
/// Component label (also the Deployments' selector, with [`PART_OF`]).
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// Installed version (the image tag).
pub const VERSION_LABEL: &str = "app.kubernetes.io/version";

/// Secret holding the injector's serving certificate (`tls.crt`, `tls.key`,
/// `ca.crt`).
pub const INJECTOR_TLS_SECRET: &str = mesh_injector::TLS_SECRET_NAME;
/// Where the injector finds that Secret.
pub const INJECTOR_TLS_DIR: &str = "/var/run/mesh/injector-tls";
/// ConfigMap (key `config.yaml`) with the injector's configuration.
pub const INJECTOR_CONFIGMAP: &str = mesh_injector::CONFIGMAP_NAME;
/// Where the injector finds its configuration.
pub const INJECTOR_CONFIG_DIR: &str = "/etc/mesh/injector";
/// The injector's HTTPS port (container side).
pub const INJECTOR_PORT: i32 = 9443;

/// The CA's gRPC (TLS) port.
pub const CA_PORT: i32 = 15012;
/// The controller's config stream (mTLS) port.
pub const CONTROLLER_PORT: i32 = 15010;
/// Metrics (CA) and admin (controller: /ready, /metrics) port.
pub const ADMIN_PORT: i32 = 15014;

/// Lease the controller replicas elect their status writer with
/// (`mesh_controller::leader::DEFAULT_LEASE_NAME`).
pub const CONTROLLER_LEASE: &str = "mesh-controller-status";

/// Where the controller's projected token (audience `mesh-ca`) and the roots
/// of the CA's serving certificate are mounted: the defaults of
/// `mesh-controller --ca-token-file` and `--ca-root`.
const CONTROLLER_TOKEN_DIR: &str = "/var/run/secrets/tokens";
const CONTROLLER_TOKEN_FILE: &str = "mesh-ca-token";
const CONTROLLER_CA_ROOT_DIR: &str = "/var/run/secrets/mesh";

/// Non-root UID/GID of the control plane (the images have no user of their
/// own; 65532 is the conventional "nonroot").
pub const RUN_AS: i64 = 65532;

/// A projected token lives an hour; kubelet refreshes it at 80 %.
const TOKEN_EXPIRATION_SECONDS: i64 = 3600;

/// Every object of an installation, in apply order: namespace, CRDs,
/// ServiceAccounts, RBAC, injector config and TLS, then per component its
/// Service and Deployment (CA, controller, injector), and the webhook
/// configuration last.
pub fn render(opts: &InstallOptions, tls: &WebhookTls) -> Vec<Manifest> {
    let mut out = vec![Manifest::Namespace(namespace())];
    out.extend(mesh_api::crds::all().into_iter().map(Manifest::Crd));
    for c in Component::ALL {
        out.push(Manifest::ServiceAccount(service_account(c, opts)));
    }
    out.extend(rbac(opts));
    out.push(Manifest::ConfigMap(injector_config(opts)));
    out.push(Manifest::Secret(injector_tls_secret(opts, tls)));
    for c in Component::ALL {
        out.push(Manifest::Service(service(c, opts)));
        out.push(Manifest::Deployment(deployment(c, opts, tls)));
    }
    out.push(Manifest::Webhook(webhook_configuration(
        opts.failure_policy,
        &tls.ca_pem,
    )));
    out
}

fn labels(component: Option<Component>, opts: &InstallOptions) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        (PART_OF.0.to_string(), PART_OF.1.to_string()),
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (VERSION_LABEL.to_string(), opts.tag.clone()),
    ]);
    if let Some(c) = component {
        l.insert(NAME_LABEL.to_string(), c.name().to_string());
    }
    l
}

/// The Deployments' selector: immutable, so without the version.
fn selector(c: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        (PART_OF.0.to_string(), PART_OF.1.to_string()),
        (NAME_LABEL.to_string(), c.name().to_string()),
    ])
}

fn meta(name: &str, namespaced: bool, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespaced.then(|| NAMESPACE.to_string()),
        labels: Some(labels),
        ..Default::default()
    }
}

fn namespace() -> Namespace {
    // No version label: the namespace outlives upgrades unchanged. Pod
    // Security "restricted" holds: every pod below runs non-root with no
    // capabilities and the runtime's seccomp profile.
    let labels = BTreeMap::from([
        (PART_OF.0.to_string(), PART_OF.1.to_string()),
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (
            "pod-security.kubernetes.io/enforce".to_string(),
            "restricted".to_string(),
        ),
    ]);
    Namespace {
        metadata: ObjectMeta {
            name: Some(NAMESPACE.to_string()),
            labels: Some(labels),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn service_account(c: Component, opts: &InstallOptions) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(c.name(), true, labels(Some(c), opts)),
        ..Default::default()
    }
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str], names: &[&str]) -> PolicyRule {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(strings(groups)),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        resource_names: (!names.is_empty()).then(|| strings(names)),
        ..Default::default()
    }
}

fn subject(c: Component) -> Vec<Subject> {
    vec![Subject {
        kind: "ServiceAccount".to_string(),
        name: c.name().to_string(),
        namespace: Some(NAMESPACE.to_string()),
        ..Default::default()
    }]
}

fn role_ref(kind: &str, name: &str) -> RoleRef {
    RoleRef {
        api_group: "rbac.authorization.k8s.io".to_string(),
        kind: kind.to_string(),
        name: name.to_string(),
    }
}

/// The plurals of the mesh CRDs by API group, from the typed CRDs.
fn mesh_resources() -> BTreeMap<String, Vec<String>> {
    let mut by_group: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for crd in mesh_api::crds::all() {
        by_group
            .entry(crd.spec.group.clone())
            .or_default()
            .push(crd.spec.names.plural.clone());
    }
    by_group
}

fn rbac(opts: &InstallOptions) -> Vec<Manifest> {
    let mut controller_rules = vec![
        rule(
            &[""],
            &["services", "pods", "namespaces"],
            &["list", "watch"],
            &[],
        ),
        rule(
            &["discovery.k8s.io"],
            &["endpointslices"],
            &["list", "watch"],
            &[],
        ),
    ];
    for (group, plurals) in mesh_resources() {
        let plurals: Vec<&str> = plurals.iter().map(String::as_str).collect();
        controller_rules.push(rule(&[&group], &plurals, &["list", "watch"], &[]));
        let status: Vec<String> = plurals.iter().map(|p| format!("{p}/status")).collect();
        let status: Vec<&str> = status.iter().map(String::as_str).collect();
        controller_rules.push(rule(&[&group], &status, &["patch"], &[]));
    }
    let ca_rules = vec![
        rule(
            &["authentication.k8s.io"],
            &["tokenreviews"],
            &["create"],
            &[],
        ),
        // The trust bundle goes to every namespace, as soon as one appears.
        rule(&[""], &["namespaces"], &["list", "watch"], &[]),
        // Server-side apply of an absent object is authorized as `create`
        // too, and a create cannot be limited to a name.
        rule(&[""], &["configmaps"], &["create"], &[]),
        rule(
            &[""],
            &["configmaps"],
            &["patch"],
            &[mesh_api::svid::TRUST_BUNDLE_CONFIGMAP],
        ),
    ];
    // A resourceNames rule cannot allow `create` (the name is not in the
    // URL), so creating is allowed in mesh-system only, and everything else
    // only on the one object.
    let controller_ns_rules = vec![
        rule(&["coordination.k8s.io"], &["leases"], &["create"], &[]),
        rule(
            &["coordination.k8s.io"],
            &["leases"],
            &["get", "update"],
            &[CONTROLLER_LEASE],
        ),
    ];
    let ca_ns_rules = vec![
        rule(&[""], &["secrets"], &["create"], &[]),
        rule(
            &[""],
            &["secrets"],
            &["get", "patch"],
            &[mesh_api::svid::CA_SECRET_NAME],
        ),
    ];
    let mut out = Vec::new();
    for (c, rules) in [
        (Component::Ca, ca_rules),
        (Component::Controller, controller_rules),
    ] {
        out.push(Manifest::ClusterRole(ClusterRole {
            metadata: meta(c.name(), false, labels(Some(c), opts)),
            rules: Some(rules),
            ..Default::default()
        }));
        out.push(Manifest::ClusterRoleBinding(ClusterRoleBinding {
            metadata: meta(c.name(), false, labels(Some(c), opts)),
            role_ref: role_ref("ClusterRole", c.name()),
            subjects: Some(subject(c)),
        }));
    }
    for (c, rules) in [
        (Component::Ca, ca_ns_rules),
        (Component::Controller, controller_ns_rules),
    ] {
        out.push(Manifest::Role(Role {
            metadata: meta(c.name(), true, labels(Some(c), opts)),
            rules: Some(rules),
        }));
        out.push(Manifest::RoleBinding(RoleBinding {
            metadata: meta(c.name(), true, labels(Some(c), opts)),
            role_ref: role_ref("Role", c.name()),
            subjects: Some(subject(c)),
        }));
    }
    out
}

/// The injector's `config.yaml`: `mesh_injector::InjectorConfig` with the
/// proxy image, pull policy and trust domain of this installation, the
/// injector's defaults for the rest.
pub fn injector_config_yaml(opts: &InstallOptions) -> String {
    let config = mesh_injector::InjectorConfig {
        proxy_image: opts.image("mesh-proxy"),
        image_pull_policy: opts.pull_policy.as_str().to_string(),
        trust_domain: opts.trust_domain.clone(),
        ..Default::default()
    };
    // Strings, numbers and enums: serialising cannot fail.
    serde_yaml::to_string(&config).unwrap_or_default()
}

fn injector_config(opts: &InstallOptions) -> ConfigMap {
    ConfigMap {
        metadata: meta(
            INJECTOR_CONFIGMAP,
            true,
            labels(Some(Component::Injector), opts),
        ),
        data: Some(BTreeMap::from([(
            mesh_injector::CONFIG_KEY.to_string(),
            injector_config_yaml(opts),
        )])),
        ..Default::default()
    }
}

fn injector_tls_secret(opts: &InstallOptions, tls: &WebhookTls) -> Secret {
    let data = [
        ("tls.crt", &tls.cert_pem),
        ("tls.key", &tls.key_pem),
        ("ca.crt", &tls.ca_pem),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.clone().into_bytes())))
    .collect();
    Secret {
        metadata: meta(
            INJECTOR_TLS_SECRET,
            true,
            labels(Some(Component::Injector), opts),
        ),
        type_: Some("kubernetes.io/tls".to_string()),
        data: Some(data),
        ..Default::default()
    }
}

fn service(c: Component, opts: &InstallOptions) -> Service {
    let port = |name: &str, port: i32, target: i32| ServicePort {
        name: Some(name.to_string()),
        port,
        target_port: Some(IntOrString::Int(target)),
        protocol: Some("TCP".to_string()),
        ..Default::default()
    };
    let ports = match c {
        Component::Ca => vec![
            port("grpc-tls", CA_PORT, CA_PORT),
            port("http-metrics", ADMIN_PORT, ADMIN_PORT),
        ],
        Component::Controller => vec![
            port("grpc-config", CONTROLLER_PORT, CONTROLLER_PORT),
            port("http-admin", ADMIN_PORT, ADMIN_PORT),
        ],
        Component::Injector => vec![port("https-webhook", 443, INJECTOR_PORT)],
    };
    Service {
        metadata: meta(c.name(), true, labels(Some(c), opts)),
        spec: Some(ServiceSpec {
            selector: Some(selector(c)),
            ports: Some(ports),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port: port,
        protocol: Some("TCP".to_string()),
        ..Default::default()
    }
}

fn http_probe(path: &str, port: i32, https: bool) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(port),
            scheme: Some(if https { "HTTPS" } else { "HTTP" }.to_string()),
            ..Default::default()
        }),
        period_seconds: Some(5),
        failure_threshold: Some(3),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

fn tcp_probe(port: i32) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(port),
            ..Default::default()
        }),
        period_seconds: Some(5),
        failure_threshold: Some(3),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

/// Gives a slow start (the controller waits for its certificate from the
/// CA, the CA for its Secret) ten minutes before liveness counts.
fn startup(mut p: Probe) -> Probe {
    p.failure_threshold = Some(120);
    p
}

fn quantity(s: &str) -> Quantity {
    Quantity(s.to_string())
}

/// Requests sized for a small cluster; memory limits only (a CPU limit
/// throttles the control plane exactly when a burst of changes arrives).
fn resources(c: Component) -> ResourceRequirements {
    let (cpu, mem, mem_limit) = match c {
        Component::Ca => ("50m", "64Mi", "256Mi"),
        Component::Controller => ("100m", "128Mi", "1Gi"),
        Component::Injector => ("50m", "64Mi", "256Mi"),
    };
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), quantity(cpu)),
            ("memory".to_string(), quantity(mem)),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            quantity(mem_limit),
        )])),
        ..Default::default()
    }
}

fn env_from_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: Some(true),
        ..Default::default()
    }
}

/// FNV-1a, 64 bits: a stable fingerprint of the injector's config and
/// certificate, so that a change rolls its pods (a std hasher may change
/// between Rust releases and would make the golden files flap).
fn fingerprint(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// One component's Deployment: non-root, read-only root file system, no
/// capabilities, probes, requests.
pub fn deployment(c: Component, opts: &InstallOptions, tls: &WebhookTls) -> Deployment {
    let mut env = Vec::new();
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    let mut annotations = BTreeMap::new();
    let td = opts.trust_domain.clone();
    let (args, ports, readiness, liveness) = match c {
        Component::Ca => (
            vec!["serve".into(), "--kube".into(), "--trust-domain".into(), td],
            vec![
                container_port("grpc-tls", CA_PORT),
                container_port("http-metrics", ADMIN_PORT),
            ],
            // The gRPC port opens once the CA material is loaded or made.
            tcp_probe(CA_PORT),
            http_probe("/metrics", ADMIN_PORT, false),
        ),
        Component::Controller => {
            env.push(env_from_field("POD_NAMESPACE", "metadata.namespace"));
            env.push(env_from_field("POD_NAME", "metadata.name"));
            env.push(env_from_field("SERVICE_ACCOUNT", "spec.serviceAccountName"));
            volumes.push(Volume {
                name: "mesh-ca-token".into(),
                projected: Some(ProjectedVolumeSource {
                    sources: Some(vec![VolumeProjection {
                        service_account_token: Some(ServiceAccountTokenProjection {
                            audience: Some(mesh_api::CA_TOKEN_AUDIENCE.to_string()),
                            expiration_seconds: Some(TOKEN_EXPIRATION_SECONDS),
                            path: CONTROLLER_TOKEN_FILE.to_string(),
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            });
            // The roots the CA's serving certificate chains to: the trust
            // bundle from the CA's own Secret, only that key. Optional: the
            // CA creates the Secret on its first start; kubelet fills the
            // volume in when it appears and the controller retries until
            // then.
            volumes.push(Volume {
                name: "mesh-ca-root".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(mesh_api::svid::CA_SECRET_NAME.to_string()),
                    items: Some(vec![KeyToPath {
                        key: "trust-bundle.pem".into(),
                        path: "root-cert.pem".into(),
                        ..Default::default()
                    }]),
                    optional: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            });
            mounts.push(mount("mesh-ca-token", CONTROLLER_TOKEN_DIR));
            mounts.push(mount("mesh-ca-root", CONTROLLER_CA_ROOT_DIR));
            (
                vec!["--trust-domain".into(), td],
                vec![
                    container_port("grpc-config", CONTROLLER_PORT),
                    container_port("http-admin", ADMIN_PORT),
                ],
                http_probe("/ready", ADMIN_PORT, false),
                http_probe("/metrics", ADMIN_PORT, false),
            )
        }
        Component::Injector => {
            volumes.push(Volume {
                name: "tls".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(INJECTOR_TLS_SECRET.to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            });
            volumes.push(Volume {
                name: "config".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: INJECTOR_CONFIGMAP.to_string(),
                    ..Default::default()
                }),
                ..Default::default()
            });
            mounts.push(mount("tls", INJECTOR_TLS_DIR));
            mounts.push(mount("config", INJECTOR_CONFIG_DIR));
            annotations.insert(
                "mesh.dev/config-fingerprint".to_string(),
                fingerprint(&[&injector_config_yaml(opts), &tls.cert_pem]),
            );
            (
                vec![
                    "--config".into(),
                    format!("{INJECTOR_CONFIG_DIR}/{}", mesh_injector::CONFIG_KEY),
                ],
                vec![container_port("https-webhook", INJECTOR_PORT)],
                http_probe("/ready", INJECTOR_PORT, true),
                http_probe("/live", INJECTOR_PORT, true),
            )
        }
    };
    let startup_probe = startup(tcp_probe(match c {
        Component::Ca => CA_PORT,
        Component::Controller => ADMIN_PORT,
        Component::Injector => INJECTOR_PORT,
    }));
    let container = Container {
        name: c.name().to_string(),
        image: Some(opts.image(c.name())),
        image_pull_policy: Some(opts.pull_policy.as_str().to_string()),
        args: Some(args),
        env: (!env.is_empty()).then_some(env),
        ports: Some(ports),
        readiness_probe: Some(readiness),
        liveness_probe: Some(liveness),
        startup_probe: Some(startup_probe),
        resources: Some(resources(c)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        ..Default::default()
    };
    let mut pod_labels = labels(Some(c), opts);
    pod_labels.extend(selector(c));
    Deployment {
        metadata: meta(c.name(), true, labels(Some(c), opts)),
        spec: Some(DeploymentSpec {
            replicas: Some(i32::from(opts.replicas(c))),
            selector: LabelSelector {
                match_labels: Some(selector(c)),
                ..Default::default()
            },
            // One new pod before an old one goes: the control plane never
            // drops below its replica count during an upgrade.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_string()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: (!annotations.is_empty()).then_some(annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(c.name().to_string()),
                    containers: vec![container],
                    volumes: (!volumes.is_empty()).then_some(volumes),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS),
                        run_as_group: Some(RUN_AS),
                        // Makes the projected token readable by RUN_AS.
                        fs_group: Some(RUN_AS),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_string(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
