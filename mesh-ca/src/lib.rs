//! `mesh-ca`: the mesh's certificate authority.
//!
//! It holds the mesh root and a signing intermediate ([`authority`]), keeps
//! them in a Kubernetes Secret or a local directory ([`store`]), authenticates
//! workloads by their ServiceAccount token ([`auth`]), and signs short-lived
//! X.509-SVIDs over gRPC+TLS ([`server`], wire API `mesh.ca.v1`). The trust
//! bundle is published to meshed namespaces ([`publish`]); [`client`] is a
//! small client of the same API. See `docs/ca.md`.
//!
//! In-process use (tests, demos):
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::sync::Arc;
//! let authority = Arc::new(mesh_ca::Authority::generate()?);
//! let tokens = mesh_ca::auth::StaticTokens::from_yaml(
//!     "\"dev-token-web\": {namespace: default, serviceAccount: web}",
//! ).map_err(anyhow::Error::msg)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let server = mesh_ca::server::serve(
//!     listener, authority.clone(), Arc::new(tokens), Default::default(),
//! ).await?;
//! let (_key_pem, csr_pem) = mesh_ca::csr::new_workload_csr(None)?;
//! let resp = mesh_ca::client::sign(
//!     &format!("https://127.0.0.1:{}", server.local_addr.port()),
//!     &authority.trust_bundle_pem().concat(),
//!     "dev-token-web", &csr_pem, std::time::Duration::ZERO,
//! ).await?;
//! assert_eq!(resp.cert_chain_pem.len(), 2);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod authcache;
pub mod authority;
pub mod cli;
pub mod client;
pub mod config;
pub mod csr;
pub mod metrics;
pub mod publish;
pub mod ratelimit;
pub mod server;
pub mod store;

pub use auth::{KubeTokenReview, ServiceAccountRef, StaticTokens, TokenAuthenticator};
pub use authcache::CachedAuthenticator;
pub use authority::{Authority, CaMaterial, IssuedLeaf, PluginCa};
pub use config::TtlPolicy;
pub use mesh_api::WorkloadIdentity;
pub use server::{serve, ServerConfig};
pub use store::CaStore;
