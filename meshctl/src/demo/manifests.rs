//! The files the demo writes: the controller's local-mode config directory
//! (Kubernetes Services, EndpointSlices, Pods and the mesh resources), the
//! CA's bootstrap token file and one token file per ServiceAccount.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::plan::{service_host, App, Backend, Plan, CLIENT, NAMESPACE, WEB_SERVICE};

/// Name of the route file in the config directory (the one to edit).
pub const ROUTES_FILE: &str = "web-routes.yaml";

/// The ServiceAccounts that get a CA bootstrap token: the controller's own
/// and every demo workload's.
pub fn service_accounts() -> Vec<(&'static str, &'static str)> {
    vec![
        (mesh_api::INSTALL_NAMESPACE, "mesh-controller"),
        (NAMESPACE, CLIENT),
        (NAMESPACE, App::GrpcEcho.service()),
        (NAMESPACE, App::HttpEcho.service()),
    ]
}

/// Where each ServiceAccount's token is written.
pub fn token_path(dir: &Path, service_account: &str) -> PathBuf {
    dir.join("tokens").join(format!("{service_account}.token"))
}

/// A random bootstrap token (32 hex characters).
fn new_token() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Writes the CA's token file (`ca-tokens.yaml`) and one token file per
/// ServiceAccount under `dir/tokens`, all mode 0600. Returns the CA's file.
pub fn write_tokens(dir: &Path) -> Result<PathBuf> {
    let mut file =
        String::from("# mesh-ca bootstrap tokens (local mode): token -> the identity it proves.\n");
    for (ns, sa) in service_accounts() {
        let token = format!("demo-{sa}-{}", new_token());
        let _ = writeln!(
            file,
            "\"{token}\": {{namespace: {ns}, serviceAccount: {sa}}}"
        );
        write_private(&token_path(dir, sa), &token)?;
    }
    let path = dir.join("ca-tokens.yaml");
    write_private(&path, &file)?;
    Ok(path)
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Writes `text` to `path` atomically: a dot-file beside it (which the
/// controller ignores) renamed over it, so the controller never reads half a file.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Every file of the controller's config directory: (file name, content).
pub fn config_files(plan: &Plan, v1_weight: u32, v2_weight: u32) -> Vec<(&'static str, String)> {
    vec![
        ("namespace.yaml", namespace()),
        ("grpc-echo.yaml", service_file(plan, App::GrpcEcho)),
        ("web.yaml", service_file(plan, App::HttpEcho)),
        ("client.yaml", client_pod()),
        ("mtls.yaml", strict_mtls()),
        (ROUTES_FILE, web_routes(v1_weight, v2_weight)),
    ]
}

/// Writes the config directory.
pub fn write_config_dir(dir: &Path, plan: &Plan, v1_weight: u32, v2_weight: u32) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, text) in config_files(plan, v1_weight, v2_weight) {
        write_atomic(&dir.join(name), &text)?;
    }
    Ok(())
}

fn namespace() -> String {
    format!(
        "# The demo's namespace.\n\
         apiVersion: v1\n\
         kind: Namespace\n\
         metadata: {{name: {NAMESPACE}}}\n"
    )
}

/// A Service, and for each backend an EndpointSlice (slices carry their
/// ports, and each loopback backend has its own) and a Pod (whose
/// `mesh.dev/inbound-port` annotation says where its proxy takes mTLS).
fn service_file(plan: &Plan, app: App) -> String {
    let svc = app.service();
    let mut out = format!(
        "# Service {svc}: {n} {bin} backends on loopback, each behind its own mesh-proxy.\n\
         # Each backend has its own EndpointSlice (the app's port) and Pod (its identity,\n\
         # labels, and the port its proxy accepts mesh mTLS on).\n\
         apiVersion: v1\n\
         kind: Service\n\
         metadata: {{name: {svc}, namespace: {NAMESPACE}}}\n\
         spec:\n  \
           selector: {{app: {svc}}}\n  \
           ports: [{{name: {pname}, port: {port}}}]\n",
        n = plan.backends_of(app).count(),
        bin = app.binary(),
        pname = app.port_name(),
        port = app.service_port(),
    );
    for b in plan.backends_of(app) {
        out.push_str(&backend_documents(b));
    }
    out
}

fn backend_documents(b: &Backend) -> String {
    let svc = b.app.service();
    format!(
        "---\n\
         apiVersion: discovery.k8s.io/v1\n\
         kind: EndpointSlice\n\
         metadata:\n  \
           name: {pod}\n  \
           namespace: {NAMESPACE}\n  \
           labels: {{kubernetes.io/service-name: {svc}}}\n\
         addressType: IPv4\n\
         ports: [{{name: {pname}, port: {app_port}}}]\n\
         endpoints:\n  \
           - addresses: [127.0.0.1]\n    \
             conditions: {{ready: true}}\n    \
             targetRef: {{kind: Pod, name: {pod}, namespace: {NAMESPACE}}}\n\
         ---\n\
         apiVersion: v1\n\
         kind: Pod\n\
         metadata:\n  \
           name: {pod}\n  \
           namespace: {NAMESPACE}\n  \
           labels: {{app: {svc}, version: {version}}}\n  \
           annotations: {{mesh.dev/inbound-port: \"{inbound}\"}}\n\
         spec:\n  \
           serviceAccountName: {svc}\n  \
           containers: [{{name: app, image: {bin}}}]\n",
        pod = b.pod,
        pname = b.app.port_name(),
        app_port = b.app_port,
        version = b.version,
        inbound = b.inbound_port,
        bin = b.app.binary(),
    )
}

fn client_pod() -> String {
    format!(
        "# The client: meshctl's requests enter the mesh through this pod's proxy.\n\
         apiVersion: v1\n\
         kind: Pod\n\
         metadata:\n  \
           name: {CLIENT}\n  \
           namespace: {NAMESPACE}\n  \
           labels: {{app: {CLIENT}}}\n\
         spec:\n  \
           serviceAccountName: {CLIENT}\n  \
           containers: [{{name: app, image: meshctl}}]\n"
    )
}

fn strict_mtls() -> String {
    format!(
        "# Every workload in {NAMESPACE} accepts mesh mTLS only: plaintext is refused.\n\
         apiVersion: security.mesh.dev/v1\n\
         kind: PeerAuthentication\n\
         metadata: {{name: default, namespace: {NAMESPACE}}}\n\
         spec:\n  \
           mtls: {{mode: STRICT}}\n"
    )
}

/// The route file: web's subsets and its weighted v1/v2 split.
pub fn web_routes(v1_weight: u32, v2_weight: u32) -> String {
    let host = service_host(WEB_SERVICE);
    format!(
        "# How traffic to web is split between its versions. Edit the weights (they\n\
         # must add up to 100) and save: the controller re-reads this directory within\n\
         # half a second and streams the new route to every proxy.\n\
         apiVersion: networking.mesh.dev/v1\n\
         kind: DestinationRule\n\
         metadata: {{name: {WEB_SERVICE}, namespace: {NAMESPACE}}}\n\
         spec:\n  \
           host: {host}\n  \
           subsets:\n    \
             - {{name: v1, labels: {{version: v1}}}}\n    \
             - {{name: v2, labels: {{version: v2}}}}\n\
         ---\n\
         apiVersion: networking.mesh.dev/v1\n\
         kind: VirtualService\n\
         metadata: {{name: {WEB_SERVICE}, namespace: {NAMESPACE}}}\n\
         spec:\n  \
           hosts: [{host}]\n  \
           http:\n    \
             - name: canary\n      \
               route:\n        \
                 - destination: {{host: {host}, subset: v1}}\n          \
                   weight: {v1_weight}\n        \
                 - destination: {{host: {host}, subset: v2}}\n          \
                   weight: {v2_weight}\n"
    )
}

/// The v1/v2 weights a route file asks for, read as the controller would
/// read it (the first route of the `web` VirtualService). `Err` says why
/// the file says nothing usable (for display only: the controller decides).
pub fn read_weights(text: &str) -> Result<(u32, u32), String> {
    use serde::Deserialize;
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v = serde_yaml::Value::deserialize(doc).map_err(|e| e.to_string())?;
        if v.get("kind").and_then(|k| k.as_str()) != Some("VirtualService") {
            continue;
        }
        let routes = v
            .get("spec")
            .and_then(|s| s.get("http"))
            .and_then(|h| h.get(0))
            .and_then(|r| r.get("route"))
            .and_then(|r| r.as_sequence())
            .ok_or("the VirtualService has no spec.http[0].route")?;
        let (mut v1, mut v2) = (0u32, 0u32);
        let single = routes.len() == 1;
        for r in routes {
            let subset = r
                .get("destination")
                .and_then(|d| d.get("subset"))
                .and_then(|s| s.as_str())
                .unwrap_or("");
            let weight = match r.get("weight").and_then(|w| w.as_u64()) {
                Some(w) => u32::try_from(w).unwrap_or(u32::MAX),
                None if single => 100,
                None => 0,
            };
            match subset {
                "v1" => v1 = v1.saturating_add(weight),
                "v2" => v2 = v2.saturating_add(weight),
                other => return Err(format!("unknown subset {other:?}")),
            }
        }
        return Ok((v1, v2));
    }
    Err("no VirtualService in the file".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use mesh_api::MeshResource;
    use serde::Deserialize;

    fn docs(text: &str) -> Vec<serde_yaml::Value> {
        serde_yaml::Deserializer::from_str(text)
            .map(|d| serde_yaml::Value::deserialize(d).unwrap())
            .collect()
    }

    /// Every document is a Kubernetes object the controller reads (typed
    /// parse) or a mesh resource that validates.
    #[test]
    fn config_files_are_valid_documents() {
        let plan = Plan::new(27000).unwrap();
        let mut resources = mesh_api::ResourceSet::default();
        let (mut slices, mut pods) = (Vec::new(), Vec::new());
        for (name, text) in config_files(&plan, 90, 10) {
            for (i, doc) in docs(&text).into_iter().enumerate() {
                let kind = doc["kind"].as_str().unwrap().to_string();
                let yaml = serde_yaml::to_string(&doc).unwrap();
                match kind.as_str() {
                    "Service" => {
                        serde_yaml::from_str::<Service>(&yaml).unwrap();
                    }
                    "EndpointSlice" => {
                        slices.push(serde_yaml::from_str::<EndpointSlice>(&yaml).unwrap())
                    }
                    "Pod" => pods.push(serde_yaml::from_str::<Pod>(&yaml).unwrap()),
                    "Namespace" => {
                        serde_yaml::from_str::<Namespace>(&yaml).unwrap();
                    }
                    _ => {
                        let mut rs = mesh_api::parse_yaml(&yaml)
                            .unwrap_or_else(|e| panic!("{name} document {}: {e}", i + 1));
                        let r = rs.remove(0);
                        let errors = mesh_api::validate::validate_resource(&r);
                        assert!(errors.is_empty(), "{name}: {errors:?}");
                        match r {
                            MeshResource::VirtualService(v) => resources.virtual_services.push(v),
                            MeshResource::DestinationRule(d) => resources.destination_rules.push(d),
                            MeshResource::PeerAuthentication(p) => {
                                resources.peer_authentications.push(p)
                            }
                            other => panic!("unexpected {}", other.kind()),
                        }
                    }
                }
            }
        }
        let errors = mesh_api::validate::validate_set(&resources);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(slices.len(), 6);
        // Backends 7 (6 + the client), each backend annotated with its inbound port.
        assert_eq!(pods.len(), 7);
        for b in &plan.backends {
            let pod = pods
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(&b.pod))
                .unwrap();
            let ann = pod.metadata.annotations.as_ref().unwrap();
            assert_eq!(ann["mesh.dev/inbound-port"], b.inbound_port.to_string());
            let slice = slices
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(&b.pod))
                .unwrap();
            assert_eq!(
                slice.ports.as_ref().unwrap()[0].port,
                Some(i32::from(b.app_port))
            );
        }
    }

    #[test]
    fn invalid_weights_are_caught_by_validation() {
        let text = web_routes(60, 60);
        let vs = mesh_api::parse_yaml(&text).unwrap();
        let errors: Vec<_> = vs
            .iter()
            .flat_map(mesh_api::validate::validate_resource)
            .collect();
        assert!(!errors.is_empty());
    }

    #[test]
    fn reads_weights_back() {
        assert_eq!(read_weights(&web_routes(90, 10)), Ok((90, 10)));
        assert_eq!(read_weights(&web_routes(0, 100)), Ok((0, 100)));
        let single = "kind: VirtualService\nspec:\n  http:\n    - route:\n        - destination: {host: web, subset: v2}\n";
        assert_eq!(read_weights(single), Ok((0, 100)));
        assert!(read_weights("kind: DestinationRule\n").is_err());
        assert!(read_weights(": [").is_err());
    }

    #[test]
    fn tokens_are_private_and_listed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = write_tokens(dir.path()).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        for (ns, sa) in service_accounts() {
            let token = std::fs::read_to_string(token_path(dir.path(), sa)).unwrap();
            assert!(token.len() >= 8);
            assert!(text.contains(&format!(
                "\"{token}\": {{namespace: {ns}, serviceAccount: {sa}}}"
            )));
            let mode = std::fs::metadata(token_path(dir.path(), sa))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let map: std::collections::BTreeMap<String, serde_yaml::Value> =
            serde_yaml::from_str(&text).unwrap();
        assert_eq!(map.len(), service_accounts().len());
    }
}
