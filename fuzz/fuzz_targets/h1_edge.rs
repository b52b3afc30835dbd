//! The proxy's HTTP/1 edge: request heads and bodies (mesh_proxy::h1_guard).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mesh_proxy::h1_guard::fuzz_logic(data));
