//! Publishing the trust bundle: a ConfigMap `mesh-root-ca` (key
//! `root-cert.pem`) in every namespace but the cluster's own (`kube-system`,
//! `kube-public`, `kube-node-lease`), since a pod may opt in to the mesh in
//! any namespace (kube mode); or a file (local mode). The certificate is
//! public; publishing it everywhere is what Istio does too.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{ListParams, Patch, PatchParams};
use kube::Api;
use tokio::task::JoinHandle;

use crate::authority::Authority;
use crate::store::FIELD_MANAGER;

/// Namespaces that never run meshed pods.
const SKIPPED: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// Where the trust bundle goes.
#[derive(Clone)]
pub enum BundlePublisher {
    /// A file, rewritten when the bundle changes.
    File(PathBuf),
    /// ConfigMaps in every namespace but the cluster's own.
    Kube(kube::Client),
}

impl BundlePublisher {
    /// Publishes `bundle` once; returns how many places were written.
    pub async fn publish(&self, bundle: &[String]) -> anyhow::Result<usize> {
        let text = bundle.concat();
        match self {
            Self::File(path) => {
                if std::fs::read_to_string(path).ok().as_deref() == Some(text.as_str()) {
                    return Ok(0);
                }
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, &text)?;
                std::fs::rename(&tmp, path)?;
                Ok(1)
            }
            Self::Kube(client) => {
                let namespaces = Api::<Namespace>::all(client.clone())
                    .list(&ListParams::default())
                    .await?;
                let mut n = 0;
                for ns in namespaces.items {
                    let Some(name) = ns.metadata.name else {
                        continue;
                    };
                    if ns.metadata.deletion_timestamp.is_some() || SKIPPED.contains(&name.as_str())
                    {
                        continue;
                    }
                    let cm = ConfigMap {
                        metadata: kube::api::ObjectMeta {
                            name: Some(mesh_api::svid::TRUST_BUNDLE_CONFIGMAP.to_string()),
                            labels: Some(BTreeMap::from([(
                                "app.kubernetes.io/part-of".to_string(),
                                "mesh".to_string(),
                            )])),
                            ..Default::default()
                        },
                        data: Some(BTreeMap::from([(
                            mesh_api::svid::TRUST_BUNDLE_KEY.to_string(),
                            text.clone(),
                        )])),
                        ..Default::default()
                    };
                    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &name);
                    match api
                        .patch(
                            mesh_api::svid::TRUST_BUNDLE_CONFIGMAP,
                            &PatchParams::apply(FIELD_MANAGER).force(),
                            &Patch::Apply(&cm),
                        )
                        .await
                    {
                        Ok(_) => n += 1,
                        Err(e) => {
                            tracing::warn!(namespace = %name, error = %e, "publishing trust bundle failed")
                        }
                    }
                }
                Ok(n)
            }
        }
    }

    /// Publishes the authority's bundle now, every `every` (bundle changes)
    /// and, in kube mode, as soon as a new namespace appears (its pods need
    /// the bundle to start).
    pub fn spawn(self, authority: Arc<Authority>, every: Duration) -> JoinHandle<()> {
        let wake = Arc::new(tokio::sync::Notify::new());
        if let Self::Kube(client) = &self {
            tokio::spawn(watch_namespaces(client.clone(), wake.clone()));
        }
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = wake.notified() => {}
                }
                match self.publish(&authority.trust_bundle_pem()).await {
                    Ok(n) if n > 0 => tracing::info!(written = n, "published trust bundle"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "publishing trust bundle failed"),
                }
            }
        })
    }
}

/// Wakes the publisher when a namespace it has not seen appears.
async fn watch_namespaces(client: kube::Client, wake: Arc<tokio::sync::Notify>) {
    use futures::StreamExt;
    use kube::runtime::{watcher, WatchStreamExt};
    let mut known = std::collections::HashSet::new();
    let stream = watcher(Api::<Namespace>::all(client), watcher::Config::default())
        .default_backoff()
        .applied_objects();
    futures::pin_mut!(stream);
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(ns) => {
                if let Some(name) = ns.metadata.name {
                    if known.insert(name) {
                        wake.notify_one();
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "namespace watch"),
        }
    }
}
