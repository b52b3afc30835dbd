//! The controller's input state: everything the sources have told it, in
//! the shape the sources deliver it (Kubernetes objects and mesh resources).
//!
//! Sources never touch the [`World`] directly: they send [`Change`]s on a
//! channel; one task applies them in order and asks for a push. That keeps
//! the world single-writer and makes every source (the Kubernetes API, a
//! directory of YAML, a test) look the same to the pipeline.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use mesh_api::{MeshResource, ResourceRef};

/// Pod annotation naming the port a pod's proxy accepts mesh mTLS on when
/// no iptables redirect exists (local mode); see `Endpoint.mesh_port`.
pub const INBOUND_PORT_ANNOTATION: &str = "mesh.dev/inbound-port";

/// Annotation on a Service (or its Namespace, as the default for its
/// Services) listing the namespaces whose proxies may see it: `*` for all,
/// or names separated by commas. Without it a Service is visible in its own
/// namespace only (plus to proxies whose routes name it).
pub const EXPORT_TO_ANNOTATION: &str = "mesh.dev/export-to";

/// Name of the injected sidecar container; a pod with it is meshed.
pub const PROXY_CONTAINER: &str = "mesh-proxy";

/// `namespace/name` of a namespaced object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjKey {
    pub namespace: String,
    pub name: String,
}

impl ObjKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub fn of<K: kube::Resource>(obj: &K) -> Self {
        Self::new(obj.namespace().unwrap_or_default(), obj.name_any())
    }
}

impl std::fmt::Display for ObjKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What the mesh needs of a Pod (the full object is large and pods are many).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    pub ips: Vec<String>,
    /// Runs the mesh sidecar (so it has an identity and accepts mTLS).
    pub meshed: bool,
    /// [`INBOUND_PORT_ANNOTATION`], when set.
    pub inbound_port: Option<u32>,
}

impl PodInfo {
    pub fn from_pod(pod: &Pod) -> Self {
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let mut ips: Vec<String> = status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|ips| ips.iter().map(|ip| ip.ip.clone()).collect())
            .unwrap_or_default();
        if ips.is_empty() {
            ips.extend(status.and_then(|s| s.pod_ip.clone()));
        }
        let has_proxy = |containers: Option<&Vec<k8s_openapi::api::core::v1::Container>>| {
            containers.is_some_and(|cs| cs.iter().any(|c| c.name == PROXY_CONTAINER))
        };
        let annotations = pod.annotations();
        Self {
            namespace: pod.namespace().unwrap_or_default(),
            name: pod.name_any(),
            labels: pod.labels().clone(),
            service_account: spec
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into()),
            ips,
            meshed: spec.is_some_and(|s| {
                has_proxy(Some(&s.containers)) || has_proxy(s.init_containers.as_ref())
            }) || annotations.contains_key(INBOUND_PORT_ANNOTATION),
            inbound_port: annotations
                .get(INBOUND_PORT_ANNOTATION)
                .and_then(|p| p.parse().ok()),
        }
    }
}

/// What the mesh needs of a Namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl NamespaceInfo {
    pub fn from_namespace(ns: &Namespace) -> Self {
        Self {
            name: ns.name_any(),
            labels: ns.labels().clone(),
            annotations: ns.annotations().clone(),
        }
    }
}

/// One object a source reports.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Object {
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    Pod(Arc<PodInfo>),
    Namespace(Arc<NamespaceInfo>),
    Mesh(Arc<MeshResource>),
}

/// Which collection an object belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
    Pod,
    Namespace,
    /// Mesh resources of one kind (`VirtualService`, ...).
    Mesh(&'static str),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Pod(_) => Kind::Pod,
            Object::Namespace(_) => Kind::Namespace,
            Object::Mesh(r) => Kind::Mesh(r.kind()),
        }
    }

    pub fn key(&self) -> ObjKey {
        match self {
            Object::Service(s) => ObjKey::of(s.as_ref()),
            Object::EndpointSlice(s) => ObjKey::of(s.as_ref()),
            Object::Pod(p) => ObjKey::new(&p.namespace, &p.name),
            Object::Namespace(n) => ObjKey::new("", &n.name),
            Object::Mesh(r) => {
                let r = r.resource_ref();
                ObjKey::new(r.namespace, r.name)
            }
        }
    }
}

/// A change reported by a source.
#[derive(Clone, Debug)]
pub enum Change {
    /// Created or updated.
    Upsert(Object),
    /// Deleted.
    Delete(Kind, ObjKey),
    /// The complete current list of one kind (after a (re)list): objects of
    /// that kind not in the list are gone.
    Replace(Kind, Vec<Object>),
}

/// Everything the sources have reported, keyed for lookups.
#[derive(Clone, Debug, Default)]
pub struct World {
    pub services: BTreeMap<ObjKey, Arc<Service>>,
    pub endpoint_slices: BTreeMap<ObjKey, Arc<EndpointSlice>>,
    pub pods: BTreeMap<ObjKey, Arc<PodInfo>>,
    pub namespaces: BTreeMap<String, Arc<NamespaceInfo>>,
    /// Mesh resources as last reported (valid or not).
    pub resources: BTreeMap<ResourceRef, Arc<MeshResource>>,
}

/// What a change touched, so that the push can be incremental.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    /// Only these Services (`namespace/name`) changed (their Service object
    /// or their EndpointSlices).
    pub services: BTreeSet<ObjKey>,
    /// Something else changed (pods, namespaces, mesh resources): the whole
    /// model is rebuilt.
    pub full: bool,
}

impl Touched {
    pub fn merge(&mut self, other: Touched) {
        self.full |= other.full;
        self.services.extend(other.services);
    }

    pub fn is_empty(&self) -> bool {
        !self.full && self.services.is_empty()
    }
}

/// The Service an EndpointSlice belongs to (its `kubernetes.io/service-name`
/// label).
pub fn slice_service(slice: &EndpointSlice) -> Option<ObjKey> {
    let name = slice.labels().get("kubernetes.io/service-name")?;
    Some(ObjKey::new(slice.namespace().unwrap_or_default(), name))
}

impl World {
    /// Applies one change; returns what it touched (empty when nothing
    /// actually changed, e.g. a resync that repeats what is known).
    pub fn apply(&mut self, change: Change) -> Touched {
        match change {
            Change::Upsert(obj) => self.upsert(obj),
            Change::Delete(kind, key) => self.delete(kind, &key),
            Change::Replace(kind, objects) => {
                let keep: BTreeSet<ObjKey> = objects.iter().map(Object::key).collect();
                let gone: Vec<ObjKey> = self
                    .keys(kind)
                    .into_iter()
                    .filter(|k| !keep.contains(k))
                    .collect();
                let mut touched = Touched::default();
                for k in gone {
                    touched.merge(self.delete(kind, &k));
                }
                for obj in objects {
                    touched.merge(self.upsert(obj));
                }
                touched
            }
        }
    }

    fn keys(&self, kind: Kind) -> Vec<ObjKey> {
        match kind {
            Kind::Service => self.services.keys().cloned().collect(),
            Kind::EndpointSlice => self.endpoint_slices.keys().cloned().collect(),
            Kind::Pod => self.pods.keys().cloned().collect(),
            Kind::Namespace => self.namespaces.keys().map(|n| ObjKey::new("", n)).collect(),
            Kind::Mesh(k) => self
                .resources
                .keys()
                .filter(|r| r.kind == k)
                .map(|r| ObjKey::new(&r.namespace, &r.name))
                .collect(),
        }
    }

    fn upsert(&mut self, obj: Object) -> Touched {
        let key = obj.key();
        match obj {
            Object::Service(s) => {
                if self
                    .services
                    .get(&key)
                    .is_some_and(|old| same_service(old, &s))
                {
                    return Touched::default();
                }
                self.services.insert(key.clone(), s);
                service_touched(key)
            }
            Object::EndpointSlice(s) => {
                let old = self.endpoint_slices.get(&key);
                if old.is_some_and(|o| o.endpoints == s.endpoints && o.ports == s.ports) {
                    return Touched::default();
                }
                let mut touched = Touched::default();
                touched.services.extend(old.and_then(|o| slice_service(o)));
                touched.services.extend(slice_service(&s));
                self.endpoint_slices.insert(key, s);
                touched
            }
            Object::Pod(p) => {
                if self.pods.get(&key).is_some_and(|old| **old == *p) {
                    return Touched::default();
                }
                self.pods.insert(key, p);
                full()
            }
            Object::Namespace(n) => {
                if self.namespaces.get(&n.name).is_some_and(|old| **old == *n) {
                    return Touched::default();
                }
                self.namespaces.insert(n.name.clone(), n);
                full()
            }
            Object::Mesh(r) => {
                let rref = r.resource_ref();
                if self
                    .resources
                    .get(&rref)
                    .is_some_and(|old| same_spec(old, &r))
                {
                    return Touched::default();
                }
                self.resources.insert(rref, r);
                full()
            }
        }
    }

    fn delete(&mut self, kind: Kind, key: &ObjKey) -> Touched {
        match kind {
            Kind::Service => match self.services.remove(key) {
                Some(_) => service_touched(key.clone()),
                None => Touched::default(),
            },
            Kind::EndpointSlice => match self.endpoint_slices.remove(key) {
                Some(old) => Touched {
                    services: slice_service(&old).into_iter().collect(),
                    full: false,
                },
                None => Touched::default(),
            },
            Kind::Pod => match self.pods.remove(key) {
                Some(_) => full(),
                None => Touched::default(),
            },
            Kind::Namespace => match self.namespaces.remove(&key.name) {
                Some(_) => full(),
                None => Touched::default(),
            },
            Kind::Mesh(k) => {
                let rref = ResourceRef {
                    kind: k.to_string(),
                    namespace: key.namespace.clone(),
                    name: key.name.clone(),
                };
                match self.resources.remove(&rref) {
                    Some(_) => full(),
                    None => Touched::default(),
                }
            }
        }
    }
}

fn full() -> Touched {
    Touched {
        services: BTreeSet::new(),
        full: true,
    }
}

fn service_touched(key: ObjKey) -> Touched {
    Touched {
        services: [key].into_iter().collect(),
        full: false,
    }
}

/// Services compare by what the mesh reads (status and managed fields churn).
fn same_service(a: &Service, b: &Service) -> bool {
    a.spec == b.spec
        && a.metadata.labels == b.metadata.labels
        && a.metadata.annotations == b.metadata.annotations
}

/// Mesh resources compare by spec and generation-independent metadata, so
/// our own status writes do not trigger a rebuild.
fn same_spec(a: &MeshResource, b: &MeshResource) -> bool {
    use MeshResource::*;
    match (a, b) {
        (VirtualService(x), VirtualService(y)) => {
            x.spec == y.spec && x.metadata.labels == y.metadata.labels
        }
        (DestinationRule(x), DestinationRule(y)) => {
            x.spec == y.spec && x.metadata.labels == y.metadata.labels
        }
        (ServiceEntry(x), ServiceEntry(y)) => {
            x.spec == y.spec && x.metadata.labels == y.metadata.labels
        }
        (Gateway(x), Gateway(y)) => x.spec == y.spec && x.metadata.labels == y.metadata.labels,
        (PeerAuthentication(x), PeerAuthentication(y)) => {
            x.spec == y.spec && x.metadata.labels == y.metadata.labels
        }
        (AuthorizationPolicy(x), AuthorizationPolicy(y)) => {
            x.spec == y.spec && x.metadata.labels == y.metadata.labels
        }
        _ => false,
    }
}
