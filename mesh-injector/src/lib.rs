//! The mesh's sidecar injector: the rules that decide which pods get the
//! proxy and the JSON patch (RFC 6902) that adds it ([`inject`]), its
//! configuration ([`InjectorConfig`]), the `MutatingWebhookConfiguration`
//! that routes pods to it ([`webhook_configuration`]), and the HTTPS webhook
//! server ([`server`]).
//!
//! The library is pure apart from [`server`]: `meshctl inject -f` runs
//! [`inject_pod`] offline on YAML with the same result as the webhook.
//! What gets injected and why is in `docs/injector.md`.
#![forbid(unsafe_code)]

pub mod annotations;
pub mod config;
pub mod inject;
pub mod probes;
pub mod server;
pub mod webhook;

pub use annotations::AnnotationError;
pub use config::{ConfigError, InjectorConfig, NativeSidecar, ProxyResources};
pub use inject::{
    apply_patch, inject, inject_pod, workload_name, Decision, InjectError, NamespaceInfo,
    SkipReason, INIT_CONTAINER, PROXY_CONTAINER,
};
pub use webhook::{
    webhook_configuration, FailurePolicy, WebhookSettings, CONFIGMAP_NAME, CONFIG_KEY,
    SERVICE_NAME, SERVICE_PORT, TLS_SECRET_NAME, WEBHOOK_CONFIGURATION_NAME,
};

/// Whether an API server of this version supports native sidecars (init
/// containers with `restartPolicy: Always`, on by default since 1.29).
/// `minor` may carry a suffix (`"29+"` on some distributions).
pub fn supports_native_sidecars(major: &str, minor: &str) -> bool {
    let num = |s: &str| -> Option<u32> {
        let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    match (num(major), num(minor)) {
        (Some(major), Some(minor)) => (major, minor) >= (1, 29),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn native_sidecars_from_1_29() {
        use super::supports_native_sidecars as s;
        assert!(s("1", "29"));
        assert!(s("1", "34+"));
        assert!(s("2", "0"));
        assert!(!s("1", "28"));
        assert!(!s("1", "28+"));
        assert!(!s("", ""));
        assert!(!s("one", "29"));
    }
}
