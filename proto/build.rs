//! Compiles the `.proto` files with protox (pure Rust), so no `protoc` is
//! needed on the build machine, and generates serde impls (canonical proto3
//! JSON mapping) so the same messages can be read from YAML/JSON files.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/mesh/config/v1/config.proto",
        "proto/mesh/ca/v1/ca.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out.join("descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&fds))?;

    // Maps are BTreeMaps: their encoding (and so config hashes, versions
    // and config dumps) is the same in every process.
    tonic_prost_build::configure()
        .btree_map(".")
        .file_descriptor_set_path(&descriptor_path)
        .skip_protoc_run()
        .compile_fds(fds)?;

    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .btree_map(["."])
        .build(&[".mesh"])?;
    Ok(())
}
