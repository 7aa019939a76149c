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
//! - [`report`]: per-shard HDR histograms merged into a table, `report.json` and `.hgrm` files.
//! - [`limits`]: every bound on what a fleet file or a gRPC client may ask for.
//! - [`memcheck`]: the memory a fleet needs, against what the process may use.
//! - [`run`]: starts the shards, handles signals and progress, builds the report.

pub mod cli;
pub mod config;
pub mod control;
pub mod limits;
pub mod memcheck;
pub mod report;
pub mod run;
pub mod shard;
pub mod sim;
pub mod sink;
