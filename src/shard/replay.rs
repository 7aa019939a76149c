//! Replay devices' rows, streamed: one reader per replay profile per shard reads the trace
//! once, in file (= time) order, and hands each row to the devices of this shard it is dealt
//! to (`ReplaySpec::targets`). A device holds at most [`RING`] rows ahead; a row for a device
//! whose ring is full is not kept: the device notes where it lagged, and when its ring runs
//! dry it reads its own rows from there with a private reader until it catches up with the
//! shared one. So memory is bounded by devices × `RING` rows whatever the trace's size or
//! shape, and a well-behaved trace (devices reporting in turn) is read exactly once.
//!
//! Which code path delivers a row never changes its values or time, so a replay is the same
//! for any `--cores`: a device's rows are its rows of the trace, in order.

use crate::sim::replay::ReplaySpec;
use crate::sim::time::SimMs;
use crate::trace::{RowReader, parse_number, parse_time};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

/// Rows a device holds ahead.
const RING: usize = 8;
const NONE: u32 = u32::MAX;

/// A text field's value -> index (None: a numeric field).
type TextIndex = Option<BTreeMap<String, u32>>;

/// Where a reader is: the next row's byte offset and line, its row number and lap.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Pos {
    offset: u64,
    line: u64,
    row: u64,
    lap: u64,
}

struct Dev {
    ordinal: u64,
    /// Rows: the scheduled sim time, then the values (a text value as its index).
    rows: VecDeque<f64>,
    /// Set when a row was not kept: this device's rows from here on are its to read.
    lag: Option<Pos>,
}

/// One replay profile's shared reader on this shard.
struct Reader {
    spec: Arc<ReplaySpec>,
    start: SimMs,
    src: Option<RowReader>,
    pos: Pos,
    eof: bool,
    /// Ordinal -> index into `devs`.
    local: BTreeMap<u64, u32>,
    devs: Vec<Dev>,
    stride: usize,
    /// Text fields' value -> index.
    texts: Vec<TextIndex>,
    /// The spec's series (device column value -> index) for lookups by hash, row by row
    /// (only looked up, never iterated: no order dependence).
    series: HashMap<String, u32>,
    row_values: Vec<f64>,
    warned: bool,
}

/// The replays of one shard.
#[derive(Default)]
pub(crate) struct Replays {
    readers: Vec<Reader>,
    /// Profile index -> reader.
    by_profile: BTreeMap<usize, u32>,
    /// Device key -> (reader, device).
    by_key: Vec<(u32, u32)>,
    /// The values of the row [`Replays::take`] just took, in the spec's field order.
    pub out: Vec<f64>,
}

impl Replays {
    /// Registers device `key` (ordinal `ordinal` of profile `profile`) and returns the sim
    /// time of its first row, if it has one.
    pub(crate) fn add(
        &mut self,
        profile: usize,
        spec: &Arc<ReplaySpec>,
        start: SimMs,
        key: u32,
        ordinal: u64,
    ) -> Option<SimMs> {
        let r = *self.by_profile.entry(profile).or_insert_with(|| {
            self.readers.push(Reader::new(spec.clone(), start));
            (self.readers.len() - 1) as u32
        });
        let reader = &mut self.readers[r as usize];
        let d = reader.devs.len() as u32;
        reader.devs.push(Dev {
            ordinal,
            rows: VecDeque::with_capacity(RING * reader.stride),
            lag: None,
        });
        reader.local.insert(ordinal, d);
        if self.by_key.len() <= key as usize {
            self.by_key.resize(key as usize + 1, (NONE, NONE));
        }
        self.by_key[key as usize] = (r, d);
        if !spec.has_rows(ordinal) {
            return None;
        }
        reader.fill(d as usize);
        reader.head(d as usize)
    }

    /// The tick of device `key` at `due`: drops rows scheduled before `due` (the device was
    /// paused), takes the row scheduled at `due` into `out` (true) and returns the time of
    /// the next row; or, when no row is due, false and the time of the next one.
    pub(crate) fn take(&mut self, key: u32, due: SimMs) -> (bool, Option<SimMs>) {
        let Some(&(r, d)) = self.by_key.get(key as usize) else { return (false, None) };
        let Some(reader) = self.readers.get_mut(r as usize) else { return (false, None) };
        let d = d as usize;
        if d >= reader.devs.len() || !reader.spec.has_rows(reader.devs[d].ordinal) {
            return (false, None);
        }
        loop {
            reader.fill(d);
            let Some(t) = reader.head(d) else { return (false, None) };
            let stride = reader.stride;
            let rows = &mut reader.devs[d].rows;
            if t > due {
                return (false, Some(t));
            }
            rows.pop_front();
            if t < due {
                rows.drain(..stride - 1);
                continue;
            }
            self.out.clear();
            self.out.extend(rows.drain(..stride - 1));
            break;
        }
        reader.fill(d);
        (true, reader.head(d))
    }
}

impl Reader {
    fn new(spec: Arc<ReplaySpec>, start: SimMs) -> Reader {
        let pos =
            Pos { offset: spec.layout.data_offset, line: spec.layout.data_line, row: 0, lap: 0 };
        let texts = spec
            .fields
            .iter()
            .map(|f| {
                f.text
                    .as_ref()
                    .map(|v| v.iter().enumerate().map(|(i, s)| (s.clone(), i as u32)).collect())
            })
            .collect();
        let series = spec.series.iter().map(|(k, &v)| (k.clone(), v)).collect();
        let mut reader = Reader {
            series,
            stride: 1 + spec.fields.len(),
            src: None,
            pos,
            eof: false,
            local: BTreeMap::new(),
            devs: vec![],
            texts,
            row_values: Vec::with_capacity(spec.fields.len()),
            warned: false,
            spec,
            start,
        };
        match RowReader::open(&reader.spec.layout) {
            Ok(r) => reader.src = Some(r),
            Err(e) => reader.fail(&e.to_string()),
        }
        reader
    }

    fn fail(&mut self, why: &str) {
        self.eof = true;
        if !self.warned {
            self.warned = true;
            tracing::warn!(
                file = %self.spec.layout.file.display(),
                error = why,
                "replay: the trace changed since it was checked; its devices stop here"
            );
        }
    }

    fn head(&self, d: usize) -> Option<SimMs> {
        self.devs[d].rows.front().map(|t| *t as SimMs)
    }

    /// Makes sure device `d` holds a row, unless it has none left.
    fn fill(&mut self, d: usize) {
        // A lap without a row for `d` means it has none (a trace that changed).
        let mut guard = 0u64;
        while self.devs[d].rows.is_empty() {
            if self.devs[d].lag.is_some() {
                self.catch_up(d);
                continue;
            }
            if self.eof {
                return;
            }
            guard += 1;
            if guard > self.spec.rows.saturating_mul(2) + 2 {
                return;
            }
            self.read_shared();
        }
    }

    /// Decodes the row `src` just read into (recorded time, series, values in
    /// `row_values`); None for a row the trace no longer holds as checked.
    fn decode(
        spec: &ReplaySpec,
        (texts, series_ix): (&[TextIndex], &HashMap<String, u32>),
        src: &RowReader,
        values: &mut Vec<f64>,
    ) -> Result<(u64, u32), String> {
        let t = parse_time(&src.cells[0])?;
        if t < spec.first_ms {
            return Err(format!("line {}: a time before the first row's", src.line));
        }
        let series = if spec.layout.has_device {
            *series_ix
                .get(src.cells[1].as_str())
                .ok_or_else(|| format!("line {}: a device the trace did not hold", src.line))?
        } else {
            0
        };
        let first = 1 + spec.layout.has_device as usize;
        values.clear();
        for (i, f) in spec.fields.iter().enumerate() {
            let cell = &src.cells[first + i];
            let v = match &texts[i] {
                Some(map) => *map.get(cell.as_str()).ok_or_else(|| {
                    format!("line {}: a text value the trace did not hold", src.line)
                })? as f64,
                None => parse_number(cell).map(|v| v * f.scale + f.offset)?,
            };
            values.push(v);
        }
        Ok((t, series))
    }

    /// Reads one row with the shared reader and hands it to its devices on this shard.
    fn read_shared(&mut self) {
        let Some(src) = self.src.as_mut() else {
            self.eof = true;
            return;
        };
        match src.next_row() {
            Ok(true) => {}
            Ok(false) => {
                if self.spec.looped {
                    self.pos = Pos {
                        offset: self.spec.layout.data_offset,
                        line: self.spec.layout.data_line,
                        row: 0,
                        lap: self.pos.lap + 1,
                    };
                    match RowReader::open(&self.spec.layout) {
                        Ok(r) => self.src = Some(r),
                        Err(e) => self.fail(&e.to_string()),
                    }
                } else {
                    self.eof = true;
                }
                return;
            }
            Err(e) => return self.fail(&e.to_string()),
        }
        let here = Pos { offset: src.offset, line: src.line, ..self.pos };
        let decoded =
            Reader::decode(&self.spec, (&self.texts, &self.series), src, &mut self.row_values);
        self.pos = Pos {
            offset: src.next_offset(),
            line: src.next_line(),
            row: self.pos.row + 1,
            lap: self.pos.lap,
        };
        let (t, series) = match decoded {
            Ok(x) => x,
            Err(e) => return self.fail(&e),
        };
        let at = self.spec.schedule(self.start, t, here.lap) as f64;
        let (first, step) = self.spec.targets(series, here.row);
        let count = self.spec.device_count();
        let mut ordinal = first;
        while ordinal < count {
            if let Some(&d) = self.local.get(&ordinal) {
                let dev = &mut self.devs[d as usize];
                if dev.lag.is_none() {
                    if dev.rows.len() >= RING * self.stride {
                        dev.lag = Some(here);
                    } else {
                        dev.rows.push_back(at);
                        dev.rows.extend(self.row_values.iter().copied());
                    }
                }
            }
            ordinal = match ordinal.checked_add(step) {
                Some(o) => o,
                None => break,
            };
        }
    }

    /// Device `d` lagged: reads its own rows from where it lagged, until its ring is full
    /// (it lags from there on) or it reaches the shared reader (it no longer lags).
    fn catch_up(&mut self, d: usize) {
        let Some(mut at) = self.devs[d].lag.take() else { return };
        let mut src = match RowReader::open_at(&self.spec.layout, at.offset, at.line) {
            Ok(r) => r,
            Err(e) => return self.fail(&e.to_string()),
        };
        let ordinal = self.devs[d].ordinal;
        let mut values = Vec::with_capacity(self.spec.fields.len());
        loop {
            if at.lap == self.pos.lap && at.offset == self.pos.offset {
                return;
            }
            if self.devs[d].rows.len() >= RING * self.stride {
                self.devs[d].lag = Some(at);
                return;
            }
            match src.next_row() {
                Ok(true) => {}
                Ok(false) if self.spec.looped && at.lap < self.pos.lap => {
                    at = Pos {
                        offset: self.spec.layout.data_offset,
                        line: self.spec.layout.data_line,
                        row: 0,
                        lap: at.lap + 1,
                    };
                    match RowReader::open(&self.spec.layout) {
                        Ok(r) => src = r,
                        Err(e) => return self.fail(&e.to_string()),
                    }
                    continue;
                }
                Ok(false) => return,
                Err(e) => return self.fail(&e.to_string()),
            }
            let row = at.row;
            let decoded =
                Reader::decode(&self.spec, (&self.texts, &self.series), &src, &mut values);
            at =
                Pos { offset: src.next_offset(), line: src.next_line(), row: row + 1, lap: at.lap };
            let (t, series) = match decoded {
                Ok(x) => x,
                Err(e) => return self.fail(&e),
            };
            let (first, step) = self.spec.targets(series, row);
            let mine = ordinal >= first && (ordinal - first).is_multiple_of(step);
            if mine {
                let sched = self.spec.schedule(self.start, t, at.lap) as f64;
                let dev = &mut self.devs[d];
                dev.rows.push_back(sched);
                dev.rows.extend(values.iter().copied());
            }
        }
    }
}
