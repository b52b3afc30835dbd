//! Helpers for the end-to-end tests (cluster access, test apps, assertions).
//!
//! The tests take the cluster from `KUBECONFIG` (local cluster from
//! `e2e/cluster/local-up`, or kind from `e2e/cluster/kind.sh`) and are compiled
//! only with `--features e2e`; `e2e/run` does all of it.

pub mod webhook;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, LogParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

/// Version tag of the project's images (`mesh.local/<name>:<version>`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `mesh.local/<name>:<workspace version>`, as built by `deploy/images/build`.
pub fn image(name: &str) -> String {
    format!("mesh.local/{name}:{VERSION}")
}

/// Pull policy for the project's images (they are imported, never pulled).
pub fn pull_policy() -> String {
    std::env::var("MESH_E2E_PULL_POLICY").unwrap_or_else(|_| "Never".to_string())
}

/// Address of this (test) machine as seen from the API server, for webhooks
/// served by the test process: `MESH_E2E_HOST_IP` (local-up and kind.sh print it).
pub fn host_ip() -> Result<std::net::IpAddr> {
    let v = std::env::var("MESH_E2E_HOST_IP")
        .context("MESH_E2E_HOST_IP is not set (e2e/cluster/local-up prints it)")?;
    v.parse().with_context(|| format!("MESH_E2E_HOST_IP={v}"))
}

/// A client for the cluster in `KUBECONFIG`.
pub async fn client() -> Result<Client> {
    // kube and our webhook both use rustls with ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::try_default()
        .await
        .context("no cluster: set KUBECONFIG (e2e/run brings one up)")
}

/// Polls `f` every 500 ms until it yields `Some`, or fails after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let end = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() > end {
            match last_err {
                Some(e) => bail!("timed out after {timeout:?} waiting for {what}: {e:#}"),
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A namespace made for one test, deleted when dropped.
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl TestNamespace {
    /// Creates `e2e-<prefix>-<random>` with the given labels.
    pub async fn new(client: &Client, prefix: &str, labels: &[(&str, &str)]) -> Result<Self> {
        let name = format!("e2e-{prefix}-{:06x}", rand::random::<u32>() & 0xff_ffff);
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels}
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        // Pods need the default ServiceAccount, which the controller-manager adds.
        let sa =
            Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), &name);
        wait_for("default ServiceAccount", Duration::from_secs(60), || {
            let sa = sa.clone();
            async move { Ok(sa.get_opt("default").await?.map(|_| ())) }
        })
        .await?;
        Ok(Self {
            name,
            client: client.clone(),
        })
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::env::var("MESH_E2E_KEEP").is_ok() {
            eprintln!("keeping namespace {} (MESH_E2E_KEEP)", self.name);
            return;
        }
        let name = self.name.clone();
        // Drop cannot await; delete from a helper thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let client = Client::try_default().await.ok()?;
                Api::<Namespace>::all(client)
                    .delete(&name, &DeleteParams::background())
                    .await
                    .ok()
            })
        })
        .join();
    }
}

/// Waits until the Deployment has all its replicas available; returns the names
/// of its ready pods (selected by `selector`).
pub async fn wait_deployment_ready(
    ns: &TestNamespace,
    name: &str,
    selector: &str,
    timeout: Duration,
) -> Result<Vec<String>> {
    let deps: Api<Deployment> = ns.api();
    let pods: Api<Pod> = ns.api();
    let r = wait_for(&format!("deployment {name} ready"), timeout, || {
        let deps = deps.clone();
        async move {
            let d = deps.get(name).await?;
            let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let generation = d.metadata.generation.unwrap_or(0);
            let st = d.status.unwrap_or_default();
            // As `kubectl rollout status`: the controller saw this spec,
            // every replica is updated and available, and no old replica
            // is left (at the last step of a rolling update the old pod is
            // still available while the last new one starts).
            Ok((st.observed_generation.unwrap_or(0) >= generation
                && st.replicas.unwrap_or(0) == want
                && st.updated_replicas.unwrap_or(0) == want
                && st.available_replicas.unwrap_or(0) >= want)
                .then_some(()))
        }
    })
    .await;
    if let Err(e) = r {
        bail!("{e:#}\n{}", describe_pods(&pods, selector).await);
    }
    let list = pods
        .list(&kube::api::ListParams::default().labels(selector))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && pod_ready(p))
        .filter_map(|p| p.metadata.name)
        .collect())
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Creates Deployment `name` (`replicas` pods of our image `image_name` listening on
/// `port`, with env `PORT`, `POD_NAME`, `POD_NAMESPACE`, label `app=<name>`, TCP
/// readiness probe) and a ClusterIP Service `name` with port `svc_port` → `port`;
/// waits until the pods are ready and the Service has that many ready endpoints.
/// Returns the ready pods' names.
pub async fn deploy_echo(
    ns: &TestNamespace,
    name: &str,
    image_name: &str,
    port: u16,
    svc_port: u16,
    replicas: i32,
) -> Result<Vec<String>> {
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 10,
                    "containers": [{
                        "name": "app",
                        "image": image(image_name),
                        "imagePullPolicy": pull_policy(),
                        "env": [
                            {"name": "PORT", "value": port.to_string()},
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
                        ],
                        "ports": [{"containerPort": port, "name": "app"}],
                        "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 1}
                    }]
                }
            }
        }
    }))?;
    ns.api::<Deployment>()
        .create(&PostParams::default(), &deploy)
        .await
        .with_context(|| format!("creating deployment {name}"))?;
    let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "selector": {"app": name},
            "ports": [{"name": "app", "port": svc_port, "targetPort": port}]
        }
    }))?;
    ns.api::<k8s_openapi::api::core::v1::Service>()
        .create(&PostParams::default(), &svc)
        .await
        .with_context(|| format!("creating service {name}"))?;
    let pods =
        wait_deployment_ready(ns, name, &format!("app={name}"), Duration::from_secs(180)).await?;
    if pods.len() != replicas as usize {
        bail!("expected {replicas} ready pods of {name}, got {pods:?}");
    }
    wait_ready_endpoints(ns, name, pods.len(), Duration::from_secs(60)).await?;
    Ok(pods)
}

/// Waits until the Service's EndpointSlices list `n` ready endpoints.
pub async fn wait_ready_endpoints(
    ns: &TestNamespace,
    service: &str,
    n: usize,
    timeout: Duration,
) -> Result<()> {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let slices = ns.api::<EndpointSlice>();
    let selector = format!("kubernetes.io/service-name={service}");
    wait_for(
        &format!("{n} ready endpoints of {service}"),
        timeout,
        || {
            let slices = slices.clone();
            let selector = selector.clone();
            async move {
                let list = slices
                    .list(&kube::api::ListParams::default().labels(&selector))
                    .await?;
                let ready = list
                    .items
                    .iter()
                    .flat_map(|s| s.endpoints.iter())
                    .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                    .count();
                Ok((ready == n).then_some(()))
            }
        },
    )
    .await
}

/// A short text with the phase and container states of the selected pods (for failures).
pub async fn describe_pods(pods: &Api<Pod>, selector: &str) -> String {
    let Ok(list) = pods
        .list(&kube::api::ListParams::default().labels(selector))
        .await
    else {
        return "(could not list pods)".into();
    };
    let mut out = String::new();
    for p in list.items {
        let st = p.status.unwrap_or_default();
        out.push_str(&format!(
            "pod {}: phase {:?}, containers {}\n",
            p.metadata.name.unwrap_or_default(),
            st.phase,
            serde_json::to_string(&st.container_statuses).unwrap_or_default()
        ));
    }
    out
}

/// Creates the pod, waits until it has terminated (restartPolicy Never) and
/// returns its logs; fails if it did not succeed.
pub async fn run_pod(ns: &TestNamespace, pod: Pod, timeout: Duration) -> Result<String> {
    let pods: Api<Pod> = ns.api();
    let name = pod.metadata.name.clone().context("pod needs a name")?;
    pods.create(&PostParams::default(), &pod)
        .await
        .with_context(|| format!("creating pod {name}"))?;
    let phase = wait_for(&format!("pod {name} to finish"), timeout, || {
        let pods = pods.clone();
        let name = name.clone();
        async move {
            let p = pods.get(&name).await?;
            let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
            Ok(matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase))
        }
    })
    .await;
    let logs = pods
        .logs(&name, &LogParams::default())
        .await
        .unwrap_or_else(|e| format!("(no logs: {e})"));
    match phase {
        Ok(p) if p == "Succeeded" => Ok(logs),
        Ok(p) => bail!("pod {name} ended {p}; logs:\n{logs}"),
        Err(e) => bail!(
            "{e:#}\n{}logs:\n{logs}",
            describe_pods(&pods, &format!("e2e-run={name}")).await
        ),
    }
}

/// A pod (restartPolicy Never, label `e2e-run=<name>`) that runs one of our images.
pub fn job_pod(name: &str, image_name: &str, command: &[&str], args: &[&str]) -> Result<Pod> {
    let mut container = json!({
        "name": "main",
        "image": image(image_name),
        "imagePullPolicy": pull_policy(),
        "args": args,
    });
    if !command.is_empty() {
        container["command"] = json!(command);
    }
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"e2e-run": name}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
        }
    }))?)
}

/// The last line of `logs` that parses as a JSON object (mesh-client's report).
pub fn last_json(logs: &str) -> Result<serde_json::Value> {
    logs.lines()
        .rev()
        .find_map(|l| {
            serde_json::from_str::<serde_json::Value>(l.trim())
                .ok()
                .filter(|v| v.is_object())
        })
        .with_context(|| format!("no JSON report in output:\n{logs}"))
}

/// Server-side applies every mesh CRD and waits until each is Established.
pub async fn install_crds(c: &Client) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(c.clone());
    let params = PatchParams::apply("mesh-e2e").force();
    for crd in mesh_api::crds::all() {
        let name = crd.metadata.name.clone().context("CRD without a name")?;
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .with_context(|| format!("applying CRD {name}"))?;
        wait_for(
            &format!("CRD {name} established"),
            Duration::from_secs(15),
            || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    let crd = api.get(&name).await?;
                    let established = crd.status.and_then(|s| s.conditions).is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    });
                    Ok(established.then_some(()))
                }
            },
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names() {
        assert_eq!(
            image("http-echo"),
            format!("mesh.local/http-echo:{VERSION}")
        );
    }

    #[test]
    fn finds_last_json_line() {
        let v = last_json("noise\n{\"ok\": 1}\n{\"ok\": 2}\ntrailing\n").unwrap();
        assert_eq!(v["ok"], 2);
        assert!(last_json("nothing here").is_err());
    }

    #[test]
    fn job_pod_shape() {
        let p = job_pod("c", "mesh-client", &[], &["http", "--url", "http://x"]).unwrap();
        let spec = p.spec.unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.containers[0].args.as_ref().unwrap()[0], "http");
        assert!(spec.containers[0].command.is_none());
    }
}
