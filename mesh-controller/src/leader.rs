//! Leader election over a `coordination.k8s.io/v1` Lease, so that of several
//! controller replicas exactly one writes resource status (every replica
//! serves configuration).
//!
//! The algorithm is the usual one (as client-go's `leaderelection`):
//!
//! - Every `renew_every`, read the Lease. Absent: create it naming us. Held
//!   by us: renew it (`renewTime = now`). Held by someone else whose
//!   `renewTime + leaseDurationSeconds` has passed, or by nobody: take it
//!   over. Otherwise wait.
//! - Renewals and takeovers are `replace`s that carry the Lease's
//!   `resourceVersion`, so when two replicas race exactly one succeeds; the
//!   other gets a 409 Conflict and stays a follower.
//! - A leader that has not renewed successfully for
//!   `lease_duration - renew_every` steps down on its own, before anyone
//!   else may consider the lease expired.
//! - On stop, a leader releases the Lease (empty holder) so that another
//!   replica takes over at once instead of after the lease expires.
//!
//! Expiry is judged from the `renewTime` written in the Lease, so the
//! replicas' clocks are assumed to agree to well within `renew_every`.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Name of the Lease the controller replicas elect their status writer with.
pub const DEFAULT_LEASE_NAME: &str = "mesh-controller-status";

/// Where the Lease is and how it is held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Namespace of the Lease (the controller's own namespace).
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity, written as `holderIdentity`; unique per
    /// process (see [`default_identity`]).
    pub identity: String,
    /// How long a lease is valid after its last renewal.
    pub lease_duration: Duration,
    /// How often the leader renews and followers retry. Must be well below
    /// `lease_duration` (a third of it is usual).
    pub renew_every: Duration,
}

impl LeaseConfig {
    /// [`DEFAULT_LEASE_NAME`] in `namespace`, 15 s leases renewed every 5 s.
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: DEFAULT_LEASE_NAME.to_string(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }

    /// The config with its durations made usable: a lease of at least 1 s,
    /// renewed at least twice per lease.
    fn sanitized(mut self) -> Self {
        if self.lease_duration < Duration::from_secs(1) {
            warn!(
                lease = %self.name,
                "lease duration {:?} is below 1 s; using 1 s", self.lease_duration
            );
            self.lease_duration = Duration::from_secs(1);
        }
        if self.renew_every.is_zero() || self.renew_every * 2 > self.lease_duration {
            let renew_every = self.lease_duration / 3;
            warn!(
                lease = %self.name,
                "renew interval {:?} is not below half the lease duration {:?}; renewing every {:?}",
                self.renew_every,
                self.lease_duration,
                renew_every
            );
            self.renew_every = renew_every;
        }
        self
    }

    /// How long a leader keeps leading without a successful renewal.
    fn renew_deadline(&self) -> Duration {
        self.lease_duration.saturating_sub(self.renew_every)
    }

    fn lease_seconds(&self) -> i32 {
        let secs =
            self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(secs).unwrap_or(i32::MAX)
    }
}

/// A process-unique holder identity: `$POD_NAME` (or the host name) plus a
/// random suffix, so that a restarted container never mistakes its
/// predecessor's lease for its own.
pub fn default_identity() -> String {
    let base = std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "mesh-controller".to_string());
    format!("{base}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// What a replica should do with the Lease as it finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it, or the holder let it expire: take it.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds it; it expires in this long.
    Wait(Duration),
}

/// Decides from the Lease's spec (`None` when the Lease or its spec is
/// absent), the current time and our identity. A Lease without
/// `leaseDurationSeconds` is judged with `default_duration`; one without
/// `renewTime` (nor `acquireTime`) counts as expired.
pub fn decide(
    spec: Option<&LeaseSpec>,
    now: Timestamp,
    me: &str,
    default_duration: Duration,
) -> Decision {
    let Some(spec) = spec else {
        return Decision::Acquire;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() {
        return Decision::Acquire;
    }
    if holder == me {
        return Decision::Renew;
    }
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return Decision::Acquire;
    };
    let duration = match spec.lease_duration_seconds {
        Some(s) => Duration::from_secs(u64::try_from(s).unwrap_or(0)),
        None => default_duration,
    };
    let Ok(expires) = renewed.0.checked_add(duration) else {
        // Out of jiff's range: a renewTime far in the future; never expires.
        return Decision::Wait(duration);
    };
    match Duration::try_from(expires.duration_since(now)) {
        Ok(left) if !left.is_zero() => Decision::Wait(left),
        // Expired (negative or zero time left).
        _ => Decision::Acquire,
    }
}

/// The Lease spec after we acquire or renew it at `now`.
fn updated_spec(
    old: Option<&LeaseSpec>,
    decision: Decision,
    now: Timestamp,
    cfg: &LeaseConfig,
) -> LeaseSpec {
    let mut spec = old.cloned().unwrap_or_default();
    let now = MicroTime(now);
    if decision == Decision::Acquire {
        let had_holder = spec
            .holder_identity
            .as_deref()
            .is_some_and(|h| !h.is_empty());
        if had_holder {
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        spec.holder_identity = Some(cfg.identity.clone());
        spec.acquire_time = Some(now.clone());
    }
    spec.lease_duration_seconds = Some(cfg.lease_seconds());
    spec.renew_time = Some(now);
    spec
}

/// This replica's view of the election.
#[derive(Clone, Debug)]
pub struct LeaderHandle {
    leading: watch::Receiver<bool>,
    done: CancellationToken,
    identity: Arc<str>,
}

impl LeaderHandle {
    /// Whether this replica holds the Lease right now.
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// A receiver that sees every change of leadership (`true` = leading).
    pub fn changed(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// The identity this replica holds the Lease under.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Completes once the elector has stopped (after `stop`), having
    /// released the Lease if it held it.
    pub async fn stopped(&self) {
        self.done.cancelled().await
    }

    /// A handle that always (or never) leads, for a single replica or tests.
    pub fn fixed(leading: bool) -> Self {
        let (tx, rx) = watch::channel(leading);
        // Keep the value: a receiver of a dropped sender still reads it.
        drop(tx);
        let done = CancellationToken::new();
        done.cancel();
        Self {
            leading: rx,
            done,
            identity: Arc::from("fixed"),
        }
    }
}

/// Starts electing in the background; the election runs until `stop`.
pub fn spawn(client: Client, config: LeaseConfig, stop: CancellationToken) -> LeaderHandle {
    let config = config.sanitized();
    let (tx, rx) = watch::channel(false);
    let done = CancellationToken::new();
    let handle = LeaderHandle {
        leading: rx,
        done: done.clone(),
        identity: Arc::from(config.identity.as_str()),
    };
    let elector = LeaderElector {
        api: Api::namespaced(client, &config.namespace),
        config,
    };
    tokio::spawn(async move {
        elector.run(tx, stop).await;
        done.cancel();
    });
    handle
}

/// Outcome of one look at the Lease.
#[derive(Debug)]
enum Attempt {
    /// We hold the Lease (acquired or renewed).
    Leading,
    /// Someone else does; look again in this long.
    Following { holder: String, retry_in: Duration },
}

/// Runs the election for one replica (see the module docs).
struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
}

impl LeaderElector {
    async fn run(self, leading_tx: watch::Sender<bool>, stop: CancellationToken) {
        let cfg = &self.config;
        let lease = format!("{}/{}", cfg.namespace, cfg.name);
        let mut leading = false;
        // While leading: when we must step down unless a renewal succeeds.
        let mut deadline: Option<Instant> = None;
        let mut wait = Duration::ZERO;
        let mut failures = 0u32;
        // Failures are warned about once per streak and then every minute.
        let mut last_warning: Option<Instant> = None;
        loop {
            let attempt = async {
                tokio::time::sleep(wait).await;
                let started = Instant::now();
                let result = tokio::time::timeout(cfg.lease_duration, self.try_once()).await;
                (started, result)
            };
            let step_down = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = step_down => {
                    warn!(%lease, identity = %cfg.identity,
                        "could not renew the lease for {:?}; stepping down", cfg.renew_deadline());
                    leading = false;
                    deadline = None;
                    set(&leading_tx, false);
                    wait = cfg.renew_every;
                }
                (started, result) = attempt => {
                    let result = result.unwrap_or_else(|_| Err(anyhow::anyhow!(
                        "no answer from the API server within {:?}", cfg.lease_duration)));
                    match result {
                        Ok(Attempt::Leading) => {
                            if !leading {
                                info!(%lease, identity = %cfg.identity, "acquired the lease: this replica leads");
                            } else {
                                debug!(%lease, "renewed the lease");
                            }
                            failures = 0;
                            last_warning = None;
                            leading = true;
                            deadline = Some(started + cfg.renew_deadline());
                            set(&leading_tx, true);
                            wait = cfg.renew_every;
                        }
                        Ok(Attempt::Following { holder, retry_in }) => {
                            if leading {
                                warn!(%lease, identity = %cfg.identity, %holder, "lost the lease");
                            } else {
                                debug!(%lease, %holder, "lease held by another replica");
                            }
                            failures = 0;
                            last_warning = None;
                            leading = false;
                            deadline = None;
                            set(&leading_tx, false);
                            wait = jitter(retry_in.min(cfg.renew_every));
                        }
                        Err(e) => {
                            failures += 1;
                            if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                                last_warning = Some(Instant::now());
                                warn!(%lease, identity = %cfg.identity, failures, "leader election: {e:#}");
                            } else {
                                debug!(%lease, failures, "leader election: {e:#}");
                            }
                            wait = cfg.renew_every;
                        }
                    }
                }
            }
        }
        set(&leading_tx, false);
        if leading {
            match tokio::time::timeout(cfg.renew_every, self.release()).await {
                Ok(Ok(())) => info!(%lease, identity = %cfg.identity, "released the lease"),
                Ok(Err(e)) => warn!(%lease, "could not release the lease: {e:#}"),
                Err(_) => {
                    warn!(%lease, "could not release the lease: no answer within {:?}", cfg.renew_every)
                }
            }
        }
    }

    /// Reads the Lease and acquires, renews or waits as [`decide`] says.
    async fn try_once(&self) -> anyhow::Result<Attempt> {
        let cfg = &self.config;
        let now = Timestamp::now();
        let current =
            self.api.get_opt(&cfg.name).await.map_err(|e| {
                anyhow::anyhow!("reading lease {}/{}: {e}", cfg.namespace, cfg.name)
            })?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(updated_spec(None, Decision::Acquire, now, cfg)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Leading),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Following {
                    holder: "(another replica that created it first)".into(),
                    retry_in: Duration::ZERO,
                }),
                Err(e) => Err(anyhow::anyhow!(
                    "creating lease {}/{}: {e}",
                    cfg.namespace,
                    cfg.name
                )),
            };
        };
        let decision = decide(lease.spec.as_ref(), now, &cfg.identity, cfg.lease_duration);
        let holder = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.clone())
            .unwrap_or_default();
        if let Decision::Wait(retry_in) = decision {
            return Ok(Attempt::Following { holder, retry_in });
        }
        // `lease` keeps its resourceVersion: the replace fails with 409 if
        // anyone changed the Lease since we read it.
        lease.spec = Some(updated_spec(lease.spec.as_ref(), decision, now, cfg));
        match self
            .api
            .replace(&cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Attempt::Leading),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Following {
                holder: "(another replica that updated it first)".into(),
                retry_in: Duration::ZERO,
            }),
            Err(e) => Err(anyhow::anyhow!(
                "{} lease {}/{}: {e}",
                if decision == Decision::Renew {
                    "renewing"
                } else {
                    "acquiring"
                },
                cfg.namespace,
                cfg.name
            )),
        }
    }

    /// Gives the Lease up (if still ours) so that a follower takes over now.
    async fn release(&self) -> anyhow::Result<()> {
        let cfg = &self.config;
        let Some(mut lease) = self.api.get_opt(&cfg.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api
            .replace(&cfg.name, &PostParams::default(), &lease)
            .await?;
        Ok(())
    }
}

/// Publishes `leading` only when it changes, so receivers wake on
/// transitions, not on every renewal.
fn set(tx: &watch::Sender<bool>, leading: bool) {
    tx.send_if_modified(|v| std::mem::replace(v, leading) != leading);
}

/// `d` plus up to 10 % random jitter, so followers do not poll in step.
fn jitter(d: Duration) -> Duration {
    let extra = d.as_millis() as u64 / 10;
    if extra == 0 {
        return d;
    }
    d + Duration::from_millis(rand::random::<u64>() % extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).expect("in range")
    }

    fn held(holder: &str, renewed: i64, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            acquire_time: Some(MicroTime(at(renewed - 100))),
            renew_time: Some(MicroTime(at(renewed))),
            lease_duration_seconds: Some(duration),
            lease_transitions: Some(2),
            ..Default::default()
        }
    }

    const D: Duration = Duration::from_secs(15);

    #[test]
    fn absent_or_unheld_lease_is_acquired() {
        assert_eq!(decide(None, at(0), "me", D), Decision::Acquire);
        let mut spec = held("", 0, 15);
        assert_eq!(decide(Some(&spec), at(0), "me", D), Decision::Acquire);
        spec.holder_identity = None;
        assert_eq!(decide(Some(&spec), at(0), "me", D), Decision::Acquire);
    }

    #[test]
    fn own_lease_is_renewed_even_when_expired() {
        assert_eq!(
            decide(Some(&held("me", 0, 15)), at(5), "me", D),
            Decision::Renew
        );
        assert_eq!(
            decide(Some(&held("me", 0, 15)), at(500), "me", D),
            Decision::Renew
        );
    }

    #[test]
    fn fresh_lease_of_another_is_waited_for_until_it_expires() {
        let spec = held("other", 0, 15);
        assert_eq!(
            decide(Some(&spec), at(5), "me", D),
            Decision::Wait(Duration::from_secs(10))
        );
        // The holder's clock ahead of ours: still theirs.
        assert_eq!(
            decide(Some(&spec), at(-5), "me", D),
            Decision::Wait(Duration::from_secs(20))
        );
    }

    #[test]
    fn expired_lease_of_another_is_taken_over() {
        let spec = held("other", 0, 15);
        assert_eq!(decide(Some(&spec), at(15), "me", D), Decision::Acquire);
        assert_eq!(decide(Some(&spec), at(16), "me", D), Decision::Acquire);
    }

    #[test]
    fn missing_fields_fall_back() {
        // No duration: the caller's default applies.
        let mut spec = held("other", 0, 15);
        spec.lease_duration_seconds = None;
        assert_eq!(
            decide(Some(&spec), at(1), "me", Duration::from_secs(3)),
            Decision::Wait(Duration::from_secs(2))
        );
        // No renewTime: acquireTime counts.
        let mut spec = held("other", 0, 15);
        spec.renew_time = None;
        assert_eq!(decide(Some(&spec), at(0), "me", D), Decision::Acquire);
        spec.acquire_time = Some(MicroTime(at(0)));
        assert_eq!(
            decide(Some(&spec), at(1), "me", D),
            Decision::Wait(Duration::from_secs(14))
        );
        // Neither: expired.
        spec.acquire_time = None;
        assert_eq!(decide(Some(&spec), at(1), "me", D), Decision::Acquire);
    }

    fn cfg() -> LeaseConfig {
        LeaseConfig {
            lease_duration: Duration::from_millis(2500),
            ..LeaseConfig::new("ns", "me")
        }
    }

    #[test]
    fn takeover_counts_a_transition_and_renewal_keeps_acquire_time() {
        let old = held("other", 0, 15);
        let taken = updated_spec(Some(&old), Decision::Acquire, at(20), &cfg());
        assert_eq!(taken.holder_identity.as_deref(), Some("me"));
        assert_eq!(taken.lease_transitions, Some(3));
        assert_eq!(taken.acquire_time, Some(MicroTime(at(20))));
        assert_eq!(taken.renew_time, Some(MicroTime(at(20))));
        // Fractional seconds round up.
        assert_eq!(taken.lease_duration_seconds, Some(3));

        let renewed = updated_spec(Some(&taken), Decision::Renew, at(25), &cfg());
        assert_eq!(renewed.acquire_time, Some(MicroTime(at(20))));
        assert_eq!(renewed.renew_time, Some(MicroTime(at(25))));
        assert_eq!(renewed.lease_transitions, Some(3));

        // A first acquisition is not a transition.
        let first = updated_spec(None, Decision::Acquire, at(0), &cfg());
        assert_eq!(first.lease_transitions, None);
    }

    #[test]
    fn durations_are_sanitized() {
        let c = LeaseConfig {
            lease_duration: Duration::from_secs(3),
            renew_every: Duration::from_secs(3),
            ..LeaseConfig::new("ns", "me")
        }
        .sanitized();
        assert_eq!(c.renew_every, Duration::from_secs(1));
        assert_eq!(c.renew_deadline(), Duration::from_secs(2));
    }

    #[test]
    fn identities_are_unique_per_process_start() {
        assert_ne!(default_identity(), default_identity());
    }

    #[tokio::test]
    async fn fixed_handle_reports_its_value() {
        let h = LeaderHandle::fixed(true);
        assert!(h.is_leader());
        assert!(*h.changed().borrow());
        h.stopped().await;
        assert!(!LeaderHandle::fixed(false).is_leader());
    }
}
