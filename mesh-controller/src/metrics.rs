//! The controller's Prometheus metrics.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric the controller exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Time from a snapshot being published to a proxy ACKing it.
    pub push_latency: Histogram,
    /// Proxies with an open config stream.
    pub connected: IntGauge,
    /// Bytes of config sent (encoded protobuf), by kind (full/incremental).
    pub config_bytes: IntCounterVec,
    /// Responses sent, by kind.
    pub pushes: IntCounterVec,
    /// NACKs received.
    pub nacks: IntCounter,
    /// Streams refused, by reason: `no_identity`, `identity_mismatch`,
    /// `unknown_pod`, `bad_hello`, `too_many_streams`, `message_too_large`,
    /// `malformed_request`.
    pub refused: IntCounterVec,
    /// Time to build one snapshot.
    pub snapshot_build: Histogram,
    /// Services in the latest snapshot.
    pub services: IntGauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        // Constant, valid names and labels: these cannot fail.
        let histogram = |name: &str, help: &str| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()))
                .expect("valid metric")
        };
        let push_latency = histogram(
            "mesh_controller_push_latency_seconds",
            "Time from a snapshot being built to a proxy acknowledging the config cut from it.",
        );
        let snapshot_build = histogram(
            "mesh_controller_snapshot_build_seconds",
            "Time to build one mesh snapshot.",
        );
        let connected = IntGauge::new(
            "mesh_controller_connected_proxies",
            "Proxies with an open config stream.",
        )
        .expect("valid metric");
        let config_bytes = IntCounterVec::new(
            Opts::new(
                "mesh_controller_config_bytes_total",
                "Encoded config bytes sent to proxies.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let pushes = IntCounterVec::new(
            Opts::new("mesh_controller_pushes_total", "Config responses sent."),
            &["kind"],
        )
        .expect("valid metric");
        let nacks = IntCounter::new(
            "mesh_controller_nacks_total",
            "Configs a proxy refused (NACK).",
        )
        .expect("valid metric");
        let refused = IntCounterVec::new(
            Opts::new(
                "mesh_controller_streams_refused_total",
                "Config streams refused, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let services = IntGauge::new(
            "mesh_controller_services",
            "Services in the latest snapshot.",
        )
        .expect("valid metric");
        for c in [
            Box::new(push_latency.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(snapshot_build.clone()),
            Box::new(connected.clone()),
            Box::new(config_bytes.clone()),
            Box::new(pushes.clone()),
            Box::new(nacks.clone()),
            Box::new(refused.clone()),
            Box::new(services.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Self {
            registry,
            push_latency,
            connected,
            config_bytes,
            pushes,
            nacks,
            refused,
            snapshot_build,
            services,
        }
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
