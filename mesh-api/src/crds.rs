//! The CustomResourceDefinitions of the mesh, generated from the Rust types and
//! written to `deploy/crds/` by `cargo run -p mesh-api --bin gen-crds`.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::networking::{DestinationRule, Gateway, ServiceEntry, VirtualService};
use crate::security::{AuthorizationPolicy, PeerAuthentication};

/// Folder of the generated CRD files, relative to the workspace root.
pub const CRD_DIR: &str = "deploy/crds";

/// Command that regenerates [`CRD_DIR`].
pub const REGENERATE_COMMAND: &str = "cargo run -p mesh-api --bin gen-crds";

/// Every mesh CRD.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        VirtualService::crd(),
        DestinationRule::crd(),
        ServiceEntry::crd(),
        Gateway::crd(),
        PeerAuthentication::crd(),
        AuthorizationPolicy::crd(),
    ]
}

/// The CRD files: `(file name, YAML)`, one file per CRD named after it
/// (`virtualservices.networking.mesh.dev.yaml`), in a stable order.
pub fn render() -> Result<Vec<(String, String)>, serde_yaml::Error> {
    all()
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let body = serde_yaml::to_string(&crd)?;
            let text = format!(
                "# Generated from mesh-api; do not edit. Regenerate: {REGENERATE_COMMAND}\n{body}"
            );
            Ok((format!("{name}.yaml"), text))
        })
        .collect()
}

/// The workspace's `deploy/crds/` folder, found from this crate's location.
pub fn default_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(CRD_DIR);
    dir.canonicalize().unwrap_or(dir)
}

/// Why the CRD files could not be generated or compared.
#[derive(Debug, thiserror::Error)]
pub enum CrdFilesError {
    /// Serialising a CRD failed.
    #[error("rendering CRDs: {0}")]
    Render(#[from] serde_yaml::Error),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Writes every CRD file into `dir` (created if missing) and removes generated
/// files there that no longer correspond to a CRD. Returns the files written.
pub fn write_files(dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>, CrdFilesError> {
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| CrdFilesError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    for stale in stale_files(dir)?.extra {
        let path = dir.join(stale);
        std::fs::remove_file(&path).map_err(io(&path))?;
    }
    let mut written = Vec::new();
    for (name, text) in render()? {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(io(&path))?;
        written.push(path);
    }
    Ok(written)
}

/// How the files in a CRD folder differ from what the types generate.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CrdDrift {
    /// Generated files that are missing.
    pub missing: Vec<String>,
    /// Files whose content differs.
    pub changed: Vec<String>,
    /// Generated files (by their header) that no CRD produces any more.
    pub extra: Vec<String>,
}

impl CrdDrift {
    /// True when the folder matches the types exactly.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.changed.is_empty() && self.extra.is_empty()
    }
}

/// Compares the files in `dir` with [`render`].
pub fn stale_files(dir: &std::path::Path) -> Result<CrdDrift, CrdFilesError> {
    let rendered = render()?;
    let mut drift = CrdDrift::default();
    for (name, text) in &rendered {
        match std::fs::read_to_string(dir.join(name)) {
            Ok(on_disk) if on_disk == *text => {}
            Ok(_) => drift.changed.push(name.clone()),
            Err(_) => drift.missing.push(name.clone()),
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let generated = std::fs::read_to_string(entry.path())
                .is_ok_and(|t| t.starts_with("# Generated from mesh-api"));
            if generated && !rendered.iter().any(|(n, _)| *n == name) {
                drift.extra.push(name);
            }
        }
    }
    drift.extra.sort();
    Ok(drift)
}
