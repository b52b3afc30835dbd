//! Semantic validation of mesh resources: the checks that serde and the CRD
//! schema cannot do. Used by the controller (an error becomes the resource's
//! `Accepted=False` condition) and by `meshctl` (before applying).
//!
//! Each error names the resource (kind/namespace/name), the field path in
//! Kubernetes style (`spec.http[1].route[0].weight`, map keys as
//! `headers[x-user]`) and what is wrong.
//!
//! - [`validate_resource`] checks one resource on its own.
//! - [`validate_set`] checks every resource of a [`ResourceSet`] and what only
//!   shows between resources: subsets a VirtualService uses that no
//!   DestinationRule defines, and two resources claiming the same host.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use kube::{Resource, ResourceExt};

use crate::networking::{
    grpc_status_code, ClientTlsMode, Destination, DestinationRule, Gateway, HeaderOperations,
    Headers, HttpRoute, Percent, Protocol, Resolution, ServiceEntry, TcpRoute, TrafficPolicy,
    VirtualService,
};
use crate::resource::{namespace_of, MeshResource, ResourceSet};
use crate::security::{AuthorizationPolicy, PeerAuthentication};

mod checks;
#[cfg(test)]
mod tests;

/// Fuzzing entry point: `data` is a YAML (or JSON) stream of mesh
/// resources, as `kubectl apply -f`, `meshctl` and the controller's local
/// mode read them. Parsing and validation never panic, validation is
/// deterministic and names a field and a problem for every error, and a
/// resource that passes validation is one the API server can store: it
/// survives the trip through JSON unchanged and still passes.
#[cfg(any(test, fuzzing))]
pub fn fuzz_logic(data: &[u8]) {
    use serde::{de::DeserializeOwned, Serialize};

    fn via_json<T: Serialize + DeserializeOwned>(r: &T) -> T {
        let json = serde_json::to_string(r).expect("a valid resource serialises to JSON");
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"))
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(resources) = crate::parse_yaml(text) else {
        return;
    };
    let mut set = ResourceSet::default();
    for r in resources {
        let errors = validate_resource(&r);
        assert_eq!(errors, validate_resource(&r), "validation is deterministic");
        for e in &errors {
            assert!(!e.field.is_empty() && !e.message.is_empty(), "{e:?}");
        }
        if errors.is_empty() {
            let back = match &r {
                MeshResource::VirtualService(x) => MeshResource::VirtualService(via_json(x)),
                MeshResource::DestinationRule(x) => MeshResource::DestinationRule(via_json(x)),
                MeshResource::ServiceEntry(x) => MeshResource::ServiceEntry(via_json(x)),
                MeshResource::Gateway(x) => MeshResource::Gateway(via_json(x)),
                MeshResource::PeerAuthentication(x) => {
                    MeshResource::PeerAuthentication(via_json(x))
                }
                MeshResource::AuthorizationPolicy(x) => {
                    MeshResource::AuthorizationPolicy(via_json(x))
                }
            };
            assert_eq!(back, r, "changed on the way through JSON");
            assert_eq!(validate_resource(&back), []);
        }
        set.push(r);
    }
    for e in validate_set(&set) {
        assert!(!e.field.is_empty() && !e.message.is_empty(), "{e:?}");
    }
}

use checks::*;

/// Kubernetes cluster DNS domain that short service names are completed with.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Gateway name that stands for every sidecar in the mesh.
pub const MESH_GATEWAY: &str = "mesh";

/// Which resource an error is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceRef {
    /// Kind, e.g. `VirtualService`.
    pub kind: String,
    /// Namespace (empty when unset).
    pub namespace: String,
    /// Name (empty when unset).
    pub name: String,
}

impl ResourceRef {
    /// The reference of a Kubernetes object.
    pub fn of<K: Resource<DynamicType = ()>>(r: &K) -> Self {
        Self {
            kind: K::kind(&()).into_owned(),
            namespace: namespace_of(r),
            name: r.name_any(),
        }
    }
}

impl fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// One problem with one field of one resource.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{resource}: {field}: {message}")]
pub struct ValidationError {
    /// The resource.
    pub resource: ResourceRef,
    /// Field path, e.g. `spec.http[1].route[0].weight`.
    pub field: String,
    /// What is wrong, for people.
    pub message: String,
}

/// Collects the errors of one resource.
struct Report {
    resource: ResourceRef,
    errors: Vec<ValidationError>,
}

impl Report {
    fn new(resource: ResourceRef) -> Self {
        Self {
            resource,
            errors: Vec::new(),
        }
    }

    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ValidationError {
            resource: self.resource.clone(),
            field: field.into(),
            message: message.into(),
        });
    }

    /// Records `result`'s error, if any, against `field`.
    fn check(&mut self, field: impl Into<String>, result: Result<(), String>) {
        if let Err(message) = result {
            self.error(field, message);
        }
    }
}

/// Validates one resource on its own.
pub fn validate_resource(resource: &MeshResource) -> Vec<ValidationError> {
    match resource {
        MeshResource::VirtualService(r) => validate_virtual_service(r),
        MeshResource::DestinationRule(r) => validate_destination_rule(r),
        MeshResource::ServiceEntry(r) => validate_service_entry(r),
        MeshResource::Gateway(r) => validate_gateway(r),
        MeshResource::PeerAuthentication(r) => validate_peer_authentication(r),
        MeshResource::AuthorizationPolicy(r) => validate_authorization_policy(r),
    }
}

/// Validates every resource of `set`, then the references and conflicts
/// between them. Errors come grouped by kind, in the set's order.
pub fn validate_set(set: &ResourceSet) -> Vec<ValidationError> {
    let mut errors = Vec::new();
    errors.extend(
        set.virtual_services
            .iter()
            .flat_map(validate_virtual_service),
    );
    errors.extend(
        set.destination_rules
            .iter()
            .flat_map(validate_destination_rule),
    );
    errors.extend(set.service_entries.iter().flat_map(validate_service_entry));
    errors.extend(set.gateways.iter().flat_map(validate_gateway));
    errors.extend(
        set.peer_authentications
            .iter()
            .flat_map(validate_peer_authentication),
    );
    errors.extend(
        set.authorization_policies
            .iter()
            .flat_map(validate_authorization_policy),
    );
    errors.extend(check_subset_references(set));
    errors.extend(check_virtual_service_conflicts(&set.virtual_services));
    errors.extend(check_destination_rule_conflicts(&set.destination_rules));
    errors.extend(check_peer_authentication_conflicts(
        &set.peer_authentications,
    ));
    errors
}

/// The fully qualified form of `host` as written in a resource of
/// `namespace`: a name without dots is a Service in that namespace
/// (`reviews` -> `reviews.<namespace>.svc.cluster.local`); anything else is
/// taken as written, as Istio does.
pub fn resolve_host(host: &str, namespace: &str) -> String {
    if host.contains('.') || host.starts_with('*') {
        host.to_string()
    } else {
        format!("{host}.{namespace}.svc.{CLUSTER_DOMAIN}")
    }
}

// ---------------------------------------------------------------------------
// VirtualService

/// Validates a VirtualService on its own.
pub fn validate_virtual_service(vs: &VirtualService) -> Vec<ValidationError> {
    let mut r = Report::new(ResourceRef::of(vs));
    let spec = &vs.spec;
    let mesh_bound = spec.gateways.is_empty() || spec.gateways.iter().any(|g| g == MESH_GATEWAY);
    if spec.hosts.is_empty() {
        r.error("spec.hosts", "at least one host is required");
    }
    let mut seen = BTreeSet::new();
    for (i, host) in spec.hosts.iter().enumerate() {
        let field = format!("spec.hosts[{i}]");
        if host == "*" {
            if mesh_bound {
                r.error(
                    &field,
                    "host \"*\" is only allowed when the VirtualService is bound to gateways only (not \"mesh\")",
                );
            }
        } else {
            r.check(&field, check_host(host, true));
        }
        if !seen.insert(host) {
            r.error(field, format!("duplicate host {host:?}"));
        }
    }
    for (i, gw) in spec.gateways.iter().enumerate() {
        r.check(format!("spec.gateways[{i}]"), check_gateway_ref(gw));
    }
    if spec.http.is_empty() && spec.tcp.is_empty() {
        r.error("spec", "at least one http or tcp route is required");
    }
    let mut catch_all: Option<usize> = None;
    for (i, route) in spec.http.iter().enumerate() {
        let path = format!("spec.http[{i}]");
        if let Some(first) = catch_all {
            r.error(
                &path,
                format!("route is unreachable: spec.http[{first}] before it matches every request"),
            );
        }
        validate_http_route(&mut r, &path, route);
        let matches_all =
            route.match_.is_empty() || route.match_.iter().any(|m| m.matches_everything());
        if matches_all && catch_all.is_none() {
            catch_all = Some(i);
        }
    }
    let mut catch_all: Option<usize> = None;
    for (i, route) in spec.tcp.iter().enumerate() {
        let path = format!("spec.tcp[{i}]");
        if let Some(first) = catch_all {
            r.error(
                &path,
                format!(
                    "route is unreachable: spec.tcp[{first}] before it matches every connection"
                ),
            );
        }
        validate_tcp_route(&mut r, &path, route);
        let matches_all = route.match_.is_empty() || route.match_.iter().any(|m| m.port.is_none());
        if matches_all && catch_all.is_none() {
            catch_all = Some(i);
        }
    }
    r.errors
}

fn validate_http_route(r: &mut Report, path: &str, route: &HttpRoute) {
    for (j, m) in route.match_.iter().enumerate() {
        let mp = format!("{path}.match[{j}]");
        if let Some(uri) = &m.uri {
            r.check(format!("{mp}.uri"), check_string_match(uri, false));
        }
        if let Some(method) = &m.method {
            r.check(format!("{mp}.method"), check_string_match(method, false));
        }
        for (name, value) in &m.headers {
            let hp = format!("{mp}.headers[{name}]");
            r.check(&hp, check_header_name(name, true));
            r.check(&hp, check_string_match(value, true));
        }
        for (name, value) in &m.without_headers {
            let hp = format!("{mp}.withoutHeaders[{name}]");
            r.check(&hp, check_header_name(name, true));
            if !value.is_empty() {
                r.error(
                    &hp,
                    "only header absence is supported: use an empty match ({}) in withoutHeaders",
                );
            }
        }
        for (name, value) in &m.query_params {
            let qp = format!("{mp}.queryParams[{name}]");
            if name.is_empty() {
                r.error(&qp, "query parameter name must not be empty");
            }
            r.check(&qp, check_string_match(value, true));
        }
        if let Some(port) = m.port {
            r.check(format!("{mp}.port"), check_port(port));
        }
    }

    if route.route.is_empty() && route.redirect.is_none() {
        r.error(path, "one of route or redirect is required");
    }
    if !route.route.is_empty() && route.redirect.is_some() {
        r.error(
            format!("{path}.redirect"),
            "redirect cannot be combined with route",
        );
    }
    let weights: Vec<Option<i32>> = route.route.iter().map(|d| d.weight).collect();
    check_weights(r, &format!("{path}.route"), &weights);
    for (k, dest) in route.route.iter().enumerate() {
        let dp = format!("{path}.route[{k}]");
        check_destination(r, &format!("{dp}.destination"), &dest.destination);
        if let Some(h) = &dest.headers {
            check_headers(r, &format!("{dp}.headers"), h);
        }
    }

    if let Some(redirect) = &route.redirect {
        let rp = format!("{path}.redirect");
        if route.rewrite.is_some() {
            r.error(
                format!("{path}.rewrite"),
                "rewrite cannot be combined with redirect",
            );
        }
        if let Some(uri) = &redirect.uri {
            r.check(format!("{rp}.uri"), check_uri_path(uri));
        }
        if let Some(authority) = &redirect.authority {
            r.check(format!("{rp}.authority"), check_authority(authority));
        }
        if let Some(scheme) = &redirect.scheme {
            if scheme != "http" && scheme != "https" {
                r.error(
                    format!("{rp}.scheme"),
                    format!("scheme {scheme:?} must be http or https"),
                );
            }
        }
        if let Some(code) = redirect.redirect_code {
            if ![301, 302, 303, 307, 308].contains(&code) {
                r.error(
                    format!("{rp}.redirectCode"),
                    format!("redirect code {code} must be one of 301, 302, 303, 307, 308"),
                );
            }
        }
        if redirect.uri.is_none() && redirect.authority.is_none() && redirect.scheme.is_none() {
            r.error(
                &rp,
                "redirect must set at least one of uri, authority, scheme",
            );
        }
    }
    if let Some(rewrite) = &route.rewrite {
        let rp = format!("{path}.rewrite");
        if let Some(uri) = &rewrite.uri {
            r.check(format!("{rp}.uri"), check_uri_path(uri));
        }
        if let Some(authority) = &rewrite.authority {
            r.check(format!("{rp}.authority"), check_authority(authority));
        }
        if rewrite.uri.is_none() && rewrite.authority.is_none() {
            r.error(&rp, "rewrite must set uri or authority");
        }
    }
    if let Some(timeout) = &route.timeout {
        r.check(format!("{path}.timeout"), check_duration(timeout));
    }
    if let Some(retries) = &route.retries {
        let rp = format!("{path}.retries");
        if retries.attempts < 0 {
            r.error(
                format!("{rp}.attempts"),
                format!("attempts {} must not be negative", retries.attempts),
            );
        }
        if let Some(t) = &retries.per_try_timeout {
            r.check(format!("{rp}.perTryTimeout"), check_duration(t));
        }
        if let Some(p) = retries.budget_percent.filter(|p| *p > 1000) {
            r.error(
                format!("{rp}.budgetPercent"),
                format!("{p} is more than 1000"),
            );
        }
        if let Some(on) = &retries.retry_on {
            r.check(format!("{rp}.retryOn"), check_retry_on(on));
        }
    }
    if let Some(fault) = &route.fault {
        let fp = format!("{path}.fault");
        if fault.delay.is_none() && fault.abort.is_none() {
            r.error(&fp, "fault must set delay or abort");
        }
        if let Some(delay) = &fault.delay {
            r.check(
                format!("{fp}.delay.fixedDelay"),
                check_duration(&delay.fixed_delay),
            );
            check_percentage(
                r,
                &format!("{fp}.delay.percentage"),
                delay.percentage.as_ref(),
            );
        }
        if let Some(abort) = &fault.abort {
            let ap = format!("{fp}.abort");
            match (&abort.http_status, &abort.grpc_status) {
                (Some(_), Some(_)) => r.error(&ap, "set only one of httpStatus and grpcStatus"),
                (None, None) => r.error(&ap, "one of httpStatus and grpcStatus is required"),
                (Some(status), None) => {
                    if !(200..=599).contains(status) {
                        r.error(
                            format!("{ap}.httpStatus"),
                            format!("HTTP status {status} must be in 200..=599"),
                        );
                    }
                }
                (None, Some(status)) => {
                    if grpc_status_code(status).is_none() {
                        r.error(
                            format!("{ap}.grpcStatus"),
                            format!(
                                "unknown gRPC status {status:?} (use a name such as UNAVAILABLE)"
                            ),
                        );
                    }
                }
            }
            check_percentage(r, &format!("{ap}.percentage"), abort.percentage.as_ref());
        }
    }
    if let Some(mirror) = &route.mirror {
        check_destination(r, &format!("{path}.mirror"), mirror);
    } else if route.mirror_percentage.is_some() {
        r.error(
            format!("{path}.mirrorPercentage"),
            "mirrorPercentage is set without mirror",
        );
    }
    check_percentage(
        r,
        &format!("{path}.mirrorPercentage"),
        route.mirror_percentage.as_ref(),
    );
    if let Some(h) = &route.headers {
        check_headers(r, &format!("{path}.headers"), h);
    }
}

fn validate_tcp_route(r: &mut Report, path: &str, route: &TcpRoute) {
    for (j, m) in route.match_.iter().enumerate() {
        if let Some(port) = m.port {
            r.check(format!("{path}.match[{j}].port"), check_port(port));
        }
    }
    if route.route.is_empty() {
        r.error(
            format!("{path}.route"),
            "at least one destination is required",
        );
    }
    let weights: Vec<Option<i32>> = route.route.iter().map(|d| d.weight).collect();
    check_weights(r, &format!("{path}.route"), &weights);
    for (k, dest) in route.route.iter().enumerate() {
        check_destination(
            r,
            &format!("{path}.route[{k}].destination"),
            &dest.destination,
        );
    }
}

/// Each weight in 0..=100; with several destinations they must sum to 100.
fn check_weights(r: &mut Report, path: &str, weights: &[Option<i32>]) {
    for (k, w) in weights.iter().enumerate() {
        if let Some(w) = w {
            if !(0..=100).contains(w) {
                r.error(
                    format!("{path}[{k}].weight"),
                    format!("weight {w} must be in 0..=100"),
                );
            }
        }
    }
    if weights.len() > 1 {
        let sum: i64 = weights.iter().map(|w| i64::from(w.unwrap_or(0))).sum();
        if sum != 100 {
            r.error(
                path,
                format!("weights sum to {sum}; with several destinations they must sum to 100"),
            );
        }
    }
}

fn check_destination(r: &mut Report, path: &str, d: &Destination) {
    r.check(format!("{path}.host"), check_host(&d.host, false));
    if let Some(subset) = &d.subset {
        r.check(format!("{path}.subset"), check_dns_label(subset));
    }
    if let Some(port) = &d.port {
        r.check(format!("{path}.port.number"), check_port(port.number));
    }
}

fn check_headers(r: &mut Report, path: &str, h: &Headers) {
    if let Some(ops) = &h.request {
        check_header_ops(r, &format!("{path}.request"), ops);
    }
    if let Some(ops) = &h.response {
        check_header_ops(r, &format!("{path}.response"), ops);
    }
}

fn check_header_ops(r: &mut Report, path: &str, ops: &HeaderOperations) {
    for name in ops.set.keys() {
        r.check(
            format!("{path}.set[{name}]"),
            check_header_name(name, false),
        );
    }
    for name in ops.add.keys() {
        r.check(
            format!("{path}.add[{name}]"),
            check_header_name(name, false),
        );
    }
    for (i, name) in ops.remove.iter().enumerate() {
        r.check(
            format!("{path}.remove[{i}]"),
            check_header_name(name, false),
        );
    }
}

fn check_percentage(r: &mut Report, path: &str, p: Option<&Percent>) {
    if let Some(p) = p {
        r.check(format!("{path}.value"), check_percent(p.value));
    }
}

// ---------------------------------------------------------------------------
// DestinationRule

/// Validates a DestinationRule on its own.
pub fn validate_destination_rule(dr: &DestinationRule) -> Vec<ValidationError> {
    let mut r = Report::new(ResourceRef::of(dr));
    let spec = &dr.spec;
    if spec.host == "*" {
        r.error(
            "spec.host",
            "host \"*\" is not allowed; name a service or a *.domain wildcard",
        );
    } else {
        r.check("spec.host", check_host(&spec.host, true));
    }
    if let Some(tp) = &spec.traffic_policy {
        check_traffic_policy(&mut r, "spec.trafficPolicy", tp);
    }
    let mut names = BTreeSet::new();
    for (i, subset) in spec.subsets.iter().enumerate() {
        let sp = format!("spec.subsets[{i}]");
        r.check(format!("{sp}.name"), check_dns_label(&subset.name));
        if !names.insert(subset.name.as_str()) {
            r.error(
                format!("{sp}.name"),
                format!("duplicate subset {:?}", subset.name),
            );
        }
        for key in subset.labels.keys() {
            if key.is_empty() {
                r.error(format!("{sp}.labels"), "label keys must not be empty");
            }
        }
        if let Some(tp) = &subset.traffic_policy {
            check_traffic_policy(&mut r, &format!("{sp}.trafficPolicy"), tp);
        }
    }
    r.errors
}

fn check_traffic_policy(r: &mut Report, path: &str, tp: &TrafficPolicy) {
    if let Some(lb) = &tp.load_balancer {
        let lp = format!("{path}.loadBalancer");
        match (&lb.simple, &lb.consistent_hash) {
            (Some(_), Some(_)) => r.error(&lp, "set only one of simple and consistentHash"),
            (None, None) => r.error(&lp, "one of simple and consistentHash is required"),
            (None, Some(ch)) => {
                let cp = format!("{lp}.consistentHash");
                let keys = usize::from(ch.http_header_name.is_some())
                    + usize::from(ch.http_cookie.is_some())
                    + usize::from(ch.use_source_ip == Some(true));
                if keys != 1 {
                    r.error(
                        &cp,
                        "exactly one of httpHeaderName, httpCookie and useSourceIp: true is required",
                    );
                }
                if let Some(h) = &ch.http_header_name {
                    r.check(format!("{cp}.httpHeaderName"), check_header_name(h, false));
                }
                if let Some(c) = &ch.http_cookie {
                    if c.name.is_empty() {
                        r.error(
                            format!("{cp}.httpCookie.name"),
                            "cookie name must not be empty",
                        );
                    }
                }
            }
            (Some(_), None) => {}
        }
    }
    if let Some(pool) = &tp.connection_pool {
        if let Some(t) = pool
            .tcp
            .as_ref()
            .and_then(|tcp| tcp.connect_timeout.as_ref())
        {
            r.check(
                format!("{path}.connectionPool.tcp.connectTimeout"),
                check_duration(t),
            );
        }
        if let Some(t) = pool.http.as_ref().and_then(|h| h.idle_timeout.as_ref()) {
            r.check(
                format!("{path}.connectionPool.http.idleTimeout"),
                check_positive_duration(t),
            );
        }
    }
    if let Some(od) = &tp.outlier_detection {
        let op = format!("{path}.outlierDetection");
        if let Some(t) = &od.interval {
            r.check(format!("{op}.interval"), check_duration(t));
        }
        if let Some(t) = &od.base_ejection_time {
            r.check(format!("{op}.baseEjectionTime"), check_duration(t));
        }
        if let Some(p) = od.max_ejection_percent {
            if !(0..=100).contains(&p) {
                r.error(
                    format!("{op}.maxEjectionPercent"),
                    format!("percentage {p} must be in 0..=100"),
                );
            }
        }
    }
    if let Some(tls) = &tp.tls {
        let tp = format!("{path}.tls");
        let originates = matches!(tls.mode, ClientTlsMode::Simple | ClientTlsMode::Mutual);
        if !originates
            && (tls.sni.is_some()
                || tls.ca_certificates.is_some()
                || !tls.subject_alt_names.is_empty())
        {
            r.error(
                &tp,
                "sni, caCertificates and subjectAltNames are only for modes SIMPLE and MUTUAL",
            );
        }
        let mutual = tls.mode == ClientTlsMode::Mutual;
        match (&tls.client_certificate, &tls.private_key, mutual) {
            (Some(c), Some(k), true) => {
                for (f, v) in [("clientCertificate", c), ("privateKey", k)] {
                    if !v.starts_with('/') {
                        r.error(
                            format!("{tp}.{f}"),
                            format!("{v:?} must be an absolute path in the proxy container"),
                        );
                    }
                }
            }
            (None, None, false) => {}
            (_, _, true) => r.error(
                &tp,
                "mode MUTUAL needs clientCertificate and privateKey (paths in the proxy container)",
            ),
            (_, _, false) => r.error(
                &tp,
                "clientCertificate and privateKey are only for mode MUTUAL",
            ),
        }
        if let Some(sni) = &tls.sni {
            r.check(format!("{tp}.sni"), check_host(sni, false));
        }
        if let Some(ca) = &tls.ca_certificates {
            if !ca.contains("-----BEGIN CERTIFICATE-----") {
                r.error(
                    format!("{tp}.caCertificates"),
                    "must be PEM certificates (-----BEGIN CERTIFICATE-----), inline",
                );
            }
        }
        for (i, san) in tls.subject_alt_names.iter().enumerate() {
            if san.is_empty() {
                r.error(format!("{tp}.subjectAltNames[{i}]"), "must not be empty");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// ServiceEntry

/// Validates a ServiceEntry on its own.
pub fn validate_service_entry(se: &ServiceEntry) -> Vec<ValidationError> {
    let mut r = Report::new(ResourceRef::of(se));
    let spec = &se.spec;
    let resolution = spec.resolution.unwrap_or_default();
    if spec.hosts.is_empty() {
        r.error("spec.hosts", "at least one host is required");
    }
    for (i, host) in spec.hosts.iter().enumerate() {
        let field = format!("spec.hosts[{i}]");
        if host == "*" {
            r.error(&field, "host \"*\" is not allowed");
            continue;
        }
        r.check(&field, check_host(host, true));
        if host.starts_with('*') && resolution == Resolution::Dns && spec.endpoints.is_empty() {
            r.error(
                &field,
                "a wildcard host cannot be resolved by DNS; add endpoints or use resolution NONE",
            );
        }
    }
    for (i, addr) in spec.addresses.iter().enumerate() {
        r.check(format!("spec.addresses[{i}]"), check_ip_or_cidr(addr));
    }
    if spec.ports.is_empty() {
        r.error("spec.ports", "at least one port is required");
    }
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for (i, port) in spec.ports.iter().enumerate() {
        let pp = format!("spec.ports[{i}]");
        r.check(format!("{pp}.number"), check_port(port.number));
        if !numbers.insert(port.number) {
            r.error(
                format!("{pp}.number"),
                format!("duplicate port {}", port.number),
            );
        }
        if port.name.is_empty() {
            r.error(format!("{pp}.name"), "port name is required");
        } else if !names.insert(port.name.as_str()) {
            r.error(
                format!("{pp}.name"),
                format!("duplicate port name {:?}", port.name),
            );
        }
    }
    match resolution {
        Resolution::None if !spec.endpoints.is_empty() => r.error(
            "spec.endpoints",
            "endpoints are not allowed with resolution NONE (use STATIC or DNS)",
        ),
        Resolution::Static if spec.endpoints.is_empty() => r.error(
            "spec.endpoints",
            "resolution STATIC needs at least one endpoint",
        ),
        _ => {}
    }
    for (i, ep) in spec.endpoints.iter().enumerate() {
        let ep_path = format!("spec.endpoints[{i}]");
        let is_ip = ep.address.parse::<IpAddr>().is_ok();
        if resolution == Resolution::Static && !is_ip {
            r.error(
                format!("{ep_path}.address"),
                format!(
                    "{:?} must be an IP address with resolution STATIC",
                    ep.address
                ),
            );
        } else if !is_ip {
            r.check(format!("{ep_path}.address"), check_host(&ep.address, false));
        }
        for (name, number) in &ep.ports {
            let field = format!("{ep_path}.ports[{name}]");
            if !names.contains(name.as_str()) {
                r.error(&field, format!("no port named {name:?} in spec.ports"));
            }
            r.check(field, check_port(*number));
        }
    }
    r.errors
}

// ---------------------------------------------------------------------------
// Gateway

/// Validates a Gateway on its own.
pub fn validate_gateway(gw: &Gateway) -> Vec<ValidationError> {
    let mut r = Report::new(ResourceRef::of(gw));
    if gw.spec.servers.is_empty() {
        r.error("spec.servers", "at least one server is required");
    }
    if gw.spec.selector.is_empty() {
        r.error(
            "spec.selector",
            "a selector is required: the labels of the gateway proxy pods (an empty selector would select nothing)",
        );
    }
    let mut credentials: BTreeMap<u32, &str> = BTreeMap::new();
    for (i, server) in gw.spec.servers.iter().enumerate() {
        let Some(cred) = server
            .tls
            .as_ref()
            .and_then(|t| t.credential_name.as_deref())
        else {
            continue;
        };
        if let Some(other) = credentials.insert(server.port.number, cred) {
            if other != cred {
                r.error(
                    format!("spec.servers[{i}].tls.credentialName"),
                    format!(
                        "port {} already serves credential {other:?}: one certificate per port (put every host in its SANs)",
                        server.port.number
                    ),
                );
            }
        }
    }
    let mut protocols: BTreeMap<u32, Protocol> = BTreeMap::new();
    for (i, server) in gw.spec.servers.iter().enumerate() {
        let sp = format!("spec.servers[{i}]");
        let port = &server.port;
        r.check(format!("{sp}.port.number"), check_port(port.number));
        if port.name.is_empty() {
            r.error(format!("{sp}.port.name"), "port name is required");
        }
        match port.protocol {
            None => r.error(
                format!("{sp}.port.protocol"),
                "protocol is required (HTTP or HTTPS)",
            ),
            Some(p @ (Protocol::Http | Protocol::Https)) => {
                if let Some(other) = protocols.insert(port.number, p) {
                    if other != p {
                        r.error(
                            format!("{sp}.port"),
                            format!("port {} is used with both HTTP and HTTPS", port.number),
                        );
                    }
                }
            }
            Some(p) => r.error(
                format!("{sp}.port.protocol"),
                format!(
                    "protocol {} is not supported by the mesh gateway yet (use HTTP or HTTPS)",
                    p.as_str()
                ),
            ),
        }
        if server.hosts.is_empty() {
            r.error(format!("{sp}.hosts"), "at least one host is required");
        }
        for (j, host) in server.hosts.iter().enumerate() {
            r.check(format!("{sp}.hosts[{j}]"), check_gateway_host(host));
        }
        match (port.protocol, &server.tls) {
            (Some(Protocol::Https), None) => r.error(
                format!("{sp}.tls"),
                "HTTPS servers need tls (mode SIMPLE and credentialName)",
            ),
            (Some(Protocol::Https), Some(tls)) => match &tls.credential_name {
                None => r.error(
                    format!("{sp}.tls.credentialName"),
                    "credentialName (a kubernetes.io/tls Secret) is required",
                ),
                Some(name) => r.check(
                    format!("{sp}.tls.credentialName"),
                    check_dns_subdomain(name),
                ),
            },
            (_, Some(_)) => r.error(format!("{sp}.tls"), "tls is only allowed on HTTPS servers"),
            _ => {}
        }
    }
    r.errors
}

// ---------------------------------------------------------------------------
// Security

/// Validates a PeerAuthentication on its own.
pub fn validate_peer_authentication(pa: &PeerAuthentication) -> Vec<ValidationError> {
    let mut r = Report::new(ResourceRef::of(pa));
    let spec = &pa.spec;
    let has_selector = spec
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty());
    if !spec.port_level_mtls.is_empty() && !has_selector {
        r.error(
            "spec.portLevelMtls",
            "portLevelMtls needs a selector with matchLabels (ports belong to workloads)",
        );
    }
    for (port, mtls) in &spec.port_level_mtls {
        let field = format!("spec.portLevelMtls[{port}]");
        match port.parse::<u32>() {
            Ok(n) => r.check(&field, check_port(n)),
            Err(_) => r.error(&field, format!("{port:?} is not a port number")),
        }
        if mtls.mode.is_none() {
            r.error(format!("{field}.mode"), "mode is required");
        }
    }
    r.errors
}

/// Validates an AuthorizationPolicy on its own.
pub fn validate_authorization_policy(ap: &AuthorizationPolicy) -> Vec<ValidationError> {
    let mut r = Report::new(ResourceRef::of(ap));
    for (i, rule) in ap.spec.rules.iter().enumerate() {
        let rp = format!("spec.rules[{i}]");
        for (j, from) in rule.from.iter().enumerate() {
            let sp = format!("{rp}.from[{j}].source");
            let s = &from.source;
            if s.principals.is_empty()
                && s.not_principals.is_empty()
                && s.namespaces.is_empty()
                && s.not_namespaces.is_empty()
            {
                r.error(&sp, "source must set at least one field");
            }
            for (field, values) in [
                ("principals", &s.principals),
                ("notPrincipals", &s.not_principals),
                ("namespaces", &s.namespaces),
                ("notNamespaces", &s.not_namespaces),
            ] {
                for (k, v) in values.iter().enumerate() {
                    r.check(format!("{sp}.{field}[{k}]"), check_wildcard_value(v));
                }
            }
        }
        for (j, to) in rule.to.iter().enumerate() {
            let op = format!("{rp}.to[{j}].operation");
            let o = &to.operation;
            if o.hosts.is_empty()
                && o.ports.is_empty()
                && o.not_ports.is_empty()
                && o.methods.is_empty()
                && o.not_methods.is_empty()
                && o.paths.is_empty()
                && o.not_paths.is_empty()
            {
                r.error(&op, "operation must set at least one field");
            }
            for (k, v) in o.hosts.iter().enumerate() {
                r.check(format!("{op}.hosts[{k}]"), check_wildcard_value(v));
            }
            for (field, values) in [("ports", &o.ports), ("notPorts", &o.not_ports)] {
                for (k, v) in values.iter().enumerate() {
                    let result = match v.parse::<u32>() {
                        Ok(n) => check_port(n),
                        Err(_) => Err(format!("{v:?} is not a port number")),
                    };
                    r.check(format!("{op}.{field}[{k}]"), result);
                }
            }
            for (field, values) in [("methods", &o.methods), ("notMethods", &o.not_methods)] {
                for (k, v) in values.iter().enumerate() {
                    r.check(format!("{op}.{field}[{k}]"), check_method(v));
                }
            }
            for (field, values) in [("paths", &o.paths), ("notPaths", &o.not_paths)] {
                for (k, v) in values.iter().enumerate() {
                    r.check(format!("{op}.{field}[{k}]"), check_auth_path(v));
                }
            }
        }
    }
    r.errors
}

// ---------------------------------------------------------------------------
// Between resources

/// Every subset a VirtualService routes or mirrors to must be defined by the
/// DestinationRule for that host: the one in the VirtualService's namespace
/// if there is one, otherwise any other (exact host before wildcard).
fn check_subset_references(set: &ResourceSet) -> Vec<ValidationError> {
    let mut errors = Vec::new();
    for vs in &set.virtual_services {
        let ns = namespace_of(vs);
        let mut r = Report::new(ResourceRef::of(vs));
        let check = |r: &mut Report, path: String, d: &Destination| {
            let Some(subset) = &d.subset else { return };
            let host = resolve_host(&d.host, &ns);
            match destination_rule_for(set, &host, &ns) {
                None => r.error(
                    format!("{path}.subset"),
                    format!("subset {subset:?} is used but no DestinationRule for host {host} defines subsets"),
                ),
                Some(dr) if !dr.spec.subsets.iter().any(|s| &s.name == subset) => {
                    let known: Vec<&str> = dr.spec.subsets.iter().map(|s| s.name.as_str()).collect();
                    r.error(
                        format!("{path}.subset"),
                        format!(
                            "unknown subset {subset:?} for host {host}: DestinationRule {}/{} defines [{}]",
                            namespace_of(dr),
                            dr.name_any(),
                            known.join(", ")
                        ),
                    );
                }
                Some(_) => {}
            }
        };
        for (i, route) in vs.spec.http.iter().enumerate() {
            for (k, d) in route.route.iter().enumerate() {
                check(
                    &mut r,
                    format!("spec.http[{i}].route[{k}].destination"),
                    &d.destination,
                );
            }
            if let Some(m) = &route.mirror {
                check(&mut r, format!("spec.http[{i}].mirror"), m);
            }
        }
        for (i, route) in vs.spec.tcp.iter().enumerate() {
            for (k, d) in route.route.iter().enumerate() {
                check(
                    &mut r,
                    format!("spec.tcp[{i}].route[{k}].destination"),
                    &d.destination,
                );
            }
        }
        errors.extend(r.errors);
    }
    errors
}

fn destination_rule_for<'a>(
    set: &'a ResourceSet,
    host: &str,
    client_namespace: &str,
) -> Option<&'a DestinationRule> {
    let exact = |dr: &&DestinationRule| resolve_host(&dr.spec.host, &namespace_of(*dr)) == host;
    let wildcard = |dr: &&DestinationRule| host_matches(&dr.spec.host, host);
    let local = |dr: &&DestinationRule| namespace_of(*dr) == client_namespace;
    let drs = &set.destination_rules;
    drs.iter()
        .filter(exact)
        .find(local)
        .or_else(|| drs.iter().find(exact))
        .or_else(|| drs.iter().filter(wildcard).find(local))
        .or_else(|| drs.iter().find(wildcard))
}

/// Oldest first, then by name, so that the first claimant keeps a host.
fn by_age<K: Resource>(items: &[K]) -> Vec<&K> {
    let mut sorted: Vec<&K> = items.iter().collect();
    sorted.sort_by_key(|r| {
        (
            r.meta().creation_timestamp.clone(),
            namespace_of(*r),
            r.meta().name.clone(),
        )
    });
    sorted
}

/// Two VirtualServices in one namespace may not claim the same host for the
/// same gateway: the older one keeps it, the newer one gets the error.
fn check_virtual_service_conflicts(vss: &[VirtualService]) -> Vec<ValidationError> {
    let mut errors = Vec::new();
    let mut claimed: BTreeMap<(String, String, String), String> = BTreeMap::new();
    for vs in by_age(vss) {
        let ns = namespace_of(vs);
        let mut r = Report::new(ResourceRef::of(vs));
        let gateways: Vec<String> = if vs.spec.gateways.is_empty() {
            vec![MESH_GATEWAY.to_string()]
        } else {
            vs.spec
                .gateways
                .iter()
                .map(|g| match g.split_once('/') {
                    Some(_) => g.clone(),
                    None if g == MESH_GATEWAY => g.clone(),
                    None => format!("{ns}/{g}"),
                })
                .collect()
        };
        for (i, host) in vs.spec.hosts.iter().enumerate() {
            let fqdn = resolve_host(host, &ns);
            for gw in &gateways {
                let key = (ns.clone(), fqdn.clone(), gw.clone());
                match claimed.get(&key) {
                    Some(owner) if *owner != vs.name_any() => r.error(
                        format!("spec.hosts[{i}]"),
                        format!(
                            "host {fqdn} (gateway {gw}) is already claimed by VirtualService {ns}/{owner}"
                        ),
                    ),
                    Some(_) => {}
                    None => {
                        claimed.insert(key, vs.name_any());
                    }
                }
            }
        }
        errors.extend(r.errors);
    }
    errors
}

/// Two DestinationRules in one namespace may not be for the same host.
fn check_destination_rule_conflicts(drs: &[DestinationRule]) -> Vec<ValidationError> {
    let mut errors = Vec::new();
    let mut claimed: BTreeMap<(String, String), String> = BTreeMap::new();
    for dr in by_age(drs) {
        let ns = namespace_of(dr);
        let fqdn = resolve_host(&dr.spec.host, &ns);
        match claimed.get(&(ns.clone(), fqdn.clone())) {
            Some(owner) => {
                let mut r = Report::new(ResourceRef::of(dr));
                r.error(
                    "spec.host",
                    format!("host {fqdn} already has DestinationRule {ns}/{owner}"),
                );
                errors.extend(r.errors);
            }
            None => {
                claimed.insert((ns, fqdn), dr.name_any());
            }
        }
    }
    errors
}

/// Only one PeerAuthentication without a selector per namespace.
fn check_peer_authentication_conflicts(pas: &[PeerAuthentication]) -> Vec<ValidationError> {
    let mut errors = Vec::new();
    let mut claimed: BTreeMap<String, String> = BTreeMap::new();
    for pa in by_age(pas) {
        let namespace_wide = pa
            .spec
            .selector
            .as_ref()
            .is_none_or(|s| s.match_labels.is_empty());
        if !namespace_wide {
            continue;
        }
        let ns = namespace_of(pa);
        match claimed.get(&ns) {
            Some(owner) => {
                let mut r = Report::new(ResourceRef::of(pa));
                r.error(
                    "spec.selector",
                    format!(
                        "namespace {ns} already has a namespace-wide PeerAuthentication ({owner})"
                    ),
                );
                errors.extend(r.errors);
            }
            None => {
                claimed.insert(ns, pa.name_any());
            }
        }
    }
    errors
}
