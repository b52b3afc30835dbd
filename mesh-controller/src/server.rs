//! The config stream (`mesh.config.v1.ConfigDiscovery.Stream`) over mTLS.
//!
//! Per stream: the proxy's identity comes from its client certificate; its
//! `Hello` must name the same namespace and ServiceAccount (and, with
//! Kubernetes as the source, a pod that runs as that ServiceAccount, whose
//! labels are then taken from the API, not from the hello). The first
//! response is the full view (skipped when the proxy resumes with exactly
//! this content); later ones carry only what changed. Each response waits
//! for the proxy's ACK or NACK before the next, and a NACK makes the next
//! response full.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mesh_proto::config::v1::{
    config_discovery_server::{ConfigDiscovery, ConfigDiscoveryServer},
    discovery_request, DiscoveryRequest, DiscoveryResponse, Hello,
};
use prost::Message;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::identity::{spiffe_id, ServerTls};
use crate::limits::{StreamLimits, StreamSlots};
pub use crate::limits::{MAX_CONCURRENT_STREAMS_PER_CONNECTION, MAX_REQUEST_BYTES};
use crate::metrics::Metrics;
use crate::sync::{unix_now, ProxySync, SyncRegistry};
use crate::translate::Snapshot;
use crate::view::{Diff, ProxyMeta, View};
use crate::world::ObjKey;

/// How long a new stream may take to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stream waits for its pod to appear in the model.
pub const POD_WAIT: Duration = Duration::from_secs(30);
/// How long a response waits for its ACK before the stream moves on.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest pod name a hello may carry (a Kubernetes object name).
const MAX_POD_NAME_BYTES: usize = 253;

/// Stream settings.
#[derive(Clone, Debug)]
pub struct StreamConfig {
    pub trust_domain: String,
    /// Kubernetes mode: the hello's pod must exist and run as the
    /// certificate's ServiceAccount; labels come from the pod. Local mode
    /// (false): labels come from the hello.
    pub require_pod: bool,
    /// Views computed and sent at once (the rest queue, coalescing).
    pub max_concurrent_sends: usize,
}

/// The peer identity of a TLS connection (tonic connect info).
#[derive(Clone, Debug)]
pub struct PeerIdentity(pub Option<String>);

/// A TLS stream that tells tonic its peer's SPIFFE ID.
pub struct MtlsStream(pub tokio_rustls::server::TlsStream<TcpStream>);

impl tonic::transport::server::Connected for MtlsStream {
    type ConnectInfo = PeerIdentity;
    fn connect_info(&self) -> PeerIdentity {
        PeerIdentity(
            self.0
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(spiffe_id),
        )
    }
}

impl tokio::io::AsyncRead for MtlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for MtlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The gRPC service.
#[derive(Clone)]
pub struct Discovery {
    snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    sync: Arc<SyncRegistry>,
    metrics: Arc<Metrics>,
    config: Arc<StreamConfig>,
    sends: Arc<Semaphore>,
    next_id: Arc<AtomicU64>,
    /// Open streams per identity and pod, against their limits.
    slots: Arc<StreamSlots>,
    /// Ends every stream (shutdown): proxies reconnect to another replica.
    stop: CancellationToken,
}

impl Discovery {
    pub fn new(
        snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
        sync: Arc<SyncRegistry>,
        metrics: Arc<Metrics>,
        config: StreamConfig,
        stop: CancellationToken,
    ) -> Self {
        Self {
            stop,
            snapshots,
            sync,
            metrics,
            sends: Arc::new(Semaphore::new(config.max_concurrent_sends.max(1))),
            config: Arc::new(config),
            next_id: Arc::new(AtomicU64::new(1)),
            slots: StreamSlots::new(StreamLimits::default()),
        }
    }

    /// The same service with other stream limits than the defaults.
    pub fn with_limits(mut self, limits: StreamLimits) -> Self {
        self.slots = StreamSlots::new(limits);
        self
    }

    /// Open config streams of a SPIFFE identity (tests, debugging).
    pub fn open_streams(&self, identity: &str) -> usize {
        self.slots.open(identity)
    }

    pub fn into_server(self) -> ConfigDiscoveryServer<Self> {
        ConfigDiscoveryServer::new(self)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(64 << 20)
    }

    /// Checks the hello against the certificate; returns who the proxy is.
    async fn authenticate(&self, peer: Option<&str>, hello: &Hello) -> Result<ProxyMeta, Status> {
        let Some(peer) = peer else {
            self.metrics
                .refused
                .with_label_values(&["no_identity"])
                .inc();
            return Err(Status::unauthenticated(
                "no SPIFFE ID in the client certificate",
            ));
        };
        let expected = mesh_api::WorkloadIdentity::new(
            &self.config.trust_domain,
            &hello.namespace,
            &hello.service_account,
        )
        .map_err(|e| Status::invalid_argument(format!("hello: {e}")))?
        .uri();
        if hello.pod.len() > MAX_POD_NAME_BYTES {
            self.metrics.refused.with_label_values(&["bad_hello"]).inc();
            return Err(Status::invalid_argument(format!(
                "hello: the pod name is {} bytes; a Kubernetes name has at most {MAX_POD_NAME_BYTES}",
                hello.pod.len()
            )));
        }
        if peer != expected {
            self.metrics
                .refused
                .with_label_values(&["identity_mismatch"])
                .inc();
            return Err(Status::permission_denied(format!(
                "the client certificate is {peer}; the hello claims {expected}"
            )));
        }
        if !self.config.require_pod {
            return Ok(ProxyMeta {
                namespace: hello.namespace.clone(),
                pod: hello.pod.clone(),
                service_account: hello.service_account.clone(),
                labels: hello.labels.clone().into_iter().collect(),
            });
        }
        // The pod may not be in the model yet (the watch can lag the
        // pod's start): wait for it.
        let key = ObjKey::new(&hello.namespace, &hello.pod);
        let mut rx = self.snapshots.clone();
        let found = tokio::time::timeout(POD_WAIT, async {
            loop {
                let pod = rx
                    .borrow_and_update()
                    .as_ref()
                    .and_then(|s| s.pods.get(&key).cloned());
                if let Some(p) = pod {
                    return Some(p);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await
        .ok()
        .flatten();
        let Some(pod) = found else {
            self.metrics
                .refused
                .with_label_values(&["unknown_pod"])
                .inc();
            return Err(Status::failed_precondition(format!(
                "pod {key} is not known to the controller"
            )));
        };
        if pod.service_account != hello.service_account {
            self.metrics
                .refused
                .with_label_values(&["identity_mismatch"])
                .inc();
            return Err(Status::permission_denied(format!(
                "pod {key} runs as ServiceAccount {}, not {}",
                pod.service_account, hello.service_account
            )));
        }
        Ok(ProxyMeta {
            namespace: hello.namespace.clone(),
            pod: hello.pod.clone(),
            service_account: hello.service_account.clone(),
            labels: pod.labels.clone(),
        })
    }
}

type ResponseStream = ReceiverStream<Result<DiscoveryResponse, Status>>;

impl Discovery {
    /// The status that ends a stream whose request could not be read: a
    /// message over [`MAX_REQUEST_BYTES`] is `RESOURCE_EXHAUSTED` (what gRPC
    /// specifies; tonic says `OUT_OF_RANGE`) naming the limit; malformed
    /// bytes keep their code (`INVALID_ARGUMENT` for bad protobuf,
    /// `INTERNAL` for broken framing, as gRPC specifies).
    fn refused_request(&self, e: Status) -> Status {
        let label = match e.code() {
            tonic::Code::OutOfRange => "message_too_large",
            tonic::Code::InvalidArgument | tonic::Code::Internal => "malformed_request",
            _ => return e,
        };
        self.metrics.refused.with_label_values(&[label]).inc();
        if e.code() == tonic::Code::OutOfRange {
            return Status::resource_exhausted(format!(
                "request message over the limit of {MAX_REQUEST_BYTES} bytes: {}",
                e.message()
            ));
        }
        e
    }
}

#[tonic::async_trait]
impl ConfigDiscovery for Discovery {
    type StreamStream = ResponseStream;

    async fn stream(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let peer = request
            .extensions()
            .get::<PeerIdentity>()
            .and_then(|p| p.0.clone());
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Err(_) => return Err(Status::deadline_exceeded("no hello within 10 s")),
            Ok(Err(e)) => return Err(self.refused_request(e)),
            Ok(Ok(None)) => return Err(Status::cancelled("stream closed before the hello")),
            Ok(Ok(Some(DiscoveryRequest {
                kind: Some(discovery_request::Kind::Hello(h)),
            }))) => h,
            Ok(Ok(Some(_))) => {
                self.metrics.refused.with_label_values(&["bad_hello"]).inc();
                return Err(Status::invalid_argument(
                    "the first message must be a hello",
                ));
            }
        };
        let meta = self.authenticate(peer.as_deref(), &hello).await?;
        let slot = self
            .slots
            .acquire(peer.as_deref().unwrap_or_default(), &meta.pod)
            .map_err(|e| {
                self.metrics
                    .refused
                    .with_label_values(&["too_many_streams"])
                    .inc();
                tracing::warn!(pod = %meta.pod, namespace = %meta.namespace, "config stream refused: {e}");
                Status::resource_exhausted(e.to_string())
            })?;
        let (tx, rx) = mpsc::channel(4);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.sync.insert(
            id,
            ProxySync {
                pod: meta.pod.clone(),
                namespace: meta.namespace.clone(),
                identity: peer.unwrap_or_default(),
                proxy_version: hello.proxy_version.clone(),
                connected_at: unix_now(),
                ..Default::default()
            },
        );
        self.metrics.connected.inc();
        tracing::info!(pod = %meta.pod, namespace = %meta.namespace, "proxy connected");
        let this = self.clone();
        tokio::spawn(async move {
            let outcome = tokio::select! {
                r = this.serve(id, &meta, &hello.resume_version, &mut inbound, &tx) => r,
                _ = this.stop.cancelled() => Err(Status::unavailable("the controller is shutting down")),
                // The proxy went away (stream reset, connection closed) while
                // the stream waited for a snapshot: free its slot now.
                _ = tx.closed() => Ok(()),
            };
            drop(slot);
            this.sync.remove(id);
            this.metrics.connected.dec();
            match outcome {
                Ok(()) => {
                    tracing::info!(pod = %meta.pod, namespace = %meta.namespace, "proxy disconnected")
                }
                Err(e) => {
                    tracing::info!(pod = %meta.pod, namespace = %meta.namespace, error = %e, "config stream ended");
                    let _ = tx.send(Err(e)).await;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// `<snapshot>.<content hash>`: the hash part is what resume compares.
fn version_of(snapshot: u64, view: &View) -> String {
    format!("{snapshot}.{:016x}", view.hash())
}

fn content_part(version: &str) -> &str {
    version.rsplit_once('.').map(|(_, h)| h).unwrap_or(version)
}

impl Discovery {
    async fn serve(
        &self,
        id: u64,
        meta: &ProxyMeta,
        resume: &str,
        inbound: &mut Streaming<DiscoveryRequest>,
        tx: &mpsc::Sender<Result<DiscoveryResponse, Status>>,
    ) -> Result<(), Status> {
        let mut snapshots = self.snapshots.clone();
        let mut sent: Option<View> = None;
        let mut nonce: u64 = 0;
        let mut first = true;
        loop {
            // The newest snapshot (waiting for the first one, if need be).
            let snapshot = loop {
                if let Some(s) = snapshots.borrow_and_update().clone() {
                    break s;
                }
                if snapshots.changed().await.is_err() {
                    return Ok(());
                }
            };
            let permit = self
                .sends
                .acquire()
                .await
                .map_err(|_| Status::unavailable("shutting down"))?;
            let view = snapshot.view(meta);
            let version = version_of(snapshot.version, &view);
            let response = match &sent {
                _ if first
                    && !resume.is_empty()
                    && content_part(resume) == content_part(&version) =>
                {
                    // The proxy already runs exactly this (controller
                    // restart, reconnect): nothing to send.
                    self.sync.update(id, |p| {
                        p.sent = version.clone();
                        p.acked = version.clone();
                        p.snapshot = snapshot.version;
                        p.services = view.services.services.len();
                    });
                    None
                }
                None => Some(DiscoveryResponse {
                    version: version.clone(),
                    nonce: String::new(),
                    full: true,
                    config: Some(view.to_config(&version)),
                    removed_services: Vec::new(),
                }),
                Some(old) => {
                    let diff = Diff::between(old, &view);
                    if diff.is_empty() {
                        None
                    } else if diff.needs_full() {
                        Some(DiscoveryResponse {
                            version: version.clone(),
                            nonce: String::new(),
                            full: true,
                            config: Some(view.to_config(&version)),
                            removed_services: Vec::new(),
                        })
                    } else {
                        Some(DiscoveryResponse {
                            version: version.clone(),
                            nonce: String::new(),
                            full: false,
                            config: Some(diff.to_config(&version)),
                            removed_services: diff.removed.clone(),
                        })
                    }
                }
            };
            first = false;
            self.sync.update(id, |p| {
                p.snapshot = snapshot.version;
                p.services = view.services.services.len();
            });
            let Some(mut response) = response else {
                sent = Some(view);
                drop(permit);
                if snapshots.changed().await.is_err() {
                    return Ok(());
                }
                continue;
            };
            nonce += 1;
            response.nonce = nonce.to_string();
            let kind = if response.full { "full" } else { "incremental" };
            self.metrics
                .config_bytes
                .with_label_values(&[kind])
                .inc_by(response.encoded_len() as u64);
            self.metrics.pushes.with_label_values(&[kind]).inc();
            if tx.send(Ok(response)).await.is_err() {
                return Ok(());
            }
            drop(permit);
            self.sync.update(id, |p| p.sent = version.clone());
            // Wait for this response's ACK or NACK.
            let reply = tokio::time::timeout(ACK_TIMEOUT, async {
                loop {
                    match inbound
                        .message()
                        .await
                        .map_err(|e| self.refused_request(e))?
                    {
                        None => return Ok(None),
                        Some(DiscoveryRequest { kind: Some(k) }) => match &k {
                            discovery_request::Kind::Ack(a) if a.nonce == nonce.to_string() => {
                                return Ok(Some(k))
                            }
                            discovery_request::Kind::Nack(n) if n.nonce == nonce.to_string() => {
                                return Ok(Some(k))
                            }
                            _ => continue,
                        },
                        Some(_) => continue,
                    }
                }
            })
            .await;
            match reply {
                Err(_) => {
                    tracing::warn!(pod = %meta.pod, namespace = %meta.namespace, %version, "no ACK within 30 s");
                    sent = None;
                }
                Ok(Err(e)) => return Err(e),
                Ok(Ok(None)) => return Ok(()),
                Ok(Ok(Some(discovery_request::Kind::Ack(_)))) => {
                    if let Some(built) = snapshot.built_at {
                        self.metrics
                            .push_latency
                            .observe(built.elapsed().as_secs_f64());
                    }
                    self.sync.update(id, |p| p.acked = version.clone());
                    sent = Some(view);
                }
                Ok(Ok(Some(discovery_request::Kind::Nack(n)))) => {
                    self.metrics.nacks.inc();
                    tracing::warn!(pod = %meta.pod, namespace = %meta.namespace, %version, reason = %n.reason, "proxy refused the config");
                    self.sync
                        .update(id, |p| p.nacked = Some((version.clone(), n.reason.clone())));
                    // It kept its previous config: the next response is full.
                    sent = None;
                    if snapshots.changed().await.is_err() {
                        return Ok(());
                    }
                }
                Ok(Ok(Some(_))) => {}
            }
        }
    }
}

/// Accepts TCP on `listener`, completes mTLS off the accept loop, and
/// serves `discovery` until `stop`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    discovery: Discovery,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let (conn_tx, conn_rx) = mpsc::channel::<Result<MtlsStream, std::io::Error>>(64);
    let accept_stop = stop.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = accept_stop.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tls.acceptor();
            let conn_tx = conn_tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => {
                        let _ = conn_tx.send(Ok(MtlsStream(s))).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "config stream TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(%peer, "config stream TLS handshake timed out"),
                }
            });
        }
    });
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS_PER_CONNECTION)
        .add_service(StreamService(discovery))
        .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), stop.cancelled())
        .await?;
    Ok(())
}

/// `ConfigDiscovery` as tonic's generated server serves it, except that
/// each response is encoded into a buffer of exactly its size. Tonic
/// encodes a stream's messages into one growing buffer that it keeps for
/// the stream's lifetime, so every stream would hold on to the size of the
/// largest config it ever sent (256 KB per proxy for 150 KB views: 250 MB
/// for 1,000 proxies).
#[derive(Clone)]
pub struct StreamService(pub Discovery);

/// The one method's path.
const STREAM_PATH: &str = "/mesh.config.v1.ConfigDiscovery/Stream";

impl tonic::server::NamedService for StreamService {
    const NAME: &'static str = "mesh.config.v1.ConfigDiscovery";
}

type HttpRequest = tonic::codegen::http::Request<tonic::body::Body>;
type HttpResponse = tonic::codegen::http::Response<tonic::body::Body>;

impl tonic::codegen::Service<HttpRequest> for StreamService {
    type Response = HttpResponse;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<HttpResponse, std::convert::Infallible>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: HttpRequest) -> Self::Future {
        let discovery = self.0.clone();
        Box::pin(async move {
            if req.uri().path() != STREAM_PATH {
                return Ok(Status::unimplemented(req.uri().path().to_string()).into_http());
            }
            let (parts, body) = req.into_parts();
            let inbound =
                Streaming::new_request(RequestDecoder, body, None, Some(MAX_REQUEST_BYTES));
            let request = Request::from_parts(
                tonic::metadata::MetadataMap::from_headers(parts.headers),
                parts.extensions,
                inbound,
            );
            let responses = match discovery.stream(request).await {
                Ok(r) => r.into_inner(),
                Err(status) => return Ok(status.into_http()),
            };
            let mut response =
                tonic::codegen::http::Response::new(tonic::body::Body::new(ResponseBody {
                    responses,
                    done: false,
                }));
            response.headers_mut().insert(
                tonic::codegen::http::header::CONTENT_TYPE,
                tonic::codegen::http::HeaderValue::from_static("application/grpc"),
            );
            Ok(response)
        })
    }
}

struct RequestDecoder;

impl tonic::codec::Decoder for RequestDecoder {
    type Item = DiscoveryRequest;
    type Error = Status;

    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<DiscoveryRequest>, Status> {
        // The client's bytes are at fault, not the controller: INVALID_ARGUMENT.
        DiscoveryRequest::decode(buf)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("malformed request message: {e}")))
    }
}

/// The response stream as gRPC frames: one exactly sized buffer per
/// message, then the status in trailers.
struct ResponseBody {
    responses: ResponseStream,
    done: bool,
}

impl http_body::Body for ResponseBody {
    type Data = tonic::codegen::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Status>>> {
        use futures::Stream;
        use std::task::Poll;
        if self.done {
            return Poll::Ready(None);
        }
        let status = match std::task::ready!(Pin::new(&mut self.responses).poll_next(cx)) {
            Some(Ok(message)) => {
                let len = message.encoded_len();
                let mut buf = Vec::with_capacity(5 + len);
                buf.push(0); // not compressed
                buf.extend_from_slice(&(len as u32).to_be_bytes());
                message
                    .encode(&mut buf)
                    .expect("a Vec grows as needed while encoding");
                return Poll::Ready(Some(Ok(http_body::Frame::data(buf.into()))));
            }
            Some(Err(status)) => status,
            None => Status::ok(""),
        };
        self.done = true;
        let mut trailers = tonic::codegen::http::HeaderMap::new();
        if let Err(e) = status.add_header(&mut trailers) {
            return Poll::Ready(Some(Err(e)));
        }
        Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}
