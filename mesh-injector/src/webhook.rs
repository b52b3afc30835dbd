//! The `MutatingWebhookConfiguration` that sends pods to the injector, and
//! the names of the objects around it. `meshctl install` renders it from
//! here, so the selectors and the injection rules cannot drift apart.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::ByteString;
use kube::api::ObjectMeta;

use crate::inject::NEVER_INJECTED_NAMESPACES;

/// Name of the webhook's Service (in `mesh-system`).
pub const SERVICE_NAME: &str = "mesh-injector";
/// Port of the Service; it targets the pod's 9443.
pub const SERVICE_PORT: i32 = 443;
/// Secret holding the webhook's serving certificate (`tls.crt`, `tls.key`).
pub const TLS_SECRET_NAME: &str = "mesh-injector-tls";
/// ConfigMap holding [`crate::InjectorConfig`] under [`CONFIG_KEY`].
pub const CONFIGMAP_NAME: &str = "mesh-injector";
/// Key of the configuration in the ConfigMap.
pub const CONFIG_KEY: &str = "config.yaml";
/// Name of the `MutatingWebhookConfiguration`.
pub const WEBHOOK_CONFIGURATION_NAME: &str = "mesh-injector";
/// HTTP path the API server posts AdmissionReviews to.
pub const INJECT_PATH: &str = "/inject";
/// Webhook for pods in namespaces labelled `mesh-injection=enabled`.
pub const NAMESPACE_WEBHOOK_NAME: &str = "namespace.inject.mesh.dev";
/// Webhook for pods labelled `mesh.dev/inject=true` in other namespaces.
pub const OBJECT_WEBHOOK_NAME: &str = "object.inject.mesh.dev";
/// Well-known label every namespace has (Kubernetes ≥ 1.21).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// The API server waits at most this long for the injector.
pub const DEFAULT_TIMEOUT_SECONDS: i32 = 5;

/// What the API server does when the injector cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Refuse the pod (the default): a pod that should be meshed never runs
    /// without its proxy, where it would send plain text and bypass
    /// authorization. Controllers retry, so pods appear once the injector
    /// is back; the injector's own namespace and the cluster's are excluded,
    /// so the injector can always be restarted.
    #[default]
    Fail,
    /// Let the pod through without the proxy.
    Ignore,
}

impl FailurePolicy {
    fn as_str(self) -> &'static str {
        match self {
            Self::Fail => "Fail",
            Self::Ignore => "Ignore",
        }
    }
}

/// Where the webhook runs and how the API server treats it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// Service name ([`SERVICE_NAME`]).
    pub service_name: String,
    /// Service namespace (`mesh-system`).
    pub service_namespace: String,
    /// Service port ([`SERVICE_PORT`]).
    pub service_port: i32,
    /// Failure policy ([`FailurePolicy::Fail`]).
    pub failure_policy: FailurePolicy,
    /// Timeout in seconds, 1–30 ([`DEFAULT_TIMEOUT_SECONDS`]).
    pub timeout_seconds: i32,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            service_name: SERVICE_NAME.into(),
            service_namespace: mesh_api::INSTALL_NAMESPACE.into(),
            service_port: SERVICE_PORT,
            failure_policy: FailurePolicy::Fail,
            timeout_seconds: DEFAULT_TIMEOUT_SECONDS,
        }
    }
}

fn requirement(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.into(),
        operator: operator.into(),
        values: Some(values.iter().map(|v| v.to_string()).collect()),
    }
}

fn selector(reqs: Vec<LabelSelectorRequirement>) -> Option<LabelSelector> {
    Some(LabelSelector {
        match_expressions: Some(reqs),
        match_labels: None,
    })
}

/// The recommended `MutatingWebhookConfiguration`. `ca_bundle_pem` is the
/// PEM of the CA that signed the webhook's serving certificate.
///
/// Two webhooks, both on pod CREATE, never in `kube-system`, `kube-public`
/// or `mesh-system`:
/// - `namespace.inject.mesh.dev`: namespaces labelled
///   `mesh-injection=enabled`, pods not labelled `mesh.dev/inject=false`;
/// - `object.inject.mesh.dev`: other namespaces, pods labelled
///   `mesh.dev/inject=true` (a selector can only see labels; the injector
///   honours the annotation of the same name as well).
///
/// A pod matches at most one of them, so it is never injected twice in one
/// pass; `reinvocationPolicy: IfNeeded` runs the injector again after other
/// webhooks changed the pod (injection is idempotent).
pub fn webhook_configuration(
    ca_bundle_pem: &[u8],
    settings: &WebhookSettings,
) -> MutatingWebhookConfiguration {
    let not_system = requirement(NAMESPACE_NAME_LABEL, "NotIn", &NEVER_INJECTED_NAMESPACES);
    let webhook = |name: &str, ns: LabelSelectorRequirement, obj: LabelSelectorRequirement| {
        MutatingWebhook {
            name: name.into(),
            admission_review_versions: vec!["v1".into()],
            client_config: WebhookClientConfig {
                ca_bundle: Some(ByteString(ca_bundle_pem.to_vec())),
                service: Some(ServiceReference {
                    name: settings.service_name.clone(),
                    namespace: settings.service_namespace.clone(),
                    path: Some(INJECT_PATH.into()),
                    port: Some(settings.service_port),
                }),
                url: None,
            },
            failure_policy: Some(settings.failure_policy.as_str().into()),
            match_policy: Some("Equivalent".into()),
            namespace_selector: selector(vec![ns, not_system.clone()]),
            object_selector: selector(vec![obj]),
            reinvocation_policy: Some("IfNeeded".into()),
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec!["".into()]),
                api_versions: Some(vec!["v1".into()]),
                operations: Some(vec!["CREATE".into()]),
                resources: Some(vec!["pods".into()]),
                scope: Some("Namespaced".into()),
            }]),
            // The injector only computes a patch; dry-run requests are safe.
            side_effects: "None".into(),
            timeout_seconds: Some(settings.timeout_seconds.clamp(1, 30)),
            match_conditions: None,
        }
    };
    MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(WEBHOOK_CONFIGURATION_NAME.into()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_string(),
                "mesh".to_string(),
            )])),
            ..Default::default()
        },
        webhooks: Some(vec![
            webhook(
                NAMESPACE_WEBHOOK_NAME,
                requirement(mesh_api::INJECTION_LABEL, "In", &["enabled"]),
                requirement(mesh_api::INJECT_ANNOTATION, "NotIn", &["false"]),
            ),
            webhook(
                OBJECT_WEBHOOK_NAME,
                requirement(mesh_api::INJECTION_LABEL, "NotIn", &["enabled"]),
                requirement(mesh_api::INJECT_ANNOTATION, "In", &["true"]),
            ),
        ]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_webhooks_partition_the_namespaces() {
        let cfg = webhook_configuration(b"PEM", &WebhookSettings::default());
        let v = serde_json::to_value(&cfg).unwrap();
        assert_eq!(v["apiVersion"], "admissionregistration.k8s.io/v1");
        assert_eq!(v["kind"], "MutatingWebhookConfiguration");
        let hooks = v["webhooks"].as_array().unwrap();
        assert_eq!(hooks.len(), 2);
        for h in hooks {
            assert_eq!(h["failurePolicy"], "Fail");
            assert_eq!(h["sideEffects"], "None");
            assert_eq!(h["timeoutSeconds"], 5);
            assert_eq!(h["reinvocationPolicy"], "IfNeeded");
            assert_eq!(h["matchPolicy"], "Equivalent");
            assert_eq!(h["clientConfig"]["service"]["path"], "/inject");
            assert_eq!(h["clientConfig"]["service"]["namespace"], "mesh-system");
            // ByteString serialises as base64 of the PEM.
            assert_eq!(h["clientConfig"]["caBundle"], "UEVN");
            assert_eq!(h["rules"][0]["operations"][0], "CREATE");
            assert_eq!(h["rules"][0]["resources"][0], "pods");
            let ns = &h["namespaceSelector"]["matchExpressions"];
            assert_eq!(ns[1]["key"], "kubernetes.io/metadata.name");
            assert_eq!(ns[1]["operator"], "NotIn");
            assert_eq!(
                ns[1]["values"],
                serde_json::json!(["kube-system", "kube-public", "mesh-system"])
            );
        }
        assert_eq!(
            hooks[0]["namespaceSelector"]["matchExpressions"][0]["operator"],
            "In"
        );
        assert_eq!(
            hooks[1]["namespaceSelector"]["matchExpressions"][0]["operator"],
            "NotIn"
        );
        assert_eq!(
            hooks[1]["objectSelector"]["matchExpressions"][0],
            serde_json::json!({"key": "mesh.dev/inject", "operator": "In", "values": ["true"]})
        );
    }

    #[test]
    fn settings_are_used() {
        let cfg = webhook_configuration(
            b"x",
            &WebhookSettings {
                failure_policy: FailurePolicy::Ignore,
                timeout_seconds: 99,
                service_namespace: "other".into(),
                ..Default::default()
            },
        );
        let h = &cfg.webhooks.unwrap()[0];
        assert_eq!(h.failure_policy.as_deref(), Some("Ignore"));
        assert_eq!(h.timeout_seconds, Some(30));
        assert_eq!(h.client_config.service.as_ref().unwrap().namespace, "other");
    }
}
