//! `networking.mesh.dev/v1`: traffic routing resources, shaped like Istio's
//! `networking.istio.io` resources for the fields the mesh supports.
//!
//! Field names and nesting follow Istio (camelCase) so that Istio users
//! recognise them; see `docs/crds.md` for what is and is not supported.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod destination_rule;
mod gateway;
mod service_entry;
mod virtual_service;

pub use destination_rule::*;
pub use gateway::*;
pub use service_entry::*;
pub use virtual_service::*;

/// API group of the networking resources.
pub const GROUP: &str = "networking.mesh.dev";

/// Matches a string exactly, by prefix or by regular expression (RE2 syntax as
/// in Istio, checked with the `regex` crate). At most one may be set; none set
/// means "any value" where that is allowed (header presence).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMatch {
    /// The whole string must equal this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The string must start with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The whole string must match this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

impl StringMatch {
    /// True when no kind of match is set.
    pub fn is_empty(&self) -> bool {
        self.exact.is_none() && self.prefix.is_none() && self.regex.is_none()
    }
}

/// A percentage, `0.0..=100.0`, as Istio's `Percent`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Percent {
    /// The percentage.
    pub value: f64,
}

/// A service port selected by number.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    /// Port number, `1..=65535`.
    pub number: u32,
}

/// Where traffic goes: a service (by host), optionally a subset of it and a port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    /// Service host: a Kubernetes service short name (resolved in the
    /// resource's namespace), a fully qualified name, or a ServiceEntry host.
    pub host: String,
    /// Subset name, defined by the DestinationRule for `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Port on the destination; needed only when the service has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
}

/// Header changes for requests and responses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Headers {
    /// Changes to the request, before it is forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HeaderOperations>,
    /// Changes to the response, before it is returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<HeaderOperations>,
}

/// Set, append or remove headers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOperations {
    /// Overwrite these headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Append these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Remove these headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// Protocol of a port on a ServiceEntry or a Gateway server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Protocol {
    /// HTTP/1.1 (or HTTP/2 with prior knowledge, detected).
    #[serde(rename = "HTTP")]
    Http,
    /// TLS with HTTP inside.
    #[serde(rename = "HTTPS")]
    Https,
    /// HTTP/2.
    #[serde(rename = "HTTP2")]
    Http2,
    /// gRPC (HTTP/2).
    #[serde(rename = "GRPC")]
    Grpc,
    /// Opaque TCP.
    #[serde(rename = "TCP")]
    Tcp,
    /// TLS, routed by SNI.
    #[serde(rename = "TLS")]
    Tls,
}

impl Protocol {
    /// The name as written in resources, e.g. `HTTPS`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "HTTP",
            Self::Https => "HTTPS",
            Self::Http2 => "HTTP2",
            Self::Grpc => "GRPC",
            Self::Tcp => "TCP",
            Self::Tls => "TLS",
        }
    }
}

/// A port with a number, a name and a protocol (Istio's `Port`/`ServicePort`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Port {
    /// Port number, `1..=65535`.
    pub number: u32,
    /// Protocol; unset means detect from the first bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Port name, unique within the resource.
    #[serde(default)]
    pub name: String,
}

/// gRPC status names (as Istio writes `fault.abort.grpcStatus`) and codes.
const GRPC_STATUS: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The numeric gRPC status for a name such as `UNAVAILABLE` (or a number
/// `0..=16` written as a string).
pub fn grpc_status_code(status: &str) -> Option<u32> {
    if let Ok(n) = status.parse::<u32>() {
        return (n < 17).then_some(n);
    }
    GRPC_STATUS
        .iter()
        .position(|s| *s == status)
        .and_then(|i| u32::try_from(i).ok())
}
