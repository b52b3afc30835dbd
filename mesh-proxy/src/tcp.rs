//! Opaque TCP proxying: bytes in both directions, half-close preserved.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::Shared;

/// Labels for one proxied TCP connection.
pub struct TcpLabels<'a> {
    pub direction: &'a str,
    pub destination_service: &'a str,
    pub destination_workload: &'a str,
}

/// Connects to `upstream`, replays `prefix` (bytes already read during
/// detection) and copies both ways until both sides are done. When one side
/// half-closes, the other side's write half is shut down and the remaining
/// direction keeps flowing.
///
/// With `peer_identity` the upstream leg is mesh mTLS (ALPN `mesh-tcp`) and
/// the endpoint must prove that identity.
pub async fn proxy<I>(
    shared: &Arc<Shared>,
    downstream: I,
    prefix: BytesMut,
    upstream: SocketAddr,
    peer_identity: Option<&str>,
    connect_timeout: Duration,
    labels: TcpLabels<'_>,
) -> std::io::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let tcp = crate::pool::connect_tcp(upstream, connect_timeout)
        .await
        .map_err(std::io::Error::other)?;
    match peer_identity {
        None => copy(shared, downstream, prefix, tcp, labels).await,
        Some(id) => {
            let tls =
                crate::pool::connect_mesh_tls(&shared.tls, upstream, id, crate::tls::ALPN_TCP, tcp)
                    .await
                    .map_err(std::io::Error::other)?;
            copy(shared, downstream, prefix, tls, labels).await
        }
    }
}

async fn copy<I, U>(
    shared: &Arc<Shared>,
    mut downstream: I,
    prefix: BytesMut,
    mut up: U,
    labels: TcpLabels<'_>,
) -> std::io::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let values = [
        labels.direction,
        shared.local.workload.as_str(),
        shared.local.namespace.as_str(),
        labels.destination_service,
        labels.destination_workload,
    ];
    let m = &shared.metrics;
    m.tcp_opened.with_label_values(&values).inc();
    let result = async {
        up.write_all(&prefix).await?;
        tokio::io::copy_bidirectional(&mut downstream, &mut up).await
    }
    .await;
    m.tcp_closed.with_label_values(&values).inc();
    match result {
        Ok((sent, received)) => {
            m.tcp_sent
                .with_label_values(&values)
                .inc_by(sent + prefix.len() as u64);
            m.tcp_received.with_label_values(&values).inc_by(received);
            Ok(())
        }
        Err(e) => {
            m.tcp_sent
                .with_label_values(&values)
                .inc_by(prefix.len() as u64);
            Err(e)
        }
    }
}
