//! Where the CA keeps its root, intermediate and trust bundle: the Secret
//! `mesh-ca` in `mesh-system` (kube mode) or a directory of 0600 files
//! (local mode). Both hold the same keys, so a directory can be turned into
//! a Secret with `kubectl create secret generic mesh-ca --from-file=DIR`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;

use crate::authority::{split_pem_certs, CaMaterial};

/// Root certificate.
pub const ROOT_CERT: &str = "root-cert.pem";
/// Root key (absent with a plug-in intermediate).
pub const ROOT_KEY: &str = "root-key.pem";
/// Signing intermediate certificate.
pub const CA_CERT: &str = "ca-cert.pem";
/// Signing intermediate key.
pub const CA_KEY: &str = "ca-key.pem";
/// Certificates between the intermediate and the root (optional).
pub const CERT_CHAIN: &str = "cert-chain.pem";
/// All roots workloads trust (edit it to stage or retire a root).
pub const TRUST_BUNDLE: &str = "trust-bundle.pem";
/// A root staged for rotation (already in the trust bundle).
pub const NEXT_ROOT_CERT: &str = "next-root-cert.pem";
/// Its key.
pub const NEXT_ROOT_KEY: &str = "next-root-key.pem";
/// Field manager of the CA's server-side applies.
pub const FIELD_MANAGER: &str = "mesh-ca";

/// Failure to read or write the CA's store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A Kubernetes API call failed.
    #[error("{what}: {source}")]
    Kube {
        /// Which call.
        what: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The stored material is incomplete or unreadable.
    #[error("CA store {0}")]
    Corrupt(String),
}

/// The CA's persistent store.
#[derive(Clone)]
pub enum CaStore {
    /// A directory (created 0700; files 0600, the trust bundle 0644).
    Local(PathBuf),
    /// A Secret.
    Kube {
        /// API client.
        client: kube::Client,
        /// Namespace of the Secret (`mesh-system`).
        namespace: String,
        /// Name of the Secret (`mesh-ca`).
        name: String,
    },
}

impl std::fmt::Debug for CaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local(d) => write!(f, "dir {}", d.display()),
            Self::Kube {
                namespace, name, ..
            } => write!(f, "secret {namespace}/{name}"),
        }
    }
}

impl CaStore {
    /// The Secret `mesh-ca` in `mesh-system`.
    pub fn kube(client: kube::Client) -> Self {
        Self::Kube {
            client,
            namespace: mesh_api::INSTALL_NAMESPACE.to_string(),
            name: mesh_api::svid::CA_SECRET_NAME.to_string(),
        }
    }

    /// Reads the material; `None` when nothing is stored yet.
    pub async fn load(&self) -> Result<Option<CaMaterial>, StoreError> {
        let files = match self {
            Self::Local(dir) => read_dir_files(dir)?,
            Self::Kube {
                client,
                namespace,
                name,
            } => {
                let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
                let secret = api.get_opt(name).await.map_err(|source| StoreError::Kube {
                    what: format!("reading secret {namespace}/{name}"),
                    source,
                })?;
                secret.map(|s| {
                    s.data
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|(k, v)| String::from_utf8(v.0).ok().map(|v| (k, v)))
                        .collect()
                })
            }
        };
        files.map(|f| material_from_files(&f)).transpose()
    }

    /// Stores `m` only if nothing is stored yet; `false` if something was.
    pub async fn create(&self, m: &CaMaterial) -> Result<bool, StoreError> {
        match self {
            Self::Local(dir) => {
                if dir.join(ROOT_CERT).exists() {
                    return Ok(false);
                }
                self.save(m).await?;
                Ok(true)
            }
            Self::Kube {
                client,
                namespace,
                name,
            } => {
                let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
                match api.create(&PostParams::default(), &secret(name, m)).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(source) => Err(StoreError::Kube {
                        what: format!("creating secret {namespace}/{name}"),
                        source,
                    }),
                }
            }
        }
    }

    /// Stores `m`, replacing what was there.
    pub async fn save(&self, m: &CaMaterial) -> Result<(), StoreError> {
        match self {
            Self::Local(dir) => write_dir_files(dir, &files_from_material(m)),
            Self::Kube {
                client,
                namespace,
                name,
            } => {
                let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
                // Apply with force: the CA owns this Secret; a stale root-key
                // entry is removed because the full object is applied.
                api.patch(
                    name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(secret(name, m)),
                )
                .await
                .map_err(|source| StoreError::Kube {
                    what: format!("writing secret {namespace}/{name}"),
                    source,
                })?;
                Ok(())
            }
        }
    }
}

fn secret(name: &str, m: &CaMaterial) -> Secret {
    let data = files_from_material(m)
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
        .collect();
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_string(),
                "mesh".to_string(),
            )])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    }
}

fn files_from_material(m: &CaMaterial) -> BTreeMap<&'static str, String> {
    let mut f = BTreeMap::new();
    f.insert(ROOT_CERT, m.root_cert_pem.clone());
    if let Some(k) = &m.root_key_pem {
        f.insert(ROOT_KEY, k.clone());
    }
    f.insert(CA_CERT, m.intermediate_cert_pem.clone());
    f.insert(CA_KEY, m.intermediate_key_pem.clone());
    if !m.chain_pem.is_empty() {
        f.insert(CERT_CHAIN, m.chain_pem.concat());
    }
    f.insert(TRUST_BUNDLE, m.trust_bundle_pem.concat());
    if let Some((c, k)) = &m.staged_root {
        f.insert(NEXT_ROOT_CERT, c.clone());
        f.insert(NEXT_ROOT_KEY, k.clone());
    }
    f
}

fn material_from_files(f: &BTreeMap<String, String>) -> Result<CaMaterial, StoreError> {
    let get = |k: &str| {
        f.get(k)
            .cloned()
            .ok_or_else(|| StoreError::Corrupt(format!("lacks {k}")))
    };
    let certs = |k: &str, text: &str| {
        split_pem_certs(text).map_err(|e| StoreError::Corrupt(format!("{k}: {e}")))
    };
    let root = get(ROOT_CERT)?;
    let chain = match f.get(CERT_CHAIN) {
        Some(t) => certs(CERT_CHAIN, t)?,
        None => vec![],
    };
    let bundle = match f.get(TRUST_BUNDLE) {
        Some(t) => certs(TRUST_BUNDLE, t)?,
        None => certs(ROOT_CERT, &root)?,
    };
    Ok(CaMaterial {
        root_cert_pem: root,
        root_key_pem: f.get(ROOT_KEY).cloned(),
        intermediate_cert_pem: get(CA_CERT)?,
        intermediate_key_pem: get(CA_KEY)?,
        chain_pem: chain,
        trust_bundle_pem: bundle,
        staged_root: match (f.get(NEXT_ROOT_CERT), f.get(NEXT_ROOT_KEY)) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            _ => None,
        },
    })
}

fn read_dir_files(dir: &Path) -> Result<Option<BTreeMap<String, String>>, StoreError> {
    if !dir.join(ROOT_CERT).exists() {
        return Ok(None);
    }
    let mut out = BTreeMap::new();
    for k in [
        ROOT_CERT,
        ROOT_KEY,
        CA_CERT,
        CA_KEY,
        CERT_CHAIN,
        TRUST_BUNDLE,
        NEXT_ROOT_CERT,
        NEXT_ROOT_KEY,
    ] {
        let p = dir.join(k);
        match std::fs::read_to_string(&p) {
            Ok(v) => {
                out.insert(k.to_string(), v);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(StoreError::Io { path: p, source }),
        }
    }
    Ok(Some(out))
}

fn write_dir_files(dir: &Path, files: &BTreeMap<&'static str, String>) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io { path, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    for (k, v) in files {
        let path = dir.join(k);
        let tmp = dir.join(format!(".{k}.tmp"));
        let mode = if *k == TRUST_BUNDLE || *k == ROOT_CERT {
            0o644
        } else {
            0o600
        };
        let _ = std::fs::remove_file(&tmp);
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&tmp)
                .map_err(io(&tmp))?;
            f.write_all(v.as_bytes()).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
    }
    // A material without a root key / chain must not leave old ones behind.
    for k in [ROOT_KEY, CERT_CHAIN, NEXT_ROOT_CERT, NEXT_ROOT_KEY] {
        if !files.contains_key(k) {
            let _ = std::fs::remove_file(dir.join(k));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authority::generate_material;

    #[tokio::test]
    async fn local_round_trip_with_private_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = CaStore::Local(dir.path().join("ca"));
        assert!(store.load().await.unwrap().is_none());
        let m = generate_material().unwrap();
        assert!(store.create(&m).await.unwrap());
        assert!(
            !store.create(&m).await.unwrap(),
            "second create must not overwrite"
        );
        assert_eq!(store.load().await.unwrap(), Some(m));
        for (k, want) in [(ROOT_KEY, 0o600), (CA_KEY, 0o600), (TRUST_BUNDLE, 0o644)] {
            let mode = std::fs::metadata(dir.path().join("ca").join(k))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, want, "{k}");
        }
        let dmode = std::fs::metadata(dir.path().join("ca"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dmode & 0o777, 0o700);
    }

    #[tokio::test]
    async fn corrupt_store_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ROOT_CERT), "garbage").unwrap();
        let store = CaStore::Local(dir.path().to_path_buf());
        assert!(store.load().await.is_err());
    }
}
