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
pub(crate) mod spec;
mod wire;

/// The nice value of the control plane's threads (gRPC workers and their blocking pool, the
/// admin server): the shards (nice 0) come first on a core they share with them.
const CONTROL_NICE: libc::c_int = 10;

/// Lowers the calling thread's CPU priority to [`CONTROL_NICE`], so that decoding a large
/// request or a long stream conversion takes the cores the shards leave free instead of a
/// share of a pinned shard's (issue 25: a 100,000-spec SpawnDevices pushed tick lateness of a
/// 1M-device fleet from 3 ms to 16 ms on a 2-core machine). Call it on the thread itself.
pub(crate) fn yield_to_shards() {
    // SAFETY: setpriority on this thread's own id changes only its scheduling weight; a
    // refusal (never for raising nice) leaves the thread as it was.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, CONTROL_NICE);
    }
}
