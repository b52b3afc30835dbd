//! Reading the proxies' Prometheus metrics, shared by `meshctl stat` and
//! `meshctl canary`.
//!
//! Each meshed pod's proxy serves `/metrics` on port 15020; meshctl reaches
//! it through the API server's pod proxy subresource
//! (`/api/v1/namespaces/{ns}/pods/{pod}:15020/proxy/metrics`), so it needs
//! nothing but the kubeconfig. Of what a proxy exports, only the requests it
//! served (**inbound**) count here:
//!
//! - `mesh_requests_total{direction="inbound",source_workload,source_namespace,destination_service,destination_workload,code}`
//! - `mesh_request_duration_seconds_bucket{direction="inbound",...,le}` (no `code`)
//!
//! Counters only grow, so figures over a window are the difference of two
//! scrapes ([`Snapshot::delta`]); a counter that went down (the proxy
//! restarted) counts from zero. Success rate is non-5xx / all; percentiles
//! are interpolated within histogram buckets as Prometheus'
//! `histogram_quantile` does.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use serde::Serialize;

/// The container the injector adds to meshed pods.
pub const PROXY_CONTAINER: &str = "mesh-proxy";
/// Requests served, by response code.
pub const REQUESTS: &str = "mesh_requests_total";
/// Request duration histogram (seconds).
pub const DURATION_BUCKET: &str = "mesh_request_duration_seconds_bucket";
/// How long one pod's scrape may take.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (with `_bucket`, `_sum`, `_count` suffixes as written).
    pub name: String,
    /// Labels, sorted by name.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

/// Parses the Prometheus text exposition format (version 0.0.4): comments
/// and malformed lines are skipped, timestamps ignored.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        loop {
            // Skip separators.
            while let Some((_, c)) = chars.peek() {
                if *c == ',' || c.is_whitespace() {
                    chars.next();
                } else {
                    break;
                }
            }
            let (start, c) = chars.next()?;
            if c == '}' {
                rest = &after[start + 1..];
                break;
            }
            let mut end = start + c.len_utf8();
            loop {
                let (i, c) = chars.next()?;
                if c == '=' {
                    break;
                }
                end = i + c.len_utf8();
            }
            let key = after[start..end].trim().to_string();
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()?.1 {
                    '"' => break,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    c => value.push(c),
                }
            }
            labels.insert(key, value);
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// The inbound request counters and duration buckets of a set of pods at
/// one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// When it was taken (for rates).
    pub at: Option<Instant>,
    /// Pods that answered, and their inbound request samples.
    pub pods: BTreeMap<String, Vec<Sample>>,
    /// Pods that did not answer, and why.
    pub errors: BTreeMap<String, String>,
}

impl Snapshot {
    /// Adds one pod's scrape (only the inbound request metrics are kept).
    pub fn add_pod(&mut self, pod: &str, text: &str) {
        let samples = parse(text)
            .into_iter()
            .filter(|s| {
                (s.name == REQUESTS || s.name == DURATION_BUCKET)
                    && s.labels.get("direction").map(String::as_str) == Some("inbound")
            })
            .collect();
        self.pods.insert(pod.to_string(), samples);
    }

    /// What happened between `earlier` and `self`: per pod and series, the
    /// increase of each counter. Pods missing from `earlier` are left out
    /// (their counts cannot be placed in the window); a series new in a pod
    /// counts fully; a counter that went down (restart) counts from zero.
    pub fn delta(&self, earlier: &Snapshot) -> Vec<(String, Sample)> {
        let mut out = Vec::new();
        for (pod, samples) in &self.pods {
            let Some(before) = earlier.pods.get(pod) else {
                continue;
            };
            for s in samples {
                let prev = before
                    .iter()
                    .find(|b| b.name == s.name && b.labels == s.labels)
                    .map(|b| b.value)
                    .unwrap_or(0.0);
                let d = if s.value >= prev {
                    s.value - prev
                } else {
                    s.value
                };
                out.push((
                    pod.clone(),
                    Sample {
                        value: d,
                        ..s.clone()
                    },
                ));
            }
        }
        out
    }

    /// Every sample as a delta from zero (the pods' lifetime figures).
    pub fn totals(&self) -> Vec<(String, Sample)> {
        self.delta(&Snapshot {
            at: None,
            pods: self.pods.keys().map(|p| (p.clone(), Vec::new())).collect(),
            errors: BTreeMap::new(),
        })
    }
}

/// Golden figures of a group of requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Requests in the window.
    pub requests: u64,
    /// Of which answered 5xx.
    pub errors: u64,
    /// Non-5xx / all, in percent; none without requests.
    pub success_rate: Option<f64>,
    /// Requests per second over the window; none for lifetime figures.
    pub rps: Option<f64>,
    /// Median latency, milliseconds.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: Option<f64>,
}

impl Stats {
    /// The figures of `samples` (deltas), over `window` if known.
    pub fn of<'a>(samples: impl IntoIterator<Item = &'a Sample>, window: Option<Duration>) -> Self {
        let mut requests = 0.0;
        let mut errors = 0.0;
        let mut buckets: BTreeMap<OrderedLe, f64> = BTreeMap::new();
        for s in samples {
            if s.name == REQUESTS {
                requests += s.value;
                if s.labels.get("code").is_some_and(|c| c.starts_with('5')) {
                    errors += s.value;
                }
            } else if s.name == DURATION_BUCKET {
                let Some(le) = s.labels.get("le").and_then(|l| parse_le(l)) else {
                    continue;
                };
                *buckets.entry(OrderedLe(le)).or_default() += s.value;
            }
        }
        let buckets: Vec<(f64, f64)> = buckets.into_iter().map(|(k, v)| (k.0, v)).collect();
        let success_rate = (requests > 0.0).then(|| 100.0 * (requests - errors) / requests);
        let rps = window
            .filter(|w| !w.is_zero())
            .map(|w| requests / w.as_secs_f64());
        Self {
            requests: requests.round() as u64,
            errors: errors.round() as u64,
            success_rate,
            rps,
            p50_ms: histogram_quantile(0.5, &buckets).map(|s| s * 1000.0),
            p99_ms: histogram_quantile(0.99, &buckets).map(|s| s * 1000.0),
        }
    }
}

fn parse_le(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        v => v.parse().ok(),
    }
}

/// An `le` bound, ordered (never NaN).
#[derive(Debug, Clone, Copy, PartialEq)]
struct OrderedLe(f64);
impl PartialOrd for OrderedLe {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Eq for OrderedLe {}
impl Ord for OrderedLe {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The `q` quantile (0..=1) of a histogram given as cumulative buckets
/// `(upper bound, count)` sorted by bound, the last one `+Inf`; linear
/// interpolation within the bucket (from 0 for the first), and the highest
/// finite bound when the rank falls in `+Inf`. None without observations.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 || buckets.is_empty() {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let mut lower = 0.0;
    let mut below = 0.0;
    for &(upper, count) in buckets {
        if count >= rank && count > below {
            if upper.is_infinite() {
                return Some(lower);
            }
            return Some(lower + (upper - lower) * (rank - below) / (count - below));
        }
        if upper.is_finite() {
            lower = upper;
        }
        below = count;
    }
    Some(lower)
}

/// The running pods matching `selector` that run the mesh proxy (as a
/// container or a native-sidecar init container), sorted by name.
pub async fn meshed_pods(
    client: &Client,
    namespace: Option<&str>,
    selector: &BTreeMap<String, String>,
) -> Result<Vec<Pod>, kube::Error> {
    let api: Api<Pod> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut lp = ListParams::default().fields("status.phase=Running");
    let sel = label_selector(selector);
    if !sel.is_empty() {
        lp = lp.labels(&sel);
    }
    let mut pods: Vec<Pod> = api
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(runs_proxy)
        .collect();
    pods.sort_by_key(|p| (p.namespace(), p.name_any()));
    Ok(pods)
}

/// Whether the pod has the mesh proxy.
pub fn runs_proxy(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.containers.iter().any(|c| c.name == PROXY_CONTAINER)
            || s.init_containers
                .iter()
                .flatten()
                .any(|c| c.name == PROXY_CONTAINER)
    })
}

/// `k=v,k2=v2`.
pub fn label_selector(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Scrapes every pod (`(namespace, name)`) concurrently through the API
/// server; pods that fail are recorded in [`Snapshot::errors`].
pub async fn scrape(client: &Client, pods: &BTreeSet<(String, String)>) -> Snapshot {
    let mut set = tokio::task::JoinSet::new();
    for (ns, pod) in pods {
        let client = client.clone();
        let (ns, pod) = (ns.clone(), pod.clone());
        set.spawn(async move {
            let r = tokio::time::timeout(SCRAPE_TIMEOUT, scrape_pod(&client, &ns, &pod)).await;
            let r = match r {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {}s", SCRAPE_TIMEOUT.as_secs())),
            };
            (format!("{ns}/{pod}"), r)
        });
    }
    let mut snap = Snapshot {
        at: Some(Instant::now()),
        ..Default::default()
    };
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((pod, Ok(text))) => snap.add_pod(&pod, &text),
            Ok((pod, Err(e))) => {
                snap.errors.insert(pod, e);
            }
            Err(e) => {
                snap.errors.insert("?".into(), e.to_string());
            }
        }
    }
    snap
}

/// One pod's `/metrics` through the API server's pod proxy.
pub async fn scrape_pod(client: &Client, namespace: &str, pod: &str) -> Result<String, String> {
    let path = format!(
        "/api/v1/namespaces/{namespace}/pods/{pod}:{}/proxy/metrics",
        mesh_api::ports::PROXY_METRICS
    );
    let req = http::Request::get(&path)
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    client
        .request_text(req)
        .await
        .map_err(|e| crate::cluster::one_line(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP mesh_requests_total HTTP requests handled, by response code.
# TYPE mesh_requests_total counter
mesh_requests_total{code="200",destination_service="reviews",destination_workload="reviews-v2",direction="inbound",source_namespace="default",source_workload="web"} 90
mesh_requests_total{code="503",destination_service="reviews",destination_workload="reviews-v2",direction="inbound",source_namespace="default",source_workload="web"} 10
mesh_requests_total{code="200",destination_service="ratings",destination_workload="ratings",direction="outbound",source_namespace="default",source_workload="reviews-v2"} 500
mesh_request_duration_seconds_bucket{destination_service="reviews",destination_workload="reviews-v2",direction="inbound",source_namespace="default",source_workload="web",le="0.01"} 50
mesh_request_duration_seconds_bucket{destination_service="reviews",destination_workload="reviews-v2",direction="inbound",source_namespace="default",source_workload="web",le="0.1"} 90
mesh_request_duration_seconds_bucket{destination_service="reviews",destination_workload="reviews-v2",direction="inbound",source_namespace="default",source_workload="web",le="+Inf"} 100
mesh_request_duration_seconds_sum{destination_service="reviews",destination_workload="reviews-v2",direction="inbound",source_namespace="default",source_workload="web"} 3.5
"#;

    #[test]
    fn parses_labels_escapes_and_special_values() {
        let s =
            parse("a{x=\"q\\\"uote\\\\\",y=\"line\\n\"} +Inf 1700000000\nb 2.5\n#c 1\nbad{x=} 1\n");
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s[0].labels["x"], "q\"uote\\");
        assert_eq!(s[0].labels["y"], "line\n");
        assert!(s[0].value.is_infinite());
        assert_eq!(s[1].name, "b");
        assert_eq!(s[1].value, 2.5);
        assert_eq!(parse(TEXT).len(), 7);
    }

    #[test]
    fn keeps_inbound_requests_only() {
        let mut snap = Snapshot::default();
        snap.add_pod("default/p", TEXT);
        let st = Stats::of(snap.totals().iter().map(|(_, s)| s), None);
        assert_eq!(st.requests, 100);
        assert_eq!(st.errors, 10);
        assert_eq!(st.success_rate, Some(90.0));
        assert_eq!(st.rps, None);
        // 50 of 100 at <= 10ms: the median is the bucket's top.
        assert!((st.p50_ms.unwrap() - 10.0).abs() < 1e-9, "{st:?}");
        // rank 99 is in +Inf: the highest finite bound.
        assert!((st.p99_ms.unwrap() - 100.0).abs() < 1e-9, "{st:?}");
    }

    #[test]
    fn quantiles_interpolate_like_prometheus() {
        let b = [(0.1, 0.0), (0.2, 100.0), (f64::INFINITY, 100.0)];
        assert!((histogram_quantile(0.5, &b).unwrap() - 0.15).abs() < 1e-9);
        assert!((histogram_quantile(0.99, &b).unwrap() - 0.199).abs() < 1e-9);
        let b = [(0.5, 10.0), (1.0, 20.0), (f64::INFINITY, 20.0)];
        assert!((histogram_quantile(0.25, &b).unwrap() - 0.25).abs() < 1e-9);
        assert!((histogram_quantile(0.75, &b).unwrap() - 0.75).abs() < 1e-9);
        assert_eq!(
            histogram_quantile(0.5, &[(0.1, 0.0), (f64::INFINITY, 0.0)]),
            None
        );
        assert_eq!(histogram_quantile(0.5, &[]), None);
    }

    #[test]
    fn deltas_handle_new_series_restarts_and_missing_pods() {
        let line = |code: &str, v: u32| {
            format!("mesh_requests_total{{direction=\"inbound\",code=\"{code}\"}} {v}\n")
        };
        let mut a = Snapshot::default();
        a.add_pod("ns/one", &line("200", 100));
        a.add_pod("ns/two", &line("200", 50));
        let mut b = Snapshot::default();
        b.add_pod("ns/one", &(line("200", 130) + &line("500", 5)));
        b.add_pod("ns/two", &line("200", 7)); // restarted
        b.add_pod("ns/three", &line("200", 1000)); // no baseline
        let d = b.delta(&a);
        let st = Stats::of(d.iter().map(|(_, s)| s), Some(Duration::from_secs(2)));
        assert_eq!(st.requests, 30 + 5 + 7);
        assert_eq!(st.errors, 5);
        assert_eq!(st.rps, Some(21.0));
    }
}
