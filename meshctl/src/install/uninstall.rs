//! `meshctl uninstall`: the webhook configuration first, then the control
//! plane, the published trust bundles, RBAC, CRDs and the namespace.

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client};

use super::apply::{self, Outcome, Progress, Report};
use super::manifest::Manifest;
use super::options::{InstallOptions, NAMESPACE};
use super::render::{self, PART_OF};
use super::webhook::WebhookTls;
use super::{print_report, CommandError, OutputFormat, UninstallArgs};

/// Name of the proxy container the injector adds (sidecar or native
/// sidecar init container), and of its image.
const PROXY: &str = mesh_injector::PROXY_CONTAINER;

/// Whether a pod runs the mesh proxy: a container (or init container, for
/// native sidecars) named `mesh-proxy` or running the `mesh-proxy` image.
pub fn runs_proxy(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| {
            c.name == PROXY
                || c.image.as_deref().is_some_and(|image| {
                    let repo = image.split('@').next().unwrap_or(image);
                    let repo = repo.rsplit_once(':').map_or(repo, |(r, tag)| {
                        // `host:5000/x` has a colon that is not a tag.
                        if tag.contains('/') {
                            repo
                        } else {
                            r
                        }
                    });
                    repo.rsplit('/').next() == Some(PROXY)
                })
        })
}

/// Pods outside mesh-system that still run the proxy and have not ended.
async fn injected_pods(client: &Client) -> anyhow::Result<Vec<String>> {
    let pods: Api<Pod> = Api::all(client.clone());
    let list = pods
        .list(&ListParams::default())
        .await
        .map_err(|e| anyhow::anyhow!("listing pods: {e}"))?;
    let mut out: Vec<String> = list
        .items
        .iter()
        .filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded" | "Failed"))
                && p.metadata.namespace.as_deref() != Some(NAMESPACE)
                && runs_proxy(p)
        })
        .map(|p| {
            format!(
                "{}/{}",
                p.metadata.namespace.as_deref().unwrap_or_default(),
                p.metadata.name.as_deref().unwrap_or_default()
            )
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Deletes the `mesh-root-ca` ConfigMaps the CA published (labelled
/// part-of=mesh) in every namespace.
async fn delete_trust_bundles(
    client: &Client,
    progress: &Progress,
    reports: &mut Vec<Report>,
) -> anyhow::Result<()> {
    let all: Api<ConfigMap> = Api::all(client.clone());
    let params = ListParams::default()
        .labels(&format!("{}={}", PART_OF.0, PART_OF.1))
        .fields(&format!(
            "metadata.name={}",
            mesh_api::svid::TRUST_BUNDLE_CONFIGMAP
        ));
    let list = all.list(&params).await.map_err(|e| {
        anyhow::anyhow!(
            "listing ConfigMaps {}: {e}",
            mesh_api::svid::TRUST_BUNDLE_CONFIGMAP
        )
    })?;
    for cm in list.items {
        let (Some(ns), Some(name)) = (cm.metadata.namespace, cm.metadata.name) else {
            continue;
        };
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let outcome = match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => Outcome::Deleted,
            Err(kube::Error::Api(s)) if s.code == 404 => Outcome::Absent,
            Err(e) => anyhow::bail!("deleting ConfigMap {ns}/{name}: {e}"),
        };
        progress.line(outcome.as_str(), &format!("ConfigMap/{ns}/{name}"));
        reports.push(Report {
            kind: "ConfigMap".into(),
            name,
            namespace: Some(ns),
            outcome,
        });
    }
    Ok(())
}

/// Runs `meshctl uninstall`.
pub async fn run_uninstall(args: UninstallArgs) -> Result<(), CommandError> {
    let client = args.cluster.connect().await?;
    let injected = injected_pods(&client).await?;
    if !injected.is_empty() && !args.yes {
        return Err(CommandError::Refused(format!(
            "refusing to uninstall: {} pod(s) still run the mesh proxy: {}. Remove the \
             mesh-injection label from their namespaces and restart them, or pass --yes to \
             uninstall anyway (they keep their last config and certificates until those expire)",
            injected.len(),
            injected.join(", ")
        )));
    }
    let progress = Progress::new(args.output != OutputFormat::Table);
    // The names do not depend on the options or the certificate.
    let placeholder = WebhookTls {
        ca_pem: String::new(),
        cert_pem: String::new(),
        key_pem: String::new(),
    };
    let manifests = render::render(&InstallOptions::default(), &placeholder);
    let mut reports = Vec::new();
    let remove = async |m: &Manifest, reports: &mut Vec<Report>| -> anyhow::Result<()> {
        let outcome = apply::remove(&client, m).await?;
        progress.line(outcome.as_str(), &m.reference());
        reports.push(Report::of(m, outcome));
        Ok(())
    };

    // 1. The webhook, so that no pod creation waits for a dying injector.
    let webhooks: Vec<&Manifest> = manifests
        .iter()
        .filter(|m| matches!(m, Manifest::Webhook(_)))
        .collect();
    for m in &webhooks {
        remove(m, &mut reports).await?;
    }
    apply::wait_gone(&client, &webhooks, args.timeout, &progress).await?;

    // 2. The Deployments (injector first), until their pods are gone: the
    //    CA must not publish trust bundles again after step 3.
    let deployments: Vec<&Manifest> = manifests
        .iter()
        .rev()
        .filter(|m| matches!(m, Manifest::Deployment(_)))
        .collect();
    for m in &deployments {
        remove(m, &mut reports).await?;
    }
    apply::wait_gone(&client, &deployments, args.timeout, &progress).await?;

    // 3. The trust bundles the CA published into meshed namespaces.
    delete_trust_bundles(&client, &progress, &mut reports).await?;

    // 4. Everything else, in reverse apply order; the namespace last.
    let rest: Vec<&Manifest> = manifests
        .iter()
        .rev()
        .filter(|m| !matches!(m, Manifest::Webhook(_) | Manifest::Deployment(_)))
        .collect();
    for m in &rest {
        remove(m, &mut reports).await?;
    }
    apply::wait_gone(&client, &rest, args.timeout, &progress).await?;

    let deleted = reports
        .iter()
        .filter(|r| r.outcome == Outcome::Deleted)
        .count();
    progress.line(
        "done",
        &format!("mesh uninstalled: {deleted} objects deleted"),
    );
    print_report(&reports, args.output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};

    fn pod(containers: &[(&str, &str)], init: &[(&str, &str)]) -> Pod {
        let c = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(name, image)| Container {
                    name: name.to_string(),
                    image: Some(image.to_string()),
                    ..Default::default()
                })
                .collect::<Vec<_>>()
        };
        Pod {
            spec: Some(PodSpec {
                containers: c(containers),
                init_containers: Some(c(init)),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn finds_the_proxy() {
        assert!(runs_proxy(&pod(
            &[("app", "nginx"), ("mesh-proxy", "x/y:1")],
            &[]
        )));
        assert!(runs_proxy(&pod(
            &[("app", "nginx")],
            &[("sidecar", "mesh.local/mesh-proxy:0.1.0")]
        )));
        assert!(runs_proxy(&pod(
            &[("p", "localhost:5000/mesh/mesh-proxy@sha256:ab")],
            &[]
        )));
        assert!(!runs_proxy(&pod(&[("app", "nginx:1")], &[])));
        assert!(!runs_proxy(&pod(
            &[("app", "mesh.local/mesh-proxy-fake:1")],
            &[]
        )));
        assert!(!runs_proxy(&pod(&[("app", "localhost:5000/app")], &[])));
    }
}
