//! The pure part of `meshctl route` (and the resources `meshctl canary`
//! builds on): a service's VirtualService and DestinationRule as typed
//! objects, edited without a cluster, validated with `mesh_api::validate`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use mesh_api::networking::{
    Destination, DestinationRule, DestinationRuleSpec, HttpMatchRequest, HttpRetry, HttpRoute,
    HttpRouteDestination, StringMatch, Subset, VirtualService, VirtualServiceSpec,
};
use mesh_api::resource::ResourceSet;
use mesh_api::validate::{validate_set, ResourceRef};
use serde::Serialize;

/// Label on every object meshctl creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_BY: &str = "meshctl";
/// Annotation: the meshctl command that last changed the object.
pub const COMMAND_ANNOTATION: &str = "mesh.dev/meshctl-command";
/// Default label that tells a service's versions apart.
pub const DEFAULT_SUBSET_LABEL: &str = "version";

/// A service in a namespace: what `route` and `canary` act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Namespace of the Service.
    pub namespace: String,
    /// Name of the Service (also the VirtualService's host).
    pub service: String,
}

/// The service's VirtualService and DestinationRule, if any. `None` after
/// an edit means "delete it".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    /// The VirtualService routing the service.
    pub vs: Option<VirtualService>,
    /// The DestinationRule defining its subsets.
    pub dr: Option<DestinationRule>,
}

/// One routing rule, as `meshctl route create` describes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteSpec {
    /// Route name (unique in the VirtualService).
    pub name: String,
    /// Header conditions (names lowercase).
    pub headers: BTreeMap<String, StringMatch>,
    /// Path condition.
    pub uri: Option<StringMatch>,
    /// Method condition.
    pub method: Option<String>,
    /// Where matching requests go: subset (none = the whole service) and
    /// weight (none for a single destination).
    pub destinations: Vec<(Option<String>, Option<i32>)>,
    /// Whole-request timeout (duration string).
    pub timeout: Option<String>,
    /// Retry policy.
    pub retries: Option<HttpRetry>,
}

impl RouteSpec {
    /// Whether the route has no condition (matches every request).
    pub fn matches_everything(&self) -> bool {
        self.headers.is_empty() && self.uri.is_none() && self.method.is_none()
    }

    /// The VirtualService route.
    pub fn to_http_route(&self, host: &str) -> HttpRoute {
        let m = HttpMatchRequest {
            uri: self.uri.clone(),
            method: self.method.as_ref().map(|m| StringMatch {
                exact: Some(m.clone()),
                ..Default::default()
            }),
            headers: self.headers.clone(),
            ..Default::default()
        };
        let destinations = if self.destinations.is_empty() {
            vec![(None, None)]
        } else {
            self.destinations.clone()
        };
        HttpRoute {
            name: Some(self.name.clone()),
            match_: if self.matches_everything() {
                Vec::new()
            } else {
                vec![m]
            },
            route: destinations
                .into_iter()
                .map(|(subset, weight)| HttpRouteDestination {
                    destination: Destination {
                        host: host.to_string(),
                        subset,
                        port: None,
                    },
                    weight,
                    headers: None,
                })
                .collect(),
            timeout: self.timeout.clone(),
            retries: self.retries.clone(),
            ..Default::default()
        }
    }
}

/// Whether a route matches every request (so nothing after it is reached).
pub fn is_catch_all(r: &HttpRoute) -> bool {
    r.match_.is_empty() || r.match_.iter().any(HttpMatchRequest::matches_everything)
}

fn meta(t: &Target, name: &str, command: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(t.namespace.clone()),
        labels: Some(BTreeMap::from([(
            MANAGED_BY_LABEL.to_string(),
            MANAGED_BY.to_string(),
        )])),
        annotations: Some(BTreeMap::from([(
            COMMAND_ANNOTATION.to_string(),
            command.to_string(),
        )])),
        ..Default::default()
    }
}

/// A new VirtualService for the service (named after it, host = the
/// service's short name, mesh gateway).
pub fn new_virtual_service(t: &Target, command: &str) -> VirtualService {
    VirtualService {
        metadata: meta(t, &t.service, command),
        spec: VirtualServiceSpec {
            hosts: vec![t.service.clone()],
            ..Default::default()
        },
        status: None,
    }
}

/// A new DestinationRule for the service (named after it).
pub fn new_destination_rule(t: &Target, command: &str) -> DestinationRule {
    DestinationRule {
        metadata: meta(t, &t.service, command),
        spec: DestinationRuleSpec {
            host: t.service.clone(),
            ..Default::default()
        },
        status: None,
    }
}

/// Records `command` on an object meshctl changed.
pub fn stamp<K: Resource>(obj: &mut K, command: &str) {
    obj.meta_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(COMMAND_ANNOTATION.to_string(), command.to_string());
}

/// The host destinations use: the VirtualService's first host (the
/// service's short name for ones meshctl made).
pub fn host_of(vs: &VirtualService, t: &Target) -> String {
    vs.spec
        .hosts
        .first()
        .cloned()
        .unwrap_or_else(|| t.service.clone())
}

/// Makes sure the DestinationRule defines `subset` (labels
/// `{subset_label: subset}` when it is new; an existing subset is kept as
/// it is). Returns whether anything changed.
pub fn ensure_subset(dr: &mut DestinationRule, subset: &str, subset_label: &str) -> bool {
    if dr.spec.subsets.iter().any(|s| s.name == subset) {
        return false;
    }
    dr.spec.subsets.push(Subset {
        name: subset.to_string(),
        labels: BTreeMap::from([(subset_label.to_string(), subset.to_string())]),
        traffic_policy: None,
    });
    true
}

/// Sets (or adds) `subset` with exactly `labels`. Returns whether anything
/// changed.
pub fn set_subset(
    dr: &mut DestinationRule,
    subset: &str,
    labels: BTreeMap<String, String>,
) -> bool {
    match dr.spec.subsets.iter_mut().find(|s| s.name == subset) {
        Some(s) if s.labels == labels => false,
        Some(s) => {
            s.labels = labels;
            true
        }
        None => {
            dr.spec.subsets.push(Subset {
                name: subset.to_string(),
                labels,
                traffic_policy: None,
            });
            true
        }
    }
}

/// Puts `route` in the VirtualService: in place of the route with the same
/// name, else before the first route that matches everything (so the new
/// route is reachable), else last.
pub fn upsert_route(vs: &mut VirtualService, route: HttpRoute) {
    let routes = &mut vs.spec.http;
    if let Some(i) = routes.iter().position(|r| r.name == route.name) {
        routes[i] = route;
        return;
    }
    if !is_catch_all(&route) {
        if let Some(i) = routes.iter().position(is_catch_all) {
            routes.insert(i, route);
            return;
        }
    }
    routes.push(route);
}

/// `meshctl route create`: adds or replaces the route `spec.name` and the
/// subsets it uses.
pub fn create_route(
    current: &Resources,
    t: &Target,
    spec: &RouteSpec,
    subset_label: &str,
    command: &str,
) -> Resources {
    let mut vs = current
        .vs
        .clone()
        .unwrap_or_else(|| new_virtual_service(t, command));
    stamp(&mut vs, command);
    let host = host_of(&vs, t);
    upsert_route(&mut vs, spec.to_http_route(&host));
    let mut dr = current.dr.clone();
    for subset in spec.destinations.iter().filter_map(|(s, _)| s.as_deref()) {
        let d = dr.get_or_insert_with(|| new_destination_rule(t, command));
        if ensure_subset(d, subset, subset_label) {
            stamp(d, command);
        }
    }
    Resources { vs: Some(vs), dr }
}

/// `meshctl route delete SERVICE ROUTE`: removes the route; the
/// VirtualService goes when it has no route left. Subsets stay (another
/// route, a canary or a user may use them).
pub fn delete_route(current: &Resources, name: &str, command: &str) -> Result<Resources, String> {
    let Some(mut vs) = current.vs.clone() else {
        return Err("there is no VirtualService for the service".to_string());
    };
    let Some(i) = vs
        .spec
        .http
        .iter()
        .position(|r| r.name.as_deref() == Some(name))
    else {
        let names: Vec<&str> = vs
            .spec
            .http
            .iter()
            .filter_map(|r| r.name.as_deref())
            .collect();
        return Err(format!(
            "VirtualService {}/{} has no route {name:?} (routes: {})",
            vs.namespace().unwrap_or_default(),
            vs.name_any(),
            if names.is_empty() {
                "none named".to_string()
            } else {
                names.join(", ")
            }
        ));
    };
    vs.spec.http.remove(i);
    stamp(&mut vs, command);
    let empty = vs.spec.http.is_empty() && vs.spec.tcp.is_empty();
    Ok(Resources {
        vs: (!empty).then_some(vs),
        dr: current.dr.clone(),
    })
}

/// Validates the edited resources with `mesh_api::validate` together with
/// the namespace's other mesh resources (`others`: subset references,
/// host conflicts); only errors about `res` are returned.
pub fn validate(res: &Resources, others: &ResourceSet) -> Vec<String> {
    let mut set = others.clone();
    let mut mine = Vec::new();
    if let Some(vs) = &res.vs {
        let r = ResourceRef::of(vs);
        set.virtual_services.retain(|o| ResourceRef::of(o) != r);
        set.virtual_services.push(vs.clone());
        mine.push(r);
    }
    if let Some(dr) = &res.dr {
        let r = ResourceRef::of(dr);
        set.destination_rules.retain(|o| ResourceRef::of(o) != r);
        set.destination_rules.push(dr.clone());
        mine.push(r);
    }
    validate_set(&set)
        .into_iter()
        .filter(|e| mine.contains(&e.resource))
        .map(|e| e.to_string())
        .collect()
}

/// One route, summarised for `route show` / `route list`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteSummary {
    /// Route name (empty when unnamed).
    pub name: String,
    /// The conditions, one string (`any` for none).
    #[serde(rename = "match")]
    pub match_: String,
    /// Destinations as `subset` or `host`, with `:weight`.
    pub destinations: Vec<String>,
    /// Timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Retries, `N` plus conditions and per-try timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<String>,
}

fn fmt_match(m: &StringMatch) -> String {
    match (&m.exact, &m.prefix, &m.regex) {
        (Some(e), _, _) => format!("={e}"),
        (_, Some(p), _) => format!("^={p}"),
        (_, _, Some(r)) => format!("~={r}"),
        _ => " present".to_string(),
    }
}

/// The routes of a VirtualService, summarised.
pub fn summarize(vs: &VirtualService) -> Vec<RouteSummary> {
    vs.spec
        .http
        .iter()
        .map(|r| {
            let match_ = if is_catch_all(r) {
                "any".to_string()
            } else {
                r.match_
                    .iter()
                    .map(|m| {
                        let mut parts = Vec::new();
                        if let Some(u) = &m.uri {
                            parts.push(format!("path{}", fmt_match(u)));
                        }
                        if let Some(x) = &m.method {
                            parts.push(format!("method{}", fmt_match(x)));
                        }
                        for (k, v) in &m.headers {
                            parts.push(format!("header:{k}{}", fmt_match(v)));
                        }
                        for (k, v) in &m.query_params {
                            parts.push(format!("query:{k}{}", fmt_match(v)));
                        }
                        if let Some(p) = m.port {
                            parts.push(format!("port={p}"));
                        }
                        parts.join(" & ")
                    })
                    .collect::<Vec<_>>()
                    .join(" | ")
            };
            let destinations = if r.redirect.is_some() {
                vec!["(redirect)".to_string()]
            } else {
                r.route
                    .iter()
                    .map(|d| {
                        let to = d
                            .destination
                            .subset
                            .clone()
                            .unwrap_or_else(|| d.destination.host.clone());
                        match d.weight {
                            Some(w) => format!("{to}:{w}"),
                            None => to,
                        }
                    })
                    .collect()
            };
            RouteSummary {
                name: r.name.clone().unwrap_or_default(),
                match_,
                destinations,
                timeout: r.timeout.clone(),
                retries: r.retries.as_ref().map(|x| {
                    let mut s = x.attempts.to_string();
                    if let Some(on) = &x.retry_on {
                        s.push_str(&format!(" on {on}"));
                    }
                    if let Some(t) = &x.per_try_timeout {
                        s.push_str(&format!(" per try {t}"));
                    }
                    s
                }),
            }
        })
        .collect()
}
