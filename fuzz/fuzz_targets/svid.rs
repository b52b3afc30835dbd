//! A peer certificate's SPIFFE ID (mesh_proxy::tls).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mesh_proxy::tls::fuzz_logic(data));
