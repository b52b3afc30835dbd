//! One rendered Kubernetes object, kept typed until it is printed or applied.

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Every kind `meshctl install` creates.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // a few dozen objects, printed or applied once
pub enum Manifest {
    /// `mesh-system`.
    Namespace(Namespace),
    /// A mesh CRD, from `mesh_api::crds`.
    Crd(CustomResourceDefinition),
    /// One per component.
    ServiceAccount(ServiceAccount),
    /// Cluster-wide permissions of a component.
    ClusterRole(ClusterRole),
    /// Binds a ClusterRole to a component's ServiceAccount.
    ClusterRoleBinding(ClusterRoleBinding),
    /// Permissions inside `mesh-system`.
    Role(Role),
    /// Binds a Role to a component's ServiceAccount.
    RoleBinding(RoleBinding),
    /// The injector's configuration (the proxy it injects).
    ConfigMap(ConfigMap),
    /// The injector's serving certificate.
    Secret(Secret),
    /// A component's Service.
    Service(Service),
    /// A component's Deployment.
    Deployment(Deployment),
    /// The admission webhook registration; applied last, deleted first.
    Webhook(MutatingWebhookConfiguration),
}

impl Manifest {
    /// The object's `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Namespace(_) => "Namespace",
            Self::Crd(_) => "CustomResourceDefinition",
            Self::ServiceAccount(_) => "ServiceAccount",
            Self::ClusterRole(_) => "ClusterRole",
            Self::ClusterRoleBinding(_) => "ClusterRoleBinding",
            Self::Role(_) => "Role",
            Self::RoleBinding(_) => "RoleBinding",
            Self::ConfigMap(_) => "ConfigMap",
            Self::Secret(_) => "Secret",
            Self::Service(_) => "Service",
            Self::Deployment(_) => "Deployment",
            Self::Webhook(_) => "MutatingWebhookConfiguration",
        }
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Self::Namespace(o) => &o.metadata,
            Self::Crd(o) => &o.metadata,
            Self::ServiceAccount(o) => &o.metadata,
            Self::ClusterRole(o) => &o.metadata,
            Self::ClusterRoleBinding(o) => &o.metadata,
            Self::Role(o) => &o.metadata,
            Self::RoleBinding(o) => &o.metadata,
            Self::ConfigMap(o) => &o.metadata,
            Self::Secret(o) => &o.metadata,
            Self::Service(o) => &o.metadata,
            Self::Deployment(o) => &o.metadata,
            Self::Webhook(o) => &o.metadata,
        }
    }

    /// `metadata.name` (every rendered object has one).
    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or_default()
    }

    /// `metadata.namespace`; `None` for cluster-scoped kinds.
    pub fn namespace(&self) -> Option<&str> {
        self.metadata().namespace.as_deref()
    }

    /// `Kind/name` or `Kind/namespace/name`, for messages.
    pub fn reference(&self) -> String {
        match self.namespace() {
            Some(ns) => format!("{}/{ns}/{}", self.kind(), self.name()),
            None => format!("{}/{}", self.kind(), self.name()),
        }
    }

    /// The object as one YAML document, fields in k8s-openapi's order
    /// (apiVersion, kind, metadata, then as declared).
    pub fn to_yaml(&self) -> Result<String, serde_yaml::Error> {
        match self {
            Self::Namespace(o) => serde_yaml::to_string(o),
            Self::Crd(o) => serde_yaml::to_string(o),
            Self::ServiceAccount(o) => serde_yaml::to_string(o),
            Self::ClusterRole(o) => serde_yaml::to_string(o),
            Self::ClusterRoleBinding(o) => serde_yaml::to_string(o),
            Self::Role(o) => serde_yaml::to_string(o),
            Self::RoleBinding(o) => serde_yaml::to_string(o),
            Self::ConfigMap(o) => serde_yaml::to_string(o),
            Self::Secret(o) => serde_yaml::to_string(o),
            Self::Service(o) => serde_yaml::to_string(o),
            Self::Deployment(o) => serde_yaml::to_string(o),
            Self::Webhook(o) => serde_yaml::to_string(o),
        }
    }

    /// The object as JSON, with `apiVersion` and `kind`.
    pub fn to_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        match self {
            Self::Namespace(o) => serde_json::to_value(o),
            Self::Crd(o) => serde_json::to_value(o),
            Self::ServiceAccount(o) => serde_json::to_value(o),
            Self::ClusterRole(o) => serde_json::to_value(o),
            Self::ClusterRoleBinding(o) => serde_json::to_value(o),
            Self::Role(o) => serde_json::to_value(o),
            Self::RoleBinding(o) => serde_json::to_value(o),
            Self::ConfigMap(o) => serde_json::to_value(o),
            Self::Secret(o) => serde_json::to_value(o),
            Self::Service(o) => serde_json::to_value(o),
            Self::Deployment(o) => serde_json::to_value(o),
            Self::Webhook(o) => serde_json::to_value(o),
        }
    }
}

/// The manifests as one multi-document YAML stream (`---` between objects),
/// in the order given.
pub fn to_yaml(manifests: &[Manifest]) -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for m in manifests {
        out.push_str("---\n");
        out.push_str(&m.to_yaml()?);
    }
    Ok(out)
}

/// The manifests as a Kubernetes `List` (what `kubectl get -o json` prints
/// for several objects, and `kubectl apply -f` accepts).
pub fn to_json(manifests: &[Manifest]) -> Result<String, serde_json::Error> {
    let items = manifests
        .iter()
        .map(Manifest::to_value)
        .collect::<Result<Vec<_>, _>>()?;
    serde_json::to_string_pretty(&serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": items,
    }))
}
