//! Generates the gRPC code of `proto/simulator/v1/*.proto` (package `simulator.v1`) with
//! tonic/prost, using the `protoc` binary vendored by `protoc-bin-vendored`, so that a fresh
//! machine needs nothing installed. The file descriptor set is kept for server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let files = [
        "proto/simulator/v1/common.proto",
        "proto/simulator/v1/device.proto",
        "proto/simulator/v1/telemetry.proto",
        "proto/simulator/v1/orchestrator.proto",
        "proto/simulator/v1/scenario.proto",
    ];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("simulator_v1_descriptor.bin"))
        .build_client(true)
        .build_server(true)
        .compile_protos(&files, &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
