//! Any mesh resource, and reading them from (multi-document) YAML as
//! `kubectl apply -f`, `meshctl` and the controller's local mode see them.

use kube::{Resource, ResourceExt};
use serde::Deserialize;

use crate::networking::{DestinationRule, Gateway, ServiceEntry, VirtualService};
use crate::security::{AuthorizationPolicy, PeerAuthentication};
use crate::validate::ResourceRef;

/// One mesh custom resource of any kind.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum MeshResource {
    /// `networking.mesh.dev/v1` VirtualService.
    VirtualService(VirtualService),
    /// `networking.mesh.dev/v1` DestinationRule.
    DestinationRule(DestinationRule),
    /// `networking.mesh.dev/v1` ServiceEntry.
    ServiceEntry(ServiceEntry),
    /// `networking.mesh.dev/v1` Gateway.
    Gateway(Gateway),
    /// `security.mesh.dev/v1` PeerAuthentication.
    PeerAuthentication(PeerAuthentication),
    /// `security.mesh.dev/v1` AuthorizationPolicy.
    AuthorizationPolicy(AuthorizationPolicy),
}

impl MeshResource {
    /// The resource's kind, e.g. `VirtualService`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::VirtualService(_) => "VirtualService",
            Self::DestinationRule(_) => "DestinationRule",
            Self::ServiceEntry(_) => "ServiceEntry",
            Self::Gateway(_) => "Gateway",
            Self::PeerAuthentication(_) => "PeerAuthentication",
            Self::AuthorizationPolicy(_) => "AuthorizationPolicy",
        }
    }

    /// Kind, namespace and name, as validation errors name them.
    pub fn resource_ref(&self) -> ResourceRef {
        match self {
            Self::VirtualService(r) => ResourceRef::of(r),
            Self::DestinationRule(r) => ResourceRef::of(r),
            Self::ServiceEntry(r) => ResourceRef::of(r),
            Self::Gateway(r) => ResourceRef::of(r),
            Self::PeerAuthentication(r) => ResourceRef::of(r),
            Self::AuthorizationPolicy(r) => ResourceRef::of(r),
        }
    }

    /// The resource as YAML (with `apiVersion` and `kind`).
    pub fn to_yaml(&self) -> Result<String, serde_yaml::Error> {
        match self {
            Self::VirtualService(r) => serde_yaml::to_string(r),
            Self::DestinationRule(r) => serde_yaml::to_string(r),
            Self::ServiceEntry(r) => serde_yaml::to_string(r),
            Self::Gateway(r) => serde_yaml::to_string(r),
            Self::PeerAuthentication(r) => serde_yaml::to_string(r),
            Self::AuthorizationPolicy(r) => serde_yaml::to_string(r),
        }
    }
}

/// Every mesh resource the validator (or the controller) considers together.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResourceSet {
    /// VirtualServices.
    pub virtual_services: Vec<VirtualService>,
    /// DestinationRules.
    pub destination_rules: Vec<DestinationRule>,
    /// ServiceEntries.
    pub service_entries: Vec<ServiceEntry>,
    /// Gateways.
    pub gateways: Vec<Gateway>,
    /// PeerAuthentications.
    pub peer_authentications: Vec<PeerAuthentication>,
    /// AuthorizationPolicies.
    pub authorization_policies: Vec<AuthorizationPolicy>,
}

impl ResourceSet {
    /// Adds one resource to the list of its kind.
    pub fn push(&mut self, resource: MeshResource) {
        match resource {
            MeshResource::VirtualService(r) => self.virtual_services.push(r),
            MeshResource::DestinationRule(r) => self.destination_rules.push(r),
            MeshResource::ServiceEntry(r) => self.service_entries.push(r),
            MeshResource::Gateway(r) => self.gateways.push(r),
            MeshResource::PeerAuthentication(r) => self.peer_authentications.push(r),
            MeshResource::AuthorizationPolicy(r) => self.authorization_policies.push(r),
        }
    }
}

impl FromIterator<MeshResource> for ResourceSet {
    fn from_iter<I: IntoIterator<Item = MeshResource>>(iter: I) -> Self {
        let mut set = Self::default();
        for r in iter {
            set.push(r);
        }
        set
    }
}

/// Why YAML could not be read as mesh resources.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not valid YAML, or not a valid resource of its kind (an unknown or
    /// mistyped field, a wrong type); serde's message names the field.
    #[error("document {document} (line {line}): {source}")]
    Yaml {
        /// 1-based index of the document in the stream.
        document: usize,
        /// 1-based line where the document starts.
        line: usize,
        /// serde's error, with the field path.
        #[source]
        source: serde_yaml::Error,
    },
    /// `apiVersion` or `kind` missing.
    #[error("document {document} (line {line}): apiVersion and kind are required")]
    MissingTypeMeta {
        /// 1-based index of the document.
        document: usize,
        /// 1-based line where the document starts.
        line: usize,
    },
    /// Not one of the mesh's kinds.
    #[error("document {document} (line {line}): {api_version}/{kind} is not a mesh resource (expected networking.mesh.dev/v1 VirtualService, DestinationRule, ServiceEntry, Gateway or security.mesh.dev/v1 PeerAuthentication, AuthorizationPolicy)")]
    UnknownKind {
        /// 1-based index of the document.
        document: usize,
        /// 1-based line where the document starts.
        line: usize,
        /// `apiVersion` found.
        api_version: String,
        /// `kind` found.
        kind: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    api_version: Option<String>,
    kind: Option<String>,
}

/// Parses a YAML stream (documents separated by `---`) into mesh resources.
/// Empty documents are skipped. Unknown fields are errors that name the field.
pub fn parse_yaml(text: &str) -> Result<Vec<MeshResource>, ParseError> {
    let mut out = Vec::new();
    for (index, (line, doc)) in split_documents(text).into_iter().enumerate() {
        let document = index + 1;
        let is_empty = doc
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
        if is_empty {
            continue;
        }
        let yaml = |source| ParseError::Yaml {
            document,
            line,
            source,
        };
        let meta: TypeMeta = serde_yaml::from_str(doc).map_err(yaml)?;
        let (Some(api_version), Some(kind)) = (meta.api_version, meta.kind) else {
            return Err(ParseError::MissingTypeMeta { document, line });
        };
        let resource = match (api_version.as_str(), kind.as_str()) {
            ("networking.mesh.dev/v1", "VirtualService") => {
                MeshResource::VirtualService(serde_yaml::from_str(doc).map_err(yaml)?)
            }
            ("networking.mesh.dev/v1", "DestinationRule") => {
                MeshResource::DestinationRule(serde_yaml::from_str(doc).map_err(yaml)?)
            }
            ("networking.mesh.dev/v1", "ServiceEntry") => {
                MeshResource::ServiceEntry(serde_yaml::from_str(doc).map_err(yaml)?)
            }
            ("networking.mesh.dev/v1", "Gateway") => {
                MeshResource::Gateway(serde_yaml::from_str(doc).map_err(yaml)?)
            }
            ("security.mesh.dev/v1", "PeerAuthentication") => {
                MeshResource::PeerAuthentication(serde_yaml::from_str(doc).map_err(yaml)?)
            }
            ("security.mesh.dev/v1", "AuthorizationPolicy") => {
                MeshResource::AuthorizationPolicy(serde_yaml::from_str(doc).map_err(yaml)?)
            }
            _ => {
                return Err(ParseError::UnknownKind {
                    document,
                    line,
                    api_version,
                    kind,
                })
            }
        };
        out.push(resource);
    }
    Ok(out)
}

/// Splits a YAML stream at `---` lines, keeping each document's first line
/// number so that errors can point into the original file.
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let content = line.trim_end();
        if content == "---" || content.starts_with("--- ") {
            docs.push((start_line, &text[start..offset]));
            start = offset + line.len();
            start_line = i + 2;
        }
        offset += line.len();
    }
    docs.push((start_line, &text[start..]));
    docs
}

/// The namespace of a resource, empty when unset.
pub(crate) fn namespace_of<K: Resource>(r: &K) -> String {
    r.namespace().unwrap_or_default()
}
