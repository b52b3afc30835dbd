//! Prometheus metrics of the proxy, served on `/metrics` (port 15020).
//!
//! Names follow Prometheus conventions (base units, `_total` counters) and
//! every traffic metric carries the source and destination workload, so a
//! dashboard can draw the service graph from any proxy's scrape.

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Latency buckets in seconds: fine-grained below 10 ms, where a mesh hop
/// lives, then coarse up to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Labels of request metrics, in order.
pub const REQUEST_LABELS: &[&str] = &[
    "direction",
    "source_workload",
    "source_namespace",
    "destination_service",
    "destination_workload",
    "code",
];

/// Labels of TCP metrics, in order.
pub const TCP_LABELS: &[&str] = &[
    "direction",
    "source_workload",
    "source_namespace",
    "destination_service",
    "destination_workload",
];

/// All metrics of one proxy.
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub tcp_opened: IntCounterVec,
    pub tcp_closed: IntCounterVec,
    pub tcp_sent: IntCounterVec,
    pub tcp_received: IntCounterVec,
    pub refused: IntCounterVec,
    /// Retries sent, by destination service.
    pub retries: IntCounterVec,
    /// Faults injected, by kind (delay, abort).
    pub faults: IntCounterVec,
    /// Gateway listeners that could not bind or load their certificate, by port.
    pub gateway_errors: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub config_version: IntGauge,
    pub identity_expiry: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "mesh_requests_total",
                "HTTP requests handled, by response code.",
            ),
            REQUEST_LABELS,
        )
        .expect("valid metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "mesh_request_duration_seconds",
                "Time from request to response head.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &REQUEST_LABELS[..5],
        )
        .expect("valid metric");
        let tcp = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), TCP_LABELS).expect("valid metric")
        };
        let tcp_opened = tcp(
            "mesh_tcp_connections_opened_total",
            "TCP connections opened.",
        );
        let tcp_closed = tcp(
            "mesh_tcp_connections_closed_total",
            "TCP connections closed.",
        );
        let tcp_sent = tcp(
            "mesh_tcp_sent_bytes_total",
            "Bytes sent to the destination on proxied TCP connections.",
        );
        let tcp_received = tcp(
            "mesh_tcp_received_bytes_total",
            "Bytes received from the destination on proxied TCP connections.",
        );
        let refused = IntCounterVec::new(
            Opts::new(
                "mesh_refused_requests_total",
                "Requests refused at the proxy's edge before routing, by HTTP status.",
            ),
            &["direction", "code"],
        )
        .expect("valid metric");
        let retries = IntCounterVec::new(
            Opts::new(
                "mesh_retries_total",
                "Requests sent again after a failed try, by destination service.",
            ),
            &["destination_service"],
        )
        .expect("valid metric");
        let faults = IntCounterVec::new(
            Opts::new(
                "mesh_faults_injected_total",
                "Faults injected by route policy, by kind (delay, abort).",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let gateway_errors = IntCounterVec::new(
            Opts::new(
                "mesh_gateway_listener_errors_total",
                "Gateway listeners that could not bind their port or load their certificate, by port.",
            ),
            &["port"],
        )
        .expect("valid metric");
        let config_reloads = IntCounterVec::new(
            Opts::new("mesh_config_updates_total", "Config updates, by result."),
            &["result"],
        )
        .expect("valid metric");
        let config_version = IntGauge::new(
            "mesh_config_applied_timestamp_seconds",
            "When the current config was applied (Unix time).",
        )
        .expect("valid metric");
        let identity_expiry = Gauge::new(
            "mesh_identity_cert_expiry_timestamp_seconds",
            "Expiry of the workload certificate (Unix time); 0 without one.",
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(tcp_opened.clone()),
            Box::new(tcp_closed.clone()),
            Box::new(tcp_sent.clone()),
            Box::new(tcp_received.clone()),
            Box::new(refused.clone()),
            Box::new(retries.clone()),
            Box::new(faults.clone()),
            Box::new(gateway_errors.clone()),
            Box::new(config_reloads.clone()),
            Box::new(config_version.clone()),
            Box::new(identity_expiry.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Self {
            registry,
            requests,
            request_duration,
            tcp_opened,
            tcp_closed,
            tcp_sent,
            tcp_received,
            refused,
            retries,
            faults,
            gateway_errors,
            config_reloads,
            config_version,
            identity_expiry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
