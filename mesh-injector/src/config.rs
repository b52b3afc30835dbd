//! The injector's configuration: the YAML file `config.yaml` of the ConfigMap
//! `mesh-injector` in `mesh-system`, mounted into the webhook's pod. Every
//! field is optional; a missing file means all defaults.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::annotations::{parse_proxy_duration, parse_quantity, AnnotationError};

/// The proxy image (and the init container's, which runs `mesh-proxy init`
/// from the same binary): built and tagged with the workspace version, so an
/// injector always injects the proxy it was released with.
pub const DEFAULT_PROXY_IMAGE: &str = concat!("mesh.local/mesh-proxy:", env!("CARGO_PKG_VERSION"));

/// Address of the controller's config stream (`host:port`, mTLS).
pub const DEFAULT_CONTROLLER_ADDRESS: &str = "mesh-controller.mesh-system.svc:15010";

/// Address of the CA. The proxy dials it with tonic, which needs the scheme.
pub const DEFAULT_CA_ADDRESS: &str = mesh_api::svid::CA_ADDRESS;

/// CPU request of the proxy: an idle proxy uses ~1m; 10m keeps the scheduler
/// honest without reserving a core's worth per pod.
pub const DEFAULT_PROXY_CPU_REQUEST: &str = "10m";
/// Memory request: idle RSS is ~8 MB, a proxy with a large mesh ~30 MB.
pub const DEFAULT_PROXY_MEMORY_REQUEST: &str = "32Mi";
/// Memory limit: a leak or a config explosion kills the proxy, not the node.
pub const DEFAULT_PROXY_MEMORY_LIMIT: &str = "128Mi";

/// How long the proxy lets in-flight requests finish after SIGTERM.
pub const DEFAULT_DRAIN_TIMEOUT: &str = "5s";
/// Lifetime the proxy asks the CA for (the CA's own default).
pub const DEFAULT_IDENTITY_TTL: &str = "24h";
/// The proxy's log filter.
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// Whether the proxy is injected as a native sidecar (an init container with
/// `restartPolicy: Always`, Kubernetes ≥ 1.29) or as a plain container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NativeSidecar {
    /// Native when the cluster supports it (the webhook asks the API server
    /// its version at start).
    #[default]
    Auto,
    /// Always native (the cluster is known to support it).
    Always,
    /// Never native: the proxy is the first of the pod's containers.
    Never,
}

impl NativeSidecar {
    /// Whether to inject natively, given what the cluster supports.
    pub fn resolve(self, cluster_supports_native_sidecars: bool) -> bool {
        match self {
            Self::Auto => cluster_supports_native_sidecars,
            Self::Always => true,
            Self::Never => false,
        }
    }
}

impl std::str::FromStr for NativeSidecar {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            other => Err(format!("{other:?} is not one of auto, always, never")),
        }
    }
}

/// Resource requests and limits of the proxy (and init) container, as
/// Kubernetes quantities. A field left out keeps its default; `null` sets no
/// request or limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ProxyResources {
    /// CPU request (default `10m`).
    pub cpu_request: Option<String>,
    /// Memory request (default `32Mi`).
    pub memory_request: Option<String>,
    /// CPU limit (default none: a CPU limit throttles the proxy, and with it
    /// every request of the app, long before it protects the node).
    pub cpu_limit: Option<String>,
    /// Memory limit (default `128Mi`).
    pub memory_limit: Option<String>,
}

impl Default for ProxyResources {
    fn default() -> Self {
        Self {
            cpu_request: Some(DEFAULT_PROXY_CPU_REQUEST.into()),
            memory_request: Some(DEFAULT_PROXY_MEMORY_REQUEST.into()),
            cpu_limit: None,
            memory_limit: Some(DEFAULT_PROXY_MEMORY_LIMIT.into()),
        }
    }
}

/// Everything the injector needs to know to build the patch. The YAML keys
/// are the camelCase field names, e.g.
///
/// ```yaml
/// proxyImage: registry.example/mesh-proxy:0.1.0
/// nativeSidecar: never
/// proxyResources:
///   cpuRequest: 50m
///   memoryLimit: 256Mi
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct InjectorConfig {
    /// Image of the sidecar (`mesh-proxy run`).
    pub proxy_image: String,
    /// Image of the init container (`mesh-proxy init`); the proxy image when
    /// unset.
    pub init_image: Option<String>,
    /// `imagePullPolicy` of both injected containers (`IfNotPresent`).
    pub image_pull_policy: String,
    /// Requests and limits of the sidecar; the pod annotations
    /// `mesh.dev/proxy-cpu` etc. override them per pod.
    pub proxy_resources: ProxyResources,
    /// `MESH_CONTROLLER_ADDR` of the proxy (`host:port`).
    pub controller_address: String,
    /// `MESH_CA_ADDR` of the proxy (URL with scheme).
    pub ca_address: String,
    /// `MESH_TRUST_DOMAIN` of the proxy.
    pub trust_domain: String,
    /// `MESH_LOG` of the proxy (tracing filter syntax, e.g. `info` or
    /// `info,mesh_proxy::discovery=debug`).
    pub log_level: String,
    /// `auto` (default), `always` or `never`: see [`NativeSidecar`].
    pub native_sidecar: NativeSidecar,
    /// `MESH_DRAIN_TIMEOUT` of the proxy (duration, `5s`).
    pub drain_timeout: String,
    /// `MESH_IDENTITY_TTL` of the proxy (duration, `24h`).
    pub identity_ttl: String,
    /// Rewrite the app's kubelet probes to go through the proxy's port
    /// 15020 (default true; needed under STRICT mTLS). A pod can turn it off
    /// with `mesh.dev/rewrite-probes: "false"`.
    pub rewrite_probes: bool,
}

impl Default for InjectorConfig {
    fn default() -> Self {
        Self {
            proxy_image: DEFAULT_PROXY_IMAGE.into(),
            init_image: None,
            image_pull_policy: "IfNotPresent".into(),
            proxy_resources: ProxyResources::default(),
            controller_address: DEFAULT_CONTROLLER_ADDRESS.into(),
            ca_address: DEFAULT_CA_ADDRESS.into(),
            trust_domain: mesh_api::DEFAULT_TRUST_DOMAIN.into(),
            log_level: DEFAULT_LOG_LEVEL.into(),
            native_sidecar: NativeSidecar::Auto,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT.into(),
            identity_ttl: DEFAULT_IDENTITY_TTL.into(),
            rewrite_probes: true,
        }
    }
}

/// Why the configuration is unusable. Each variant names the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not match [`InjectorConfig`].
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The YAML error (with line and column).
        #[source]
        source: serde_yaml::Error,
    },
    /// A field has a value the proxy or Kubernetes would refuse.
    #[error("{field}: {reason}")]
    Invalid {
        /// The camelCase field name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl InjectorConfig {
    /// Parses YAML (an empty document means all defaults) and validates it.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let cfg: Self = if text.trim().is_empty() {
            Self::default()
        } else {
            serde_yaml::from_str(text).map_err(|source| ConfigError::Parse {
                path: origin.to_string(),
                source,
            })?
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Loads `path`; a missing file means all defaults (the ConfigMap is
    /// optional).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_yaml(&text, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// The init container's image.
    pub fn init_image(&self) -> &str {
        self.init_image.as_deref().unwrap_or(&self.proxy_image)
    }

    /// Checks what Kubernetes or the proxy would only refuse later, when a pod
    /// starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: String| Err(ConfigError::Invalid { field, reason });
        if self.proxy_image.trim().is_empty() {
            return invalid("proxyImage", "must not be empty".into());
        }
        if self
            .init_image
            .as_deref()
            .is_some_and(|i| i.trim().is_empty())
        {
            return invalid("initImage", "must not be empty when set".into());
        }
        if !matches!(
            self.image_pull_policy.as_str(),
            "Always" | "IfNotPresent" | "Never"
        ) {
            return invalid(
                "imagePullPolicy",
                format!(
                    "{:?} is not one of Always, IfNotPresent, Never",
                    self.image_pull_policy
                ),
            );
        }
        for (field, value) in [
            ("controllerAddress", &self.controller_address),
            ("caAddress", &self.ca_address),
            ("trustDomain", &self.trust_domain),
            ("logLevel", &self.log_level),
        ] {
            if value.trim().is_empty() {
                return invalid(field, "must not be empty".into());
            }
        }
        if !self.ca_address.starts_with("https://") {
            return invalid(
                "caAddress",
                format!(
                    "{:?} must be an https:// URL (the proxy dials the CA over TLS)",
                    self.ca_address
                ),
            );
        }
        for (field, value) in [
            ("drainTimeout", &self.drain_timeout),
            ("identityTtl", &self.identity_ttl),
        ] {
            if let Err(AnnotationError { reason, .. }) = parse_proxy_duration("", value) {
                return invalid(field, reason);
            }
        }
        let r = &self.proxy_resources;
        for (field, value) in [
            ("proxyResources.cpuRequest", &r.cpu_request),
            ("proxyResources.memoryRequest", &r.memory_request),
            ("proxyResources.cpuLimit", &r.cpu_limit),
            ("proxyResources.memoryLimit", &r.memory_limit),
        ] {
            if let Some(v) = value {
                if let Err(AnnotationError { reason, .. }) = parse_quantity("", v) {
                    return invalid(field, reason);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        let cfg = InjectorConfig::from_yaml("", "t").unwrap();
        assert_eq!(cfg, InjectorConfig::default());
        assert_eq!(
            cfg.proxy_image,
            format!("mesh.local/mesh-proxy:{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(cfg.init_image(), cfg.proxy_image);
    }

    #[test]
    fn fields_are_camel_case_and_partial() {
        let cfg = InjectorConfig::from_yaml(
            "initImage: x/init:1\nnativeSidecar: never\nproxyResources:\n  cpuLimit: 500m\n",
            "t",
        )
        .unwrap();
        assert_eq!(cfg.init_image(), "x/init:1");
        assert_eq!(cfg.native_sidecar, NativeSidecar::Never);
        assert_eq!(cfg.proxy_resources.cpu_limit.as_deref(), Some("500m"));
        // A partial block keeps the defaults it does not name...
        assert_eq!(cfg.proxy_resources.memory_request.as_deref(), Some("32Mi"));
        // ...and `null` removes one.
        let cfg = InjectorConfig::from_yaml("proxyResources:\n  memoryLimit: null\n", "t").unwrap();
        assert_eq!(cfg.proxy_resources.memory_limit, None);
        assert_eq!(cfg.proxy_resources.cpu_request.as_deref(), Some("10m"));
    }

    #[test]
    fn unknown_and_bad_fields_are_named() {
        let e = InjectorConfig::from_yaml("proxyImag: x\n", "cm").unwrap_err();
        assert!(e.to_string().contains("proxyImag"), "{e}");
        let e = InjectorConfig::from_yaml("drainTimeout: 5\n", "cm").unwrap_err();
        assert!(e.to_string().starts_with("drainTimeout:"), "{e}");
        let e =
            InjectorConfig::from_yaml("proxyResources:\n  memoryLimit: lots\n", "cm").unwrap_err();
        assert!(
            e.to_string().starts_with("proxyResources.memoryLimit:"),
            "{e}"
        );
        let e = InjectorConfig::from_yaml("caAddress: mesh-ca:15012\n", "cm").unwrap_err();
        assert!(e.to_string().starts_with("caAddress:"), "{e}");
        let e = InjectorConfig::from_yaml("nativeSidecar: sometimes\n", "cm").unwrap_err();
        assert!(e.to_string().contains("sometimes"), "{e}");
    }

    #[test]
    fn missing_file_is_the_defaults() {
        let cfg = InjectorConfig::load(Path::new("/nonexistent/mesh/config.yaml")).unwrap();
        assert_eq!(cfg, InjectorConfig::default());
    }

    #[test]
    fn native_sidecar_resolution() {
        assert!(NativeSidecar::Auto.resolve(true));
        assert!(!NativeSidecar::Auto.resolve(false));
        assert!(NativeSidecar::Always.resolve(false));
        assert!(!NativeSidecar::Never.resolve(true));
    }
}
