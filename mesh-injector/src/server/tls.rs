//! The serving certificate, read from the mounted Secret and reloaded when
//! the files change (cert-manager or `meshctl install` rotating it must not
//! need a restart).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{anyhow, Context};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// How often the files are compared with what is loaded. Secret volumes are
/// updated by the kubelet within about a minute anyway.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// Parses a PEM chain and key into a rustls key.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<CertifiedKey> {
    let certs = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<Vec<_>, _>>()
        .context("certificate PEM")?;
    if certs.is_empty() {
        return Err(anyhow!("no certificate in the certificate file"));
    }
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .context("key PEM")?
        .ok_or_else(|| anyhow!("no private key in the key file"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| anyhow!("unsupported private key: {e}"))?;
    Ok(CertifiedKey::new(certs, signing))
}

struct Loaded {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    key: Arc<CertifiedKey>,
}

/// A certificate resolver over two files that can be reloaded.
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Loaded>,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish()
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

impl ReloadingCert {
    /// Loads both files; fails when they are missing or do not parse.
    pub fn load(cert_path: &Path, key_path: &Path) -> anyhow::Result<Self> {
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        let key = certified_key(&cert_pem, &key_pem)
            .with_context(|| format!("{} / {}", cert_path.display(), key_path.display()))?;
        Ok(Self {
            cert_path: cert_path.into(),
            key_path: key_path.into(),
            current: RwLock::new(Loaded {
                cert_pem,
                key_pem,
                key: Arc::new(key),
            }),
        })
    }

    /// Re-reads the files; swaps the key in when they changed and parse.
    /// Returns whether it changed. On error the old key stays in use.
    pub fn reload(&self) -> anyhow::Result<bool> {
        let cert_pem = read(&self.cert_path)?;
        let key_pem = read(&self.key_path)?;
        {
            let cur = self.current.read().map_err(|_| anyhow!("poisoned lock"))?;
            if cur.cert_pem == cert_pem && cur.key_pem == key_pem {
                return Ok(false);
            }
        }
        let key = certified_key(&cert_pem, &key_pem)?;
        let mut cur = self.current.write().map_err(|_| anyhow!("poisoned lock"))?;
        *cur = Loaded {
            cert_pem,
            key_pem,
            key: Arc::new(key),
        };
        Ok(true)
    }

    /// The leaf certificate in use.
    pub fn leaf(&self) -> Option<rustls::pki_types::CertificateDer<'static>> {
        let cur = self.current.read().ok()?;
        cur.key.cert.first().cloned()
    }

    /// Reloads every [`RELOAD_INTERVAL`] until the task is dropped.
    pub fn spawn_reloader(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                match self.reload() {
                    Ok(true) => {
                        tracing::info!(cert = %self.cert_path.display(), "serving certificate reloaded")
                    }
                    Ok(false) => {}
                    // A half-written Secret update shows up here for a
                    // moment; the next tick picks up the finished one.
                    Err(e) => {
                        tracing::warn!(cert = %self.cert_path.display(), "keeping the current serving certificate: {e:#}")
                    }
                }
            }
        })
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.key.clone())
    }
}

/// A rustls server config (ring, TLS 1.2 and 1.3, h2 and http/1.1) over a
/// certificate resolver.
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
