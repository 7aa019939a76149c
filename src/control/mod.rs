//! Live control: the control plane that every front end steers the shards through
//! ([`plane`]), the `simulator.v1` gRPC server ([`service`]: request validation in `spec.rs`,
//! domain-to-wire mapping in `wire.rs`), its client ([`client`]) and the admin HTTP server
//! ([`admin`]). The control plane runs on its own tokio runtime and only sends
//! [`crate::shard::command::ShardCommand`]s to the shards; it never touches a shard's devices.

pub(crate) mod admin;
pub mod client;
#[cfg(test)]
mod fuzz;
pub(crate) mod incoming;
pub mod journal;
pub(crate) mod plane;
pub mod proto;
pub(crate) mod service;
mod spawn_wire;
pub(crate) mod spec;
mod wire;
