//! Protocol detection on a connection's first bytes (mesh_proxy::detect).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mesh_proxy::detect::fuzz_logic(data));
