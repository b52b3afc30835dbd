//! Gateway mode: the proxy as an ingress gateway.
//!
//! The config's `gateway_listeners` (from Gateway resources that select this
//! pod) say which ports to open. Each port serves HTTP/1.1 and HTTP/2
//! (ALPN `h2` under TLS, prior knowledge in plaintext), terminates TLS when
//! the listener has a certificate, routes by host and route like a sidecar
//! routes a service, and forwards into the mesh over mTLS.
//!
//! Listeners follow the config: a port opens when it appears and closes
//! (its connections drain) when it goes. Certificates from mounted Secrets
//! are re-read every [`CREDENTIAL_RECHECK`], so a renewed Secret is served
//! without a restart. An HTTPS listener whose certificate cannot be loaded
//! serves nothing rather than plaintext, and says why in the log and in
//! `mesh_gateway_listener_errors_total`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http_proxy::{ConnInfo, Direction, Target};
use crate::model::TlsSource;
use crate::{detect, io as pio, serve_http1, serve_http2, Shared};

/// How often mounted certificates are checked for renewal.
pub const CREDENTIAL_RECHECK: Duration = Duration::from_secs(10);

/// Time a client has to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where gateway listeners bind and find their certificates.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub bind_ip: IpAddr,
    /// `<dir>/<credentialName>/tls.crt` and `tls.key`.
    pub credentials_dir: PathBuf,
}

/// What a listener serves with.
enum Serving {
    Plain,
    Tls(Arc<ServerConfig>),
    /// The certificate could not be loaded: connections are closed.
    Broken,
}

struct Open {
    stop: CancellationToken,
    serving: Arc<ArcSwap<Serving>>,
    /// The PEM the current TLS config was built from (cert, key).
    loaded: Option<(String, String)>,
}

/// A certificate chain and key (PEM) as a TLS server config offering
/// `h2` and `http/1.1`.
pub fn server_config(cert_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>, String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate: {e}"))?;
    if chain.is_empty() {
        return Err("certificate: no CERTIFICATE block".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("private key: {e}"))?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| format!("certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read_credential(dir: &Path, name: &str) -> Result<(String, String), String> {
    let base = dir.join(name);
    let read = |f: &str| {
        std::fs::read_to_string(base.join(f))
            .map_err(|e| format!("{}: {e}", base.join(f).display()))
    };
    Ok((read("tls.crt")?, read("tls.key")?))
}

/// Keeps the open listeners equal to the config's until `shutdown`.
pub async fn run(
    shared: Arc<Shared>,
    settings: GatewaySettings,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let mut open: HashMap<u16, Open> = HashMap::new();
    loop {
        reconcile(&shared, &settings, &mut open, &shutdown, &tracker).await;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = shared.config_applied.notified() => {}
            _ = tokio::time::sleep(CREDENTIAL_RECHECK) => {}
        }
    }
    for (_, o) in open {
        o.stop.cancel();
    }
}

async fn reconcile(
    shared: &Arc<Shared>,
    settings: &GatewaySettings,
    open: &mut HashMap<u16, Open>,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) {
    let state = shared.state.load_full();
    open.retain(|port, o| {
        let keep = state.gateway(*port).is_some();
        if !keep {
            tracing::info!(port, "gateway listener removed");
            o.stop.cancel();
        }
        keep
    });
    for listener in &state.gateways {
        let port = listener.port;
        let pem = match &listener.tls {
            TlsSource::None => Ok(None),
            TlsSource::Inline { cert_pem, key_pem } => {
                Ok(Some((cert_pem.clone(), key_pem.clone())))
            }
            TlsSource::Credential(name) => {
                read_credential(&settings.credentials_dir, name).map(Some)
            }
        };
        let o = match open.entry(port) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let addr = SocketAddr::new(settings.bind_ip, port);
                let l = match TcpListener::bind(addr).await {
                    Ok(l) => l,
                    Err(err) => {
                        listener_error(shared, port, &format!("binding {addr}: {err}"));
                        continue;
                    }
                };
                tracing::info!(%addr, name = %listener.name, "gateway listener open");
                let o = Open {
                    stop: shutdown.child_token(),
                    serving: Arc::new(ArcSwap::from_pointee(Serving::Broken)),
                    loaded: None,
                };
                spawn_accept(shared, l, port, o.serving.clone(), o.stop.clone(), tracker);
                e.insert(o)
            }
        };
        match pem {
            Ok(None) => {
                o.loaded = None;
                o.serving.store(Arc::new(Serving::Plain));
            }
            Ok(Some(pem)) if o.loaded.as_ref() == Some(&pem) => {}
            Ok(Some(pem)) => match server_config(&pem.0, &pem.1) {
                Ok(cfg) => {
                    tracing::info!(port, "gateway certificate loaded");
                    o.serving.store(Arc::new(Serving::Tls(cfg)));
                    o.loaded = Some(pem);
                }
                Err(e) => keep_or_break(shared, o, port, &e),
            },
            Err(e) => keep_or_break(shared, o, port, &e),
        }
    }
}

/// A certificate that cannot be (re)loaded: a listener that already serves
/// TLS keeps its current certificate; a new one serves nothing.
fn keep_or_break(shared: &Shared, o: &mut Open, port: u16, why: &str) {
    listener_error(shared, port, why);
    if o.loaded.is_none() {
        o.serving.store(Arc::new(Serving::Broken));
    }
}

fn listener_error(shared: &Shared, port: u16, why: &str) {
    tracing::error!(port, "gateway listener: {why}");
    shared
        .metrics
        .gateway_errors
        .with_label_values(&[&port.to_string()])
        .inc();
}

fn spawn_accept(
    shared: &Arc<Shared>,
    l: TcpListener,
    port: u16,
    serving: Arc<ArcSwap<Serving>>,
    stop: CancellationToken,
    tracker: &TaskTracker,
) {
    let shared = shared.clone();
    let tracker = tracker.clone();
    tokio::spawn(async move {
        loop {
            let (stream, client) = tokio::select! {
                _ = stop.cancelled() => return,
                r = l.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(port, "accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let serving = serving.load_full();
            let shared = shared.clone();
            let stop = stop.clone();
            tracker.spawn(async move {
                if let Err(e) = serve(shared, stream, client, port, &serving, stop).await {
                    tracing::debug!(%client, port, "gateway connection ended with error: {e}");
                }
            });
        }
    });
}

async fn serve(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    client: SocketAddr,
    port: u16,
    serving: &Serving,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let info = |https| {
        Arc::new(ConnInfo {
            target: Target::Gateway { port, https },
            client,
            direction: Direction::Gateway,
            peer: None,
        })
    };
    match serving {
        Serving::Broken => Ok(()),
        Serving::Plain => {
            let timeout = shared.state.load().settings.detect_timeout;
            let (proto, prefix) = detect::detect(&mut stream, timeout).await?;
            let io = pio::PrefixedIo::new(prefix, stream);
            match proto {
                detect::Protocol::Http2 => serve_http2(shared, io, info(false), stop).await,
                _ => serve_http1(shared, io, info(false), stop).await,
            }
        }
        Serving::Tls(config) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
            let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                .await
                .map_err(|_| std::io::Error::other("TLS handshake timed out"))??;
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            if h2 {
                serve_http2(shared, tls, info(true), stop).await
            } else {
                serve_http1(shared, tls, info(true), stop).await
            }
        }
    }
}
