//! The generated `simulator.v1` types, client and server (see `build.rs`).
#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("simulator.v1");

/// The encoded file descriptor set, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("simulator_v1_descriptor");
