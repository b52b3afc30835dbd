//! Upstream connections, pooled per endpoint: HTTP/1.1 keep-alive
//! connections reused one request at a time, and one multiplexed HTTP/2
//! connection per endpoint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::body::ProxyBody;
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
    #[error("mTLS to {addr} failed: {reason}")]
    Tls { addr: SocketAddr, reason: String },
    #[error("upstream {addr} failed: {source}")]
    Http {
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
}

#[derive(Default)]
struct EndpointConns {
    h2: tokio::sync::Mutex<Option<http2::SendRequest<ProxyBody>>>,
    h1_idle: Mutex<Vec<http1::SendRequest<ProxyBody>>>,
}

/// Connections are shared per endpoint address and expected peer identity
/// (`None`: plaintext).
type PoolKey = (SocketAddr, Option<Arc<str>>);

/// Connection pool over every endpoint this proxy talks to.
#[derive(Clone)]
pub struct Pool {
    conns: Arc<Mutex<HashMap<PoolKey, Arc<EndpointConns>>>>,
    connect_timeout: Duration,
    tls: Arc<MeshTls>,
}

impl Pool {
    pub fn new(connect_timeout: Duration, tls: Arc<MeshTls>) -> Self {
        Self {
            conns: Default::default(),
            connect_timeout,
            tls,
        }
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

    async fn connect(&self, addr: SocketAddr) -> Result<TokioIo<TcpStream>, UpstreamError> {
        Ok(TokioIo::new(connect_tcp(addr, self.connect_timeout).await?))
    }

    /// Sends one request to `addr` over a pooled connection. Also returns
    /// when the request was handed to a ready connection, so that latency
    /// samples measure the endpoint, not our connection set-up.
    ///
    /// With `peer_identity`, the connection is mesh mTLS (always HTTP/2) and
    /// the endpoint must prove that identity.
    pub async fn send(
        &self,
        addr: SocketAddr,
        proto: UpstreamProtocol,
        peer_identity: Option<&Arc<str>>,
        req: http::Request<ProxyBody>,
    ) -> Result<(http::Response<Incoming>, Instant), UpstreamError> {
        let conns = self.endpoint((addr, peer_identity.cloned()));
        match (peer_identity, proto) {
            (Some(id), _) => self.send_h2(addr, Some(id), &conns, req).await,
            (None, UpstreamProtocol::Http2) => self.send_h2(addr, None, &conns, req).await,
            (None, UpstreamProtocol::Http1) => self.send_h1(addr, conns, req).await,
        }
    }

    async fn h2_handshake<I>(
        addr: SocketAddr,
        io: I,
    ) -> Result<http2::SendRequest<ProxyBody>, UpstreamError>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONN_WINDOW)
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
        peer_identity: Option<&Arc<str>>,
        conns: &EndpointConns,
        req: http::Request<ProxyBody>,
    ) -> Result<(http::Response<Incoming>, Instant), UpstreamError> {
        let mut sender = {
            let mut slot = conns.h2.lock().await;
            match slot.as_ref() {
                Some(s) if !s.is_closed() => s.clone(),
                _ => {
                    let sender = match peer_identity {
                        None => Self::h2_handshake(addr, self.connect(addr).await?).await?,
                        Some(id) => {
                            let tcp = connect_tcp(addr, self.connect_timeout).await?;
                            let tls = connect_mesh_tls(&self.tls, addr, id, ALPN_H2, tcp).await?;
                            Self::h2_handshake(addr, TokioIo::new(tls)).await?
                        }
                    };
                    *slot = Some(sender.clone());
                    sender
                }
            }
        };
        sender
            .ready()
            .await
            .map_err(|source| UpstreamError::Http { addr, source })?;
        let dispatched = Instant::now();
        let resp = sender
            .send_request(req)
            .await
            .map_err(|source| UpstreamError::Http { addr, source })?;
        Ok((resp, dispatched))
    }

    async fn send_h1(
        &self,
        addr: SocketAddr,
        conns: Arc<EndpointConns>,
        mut req: http::Request<ProxyBody>,
    ) -> Result<(http::Response<Incoming>, Instant), UpstreamError> {
        // Reuse an idle connection if one is still open; a connection the
        // server closed while idle gives the request back unsent, and we try
        // the next one.
        loop {
            let idle = conns
                .h1_idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop();
            let Some(mut sender) = idle else { break };
            if !sender.is_ready() {
                continue;
            }
            let dispatched = Instant::now();
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    self.return_h1(conns, sender);
                    return Ok((resp, dispatched));
                }
                Err(mut e) => match e.take_message() {
                    Some(r) => req = r,
                    None => {
                        return Err(UpstreamError::Http {
                            addr,
                            source: e.into_error(),
                        })
                    }
                },
            }
        }
        let io = self.connect(addr).await?;
        let (mut sender, conn) = http1::Builder::new()
            .handshake(io)
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
            .map_err(|source| UpstreamError::Http { addr, source })?;
        self.return_h1(conns, sender);
        Ok((resp, dispatched))
    }

    /// Puts the connection back once the response body is done with it.
    fn return_h1(&self, conns: Arc<EndpointConns>, mut sender: http1::SendRequest<ProxyBody>) {
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                let mut idle = conns.h1_idle.lock().unwrap_or_else(|e| e.into_inner());
                if idle.len() < MAX_IDLE_H1_PER_ENDPOINT {
                    idle.push(sender);
                }
            }
        });
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
