//! What identifies a run: its id (in every log line, `report.json` and `iot_sim_run_info`),
//! seed, version and clock.

/// What identifies a run to an observer.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunIdentity {
    pub run_id: String,
    pub seed: u64,
    pub version: &'static str,
    pub clock: &'static str,
}

/// A random run id: 16 hex digits.
pub fn random_run_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("{:016x}", RandomState::new().hash_one(nanos ^ ((std::process::id() as u64) << 32)))
}
