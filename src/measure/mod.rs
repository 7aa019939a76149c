//! Measuring, below everything that sends: monotonic clock reads and the `timerfd` timer
//! ([`clock`]), the message [`counters`] every figure carries, and the per-profile counters and HDR histograms ([`stats`]) that shards and
//! network sinks record into and the report merges, and the [`board`] where shards publish
//! their figures for the admin server; the wall clock and the [`run_identity`].

pub(crate) mod board;
pub(crate) mod clock;
pub mod counters;
pub mod run_identity;
pub(crate) mod stats;
