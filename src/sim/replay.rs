//! Trace replay: what a replay profile replays, as the loader's pre-pass over the trace
//! validated it (`trace::scan`), and the pure arithmetic of a replay: which devices a recorded
//! row goes to and at which sim time. The file itself is read by `trace` (the pre-pass) and
//! streamed by the shards (`shard/replay.rs`); nothing here does I/O.

use super::generator::Sample;
use super::profile::Profile;
use super::time::SimMs;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The two trace formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceFormat {
    /// Comma-separated values with a header line (RFC 4180 quoting).
    Csv,
    /// One JSON object per line; nested objects are addressed as `outer.inner`, and the
    /// members of a `fields` object (the envelope's) by their bare names too.
    JsonLines,
}

/// Where the data rows start and which columns a reader picks out of each.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceLayout {
    pub file: PathBuf,
    pub format: TraceFormat,
    /// Byte offset of the first data row (after a CSV header).
    pub data_offset: u64,
    /// 1-based line number of the first data row.
    pub data_line: u64,
    /// The columns read from each row, in this order: the time, the device (when `device`
    /// is set), then the published fields. CSV: column indices; JSON Lines: key paths.
    pub columns: Vec<String>,
    /// CSV only: the index of each of `columns` in the header.
    pub indices: Vec<usize>,
    pub has_device: bool,
}

/// One published field of a replay profile.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplayField {
    /// The published name (the column's, without a `fields.` prefix).
    pub name: String,
    /// The column read.
    pub column: String,
    /// Text values seen in the trace (a text column), in order of first appearance: a
    /// sample is the index of its value here. `None`: a numeric column.
    pub text: Option<Vec<String>>,
    pub scale: f64,
    pub offset: f64,
}

/// A validated replay: the trace's layout and what its pre-pass found.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplaySpec {
    pub layout: TraceLayout,
    /// In the profile's field order (by published name).
    pub fields: Vec<ReplayField>,
    /// `devices = N`, if set.
    pub devices: Option<u64>,
    pub speed: f64,
    pub looped: bool,
    /// Recorded series (values of the device column) -> index, in order of first appearance.
    pub series: BTreeMap<String, u32>,
    /// Data rows in the trace.
    pub rows: u64,
    /// First and last recorded time, in ms since the epoch.
    pub first_ms: u64,
    pub last_ms: u64,
    /// A loop lasts `last_ms - first_ms` plus the trace's last positive time step, so the
    /// first row of the next lap follows the last row of this one as the rows follow each
    /// other.
    pub lap_ms: u64,
}

impl ReplaySpec {
    /// How many devices replay this trace: `devices`, else one per recorded series (one when
    /// there is no device column).
    pub fn device_count(&self) -> u64 {
        match self.devices {
            Some(n) => n,
            None if self.layout.has_device => self.series.len().max(1) as u64,
            None => 1,
        }
    }

    /// The device ordinals a row goes to, as (first, step): row `row` (0-based, file order)
    /// of series `series` goes to ordinals `first, first + step, ...` below `device_count`.
    /// `device` only: series `s` to device `s`; `devices = N` only: row `r` to device
    /// `r mod N` (dealt like cards); both: series `s` to every device `k` with
    /// `k mod S = s`; neither: every row to device 0.
    pub fn targets(&self, series: u32, row: u64) -> (u64, u64) {
        let s = self.series.len().max(1) as u64;
        match (self.layout.has_device, self.devices) {
            (true, None) => (series as u64, u64::MAX),
            (false, Some(n)) => (row % n, u64::MAX),
            (true, Some(_)) => (series as u64, s),
            (false, None) => (0, u64::MAX),
        }
    }

    /// True when the device with `ordinal` gets any row.
    pub fn has_rows(&self, ordinal: u64) -> bool {
        match (self.layout.has_device, self.devices) {
            (false, Some(_)) => ordinal < self.rows,
            _ => self.rows > 0,
        }
    }

    /// The sim time of a row recorded at `t_ms`, in lap `lap`, of a run that started at
    /// `start`: the recorded offset from the trace's first row, divided by `speed`.
    pub fn schedule(&self, start: SimMs, t_ms: u64, lap: u64) -> SimMs {
        let offset = (t_ms - self.first_ms) as f64 + lap as f64 * self.lap_ms as f64;
        start.saturating_add((offset / self.speed).round() as u64)
    }

    /// A row's values (`values`, in the spec's field order) as `profile`'s samples: by name,
    /// so a profile whose fields an update changed keeps replaying the ones it still has (the
    /// others publish `null`).
    pub fn samples(&self, profile: &Profile, values: &[f64], out: &mut Vec<Sample>) {
        out.clear();
        let mut j = 0;
        for f in &profile.fields {
            while j < self.fields.len() && self.fields[j].name < f.name {
                j += 1;
            }
            out.push(match (self.fields.get(j), values.get(j)) {
                (Some(r), Some(&v)) if r.name == f.name => match r.text {
                    Some(_) => Sample::State(v as usize),
                    None => Sample::Number(v),
                },
                _ => Sample::Number(f64::NAN),
            });
        }
    }

    /// The published value of field `i` for the cell's parsed value.
    pub fn adjust(&self, i: usize, v: f64) -> f64 {
        let f = &self.fields[i];
        if f.text.is_some() { v } else { v * f.scale + f.offset }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(has_device: bool, devices: Option<u64>, series: u32) -> ReplaySpec {
        ReplaySpec {
            layout: TraceLayout {
                file: "x.csv".into(),
                format: TraceFormat::Csv,
                data_offset: 0,
                data_line: 2,
                columns: vec![],
                indices: vec![],
                has_device,
            },
            fields: vec![],
            devices,
            speed: 2.0,
            looped: false,
            series: (0..series).map(|i| (format!("s{i}"), i)).collect(),
            rows: 10,
            first_ms: 1000,
            last_ms: 9000,
            lap_ms: 9000,
        }
    }

    #[test]
    fn rows_are_dealt_by_series_or_by_row() {
        assert_eq!(spec(true, None, 3).device_count(), 3);
        assert_eq!(spec(true, None, 3).targets(2, 7), (2, u64::MAX));
        assert_eq!(spec(false, Some(4), 0).device_count(), 4);
        assert_eq!(spec(false, Some(4), 0).targets(0, 7), (3, u64::MAX));
        assert_eq!(spec(true, Some(7), 3).targets(1, 0), (1, 3));
        assert_eq!(spec(false, None, 0).device_count(), 1);
        assert!(!spec(false, Some(40), 0).has_rows(10));
        assert!(spec(false, Some(40), 0).has_rows(9));
    }

    #[test]
    fn offsets_are_scaled_by_the_speed_and_laps_follow_each_other() {
        let s = spec(true, None, 1);
        assert_eq!(s.schedule(100, 1000, 0), 100);
        assert_eq!(s.schedule(100, 3000, 0), 1100);
        assert_eq!(s.schedule(100, 1000, 1), 100 + 4500);
    }
}
