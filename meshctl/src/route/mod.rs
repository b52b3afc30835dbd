//! `meshctl route`: create, show, list and delete a service's routing rules
//! without writing YAML. The rules live in the service's VirtualService
//! (named after the service, one named HTTP route per rule) and the subsets
//! they use in its DestinationRule (labels `<subset-label>: <subset>`), both
//! typed `mesh_api::networking` objects validated with `mesh_api::validate`
//! before they are server-side applied (field manager `meshctl`).
//!
//! This module also holds what `canary` and `stat` share: the error type
//! with its exit codes, the common flags and the output helpers.

pub mod output;
pub mod render;
pub mod store;

use std::collections::BTreeMap;

use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use mesh_api::networking::{HttpRetry, StringMatch, VirtualService};
use mesh_api::status::CONDITION_ACCEPTED;
use serde::Serialize;

use crate::cluster::{ClusterArgs, ClusterError, EXIT_FAILURE, EXIT_UNREACHABLE, EXIT_USAGE};
use output::{Output, Paint, Table};
use render::{Resources, RouteSpec, RouteSummary, Target, DEFAULT_SUBSET_LABEL};
use store::Change;

/// Why a traffic command (`route`, `canary`, `stat`) failed; decides the
/// exit code.
#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    /// Bad flags or arguments (exit 2).
    #[error("{0}")]
    Usage(String),
    /// No cluster (exit 3).
    #[error(transparent)]
    Unreachable(#[from] ClusterError),
    /// The service, route or canary does not exist (exit 1).
    #[error("{0}")]
    NotFound(String),
    /// The edit would make an invalid resource (exit 1).
    #[error("refusing to apply an invalid resource:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
    /// An object changed while meshctl edited it (retried internally).
    #[error("{0} changed while meshctl edited it")]
    Conflict(String),
    /// A progressive canary was rolled back (exit 1).
    #[error("{0}")]
    RolledBack(String),
    /// Anything else (exit 1).
    #[error("{0}")]
    Failed(String),
}

impl TrafficError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => EXIT_USAGE,
            Self::Unreachable(_) => EXIT_UNREACHABLE,
            Self::NotFound(_)
            | Self::Invalid(_)
            | Self::Conflict(_)
            | Self::RolledBack(_)
            | Self::Failed(_) => EXIT_FAILURE,
        }
    }
}

impl From<String> for TrafficError {
    fn from(s: String) -> Self {
        Self::Failed(s)
    }
}

/// Tail of the long help of the traffic commands.
pub const AFTER_LONG_HELP: &str = "\
Cluster access: --kubeconfig FILE and --context NAME (default: $KUBECONFIG, ~/.kube/config, \
or the in-cluster ServiceAccount); -n/--namespace (default: the context's namespace); \
-o table|yaml|json (colour only on a terminal, never with NO_COLOR). See docs/meshctl-traffic.md.

Exit codes:
  0  success
  1  the command failed: unknown service, route or canary, invalid result, API error,
     or a progressive canary that was rolled back
  2  bad flags or arguments (e.g. a weight over 100)
  3  no cluster configured or reachable (the message names the kubeconfig and server)";

/// Flags of every traffic command that works in one namespace.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Cluster access.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Namespace (default: the kubeconfig context's, else `default`).
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: Output,
}

impl CommonArgs {
    /// Connects, and the namespace to work in.
    pub async fn connect(&self) -> Result<(Client, String), TrafficError> {
        let client = self.cluster.connect().await?;
        let ns = self
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string());
        Ok((client, ns))
    }
}

/// `meshctl route` flags.
#[derive(Debug, clap::Args)]
pub struct RouteArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: RouteCommand,
}

/// `meshctl route` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum RouteCommand {
    /// Add a named route to a service, or replace the route of that name.
    #[command(long_about = CREATE_LONG_ABOUT, after_long_help = AFTER_LONG_HELP)]
    Create(Box<CreateArgs>),
    /// Show a service's routes (and, with -o yaml|json, its VirtualService and DestinationRule).
    #[command(long_about = SHOW_LONG_ABOUT, after_long_help = AFTER_LONG_HELP)]
    Show(ShowArgs),
    /// List the VirtualServices of a namespace (or all with -A) and their routes.
    #[command(long_about = LIST_LONG_ABOUT, after_long_help = AFTER_LONG_HELP)]
    List(ListArgs),
    /// Delete a route of a service, or (--all) its meshctl-made VirtualService and DestinationRule.
    #[command(long_about = DELETE_LONG_ABOUT, after_long_help = AFTER_LONG_HELP)]
    Delete(DeleteArgs),
}

/// Help text of `meshctl route`.
pub const ABOUT: &str = "Create, show, list and delete a service's routing rules";
/// Long help of `meshctl route`.
pub const LONG_ABOUT: &str = "\
Create, show, list and delete a service's routing rules without writing YAML: route by \
header, path or method to a subset (a version of the service, selected by pod labels), \
split by weight, set retries and timeouts.

The rules are named HTTP routes in the service's VirtualService (named after the service, \
host = the service, labelled app.kubernetes.io/managed-by=meshctl, annotated \
mesh.dev/meshctl-command with the command that last changed it); the subsets they use are \
added to its DestinationRule with labels `<--subset-label>: <subset>` (default `version`). \
Existing VirtualServices/DestinationRules for the service are edited in place. Every result \
is validated (mesh_api::validate, with the namespace's other mesh resources) before it is \
server-side applied (field manager meshctl); an invalid one is refused with the error.

Examples:
  meshctl route create reviews jason --match-header end-user=jason --to-subset v2
  meshctl route create reviews api --match-path-prefix /api/ --to-subset v1 --timeout 2s \\
      --retries 3 --retry-on 5xx,connect-failure --per-try-timeout 500ms
  meshctl route create reviews default --weight v1=90 --weight v2=10
  meshctl route show reviews -o yaml
  meshctl route list -A
  meshctl route delete reviews jason";

const CREATE_LONG_ABOUT: &str = "\
Add a named route to the service's VirtualService, or replace the route of that name in \
place. A new route goes before the first route that matches every request (so it is \
reached), else last. Conditions are ANDed; none makes the route match every request. \
Destinations: --to-subset S (all to one subset), --weight S=W repeated (a split that sums \
to 100), or neither (the whole service). Subsets a route uses are added to the \
DestinationRule (labels <--subset-label>: <subset>) unless they exist.

The service must exist (exit 1 otherwise). Header names are lowercased.

Examples:
  meshctl route create reviews jason --match-header end-user=jason --to-subset v2
  meshctl route create reviews beta --match-header-regex cookie=.*beta=1.* --to-subset v3
  meshctl route create reviews api --match-path-prefix /api/ --match-method GET --to-subset v1
  meshctl route create reviews default --weight v1=90 --weight v2=10 --timeout 3s
  meshctl route create reviews default --to-subset v1 --retries 3 --retry-on 5xx \\
      --per-try-timeout 500ms -n shop
  meshctl route create reviews default --to-subset v1 --dry-run -o yaml   # print, apply nothing";

const SHOW_LONG_ABOUT: &str = "\
Show a service's routes: one line per route (name, conditions, destinations with weights, \
timeout, retries) and the DestinationRule's subsets. -o yaml|json prints the VirtualService \
and DestinationRule as a List (empty when there are none).

Examples:
  meshctl route show reviews
  meshctl route show reviews -n shop -o json";

const LIST_LONG_ABOUT: &str = "\
List the VirtualServices of a namespace (-A: all namespaces): hosts, route names, who made \
them, and whether the controller accepted them.

Examples:
  meshctl route list
  meshctl route list -A -o json";

const DELETE_LONG_ABOUT: &str = "\
Delete a route from the service's VirtualService (the VirtualService goes when no route is \
left; subsets stay in the DestinationRule). With --all instead of a route name, delete the \
service's VirtualService and DestinationRule, if meshctl made them (refused otherwise: \
delete those with kubectl).

Examples:
  meshctl route delete reviews jason
  meshctl route delete reviews --all";

/// `meshctl route create` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct CreateArgs {
    /// The Kubernetes Service to route.
    pub service: String,
    /// Route name (unique within the service's routes).
    #[arg(value_parser = parse_name)]
    pub route: String,
    /// Match requests whose header NAME equals VALUE (repeatable; ANDed).
    #[arg(long, value_name = "NAME=VALUE", value_parser = parse_pair)]
    pub match_header: Vec<(String, String)>,
    /// Match requests whose header NAME starts with VALUE.
    #[arg(long, value_name = "NAME=PREFIX", value_parser = parse_pair)]
    pub match_header_prefix: Vec<(String, String)>,
    /// Match requests whose header NAME fully matches REGEX (RE2).
    #[arg(long, value_name = "NAME=REGEX", value_parser = parse_pair)]
    pub match_header_regex: Vec<(String, String)>,
    /// Match requests whose path is exactly PATH.
    #[arg(long, value_name = "PATH", group = "path")]
    pub match_path: Option<String>,
    /// Match requests whose path starts with PREFIX.
    #[arg(long, value_name = "PREFIX", group = "path")]
    pub match_path_prefix: Option<String>,
    /// Match requests whose path fully matches REGEX (RE2).
    #[arg(long, value_name = "REGEX", group = "path")]
    pub match_path_regex: Option<String>,
    /// Match requests with this method (e.g. GET).
    #[arg(long, value_name = "METHOD")]
    pub match_method: Option<String>,
    /// Send matching requests to this subset.
    #[arg(long, value_name = "SUBSET", conflicts_with = "weight", value_parser = parse_name)]
    pub to_subset: Option<String>,
    /// Split matching requests: SUBSET=PERCENT, repeated; the weights must sum to 100.
    #[arg(long, value_name = "SUBSET=PERCENT", value_parser = parse_weight)]
    pub weight: Vec<(String, u8)>,
    /// Whole-request timeout (e.g. 2s, 500ms).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<String>,
    /// Retry failed requests up to N times.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=20))]
    pub retries: Option<u8>,
    /// What to retry: comma list of 5xx, gateway-error, reset, connect-failure,
    /// refused-stream (always on), retriable-status-codes or status codes.
    #[arg(long, value_name = "CONDITIONS", requires = "retries")]
    pub retry_on: Option<String>,
    /// Timeout of each try.
    #[arg(long, value_name = "DURATION", requires = "retries", value_parser = parse_duration)]
    pub per_try_timeout: Option<String>,
    /// Pod label whose value names a subset.
    #[arg(long, default_value = DEFAULT_SUBSET_LABEL, value_name = "LABEL")]
    pub subset_label: String,
    /// Print what would be applied; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Namespace, cluster and output flags.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `meshctl route show` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ShowArgs {
    /// The Kubernetes Service.
    pub service: String,
    /// Namespace, cluster and output flags.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `meshctl route list` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// All namespaces.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// Namespace, cluster and output flags.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `meshctl route delete` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct DeleteArgs {
    /// The Kubernetes Service.
    pub service: String,
    /// The route to delete.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub route: Option<String>,
    /// Delete the service's VirtualService and DestinationRule (only if meshctl made them).
    #[arg(long)]
    pub all: bool,
    /// Print what would be done; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Namespace, cluster and output flags.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// A DNS-label-like name (routes, subsets).
pub fn parse_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a valid name: lowercase letters, digits, '-' and '.', at most 63"
        ))
    }
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_ascii_lowercase(), v.to_string())),
        _ => Err(format!("{s:?} is not NAME=VALUE")),
    }
}

/// `SUBSET=PERCENT`, percent in 0..=100.
pub fn parse_weight(s: &str) -> Result<(String, u8), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not SUBSET=PERCENT"))?;
    let subset = parse_name(k)?;
    let w: u32 = v
        .parse()
        .map_err(|_| format!("{v:?} is not a whole number of percent"))?;
    if w > 100 {
        return Err(format!("weight {w} of {subset} is over 100"));
    }
    Ok((subset, w as u8))
}

/// A duration as the CRDs write it (`2s`, `500ms`), checked.
pub fn parse_duration(s: &str) -> Result<String, String> {
    mesh_api::parse_duration(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

#[derive(Clone, Copy)]
enum StringKind {
    Exact,
    Prefix,
    Regex,
}

impl StringKind {
    fn make(self, v: String) -> StringMatch {
        let mut m = StringMatch::default();
        match self {
            Self::Exact => m.exact = Some(v),
            Self::Prefix => m.prefix = Some(v),
            Self::Regex => m.regex = Some(v),
        }
        m
    }
}

impl CreateArgs {
    /// The route these flags describe; usage errors for what clap cannot check.
    pub fn spec(&self) -> Result<RouteSpec, TrafficError> {
        let mut headers = BTreeMap::new();
        let kinds = [
            (&self.match_header, StringKind::Exact),
            (&self.match_header_prefix, StringKind::Prefix),
            (&self.match_header_regex, StringKind::Regex),
        ];
        for (pairs, kind) in kinds {
            for (k, v) in pairs {
                if headers.insert(k.clone(), kind.make(v.clone())).is_some() {
                    return Err(TrafficError::Usage(format!(
                        "header {k:?} is matched twice; give one condition per header"
                    )));
                }
            }
        }
        let uri = match (
            &self.match_path,
            &self.match_path_prefix,
            &self.match_path_regex,
        ) {
            (Some(p), _, _) => Some(StringMatch {
                exact: Some(p.clone()),
                ..Default::default()
            }),
            (_, Some(p), _) => Some(StringMatch {
                prefix: Some(p.clone()),
                ..Default::default()
            }),
            (_, _, Some(p)) => Some(StringMatch {
                regex: Some(p.clone()),
                ..Default::default()
            }),
            _ => None,
        };
        let destinations = if let Some(s) = &self.to_subset {
            vec![(Some(s.clone()), None)]
        } else if self.weight.len() == 1 {
            if self.weight[0].1 != 100 {
                return Err(TrafficError::Usage(format!(
                    "a single --weight must be 100 (got {}={}); use --to-subset, or give every subset's weight",
                    self.weight[0].0, self.weight[0].1
                )));
            }
            vec![(Some(self.weight[0].0.clone()), None)]
        } else {
            let sum: u32 = self.weight.iter().map(|(_, w)| u32::from(*w)).sum();
            if !self.weight.is_empty() && sum != 100 {
                return Err(TrafficError::Usage(format!(
                    "--weight values sum to {sum}; they must sum to 100"
                )));
            }
            let mut seen = std::collections::BTreeSet::new();
            for (s, _) in &self.weight {
                if !seen.insert(s) {
                    return Err(TrafficError::Usage(format!("subset {s} is weighted twice")));
                }
            }
            self.weight
                .iter()
                .map(|(s, w)| (Some(s.clone()), Some(i32::from(*w))))
                .collect()
        };
        Ok(RouteSpec {
            name: self.route.clone(),
            headers,
            uri,
            method: self.match_method.as_ref().map(|m| m.to_ascii_uppercase()),
            destinations,
            timeout: self.timeout.clone(),
            retries: self.retries.map(|n| HttpRetry {
                attempts: i32::from(n),
                per_try_timeout: self.per_try_timeout.clone(),
                retry_on: self.retry_on.clone(),
                ..Default::default()
            }),
        })
    }
}

/// The command line that made a change, for the annotation: the program
/// name and the arguments, without cluster-access flags.
pub fn command_line() -> String {
    let mut out = vec!["meshctl".to_string()];
    let mut skip = false;
    for a in std::env::args().skip(1) {
        if skip {
            skip = false;
            continue;
        }
        if a == "--kubeconfig" || a == "--context" {
            skip = true;
            continue;
        }
        if a.starts_with("--kubeconfig=") || a.starts_with("--context=") {
            continue;
        }
        out.push(a);
    }
    out.join(" ")
}

/// Runs `meshctl route ...`.
pub async fn run(args: RouteArgs) -> Result<(), TrafficError> {
    match args.command {
        RouteCommand::Create(a) => create(*a).await,
        RouteCommand::Show(a) => show(a).await,
        RouteCommand::List(a) => list(a).await,
        RouteCommand::Delete(a) => delete(a).await,
    }
}

async fn create(a: CreateArgs) -> Result<(), TrafficError> {
    let spec = a.spec()?;
    let (client, namespace) = a.common.connect().await?;
    let t = Target {
        namespace,
        service: a.service.clone(),
    };
    store::require_service(&client, &t).await?;
    let command = command_line();
    let (now, changes) = store::update(&client, &t, a.dry_run, |loaded| {
        Ok(vec![render::create_route(
            &loaded.res,
            &t,
            &spec,
            &a.subset_label,
            &command,
        )])
    })
    .await?;
    report(&now, &changes, a.common.output, a.dry_run)
}

async fn delete(a: DeleteArgs) -> Result<(), TrafficError> {
    let (client, namespace) = a.common.connect().await?;
    let t = Target {
        namespace,
        service: a.service.clone(),
    };
    store::require_service(&client, &t).await?;
    let command = command_line();
    let (now, changes) = store::update(&client, &t, a.dry_run, |loaded| {
        if a.all {
            for m in [
                loaded.res.vs.as_ref().map(|o| &o.metadata),
                loaded.res.dr.as_ref().map(|o| &o.metadata),
            ]
            .into_iter()
            .flatten()
            {
                if !is_managed(m) {
                    return Err(TrafficError::Failed(format!(
                        "{}/{} was not made by meshctl (no label {}={}); delete it with kubectl",
                        t.namespace,
                        m.name.clone().unwrap_or_default(),
                        render::MANAGED_BY_LABEL,
                        render::MANAGED_BY
                    )));
                }
            }
            return Ok(vec![Resources::default()]);
        }
        let name = a.route.as_deref().unwrap_or_default();
        render::delete_route(&loaded.res, name, &command)
            .map(|r| vec![r])
            .map_err(TrafficError::NotFound)
    })
    .await?;
    report(&now, &changes, a.common.output, a.dry_run)
}

fn is_managed(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    m.labels
        .as_ref()
        .and_then(|l| l.get(render::MANAGED_BY_LABEL))
        .is_some_and(|v| v == render::MANAGED_BY)
}

/// A List of the service's objects, as `kubectl get -o yaml` prints them.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectList {
    api_version: &'static str,
    kind: &'static str,
    items: Vec<serde_json::Value>,
}

impl ObjectList {
    /// The VirtualService and DestinationRule there are.
    pub fn of(res: &Resources) -> Result<Self, TrafficError> {
        let mut items = Vec::new();
        if let Some(vs) = &res.vs {
            items.push(serde_json::to_value(clean(vs)).map_err(|e| e.to_string())?);
        }
        if let Some(dr) = &res.dr {
            items.push(serde_json::to_value(clean(dr)).map_err(|e| e.to_string())?);
        }
        Ok(Self {
            api_version: "v1",
            kind: "List",
            items,
        })
    }
}

/// Without `managedFields` (noise for people and scripts alike).
fn clean<K: kube::Resource + Clone>(o: &K) -> K {
    let mut o = o.clone();
    o.meta_mut().managed_fields = None;
    o
}

fn report(
    now: &Resources,
    changes: &[Change],
    output: Output,
    dry_run: bool,
) -> Result<(), TrafficError> {
    let suffix = if dry_run { " (dry run)" } else { "" };
    match output {
        Output::Table => {
            let mut text = String::new();
            for c in changes {
                text.push_str(&format!(
                    "{}/{} {}{suffix}\n",
                    c.kind.to_ascii_lowercase(),
                    c.name,
                    c.outcome
                ));
            }
            if let Some(vs) = &now.vs {
                text.push('\n');
                text.push_str(&routes_table(vs).render(output::colour()));
            }
            output::print(&text);
        }
        _ => {
            for c in changes {
                output::note(&format!(
                    "{}/{} {}{suffix}",
                    c.kind.to_ascii_lowercase(),
                    c.name,
                    c.outcome
                ));
            }
            output::print(&output::structured(&ObjectList::of(now)?, output)?);
        }
    }
    Ok(())
}

fn routes_table(vs: &VirtualService) -> Table {
    let mut t = Table::new(&["ROUTE", "MATCH", "DESTINATIONS", "TIMEOUT", "RETRIES"]);
    for r in render::summarize(vs) {
        t.row(vec![
            if r.name.is_empty() {
                "-".into()
            } else {
                r.name
            },
            r.match_,
            r.destinations.join(" "),
            r.timeout.unwrap_or_else(|| "-".into()),
            r.retries.unwrap_or_else(|| "-".into()),
        ]);
    }
    t
}

async fn show(a: ShowArgs) -> Result<(), TrafficError> {
    let (client, namespace) = a.common.connect().await?;
    let t = Target {
        namespace,
        service: a.service.clone(),
    };
    store::require_service(&client, &t).await?;
    let loaded = store::load(&client, &t).await?;
    let res = loaded.res;
    match a.common.output {
        Output::Table => {
            let mut text = String::new();
            match &res.vs {
                Some(vs) => {
                    text.push_str(&format!(
                        "VirtualService {}/{} (hosts {}){}\n",
                        t.namespace,
                        vs.name_any(),
                        vs.spec.hosts.join(", "),
                        accepted_note(vs.status.as_ref())
                    ));
                    text.push_str(&routes_table(vs).render(output::colour()));
                }
                None => text.push_str(&format!(
                    "No VirtualService routes {}/{}: every request goes to any of its endpoints.\n",
                    t.namespace, t.service
                )),
            }
            if let Some(dr) = &res.dr {
                text.push_str(&format!(
                    "\nDestinationRule {}/{} subsets:\n",
                    t.namespace,
                    dr.name_any()
                ));
                let mut st = Table::new(&["SUBSET", "LABELS"]);
                for s in &dr.spec.subsets {
                    st.row(vec![s.name.clone(), scrape_selector(&s.labels)]);
                }
                text.push_str(&st.render(output::colour()));
            }
            output::print(&text);
        }
        o => output::print(&output::structured(&ObjectList::of(&res)?, o)?),
    }
    Ok(())
}

fn scrape_selector(labels: &BTreeMap<String, String>) -> String {
    crate::scrape::label_selector(labels)
}

fn accepted(status: Option<&mesh_api::status::MeshStatus>) -> Option<(bool, String)> {
    let c = status?.condition(CONDITION_ACCEPTED)?;
    Some((
        c.status == mesh_api::status::ConditionStatus::True,
        c.message.clone(),
    ))
}

fn accepted_note(status: Option<&mesh_api::status::MeshStatus>) -> String {
    match accepted(status) {
        Some((true, _)) => ", accepted".into(),
        Some((false, m)) => format!(", NOT accepted: {m}"),
        None => ", not yet accepted by the controller".into(),
    }
}

/// One VirtualService in `route list -o json|yaml`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListEntry {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Hosts.
    pub hosts: Vec<String>,
    /// Whether meshctl made it.
    pub managed_by_meshctl: bool,
    /// The controller's Accepted condition, if set.
    pub accepted: Option<bool>,
    /// Routes.
    pub routes: Vec<RouteSummary>,
}

async fn list(a: ListArgs) -> Result<(), TrafficError> {
    let (client, namespace) = a.common.connect().await?;
    let api: Api<VirtualService> = if a.all_namespaces {
        Api::all(client.clone())
    } else {
        Api::namespaced(client.clone(), &namespace)
    };
    let scope = if a.all_namespaces {
        "all namespaces".to_string()
    } else {
        format!("namespace {namespace}")
    };
    let mut vss = api
        .list(&ListParams::default())
        .await
        .map_err(|e| store::api_error("listing", &format!("VirtualServices in {scope}"), e))?
        .items;
    vss.sort_by_key(|v| (v.namespace(), v.name_any()));
    let entries: Vec<ListEntry> = vss
        .iter()
        .map(|v| ListEntry {
            namespace: v.namespace().unwrap_or_default(),
            name: v.name_any(),
            hosts: v.spec.hosts.clone(),
            managed_by_meshctl: is_managed(&v.metadata),
            accepted: accepted(v.status.as_ref()).map(|(a, _)| a),
            routes: render::summarize(v),
        })
        .collect();
    match a.common.output {
        Output::Table => {
            if entries.is_empty() {
                output::note(&format!("No VirtualServices in {scope}."));
                return Ok(());
            }
            let mut t = Table::new(&[
                "NAMESPACE",
                "NAME",
                "HOSTS",
                "ROUTES",
                "MANAGED-BY",
                "ACCEPTED",
            ]);
            for e in &entries {
                let (acc, paint) = match e.accepted {
                    Some(true) => ("True", Paint::Green),
                    Some(false) => ("False", Paint::Red),
                    None => ("-", Paint::Plain),
                };
                let routes: Vec<&str> = e
                    .routes
                    .iter()
                    .map(|r| {
                        if r.name.is_empty() {
                            "-"
                        } else {
                            r.name.as_str()
                        }
                    })
                    .collect();
                t.painted_row(vec![
                    (e.namespace.clone(), Paint::Plain),
                    (e.name.clone(), Paint::Plain),
                    (e.hosts.join(","), Paint::Plain),
                    (routes.join(","), Paint::Plain),
                    (
                        if e.managed_by_meshctl { "meshctl" } else { "-" }.to_string(),
                        Paint::Plain,
                    ),
                    (acc.to_string(), paint),
                ]);
            }
            output::print(&t.render(output::colour()));
        }
        o => output::print(&output::structured(&entries, o)?),
    }
    Ok(())
}

/// The process exit of a traffic command: `meshctl: error: ...` on stderr
/// and the error's exit code.
pub fn exit(result: Result<(), TrafficError>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            output::note(&format!("meshctl: error: {e}"));
            std::process::ExitCode::from(e.exit_code())
        }
    }
}
