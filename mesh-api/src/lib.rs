//! Kubernetes-facing names and types shared by every mesh binary: well-known
//! ports, labels and annotations, and SPIFFE workload identities.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod identity;
pub mod ports;
pub mod svid;

pub use identity::{IdentityError, WorkloadIdentity};

/// Namespace the control plane is installed in.
pub const INSTALL_NAMESPACE: &str = "mesh-system";
/// Namespace label that turns on sidecar injection (value `enabled`).
pub const INJECTION_LABEL: &str = "mesh-injection";
/// Pod annotation that opts a pod in (`"true"`) or out (`"false"`).
pub const INJECT_ANNOTATION: &str = "mesh.dev/inject";
/// Trust domain used when none is configured at install.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// UID and GID the proxy runs as; its own traffic is not redirected.
pub const PROXY_UID: u32 = 1337;
/// Audience of the projected ServiceAccount token that the CA accepts.
pub const CA_TOKEN_AUDIENCE: &str = "mesh-ca";
