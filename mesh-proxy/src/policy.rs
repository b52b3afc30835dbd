//! Per-route traffic policy on the request path: header operations,
//! rewrites, redirects, fault injection, retries (with a budget), deadlines
//! and request bodies that can be sent more than once (for retries and
//! mirrors).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};
use http_body::Body;
use http_body_util::BodyExt;
use mesh_proto::config::v1 as pb;
use rand::Rng;

use crate::body::{self, ProxyBody};
use crate::pool::UpstreamError;

/// Largest request body kept in memory so that it can be retried or
/// mirrored; larger bodies stream through once (no retry, no mirror).
pub const REPLAY_BUFFER_LIMIT: usize = 64 * 1024;

/// Share of requests that retries may add on top (Linkerd and Envoy use
/// budgets of the same order): 20%.
pub const RETRY_BUDGET_RATIO: f64 = 0.2;

/// Retries allowed per second regardless of the ratio, so that a quiet
/// service can still retry.
pub const RETRY_BUDGET_MIN_PER_SEC: f64 = 10.0;

/// Base of the jittered backoff between tries (Envoy's default).
pub const RETRY_BACKOFF_BASE: Duration = Duration::from_millis(25);

/// Response header on answers the proxy made because a limit or policy
/// (not the upstream) decided.
pub const FAULT_HEADER_VALUE: &str = "fault";

/// Applies one set of header operations.
pub fn apply_header_ops(h: &mut HeaderMap, ops: Option<&pb::HeaderOps>) {
    let Some(ops) = ops else { return };
    for name in &ops.remove {
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
            h.remove(n);
        }
    }
    for (name, value) in &ops.set {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            h.insert(n, v);
        }
    }
    for (name, value) in &ops.add {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            h.append(n, v);
        }
    }
}

/// The path after a rewrite: a matched prefix is replaced by `rewrite.uri`;
/// for other matches (exact, regex, none) the whole path is.
pub fn rewrite_path(path: &str, matched_prefix: Option<&str>, to: &str) -> String {
    match matched_prefix {
        Some(prefix) if path.starts_with(prefix) => {
            let rest = &path[prefix.len()..];
            if to.ends_with('/') && rest.starts_with('/') {
                format!("{to}{}", &rest[1..])
            } else {
                format!("{to}{rest}")
            }
        }
        _ => to.to_string(),
    }
}

/// The URI prefix the matched route condition used, if it was a prefix.
pub fn matched_prefix<'a>(route: &'a pb::HttpRoute, path: &str) -> Option<&'a str> {
    route
        .matches
        .iter()
        .find_map(|m| match m.uri.as_ref().and_then(|u| u.kind.as_ref()) {
            Some(pb::string_match::Kind::Prefix(p)) if path.starts_with(p.as_str()) => {
                Some(p.as_str())
            }
            _ => None,
        })
}

/// Rewrites `uri` (path, keeping the query) and returns the new authority
/// to use, if any.
pub fn apply_rewrite(uri: &Uri, route: &pb::HttpRoute) -> Option<(Uri, Option<String>)> {
    let rw = route.rewrite.as_ref()?;
    let mut parts = uri.clone().into_parts();
    if !rw.uri.is_empty() {
        let path = rewrite_path(uri.path(), matched_prefix(route, uri.path()), &rw.uri);
        let pq = match uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        parts.path_and_query = pq.parse().ok();
    }
    let uri = Uri::from_parts(parts).ok()?;
    let authority = (!rw.authority.is_empty()).then(|| rw.authority.clone());
    Some((uri, authority))
}

/// The redirect answer for `route`, if it redirects: status (301 by
/// default) and Location built from the request's scheme, host and path.
pub fn redirect_location(
    r: &pb::Redirect,
    route: &pb::HttpRoute,
    uri: &Uri,
    host: Option<&str>,
) -> (StatusCode, String) {
    let status = StatusCode::from_u16(if r.code == 0 { 301 } else { r.code as u16 })
        .ok()
        .filter(StatusCode::is_redirection)
        .unwrap_or(StatusCode::MOVED_PERMANENTLY);
    let scheme = if r.scheme.is_empty() {
        uri.scheme_str().unwrap_or("http")
    } else {
        r.scheme.as_str()
    };
    let authority = if r.authority.is_empty() {
        host.unwrap_or("")
    } else {
        r.authority.as_str()
    };
    let path = if r.uri.is_empty() {
        uri.path().to_string()
    } else {
        rewrite_path(uri.path(), matched_prefix(route, uri.path()), &r.uri)
    };
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    (status, format!("{scheme}://{authority}{path}{query}"))
}

/// Whether a percentage (0..=100) fires now.
pub fn chance(percentage: f64) -> bool {
    if percentage >= 100.0 {
        return true;
    }
    if percentage <= 0.0 {
        return false;
    }
    rand::rng().random_bool(percentage / 100.0)
}

/// A request body that can be sent again.
pub enum ReplayBody {
    /// Fully read (small): can be cloned for retries and mirrors.
    Buffered(Bytes),
    /// Too large to keep: streams once.
    Streaming(ProxyBody),
    /// The streaming body was sent.
    Taken,
}

impl ReplayBody {
    /// Reads `body` into memory if it ends within `limit` bytes; otherwise
    /// returns what was read followed by the rest, as one stream.
    pub async fn read<B>(body: B, limit: usize) -> Result<ReplayBody, crate::body::BoxError>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<crate::body::BoxError>,
    {
        if body.is_end_stream() {
            return Ok(ReplayBody::Buffered(Bytes::new()));
        }
        if body.size_hint().lower() as usize > limit {
            return Ok(ReplayBody::Streaming(body::boxed(body)));
        }
        let mut body = body;
        let mut buf = BytesMut::new();
        loop {
            match body.frame().await {
                None => return Ok(ReplayBody::Buffered(buf.freeze())),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        buf.extend_from_slice(&data);
                        if buf.len() > limit {
                            let head = http_body_util::Full::new(buf.freeze());
                            let chained = StreamAfter {
                                head: Some(head),
                                rest: body,
                            };
                            return Ok(ReplayBody::Streaming(body::boxed(chained)));
                        }
                    }
                    // Trailers on a request (rare outside gRPC streaming):
                    // the body is complete; trailers are not replayed.
                    Err(_) => return Ok(ReplayBody::Buffered(buf.freeze())),
                },
            }
        }
    }

    /// A body to send now; `None` when a streaming body was already taken.
    pub fn take(&mut self) -> Option<ProxyBody> {
        match std::mem::replace(self, ReplayBody::Taken) {
            ReplayBody::Buffered(b) => {
                *self = ReplayBody::Buffered(b.clone());
                Some(body::full(b))
            }
            ReplayBody::Streaming(s) => Some(s),
            ReplayBody::Taken => None,
        }
    }

    pub fn is_replayable(&self) -> bool {
        matches!(self, ReplayBody::Buffered(_))
    }

    /// A copy for a mirror, if the body is in memory.
    pub fn copy(&self) -> Option<ProxyBody> {
        match self {
            ReplayBody::Buffered(b) => Some(body::full(b.clone())),
            ReplayBody::Streaming(_) | ReplayBody::Taken => None,
        }
    }
}

/// A body that yields `head`, then the frames of `rest`.
struct StreamAfter<H, R> {
    head: Option<H>,
    rest: R,
}

impl<H, R> Body for StreamAfter<H, R>
where
    H: Body<Data = Bytes> + Unpin,
    H::Error: Into<crate::body::BoxError>,
    R: Body<Data = Bytes> + Unpin,
    R::Error: Into<crate::body::BoxError>,
{
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        if let Some(head) = self.head.as_mut() {
            match std::pin::Pin::new(head).poll_frame(cx) {
                Poll::Ready(Some(f)) => return Poll::Ready(Some(f.map_err(Into::into))),
                Poll::Ready(None) => self.head = None,
                Poll::Pending => return Poll::Pending,
            }
        }
        std::pin::Pin::new(&mut self.rest)
            .poll_frame(cx)
            .map(|o| o.map(|r| r.map_err(Into::into)))
    }
}

/// Methods that are safe to send twice.
pub fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// A compiled retry policy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub on_5xx: bool,
    pub on_gateway_error: bool,
    pub on_reset: bool,
    pub on_connect_failure: bool,
    /// Status codes retried (`retriable-status-codes` or numbers).
    pub statuses: Vec<u16>,
    pub non_idempotent: bool,
    /// Share of requests retries may add (0.2 = 20%).
    pub budget_ratio: f64,
    /// Retries per second allowed whatever the ratio.
    pub budget_min_per_sec: f64,
}

/// The retry every request without a body gets when its route has none:
/// one more try, on another endpoint, only when the connection could not
/// be made (refused, timed out, TLS failed), so the request never left.
/// A restarting or vanished pod then costs a few milliseconds, not a 503,
/// as with Istio's default retry policy. Requests with a body stream
/// without being kept, so they can't be sent twice unless a route asks.
pub static CONNECT_FAILURE_RETRY: RetryPolicy = RetryPolicy {
    attempts: 1,
    per_try_timeout: None,
    on_5xx: false,
    on_gateway_error: false,
    on_reset: false,
    on_connect_failure: true,
    statuses: Vec::new(),
    non_idempotent: true,
    budget_ratio: RETRY_BUDGET_RATIO,
    budget_min_per_sec: RETRY_BUDGET_MIN_PER_SEC,
};

impl RetryPolicy {
    /// From the route's config; `None` when it does not retry. Unknown
    /// `retry_on` words are configuration errors (named by the caller).
    pub fn compile(r: Option<&pb::RetryPolicy>) -> Result<Option<Self>, String> {
        let Some(r) = r.filter(|r| r.attempts > 0) else {
            return Ok(None);
        };
        let mut p = RetryPolicy {
            attempts: r.attempts,
            per_try_timeout: (r.per_try_timeout_ms > 0)
                .then(|| Duration::from_millis(r.per_try_timeout_ms)),
            non_idempotent: r.retry_non_idempotent,
            budget_ratio: match r.budget_percent {
                0.0 => RETRY_BUDGET_RATIO,
                p if (0.0..=1000.0).contains(&p) => p / 100.0,
                p => return Err(format!("budgetPercent {p} is not between 0 and 1000")),
            },
            budget_min_per_sec: match r.budget_min_per_second {
                0.0 => RETRY_BUDGET_MIN_PER_SEC,
                m if m > 0.0 => m,
                m => return Err(format!("budgetMinPerSecond {m} is negative")),
            },
            ..Default::default()
        };
        for word in &r.retry_on {
            match word.as_str() {
                "5xx" => p.on_5xx = true,
                "gateway-error" => p.on_gateway_error = true,
                "reset" => p.on_reset = true,
                "connect-failure" => p.on_connect_failure = true,
                // The codes themselves are listed as numbers; a refused
                // stream is retried by every policy (see `retries`).
                "retriable-status-codes" | "refused-stream" => {}
                n => match n.parse::<u16>() {
                    Ok(code) if (100..600).contains(&code) => p.statuses.push(code),
                    _ => return Err(format!("unknown retryOn condition {n:?}")),
                },
            }
        }
        if r.retry_on.is_empty() {
            // Istio's default: connect-failure, refused-stream, unavailable,
            // cancelled, retriable-status-codes(503).
            p.on_connect_failure = true;
            p.on_reset = true;
            p.statuses.push(503);
        }
        Ok(Some(p))
    }

    /// Whether this outcome of a try should be retried.
    pub fn retries(&self, outcome: &TryOutcome) -> bool {
        match outcome {
            TryOutcome::Status(s) => {
                let code = s.as_u16();
                (self.on_5xx && s.is_server_error())
                    || (self.on_gateway_error && matches!(code, 502..=504))
                    || self.statuses.contains(&code)
            }
            TryOutcome::Timeout => self.on_5xx || self.on_gateway_error,
            TryOutcome::Failed(e) => match e {
                UpstreamError::Connect { .. }
                | UpstreamError::ConnectTimeout { .. }
                | UpstreamError::Tls { .. } => {
                    self.on_connect_failure || self.on_5xx || self.on_gateway_error
                }
                UpstreamError::Http { .. } | UpstreamError::Stale { .. } => {
                    self.on_reset || self.on_5xx || self.on_gateway_error
                }
                // The endpoint did not process it: any retry policy may send
                // it again, as if the connection had failed.
                UpstreamError::Refused { .. } => true,
            },
        }
    }
}

/// What one try produced, as far as retrying is concerned.
#[derive(Debug)]
pub enum TryOutcome<'a> {
    Status(StatusCode),
    Timeout,
    Failed(&'a UpstreamError),
}

/// Caps retries to a share of the requests: every request deposits
/// [`RETRY_BUDGET_RATIO`] of a token, every retry takes one; a minimum
/// refill keeps quiet services able to retry.
#[derive(Debug)]
pub struct RetryBudget {
    state: Mutex<BudgetState>,
    /// Retries refused by the budget (for metrics and tests).
    pub exhausted: AtomicU64,
}

#[derive(Debug)]
struct BudgetState {
    tokens: f64,
    refilled: Instant,
}

/// Most tokens a budget holds (so a long quiet spell does not bank a burst).
const BUDGET_CAP: f64 = 100.0;

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            state: Mutex::new(BudgetState {
                tokens: RETRY_BUDGET_MIN_PER_SEC,
                refilled: Instant::now(),
            }),
            exhausted: AtomicU64::new(0),
        }
    }
}

impl RetryBudget {
    /// A request started; retries may add `ratio` of it.
    pub fn deposit(&self, ratio: f64) {
        if let Ok(mut s) = self.state.lock() {
            s.tokens = (s.tokens + ratio).min(BUDGET_CAP);
        }
    }

    /// Asks for one retry; `min_per_sec` retries per second are allowed
    /// whatever the deposits.
    pub fn withdraw(&self, min_per_sec: f64) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        let now = Instant::now();
        let elapsed = now.duration_since(s.refilled).as_secs_f64();
        s.refilled = now;
        s.tokens = (s.tokens + elapsed * min_per_sec).min(BUDGET_CAP);
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            true
        } else {
            self.exhausted.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// Backoff before retry number `n` (1-based): jittered exponential from
/// [`RETRY_BACKOFF_BASE`], at most 10x the base.
pub fn backoff(n: u32) -> Duration {
    let max = RETRY_BACKOFF_BASE * 2u32.saturating_pow(n.saturating_sub(1)).min(10);
    max.mul_f64(rand::rng().random_range(0.5..1.0))
}

/// The `grpc-timeout` header's deadline (`<digits><unit>`, unit one of
/// H M S m u n), if present and valid.
pub fn grpc_timeout(h: &HeaderMap) -> Option<Duration> {
    let v = h.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Writes `d` as a `grpc-timeout` value (milliseconds, rounded up).
pub fn grpc_timeout_value(d: Duration) -> HeaderValue {
    let ms = d.as_millis().clamp(1, 99_999_999);
    HeaderValue::from_str(&format!("{ms}m")).unwrap_or(HeaderValue::from_static("1m"))
}

#[cfg(test)]
mod tests;
