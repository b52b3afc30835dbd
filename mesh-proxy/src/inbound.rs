//! The inbound side: traffic arriving for the local app.
//!
//! Mesh peers arrive over mTLS (their ClientHello offers our ALPN); anything
//! else is plaintext or the app's own TLS. PeerAuthentication decides what
//! is accepted: STRICT only mesh mTLS, PERMISSIVE both, DISABLE no
//! termination at all. Authorization runs on every request (HTTP) or
//! connection (TCP), with the caller's identity when there is one.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use mesh_proto::config::v1::PeerAuthMode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::authz::{self, Decision, Subject};
use crate::http_proxy::{ConnInfo, Direction, Target};
use crate::tls::{ALPN_H2, ALPN_TCP};
use crate::{detect, io as pio, pool, tcp, Shared};

/// Reads through to `inner` and keeps a copy of every byte read, so that a
/// ClientHello that turns out not to be ours can be replayed untouched.
struct Recording<I> {
    inner: I,
    seen: BytesMut,
    /// Off once the stream is known to be ours (mesh mTLS): from then on
    /// it is read through without keeping a copy.
    recording: bool,
}

impl<I> Recording<I> {
    /// Stops keeping copies and frees what was kept.
    fn stop_recording(&mut self) {
        self.recording = false;
        self.seen = BytesMut::new();
    }
}

impl Recording<pio::PrefixedIo<TcpStream>> {
    /// Everything read so far plus what was never read: the stream as the
    /// client sent it, for passing it through untouched.
    fn into_replay(self) -> (BytesMut, TcpStream) {
        let (rest, stream) = self.inner.into_parts();
        let mut replay = self.seen;
        replay.extend_from_slice(&rest);
        (replay, stream)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Recording<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), true) = (&r, this.recording) {
            this.seen.extend_from_slice(&buf.filled()[before..]);
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Recording<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, b)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn refuse(shared: &Shared, why: &str, client: SocketAddr) {
    tracing::debug!(%client, "inbound connection refused: {why}");
    shared
        .metrics
        .refused
        .with_label_values(&["inbound", "conn"])
        .inc();
}

fn tcp_allowed(shared: &Shared, peer: Option<&str>, port: u16) -> bool {
    let state = shared.state.load();
    let policies = state.authorization_policies();
    let subject = Subject {
        principal: peer,
        port,
        ..Default::default()
    };
    matches!(authz::authorize(policies, &subject), Decision::Allow)
}

/// Serves one inbound connection whose original destination is `dst`.
pub async fn serve(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    client: SocketAddr,
    dst: SocketAddr,
    stop: CancellationToken,
) -> io::Result<()> {
    let state = shared.state.load_full();
    let mode = authz::mode_for(state.config.inbound.as_ref(), dst.port());
    let opaque = state.settings.opaque_ports.contains(&dst.port());
    let detect_timeout = state.settings.detect_timeout;
    drop(state);
    let (proto, prefix) = if opaque && mode == PeerAuthMode::Disable {
        (detect::Protocol::Opaque, BytesMut::new())
    } else {
        detect::detect(&mut stream, detect_timeout).await?
    };

    let plain = |peer: Option<Arc<str>>| {
        Arc::new(ConnInfo {
            target: Target::Local { addr: dst },
            client,
            direction: Direction::Inbound,
            peer,
        })
    };
    let labels = |shared: &Shared| shared.local.workload.clone();

    if proto == detect::Protocol::Tls && mode != PeerAuthMode::Disable {
        let mut rec = Recording {
            inner: pio::PrefixedIo::new(prefix, stream),
            seen: BytesMut::new(),
            recording: true,
        };
        let acceptor =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), &mut rec);
        // Every stage after detection is boxed, so that a connection still
        // being detected (or idle) holds only the small detection state.
        let start = match tokio::time::timeout(detect_timeout * 5, Box::pin(acceptor)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                // Not a ClientHello we can read: never guess, refuse in
                // STRICT, pass through otherwise.
                if mode == PeerAuthMode::Strict {
                    refuse(&shared, &format!("unreadable TLS: {e}"), client);
                    return Ok(());
                }
                let (replay, stream) = rec.into_replay();
                return Box::pin(passthrough(&shared, stream, replay, dst)).await;
            }
            Err(_) => {
                refuse(&shared, "TLS ClientHello timed out", client);
                return Ok(());
            }
        };
        let ours = start
            .client_hello()
            .alpn()
            .map(|mut it| it.any(|p| p == ALPN_H2 || p == ALPN_TCP))
            .unwrap_or(false);
        if ours {
            let Some(config) = shared.tls.server_config() else {
                refuse(
                    &shared,
                    "mesh mTLS before this proxy has a certificate",
                    client,
                );
                return Ok(());
            };
            let mut tls = match Box::pin(start.into_stream(config)).await {
                Ok(t) => t,
                Err(e) => {
                    refuse(&shared, &format!("mTLS handshake failed: {e}"), client);
                    return Ok(());
                }
            };
            // Ours: nothing will be replayed, so stop copying every byte
            // read (a connection lives for many requests).
            tls.get_mut().0.stop_recording();
            let (_, conn) = tls.get_ref();
            let peer: Option<Arc<str>> = conn
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(crate::tls::spiffe_id)
                .map(Into::into);
            let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
            if alpn.as_deref() == Some(ALPN_H2) {
                return Box::pin(crate::serve_http2(shared, tls, plain(peer), stop)).await;
            }
            if !tcp_allowed(&shared, peer.as_deref(), dst.port()) {
                refuse(&shared, "denied by authorization policy", client);
                return Ok(());
            }
            let workload = labels(&shared);
            return Box::pin(tcp::proxy(
                &shared,
                tls,
                BytesMut::new(),
                dst,
                None,
                pool::DEFAULT_CONNECT_TIMEOUT,
                tcp::TcpLabels {
                    direction: "inbound",
                    destination_service: &workload,
                    destination_workload: &workload,
                },
            ))
            .await;
        }
        // The app's own TLS from a client outside the mesh.
        drop(start);
        if mode == PeerAuthMode::Strict {
            refuse(&shared, "STRICT mTLS: TLS that is not mesh mTLS", client);
            return Ok(());
        }
        let (replay, stream) = rec.into_replay();
        return Box::pin(passthrough(&shared, stream, replay, dst)).await;
    }

    if mode == PeerAuthMode::Strict {
        refuse(&shared, "STRICT mTLS: plaintext", client);
        return Ok(());
    }
    let io = pio::PrefixedIo::new(prefix, stream);
    match proto {
        detect::Protocol::Http1 => {
            Box::pin(crate::serve_http1(shared, io, plain(None), stop)).await
        }
        detect::Protocol::Http2 => {
            Box::pin(crate::serve_http2(shared, io, plain(None), stop)).await
        }
        _ => {
            let (prefix, stream) = io.into_parts();
            Box::pin(passthrough(&shared, stream, prefix, dst)).await
        }
    }
}

async fn passthrough(
    shared: &Arc<Shared>,
    stream: TcpStream,
    prefix: BytesMut,
    dst: SocketAddr,
) -> io::Result<()> {
    if !tcp_allowed(shared, None, dst.port()) {
        tracing::debug!(%dst, "plaintext TCP denied by authorization policy");
        return Ok(());
    }
    let workload = shared.local.workload.clone();
    tcp::proxy(
        shared,
        stream,
        prefix,
        dst,
        None,
        pool::DEFAULT_CONNECT_TIMEOUT,
        tcp::TcpLabels {
            direction: "inbound",
            destination_service: &workload,
            destination_workload: &workload,
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn recording_stops_when_told() {
        let data = vec![7u8; 64 * 1024];
        let mut rec = Recording {
            inner: &data[..],
            seen: BytesMut::new(),
            recording: true,
        };
        let mut buf = [0u8; 1024];
        rec.read_exact(&mut buf).await.unwrap();
        assert_eq!(rec.seen.len(), 1024);
        rec.stop_recording();
        let mut rest = Vec::new();
        rec.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest.len(), 63 * 1024);
        assert!(rec.seen.is_empty(), "kept {} bytes", rec.seen.len());
        assert_eq!(rec.seen.capacity(), 0);
    }
}
