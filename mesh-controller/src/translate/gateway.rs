//! Gateways and the VirtualServices bound to them → the listeners of the
//! gateway proxies they select.
//!
//! A Gateway selects pods by labels in its own namespace (an empty selector
//! selects nothing). Its servers become one listener per port; a
//! VirtualService binds when it names the Gateway in `gateways`
//! (`name` in its own namespace, or `namespace/name`) and one of its hosts
//! matches a server host (`host`, `*.suffix`, `*`; a `ns/` prefix limits the
//! namespaces whose VirtualServices bind, `./` meaning the Gateway's own). A
//! host is bound once per port: the first VirtualService by namespace/name
//! keeps it.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;
use mesh_api::networking::{Gateway, VirtualService};
use mesh_proto::config::v1 as pb;

use super::{http_route, namespace_of};

/// One Gateway, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayModel {
    pub namespace: String,
    pub name: String,
    pub selector: BTreeMap<String, String>,
    /// By port.
    pub listeners: Vec<pb::GatewayListener>,
    /// Services the bound routes send or mirror to.
    pub references: Vec<String>,
}

impl GatewayModel {
    /// Whether the proxy of a pod in `namespace` with `labels` serves it.
    pub fn selects(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        !self.selector.is_empty()
            && self.namespace == namespace
            && self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// `ns/host` → (Some(ns), host); `./host` → (the gateway's namespace, host).
fn split_server_host<'a>(host: &'a str, gateway_ns: &'a str) -> (Option<&'a str>, &'a str) {
    match host.split_once('/') {
        Some((".", h)) => (Some(gateway_ns), h),
        Some(("*", h)) => (None, h),
        Some((ns, h)) => (Some(ns), h),
        None => (None, host),
    }
}

/// Whether a VirtualService host falls under a server host pattern.
fn host_matches(pattern: &str, host: &str) -> bool {
    let (pattern, host) = (pattern.to_ascii_lowercase(), host.to_ascii_lowercase());
    pattern == "*"
        || pattern == host
        || pattern
            .strip_prefix('*')
            .is_some_and(|suffix| host.len() > suffix.len() && host.ends_with(suffix))
}

/// Whether `vs` names the gateway `ns/name`.
fn binds(vs: &VirtualService, ns: &str, name: &str) -> bool {
    let vs_ns = namespace_of(vs);
    vs.spec.gateways.iter().any(|g| match g.split_once('/') {
        Some((gns, gname)) => gns == ns && gname == name,
        None => vs_ns == ns && g == name,
    })
}

/// Compiles every Gateway with the VirtualServices bound to it.
pub fn gateways(gateways: &[Gateway], virtual_services: &[VirtualService]) -> Vec<GatewayModel> {
    let mut vss: Vec<&VirtualService> = virtual_services.iter().collect();
    vss.sort_by_key(|vs| (namespace_of(*vs), vs.name_any()));
    let mut out: Vec<GatewayModel> = gateways
        .iter()
        .map(|gw| {
            let ns = namespace_of(gw);
            let name = gw.name_any();
            let mut listeners: BTreeMap<u32, pb::GatewayListener> = BTreeMap::new();
            for server in &gw.spec.servers {
                let l =
                    listeners
                        .entry(server.port.number)
                        .or_insert_with(|| pb::GatewayListener {
                            port: server.port.number,
                            name: server
                                .name
                                .clone()
                                .unwrap_or_else(|| server.port.name.clone()),
                            protocol: pb::Protocol::Http1 as i32,
                            ..Default::default()
                        });
                if let Some(cred) = server.tls.as_ref().and_then(|t| t.credential_name.clone()) {
                    l.credential_name = cred;
                }
                for h in &server.hosts {
                    let h = split_server_host(h, &ns).1.to_string();
                    if !l.hosts.contains(&h) {
                        l.hosts.push(h);
                    }
                }
            }
            let mut refs = BTreeSet::new();
            for vs in vss.iter().filter(|vs| binds(vs, &ns, &name)) {
                let vs_ns = namespace_of(*vs);
                // The hosts this VirtualService gets, per port.
                let mut bound: BTreeMap<u32, Vec<String>> = BTreeMap::new();
                for server in &gw.spec.servers {
                    for pattern in &server.hosts {
                        let (only_ns, pattern) = split_server_host(pattern, &ns);
                        if only_ns.is_some_and(|n| n != vs_ns) {
                            continue;
                        }
                        for host in &vs.spec.hosts {
                            let host = if host == "*" { pattern } else { host.as_str() };
                            if host_matches(pattern, host) {
                                let list = bound.entry(server.port.number).or_default();
                                let host = host.to_ascii_lowercase();
                                if !list.contains(&host) {
                                    list.push(host);
                                }
                            }
                        }
                    }
                }
                for (port, hosts) in bound {
                    let Some(l) = listeners.get_mut(&port) else {
                        continue;
                    };
                    // A host already bound on this port stays with the first.
                    let taken: BTreeSet<&String> =
                        l.virtual_hosts.iter().flat_map(|v| &v.hosts).collect();
                    let hosts: Vec<String> =
                        hosts.into_iter().filter(|h| !taken.contains(h)).collect();
                    if hosts.is_empty() {
                        continue;
                    }
                    let routes = vs
                        .spec
                        .http
                        .iter()
                        .enumerate()
                        .map(|(i, r)| http_route(r, i, &vs_ns, &mut refs))
                        .collect();
                    l.virtual_hosts.push(pb::VirtualHost { hosts, routes });
                }
            }
            GatewayModel {
                namespace: ns,
                name,
                selector: gw.spec.selector.clone(),
                listeners: listeners.into_values().collect(),
                references: refs.into_iter().collect(),
            }
        })
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

/// The listeners of a proxy selected by `models` (in order): a port belongs
/// to the first Gateway that declares it.
pub fn merge_listeners<'a>(
    models: impl Iterator<Item = &'a GatewayModel>,
) -> Vec<pb::GatewayListener> {
    let mut by_port: BTreeMap<u32, pb::GatewayListener> = BTreeMap::new();
    for m in models {
        for l in &m.listeners {
            by_port.entry(l.port).or_insert_with(|| l.clone());
        }
    }
    by_port.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw(yaml: &str) -> Gateway {
        serde_yaml::from_str(yaml).unwrap()
    }
    fn vs(yaml: &str) -> VirtualService {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn hosts_match_patterns() {
        assert!(host_matches("*", "a.b"));
        assert!(host_matches("*.example.com", "shop.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(host_matches("Shop.Example.com", "shop.example.com"));
        assert!(!host_matches("shop.example.com", "api.example.com"));
    }

    #[test]
    fn bound_virtual_services_become_virtual_hosts() {
        let g = gw(r#"
apiVersion: networking.mesh.dev/v1
kind: Gateway
metadata: {name: edge, namespace: ingress}
spec:
  selector: {app: edge}
  servers:
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: ["*/shop.example.com", "./admin.example.com"]
    tls: {mode: SIMPLE, credentialName: shop-cert}
"#);
        let shop = vs(r#"
apiVersion: networking.mesh.dev/v1
kind: VirtualService
metadata: {name: shop, namespace: apps}
spec:
  hosts: [shop.example.com, admin.example.com]
  gateways: [ingress/edge]
  http:
  - match: [{uri: {prefix: /api}}]
    route: [{destination: {host: api}}]
  - route: [{destination: {host: web}}]
"#);
        let unbound = vs(r#"
apiVersion: networking.mesh.dev/v1
kind: VirtualService
metadata: {name: other, namespace: apps}
spec:
  hosts: [shop.example.com]
  gateways: [edge]
  http:
  - route: [{destination: {host: web}}]
"#);
        let models = gateways(&[g], &[shop, unbound]);
        let m = &models[0];
        assert_eq!(m.listeners.len(), 1);
        let l = &m.listeners[0];
        assert_eq!(l.port, 8443);
        assert_eq!(l.credential_name, "shop-cert");
        assert_eq!(l.hosts, vec!["shop.example.com", "admin.example.com"]);
        // admin.example.com is limited to the gateway's namespace; "other"
        // names `edge` in its own namespace, which is not this gateway.
        assert_eq!(l.virtual_hosts.len(), 1);
        assert_eq!(l.virtual_hosts[0].hosts, vec!["shop.example.com"]);
        let dests: Vec<_> = l.virtual_hosts[0]
            .routes
            .iter()
            .map(|r| {
                r.destinations[0]
                    .destination
                    .as_ref()
                    .unwrap()
                    .service
                    .clone()
            })
            .collect();
        assert_eq!(
            dests,
            vec!["api.apps.svc.cluster.local", "web.apps.svc.cluster.local"]
        );
        assert_eq!(
            m.references,
            vec!["api.apps.svc.cluster.local", "web.apps.svc.cluster.local"]
        );
        let labels = BTreeMap::from([("app".to_string(), "edge".to_string())]);
        assert!(m.selects("ingress", &labels));
        assert!(!m.selects("apps", &labels));
        assert!(!m.selects("ingress", &BTreeMap::new()));
    }
}
