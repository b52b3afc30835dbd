//! Talking to the API server about rendered objects: server-side apply,
//! delete, existence, and the readiness waits, with a progress display.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::manifest::Manifest;
use super::options::{Component, NAMESPACE};
use super::render::{NAME_LABEL, PART_OF};

/// Field manager of everything `meshctl` applies.
pub const FIELD_MANAGER: &str = "meshctl";

/// How often readiness and deletion are polled.
const POLL: Duration = Duration::from_millis(500);
/// While waiting, a "still waiting" line this often per component.
const WAITING_NOTE_EVERY: Duration = Duration::from_secs(10);

/// What server-side apply did to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It did not exist.
    Created,
    /// It existed and changed.
    Configured,
    /// It existed and its resourceVersion did not move.
    Unchanged,
    /// Deleted.
    Deleted,
    /// Was not there to delete.
    Absent,
}

impl Outcome {
    /// The word shown in the progress display.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Configured => "configured",
            Self::Unchanged => "unchanged",
            Self::Deleted => "deleted",
            Self::Absent => "absent",
        }
    }
}

/// One object and what happened to it (the `-o json|yaml` report).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `Kind`.
    pub kind: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, for namespaced kinds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// What happened.
    pub outcome: Outcome,
}

impl Report {
    /// The report line of `m`.
    pub fn of(m: &Manifest, outcome: Outcome) -> Self {
        Self {
            kind: m.kind().to_string(),
            name: m.name().to_string(),
            namespace: m.namespace().map(str::to_string),
            outcome,
        }
    }
}

/// Runs `$body` with `$api` bound to an `Api` of the manifest's kind and
/// `$obj` to the typed object.
macro_rules! with_api {
    ($client:expr, $m:expr, |$api:ident, $obj:ident| $body:expr) => {{
        let client: Client = $client;
        match $m {
            Manifest::Namespace($obj) => {
                let $api: Api<Namespace> = Api::all(client);
                $body
            }
            Manifest::Crd($obj) => {
                let $api: Api<CustomResourceDefinition> = Api::all(client);
                $body
            }
            Manifest::ClusterRole($obj) => {
                let $api: Api<ClusterRole> = Api::all(client);
                $body
            }
            Manifest::ClusterRoleBinding($obj) => {
                let $api: Api<ClusterRoleBinding> = Api::all(client);
                $body
            }
            Manifest::Webhook($obj) => {
                let $api: Api<MutatingWebhookConfiguration> = Api::all(client);
                $body
            }
            Manifest::ServiceAccount($obj) => {
                let $api: Api<ServiceAccount> = Api::namespaced(client, NAMESPACE);
                $body
            }
            Manifest::Role($obj) => {
                let $api: Api<Role> = Api::namespaced(client, NAMESPACE);
                $body
            }
            Manifest::RoleBinding($obj) => {
                let $api: Api<RoleBinding> = Api::namespaced(client, NAMESPACE);
                $body
            }
            Manifest::ConfigMap($obj) => {
                let $api: Api<ConfigMap> = Api::namespaced(client, NAMESPACE);
                $body
            }
            Manifest::Secret($obj) => {
                let $api: Api<Secret> = Api::namespaced(client, NAMESPACE);
                $body
            }
            Manifest::Service($obj) => {
                let $api: Api<Service> = Api::namespaced(client, NAMESPACE);
                $body
            }
            Manifest::Deployment($obj) => {
                let $api: Api<Deployment> = Api::namespaced(client, NAMESPACE);
                $body
            }
        }
    }};
}

/// A failed API call, naming the object.
#[derive(Debug, thiserror::Error)]
#[error("{action} {reference}: {source}")]
pub struct ApiError {
    /// "applying", "deleting", "reading".
    pub action: &'static str,
    /// `Kind/namespace/name`.
    pub reference: String,
    /// The API error.
    #[source]
    pub source: kube::Error,
}

async fn ssa<K>(api: Api<K>, obj: &K, params: &PatchParams) -> Result<Outcome, kube::Error>
where
    K: kube::Resource + Clone + Debug + DeserializeOwned + Serialize,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let before = api
        .get_opt(&name)
        .await?
        .map(|o| o.meta().resource_version.clone());
    let after = api.patch(&name, params, &Patch::Apply(obj)).await?;
    Ok(match before {
        None => Outcome::Created,
        Some(rv) if rv == after.meta().resource_version => Outcome::Unchanged,
        Some(_) => Outcome::Configured,
    })
}

async fn delete<K>(api: Api<K>, name: &str, params: &DeleteParams) -> Result<Outcome, kube::Error>
where
    K: kube::Resource + Clone + Debug + DeserializeOwned,
{
    match api.delete(name, params).await {
        Ok(_) => Ok(Outcome::Deleted),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Outcome::Absent),
        Err(e) => Err(e),
    }
}

async fn exists<K>(api: Api<K>, name: &str) -> Result<bool, kube::Error>
where
    K: kube::Resource + Clone + Debug + DeserializeOwned,
{
    Ok(api.get_opt(name).await?.is_some())
}

/// Server-side applies `m` (field manager `meshctl`, forced: this install
/// owns these fields); `dry_run` asks the API server to validate only.
pub async fn apply(client: &Client, m: &Manifest, dry_run: bool) -> Result<Outcome, ApiError> {
    let mut params = PatchParams::apply(FIELD_MANAGER).force();
    if dry_run {
        params = params.dry_run();
    }
    with_api!(client.clone(), m, |api, obj| ssa(api, obj, &params).await).map_err(|source| {
        ApiError {
            action: "applying",
            reference: m.reference(),
            source,
        }
    })
}

/// Deletes `m` (absent counts as done).
pub async fn remove(client: &Client, m: &Manifest) -> Result<Outcome, ApiError> {
    // Foreground for Deployments: one is gone only once its pods are.
    let params = match m {
        Manifest::Deployment(_) => DeleteParams::foreground(),
        _ => DeleteParams::default(),
    };
    with_api!(client.clone(), m, |api, obj| delete(
        api,
        obj.metadata.name.as_deref().unwrap_or_default(),
        &params
    )
    .await)
    .map_err(|source| ApiError {
        action: "deleting",
        reference: m.reference(),
        source,
    })
}

async fn version_of<K>(api: Api<K>, name: &str) -> Result<Option<String>, kube::Error>
where
    K: kube::Resource + Clone + Debug + DeserializeOwned,
{
    Ok(api
        .get_opt(name)
        .await?
        .and_then(|o| o.meta().resource_version.clone()))
}

/// The `resourceVersion` of `m` in the cluster; `None` when it is absent.
pub async fn resource_version(client: &Client, m: &Manifest) -> Result<Option<String>, ApiError> {
    with_api!(client.clone(), m, |api, obj| version_of(
        api,
        obj.metadata.name.as_deref().unwrap_or_default()
    )
    .await)
    .map_err(|source| ApiError {
        action: "reading",
        reference: m.reference(),
        source,
    })
}

/// Whether `m` still exists.
pub async fn present(client: &Client, m: &Manifest) -> Result<bool, ApiError> {
    with_api!(client.clone(), m, |api, obj| exists(
        api,
        obj.metadata.name.as_deref().unwrap_or_default()
    )
    .await)
    .map_err(|source| ApiError {
        action: "reading",
        reference: m.reference(),
        source,
    })
}

/// Where progress lines go: stdout for `-o table`, stderr when stdout
/// carries a JSON/YAML report. Colour only on a terminal.
pub struct Progress {
    start: Instant,
    to_stderr: bool,
    color: bool,
}

impl Progress {
    /// Starts the clock.
    pub fn new(to_stderr: bool) -> Self {
        let color = if to_stderr {
            std::io::stderr().is_terminal()
        } else {
            std::io::stdout().is_terminal()
        } && std::env::var_os("NO_COLOR").is_none();
        Self {
            start: Instant::now(),
            to_stderr,
            color,
        }
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// `  1.2s  created     Namespace/mesh-system`.
    pub fn line(&self, status: &str, what: &str) {
        let code = match status {
            "created" | "configured" | "ready" | "deleted" | "established" | "gone" => "32",
            "waiting" | "not ready" => "33",
            "failed" => "31",
            _ => "2",
        };
        let status = if self.color {
            format!("\x1b[{code}m{status:<11}\x1b[0m")
        } else {
            format!("{status:<11}")
        };
        let text = format!("{:>6.1}s  {status} {what}\n", self.elapsed().as_secs_f64());
        // A closed pipe must not turn into a panic; the work goes on.
        let _ = if self.to_stderr {
            std::io::stderr().write_all(text.as_bytes())
        } else {
            std::io::stdout().write_all(text.as_bytes())
        };
    }
}

/// Polls `check` until it says done, or fails after `timeout` with
/// `what` in the message.
async fn poll<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let end = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() >= end {
            return Err(match last_err {
                Some(e) => e.context(format!("timed out after {timeout:?} waiting for {what}")),
                None => anyhow::anyhow!("timed out after {timeout:?} waiting for {what}"),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until every CRD in `crds` has condition Established.
pub async fn wait_established(
    client: &Client,
    crds: &[&CustomResourceDefinition],
    timeout: Duration,
    progress: &Progress,
) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        poll(&format!("CRD {name} to be Established"), timeout, || {
            let api = api.clone();
            let name = name.clone();
            async move {
                let crd = api.get(&name).await?;
                Ok(crd.status.and_then(|s| s.conditions).is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                }))
            }
        })
        .await?;
    }
    progress.line("established", &format!("{} CRDs", crds.len()));
    Ok(())
}

/// How far a Deployment's rollout is.
struct Rollout {
    ready: i32,
    updated: i32,
    wanted: i32,
    done: bool,
}

/// Done when the current spec is rolled out completely: every replica
/// updated, ready and available, and no old pod left.
fn rollout(d: &Deployment) -> Rollout {
    let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(st) = d.status.as_ref() else {
        return Rollout {
            ready: 0,
            updated: 0,
            wanted,
            done: false,
        };
    };
    let ready = st.ready_replicas.unwrap_or(0);
    let updated = st.updated_replicas.unwrap_or(0);
    let done = st.observed_generation >= d.metadata.generation
        && updated == wanted
        && ready == wanted
        && st.available_replicas.unwrap_or(0) == wanted
        // Old pods still terminating count in `replicas`.
        && st.replicas.unwrap_or(0) == wanted;
    Rollout {
        ready,
        updated,
        wanted,
        done,
    }
}

/// Why a component's pods are not ready, from their status (image pull
/// errors, crash loops, exit codes), for the timeout message.
pub async fn why_not_ready(client: &Client, c: Component) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let selector = format!("{}={},{NAME_LABEL}={}", PART_OF.0, PART_OF.1, c.name());
    let Ok(list) = pods.list(&ListParams::default().labels(&selector)).await else {
        return String::new();
    };
    if list.items.is_empty() {
        return "no pods".to_string();
    }
    let mut reasons = BTreeSet::new();
    for p in list.items {
        let Some(st) = p.status else { continue };
        for cs in st.container_statuses.unwrap_or_default() {
            let state = cs.state.unwrap_or_default();
            if let Some(w) = state.waiting {
                let mut r = w.reason.unwrap_or_else(|| "waiting".into());
                if let Some(t) = cs.last_state.and_then(|l| l.terminated) {
                    r.push_str(&format!(" (last exit code {})", t.exit_code));
                }
                reasons.insert(r);
            } else if state.running.is_some() && !cs.ready {
                reasons.insert("running, readiness probe failing".to_string());
            }
        }
        if reasons.is_empty() {
            for cond in st.conditions.unwrap_or_default() {
                if cond.status != "True" {
                    if let Some(m) = cond.message {
                        reasons.insert(m);
                    }
                }
            }
        }
    }
    reasons.into_iter().collect::<Vec<_>>().join("; ")
}

/// Waits until each component's Deployment has rolled out and all its
/// replicas are ready, one progress line per component when it is, and a
/// "waiting" line every few seconds while it is not.
pub async fn wait_ready(
    client: &Client,
    components: &[Component],
    timeout: Duration,
    progress: &Progress,
) -> anyhow::Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let begin = Instant::now();
    let end = begin + timeout;
    let mut pending: Vec<Component> = components.to_vec();
    let mut last_note = Instant::now();
    loop {
        let mut still = Vec::new();
        let mut states = Vec::new();
        for c in pending {
            let r = match api.get_opt(c.name()).await {
                Ok(Some(d)) => rollout(&d),
                Ok(None) => anyhow::bail!("Deployment {NAMESPACE}/{c} does not exist"),
                Err(e) => {
                    states.push(format!("{c} ({e})"));
                    still.push(c);
                    continue;
                }
            };
            if r.done {
                progress.line("ready", &format!("{c} ({}/{})", r.ready, r.wanted));
            } else {
                states.push(format!(
                    "{c} {}/{} ready, {}/{} updated",
                    r.ready, r.wanted, r.updated, r.wanted
                ));
                still.push(c);
            }
        }
        pending = still;
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() >= end {
            let mut msg = format!(
                "timed out after {}s waiting for the control plane to be ready:",
                timeout.as_secs()
            );
            for c in &pending {
                let why = why_not_ready(client, *c).await;
                msg.push_str(&format!(" {c} not ready ({why});"));
            }
            msg.pop();
            anyhow::bail!(
                "{msg}. See `kubectl -n {NAMESPACE} get pods` and `kubectl -n {NAMESPACE} logs deploy/<name>`"
            );
        }
        if last_note.elapsed() >= WAITING_NOTE_EVERY {
            progress.line("waiting", &states.join(", "));
            last_note = Instant::now();
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until none of `manifests` exists any more.
pub async fn wait_gone(
    client: &Client,
    manifests: &[&Manifest],
    timeout: Duration,
    progress: &Progress,
) -> anyhow::Result<()> {
    for m in manifests {
        poll(
            &format!("{} to be deleted", m.reference()),
            timeout,
            || async { Ok(!present(client, m).await?) },
        )
        .await?;
    }
    match manifests {
        [] => {}
        [one] => progress.line("gone", &one.reference()),
        many => progress.line("gone", &format!("{} objects", many.len())),
    }
    Ok(())
}
