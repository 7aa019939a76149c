//! Live control over gRPC: the `simulator.v1.DeviceRuntimeService` server, its client, and the
//! label selectors both use. The control plane runs on its own tokio runtime and only sends
//! [`crate::shard::command::ShardCommand`]s to the shards; it never touches a shard's devices.

pub mod admin;
pub mod client;
pub mod incoming;
pub mod proto;
pub mod selector;
pub mod service;
