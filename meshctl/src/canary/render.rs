//! The pure part of `meshctl canary`: the service's DestinationRule gets
//! subsets `stable` and `canary` (labels `<subset-label>: <version>`), its
//! VirtualService a catch-all route named `canary` splitting between them,
//! and an annotation `mesh.dev/canary` with the versions and the phase.

use std::collections::BTreeMap;

use kube::ResourceExt;
use mesh_api::networking::{
    Destination, DestinationRule, HttpRoute, HttpRouteDestination, VirtualService,
};
use serde::{Deserialize, Serialize};

use crate::route::render::{
    host_of, is_catch_all, new_destination_rule, new_virtual_service, set_subset, stamp,
    upsert_route, Resources, Target,
};
use crate::route::TrafficError;
use crate::scrape::Stats;

/// Name of the VirtualService route the canary owns.
pub const CANARY_ROUTE: &str = "canary";
/// Subset of the version in production.
pub const STABLE_SUBSET: &str = "stable";
/// Subset of the new version.
pub const CANARY_SUBSET: &str = "canary";
/// VirtualService annotation holding [`CanaryState`] as JSON.
pub const CANARY_ANNOTATION: &str = "mesh.dev/canary";

/// Where a canary is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Weights set by hand (`start`, `set-weight`).
    Running,
    /// A progressive rollout is (or was, if meshctl was stopped) moving it.
    Progressing,
    /// All traffic to the canary.
    Promoted,
    /// The `stable` subset now selects the canary's version (`promote --finalize`).
    Finalized,
    /// All traffic back to stable, by `abort`.
    Aborted,
    /// All traffic back to stable, by a progressive rollout's analysis.
    RolledBack,
}

impl Phase {
    /// The kebab-case spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Progressing => "progressing",
            Self::Promoted => "promoted",
            Self::Finalized => "finalized",
            Self::Aborted => "aborted",
            Self::RolledBack => "rolled-back",
        }
    }
}

/// What the annotation records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CanaryState {
    /// Version (label value) of the stable subset.
    pub stable: String,
    /// Version of the canary subset.
    pub canary: String,
    /// The label the versions are values of.
    pub subset_label: String,
    /// Phase.
    pub phase: Phase,
    /// Why it was rolled back (or what else ended it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `canary start`'s choice of versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartSpec {
    /// Stable version.
    pub stable: String,
    /// Canary version.
    pub canary: String,
    /// Pod label the versions are values of.
    pub subset_label: String,
}

/// The canary's state as recorded on the VirtualService.
pub fn state_of(vs: &VirtualService) -> Option<CanaryState> {
    vs.annotations()
        .get(CANARY_ANNOTATION)
        .and_then(|a| serde_json::from_str(a).ok())
}

fn set_state(vs: &mut VirtualService, state: &CanaryState) {
    // Serialising a struct of strings cannot fail.
    let json = serde_json::to_string(state).unwrap_or_default();
    vs.annotations_mut()
        .insert(CANARY_ANNOTATION.to_string(), json);
}

fn split_route(host: &str, weight: u8) -> HttpRoute {
    let dest = |subset: &str, w: u8| HttpRouteDestination {
        destination: Destination {
            host: host.to_string(),
            subset: Some(subset.to_string()),
            port: None,
        },
        weight: Some(i32::from(w)),
        headers: None,
    };
    HttpRoute {
        name: Some(CANARY_ROUTE.to_string()),
        route: vec![
            dest(STABLE_SUBSET, 100 - weight),
            dest(CANARY_SUBSET, weight),
        ],
        ..Default::default()
    }
}

/// `canary start`: subsets, the split route at `weight`% canary, phase
/// `phase` (running, or progressing for a progressive rollout). Starting
/// again replaces the versions and weights.
pub fn start(
    current: &Resources,
    t: &Target,
    spec: &StartSpec,
    weight: u8,
    phase: Phase,
    command: &str,
) -> Result<Resources, TrafficError> {
    let mut vs = current
        .vs
        .clone()
        .unwrap_or_else(|| new_virtual_service(t, command));
    if let Some(other) = vs
        .spec
        .http
        .iter()
        .find(|r| is_catch_all(r) && r.name.as_deref() != Some(CANARY_ROUTE))
    {
        let name = other.name.clone().unwrap_or_else(|| "(unnamed)".into());
        return Err(TrafficError::Failed(format!(
            "route {name} of VirtualService {}/{} matches every request, so a canary split \
             after it would never be used; delete it first (meshctl route delete {} {name})",
            t.namespace,
            vs.name_any(),
            t.service
        )));
    }
    stamp(&mut vs, command);
    let host = host_of(&vs, t);
    upsert_route(&mut vs, split_route(&host, weight));
    set_state(
        &mut vs,
        &CanaryState {
            stable: spec.stable.clone(),
            canary: spec.canary.clone(),
            subset_label: spec.subset_label.clone(),
            phase,
            reason: None,
        },
    );
    let mut dr = current
        .dr
        .clone()
        .unwrap_or_else(|| new_destination_rule(t, command));
    let label = |v: &str| BTreeMap::from([(spec.subset_label.clone(), v.to_string())]);
    let a = set_subset(&mut dr, STABLE_SUBSET, label(&spec.stable));
    let b = set_subset(&mut dr, CANARY_SUBSET, label(&spec.canary));
    if a || b {
        stamp(&mut dr, command);
    }
    Ok(Resources {
        vs: Some(vs),
        dr: Some(dr),
    })
}

fn no_canary(t: &Target) -> TrafficError {
    TrafficError::NotFound(format!(
        "no canary for {}/{}: start one with `meshctl canary start {} --stable V1 --canary V2 -n {}`",
        t.namespace, t.service, t.service, t.namespace
    ))
}

/// The VirtualService and its canary state, when a split exists.
fn canary_of(
    current: &Resources,
    t: &Target,
) -> Result<(VirtualService, CanaryState), TrafficError> {
    let vs = current.vs.clone().ok_or_else(|| no_canary(t))?;
    let state = state_of(&vs).ok_or_else(|| no_canary(t))?;
    let route = vs
        .spec
        .http
        .iter()
        .find(|r| r.name.as_deref() == Some(CANARY_ROUTE))
        .ok_or_else(|| no_canary(t))?;
    if route.route.len() != 2 {
        return Err(TrafficError::NotFound(format!(
            "the canary of {}/{} is {}: start a new one with `meshctl canary start`",
            t.namespace,
            t.service,
            state.phase.as_str()
        )));
    }
    Ok((vs, state))
}

/// `canary set-weight` (and every weight change): `weight`% to the canary,
/// the rest to stable, with the new phase and reason.
pub fn set_weight(
    current: &Resources,
    t: &Target,
    weight: u8,
    phase: Phase,
    reason: Option<String>,
    command: &str,
) -> Result<Resources, TrafficError> {
    let (mut vs, mut state) = canary_of(current, t)?;
    let host = host_of(&vs, t);
    stamp(&mut vs, command);
    upsert_route(&mut vs, split_route(&host, weight));
    state.phase = phase;
    state.reason = reason;
    set_state(&mut vs, &state);
    Ok(Resources {
        vs: Some(vs),
        dr: current.dr.clone(),
    })
}

/// `canary promote`: all traffic to the canary. With `finalize`, then the
/// `stable` subset selects the canary's version, the route sends
/// everything to `stable` and the `canary` subset goes: the states to
/// write, in order (no request is ever routed to a subset that does not
/// select the new version or does not exist).
pub fn promote(
    current: &Resources,
    t: &Target,
    finalize: bool,
    command: &str,
) -> Result<Vec<Resources>, TrafficError> {
    let promoted = set_weight(current, t, 100, Phase::Promoted, None, command)?;
    if !finalize {
        return Ok(vec![promoted]);
    }
    let (mut vs, mut state) = canary_of(&promoted, t)?;
    let mut dr: DestinationRule = promoted.dr.clone().ok_or_else(|| no_canary(t))?;
    let canary_labels = dr
        .spec
        .subsets
        .iter()
        .find(|s| s.name == CANARY_SUBSET)
        .map(|s| s.labels.clone())
        .ok_or_else(|| no_canary(t))?;
    set_subset(&mut dr, STABLE_SUBSET, canary_labels);
    stamp(&mut dr, command);
    let host = host_of(&vs, t);
    upsert_route(
        &mut vs,
        HttpRoute {
            name: Some(CANARY_ROUTE.to_string()),
            route: vec![HttpRouteDestination {
                destination: Destination {
                    host,
                    subset: Some(STABLE_SUBSET.to_string()),
                    port: None,
                },
                weight: None,
                headers: None,
            }],
            ..Default::default()
        },
    );
    state.stable = state.canary.clone();
    state.phase = Phase::Finalized;
    set_state(&mut vs, &state);
    let switched = Resources {
        vs: Some(vs),
        dr: Some(dr.clone()),
    };
    let mut cleaned = dr;
    cleaned.spec.subsets.retain(|s| s.name != CANARY_SUBSET);
    Ok(vec![
        promoted,
        switched.clone(),
        Resources {
            vs: switched.vs,
            dr: Some(cleaned),
        },
    ])
}

/// `canary abort` (and a progressive rollback): all traffic to stable.
pub fn abort(
    current: &Resources,
    t: &Target,
    phase: Phase,
    reason: Option<String>,
    command: &str,
) -> Result<Resources, TrafficError> {
    set_weight(current, t, 0, phase, reason, command)
}

/// One side of the split in `canary status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Side {
    /// Subset name (`stable` / `canary`).
    pub subset: String,
    /// Version (label value).
    pub version: String,
    /// Pod labels of the subset.
    pub labels: BTreeMap<String, String>,
    /// Percent of the service's (unmatched) requests sent here.
    pub weight: u8,
    /// Meshed running pods of the subset, when looked up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pods: Option<usize>,
    /// What the subset's proxies served, when scraped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Stats>,
}

/// `canary status` (and the result of every canary command).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    /// Namespace.
    pub namespace: String,
    /// Service.
    pub service: String,
    /// Phase.
    pub phase: Phase,
    /// Why it ended (rollbacks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The stable side.
    pub stable: Side,
    /// The canary side.
    pub canary: Side,
}

/// The status the resources describe (no pods or metrics yet).
pub fn status(current: &Resources, t: &Target) -> Result<CanaryStatus, TrafficError> {
    let vs = current.vs.as_ref().ok_or_else(|| no_canary(t))?;
    let state = state_of(vs).ok_or_else(|| no_canary(t))?;
    let route = vs
        .spec
        .http
        .iter()
        .find(|r| r.name.as_deref() == Some(CANARY_ROUTE))
        .ok_or_else(|| no_canary(t))?;
    let weight_of = |subset: &str| -> u8 {
        let dests: Vec<_> = route
            .route
            .iter()
            .filter(|d| d.destination.subset.as_deref() == Some(subset))
            .collect();
        match (dests.first(), route.route.len()) {
            (None, _) => 0,
            (Some(_), 1) => 100,
            (Some(d), _) => d.weight.unwrap_or(0).clamp(0, 100) as u8,
        }
    };
    let labels_of = |subset: &str, version: &str| -> BTreeMap<String, String> {
        current
            .dr
            .as_ref()
            .and_then(|dr| dr.spec.subsets.iter().find(|s| s.name == subset))
            .map(|s| s.labels.clone())
            .unwrap_or_else(|| BTreeMap::from([(state.subset_label.clone(), version.to_string())]))
    };
    let side = |subset: &str, version: &str| Side {
        subset: subset.to_string(),
        version: version.to_string(),
        labels: labels_of(subset, version),
        weight: weight_of(subset),
        pods: None,
        metrics: None,
    };
    Ok(CanaryStatus {
        namespace: t.namespace.clone(),
        service: t.service.clone(),
        phase: state.phase,
        reason: state.reason.clone(),
        stable: side(STABLE_SUBSET, &state.stable),
        canary: side(CANARY_SUBSET, &state.canary),
    })
}
