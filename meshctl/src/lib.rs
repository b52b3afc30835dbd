//! The mesh's command line. Each subcommand lives in its own module; the
//! binary (`src/main.rs`) only parses arguments and dispatches.
#![deny(unsafe_code)]

pub mod demo;
