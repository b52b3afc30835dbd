//! One proxy's view of a [`Snapshot`]: only the services it may use and the
//! inbound policy of its own workload, never the whole mesh.
//!
//! Visible to a proxy in namespace `N`: the services of `N`, services
//! exported to `N` (or to every namespace), and — transitively — the
//! services those services' routes send or mirror to. Proxies in one
//! namespace share one computed list.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;

use mesh_proto::config::v1 as pb;

use crate::translate::Snapshot;

/// Who a proxy is, as the controller has established it (from its
/// certificate and the pod it names).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyMeta {
    pub namespace: String,
    pub pod: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
}

/// The services visible from one namespace.
#[derive(Debug, PartialEq)]
pub struct Visible {
    /// Sorted by name.
    pub services: Vec<Arc<pb::Service>>,
    /// Combined hash of the services.
    pub hash: u64,
}

/// The parts of a proxy's config that the controller computes.
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    pub services: Arc<Visible>,
    pub inbound: pb::InboundPolicy,
    pub trust_bundle: Arc<Vec<String>>,
    /// Listeners of a gateway proxy; empty for sidecars.
    pub gateway_listeners: Arc<Vec<pb::GatewayListener>>,
}

impl View {
    /// A content hash of the whole view: equal views have equal hashes in
    /// every controller process, so a reconnecting proxy that already has
    /// this content gets no resend.
    pub fn hash(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        self.services.hash.hash(&mut h);
        prost::Message::encode_to_vec(&self.inbound).hash(&mut h);
        self.trust_bundle.hash(&mut h);
        for l in self.gateway_listeners.iter() {
            prost::Message::encode_to_vec(l).hash(&mut h);
        }
        h.finish()
    }

    /// The whole config (for a full response, config dumps and tests).
    pub fn to_config(&self, version: &str) -> pb::ProxyConfig {
        pb::ProxyConfig {
            version: version.to_string(),
            services: self
                .services
                .services
                .iter()
                .map(|s| (**s).clone())
                .collect(),
            inbound: Some(self.inbound.clone()),
            trust_bundle_pem: self.trust_bundle.as_ref().clone(),
            settings: None,
            gateway_listeners: self.gateway_listeners.as_ref().clone(),
        }
    }
}

impl Snapshot {
    /// The view of the proxy `meta`. A gateway proxy (one that Gateways
    /// select) also gets their listeners and sees the services their routes
    /// send to.
    pub fn view(&self, meta: &ProxyMeta) -> View {
        let selected: Vec<_> = self
            .gateways
            .iter()
            .filter(|g| g.selects(&meta.namespace, &meta.labels))
            .collect();
        let services = if selected.is_empty() {
            self.visible(&meta.namespace)
        } else {
            let extra = selected.iter().flat_map(|g| g.references.iter());
            self.compute_visible(&meta.namespace, extra.map(String::as_str))
        };
        View {
            services,
            inbound: self.inbound(meta),
            trust_bundle: self.trust_bundle.clone(),
            gateway_listeners: Arc::new(crate::translate::gateway::merge_listeners(
                selected.into_iter(),
            )),
        }
    }

    /// Services visible from `namespace`, sorted by name.
    pub fn visible(&self, namespace: &str) -> Arc<Visible> {
        if let Some(v) = self
            .visible_cache
            .lock()
            .ok()
            .and_then(|c| c.get(namespace).cloned())
        {
            return v;
        }
        let list = self.compute_visible(namespace, std::iter::empty());
        if let Ok(mut c) = self.visible_cache.lock() {
            c.insert(namespace.to_string(), list.clone());
        }
        list
    }

    /// Services visible from `namespace` plus `extra` (and what they send to).
    fn compute_visible<'a>(
        &'a self,
        namespace: &str,
        extra: impl Iterator<Item = &'a str>,
    ) -> Arc<Visible> {
        let mut seen: HashSet<&str> = HashSet::new();
        let mut queue: VecDeque<&str> = self
            .services
            .iter()
            .filter(|(_, s)| s.export.allows(&s.proto.namespace, namespace))
            .map(|(name, _)| name.as_str())
            .chain(extra)
            .collect();
        while let Some(name) = queue.pop_front() {
            if !seen.insert(name) {
                continue;
            }
            if let Some(s) = self.services.get(name) {
                queue.extend(s.references.iter().map(String::as_str));
            }
        }
        let mut models: Vec<_> = seen
            .into_iter()
            .filter_map(|n| self.services.get(n))
            .collect();
        models.sort_by(|a, b| a.proto.name.cmp(&b.proto.name));
        let hash = {
            use std::hash::{Hash, Hasher};
            let mut h = std::hash::DefaultHasher::new();
            for m in &models {
                m.hash.hash(&mut h);
            }
            h.finish()
        };
        Arc::new(Visible {
            services: models.iter().map(|m| m.proto.clone()).collect(),
            hash,
        })
    }

    /// The inbound policy of the workload `meta`: the most specific
    /// PeerAuthentication (workload > namespace > mesh) decides the mode,
    /// port modes come from the most specific one that sets them, and
    /// every AuthorizationPolicy that selects the workload applies.
    pub fn inbound(&self, meta: &ProxyMeta) -> pb::InboundPolicy {
        let mut pas: Vec<_> = self
            .peer_auth
            .iter()
            .filter(|p| p.applies_to(&meta.namespace, &meta.labels))
            .collect();
        pas.sort_by_key(|p| std::cmp::Reverse(p.specificity()));
        let mode = pas
            .iter()
            .find_map(|p| p.value.mode)
            .unwrap_or(pb::PeerAuthMode::Permissive);
        let port_modes = pas
            .iter()
            .find(|p| !p.value.port_modes.is_empty())
            .map(|p| {
                p.value
                    .port_modes
                    .iter()
                    .map(|(k, v)| (*k, *v as i32))
                    .collect()
            })
            .unwrap_or_default();
        let mut authorization: Vec<pb::AuthorizationPolicy> = self
            .authz
            .iter()
            .filter(|a| a.applies_to(&meta.namespace, &meta.labels))
            .map(|a| (*a.value).clone())
            .collect();
        authorization.sort_by(|a, b| a.name.cmp(&b.name));
        pb::InboundPolicy {
            mode: mode as i32,
            port_modes,
            authorization,
        }
    }
}

/// What changed between the view a stream last sent and the current one.
#[derive(Debug, Default, PartialEq)]
pub struct Diff {
    pub upserted: Vec<Arc<pb::Service>>,
    pub removed: Vec<String>,
    pub inbound: Option<pb::InboundPolicy>,
    pub trust_bundle: Option<Vec<String>>,
    pub gateway_listeners: Option<Vec<pb::GatewayListener>>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.upserted.is_empty()
            && self.removed.is_empty()
            && self.inbound.is_none()
            && self.trust_bundle.is_none()
            && self.gateway_listeners.is_none()
    }

    /// An incremental response cannot say "no gateway listeners any more"
    /// (an empty list means "unchanged"): such a change is sent in full.
    pub fn needs_full(&self) -> bool {
        self.gateway_listeners.as_ref().is_some_and(Vec::is_empty)
    }

    /// Between `old` and `new`: one merge of the two name-sorted service
    /// lists (services compare by pointer first: an unchanged service
    /// keeps its `Arc` across snapshots).
    pub fn between(old: &View, new: &View) -> Diff {
        use std::cmp::Ordering;
        let mut diff = Diff::default();
        if !Arc::ptr_eq(&old.services, &new.services) {
            let (before, after) = (&old.services.services, &new.services.services);
            let (mut i, mut j) = (0, 0);
            loop {
                match (before.get(i), after.get(j)) {
                    (None, None) => break,
                    (Some(b), None) => {
                        diff.removed.push(b.name.clone());
                        i += 1;
                    }
                    (None, Some(a)) => {
                        diff.upserted.push(a.clone());
                        j += 1;
                    }
                    (Some(b), Some(a)) if Arc::ptr_eq(b, a) => {
                        i += 1;
                        j += 1;
                    }
                    (Some(b), Some(a)) => match b.name.cmp(&a.name) {
                        Ordering::Less => {
                            diff.removed.push(b.name.clone());
                            i += 1;
                        }
                        Ordering::Greater => {
                            diff.upserted.push(a.clone());
                            j += 1;
                        }
                        Ordering::Equal => {
                            if **b != **a {
                                diff.upserted.push(a.clone());
                            }
                            i += 1;
                            j += 1;
                        }
                    },
                }
            }
        }
        if old.inbound != new.inbound {
            diff.inbound = Some(new.inbound.clone());
        }
        if old.trust_bundle != new.trust_bundle {
            diff.trust_bundle = Some(new.trust_bundle.as_ref().clone());
        }
        if old.gateway_listeners != new.gateway_listeners {
            diff.gateway_listeners = Some(new.gateway_listeners.as_ref().clone());
        }
        diff
    }

    /// As an incremental response's config.
    pub fn to_config(&self, version: &str) -> pb::ProxyConfig {
        pb::ProxyConfig {
            version: version.to_string(),
            services: self.upserted.iter().map(|s| (**s).clone()).collect(),
            inbound: self.inbound.clone(),
            trust_bundle_pem: self.trust_bundle.clone().unwrap_or_default(),
            settings: None,
            gateway_listeners: self.gateway_listeners.clone().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, port: u32) -> Arc<pb::Service> {
        Arc::new(pb::Service {
            name: name.into(),
            ports: vec![pb::ServicePort {
                port,
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    fn view(services: Vec<Arc<pb::Service>>) -> View {
        View {
            services: Arc::new(Visible { services, hash: 0 }),
            inbound: pb::InboundPolicy::default(),
            trust_bundle: Arc::new(Vec::new()),
            gateway_listeners: Arc::new(Vec::new()),
        }
    }

    #[test]
    fn diff_merges_the_sorted_lists() {
        let (a, b, c) = (svc("a", 80), svc("b", 80), svc("c", 80));
        let old = view(vec![a.clone(), b, c.clone()]);
        // a changed in content (a new Arc), b removed, c the same Arc, d new.
        let (a2, d) = (svc("a", 8080), svc("d", 80));
        let diff = Diff::between(&old, &view(vec![a2.clone(), c.clone(), d.clone()]));
        assert_eq!(diff.upserted, vec![a2, d]);
        assert_eq!(diff.removed, vec!["b".to_string()]);
        // Equal content in a new Arc is no change.
        let same = Diff::between(&old, &view(vec![svc("a", 80), svc("b", 80), c]));
        assert!(same.is_empty(), "{same:?}");
        // Everything removed.
        let gone = Diff::between(&old, &view(Vec::new()));
        assert_eq!(gone.removed, vec!["a", "b", "c"]);
    }

    #[test]
    fn gateway_listener_changes_are_sent_and_removal_is_full() {
        let old = view(vec![svc("a", 80)]);
        let mut with = view(old.services.services.clone());
        with.services = old.services.clone();
        with.gateway_listeners = Arc::new(vec![pb::GatewayListener {
            port: 8443,
            ..Default::default()
        }]);
        let added = Diff::between(&old, &with);
        assert!(!added.is_empty() && !added.needs_full(), "{added:?}");
        assert_eq!(added.to_config("v").gateway_listeners.len(), 1);
        assert_ne!(old.hash(), with.hash());
        // Removing every listener cannot be said incrementally.
        let removed = Diff::between(&with, &old);
        assert!(removed.needs_full(), "{removed:?}");
    }
}
