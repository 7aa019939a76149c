//! Faults: what each fault type does to a device's published message, as pure functions of
//! (fault, device seed, message number, sim time). Nothing here reads a clock or a global RNG,
//! so a replay with the same seed corrupts the same messages the same way.
//!
//! The shard keeps the list of active faults per device (in injection order) and applies them
//! in its tick; see `shard/faults.rs`.

use super::seed::{fnv1a64, mix64};
use super::time::SimMs;
use std::fmt;

/// How DATA_CORRUPTION damages a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CorruptionMode {
    /// Numeric fields become NaN (published as JSON `null`).
    Nan,
    /// Numeric fields become 0.
    Zero,
    /// Numeric fields are multiplied by [`SPIKE_FACTOR`].
    Spike,
    /// Bytes of the encoded payload are overwritten with 0x00 (the original's behaviour).
    Bytes,
}

/// The factor of a `spike` corruption.
pub const SPIKE_FACTOR: f64 = 10.0;
/// How many bytes a `bytes` corruption overwrites.
pub const CORRUPT_BYTES: usize = 8;

impl CorruptionMode {
    pub fn parse(s: &str) -> Option<CorruptionMode> {
        Some(match s {
            "nan" => CorruptionMode::Nan,
            "zero" => CorruptionMode::Zero,
            "spike" => CorruptionMode::Spike,
            "bytes" => CorruptionMode::Bytes,
            _ => return None,
        })
    }
}

/// One fault type with its parameters (validated).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FaultKind {
    /// No publishing; messages are counted as suppressed.
    Disconnect,
    /// Each publish is delayed by `latency_ms` (through the wheel).
    LatencySpike { latency_ms: u64 },
    /// Per message, with probability `rate`, the message is corrupted.
    DataCorruption { rate: f64, mode: CorruptionMode },
    /// Battery fields drain `multiplier` percent points per sim hour since the fault began.
    BatteryDrain { multiplier: f64 },
    /// The published timestamp runs ahead by `rate_ms_per_s` ms per sim second since the fault
    /// began (negative: behind).
    ClockDrift { rate_ms_per_s: f64 },
}

impl FaultKind {
    /// The `simulator.v1.FaultType` number.
    pub fn type_number(&self) -> i32 {
        match self {
            FaultKind::Disconnect => 1,
            FaultKind::LatencySpike { .. } => 2,
            FaultKind::DataCorruption { .. } => 3,
            FaultKind::BatteryDrain { .. } => 4,
            FaultKind::ClockDrift { .. } => 5,
        }
    }

    /// The `FaultType` enum name, as the wire and the original's metrics spell it.
    pub fn type_name(&self) -> &'static str {
        match self {
            FaultKind::Disconnect => "FAULT_TYPE_DISCONNECT",
            FaultKind::LatencySpike { .. } => "FAULT_TYPE_LATENCY_SPIKE",
            FaultKind::DataCorruption { .. } => "FAULT_TYPE_DATA_CORRUPTION",
            FaultKind::BatteryDrain { .. } => "FAULT_TYPE_BATTERY_DRAIN",
            FaultKind::ClockDrift { .. } => "FAULT_TYPE_CLOCK_DRIFT",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultKind::Disconnect => write!(f, "disconnect"),
            FaultKind::LatencySpike { latency_ms } => write!(f, "latency spike of {latency_ms} ms"),
            FaultKind::DataCorruption { rate, mode } => {
                write!(f, "data corruption ({mode:?}, rate {rate})")
            }
            FaultKind::BatteryDrain { multiplier } => write!(f, "battery drain x{multiplier}"),
            FaultKind::ClockDrift { rate_ms_per_s } => {
                write!(f, "clock drift of {rate_ms_per_s} ms/s")
            }
        }
    }
}

/// A fault as injected: its kind and how long it lasts.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultSpec {
    pub kind: FaultKind,
    /// Sim milliseconds; 0 = until cleared.
    pub duration_ms: u64,
    /// DISCONNECT only: how a per-device MQTT session is dropped (`parameters.mode`).
    pub disconnect: DisconnectMode,
}

/// How DISCONNECT drops a per-device MQTT session (pooled connections are not dropped).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DisconnectMode {
    /// Close the socket without DISCONNECT (the broker publishes the will); stay down until
    /// the fault ends.
    #[default]
    Abrupt,
    /// Send DISCONNECT, then close (no will); stay down until the fault ends.
    Graceful,
    /// The reconnect storm: close abruptly and reconnect at once (with backoff), every
    /// selected session at the same moment.
    Storm,
}

impl DisconnectMode {
    pub fn parse(s: &str) -> Option<DisconnectMode> {
        match s {
            "abrupt" => Some(DisconnectMode::Abrupt),
            "graceful" => Some(DisconnectMode::Graceful),
            "storm" => Some(DisconnectMode::Storm),
            _ => None,
        }
    }

    /// The name [`DisconnectMode::parse`] reads (`parameters.mode`).
    pub fn name(self) -> &'static str {
        match self {
            DisconnectMode::Abrupt => "abrupt",
            DisconnectMode::Graceful => "graceful",
            DisconnectMode::Storm => "storm",
        }
    }
}

/// One fault active on one device.
#[derive(Clone, Debug)]
pub struct ActiveFault {
    pub kind: FaultKind,
    pub started_ms: SimMs,
    /// 0 = until cleared.
    pub duration_ms: u64,
}

impl ActiveFault {
    /// True once the fault's duration has passed at sim time `t`.
    pub fn expired(&self, t: SimMs) -> bool {
        self.duration_ms > 0 && t >= self.started_ms.saturating_add(self.duration_ms)
    }
}

const CORRUPT_SALT: u64 = fnv1a64(b"fault:data_corruption");

/// The uniform draw in [0, 1) that decides whether message `seq` of a device is corrupted,
/// and a second word for where (`bytes` mode). Stateless: a function of the device seed and
/// the message number only, so it does not disturb the generators' streams.
pub fn corruption_draw(device_seed: u64, seq: u64) -> (f64, u64) {
    let a = mix64(device_seed ^ CORRUPT_SALT ^ seq.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let b = mix64(a ^ 0x6279_7465_7300_0000);
    ((a >> 11) as f64 / (1u64 << 53) as f64, b)
}

/// Applies a numeric corruption mode to one value.
pub fn corrupt_value(mode: CorruptionMode, v: f64) -> f64 {
    match mode {
        CorruptionMode::Nan => f64::NAN,
        CorruptionMode::Zero => 0.0,
        CorruptionMode::Spike => v * SPIKE_FACTOR,
        CorruptionMode::Bytes => v,
    }
}

/// Overwrites [`CORRUPT_BYTES`] bytes of `payload` with 0x00 at a position chosen by `word`.
pub fn corrupt_bytes(payload: &mut [u8], word: u64) {
    if payload.is_empty() {
        return;
    }
    let n = CORRUPT_BYTES.min(payload.len());
    let at = (word % (payload.len() - n + 1) as u64) as usize;
    payload[at..at + n].fill(0);
}

/// A battery reading under BATTERY_DRAIN: `multiplier` points per sim hour since `started`.
pub fn drained(v: f64, multiplier: f64, started: SimMs, t: SimMs) -> f64 {
    let hours = t.saturating_sub(started) as f64 / 3_600_000.0;
    (v - multiplier * hours).max(0.0)
}

/// The published-timestamp offset under CLOCK_DRIFT, in ms.
pub fn drift_ms(rate_ms_per_s: f64, started: SimMs, t: SimMs) -> i64 {
    // rate x ms first, then / 1000: 100 ms/s over 2070 ms is exactly 207 (not 206.99..).
    (rate_ms_per_s * t.saturating_sub(started) as f64 / 1000.0).trunc() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corruption_draws_are_reproducible_and_spread() {
        assert_eq!(corruption_draw(42, 7), corruption_draw(42, 7));
        assert_ne!(corruption_draw(42, 7).0, corruption_draw(42, 8).0);
        let hits = (0..10_000).filter(|&s| corruption_draw(99, s).0 < 0.25).count();
        assert!((2_200..2_800).contains(&hits), "{hits} of 10000 below 0.25");
    }

    #[test]
    fn byte_corruption_stays_inside_the_payload() {
        for len in [1usize, 3, 8, 9, 200] {
            for w in 0..50u64 {
                let mut p = vec![b'x'; len];
                corrupt_bytes(&mut p, mix64(w));
                assert_eq!(p.iter().filter(|&&b| b == 0).count(), CORRUPT_BYTES.min(len));
            }
        }
    }

    #[test]
    fn battery_drains_linearly_and_stops_at_zero() {
        assert_eq!(drained(100.0, 10.0, 0, 3_600_000), 90.0);
        assert_eq!(drained(100.0, 10.0, 0, 36_000_000 * 2), 0.0);
        assert_eq!(drained(50.0, 10.0, 1000, 500), 50.0);
    }

    #[test]
    fn clock_drift_grows_with_time() {
        assert_eq!(drift_ms(100.0, 0, 10_000), 1000);
        assert_eq!(drift_ms(-2.5, 0, 3_000), -7);
        assert_eq!(drift_ms(100.0, 5_000, 5_000), 0);
        assert_eq!(drift_ms(100.0, 0, 2_070), 207);
    }

    #[test]
    fn faults_expire_after_their_duration_unless_permanent() {
        let f = ActiveFault { kind: FaultKind::Disconnect, started_ms: 1000, duration_ms: 500 };
        assert!(!f.expired(1499));
        assert!(f.expired(1500));
        let p = ActiveFault { duration_ms: 0, ..f };
        assert!(!p.expired(u64::MAX));
    }
}
