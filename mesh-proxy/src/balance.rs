//! Per-request load balancing over a set of endpoints.
//!
//! The default is power-of-two-choices over an EWMA latency estimate (as in
//! Linkerd and Finagle): pick two endpoints at random and favour the one
//! with the lower `latency × (in-flight + 1)`, in proportion to how much
//! cheaper it is, so equal endpoints get equal shares. Round robin, least request
//! and consistent hashing (ring hash, for session affinity) are the others.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;

/// How fast an endpoint's latency estimate fades while it is not used, so
/// that an endpoint avoided after a slow answer is soon tried again and
/// measured afresh. Linkerd uses 10 s; on a busy two-core node one
/// scheduling hiccup would then starve a healthy endpoint for seconds.
pub const EWMA_DECAY: Duration = Duration::from_secs(1);

/// Weight of a new latency sample in the moving average.
pub const EWMA_ALPHA: f64 = 0.1;

/// A sample counts for at most this multiple of the current estimate: one
/// outlier moves the estimate, a run of slow answers moves it all the way.
pub const EWMA_OUTLIER_CLAMP: f64 = 4.0;

/// Latency assumed for an endpoint before it has been measured, so that new
/// endpoints are tried soon but not flooded.
pub const EWMA_DEFAULT_RTT: Duration = Duration::from_millis(1);

/// Latency differences smaller than this ratio are treated as noise by P2C
/// (it then balances on in-flight requests alone).
/// Sibling pods of one Deployment differ by tens of percent from moment to
/// moment; an endpoint has to be clearly slower or busier to lose traffic.
pub const COST_NOISE_RATIO: f64 = 1.5;

/// Virtual nodes per endpoint on the consistent-hash ring; 100 keeps the
/// load spread within a few percent for small endpoint sets.
pub const RING_VNODES: usize = 100;

/// Which algorithm picks the endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// Power of two choices over peak-EWMA latency (the default).
    P2cEwma,
    RoundRobin,
    /// Power of two choices over in-flight requests.
    LeastRequest,
    Random,
    /// Ring hash on a request key (header, cookie or source IP).
    ConsistentHash(HashKey),
}

/// What a consistent hash is computed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    Header(http::HeaderName),
    Cookie(String),
    SourceIp,
}

/// One upstream endpoint and its live load statistics. Shared across config
/// reloads (matched by address), so the statistics survive a reload.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// SPIFFE ID the endpoint must present, if meshed.
    pub identity: Option<Arc<str>>,
    /// TLS origination settings, for servers outside the mesh.
    pub tls: Option<Arc<crate::pool::OriginationTls>>,
    /// Pod name, for logs and metrics.
    pub pod: String,
    /// Workload name for metrics (the `app` label, else the pod name).
    pub workload: String,
    pub labels: std::collections::BTreeMap<String, String>,
    in_flight: AtomicUsize,
    ewma: Mutex<Ewma>,
    /// Requests sent to this endpoint (for tests and the admin view).
    pub requests: AtomicU64,
    /// Failure streaks and ejection (outlier detection).
    pub outlier: crate::resilience::OutlierState,
}

#[derive(Debug)]
struct Ewma {
    /// Estimated latency in nanoseconds.
    rtt_ns: f64,
    /// Moving average of how far samples land from the estimate
    /// (nanoseconds): the endpoint's own jitter.
    dev_ns: f64,
    stamp: Instant,
    /// Whether any response has been observed yet.
    measured: bool,
}

impl Ewma {
    fn decay_factor(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.stamp).as_nanos() as f64;
        (-elapsed / EWMA_DECAY.as_nanos() as f64).exp()
    }

    fn decayed(&self, now: Instant) -> f64 {
        self.rtt_ns * self.decay_factor(now)
    }

    /// (estimate, jitter) at `now`, both fading at the same rate.
    fn estimate(&self, now: Instant) -> Latency {
        let f = self.decay_factor(now);
        Latency {
            rtt: self.rtt_ns * f,
            jitter: self.dev_ns * f,
        }
    }
}

/// An endpoint's latency estimate and jitter, in nanoseconds.
#[derive(Clone, Copy, Debug)]
struct Latency {
    rtt: f64,
    jitter: f64,
}

impl Latency {
    /// Whether `self` and `other` differ by more than measurement noise:
    /// by [`COST_NOISE_RATIO`] and by more than the two endpoints' jitter
    /// together. On a CPU-starved node every endpoint's answers swing by
    /// milliseconds; the estimates then cross back and forth and P2C
    /// balances on in-flight requests instead of chasing the swings.
    fn clearly_differs(self, other: Latency) -> bool {
        let (lo, hi) = (self.rtt.min(other.rtt), self.rtt.max(other.rtt));
        hi > lo * COST_NOISE_RATIO && hi - lo > self.jitter + other.jitter
    }
}

impl Endpoint {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            identity: None,
            tls: None,
            pod: String::new(),
            workload: "unknown".into(),
            labels: Default::default(),
            in_flight: AtomicUsize::new(0),
            ewma: Mutex::new(Ewma {
                rtt_ns: EWMA_DEFAULT_RTT.as_nanos() as f64,
                dev_ns: 0.0,
                stamp: Instant::now(),
                measured: false,
            }),
            requests: AtomicU64::new(0),
            outlier: Default::default(),
        }
    }

    /// The current latency estimate, if measured.
    pub fn latency_estimate(&self) -> Option<Duration> {
        let e = self.ewma.lock().ok()?;
        e.measured
            .then(|| Duration::from_nanos(e.decayed(Instant::now()) as u64))
    }

    /// Requests to this endpoint that have not finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Estimated latency and jitter; `None` until the endpoint has
    /// answered once.
    fn latency(&self, now: Instant) -> Option<Latency> {
        let e = self.ewma.lock().ok()?;
        e.measured.then(|| e.estimate(now))
    }

    /// Records one observed latency into the moving average.
    pub fn observe(&self, rtt: Duration) {
        let now = Instant::now();
        if let Ok(mut e) = self.ewma.lock() {
            let sample = rtt.as_nanos() as f64;
            let Latency { rtt, jitter } = e.estimate(now);
            if !e.measured {
                e.rtt_ns = sample;
                e.dev_ns = 0.0;
            } else {
                let sample = sample.min(rtt.max(1.0) * EWMA_OUTLIER_CLAMP);
                e.rtt_ns = EWMA_ALPHA * sample + (1.0 - EWMA_ALPHA) * rtt;
                e.dev_ns = EWMA_ALPHA * (sample - rtt).abs() + (1.0 - EWMA_ALPHA) * jitter;
            }
            e.stamp = now;
            e.measured = true;
        }
    }

    /// How the proxy talks to this endpoint.
    pub fn security(&self) -> crate::pool::Security<'_> {
        match (&self.identity, &self.tls) {
            (Some(id), _) => crate::pool::Security::Mesh(id),
            (None, Some(t)) => crate::pool::Security::Origination(t),
            (None, None) => crate::pool::Security::Plaintext,
        }
    }

    /// Marks a request as started; the guard marks it finished when dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight {
            endpoint: self.clone(),
            started: Instant::now(),
        }
    }
}

/// An in-flight request on an endpoint.
#[derive(Debug)]
pub struct InFlight {
    endpoint: Arc<Endpoint>,
    started: Instant,
}

impl InFlight {
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// Records the latency to the response head (called once it arrives).
    pub fn observe_response(&self) {
        self.endpoint.observe(self.started.elapsed());
    }

    /// Records the latency from `dispatched` (when the request went out on
    /// a ready connection) to now.
    pub fn observe_since(&self, dispatched: Instant) {
        self.endpoint.observe(dispatched.elapsed());
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a request offers for picking an endpoint.
#[derive(Default)]
pub struct PickContext<'a> {
    pub headers: Option<&'a http::HeaderMap>,
    pub source_ip: Option<std::net::IpAddr>,
}

/// A set of endpoints and the algorithm that picks among them.
#[derive(Debug)]
pub struct Balancer {
    endpoints: Vec<Arc<Endpoint>>,
    algorithm: Algorithm,
    /// Outlier detection of this backend (service or subset policy).
    pub outlier: Option<crate::resilience::OutlierPolicy>,
    /// Connection-pool limits of this backend.
    pub limits: Option<Arc<crate::resilience::PoolLimits>>,
    /// Connect timeout and requests per connection.
    pub conn: crate::resilience::ConnPolicy,
    next: AtomicUsize,
    /// Sorted (hash, endpoint index) for consistent hashing.
    ring: Vec<(u64, usize)>,
}

impl Balancer {
    pub fn new(endpoints: Vec<Arc<Endpoint>>, algorithm: Algorithm) -> Self {
        let ring = if matches!(algorithm, Algorithm::ConsistentHash(_)) {
            build_ring(&endpoints)
        } else {
            Vec::new()
        };
        Self {
            endpoints,
            algorithm,
            outlier: None,
            limits: None,
            conn: Default::default(),
            next: AtomicUsize::new(0),
            ring,
        }
    }

    /// With outlier detection and pool limits.
    pub fn with_resilience(
        mut self,
        outlier: Option<crate::resilience::OutlierPolicy>,
        limits: Option<crate::resilience::PoolLimits>,
    ) -> Self {
        self.outlier = outlier;
        self.limits = limits.map(Arc::new);
        self
    }

    /// With a connection policy.
    pub fn with_conn_policy(mut self, conn: crate::resilience::ConnPolicy) -> Self {
        self.conn = conn;
        self
    }

    /// Records how a try on `endpoint` went (for outlier detection).
    pub fn record(&self, endpoint: &Endpoint, health: crate::resilience::Health) {
        use crate::resilience::{record, Health, UNREACHABLE};
        match (&self.outlier, health) {
            (Some(p), _) => {
                record(p, &self.endpoints, endpoint, health);
            }
            (None, Health::Unreachable | Health::Success) => {
                record(&UNREACHABLE, &self.endpoints, endpoint, health);
            }
            (None, _) => {}
        }
    }

    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    pub fn algorithm(&self) -> &Algorithm {
        &self.algorithm
    }

    /// Picks an endpoint among those `usable` allows (e.g. not ejected);
    /// `None` when there is none.
    pub fn pick(
        &self,
        ctx: &PickContext<'_>,
        usable: impl Fn(&Endpoint) -> bool,
    ) -> Option<Arc<Endpoint>> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        match &self.algorithm {
            Algorithm::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|i| &self.endpoints[(start + i) % n])
                    .find(|e| usable(e))
                    .cloned()
            }
            Algorithm::Random => self.random_usable(&usable),
            Algorithm::P2cEwma => {
                let now = Instant::now();
                self.p2c(&usable, |a, b| {
                    let load = |e: &Endpoint| e.in_flight() as f64 + 1.0;
                    match (a.latency(now), b.latency(now)) {
                        // Clearly different latencies: compare latency x load.
                        (Some(la), Some(lb)) if la.clearly_differs(lb) => {
                            (la.rtt * load(a), lb.rtt * load(b), true)
                        }
                        // Latencies within noise of each other (or not yet
                        // measured): least request, so equal endpoints get
                        // equal shares and new ones are not flooded.
                        _ => (load(a), load(b), false),
                    }
                })
            }
            Algorithm::LeastRequest => self.p2c(&usable, |a, b| {
                (a.in_flight() as f64, b.in_flight() as f64, false)
            }),
            Algorithm::ConsistentHash(key) => match hash_key(key, ctx) {
                Some(h) => self.ring_lookup(h, &usable),
                // No key on this request: any endpoint will do.
                None => self.random_usable(&usable),
            },
        }
    }

    fn random_usable(&self, usable: &impl Fn(&Endpoint) -> bool) -> Option<Arc<Endpoint>> {
        let n = self.endpoints.len();
        let start = rand::rng().random_range(0..n);
        (0..n)
            .map(|i| &self.endpoints[(start + i) % n])
            .find(|e| usable(e))
            .cloned()
    }

    fn p2c(
        &self,
        usable: &impl Fn(&Endpoint) -> bool,
        costs: impl Fn(&Endpoint, &Endpoint) -> (f64, f64, bool),
    ) -> Option<Arc<Endpoint>> {
        let n = self.endpoints.len();
        let mut rng = rand::rng();
        let (a, b) = if n == 1 {
            (0, 0)
        } else {
            let a = rng.random_range(0..n);
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            (a, b)
        };
        let (ea, eb) = (&self.endpoints[a], &self.endpoints[b]);
        let chosen = match (usable(ea), usable(eb)) {
            (true, true) => {
                // `soft`: the cheaper wins with probability chi / (clo + chi)
                // (2x: 67/33, 10x: 91/9) instead of always; a hard rule on
                // latency turns measurement noise and scheduling luck into a
                // lasting skew between equal endpoints.
                let (ca, cb, soft) = costs(ea, eb);
                let (lo, hi) = if ca <= cb { (ea, eb) } else { (eb, ea) };
                let (clo, chi) = (ca.min(cb), ca.max(cb));
                let p_lo = if soft {
                    if clo + chi > 0.0 {
                        chi / (clo + chi)
                    } else {
                        0.5
                    }
                } else if chi > clo {
                    1.0
                } else {
                    0.5
                };
                if rng.random_bool(p_lo.clamp(0.0, 1.0)) {
                    lo
                } else {
                    hi
                }
            }
            (true, false) => ea,
            (false, true) => eb,
            (false, false) => return self.random_usable(usable),
        };
        Some(chosen.clone())
    }

    fn ring_lookup(&self, h: u64, usable: &impl Fn(&Endpoint) -> bool) -> Option<Arc<Endpoint>> {
        if self.ring.is_empty() {
            return None;
        }
        let start = self.ring.partition_point(|(k, _)| *k < h);
        let len = self.ring.len();
        (0..len)
            .map(|i| &self.endpoints[self.ring[(start + i) % len].1])
            .find(|e| usable(e))
            .cloned()
    }
}

fn build_ring(endpoints: &[Arc<Endpoint>]) -> Vec<(u64, usize)> {
    let mut ring = Vec::with_capacity(endpoints.len() * RING_VNODES);
    for (i, e) in endpoints.iter().enumerate() {
        for v in 0..RING_VNODES {
            ring.push((stable_hash(&(e.addr, v)), i));
        }
    }
    ring.sort_unstable();
    ring
}

/// A hash that is the same in every proxy process (std's `RandomState` is
/// seeded per process, which would break affinity across client pods).
fn stable_hash<T: Hash + ?Sized>(v: &T) -> u64 {
    // FNV-1a over the std Hasher interface.
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            // Final avalanche (splitmix64) so nearby inputs spread over the ring.
            let mut z = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 ^= u64::from(*b);
                self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    v.hash(&mut h);
    h.finish()
}

fn hash_key(key: &HashKey, ctx: &PickContext<'_>) -> Option<u64> {
    match key {
        HashKey::Header(name) => ctx.headers?.get(name).map(|v| stable_hash(v.as_bytes())),
        HashKey::Cookie(name) => {
            let headers = ctx.headers?;
            headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|kv| kv.trim().split_once('='))
                .find(|(k, _)| *k == name)
                .map(|(_, v)| stable_hash(v.as_bytes()))
        }
        HashKey::SourceIp => ctx.source_ip.map(|ip| stable_hash(&ip)),
    }
}

#[cfg(test)]
mod tests;
