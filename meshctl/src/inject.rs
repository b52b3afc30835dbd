//! `meshctl inject -f FILE|-`: the webhook's injection, offline, on YAML.
//!
//! Every document is read; Pods and the pod templates of Deployments,
//! StatefulSets, DaemonSets, ReplicaSets, Jobs and CronJobs get exactly the
//! patch the webhook would apply (`mesh_injector::inject_pod`, the same
//! code); every other document passes through unchanged. The namespace
//! counts as labelled for injection (asking for injection is the opt-in); a
//! `mesh.dev/inject: "false"` pod still opts out.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use mesh_injector::{Decision, InjectorConfig, NamespaceInfo, NativeSidecar};
use serde_json::Value;

use crate::install::CommandError;

/// Settings of `meshctl inject`.
#[derive(Debug, clap::Args)]
pub struct InjectArgs {
    /// YAML file to inject (`-` for standard input).
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
    /// Injector configuration (the `config.yaml` of the `mesh-injector`
    /// ConfigMap); default: the built-in defaults.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Namespace of documents that name none.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Inject the proxy as a native sidecar (Kubernetes 1.29+): always,
    /// never, or auto (= the config's `nativeSidecar`, auto meaning yes).
    #[arg(long, value_name = "auto|always|never")]
    pub native_sidecar: Option<NativeSidecar>,
}

/// Help of `meshctl inject`.
pub const INJECT_ABOUT: &str = "Add the mesh proxy to the pods of YAML manifests, offline";
/// Long help of `meshctl inject`.
pub const INJECT_LONG_ABOUT: &str = "\
Add the mesh proxy (init container and sidecar) to Pods and to the pod templates of \
Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs and CronJobs, exactly as the \
injection webhook would, and print the result. Other documents pass through unchanged. \
Pods that opt out (mesh.dev/inject: \"false\"), host-network pods and pods that already \
have the proxy are left as they are (the reason goes to standard error).

Examples:
  meshctl inject -f deploy.yaml | kubectl apply -f -
  kubectl get deploy web -o yaml | meshctl inject -f - --native-sidecar never";

/// The workload kinds whose pod template is at `spec.template` (or, for
/// CronJobs, `spec.jobTemplate.spec.template`).
fn template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// Injects one document; returns it and, when nothing was injected, why.
pub fn inject_document(
    mut doc: Value,
    default_ns: &str,
    config: &InjectorConfig,
    native: bool,
) -> anyhow::Result<(Value, Option<String>)> {
    let kind = doc["kind"].as_str().unwrap_or_default().to_string();
    let name = doc["metadata"]["name"].as_str().unwrap_or("?").to_string();
    let ns = doc["metadata"]["namespace"]
        .as_str()
        .unwrap_or(default_ns)
        .to_string();
    let ns_info = NamespaceInfo::enabled(ns.clone());
    let what = format!("{kind} {ns}/{name}");
    if kind == "Pod" {
        let pod: Pod = serde_json::from_value(doc.clone()).with_context(|| what.clone())?;
        let (decision, out) = mesh_injector::inject_pod(&pod, &ns_info, config, native)
            .with_context(|| what.clone())?;
        return Ok(match decision {
            Decision::Skip(why) => (doc, Some(format!("{what}: {why}"))),
            Decision::Inject(_) => (serde_json::to_value(out)?, None),
        });
    }
    let Some(pointer) = template_pointer(&kind) else {
        return Ok((doc, Some(format!("{what}: not a workload"))));
    };
    let Some(template) = doc.pointer_mut(pointer) else {
        return Ok((doc, Some(format!("{what}: no pod template"))));
    };
    let t: PodTemplateSpec = serde_json::from_value(template.clone())
        .with_context(|| format!("{what}: pod template"))?;
    let mut meta = t.metadata.unwrap_or_default();
    // The pod's namespace; its name would come from the workload.
    meta.namespace = Some(ns.clone());
    if meta.name.is_none() && meta.generate_name.is_none() {
        meta.generate_name = Some(format!("{name}-"));
    }
    let pod = Pod {
        metadata: meta,
        spec: t.spec,
        ..Default::default()
    };
    let (decision, out) =
        mesh_injector::inject_pod(&pod, &ns_info, config, native).with_context(|| what.clone())?;
    match decision {
        Decision::Skip(why) => Ok((doc, Some(format!("{what}: {why}")))),
        Decision::Inject(_) => {
            let mut meta = out.metadata;
            meta.namespace = None;
            if meta.generate_name.as_deref() == Some(&format!("{name}-")) {
                meta.generate_name = None;
            }
            let injected = PodTemplateSpec {
                metadata: Some(meta),
                spec: out.spec,
            };
            *template = serde_json::to_value(injected)?;
            Ok((doc, None))
        }
    }
}

/// Injects every document of a YAML stream; returns the output stream and
/// the notes about documents left as they were.
pub fn inject_stream(
    text: &str,
    default_ns: &str,
    config: &InjectorConfig,
    native: bool,
) -> anyhow::Result<(String, Vec<String>)> {
    use serde::Deserialize as _;
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc = Value::deserialize(de).with_context(|| format!("document {}", i + 1))?;
        if doc.is_null() {
            continue;
        }
        let (doc, note) = inject_document(doc, default_ns, config, native)
            .with_context(|| format!("document {}", i + 1))?;
        out.push(serde_yaml::to_string(&doc)?);
        notes.extend(note);
    }
    Ok((out.join("---\n"), notes))
}

/// `meshctl inject`.
pub async fn run_inject(args: InjectArgs) -> Result<(), CommandError> {
    let text = if args.file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        s
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?
    };
    let config = match &args.config {
        Some(p) => InjectorConfig::load(p).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => InjectorConfig::default(),
    };
    let native = args
        .native_sidecar
        .unwrap_or(config.native_sidecar)
        .resolve(true);
    let (out, notes) = inject_stream(&text, &args.namespace, &config, native)?;
    for n in notes {
        eprintln!("meshctl inject: left unchanged: {n}");
    }
    let _ = std::io::stdout().write_all(out.as_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INPUT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: app, image: web:1}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: solo, annotations: {mesh.dev/inject: "false"}}
spec:
  containers: [{name: app, image: solo:1}]
"#;

    #[test]
    fn workloads_get_the_proxy_other_documents_pass_through() {
        let cfg = InjectorConfig::default();
        let (out, notes) = inject_stream(INPUT, "default", &cfg, true).unwrap();
        let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&out)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 3);
        let spec = &docs[0]["spec"]["template"]["spec"];
        let inits: Vec<&str> = spec["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(inits, vec!["mesh-init", "mesh-proxy"], "{out}");
        assert_eq!(
            docs[0]["spec"]["template"]["metadata"]["namespace"],
            Value::Null
        );
        assert_eq!(docs[1]["kind"], "Service");
        assert!(docs[2]["spec"]["initContainers"].is_null(), "opted out");
        assert!(
            notes.iter().any(|n| n.contains("Service default/web")),
            "{notes:?}"
        );
        assert!(
            notes.iter().any(|n| n.contains("Pod default/solo")),
            "{notes:?}"
        );
        // Idempotent: injecting the output again changes nothing.
        let (again, _) = inject_stream(&out, "default", &cfg, true).unwrap();
        assert_eq!(again, out);
        // Classic sidecar: the proxy is the first container.
        let (classic, _) = inject_stream(INPUT, "default", &cfg, false).unwrap();
        let first: Value = serde_yaml::from_str(classic.split("---\n").next().unwrap()).unwrap();
        assert_eq!(
            first["spec"]["template"]["spec"]["containers"][0]["name"], "mesh-proxy",
            "{classic}"
        );
    }

    #[test]
    fn bad_documents_name_where() {
        let cfg = InjectorConfig::default();
        let err = inject_stream("kind: Pod\nspec: 7\n", "default", &cfg, true).unwrap_err();
        assert!(format!("{err:#}").contains("document 1"), "{err:#}");
        let err = inject_stream("a: [\n", "default", &cfg, true).unwrap_err();
        assert!(format!("{err:#}").contains("document 1"), "{err:#}");
    }
}
