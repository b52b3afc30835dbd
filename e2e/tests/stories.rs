//! The mesh's user stories on the real cluster, in the order a new user
//! meets them: install and check; label a namespace and deploy; per-request
//! gRPC balancing over one channel (with kube-proxy as the control); mTLS
//! identities and STRICT; a canary by weight with `meshctl canary`, promote,
//! and a progressive canary that rolls itself back; a Job that completes;
//! uninstall. Each scenario prints its time and figures; the table at the
//! end goes to `target/e2e-stories.txt` (copied into docs/e2e.md).
//!
//! Uses the `meshctl` binary (`MESHCTL`, default `target/debug/meshctl`,
//! built by e2e/run) as a user would. Compiled only with `--features e2e`.
#![cfg(feature = "e2e")]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use e2e::{client, image, job_pod, last_json, pull_policy, run_pod, wait_for, TestNamespace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use serde_json::{json, Value};

/// The meshctl binary.
fn meshctl_path() -> String {
    std::env::var("MESHCTL").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/debug/meshctl").to_string()
    })
}

/// Runs meshctl; returns (exit code, stdout, stderr).
async fn meshctl(args: &[&str]) -> Result<(i32, String, String)> {
    let out = tokio::process::Command::new(meshctl_path())
        .args(args)
        .output()
        .await
        .with_context(|| {
            format!(
                "running {} (build it: cargo build -p meshctl)",
                meshctl_path()
            )
        })?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    ))
}

/// Runs meshctl and requires exit 0.
async fn meshctl_ok(args: &[&str]) -> Result<String> {
    let (code, out, err) = meshctl(args).await?;
    ensure!(
        code == 0,
        "meshctl {} exited {code}\nstdout:\n{out}\nstderr:\n{err}",
        args.join(" ")
    );
    Ok(out)
}

/// One scenario's outcome, for the table.
struct Row {
    scenario: &'static str,
    seconds: f64,
    result: Result<String>,
}

/// A Deployment `<app>-<version>` of http-echo with labels app/version.
async fn deploy_version(
    ns: &TestNamespace,
    app: &str,
    version: &str,
    replicas: i32,
    env: &[(&str, &str)],
) -> Result<()> {
    let mut envs = vec![
        json!({"name": "PORT", "value": "8080"}),
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        json!({"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}),
    ];
    envs.extend(env.iter().map(|(k, v)| json!({"name": k, "value": v})));
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": format!("{app}-{version}")},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app, "version": version}},
            "template": {
                "metadata": {"labels": {"app": app, "version": version}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "app",
                        "image": image("http-echo"),
                        "imagePullPolicy": pull_policy(),
                        "env": envs,
                        "ports": [{"containerPort": 8080, "name": "http"}],
                        "readinessProbe": {"httpGet": {"path": "/ready?fail=0", "port": 8080}, "periodSeconds": 1}
                    }]
                }
            }
        }
    }))?;
    ns.api::<Deployment>()
        .create(&PostParams::default(), &d)
        .await
        .with_context(|| format!("creating {app}-{version}"))?;
    Ok(())
}

async fn service(
    ns: &TestNamespace,
    name: &str,
    port: u16,
    target: u16,
    appname: &str,
) -> Result<()> {
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "selector": {"app": appname},
            "ports": [{"name": "http", "port": port, "targetPort": target}]
        }
    }))?;
    ns.api::<Service>()
        .create(&PostParams::default(), &svc)
        .await
        .with_context(|| format!("creating service {name}"))?;
    Ok(())
}

/// Runs mesh-client in a pod of `ns` and returns its JSON report.
async fn client_run(ns: &TestNamespace, name: &str, args: &[&str]) -> Result<Value> {
    let pod = job_pod(name, "mesh-client", &[], args)?;
    let logs = run_pod(ns, pod, Duration::from_secs(240)).await?;
    last_json(&logs)
}

/// Answers per version (pods are named `<app>-<version>-...`).
fn by_version(report: &Value, app: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (pod, n) in report["by_pod"].as_object().into_iter().flatten() {
        let v = pod
            .strip_prefix(&format!("{app}-"))
            .and_then(|r| r.split('-').next())
            .unwrap_or("?");
        *out.entry(v.to_string()).or_default() += n.as_u64().unwrap_or(0);
    }
    out
}

fn share(counts: &BTreeMap<String, u64>, key: &str) -> f64 {
    let total: u64 = counts.values().sum();
    counts.get(key).copied().unwrap_or(0) as f64 / total.max(1) as f64
}

/// Pods of `ns` selected by `selector`.
async fn pods(ns: &TestNamespace, selector: &str) -> Result<Vec<Pod>> {
    Ok(ns
        .api::<Pod>()
        .list(&ListParams::default().labels(selector))
        .await?
        .items)
}

fn names<'a>(
    containers: impl Iterator<Item = &'a k8s_openapi::api::core::v1::Container>,
) -> Vec<String> {
    containers.map(|c| c.name.clone()).collect()
}

async fn wait_ready(ns: &TestNamespace, name: &str, selector: &str) -> Result<Vec<String>> {
    e2e::wait_deployment_ready(ns, name, selector, Duration::from_secs(240)).await
}

/// Scrapes a pod's proxy metrics through the API server.
async fn proxy_metrics(c: &Client, ns: &str, pod: &str) -> Result<String> {
    let req = http::Request::get(format!(
        "/api/v1/namespaces/{ns}/pods/{pod}:15020/proxy/metrics"
    ))
    .body(Vec::new())?;
    Ok(c.request_text(req).await?)
}

// ---------------------------------------------------------------------------

async fn install(c: &Client) -> Result<String> {
    let pull = pull_policy();
    let out = meshctl_ok(&["install", &format!("--pull-policy={pull}"), "--timeout=4m"]).await?;
    // The injector answers before the first labelled namespace appears.
    let deps: Api<Deployment> = Api::namespaced(c.clone(), "mesh-system");
    for d in ["mesh-ca", "mesh-controller", "mesh-injector"] {
        ensure!(
            deps.get_opt(d).await?.is_some(),
            "{d} not installed:\n{out}"
        );
    }
    let check = meshctl_ok(&["check"]).await?;
    Ok(format!(
        "install + check: {} checks ok",
        check.lines().filter(|l| l.starts_with("[ok")).count()
    ))
}

struct Apps {
    mesh: TestNamespace,
    plain: TestNamespace,
}

async fn deploy_apps(c: &Client) -> Result<(Apps, String)> {
    let mesh = TestNamespace::new(c, "stories", &[("mesh-injection", "enabled")]).await?;
    let plain = TestNamespace::new(c, "plain", &[]).await?;
    for ns in [&mesh, &plain] {
        e2e::deploy_echo(ns, "grpc", "grpc-echo", 9090, 9090, 3).await?;
        e2e::deploy_echo(ns, "web", "http-echo", 8080, 80, 3).await?;
    }
    // Injected: init container first, then the proxy as a native sidecar;
    // the init container (iptables) ran to completion.
    for p in pods(&mesh, "app=web").await? {
        let spec = p.spec.clone().unwrap_or_default();
        let inits = names(spec.init_containers.iter().flatten());
        ensure!(
            inits == ["mesh-init", "mesh-proxy"],
            "init containers {inits:?}"
        );
        let sidecar = spec.init_containers.iter().flatten().nth(1);
        ensure!(
            sidecar.and_then(|c| c.restart_policy.as_deref()) == Some("Always"),
            "the proxy is not a native sidecar"
        );
        let init_ok = p
            .status
            .as_ref()
            .and_then(|s| s.init_container_statuses.as_ref())
            .and_then(|st| st.iter().find(|s| s.name == "mesh-init"))
            .and_then(|s| s.state.as_ref()?.terminated.as_ref())
            .is_some_and(|t| t.exit_code == 0);
        ensure!(init_ok, "mesh-init did not exit 0");
    }
    // Not injected without the label.
    for p in pods(&plain, "app=web").await? {
        let spec = p.spec.unwrap_or_default();
        ensure!(
            spec.init_containers.is_none() && names(spec.containers.iter()) == ["app"],
            "pod in an unlabelled namespace was injected"
        );
    }
    // Every proxy SYNCED (proxy-status exits 0 only then).
    let ns = mesh.name.clone();
    let status = wait_for("proxy-status all SYNCED", Duration::from_secs(60), || {
        let ns = ns.clone();
        async move {
            let (code, out, _) = meshctl(&["proxy-status", "-n", &ns, "-o", "json"]).await?;
            Ok((code == 0).then_some(out))
        }
    })
    .await?;
    let rows: Vec<Value> = serde_json::from_str(&status)?;
    ensure!(rows.len() == 6, "6 proxies expected: {status}");
    Ok((
        Apps { mesh, plain },
        "6 pods injected (native sidecar), Ready, 6/6 SYNCED; unlabelled namespace untouched"
            .into(),
    ))
}

async fn grpc_balancing(apps: &Apps) -> Result<String> {
    let args = [
        "grpc",
        "--url",
        "http://grpc:9090",
        "-n",
        "3000",
        "--concurrency",
        "8",
        "--wait-ready",
        "60",
    ];
    let meshed = client_run(&apps.mesh, "grpc-client", &args).await?;
    ensure!(meshed["failed"] == 0, "failures: {meshed}");
    ensure!(meshed["connections"] == 1, "one channel: {meshed}");
    let counts: Vec<u64> = meshed["by_pod"]
        .as_object()
        .context("by_pod")?
        .values()
        .filter_map(Value::as_u64)
        .collect();
    ensure!(counts.len() == 3, "3 pods answer: {meshed}");
    for n in &counts {
        let s = *n as f64 / 3000.0;
        ensure!((0.26..=0.40).contains(&s), "each pod 33% ± 7%: {counts:?}");
    }
    let control = client_run(&apps.plain, "grpc-client", &args).await?;
    let top = control["by_pod"]
        .as_object()
        .context("by_pod")?
        .values()
        .filter_map(Value::as_u64)
        .max()
        .unwrap_or(0);
    ensure!(
        top as f64 / 3000.0 >= 0.95,
        "without the mesh one channel sticks to one pod: {control}"
    );
    Ok(format!(
        "meshed: {counts:?} of 3000 over one channel; kube-proxy alone: {top}/3000 on one pod"
    ))
}

async fn mtls(c: &Client, apps: &Apps) -> Result<String> {
    let mesh = &apps.mesh.name;
    // PERMISSIVE: plain clients still get in (control).
    let url = format!("http://web.{mesh}:80/");
    let plain_args = [
        "http",
        "--url",
        url.as_str(),
        "-n",
        "50",
        "--wait-ready",
        "30",
    ];
    let before = client_run(&apps.plain, "plain-before", &plain_args).await?;
    ensure!(
        before["ok"] == 50,
        "PERMISSIVE lets plain text in: {before}"
    );
    // A meshed client: the server proxies see its SPIFFE identity.
    let r = client_run(
        &apps.mesh,
        "http-client",
        &[
            "http",
            "--url",
            "http://web:80/",
            "-n",
            "300",
            "--wait-ready",
            "30",
        ],
    )
    .await?;
    ensure!(r["failed"] == 0, "{r}");
    let mut identified = 0.0;
    for p in pods(&apps.mesh, "app=web").await? {
        let name = p.metadata.name.unwrap_or_default();
        let text = proxy_metrics(c, mesh, &name).await?;
        for l in text.lines() {
            if l.starts_with("mesh_requests_total{")
                && l.contains("direction=\"inbound\"")
                && l.contains(&format!("source_namespace=\"{mesh}\""))
                && l.contains("source_workload=\"default\"")
            {
                identified += l
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0);
            }
        }
    }
    ensure!(
        identified >= 300.0,
        "inbound requests with the caller's identity: {identified}"
    );
    // STRICT: plain text is refused.
    let pa = json!({
        "apiVersion": "security.mesh.dev/v1", "kind": "PeerAuthentication",
        "metadata": {"name": "strict", "namespace": mesh},
        "spec": {"mtls": {"mode": "STRICT"}}
    });
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        c.clone(),
        mesh,
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("security.mesh.dev", "v1", "PeerAuthentication"),
            "peerauthentications",
        ),
    );
    api.create(&PostParams::default(), &serde_json::from_value(pa)?)
        .await?;
    let refused = wait_for("STRICT in effect", Duration::from_secs(60), || async {
        let r = client_run(
            &apps.plain,
            &format!("plain-after-{}", rand::random::<u16>()),
            &["http", "--url", url.as_str(), "-n", "20", "--timeout", "2"],
        )
        .await?;
        Ok((r["ok"] == 0).then_some(r))
    })
    .await?;
    // Meshed clients still work under STRICT.
    let after = client_run(
        &apps.mesh,
        "http-client-strict",
        &["http", "--url", "http://web:80/", "-n", "100"],
    )
    .await?;
    ensure!(after["failed"] == 0, "meshed under STRICT: {after}");
    Ok(format!(
        "server proxies saw {identified} requests from spiffe://cluster.local/ns/{mesh}/sa/default; STRICT: plain client {} of 20 refused, meshed 100/100 ok",
        refused["failed"]
    ))
}

async fn canary(apps: &Apps) -> Result<String> {
    let ns = &apps.mesh;
    for v in ["v1", "v2"] {
        deploy_version(ns, "reviews", v, 2, &[]).await?;
    }
    deploy_version(ns, "reviews", "v3", 2, &[("FAIL_RATE", "1.0")]).await?;
    service(ns, "reviews", 80, 8080, "reviews").await?;
    for v in ["v1", "v2", "v3"] {
        wait_ready(
            ns,
            &format!("reviews-{v}"),
            &format!("app=reviews,version={v}"),
        )
        .await?;
    }
    let n = ns.name.as_str();
    meshctl_ok(&[
        "canary", "start", "reviews", "-n", n, "--stable", "v1", "--canary", "v2", "--weight",
        "10", "-o", "json",
    ])
    .await?;
    let split = wait_for("10% canary in effect", Duration::from_secs(60), || async {
        let r = client_run(
            ns,
            &format!("canary-{}", rand::random::<u16>()),
            &[
                "http",
                "--url",
                "http://reviews:80/",
                "-n",
                "2000",
                "--concurrency",
                "8",
                "--wait-ready",
                "30",
            ],
        )
        .await?;
        let counts = by_version(&r, "reviews");
        let s = share(&counts, "v2");
        Ok(
            (!counts.contains_key("v3") && (0.07..=0.13).contains(&s) && r["failed"] == 0)
                .then_some(s),
        )
    })
    .await?;
    meshctl_ok(&["canary", "promote", "reviews", "-n", n, "-o", "json"]).await?;
    let promoted = wait_for("promotion in effect", Duration::from_secs(60), || async {
        let r = client_run(
            ns,
            &format!("promoted-{}", rand::random::<u16>()),
            &["http", "--url", "http://reviews:80/", "-n", "200"],
        )
        .await?;
        let counts = by_version(&r, "reviews");
        Ok((share(&counts, "v2") == 1.0).then_some(counts))
    })
    .await?;
    // Progressive: v3 fails every request; meshctl must roll it back by itself.
    let load = job_pod(
        "load",
        "mesh-client",
        &[],
        &[
            "http",
            "--url",
            "http://reviews:80/",
            "-n",
            "100000",
            "--rate",
            "40",
            "--duration",
            "150",
            "--wait-ready",
            "30",
        ],
    )?;
    ns.api::<Pod>()
        .create(&PostParams::default(), &load)
        .await?;
    let t = Instant::now();
    let (code, out, err) = meshctl(&[
        "canary",
        "start",
        "reviews",
        "-n",
        n,
        "--stable",
        "v2",
        "--canary",
        "v3",
        "--step",
        "20",
        "--interval",
        "15s",
        "--min-requests",
        "20",
        "--min-success-rate",
        "99",
        "--max-p99",
        "500ms",
        "-o",
        "json",
    ])
    .await?;
    ensure!(
        code == 1,
        "a failing canary must end with exit 1, got {code}\n{out}\n{err}"
    );
    let status = meshctl_ok(&[
        "canary",
        "status",
        "reviews",
        "-n",
        n,
        "--no-metrics",
        "-o",
        "json",
    ])
    .await?;
    let s: Value = serde_json::from_str(&status)?;
    ensure!(
        s.to_string().contains("rolled-back"),
        "phase rolled-back expected: {status}"
    );
    let after = client_run(
        ns,
        "after-rollback",
        &["http", "--url", "http://reviews:80/", "-n", "200"],
    )
    .await?;
    let counts = by_version(&after, "reviews");
    ensure!(
        share(&counts, "v2") == 1.0 && after["failed"] == 0,
        "all traffic back on v2: {after}"
    );
    Ok(format!(
        "10% canary: {:.1}% to v2 over 2000; promote: {promoted:?}; progressive v3 rolled back after {:.0} s, then 200/200 on v2",
        split * 100.0,
        t.elapsed().as_secs_f64()
    ))
}

async fn job_completes(apps: &Apps) -> Result<String> {
    let r = client_run(
        &apps.mesh,
        "job-like",
        &[
            "http",
            "--url",
            "http://web:80/",
            "-n",
            "20",
            "--wait-ready",
            "30",
        ],
    )
    .await?;
    ensure!(r["ok"] == 20, "{r}");
    Ok("a run-to-completion pod with the native sidecar Succeeded (20/20 requests)".into())
}

async fn uninstall(c: &Client) -> Result<String> {
    meshctl_ok(&["uninstall", "--yes", "--timeout=4m"]).await?;
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    let left: Vec<String> = crds
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .filter(|n| n.ends_with(".mesh.dev"))
        .collect();
    ensure!(left.is_empty(), "mesh CRDs left: {left:?}");
    let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.clone());
    ensure!(
        ns.get_opt("mesh-system").await?.is_none(),
        "mesh-system left"
    );
    Ok("no mesh CRD, webhook or mesh-system left".into())
}

#[tokio::test]
async fn mesh_user_stories() -> Result<()> {
    let c = client().await?;
    let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.clone());
    if ns.get_opt("mesh-system").await?.is_some() {
        bail!("mesh-system exists: run the stories on a cluster without the mesh");
    }
    let crds_before = Api::<CustomResourceDefinition>::all(c.clone())
        .get_opt("virtualservices.networking.mesh.dev")
        .await?
        .is_some();
    let mut rows: Vec<Row> = Vec::new();
    macro_rules! scenario {
        ($name:expr, $body:expr) => {{
            let t = Instant::now();
            eprintln!("[stories] {} ...", $name);
            let result = $body.await;
            let seconds = t.elapsed().as_secs_f64();
            match &result {
                Ok(s) => eprintln!("[stories] {}: ok in {seconds:.0} s: {s}", $name),
                Err(e) => eprintln!("[stories] {}: FAILED in {seconds:.0} s: {e:#}", $name),
            }
            rows.push(Row {
                scenario: $name,
                seconds,
                result,
            });
        }};
    }
    scenario!("1. install, check", install(&c));
    let deployed = if rows[0].result.is_ok() {
        let t = Instant::now();
        let r = deploy_apps(&c).await;
        let seconds = t.elapsed().as_secs_f64();
        match r {
            Ok((apps, s)) => {
                rows.push(Row {
                    scenario: "2. label, deploy, injected, SYNCED",
                    seconds,
                    result: Ok(s),
                });
                Some(apps)
            }
            Err(e) => {
                rows.push(Row {
                    scenario: "2. label, deploy, injected, SYNCED",
                    seconds,
                    result: Err(e),
                });
                None
            }
        }
    } else {
        None
    };
    if let Some(apps) = &deployed {
        scenario!("3. gRPC per-request balancing", grpc_balancing(apps));
        scenario!(
            "10. run-to-completion pod with the sidecar",
            job_completes(apps)
        );
        scenario!("6. canary 10%, promote, progressive rollback", canary(apps));
        scenario!("4. mTLS identity, STRICT", mtls(&c, apps));
    }
    drop(deployed);
    scenario!("11. uninstall", uninstall(&c));
    if crds_before {
        e2e::install_crds(&c).await?;
    }

    let mut table =
        String::from("| scenario | result | time | figures |\n| --- | --- | --- | --- |\n");
    for r in &rows {
        let (ok, text) = match &r.result {
            Ok(s) => ("pass", s.clone()),
            Err(e) => (
                "FAIL",
                format!("{e:#}").lines().next().unwrap_or("").to_string(),
            ),
        };
        table += &format!(
            "| {} | {ok} | {:.0} s | {} |\n",
            r.scenario,
            r.seconds,
            text.replace('|', "/")
        );
    }
    eprintln!("{table}");
    let _ = std::fs::write(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/e2e-stories.md"),
        &table,
    );
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| r.result.is_err())
        .map(|r| r.scenario)
        .collect();
    ensure!(failed.is_empty(), "failed scenarios: {failed:?}");
    Ok(())
}
