//! Every bound iot-sim puts on what a fleet file or a gRPC client may ask for, in one place.
//!
//! A runtime is often shared by a team and driven by scripts, so no single request may crash,
//! starve or bloat it. Each constant here is listed in the user guide's "Limits" chapter (docs/src/limits.md) with how
//! to change it (they are compile-time constants: edit this file and rebuild). The checks that
//! apply to both the fleet file and gRPC requests live here too, so both front ends refuse the
//! same input with the same reason.

/// Longest device id, in bytes (UTF-8).
pub const MAX_ID_BYTES: usize = 256;
/// Longest device type, profile name or field name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Most labels on one device (fleet-file labels, profile labels and `device_type` together).
pub const MAX_LABELS: usize = 64;
/// Longest label key, in bytes.
pub const MAX_LABEL_KEY_BYTES: usize = 128;
/// Longest label value, in bytes.
pub const MAX_LABEL_VALUE_BYTES: usize = 1024;
/// Most telemetry fields in one profile.
pub const MAX_FIELDS: usize = 256;
/// Largest profile file a fleet file may name (`fleet[].profile = "x.toml"`), in bytes.
pub const MAX_PROFILE_FILE_BYTES: u64 = 1 << 20;

/// Most `[sink.mqtt.per_device] source_addresses`.
pub const MAX_SOURCE_ADDRESSES: usize = 256;
/// Largest `[sink.mqtt.per_device] queue_size` (unsent messages per device).
pub const MAX_DEVICE_QUEUE: usize = 100_000;
/// Highest `[sink.mqtt.per_device] connect_rate` (connections per second per runtime).
pub const MAX_CONNECT_RATE: u64 = 1_000_000;
/// Largest `[run] timer_slack`, ms: beyond it a realtime run is no longer realtime.
pub const MAX_TIMER_SLACK_MS: u64 = 100;
/// Highest `[sink.mqtt.per_device] max_connecting` (sessions connecting at once per runtime).
pub const MAX_CONNECTING: u64 = 1_000_000;
/// Largest MQTT packet a per-device session accepts from the broker (a command), in bytes.
pub const MAX_INCOMING_MQTT_PACKET: usize = 1 << 20;

/// Largest `StreamTelemetry.batch_size` (points per batch; 0 = the default, 100).
pub const MAX_STREAM_BATCH: usize = 10_000;
/// Longest `StreamTelemetry.flush_interval`, in seconds.
pub const MAX_FLUSH_INTERVAL_S: u64 = 3600;
/// Most telemetry streams open at once on one runtime; more get `RESOURCE_EXHAUSTED`.
pub const MAX_STREAMS: usize = 256;
/// Memory all telemetry streams together may hold in points not yet sent to their clients.
/// A stream whose client reads too slowly drops (and counts) what would exceed it.
pub const STREAM_BUDGET_BYTES: usize = 256 << 20;
/// Longest label selector, in bytes.
pub const MAX_SELECTOR_BYTES: usize = 64 << 10;
/// Most values in all the `in (...)` / `notin (...)` lists of one selector together.
pub const MAX_SELECTOR_VALUES: usize = 4096;
/// Longest fault duration, in seconds (365 days of sim time; 0 = until cleared).
pub const MAX_FAULT_DURATION_S: u64 = 365 * 86_400;
/// Most MQTT filters (or AMQP bindings) one delivery audit subscribes to.
pub const MAX_AUDIT_FILTERS: usize = 64;
/// Longest audit filter, binding or queue name, in bytes.
pub const MAX_AUDIT_FILTER_BYTES: usize = 1024;
/// Longest `[audit] grace` (consuming after the shards stopped), in ms.
pub const MAX_AUDIT_GRACE_MS: u64 = 60_000;
/// Most devices the audit report lists as the worst.
pub const MAX_AUDIT_WORST: usize = 1000;
/// Largest message the auditor parses, in bytes; a longer one is counted as unparsable.
pub const MAX_AUDIT_MESSAGE_BYTES: usize = 1 << 20;
/// `verify = "values"`: the most samples the auditor generates to catch one device up to a
/// received seq (a message further ahead is `unverified`, the state stays where it was).
pub const MAX_AUDIT_VALUES_CATCHUP: u64 = 1 << 20;

/// Most runtimes one client command talks to, after `dns:///NAME:PORT` entries are expanded
/// to every address behind the name.
pub const MAX_RUNTIMES: usize = 1024;
/// Longest `iot-sim probe --timeout`, in seconds (a health check must answer quickly).
pub const MAX_PROBE_TIMEOUT_S: u64 = 300;
/// Points of the report's time series (`report.json` `timeline`); a longer run merges
/// neighbouring points.
pub const MAX_TIMELINE_POINTS: usize = 2_000;
/// Points per latency distribution (one per report row) in `report.json`.
pub const MAX_DISTRIBUTION_POINTS: usize = 256;
/// Seconds of fleet figures the admin server keeps for the dashboard's charts (one a second).
pub const DASHBOARD_HISTORY_S: usize = 600;
/// Largest `report.json` that `report compare` reads.
pub const MAX_REPORT_FILE_BYTES: u64 = 256 << 20;

/// Why a name, id or label was refused.
fn check_text(what: &str, s: &str, max_bytes: usize) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if s.len() > max_bytes {
        return Err(format!("{what} is {} bytes long, more than the {max_bytes} allowed", s.len()));
    }
    if let Some(c) = s.chars().find(|c| is_forbidden(*c)) {
        return Err(format!(
            "{what} {:?} contains the control character U+{:04X}",
            shorten(s),
            c as u32
        ));
    }
    Ok(())
}

/// Control characters (NUL, newline, ...) and the bidirectional-text controls that can make an
/// id display as another one (U+202A-U+202E, U+2066-U+2069, U+200E, U+200F, U+061C).
pub fn is_forbidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
        || matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// The first 40 characters of `s`, for messages about very long input.
pub fn shorten(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// A device id: not empty, at most [`MAX_ID_BYTES`], no control or bidi characters.
pub fn check_device_id(id: &str) -> Result<(), String> {
    check_text("device id", id, MAX_ID_BYTES)
}

/// A device type, profile name or field name (`what` says which).
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    check_text(what, name, MAX_NAME_BYTES)
}

/// One label: a non-empty key of at most [`MAX_LABEL_KEY_BYTES`] and a value of at most
/// [`MAX_LABEL_VALUE_BYTES`] (which may be empty), neither with control characters.
pub fn check_label(key: &str, value: &str) -> Result<(), String> {
    check_text("label key", key, MAX_LABEL_KEY_BYTES)?;
    if value.len() > MAX_LABEL_VALUE_BYTES {
        return Err(format!(
            "label {:?} has a value of {} bytes, more than the {MAX_LABEL_VALUE_BYTES} allowed",
            shorten(key),
            value.len()
        ));
    }
    if let Some(c) = value.chars().find(|c| is_forbidden(*c)) {
        return Err(format!(
            "label {:?} has a value with the control character U+{:04X}",
            shorten(key),
            c as u32
        ));
    }
    Ok(())
}

/// The number of labels on one device.
pub fn check_label_count(n: usize) -> Result<(), String> {
    if n > MAX_LABELS {
        return Err(format!("{n} labels, more than the {MAX_LABELS} allowed on one device"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_must_be_short_printable_text() {
        assert!(check_device_id("thermo-0001").is_ok());
        assert!(check_device_id("Küche/ß-1").is_ok());
        assert!(check_device_id("").unwrap_err().contains("empty"));
        assert!(check_device_id("a\0b").unwrap_err().contains("U+0000"));
        assert!(check_device_id("a\nb").unwrap_err().contains("U+000A"));
        assert!(check_device_id("abc\u{202E}gpj.exe").unwrap_err().contains("U+202E"));
        assert!(check_device_id(&"x".repeat(10_000)).unwrap_err().contains("10000 bytes"));
        assert!(check_device_id(&"x".repeat(MAX_ID_BYTES)).is_ok());
    }

    #[test]
    fn labels_are_bounded_in_size_and_count() {
        assert!(check_label("site", "").is_ok());
        assert!(check_label("", "x").unwrap_err().contains("empty"));
        let huge = "v".repeat(10 << 20);
        assert!(check_label("site", &huge).unwrap_err().contains("10485760 bytes"));
        assert!(check_label("site", "a\u{2066}b").is_err());
        assert!(check_label_count(MAX_LABELS).is_ok());
        assert!(check_label_count(100_000).unwrap_err().contains("100000 labels"));
    }
}
