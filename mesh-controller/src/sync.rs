//! Which proxies are connected and how far each is behind: the data behind
//! `meshctl proxy-status` (served as JSON on the admin port's `/debug/syncz`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

/// One connected proxy's sync state.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProxySync {
    pub pod: String,
    pub namespace: String,
    pub identity: String,
    pub proxy_version: String,
    /// Version of the last response sent.
    pub sent: String,
    /// Version the proxy last ACKed.
    pub acked: String,
    /// Last NACK: version and the proxy's reason.
    pub nacked: Option<(String, String)>,
    /// Snapshot the stream last cut a view from.
    pub snapshot: u64,
    /// Unix seconds of connection.
    pub connected_at: u64,
    /// Services in the proxy's view.
    pub services: usize,
}

impl ProxySync {
    /// In sync: the latest snapshot has been considered and what was sent
    /// is ACKed.
    pub fn synced(&self, latest: u64) -> bool {
        self.snapshot >= latest && self.sent == self.acked && !self.sent.is_empty()
    }
}

/// Every open stream, by connection id.
#[derive(Debug, Default)]
pub struct SyncRegistry {
    streams: Mutex<BTreeMap<u64, ProxySync>>,
}

/// The `/debug/syncz` document.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncReport {
    pub latest_snapshot: u64,
    pub proxies: Vec<ProxySyncReport>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxySyncReport {
    #[serde(flatten)]
    pub proxy: ProxySync,
    pub status: &'static str,
}

impl SyncRegistry {
    pub fn insert(&self, id: u64, sync: ProxySync) {
        if let Ok(mut s) = self.streams.lock() {
            s.insert(id, sync);
        }
    }

    pub fn update(&self, id: u64, f: impl FnOnce(&mut ProxySync)) {
        if let Ok(mut s) = self.streams.lock() {
            if let Some(p) = s.get_mut(&id) {
                f(p);
            }
        }
    }

    pub fn remove(&self, id: u64) {
        if let Ok(mut s) = self.streams.lock() {
            s.remove(&id);
        }
    }

    pub fn report(&self, latest: u64) -> SyncReport {
        let mut proxies: Vec<ProxySyncReport> = self
            .streams
            .lock()
            .map(|s| s.values().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .map(|p| ProxySyncReport {
                status: if p.nacked.as_ref().is_some_and(|(v, _)| *v == p.sent) {
                    "NACKED"
                } else if p.synced(latest) {
                    "SYNCED"
                } else {
                    "STALE"
                },
                proxy: p,
            })
            .collect();
        proxies.sort_by(|a, b| {
            (&a.proxy.namespace, &a.proxy.pod).cmp(&(&b.proxy.namespace, &b.proxy.pod))
        });
        SyncReport {
            latest_snapshot: latest,
            proxies,
        }
    }
}

/// Now, as Unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
