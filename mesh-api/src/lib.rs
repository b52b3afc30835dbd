//! Kubernetes-facing names and types shared by every mesh binary: well-known
//! ports, labels and annotations, SPIFFE workload identities, and the mesh's
//! custom resources with their semantic validation.
//!
//! - [`networking`] (`networking.mesh.dev/v1`): [`VirtualService`],
//!   [`DestinationRule`], [`ServiceEntry`], [`Gateway`].
//! - [`security`] (`security.mesh.dev/v1`): [`PeerAuthentication`],
//!   [`AuthorizationPolicy`].
//! - [`resource`]: any of them as a [`MeshResource`], parsed from YAML.
//! - [`validate`]: the checks behind the `Accepted` status condition.
//! - [`crds`]: the CustomResourceDefinitions, as written to `deploy/crds/`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "crds")]
pub mod crds;
#[cfg(feature = "crds")]
pub mod duration;
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
#[cfg(feature = "crds")]
pub mod networking;
pub mod ports;
#[cfg(feature = "crds")]
pub mod resource;
#[cfg(feature = "crds")]
pub mod security;
#[cfg(feature = "crds")]
pub mod status;
pub mod svid;
#[cfg(feature = "crds")]
pub mod validate;

#[cfg(feature = "crds")]
pub use duration::{parse_duration, DurationError};
pub use identity::{IdentityError, WorkloadIdentity};
#[cfg(feature = "crds")]
pub use networking::{DestinationRule, Gateway, ServiceEntry, VirtualService};
#[cfg(feature = "crds")]
pub use resource::{parse_yaml, MeshResource, ParseError, ResourceSet};
#[cfg(feature = "crds")]
pub use security::{AuthorizationPolicy, PeerAuthentication};
#[cfg(feature = "crds")]
pub use status::{Condition, ConditionStatus, MeshStatus};
#[cfg(feature = "crds")]
pub use validate::{ResourceRef, ValidationError};

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
