//! `meshctl canary`: shift a service's traffic from a stable version to a
//! canary by weight, by hand (`start`, `set-weight`, `promote`, `abort`,
//! `status`) or progressively: `start --step N --interval D` moves the
//! weight up while the canary's proxies report a success rate and p99
//! latency within thresholds, rolls back on its own when they do not, and
//! promotes at 100%.

pub mod progressive;
pub mod render;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kube::{Client, ResourceExt};
use serde::Serialize;

use crate::route::output::{self, Output, Paint, Table};
use crate::route::render::{Target, DEFAULT_SUBSET_LABEL};
use crate::route::store::{self, Change};
use crate::route::{command_line, parse_name, CommonArgs, TrafficError, AFTER_LONG_HELP};
use crate::scrape::{self, Snapshot, Stats};
use progressive::{decide, Decision, Policy, StepRecord};
use render::{CanaryStatus, Phase, StartSpec};

/// Help text of `meshctl canary`.
pub const ABOUT: &str =
    "Shift a service's traffic to a new version by weight, by hand or progressively";
/// Long help of `meshctl canary`.
pub const LONG_ABOUT: &str = "\
Shift a service's traffic from a stable version to a canary by weight. Versions are pod \
label values (--subset-label, default `version`): `start` adds subsets `stable` and `canary` \
to the service's DestinationRule and a catch-all route `canary` to its VirtualService that \
splits requests between them (routes made with `meshctl route` that match first keep \
their destinations). The state (versions, phase) is annotated on the VirtualService \
(mesh.dev/canary), so any meshctl can pick it up.

Progressive mode (`start --step`): every --interval meshctl scrapes the canary's and the \
stable pods' proxies (port 15020 through the API server), takes what the canary served \
since its weight last changed, and rolls back to 100% stable (exit 1, with the figures) when \
its success rate (non-5xx / all) is below --min-success-rate or its p99 above --max-p99; \
waits when it served fewer than --min-requests (rolling back after --max-waits such \
intervals); otherwise adds --step, and promotes at 100% (exit 0).

Examples:
  meshctl canary start reviews --stable v1 --canary v2 --weight 10
  meshctl canary set-weight reviews 50
  meshctl canary status reviews -o json
  meshctl canary promote reviews --finalize
  meshctl canary abort reviews
  meshctl canary start reviews --stable v1 --canary v2 --step 10 --interval 1m \\
      --min-success-rate 99 --max-p99 500ms";

/// `meshctl canary` flags.
#[derive(Debug, clap::Args)]
pub struct CanaryArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: CanaryCommand,
}

/// `meshctl canary` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CanaryCommand {
    /// Start a canary: split the service's traffic between a stable and a canary version.
    #[command(long_about = START_LONG_ABOUT, after_long_help = AFTER_LONG_HELP)]
    Start(Box<StartArgs>),
    /// Set the canary's share of the traffic (0..=100).
    #[command(long_about = SET_WEIGHT_LONG_ABOUT, after_long_help = AFTER_LONG_HELP)]
    SetWeight(SetWeightArgs),
    /// Send all traffic to the canary (--finalize: make it the stable version).
    #[command(long_about = PROMOTE_LONG_ABOUT, after_long_help = AFTER_LONG_HELP)]
    Promote(PromoteArgs),
    /// Send all traffic back to the stable version.
    #[command(long_about = ABORT_LONG_ABOUT, after_long_help = AFTER_LONG_HELP)]
    Abort(ServiceArgs),
    /// Show the weights, the phase and the two versions' success rate and latency.
    #[command(long_about = STATUS_LONG_ABOUT, after_long_help = AFTER_LONG_HELP)]
    Status(StatusArgs),
}

const START_LONG_ABOUT: &str = "\
Start a canary of SERVICE: subsets `stable` (pods labelled <--subset-label>=<--stable>) and \
`canary` (<--subset-label>=<--canary>) in its DestinationRule, and a route `canary` in its \
VirtualService sending --weight percent of the requests to the canary, the rest to stable. \
Starting again replaces versions and weights. Refused when another route of the service \
already matches every request.

With --step, the rollout is progressive and meshctl stays in the foreground until it ends: \
each --interval it judges the requests the canary's proxies served since the weight last \
changed: fewer than --min-requests: wait (at most --max-waits intervals in a row, then roll \
back); success rate below --min-success-rate or p99 above --max-p99: roll back to 100% stable \
and exit 1 naming the figures; else add --step, up to --max-weight; at 100 promote (exit 0). \
The first weight is --weight, default --step. Progress goes to stderr; -o json prints the \
result with every step's figures. Ctrl-C stops the rollout and leaves the weight where it is. \
`canary abort` or `canary set-weight` from elsewhere also stops it.

Examples:
  meshctl canary start reviews --stable v1 --canary v2 --weight 10
  meshctl canary start reviews --stable v1 --canary v2 --weight 0 --subset-label track
  meshctl canary start reviews --stable v1 --canary v2 --step 10 --interval 1m
  meshctl canary start reviews --stable v1 --canary v3 --step 20 --interval 30s \\
      --min-success-rate 99.5 --max-p99 250ms --min-requests 50 --finalize -o json";

const SET_WEIGHT_LONG_ABOUT: &str = "\
Send WEIGHT percent (0..=100) of the service's requests to the canary and the rest to \
stable. The canary must have been started.

Examples:
  meshctl canary set-weight reviews 50
  meshctl canary set-weight reviews 0 -n shop -o json";

const PROMOTE_LONG_ABOUT: &str = "\
Send all of the service's requests to the canary (phase promoted). With --finalize, then \
make the canary the stable version: the `stable` subset selects the canary's label, the \
route sends everything to `stable`, and the `canary` subset is removed (phase finalized), \
ready for the next `canary start --stable <new version>`. The old version's pods receive no \
more requests either way; scale them down yourself.

Examples:
  meshctl canary promote reviews
  meshctl canary promote reviews --finalize";

const ABORT_LONG_ABOUT: &str = "\
Send all of the service's requests back to the stable version (phase aborted). The canary's \
subset and route stay, at weight 0, so `set-weight` can resume.

Examples:
  meshctl canary abort reviews
  meshctl canary abort reviews -n shop -o json";

const STATUS_LONG_ABOUT: &str = "\
Show the canary's phase, versions and weights and, from the proxies' metrics, each side's \
pods, requests, success rate, requests per second and p50/p99 latency over --window (two \
scrapes that far apart; 0s: since the pods started, one scrape). --no-metrics skips the \
scrape.

Examples:
  meshctl canary status reviews
  meshctl canary status reviews --window 30s -o json
  meshctl canary status reviews --no-metrics -o yaml";

/// `meshctl canary start` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct StartArgs {
    /// The Kubernetes Service.
    pub service: String,
    /// Stable version (value of --subset-label on its pods).
    #[arg(long, value_name = "VERSION")]
    pub stable: String,
    /// Canary version (value of --subset-label on its pods).
    #[arg(long, value_name = "VERSION")]
    pub canary: String,
    /// Percent of requests to the canary (default: 0, or --step when progressive).
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(0..=100))]
    pub weight: Option<u8>,
    /// Pod label whose values are the versions.
    #[arg(long, default_value = DEFAULT_SUBSET_LABEL, value_name = "LABEL")]
    pub subset_label: String,
    /// Progressive: percent added per healthy interval.
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(1..=100))]
    pub step: Option<u8>,
    /// Progressive: time between analyses.
    #[arg(long, default_value = "1m", value_name = "DURATION", value_parser = parse_duration, requires = "step")]
    pub interval: Duration,
    /// Progressive: highest weight to reach (100 promotes).
    #[arg(long, default_value_t = 100, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(1..=100), requires = "step")]
    pub max_weight: u8,
    /// Progressive: lowest acceptable success rate (non-5xx / all, percent).
    #[arg(long, default_value_t = 99.0, value_name = "PERCENT", value_parser = parse_percent, requires = "step")]
    pub min_success_rate: f64,
    /// Progressive: highest acceptable p99 latency.
    #[arg(long, default_value = "500ms", value_name = "DURATION", value_parser = parse_duration, requires = "step")]
    pub max_p99: Duration,
    /// Progressive: requests the canary must serve before a step is judged.
    #[arg(long, default_value_t = 20, value_name = "N", requires = "step")]
    pub min_requests: u64,
    /// Progressive: intervals in a row with too few requests before rolling back.
    #[arg(long, default_value_t = 5, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), requires = "step")]
    pub max_waits: u32,
    /// Progressive: finalize on promotion (see `canary promote --finalize`).
    #[arg(long, requires = "step")]
    pub finalize: bool,
    /// Print what would be applied; change nothing (not with --step).
    #[arg(long, conflicts_with = "step")]
    pub dry_run: bool,
    /// Namespace, cluster and output flags.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Flags of commands that only name the service.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// The Kubernetes Service.
    pub service: String,
    /// Namespace, cluster and output flags.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `meshctl canary set-weight` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct SetWeightArgs {
    /// The Kubernetes Service.
    pub service: String,
    /// Percent of requests to the canary.
    #[arg(value_name = "WEIGHT", value_parser = clap::value_parser!(u8).range(0..=100))]
    pub weight: u8,
    /// Namespace, cluster and output flags.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `meshctl canary promote` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct PromoteArgs {
    /// The Kubernetes Service.
    pub service: String,
    /// Then make the canary's version the stable one and drop the canary subset.
    #[arg(long)]
    pub finalize: bool,
    /// Namespace, cluster and output flags.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `meshctl canary status` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// The Kubernetes Service.
    pub service: String,
    /// Metrics window (0s: since the pods started).
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = parse_duration)]
    pub window: Duration,
    /// Do not look at pods or metrics.
    #[arg(long)]
    pub no_metrics: bool,
    /// Namespace, cluster and output flags.
    #[command(flatten)]
    pub common: CommonArgs,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    mesh_api::parse_duration(s).map_err(|e| e.to_string())
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=100.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not in 0..=100"))
    }
}

impl StartArgs {
    /// Checks what clap cannot; the versions, the first weight and the
    /// progressive policy.
    pub fn plan(&self) -> Result<(StartSpec, u8, Option<Policy>), TrafficError> {
        for v in [&self.stable, &self.canary] {
            if v.is_empty() {
                return Err(TrafficError::Usage("versions must not be empty".into()));
            }
        }
        parse_name(&self.subset_label.replace('/', "."))
            .map_err(|e| TrafficError::Usage(format!("--subset-label: {e}")))?;
        if self.stable == self.canary {
            return Err(TrafficError::Usage(format!(
                "--stable and --canary are both {:?}; a canary needs two versions",
                self.stable
            )));
        }
        let policy = self.step.map(|step| Policy {
            step,
            interval: self.interval,
            max_weight: self.max_weight,
            min_success_rate: self.min_success_rate,
            max_p99: self.max_p99,
            min_requests: self.min_requests,
            max_waits: self.max_waits,
        });
        let weight = self.weight.unwrap_or(self.step.unwrap_or(0));
        if let Some(p) = &policy {
            if weight > p.max_weight {
                return Err(TrafficError::Usage(format!(
                    "--weight {weight} is above --max-weight {}",
                    p.max_weight
                )));
            }
            if p.interval.is_zero() {
                return Err(TrafficError::Usage(
                    "--interval must be longer than 0s".into(),
                ));
            }
        }
        Ok((
            StartSpec {
                stable: self.stable.clone(),
                canary: self.canary.clone(),
                subset_label: self.subset_label.clone(),
            },
            weight,
            policy,
        ))
    }
}

/// Runs `meshctl canary ...`.
pub async fn run(args: CanaryArgs) -> Result<(), TrafficError> {
    match args.command {
        CanaryCommand::Start(a) => start(*a).await,
        CanaryCommand::SetWeight(a) => {
            let weight = a.weight;
            simple(&a.service, &a.common, move |res, t, cmd| {
                render::set_weight(res, t, weight, Phase::Running, None, cmd).map(|r| vec![r])
            })
            .await
        }
        CanaryCommand::Promote(a) => {
            let finalize = a.finalize;
            simple(&a.service, &a.common, move |res, t, cmd| {
                render::promote(res, t, finalize, cmd)
            })
            .await
        }
        CanaryCommand::Abort(a) => {
            simple(&a.service, &a.common, |res, t, cmd| {
                render::abort(res, t, Phase::Aborted, None, cmd).map(|r| vec![r])
            })
            .await
        }
        CanaryCommand::Status(a) => status(a).await,
    }
}

async fn simple<F>(service: &str, common: &CommonArgs, edit: F) -> Result<(), TrafficError>
where
    F: Fn(
        &crate::route::render::Resources,
        &Target,
        &str,
    ) -> Result<Vec<crate::route::render::Resources>, TrafficError>,
{
    let (client, namespace) = common.connect().await?;
    let t = Target {
        namespace,
        service: service.to_string(),
    };
    store::require_service(&client, &t).await?;
    let command = command_line();
    let (now, changes) =
        store::update(&client, &t, false, |loaded| edit(&loaded.res, &t, &command)).await?;
    print_changes(&changes, false);
    print_status(&render::status(&now, &t)?, common.output)
}

fn print_changes(changes: &[Change], dry_run: bool) {
    let suffix = if dry_run { " (dry run)" } else { "" };
    for c in changes.iter().filter(|c| c.outcome != "unchanged") {
        output::note(&format!(
            "{}/{} {}{suffix}",
            c.kind.to_ascii_lowercase(),
            c.name,
            c.outcome
        ));
    }
}

fn phase_paint(p: Phase) -> Paint {
    match p {
        Phase::Promoted | Phase::Finalized => Paint::Green,
        Phase::Aborted | Phase::RolledBack => Paint::Red,
        Phase::Running | Phase::Progressing => Paint::Yellow,
    }
}

fn status_table(s: &CanaryStatus) -> String {
    let colour = output::colour();
    let phase = if colour {
        format!(
            "\x1b[{}m{}\x1b[0m",
            match phase_paint(s.phase) {
                Paint::Green => "32",
                Paint::Red => "31",
                _ => "33",
            },
            s.phase.as_str()
        )
    } else {
        s.phase.as_str().to_string()
    };
    let mut text = format!("Canary {}/{}: {phase}", s.namespace, s.service);
    if let Some(r) = &s.reason {
        text.push_str(&format!(" ({r})"));
    }
    text.push('\n');
    let mut t = Table::new(&[
        "SUBSET", "VERSION", "WEIGHT", "PODS", "REQUESTS", "SUCCESS", "RPS", "P50", "P99",
    ]);
    for side in [&s.stable, &s.canary] {
        let m = side.metrics.clone().unwrap_or_default();
        let has = side.metrics.is_some();
        t.row(vec![
            side.subset.clone(),
            side.version.clone(),
            format!("{}%", side.weight),
            side.pods.map_or("-".into(), |p| p.to_string()),
            if has {
                m.requests.to_string()
            } else {
                "-".into()
            },
            output::percent(m.success_rate),
            output::rate(m.rps),
            output::millis(m.p50_ms),
            output::millis(m.p99_ms),
        ]);
    }
    text.push_str(&t.render(colour));
    text
}

fn print_status(s: &CanaryStatus, o: Output) -> Result<(), TrafficError> {
    match o {
        Output::Table => output::print(&status_table(s)),
        o => output::print(&output::structured(s, o)?),
    }
    Ok(())
}

/// The meshed running pods of each side (`namespace/name`).
async fn side_pods(
    client: &Client,
    t: &Target,
    selector: &BTreeMap<String, String>,
    s: &CanaryStatus,
) -> Result<(BTreeSet<(String, String)>, BTreeSet<(String, String)>), TrafficError> {
    let mut out = Vec::new();
    for side in [&s.stable, &s.canary] {
        let mut labels = selector.clone();
        labels.extend(side.labels.clone());
        let pods = scrape::meshed_pods(client, Some(&t.namespace), &labels)
            .await
            .map_err(|e| store::api_error("listing", &format!("pods in {}", t.namespace), e))?;
        out.push(
            pods.iter()
                .map(|p| (t.namespace.clone(), p.name_any()))
                .collect::<BTreeSet<_>>(),
        );
    }
    let canary = out.pop().unwrap_or_default();
    let stable = out.pop().unwrap_or_default();
    Ok((stable, canary))
}

fn stats_of(
    delta: &[(String, scrape::Sample)],
    pods: &BTreeSet<(String, String)>,
    window: Option<Duration>,
) -> Stats {
    let keys: BTreeSet<String> = pods.iter().map(|(n, p)| format!("{n}/{p}")).collect();
    Stats::of(
        delta
            .iter()
            .filter(|(pod, _)| keys.contains(pod))
            .map(|(_, s)| s),
        window,
    )
}

fn warn_errors(snap: &Snapshot) {
    for (pod, e) in &snap.errors {
        output::note(&format!("warning: cannot scrape {pod}: {e}"));
    }
}

fn service_selector(
    svc: &k8s_openapi::api::core::v1::Service,
    t: &Target,
) -> Result<BTreeMap<String, String>, TrafficError> {
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            TrafficError::Failed(format!(
                "Service {}/{} has no pod selector, so its versions' pods cannot be found",
                t.namespace, t.service
            ))
        })
}

async fn status(a: StatusArgs) -> Result<(), TrafficError> {
    let (client, namespace) = a.common.connect().await?;
    let t = Target {
        namespace,
        service: a.service.clone(),
    };
    let svc = store::require_service(&client, &t).await?;
    let loaded = store::load(&client, &t).await?;
    let mut s = render::status(&loaded.res, &t)?;
    if !a.no_metrics {
        let selector = service_selector(&svc, &t)?;
        let (stable, canary) = side_pods(&client, &t, &selector, &s).await?;
        s.stable.pods = Some(stable.len());
        s.canary.pods = Some(canary.len());
        let all: BTreeSet<_> = stable.union(&canary).cloned().collect();
        let (delta, window) = if a.window.is_zero() {
            let snap = scrape::scrape(&client, &all).await;
            warn_errors(&snap);
            (snap.totals(), None)
        } else {
            let first = scrape::scrape(&client, &all).await;
            tokio::time::sleep(a.window).await;
            let second = scrape::scrape(&client, &all).await;
            warn_errors(&second);
            let window = match (first.at, second.at) {
                (Some(x), Some(y)) => y.duration_since(x),
                _ => a.window,
            };
            (second.delta(&first), Some(window))
        };
        s.stable.metrics = Some(stats_of(&delta, &stable, window));
        s.canary.metrics = Some(stats_of(&delta, &canary, window));
    }
    print_status(&s, a.common.output)
}

/// The result of a progressive rollout (`-o json|yaml`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutReport {
    /// Where the canary ended.
    #[serde(flatten)]
    pub status: CanaryStatus,
    /// Every analysis, in order.
    pub steps: Vec<StepRecord>,
}

async fn start(a: StartArgs) -> Result<(), TrafficError> {
    let (spec, weight, policy) = a.plan()?;
    let (client, namespace) = a.common.connect().await?;
    let t = Target {
        namespace,
        service: a.service.clone(),
    };
    let svc = store::require_service(&client, &t).await?;
    let command = command_line();
    let phase = if policy.is_some() {
        Phase::Progressing
    } else {
        Phase::Running
    };
    let (now, changes) = store::update(&client, &t, a.dry_run, |loaded| {
        render::start(&loaded.res, &t, &spec, weight, phase, &command).map(|r| vec![r])
    })
    .await?;
    print_changes(&changes, a.dry_run);
    let Some(policy) = policy else {
        if a.dry_run && a.common.output != Output::Table {
            output::print(&output::structured(
                &crate::route::ObjectList::of(&now)?,
                a.common.output,
            )?);
            return Ok(());
        }
        return print_status(&render::status(&now, &t)?, a.common.output);
    };
    let selector = service_selector(&svc, &t)?;
    rollout(
        &client,
        &t,
        &selector,
        weight,
        &policy,
        a.finalize,
        &command,
        a.common.output,
    )
    .await
}

/// Progress line on stderr.
fn progress(t: &Target, text: &str) {
    output::note(&format!("canary {}/{}: {text}", t.namespace, t.service));
}

fn figures(s: &Stats) -> String {
    format!(
        "{} requests, success {}, p99 {}",
        s.requests,
        output::percent(s.success_rate),
        output::millis(s.p99_ms)
    )
}

#[allow(clippy::too_many_arguments)]
async fn rollout(
    client: &Client,
    t: &Target,
    selector: &BTreeMap<String, String>,
    mut weight: u8,
    policy: &Policy,
    finalize: bool,
    command: &str,
    out: Output,
) -> Result<(), TrafficError> {
    let mut steps = Vec::new();
    let current_status = |res: &crate::route::render::Resources| render::status(res, t);
    // Pods are listed again at every scrape (new pods join; a pod without a
    // baseline is left out of that window).
    let pods_now = |s: CanaryStatus| async move { side_pods(client, t, selector, &s).await };
    let loaded = store::load(client, t).await?;
    let mut status_now = current_status(&loaded.res)?;
    let (stable, canary) = pods_now(status_now.clone()).await?;
    if canary.is_empty() {
        output::note(&format!(
            "warning: no running meshed pod has the canary's labels {} yet",
            scrape::label_selector(&status_now.canary.labels)
        ));
    }
    let mut baseline = scrape::scrape(client, &stable.union(&canary).cloned().collect()).await;
    warn_errors(&baseline);
    let mut waits = 0;
    progress(
        t,
        &format!(
            "at {weight}%, next analysis in {}s",
            policy.interval.as_secs_f64()
        ),
    );
    loop {
        tokio::select! {
            _ = tokio::time::sleep(policy.interval) => {}
            _ = tokio::signal::ctrl_c() => {
                return Err(TrafficError::Failed(format!(
                    "interrupted: the canary of {}/{} stays at {weight}% (phase progressing); \
                     run `meshctl canary promote|abort|set-weight {}`",
                    t.namespace, t.service, t.service
                )));
            }
        }
        let (stable, canary) = pods_now(status_now.clone()).await?;
        let snap = scrape::scrape(client, &stable.union(&canary).cloned().collect()).await;
        warn_errors(&snap);
        let window = match (baseline.at, snap.at) {
            (Some(a), Some(b)) => b.duration_since(a),
            _ => policy.interval,
        };
        let delta = snap.delta(&baseline);
        let canary_stats = stats_of(&delta, &canary, Some(window));
        let stable_stats = stats_of(&delta, &stable, Some(window));
        let decision = decide(policy, weight, &canary_stats, waits);
        let mut record = StepRecord {
            weight,
            window_seconds: (window.as_secs_f64() * 10.0).round() / 10.0,
            canary: canary_stats.clone(),
            stable: stable_stats.clone(),
            decision: decision.word().to_string(),
            next_weight: None,
        };
        progress(
            t,
            &format!(
                "{weight}%: canary {}; stable {} -> {}",
                figures(&canary_stats),
                figures(&stable_stats),
                decision.word()
            ),
        );
        // Any change below requires the rollout to still be ours.
        let still_ours = |res: &crate::route::render::Resources| -> Result<(), TrafficError> {
            let s = render::status(res, t)?;
            if s.phase != Phase::Progressing {
                return Err(TrafficError::Failed(format!(
                    "stopping: the canary of {}/{} is now {} at {}% (changed by another command)",
                    t.namespace,
                    t.service,
                    s.phase.as_str(),
                    s.canary.weight
                )));
            }
            Ok(())
        };
        let (edit_result, end): (Result<_, TrafficError>, Option<Result<(), TrafficError>>) =
            match &decision {
                Decision::Wait => {
                    waits += 1;
                    steps.push(record);
                    // Make sure nobody took over while we waited.
                    let loaded = store::load(client, t).await?;
                    still_ours(&loaded.res)?;
                    continue;
                }
                Decision::RollBack(reason) => {
                    let r = store::update(client, t, false, |l| {
                        still_ours(&l.res)?;
                        render::abort(&l.res, t, Phase::RolledBack, Some(reason.clone()), command)
                            .map(|r| vec![r])
                    })
                    .await;
                    record.next_weight = Some(0);
                    (
                        r,
                        Some(Err(TrafficError::RolledBack(format!(
                            "canary of {}/{} rolled back to 100% stable: {reason}",
                            t.namespace, t.service
                        )))),
                    )
                }
                Decision::Advance(next) => {
                    let next = *next;
                    let r = store::update(client, t, false, |l| {
                        still_ours(&l.res)?;
                        render::set_weight(&l.res, t, next, Phase::Progressing, None, command)
                            .map(|r| vec![r])
                    })
                    .await;
                    record.next_weight = Some(next);
                    (r, None)
                }
                Decision::Promote => {
                    let r = store::update(client, t, false, |l| {
                        still_ours(&l.res)?;
                        render::promote(&l.res, t, finalize, command)
                    })
                    .await;
                    record.next_weight = Some(100);
                    (r, Some(Ok(())))
                }
                Decision::Hold => {
                    let r = store::update(client, t, false, |l| {
                        still_ours(&l.res)?;
                        render::set_weight(&l.res, t, weight, Phase::Running, None, command)
                            .map(|r| vec![r])
                    })
                    .await;
                    (r, Some(Ok(())))
                }
            };
        steps.push(record);
        let (now, _) = edit_result?;
        status_now = current_status(&now)?;
        match end {
            None => {
                weight = status_now.canary.weight;
                waits = 0;
                baseline = snap;
                progress(t, &format!("weight set to {weight}%"));
            }
            Some(result) => {
                match &result {
                    Ok(()) => progress(
                        t,
                        &format!(
                            "{} at {}%",
                            status_now.phase.as_str(),
                            status_now.canary.weight
                        ),
                    ),
                    Err(e) => progress(t, &e.to_string()),
                }
                match out {
                    Output::Table => output::print(&status_table(&status_now)),
                    o => output::print(&output::structured(
                        &RolloutReport {
                            status: status_now,
                            steps,
                        },
                        o,
                    )?),
                }
                return result;
            }
        }
    }
}
