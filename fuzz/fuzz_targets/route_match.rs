//! Route matching, path and host normalization (mesh_proxy::routing).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mesh_proxy::routing::fuzz_logic(data));
