//! Config-stream messages from the controller, merged and compiled (mesh_proxy::model).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mesh_proxy::model::fuzz_logic(data));
