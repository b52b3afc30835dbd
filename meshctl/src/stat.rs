//! `meshctl stat`: the golden metrics of meshed workloads (success rate,
//! requests per second, p50/p99 latency) from what their proxies served,
//! over a short window (two scrapes of every pod's proxy through the API
//! server, see [`crate::scrape`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, ResourceExt};
use serde::Serialize;

use crate::route::output::{self, Output, Paint, Table};
use crate::route::render::Target;
use crate::route::{store, CommonArgs, TrafficError, AFTER_LONG_HELP};
use crate::scrape::{self, Stats};

/// Help text of `meshctl stat`.
pub const ABOUT: &str = "Success rate, requests per second and latency of meshed workloads";
/// Long help of `meshctl stat`.
pub const LONG_ABOUT: &str = "\
Show, per workload (Deployment, StatefulSet, ... owning the pods) or per pod (--pods), the \
requests its proxies served during --window: count, success rate (non-5xx / all), requests \
per second, and p50/p99 latency interpolated from the proxies' histograms. meshctl scrapes \
every running meshed pod's proxy (port 15020, through the API server's pod proxy) at the \
start and the end of the window; a pod that restarted counts from zero, a pod that appeared \
during the window is left out of it. --window 0s: one scrape, figures since the pods \
started (no RPS).

TARGET is deploy/NAME, svc/NAME (the pods the Service selects) or nothing (every meshed pod \
of the namespace, or of all with -A).

Examples:
  meshctl stat -n shop
  meshctl stat deploy/reviews-v2 --window 30s
  meshctl stat svc/reviews --pods -o json
  meshctl stat -A --window 0s";

/// `meshctl stat` flags.
#[derive(Debug, Clone, clap::Args)]
#[command(after_long_help = AFTER_LONG_HELP)]
pub struct StatArgs {
    /// deploy/NAME, svc/NAME, or nothing for the whole namespace.
    #[arg(value_name = "TARGET", value_parser = parse_target)]
    pub target: Option<StatTarget>,
    /// All namespaces (no TARGET).
    #[arg(short = 'A', long, conflicts_with_all = ["namespace", "target"])]
    pub all_namespaces: bool,
    /// How long to measure (0s: since the pods started).
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    pub window: Duration,
    /// One row per pod instead of per workload.
    #[arg(long)]
    pub pods: bool,
    /// Namespace, cluster and output flags.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// What `stat` looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatTarget {
    /// The pods of a Deployment.
    Deployment(String),
    /// The pods a Service selects.
    Service(String),
}

fn parse_target(s: &str) -> Result<StatTarget, String> {
    let (kind, name) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: use deploy/NAME or svc/NAME"))?;
    if name.is_empty() {
        return Err(format!("{s:?}: the name is missing"));
    }
    match kind {
        "deploy" | "deployment" | "deployments" => Ok(StatTarget::Deployment(name.into())),
        "svc" | "service" | "services" => Ok(StatTarget::Service(name.into())),
        other => Err(format!(
            "{other:?} is not a kind stat knows: use deploy/NAME or svc/NAME"
        )),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    mesh_api::parse_duration(s).map_err(|e| e.to_string())
}

/// One row of `meshctl stat`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatRow {
    /// Namespace.
    pub namespace: String,
    /// Workload (or pod, with --pods).
    pub workload: String,
    /// Pods scraped.
    pub pods: usize,
    /// Pods that could not be scraped.
    pub unreachable_pods: usize,
    /// The figures.
    #[serde(flatten)]
    pub stats: Stats,
}

/// The workload a pod belongs to: its controller's name, a ReplicaSet's
/// pod-template hash removed (so Deployment pods group by Deployment).
pub fn workload_of(pod: &Pod) -> String {
    let owner = pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .cloned();
    match owner {
        Some(o) if o.kind == "ReplicaSet" => {
            let hash = pod.labels().get("pod-template-hash");
            match (hash, o.name.rsplit_once('-')) {
                (Some(h), Some((base, suffix))) if suffix == h => base.to_string(),
                _ => o.name,
            }
        }
        Some(o) => o.name,
        None => pod.name_any(),
    }
}

/// Groups per-pod deltas into rows.
pub fn rows(
    pods: &[Pod],
    delta: &[(String, scrape::Sample)],
    errors: &BTreeMap<String, String>,
    window: Option<Duration>,
    per_pod: bool,
) -> Vec<StatRow> {
    let mut groups: BTreeMap<(String, String), (BTreeSet<String>, usize)> = BTreeMap::new();
    for p in pods {
        let ns = p.namespace().unwrap_or_default();
        let key = format!("{ns}/{}", p.name_any());
        let group = if per_pod {
            p.name_any()
        } else {
            workload_of(p)
        };
        let g = groups.entry((ns, group)).or_default();
        if errors.contains_key(&key) {
            g.1 += 1;
        } else {
            g.0.insert(key);
        }
    }
    groups
        .into_iter()
        .map(|((namespace, workload), (keys, unreachable))| StatRow {
            namespace,
            workload,
            pods: keys.len(),
            unreachable_pods: unreachable,
            stats: Stats::of(
                delta
                    .iter()
                    .filter(|(pod, _)| keys.contains(pod))
                    .map(|(_, s)| s),
                window,
            ),
        })
        .collect()
}

/// Runs `meshctl stat`.
pub async fn run(a: StatArgs) -> Result<(), TrafficError> {
    let (client, namespace) = a.common.connect().await?;
    let ns = (!a.all_namespaces).then_some(namespace.as_str());
    let selector: BTreeMap<String, String> = match &a.target {
        None => BTreeMap::new(),
        Some(StatTarget::Service(name)) => {
            let t = Target {
                namespace: namespace.clone(),
                service: name.clone(),
            };
            let svc = store::require_service(&client, &t).await?;
            svc.spec
                .and_then(|s| s.selector)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    TrafficError::Failed(format!("Service {namespace}/{name} has no pod selector"))
                })?
        }
        Some(StatTarget::Deployment(name)) => {
            let api: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
            let d = api
                .get_opt(name)
                .await
                .map_err(|e| {
                    store::api_error("reading", &format!("Deployment {namespace}/{name}"), e)
                })?
                .ok_or_else(|| {
                    TrafficError::NotFound(format!(
                        "no Deployment {name:?} in namespace {namespace:?}"
                    ))
                })?;
            d.spec
                .and_then(|s| s.selector.match_labels)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    TrafficError::Failed(format!(
                        "Deployment {namespace}/{name} selects pods by expressions only; use svc/NAME"
                    ))
                })?
        }
    };
    let pods = scrape::meshed_pods(&client, ns, &selector)
        .await
        .map_err(|e| store::api_error("listing", "pods", e))?;
    let keys: BTreeSet<(String, String)> = pods
        .iter()
        .map(|p| (p.namespace().unwrap_or_default(), p.name_any()))
        .collect();
    let (delta, errors, window) = if a.window.is_zero() {
        let snap = scrape::scrape(&client, &keys).await;
        (snap.totals(), snap.errors, None)
    } else {
        let first = scrape::scrape(&client, &keys).await;
        tokio::time::sleep(a.window).await;
        let second = scrape::scrape(&client, &keys).await;
        let window = match (first.at, second.at) {
            (Some(x), Some(y)) => y.duration_since(x),
            _ => a.window,
        };
        let mut errors = first.errors.clone();
        errors.extend(second.errors.clone());
        (second.delta(&first), errors, Some(window))
    };
    for (pod, e) in &errors {
        output::note(&format!("warning: cannot scrape {pod}: {e}"));
    }
    let rows = rows(&pods, &delta, &errors, window, a.pods);
    match a.common.output {
        Output::Table => {
            if rows.is_empty() {
                output::note("No running meshed pods (with the mesh-proxy container) found.");
                return Ok(());
            }
            let mut t = Table::new(&[
                "NAMESPACE",
                if a.pods { "POD" } else { "WORKLOAD" },
                "PODS",
                "REQUESTS",
                "SUCCESS",
                "RPS",
                "P50",
                "P99",
            ]);
            for r in &rows {
                let paint = match r.stats.success_rate {
                    Some(s) if s >= 99.0 => Paint::Green,
                    Some(s) if s >= 95.0 => Paint::Yellow,
                    Some(_) => Paint::Red,
                    None => Paint::Plain,
                };
                let pods = if r.unreachable_pods > 0 {
                    format!("{}/{}", r.pods, r.pods + r.unreachable_pods)
                } else {
                    r.pods.to_string()
                };
                t.painted_row(vec![
                    (r.namespace.clone(), Paint::Plain),
                    (r.workload.clone(), Paint::Plain),
                    (pods, Paint::Plain),
                    (r.stats.requests.to_string(), Paint::Plain),
                    (output::percent(r.stats.success_rate), paint),
                    (output::rate(r.stats.rps), Paint::Plain),
                    (output::millis(r.stats.p50_ms), Paint::Plain),
                    (output::millis(r.stats.p99_ms), Paint::Plain),
                ]);
            }
            output::print(&t.render(output::colour()));
        }
        o => output::print(&output::structured(&rows, o)?),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn pod(name: &str, rs: Option<&str>, hash: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                labels: hash.map(|h| BTreeMap::from([("pod-template-hash".into(), h.into())])),
                owner_references: rs.map(|r| {
                    vec![OwnerReference {
                        kind: "ReplicaSet".into(),
                        name: r.into(),
                        controller: Some(true),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn targets_parse() {
        assert_eq!(
            parse_target("deploy/a"),
            Ok(StatTarget::Deployment("a".into()))
        );
        assert_eq!(parse_target("svc/b"), Ok(StatTarget::Service("b".into())));
        assert!(parse_target("pod/x").unwrap_err().contains("deploy/NAME"));
        assert!(parse_target("reviews").is_err());
    }

    #[test]
    fn pods_group_by_workload() {
        let pods = vec![
            pod("reviews-v2-7d9-abc", Some("reviews-v2-7d9"), Some("7d9")),
            pod("reviews-v2-7d9-def", Some("reviews-v2-7d9"), Some("7d9")),
            pod("lonely", None, None),
        ];
        assert_eq!(workload_of(&pods[0]), "reviews-v2");
        let mut snap = scrape::Snapshot::default();
        for (p, n) in [
            ("shop/reviews-v2-7d9-abc", 10),
            ("shop/reviews-v2-7d9-def", 30),
        ] {
            snap.add_pod(
                p,
                &format!("mesh_requests_total{{direction=\"inbound\",code=\"200\"}} {n}\n"),
            );
        }
        let errors = BTreeMap::from([("shop/lonely".to_string(), "timeout".to_string())]);
        let r = rows(&pods, &snap.totals(), &errors, None, false);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].workload, "lonely");
        assert_eq!((r[0].pods, r[0].unreachable_pods), (0, 1));
        assert_eq!(r[1].workload, "reviews-v2");
        assert_eq!((r[1].pods, r[1].stats.requests), (2, 40));
        let r = rows(&pods, &snap.totals(), &errors, None, true);
        assert_eq!(r.len(), 3);
    }
}
