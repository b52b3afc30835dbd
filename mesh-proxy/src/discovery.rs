//! The config stream: the proxy's side of `mesh.config.v1.ConfigDiscovery`.
//!
//! One long-lived bidirectional stream to mesh-controller over mesh mTLS
//! (the controller must prove its own SPIFFE ID). The proxy says hello with
//! the version it last applied, then applies each response (a full snapshot
//! or an incremental update) and ACKs it, or NACKs it with the reason and
//! keeps the last good config. When the controller is unreachable the proxy
//! keeps serving what it has and reconnects with backoff.

use std::sync::Arc;
use std::time::Duration;

use mesh_proto::config::v1::{
    config_discovery_client::ConfigDiscoveryClient, discovery_request, Ack, DiscoveryRequest,
    DiscoveryResponse, Hello, Nack, ProxyConfig,
};
use tokio_util::sync::CancellationToken;

use crate::Shared;

/// ALPN for gRPC over TLS.
const ALPN_GRPC: &[u8] = b"h2";
/// First reconnect delay; doubles up to the maximum.
pub const RECONNECT_MIN: Duration = Duration::from_millis(500);
/// Longest wait between reconnects.
pub const RECONNECT_MAX: Duration = Duration::from_secs(15);
/// TCP connect plus TLS handshake to the controller. A partitioned network
/// drops SYNs silently; without a bound the kernel's SYN retries would hold
/// one attempt for over two minutes.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 PING on the config stream when it has been quiet this long. A
/// partition leaves the TCP connection "established" on both ends; nothing
/// else would notice that updates stopped arriving.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// No PING answer within this long: the stream is dead, reconnect. Worst
/// case a dead stream is noticed after interval + timeout = 15 s.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the controller is and who it must be.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// `host:port` of the controller's config stream.
    pub addr: String,
    /// SPIFFE ID the controller must present.
    pub controller_identity: String,
    pub hello: Hello,
}

/// Applies one response on top of `current`: a full snapshot replaces it;
/// an incremental update upserts services by name, drops removed ones, and
/// replaces the other fields that it sets.
pub fn merge(current: &ProxyConfig, resp: &DiscoveryResponse) -> ProxyConfig {
    let update = resp.config.clone().unwrap_or_default();
    let mut next = if resp.full {
        update
    } else {
        let mut next = current.clone();
        next.services.retain(|s| {
            !resp.removed_services.contains(&s.name)
                && !update.services.iter().any(|u| u.name == s.name)
        });
        next.services.extend(update.services);
        next.services.sort_by(|a, b| a.name.cmp(&b.name));
        if update.inbound.is_some() {
            next.inbound = update.inbound;
        }
        if update.settings.is_some() {
            next.settings = update.settings;
        }
        if !update.trust_bundle_pem.is_empty() {
            next.trust_bundle_pem = update.trust_bundle_pem;
        }
        if !update.gateway_listeners.is_empty() {
            next.gateway_listeners = update.gateway_listeners;
        }
        next
    };
    next.version = resp.version.clone();
    next
}

fn request(kind: discovery_request::Kind) -> DiscoveryRequest {
    DiscoveryRequest { kind: Some(kind) }
}

/// Runs one stream until it ends; returns why.
async fn stream_once(
    shared: &Arc<Shared>,
    cfg: &DiscoveryConfig,
    channel: tonic::transport::Channel,
) -> Result<(), tonic::Status> {
    let (tx, rx) = tokio::sync::mpsc::channel::<DiscoveryRequest>(16);
    let mut hello = cfg.hello.clone();
    hello.resume_version = shared.state.load().version.clone();
    tx.send(request(discovery_request::Kind::Hello(hello)))
        .await
        .map_err(|_| tonic::Status::internal("request channel closed"))?;
    let mut responses = ConfigDiscoveryClient::new(channel)
        .stream(tokio_stream_from(rx))
        .await?
        .into_inner();
    while let Some(resp) = responses.message().await? {
        let current = shared.state.load_full();
        let next = merge(&current.config, &resp);
        let reply = match shared.apply(next) {
            Ok(()) => discovery_request::Kind::Ack(Ack {
                version: resp.version.clone(),
                nonce: resp.nonce.clone(),
            }),
            Err(e) => discovery_request::Kind::Nack(Nack {
                version: resp.version.clone(),
                nonce: resp.nonce.clone(),
                reason: e.to_string(),
            }),
        };
        if tx.send(request(reply)).await.is_err() {
            break;
        }
    }
    Ok(())
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<DiscoveryRequest>,
) -> impl futures::Stream<Item = DiscoveryRequest> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Connects over mesh mTLS with the proxy's current certificate.
async fn connect(
    shared: &Arc<Shared>,
    cfg: &DiscoveryConfig,
) -> Result<tonic::transport::Channel, String> {
    let tls = shared.tls.clone();
    let addr = cfg.addr.clone();
    let expected = cfg.controller_identity.clone();
    let connector = tower::service_fn(move |_: http::Uri| {
        let tls = tls.clone();
        let addr = addr.clone();
        let expected = expected.clone();
        async move {
            let config = tls
                .client_config(&expected, ALPN_GRPC)
                .ok_or_else(|| std::io::Error::other("no workload certificate yet"))?;
            let handshake = async {
                let tcp = tokio::net::TcpStream::connect(&addr).await?;
                let _ = tcp.set_nodelay(true);
                let ip = tcp.peer_addr()?.ip();
                tokio_rustls::TlsConnector::from(config)
                    .connect(rustls::pki_types::ServerName::IpAddress(ip.into()), tcp)
                    .await
            };
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("connect to the controller timed out after {CONNECT_TIMEOUT:?}"),
                    )
                })??;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    tonic::transport::Endpoint::from_shared(format!("http://{}", cfg.addr))
        .map_err(|e| e.to_string())?
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect_with_connector(connector)
        .await
        .map_err(|e| e.to_string())
}

/// Keeps the config stream up until `stop`.
pub async fn run(shared: Arc<Shared>, cfg: DiscoveryConfig, stop: CancellationToken) {
    let mut backoff = RECONNECT_MIN;
    loop {
        let outcome = match connect(&shared, &cfg).await {
            Ok(channel) => {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = stream_once(&shared, &cfg, channel) => r.map_err(|s| s.to_string()),
                }
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => {
                tracing::info!(controller = %cfg.addr, "config stream closed by the controller; reconnecting");
                backoff = RECONNECT_MIN;
            }
            Err(e) => {
                tracing::warn!(controller = %cfg.addr, retry_in = ?backoff, "config stream: {e}; keeping the last good config");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::config::v1::Service;

    fn svc(name: &str) -> Service {
        Service {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn full_replaces_incremental_upserts_and_removes() {
        let base = ProxyConfig {
            services: vec![svc("a"), svc("b")],
            ..Default::default()
        };
        let full = DiscoveryResponse {
            version: "2".into(),
            full: true,
            config: Some(ProxyConfig {
                services: vec![svc("c")],
                ..Default::default()
            }),
            ..Default::default()
        };
        let next = merge(&base, &full);
        assert_eq!(next.version, "2");
        assert_eq!(
            next.services
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["c"]
        );

        let mut b2 = svc("b");
        b2.namespace = "changed".into();
        let inc = DiscoveryResponse {
            version: "3".into(),
            full: false,
            config: Some(ProxyConfig {
                services: vec![b2, svc("d")],
                ..Default::default()
            }),
            removed_services: vec!["a".into()],
            ..Default::default()
        };
        let next = merge(&base, &inc);
        assert_eq!(next.version, "3");
        let names: Vec<_> = next
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.namespace.as_str()))
            .collect();
        assert_eq!(names, [("b", "changed"), ("d", "")]);
    }
}
