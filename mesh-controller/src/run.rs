//! Wires a source, the pipeline, the stream server and the admin port
//! together: what `mesh-controller` runs, and what tests and benchmarks
//! start in-process.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::identity::ServerTls;
use crate::limits::StreamLimits;
use crate::metrics::Metrics;
use crate::push::{self, Debounce};
use crate::server::{self, Discovery, StreamConfig};
use crate::source::Source;
use crate::sync::SyncRegistry;
use crate::translate::{Snapshot, TranslateConfig, Translator};

/// Everything the controller is configured with.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    pub translate: TranslateConfig,
    pub debounce: Debounce,
    pub stream: StreamConfig,
}

/// A running controller.
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    pub sync: Arc<SyncRegistry>,
    pub metrics: Arc<Metrics>,
    pub stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Waits for the first snapshot.
    pub async fn synced(&self) -> Arc<Snapshot> {
        let mut rx = self.snapshots.clone();
        loop {
            if let Some(s) = rx.borrow_and_update().clone() {
                return s;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Stops every task and waits for them (at most 5 s, then aborts).
    pub async fn shutdown(self) {
        self.stop.cancel();
        for mut t in self.tasks {
            if tokio::time::timeout(std::time::Duration::from_secs(5), &mut t)
                .await
                .is_err()
            {
                t.abort();
            }
        }
    }

    /// Waits until a task ends (which means something failed or `stop`).
    pub async fn wait(&mut self) {
        if self.tasks.is_empty() {
            return;
        }
        let (_, _, rest) = futures::future::select_all(std::mem::take(&mut self.tasks)).await;
        self.tasks = rest;
    }
}

/// Starts the controller on the given listeners, with the default stream
/// limits.
pub async fn start(
    source: Arc<dyn Source>,
    tls: Arc<ServerTls>,
    grpc: TcpListener,
    admin: Option<TcpListener>,
    config: ControllerConfig,
    stop: CancellationToken,
) -> anyhow::Result<Running> {
    start_with_limits(
        source,
        tls,
        grpc,
        admin,
        config,
        StreamLimits::default(),
        stop,
    )
    .await
}

/// [`start`] with `limits` on the open config streams per pod and identity.
pub async fn start_with_limits(
    source: Arc<dyn Source>,
    tls: Arc<ServerTls>,
    grpc: TcpListener,
    admin: Option<TcpListener>,
    config: ControllerConfig,
    limits: StreamLimits,
    stop: CancellationToken,
) -> anyhow::Result<Running> {
    let metrics = Arc::new(Metrics::new());
    let sync = Arc::new(SyncRegistry::default());
    let (snap_tx, snap_rx) = watch::channel(None);
    let (change_tx, change_rx) = mpsc::channel(1024);
    let mut tasks = Vec::new();

    {
        let source = source.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = source.run(change_tx, stop.clone()).await {
                tracing::error!(error = %e, "the source failed");
                stop.cancel();
            }
        }));
    }
    {
        let translator = Translator::new(config.translate.clone());
        let bundle = tls.trust_bundle();
        let metrics = metrics.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(push::run(
            change_rx,
            translator,
            config.debounce,
            bundle,
            snap_tx,
            source,
            metrics,
            stop,
        )));
    }
    let grpc_addr = grpc.local_addr()?;
    {
        let discovery = Discovery::new(
            snap_rx.clone(),
            sync.clone(),
            metrics.clone(),
            config.stream,
            stop.clone(),
        )
        .with_limits(limits);
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = server::serve(grpc, tls, discovery, stop.clone()).await {
                tracing::error!(error = %e, "the config stream server failed");
                stop.cancel();
            }
        }));
    }
    let admin_addr = match admin {
        Some(l) => {
            let addr = l.local_addr()?;
            let (snaps, sync, metrics, stop) =
                (snap_rx.clone(), sync.clone(), metrics.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = crate::admin::serve(l, snaps, sync, metrics, stop).await {
                    tracing::error!(error = %e, "the admin server failed");
                }
            }));
            Some(addr)
        }
        None => None,
    };
    tracing::info!(%grpc_addr, ?admin_addr, "mesh-controller started");
    Ok(Running {
        grpc_addr,
        admin_addr,
        snapshots: snap_rx,
        sync,
        metrics,
        stop,
        tasks,
    })
}
