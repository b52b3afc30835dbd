//! The webhook's own Prometheus metrics: admissions by result and their
//! latency. Hand-written text format: two families do not justify a
//! metrics library.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Outcome of one POST to `/inject`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The pod got the patch.
    Injected,
    /// The pod (or non-pod object) was allowed unchanged.
    Skipped,
    /// The pod was denied (bad annotation, conflict).
    Denied,
    /// The body was not an AdmissionReview (HTTP 400).
    BadRequest,
}

impl Outcome {
    const ALL: [Outcome; 4] = [
        Outcome::Injected,
        Outcome::Skipped,
        Outcome::Denied,
        Outcome::BadRequest,
    ];
    fn label(self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::Skipped => "skipped",
            Self::Denied => "denied",
            Self::BadRequest => "bad_request",
        }
    }
}

/// Upper bounds of the latency buckets, in seconds: admission is
/// sub-millisecond work, the API server gives up at 5 s.
const BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];

/// Counters, lock-free.
#[derive(Debug, Default)]
pub struct Metrics {
    outcomes: [AtomicU64; 4],
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Metrics {
    /// Records one admission.
    pub fn record(&self, outcome: Outcome, took: Duration) {
        let i = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        self.outcomes[i].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        // Buckets are stored non-cumulative and summed on render.
        if let Some(b) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[b].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// How many admissions ended with `outcome`.
    pub fn count(&self, outcome: Outcome) -> u64 {
        let i = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        self.outcomes[i].load(Ordering::Relaxed)
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str(
            "# HELP mesh_injector_admissions_total Admission reviews answered, by result.\n",
        );
        s.push_str("# TYPE mesh_injector_admissions_total counter\n");
        for (o, c) in Outcome::ALL.iter().zip(&self.outcomes) {
            let _ = writeln!(
                s,
                "mesh_injector_admissions_total{{result=\"{}\"}} {}",
                o.label(),
                c.load(Ordering::Relaxed)
            );
        }
        s.push_str("# HELP mesh_injector_admission_duration_seconds Time to answer one admission review, body read to response built.\n");
        s.push_str("# TYPE mesh_injector_admission_duration_seconds histogram\n");
        let mut cumulative = 0;
        for (b, c) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(
                s,
                "mesh_injector_admission_duration_seconds_bucket{{le=\"{b}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(
            s,
            "mesh_injector_admission_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            s,
            "mesh_injector_admission_duration_seconds_sum {}",
            self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
        );
        let _ = writeln!(s, "mesh_injector_admission_duration_seconds_count {count}");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let m = Metrics::default();
        m.record(Outcome::Injected, Duration::from_micros(300));
        m.record(Outcome::Denied, Duration::from_millis(3));
        m.record(Outcome::Injected, Duration::from_secs(2));
        let t = m.render();
        assert!(
            t.contains("mesh_injector_admissions_total{result=\"injected\"} 2\n"),
            "{t}"
        );
        assert!(t.contains("mesh_injector_admissions_total{result=\"denied\"} 1\n"));
        assert!(t.contains("_bucket{le=\"0.0005\"} 1\n"), "{t}");
        assert!(t.contains("_bucket{le=\"0.005\"} 2\n"), "{t}");
        assert!(t.contains("_bucket{le=\"1\"} 2\n"), "{t}");
        assert!(t.contains("_bucket{le=\"+Inf\"} 3\n"), "{t}");
        assert!(t.contains("mesh_injector_admission_duration_seconds_count 3\n"));
        assert_eq!(m.count(Outcome::Injected), 2);
    }
}
