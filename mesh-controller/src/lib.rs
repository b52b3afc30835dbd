//! The control plane: turns Kubernetes state into per-proxy configuration and streams it.
#![forbid(unsafe_code)]
