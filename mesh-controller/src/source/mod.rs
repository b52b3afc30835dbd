//! Where the controller's truth comes from: the Kubernetes API, or a
//! directory of YAML in local mode. Both report [`Change`]s; both accept
//! the resources' status (`Accepted` conditions) back.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::world::Change;

pub mod dir;
pub mod kube;

/// A boxed future, for trait objects.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A source of truth.
pub trait Source: Send + Sync + 'static {
    /// Reports the current state and then every change on `tx` until `stop`
    /// (or until `tx` is closed). Transient failures (API server restarts,
    /// unreadable files) are logged and retried inside; an `Err` means the
    /// source cannot work at all.
    fn run(
        &self,
        tx: mpsc::Sender<Change>,
        stop: CancellationToken,
    ) -> BoxFuture<anyhow::Result<()>>;

    /// Records each resource's status (the `Accepted` condition). Called
    /// after every model build with the complete list; implementations
    /// write only what changed.
    fn publish_status(&self, statuses: Vec<ResourceStatus>) -> BoxFuture<()>;
}

/// Whether one mesh resource was accepted, and why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceStatus {
    pub resource: mesh_api::ResourceRef,
    /// `metadata.generation` of the version judged (for `observedGeneration`).
    pub generation: Option<i64>,
    pub accepted: bool,
    /// CamelCase reason: `Accepted`, `Invalid`, `Conflict`, ...
    pub reason: String,
    /// For people; names the offending field when there is one.
    pub message: String,
}
