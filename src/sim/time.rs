//! Sim time: milliseconds since the Unix epoch, UTC. Formatting and parsing without a clock.
//!
//! The core never reads the wall clock; sim time is always passed in.

use std::cell::Cell;

/// Sim time in milliseconds since the Unix epoch.
pub type SimMs = u64;

/// The latest sim time a run may reach: 4100-01-01T00:00:00Z. The timing wheel keeps deadlines
/// in 46 bits (until 4199-11-24T01:22:57.663Z); a start time or run end beyond this bound is
/// refused, which leaves about 99 years of margin for intervals (at most 30 days) and faults.
pub const LAST_SIM_MS: SimMs = days_from_civil(4100, 1, 1) as u64 * 86_400_000;
const _: () = assert!(LAST_SIM_MS + 90 * 365 * 86_400_000 < crate::sim::wheel::MAX_DEADLINE_MS);

/// Checks that a run from `start_ms` for `duration_ms` (none: until stopped) stays within
/// [`LAST_SIM_MS`]; the error names the offending value.
pub fn check_span(start_ms: SimMs, duration_ms: Option<u64>) -> Result<(), String> {
    if start_ms >= LAST_SIM_MS {
        return Err(format!(
            "{} is too far ahead: the simulation clock ends at {}",
            rfc3339_ms(start_ms),
            rfc3339_ms(LAST_SIM_MS)
        ));
    }
    if let Some(d) = duration_ms
        && start_ms.saturating_add(d) > LAST_SIM_MS
    {
        return Err(format!(
            "a run of {} from {} would end after {}, where the simulation clock ends",
            format_duration_ms(d),
            rfc3339_ms(start_ms),
            rfc3339_ms(LAST_SIM_MS)
        ));
    }
    Ok(())
}

/// Days since 1970-01-01 -> (year, month, day). Howard Hinnant's `civil_from_days`.
pub const fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = (z - era * 146_097) as u64;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe as i64 + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) -> days since 1970-01-01. Howard Hinnant's `days_from_civil`.
pub const fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = (y - era * 400) as u64;
    let mp = if m > 2 { m - 3 } else { m + 9 } as u64;
    let doy = (153 * mp + 2) / 5 + d as u64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe as i64 - 719_468
}

/// Appends `YYYY-MM-DDTHH:MM:SS.mmmZ` (RFC 3339, UTC, millisecond precision).
pub fn write_rfc3339_ms(out: &mut Vec<u8>, t: SimMs) {
    // Written on the stack and copied once, the date taken from the last day's (a push per
    // character and the calendar per message were about 290 instructions of the envelope).
    out.extend_from_slice(&rfc3339_bytes(t));
}

thread_local! {
    /// The date part of the last day written on this thread (`u64::MAX`: none yet): messages
    /// come in time order, so nearly every one is on the same day as the one before it.
    static LAST_DAY: Cell<(u64, [u8; 10])> = const { Cell::new((u64::MAX, [0; 10])) };
}

/// `YYYY-MM-DD` of day `days` since the epoch.
fn date_bytes(days: u64) -> [u8; 10] {
    let (y, m, d) = civil_from_days(days as i64);
    let y = y as u32;
    let mut b = *b"0000-00-00";
    put2(&mut b, 0, y / 100);
    put2(&mut b, 2, y % 100);
    put2(&mut b, 5, m);
    put2(&mut b, 8, d);
    b
}

thread_local! {
    /// The last timestamp written on this thread and its time (`u64::MAX`: none yet): every
    /// device due in the same millisecond carries the same one (4% of the engine, issue 25).
    static LAST_MS: Cell<(u64, [u8; 24])> = const { Cell::new((u64::MAX, [0; 24])) };
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of a sim time, as its 24 bytes.
pub fn rfc3339_bytes(t: SimMs) -> [u8; 24] {
    LAST_MS.with(|c| {
        let (at, text) = c.get();
        if at == t {
            return text;
        }
        let text = rfc3339_bytes_of(t);
        c.set((t, text));
        text
    })
}

fn rfc3339_bytes_of(t: SimMs) -> [u8; 24] {
    let days = t / 86_400_000;
    let ms_of_day = (t % 86_400_000) as u32;
    let date = LAST_DAY.with(|c| {
        let (day, date) = c.get();
        if day == days {
            date
        } else {
            let date = date_bytes(days);
            c.set((days, date));
            date
        }
    });
    let secs = ms_of_day / 1000;
    let ms = ms_of_day % 1000;
    let mut b = *b"0000-00-00T00:00:00.000Z";
    b[..10].copy_from_slice(&date);
    put2(&mut b, 11, secs / 3600);
    put2(&mut b, 14, secs / 60 % 60);
    put2(&mut b, 17, secs % 60);
    b[20] = b'0' + (ms / 100) as u8;
    put2(&mut b, 21, ms % 100);
    b
}

#[inline]
fn put2(b: &mut [u8], at: usize, v: u32) {
    b[at] = b'0'.wrapping_add((v / 10) as u8);
    b[at + 1] = b'0' + (v % 10) as u8;
}

/// RFC 3339 text of a sim time.
pub fn rfc3339_ms(t: SimMs) -> String {
    let mut v = Vec::with_capacity(24);
    write_rfc3339_ms(&mut v, t);
    String::from_utf8(v).unwrap_or_default()
}

/// Fractional hour of the day (UTC), 0 <= h < 24.
pub fn hour_of_day(t: SimMs) -> f64 {
    (t % 86_400_000) as f64 / 3_600_000.0
}

fn digits(s: &[u8]) -> Option<u32> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u32, |acc, &b| acc.checked_mul(10)?.checked_add((b - b'0') as u32))
}

/// Parses an RFC 3339 date-time (`2026-03-14T00:00:00Z`, `2026-03-14 00:00:00.250+01:00`) into
/// milliseconds since the epoch. Times before 1970 are refused.
pub fn parse_rfc3339(s: &str) -> Result<SimMs, String> {
    let err = || format!("expected an RFC 3339 date-time like 2026-03-14T00:00:00Z, got {s:?}");
    let b = s.trim().as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return Err(err());
    }
    if b[13] != b':' || b[16] != b':' {
        return Err(err());
    }
    let (y, mo, d) = (digits(&b[0..4]), digits(&b[5..7]), digits(&b[8..10]));
    let (h, mi, se) = (digits(&b[11..13]), digits(&b[14..16]), digits(&b[17..19]));
    let (Some(y), Some(mo), Some(d), Some(h), Some(mi), Some(se)) = (y, mo, d, h, mi, se) else {
        return Err(err());
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return Err(err());
    }
    let mut rest = &b[19..];
    let mut ms = 0u64;
    if rest.first() == Some(&b'.') {
        let n = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return Err(err());
        }
        let frac = &rest[1..1 + n];
        for (i, c) in frac.iter().take(3).enumerate() {
            ms += (c - b'0') as u64 * [100, 10, 1][i];
        }
        rest = &rest[1 + n..];
    }
    let offset_min: i64 = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let oh = digits(&[*h1, *h2]).ok_or_else(err)? as i64;
            let om = digits(&[*m1, *m2]).ok_or_else(err)? as i64;
            if oh > 23 || om > 59 {
                return Err(err());
            }
            if *sign == b'+' { oh * 60 + om } else { -(oh * 60 + om) }
        }
        _ => return Err(err()),
    };
    let days = days_from_civil(y as i64, mo, d);
    let (cy, cm, cd) = civil_from_days(days);
    if (cy, cm, cd) != (y as i64, mo, d) {
        return Err(format!("{s:?} is not a real calendar date"));
    }
    let secs = days * 86_400 + (h * 3600 + mi * 60 + se.min(59)) as i64 - offset_min * 60;
    if secs < 0 {
        return Err(format!("{s:?} is before 1970-01-01, which is not supported"));
    }
    Ok(secs as u64 * 1000 + ms)
}

/// Parses a duration: an integer or decimal number followed by a unit (`ms`, `s`, `m`, `h`,
/// `d`), optionally several in a row (`1h30m`). Returns milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let err = |why: &str| {
        format!("{why}: expected a duration like 500ms, 5s, 2m, 1h30m or 1d, got {s:?}")
    };
    let t = s.trim();
    if t.is_empty() {
        return Err(err("empty duration"));
    }
    let b = t.as_bytes();
    let mut i = 0;
    let mut total = 0f64;
    while i < b.len() {
        let start = i;
        while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
            i += 1;
        }
        if start == i {
            return Err(err("missing number"));
        }
        let num: f64 = t[start..i].parse().map_err(|_| err("bad number"))?;
        let ustart = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let factor = match &t[ustart..i] {
            "ms" => 1.0,
            "s" => 1_000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            "d" => 86_400_000.0,
            "" => return Err(err("missing unit")),
            _ => return Err(err("unknown unit")),
        };
        total += num * factor;
    }
    if !total.is_finite() || total > 1e15 {
        return Err(err("too large"));
    }
    if total.fract() != 0.0 {
        return Err(err("finer than a millisecond"));
    }
    Ok(total as u64)
}

/// Formats milliseconds as a short human duration (`1h`, `5s`, `250ms`, `1h30m`).
pub fn format_duration_ms(ms: u64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let mut rest = ms;
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)]
    {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_epoch_and_known_dates() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_773_446_625_123), "2026-03-14T00:03:45.123Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(LAST_SIM_MS - 1), "4099-12-31T23:59:59.999Z");
        let mut v = b"x".to_vec();
        write_rfc3339_ms(&mut v, 1_773_446_625_123);
        assert_eq!(v, b"x2026-03-14T00:03:45.123Z");
    }

    #[test]
    fn kept_timestamps_are_those_of_their_own_time() {
        // Repeats and alternations, as devices due in the same or neighbouring milliseconds
        // (and across a midnight) write them.
        let times = [5, 5, 6, 5, 86_399_999, 86_400_000, 86_399_999, 86_400_000, 86_400_000];
        for t in times.into_iter().chain((0..200).map(|i| 1_773_446_000_000 + i * 3_600_017)) {
            assert_eq!(rfc3339_bytes(t), rfc3339_bytes_of(t), "{t}");
            assert_eq!(rfc3339_ms(t).as_bytes(), rfc3339_bytes_of(t), "{t}");
        }
        assert_eq!(&rfc3339_bytes(86_400_000), b"1970-01-02T00:00:00.000Z");
    }

    #[test]
    fn civil_round_trips_over_four_centuries() {
        for days in (-1000..150_000).step_by(7) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn parses_rfc3339_with_zones_and_fractions() {
        assert_eq!(parse_rfc3339("2026-03-14T00:03:45.123Z"), Ok(1_773_446_625_123));
        assert_eq!(parse_rfc3339("2026-03-14T01:03:45.123+01:00"), Ok(1_773_446_625_123));
        assert_eq!(parse_rfc3339("2026-03-14 00:03:45.1239Z"), Ok(1_773_446_625_123));
        assert!(parse_rfc3339("2026-02-30T00:00:00Z").is_err());
        assert!(parse_rfc3339("yesterday").is_err());
        assert!(parse_rfc3339("1969-12-31T23:59:59Z").is_err());
    }

    #[test]
    fn parses_durations_with_every_unit() {
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("5s"), Ok(5000));
        assert_eq!(parse_duration_ms("1.5s"), Ok(1500));
        assert_eq!(parse_duration_ms("2m"), Ok(120_000));
        assert_eq!(parse_duration_ms("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration_ms("1d"), Ok(86_400_000));
        for bad in ["", "5", "5x", "s", "0.5ms", "-1s"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn formats_durations_back() {
        assert_eq!(format_duration_ms(5_400_000), "1h30m");
        assert_eq!(format_duration_ms(250), "250ms");
        assert_eq!(format_duration_ms(0), "0s");
    }

    #[test]
    fn times_the_wheel_cannot_hold_are_refused() {
        assert_eq!(rfc3339_ms(LAST_SIM_MS), "4100-01-01T00:00:00.000Z");
        let far = parse_rfc3339("4199-11-24T01:22:57.664Z").unwrap();
        assert!(check_span(far, None).unwrap_err().contains("too far ahead"));
        assert!(check_span(LAST_SIM_MS, Some(1)).is_err());
        assert!(check_span(LAST_SIM_MS - 1000, Some(1000)).is_ok());
        assert!(check_span(LAST_SIM_MS - 1000, Some(1001)).unwrap_err().contains("would end"));
        assert!(check_span(0, Some(u64::MAX)).is_err());
        assert!(check_span(1_773_446_400_000, Some(3_600_000)).is_ok());
    }

    #[test]
    fn hour_of_day_is_fractional_utc() {
        assert_eq!(hour_of_day(1_773_446_400_000 + 90 * 60_000), 1.5);
    }
}
