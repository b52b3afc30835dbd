//! mesh-controller's Kubernetes source and leader election against a real
//! API server, in this test process:
//!
//! - `KubeSource::run` reports the first lists, then Services,
//!   EndpointSlices and VirtualServices as they are created and deleted; a
//!   malformed VirtualService is reported as `Accepted=False` naming the
//!   field and does not stop the watch.
//! - `publish_status` writes `status.conditions` (server-side apply) only on
//!   the replica that holds the Lease; a second elector waits while the
//!   first renews, takes over once it stops, and then writes the statuses it
//!   was given while following.
//!
//! The mesh CRDs are installed (server-side apply of `mesh_api::crds`) when
//! missing or stale. Compiled only with `--features e2e` (see e2e/run).
#![cfg(feature = "e2e")]

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use e2e::{client, install_crds, wait_for, TestNamespace};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use mesh_api::status::CONDITION_ACCEPTED;
use mesh_api::{ConditionStatus, MeshStatus, ResourceRef, VirtualService};
use mesh_controller::leader::{self, LeaderHandle, LeaseConfig};
use mesh_controller::source::kube::KubeSource;
use mesh_controller::source::{ResourceStatus, Source};
use mesh_controller::world::{Change, Kind, ObjKey, Object};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(15);

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "mesh_controller=debug,warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A running `KubeSource` and the changes it reports.
struct Running {
    source: std::sync::Arc<KubeSource>,
    changes: mpsc::Receiver<Change>,
    stop: CancellationToken,
}

impl Running {
    fn start(c: &Client, leader: Option<LeaderHandle>) -> Self {
        let source = std::sync::Arc::new(KubeSource::new(c.clone(), leader));
        let (tx, changes) = mpsc::channel(4096);
        let stop = CancellationToken::new();
        let run = source.run(tx, stop.clone());
        tokio::spawn(async move {
            if let Err(e) = run.await {
                eprintln!("KubeSource::run failed: {e:#}");
            }
        });
        Self {
            source,
            changes,
            stop,
        }
    }

    /// Waits (up to [`WAIT`]) for a change `f` picks, skipping the others
    /// (the source reports the whole cluster).
    async fn expect<T>(
        &mut self,
        what: &str,
        mut f: impl FnMut(&Change) -> Option<T>,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let change = tokio::time::timeout_at(deadline, self.changes.recv())
                .await
                .with_context(|| format!("no change {what} within {WAIT:?}"))?
                .context("the source stopped")?;
            if let Some(v) = f(&change) {
                return Ok(v);
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn is_upsert(change: &Change, kind: Kind, key: &ObjKey) -> bool {
    matches!(change, Change::Upsert(o) if o.kind() == kind && o.key() == *key)
}

const VS: Kind = Kind::Mesh("VirtualService");

fn virtual_service_json(name: &str, host: &str, port: u64) -> serde_json::Value {
    json!({
        "apiVersion": "networking.mesh.dev/v1",
        "kind": "VirtualService",
        "metadata": {"name": name},
        "spec": {
            "hosts": [host],
            "http": [{"route": [{"destination": {"host": host, "port": {"number": port}}}]}],
        },
    })
}

fn virtual_service(name: &str, host: &str, port: u16) -> Result<VirtualService> {
    Ok(serde_json::from_value(virtual_service_json(
        name,
        host,
        port.into(),
    ))?)
}

/// The `Accepted` condition of a VirtualService, read from the API (untyped:
/// the malformed one does not decode as a `VirtualService`).
async fn accepted(api: &Api<DynamicObject>, name: &str) -> Result<Option<mesh_api::Condition>> {
    let vs = api.get(name).await?;
    let Some(status) = vs.data.get("status") else {
        return Ok(None);
    };
    let status: MeshStatus = serde_json::from_value(status.clone()).context("reading status")?;
    Ok(status.condition(CONDITION_ACCEPTED).cloned())
}

fn untyped(c: &Client, ns: &TestNamespace) -> Api<DynamicObject> {
    Api::namespaced_with(
        c.clone(),
        &ns.name,
        &ApiResource::erase::<VirtualService>(&()),
    )
}

#[tokio::test]
async fn kube_source_reports_changes_and_malformed_resources() -> Result<()> {
    init_logs();
    let c = client().await?;
    install_crds(&c).await?;
    let ns = TestNamespace::new(&c, "ksrc", &[]).await?;
    let mut run = Running::start(&c, None);

    // First lists: one Replace per kind (in any order); the Namespaces' holds
    // the test namespace.
    let mut namespaces = None;
    let mut vs_listed = false;
    run.expect("Replace(Namespace) and Replace(VirtualService)", |ch| {
        match ch {
            Change::Replace(Kind::Namespace, objs) => {
                namespaces = Some(objs.iter().map(Object::key).collect::<Vec<_>>())
            }
            Change::Replace(k, _) if *k == VS => vs_listed = true,
            _ => {}
        }
        (namespaces.is_some() && vs_listed).then_some(())
    })
    .await?;
    let listed = namespaces.unwrap_or_default();
    ensure!(
        listed.contains(&ObjKey::new("", &ns.name)),
        "namespace {} not in the first list",
        ns.name
    );

    // A Service without selector, its EndpointSlice, a VirtualService.
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }))?;
    ns.api::<Service>()
        .create(&PostParams::default(), &svc)
        .await?;
    let key = ObjKey::new(&ns.name, "web");
    run.expect("Upsert(Service web)", |ch| {
        is_upsert(ch, Kind::Service, &key).then_some(())
    })
    .await?;

    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {
            "name": "web-1",
            "labels": {
                "kubernetes.io/service-name": "web",
                "endpointslice.kubernetes.io/managed-by": "mesh-e2e",
            },
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.1.2.3"], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }))?;
    ns.api::<EndpointSlice>()
        .create(&PostParams::default(), &slice)
        .await?;
    let slice_key = ObjKey::new(&ns.name, "web-1");
    let addresses = run
        .expect("Upsert(EndpointSlice web-1)", |ch| match ch {
            Change::Upsert(Object::EndpointSlice(s)) if ObjKey::of(s.as_ref()) == slice_key => {
                Some(
                    s.endpoints
                        .iter()
                        .flat_map(|e| e.addresses.clone())
                        .collect::<Vec<_>>(),
                )
            }
            _ => None,
        })
        .await?;
    ensure!(addresses == ["10.1.2.3"], "slice addresses {addresses:?}");

    let vss = ns.api::<VirtualService>();
    vss.create(&PostParams::default(), &virtual_service("web", "web", 80)?)
        .await?;
    let hosts = run
        .expect("Upsert(VirtualService web)", |ch| match ch {
            Change::Upsert(Object::Mesh(r))
                if r.kind() == "VirtualService" && r.resource_ref().name == "web" =>
            {
                match r.as_ref() {
                    mesh_api::MeshResource::VirtualService(vs) => Some(vs.spec.hosts.clone()),
                    _ => None,
                }
            }
            _ => None,
        })
        .await?;
    ensure!(hosts == ["web"], "hosts {hosts:?}");

    // Deleted: a Delete arrives.
    vss.delete("web", &DeleteParams::default()).await?;
    run.expect("Delete(VirtualService web)", |ch| {
        matches!(ch, Change::Delete(k, kk) if *k == VS && *kk == key).then_some(())
    })
    .await?;

    // Malformed (a port beyond u32 passes the CRD schema, not the types): not
    // reported, status says why (no leader given: this source always
    // writes), and the watch goes on.
    let untyped = untyped(&c, &ns);
    let malformed: DynamicObject =
        serde_json::from_value(virtual_service_json("bad", "web", 5_000_000_000))?;
    untyped
        .create(&PostParams::default(), &malformed)
        .await
        .context("creating the malformed VirtualService (did the API server reject it?)")?;
    let bad = ObjKey::new(&ns.name, "bad");
    vss.create(&PostParams::default(), &virtual_service("good", "web", 80)?)
        .await?;
    let good = ObjKey::new(&ns.name, "good");
    let mut saw_bad = false;
    run.expect("Upsert(VirtualService good)", |ch| {
        saw_bad |= is_upsert(ch, VS, &bad);
        is_upsert(ch, VS, &good).then_some(())
    })
    .await?;
    ensure!(!saw_bad, "the malformed VirtualService was reported");
    let condition = wait_for(
        "Accepted=False on the malformed VirtualService",
        WAIT,
        || {
            let untyped = untyped.clone();
            async move {
                Ok(accepted(&untyped, "bad")
                    .await?
                    .filter(|c| c.status == ConditionStatus::False))
            }
        },
    )
    .await?;
    ensure!(
        condition.reason == "Invalid",
        "reason {:?}",
        condition.reason
    );
    ensure!(
        condition
            .message
            .starts_with("spec.http[0].route[0].destination.port.number:"),
        "message does not name the field: {:?}",
        condition.message
    );
    ensure!(condition.observed_generation == Some(1), "{condition:?}");

    // Fixed: reported again.
    vss.patch(
        "bad",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"http": [{"route": [{"destination": {"host": "web", "port": {"number": 80}}}]}]}})),
    )
    .await?;
    run.expect("Upsert(VirtualService bad, fixed)", |ch| {
        is_upsert(ch, VS, &bad).then_some(())
    })
    .await?;
    Ok(())
}

fn lease(ns: &str, identity: &str) -> LeaseConfig {
    LeaseConfig {
        lease_duration: Duration::from_secs(3),
        renew_every: Duration::from_secs(1),
        ..LeaseConfig::new(ns, identity)
    }
}

async fn wait_leading(what: &str, h: &LeaderHandle, timeout: Duration) -> Result<()> {
    let mut rx = h.changed();
    tokio::time::timeout(timeout, rx.wait_for(|l| *l))
        .await
        .with_context(|| format!("{what} did not become leader within {timeout:?}"))?
        .with_context(|| format!("{what}'s elector stopped"))?;
    Ok(())
}

fn status(
    ns: &str,
    name: &str,
    generation: Option<i64>,
    accepted: bool,
    reason: &str,
    message: &str,
) -> ResourceStatus {
    ResourceStatus {
        resource: ResourceRef {
            kind: "VirtualService".into(),
            namespace: ns.into(),
            name: name.into(),
        },
        generation,
        accepted,
        reason: reason.into(),
        message: message.into(),
    }
}

#[tokio::test]
async fn status_is_written_by_the_leader_only() -> Result<()> {
    init_logs();
    let c = client().await?;
    install_crds(&c).await?;
    let ns = TestNamespace::new(&c, "lease", &[]).await?;
    let vss = ns.api::<VirtualService>();
    let vs = vss
        .create(&PostParams::default(), &virtual_service("web", "web", 80)?)
        .await?;
    let generation = vs.metadata.generation;
    let read = untyped(&c, &ns);

    // Replica A leads.
    let stop_a = CancellationToken::new();
    let a = leader::spawn(c.clone(), lease(&ns.name, "replica-a"), stop_a.clone());
    wait_leading("replica A", &a, WAIT).await?;
    let source_a = Running::start(&c, Some(a.clone()));

    // Replica B follows.
    let stop_b = CancellationToken::new();
    let b = leader::spawn(c.clone(), lease(&ns.name, "replica-b"), stop_b.clone());
    let source_b = Running::start(&c, Some(b.clone()));

    source_a
        .source
        .publish_status(vec![status(
            &ns.name,
            "web",
            generation,
            false,
            "Conflict",
            "host web is claimed by other/web",
        )])
        .await;
    let c1 = accepted(&read, "web")
        .await?
        .context("no Accepted condition after publish")?;
    ensure!(c1.status == ConditionStatus::False, "{c1:?}");
    ensure!(
        c1.reason == "Conflict" && c1.message == "host web is claimed by other/web",
        "{c1:?}"
    );
    ensure!(c1.observed_generation == generation, "{c1:?}");
    ensure!(c1.last_transition_time.is_some(), "{c1:?}");

    // The field manager is ours.
    let vs = vss.get("web").await?;
    let managers: Vec<String> = vs
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.subresource.as_deref() == Some("status"))
        .filter_map(|m| m.manager)
        .collect();
    ensure!(
        managers == ["mesh-controller"],
        "status managers {managers:?}"
    );

    // Accepted now.
    source_a
        .source
        .publish_status(vec![status(
            &ns.name, "web", generation, true, "Accepted", "",
        )])
        .await;
    let c2 = accepted(&read, "web")
        .await?
        .context("no Accepted condition")?;
    ensure!(
        c2.status == ConditionStatus::True && c2.reason == "Accepted" && c2.message.is_empty(),
        "{c2:?}"
    );

    // The follower publishes something else: nothing is written.
    ensure!(!b.is_leader(), "replica B leads while A holds the lease");
    source_b
        .source
        .publish_status(vec![status(
            &ns.name,
            "web",
            generation,
            false,
            "Invalid",
            "seen by B",
        )])
        .await;
    // B keeps following for longer than a lease while A renews.
    let mut b_changes = b.changed();
    let b_took_over =
        tokio::time::timeout(Duration::from_secs(5), b_changes.wait_for(|l| *l)).await;
    ensure!(
        b_took_over.is_err(),
        "replica B became leader while A was renewing"
    );
    let c3 = accepted(&read, "web")
        .await?
        .context("no Accepted condition")?;
    ensure!(c3 == c2, "a follower wrote status: {c3:?}");
    let l = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(c.clone(), &ns.name)
        .get(leader::DEFAULT_LEASE_NAME)
        .await?;
    let holder = l.spec.and_then(|s| s.holder_identity);
    ensure!(
        holder.as_deref() == Some("replica-a"),
        "lease holder {holder:?}"
    );

    // A stops (and releases the lease): B takes over and writes what it was
    // given while following.
    stop_a.cancel();
    tokio::time::timeout(WAIT, a.stopped())
        .await
        .context("replica A did not stop")?;
    ensure!(!a.is_leader(), "replica A still leads after stopping");
    wait_leading("replica B", &b, WAIT).await?;
    let c4 = wait_for("replica B's status", WAIT, || {
        let read = read.clone();
        async move {
            Ok(accepted(&read, "web")
                .await?
                .filter(|c| c.message == "seen by B"))
        }
    })
    .await?;
    ensure!(
        c4.status == ConditionStatus::False && c4.reason == "Invalid",
        "{c4:?}"
    );
    // True -> False: a new transition time.
    ensure!(c4.last_transition_time.is_some(), "{c4:?}");

    stop_b.cancel();
    tokio::time::timeout(WAIT, b.stopped())
        .await
        .context("replica B did not stop")?;
    drop(source_a);
    drop(source_b);
    Ok(())
}

/// A lease whose holder died without releasing it is taken over once it
/// expires, not before; the takeover counts a transition; stopping releases.
#[tokio::test]
async fn lease_is_taken_over_after_expiry_without_release() -> Result<()> {
    init_logs();
    let c = client().await?;
    let ns = TestNamespace::new(&c, "expiry", &[]).await?;
    // A lease held by a replica that died without releasing it.
    let leases = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(c.clone(), &ns.name);
    let now = k8s_openapi::jiff::Timestamp::now();
    let dead: k8s_openapi::api::coordination::v1::Lease = serde_json::from_value(json!({
        "metadata": {"name": leader::DEFAULT_LEASE_NAME},
        "spec": {
            "holderIdentity": "dead-replica",
            "leaseDurationSeconds": 3,
            "acquireTime": now.to_string(),
            "renewTime": now.to_string(),
            "leaseTransitions": 0,
        },
    }))?;
    leases.create(&PostParams::default(), &dead).await?;
    let stop = CancellationToken::new();
    let started = tokio::time::Instant::now();
    let h = leader::spawn(c.clone(), lease(&ns.name, "replica-c"), stop.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ensure!(!h.is_leader(), "took over a lease that had not expired");
    wait_leading("replica C", &h, WAIT).await?;
    let waited = started.elapsed();
    ensure!(
        waited >= Duration::from_secs(2),
        "took over after only {waited:?}"
    );
    let l = leases.get(leader::DEFAULT_LEASE_NAME).await?;
    let spec = l.spec.context("lease without spec")?;
    ensure!(
        spec.holder_identity.as_deref() == Some("replica-c"),
        "{spec:?}"
    );
    ensure!(spec.lease_transitions == Some(1), "{spec:?}");
    stop.cancel();
    tokio::time::timeout(WAIT, h.stopped())
        .await
        .context("elector did not stop")?;
    let l = leases.get(leader::DEFAULT_LEASE_NAME).await?;
    let holder = l.spec.and_then(|s| s.holder_identity);
    if holder.is_some() {
        bail!("lease not released on stop: holder {holder:?}");
    }
    Ok(())
}

/// Without the mesh CRDs the source still starts (Services & co. flow), and
/// a CRD installed later is picked up by the retrying watch.
///
/// Ignored by default: it deletes the mesh CRDs cluster-wide (and with
/// them every mesh resource), which would break tests running alongside.
/// Run it alone: `cargo test -p e2e --features e2e --test controller_kube
/// -- --ignored crds_installed_later`. It leaves the CRDs installed.
#[tokio::test]
#[ignore = "deletes the mesh CRDs cluster-wide; run alone with --ignored"]
async fn crds_installed_later_are_picked_up() -> Result<()> {
    init_logs();
    let c = client().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    for crd in mesh_api::crds::all() {
        let name = crd.metadata.name.clone().context("CRD without a name")?;
        if crds.get_opt(&name).await?.is_some() {
            crds.delete(&name, &DeleteParams::default()).await?;
        }
        wait_for(
            &format!("CRD {name} deleted"),
            Duration::from_secs(60),
            || {
                let crds = crds.clone();
                let name = name.clone();
                async move { Ok(crds.get_opt(&name).await?.is_none().then_some(())) }
            },
        )
        .await?;
    }
    let ns = TestNamespace::new(&c, "nocrd", &[]).await?;
    let mut run = Running::start(&c, None);
    // The first lists are released without waiting for the missing CRDs.
    let mut saw_vs = false;
    run.expect("Replace(Namespace)", |ch| {
        saw_vs |= matches!(ch, Change::Replace(k, _) if *k == VS);
        matches!(ch, Change::Replace(Kind::Namespace, _)).then_some(())
    })
    .await?;
    ensure!(!saw_vs, "VirtualServices listed without their CRD");

    install_crds(&c).await?;
    ns.api::<VirtualService>()
        .create(&PostParams::default(), &virtual_service("late", "web", 80)?)
        .await?;
    let key = ObjKey::new(&ns.name, "late");
    // Listed once the retry finds the CRD (or seen as an event if the watch
    // started before the create). The backoff is still short here.
    run.expect("VirtualService late", |ch| match ch {
        Change::Replace(k, objs) if *k == VS => objs.iter().any(|o| o.key() == key).then_some(()),
        ch => is_upsert(ch, VS, &key).then_some(()),
    })
    .await?;
    Ok(())
}
