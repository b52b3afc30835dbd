//! Certificate authority: issues short-lived SPIFFE X.509 certificates to workloads.
#![forbid(unsafe_code)]
