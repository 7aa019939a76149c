//! iot-sim: a thread-per-core, shard-nothing discrete-event IoT device simulator.
//!
//! # Layout
//!
//! - [`cli`]: clap commands (`run` is the default, `validate`); flags override the file.
//! - [`config`]: the fleet file (TOML) -> validated [`config::Config`]; every problem is
//!   reported at once with its TOML path and the bad value.
//! - [`sim`]: the deterministic core, with no I/O and no clock: seeds, generators, devices,
//!   the timing wheel, payload encoding.
//! - [`shard`]: one pinned thread per core running a tokio current-thread runtime that owns its
//!   devices, wheel, sinks and statistics; realtime and virtual clocks.
//! - [`sink`]: where messages go (console, file, null).
//! - [`control`]: live control over gRPC (`simulator.v1`), label selectors, the client.
//! - [`logs`]: text or JSON log lines, each with the run id.
//! - [`observe`]: what shards publish for `/metrics` (per-profile counters, fixed buckets).
//! - [`report`]: per-shard HDR histograms merged into a table, `report.json` and `.hgrm` files.
//! - [`run`]: starts the shards, handles signals and progress, builds the report.

pub mod cli;
pub mod config;
pub mod control;
pub mod logs;
pub mod observe;
pub mod report;
pub mod run;
pub mod shard;
pub mod sim;
pub mod sink;
