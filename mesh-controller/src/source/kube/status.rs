//! Writing each mesh resource's `Accepted` condition to its `status`
//! subresource, by server-side apply as field manager
//! [`FIELD_MANAGER`].
//!
//! - Only the leader writes (see [`crate::leader`]); every replica keeps the
//!   latest statuses so that a new leader writes them all at once.
//! - A status is written when it differs from what this process last wrote
//!   and from what the resource already carries (as last seen by the watch),
//!   so restarts and leader changes do not rewrite everything.
//! - At most [`CONCURRENCY`] writes are in flight. Failures are logged with
//!   the resource named and retried with backoff; a resource deleted
//!   meanwhile (404) is skipped.
//! - `lastTransitionTime` changes only when the condition's status flips.
//! - The conditions list is atomic in the CRD schema: the apply owns the
//!   whole list, which holds only `Accepted`.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::Client;
use mesh_api::status::CONDITION_ACCEPTED;
use mesh_api::{Condition, ConditionStatus, ResourceRef};
use serde_json::json;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

use super::mesh;
use crate::leader::LeaderHandle;
use crate::source::ResourceStatus;

/// Field manager of the status writes.
pub const FIELD_MANAGER: &str = "mesh-controller";

/// Status writes in flight at once.
pub const CONCURRENCY: usize = 8;

/// Longest wait before retrying failed writes.
const MAX_RETRY: Duration = Duration::from_secs(60);

/// Writes resource status (see the module docs).
pub(crate) struct StatusWriter {
    client: Client,
    /// `None`: this replica always writes.
    leader: Option<LeaderHandle>,
    state: Mutex<State>,
    /// One flush at a time.
    flushing: tokio::sync::Mutex<()>,
    /// Asks the background loop to flush.
    wake: Notify,
}

#[derive(Default)]
struct State {
    /// The latest complete list from the model, by resource.
    desired: HashMap<ResourceRef, ResourceStatus>,
    /// Resources the watch could not decode, with the status that says why
    /// (they never reach the model, so it cannot judge them).
    malformed: HashMap<ResourceRef, ResourceStatus>,
    /// What this process wrote (or found already in place) while leading.
    written: HashMap<ResourceRef, Written>,
    /// What each resource carries, as last seen by the watch.
    observed: HashMap<ResourceRef, Observed>,
}

#[derive(Clone, Debug)]
struct Written {
    status: ResourceStatus,
    transition: String,
}

#[derive(Clone, Debug)]
struct Observed {
    uid: Option<String>,
    accepted: Option<Condition>,
}

/// One status write.
#[derive(Clone, Debug)]
struct Job {
    status: ResourceStatus,
    condition: Condition,
}

enum WriteError {
    /// The resource is gone.
    NotFound,
    /// Leadership was lost before the write.
    NotLeader,
    /// Anything else: retried.
    Failed(String),
}

fn condition_status(accepted: bool) -> ConditionStatus {
    if accepted {
        ConditionStatus::True
    } else {
        ConditionStatus::False
    }
}

/// Whether `c` already says what `s` says.
fn condition_matches(c: &Condition, s: &ResourceStatus) -> bool {
    c.type_ == CONDITION_ACCEPTED
        && c.status == condition_status(s.accepted)
        && c.reason == s.reason
        && c.message == s.message
        && c.observed_generation == s.generation
}

/// Now, RFC 3339 to the second (as `metav1.Time`).
fn now_rfc3339() -> String {
    Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl State {
    /// The writes needed now; statuses already in place are recorded as
    /// written on the way.
    fn pending(&mut self, now: &str) -> Vec<Job> {
        let mut targets = self.desired.clone();
        targets.extend(self.malformed.iter().map(|(r, s)| (r.clone(), s.clone())));
        self.written.retain(|r, _| targets.contains_key(r));
        let mut jobs = Vec::new();
        for (rref, status) in targets {
            let written = self.written.get(&rref);
            if written.is_some_and(|w| w.status == status) {
                continue;
            }
            let observed = self.observed.get(&rref).and_then(|o| o.accepted.as_ref());
            if let Some(c) = observed.filter(|c| condition_matches(c, &status)) {
                let transition = c
                    .last_transition_time
                    .clone()
                    .unwrap_or_else(|| now.to_string());
                self.written.insert(rref, Written { status, transition });
                continue;
            }
            let cstatus = condition_status(status.accepted);
            let transition = observed
                .filter(|c| c.status == cstatus)
                .and_then(|c| c.last_transition_time.clone())
                .or_else(|| {
                    written
                        .filter(|w| w.status.accepted == status.accepted)
                        .map(|w| w.transition.clone())
                })
                .unwrap_or_else(|| now.to_string());
            jobs.push(Job {
                condition: Condition {
                    type_: CONDITION_ACCEPTED.to_string(),
                    status: cstatus,
                    reason: status.reason.clone(),
                    message: status.message.clone(),
                    last_transition_time: Some(transition),
                    observed_generation: status.generation,
                },
                status,
            });
        }
        jobs.sort_by(|a, b| a.status.resource.cmp(&b.status.resource));
        jobs
    }
}

impl StatusWriter {
    pub fn new(client: Client, leader: Option<LeaderHandle>) -> Self {
        Self {
            client,
            leader,
            state: Mutex::default(),
            flushing: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every
        // update is a single map operation.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_leader(&self) -> bool {
        self.leader.as_ref().is_none_or(LeaderHandle::is_leader)
    }

    /// The watch saw `rref` (object `uid`) carrying `accepted`; `malformed`
    /// is the status to write when the object could not be decoded. Returns
    /// whether the resource's malformed status changed (to log it once).
    pub fn observe(
        &self,
        rref: ResourceRef,
        uid: Option<String>,
        accepted: Option<Condition>,
        malformed: Option<ResourceStatus>,
    ) -> bool {
        let mut st = self.state();
        let same_object = st.observed.get(&rref).is_some_and(|o| o.uid == uid);
        if !same_object {
            // First sighting, or deleted and created again: whatever we
            // wrote is not on this object.
            st.written.remove(&rref);
        }
        st.observed.insert(rref.clone(), Observed { uid, accepted });
        let changed = match malformed {
            Some(s) => st.malformed.insert(rref, s.clone()) != Some(s),
            None => st.malformed.remove(&rref).is_some(),
        };
        drop(st);
        if changed {
            self.wake.notify_one();
        }
        changed
    }

    /// `rref` was deleted.
    pub fn forget(&self, rref: &ResourceRef) {
        let mut st = self.state();
        st.observed.remove(rref);
        st.malformed.remove(rref);
        st.written.remove(rref);
    }

    /// A relist of `kind` found exactly `keep`: forget the others.
    pub fn retain_kind(&self, kind: &str, keep: &HashSet<ResourceRef>) {
        let mut st = self.state();
        let stays = |r: &ResourceRef| r.kind != kind || keep.contains(r);
        st.observed.retain(|r, _| stays(r));
        st.malformed.retain(|r, _| stays(r));
        st.written.retain(|r, _| stays(r));
    }

    /// Records the model's complete list and writes what changed (when
    /// leading).
    pub async fn publish(&self, statuses: Vec<ResourceStatus>) {
        self.state().desired = statuses
            .into_iter()
            .map(|s| (s.resource.clone(), s))
            .collect();
        self.flush().await;
    }

    /// Writes what is pending, if leading. Returns false when some writes
    /// failed and should be retried.
    async fn flush(&self) -> bool {
        let _one = self.flushing.lock().await;
        if !self.is_leader() {
            return true;
        }
        let jobs = self.state().pending(&now_rfc3339());
        if jobs.is_empty() {
            return true;
        }
        debug!(count = jobs.len(), "writing resource status");
        let results: Vec<(Job, Result<(), WriteError>)> = futures::stream::iter(jobs)
            .map(|job| async move {
                let result = self.write(&job).await;
                (job, result)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut all_done = true;
        let mut st = self.state();
        for (job, result) in results {
            let rref = job.status.resource.clone();
            let written = Written {
                status: job.status,
                transition: job.condition.last_transition_time.unwrap_or_default(),
            };
            match result {
                Ok(()) => {
                    st.written.insert(rref, written);
                }
                Err(WriteError::NotFound) => {
                    // Deleted meanwhile; written again if it is seen again
                    // (observe() forgets this for a new object).
                    debug!(resource = %rref, "not writing status: the resource is gone");
                    st.written.insert(rref, written);
                }
                Err(WriteError::NotLeader) => {}
                Err(WriteError::Failed(e)) => {
                    error!(resource = %rref, "writing the status of {rref}: {e}");
                    all_done = false;
                }
            }
        }
        all_done
    }

    async fn write(&self, job: &Job) -> Result<(), WriteError> {
        if !self.is_leader() {
            return Err(WriteError::NotLeader);
        }
        let rref = &job.status.resource;
        let kind = mesh::by_kind(&rref.kind).ok_or_else(|| {
            WriteError::Failed(format!("{} is not a mesh resource kind", rref.kind))
        })?;
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &rref.namespace, &kind.api);
        let patch = json!({
            "apiVersion": kind.api.api_version,
            "kind": kind.api.kind,
            "metadata": {"name": rref.name, "namespace": rref.namespace},
            "status": {"conditions": [job.condition]},
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api
            .patch_status(&rref.name, &params, &Patch::Apply(&patch))
            .await
        {
            Ok(_) => {
                debug!(resource = %rref, accepted = job.status.accepted, "status written");
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Err(WriteError::NotFound),
            Err(e) => Err(WriteError::Failed(e.to_string())),
        }
    }

    /// Flushes whenever asked (malformed resources appear or go), when this
    /// replica becomes the leader (everything is written again where it
    /// differs), and to retry failed writes, until `stop`.
    pub async fn run(&self, stop: CancellationToken) {
        let mut leading = self.leader.as_ref().map(LeaderHandle::changed);
        let mut retry: Option<Instant> = None;
        let mut backoff = Duration::from_secs(1);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                change = leader_changed(&mut leading) => {
                    match change {
                        Some(now_leading) => {
                            // Another replica may have written meanwhile:
                            // trust only what the resources carry.
                            self.state().written.clear();
                            if now_leading {
                                info!("leading: writing the status of every mesh resource that needs it");
                            }
                        }
                        // The elector stopped: leadership stays as it last was.
                        None => leading = None,
                    }
                }
                _ = sleep_until(retry) => {}
            }
            if self.flush().await {
                retry = None;
                backoff = Duration::from_secs(1);
            } else {
                retry = Some(Instant::now() + backoff);
                backoff = (backoff * 2).min(MAX_RETRY);
            }
        }
    }
}

/// The next leadership value; `None` once the elector is gone; pending
/// forever without an elector.
async fn leader_changed(rx: &mut Option<watch::Receiver<bool>>) -> Option<bool> {
    match rx {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(*rx.borrow_and_update()),
            Err(_) => None,
        },
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rref(name: &str) -> ResourceRef {
        ResourceRef {
            kind: "VirtualService".into(),
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    fn status(name: &str, accepted: bool, message: &str, generation: i64) -> ResourceStatus {
        ResourceStatus {
            resource: rref(name),
            generation: Some(generation),
            accepted,
            reason: if accepted { "Accepted" } else { "Invalid" }.into(),
            message: message.into(),
        }
    }

    fn desire(st: &mut State, statuses: &[ResourceStatus]) {
        st.desired = statuses
            .iter()
            .map(|s| (s.resource.clone(), s.clone()))
            .collect();
    }

    /// Marks every pending job as written, as a successful flush does.
    fn written(st: &mut State, jobs: Vec<Job>) {
        for j in jobs {
            let transition = j.condition.last_transition_time.clone().unwrap_or_default();
            st.written.insert(
                j.status.resource.clone(),
                Written {
                    status: j.status,
                    transition,
                },
            );
        }
    }

    #[test]
    fn writes_only_what_changed() {
        let mut st = State::default();
        desire(
            &mut st,
            &[status("a", true, "", 1), status("b", false, "bad", 1)],
        );
        let jobs = st.pending("T1");
        assert_eq!(jobs.len(), 2);
        let a = &jobs[0].condition;
        assert_eq!(a.type_, "Accepted");
        assert_eq!(a.status, ConditionStatus::True);
        assert_eq!(a.observed_generation, Some(1));
        assert_eq!(a.last_transition_time.as_deref(), Some("T1"));
        assert_eq!(jobs[1].condition.message, "bad");
        written(&mut st, jobs);
        assert!(st.pending("T2").is_empty());

        // b's message changes but it stays rejected: transition time kept.
        desire(
            &mut st,
            &[status("a", true, "", 1), status("b", false, "worse", 2)],
        );
        let jobs = st.pending("T3");
        assert_eq!(jobs.len(), 1);
        assert_eq!(
            jobs[0].condition.last_transition_time.as_deref(),
            Some("T1")
        );
        written(&mut st, jobs);

        // b becomes accepted: new transition time.
        desire(
            &mut st,
            &[status("a", true, "", 1), status("b", true, "", 3)],
        );
        let jobs = st.pending("T4");
        assert_eq!(
            jobs[0].condition.last_transition_time.as_deref(),
            Some("T4")
        );
    }

    #[test]
    fn status_already_on_the_resource_is_not_rewritten() {
        let mut st = State::default();
        let on_object = Condition {
            type_: "Accepted".into(),
            status: ConditionStatus::True,
            reason: "Accepted".into(),
            message: String::new(),
            last_transition_time: Some("T0".into()),
            observed_generation: Some(1),
        };
        st.observed.insert(
            rref("a"),
            Observed {
                uid: Some("u".into()),
                accepted: Some(on_object),
            },
        );
        desire(&mut st, &[status("a", true, "", 1)]);
        assert!(st.pending("T1").is_empty());
        assert_eq!(st.written[&rref("a")].transition, "T0");

        // A new generation is written, keeping the object's transition time.
        desire(&mut st, &[status("a", true, "", 2)]);
        let jobs = st.pending("T2");
        assert_eq!(jobs.len(), 1);
        assert_eq!(
            jobs[0].condition.last_transition_time.as_deref(),
            Some("T0")
        );
    }

    #[test]
    fn malformed_resources_are_reported_and_win() {
        let mut st = State::default();
        desire(&mut st, &[status("a", true, "", 1)]);
        st.malformed
            .insert(rref("a"), status("a", false, "spec.x: bad", 2));
        let jobs = st.pending("T1");
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].condition.status, ConditionStatus::False);
        assert_eq!(jobs[0].condition.message, "spec.x: bad");
    }

    #[test]
    fn resources_no_longer_listed_are_forgotten() {
        let mut st = State::default();
        desire(&mut st, &[status("a", true, "", 1)]);
        let jobs = st.pending("T1");
        written(&mut st, jobs);
        desire(&mut st, &[]);
        assert!(st.pending("T2").is_empty());
        assert!(st.written.is_empty());
        // Back again (e.g. recreated): written again.
        desire(&mut st, &[status("a", true, "", 1)]);
        assert_eq!(st.pending("T3").len(), 1);
    }

    #[tokio::test]
    async fn recreated_object_is_written_again() {
        let client = {
            // A client that is never used (no flush happens here).
            let config = kube::Config::new("http://127.0.0.1:9".parse().expect("uri"));
            Client::try_from(config).expect("client")
        };
        let w = StatusWriter::new(client, Some(LeaderHandle::fixed(false)));
        w.observe(rref("a"), Some("u1".into()), None, None);
        {
            let mut st = w.state();
            desire(&mut st, &[status("a", true, "", 1)]);
            let jobs = st.pending("T1");
            written(&mut st, jobs);
        }
        // Our own write coming back on the same object: still written.
        w.observe(rref("a"), Some("u1".into()), None, None);
        assert!(w.state().pending("T2").is_empty());
        // Same name, new object.
        w.observe(rref("a"), Some("u2".into()), None, None);
        assert_eq!(w.state().pending("T3").len(), 1);
        // Not leading: flushing writes nothing and reports nothing to retry.
        assert!(w.flush().await);
    }
}
