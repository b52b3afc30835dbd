//! The mesh's command line. Each subcommand lives in its own module; the
//! binary (`src/main.rs`) only parses arguments and dispatches.
//!
//! - [`demo`]: a whole mesh on this machine, no cluster needed.
//! - [`install`]: `install`, `upgrade` and `uninstall` of the control plane
//!   in a cluster reached through [`cluster`].
//! - [`route`], [`canary`], [`stat`]: traffic rules, canaries and golden
//!   metrics (read from the proxies by [`scrape`]).
//! - [`views`]: `proxy-status`, `proxy-config`, `version`; [`check`].
#![deny(unsafe_code)]

pub mod canary;
pub mod check;
pub mod cluster;
pub mod demo;
pub mod inject;
pub mod install;
pub mod route;
pub mod scrape;
pub mod stat;
pub mod views;
