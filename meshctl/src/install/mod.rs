//! `meshctl install`, `meshctl upgrade` and `meshctl uninstall`: the control
//! plane rendered from typed objects, server-side applied in dependency
//! order, and waited for.

pub mod apply;
pub mod manifest;
pub mod options;
pub mod render;
pub mod uninstall;
pub mod webhook;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use crate::cluster::{ClusterArgs, ClusterError, EXIT_FAILURE, EXIT_UNREACHABLE, EXIT_USAGE};
use apply::{Outcome, Progress, Report};
use manifest::Manifest;
use options::{Component, FailurePolicy, InstallOptions, OptionsError, PullPolicy, NAMESPACE};
use webhook::WebhookTls;

/// Output format of the cluster commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// Progress lines for people (default).
    #[default]
    Table,
    /// YAML: the manifests with --dry-run, otherwise a report of what was done.
    Yaml,
    /// JSON: a `List` of the manifests with --dry-run, otherwise a report.
    Json,
}

/// `--dry-run` modes, as kubectl names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DryRun {
    /// Print the manifests; talk to no cluster.
    Client,
    /// Send every object to the API server for validation, persist nothing.
    Server,
}

/// `meshctl install` / `meshctl upgrade` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct InstallArgs {
    /// Cluster access.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Image registry: images are <REGISTRY>/<component>:<TAG>.
    #[arg(long, default_value = options::DEFAULT_REGISTRY, value_name = "REGISTRY")]
    pub registry: String,
    /// Image tag (default: this meshctl's version).
    #[arg(long, default_value = options::DEFAULT_TAG, value_name = "TAG")]
    pub tag: String,
    /// Image pull policy of the control plane and the injected proxy.
    #[arg(long, value_enum, default_value = "IfNotPresent", ignore_case = true)]
    pub pull_policy: PullPolicy,
    /// Trust domain of workload identities (spiffe://<trust-domain>/ns/..).
    #[arg(long, default_value = mesh_api::DEFAULT_TRUST_DOMAIN, value_name = "DOMAIN")]
    pub trust_domain: String,
    /// mesh-ca replicas.
    #[arg(long, default_value_t = options::DEFAULT_REPLICAS, value_name = "N")]
    pub ca_replicas: u16,
    /// mesh-controller replicas (one writes status, chosen by a Lease).
    #[arg(long, default_value_t = options::DEFAULT_REPLICAS, value_name = "N")]
    pub controller_replicas: u16,
    /// mesh-injector replicas.
    #[arg(long, default_value_t = options::DEFAULT_REPLICAS, value_name = "N")]
    pub injector_replicas: u16,
    /// What the API server does with a pod when the injector does not
    /// answer: Fail refuses the pod, Ignore admits it without a proxy.
    #[arg(long, value_enum, default_value = "Fail", ignore_case = true)]
    pub failure_policy: FailurePolicy,
    /// Print the manifests instead of applying them (`client`, the default
    /// when the flag has no value), or have the API server validate them
    /// without persisting anything (`server`).
    #[arg(long, value_enum, num_args = 0..=1, require_equals = true, default_missing_value = "client", value_name = "MODE")]
    pub dry_run: Option<DryRun>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: OutputFormat,
    /// Components to wait for before the webhook is registered
    /// (comma-separated; `none` to wait for nothing).
    #[arg(long, value_delimiter = ',', value_name = "COMPONENTS", value_parser = parse_wait_for, default_value = "ca,controller,injector")]
    pub wait_for: Vec<WaitFor>,
    /// How long to wait for CRDs and each step of the rollout.
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
}

/// An element of `--wait-for`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitFor {
    /// Wait for this component.
    Component(Component),
    /// Wait for nothing.
    Nothing,
}

fn parse_wait_for(s: &str) -> Result<WaitFor, String> {
    match s.trim() {
        "none" => Ok(WaitFor::Nothing),
        "ca" | "mesh-ca" => Ok(WaitFor::Component(Component::Ca)),
        "controller" | "mesh-controller" => Ok(WaitFor::Component(Component::Controller)),
        "injector" | "mesh-injector" => Ok(WaitFor::Component(Component::Injector)),
        other => Err(format!(
            "{other:?} is not a component: use ca, controller, injector or none"
        )),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    mesh_api::parse_duration(s).map_err(|e| e.to_string())
}

impl InstallArgs {
    /// The options these flags describe, validated.
    pub fn options(&self) -> Result<InstallOptions, OptionsError> {
        let o = InstallOptions {
            registry: self.registry.clone(),
            tag: self.tag.clone(),
            pull_policy: self.pull_policy,
            trust_domain: self.trust_domain.clone(),
            ca_replicas: self.ca_replicas,
            controller_replicas: self.controller_replicas,
            injector_replicas: self.injector_replicas,
            failure_policy: self.failure_policy,
        };
        o.validate()?;
        Ok(o)
    }

    fn components_to_wait_for(&self) -> Vec<Component> {
        let mut out: Vec<Component> = self
            .wait_for
            .iter()
            .filter_map(|w| match w {
                WaitFor::Component(c) => Some(*c),
                WaitFor::Nothing => None,
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// `meshctl uninstall` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct UninstallArgs {
    /// Cluster access.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Uninstall even though pods still run the mesh proxy (they lose
    /// their certificates' renewal and their config updates).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: OutputFormat,
    /// How long to wait for each object to be gone.
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
}

/// Why a cluster command failed; decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Bad flags (exit 2).
    #[error(transparent)]
    Usage(#[from] OptionsError),
    /// No cluster (exit 3).
    #[error(transparent)]
    Unreachable(#[from] ClusterError),
    /// Refused to act, e.g. uninstall with injected pods (exit 1).
    #[error("{0}")]
    Refused(String),
    /// Anything else (exit 1).
    #[error("{0:#}")]
    Failed(#[from] anyhow::Error),
}

impl CommandError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => EXIT_USAGE,
            Self::Unreachable(_) => EXIT_UNREACHABLE,
            Self::Refused(_) | Self::Failed(_) => EXIT_FAILURE,
        }
    }
}

/// Help text of `meshctl install`.
pub const INSTALL_ABOUT: &str = "Install the mesh control plane into the cluster";
/// Long help of `meshctl install`.
pub const INSTALL_LONG_ABOUT: &str = "\
Install the mesh control plane into the cluster: namespace mesh-system, the mesh CRDs, \
least-privilege RBAC, the CA, the controller, the injector (Deployments and Services), its \
serving certificate and configuration, and the MutatingWebhookConfiguration, last.

Objects are applied with server-side apply (field manager `meshctl`) in dependency order; \
install waits for the CRDs to be Established and each component to be Ready before it \
registers the webhook. Running it again changes nothing (objects are reported `unchanged`); \
the webhook's serving certificate is read back from Secret mesh-system/mesh-injector-tls and \
reused.

Examples:
  meshctl install
  meshctl install --registry ghcr.io/acme --tag 0.2.0 --trust-domain prod.acme.com
  meshctl install --controller-replicas 2 --failure-policy Ignore
  meshctl install --dry-run -o yaml > mesh.yaml     # print, talk to no cluster
  meshctl install --dry-run=server                  # validate on the API server";

/// Help text of `meshctl upgrade`.
pub const UPGRADE_ABOUT: &str = "Upgrade an installed control plane to this meshctl's version";
/// Long help of `meshctl upgrade`.
pub const UPGRADE_LONG_ABOUT: &str = "\
Upgrade an installed control plane: the same apply as `meshctl install` (so the same flags), \
for the version given by --tag (default: this meshctl's version). Fails when nothing is \
installed. Deployments roll one new pod in before an old one goes.

Examples:
  meshctl upgrade
  meshctl upgrade --tag 0.2.0 --registry ghcr.io/acme";

/// Help text of `meshctl uninstall`.
pub const UNINSTALL_ABOUT: &str = "Remove the mesh control plane, its CRDs and webhook";
/// Long help of `meshctl uninstall`.
pub const UNINSTALL_LONG_ABOUT: &str = "\
Remove everything `meshctl install` created: the webhook configuration first (so no new pod \
is sent to a disappearing injector), then the Deployments, the trust bundle ConfigMaps \
(mesh-root-ca) the CA published into meshed namespaces, Services, RBAC, the mesh CRDs (and \
with them every mesh resource in the cluster) and the namespace mesh-system; waits until \
they are gone.

Refuses (exit 1) while pods still run the mesh proxy, listing them, unless --yes is given.

Examples:
  meshctl uninstall
  meshctl uninstall --yes -o json";

/// Runs `meshctl install` (or `upgrade`, which first checks that there is
/// an installation).
pub async fn run_install(args: InstallArgs, upgrade: bool) -> Result<(), CommandError> {
    let opts = args.options()?;
    if args.dry_run == Some(DryRun::Client) {
        let tls = WebhookTls::generate()
            .map_err(|e| anyhow::anyhow!("making the webhook certificate: {e}"))?;
        let manifests = render::render(&opts, &tls);
        print_manifests(&manifests, args.output)?;
        return Ok(());
    }
    let client = args.cluster.connect().await?;
    let server_dry_run = args.dry_run == Some(DryRun::Server);
    let progress = Progress::new(args.output != OutputFormat::Table);
    if upgrade {
        let from = installed_version(&client)
            .await?
            .ok_or_else(|| {
                CommandError::Refused(format!(
                    "the mesh is not installed (no Deployment {NAMESPACE}/mesh-controller): run `meshctl install`"
                ))
            })?;
        progress.line("upgrading", &format!("from {from} to {}", opts.tag));
    }
    let tls = injector_tls(&client).await?;
    let manifests = render::render(&opts, &tls);
    let mut reports = Vec::new();
    let (webhooks, rest): (Vec<&Manifest>, Vec<&Manifest>) = manifests
        .iter()
        .partition(|m| matches!(m, Manifest::Webhook(_)));
    let crds: Vec<_> = manifests
        .iter()
        .filter_map(|m| match m {
            Manifest::Crd(c) => Some(c),
            _ => None,
        })
        .collect();
    for (i, m) in rest.iter().enumerate() {
        let outcome = apply::apply(&client, m, server_dry_run)
            .await
            .map_err(anyhow::Error::from)?;
        progress.line(outcome.as_str(), &m.reference());
        reports.push(Report::of(m, outcome));
        let last_crd =
            matches!(m, Manifest::Crd(_)) && !matches!(rest.get(i + 1), Some(Manifest::Crd(_)));
        if last_crd && !server_dry_run {
            apply::wait_established(&client, &crds, args.timeout, &progress).await?;
        }
    }
    if !server_dry_run {
        let wait = args.components_to_wait_for();
        apply::wait_ready(&client, &wait, args.timeout, &progress).await?;
    }
    for m in webhooks {
        let outcome = apply::apply(&client, m, server_dry_run)
            .await
            .map_err(anyhow::Error::from)?;
        progress.line(outcome.as_str(), &m.reference());
        reports.push(Report::of(m, outcome));
    }
    let count = |o: Outcome| reports.iter().filter(|r| r.outcome == o).count();
    let verb = match (server_dry_run, upgrade) {
        (true, _) => "validated (server dry run; nothing persisted)",
        (false, true) => "upgraded",
        (false, false) => "installed",
    };
    progress.line(
        "done",
        &format!(
            "mesh {} {verb}: {} created, {} configured, {} unchanged",
            opts.tag,
            count(Outcome::Created),
            count(Outcome::Configured),
            count(Outcome::Unchanged)
        ),
    );
    print_report(&reports, args.output)
}

/// The webhook certificate: the one in the Secret if it is usable, else a
/// new one.
async fn injector_tls(client: &Client) -> Result<WebhookTls, CommandError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let existing = secrets
        .get_opt(render::INJECTOR_TLS_SECRET)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "reading Secret {NAMESPACE}/{}: {e}",
                render::INJECTOR_TLS_SECRET
            )
        })?;
    if let Some(tls) = existing.as_ref().and_then(WebhookTls::from_secret) {
        return Ok(tls);
    }
    Ok(WebhookTls::generate()
        .map_err(|e| anyhow::anyhow!("making the webhook certificate: {e}"))?)
}

/// The version label of the installed controller, if there is one.
async fn installed_version(client: &Client) -> Result<Option<String>, CommandError> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let d = deployments
        .get_opt(Component::Controller.name())
        .await
        .map_err(|e| anyhow::anyhow!("reading Deployment {NAMESPACE}/mesh-controller: {e}"))?;
    Ok(d.map(|d| {
        d.metadata
            .labels
            .and_then(|l| l.get(render::VERSION_LABEL).cloned())
            .unwrap_or_else(|| "an unknown version".to_string())
    }))
}

fn print_manifests(manifests: &[Manifest], output: OutputFormat) -> Result<(), CommandError> {
    let text = match output {
        OutputFormat::Json => manifest::to_json(manifests).map_err(anyhow::Error::from)?,
        // Table makes no sense for manifests; YAML is what people apply.
        OutputFormat::Yaml | OutputFormat::Table => {
            manifest::to_yaml(manifests).map_err(anyhow::Error::from)?
        }
    };
    write_stdout(&text);
    Ok(())
}

/// The `-o json|yaml` report of what was done (nothing extra for table:
/// the progress lines said it).
pub(crate) fn print_report(reports: &[Report], output: OutputFormat) -> Result<(), CommandError> {
    let text = match output {
        OutputFormat::Table => return Ok(()),
        OutputFormat::Json => {
            let mut t = serde_json::to_string_pretty(reports).map_err(anyhow::Error::from)?;
            t.push('\n');
            t
        }
        OutputFormat::Yaml => serde_yaml::to_string(reports).map_err(anyhow::Error::from)?,
    };
    write_stdout(&text);
    Ok(())
}

fn write_stdout(text: &str) {
    use std::io::Write as _;
    // `meshctl install --dry-run | head` closes the pipe early; that is
    // not an error worth a message.
    let _ = std::io::stdout().write_all(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        install: InstallArgs,
    }

    fn parse(args: &[&str]) -> Result<InstallArgs, clap::Error> {
        let mut v = vec!["meshctl"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).map(|c| c.install)
    }

    #[test]
    fn defaults() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.options().unwrap(), InstallOptions::default());
        assert_eq!(a.dry_run, None);
        assert_eq!(
            a.components_to_wait_for(),
            vec![Component::Ca, Component::Controller, Component::Injector]
        );
        assert_eq!(a.timeout, Duration::from_secs(300));
    }

    #[test]
    fn flags() {
        let a = parse(&[
            "--registry=ghcr.io/acme",
            "--tag=0.2.0",
            "--pull-policy=never",
            "--trust-domain=prod.acme.com",
            "--controller-replicas=3",
            "--failure-policy=ignore",
            "--dry-run",
            "-o",
            "json",
            "--wait-for=controller,ca",
            "--timeout=90s",
        ])
        .unwrap();
        let o = a.options().unwrap();
        assert_eq!(o.image("mesh-ca"), "ghcr.io/acme/mesh-ca:0.2.0");
        assert_eq!(o.pull_policy, PullPolicy::Never);
        assert_eq!(o.controller_replicas, 3);
        assert_eq!(o.failure_policy, FailurePolicy::Ignore);
        assert_eq!(a.dry_run, Some(DryRun::Client));
        assert_eq!(a.output, OutputFormat::Json);
        assert_eq!(
            a.components_to_wait_for(),
            vec![Component::Ca, Component::Controller]
        );
        assert_eq!(a.timeout, Duration::from_secs(90));
        assert_eq!(
            parse(&["--dry-run=server"]).unwrap().dry_run,
            Some(DryRun::Server)
        );
        assert!(parse(&["--wait-for=none"])
            .unwrap()
            .components_to_wait_for()
            .is_empty());
    }

    #[test]
    fn bad_flags_say_what_is_wrong() {
        for (args, says) in [
            (&["--failure-policy=sometimes"][..], "sometimes"),
            (&["--ca-replicas=-1"][..], "--ca-replicas"),
            (&["--wait-for=proxy"][..], "not a component"),
            (&["--timeout=soon"][..], "--timeout"),
            (&["--dry-run=maybe"][..], "maybe"),
            (&["-o", "xml"][..], "xml"),
        ] {
            let e = parse(args).unwrap_err().to_string();
            assert!(e.contains(says), "{args:?}: {e}");
        }
        let e = parse(&["--tag=a/b"]).unwrap().options().unwrap_err();
        let e = CommandError::from(e);
        assert_eq!(e.exit_code(), EXIT_USAGE);
        assert!(e.to_string().starts_with("--tag \"a/b\""), "{e}");
    }
}
