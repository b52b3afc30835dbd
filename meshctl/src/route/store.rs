//! Reading a service's VirtualService / DestinationRule from the cluster and
//! writing edits back: server-side apply (field manager `meshctl`) with the
//! read `resourceVersion` as a precondition, so a concurrent change makes
//! the edit start over instead of being lost.

use std::fmt::Debug;

use k8s_openapi::api::core::v1::Service;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use mesh_api::networking::{DestinationRule, VirtualService};
use mesh_api::resource::ResourceSet;
use mesh_api::validate::{resolve_host, MESH_GATEWAY};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::render::{validate, Resources, Target};
use super::TrafficError;

/// Field manager of everything meshctl applies.
pub const FIELD_MANAGER: &str = "meshctl";

/// How many times an edit is retried when the objects changed under it.
const CONFLICT_RETRIES: usize = 5;

/// What one write did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// `VirtualService` or `DestinationRule`.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `created`, `configured`, `deleted`, `unchanged` (and with
    /// `--dry-run`, what would have been done).
    pub outcome: String,
}

/// A service's routing resources and the namespace's other ones.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// The service's.
    pub res: Resources,
    /// The other VirtualServices and DestinationRules of the namespace (for
    /// cross-resource validation).
    pub others: ResourceSet,
}

pub(crate) fn api_error(action: &str, what: &str, e: kube::Error) -> TrafficError {
    match &e {
        kube::Error::Api(s) if s.code == 404 && action == "listing" => TrafficError::Failed(format!(
            "listing {what}: the API server does not know the resource; are the mesh CRDs installed? (meshctl install)"
        )),
        _ => TrafficError::Failed(format!(
            "{action} {what}: {}",
            crate::cluster::one_line(&e)
        )),
    }
}

/// The Kubernetes Service `t` names; an error naming it when absent.
pub async fn require_service(client: &Client, t: &Target) -> Result<Service, TrafficError> {
    let api: Api<Service> = Api::namespaced(client.clone(), &t.namespace);
    api.get_opt(&t.service)
        .await
        .map_err(|e| {
            api_error(
                "reading",
                &format!("Service {}/{}", t.namespace, t.service),
                e,
            )
        })?
        .ok_or_else(|| {
            TrafficError::NotFound(format!(
                "no Service {:?} in namespace {:?} (kubectl get svc -n {})",
                t.service, t.namespace, t.namespace
            ))
        })
}

/// Whether `host` (as written in a resource of `namespace`) is the service.
fn is_service_host(host: &str, namespace: &str, t: &Target) -> bool {
    resolve_host(host, namespace) == resolve_host(&t.service, &t.namespace)
}

/// The service's VirtualService (one of the mesh gateway with its host,
/// preferring the one named after it) and DestinationRule, and the rest.
pub async fn load(client: &Client, t: &Target) -> Result<Loaded, TrafficError> {
    let vs_api: Api<VirtualService> = Api::namespaced(client.clone(), &t.namespace);
    let dr_api: Api<DestinationRule> = Api::namespaced(client.clone(), &t.namespace);
    let what = |k: &str| format!("{k}s in namespace {}", t.namespace);
    let vss = vs_api
        .list(&ListParams::default())
        .await
        .map_err(|e| api_error("listing", &what("VirtualService"), e))?
        .items;
    let drs = dr_api
        .list(&ListParams::default())
        .await
        .map_err(|e| api_error("listing", &what("DestinationRule"), e))?
        .items;
    Ok(pick(vss, drs, t))
}

/// [`load`]'s choice among listed objects.
pub fn pick(mut vss: Vec<VirtualService>, mut drs: Vec<DestinationRule>, t: &Target) -> Loaded {
    let ns = t.namespace.as_str();
    let ours_vs = |v: &VirtualService| {
        (v.spec.gateways.is_empty() || v.spec.gateways.iter().any(|g| g == MESH_GATEWAY))
            && v.spec.hosts.iter().any(|h| is_service_host(h, ns, t))
    };
    vss.sort_by_key(|v| (v.name_any() != t.service, v.name_any()));
    drs.sort_by_key(|d| (d.name_any() != t.service, d.name_any()));
    let vs = vss.iter().position(ours_vs).map(|i| vss.remove(i));
    let dr = drs
        .iter()
        .position(|d| is_service_host(&d.spec.host, ns, t))
        .map(|i| drs.remove(i));
    Loaded {
        res: Resources { vs, dr },
        others: ResourceSet {
            virtual_services: vss,
            destination_rules: drs,
            ..Default::default()
        },
    }
}

/// The object as meshctl applies it: without server-set metadata and
/// status, keeping `resourceVersion` as the precondition.
fn for_apply<K: Resource + Clone>(obj: &K) -> K {
    let mut o = obj.clone();
    let m = o.meta_mut();
    m.managed_fields = None;
    m.uid = None;
    m.creation_timestamp = None;
    m.generation = None;
    m.self_link = None;
    o
}

fn is_conflict(e: &TrafficError) -> bool {
    matches!(e, TrafficError::Conflict(_))
}

async fn write<K>(
    api: &Api<K>,
    before: Option<&K>,
    after: Option<&K>,
    dry_run: bool,
    changes: &mut Vec<Change>,
) -> Result<Option<K>, TrafficError>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Serialize + PartialEq,
{
    let kind = K::kind(&()).to_string();
    let (obj, outcome) = match (before, after) {
        (None, None) => return Ok(None),
        (Some(b), Some(a)) if b == a => {
            changes.push(change(&kind, a, "unchanged"));
            return Ok(Some(a.clone()));
        }
        (Some(b), None) => {
            changes.push(change(&kind, b, "deleted"));
            if !dry_run {
                let name = b.name_any();
                let dp = DeleteParams {
                    preconditions: b.meta().resource_version.clone().map(|rv| {
                        kube::api::Preconditions {
                            resource_version: Some(rv),
                            uid: None,
                        }
                    }),
                    ..Default::default()
                };
                match api.delete(&name, &dp).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        return Err(TrafficError::Conflict(name));
                    }
                    Err(e) => return Err(api_error("deleting", &format!("{kind} {name}"), e)),
                }
            }
            return Ok(None);
        }
        (None, Some(a)) => (a, "created"),
        (Some(_), Some(a)) => (a, "configured"),
    };
    changes.push(change(&kind, obj, outcome));
    if dry_run {
        return Ok(Some(obj.clone()));
    }
    let name = obj.name_any();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api
        .patch(&name, &params, &Patch::Apply(for_apply(obj)))
        .await
    {
        Ok(o) => Ok(Some(o)),
        Err(kube::Error::Api(s)) if s.code == 409 => Err(TrafficError::Conflict(name)),
        Err(e) => Err(api_error("applying", &format!("{kind} {name}"), e)),
    }
}

fn change<K: Resource<DynamicType = ()>>(kind: &str, o: &K, outcome: &str) -> Change {
    Change {
        kind: kind.to_string(),
        namespace: o.meta().namespace.clone().unwrap_or_default(),
        name: o.meta().name.clone().unwrap_or_default(),
        outcome: outcome.to_string(),
    }
}

/// Writes `after` over `before`: DestinationRule first (subsets exist
/// before a route uses them), then the VirtualService, then a
/// DestinationRule deletion. Returns what is now in the cluster.
pub async fn save(
    client: &Client,
    t: &Target,
    before: &Resources,
    after: &Resources,
    dry_run: bool,
    changes: &mut Vec<Change>,
) -> Result<Resources, TrafficError> {
    let vs_api: Api<VirtualService> = Api::namespaced(client.clone(), &t.namespace);
    let dr_api: Api<DestinationRule> = Api::namespaced(client.clone(), &t.namespace);
    let mut now = Resources::default();
    if after.dr.is_some() {
        now.dr = write(
            &dr_api,
            before.dr.as_ref(),
            after.dr.as_ref(),
            dry_run,
            changes,
        )
        .await?;
    }
    now.vs = write(
        &vs_api,
        before.vs.as_ref(),
        after.vs.as_ref(),
        dry_run,
        changes,
    )
    .await?;
    if after.dr.is_none() {
        now.dr = write(&dr_api, before.dr.as_ref(), None, dry_run, changes).await?;
    }
    Ok(now)
}

/// Read, edit, validate, write: `edit` gets what is in the cluster and
/// returns the states to write, in order (most edits are one state; a
/// canary's finalize is several). The whole edit starts over when an
/// object changed since it was read.
pub async fn update<F>(
    client: &Client,
    t: &Target,
    dry_run: bool,
    edit: F,
) -> Result<(Resources, Vec<Change>), TrafficError>
where
    F: Fn(&Loaded) -> Result<Vec<Resources>, TrafficError>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let loaded = load(client, t).await?;
        let steps = edit(&loaded)?;
        for s in &steps {
            let errors = validate(s, &loaded.others);
            if !errors.is_empty() {
                return Err(TrafficError::Invalid(errors));
            }
        }
        let mut changes = Vec::new();
        let mut current = loaded.res.clone();
        let mut result = Ok(());
        for (i, step) in steps.iter().enumerate() {
            // Later steps start from what the API server returned, with its
            // new resourceVersion.
            let mut step = step.clone();
            if i > 0 {
                carry_versions(&current, &mut step);
            }
            match save(client, t, &current, &step, dry_run, &mut changes).await {
                Ok(now) => current = if dry_run { step } else { now },
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        match result {
            Ok(()) => return Ok((current, merge_changes(changes))),
            Err(e) if is_conflict(&e) && attempt < CONFLICT_RETRIES => continue,
            Err(TrafficError::Conflict(name)) => {
                return Err(TrafficError::Failed(format!(
                    "{name} kept changing while meshctl edited it ({CONFLICT_RETRIES} tries); try again"
                )))
            }
            Err(e) => return Err(e),
        }
    }
}

fn carry_versions(current: &Resources, step: &mut Resources) {
    if let (Some(c), Some(s)) = (&current.vs, &mut step.vs) {
        s.metadata.resource_version = c.metadata.resource_version.clone();
        s.metadata.managed_fields = c.metadata.managed_fields.clone();
        s.metadata.uid = c.metadata.uid.clone();
        s.metadata.creation_timestamp = c.metadata.creation_timestamp.clone();
        s.metadata.generation = c.metadata.generation;
        s.status = c.status.clone();
    }
    if let (Some(c), Some(s)) = (&current.dr, &mut step.dr) {
        s.metadata.resource_version = c.metadata.resource_version.clone();
        s.metadata.managed_fields = c.metadata.managed_fields.clone();
        s.metadata.uid = c.metadata.uid.clone();
        s.metadata.creation_timestamp = c.metadata.creation_timestamp.clone();
        s.metadata.generation = c.metadata.generation;
        s.status = c.status.clone();
    }
}

/// One line per object: its first non-`unchanged` outcome wins (a
/// several-step edit reports each object once).
fn merge_changes(changes: Vec<Change>) -> Vec<Change> {
    let mut out: Vec<Change> = Vec::new();
    for c in changes {
        match out
            .iter_mut()
            .find(|o| o.kind == c.kind && o.name == c.name)
        {
            Some(o) if o.outcome == "unchanged" => o.outcome = c.outcome,
            Some(o) if o.outcome == "created" && c.outcome == "deleted" => o.outcome = c.outcome,
            Some(_) => {}
            None => out.push(c),
        }
    }
    out
}
