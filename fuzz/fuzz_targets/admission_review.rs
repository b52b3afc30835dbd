//! AdmissionReview decoding and the injection patch (mesh_injector::server).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mesh_injector::server::fuzz_logic(data));
