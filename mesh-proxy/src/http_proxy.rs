//! The layer-7 request path: route → destination → endpoint → upstream.
//!
//! Every request is balanced on its own, so one long-lived HTTP/2 or gRPC
//! connection from the app is spread over all endpoints (kube-proxy can only
//! balance the connection).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use crate::balance::PickContext;
use crate::body::{self, Guarded, ProxyBody};
use crate::model::{MeshState, Protocol, Route, RouteChoice};
use crate::policy;
use crate::pool::{UpstreamError, UpstreamProtocol};
use crate::routing::RequestInfo;
use crate::Shared;

/// Response header that says why the proxy answered instead of the upstream.
pub const ERROR_HEADER: &str = "x-mesh-error";
/// Set by the client proxy when an HTTP/1 request travels as HTTP/2 between
/// proxies, so the server proxy gives the app HTTP/1 again.
pub const ORIG_PROTO: &str = "x-mesh-orig-proto";
/// The caller's identity, for the app (Envoy's XFCC format:
/// `By=<this workload>;URI=<caller>`).
pub const XFCC: &str = "x-forwarded-client-cert";

/// Set by a gateway: the scheme the client used.
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// Appended by a gateway: the client's address.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Whether traffic arrives from the local app or goes to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Outbound,
    Inbound,
    /// Arriving at a gateway listener from outside the mesh.
    Gateway,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
            Self::Gateway => "gateway",
        }
    }
}

/// Where a connection's requests go.
#[derive(Debug, Clone)]
pub enum Target {
    /// A mesh service port: requests are routed and balanced.
    Service { name: Arc<str>, port: u16 },
    /// The local app (inbound): requests are forwarded as they are.
    Local { addr: SocketAddr },
    /// A gateway listener: routed by host, then by route.
    Gateway { port: u16, https: bool },
}

/// What every request on one downstream connection shares.
#[derive(Debug)]
pub struct ConnInfo {
    pub target: Target,
    pub client: SocketAddr,
    pub direction: Direction,
    /// The caller's SPIFFE ID, for connections that arrived over mesh mTLS.
    pub peer: Option<Arc<str>>,
}

/// Headers that describe one hop's connection and never cross the proxy.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named.iter().chain(HOP_BY_HOP.iter()) {
        h.remove(n);
    }
    // TE is hop-by-hop except "trailers", which gRPC needs end to end.
    if let Some(te) = h.get(header::TE) {
        if te.as_bytes().eq_ignore_ascii_case(b"trailers") {
            return;
        }
        h.remove(header::TE);
    }
}

/// An answer the proxy makes itself, with the reason in the body and header.
pub fn local_reply(
    status: StatusCode,
    kind: &'static str,
    msg: String,
    grpc: bool,
) -> Response<ProxyBody> {
    let mut resp = if grpc {
        // gRPC clients read the status from grpc-status, not the HTTP code.
        let code = match status {
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY => 14, // UNAVAILABLE
            StatusCode::GATEWAY_TIMEOUT => 4,                                // DEADLINE_EXCEEDED
            StatusCode::FORBIDDEN => 7,                                      // PERMISSION_DENIED
            _ => 13,                                                         // INTERNAL
        };
        let mut r = Response::new(body::empty());
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from(code));
        if let Ok(v) = HeaderValue::from_str(&percent_encode(&msg)) {
            h.insert("grpc-message", v);
        }
        r
    } else {
        let mut r = Response::new(body::full(format!("{msg}\n")));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        r
    };
    resp.headers_mut()
        .insert(ERROR_HEADER, HeaderValue::from_static(kind));
    resp
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b' '..=b'~' if b != b'%' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn is_grpc(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .map(|v| v.as_bytes().starts_with(b"application/grpc"))
        .unwrap_or(false)
}

/// Handles one request end to end. Never fails: errors become responses.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let state = shared.state.load_full();
    let grpc = is_grpc(req.headers());
    let downstream_version = req.version();
    let access_log = shared.access_log || state.settings.access_log;
    // Only the access log needs these after the request is consumed.
    let logged = access_log.then(|| (req.method().clone(), req.uri().path().to_string()));

    let (mut resp, dest_service, dest_workload, upstream) = match &conn.target {
        // HTTP/1 heads are held to this count by the guard; HTTP/2 ones
        // (bounded only in bytes by the HTTP/2 layer) are held to it here,
        // so that no upstream gets more fields than an HTTP/1 client could
        // send.
        _ if req.headers().len() > crate::h1_guard::MAX_HEADERS => (
            local_reply(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too-many-headers",
                format!(
                    "mesh-proxy: more than {} header fields",
                    crate::h1_guard::MAX_HEADERS
                ),
                grpc,
            ),
            "unknown".to_string(),
            "unknown".to_string(),
            None,
        ),
        // The proxy tunnels nothing: a CONNECT sent on would leave the
        // client believing in a tunnel that is not there.
        _ if req.method() == http::Method::CONNECT => (
            local_reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "connect",
                "mesh-proxy: CONNECT is not supported".into(),
                grpc,
            ),
            "unknown".to_string(),
            "unknown".to_string(),
            None,
        ),
        Target::Service { name, port } => {
            // Boxed: the routing future is large, and hyper moves the
            // per-request future into a task; a pointer moves cheaply.
            let out = Box::pin(outbound(&shared, &state, &conn, name, *port, req, grpc)).await;
            (out.response, name.to_string(), out.workload, out.upstream)
        }
        Target::Gateway { port, https } => {
            let out = Box::pin(gateway(&shared, &state, &conn, *port, *https, req, grpc)).await;
            (
                out.response,
                "gateway".to_string(),
                out.workload,
                out.upstream,
            )
        }
        Target::Local { addr } => {
            let resp = Box::pin(inbound(&shared, &state, &conn, *addr, req, grpc)).await;
            (
                resp,
                shared.local.workload.clone(),
                shared.local.workload.clone(),
                Some(*addr),
            )
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        // Upgrade is hop-by-hop and never offered upstream, so a 101 is the
        // upstream breaking protocol; passed on, the client would take the
        // connection for a tunnel.
        resp = local_reply(
            StatusCode::BAD_GATEWAY,
            "upstream-protocol",
            "mesh-proxy: the upstream switched protocols unasked".into(),
            grpc,
        );
    }
    *resp.version_mut() = downstream_version;
    strip_hop_by_hop(resp.headers_mut());

    let elapsed = started.elapsed();
    let status = resp.status();
    let code = status.as_str();
    // Inbound, the source is the caller's identity (namespace and
    // ServiceAccount) when it came over mTLS.
    let (src_ns, src_sa) = conn
        .peer
        .as_deref()
        .and_then(|p| {
            let id: mesh_api::WorkloadIdentity = p.parse().ok()?;
            Some((id.namespace, id.service_account))
        })
        .unwrap_or_else(|| ("unknown".into(), "unknown".into()));
    let labels = [
        conn.direction.as_str(),
        match conn.direction {
            Direction::Outbound | Direction::Gateway => shared.local.workload.as_str(),
            Direction::Inbound => src_sa.as_str(),
        },
        match conn.direction {
            Direction::Outbound | Direction::Gateway => shared.local.namespace.as_str(),
            Direction::Inbound => src_ns.as_str(),
        },
        dest_service.as_str(),
        dest_workload.as_str(),
        code,
    ];
    shared.metrics.requests.with_label_values(&labels).inc();
    shared
        .metrics
        .request_duration
        .with_label_values(&labels[..5])
        .observe(elapsed.as_secs_f64());
    if let Some((method, path)) = logged {
        let line = serde_json::json!({
            "direction": conn.direction.as_str(),
            "client": conn.client.to_string(),
            "method": method.as_str(),
            "path": path,
            "destination_service": dest_service,
            "upstream": upstream.map(|a| a.to_string()),
            "status": resp.status().as_u16(),
            "duration_ms": elapsed.as_secs_f64() * 1000.0,
            "request_id": resp.headers().get(crate::telemetry::REQUEST_ID).and_then(|v| v.to_str().ok()),
        });
        println!("{line}");
    }
    resp
}

struct Outcome {
    response: Response<ProxyBody>,
    workload: String,
    upstream: Option<SocketAddr>,
}

impl Outcome {
    /// An answer made by the proxy itself (no upstream was reached).
    fn local(status: StatusCode, kind: &'static str, msg: String, grpc: bool) -> Self {
        Self {
            response: local_reply(status, kind, msg, grpc),
            workload: "unknown".into(),
            upstream: None,
        }
    }
}

async fn outbound(
    shared: &Arc<Shared>,
    state: &MeshState,
    conn: &ConnInfo,
    name: &str,
    port: u16,
    mut req: Request<Incoming>,
    grpc: bool,
) -> Outcome {
    let fail = |status, kind, msg: String| Outcome::local(status, kind, msg, grpc);
    let Some(svc_idx) = state.service_by_name(name) else {
        return fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-service",
            format!("mesh-proxy: service {name} is not configured"),
        );
    };
    let svc = state.service(svc_idx);
    let request_id = crate::telemetry::propagate(req.headers_mut());

    let no_labels = BTreeMap::new();
    let route: Option<&Route> = {
        let info = RequestInfo {
            path: req.uri().path(),
            query: req.uri().query(),
            method: req.method(),
            headers: req.headers(),
            port,
            source_labels: shared.local.labels.as_ref().unwrap_or(&no_labels),
        };
        match svc.select_route(&info) {
            RouteChoice::Default => None,
            RouteChoice::Route(r) => Some(r),
            RouteChoice::NoMatch => {
                return fail(
                    StatusCode::NOT_FOUND,
                    "no-route",
                    format!(
                        "mesh-proxy: no route of {name} matches {} {}",
                        req.method(),
                        req.uri().path()
                    ),
                )
            }
        }
    };

    routed(
        shared,
        state,
        conn,
        Some(svc_idx),
        route,
        port,
        req,
        grpc,
        request_id,
    )
    .await
}

/// A request at a gateway listener: the virtual host by the request's host,
/// then the first matching route of that host.
async fn gateway(
    shared: &Arc<Shared>,
    state: &MeshState,
    conn: &ConnInfo,
    port: u16,
    https: bool,
    mut req: Request<Incoming>,
    grpc: bool,
) -> Outcome {
    let fail = |status, kind, msg: String| Outcome::local(status, kind, msg, grpc);
    let Some(listener) = state.gateway(port) else {
        return fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-listener",
            format!("mesh-proxy: no gateway listener on port {port}"),
        );
    };
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let host = crate::model::normalize_host(&authority);
    let Some(vhost) = listener.vhost(&host) else {
        return fail(
            StatusCode::NOT_FOUND,
            "no-route",
            format!("mesh-proxy: gateway port {port} serves no host {host:?}"),
        );
    };
    let request_id = crate::telemetry::propagate(req.headers_mut());
    // What the backend needs to know about the edge: the scheme and the client.
    let h = req.headers_mut();
    h.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if https { "https" } else { "http" }),
    );
    let client = conn.client.ip().to_string();
    let xff = match h.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.is_empty() => format!("{prev}, {client}"),
        _ => client,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert(X_FORWARDED_FOR, v);
    }
    let no_labels = BTreeMap::new();
    let info = RequestInfo {
        path: req.uri().path(),
        query: req.uri().query(),
        method: req.method(),
        headers: req.headers(),
        port,
        source_labels: shared.local.labels.as_ref().unwrap_or(&no_labels),
    };
    let Some(route) = vhost
        .routes
        .iter()
        .find(|r| r.matchers.is_empty() || r.matchers.iter().any(|m| m.matches(&info)))
    else {
        return fail(
            StatusCode::NOT_FOUND,
            "no-route",
            format!(
                "mesh-proxy: no route of {host} matches {} {}",
                req.method(),
                req.uri().path()
            ),
        );
    };
    routed(
        shared,
        state,
        conn,
        None,
        Some(route),
        port,
        req,
        grpc,
        request_id,
    )
    .await
}

/// Sends a request down its route (or to `default` when there is none):
/// redirect, faults, rewrites, the weighted destination, pool limits,
/// deadline, mirror, retries.
#[allow(clippy::too_many_arguments)]
async fn routed(
    shared: &Arc<Shared>,
    state: &MeshState,
    conn: &ConnInfo,
    default: Option<usize>,
    route: Option<&Route>,
    port: u16,
    mut req: Request<Incoming>,
    grpc: bool,
    request_id: HeaderValue,
) -> Outcome {
    let fail = |status, kind, msg: String| Outcome::local(status, kind, msg, grpc);
    if let Some(route) = route {
        let spec = &route.spec;
        if let Some(r) = &spec.redirect {
            let host = request_host(&req);
            let (status, location) = policy::redirect_location(r, spec, req.uri(), host.as_deref());
            let mut resp = Response::new(body::empty());
            *resp.status_mut() = status;
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            policy::apply_header_ops(resp.headers_mut(), spec.response_headers.as_ref());
            return Outcome {
                response: resp,
                workload: "redirect".into(),
                upstream: None,
            };
        }
        if let Some(f) = &spec.fault {
            if let Some(d) = f.delay.as_ref().filter(|d| policy::chance(d.percentage)) {
                shared.metrics.faults.with_label_values(&["delay"]).inc();
                tokio::time::sleep(std::time::Duration::from_millis(d.fixed_delay_ms)).await;
            }
            if let Some(a) = f.abort.as_ref().filter(|a| policy::chance(a.percentage)) {
                shared.metrics.faults.with_label_values(&["abort"]).inc();
                return Outcome {
                    response: fault_reply(a, grpc),
                    workload: "fault".into(),
                    upstream: None,
                };
            }
        }
        if let Some((uri, authority)) = policy::apply_rewrite(req.uri(), spec) {
            *req.uri_mut() = uri;
            if let Some(a) = authority {
                set_authority(&mut req, &a);
            }
        }
        policy::apply_header_ops(req.headers_mut(), spec.request_headers.as_ref());
    }

    let picked = route.and_then(|r| r.pick());
    let (dest_svc, subset, dest_port) = match (picked, default) {
        (Some(d), _) => (
            d.service,
            d.subset.as_str(),
            if d.port == 0 { port } else { d.port },
        ),
        (None, Some(svc)) => (svc, "", port),
        (None, None) => {
            return fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "no-destination",
                "mesh-proxy: the route has no destination".into(),
            )
        }
    };
    let dest_spec = route
        .zip(picked)
        .and_then(|(r, d)| r.spec.destinations.get(d.index));
    if let Some(d) = dest_spec {
        policy::apply_header_ops(req.headers_mut(), d.request_headers.as_ref());
    }
    let dest_name = &state.service(dest_svc).name;
    let Some(balancer) = state.backend(dest_svc, subset, dest_port) else {
        return fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-endpoints",
            format!("mesh-proxy: {dest_name} has no port {dest_port}"),
        );
    };
    // Connection-pool limits: refuse at once rather than queue without bound.
    let permit = match &balancer.limits {
        None => None,
        Some(l) => match l.admit() {
            Some(p) => Some(p),
            None => {
                let mut out = fail(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "pool-overflow",
                    format!(
                        "mesh-proxy: {dest_name} is at its connection-pool limit ({})",
                        l.describe
                    ),
                );
                if let Ok(v) = HeaderValue::from_str(&l.describe) {
                    out.response
                        .headers_mut()
                        .insert(crate::resilience::LIMIT_HEADER, v);
                }
                return out;
            }
        },
    };
    let upstream_proto = match (req.version(), state.service(dest_svc).protocol(dest_port)) {
        (_, Some(Protocol::Http2 | Protocol::Grpc)) | (Version::HTTP_2, _) => {
            UpstreamProtocol::Http2
        }
        _ => UpstreamProtocol::Http1,
    };
    req.headers_mut().remove(ORIG_PROTO);

    // The deadline: the route's timeout, or the caller's grpc-timeout if
    // sooner (and then passed on, shortened by what is already spent).
    let route_timeout = route.and_then(|r| r.timeout);
    let deadline = match (route_timeout, policy::grpc_timeout(req.headers())) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
    .map(|t| tokio::time::Instant::now() + t);

    let retry = match route.and_then(|r| r.retry.as_ref()) {
        Some(p) => Some(p).filter(|p| p.non_idempotent || policy::is_idempotent(req.method())),
        None => Some(&policy::CONNECT_FAILURE_RETRY)
            .filter(|_| hyper::body::Body::is_end_stream(req.body())),
    };
    let mirror = route
        .and_then(|r| r.mirror.as_ref())
        .filter(|(_, pct)| policy::chance(*pct));
    let (parts, incoming) = req.into_parts();
    let mut body = if retry.is_some() || mirror.is_some() {
        match policy::ReplayBody::read(incoming, policy::REPLAY_BUFFER_LIMIT).await {
            Ok(b) => b,
            Err(e) => {
                return fail(
                    StatusCode::BAD_REQUEST,
                    "request-body",
                    format!("mesh-proxy: reading the request body: {e}"),
                )
            }
        }
    } else {
        policy::ReplayBody::Streaming(body::boxed(incoming))
    };
    if let Some((m, _)) = mirror {
        if let Some(copy) = body.copy() {
            send_mirror(shared, state, m, port, &parts, copy);
        }
    }

    let budget = retry.map(|_| shared.retry_budget(dest_name));
    if let (Some(b), Some(p)) = (&budget, retry) {
        b.deposit(p.budget_ratio);
    }
    let max_tries = 1 + retry.map(|p| p.attempts).unwrap_or(0);
    let idempotent = policy::is_idempotent(&parts.method);
    let mut parts = Some(parts);
    let mut tried = 0;
    let mut last_endpoint: Option<std::net::SocketAddr> = None;
    loop {
        tried += 1;
        let Some(head) = parts.as_ref() else {
            break fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "retry",
                "mesh-proxy: the request cannot be sent again".into(),
            );
        };
        // A retry prefers another endpoint than the one that just failed.
        let endpoint = {
            let ctx = PickContext {
                headers: Some(&head.headers),
                source_ip: Some(conn.client.ip()),
            };
            // Ejected endpoints are skipped (outlier detection); when every
            // endpoint is ejected they are all tried anyway (Envoy's panic
            // mode): an endpoint that may have recovered beats a certain 503.
            let now = std::time::Instant::now();
            let first = balancer
                .pick(&ctx, |e| !e.outlier.is_ejected(now))
                .or_else(|| balancer.pick(&ctx, |_| true));
            match (first, last_endpoint) {
                (Some(e), Some(prev)) if e.addr == prev && balancer.endpoints().len() > 1 => {
                    balancer
                        .pick(&ctx, |e| e.addr != prev && !e.outlier.is_ejected(now))
                        .or(Some(e))
                }
                (e, _) => e,
            }
        };
        let Some(endpoint) = endpoint else {
            let which = if subset.is_empty() {
                String::new()
            } else {
                format!(" subset {subset}")
            };
            return fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "no-endpoints",
                format!("mesh-proxy: no endpoints for {dest_name}{which} port {dest_port}"),
            );
        };
        last_endpoint = Some(endpoint.addr);
        let Some(this_body) = body.take() else {
            break fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "retry",
                "mesh-proxy: the request body cannot be sent again".into(),
            );
        };
        // The last possible try takes the request head; earlier ones copy it.
        let head = if tried == max_tries || !body.is_replayable() {
            parts.take()
        } else {
            parts.clone()
        };
        let Some(head) = head else {
            break fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "retry",
                "mesh-proxy: the request cannot be sent again".into(),
            );
        };
        let mut attempt = Request::from_parts(head, this_body);
        if endpoint.identity.is_some() && upstream_proto == UpstreamProtocol::Http1 {
            // Between proxies everything is HTTP/2; remember what the app spoke.
            attempt
                .headers_mut()
                .insert(ORIG_PROTO, HeaderValue::from_static("HTTP/1.1"));
        }
        let now = tokio::time::Instant::now();
        let left = deadline.map(|d| d.saturating_duration_since(now));
        if left == Some(std::time::Duration::ZERO) {
            break fail(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!("mesh-proxy: {dest_name} did not answer within the route timeout"),
            );
        }
        if let (Some(l), true) = (left, attempt.headers().contains_key("grpc-timeout")) {
            attempt
                .headers_mut()
                .insert("grpc-timeout", policy::grpc_timeout_value(l));
        }
        let per_try = retry.and_then(|p| p.per_try_timeout);
        let limit = match (left, per_try) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let per_try_fired =
            per_try.is_some() && limit == per_try && left.is_none_or(|l| per_try < Some(l));
        let inflight = endpoint.start();
        tracing::debug!(request_id = ?request_id, endpoint = %endpoint.addr, try = tried, "routing request");
        let result = forward(
            shared,
            endpoint.addr,
            attempt,
            upstream_proto,
            endpoint.security(),
            balancer.conn,
            Some(inflight),
            limit,
        )
        .await;
        let outcome = match &result {
            Ok(resp) => policy::TryOutcome::Status(resp.status()),
            Err(ForwardError::Timeout(_)) => policy::TryOutcome::Timeout,
            Err(ForwardError::Upstream(e)) => policy::TryOutcome::Failed(e),
        };
        let unreachable = matches!(&outcome, policy::TryOutcome::Failed(e) if e.is_connect());
        let unprocessed = matches!(&outcome, policy::TryOutcome::Failed(e) if e.is_unprocessed());
        // An idempotent request that a reused keep-alive connection lost as
        // the app closed it (its idle timeout) may be sent again whatever
        // the policy says (RFC 9110 §9.2.2): the app is not to blame, and
        // the caller must not see a 502 for our reuse.
        let stale = idempotent
            && matches!(
                &outcome,
                policy::TryOutcome::Failed(UpstreamError::Stale { .. })
            );
        if !stale {
            balancer.record(
                &endpoint,
                match &outcome {
                    policy::TryOutcome::Status(s) => {
                        crate::resilience::Health::of_status(s.as_u16())
                    }
                    _ if unreachable => crate::resilience::Health::Unreachable,
                    _ => crate::resilience::Health::GatewayError,
                },
            );
        }
        // A try that never reached its endpoint's application added no
        // load there: it does not spend the retry budget.
        let again = tried < max_tries
            && body.is_replayable()
            && (stale || retry.is_some_and(|p| p.retries(&outcome)))
            && (per_try_fired || !matches!(outcome, policy::TryOutcome::Timeout))
            && (unprocessed
                || stale
                || budget
                    .as_ref()
                    .zip(retry)
                    .is_some_and(|(b, p)| b.withdraw(p.budget_min_per_sec)));
        if again {
            shared
                .metrics
                .retries
                .with_label_values(&[dest_name.as_str()])
                .inc();
            tracing::debug!(request_id = ?request_id, endpoint = %endpoint.addr, ?outcome, "retrying");
            let pause = policy::backoff(tried);
            if deadline.is_none_or(|d| tokio::time::Instant::now() + pause < d) {
                tokio::time::sleep(pause).await;
                continue;
            }
        }
        let mut response = match result {
            Ok(r) => r,
            Err(ForwardError::Timeout(t)) => local_reply(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!(
                    "mesh-proxy: upstream {} did not answer within {t:?}",
                    endpoint.addr
                ),
                grpc,
            ),
            Err(ForwardError::Upstream(e)) => upstream_failure(endpoint.addr, &e, grpc),
        };
        if let Some(d) = dest_spec {
            policy::apply_header_ops(response.headers_mut(), d.response_headers.as_ref());
        }
        if let Some(r) = route {
            policy::apply_header_ops(response.headers_mut(), r.spec.response_headers.as_ref());
        }
        // The pool slot is held until the response body ends.
        let response = match permit {
            None => response,
            Some(p) => {
                let (parts, b) = response.into_parts();
                Response::from_parts(parts, body::boxed(Guarded::new(b, p)))
            }
        };
        break Outcome {
            response,
            workload: endpoint.workload.clone(),
            upstream: Some(endpoint.addr),
        };
    }
}

/// The host a request is for (URI authority, else Host), without the port.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    req.uri().host().map(str::to_string).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| h.rsplit_once(':').map(|(h, _)| h).unwrap_or(h).to_string())
    })
}

/// Replaces the request's authority (URI and Host).
fn set_authority<B>(req: &mut Request<B>, authority: &str) {
    if let Ok(v) = HeaderValue::from_str(authority) {
        req.headers_mut().insert(header::HOST, v);
    }
    if req.uri().authority().is_some() {
        let mut parts = req.uri().clone().into_parts();
        parts.authority = authority.parse().ok();
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

/// The answer of an injected abort.
fn fault_reply(a: &mesh_proto::config::v1::FaultAbort, grpc: bool) -> Response<ProxyBody> {
    if grpc && a.grpc_status != 0 {
        let mut r = Response::new(body::empty());
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from(a.grpc_status));
        h.insert("grpc-message", HeaderValue::from_static("fault%20injected"));
        h.insert(
            ERROR_HEADER,
            HeaderValue::from_static(policy::FAULT_HEADER_VALUE),
        );
        return r;
    }
    let status =
        StatusCode::from_u16(a.http_status as u16).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut r = local_reply(
        status,
        policy::FAULT_HEADER_VALUE,
        "fault filter abort".into(),
        false,
    );
    *r.status_mut() = status;
    r
}

/// Fires a copy of the request at the mirror destination and forgets it:
/// the caller's response never waits for it or sees it.
fn send_mirror(
    shared: &Arc<Shared>,
    state: &MeshState,
    m: &crate::model::RouteDestination,
    port: u16,
    parts: &http::request::Parts,
    body: ProxyBody,
) {
    let port = if m.port == 0 { port } else { m.port };
    let Some(balancer) = state.backend(m.service, &m.subset, port) else {
        return;
    };
    let Some(endpoint) = balancer.pick(&PickContext::default(), |_| true) else {
        return;
    };
    let proto = match state.service(m.service).protocol(port) {
        Some(Protocol::Http2 | Protocol::Grpc) => UpstreamProtocol::Http2,
        _ if parts.version == Version::HTTP_2 => UpstreamProtocol::Http2,
        _ => UpstreamProtocol::Http1,
    };
    let mut req = Request::from_parts(parts.clone(), body);
    // Envoy's convention: the mirror sees the host with "-shadow".
    let host = request_host(&req).map(|h| format!("{h}-shadow"));
    if let Some(h) = host {
        set_authority(&mut req, &h);
    }
    if endpoint.identity.is_some() && proto == UpstreamProtocol::Http1 {
        req.headers_mut()
            .insert(ORIG_PROTO, HeaderValue::from_static("HTTP/1.1"));
    }
    let shared = shared.clone();
    let conn_policy = balancer.conn;
    tokio::spawn(async move {
        let inflight = endpoint.start();
        let r = forward(
            &shared,
            endpoint.addr,
            req,
            proto,
            endpoint.security(),
            conn_policy,
            Some(inflight),
            Some(MIRROR_TIMEOUT),
        )
        .await;
        match r {
            Ok(resp) => {
                // Read it to the end so the connection can be reused.
                let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
            }
            Err(e) => tracing::debug!(mirror = %endpoint.addr, "mirror failed: {e}"),
        }
    });
}

/// How long a mirrored copy may take before it is abandoned.
const MIRROR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Checks and forwards a request for the local app.
async fn inbound(
    shared: &Arc<Shared>,
    state: &MeshState,
    conn: &ConnInfo,
    app: SocketAddr,
    mut req: Request<Incoming>,
    grpc: bool,
) -> Response<ProxyBody> {
    // Authorization and the app must see the same path: normalize first,
    // then decide, then forward the normalized path.
    let path = match crate::authz::normalize_path(req.uri().path()) {
        Ok(p) => p,
        Err(e) => {
            return local_reply(
                StatusCode::BAD_REQUEST,
                "bad-path",
                format!("mesh-proxy: {e}"),
                grpc,
            )
        }
    };
    let host = request_host(&req);
    let policies = state.authorization_policies();
    let subject = crate::authz::Subject {
        principal: conn.peer.as_deref(),
        path: Some(&path),
        method: Some(req.method().as_str()),
        host: host.as_deref(),
        port: app.port(),
    };
    if let crate::authz::Decision::Deny(why) = crate::authz::authorize(policies, &subject) {
        return local_reply(
            StatusCode::FORBIDDEN,
            "rbac",
            format!("mesh-proxy: RBAC: access denied ({why})"),
            grpc,
        );
    }
    if path != req.uri().path() {
        let pq = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = pq.parse().ok();
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    let h = req.headers_mut();
    // Only the proxy may say who called: never trust these from the wire.
    h.remove(XFCC);
    let orig_h1 = h.remove(ORIG_PROTO).is_some() && conn.peer.is_some();
    if let (Some(peer), Some(me)) = (&conn.peer, shared.tls.identity()) {
        if let Ok(v) = HeaderValue::from_str(&format!("By={me};URI={peer}")) {
            h.insert(XFCC, v);
        }
    }
    let proto = if orig_h1 || req.version() != Version::HTTP_2 {
        UpstreamProtocol::Http1
    } else {
        UpstreamProtocol::Http2
    };
    let (parts, b) = req.into_parts();
    // A bodiless idempotent request that a reused keep-alive connection
    // loses as the app closes it (its idle timeout) goes once more.
    let again = (policy::is_idempotent(&parts.method) && hyper::body::Body::is_end_stream(&b))
        .then(|| parts.clone());
    let to_app = |req| {
        forward(
            shared,
            app,
            req,
            proto,
            crate::pool::Security::Plaintext,
            Default::default(),
            None,
            None,
        )
    };
    let mut result = to_app(Request::from_parts(parts, body::boxed(b))).await;
    let stale = matches!(
        result,
        Err(ForwardError::Upstream(UpstreamError::Stale { .. }))
    );
    if let (true, Some(head)) = (stale, again) {
        tracing::debug!(%app, "the app closed a reused connection; sending again");
        result = to_app(Request::from_parts(head, body::empty())).await;
    }
    match result {
        Ok(r) => r,
        Err(ForwardError::Timeout(t)) => local_reply(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!("mesh-proxy: the app did not answer within {t:?}"),
            grpc,
        ),
        Err(ForwardError::Upstream(e)) => upstream_failure(app, &e, grpc),
    }
}

/// Why a request could not be forwarded.
#[derive(Debug)]
enum ForwardError {
    /// No response head within this time.
    Timeout(std::time::Duration),
    Upstream(UpstreamError),
}

impl std::fmt::Display for ForwardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForwardError::Timeout(t) => write!(f, "no response within {t:?}"),
            ForwardError::Upstream(e) => e.fmt(f),
        }
    }
}

/// The local answer for a failed upstream.
fn upstream_failure(addr: SocketAddr, e: &UpstreamError, grpc: bool) -> Response<ProxyBody> {
    let (status, kind) = match e {
        UpstreamError::Connect { .. } | UpstreamError::ConnectTimeout { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, "upstream-connect")
        }
        UpstreamError::Tls { .. } => (StatusCode::SERVICE_UNAVAILABLE, "upstream-tls"),
        UpstreamError::Http { .. } | UpstreamError::Stale { .. } => {
            (StatusCode::BAD_GATEWAY, "upstream-reset")
        }
        UpstreamError::Refused { .. } => (StatusCode::SERVICE_UNAVAILABLE, "upstream-refused"),
    };
    tracing::debug!(%addr, "upstream failed: {e}");
    local_reply(status, kind, format!("mesh-proxy: {e}"), grpc)
}

/// Sends the request to `addr` and streams the response back.
#[allow(clippy::too_many_arguments)]
async fn forward(
    shared: &Arc<Shared>,
    addr: SocketAddr,
    req: Request<ProxyBody>,
    proto: UpstreamProtocol,
    security: crate::pool::Security<'_>,
    conn_policy: crate::resilience::ConnPolicy,
    inflight: Option<crate::balance::InFlight>,
    timeout: Option<std::time::Duration>,
) -> Result<Response<ProxyBody>, ForwardError> {
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    match proto {
        UpstreamProtocol::Http1 => {
            parts.version = Version::HTTP_11;
            if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
                // HTTP/1 upstream: origin-form target, authority in Host.
                // The URI's authority wins over a Host header (RFC 9112
                // 3.2.2; HTTP/2's :authority likewise), as it did for
                // routing and authorization: the upstream must get the
                // host that was decided on, not a Host sent alongside.
                let authority = parts.uri.authority().map(|a| match a.port() {
                    Some(p) => format!("{}:{p}", a.host()),
                    None => a.host().to_string(),
                });
                if let Some(v) = authority.and_then(|a| HeaderValue::from_str(&a).ok()) {
                    parts.headers.insert(header::HOST, v);
                }
                let mut p = http::uri::Parts::default();
                p.path_and_query = parts.uri.path_and_query().cloned();
                parts.uri = Uri::from_parts(p).unwrap_or_else(|_| Uri::from_static("/"));
            }
            if !parts.headers.contains_key(header::HOST) {
                if let Ok(v) = HeaderValue::from_str(&addr.to_string()) {
                    parts.headers.insert(header::HOST, v);
                }
            }
        }
        UpstreamProtocol::Http2 => {
            parts.version = Version::HTTP_2;
            if parts.uri.scheme().is_none() || parts.uri.authority().is_none() {
                // HTTP/2 upstream: absolute URI, authority from Host.
                let authority = parts
                    .headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .and_then(|h| h.parse::<http::uri::Authority>().ok())
                    .or_else(|| addr.to_string().parse().ok());
                let mut p = http::uri::Parts::default();
                p.scheme = Some(http::uri::Scheme::HTTP);
                p.authority = authority;
                p.path_and_query = Some(
                    parts
                        .uri
                        .path_and_query()
                        .cloned()
                        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
                );
                parts.uri = Uri::from_parts(p).unwrap_or_else(|_| Uri::from_static("/"));
            }
            parts.headers.remove(header::HOST);
        }
    }
    let upstream_req = Request::from_parts(parts, body);
    let send = shared
        .pool
        .send(addr, proto, security, conn_policy, upstream_req);
    let result = match timeout {
        Some(t) => tokio::time::timeout(t, send)
            .await
            .map_err(|_| ForwardError::Timeout(t))?,
        None => send.await,
    };
    let (resp, dispatched) = result.map_err(ForwardError::Upstream)?;
    if let Some(i) = &inflight {
        i.observe_since(dispatched);
    }
    let (parts, body) = resp.into_parts();
    let body: ProxyBody = match inflight {
        Some(i) => body::boxed(Guarded::new(body, i)),
        None => body::boxed(body),
    };
    Ok(Response::from_parts(parts, body))
}

/// A body with a fixed payload (used by the admin and tests).
pub fn text(s: impl Into<Bytes>) -> ProxyBody {
    body::full(s)
}
