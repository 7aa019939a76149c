//! The deterministic core: time, seeds, generators, devices, the timing wheel and payload
//! encoding. Nothing in here reads a clock, a global RNG or does I/O.

pub mod behaviour;
pub mod cbor;
pub mod correlated;
pub mod device;
pub mod expr;
mod fast_template;
pub mod fault;
pub mod format;
pub mod generator;
pub mod mem;
pub mod payload;
pub mod profile;
pub mod proto;
pub mod replay;
pub mod seed;
pub(crate) mod selector;
pub mod sparkplug;
pub mod time;
pub mod wheel;
