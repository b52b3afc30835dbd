//! Upstream connections, pooled per endpoint: HTTP/1.1 keep-alive
//! connections reused one request at a time, and one multiplexed HTTP/2
//! connection per endpoint.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::body::ProxyBody;
use crate::resilience::ConnPolicy;
use crate::tls::{MeshTls, ALPN_H2};

/// How long a TCP connect to an endpoint may take before the request fails.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/2 flow-control windows (toward endpoints and downstream clients): large enough that one
/// stream can fill a fast local link, fixed so that no BDP probing adds
/// pings to the request path.
pub(crate) const H2_STREAM_WINDOW: u32 = 1024 * 1024;
pub(crate) const H2_CONN_WINDOW: u32 = 4 * 1024 * 1024;
/// Idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE_H1_PER_ENDPOINT: usize = 64;

/// Which protocol the upstream connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamProtocol {
    Http1,
    Http2,
}

/// Why an upstream request failed; decides the status the caller sees.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream connect error to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream connect timeout to {addr} after {timeout:?}")]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    #[error("TLS to {addr} failed: {reason}")]
    Tls { addr: SocketAddr, reason: String },
    #[error("upstream {addr} failed: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    /// An idle keep-alive connection, reused, closed as the request went
    /// and before any answer: most likely the app's idle timeout (Node.js
    /// closes after 5 s, gunicorn after 2 s) crossing our reuse.
    #[error("upstream {addr} closed a reused connection before answering: {source}")]
    Stale {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    /// The endpoint is known not to have processed the request: it refused
    /// the stream (`REFUSED_STREAM`), its GOAWAY left the stream out, or
    /// the connection closed before the request was written.
    #[error("upstream {addr} did not take the request: {source}")]
    Refused {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
}

impl UpstreamError {
    /// Whether the request never reached the endpoint (safe to retry anywhere).
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. } | Self::ConnectTimeout { .. } | Self::Tls { .. }
        )
    }

    /// Whether the application behind the endpoint never saw the request
    /// (safe to send again, whatever its method).
    pub fn is_unprocessed(&self) -> bool {
        self.is_connect() || matches!(self, Self::Refused { .. })
    }

    /// Classifies a failed exchange: HTTP/2 guarantees that a refused
    /// stream, and a stream above the last one a GOAWAY names, were not
    /// processed (RFC 9113 §8.7); hyper's "canceled" means the request was
    /// never written.
    fn exchange(addr: SocketAddr, source: hyper::Error) -> Self {
        let h2 = std::error::Error::source(&source).and_then(|e| e.downcast_ref::<h2::Error>());
        let refused = source.is_canceled()
            || h2.is_some_and(|e| {
                e.reason() == Some(h2::Reason::REFUSED_STREAM) && e.is_remote()
                    || e.is_go_away() && e.is_remote()
            });
        if refused {
            Self::Refused { addr, source }
        } else {
            Self::Http { addr, source }
        }
    }
}

/// The shared HTTP/2 connection, how many requests it carried, and when
/// the last one went.
type H2Slot = Option<(http2::SendRequest<ProxyBody>, u32, Instant)>;

/// An idle HTTP/1 connection, how many requests it carried, and since when
/// it is idle.
type IdleH1 = (http1::SendRequest<ProxyBody>, u32, Instant);

#[derive(Default)]
struct EndpointConns {
    h2: tokio::sync::Mutex<H2Slot>,
    /// Idle HTTP/1 connections, oldest first (the newest is reused first).
    h1_idle: Mutex<VecDeque<IdleH1>>,
}

/// Connections are shared per endpoint address and security (the expected
/// peer identity for mesh mTLS, the server name for TLS origination, or
/// nothing for plaintext).
type PoolKey = (SocketAddr, String);

/// TLS to a server outside the mesh (DestinationRule `tls.mode: SIMPLE`, or
/// `MUTUAL` with a client certificate).
#[derive(Debug)]
pub struct OriginationTls {
    /// Name sent as SNI and checked against the server's certificate.
    pub server_name: rustls::pki_types::ServerName<'static>,
    /// ALPN `http/1.1` (for HTTP/1 upstreams) and `h2`.
    pub h1: Arc<rustls::ClientConfig>,
    pub h2: Arc<rustls::ClientConfig>,
    /// Pool key: server name and client certificate (connections with
    /// different client certificates are not shared).
    key: String,
}

fn hash_bytes(b: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

impl OriginationTls {
    /// Client configs trusting `ca_pem` (or, empty, the system's roots),
    /// presenting `client` (certificate chain and key, PEM) when given.
    pub fn new(
        server_name: &str,
        ca_pem: &str,
        client: Option<(String, String)>,
    ) -> Result<Self, String> {
        use rustls::pki_types::pem::PemObject;
        let server_name = rustls::pki_types::ServerName::try_from(server_name.to_string())
            .map_err(|e| format!("{server_name:?} is not a valid TLS server name: {e}"))?;
        let mut roots = rustls::RootCertStore::empty();
        if ca_pem.trim().is_empty() {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err("no system CA certificates found; set caCertificates".into());
            }
        } else {
            for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
                let c = c.map_err(|e| format!("CA certificates: {e}"))?;
                roots.add(c).map_err(|e| format!("CA certificates: {e}"))?;
            }
            if roots.is_empty() {
                return Err("CA certificates: no certificate in the PEM".into());
            }
        }
        let roots = Arc::new(roots);
        let client = match client {
            None => None,
            Some((chain, key)) => {
                let chain = rustls::pki_types::CertificateDer::pem_slice_iter(chain.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("client certificate: {e}"))?;
                if chain.is_empty() {
                    return Err("client certificate: no CERTIFICATE block".into());
                }
                let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes())
                    .map_err(|e| format!("client private key: {e}"))?;
                Some((chain, key))
            }
        };
        let key = format!(
            "tls:{}:{}",
            server_name.to_str(),
            client
                .as_ref()
                .map(|(c, _)| format!("{:x}", hash_bytes(c[0].as_ref())))
                .unwrap_or_default()
        );
        let config = |alpn: &[u8]| -> Result<Arc<rustls::ClientConfig>, String> {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let builder = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots.clone());
            let mut c = match &client {
                None => builder.with_no_client_auth(),
                Some((chain, key)) => builder
                    .with_client_auth_cert(chain.clone(), key.clone_key())
                    .map_err(|e| format!("client certificate and key: {e}"))?,
            };
            c.alpn_protocols = vec![alpn.to_vec()];
            Ok(Arc::new(c))
        };
        Ok(Self {
            server_name,
            h1: config(b"http/1.1")?,
            h2: config(b"h2")?,
            key,
        })
    }
}

/// How the proxy talks to one endpoint.
#[derive(Debug, Clone, Copy)]
pub enum Security<'a> {
    Plaintext,
    /// Mesh mTLS; the endpoint must prove this SPIFFE ID.
    Mesh(&'a Arc<str>),
    /// TLS origination to a server outside the mesh.
    Origination(&'a Arc<OriginationTls>),
}

impl Security<'_> {
    fn key(&self) -> String {
        match self {
            Security::Plaintext => String::new(),
            Security::Mesh(id) => id.to_string(),
            Security::Origination(t) => t.key.clone(),
        }
    }
}

/// HTTP/2 PINGs that find connections whose peer is gone without closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub interval: Duration,
    pub timeout: Duration,
}

/// Connection pool over every endpoint this proxy talks to.
#[derive(Clone)]
pub struct Pool {
    conns: Arc<Mutex<HashMap<PoolKey, Arc<EndpointConns>>>>,
    tls: Arc<MeshTls>,
    /// Pings on mesh mTLS connections (other proxies answer them; app and
    /// external gRPC servers may answer frequent pings with GOAWAY).
    keepalive: Option<Keepalive>,
}

impl Pool {
    pub fn new(tls: Arc<MeshTls>, keepalive: Option<Keepalive>) -> Self {
        Self {
            conns: Default::default(),
            tls,
            keepalive,
        }
    }

    /// The HTTP/2 PINGs of this proxy (`--keepalive-*`), also used for its
    /// downstream connections; `None`: off.
    pub fn keepalive(&self) -> Option<Keepalive> {
        self.keepalive
    }

    fn endpoint(&self, key: PoolKey) -> Arc<EndpointConns> {
        let mut map = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(key).or_default().clone()
    }

    /// Forgets connections to endpoints that are no longer configured.
    pub fn retain(&self, keep: impl Fn(&SocketAddr) -> bool) {
        let mut map = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|(a, _), _| keep(a));
    }

    /// A connection to `addr`: plain TCP, or TLS origination.
    async fn connect(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
        tls: Option<&Arc<rustls::ClientConfig>>,
        name: Option<&rustls::pki_types::ServerName<'static>>,
    ) -> Result<crate::io::BoxedIo, UpstreamError> {
        let tcp = connect_tcp(addr, connect_timeout).await?;
        match (tls, name) {
            (Some(config), Some(name)) => {
                let stream = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| UpstreamError::Tls {
                        addr,
                        reason: e.to_string(),
                    })?;
                Ok(crate::io::BoxedIo::new(stream))
            }
            _ => Ok(crate::io::BoxedIo::new(tcp)),
        }
    }

    /// Sends one request to `addr` over a pooled connection. Also returns
    /// when the request was handed to a ready connection, so that latency
    /// samples measure the endpoint, not our connection set-up.
    ///
    /// With `peer_identity`, the connection is mesh mTLS (always HTTP/2) and
    /// the endpoint must prove that identity. `policy` bounds the connect
    /// time and the requests one connection carries.
    pub async fn send(
        &self,
        addr: SocketAddr,
        proto: UpstreamProtocol,
        security: Security<'_>,
        policy: ConnPolicy,
        req: http::Request<ProxyBody>,
    ) -> Result<(http::Response<Incoming>, Instant), UpstreamError> {
        let conns = self.endpoint((addr, security.key()));
        match (security, proto) {
            (Security::Mesh(_), _) | (_, UpstreamProtocol::Http2) => {
                self.send_h2(addr, security, policy, &conns, req).await
            }
            (_, UpstreamProtocol::Http1) => self.send_h1(addr, security, policy, conns, req).await,
        }
    }

    async fn h2_handshake<I>(
        addr: SocketAddr,
        io: I,
        keepalive: Option<Keepalive>,
    ) -> Result<http2::SendRequest<ProxyBody>, UpstreamError>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONN_WINDOW);
        if let Some(k) = keepalive {
            // Idle pooled connections too: a dead one is found before a
            // request is sent on it.
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(k.interval)
                .keep_alive_timeout(k.timeout)
                .keep_alive_while_idle(true);
        }
        let (sender, conn) = builder
            .handshake(io)
            .await
            .map_err(|source| UpstreamError::Http { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, "upstream h2 connection ended: {e}");
            }
        });
        Ok(sender)
    }

    async fn send_h2(
        &self,
        addr: SocketAddr,
        security: Security<'_>,
        policy: ConnPolicy,
        conns: &EndpointConns,
        mut req: http::Request<ProxyBody>,
    ) -> Result<(http::Response<Incoming>, Instant), UpstreamError> {
        // A shared connection can close between our pick and our send (the
        // endpoint drains and its GOAWAY arrives): hyper then hands the
        // request back unsent, and it goes once more on a new connection.
        let mut fresh = false;
        loop {
            let mut sender = self.h2_sender(addr, security, policy, conns).await?;
            let (unsent, error) = match sender.ready().await {
                Ok(()) => {
                    let dispatched = Instant::now();
                    match sender.try_send_request(req).await {
                        Ok(resp) => return Ok((resp, dispatched)),
                        Err(mut e) => match e.take_message() {
                            Some(r) => (r, e.into_error()),
                            None => return Err(UpstreamError::exchange(addr, e.into_error())),
                        },
                    }
                }
                Err(e) => (req, e),
            };
            if fresh {
                return Err(UpstreamError::Refused {
                    addr,
                    source: error,
                });
            }
            tracing::debug!(%addr, "upstream h2 connection closed before the request went: {error}");
            req = unsent;
            fresh = true;
            // Forget the closed connection unless another request already
            // replaced it.
            let mut slot = conns.h2.lock().await;
            if slot.as_ref().is_some_and(|(s, _, _)| s.is_closed()) {
                *slot = None;
            }
        }
    }

    /// The endpoint's shared HTTP/2 connection, opened if there is none
    /// usable.
    async fn h2_sender(
        &self,
        addr: SocketAddr,
        security: Security<'_>,
        policy: ConnPolicy,
        conns: &EndpointConns,
    ) -> Result<http2::SendRequest<ProxyBody>, UpstreamError> {
        let timeout = policy.connect_timeout;
        let mut slot = conns.h2.lock().await;
        if let Some((s, used, last)) = slot.as_mut() {
            if !s.is_closed() && policy.reusable(*used) && policy.h2_fresh(*last) {
                *used += 1;
                *last = Instant::now();
                return Ok(s.clone());
            }
        }
        // A new connection; the one it replaces (if any) finishes its
        // streams and closes when its last sender is gone.
        let sender = match security {
            Security::Plaintext => {
                let io = self.connect(addr, timeout, None, None).await?;
                Self::h2_handshake(addr, TokioIo::new(io), None).await?
            }
            Security::Origination(t) => {
                let io = self
                    .connect(addr, timeout, Some(&t.h2), Some(&t.server_name))
                    .await?;
                Self::h2_handshake(addr, TokioIo::new(io), None).await?
            }
            Security::Mesh(id) => {
                let tcp = connect_tcp(addr, timeout).await?;
                let tls = connect_mesh_tls(&self.tls, addr, id, ALPN_H2, tcp).await?;
                Self::h2_handshake(addr, TokioIo::new(tls), self.keepalive).await?
            }
        };
        *slot = Some((sender.clone(), 1, Instant::now()));
        Ok(sender)
    }

    async fn send_h1(
        &self,
        addr: SocketAddr,
        security: Security<'_>,
        policy: ConnPolicy,
        conns: Arc<EndpointConns>,
        mut req: http::Request<ProxyBody>,
    ) -> Result<(http::Response<Incoming>, Instant), UpstreamError> {
        // Reuse the newest idle connection if it is still open and was not
        // idle too long (the app may be closing it); a connection the server
        // closed while idle gives the request back unsent, and we try the
        // next one.
        loop {
            let idle = {
                let mut idle = conns.h1_idle.lock().unwrap_or_else(|e| e.into_inner());
                drop_expired(&mut idle, Instant::now(), policy.h1_idle_timeout());
                idle.pop_back()
            };
            let Some((mut sender, used, _)) = idle else {
                break;
            };
            if !sender.is_ready() {
                continue;
            }
            let dispatched = Instant::now();
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    self.return_h1(conns, sender, used + 1, policy);
                    return Ok((resp, dispatched));
                }
                Err(mut e) => match e.take_message() {
                    Some(r) => req = r,
                    None => {
                        let source = e.into_error();
                        return Err(if source.is_incomplete_message() {
                            UpstreamError::Stale { addr, source }
                        } else {
                            UpstreamError::exchange(addr, source)
                        });
                    }
                },
            }
        }
        let timeout = policy.connect_timeout;
        let io = match security {
            Security::Origination(t) => {
                self.connect(addr, timeout, Some(&t.h1), Some(&t.server_name))
                    .await?
            }
            _ => self.connect(addr, timeout, None, None).await?,
        };
        let (mut sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| UpstreamError::Http { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, "upstream h1 connection ended: {e}");
            }
        });
        let dispatched = Instant::now();
        let resp = sender
            .send_request(req)
            .await
            .map_err(|source| UpstreamError::exchange(addr, source))?;
        self.return_h1(conns, sender, 1, policy);
        Ok((resp, dispatched))
    }

    /// Puts the connection back once the response body is done with it,
    /// unless it carried as many requests as the policy allows (then it is
    /// dropped, which closes it).
    fn return_h1(
        &self,
        conns: Arc<EndpointConns>,
        mut sender: http1::SendRequest<ProxyBody>,
        used: u32,
        policy: ConnPolicy,
    ) {
        if !policy.reusable(used) {
            return;
        }
        let max_idle = policy.h1_idle_timeout();
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                let now = Instant::now();
                let mut idle = conns.h1_idle.lock().unwrap_or_else(|e| e.into_inner());
                drop_expired(&mut idle, now, max_idle);
                if idle.len() < MAX_IDLE_H1_PER_ENDPOINT {
                    idle.push_back((sender, used, now));
                }
            }
        });
    }
}

/// Closes (drops) the idle HTTP/1 connections too old to reuse: they are at
/// the front, the oldest first.
fn drop_expired(idle: &mut VecDeque<IdleH1>, now: Instant, max_idle: Duration) {
    while idle
        .front()
        .is_some_and(|(_, _, since)| now.duration_since(*since) >= max_idle)
    {
        idle.pop_front();
    }
}

/// Opens a TCP connection with a timeout and TCP_NODELAY.
pub async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, UpstreamError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| UpstreamError::ConnectTimeout { addr, timeout })?
        .map_err(|source| UpstreamError::Connect { addr, source })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Runs the mesh mTLS handshake on `tcp`, requiring the peer to be `identity`.
pub async fn connect_mesh_tls(
    tls: &MeshTls,
    addr: SocketAddr,
    identity: &str,
    alpn: &'static [u8],
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, UpstreamError> {
    let config = tls
        .client_config(identity, alpn)
        .ok_or_else(|| UpstreamError::Tls {
            addr,
            reason: "this proxy has no workload certificate yet".into(),
        })?;
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| UpstreamError::Tls {
            addr,
            reason: e.to_string(),
        })
}
