//! World → one immutable, versioned [`Snapshot`] of the mesh: every service
//! with its endpoints, routes and destination policy as the proxy's proto
//! messages, plus the inbound policies, ready to be cut into per-proxy
//! views by [`crate::view`].
//!
//! Invalid resources never reach a proxy: each one is validated; a resource
//! whose new version is invalid keeps its last accepted version in the
//! model (or stays out if it never had one) and gets `Accepted=False`.
//! Services whose proto is unchanged keep the very same `Arc` from the
//! previous snapshot, so streams diff by pointer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Service as KubeService, ServicePort as KubeServicePort};
use kube::ResourceExt;
use mesh_api::networking::{
    self as net, ClientTlsMode, DestinationRule, HttpRoute as VsHttpRoute, ServiceEntry, SimpleLb,
    VirtualService,
};
use mesh_api::security::{AuthorizationAction, AuthorizationPolicy, MtlsMode, PeerAuthentication};
use mesh_api::validate::{self, resolve_host, CLUSTER_DOMAIN, MESH_GATEWAY};
use mesh_api::{MeshResource, ResourceRef, ResourceSet, ValidationError, WorkloadIdentity};
use mesh_proto::config::v1 as pb;

pub mod gateway;
pub use gateway::GatewayModel;

use crate::source::ResourceStatus;
use crate::world::{slice_service, NamespaceInfo, ObjKey, PodInfo, World, EXPORT_TO_ANNOTATION};

/// Who may see a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Export {
    /// Every namespace.
    All,
    /// Its own namespace plus these.
    Namespaces(BTreeSet<String>),
}

impl Export {
    /// Parses an export list (`*`, or namespaces separated by commas; `.`
    /// is the service's own namespace).
    pub fn parse(value: &str) -> Self {
        let names: BTreeSet<String> = value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty() && *s != ".")
            .map(String::from)
            .collect();
        if names.contains("*") {
            Export::All
        } else {
            Export::Namespaces(names)
        }
    }

    pub(crate) fn allows(&self, own: &str, ns: &str) -> bool {
        own == ns
            || match self {
                Export::All => true,
                Export::Namespaces(n) => n.contains(ns),
            }
    }
}

/// One service of the model.
#[derive(Debug)]
pub struct ServiceModel {
    pub proto: Arc<pb::Service>,
    /// Hash of the encoded proto (stable across processes: maps are
    /// BTreeMaps), for view versions.
    pub hash: u64,
    pub export: Export,
    /// Other services this one's routes send to or mirror to (fully
    /// qualified names): a proxy that sees this one sees them too.
    pub references: Vec<String>,
}

/// A workload-selecting policy, compiled.
#[derive(Clone, Debug, PartialEq)]
pub struct Selected<T> {
    /// Namespace it applies to; `None` for the root namespace (the whole mesh).
    pub namespace: Option<String>,
    /// Labels a workload must carry; `None` for every workload in scope.
    pub selector: Option<BTreeMap<String, String>>,
    pub value: T,
}

impl<T> Selected<T> {
    pub fn applies_to(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.namespace.as_deref().is_none_or(|n| n == namespace)
            && self
                .selector
                .as_ref()
                .is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
    }

    /// 0: mesh-wide, 1: namespace-wide, 2: workload.
    pub fn specificity(&self) -> u8 {
        match (&self.namespace, &self.selector) {
            (None, _) => 0,
            (Some(_), None) => 1,
            (Some(_), Some(_)) => 2,
        }
    }
}

/// PeerAuthentication, compiled: `None` modes inherit.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerAuthModel {
    pub mode: Option<pb::PeerAuthMode>,
    pub port_modes: BTreeMap<u32, pb::PeerAuthMode>,
}

/// The whole mesh at one version.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub version: u64,
    /// When it was built (push latency is measured from here).
    pub built_at: Option<std::time::Instant>,
    /// By fully qualified name.
    pub services: HashMap<String, Arc<ServiceModel>>,
    pub peer_auth: Vec<Selected<PeerAuthModel>>,
    pub authz: Vec<Selected<Arc<pb::AuthorizationPolicy>>>,
    /// Gateways with their bound routes, by namespace/name.
    pub gateways: Vec<GatewayModel>,
    /// Shared by consecutive snapshots until a pod changes.
    pub pods: Arc<HashMap<ObjKey, Arc<PodInfo>>>,
    pub trust_bundle: Arc<Vec<String>>,
    /// Every mesh resource's `Accepted` status.
    pub statuses: Vec<ResourceStatus>,
    /// Per-namespace visible service lists, filled on first use.
    pub(crate) visible_cache: Mutex<HashMap<String, Arc<crate::view::Visible>>>,
}

/// Settings of the translation.
#[derive(Clone, Debug)]
pub struct TranslateConfig {
    pub trust_domain: String,
    /// Namespace whose unselective PeerAuthentication/AuthorizationPolicy
    /// apply to the whole mesh.
    pub root_namespace: String,
    /// Export of Services with no [`EXPORT_TO_ANNOTATION`] on them or their
    /// namespace.
    pub default_export: Export,
}

impl Default for TranslateConfig {
    fn default() -> Self {
        Self {
            trust_domain: mesh_api::DEFAULT_TRUST_DOMAIN.into(),
            root_namespace: mesh_api::INSTALL_NAMESPACE.into(),
            default_export: Export::Namespaces(BTreeSet::new()),
        }
    }
}

/// Builds snapshots; keeps what must survive between builds (the last
/// accepted version of each resource, the previous snapshot's services).
#[derive(Debug)]
pub struct Translator {
    config: TranslateConfig,
    accepted: BTreeMap<ResourceRef, Arc<MeshResource>>,
    previous: Option<Arc<Snapshot>>,
    /// Endpoints per Service, reused when the Service was not touched.
    endpoints: HashMap<ObjKey, Arc<Vec<pb::Endpoint>>>,
    next_version: u64,
}

impl Translator {
    pub fn new(config: TranslateConfig) -> Self {
        Self {
            config,
            accepted: BTreeMap::new(),
            previous: None,
            endpoints: HashMap::new(),
            next_version: 1,
        }
    }

    pub fn config(&self) -> &TranslateConfig {
        &self.config
    }

    /// Builds the next snapshot. `touched` names the Services whose
    /// endpoints may have changed when nothing else did (only Services and
    /// EndpointSlices changed since the last build); `None` recomputes
    /// everything.
    pub fn build(
        &mut self,
        world: &World,
        touched: Option<&BTreeSet<ObjKey>>,
        trust_bundle: Arc<Vec<String>>,
    ) -> Arc<Snapshot> {
        let (resources, statuses) = self.accept(world);
        match touched {
            None => self.endpoints.clear(),
            Some(keys) => {
                for k in keys {
                    self.endpoints.remove(k);
                }
            }
        }
        let mut services: HashMap<String, ServiceBuild> = HashMap::new();
        // An incremental build (only Services and EndpointSlices changed)
        // keeps each untouched Service's model from the previous snapshot:
        // nothing it is built from changed.
        let mut kept: HashMap<String, Arc<ServiceModel>> = HashMap::new();
        let slices = slices_by_service(world);
        for (key, svc) in &world.services {
            if let (Some(keys), Some(previous)) = (touched, &self.previous) {
                let name = service_host(&key.name, &key.namespace);
                match previous.services.get(&name) {
                    Some(model) if !keys.contains(key) => {
                        kept.insert(name, model.clone());
                        continue;
                    }
                    _ => {}
                }
            }
            let endpoints = self
                .endpoints
                .entry(key.clone())
                .or_insert_with(|| {
                    Arc::new(service_endpoints(
                        svc,
                        slices.get(key).map(Vec::as_slice).unwrap_or(&[]),
                        world,
                        &self.config.trust_domain,
                    ))
                })
                .clone();
            let b = kube_service(svc, &endpoints, world, &self.config);
            services.insert(b.proto.name.clone(), b);
        }
        self.endpoints.retain(|k, _| world.services.contains_key(k));
        for se in &resources.service_entries {
            for b in service_entry(se) {
                // A Kubernetes Service of the same name wins.
                if !kept.contains_key(&b.proto.name) {
                    services.entry(b.proto.name.clone()).or_insert(b);
                }
            }
        }
        for dr in &resources.destination_rules {
            let host = resolve_host(&dr.spec.host, &namespace_of(dr));
            if let Some(b) = services.get_mut(&host) {
                b.proto.policy = Some(destination_policy(dr));
            }
        }
        for vs in &resources.virtual_services {
            let ns = namespace_of(vs);
            let for_mesh =
                vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == MESH_GATEWAY);
            if !for_mesh {
                continue;
            }
            for host in &vs.spec.hosts {
                let host = resolve_host(host, &ns);
                if let Some(b) = services.get_mut(&host) {
                    let (http, tcp, refs) = routes(vs, &ns, &host);
                    b.proto.http_routes = http;
                    b.proto.tcp_routes = tcp;
                    b.references = refs;
                }
            }
        }

        let previous = self.previous.take();
        let services = services
            .into_iter()
            .map(|(name, b)| {
                let (proto, hash) = match previous
                    .as_ref()
                    .and_then(|p| p.services.get(&name))
                    .filter(|old| *old.proto == b.proto)
                {
                    Some(old) => (old.proto.clone(), old.hash),
                    None => {
                        let hash = hash_message(&b.proto);
                        (Arc::new(b.proto), hash)
                    }
                };
                let model = ServiceModel {
                    proto,
                    hash,
                    export: b.export,
                    references: b.references,
                };
                (name, Arc::new(model))
            })
            .chain(kept)
            .collect();

        let snapshot = Arc::new(Snapshot {
            version: self.next_version,
            built_at: Some(std::time::Instant::now()),
            services,
            peer_auth: resources
                .peer_authentications
                .iter()
                .map(|pa| peer_auth(pa, &self.config.root_namespace))
                .collect(),
            authz: resources
                .authorization_policies
                .iter()
                .map(|ap| authorization(ap, &self.config.root_namespace))
                .collect(),
            gateways: gateway::gateways(&resources.gateways, &resources.virtual_services),
            pods: match (touched, &previous) {
                // Pods did not change (a pod's change makes a full build).
                (Some(_), Some(p)) => p.pods.clone(),
                _ => Arc::new(
                    world
                        .pods
                        .iter()
                        .map(|(k, p)| (k.clone(), p.clone()))
                        .collect(),
                ),
            },
            trust_bundle,
            statuses,
            visible_cache: Mutex::new(HashMap::new()),
        });
        self.next_version += 1;
        self.previous = Some(snapshot.clone());
        snapshot
    }

    /// Validates every reported resource; returns the set the model is
    /// built from (new valid versions, else last accepted ones) and the
    /// status of each reported resource.
    fn accept(&mut self, world: &World) -> (ResourceSet, Vec<ResourceStatus>) {
        self.accepted.retain(|r, _| world.resources.contains_key(r));
        let mut errors: BTreeMap<ResourceRef, Vec<ValidationError>> = BTreeMap::new();
        for (rref, res) in &world.resources {
            let errs = validate::validate_resource(res);
            if errs.is_empty() {
                continue;
            }
            errors.insert(rref.clone(), errs);
        }
        // Candidates: new versions that passed alone, else the last good.
        let candidates = |errors: &BTreeMap<ResourceRef, Vec<ValidationError>>| {
            world
                .resources
                .iter()
                .filter_map(|(rref, res)| {
                    if errors.contains_key(rref) {
                        self.accepted.get(rref).cloned()
                    } else {
                        Some(res.clone())
                    }
                })
                .collect::<Vec<_>>()
        };
        // Cross-resource checks (references, conflicts) blame a resource;
        // a blamed new version falls back to its last good one. Two rounds
        // settle it: the second only sees versions already accepted once.
        for _ in 0..2 {
            let set: ResourceSet = candidates(&errors)
                .into_iter()
                .map(|r| (*r).clone())
                .collect();
            let mut new_errors = false;
            for e in validate::validate_set(&set) {
                // Single-resource errors are already known.
                if errors.get(&e.resource).is_some_and(|v| v.contains(&e)) {
                    continue;
                }
                let blamed_new = world
                    .resources
                    .get(&e.resource)
                    .is_some_and(|r| self.accepted.get(&e.resource) != Some(r));
                if blamed_new || !self.accepted.contains_key(&e.resource) {
                    errors.entry(e.resource.clone()).or_default().push(e);
                    new_errors = true;
                }
            }
            if !new_errors {
                break;
            }
        }
        let model: Vec<Arc<MeshResource>> = candidates(&errors);
        let mut statuses = Vec::with_capacity(world.resources.len());
        for (rref, res) in &world.resources {
            let generation = generation_of(res);
            match errors.get(rref) {
                None => {
                    self.accepted.insert(rref.clone(), res.clone());
                    statuses.push(ResourceStatus {
                        resource: rref.clone(),
                        generation,
                        accepted: true,
                        reason: mesh_api::status::REASON_ACCEPTED.into(),
                        message: String::new(),
                    });
                }
                Some(errs) => {
                    let lines: Vec<String> = errs
                        .iter()
                        .map(|e| format!("{}: {}", e.field, e.message))
                        .collect();
                    let keeping = if self.accepted.contains_key(rref) {
                        " (the last accepted version stays in effect)"
                    } else {
                        ""
                    };
                    statuses.push(ResourceStatus {
                        resource: rref.clone(),
                        generation,
                        accepted: false,
                        reason: mesh_api::status::REASON_INVALID.into(),
                        message: format!("{}{keeping}", lines.join("; ")),
                    });
                }
            }
        }
        let set = model.into_iter().map(|r| (*r).clone()).collect();
        (set, statuses)
    }
}

/// A stable hash of a message's encoding.
pub fn hash_message<M: prost::Message>(m: &M) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    m.encode_to_vec().hash(&mut h);
    h.finish()
}

fn generation_of(res: &MeshResource) -> Option<i64> {
    match res {
        MeshResource::VirtualService(r) => r.metadata.generation,
        MeshResource::DestinationRule(r) => r.metadata.generation,
        MeshResource::ServiceEntry(r) => r.metadata.generation,
        MeshResource::Gateway(r) => r.metadata.generation,
        MeshResource::PeerAuthentication(r) => r.metadata.generation,
        MeshResource::AuthorizationPolicy(r) => r.metadata.generation,
    }
}

fn namespace_of<K: kube::Resource>(r: &K) -> String {
    r.namespace().unwrap_or_else(|| "default".into())
}

/// A service while the snapshot is assembled.
struct ServiceBuild {
    proto: pb::Service,
    export: Export,
    references: Vec<String>,
}

fn slices_by_service(
    world: &World,
) -> HashMap<ObjKey, Vec<&k8s_openapi::api::discovery::v1::EndpointSlice>> {
    let mut by: HashMap<ObjKey, Vec<_>> = HashMap::new();
    for slice in world.endpoint_slices.values() {
        if let Some(svc) = slice_service(slice) {
            by.entry(svc).or_default().push(slice.as_ref());
        }
    }
    by
}

/// Fully qualified name of a Kubernetes Service.
pub fn service_host(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}.svc.{CLUSTER_DOMAIN}")
}

fn kube_service(
    svc: &KubeService,
    endpoints: &Arc<Vec<pb::Endpoint>>,
    world: &World,
    config: &TranslateConfig,
) -> ServiceBuild {
    let name = svc.name_any();
    let ns = svc.namespace().unwrap_or_default();
    let spec = svc.spec.clone().unwrap_or_default();
    let addresses = spec
        .cluster_ips
        .clone()
        .filter(|ips| !ips.is_empty())
        .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
        .unwrap_or_default()
        .into_iter()
        .filter(|ip| !ip.is_empty() && ip != "None")
        .collect();
    let ports = spec
        .ports
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .map(|p| pb::ServicePort {
            port: p.port as u32,
            name: p.name.clone().unwrap_or_default(),
            protocol: port_protocol(p) as i32,
        })
        .collect();
    let export = svc
        .annotations()
        .get(EXPORT_TO_ANNOTATION)
        .or_else(|| {
            world
                .namespaces
                .get(&ns)
                .and_then(|n: &Arc<NamespaceInfo>| n.annotations.get(EXPORT_TO_ANNOTATION))
        })
        .map(|v| Export::parse(v))
        .unwrap_or_else(|| config.default_export.clone());
    ServiceBuild {
        proto: pb::Service {
            name: service_host(&name, &ns),
            namespace: ns.clone(),
            addresses,
            ports,
            endpoints: endpoints.as_ref().clone(),
            aliases: vec![
                name.clone(),
                format!("{name}.{ns}"),
                format!("{name}.{ns}.svc"),
            ],
            ..Default::default()
        },
        export,
        references: Vec::new(),
    }
}

/// A port's protocol from `appProtocol`, else its name's prefix (Istio's
/// convention: `http-web`, `grpc`, `tcp-db`); unknown means detect.
pub fn port_protocol(p: &KubeServicePort) -> pb::Protocol {
    let by = |s: &str| match s.to_ascii_lowercase().as_str() {
        "http" | "http1" | "kubernetes.io/http" => Some(pb::Protocol::Http1),
        "http2" | "h2c" | "kubernetes.io/h2c" => Some(pb::Protocol::Http2),
        "grpc" | "grpc-web" => Some(pb::Protocol::Grpc),
        "tcp" | "mongo" | "mysql" | "redis" => Some(pb::Protocol::Tcp),
        "tls" | "https" | "kubernetes.io/wss" => Some(pb::Protocol::Tls),
        _ => None,
    };
    if let Some(proto) = p.app_protocol.as_deref().and_then(by) {
        return proto;
    }
    p.name
        .as_deref()
        .and_then(|n| by(n.split('-').next().unwrap_or(n)))
        .unwrap_or(pb::Protocol::Unspecified)
}

/// The endpoints of one Service from its EndpointSlices: ready addresses,
/// each service port mapped to the endpoint's target port (slices name
/// their ports like the Service does), with the pod's identity and labels.
fn service_endpoints(
    svc: &KubeService,
    slices: &[&k8s_openapi::api::discovery::v1::EndpointSlice],
    world: &World,
    trust_domain: &str,
) -> Vec<pb::Endpoint> {
    let service_ports: Vec<&KubeServicePort> = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .map(|p| p.iter().collect())
        .unwrap_or_default();
    let ns = svc.namespace().unwrap_or_default();
    // Keyed by (address, pod) so an endpoint listed in two slices (one per
    // port) becomes one endpoint with both ports.
    let mut out: BTreeMap<(String, String), pb::Endpoint> = BTreeMap::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let slice_ports = slice.ports.as_deref().unwrap_or(&[]);
        let mut ports = BTreeMap::new();
        for sp in &service_ports {
            let wanted = sp.name.as_deref().unwrap_or("");
            let target = slice_ports
                .iter()
                .find(|p| p.name.as_deref().unwrap_or("") == wanted)
                .and_then(|p| p.port);
            if let Some(t) = target {
                ports.insert(sp.port as u32, t as u32);
            }
        }
        if ports.is_empty() {
            continue;
        }
        for ep in &slice.endpoints {
            if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            let pod = ep
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| {
                    let pns = r.namespace.clone().unwrap_or_else(|| ns.clone());
                    world
                        .pods
                        .get(&ObjKey::new(pns, r.name.clone().unwrap_or_default()))
                });
            for address in &ep.addresses {
                // Without a pod, each slice's address is its own endpoint
                // (local mode: many backends on 127.0.0.1, one slice each).
                let who = match pod {
                    Some(p) => p.name.clone(),
                    None => format!("slice:{}", slice.metadata.name.as_deref().unwrap_or("")),
                };
                let entry = out
                    .entry((address.clone(), who))
                    .or_insert_with(|| pb::Endpoint {
                        address: address.clone(),
                        ..Default::default()
                    });
                entry.ports.extend(ports.iter().map(|(k, v)| (*k, *v)));
                if let Some(pod) = pod {
                    entry.pod = pod.name.clone();
                    entry.labels = pod.labels.clone().into_iter().collect();
                    if pod.meshed {
                        entry.identity = WorkloadIdentity::new(
                            trust_domain,
                            &pod.namespace,
                            &pod.service_account,
                        )
                        .map(|id| id.uri())
                        .unwrap_or_default();
                        entry.mesh_port = pod.inbound_port.unwrap_or(0);
                    }
                }
            }
        }
    }
    out.into_values().collect()
}

/// A ServiceEntry's services (one per host).
fn service_entry(se: &ServiceEntry) -> Vec<ServiceBuild> {
    let ns = namespace_of(se);
    let spec = &se.spec;
    let external = !matches!(spec.location, Some(net::Location::MeshInternal));
    let dns = matches!(spec.resolution, Some(net::Resolution::Dns));
    let ports: Vec<pb::ServicePort> = spec
        .ports
        .iter()
        .map(|p| pb::ServicePort {
            port: p.number,
            name: p.name.clone(),
            protocol: match p.protocol {
                Some(net::Protocol::Http) => pb::Protocol::Http1,
                Some(net::Protocol::Http2) => pb::Protocol::Http2,
                Some(net::Protocol::Grpc) => pb::Protocol::Grpc,
                Some(net::Protocol::Tcp) => pb::Protocol::Tcp,
                Some(net::Protocol::Https | net::Protocol::Tls) => pb::Protocol::Tls,
                None => pb::Protocol::Unspecified,
            } as i32,
        })
        .collect();
    spec.hosts
        .iter()
        .map(|host| {
            let endpoints = if spec.endpoints.is_empty() && dns {
                // DNS resolution with no endpoints: the host itself.
                vec![pb::Endpoint {
                    address: host.clone(),
                    ports: ports.iter().map(|p| (p.port, p.port)).collect(),
                    ..Default::default()
                }]
            } else {
                spec.endpoints
                    .iter()
                    .map(|we| pb::Endpoint {
                        address: we.address.clone(),
                        ports: ports
                            .iter()
                            .map(|p| (p.port, we.ports.get(&p.name).copied().unwrap_or(p.port)))
                            .collect(),
                        labels: we.labels.clone().into_iter().collect(),
                        weight: we.weight.unwrap_or(0),
                        ..Default::default()
                    })
                    .collect()
            };
            ServiceBuild {
                proto: pb::Service {
                    name: host.clone(),
                    namespace: ns.clone(),
                    addresses: spec.addresses.clone(),
                    ports: ports.clone(),
                    endpoints,
                    external,
                    resolution: if dns {
                        pb::Resolution::Dns
                    } else {
                        pb::Resolution::Static
                    } as i32,
                    ..Default::default()
                },
                // Istio's default for ServiceEntries: visible everywhere.
                export: Export::All,
                references: Vec::new(),
            }
        })
        .collect()
}

fn ms(d: Option<&String>) -> u64 {
    d.and_then(|s| mesh_api::parse_duration(s).ok())
        .map(|d: Duration| d.as_millis() as u64)
        .unwrap_or(0)
}

fn destination_policy(dr: &DestinationRule) -> pb::DestinationPolicy {
    let tp = dr.spec.traffic_policy.clone().unwrap_or_default();
    pb::DestinationPolicy {
        load_balancer: tp.load_balancer.as_ref().map(load_balancer),
        connection_pool: tp.connection_pool.as_ref().map(connection_pool),
        outlier_detection: tp.outlier_detection.as_ref().map(outlier_detection),
        tls: tp.tls.as_ref().map(|t| pb::UpstreamTls {
            mode: match t.mode {
                ClientTlsMode::Disable => pb::upstream_tls::Mode::Disable,
                ClientTlsMode::Simple => pb::upstream_tls::Mode::Simple,
                ClientTlsMode::Mutual => pb::upstream_tls::Mode::Mutual,
                ClientTlsMode::IstioMutual => pb::upstream_tls::Mode::Auto,
            } as i32,
            sni: t.sni.clone().unwrap_or_default(),
            ca_certificates_pem: t.ca_certificates.clone().unwrap_or_default(),
            subject_alt_names: t.subject_alt_names.clone(),
            client_certificate_path: t.client_certificate.clone().unwrap_or_default(),
            private_key_path: t.private_key.clone().unwrap_or_default(),
        }),
        subsets: dr
            .spec
            .subsets
            .iter()
            .map(|s| {
                let tp = s.traffic_policy.clone().unwrap_or_default();
                pb::Subset {
                    name: s.name.clone(),
                    labels: s.labels.clone().into_iter().collect(),
                    load_balancer: tp.load_balancer.as_ref().map(load_balancer),
                    connection_pool: tp.connection_pool.as_ref().map(connection_pool),
                    outlier_detection: tp.outlier_detection.as_ref().map(outlier_detection),
                }
            })
            .collect(),
    }
}

fn load_balancer(lb: &net::LoadBalancerSettings) -> pb::LoadBalancer {
    use pb::load_balancer::Kind;
    if let Some(ch) = &lb.consistent_hash {
        use pb::consistent_hash::Key;
        let key = if let Some(h) = &ch.http_header_name {
            Some(Key::HeaderName(h.clone()))
        } else if let Some(c) = &ch.http_cookie {
            Some(Key::CookieName(c.name.clone()))
        } else {
            ch.use_source_ip.map(Key::UseSourceIp)
        };
        return pb::LoadBalancer {
            kind: Kind::ConsistentHash as i32,
            consistent_hash: Some(pb::ConsistentHash { key }),
        };
    }
    let kind = match lb.simple {
        Some(SimpleLb::RoundRobin) => Kind::RoundRobin,
        Some(SimpleLb::LeastRequest) => Kind::LeastRequest,
        Some(SimpleLb::Random) => Kind::Random,
        Some(SimpleLb::P2cEwma) | None => Kind::P2cEwma,
    };
    pb::LoadBalancer {
        kind: kind as i32,
        consistent_hash: None,
    }
}

fn connection_pool(cp: &net::ConnectionPoolSettings) -> pb::ConnectionPool {
    let tcp = cp.tcp.clone().unwrap_or_default();
    let http = cp.http.clone().unwrap_or_default();
    pb::ConnectionPool {
        max_connections: tcp.max_connections.unwrap_or(0),
        max_pending_requests: http.http1_max_pending_requests.unwrap_or(0),
        max_requests_per_connection: http.max_requests_per_connection.unwrap_or(0),
        connect_timeout_ms: ms(tcp.connect_timeout.as_ref()),
        idle_timeout_ms: ms(http.idle_timeout.as_ref()),
    }
}

fn outlier_detection(od: &net::OutlierDetection) -> pb::OutlierDetection {
    pb::OutlierDetection {
        consecutive_5xx: od.consecutive_5xx_errors.unwrap_or(0),
        consecutive_gateway_errors: od.consecutive_gateway_errors.unwrap_or(0),
        interval_ms: ms(od.interval.as_ref()),
        base_ejection_time_ms: ms(od.base_ejection_time.as_ref()),
        max_ejection_percent: od.max_ejection_percent.unwrap_or(0).clamp(0, 100) as u32,
    }
}

fn string_match(m: &net::StringMatch) -> Option<pb::StringMatch> {
    use pb::string_match::Kind;
    let kind = if let Some(v) = &m.exact {
        Kind::Exact(v.clone())
    } else if let Some(v) = &m.prefix {
        Kind::Prefix(v.clone())
    } else {
        Kind::Regex(m.regex.clone()?)
    };
    Some(pb::StringMatch { kind: Some(kind) })
}

fn header_ops(h: Option<&net::HeaderOperations>) -> Option<pb::HeaderOps> {
    h.map(|h| pb::HeaderOps {
        set: h.set.clone().into_iter().collect(),
        add: h.add.clone().into_iter().collect(),
        remove: h.remove.clone(),
    })
}

fn destination(d: &net::Destination, ns: &str) -> pb::Destination {
    pb::Destination {
        service: resolve_host(&d.host, ns),
        subset: d.subset.clone().unwrap_or_default(),
        port: d.port.as_ref().map(|p| p.number).unwrap_or(0),
    }
}

/// A VirtualService's routes for one of its hosts, and the services they
/// reference (other than `host`).
fn routes(
    vs: &VirtualService,
    ns: &str,
    host: &str,
) -> (Vec<pb::HttpRoute>, Vec<pb::TcpRoute>, Vec<String>) {
    let mut refs = BTreeSet::new();
    let http = vs
        .spec
        .http
        .iter()
        .enumerate()
        .map(|(i, r)| http_route(r, i, ns, &mut refs))
        .collect();
    let tcp = vs
        .spec
        .tcp
        .iter()
        .flat_map(|t| {
            let dests: Vec<pb::WeightedDestination> = t
                .route
                .iter()
                .map(|d| {
                    let dest = destination(&d.destination, ns);
                    refs.insert(dest.service.clone());
                    pb::WeightedDestination {
                        destination: Some(dest),
                        weight: weight(d.weight, t.route.len()),
                        ..Default::default()
                    }
                })
                .collect();
            let ports: Vec<u32> = if t.match_.is_empty() {
                vec![0]
            } else {
                t.match_.iter().map(|m| m.port.unwrap_or(0)).collect()
            };
            ports.into_iter().map(move |port| pb::TcpRoute {
                port,
                destinations: dests.clone(),
            })
        })
        .collect();
    refs.remove(host);
    (http, tcp, refs.into_iter().collect())
}

/// Istio: a lone destination without a weight takes all traffic.
fn weight(w: Option<i32>, of: usize) -> u32 {
    match w {
        Some(w) => w.max(0) as u32,
        None if of == 1 => 100,
        None => 0,
    }
}

fn http_route(
    r: &VsHttpRoute,
    index: usize,
    ns: &str,
    refs: &mut BTreeSet<String>,
) -> pb::HttpRoute {
    let matches = r
        .match_
        .iter()
        .map(|m| {
            let mut headers: Vec<pb::HeaderMatch> = m
                .headers
                .iter()
                .map(|(name, v)| pb::HeaderMatch {
                    name: name.clone(),
                    value: string_match(v),
                    absent: false,
                })
                .collect();
            headers.extend(m.without_headers.keys().map(|name| pb::HeaderMatch {
                name: name.clone(),
                value: None,
                absent: true,
            }));
            pb::HttpMatch {
                uri: m.uri.as_ref().and_then(string_match),
                headers,
                method: m.method.as_ref().and_then(string_match),
                query_params: m
                    .query_params
                    .iter()
                    .map(|(name, v)| pb::QueryMatch {
                        name: name.clone(),
                        value: string_match(v),
                    })
                    .collect(),
                source_labels: m.source_labels.clone().into_iter().collect(),
                port: m.port.unwrap_or(0),
            }
        })
        .collect();
    let destinations = r
        .route
        .iter()
        .map(|d| {
            let dest = destination(&d.destination, ns);
            refs.insert(dest.service.clone());
            let h = d.headers.as_ref();
            pb::WeightedDestination {
                destination: Some(dest),
                weight: weight(d.weight, r.route.len()),
                request_headers: header_ops(h.and_then(|h| h.request.as_ref())),
                response_headers: header_ops(h.and_then(|h| h.response.as_ref())),
            }
        })
        .collect();
    let mirror = r.mirror.as_ref().map(|m| {
        let dest = destination(m, ns);
        refs.insert(dest.service.clone());
        pb::Mirror {
            destination: Some(dest),
            percentage: r
                .mirror_percentage
                .as_ref()
                .map(|p| p.value)
                .unwrap_or(100.0),
        }
    });
    let fault = r.fault.as_ref().map(|f| pb::Fault {
        delay: f.delay.as_ref().map(|d| pb::FaultDelay {
            fixed_delay_ms: ms(Some(&d.fixed_delay)),
            percentage: d.percentage.as_ref().map(|p| p.value).unwrap_or(100.0),
        }),
        abort: f.abort.as_ref().map(|a| pb::FaultAbort {
            http_status: a.http_status.unwrap_or(0).max(0) as u32,
            grpc_status: a
                .grpc_status
                .as_deref()
                .and_then(net::grpc_status_code)
                .unwrap_or(0),
            percentage: a.percentage.as_ref().map(|p| p.value).unwrap_or(100.0),
        }),
    });
    let h = r.headers.as_ref();
    pb::HttpRoute {
        name: r.name.clone().unwrap_or_else(|| format!("route-{index}")),
        matches,
        destinations,
        retry: r.retries.as_ref().map(|rt| pb::RetryPolicy {
            attempts: rt.attempts.max(0) as u32,
            per_try_timeout_ms: ms(rt.per_try_timeout.as_ref()),
            retry_on: rt
                .retry_on
                .as_deref()
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            retry_non_idempotent: rt.retry_non_idempotent.unwrap_or(false),
            budget_percent: rt.budget_percent.map(f64::from).unwrap_or(0.0),
            budget_min_per_second: rt
                .budget_min_retries_per_second
                .map(f64::from)
                .unwrap_or(0.0),
        }),
        timeout_ms: ms(r.timeout.as_ref()),
        fault,
        mirror,
        rewrite: r.rewrite.as_ref().map(|rw| pb::Rewrite {
            uri: rw.uri.clone().unwrap_or_default(),
            authority: rw.authority.clone().unwrap_or_default(),
        }),
        redirect: r.redirect.as_ref().map(|rd| pb::Redirect {
            uri: rd.uri.clone().unwrap_or_default(),
            authority: rd.authority.clone().unwrap_or_default(),
            code: rd.redirect_code.unwrap_or(0),
            scheme: rd.scheme.clone().unwrap_or_default(),
        }),
        request_headers: header_ops(h.and_then(|h| h.request.as_ref())),
        response_headers: header_ops(h.and_then(|h| h.response.as_ref())),
    }
}

fn scope<K: kube::Resource>(
    r: &K,
    selector: Option<&mesh_api::security::WorkloadSelector>,
    root: &str,
) -> (Option<String>, Option<BTreeMap<String, String>>) {
    let ns = namespace_of(r);
    let selector = selector
        .filter(|s| !s.match_labels.is_empty())
        .map(|s| s.match_labels.clone());
    if ns == root && selector.is_none() {
        (None, None)
    } else {
        (Some(ns), selector)
    }
}

fn mtls_mode(m: Option<MtlsMode>) -> Option<pb::PeerAuthMode> {
    m.map(|m| match m {
        MtlsMode::Strict => pb::PeerAuthMode::Strict,
        MtlsMode::Permissive => pb::PeerAuthMode::Permissive,
        MtlsMode::Disable => pb::PeerAuthMode::Disable,
    })
}

fn peer_auth(pa: &PeerAuthentication, root: &str) -> Selected<PeerAuthModel> {
    let (namespace, selector) = scope(pa, pa.spec.selector.as_ref(), root);
    Selected {
        namespace,
        selector,
        value: PeerAuthModel {
            mode: mtls_mode(pa.spec.mtls.as_ref().and_then(|m| m.mode)),
            port_modes: pa
                .spec
                .port_level_mtls
                .iter()
                .filter_map(|(port, m)| Some((port.parse().ok()?, mtls_mode(m.mode)?)))
                .collect(),
        },
    }
}

fn ports(list: &[String]) -> Vec<u32> {
    list.iter().filter_map(|p| p.parse().ok()).collect()
}

fn authorization(ap: &AuthorizationPolicy, root: &str) -> Selected<Arc<pb::AuthorizationPolicy>> {
    let (namespace, selector) = scope(ap, ap.spec.selector.as_ref(), root);
    // Istio: a rule matches when any `from` matches and any `to` matches;
    // the proto's rule is one conjunction, so each (from, to) pair is one.
    let mut rules = Vec::new();
    for rule in &ap.spec.rules {
        let froms: Vec<Option<&mesh_api::security::Source>> = if rule.from.is_empty() {
            vec![None]
        } else {
            rule.from.iter().map(|f| Some(&f.source)).collect()
        };
        let tos: Vec<Option<&mesh_api::security::Operation>> = if rule.to.is_empty() {
            vec![None]
        } else {
            rule.to.iter().map(|t| Some(&t.operation)).collect()
        };
        for f in &froms {
            for t in &tos {
                let mut r = pb::AuthorizationRule::default();
                if let Some(s) = f {
                    r.principals = s.principals.clone();
                    r.not_principals = s.not_principals.clone();
                    r.namespaces = s.namespaces.clone();
                    r.not_namespaces = s.not_namespaces.clone();
                }
                if let Some(o) = t {
                    r.paths = o.paths.clone();
                    r.not_paths = o.not_paths.clone();
                    r.methods = o.methods.clone();
                    r.not_methods = o.not_methods.clone();
                    r.ports = ports(&o.ports);
                    r.not_ports = ports(&o.not_ports);
                    r.hosts = o.hosts.clone();
                }
                rules.push(r);
            }
        }
    }
    Selected {
        namespace,
        selector,
        value: Arc::new(pb::AuthorizationPolicy {
            name: format!("{}/{}", namespace_of(ap), ap.name_any()),
            action: match ap.spec.action.unwrap_or_default() {
                AuthorizationAction::Allow => pb::authorization_policy::Action::Allow,
                AuthorizationAction::Deny => pb::authorization_policy::Action::Deny,
            } as i32,
            rules,
        }),
    }
}

#[cfg(test)]
mod tests;
