//! The Kubernetes API as the source of truth.
//!
//! [`KubeSource::run`] watches, cluster-wide, Services, EndpointSlices
//! (`discovery.k8s.io/v1`), Pods (kept as [`PodInfo`](crate::world::PodInfo)),
//! Namespaces and the six mesh CRDs, one watch loop each (see `watch`):
//! every (re)list is one [`Change::Replace`], then `Upsert`/`Delete` per
//! event. The mesh CRDs are watched untyped and decoded per object (see
//! `mesh`), so a malformed instance is logged with its name, reported as
//! `Accepted=False` (reason `Invalid`, the offending field in the message)
//! and treated as absent, while the rest of its kind keeps flowing. A CRD
//! that is not installed is retried with backoff (and warned about) without
//! holding up the rest.
//!
//! Nothing is reported until every kind has completed its first list (or
//! its CRD is known to be missing, or [`INITIAL_SYNC_TIMEOUT`] passed), so
//! that the first model is built from a complete picture rather than, say,
//! Services without their endpoints.
//!
//! [`KubeSource::publish_status`] writes `Accepted` conditions (see
//! `status`), only on the replica that holds the leader Lease when a
//! [`LeaderHandle`] is given.
//!
//! The controller's RBAC must allow: `list`/`watch` of services, pods,
//! namespaces, `endpointslices.discovery.k8s.io` and the six mesh CRDs;
//! `patch` of their `status` subresources; with leader election, `get`,
//! `create` and `update` of `leases.coordination.k8s.io` in its namespace.

mod mesh;
mod status;
mod watch;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DynamicObject};
use kube::Client;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use self::mesh::MeshHandler;
use self::status::StatusWriter;
use self::watch::{builtin, watch, Msg};
use super::{BoxFuture, ResourceStatus, Source};
use crate::leader::LeaderHandle;
use crate::world::{Change, Kind};

pub use self::status::{CONCURRENCY as STATUS_CONCURRENCY, FIELD_MANAGER};

/// How long changes are held back waiting for every kind's first list when
/// some kind keeps failing (other than a missing CRD).
pub const INITIAL_SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// Buffer between the watch loops and the forwarder.
const INTERNAL_CHANNEL: usize = 1024;

/// The Kubernetes source: watches the cluster, writes resource status.
pub struct KubeSource {
    client: Client,
    status: Arc<StatusWriter>,
}

impl KubeSource {
    /// A source on `client`. With `leader`, status is written only while
    /// this replica leads; without, always (a single replica). Writes that
    /// are not prompted by [`Source::publish_status`] (on becoming leader,
    /// for malformed resources, retries) happen while [`Source::run`] runs.
    pub fn new(client: Client, leader: Option<LeaderHandle>) -> Self {
        Self {
            status: Arc::new(StatusWriter::new(client.clone(), leader)),
            client,
        }
    }
}

impl Source for KubeSource {
    fn run(
        &self,
        tx: mpsc::Sender<Change>,
        stop: CancellationToken,
    ) -> BoxFuture<anyhow::Result<()>> {
        let client = self.client.clone();
        let status = self.status.clone();
        Box::pin(run(client, status, tx, stop))
    }

    fn publish_status(&self, statuses: Vec<ResourceStatus>) -> BoxFuture<()> {
        let status = self.status.clone();
        Box::pin(async move { status.publish(statuses).await })
    }
}

async fn run(
    client: Client,
    status: Arc<StatusWriter>,
    tx: mpsc::Sender<Change>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    // Also cancelled when `tx` closes, to end every task.
    let stop = stop.child_token();
    let (itx, irx) = mpsc::channel(INTERNAL_CHANNEL);
    let mut tasks = JoinSet::new();
    let mut names = BTreeMap::new();
    let mut kinds: BTreeMap<Kind, String> = BTreeMap::new();

    macro_rules! spawn_watch {
        ($api:expr, $handler:expr) => {{
            let handler = $handler;
            let what = watch::Handler::what(&handler).to_string();
            kinds.insert(watch::Handler::kind(&handler), what.clone());
            let task = tasks.spawn(watch($api, handler, itx.clone(), stop.clone()));
            names.insert(task.id(), what);
        }};
    }
    spawn_watch!(Api::<Service>::all(client.clone()), builtin::services());
    spawn_watch!(
        Api::<EndpointSlice>::all(client.clone()),
        builtin::endpoint_slices()
    );
    spawn_watch!(Api::<Pod>::all(client.clone()), builtin::pods());
    spawn_watch!(Api::<Namespace>::all(client.clone()), builtin::namespaces());
    for kind in mesh::all() {
        let api = Api::<DynamicObject>::all_with(client.clone(), &kind.api);
        spawn_watch!(api, MeshHandler::new(kind, status.clone()));
    }
    drop(itx);
    {
        let status = status.clone();
        let stop = stop.clone();
        let task = tasks.spawn(async move { status.run(stop).await });
        names.insert(task.id(), "status writer".to_string());
    }

    let result = tokio::select! {
        _ = forward(irx, tx, kinds, INITIAL_SYNC_TIMEOUT, stop.clone()) => Ok(()),
        Some(ended) = tasks.join_next_with_id() => {
            if stop.is_cancelled() {
                Ok(())
            } else {
                let (id, why) = match ended {
                    Ok((id, ())) => (id, "ended".to_string()),
                    Err(e) => (e.id(), format!("failed: {e}")),
                };
                let name = names.get(&id).map_or("a task", String::as_str);
                error!("Kubernetes source: {name} {why}");
                Err(anyhow!("Kubernetes source: {name} {why}"))
            }
        }
    };
    stop.cancel();
    while let Some(ended) = tasks.join_next_with_id().await {
        if let Err(e) = ended {
            let name = names.get(&e.id()).map_or("a task", String::as_str);
            error!("Kubernetes source: {name} failed: {e}");
        }
    }
    result
}

/// Passes changes on to `tx`, holding everything back until every kind in
/// `waiting` has completed its first list (see the module docs), or
/// `timeout` passed. Returns on `stop` or when either channel closes.
async fn forward(
    mut rx: mpsc::Receiver<Msg>,
    tx: mpsc::Sender<Change>,
    mut waiting: BTreeMap<Kind, String>,
    timeout: Duration,
    stop: CancellationToken,
) {
    let mut held = Vec::new();
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    while !waiting.is_empty() {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = &mut deadline => {
                let missing: Vec<&str> = waiting.values().map(String::as_str).collect();
                warn!(
                    "starting without a complete first list of {} after {timeout:?}",
                    missing.join(", ")
                );
                break;
            }
            msg = rx.recv() => match msg {
                None => return,
                Some(Msg::Change(change)) => {
                    if let Change::Replace(kind, _) = &change {
                        waiting.remove(kind);
                    }
                    held.push(change);
                }
                // A CRD that is not installed will not be listed soon.
                Some(Msg::Unavailable { kind: kind @ Kind::Mesh(_), not_found: true }) => {
                    waiting.remove(&kind);
                }
                Some(Msg::Unavailable { .. }) => {}
            },
        }
    }
    if waiting.is_empty() {
        info!(
            changes = held.len(),
            "Kubernetes source: first lists complete"
        );
    }
    for change in held {
        tokio::select! {
            _ = stop.cancelled() => return,
            sent = tx.send(change) => if sent.is_err() { return },
        }
    }
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return,
            msg = rx.recv() => msg,
        };
        match msg {
            None => return,
            Some(Msg::Change(change)) => {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    sent = tx.send(change) => if sent.is_err() { return },
                }
            }
            Some(Msg::Unavailable { .. }) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::{NamespaceInfo, Object};

    fn replace(kind: Kind) -> Msg {
        Msg::Change(Change::Replace(kind, Vec::new()))
    }

    fn upsert_ns(name: &str) -> Msg {
        Msg::Change(Change::Upsert(Object::Namespace(Arc::new(NamespaceInfo {
            name: name.into(),
            ..Default::default()
        }))))
    }

    #[tokio::test]
    async fn holds_changes_until_every_kind_is_listed() {
        let (itx, irx) = mpsc::channel(16);
        let (tx, mut rx) = mpsc::channel(16);
        let waiting: BTreeMap<Kind, String> = [
            (Kind::Service, "Services".to_string()),
            (Kind::Namespace, "Namespaces".to_string()),
            (Kind::Mesh("Gateway"), "Gateways".to_string()),
        ]
        .into_iter()
        .collect();
        let stop = CancellationToken::new();
        let fwd = tokio::spawn(forward(
            irx,
            tx,
            waiting,
            INITIAL_SYNC_TIMEOUT,
            stop.clone(),
        ));

        itx.send(replace(Kind::Namespace)).await.expect("send");
        itx.send(upsert_ns("a")).await.expect("send");
        // Transient failures of a built-in kind keep it waited for.
        itx.send(Msg::Unavailable {
            kind: Kind::Service,
            not_found: false,
        })
        .await
        .expect("send");
        // A missing CRD does not hold anything up.
        itx.send(Msg::Unavailable {
            kind: Kind::Mesh("Gateway"),
            not_found: true,
        })
        .await
        .expect("send");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            rx.try_recv().is_err(),
            "nothing passes before Services are listed"
        );

        itx.send(replace(Kind::Service)).await.expect("send");
        let first = rx.recv().await.expect("held changes");
        assert!(matches!(first, Change::Replace(Kind::Namespace, _)));
        assert!(matches!(rx.recv().await, Some(Change::Upsert(_))));
        assert!(matches!(
            rx.recv().await,
            Some(Change::Replace(Kind::Service, _))
        ));

        // Afterwards everything passes at once.
        itx.send(upsert_ns("b")).await.expect("send");
        assert!(matches!(rx.recv().await, Some(Change::Upsert(_))));
        stop.cancel();
        fwd.await.expect("forwarder ends");
    }

    #[tokio::test]
    async fn gives_up_waiting_after_the_timeout() {
        let (itx, irx) = mpsc::channel(16);
        let (tx, mut rx) = mpsc::channel(16);
        let waiting: BTreeMap<Kind, String> =
            [(Kind::Pod, "Pods".to_string())].into_iter().collect();
        let stop = CancellationToken::new();
        tokio::spawn(forward(
            irx,
            tx,
            waiting,
            Duration::from_millis(100),
            stop.clone(),
        ));
        itx.send(upsert_ns("a")).await.expect("send");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(rx.try_recv().is_err(), "held while Pods are not listed");
        let passed = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert!(matches!(passed, Ok(Some(Change::Upsert(_)))));
        stop.cancel();
    }
}
