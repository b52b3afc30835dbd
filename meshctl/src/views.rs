//! The operator's views: `proxy-status` (is every proxy in sync with the
//! controller?), `proxy-config` (what a proxy runs) and `version` (client
//! and control plane).
//!
//! All of them read the controller's admin endpoint (port 15014:
//! `/debug/syncz`, `/debug/config_dump`) through the API server's pod
//! proxy, so they need nothing but the kubeconfig: no port-forward, no
//! network path to the pods.

use std::collections::BTreeMap;
use std::io::Write as _;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use serde::{Deserialize, Serialize};

use crate::cluster::ClusterArgs;
use crate::install::{CommandError, OutputFormat};

/// Namespace of the control plane.
const NAMESPACE: &str = mesh_api::INSTALL_NAMESPACE;
/// The controller pods' label.
const CONTROLLER_SELECTOR: &str = "app.kubernetes.io/name=mesh-controller";
/// The controller's admin port.
const ADMIN_PORT: u16 = 15014;
/// The container the injector adds.
const PROXY_CONTAINER: &str = "mesh-proxy";

/// One proxy's sync state, as the controller's `/debug/syncz` reports it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct SyncEntry {
    pub pod: String,
    pub namespace: String,
    pub identity: String,
    pub proxy_version: String,
    pub sent: String,
    pub acked: String,
    pub nacked: Option<(String, String)>,
    pub services: usize,
    pub status: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct SyncReport {
    latest_snapshot: u64,
    proxies: Vec<SyncEntry>,
}

/// One row of `meshctl proxy-status`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatusRow {
    pub pod: String,
    pub namespace: String,
    /// Controller pod the proxy streams from ("" when not connected).
    pub controller: String,
    pub proxy_version: String,
    pub controller_version: String,
    /// SYNCED, STALE, NACK, or NOT CONNECTED.
    pub status: String,
    /// The proxy's NACK reason, if any.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub services: usize,
}

/// Settings of `meshctl proxy-status`.
#[derive(Debug, clap::Args)]
pub struct ProxyStatusArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Only proxies in this namespace (default: every namespace).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Help of `meshctl proxy-status`.
pub const PROXY_STATUS_ABOUT: &str = "Show whether every proxy has the controller's latest config";
/// Long help of `meshctl proxy-status`.
pub const PROXY_STATUS_LONG_ABOUT: &str = "\
Show every proxy the controllers know and every pod that runs the proxy, with its sync state:

  SYNCED         the proxy ACKed the latest config the controller has for it
  STALE          a newer config was sent and is not ACKed yet (or not sent yet)
  NACK           the proxy refused the last config (REASON says why); it keeps its previous one
  NOT CONNECTED  the pod runs the proxy but no controller has a stream from it

Exits 1 when any proxy is not SYNCED, so scripts can wait on it.

Examples:
  meshctl proxy-status
  meshctl proxy-status -n shop -o json";

/// Settings of `meshctl proxy-config`.
#[derive(Debug, clap::Args)]
pub struct ProxyConfigArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The pod whose proxy config to show.
    pub pod: String,
    /// Namespace of the pod.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Output format: table (a summary of services, routes and policy),
    /// json or yaml (the whole config).
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Help of `meshctl proxy-config`.
pub const PROXY_CONFIG_ABOUT: &str = "Show the config a pod's proxy runs";
/// Long help of `meshctl proxy-config`.
pub const PROXY_CONFIG_LONG_ABOUT: &str = "\
Show the config the controller computes for a pod's proxy: the services it may reach (with \
their endpoints, routes and destination policy), its inbound policy (mTLS mode and \
authorization) and, for gateways, its listeners. When `meshctl proxy-status` says SYNCED, \
the proxy runs exactly this config.

Examples:
  meshctl proxy-config web-7d9f8-abcde -n shop
  meshctl proxy-config web-7d9f8-abcde -n shop -o json";

/// Settings of `meshctl version`.
#[derive(Debug, clap::Args)]
pub struct VersionArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Only the client's version (no cluster needed).
    #[arg(long)]
    pub client: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Help of `meshctl version`.
pub const VERSION_ABOUT: &str = "Show the versions of meshctl and of the control plane";

async fn controller_pods(client: &Client) -> Result<Vec<Pod>, CommandError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let list = pods
        .list(&ListParams::default().labels(CONTROLLER_SELECTOR))
        .await
        .context("listing the controller pods")?;
    let running: Vec<Pod> = list
        .items
        .into_iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .collect();
    if running.is_empty() {
        return Err(CommandError::Failed(anyhow::anyhow!(
            "no running mesh-controller pod in {NAMESPACE} (is the mesh installed? try `meshctl check`)"
        )));
    }
    Ok(running)
}

/// GET `path` on a pod's port through the API server.
async fn pod_get(
    client: &Client,
    ns: &str,
    pod: &str,
    port: u16,
    path: &str,
) -> anyhow::Result<String> {
    let url = format!("/api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy{path}");
    let req = http::Request::get(&url)
        .body(Vec::new())
        .context("building the request")?;
    client
        .request_text(req)
        .await
        .with_context(|| format!("GET {path} on {ns}/{pod}:{port}"))
}

fn pod_name(p: &Pod) -> String {
    p.metadata.name.clone().unwrap_or_default()
}

fn image_version(p: &Pod, container: &str) -> String {
    p.spec
        .iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .find(|c| c.name == container)
        .and_then(|c| c.image.as_deref())
        .and_then(|i| i.rsplit_once(':').map(|(_, t)| t.to_string()))
        .unwrap_or_default()
}

/// Whether the pod runs the proxy (as a container or native sidecar).
pub fn runs_proxy(p: &Pod) -> bool {
    p.spec.as_ref().is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(|c| c.name == PROXY_CONTAINER)
    })
}

/// Joins the controllers' reports with the pods that run the proxy.
pub fn status_rows(
    reports: &[(String, String, Vec<SyncEntry>)],
    proxied_pods: &[(String, String)],
) -> Vec<ProxyStatusRow> {
    let mut rows: BTreeMap<(String, String), ProxyStatusRow> = BTreeMap::new();
    for (controller, controller_version, entries) in reports {
        for e in entries {
            let status = match e.status.as_str() {
                "SYNCED" => "SYNCED",
                "NACKED" => "NACK",
                _ => "STALE",
            };
            rows.insert(
                (e.namespace.clone(), e.pod.clone()),
                ProxyStatusRow {
                    pod: e.pod.clone(),
                    namespace: e.namespace.clone(),
                    controller: controller.clone(),
                    proxy_version: e.proxy_version.clone(),
                    controller_version: controller_version.clone(),
                    status: status.into(),
                    reason: match (&e.nacked, status) {
                        (Some((_, r)), "NACK") => r.clone(),
                        _ => String::new(),
                    },
                    services: e.services,
                },
            );
        }
    }
    for (ns, pod) in proxied_pods {
        rows.entry((ns.clone(), pod.clone()))
            .or_insert_with(|| ProxyStatusRow {
                pod: pod.clone(),
                namespace: ns.clone(),
                controller: String::new(),
                proxy_version: String::new(),
                controller_version: String::new(),
                status: "NOT CONNECTED".into(),
                reason: String::new(),
                services: 0,
            });
    }
    rows.into_values().collect()
}

/// Renders rows as an aligned table.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("   ");
        s.truncate(s.trim_end().len());
        s + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out += &line(r.iter().map(String::as_str).collect());
    }
    out
}

fn print(s: &str) {
    let _ = std::io::stdout().write_all(s.as_bytes());
}

fn structured<T: Serialize>(value: &T, format: OutputFormat) -> anyhow::Result<String> {
    Ok(match format {
        OutputFormat::Json => serde_json::to_string_pretty(value)? + "\n",
        _ => serde_yaml::to_string(value)?,
    })
}

/// Every proxy's sync state: the controllers' reports joined with the pods
/// that run the proxy (in `namespace`, or everywhere).
pub async fn sync_rows(
    client: &Client,
    namespace: Option<&str>,
) -> Result<Vec<ProxyStatusRow>, CommandError> {
    let mut reports = Vec::new();
    for c in controller_pods(client).await? {
        let name = pod_name(&c);
        let text = pod_get(client, NAMESPACE, &name, ADMIN_PORT, "/debug/syncz").await?;
        let report: SyncReport = serde_json::from_str(&text).with_context(|| {
            format!("the /debug/syncz answer of {name} is not what meshctl expects")
        })?;
        let _ = report.latest_snapshot;
        reports.push((name, image_version(&c, "mesh-controller"), report.proxies));
    }
    let pods: Api<Pod> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let proxied: Vec<(String, String)> = pods
        .list(&ListParams::default())
        .await
        .context("listing pods")?
        .items
        .iter()
        .filter(|p| runs_proxy(p))
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .map(|p| {
            (
                p.metadata.namespace.clone().unwrap_or_default(),
                pod_name(p),
            )
        })
        .collect();
    let mut rows = status_rows(&reports, &proxied);
    if let Some(ns) = namespace {
        rows.retain(|r| r.namespace == ns);
    }
    Ok(rows)
}

/// `meshctl proxy-status`.
pub async fn run_proxy_status(args: ProxyStatusArgs) -> Result<(), CommandError> {
    let client = args.cluster.connect().await?;
    let rows = sync_rows(&client, args.namespace.as_deref()).await?;
    match args.output {
        OutputFormat::Table => {
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        format!("{}.{}", r.pod, r.namespace),
                        r.controller.clone(),
                        if r.proxy_version.is_empty() {
                            "-".into()
                        } else {
                            format!("{} / {}", r.proxy_version, r.controller_version)
                        },
                        r.status.clone(),
                        r.services.to_string(),
                        r.reason.clone(),
                    ]
                })
                .collect();
            print(&table(
                &[
                    "NAME",
                    "CONTROLLER",
                    "VERSION (PROXY / CONTROLLER)",
                    "STATUS",
                    "SERVICES",
                    "REASON",
                ],
                &cells,
            ));
        }
        f => print(&structured(&rows, f)?),
    }
    let behind = rows.iter().filter(|r| r.status != "SYNCED").count();
    if behind > 0 {
        return Err(CommandError::Refused(format!(
            "{behind} of {} proxies are not SYNCED",
            rows.len()
        )));
    }
    Ok(())
}

/// A readable summary of a proxy config (the `ProxyConfig` JSON).
pub fn summarize(config: &serde_json::Value) -> String {
    use serde_json::Value;
    let empty = Vec::new();
    let arr = |v: &Value| v.as_array().unwrap_or(&empty).clone();
    let mut out = String::new();
    out += &format!("version: {}\n", config["version"].as_str().unwrap_or("-"));
    let rows: Vec<Vec<String>> = arr(&config["services"])
        .iter()
        .map(|s| {
            let ports = arr(&s["ports"])
                .iter()
                .map(|p| {
                    format!(
                        "{}/{}",
                        p["port"].as_u64().unwrap_or(0),
                        p["protocol"].as_str().unwrap_or("detect")
                    )
                })
                .collect::<Vec<_>>()
                .join(",");
            let eps = arr(&s["endpoints"]);
            let meshed = eps.iter().filter(|e| e["identity"].is_string()).count();
            let routes = arr(&s["httpRoutes"])
                .iter()
                .map(|r| r["name"].as_str().unwrap_or("-").to_string())
                .collect::<Vec<_>>()
                .join(",");
            vec![
                s["name"].as_str().unwrap_or("-").to_string(),
                ports,
                format!("{} ({meshed} meshed)", eps.len()),
                if routes.is_empty() {
                    "default".into()
                } else {
                    routes
                },
                s["policy"]["loadBalancer"]["kind"]
                    .as_str()
                    .unwrap_or("P2C_EWMA")
                    .to_string(),
            ]
        })
        .collect();
    out += "\nSERVICES\n";
    out += &table(&["NAME", "PORTS", "ENDPOINTS", "ROUTES", "BALANCER"], &rows);
    let inbound = &config["inbound"];
    out += &format!(
        "\nINBOUND\nmTLS mode: {}\n",
        inbound["mode"].as_str().unwrap_or("PERMISSIVE")
    );
    let policies: Vec<Vec<String>> = arr(&inbound["authorization"])
        .iter()
        .map(|p| {
            vec![
                p["name"].as_str().unwrap_or("-").to_string(),
                p["action"].as_str().unwrap_or("ALLOW").to_string(),
                arr(&p["rules"]).len().to_string(),
            ]
        })
        .collect();
    if !policies.is_empty() {
        out += &table(&["AUTHORIZATION POLICY", "ACTION", "RULES"], &policies);
    }
    let listeners: Vec<Vec<String>> = arr(&config["gatewayListeners"])
        .iter()
        .map(|l| {
            vec![
                l["port"].as_u64().unwrap_or(0).to_string(),
                if l["credentialName"].is_string() || l["tlsCertPem"].is_string() {
                    "HTTPS".into()
                } else {
                    "HTTP".into()
                },
                arr(&l["virtualHosts"])
                    .iter()
                    .flat_map(|v| arr(&v["hosts"]))
                    .filter_map(|h| h.as_str().map(str::to_string))
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
        .collect();
    if !listeners.is_empty() {
        out += "\nGATEWAY LISTENERS\n";
        out += &table(&["PORT", "PROTOCOL", "HOSTS"], &listeners);
    }
    out
}

/// `meshctl proxy-config POD`.
pub async fn run_proxy_config(args: ProxyConfigArgs) -> Result<(), CommandError> {
    let client = args.cluster.connect().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &args.namespace);
    let pod = pods.get_opt(&args.pod).await.context("reading the pod")?;
    match pod {
        None => {
            return Err(CommandError::Failed(anyhow::anyhow!(
                "pod {}/{} not found",
                args.namespace,
                args.pod
            )))
        }
        Some(p) if !runs_proxy(&p) => {
            return Err(CommandError::Failed(anyhow::anyhow!(
                "pod {}/{} does not run the mesh proxy (not injected)",
                args.namespace,
                args.pod
            )))
        }
        Some(_) => {}
    }
    let controller = controller_pods(&client).await?.remove(0);
    let path = format!(
        "/debug/config_dump?namespace={}&pod={}",
        args.namespace, args.pod
    );
    let text = pod_get(
        &client,
        NAMESPACE,
        &pod_name(&controller),
        ADMIN_PORT,
        &path,
    )
    .await?;
    let config: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("the controller's config dump is not JSON: {text}"))?;
    match args.output {
        OutputFormat::Table => print(&summarize(&config)),
        f => print(&structured(&config, f)?),
    }
    Ok(())
}

/// `meshctl version`.
pub async fn run_version(args: VersionArgs) -> Result<(), CommandError> {
    let client_version = env!("CARGO_PKG_VERSION");
    let mut report = BTreeMap::from([("client".to_string(), client_version.to_string())]);
    if !args.client {
        let client = args.cluster.connect().await?;
        let pods: Api<Pod> = Api::namespaced(client, NAMESPACE);
        let list = pods
            .list(&ListParams::default().labels("app.kubernetes.io/part-of=mesh"))
            .await
            .context("listing the control plane pods")?;
        for p in &list.items {
            let Some(component) = p
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app.kubernetes.io/name"))
            else {
                continue;
            };
            let v = image_version(p, component);
            if !v.is_empty() {
                report.insert(component.clone(), v);
            }
        }
        if report.len() == 1 {
            report.insert("control-plane".into(), "not installed".into());
        }
    }
    match args.output {
        OutputFormat::Table => {
            let rows: Vec<Vec<String>> = report
                .iter()
                .map(|(k, v)| vec![k.clone(), v.clone()])
                .collect();
            print(&table(&["COMPONENT", "VERSION"], &rows));
        }
        f => print(&structured(&report, f)?),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pod: &str, status: &str, sent: &str, acked: &str, nack: Option<&str>) -> SyncEntry {
        SyncEntry {
            pod: pod.into(),
            namespace: "shop".into(),
            proxy_version: "0.1.0".into(),
            sent: sent.into(),
            acked: acked.into(),
            nacked: nack.map(|r| (sent.to_string(), r.to_string())),
            services: 3,
            status: status.into(),
            ..Default::default()
        }
    }

    #[test]
    fn rows_join_controllers_and_pods() {
        let reports = vec![(
            "mesh-controller-0".to_string(),
            "0.1.0".to_string(),
            vec![
                entry("a", "SYNCED", "v2", "v2", None),
                entry("b", "STALE", "v3", "v2", None),
                entry("c", "NACKED", "v3", "v2", Some("services[0]: bad")),
            ],
        )];
        let pods = vec![
            ("shop".to_string(), "a".to_string()),
            ("shop".to_string(), "d".to_string()),
        ];
        let rows = status_rows(&reports, &pods);
        let got: Vec<(&str, &str, &str)> = rows
            .iter()
            .map(|r| (r.pod.as_str(), r.status.as_str(), r.reason.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", "SYNCED", ""),
                ("b", "STALE", ""),
                ("c", "NACK", "services[0]: bad"),
                ("d", "NOT CONNECTED", ""),
            ]
        );
    }

    #[test]
    fn tables_are_aligned() {
        let t = table(
            &["NAME", "STATUS"],
            &[
                vec!["a-long-name".into(), "SYNCED".into()],
                vec!["b".into(), "".into()],
            ],
        );
        assert_eq!(t, "NAME          STATUS\na-long-name   SYNCED\nb\n");
    }

    #[test]
    fn config_summary_names_services_routes_and_policy() {
        let config = serde_json::json!({
            "version": "7-abc",
            "services": [{
                "name": "web.shop.svc.cluster.local",
                "ports": [{"port": 80, "protocol": "HTTP1"}],
                "endpoints": [{"address": "10.0.0.1", "identity": "spiffe://x"}, {"address": "10.0.0.2"}],
                "httpRoutes": [{"name": "canary"}, {"name": "default"}]
            }],
            "inbound": {"mode": "STRICT", "authorization": [{"name": "shop/deny", "action": "DENY", "rules": [{}]}]},
            "gatewayListeners": [{"port": 8443, "credentialName": "c", "virtualHosts": [{"hosts": ["shop.example.com"]}]}]
        });
        let s = summarize(&config);
        assert!(s.contains("version: 7-abc"), "{s}");
        assert!(
            s.contains(
                "web.shop.svc.cluster.local   80/HTTP1   2 (1 meshed)   canary,default   P2C_EWMA"
            ),
            "{s}"
        );
        assert!(s.contains("mTLS mode: STRICT"), "{s}");
        assert!(s.contains("shop/deny"), "{s}");
        assert!(s.contains("8443   HTTPS      shop.example.com"), "{s}");
    }
}
