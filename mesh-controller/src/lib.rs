//! The control plane: turns Kubernetes state (or a directory of YAML) into
//! per-proxy configuration and streams it to every proxy.
//!
//! The flow, one module each:
//! [`source`] reports [`world::Change`]s → [`world::World`] →
//! [`translate`] builds an immutable, versioned [`translate::Snapshot`]
//! (debounced by [`push`]) → [`view`] cuts each proxy's scoped view →
//! [`server`] streams it (full, then incremental diffs) and records ACKs
//! and NACKs in [`sync`].
#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod identity;
pub mod leader;
pub mod limits;
pub mod metrics;
pub mod push;
pub mod run;
pub mod server;
pub mod source;
pub mod sync;
#[cfg(feature = "testing")]
pub mod testing;
pub mod translate;
pub mod view;
pub mod world;
