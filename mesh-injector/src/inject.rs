//! The injection decision and the JSON patch (RFC 6902) that adds the mesh
//! to a pod. Pure: no I/O, so the webhook, `meshctl inject` and the golden
//! tests run the same code.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, ObjectFieldSelector, Pod, Probe, ProjectedVolumeSource,
    ResourceRequirements, SeccompProfile, SecurityContext, ServiceAccountTokenProjection, Volume,
    VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use crate::annotations::{self, AnnotationError, PodSettings};
use crate::config::InjectorConfig;
use crate::probes::{self, ProbeRewrite};

/// Name of the injected sidecar; a pod with a container or init container of
/// this name is already injected.
pub const PROXY_CONTAINER: &str = "mesh-proxy";
/// Name of the injected init container.
pub const INIT_CONTAINER: &str = "mesh-init";
/// Projected ServiceAccount token with audience `mesh-ca`.
pub const TOKEN_VOLUME: &str = "mesh-ca-token";
/// In-memory scratch space of the proxy (its root file system is read-only).
pub const KEYS_VOLUME: &str = "mesh-keys";
/// The CA's trust bundle, published by mesh-ca in each labelled namespace.
pub const ROOT_CA_VOLUME: &str = "mesh-root-ca";
/// Where the token volume is mounted (the proxy's `MESH_CA_TOKEN_FILE`
/// default is `<this>/mesh-ca-token`).
pub const TOKEN_DIR: &str = "/var/run/secrets/mesh/tokens";
/// Where the trust bundle is mounted (`MESH_CA_ROOT` is
/// `<this>/root-cert.pem`).
pub const ROOT_CA_DIR: &str = "/var/run/mesh/root-ca";
/// Where the in-memory volume is mounted.
pub const KEYS_DIR: &str = "/var/run/mesh/keys";
/// Lifetime of the projected token; the kubelet refreshes it at 80 %.
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3600;
/// Name of the proxy's metrics port (at most 15 characters).
pub const METRICS_PORT_NAME: &str = "mesh-metrics";
/// Namespaces never injected: the cluster's own, and the mesh's (the CA
/// cannot depend on a proxy that needs the CA).
pub const NEVER_INJECTED_NAMESPACES: [&str; 3] =
    ["kube-system", "kube-public", mesh_api::INSTALL_NAMESPACE];

/// The namespace of the pod, as far as the injection rules need it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceInfo {
    /// The namespace's name.
    pub name: String,
    /// Its labels (only `mesh-injection` matters).
    pub labels: BTreeMap<String, String>,
}

impl NamespaceInfo {
    /// A namespace with the given labels.
    pub fn new(name: impl Into<String>, labels: BTreeMap<String, String>) -> Self {
        Self {
            name: name.into(),
            labels,
        }
    }

    /// A namespace labelled `mesh-injection=enabled`.
    pub fn enabled(name: impl Into<String>) -> Self {
        Self::new(
            name,
            BTreeMap::from([(mesh_api::INJECTION_LABEL.into(), "enabled".into())]),
        )
    }

    /// Whether the namespace is labelled `mesh-injection=enabled`.
    pub fn injection_enabled(&self) -> bool {
        self.labels
            .get(mesh_api::INJECTION_LABEL)
            .map(String::as_str)
            == Some("enabled")
    }
}

/// Why a pod is left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// `kube-system`, `kube-public` or `mesh-system`.
    SystemNamespace(String),
    /// `hostNetwork: true`: redirect rules would apply to the node.
    HostNetwork,
    /// `mesh.dev/inject: "false"` (annotation or label).
    OptedOut,
    /// The namespace is not labelled and the pod did not opt in.
    NotSelected,
    /// The pod already has `mesh-proxy`.
    AlreadyInjected,
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SystemNamespace(ns) => write!(f, "namespace {ns} is never injected"),
            Self::HostNetwork => f.write_str("pod uses the host network"),
            Self::OptedOut => write!(f, "pod opted out with {}: \"false\"", annotations::INJECT),
            Self::NotSelected => write!(
                f,
                "namespace is not labelled {}=enabled and the pod did not opt in",
                mesh_api::INJECTION_LABEL
            ),
            Self::AlreadyInjected => write!(f, "pod already has the {PROXY_CONTAINER} container"),
        }
    }
}

/// What to do with a pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Leave it as it is.
    Skip(SkipReason),
    /// Apply this patch.
    Inject(Patch),
}

impl Decision {
    /// The patch to send: empty when the pod is skipped.
    pub fn patch(&self) -> Patch {
        match self {
            Self::Skip(_) => Patch(Vec::new()),
            Self::Inject(p) => p.clone(),
        }
    }
}

/// Why a pod cannot be injected; the webhook denies it with this message.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// An annotation (or the `mesh.dev/inject` label) has a bad value.
    #[error(transparent)]
    Annotation(#[from] AnnotationError),
    /// The pod has no `spec`.
    #[error("pod has no spec")]
    NoSpec,
    /// The pod has no containers (the API server refuses such a pod; the
    /// patch, which inserts before the first container, could not apply).
    #[error("pod has no containers")]
    NoContainers,
    /// The pod already uses a name the injector needs.
    #[error("pod already has a {kind} named {name:?}, which the mesh injector needs; rename it or opt the pod out with mesh.dev/inject: \"false\"")]
    NameConflict {
        /// `volume` or `container`.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// Serialising a piece of the patch failed (a bug, not bad input).
    #[error("building the patch: {0}")]
    Json(#[from] serde_json::Error),
    /// Applying the patch failed (a bug, not bad input).
    #[error("applying the patch: {0}")]
    Apply(#[from] json_patch::PatchError),
}

/// Decides whether `pod` gets the mesh and, if so, returns the patch.
///
/// `ns` is the pod's namespace (the admission request's, since
/// `metadata.namespace` may be empty on create). The proxy is injected as a
/// native sidecar when `config.native_sidecar` says so, `auto` meaning
/// `cluster_supports_native_sidecars` (Kubernetes ≥ 1.29).
pub fn inject(
    pod: &Pod,
    ns: &NamespaceInfo,
    config: &InjectorConfig,
    cluster_supports_native_sidecars: bool,
) -> Result<Decision, InjectError> {
    if NEVER_INJECTED_NAMESPACES.contains(&ns.name.as_str()) {
        return Ok(Decision::Skip(SkipReason::SystemNamespace(ns.name.clone())));
    }
    let spec = pod.spec.as_ref().ok_or(InjectError::NoSpec)?;
    let empty = BTreeMap::new();
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);

    // The annotation wins over the label; both are checked so that a typo
    // is an error rather than a silent "no".
    let label_choice = labels
        .get(annotations::INJECT)
        .map(|v| annotations::parse_bool(annotations::INJECT, v))
        .transpose()?;
    let annotation_choice = annotations
        .get(annotations::INJECT)
        .map(|v| annotations::parse_bool(annotations::INJECT, v))
        .transpose()?;
    let choice = annotation_choice.or(label_choice);

    if spec.host_network == Some(true) {
        return Ok(Decision::Skip(SkipReason::HostNetwork));
    }
    let has_proxy = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == PROXY_CONTAINER);
    if has_proxy {
        return Ok(Decision::Skip(SkipReason::AlreadyInjected));
    }
    match choice {
        Some(false) => return Ok(Decision::Skip(SkipReason::OptedOut)),
        Some(true) => {}
        None if ns.injection_enabled() => {}
        None => return Ok(Decision::Skip(SkipReason::NotSelected)),
    }
    if spec.containers.is_empty() {
        return Err(InjectError::NoContainers);
    }

    let settings = PodSettings::from_annotations(annotations)?;
    for v in spec.volumes.iter().flatten() {
        if [TOKEN_VOLUME, KEYS_VOLUME, ROOT_CA_VOLUME].contains(&v.name.as_str()) {
            return Err(InjectError::NameConflict {
                kind: "volume",
                name: v.name.clone(),
            });
        }
    }
    if let Some(c) = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == INIT_CONTAINER)
    {
        return Err(InjectError::NameConflict {
            kind: "container",
            name: c.name.clone(),
        });
    }

    let native = config
        .native_sidecar
        .resolve(cluster_supports_native_sidecars);
    let mut ops = Vec::new();

    // Probe rewrites first: their paths are indices into the pod as it was,
    // before containers are inserted in front.
    let mut rewrite = ProbeRewrite::default();
    if settings.rewrite_probes.unwrap_or(config.rewrite_probes) {
        probes::rewrite(
            &mut rewrite,
            ["spec", "containers"],
            &spec.containers,
            |_| true,
        )?;
        if let Some(init) = &spec.init_containers {
            // Only sidecar-style init containers run alongside the app and
            // have probes.
            probes::rewrite(&mut rewrite, ["spec", "initContainers"], init, |c| {
                c.restart_policy.as_deref() == Some("Always")
            })?;
        }
    }
    ops.append(&mut rewrite.ops);

    // The marker annotation.
    let version = Value::String(env!("CARGO_PKG_VERSION").into());
    if pod.metadata.annotations.is_none() {
        ops.push(add(
            &["metadata", "annotations"],
            serde_json::json!({ annotations::INJECTED: version }),
        ));
    } else {
        ops.push(add(
            &["metadata", "annotations", annotations::INJECTED],
            version,
        ));
    }

    // Volumes: appended.
    let volumes = [token_volume(), keys_volume(), root_ca_volume()];
    if spec.volumes.is_none() {
        ops.push(add(&["spec", "volumes"], serde_json::to_value(volumes)?));
    } else {
        for v in volumes {
            ops.push(add(&["spec", "volumes", "-"], serde_json::to_value(v)?));
        }
    }

    // mesh-init runs first of all, so that every later container (the app's
    // init containers included) has its traffic redirected; a native proxy
    // comes right after it, so that those init containers find it running.
    let init = init_container(config, &settings);
    let proxy = proxy_container(pod, config, &settings, native, &rewrite.probes)?;
    let mut init_list = vec![serde_json::to_value(&init)?];
    if native {
        init_list.push(serde_json::to_value(&proxy)?);
    }
    if spec.init_containers.is_none() {
        ops.push(add(&["spec", "initContainers"], Value::Array(init_list)));
    } else {
        for (i, c) in init_list.into_iter().enumerate() {
            let index = i.to_string();
            ops.push(add(&["spec", "initContainers", index.as_str()], c));
        }
    }
    if !native {
        // First of the containers: the kubelet starts them in order.
        ops.push(add(
            &["spec", "containers", "0"],
            serde_json::to_value(&proxy)?,
        ));
    }
    Ok(Decision::Inject(Patch(ops)))
}

/// Applies `patch` to `pod` and returns the result (for `meshctl inject` and
/// tests; the API server does this in the cluster).
pub fn apply_patch(pod: &Pod, patch: &Patch) -> Result<Pod, InjectError> {
    let mut doc = serde_json::to_value(pod)?;
    json_patch::patch(&mut doc, &patch.0)?;
    Ok(serde_json::from_value(doc)?)
}

/// [`inject`] and [`apply_patch`] in one: the pod as it will run (unchanged
/// when skipped), with the decision.
pub fn inject_pod(
    pod: &Pod,
    ns: &NamespaceInfo,
    config: &InjectorConfig,
    cluster_supports_native_sidecars: bool,
) -> Result<(Decision, Pod), InjectError> {
    let decision = inject(pod, ns, config, cluster_supports_native_sidecars)?;
    let out = match &decision {
        Decision::Skip(_) => pod.clone(),
        Decision::Inject(p) => apply_patch(pod, p)?,
    };
    Ok((decision, out))
}

/// An `add` operation; tokens are escaped (`/` → `~1`, `~` → `~0`).
fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(tokens.iter().copied()),
        value,
    })
}

/// The name of the workload the pod belongs to, for metrics: the Deployment
/// (ReplicaSet name minus the pod-template hash), else the owner, else the
/// pod's own name (or `generateName` without its trailing dash).
pub fn workload_name(pod: &Pod) -> String {
    let meta = &pod.metadata;
    if let Some(owner) = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .or_else(|| meta.owner_references.iter().flatten().next())
    {
        if owner.kind == "ReplicaSet" {
            let hash = meta
                .labels
                .as_ref()
                .and_then(|l| l.get("pod-template-hash"));
            if let Some(deployment) = hash.and_then(|h| owner.name.strip_suffix(&format!("-{h}"))) {
                return deployment.to_string();
            }
        }
        return owner.name.clone();
    }
    if let Some(name) = meta.name.as_deref().filter(|n| !n.is_empty()) {
        return name.to_string();
    }
    meta.generate_name
        .as_deref()
        .map(|g| g.trim_end_matches('-').to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn quantity(v: &Option<String>) -> Option<Quantity> {
    v.clone().map(Quantity)
}

fn resources(config: &InjectorConfig, s: &PodSettings) -> ResourceRequirements {
    let r = &config.proxy_resources;
    let pick = |pod: &Option<String>, cfg: &Option<String>| {
        quantity(if pod.is_some() { pod } else { cfg })
    };
    let map = |cpu: Option<Quantity>, mem: Option<Quantity>| {
        let m: BTreeMap<String, Quantity> = [("cpu", cpu), ("memory", mem)]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
            .collect();
        (!m.is_empty()).then_some(m)
    };
    ResourceRequirements {
        requests: map(
            pick(&s.cpu_request, &r.cpu_request),
            pick(&s.memory_request, &r.memory_request),
        ),
        limits: map(
            pick(&s.cpu_limit, &r.cpu_limit),
            pick(&s.memory_limit, &r.memory_limit),
        ),
        ..Default::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: path.into(),
            }),
            ..Default::default()
        }),
    }
}

fn runtime_default_seccomp() -> Option<SeccompProfile> {
    Some(SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    })
}

fn init_container(config: &InjectorConfig, s: &PodSettings) -> Container {
    let uid = mesh_api::PROXY_UID.to_string();
    Container {
        name: INIT_CONTAINER.into(),
        image: Some(config.init_image().into()),
        image_pull_policy: Some(config.image_pull_policy.clone()),
        args: Some(vec!["init".into()]),
        env: Some(vec![
            env("MESH_PROXY_UID", uid.clone()),
            env("MESH_PROXY_GID", uid),
            env(
                "MESH_INCLUDE_INBOUND_PORTS",
                s.include_inbound_ports.clone(),
            ),
            env(
                "MESH_EXCLUDE_INBOUND_PORTS",
                s.exclude_inbound_ports.clone(),
            ),
            env(
                "MESH_EXCLUDE_OUTBOUND_PORTS",
                s.exclude_outbound_ports.clone(),
            ),
            env(
                "MESH_EXCLUDE_OUTBOUND_CIDRS",
                s.exclude_outbound_cidrs.clone(),
            ),
        ]),
        resources: Some(resources(config, s)),
        // Root with exactly the two capabilities iptables needs; the root
        // file system stays writable for the xtables lock file.
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            seccomp_profile: runtime_default_seccomp(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn http_probe(path: &str) -> HTTPGetAction {
    HTTPGetAction {
        path: Some(path.into()),
        port: IntOrString::Int(i32::from(mesh_api::ports::PROXY_METRICS)),
        scheme: Some("HTTP".into()),
        ..Default::default()
    }
}

fn proxy_container(
    pod: &Pod,
    config: &InjectorConfig,
    s: &PodSettings,
    native: bool,
    app_probes: &BTreeMap<String, Value>,
) -> Result<Container, serde_json::Error> {
    let uid = i64::from(mesh_api::PROXY_UID);
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("POD_IP", "status.podIP"),
        field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        field_env("NODE_NAME", "spec.nodeName"),
        env("MESH_WORKLOAD", workload_name(pod)),
        env("MESH_CONTROLLER_ADDR", config.controller_address.clone()),
        env("MESH_CA_ADDR", config.ca_address.clone()),
        env(
            "MESH_CA_ROOT",
            format!("{ROOT_CA_DIR}/{}", mesh_api::svid::TRUST_BUNDLE_KEY),
        ),
        env("MESH_CA_TOKEN_FILE", format!("{TOKEN_DIR}/{TOKEN_VOLUME}")),
        env("MESH_TRUST_DOMAIN", config.trust_domain.clone()),
        env("MESH_IDENTITY_TTL", config.identity_ttl.clone()),
        env("MESH_DRAIN_TIMEOUT", config.drain_timeout.clone()),
        env("MESH_LOG", config.log_level.clone()),
    ];
    if !app_probes.is_empty() {
        env.push(env_json(probes::APP_PROBES_ENV, app_probes)?);
    }
    let ready = http_probe("/ready");
    Ok(Container {
        name: PROXY_CONTAINER.into(),
        image: Some(config.proxy_image.clone()),
        image_pull_policy: Some(config.image_pull_policy.clone()),
        args: Some(vec!["run".into()]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some(METRICS_PORT_NAME.into()),
            container_port: i32::from(mesh_api::ports::PROXY_METRICS),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        readiness_probe: Some(Probe {
            http_get: Some(ready.clone()),
            period_seconds: Some(2),
            timeout_seconds: Some(1),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        // A native sidecar counts as started when its startup probe passes:
        // the app's containers (and later init containers) wait for a proxy
        // that has its certificate and config. Up to 10 minutes, since a
        // CA or controller being rolled out should not restart every proxy.
        startup_probe: native.then(|| Probe {
            http_get: Some(ready),
            period_seconds: Some(1),
            timeout_seconds: Some(3),
            failure_threshold: Some(600),
            ..Default::default()
        }),
        restart_policy: native.then(|| "Always".into()),
        resources: Some(resources(config, s)),
        security_context: Some(SecurityContext {
            run_as_user: Some(uid),
            run_as_group: Some(uid),
            run_as_non_root: Some(true),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: None,
                drop: Some(vec!["ALL".into()]),
            }),
            seccomp_profile: runtime_default_seccomp(),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: TOKEN_VOLUME.into(),
                mount_path: TOKEN_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: ROOT_CA_VOLUME.into(),
                mount_path: ROOT_CA_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: KEYS_VOLUME.into(),
                mount_path: KEYS_DIR.into(),
                ..Default::default()
            },
        ]),
        ..Default::default()
    })
}

fn env_json(name: &str, v: &BTreeMap<String, Value>) -> Result<EnvVar, serde_json::Error> {
    Ok(env(name, serde_json::to_string(v)?))
}

fn token_volume() -> Volume {
    Volume {
        name: TOKEN_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(mesh_api::CA_TOKEN_AUDIENCE.into()),
                    expiration_seconds: Some(TOKEN_EXPIRATION_SECONDS),
                    path: TOKEN_VOLUME.into(),
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn keys_volume() -> Volume {
    Volume {
        name: KEYS_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            // Counted against the proxy's memory limit; keys are bytes.
            size_limit: Some(Quantity("1Mi".into())),
        }),
        ..Default::default()
    }
}

fn root_ca_volume() -> Volume {
    Volume {
        name: ROOT_CA_VOLUME.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: mesh_api::svid::TRUST_BUNDLE_CONFIGMAP.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
