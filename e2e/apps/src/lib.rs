//! Shared pieces of the e2e test apps: the generated Echo gRPC API, who-am-I
//! helpers and latency statistics.

use std::collections::BTreeMap;

use serde::Serialize;

/// Generated code for `proto/echo.proto`.
pub mod echo {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("mesh.testapps.echo.v1");
}

/// The pod name: `POD_NAME`, else the host name (a pod's host name is its name).
pub fn pod_name() -> String {
    if let Ok(n) = std::env::var("POD_NAME") {
        if !n.is_empty() {
            return n;
        }
    }
    hostname().unwrap_or_else(|| "unknown".to_string())
}

/// The namespace: `POD_NAMESPACE`, else the service account mount, else "".
pub fn pod_namespace() -> String {
    if let Ok(n) = std::env::var("POD_NAMESPACE") {
        if !n.is_empty() {
            return n;
        }
    }
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// Reads an f64 from the environment, with a default.
pub fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// Nearest-rank percentiles of the samples (milliseconds); zeros when empty.
pub fn percentiles(samples_ms: &mut [f64]) -> Percentiles {
    if samples_ms.is_empty() {
        return Percentiles::default();
    }
    samples_ms.sort_by(|a, b| a.total_cmp(b));
    let rank = |p: f64| {
        let n = samples_ms.len();
        let idx = ((p / 100.0) * n as f64).ceil() as usize;
        samples_ms[idx.clamp(1, n) - 1]
    };
    let sum: f64 = samples_ms.iter().sum();
    Percentiles {
        p50: rank(50.0),
        p90: rank(90.0),
        p99: rank(99.0),
        max: samples_ms[samples_ms.len() - 1],
        mean: sum / samples_ms.len() as f64,
    }
}

/// What `mesh-client` prints (one JSON object on stdout).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub mode: String,
    pub target: String,
    pub total: u64,
    pub ok: u64,
    pub failed: u64,
    /// Successful answers per answering pod.
    pub by_pod: BTreeMap<String, u64>,
    /// Failures by status / error text.
    pub errors: BTreeMap<String, u64>,
    pub latency_ms: Percentiles,
    pub duration_s: f64,
    /// Number of connections (HTTP) or channels (gRPC) used.
    pub connections: u64,
}

impl Report {
    pub fn record_ok(&mut self, pod: &str) {
        self.total += 1;
        self.ok += 1;
        *self.by_pod.entry(pod.to_string()).or_default() += 1;
    }

    pub fn record_err(&mut self, err: impl Into<String>) {
        self.total += 1;
        self.failed += 1;
        let mut e: String = err.into();
        e.truncate(200);
        *self.errors.entry(e).or_default() += 1;
    }
}

/// Parses `a=b&c=d` query strings (no percent-decoding; the apps only use simple values).
pub fn parse_query(q: Option<&str>) -> BTreeMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = percentiles(&mut v);
        assert_eq!(p.p50, 50.0);
        assert_eq!(p.p90, 90.0);
        assert_eq!(p.p99, 99.0);
        assert_eq!(p.max, 100.0);
        assert_eq!(percentiles(&mut []), Percentiles::default());
        assert_eq!(percentiles(&mut [7.0]).p99, 7.0);
    }

    #[test]
    fn query_parsing() {
        let q = parse_query(Some("fail=0.5&delay_ms=10&x"));
        assert_eq!(q["fail"], "0.5");
        assert_eq!(q["delay_ms"], "10");
        assert_eq!(q["x"], "");
        assert!(parse_query(None).is_empty());
    }

    #[test]
    fn report_counts() {
        let mut r = Report::default();
        r.record_ok("a");
        r.record_ok("a");
        r.record_err("boom");
        assert_eq!((r.total, r.ok, r.failed), (3, 2, 1));
        assert_eq!(r.by_pod["a"], 2);
    }
}
