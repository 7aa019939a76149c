//! iot-sim: a thread-per-core, shard-nothing discrete-event IoT device simulator.
//!
//! # Layout
//!
//! The modules, and the one order in which each only uses those below it, are described in
//! ARCHITECTURE.md ("Layers"); `layers.rs` holds the code to that order.

pub(crate) mod audit;
pub mod cli;
pub(crate) mod config;
pub mod control;
pub(crate) mod fit;
#[cfg(test)]
mod layers;
pub mod limits;
pub mod logs;
pub(crate) mod measure;
pub mod memcheck;
pub(crate) mod report;
pub(crate) mod run;
pub(crate) mod scenario;
pub(crate) mod shard;
// `clippy.toml` bans wall-clock reads and `HashMap`/`HashSet`; allowed elsewhere (Cargo.toml
// `[lints]`), the ban is enforced in the deterministic core, where output must be a function
// of the seed.
#[deny(clippy::disallowed_methods, clippy::disallowed_types)]
pub mod sim;
pub(crate) mod sink;
pub(crate) mod threshold;
pub(crate) mod trace;
pub(crate) mod walk;
