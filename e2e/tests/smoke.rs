//! Smoke test of the e2e cluster: workloads, Services through kube-proxy, DNS
//! through CoreDNS, a mutating webhook on the host, and TokenReview of a pod's
//! projected ServiceAccount token. Runs against the cluster in KUBECONFIG;
//! compiled only with `--features e2e` (see e2e/run).
#![cfg(feature = "e2e")]

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use e2e::webhook::{Webhook, MUTATED_LABEL};
use e2e::{client, deploy_echo, host_ip, job_pod, last_json, run_pod, wait_for, TestNamespace};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::authentication::v1::TokenReview;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service, ServiceAccount};
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use serde_json::json;

#[tokio::test]
async fn node_is_ready_and_dns_runs() -> Result<()> {
    let c = client().await?;
    let nodes = Api::<Node>::all(c.clone())
        .list(&Default::default())
        .await?;
    ensure!(!nodes.items.is_empty(), "cluster has no nodes");
    for n in &nodes.items {
        let ready = n
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        ensure!(ready, "node {:?} not Ready", n.metadata.name);
    }
    let dns = Api::<Service>::namespaced(c, "kube-system")
        .get("kube-dns")
        .await?;
    ensure!(
        dns.spec.and_then(|s| s.cluster_ip).is_some(),
        "kube-dns has no cluster IP"
    );
    Ok(())
}

/// 2 echo replicas behind a ClusterIP Service; a client pod resolves the
/// Service's DNS name through CoreDNS and reaches both pods through kube-proxy.
#[tokio::test]
async fn service_reaches_both_replicas_by_dns_name() -> Result<()> {
    let c = client().await?;
    let ns = TestNamespace::new(&c, "smoke", &[]).await?;
    let pods = deploy_echo(&ns, "echo", "http-echo", 8080, 80, 2).await?;
    // kube-proxy balances connections, so use one connection per request. It may
    // still be programming the endpoints: the client waits for a first answer,
    // then spreads its requests over 3 s.
    let url = format!("http://echo.{}.svc.cluster.local/smoke", ns.name);
    let client_pod = job_pod(
        "client",
        "mesh-client",
        &[],
        &[
            "http",
            "--url",
            &url,
            "-n",
            "60",
            "--connection-per-request",
            "--wait-ready",
            "30",
            "--rate",
            "20",
            "--timeout",
            "3",
        ],
    )?;
    let logs = run_pod(&ns, client_pod, Duration::from_secs(180)).await?;
    let report = last_json(&logs)?;
    eprintln!("mesh-client report: {report}");
    ensure!(report["ok"] == 60, "not all requests succeeded: {report}");
    let seen: BTreeSet<String> = report["by_pod"]
        .as_object()
        .context("no by_pod in report")?
        .keys()
        .cloned()
        .collect();
    let want: BTreeSet<String> = pods.into_iter().collect();
    ensure!(
        seen == want,
        "answering pods {seen:?} != ready pods {want:?}"
    );
    Ok(())
}

/// Without the mesh, gRPC over one channel (one HTTP/2 connection) lands on a
/// single pod: kube-proxy balances connections, not requests (the problem the
/// mesh's per-request balancing solves). Also checks grpc-echo and mesh-client's
/// gRPC mode in the cluster.
#[tokio::test]
async fn without_mesh_grpc_channel_sticks_to_one_pod() -> Result<()> {
    let c = client().await?;
    let ns = TestNamespace::new(&c, "grpc", &[]).await?;
    let pods = deploy_echo(&ns, "grpc-echo", "grpc-echo", 9090, 9090, 2).await?;
    let url = format!("http://grpc-echo.{}.svc.cluster.local:9090", ns.name);
    let client_pod = job_pod(
        "grpc-client",
        "mesh-client",
        &[],
        &[
            "grpc",
            "--url",
            &url,
            "-n",
            "50",
            "--concurrency",
            "4",
            "--wait-ready",
            "30",
        ],
    )?;
    let report = last_json(&run_pod(&ns, client_pod, Duration::from_secs(180)).await?)?;
    eprintln!("mesh-client report: {report}");
    ensure!(report["ok"] == 50, "not all calls succeeded: {report}");
    ensure!(report["connections"] == 1, "expected one channel: {report}");
    let by_pod = report["by_pod"].as_object().context("no by_pod")?;
    ensure!(
        by_pod.len() == 1,
        "one channel reached several pods: {report}"
    );
    let pod = by_pod.keys().next().cloned().unwrap_or_default();
    ensure!(
        pods.contains(&pod),
        "answering pod {pod} is not one of {pods:?}"
    );
    Ok(())
}

/// The API server calls a MutatingWebhookConfiguration served by this test
/// process on the host; the created object carries the webhook's label.
#[tokio::test]
async fn api_server_calls_webhook_on_host() -> Result<()> {
    let c = client().await?;
    let ns = TestNamespace::new(&c, "webhook", &[]).await?;
    ns_label(&c, &ns.name).await?;
    let ip = host_ip()?;
    let bind: std::net::IpAddr = std::env::var("MESH_E2E_WEBHOOK_BIND")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ip);
    let wh = Webhook::start(bind, ip).await?;
    let name = format!("{}-mutator", ns.name);
    let cfg: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": name},
        "webhooks": [{
            "name": "mutate.e2e.mesh.dev",
            "clientConfig": {
                "url": wh.url,
                "caBundle": k8s_openapi::ByteString(wh.ca_pem.clone().into_bytes()),
            },
            "rules": [{
                "operations": ["CREATE"],
                "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"],
                "scope": "Namespaced"
            }],
            "namespaceSelector": {"matchLabels": {"mesh-e2e/webhook": ns.name}},
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "timeoutSeconds": 10
        }]
    }))?;
    let mwc = Api::<MutatingWebhookConfiguration>::all(c.clone());
    mwc.create(&PostParams::default(), &cfg).await?;
    let cms = ns.api::<ConfigMap>();
    // The API server picks up new webhook configurations within a second or so.
    let mut n = 0u32;
    let res = wait_for("a mutated ConfigMap", Duration::from_secs(60), || {
        n += 1;
        let cms = cms.clone();
        let name = format!("probe-{n}");
        async move {
            let cm: ConfigMap = serde_json::from_value(json!({
                "metadata": {"name": name}, "data": {"k": "v"}
            }))?;
            let created = cms.create(&PostParams::default(), &cm).await?;
            let labelled = created
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(MUTATED_LABEL))
                .is_some_and(|v| v == "true");
            Ok(labelled.then_some(name))
        }
    })
    .await;
    let _ = mwc.delete(&name, &DeleteParams::default()).await;
    let probe = res?;
    // Read back from the API: the stored object has the label.
    let stored = cms.get(&probe).await?;
    ensure!(
        stored
            .metadata
            .labels
            .unwrap_or_default()
            .get(MUTATED_LABEL)
            .map(String::as_str)
            == Some("true"),
        "stored ConfigMap lacks {MUTATED_LABEL}"
    );
    ensure!(
        wh.calls.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "webhook was not called"
    );
    Ok(())
}

async fn ns_label(c: &kube::Client, ns: &str) -> Result<()> {
    let api = Api::<k8s_openapi::api::core::v1::Namespace>::all(c.clone());
    let patch = json!({"metadata": {"labels": {"mesh-e2e/webhook": ns}}});
    api.patch(
        ns,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// A pod's projected ServiceAccount token (audience mesh-ca) passes TokenReview
/// with that audience and names the pod's ServiceAccount; other audiences fail.
#[tokio::test]
async fn token_review_of_projected_token() -> Result<()> {
    let c = client().await?;
    let ns = TestNamespace::new(&c, "token", &[]).await?;
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "workload"}}))?;
    ns.api::<ServiceAccount>()
        .create(&PostParams::default(), &sa)
        .await?;
    let mut pod = job_pod(
        "tokencat",
        "mesh-client",
        &["/bin/cat"],
        &["/var/run/secrets/mesh/token"],
    )?;
    let spec = pod.spec.as_mut().context("spec")?;
    spec.service_account_name = Some("workload".into());
    spec.volumes = Some(vec![serde_json::from_value(json!({
        "name": "mesh-token",
        "projected": {"sources": [{"serviceAccountToken": {
            "audience": "mesh-ca", "expirationSeconds": 3600, "path": "token"
        }}]}
    }))?]);
    spec.containers[0].volume_mounts = Some(vec![serde_json::from_value(json!({
        "name": "mesh-token", "mountPath": "/var/run/secrets/mesh", "readOnly": true
    }))?]);
    // The token is bound to the pod: review it while the pod object exists.
    let token = run_pod(&ns, pod, Duration::from_secs(120))
        .await?
        .trim()
        .to_string();
    ensure!(token.split('.').count() == 3, "not a JWT: {token:?}");

    let reviews = Api::<TokenReview>::all(c.clone());
    let review = |aud: &str| -> Result<TokenReview> {
        Ok(serde_json::from_value(json!({
            "spec": {"token": token, "audiences": [aud]}
        }))?)
    };
    let ok = reviews
        .create(&PostParams::default(), &review("mesh-ca")?)
        .await?;
    let st = ok.status.context("TokenReview without status")?;
    ensure!(
        st.authenticated == Some(true),
        "token not authenticated: {st:?}"
    );
    let user = st.user.context("no user")?;
    let want = format!("system:serviceaccount:{}:workload", ns.name);
    ensure!(
        user.username.as_deref() == Some(want.as_str()),
        "username {:?} != {want}",
        user.username
    );
    ensure!(
        st.audiences
            .unwrap_or_default()
            .contains(&"mesh-ca".to_string()),
        "audience mesh-ca missing"
    );
    let pod_name = user
        .extra
        .unwrap_or_default()
        .get("authentication.kubernetes.io/pod-name")
        .cloned()
        .unwrap_or_default();
    ensure!(
        pod_name == vec!["tokencat".to_string()],
        "token not bound to the pod: {pod_name:?}"
    );

    let bad = reviews
        .create(&PostParams::default(), &review("someone-else")?)
        .await?;
    ensure!(
        bad.status.and_then(|s| s.authenticated) != Some(true),
        "token accepted for the wrong audience"
    );
    let _ = ns
        .api::<Pod>()
        .delete("tokencat", &DeleteParams::default())
        .await;
    Ok(())
}
