//! The mesh's command line.
#![forbid(unsafe_code)]
