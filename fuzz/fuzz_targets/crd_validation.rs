//! Mesh custom resources from YAML/JSON, validated (mesh_api::validate).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mesh_api::validate::fuzz_logic(data));
