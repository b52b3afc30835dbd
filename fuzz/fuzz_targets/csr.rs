//! CSR parsing and signing (mesh_ca::csr).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mesh_ca::csr::fuzz_logic(data));
