//! Mutating admission webhook that injects the mesh proxy into pods.
#![forbid(unsafe_code)]
