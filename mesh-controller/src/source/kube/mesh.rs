//! The six mesh CRDs as the Kubernetes source sees them: watched untyped
//! (as `DynamicObject`s) and decoded one object at a time, so that one
//! instance the Rust types reject cannot stop the list or the watch of its
//! kind.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kube::api::{ApiResource, DynamicObject, TypeMeta};
use kube::Resource;
use mesh_api::status::{MeshStatus, CONDITION_ACCEPTED, REASON_INVALID};
use mesh_api::{
    AuthorizationPolicy, Condition, DestinationRule, Gateway, MeshResource, PeerAuthentication,
    ResourceRef, ServiceEntry, VirtualService,
};
use serde::de::DeserializeOwned;
use tracing::{debug, error};

use super::status::StatusWriter;
use super::watch::{Applied, Handler};
use crate::source::ResourceStatus;
use crate::world::{Kind, ObjKey, Object};

/// One mesh CRD: its kind, where the API serves it, and how to decode it.
#[derive(Clone, Debug)]
pub(crate) struct MeshKind {
    /// `VirtualService`, ... (as [`MeshResource::kind`]).
    pub kind: &'static str,
    /// Group, version, plural.
    pub api: ApiResource,
    /// The CRD's name, `<plural>.<group>`, for messages.
    pub crd: String,
    decode: fn(serde_json::Value) -> Result<MeshResource, String>,
}

impl MeshKind {
    fn of<K>(
        kind: &'static str,
        decode: fn(serde_json::Value) -> Result<MeshResource, String>,
    ) -> Self
    where
        K: Resource<DynamicType = ()>,
    {
        let api = ApiResource::erase::<K>(&());
        Self {
            kind,
            crd: format!("{}.{}", api.plural, api.group),
            api,
            decode,
        }
    }

    /// Decodes one object of this kind; the error names the offending field.
    pub fn decode(&self, mut obj: DynamicObject) -> Result<MeshResource, String> {
        // List items may come without apiVersion/kind; the typed structs
        // want them.
        obj.types = Some(TypeMeta {
            api_version: self.api.api_version.clone(),
            kind: self.api.kind.clone(),
        });
        let value = serde_json::to_value(&obj).map_err(|e| e.to_string())?;
        (self.decode)(value)
    }
}

/// Decodes `value` as a `K`; the error starts with the path of the
/// offending field (`spec.http[0].route[0].destination.port.number: ...`).
fn decode<K: DeserializeOwned>(value: serde_json::Value) -> Result<K, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })
}

/// Every mesh CRD, in a stable order.
pub(crate) fn all() -> Vec<MeshKind> {
    vec![
        MeshKind::of::<VirtualService>("VirtualService", |v| {
            decode(v).map(MeshResource::VirtualService)
        }),
        MeshKind::of::<DestinationRule>("DestinationRule", |v| {
            decode(v).map(MeshResource::DestinationRule)
        }),
        MeshKind::of::<ServiceEntry>("ServiceEntry", |v| {
            decode(v).map(MeshResource::ServiceEntry)
        }),
        MeshKind::of::<Gateway>("Gateway", |v| decode(v).map(MeshResource::Gateway)),
        MeshKind::of::<PeerAuthentication>("PeerAuthentication", |v| {
            decode(v).map(MeshResource::PeerAuthentication)
        }),
        MeshKind::of::<AuthorizationPolicy>("AuthorizationPolicy", |v| {
            decode(v).map(MeshResource::AuthorizationPolicy)
        }),
    ]
}

/// The mesh CRD of `kind` (`VirtualService`, ...).
pub(crate) fn by_kind(kind: &str) -> Option<MeshKind> {
    all().into_iter().find(|k| k.kind == kind)
}

/// The `Accepted` condition an object carries, if it has a readable one.
fn accepted_condition(obj: &DynamicObject) -> Option<Condition> {
    let status = obj.data.get("status")?;
    let status: MeshStatus = serde_json::from_value(status.clone()).ok()?;
    status.condition(CONDITION_ACCEPTED).cloned()
}

/// Turns watch events of one mesh CRD into [`Object::Mesh`]es and tells the
/// status writer what each resource carries (and which ones are malformed).
pub(crate) struct MeshHandler {
    kind: MeshKind,
    what: String,
    status: Arc<StatusWriter>,
    /// Resources seen during the current relist.
    seen: HashSet<ResourceRef>,
    /// The last version of each resource that could be read: it stays in
    /// effect while a newer version is malformed.
    last_good: HashMap<ResourceRef, Object>,
}

impl MeshHandler {
    pub fn new(kind: MeshKind, status: Arc<StatusWriter>) -> Self {
        Self {
            what: kind.crd.clone(),
            kind,
            status,
            seen: HashSet::new(),
            last_good: HashMap::new(),
        }
    }

    fn resource_ref(&self, obj: &DynamicObject) -> ResourceRef {
        ResourceRef {
            kind: self.kind.kind.to_string(),
            namespace: obj.metadata.namespace.clone().unwrap_or_default(),
            name: obj.metadata.name.clone().unwrap_or_default(),
        }
    }
}

impl Handler<DynamicObject> for MeshHandler {
    fn kind(&self) -> Kind {
        Kind::Mesh(self.kind.kind)
    }

    fn what(&self) -> &str {
        &self.what
    }

    fn not_found_hint(&self) -> Option<String> {
        Some(format!(
            "the API server does not serve {} (is the CRD installed? `kubectl apply -f deploy/crds/`)",
            self.kind.crd
        ))
    }

    fn relist_started(&mut self) {
        self.seen.clear();
    }

    fn relist_done(&mut self) {
        self.status.retain_kind(self.kind.kind, &self.seen);
        let seen = &self.seen;
        self.last_good.retain(|r, _| seen.contains(r));
    }

    fn apply(&mut self, obj: DynamicObject) -> Applied {
        let rref = self.resource_ref(&obj);
        self.seen.insert(rref.clone());
        let uid = obj.metadata.uid.clone();
        let generation = obj.metadata.generation;
        let accepted = accepted_condition(&obj);
        match self.kind.decode(obj) {
            Ok(resource) => {
                debug!(resource = %rref, "mesh resource applied");
                let _ = self.status.observe(rref.clone(), uid, accepted, None);
                let obj = Object::Mesh(Arc::new(resource));
                self.last_good.insert(rref, obj.clone());
                Applied::Object(obj)
            }
            Err(message) => {
                let last_good = self.last_good.get(&rref).cloned();
                let message = if last_good.is_some() {
                    format!("{message} (the last accepted version stays in effect)")
                } else {
                    message
                };
                let status = ResourceStatus {
                    resource: rref.clone(),
                    generation,
                    accepted: false,
                    reason: REASON_INVALID.to_string(),
                    message: message.clone(),
                };
                // Logged once per version (our own status write comes back
                // as an event too).
                if self
                    .status
                    .observe(rref.clone(), uid, accepted, Some(status))
                {
                    error!(
                        resource = %rref,
                        "cannot read {rref}: {message}; the mesh ignores it until it is fixed"
                    );
                } else {
                    debug!(resource = %rref, "still malformed: {message}");
                }
                let key = ObjKey::new(&rref.namespace, &rref.name);
                Applied::Rejected(key, last_good)
            }
        }
    }

    fn delete(&mut self, obj: DynamicObject) -> ObjKey {
        let rref = self.resource_ref(&obj);
        debug!(resource = %rref, "mesh resource deleted");
        self.status.forget(&rref);
        self.last_good.remove(&rref);
        ObjKey::new(rref.namespace, rref.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dynamic(value: serde_json::Value) -> DynamicObject {
        serde_json::from_value(value).expect("a DynamicObject")
    }

    #[test]
    fn kinds_match_the_typed_resources() {
        let kinds = all();
        assert_eq!(kinds.len(), 6);
        for k in &kinds {
            assert_eq!(k.api.kind, k.kind);
        }
        let vs = by_kind("VirtualService").expect("known");
        assert_eq!(vs.crd, "virtualservices.networking.mesh.dev");
        assert_eq!(vs.api.api_version, "networking.mesh.dev/v1");
        assert_eq!(
            by_kind("AuthorizationPolicy").expect("known").crd,
            "authorizationpolicies.security.mesh.dev"
        );
        assert!(by_kind("Pod").is_none());
    }

    #[test]
    fn decodes_each_kind_into_its_variant() {
        for k in all() {
            let obj = dynamic(json!({
                "metadata": {"name": "r", "namespace": "ns", "generation": 3},
                "spec": {},
            }));
            match k.decode(obj) {
                Ok(r) => {
                    assert_eq!(r.kind(), k.kind);
                    assert_eq!(r.resource_ref().to_string(), format!("{} ns/r", k.kind));
                }
                // Kinds with required spec fields reject `{}`; that is fine
                // as long as the error names the field.
                Err(e) => assert!(e.starts_with("spec"), "{}: {e}", k.kind),
            }
        }
    }

    #[test]
    fn malformed_object_error_names_the_field() {
        let vs = by_kind("VirtualService").expect("known");
        let obj = dynamic(json!({
            "apiVersion": "networking.mesh.dev/v1",
            "kind": "VirtualService",
            "metadata": {"name": "bad", "namespace": "ns"},
            "spec": {"hosts": ["a"], "http": [{"route": [{"destination": {"host": "a", "port": {"number": 5_000_000_000u64}}}]}]},
        }));
        let err = vs.decode(obj).expect_err("port out of range");
        assert!(
            err.starts_with("spec.http[0].route[0].destination.port.number: "),
            "{err}"
        );
    }

    #[test]
    fn reads_the_accepted_condition() {
        let obj = dynamic(json!({
            "metadata": {"name": "r", "namespace": "ns"},
            "spec": {},
            "status": {"conditions": [{"type": "Accepted", "status": "False", "reason": "Invalid", "message": "m", "observedGeneration": 2}]},
        }));
        let c = accepted_condition(&obj).expect("has one");
        assert_eq!(c.reason, "Invalid");
        assert_eq!(c.observed_generation, Some(2));
        let obj = dynamic(json!({"metadata": {"name": "r"}, "status": {"conditions": "junk"}}));
        assert!(accepted_condition(&obj).is_none());
    }
}
