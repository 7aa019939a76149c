//! iot-sim: a thread-per-core, shard-nothing discrete-event IoT device simulator.
//!
//! # Layout
//!
//! Each layer only looks down the list:
//!
//! - [`limits`]: every bound on what a fleet file or a gRPC client may ask for, and the
//!   checks both front ends share (pure functions).
//! - [`sim`]: the deterministic core, with no I/O and no clock: seeds, generators, devices,
//!   the timing wheel, faults, label selectors, payload encoding.
//! - [`logs`]: log lines as text or JSON, each with the run id.
//! - `measure`: monotonic clock reads, the `timerfd` timer, per-profile counters and HDR
//!   histograms, and the board where shards publish their figures for `/metrics`.
//! - `config`: the fleet file (TOML) -> validated `Config`; every problem is reported at once
//!   with its TOML path and the bad value. A default fleet is built into the binary.
//! - `sink`: where messages go: console, file, null, and the network sinks MQTT, AMQP, HTTP
//!   and CoAP (per-connection queues, backpressure, completion recording).
//! - `shard`: one pinned thread per core running a tokio current-thread runtime that owns its
//!   devices, wheel, sinks and statistics; realtime and virtual clocks; its command inbox
//!   (spawn, stop, status, faults, pause/resume, behaviour updates, telemetry subscriptions)
//!   and the domain events it emits.
//! - `audit`: the delivery audit: consumers (MQTT, AMQP) next to the fleet or stand-alone,
//!   per-device seq windows, losses against the schedule, end-to-end latency.
//! - `report`: per-shard outcomes merged into a table, `report.json` and `.hgrm` files.
//! - [`control`]: the control plane every front end steers shards through, the
//!   `simulator.v1` gRPC server and client, the admin HTTP server.
//! - [`scenario`]: scenario files (timed steps, phases, thresholds) -> a timeline of actions
//!   at sim times that every shard applies to its own devices, through the same commands as
//!   gRPC; thresholds judged on the report; remote runs over `simulator.v1`.
//! - `memcheck`: the memory a fleet needs, against what the process may use.
//! - `run`: starts the shards, handles signals and progress, builds the report.
//! - [`cli`]: clap commands (`run` is the default, `serve`, `validate`, and the gRPC client
//!   commands).

pub(crate) mod audit;
pub mod cli;
pub(crate) mod config;
pub mod control;
pub mod limits;
pub mod logs;
pub(crate) mod measure;
pub(crate) mod memcheck;
pub(crate) mod report;
pub(crate) mod run;
pub mod scenario;
pub(crate) mod shard;
// `clippy.toml` bans wall-clock reads and `HashMap`/`HashSet`; allowed elsewhere (Cargo.toml
// `[lints]`), the ban is enforced in the deterministic core, where output must be a function
// of the seed.
#[deny(clippy::disallowed_methods, clippy::disallowed_types)]
pub mod sim;
pub(crate) mod sink;
