//! The controller's admin HTTP port: `/metrics` (Prometheus), `/ready`,
//! `/debug/syncz` (every connected proxy's sync state, for
//! `meshctl proxy-status`), `/debug/config_dump?namespace=N&pod=P` (the
//! view that proxy is sent) and `/debug/status` (each mesh resource's
//! `Accepted` condition).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::sync::SyncRegistry;
use crate::translate::Snapshot;
use crate::view::ProxyMeta;
use crate::world::ObjKey;

#[derive(Clone)]
struct AdminState {
    snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    sync: Arc<SyncRegistry>,
    metrics: Arc<Metrics>,
}

#[derive(serde::Deserialize)]
struct ProxyQuery {
    namespace: String,
    pod: String,
}

/// Serves the admin endpoints on `listener` until `stop`.
pub async fn serve(
    listener: TcpListener,
    snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    sync: Arc<SyncRegistry>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", get(metrics_text))
        .route("/ready", get(ready))
        .route("/debug/syncz", get(syncz))
        .route("/debug/config_dump", get(config_dump))
        .route("/debug/status", get(status))
        .with_state(AdminState {
            snapshots,
            sync,
            metrics,
        });
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

fn latest(s: &AdminState) -> Option<Arc<Snapshot>> {
    s.snapshots.borrow().clone()
}

async fn metrics_text(State(s): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

async fn ready(State(s): State<AdminState>) -> Response {
    match latest(&s) {
        Some(snap) => (
            StatusCode::OK,
            format!("ready (snapshot {})\n", snap.version),
        )
            .into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "not synced yet\n").into_response(),
    }
}

async fn syncz(State(s): State<AdminState>) -> Response {
    let latest = latest(&s).map(|l| l.version).unwrap_or(0);
    Json(s.sync.report(latest)).into_response()
}

async fn config_dump(State(s): State<AdminState>, Query(q): Query<ProxyQuery>) -> Response {
    let Some(snap) = latest(&s) else {
        return (StatusCode::SERVICE_UNAVAILABLE, "not synced yet\n").into_response();
    };
    let labels = snap
        .pods
        .get(&ObjKey::new(&q.namespace, &q.pod))
        .map(|p| p.labels.clone())
        .unwrap_or_default();
    let view = snap.view(&ProxyMeta {
        namespace: q.namespace,
        pod: q.pod,
        service_account: String::new(),
        labels,
    });
    let config = view.to_config(&snap.version.to_string());
    match serde_json::to_value(&config) {
        Ok(v) => Json(v).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusLine {
    kind: String,
    namespace: String,
    name: String,
    accepted: bool,
    reason: String,
    message: String,
}

async fn status(State(s): State<AdminState>) -> Response {
    let Some(snap) = latest(&s) else {
        return (StatusCode::SERVICE_UNAVAILABLE, "not synced yet\n").into_response();
    };
    let lines: Vec<StatusLine> = snap
        .statuses
        .iter()
        .map(|st| StatusLine {
            kind: st.resource.kind.clone(),
            namespace: st.resource.namespace.clone(),
            name: st.resource.name.clone(),
            accepted: st.accepted,
            reason: st.reason.clone(),
            message: st.message.clone(),
        })
        .collect();
    Json(lines).into_response()
}
