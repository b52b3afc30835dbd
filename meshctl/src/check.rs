//! `meshctl check`: is the cluster ready for the mesh (`--pre`), and is the
//! installed mesh healthy? Every finding says what was checked, what was
//! found and, when it is not fine, what to do. Exit 1 on any failure.

use std::io::IsTerminal as _;
use std::io::Write as _;

use anyhow::Context as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use serde::Serialize;

use crate::cluster::ClusterArgs;
use crate::install::{CommandError, OutputFormat};
use crate::views;

const NAMESPACE: &str = mesh_api::INSTALL_NAMESPACE;
/// Oldest Kubernetes minor version the mesh supports.
pub const MIN_MINOR: u32 = 28;
/// First minor version with native sidecars on by default.
pub const NATIVE_SIDECAR_MINOR: u32 = 29;
/// Control-plane Deployments.
const COMPONENTS: [&str; 3] = ["mesh-ca", "mesh-controller", "mesh-injector"];

/// How a finding came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

/// One finding.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Finding {
    pub check: String,
    pub level: Level,
    pub message: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hint: String,
}

fn finding(check: &str, level: Level, message: impl Into<String>, hint: &str) -> Finding {
    Finding {
        check: check.into(),
        level,
        message: message.into(),
        hint: hint.into(),
    }
}

/// Settings of `meshctl check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Check that the cluster can run the mesh, before installing it.
    #[arg(long)]
    pub pre: bool,
    /// Warn when a certificate expires within this many days (workload
    /// certificates: hours).
    #[arg(long, default_value_t = 30)]
    pub warn_days: i64,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Help of `meshctl check`.
pub const CHECK_ABOUT: &str =
    "Check that the cluster can run the mesh, or that the installed mesh is healthy";
/// Long help of `meshctl check`.
pub const CHECK_LONG_ABOUT: &str = "\
Check the cluster and the mesh; every finding comes with a hint. Exit code 1 when any check fails \
(warnings do not fail).

With --pre (before `meshctl install`): Kubernetes version, native sidecar support, the \
permissions install needs, the nodes.

Without: the same, plus the CRDs, the control plane Deployments, the injection webhook (its \
caBundle, its serving certificate and that the API server reaches it), the mesh root and \
intermediate certificates, the proxies' workload certificates, and whether every proxy is \
connected and in sync.

Examples:
  meshctl check --pre
  meshctl check
  meshctl check -o json";

/// `(major, minor)` of a Kubernetes version (`minor` may be `29+`).
pub fn parse_version(major: &str, minor: &str) -> Option<(u32, u32)> {
    let digits = |s: &str| s.trim_end_matches('+').parse::<u32>().ok();
    Some((digits(major)?, digits(minor)?))
}

/// Findings about the Kubernetes version.
pub fn version_findings(major: &str, minor: &str, git: &str) -> Vec<Finding> {
    let Some((maj, min)) = parse_version(major, minor) else {
        return vec![finding(
            "kubernetes version",
            Level::Warn,
            format!("cannot read the version {git:?}"),
            "",
        )];
    };
    let mut out = vec![if maj == 1 && min < MIN_MINOR {
        finding(
            "kubernetes version",
            Level::Fail,
            format!("{git} is older than 1.{MIN_MINOR}"),
            "upgrade the cluster to a supported Kubernetes version",
        )
    } else {
        finding("kubernetes version", Level::Ok, git.to_string(), "")
    }];
    out.push(if maj > 1 || min >= NATIVE_SIDECAR_MINOR {
        finding(
            "native sidecars",
            Level::Ok,
            "supported: the proxy starts before and stops after the app",
            "",
        )
    } else {
        finding(
            "native sidecars",
            Level::Warn,
            "not supported: the proxy is injected as a regular container",
            "Jobs need the app to stop the proxy; upgrade to 1.29+ for native sidecars",
        )
    });
    out
}

/// Days until a PEM certificate's notAfter (negative: expired), and its subject.
pub fn cert_days_left(pem: &str, now: i64) -> anyhow::Result<(f64, String)> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("not a PEM certificate: {e}"))?;
    let cert = p
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
    let left = cert.validity().not_after.timestamp() - now;
    Ok((left as f64 / 86400.0, cert.subject().to_string()))
}

/// A finding for a certificate's remaining lifetime.
pub fn expiry_finding(check: &str, days_left: f64, warn_days: f64, hint: &str) -> Finding {
    if days_left <= 0.0 {
        finding(check, Level::Fail, "expired", hint)
    } else if days_left < warn_days {
        finding(
            check,
            Level::Warn,
            format!("expires in {days_left:.1} days"),
            hint,
        )
    } else {
        finding(
            check,
            Level::Ok,
            format!("valid for {days_left:.0} more days"),
            "",
        )
    }
}

/// Whether the webhook's serving certificate was signed by its caBundle.
pub fn signed_by(leaf_pem: &str, ca_pem: &str) -> anyhow::Result<bool> {
    let (_, leaf) = x509_parser::pem::parse_x509_pem(leaf_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("serving certificate: {e}"))?;
    let (_, ca) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("caBundle: {e}"))?;
    let leaf = leaf
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("serving certificate: {e}"))?;
    let ca = ca
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("caBundle: {e}"))?;
    Ok(leaf.verify_signature(Some(ca.public_key())).is_ok())
}

async fn can_i(
    client: &Client,
    verb: &str,
    group: &str,
    resource: &str,
    ns: Option<&str>,
) -> anyhow::Result<bool> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                namespace: ns.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let r = api
        .create(&PostParams::default(), &review)
        .await
        .context("SelfSubjectAccessReview")?;
    Ok(r.status.is_some_and(|s| s.allowed))
}

async fn cluster_findings(client: &Client, pre: bool) -> anyhow::Result<Vec<Finding>> {
    let v = client
        .apiserver_version()
        .await
        .context("reading the server version")?;
    let mut out = version_findings(&v.major, &v.minor, &v.git_version);

    // What install needs.
    let needs: [(&str, &str, &str, Option<&str>); 7] = [
        (
            "create",
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            None,
        ),
        ("create", "rbac.authorization.k8s.io", "clusterroles", None),
        (
            "create",
            "rbac.authorization.k8s.io",
            "clusterrolebindings",
            None,
        ),
        (
            "create",
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            None,
        ),
        ("create", "", "namespaces", None),
        ("create", "apps", "deployments", Some(NAMESPACE)),
        ("create", "", "secrets", Some(NAMESPACE)),
    ];
    let mut missing = Vec::new();
    for (verb, group, resource, ns) in needs {
        if !can_i(client, verb, group, resource, ns).await? {
            missing.push(format!("{verb} {resource}"));
        }
    }
    out.push(if missing.is_empty() {
        finding(
            "permissions",
            Level::Ok,
            "can create everything install needs",
            "",
        )
    } else {
        finding(
            "permissions",
            Level::Fail,
            format!("missing: {}", missing.join(", ")),
            "run install as a cluster admin (cluster-admin ClusterRole)",
        )
    });

    let nodes: Api<Node> = Api::all(client.clone());
    let nodes = nodes
        .list(&ListParams::default())
        .await
        .context("listing nodes")?;
    let ready = nodes
        .items
        .iter()
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count();
    let kernels: Vec<String> = nodes
        .items
        .iter()
        .filter_map(|n| n.status.as_ref()?.node_info.as_ref())
        .map(|i| format!("{} ({})", i.kernel_version, i.os_image))
        .collect();
    out.push(if ready == 0 {
        finding("nodes", Level::Fail, "no Ready node", "pods cannot run")
    } else {
        finding(
            "nodes",
            Level::Ok,
            format!(
                "{ready} of {} Ready; kernels: {}",
                nodes.items.len(),
                kernels.join(", ")
            ),
            "",
        )
    });
    out.push(finding(
        "iptables",
        Level::Ok,
        "mesh-proxy init picks iptables-legacy or iptables-nft per pod (the one the node uses)",
        "",
    ));

    if pre {
        let ns: Api<Namespace> = Api::all(client.clone());
        if ns.get_opt(NAMESPACE).await?.is_some() {
            out.push(finding(
                "namespace",
                Level::Warn,
                format!("{NAMESPACE} already exists"),
                "the mesh may already be installed: `meshctl check`, or `meshctl upgrade`",
            ));
        }
    }
    Ok(out)
}

async fn mesh_findings(client: &Client, warn_days: i64) -> anyhow::Result<Vec<Finding>> {
    let mut out = Vec::new();
    let now = time_now();

    // CRDs.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut bad = Vec::new();
    for crd in mesh_api::crds::all() {
        let name = crd.metadata.name.unwrap_or_default();
        let established = crds.get_opt(&name).await?.is_some_and(|c| {
            c.status.and_then(|s| s.conditions).is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            })
        });
        if !established {
            bad.push(name);
        }
    }
    out.push(if bad.is_empty() {
        finding("CRDs", Level::Ok, "all 6 established", "")
    } else {
        finding(
            "CRDs",
            Level::Fail,
            format!("missing or not established: {}", bad.join(", ")),
            "run `meshctl install`",
        )
    });

    // Control plane.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    for c in COMPONENTS {
        let f = match deployments.get_opt(c).await? {
            None => finding(c, Level::Fail, "not installed", "run `meshctl install`"),
            Some(d) => {
                let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                let have = d
                    .status
                    .as_ref()
                    .and_then(|s| s.available_replicas)
                    .unwrap_or(0);
                if have >= want && want > 0 {
                    finding(
                        c,
                        Level::Ok,
                        format!("{have}/{want} replicas available"),
                        "",
                    )
                } else {
                    finding(
                        c,
                        Level::Fail,
                        format!("{have}/{want} replicas available"),
                        &format!("kubectl -n {NAMESPACE} describe deploy/{c}; kubectl -n {NAMESPACE} logs deploy/{c}"),
                    )
                }
            }
        };
        out.push(f);
    }

    // The injection webhook.
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    match webhooks.get_opt("mesh-injector").await? {
        None => out.push(finding(
            "webhook",
            Level::Fail,
            "MutatingWebhookConfiguration mesh-injector is missing",
            "run `meshctl install`",
        )),
        Some(w) => {
            let ca = w
                .webhooks
                .iter()
                .flatten()
                .find_map(|h| h.client_config.ca_bundle.clone())
                .map(|b| String::from_utf8_lossy(&b.0).to_string())
                .unwrap_or_default();
            let leaf = secrets
                .get_opt("mesh-injector-tls")
                .await?
                .and_then(|s| s.data)
                .and_then(|d| d.get("tls.crt").cloned())
                .map(|b| String::from_utf8_lossy(&b.0).to_string());
            match (cert_days_left(&ca, now), leaf) {
                (Err(e), _) => out.push(finding(
                    "webhook caBundle",
                    Level::Fail,
                    format!("unreadable: {e}"),
                    "re-run `meshctl install` to regenerate the webhook certificate",
                )),
                (Ok(_), None) => out.push(finding(
                    "webhook certificate",
                    Level::Fail,
                    "Secret mesh-injector-tls has no tls.crt",
                    "re-run `meshctl install`",
                )),
                (Ok((ca_days, _)), Some(leaf)) => {
                    out.push(expiry_finding(
                        "webhook caBundle",
                        ca_days,
                        warn_days as f64,
                        "re-run `meshctl install` to renew",
                    ));
                    match (signed_by(&leaf, &ca), cert_days_left(&leaf, now)) {
                        (Ok(true), Ok((days, _))) => out.push(expiry_finding(
                            "webhook certificate",
                            days,
                            warn_days as f64,
                            "re-run `meshctl install` to renew",
                        )),
                        (Ok(false), _) => out.push(finding(
                            "webhook certificate",
                            Level::Fail,
                            "not signed by the webhook's caBundle: the API server will refuse it",
                            "re-run `meshctl install` to regenerate both",
                        )),
                        (Err(e), _) | (_, Err(e)) => out.push(finding(
                            "webhook certificate",
                            Level::Fail,
                            format!("{e}"),
                            "re-run `meshctl install`",
                        )),
                    }
                }
            }
            // Reachable from the API server (the path admission takes).
            let req = http::Request::get(format!(
                "/api/v1/namespaces/{NAMESPACE}/services/https:mesh-injector:443/proxy/ready"
            ))
            .body(Vec::new())?;
            out.push(match client.request_text(req).await {
                Ok(_) => finding("webhook reachable", Level::Ok, "the API server reaches the injector", ""),
                Err(e) => finding(
                    "webhook reachable",
                    Level::Fail,
                    crate::cluster::one_line(&e),
                    "check the mesh-injector pods and Service; with failurePolicy Fail pods cannot be created in labelled namespaces",
                ),
            });
        }
    }

    // Mesh root and intermediate.
    match secrets.get_opt("mesh-ca").await {
        Ok(Some(s)) => {
            let data = s.data.unwrap_or_default();
            for (key, what) in [
                ("root-cert.pem", "root certificate"),
                ("ca-cert.pem", "intermediate certificate"),
            ] {
                if let Some(pem) = data.get(key) {
                    match cert_days_left(&String::from_utf8_lossy(&pem.0), now) {
                        Ok((days, _)) => out.push(expiry_finding(
                            what,
                            days,
                            warn_days as f64,
                            "rotate the mesh CA (docs/ca.md)",
                        )),
                        Err(e) => out.push(finding(what, Level::Fail, e.to_string(), "")),
                    }
                }
            }
        }
        Ok(None) => out.push(finding(
            "root certificate",
            Level::Warn,
            "Secret mesh-ca not created yet",
            "the CA creates it on first start",
        )),
        Err(e) => out.push(finding(
            "root certificate",
            Level::Warn,
            format!(
                "cannot read Secret mesh-ca: {}",
                crate::cluster::one_line(&e)
            ),
            "needs get on secrets in mesh-system",
        )),
    }

    // Proxies: workload certificates and sync.
    out.extend(proxy_findings(client, now).await?);
    Ok(out)
}

async fn proxy_findings(client: &Client, now: i64) -> anyhow::Result<Vec<Finding>> {
    let mut out = Vec::new();
    let pods: Api<Pod> = Api::all(client.clone());
    let proxied: Vec<Pod> = pods
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(views::runs_proxy)
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .collect();
    if proxied.is_empty() {
        out.push(finding(
            "proxies",
            Level::Ok,
            "no injected pods yet",
            "label a namespace: kubectl label ns NAME mesh-injection=enabled",
        ));
        return Ok(out);
    }
    // Workload certificates (a sample: at most 50 proxies).
    let mut soonest: Option<(f64, String)> = None;
    let mut unreadable = 0;
    for p in proxied.iter().take(50) {
        let (ns, name) = (
            p.metadata.namespace.clone().unwrap_or_default(),
            p.metadata.name.clone().unwrap_or_default(),
        );
        let req = http::Request::get(format!(
            "/api/v1/namespaces/{ns}/pods/{name}:15020/proxy/metrics"
        ))
        .body(Vec::new())?;
        let expiry = match client.request_text(req).await {
            Ok(text) => text
                .lines()
                .find_map(|l| l.strip_prefix("mesh_identity_cert_expiry_timestamp_seconds "))
                .and_then(|v| v.trim().parse::<f64>().ok()),
            Err(_) => None,
        };
        match expiry {
            Some(e) if e > 0.0 => {
                let hours = (e - now as f64) / 3600.0;
                if soonest.as_ref().is_none_or(|(h, _)| hours < *h) {
                    soonest = Some((hours, format!("{ns}/{name}")));
                }
            }
            _ => unreadable += 1,
        }
    }
    out.push(match soonest {
        Some((h, pod)) if h <= 0.0 => finding(
            "workload certificates",
            Level::Fail,
            format!("{pod}'s certificate expired"),
            "check mesh-ca: proxies renew at half-life",
        ),
        Some((h, pod)) if h < 2.0 => finding(
            "workload certificates",
            Level::Warn,
            format!("{pod}'s certificate expires in {h:.1} h"),
            "proxies renew at half-life: is mesh-ca reachable?",
        ),
        Some((h, _)) => finding(
            "workload certificates",
            if unreadable > 0 {
                Level::Warn
            } else {
                Level::Ok
            },
            format!(
                "soonest expiry in {h:.1} h{}",
                if unreadable > 0 {
                    format!("; {unreadable} proxies without a certificate or metrics")
                } else {
                    String::new()
                }
            ),
            "",
        ),
        None => finding(
            "workload certificates",
            Level::Fail,
            "no proxy reports a certificate",
            "check mesh-ca and the proxies' logs",
        ),
    });
    Ok(out)
}

fn time_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The findings as lines for people.
pub fn render(findings: &[Finding], colour: bool) -> String {
    let mut out = String::new();
    for f in findings {
        let (mark, paint) = match f.level {
            Level::Ok => ("ok  ", "\x1b[32m"),
            Level::Warn => ("warn", "\x1b[33m"),
            Level::Fail => ("FAIL", "\x1b[31m"),
        };
        let mark = if colour {
            format!("{paint}{mark}\x1b[0m")
        } else {
            mark.to_string()
        };
        out += &format!("[{mark}] {}: {}\n", f.check, f.message);
        if !f.hint.is_empty() && f.level != Level::Ok {
            out += &format!("       hint: {}\n", f.hint);
        }
    }
    out
}

/// `meshctl check`.
pub async fn run_check(args: CheckArgs) -> Result<(), CommandError> {
    let client = args.cluster.connect().await?;
    let mut findings = cluster_findings(&client, args.pre).await?;
    if !args.pre {
        findings.extend(mesh_findings(&client, args.warn_days).await?);
        match views::sync_rows(&client, None).await {
            Ok(rows) => {
                let behind: Vec<String> = rows
                    .iter()
                    .filter(|r| r.status != "SYNCED")
                    .map(|r| format!("{}.{} {}", r.pod, r.namespace, r.status))
                    .collect();
                findings.push(if behind.is_empty() {
                    finding(
                        "proxies in sync",
                        Level::Ok,
                        format!("{} proxies SYNCED", rows.len()),
                        "",
                    )
                } else {
                    finding(
                        "proxies in sync",
                        Level::Fail,
                        behind.join(", "),
                        "meshctl proxy-status; a NACK names the reason",
                    )
                });
            }
            Err(e) => findings.push(finding(
                "proxies in sync",
                Level::Fail,
                format!("{e:#}"),
                "is mesh-controller running?",
            )),
        }
    }
    let text = match args.output {
        OutputFormat::Table => render(&findings, std::io::stdout().is_terminal()),
        OutputFormat::Json => serde_json::to_string_pretty(&findings).context("json")? + "\n",
        OutputFormat::Yaml => serde_yaml::to_string(&findings).context("yaml")?,
    };
    let _ = std::io::stdout().write_all(text.as_bytes());
    let failed = findings.iter().filter(|f| f.level == Level::Fail).count();
    if failed > 0 {
        return Err(CommandError::Refused(format!("{failed} checks failed")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("1", "29+"), Some((1, 29)));
        let f = version_findings("1", "27", "v1.27.3");
        assert_eq!(f[0].level, Level::Fail);
        assert_eq!(f[1].level, Level::Warn);
        let f = version_findings("1", "34", "v1.34.4");
        assert!(f.iter().all(|f| f.level == Level::Ok), "{f:?}");
    }

    fn cert(
        days: i64,
        ca: Option<&rcgen::Issuer<'_, rcgen::KeyPair>>,
    ) -> (String, rcgen::KeyPair, rcgen::CertificateParams) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["x.example".to_string()]).unwrap();
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(1);
        p.not_after = now + time::Duration::days(days);
        if ca.is_none() {
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        let pem = match ca {
            Some(issuer) => p.signed_by(&key, issuer).unwrap().pem(),
            None => p.self_signed(&key).unwrap().pem(),
        };
        (pem, key, p)
    }

    #[test]
    fn certificates_expiry_and_signature() {
        let (ca_pem, ca_key, ca_params) = cert(3650, None);
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let (leaf, _, _) = cert(10, Some(&issuer));
        let now = time_now();
        let (days, _) = cert_days_left(&leaf, now).unwrap();
        assert!((9.9..=10.1).contains(&days), "{days}");
        assert_eq!(expiry_finding("c", days, 30.0, "").level, Level::Warn);
        assert_eq!(expiry_finding("c", 100.0, 30.0, "").level, Level::Ok);
        assert_eq!(expiry_finding("c", -1.0, 30.0, "").level, Level::Fail);
        assert!(signed_by(&leaf, &ca_pem).unwrap());
        let (other_ca, _, _) = cert(3650, None);
        assert!(!signed_by(&leaf, &other_ca).unwrap());
        assert!(cert_days_left("garbage", now).is_err());
    }

    #[test]
    fn findings_render_with_hints_for_problems_only() {
        let text = render(
            &[
                finding("a", Level::Ok, "fine", "never shown"),
                finding("b", Level::Fail, "broken", "fix it"),
            ],
            false,
        );
        assert_eq!(
            text,
            "[ok  ] a: fine\n[FAIL] b: broken\n       hint: fix it\n"
        );
    }
}
