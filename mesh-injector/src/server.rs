//! The webhook server: HTTPS on 9443, `POST /inject` (AdmissionReview
//! `admission.k8s.io/v1`), `GET /ready`, `/live` and `/metrics`.
//!
//! Bad input never hangs or crashes it: a body that is not an
//! AdmissionReview is HTTP 400 with the JSON path of the problem, a body
//! over [`MAX_BODY_BYTES`] is 413, and a pod the injector cannot handle is
//! an AdmissionReview that denies it, with the reason in `status.message`.

pub mod metrics;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::config::InjectorConfig;
use crate::inject::{inject, Decision, NamespaceInfo};
use crate::webhook::INJECT_PATH;
use metrics::{Metrics, Outcome};

/// Largest AdmissionReview accepted. The API server caps objects at ~1.5 MiB
/// (etcd's limit), and a review carries one object on CREATE.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;
/// A client that has not finished the TLS handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that has not sent its request headers by then is dropped.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The only AdmissionReview version served (the webhook configuration asks
/// for it).
pub const ADMISSION_API_VERSION: &str = "admission.k8s.io/v1";

/// A request body that is not a usable AdmissionReview (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadReview(pub String);

/// The parts of an incoming `AdmissionReview` the injector reads. Our own
/// types rather than kube's: the object stays a JSON value until we know it
/// is a Pod, and the response's patch must be base64 (kube-core writes an
/// array of numbers).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn {
    api_version: String,
    kind: String,
    #[serde(default)]
    request: Option<RequestIn>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestIn {
    uid: String,
    kind: GroupVersionKind,
    #[serde(default)]
    namespace: Option<String>,
    operation: String,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    object: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    kind: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: ResponseOut<'a>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseOut<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<StatusOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct StatusOut {
    status: &'static str,
    message: String,
    reason: &'static str,
    code: u16,
}

/// Answers AdmissionReviews: the injection rules plus what the webhook
/// learned at start (config, native sidecar support).
#[derive(Debug)]
pub struct AdmissionHandler {
    config: InjectorConfig,
    native_sidecars: bool,
    /// Admission counters and latency.
    pub metrics: Metrics,
}

/// Deserialises, naming the path of the first problem (`malformed
/// AdmissionReview at request.uid: invalid type: integer `5`, expected a
/// string at line 1 column 80`).
fn with_path<'de, T, D>(de: D, what: &str) -> Result<T, BadReview>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de>,
    D::Error: std::fmt::Display,
{
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            BadReview(format!("malformed {what}: {inner}"))
        } else {
            BadReview(format!("malformed {what} at {path}: {inner}"))
        }
    })
}

impl AdmissionHandler {
    /// A handler; `cluster_supports_native_sidecars` is what the API server
    /// said at start (see [`crate::NativeSidecar`]).
    pub fn new(config: InjectorConfig, cluster_supports_native_sidecars: bool) -> Self {
        Self {
            config,
            native_sidecars: cluster_supports_native_sidecars,
            metrics: Metrics::default(),
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &InjectorConfig {
        &self.config
    }

    /// Turns an AdmissionReview body into the response review (JSON), and
    /// what happened. Pure apart from logging.
    pub fn review(&self, body: &[u8]) -> Result<(Outcome, Vec<u8>), BadReview> {
        let review: ReviewIn = with_path(
            &mut serde_json::Deserializer::from_slice(body),
            "AdmissionReview",
        )?;
        if review.api_version != ADMISSION_API_VERSION || review.kind != "AdmissionReview" {
            return Err(BadReview(format!(
                "expected kind AdmissionReview of apiVersion {ADMISSION_API_VERSION}, got kind {:?} of apiVersion {:?}",
                review.kind, review.api_version
            )));
        }
        let req = review
            .request
            .ok_or_else(|| BadReview("AdmissionReview has no request".into()))?;
        let (outcome, response) = self.respond(&req)?;
        let out = ReviewOut {
            api_version: ADMISSION_API_VERSION,
            kind: "AdmissionReview",
            response,
        };
        let json = serde_json::to_vec(&out)
            .map_err(|e| BadReview(format!("encoding the response: {e}")))?;
        Ok((outcome, json))
    }

    fn respond<'r>(&self, req: &'r RequestIn) -> Result<(Outcome, ResponseOut<'r>), BadReview> {
        let allow = ResponseOut {
            uid: &req.uid,
            allowed: true,
            status: None,
            patch: None,
            patch_type: None,
        };
        let is_pod = req.kind.group.is_empty() && req.kind.kind == "Pod";
        // Only pod creation is ours; anything else the webhook configuration
        // should not have sent passes unchanged.
        if !is_pod || req.operation != "CREATE" || req.sub_resource.is_some() {
            tracing::debug!(uid = %req.uid, kind = %req.kind.kind, operation = %req.operation, "not a pod creation; allowed unchanged");
            return Ok((Outcome::Skipped, allow));
        }
        let object = req
            .object
            .as_ref()
            .ok_or_else(|| BadReview("request.object is missing for a pod CREATE".into()))?;
        let pod: Pod = with_path(object, "Pod in request.object")?;
        let namespace = req
            .namespace
            .clone()
            .or_else(|| pod.metadata.namespace.clone())
            .unwrap_or_else(|| "default".into());
        // The webhook configuration's selectors only send pods in labelled
        // namespaces, or labelled `mesh.dev/inject=true`: to the rules, the
        // namespace is selected. Opt-outs are still honoured here.
        let ns = NamespaceInfo::enabled(namespace.clone());
        let pod_name = pod
            .metadata
            .name
            .as_deref()
            .or(pod.metadata.generate_name.as_deref())
            .unwrap_or_default();
        // The API server applies the patch to the object as it sent it,
        // which our typed reading can differ from (a field left out): a
        // patch that would not apply is a denial with the reason here,
        // not an internal error there.
        let decision = inject(&pod, &ns, &self.config, self.native_sidecars).and_then(|d| {
            if let Decision::Inject(patch) = &d {
                json_patch::patch(&mut object.clone(), &patch.0)?;
            }
            Ok(d)
        });
        match decision {
            Ok(Decision::Inject(patch)) => {
                tracing::debug!(uid = %req.uid, namespace = %namespace, pod = %pod_name, ops = patch.0.len(), "injected");
                let json = serde_json::to_vec(&patch)
                    .map_err(|e| BadReview(format!("encoding the patch: {e}")))?;
                Ok((
                    Outcome::Injected,
                    ResponseOut {
                        patch: Some(BASE64.encode(json)),
                        patch_type: Some("JSONPatch"),
                        ..allow
                    },
                ))
            }
            Ok(Decision::Skip(reason)) => {
                tracing::debug!(uid = %req.uid, namespace = %namespace, pod = %pod_name, %reason, "not injected");
                Ok((Outcome::Skipped, allow))
            }
            Err(e) => {
                // Failing closed, as the Fail policy does: a pod we cannot
                // mesh correctly is refused with the reason.
                tracing::info!(uid = %req.uid, namespace = %namespace, pod = %pod_name, "denied: {e}");
                Ok((
                    Outcome::Denied,
                    ResponseOut {
                        allowed: false,
                        status: Some(StatusOut {
                            status: "Failure",
                            message: format!("mesh-injector: {e}"),
                            reason: "BadRequest",
                            code: 400,
                        }),
                        ..allow
                    },
                ))
            }
        }
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

async fn post_inject(
    State(h): State<Arc<AdmissionHandler>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let start = Instant::now();
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("AdmissionReview larger than {MAX_BODY_BYTES} bytes\n"),
        )
    };
    // Refuse by the declared length before reading anything.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return too_large();
    }
    let bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            return if is_length_limit(&e) {
                too_large()
            } else {
                text(StatusCode::BAD_REQUEST, format!("reading the body: {e}\n"))
            };
        }
    };
    // Sub-millisecond CPU work: run it inline.
    match h.review(&bytes) {
        Ok((outcome, json)) => {
            h.metrics.record(outcome, start.elapsed());
            ([(header::CONTENT_TYPE, "application/json")], json).into_response()
        }
        Err(e) => {
            h.metrics.record(Outcome::BadRequest, start.elapsed());
            tracing::debug!("bad AdmissionReview: {e}");
            text(StatusCode::BAD_REQUEST, format!("{e}\n"))
        }
    }
}

fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// The webhook's routes over `handler`.
pub fn router(handler: Arc<AdmissionHandler>) -> Router {
    Router::new()
        .route(INJECT_PATH, post(post_inject))
        .route("/ready", get(|| async { "ready\n" }))
        .route("/live", get(|| async { "live\n" }))
        .route(
            "/metrics",
            get(|State(h): State<Arc<AdmissionHandler>>| async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    h.metrics.render(),
                )
            }),
        )
        .fallback(|| async { text(StatusCode::NOT_FOUND, "not found\n") })
        .with_state(handler)
}

/// Serves `app` over TLS on `listener` until `shutdown` completes; each
/// connection is its own task (HTTP/1.1 with keep-alive, or HTTP/2).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep going.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move { connection(acceptor, tcp, peer, app).await });
    }
}

/// Fuzzing entry point: `data` is a request body posted to `/inject`.
/// Answering never panics; the answer is an AdmissionReview for the same
/// uid; a patch applies to the object exactly as the API server holds it
/// (the request's JSON, not our typed reading of it) and gives a valid Pod;
/// and the webhook, called again on the patched pod (`reinvocationPolicy:
/// IfNeeded`), patches nothing. An even-length body is answered as on a
/// cluster with native sidecars, an odd one as on an older cluster.
#[cfg(any(test, fuzzing))]
pub fn fuzz_logic(data: &[u8]) {
    use std::sync::OnceLock;

    static HANDLERS: OnceLock<[AdmissionHandler; 2]> = OnceLock::new();
    let handlers = HANDLERS.get_or_init(|| {
        [true, false].map(|native| AdmissionHandler::new(InjectorConfig::default(), native))
    });
    let handler = &handlers[data.len() % 2];
    let Ok((outcome, out)) = handler.review(data) else {
        return;
    };
    let answer: serde_json::Value = serde_json::from_slice(&out).expect("the answer is JSON");
    // (serde_json's Value refuses numbers like 1e400 that the review's
    // ignored fields may hold.)
    let Ok(review) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    assert_eq!(answer["apiVersion"], ADMISSION_API_VERSION);
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(answer["response"]["uid"], review["request"]["uid"]);
    let Some(patch) = answer["response"]["patch"].as_str() else {
        assert_ne!(outcome, Outcome::Injected, "injected without a patch");
        return;
    };
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    let patch = BASE64.decode(patch).expect("the patch is base64");
    let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("the patch is JSON");
    let mut object = review["request"]["object"].clone();
    json_patch::patch(&mut object, &patch.0).unwrap_or_else(|e| {
        panic!("the patch does not apply to the pod as sent: {e}\n{patch:?}\n{object}")
    });
    let patched: Pod = serde_json::from_value(object.clone()).expect("the patched pod is a Pod");
    assert!(patched.spec.is_some());
    // The API server calls the webhook again after other webhooks: the
    // injected pod is left as it is.
    let mut again = review;
    again["request"]["object"] = object;
    let again = serde_json::to_vec(&again).expect("a review");
    let (_, out) = handler.review(&again).expect("the patched review is read");
    let answer: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
    assert!(
        answer["response"]["patch"].is_null(),
        "injected twice: {}",
        answer["response"]
    );
}

#[cfg(test)]
mod tests;

async fn connection(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "TLS handshake: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        app.clone().oneshot(req.map(Body::new))
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
        tracing::debug!(%peer, "connection: {e}");
    }
}
