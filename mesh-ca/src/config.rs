//! Settings of the CA with their defaults. Every default is a named constant
//! with the reason for its value.

use std::time::Duration;

/// Lifetime of a workload certificate when the caller asks for 0: one day, so
/// a stolen key is useful for a day at most while the proxy (which rotates at
/// half-life) survives a CA outage of half a day.
pub const DEFAULT_LEAF_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest leaf lifetime the CA grants by default; longer requests are clamped.
pub const DEFAULT_MAX_LEAF_TTL: Duration = Duration::from_secs(24 * 3600);
/// Requests above this are a bug or an attack, not a preference: refused, not clamped.
pub const ABSURD_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// notBefore is set this far in the past so peers with slightly slow clocks
/// accept a certificate the moment it is issued.
pub const CLOCK_SKEW_BACKDATE: Duration = Duration::from_secs(60);
/// Validity of a generated root: 10 years, rotated by hand (docs/ca.md).
pub const ROOT_VALIDITY: Duration = Duration::from_secs(3650 * 24 * 3600);
/// Validity of a generated intermediate: 1 year, rotated automatically.
pub const INTERMEDIATE_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// The intermediate is re-issued from the root when less than this is left,
/// which leaves a month of alerts (expiry metric) if re-issuing keeps failing.
pub const INTERMEDIATE_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Validity of the CA's own serving certificate; it is re-issued at half-life.
pub const SERVING_CERT_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
/// A CSR plus gRPC framing is well under 4 KiB; 64 KiB leaves room and caps
/// what a hostile client can make us buffer.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Per-identity signing rate: a proxy asks once per half-life, so 10/s only
/// bites a client that is looping.
pub const DEFAULT_RATE_PER_SEC: f64 = 10.0;
/// Burst per identity: a Deployment's pods share one identity and may all
/// start at once.
pub const DEFAULT_BURST: u32 = 20;
/// Requests one connection may have in the signing service at once; more
/// wait (tonic's per-connection concurrency limit).
pub const MAX_CONCURRENT_REQUESTS_PER_CONNECTION: usize = 64;
/// HTTP/2 streams one connection may have open at once, announced to the
/// client (SETTINGS_MAX_CONCURRENT_STREAMS), which queues the rest on its
/// side. Without it tonic announces no limit, and a client that opens
/// thousands of streams has them all buffered in the CA (up to
/// [`MAX_REQUEST_BYTES`] each). Equal to the concurrency limit: a stream
/// beyond it would only wait.
pub const MAX_CONCURRENT_STREAMS_PER_CONNECTION: u32 = 64;
/// How long a token's TokenReview answer is reused (kube mode). A workload
/// that floods the CA with one token costs the API server one TokenReview
/// per this period instead of one per request. Short enough that a revoked
/// token (its pod deleted) stops working within seconds: a leaf lives a day.
pub const AUTH_CACHE_TTL: Duration = Duration::from_secs(10);
/// Tokens whose answers are cached at once; above this (and after dropping
/// expired answers), new tokens are reviewed without being cached. A mesh
/// has one live token per pod, rotated hourly.
pub const AUTH_CACHE_MAX_ENTRIES: usize = 100_000;
/// How often the CA re-reads its store and checks the intermediate's expiry.
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(60);
/// How often the trust bundle is (re)published to the namespaces.
pub const PUBLISH_INTERVAL: Duration = Duration::from_secs(30);
/// Deadline of one TokenReview call.
pub const TOKEN_REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
/// DNS names the serving certificate always carries (the in-cluster Service).
pub const SERVING_DNS_NAMES: &[&str] = &[
    "mesh-ca",
    "mesh-ca.mesh-system",
    "mesh-ca.mesh-system.svc",
    "mesh-ca.mesh-system.svc.cluster.local",
    "localhost",
];

/// Why a duration setting could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {0:?}: use a number with s, m, h or d (e.g. 24h, 90m, 3600s)")]
pub struct DurationError(pub String);

/// Parses `24h`, `90m`, `3600s`, `7d` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = num.parse().map_err(|_| DurationError(s.to_string()))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(DurationError(s.to_string())),
    };
    n.checked_mul(mult)
        .map(Duration::from_secs)
        .ok_or_else(|| DurationError(s.to_string()))
}

/// How the requested lifetime of a leaf becomes the granted one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TtlPolicy {
    /// Granted when the request says 0.
    pub default_ttl: Duration,
    /// Requests between this and [`ABSURD_TTL`] are clamped to it.
    pub max_ttl: Duration,
}

impl Default for TtlPolicy {
    fn default() -> Self {
        Self {
            default_ttl: DEFAULT_LEAF_TTL,
            max_ttl: DEFAULT_MAX_LEAF_TTL,
        }
    }
}

/// A requested lifetime the CA refuses.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("requested TTL of {0} s is more than a year; ask for at most {1} s (or 0 for the default)")]
pub struct AbsurdTtl(pub u64, pub u64);

impl TtlPolicy {
    /// The lifetime to grant for a request of `requested_secs` (0 = default).
    pub fn resolve(&self, requested_secs: u64) -> Result<Duration, AbsurdTtl> {
        if requested_secs == 0 {
            return Ok(self.default_ttl.min(self.max_ttl));
        }
        if requested_secs > ABSURD_TTL.as_secs() {
            return Err(AbsurdTtl(requested_secs, self.max_ttl.as_secs()));
        }
        Ok(Duration::from_secs(requested_secs).min(self.max_ttl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        for bad in ["", "h", "1y", "-1h", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn ttl_default_clamp_and_refuse() {
        let p = TtlPolicy {
            default_ttl: Duration::from_secs(3600),
            max_ttl: Duration::from_secs(7200),
        };
        assert_eq!(p.resolve(0), Ok(Duration::from_secs(3600)));
        assert_eq!(p.resolve(60), Ok(Duration::from_secs(60)));
        assert_eq!(p.resolve(30 * 86400), Ok(Duration::from_secs(7200)));
        assert_eq!(
            p.resolve(ABSURD_TTL.as_secs()),
            Ok(Duration::from_secs(7200))
        );
        assert!(p.resolve(ABSURD_TTL.as_secs() + 1).is_err());
        assert!(p.resolve(100 * 365 * 86400).is_err());
        assert!(p.resolve(u64::MAX).is_err());
    }
}
