//! Reading the components' admin endpoints: readiness, the controller's
//! `/debug/syncz` (which proxy has ACKed which config) and `/debug/status`
//! (which mesh resources were accepted).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

/// How long one admin request may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// `GET http://addr/path`: the status code and body.
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let fut = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header(http::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())?;
        let resp = send.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(TIMEOUT, fut)
        .await
        .map_err(|_| anyhow!("http://{addr}{path}: no answer within {TIMEOUT:?}"))?
        .with_context(|| format!("http://{addr}{path}"))
}

/// `GET` that must answer 200 with JSON of type `T`.
pub async fn get_json<T: serde::de::DeserializeOwned>(addr: SocketAddr, path: &str) -> Result<T> {
    let (status, body) = get(addr, path).await?;
    if status != 200 {
        bail!("http://{addr}{path} answered {status}: {}", body.trim());
    }
    serde_json::from_str(&body).with_context(|| format!("http://{addr}{path}: unexpected answer"))
}

/// Whether `GET /ready` answers 200.
pub async fn ready(addr: SocketAddr) -> bool {
    matches!(get(addr, "/ready").await, Ok((200, _)))
}

/// The controller's `/debug/syncz`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncReport {
    /// The latest snapshot the controller built.
    pub latest_snapshot: u64,
    /// Every connected proxy.
    #[serde(default)]
    pub proxies: Vec<ProxySync>,
}

/// One connected proxy in `/debug/syncz`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProxySync {
    pub pod: String,
    pub namespace: String,
    pub identity: String,
    /// Version of the last config sent.
    pub sent: String,
    /// Version the proxy last ACKed.
    pub acked: String,
    /// Last NACK: version and the proxy's reason.
    pub nacked: Option<(String, String)>,
    /// Snapshot the last view was cut from.
    pub snapshot: u64,
    /// `SYNCED`, `STALE` or `NACKED`.
    pub status: String,
}

impl SyncReport {
    /// The proxy of `namespace/pod` (the newest stream, if it reconnected).
    pub fn proxy(&self, namespace: &str, pod: &str) -> Option<&ProxySync> {
        self.proxies
            .iter()
            .filter(|p| p.namespace == namespace && p.pod == pod)
            .max_by_key(|p| p.snapshot)
    }

    /// Whether every one of `pods` (in `namespace`) is connected, SYNCED and
    /// has considered at least snapshot `min_snapshot`. `Err` when one has
    /// NACKED: it will not get better by waiting.
    pub fn all_synced(&self, namespace: &str, pods: &[String], min_snapshot: u64) -> Result<bool> {
        let mut all = true;
        for pod in pods {
            match self.proxy(namespace, pod) {
                Some(p) if p.status == "NACKED" => {
                    let (version, reason) = p.nacked.clone().unwrap_or_default();
                    bail!("the proxy of {namespace}/{pod} rejected config {version}: {reason}");
                }
                Some(p) if p.status == "SYNCED" && p.snapshot >= min_snapshot => {}
                _ => all = false,
            }
        }
        Ok(all)
    }

    /// One line per expected proxy: its state, for "not synced" errors.
    pub fn describe(&self, namespace: &str, pods: &[String]) -> String {
        pods.iter()
            .map(|pod| match self.proxy(namespace, pod) {
                Some(p) => format!(
                    "  {namespace}/{pod}: {} (sent {:?}, acked {:?}, snapshot {} of {})",
                    p.status, p.sent, p.acked, p.snapshot, self.latest_snapshot
                ),
                None => format!("  {namespace}/{pod}: not connected to the controller"),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// One line of the controller's `/debug/status`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ResourceStatus {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub accepted: bool,
    pub reason: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYNCZ: &str = r#"{"latestSnapshot": 4, "proxies": [
        {"pod": "a", "namespace": "demo", "identity": "spiffe://x", "proxyVersion": "0.1.0",
         "sent": "4.abc", "acked": "4.abc", "nacked": null, "snapshot": 4, "connectedAt": 1,
         "services": 2, "status": "SYNCED"},
        {"pod": "b", "namespace": "demo", "sent": "3.x", "acked": "2.y", "snapshot": 3, "status": "STALE"},
        {"pod": "c", "namespace": "demo", "sent": "4.z", "acked": "3.x", "nacked": ["4.z", "services[0]: bad"],
         "snapshot": 4, "status": "NACKED"}
    ]}"#;

    #[test]
    fn reads_syncz() {
        let r: SyncReport = serde_json::from_str(SYNCZ).unwrap();
        assert_eq!(r.latest_snapshot, 4);
        assert!(r.all_synced("demo", &["a".into()], 4).unwrap());
        assert!(!r.all_synced("demo", &["a".into()], 5).unwrap());
        assert!(!r.all_synced("demo", &["a".into(), "b".into()], 0).unwrap());
        assert!(!r.all_synced("demo", &["missing".into()], 0).unwrap());
        let err = r.all_synced("demo", &["c".into()], 0).unwrap_err();
        assert!(err.to_string().contains("services[0]: bad"), "{err}");
        let d = r.describe("demo", &["b".into(), "missing".into()]);
        assert!(d.contains("demo/b: STALE"), "{d}");
        assert!(d.contains("demo/missing: not connected"), "{d}");
    }

    #[tokio::test]
    async fn get_names_the_address_it_could_not_reach() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let err = get(addr, "/ready").await.unwrap_err();
        assert!(format!("{err:#}").contains(&format!("http://{addr}/ready")));
        assert!(!ready(addr).await);
    }
}
