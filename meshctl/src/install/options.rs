//! What an installation is made of: registry, tag, trust domain, replica
//! counts, failure policy. One struct, one validation, typed errors that name
//! the flag that was wrong.

use std::fmt;

/// Registry the project's images are published under by default: the local
/// e2e cluster imports them with this name (see `deploy/images/build`).
pub const DEFAULT_REGISTRY: &str = "mesh.local";

/// Images are tagged with the workspace version, so a `meshctl` installs the
/// control plane it was built with.
pub const DEFAULT_TAG: &str = env!("CARGO_PKG_VERSION");

/// One replica each: the control plane keeps working (proxies keep their
/// config and certificates) while a single replica restarts.
pub const DEFAULT_REPLICAS: u16 = 1;

/// Upper bound on replicas; more is a typo rather than a plan.
pub const MAX_REPLICAS: u16 = 100;

/// The namespace everything but the CRDs, cluster RBAC and the webhook
/// configuration lives in. Fixed: the CA and the controller look for each
/// other (and their Secret and Lease) there.
pub const NAMESPACE: &str = mesh_api::INSTALL_NAMESPACE;

/// Image pull policy of the control plane's Deployments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PullPolicy {
    /// Always pull.
    #[value(name = "Always")]
    Always,
    /// Pull when the node does not have the image (default).
    #[value(name = "IfNotPresent")]
    IfNotPresent,
    /// Never pull: images are imported into the nodes (local e2e cluster).
    #[value(name = "Never")]
    Never,
}

impl PullPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// What the API server does with a pod when the injector cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailurePolicy {
    /// Refuse the pod (default): no pod in a meshed namespace ever runs
    /// without its proxy by accident.
    #[value(name = "Fail")]
    Fail,
    /// Admit the pod without a proxy.
    #[value(name = "Ignore")]
    Ignore,
}

impl FailurePolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fail => "Fail",
            Self::Ignore => "Ignore",
        }
    }
}

/// A control-plane component that `meshctl install` deploys and waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Component {
    /// `mesh-ca`.
    Ca,
    /// `mesh-controller`.
    Controller,
    /// `mesh-injector`.
    Injector,
}

impl Component {
    /// Every component, in the order they are applied.
    pub const ALL: [Component; 3] = [Self::Ca, Self::Controller, Self::Injector];

    /// Name of its Deployment, Service, ServiceAccount and image.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ca => "mesh-ca",
            Self::Controller => "mesh-controller",
            Self::Injector => "mesh-injector",
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything that varies between installations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallOptions {
    /// Image registry (`mesh.local`, `ghcr.io/acme`): images are
    /// `<registry>/<component>:<tag>`.
    pub registry: String,
    /// Image tag.
    pub tag: String,
    /// Image pull policy.
    pub pull_policy: PullPolicy,
    /// Trust domain of the workload identities.
    pub trust_domain: String,
    /// `mesh-ca` replicas.
    pub ca_replicas: u16,
    /// `mesh-controller` replicas.
    pub controller_replicas: u16,
    /// `mesh-injector` replicas.
    pub injector_replicas: u16,
    /// Webhook failure policy.
    pub failure_policy: FailurePolicy,
}

impl Default for InstallOptions {
    fn default() -> Self {
        Self {
            registry: DEFAULT_REGISTRY.to_string(),
            tag: DEFAULT_TAG.to_string(),
            pull_policy: PullPolicy::IfNotPresent,
            trust_domain: mesh_api::DEFAULT_TRUST_DOMAIN.to_string(),
            ca_replicas: DEFAULT_REPLICAS,
            controller_replicas: DEFAULT_REPLICAS,
            injector_replicas: DEFAULT_REPLICAS,
            failure_policy: FailurePolicy::Fail,
        }
    }
}

/// An option that cannot work; the message names the flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// `--registry` is not a registry host with an optional path.
    #[error("--registry {value:?}: {why}")]
    Registry {
        /// What was given.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// `--tag` is not a valid image tag.
    #[error(
        "--tag {value:?}: an image tag is 1 to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'"
    )]
    Tag {
        /// What was given.
        value: String,
    },
    /// `--trust-domain` is not a valid SPIFFE trust domain.
    #[error("--trust-domain {value:?}: {why}")]
    TrustDomain {
        /// What was given.
        value: String,
        /// Why mesh-api refused it.
        why: String,
    },
    /// A replica count out of range.
    #[error("--{flag} {value}: must be between 1 and {MAX_REPLICAS}")]
    Replicas {
        /// The flag.
        flag: &'static str,
        /// What was given.
        value: u16,
    },
}

impl InstallOptions {
    /// Checks every option; the first problem found is returned.
    pub fn validate(&self) -> Result<(), OptionsError> {
        validate_registry(&self.registry)?;
        validate_tag(&self.tag)?;
        mesh_api::WorkloadIdentity::new(&self.trust_domain, "ns", "sa").map_err(|e| {
            OptionsError::TrustDomain {
                value: self.trust_domain.clone(),
                why: e.to_string(),
            }
        })?;
        for (flag, value) in [
            ("ca-replicas", self.ca_replicas),
            ("controller-replicas", self.controller_replicas),
            ("injector-replicas", self.injector_replicas),
        ] {
            if value == 0 || value > MAX_REPLICAS {
                return Err(OptionsError::Replicas { flag, value });
            }
        }
        Ok(())
    }

    /// `<registry>/<name>:<tag>`.
    pub fn image(&self, name: &str) -> String {
        format!("{}/{name}:{}", self.registry, self.tag)
    }

    /// Replicas of one component.
    pub fn replicas(&self, c: Component) -> u16 {
        match c {
            Component::Ca => self.ca_replicas,
            Component::Controller => self.controller_replicas,
            Component::Injector => self.injector_replicas,
        }
    }
}

fn validate_registry(r: &str) -> Result<(), OptionsError> {
    let bad = |why| {
        Err(OptionsError::Registry {
            value: r.to_string(),
            why,
        })
    };
    if r.is_empty() {
        return bad("must not be empty");
    }
    if r.contains("://") {
        return bad("give the registry without a scheme (ghcr.io/acme, not https://ghcr.io/acme)");
    }
    if r.starts_with('/') || r.ends_with('/') || r.contains("//") {
        return bad("no leading, trailing or doubled '/'");
    }
    let ok = r
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | ':'));
    if !ok {
        return bad("only letters, digits and . - _ / : are allowed");
    }
    if r.chars().any(|c| c.is_ascii_uppercase()) {
        return bad("image references are lower case");
    }
    Ok(())
}

fn validate_tag(t: &str) -> Result<(), OptionsError> {
    let ok = !t.is_empty()
        && t.len() <= 128
        && !t.starts_with(['.', '-'])
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(OptionsError::Tag {
            value: t.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let o = InstallOptions::default();
        o.validate().unwrap();
        assert_eq!(
            o.image("mesh-ca"),
            format!("mesh.local/mesh-ca:{}", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn registries() {
        for good in [
            "mesh.local",
            "ghcr.io/acme",
            "localhost:5000/mesh",
            "a_b-c.d",
        ] {
            let o = InstallOptions {
                registry: good.into(),
                ..Default::default()
            };
            o.validate().unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for (bad, says) in [
            ("", "must not be empty"),
            ("https://ghcr.io/acme", "without a scheme"),
            ("ghcr.io/acme/", "trailing"),
            ("ghcr.io//acme", "doubled"),
            ("ghcr.io/a cme", "only letters"),
            ("GHCR.io", "lower case"),
        ] {
            let o = InstallOptions {
                registry: bad.into(),
                ..Default::default()
            };
            let e = o.validate().unwrap_err().to_string();
            assert!(e.starts_with("--registry"), "{e}");
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn tags() {
        for good in ["0.1.0", "v1", "latest", "1.2.3-rc.1", "a_b"] {
            let o = InstallOptions {
                tag: good.into(),
                ..Default::default()
            };
            o.validate().unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in ["", ".x", "-x", "a:b", "a/b", &"x".repeat(129)] {
            let o = InstallOptions {
                tag: bad.into(),
                ..Default::default()
            };
            let e = o.validate().unwrap_err();
            assert!(matches!(e, OptionsError::Tag { .. }), "{bad:?}: {e}");
            assert!(e.to_string().starts_with("--tag"));
        }
    }

    #[test]
    fn trust_domain_and_replicas() {
        let o = InstallOptions {
            trust_domain: "Not A Domain/".into(),
            ..Default::default()
        };
        let e = o.validate().unwrap_err().to_string();
        assert!(e.starts_with("--trust-domain \"Not A Domain/\""), "{e}");

        let o = InstallOptions {
            controller_replicas: 0,
            ..Default::default()
        };
        assert_eq!(
            o.validate().unwrap_err().to_string(),
            "--controller-replicas 0: must be between 1 and 100"
        );
        let o = InstallOptions {
            injector_replicas: 101,
            ..Default::default()
        };
        assert!(o.validate().is_err());
    }
}
