//! Bounds on what one client of the config stream can make the controller
//! hold: message size, streams per connection, streams per pod and per
//! identity. Each default is a named constant with the reason for its value.
//!
//! A proxy holds one config stream. Every stream costs the controller a task,
//! the last view it sent (up to ~150 KB for a large mesh) and a share of the
//! views computed at each snapshot, so a client that opens thousands of
//! streams would slow every other proxy's updates. Streams over a limit are
//! refused with `RESOURCE_EXHAUSTED` naming the limit; the proxy retries
//! with backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Largest request message (hello, ACK, NACK) accepted. A proxy's hello is
/// its pod, namespace, ServiceAccount, IPs and, in local mode, labels (a
/// few KB); an ACK is two short strings; a NACK one error message. 1 MiB
/// leaves room for any of them (Kubernetes caps an object's labels and
/// annotations at 256 KiB each) and bounds what one stream can make the
/// controller buffer: the decoder reserves the announced length before the
/// bytes arrive. A bigger message ends the stream with `RESOURCE_EXHAUSTED`.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// HTTP/2 streams one connection may have open at once, announced to the
/// client (SETTINGS_MAX_CONCURRENT_STREAMS); a client queues more on its
/// side, and the server refuses streams beyond it (`REFUSED_STREAM`).
/// A proxy opens one config stream per connection; 16 leaves room for
/// a reconnecting stream and for test clients, and caps the streams that
/// one connection can keep waiting for a hello (10 s each) at 16. Without
/// it tonic announces no limit.
pub const MAX_CONCURRENT_STREAMS_PER_CONNECTION: u32 = 16;

/// Config streams one pod (same identity, same pod name in the hello) may
/// have open. A proxy holds one; after a network failure its new stream can
/// overlap the old one until HTTP/2 keepalive ends it (up to 40 s), and a
/// proxy reconnecting with backoff (0.5 s, 1 s, 2 s…) opens a few in that
/// time. Hellos without a pod name are only counted per identity.
pub const DEFAULT_MAX_STREAMS_PER_POD: usize = 4;

/// Config streams one SPIFFE identity (ServiceAccount) may have open, all
/// its pods together. With Kubernetes as the source, a pod must exist and
/// run as the identity, so the per-pod limit already bounds an identity by
/// its pods; this is the bound in local mode, where pod names are not
/// checked, and a backstop. Above the replica count of any one Deployment
/// we expect (`--max-streams-per-identity` for a larger one).
pub const DEFAULT_MAX_STREAMS_PER_IDENTITY: usize = 5_000;

/// Limits on open config streams (0 = no limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamLimits {
    /// Per pod of an identity (pods named in the hello).
    pub per_pod: usize,
    /// Per SPIFFE identity.
    pub per_identity: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            per_pod: DEFAULT_MAX_STREAMS_PER_POD,
            per_identity: DEFAULT_MAX_STREAMS_PER_IDENTITY,
        }
    }
}

/// Why a stream was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TooManyStreams {
    #[error(
        "pod {pod} of {identity} already has {open} config streams open; the limit is \
         {limit} per pod (--max-streams-per-pod): retry once the old streams have ended"
    )]
    Pod {
        identity: String,
        pod: String,
        open: usize,
        limit: usize,
    },
    #[error(
        "{identity} already has {open} config streams open; the limit is {limit} per \
         identity (--max-streams-per-identity)"
    )]
    Identity {
        identity: String,
        open: usize,
        limit: usize,
    },
}

#[derive(Default)]
struct Open {
    total: usize,
    pods: HashMap<String, usize>,
}

/// Counts open streams per identity and pod.
#[derive(Default)]
pub struct StreamSlots {
    limits: StreamLimits,
    open: Mutex<HashMap<String, Open>>,
}

impl std::fmt::Debug for StreamSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSlots")
            .field("limits", &self.limits)
            .finish()
    }
}

/// One open stream; counted until dropped.
#[derive(Debug)]
pub struct StreamSlot {
    slots: Arc<StreamSlots>,
    identity: String,
    pod: String,
}

impl StreamSlots {
    pub fn new(limits: StreamLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            open: Mutex::default(),
        })
    }

    pub fn limits(&self) -> StreamLimits {
        self.limits
    }

    /// Counts a stream of `pod` (may be empty) as `identity`, or says which
    /// limit it is over.
    pub fn acquire(
        self: &Arc<Self>,
        identity: &str,
        pod: &str,
    ) -> Result<StreamSlot, TooManyStreams> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let entry = open.entry(identity.to_string()).or_default();
        let limit = self.limits.per_identity;
        if limit > 0 && entry.total >= limit {
            return Err(TooManyStreams::Identity {
                identity: identity.to_string(),
                open: entry.total,
                limit,
            });
        }
        if !pod.is_empty() {
            let n = entry.pods.get(pod).copied().unwrap_or(0);
            let limit = self.limits.per_pod;
            if limit > 0 && n >= limit {
                return Err(TooManyStreams::Pod {
                    identity: identity.to_string(),
                    pod: pod.to_string(),
                    open: n,
                    limit,
                });
            }
            *entry.pods.entry(pod.to_string()).or_default() += 1;
        }
        entry.total += 1;
        Ok(StreamSlot {
            slots: self.clone(),
            identity: identity.to_string(),
            pod: pod.to_string(),
        })
    }

    /// Open streams of `identity`.
    pub fn open(&self, identity: &str) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(identity).map(|o| o.total).unwrap_or(0)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = open.get_mut(&self.identity) else {
            return;
        };
        entry.total = entry.total.saturating_sub(1);
        if let Some(n) = entry.pods.get_mut(&self.pod) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                entry.pods.remove(&self.pod);
            }
        }
        if entry.total == 0 {
            open.remove(&self.identity);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_pod_and_per_identity_limits_and_release() {
        let slots = StreamSlots::new(StreamLimits {
            per_pod: 2,
            per_identity: 3,
        });
        let a1 = slots.acquire("id", "a").unwrap();
        let _a2 = slots.acquire("id", "a").unwrap();
        assert!(matches!(
            slots.acquire("id", "a"),
            Err(TooManyStreams::Pod {
                open: 2,
                limit: 2,
                ..
            })
        ));
        let _b = slots.acquire("id", "b").unwrap();
        let e = slots.acquire("id", "c").unwrap_err();
        assert!(matches!(
            e,
            TooManyStreams::Identity {
                open: 3,
                limit: 3,
                ..
            }
        ));
        assert!(e.to_string().contains("the limit is 3 per identity"), "{e}");
        // Another identity has its own count.
        let other = slots.acquire("other", "a").unwrap();
        drop(a1);
        assert_eq!(slots.open("id"), 2);
        let _a3 = slots.acquire("id", "a").unwrap();
        drop(other);
        assert_eq!(slots.open("other"), 0);
        assert!(
            slots.open.lock().unwrap().get("other").is_none(),
            "no leftovers"
        );
    }

    #[test]
    fn no_pod_name_counts_per_identity_only_and_zero_is_unlimited() {
        let slots = StreamSlots::new(StreamLimits {
            per_pod: 1,
            per_identity: 0,
        });
        let held: Vec<_> = (0..100).map(|_| slots.acquire("id", "").unwrap()).collect();
        assert_eq!(slots.open("id"), 100);
        drop(held);
        assert_eq!(slots.open("id"), 0);
    }
}
