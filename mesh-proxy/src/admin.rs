//! Admin endpoint (localhost: `/ready`, `/live`, `/config_dump`) and the
//! metrics endpoint (`/metrics`, and `/ready` and `/live` again for the
//! kubelet, which probes the pod IP).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::Shared;

/// Routes of the admin listener.
pub fn admin_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/ready", get(ready))
        .route("/live", get(|| async { "live\n" }))
        .route("/config_dump", get(config_dump))
        .with_state(shared)
}

/// Routes of the metrics listener.
pub fn metrics_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/ready", get(ready))
        .route("/live", get(|| async { "live\n" }))
        .route("/app-health/{*probe}", get(app_health))
        .with_state(shared)
}

async fn app_health(
    State(s): State<Arc<Shared>>,
    axum::extract::Path(probe): axum::extract::Path<String>,
) -> impl IntoResponse {
    s.app_probes.check(&format!("/app-health/{probe}")).await
}

async fn ready(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    if s.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if !s.ready.load(Ordering::Relaxed) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no config yet\n",
        )
    } else if s.needs_identity && !s.tls.is_ready() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no workload certificate yet\n",
        )
    } else {
        (StatusCode::OK, "ready\n")
    }
}

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn config_dump(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let state = s.state.load_full();
    let mut endpoints: Vec<_> = state
        .endpoints()
        .map(|e| {
            serde_json::json!({
                "address": e.addr.to_string(),
                "pod": e.pod,
                "identity": e.identity.as_deref(),
                "inFlight": e.in_flight(),
                "latencyEstimateMs": e.latency_estimate().map(|d| d.as_secs_f64() * 1000.0),
                "requests": e.requests.load(Ordering::Relaxed),
            })
        })
        .collect();
    endpoints.sort_by(|a, b| a["address"].as_str().cmp(&b["address"].as_str()));
    let dump = serde_json::json!({
        "version": state.version,
        "workload": {
            "name": s.local.workload,
            "namespace": s.local.namespace,
            "pod": s.local.pod,
        },
        "config": state.config,
        "endpointStats": endpoints,
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string_pretty(&dump).unwrap_or_default(),
    )
}
