//! The CA's Prometheus metrics and the `/metrics` HTTP endpoint.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Signing counters, latency and CA expiry, in one registry per CA.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `mesh_ca_certificates_signed_total`.
    pub signed: IntCounter,
    /// `mesh_ca_refusals_total{reason}`.
    pub refusals: IntCounterVec,
    /// `mesh_ca_sign_duration_seconds`.
    pub sign_duration: Histogram,
    expiry: GaugeVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("signed", &self.signed.get())
            .finish()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with the CA's metrics.
    pub fn new() -> Self {
        let registry = Registry::new();
        // Built from constant, valid names: these cannot fail.
        let signed = IntCounter::new(
            "mesh_ca_certificates_signed_total",
            "Workload certificates signed.",
        )
        .expect("valid metric");
        let refusals = IntCounterVec::new(
            Opts::new(
                "mesh_ca_refusals_total",
                "Signing requests refused, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let sign_duration = Histogram::with_opts(
            HistogramOpts::new(
                "mesh_ca_sign_duration_seconds",
                "Time to answer a Sign request (authentication included).",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
            ]),
        )
        .expect("valid metric");
        let expiry = GaugeVec::new(
            Opts::new(
                "mesh_ca_cert_expiry_timestamp_seconds",
                "Expiry (Unix time) of the CA's root and intermediate.",
            ),
            &["cert"],
        )
        .expect("valid metric");
        for c in [
            Box::new(signed.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(refusals.clone()),
            Box::new(sign_duration.clone()),
            Box::new(expiry.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Self {
            registry,
            signed,
            refusals,
            sign_duration,
            expiry,
        }
    }

    /// Records the expiry of `cert` (`root` or `intermediate`).
    pub fn set_expiry(&self, cert: &str, unix_secs: i64) {
        self.expiry.with_label_values(&[cert]).set(unix_secs as f64);
    }

    /// Counts a refusal.
    pub fn refused(&self, reason: &str) {
        self.refusals.with_label_values(&[reason]).inc();
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Serves `GET /metrics` on `listener`.
pub fn serve_metrics(listener: TcpListener, metrics: Metrics) -> JoinHandle<std::io::Result<()>> {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    m.render(),
                )
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await })
}
