//! mesh-controller against the real API server: a config stream (real
//! mTLS, certificates from a real mesh-ca authority) for a pod that exists
//! in the cluster receives Services, EndpointSlices and VirtualServices as
//! they are created (within 1 s), endpoint changes as incremental updates,
//! deletions as removals; every mesh resource gets its `Accepted` condition;
//! a hello claiming another ServiceAccount than the certificate is refused.
//!
//! The controller runs in this test process with the Kubernetes source.
//! Compiled only with `--features e2e` (see e2e/run).
#![cfg(feature = "e2e")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use e2e::{client, install_crds, wait_for, TestNamespace};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use mesh_api::status::CONDITION_ACCEPTED;
use mesh_api::{ConditionStatus, VirtualService};
use mesh_controller::identity::{Material, ServerTls};
use mesh_controller::push::Debounce;
use mesh_controller::run::ControllerConfig;
use mesh_controller::server::StreamConfig;
use mesh_controller::source::kube::KubeSource;
use mesh_controller::testing::{self, Stream};
use mesh_controller::translate::TranslateConfig;
use mesh_proto::config::v1::{DiscoveryResponse, Hello};
use serde_json::json;

fn issue(ca: &mesh_ca::authority::Authority, ns: &str, sa: &str) -> Material {
    testing::issue(ns, sa, |id, csr| {
        let leaf = ca
            .sign(id, csr, Duration::from_secs(3600))
            .expect("signing");
        (leaf.cert_chain_pem, leaf.trust_bundle_pem)
    })
    .material
}

/// Receives (and ACKs) responses until one satisfies `done`; returns it and
/// how long that took.
async fn until(
    s: &mut Stream,
    what: &str,
    done: impl Fn(&DiscoveryResponse) -> bool,
) -> Result<(DiscoveryResponse, Duration)> {
    let start = Instant::now();
    loop {
        let r = tokio::time::timeout(Duration::from_secs(10), s.rx.message())
            .await
            .with_context(|| format!("waiting for {what}"))??
            .with_context(|| format!("stream ended waiting for {what}"))?;
        s.ack(&r).await;
        if done(&r) {
            return Ok((r, start.elapsed()));
        }
    }
}

fn service<'a>(
    r: &'a DiscoveryResponse,
    name: &str,
) -> Option<&'a mesh_proto::config::v1::Service> {
    r.config.as_ref()?.services.iter().find(|s| s.name == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_streams_kubernetes_changes_to_a_proxy() -> Result<()> {
    let c = client().await?;
    install_crds(&c).await?;
    let ns = TestNamespace::new(&c, "ctrl-stream", &[]).await?;
    let n = ns.name.clone();

    // The pod the proxy speaks for: it exists in the API (it need not run).
    let pods: kube::Api<Pod> = ns.api();
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "client-1", "labels": {"app": "client"}},
            "spec": {
                "serviceAccountName": "default",
                "containers": [{"name": "app", "image": e2e::image("http-echo"), "imagePullPolicy": e2e::pull_policy()}]
            }
        }))?,
    )
    .await?;

    let ca = mesh_ca::authority::Authority::generate()?;
    let tls = ServerTls::from_material(&issue(&ca, "mesh-system", "mesh-controller"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let controller = mesh_controller::run::start(
        Arc::new(KubeSource::new(c.clone(), None)),
        tls,
        listener,
        None,
        ControllerConfig {
            translate: TranslateConfig::default(),
            debounce: Debounce::default(),
            stream: StreamConfig {
                trust_domain: "cluster.local".into(),
                require_pod: true,
                max_concurrent_sends: 8,
            },
        },
        tokio_util::sync::CancellationToken::new(),
    )
    .await?;
    let addr = controller.grpc_addr;
    let me = issue(&ca, &n, "default");
    let hello = |sa: &str| Hello {
        pod: "client-1".into(),
        namespace: n.clone(),
        service_account: sa.into(),
        ..Default::default()
    };

    // Another ServiceAccount than the certificate's: refused.
    let refused = match Stream::open_with(addr, &me, hello("admin")).await {
        Err(e) => e,
        Ok(mut s) => s.next().await.expect_err("a stream for another identity"),
    };
    ensure!(
        refused.code() == tonic::Code::PermissionDenied,
        "expected PERMISSION_DENIED, got {refused}"
    );

    let mut s = Stream::open_with(addr, &me, hello("default"))
        .await
        .context("opening the stream")?;
    let first = s.next().await?;
    ensure!(first.full, "the first response is full");
    s.ack(&first).await;

    // Service + EndpointSlice + VirtualService → the proxy has them within 1 s.
    let host = format!("web.{n}.svc.cluster.local");
    let services: kube::Api<Service> = ns.api();
    let slices: kube::Api<EndpointSlice> = ns.api();
    let vss: kube::Api<VirtualService> = ns.api();
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "web"},
                "spec": {"ports": [{"name": "http", "port": 80}]}
            }))?,
        )
        .await?;
    let slice = |ips: &[&str]| -> Result<EndpointSlice> {
        Ok(serde_json::from_value(json!({
            "metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": ips.iter().map(|ip| json!({"addresses": [ip]})).collect::<Vec<_>>(),
        }))?)
    };
    slices
        .create(&PostParams::default(), &slice(&["10.1.0.1"])?)
        .await?;
    vss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"hosts": ["web"], "http": [{
                "match": [{"headers": {"x-canary": {"exact": "yes"}}}],
                "route": [{"destination": {"host": "web"}}]
            }]}
        }))?,
    )
    .await?;
    let (r, took) = until(&mut s, "web with its endpoint and route", |r| {
        service(r, &host).is_some_and(|w| w.endpoints.len() == 1 && w.http_routes.len() == 1)
    })
    .await?;
    let web = service(&r, &host).context("web")?;
    ensure!(web.endpoints[0].address == "10.1.0.1");
    ensure!(web.endpoints[0].ports.get(&80) == Some(&8080));
    ensure!(
        took < Duration::from_secs(1),
        "the config took {took:?} (want < 1 s)"
    );
    eprintln!("create → proxy: {took:?}");

    // An endpoint change: an incremental update of that one service.
    slices
        .replace("web-1", &PostParams::default(), &{
            let mut s = slice(&["10.1.0.1", "10.1.0.2"])?;
            s.metadata.resource_version = slices.get("web-1").await?.metadata.resource_version;
            s
        })
        .await?;
    let (r, took) = until(&mut s, "the second endpoint", |r| {
        service(r, &host).is_some_and(|w| w.endpoints.len() == 2)
    })
    .await?;
    ensure!(!r.full, "an endpoint change is incremental");
    ensure!(
        r.config.as_ref().map(|c| c.services.len()) == Some(1),
        "only the changed service is sent: {:?}",
        r.config
            .as_ref()
            .map(|c| c.services.iter().map(|s| &s.name).collect::<Vec<_>>())
    );
    ensure!(took < Duration::from_secs(1), "the update took {took:?}");
    eprintln!("endpoint change → proxy: {took:?}");

    // Status conditions: the VirtualService is accepted; an invalid one is
    // not, and the message names the field.
    vss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "bad"},
            "spec": {"hosts": ["other"], "http": [{
                "match": [{"uri": {"regex": "(unclosed"}}],
                "route": [{"destination": {"host": "other"}}]
            }]}
        }))?,
    )
    .await?;
    for (name, want) in [
        ("web", ConditionStatus::True),
        ("bad", ConditionStatus::False),
    ] {
        let cond = wait_for(
            &format!("VirtualService {name} Accepted={want:?}"),
            Duration::from_secs(15),
            || {
                let vss = vss.clone();
                async move {
                    let vs = vss.get(name).await?;
                    Ok(vs
                        .status
                        .and_then(|s| s.condition(CONDITION_ACCEPTED).cloned())
                        .filter(|c| c.status == want))
                }
            },
        )
        .await?;
        if want == ConditionStatus::False {
            ensure!(
                cond.message.contains("spec.http[0].match[0].uri"),
                "the message names the field: {}",
                cond.message
            );
        }
    }

    // Deleting the Service removes it from the proxy.
    services.delete("web", &DeleteParams::default()).await?;
    let (r, took) = until(&mut s, "the removal", |r| {
        r.removed_services.contains(&host)
    })
    .await?;
    ensure!(!r.full);
    eprintln!("delete → proxy: {took:?}");

    // The sync registry shows the proxy in sync.
    let latest = controller.synced().await.version;
    let report = controller.sync.report(latest);
    ensure!(report.proxies.len() == 1, "{report:?}");
    ensure!(report.proxies[0].proxy.pod == "client-1");

    // A JSON merge patch that breaks the accepted VirtualService keeps its
    // route in effect (the last accepted version).
    vss.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"http": [{"match": [{"uri": {"regex": "(x"}}], "route": [{"destination": {"host": "web"}}]}]}})),
    )
    .await?;
    wait_for("web rejected", Duration::from_secs(15), || {
        let vss = vss.clone();
        async move {
            let vs = vss.get("web").await?;
            Ok(vs
                .status
                .and_then(|s| s.condition(CONDITION_ACCEPTED).cloned())
                .filter(|c| {
                    c.status == ConditionStatus::False && c.message.contains("last accepted")
                }))
        }
    })
    .await?;
    controller.shutdown().await;
    Ok(())
}
