//! DestinationRule resilience: outlier detection (ejecting endpoints that
//! keep failing) and connection-pool limits (refusing requests beyond a
//! backend's capacity instead of queueing them without bound).

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mesh_proto::config::v1 as pb;

use crate::balance::Endpoint;

/// Default share of a backend's endpoints that may be ejected at once.
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;
/// Default ejection time (doubled, tripled… for repeat ejections).
pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);
/// Longest an endpoint stays ejected.
pub const MAX_EJECTION: Duration = Duration::from_secs(300);
/// Default interval after which a recovered endpoint's repeat count resets.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// Response header naming the limit that refused a request.
pub const LIMIT_HEADER: &str = "x-mesh-limit";

/// Outlier detection settings of one backend.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierPolicy {
    /// Eject after this many 5xx in a row (0: off).
    pub consecutive_5xx: u32,
    /// Eject after this many 502/503/504 or connect failures in a row (0: off).
    pub consecutive_gateway: u32,
    pub interval: Duration,
    pub base_ejection: Duration,
    pub max_ejection_percent: u32,
}

impl OutlierPolicy {
    pub fn compile(o: Option<&pb::OutlierDetection>) -> Option<Self> {
        let o = o?;
        if o.consecutive_5xx == 0 && o.consecutive_gateway_errors == 0 {
            return None;
        }
        let ms = |v: u64, d: Duration| {
            if v == 0 {
                d
            } else {
                Duration::from_millis(v)
            }
        };
        Some(Self {
            consecutive_5xx: o.consecutive_5xx,
            consecutive_gateway: o.consecutive_gateway_errors,
            interval: ms(o.interval_ms, DEFAULT_INTERVAL),
            base_ejection: ms(o.base_ejection_time_ms, DEFAULT_BASE_EJECTION),
            max_ejection_percent: match o.max_ejection_percent {
                0 => DEFAULT_MAX_EJECTION_PERCENT,
                p => p.min(100),
            },
        })
    }
}

/// Outlier detection every backend has without a configured one: an
/// endpoint that refuses connections (a restarting proxy, a pod gone before
/// its endpoint is withdrawn) is skipped for a second, then two, three...
/// instead of costing every request that picks it a failed connect. Never
/// more than half of the endpoints, so a service-wide failure still reaches
/// the endpoints and shows.
pub const UNREACHABLE: OutlierPolicy = OutlierPolicy {
    consecutive_5xx: 0,
    consecutive_gateway: 1,
    interval: DEFAULT_INTERVAL,
    base_ejection: Duration::from_secs(1),
    max_ejection_percent: 50,
};

/// One endpoint's failure streaks and ejection.
#[derive(Debug, Default)]
pub struct OutlierState {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    ejection: Mutex<Ejection>,
    /// Ejected at least once since it was last forgiven (a lock-free check
    /// for the success path).
    ejected_before: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct Ejection {
    until: Option<Instant>,
    /// How many times in a row it was ejected (the next ejection lasts
    /// this many times the base).
    times: u32,
}

/// What one try told us about an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Success,
    /// A 500, 501, 505…: counts for `consecutive_5xx` only.
    ServerError,
    /// 502, 503, 504, a reset or a timeout: counts for both streaks.
    GatewayError,
    /// No connection could be made (refused, timed out, TLS failed): a
    /// gateway error for configured outlier detection, and, without any,
    /// ejection by [`UNREACHABLE`].
    Unreachable,
}

impl Health {
    pub fn of_status(status: u16) -> Self {
        match status {
            502..=504 => Health::GatewayError,
            500..=599 => Health::ServerError,
            _ => Health::Success,
        }
    }
}

impl OutlierState {
    /// Whether the endpoint is ejected at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejection
            .lock()
            .map(|e| e.until.is_some_and(|u| now < u))
            .unwrap_or(false)
    }
}

/// Records `health` for `endpoint` (one of `members`) and ejects it when a
/// streak reaches the policy's threshold and the ejection cap allows.
/// Returns true when this call ejected it.
pub fn record(
    policy: &OutlierPolicy,
    members: &[std::sync::Arc<Endpoint>],
    endpoint: &Endpoint,
    health: Health,
) -> bool {
    let s = &endpoint.outlier;
    let now = Instant::now();
    let (fives, gateways) = match health {
        Health::Success => {
            s.consecutive_5xx.store(0, Ordering::Relaxed);
            s.consecutive_gateway.store(0, Ordering::Relaxed);
            if s.ejected_before.load(Ordering::Relaxed) {
                if let Ok(mut e) = s.ejection.lock() {
                    // Healthy for a while after its last ejection: forgive.
                    if e.times > 0 && e.until.is_some_and(|u| now > u + policy.interval) {
                        *e = Ejection::default();
                        s.ejected_before.store(false, Ordering::Relaxed);
                    }
                }
            }
            return false;
        }
        Health::ServerError => (
            s.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1,
            s.consecutive_gateway.load(Ordering::Relaxed),
        ),
        Health::GatewayError | Health::Unreachable => (
            s.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1,
            s.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1,
        ),
    };
    let tripped = (policy.consecutive_5xx > 0 && fives >= policy.consecutive_5xx)
        || (policy.consecutive_gateway > 0 && gateways >= policy.consecutive_gateway);
    if !tripped || s.is_ejected(now) {
        return false;
    }
    // Like Envoy: eject while fewer than the max share are ejected, so one
    // endpoint can always go when none is out.
    let ejected = members.iter().filter(|m| m.outlier.is_ejected(now)).count();
    let pct = policy.max_ejection_percent as usize;
    if pct == 0 || ejected * 100 >= members.len() * pct {
        return false;
    }
    let Ok(mut e) = s.ejection.lock() else {
        return false;
    };
    e.times += 1;
    s.ejected_before.store(true, Ordering::Relaxed);
    let length = (policy.base_ejection * e.times).min(MAX_EJECTION);
    e.until = Some(now + length);
    s.consecutive_5xx.store(0, Ordering::Relaxed);
    s.consecutive_gateway.store(0, Ordering::Relaxed);
    tracing::info!(endpoint = %endpoint.addr, pod = %endpoint.pod, ejected_for = ?length, "outlier detection ejected an endpoint");
    true
}

/// How connections to a backend's endpoints are opened and reused
/// (DestinationRule `connectionPool.tcp.connectTimeout`,
/// `http.maxRequestsPerConnection` and `http.idleTimeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnPolicy {
    pub connect_timeout: std::time::Duration,
    /// Requests one upstream connection carries before a new one is opened
    /// (0: no limit). Spreads long-lived clients over endpoints that come
    /// and go, and retires connections through old load balancers.
    pub max_requests_per_connection: u32,
    /// How long a connection may go without a new request and still be
    /// reused; `None`: the default, [`DEFAULT_H1_IDLE_TIMEOUT`] for HTTP/1
    /// and no limit for HTTP/2.
    pub idle_timeout: Option<std::time::Duration>,
}

/// HTTP/1 connections idle longer than this are not reused: below the
/// keep-alive timeouts of common app servers (Node.js and uvicorn 5 s), so
/// that we do not send a request on a connection the app is closing.
/// Linkerd uses the same 3 s.
pub const DEFAULT_H1_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

impl Default for ConnPolicy {
    fn default() -> Self {
        Self {
            connect_timeout: crate::pool::DEFAULT_CONNECT_TIMEOUT,
            max_requests_per_connection: 0,
            idle_timeout: None,
        }
    }
}

impl ConnPolicy {
    pub fn compile(p: Option<&pb::ConnectionPool>) -> Self {
        let mut c = Self::default();
        if let Some(p) = p {
            if p.connect_timeout_ms > 0 {
                c.connect_timeout = std::time::Duration::from_millis(p.connect_timeout_ms);
            }
            c.max_requests_per_connection = p.max_requests_per_connection;
            if p.idle_timeout_ms > 0 {
                c.idle_timeout = Some(std::time::Duration::from_millis(p.idle_timeout_ms));
            }
        }
        c
    }

    /// How long an idle HTTP/1 connection stays reusable.
    pub fn h1_idle_timeout(&self) -> std::time::Duration {
        self.idle_timeout.unwrap_or(DEFAULT_H1_IDLE_TIMEOUT)
    }

    /// Whether an HTTP/2 connection whose last request went at `last` may
    /// take another.
    pub fn h2_fresh(&self, last: std::time::Instant) -> bool {
        self.idle_timeout.is_none_or(|t| last.elapsed() < t)
    }

    /// Whether a connection that carried `used` requests may carry another.
    pub fn reusable(&self, used: u32) -> bool {
        self.max_requests_per_connection == 0 || used < self.max_requests_per_connection
    }
}

/// Connection-pool limits of one backend, as a cap on concurrent requests.
#[derive(Debug)]
pub struct PoolLimits {
    /// Requests that may be in flight: connections + pending.
    pub max_in_flight: usize,
    /// For the refusal's header.
    pub describe: String,
    in_flight: AtomicUsize,
}

impl PoolLimits {
    /// From `connectionPool`; `None` when it sets no limit on requests.
    /// `maxConnections` bounds requests being served (HTTP/1 needs one
    /// connection each) and `maxPendingRequests` those waiting for one.
    pub fn compile(p: Option<&pb::ConnectionPool>) -> Option<Self> {
        let p = p?;
        if p.max_connections == 0 && p.max_pending_requests == 0 {
            return None;
        }
        let conns = if p.max_connections == 0 {
            usize::MAX / 2
        } else {
            p.max_connections as usize
        };
        let pending = p.max_pending_requests as usize;
        Some(Self {
            max_in_flight: conns.saturating_add(pending),
            describe: format!(
                "maxConnections={} maxPendingRequests={}",
                p.max_connections, p.max_pending_requests
            ),
            in_flight: AtomicUsize::new(0),
        })
    }

    /// Takes a slot; `None` when the backend is at its limit.
    pub fn admit(self: &std::sync::Arc<Self>) -> Option<PoolPermit> {
        let mut current = self.in_flight.load(Ordering::Relaxed);
        loop {
            if current >= self.max_in_flight {
                return None;
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(PoolPermit {
                        limits: self.clone(),
                    })
                }
                Err(c) => current = c,
            }
        }
    }
}

/// A request's slot in a backend's limits; freed when dropped (after the
/// response body ends).
#[derive(Debug)]
pub struct PoolPermit {
    limits: std::sync::Arc<PoolLimits>,
}

impl Drop for PoolPermit {
    fn drop(&mut self) {
        self.limits.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn members(n: u16) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| Arc::new(Endpoint::new(([10, 0, 0, 1], 8000 + i).into())))
            .collect()
    }

    fn policy(max_percent: u32) -> OutlierPolicy {
        OutlierPolicy {
            consecutive_5xx: 3,
            consecutive_gateway: 0,
            interval: Duration::from_secs(1),
            base_ejection: Duration::from_millis(100),
            max_ejection_percent: max_percent,
        }
    }

    #[test]
    fn ejects_after_the_streak_and_returns_after_the_ejection_time() {
        let m = members(4);
        let p = policy(50);
        assert!(!record(&p, &m, &m[0], Health::ServerError));
        assert!(
            !record(&p, &m, &m[0], Health::Success),
            "a success resets the streak"
        );
        for _ in 0..2 {
            assert!(!record(&p, &m, &m[0], Health::ServerError));
        }
        assert!(record(&p, &m, &m[0], Health::GatewayError));
        assert!(m[0].outlier.is_ejected(Instant::now()));
        assert!(!m[0]
            .outlier
            .is_ejected(Instant::now() + Duration::from_millis(150)));
    }

    #[test]
    fn never_ejects_more_than_the_max_percentage() {
        let m = members(4);
        let p = policy(50);
        let mut ejected = 0;
        for e in &m {
            for _ in 0..3 {
                if record(&p, &m, e, Health::ServerError) {
                    ejected += 1;
                }
            }
        }
        assert_eq!(ejected, 2, "50% of 4");
        // 10% of 4 endpoints still allows one ejection.
        let m = members(4);
        let p = policy(10);
        let n: usize = m
            .iter()
            .map(|e| {
                (0..3)
                    .filter(|_| record(&p, &m, e, Health::ServerError))
                    .count()
            })
            .sum();
        assert_eq!(n, 1);
    }

    #[test]
    fn pool_limits_refuse_beyond_capacity_and_free_on_drop() {
        let l = Arc::new(
            PoolLimits::compile(Some(&pb::ConnectionPool {
                max_connections: 2,
                max_pending_requests: 1,
                ..Default::default()
            }))
            .unwrap(),
        );
        let held: Vec<_> = (0..3)
            .map(|_| l.admit().expect("within the limit"))
            .collect();
        assert!(l.admit().is_none());
        drop(held);
        assert!(l.admit().is_some());
        assert!(PoolLimits::compile(Some(&pb::ConnectionPool::default())).is_none());
    }
}
