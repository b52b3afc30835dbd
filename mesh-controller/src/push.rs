//! The push pipeline: changes → debounce → one snapshot → published to
//! every stream.
//!
//! Changes arrive one by one from the source; the pipeline applies them to
//! the [`World`] and waits for a quiet period (or at most a maximum wait
//! from the first change) so that a burst (a rollout, a relist) becomes one
//! build. Each build publishes an immutable [`Snapshot`] on a `watch`
//! channel; a stream that is busy simply sees the newest one when it is
//! ready, which coalesces pushes per connection.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::source::Source;
use crate::translate::{Snapshot, Translator};
use crate::world::{Change, Kind, Touched, World};

/// How long to wait for more changes before building.
#[derive(Clone, Copy, Debug)]
pub struct Debounce {
    /// Build once no change arrived for this long.
    pub quiet: Duration,
    /// Build at the latest this long after the first change of a burst.
    pub max_wait: Duration,
}

impl Default for Debounce {
    fn default() -> Self {
        Self {
            quiet: Duration::from_millis(50),
            max_wait: Duration::from_millis(500),
        }
    }
}

/// Kinds every source must have listed before the first snapshot (a
/// snapshot built earlier would tell proxies that services have no
/// endpoints).
const CORE_KINDS: [Kind; 4] = [
    Kind::Service,
    Kind::EndpointSlice,
    Kind::Pod,
    Kind::Namespace,
];

/// How long the first build waits for the mesh resource kinds after the
/// core kinds are listed (a CRD that is not installed never lists).
const MESH_KINDS_GRACE: Duration = Duration::from_secs(5);

const MESH_KINDS: usize = 6;

/// Runs the pipeline until `stop` or until the source's channel closes.
/// Publishes snapshots on `out` (which starts as `None`: not synced yet).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    mut changes: mpsc::Receiver<Change>,
    mut translator: Translator,
    debounce: Debounce,
    mut trust_bundle: watch::Receiver<Arc<Vec<String>>>,
    out: watch::Sender<Option<Arc<Snapshot>>>,
    source: Arc<dyn Source>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut world = World::default();
    let mut listed: BTreeSet<Kind> = BTreeSet::new();
    let mut core_listed_at: Option<Instant> = None;
    let mut pending = Touched::default();
    let mut first_change: Option<Instant> = None;
    let mut last_change = Instant::now();
    let mut synced = false;
    // Status writes run one at a time, newest list first-come.
    let (status_tx, mut status_rx) = watch::channel(Vec::new());
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = status_rx.changed() => if r.is_err() { return },
                }
                let statuses = status_rx.borrow_and_update().clone();
                source.publish_status(statuses).await;
            }
        });
    }
    loop {
        let deadline = match first_change {
            Some(first) => Some((last_change + debounce.quiet).min(first + debounce.max_wait)),
            None if !synced => core_listed_at.map(|t| t + MESH_KINDS_GRACE),
            None => None,
        };
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            change = changes.recv() => {
                let Some(change) = change else { return };
                if let Change::Replace(kind, _) = &change {
                    listed.insert(*kind);
                }
                let touched = world.apply(change);
                if core_listed_at.is_none() && CORE_KINDS.iter().all(|k| listed.contains(k)) {
                    core_listed_at = Some(Instant::now());
                }
                if !touched.is_empty() {
                    pending.merge(touched);
                    last_change = Instant::now();
                    first_change.get_or_insert(last_change);
                }
            }
            r = trust_bundle.changed() => {
                if r.is_err() {
                    // The identity task is gone; keep the last bundle.
                    std::future::pending::<()>().await;
                }
                pending.full = true;
                last_change = Instant::now();
                first_change.get_or_insert(last_change);
            }
            _ = sleep => {
                let mesh_listed = listed.iter().filter(|k| matches!(k, Kind::Mesh(_))).count();
                let ready = core_listed_at.is_some_and(|t| {
                    mesh_listed >= MESH_KINDS || t.elapsed() >= MESH_KINDS_GRACE
                });
                if !ready {
                    // Keep collecting; the first build needs the lists.
                    first_change = None;
                    continue;
                }
                if !synced && mesh_listed < MESH_KINDS {
                    tracing::warn!(listed = mesh_listed, "building without every mesh resource kind listed (are the CRDs installed?)");
                }
                let full = !synced || pending.full;
                let started = Instant::now();
                let bundle = trust_bundle.borrow().clone();
                let snapshot = translator.build(
                    &world,
                    (!full).then_some(&pending.services),
                    bundle,
                );
                let took = started.elapsed();
                metrics.snapshot_build.observe(took.as_secs_f64());
                metrics.services.set(snapshot.services.len() as i64);
                tracing::debug!(
                    version = snapshot.version,
                    full,
                    services = snapshot.services.len(),
                    touched = pending.services.len(),
                    took_ms = took.as_millis() as u64,
                    "built snapshot"
                );
                let statuses = snapshot.statuses.clone();
                out.send_replace(Some(snapshot));
                synced = true;
                pending = Touched::default();
                first_change = None;
                status_tx.send_replace(statuses);
            }
        }
    }
}
