//! Local mode: a directory of YAML as the source of truth.
//!
//! Every `*.yaml`, `*.yml` and `*.json` file under the directory is read:
//! the mesh's resources (VirtualService, DestinationRule, ...) plus
//! Kubernetes `Service`, `EndpointSlice`, `Pod` and `Namespace` documents
//! for the static services and endpoints. The directory is re-read when a
//! file changes (polled each `interval`); only files whose size or mtime
//! changed are parsed again. A document that cannot be read is reported
//! with its file and document number and left out; the rest of the
//! directory still counts.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Resource;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{BoxFuture, ResourceStatus, Source};
use crate::world::{Change, Kind, NamespaceInfo, Object, PodInfo};

/// Reads a directory of YAML.
#[derive(Debug)]
pub struct DirSource {
    dir: PathBuf,
    interval: Duration,
    statuses: Mutex<BTreeMap<mesh_api::ResourceRef, ResourceStatus>>,
    /// Each file as last parsed, with its (size, mtime) then.
    parsed: Mutex<HashMap<PathBuf, ParsedFile>>,
    /// The objects of each kind as last sent.
    sent: Mutex<BTreeMap<Kind, Vec<Object>>>,
}

#[derive(Debug)]
struct ParsedFile {
    stamp: (u64, Option<SystemTime>),
    objects: Vec<Object>,
    errors: Vec<String>,
}

/// What one read of the directory found.
#[derive(Debug, Default)]
pub struct DirContents {
    pub objects: Vec<Object>,
    /// One line per unreadable document: `file: document N (line L): why`.
    pub errors: Vec<String>,
}

impl DirSource {
    pub fn new(dir: impl Into<PathBuf>, interval: Duration) -> Self {
        Self {
            dir: dir.into(),
            interval,
            statuses: Mutex::new(BTreeMap::new()),
            parsed: Mutex::new(HashMap::new()),
            sent: Mutex::new(BTreeMap::new()),
        }
    }

    /// The statuses last published (for the admin endpoint and tests).
    pub fn statuses(&self) -> Vec<ResourceStatus> {
        self.statuses
            .lock()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Reads every file: parses those that are new or changed (size or
    /// mtime) since the last read, reuses the others' objects.
    pub fn read(&self) -> DirContents {
        let mut out = DirContents::default();
        let mut files = Vec::new();
        collect_files(&self.dir, &mut files, &mut out.errors);
        let mut parsed = self.parsed.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = HashMap::with_capacity(files.len());
        for f in files {
            // Stat before reading: a write in between re-parses next time.
            let stamp = std::fs::metadata(&f)
                .ok()
                .map(|m| (m.len(), m.modified().ok()));
            let file = match parsed.remove(&f) {
                Some(p) if Some(p.stamp) == stamp => p,
                _ => {
                    let mut contents = DirContents::default();
                    match std::fs::read_to_string(&f) {
                        Ok(text) => parse_documents(&f, &text, &mut contents),
                        Err(e) => contents.errors.push(format!("{}: {e}", f.display())),
                    }
                    ParsedFile {
                        stamp: stamp.unwrap_or_default(),
                        objects: contents.objects,
                        errors: contents.errors,
                    }
                }
            };
            out.objects.extend(file.objects.iter().cloned());
            out.errors.extend(file.errors.iter().cloned());
            if stamp.is_some() {
                next.insert(f, file);
            }
        }
        *parsed = next;
        out
    }

    /// A fingerprint of the directory's files (paths, sizes, mtimes).
    fn fingerprint(&self) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
        let mut files = Vec::new();
        collect_files(&self.dir, &mut files, &mut Vec::new());
        files
            .into_iter()
            .map(|f| {
                let meta = std::fs::metadata(&f).ok();
                let len = meta.as_ref().map(|m| m.len()).unwrap_or(0);
                let mtime = meta.and_then(|m| m.modified().ok());
                (f, len, mtime)
            })
            .collect()
    }
}

/// Every config file under `dir`, in path order.
fn collect_files(dir: &Path, out: &mut Vec<PathBuf>, errors: &mut Vec<String>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            errors.push(format!("{}: {e}", dir.display()));
            return;
        }
    };
    // Sorted by name here, the whole list comes out in path order.
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') {
            continue;
        }
        // The entry's type comes with the listing (no stat); a symlink is
        // followed.
        let is_dir = match entry.file_type() {
            Ok(t) if t.is_symlink() => path.is_dir(),
            Ok(t) => t.is_dir(),
            Err(_) => path.is_dir(),
        };
        if is_dir {
            collect_files(&path, out, errors);
        } else if [".yaml", ".yml", ".json"].iter().any(|x| name.ends_with(x)) {
            out.push(path);
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    api_version: Option<String>,
    kind: Option<String>,
}

fn default_namespace<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    if meta.namespace.as_deref().unwrap_or("").is_empty() {
        meta.namespace = Some("default".into());
    }
}

/// Parses one file's documents into `out`.
pub fn parse_documents(file: &Path, text: &str, out: &mut DirContents) {
    let mut line = 1;
    for (i, doc) in split(text).into_iter().enumerate() {
        let here = format!("{}: document {} (line {line})", file.display(), i + 1);
        line += doc.lines().count() + 1;
        if doc
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            continue;
        }
        let meta: TypeMeta = match serde_yaml::from_str(doc) {
            Ok(m) => m,
            Err(e) => {
                out.errors.push(format!("{here}: {e}"));
                continue;
            }
        };
        let api = meta.api_version.unwrap_or_default();
        let kind = meta.kind.unwrap_or_default();
        let parsed: Result<Object, String> = match (api.as_str(), kind.as_str()) {
            ("v1", "Service") => serde_yaml::from_str::<Service>(doc)
                .map(|mut s| {
                    default_namespace(&mut s);
                    Object::Service(Arc::new(s))
                })
                .map_err(|e| e.to_string()),
            ("discovery.k8s.io/v1", "EndpointSlice") => serde_yaml::from_str::<EndpointSlice>(doc)
                .map(|mut s| {
                    default_namespace(&mut s);
                    Object::EndpointSlice(Arc::new(s))
                })
                .map_err(|e| e.to_string()),
            ("v1", "Pod") => serde_yaml::from_str::<Pod>(doc)
                .map(|mut p| {
                    default_namespace(&mut p);
                    Object::Pod(Arc::new(PodInfo::from_pod(&p)))
                })
                .map_err(|e| e.to_string()),
            ("v1", "Namespace") => serde_yaml::from_str::<Namespace>(doc)
                .map(|n| Object::Namespace(Arc::new(NamespaceInfo::from_namespace(&n))))
                .map_err(|e| e.to_string()),
            _ => match mesh_api::parse_yaml(doc) {
                Ok(mut rs) if rs.len() == 1 => {
                    let mut r = rs.remove(0);
                    default_mesh_namespace(&mut r);
                    Ok(Object::Mesh(Arc::new(r)))
                }
                Ok(_) => Err("expected one resource".into()),
                Err(e) => Err(e
                    .to_string()
                    .trim_start_matches("document 1 (line 1): ")
                    .to_string()),
            },
        };
        match parsed {
            Ok(obj) => out.objects.push(obj),
            Err(e) => out.errors.push(format!("{here}: {e}")),
        }
    }
}

fn default_mesh_namespace(r: &mut mesh_api::MeshResource) {
    use mesh_api::MeshResource::*;
    match r {
        VirtualService(x) => default_namespace(x),
        DestinationRule(x) => default_namespace(x),
        ServiceEntry(x) => default_namespace(x),
        Gateway(x) => default_namespace(x),
        PeerAuthentication(x) => default_namespace(x),
        AuthorizationPolicy(x) => default_namespace(x),
    }
}

fn split(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let content = line.trim_end();
        if content == "---" || content.starts_with("--- ") {
            docs.push(&text[start..offset]);
            start = offset + line.len();
        }
        offset += line.len();
    }
    docs.push(&text[start..]);
    docs
}

const KINDS: [Kind; 10] = [
    Kind::Service,
    Kind::EndpointSlice,
    Kind::Pod,
    Kind::Namespace,
    Kind::Mesh("VirtualService"),
    Kind::Mesh("DestinationRule"),
    Kind::Mesh("ServiceEntry"),
    Kind::Mesh("Gateway"),
    Kind::Mesh("PeerAuthentication"),
    Kind::Mesh("AuthorizationPolicy"),
];

impl DirSource {
    /// One `Replace` per kind whose objects differ from the last ones sent
    /// (every kind the first time): a changed EndpointSlice file does not
    /// make the pipeline compare every Pod again.
    fn changes(&self) -> Vec<Change> {
        let contents = self.read();
        for e in &contents.errors {
            tracing::warn!("{e}");
        }
        let mut by_kind: BTreeMap<Kind, Vec<Object>> =
            KINDS.iter().map(|k| (*k, Vec::new())).collect();
        for obj in contents.objects {
            by_kind.entry(obj.kind()).or_default().push(obj);
        }
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        let mut changes = Vec::new();
        for (kind, objects) in by_kind {
            let unchanged = sent.get(&kind).is_some_and(|before| {
                before.len() == objects.len()
                    && before.iter().zip(&objects).all(|(a, b)| same(a, b))
            });
            if !unchanged {
                sent.insert(kind, objects.clone());
                changes.push(Change::Replace(kind, objects));
            }
        }
        changes
    }
}

/// The very same object (re-reads reuse the objects of unchanged files).
fn same(a: &Object, b: &Object) -> bool {
    match (a, b) {
        (Object::Service(a), Object::Service(b)) => Arc::ptr_eq(a, b),
        (Object::EndpointSlice(a), Object::EndpointSlice(b)) => Arc::ptr_eq(a, b),
        (Object::Pod(a), Object::Pod(b)) => Arc::ptr_eq(a, b),
        (Object::Namespace(a), Object::Namespace(b)) => Arc::ptr_eq(a, b),
        (Object::Mesh(a), Object::Mesh(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

impl Source for DirSource {
    fn run(
        &self,
        tx: mpsc::Sender<Change>,
        stop: CancellationToken,
    ) -> BoxFuture<anyhow::Result<()>> {
        let this = DirSource::new(self.dir.clone(), self.interval);
        Box::pin(async move {
            if !this.dir.is_dir() {
                anyhow::bail!("{} is not a directory", this.dir.display());
            }
            let mut seen = None;
            loop {
                let fp = this.fingerprint();
                if seen.as_ref() != Some(&fp) {
                    tracing::info!(dir = %this.dir.display(), "reading the config directory");
                    for c in this.changes() {
                        if tx.send(c).await.is_err() {
                            return Ok(());
                        }
                    }
                    seen = Some(fp);
                }
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(this.interval) => {}
                }
            }
        })
    }

    fn publish_status(&self, statuses: Vec<ResourceStatus>) -> BoxFuture<()> {
        if let Ok(mut known) = self.statuses.lock() {
            let mut next = BTreeMap::new();
            for s in statuses {
                if known.get(&s.resource) != Some(&s) {
                    if s.accepted {
                        tracing::info!(resource = %s.resource, "accepted");
                    } else {
                        tracing::warn!(resource = %s.resource, reason = %s.reason, "not accepted: {}", s.message);
                    }
                }
                next.insert(s.resource.clone(), s);
            }
            *known = next;
        }
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reread_parses_changed_files_and_drops_removed_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let svc = |name: &str, port: u16| {
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{ports: [{{port: {port}}}]}}\n")
        };
        std::fs::write(tmp.path().join("a.yaml"), svc("a", 80)).unwrap();
        std::fs::write(tmp.path().join("b.yaml"), svc("b", 80)).unwrap();
        let source = DirSource::new(tmp.path(), Duration::from_millis(10));
        let first = source.read();
        assert_eq!(first.objects.len(), 2);
        let port = |c: &DirContents, name: &str| {
            c.objects.iter().find_map(|o| match o {
                Object::Service(s) if s.metadata.name.as_deref() == Some(name) => {
                    Some(s.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port)
                }
                _ => None,
            })
        };
        std::fs::write(tmp.path().join("a.yaml"), svc("a", 8080)).unwrap();
        std::fs::remove_file(tmp.path().join("b.yaml")).unwrap();
        let second = source.read();
        assert_eq!(port(&second, "a"), Some(8080));
        assert_eq!(port(&second, "b"), None);
        assert_eq!(second.objects.len(), 1);
    }

    #[test]
    fn reads_kubernetes_and_mesh_documents_and_names_bad_ones() {
        let mut out = DirContents::default();
        let text = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ports: [{name: http, port: 80}]
---
apiVersion: networking.mesh.dev/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [web]
  http:
    - route: [{destination: {host: web}}]
      colour: blue
---
apiVersion: networking.mesh.dev/v1
kind: DestinationRule
metadata: {name: web, namespace: shop}
spec: {host: web}
---
: not yaml [
"#;
        parse_documents(Path::new("mesh.yaml"), text, &mut out);
        assert_eq!(out.objects.len(), 2, "{:?}", out.errors);
        assert_eq!(out.objects[0].key().namespace, "default");
        assert_eq!(out.objects[1].key().namespace, "shop");
        assert_eq!(out.errors.len(), 2, "{:?}", out.errors);
        assert!(
            out.errors[0].starts_with("mesh.yaml: document 2") && out.errors[0].contains("colour"),
            "{}",
            out.errors[0]
        );
        assert!(out.errors[1].contains("document 4"), "{}", out.errors[1]);
    }
}
