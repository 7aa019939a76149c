//! Recorded traces: CSV with a header or JSON Lines (the file sink's envelope lines too), read
//! one row at a time and never loaded whole. The loader's pre-pass ([`scan`]) checks a replay's
//! trace from end to end (columns, times, values, order) and notes what the shards need
//! ([`ReplaySpec`](crate::sim::replay::ReplaySpec)); the shards stream rows with [`RowReader`]
//! (`shard/replay.rs`), and `iot-sim fit` reads its series with the same reader.

use crate::sim::replay::{ReplayField, ReplaySpec, TraceFormat, TraceLayout};
use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// Distinct values a text column may take (each becomes a state of the published field).
pub(crate) const MAX_TEXT_VALUES: usize = 4096;
/// Distinct recorded devices (values of the device column) a trace may hold.
pub(crate) const MAX_SERIES: usize = 1_000_000;
/// The longest line read (a longer one is refused, not buffered without bound).
pub(crate) const MAX_LINE: usize = 1 << 20;

/// A problem found in a trace: where (line, column) and what.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TraceError {
    pub line: u64,
    pub column: Option<String>,
    pub message: String,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.column {
            Some(c) => write!(f, "line {}, column {c:?}: {}", self.line, self.message),
            None if self.line > 0 => write!(f, "line {}: {}", self.line, self.message),
            None => f.write_str(&self.message),
        }
    }
}

fn err(line: u64, column: Option<&str>, message: impl Into<String>) -> TraceError {
    TraceError { line, column: column.map(str::to_string), message: message.into() }
}

/// The format of a trace: by extension (`.jsonl`, `.ndjson`, `.json`), else by its first byte.
fn detect(path: &Path, first: &[u8]) -> TraceFormat {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if matches!(ext.as_str(), "jsonl" | "ndjson" | "json")
        || first.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
    {
        TraceFormat::JsonLines
    } else {
        TraceFormat::Csv
    }
}

/// What a trace's first line says: the layout for the requested columns and the published
/// fields (`(published name, column)`), all other columns when `fields` is `None`.
pub(crate) fn open_layout(
    file: &Path,
    time: &str,
    device: Option<&str>,
    fields: Option<&[String]>,
) -> Result<(TraceLayout, Vec<(String, String)>), TraceError> {
    let f = File::open(file)
        .map_err(|e| err(0, None, format!("cannot open {}: {e}", file.display())))?;
    let mut r = BufReader::new(f);
    let mut first = Vec::new();
    let mut line_no = 0u64;
    // The first non-blank line.
    loop {
        first.clear();
        let n = read_line(&mut r, &mut first).map_err(|e| err(line_no + 1, None, e))?;
        if n == 0 {
            return Err(err(0, None, "the trace is empty: no header and no rows"));
        }
        line_no += 1;
        if !trim_eol(&first).iter().all(u8::is_ascii_whitespace) {
            break;
        }
    }
    let format = detect(file, &first);
    let line =
        std::str::from_utf8(trim_eol(&first)).map_err(|_| err(line_no, None, "not UTF-8 text"))?;
    let (names, data_offset, data_line) = match format {
        TraceFormat::Csv => {
            let mut cells = vec![];
            split_csv(line, &mut cells).map_err(|e| err(line_no, None, e))?;
            let offset = r.stream_position().unwrap_or(0);
            (
                cells.into_iter().map(|c| c.trim().to_string()).collect::<Vec<_>>(),
                offset,
                line_no + 1,
            )
        }
        TraceFormat::JsonLines => {
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| err(line_no, None, format!("not a JSON object: {e}")))?;
            let serde_json::Value::Object(o) = unwrap_sink_line(&v) else {
                return Err(err(line_no, None, "not a JSON object"));
            };
            let mut names = vec![];
            flatten_names("", o, &mut names);
            // The first data row is this line.
            let offset = r.stream_position().unwrap_or(0) - first.len() as u64;
            (names, offset, line_no)
        }
    };
    let has = |c: &str| match format {
        TraceFormat::Csv => names.iter().any(|n| n == c),
        TraceFormat::JsonLines => {
            names.iter().any(|n| n == c) || names.iter().any(|n| n == &format!("fields.{c}"))
        }
    };
    let missing = |c: &str| {
        err(
            line_no,
            Some(c),
            format!(
                "no such column; the {} has: {}",
                if format == TraceFormat::Csv { "header" } else { "first line" },
                names.join(", ")
            ),
        )
    };
    for c in
        std::iter::once(time).chain(device).chain(fields.unwrap_or(&[]).iter().map(String::as_str))
    {
        if !has(c) {
            return Err(missing(c));
        }
    }
    let published: Vec<(String, String)> = match fields {
        Some(f) => f
            .iter()
            .map(|c| (c.strip_prefix("fields.").unwrap_or(c).to_string(), c.clone()))
            .collect(),
        None => {
            let envelope =
                format == TraceFormat::JsonLines && names.iter().any(|n| n.starts_with("fields."));
            names
                .iter()
                .filter(|n| n.as_str() != time && Some(n.as_str()) != device)
                // The envelope's own keys (id, type, labels, seq) are not telemetry.
                .filter(|n| !envelope || n.starts_with("fields."))
                .map(|n| (n.strip_prefix("fields.").unwrap_or(n).to_string(), n.clone()))
                .collect()
        }
    };
    if published.is_empty() {
        return Err(err(line_no, None, "no column left to publish besides the time and device"));
    }
    let mut columns = vec![time.to_string()];
    columns.extend(device.map(str::to_string));
    columns.extend(published.iter().map(|p| p.1.clone()));
    let indices = match format {
        TraceFormat::Csv => {
            columns.iter().map(|c| names.iter().position(|n| n == c).unwrap_or(0)).collect()
        }
        TraceFormat::JsonLines => vec![],
    };
    Ok((
        TraceLayout {
            file: file.to_path_buf(),
            format,
            data_offset,
            data_line,
            columns,
            indices,
            has_device: device.is_some(),
        },
        published,
    ))
}

fn flatten_names(
    prefix: &str,
    o: &serde_json::Map<String, serde_json::Value>,
    out: &mut Vec<String>,
) {
    for (k, v) in o {
        let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            serde_json::Value::Object(inner) => flatten_names(&name, inner, out),
            _ => out.push(name),
        }
    }
}

/// Reads one line (with its end) into `buf`, refusing one longer than [`MAX_LINE`].
fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> Result<usize, String> {
    let n =
        r.by_ref().take(MAX_LINE as u64 + 1).read_until(b'\n', buf).map_err(|e| e.to_string())?;
    if n > MAX_LINE {
        return Err(format!("a line longer than {MAX_LINE} bytes"));
    }
    Ok(n)
}

fn trim_eol(b: &[u8]) -> &[u8] {
    let b = b.strip_suffix(b"\n").unwrap_or(b);
    b.strip_suffix(b"\r").unwrap_or(b)
}

/// Splits one CSV line (RFC 4180: `"` quotes, `""` inside quotes) into `out`.
fn split_csv(line: &str, out: &mut Vec<String>) -> Result<(), String> {
    out.clear();
    if !line.contains('"') {
        out.extend(line.split(',').map(str::to_string));
        return Ok(());
    }
    let mut cell = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', false) if cell.is_empty() && !was_quoted => {
                quoted = true;
                was_quoted = true;
            }
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            ('"', true) => quoted = false,
            (',', false) => {
                out.push(std::mem::take(&mut cell));
                was_quoted = false;
            }
            ('"', false) => return Err("a quote inside an unquoted cell".into()),
            (c, _) => cell.push(c),
        }
    }
    if quoted {
        return Err("an unclosed quote".into());
    }
    out.push(cell);
    Ok(())
}

/// The read buffer of a [`RowReader`] (one per replay profile per shard).
pub(crate) const READ_BUFFER: usize = 128 * 1024;

/// Streams the rows of a trace from a byte offset, picking out the layout's columns.
pub(crate) struct RowReader {
    inner: BufReader<File>,
    format: TraceFormat,
    columns: Vec<String>,
    /// CSV: for each header column, the cell slot it fills (usize::MAX: not read).
    pick: Vec<usize>,
    width: usize,
    buf: Vec<u8>,
    all: Vec<String>,
    /// The cells of the row just read, in the layout's column order.
    pub cells: Vec<String>,
    /// Line number and byte offset of the row just read.
    pub line: u64,
    pub offset: u64,
    next_line: u64,
    next_offset: u64,
}

impl RowReader {
    /// A reader positioned at the first data row.
    pub(crate) fn open(layout: &TraceLayout) -> Result<RowReader, TraceError> {
        RowReader::open_at(layout, layout.data_offset, layout.data_line)
    }

    /// A reader positioned at `offset`, the start of line `line`.
    pub(crate) fn open_at(
        layout: &TraceLayout,
        offset: u64,
        line: u64,
    ) -> Result<RowReader, TraceError> {
        let mut f = File::open(&layout.file)
            .map_err(|e| err(0, None, format!("cannot open {}: {e}", layout.file.display())))?;
        f.seek(SeekFrom::Start(offset)).map_err(|e| err(line, None, e.to_string()))?;
        let width = layout.indices.iter().copied().max().map_or(0, |m| m + 1);
        let mut pick = vec![usize::MAX; width];
        for (slot, &i) in layout.indices.iter().enumerate() {
            pick[i] = slot;
        }
        Ok(RowReader {
            inner: BufReader::with_capacity(READ_BUFFER, f),
            format: layout.format,
            columns: layout.columns.clone(),
            pick,
            width,
            buf: Vec::with_capacity(256),
            all: vec![],
            cells: vec![String::new(); layout.columns.len()],
            line: line.saturating_sub(1),
            offset,
            next_line: line,
            next_offset: offset,
        })
    }

    /// Byte offset and line number of the line after the row just read.
    pub(crate) fn next_offset(&self) -> u64 {
        self.next_offset
    }

    pub(crate) fn next_line(&self) -> u64 {
        self.next_line
    }

    /// Reads the next row into `cells`; false at the end of the file. Blank lines are skipped.
    /// A line that lies whole in the read buffer is split where it lies (no copy); one that
    /// straddles the buffer's end is gathered into a line buffer first.
    pub(crate) fn next_row(&mut self) -> Result<bool, TraceError> {
        loop {
            let avail =
                self.inner.fill_buf().map_err(|e| err(self.next_line, None, e.to_string()))?;
            let (n, in_place) = match memchr::memchr(b'\n', avail) {
                Some(i) if i < MAX_LINE => (i + 1, true),
                _ => {
                    self.buf.clear();
                    let n = read_line(&mut self.inner, &mut self.buf)
                        .map_err(|e| err(self.next_line, None, e))?;
                    if n == 0 {
                        return Ok(false);
                    }
                    (n, false)
                }
            };
            self.line = self.next_line;
            self.offset = self.next_offset;
            self.next_line += 1;
            self.next_offset += n as u64;
            let buf = std::mem::take(&mut self.buf);
            let raw = if in_place { &self.inner.buffer()[..n] } else { &buf[..] };
            let raw = trim_eol(raw);
            let r = if raw.iter().all(u8::is_ascii_whitespace) {
                None
            } else {
                Some(match std::str::from_utf8(raw) {
                    Err(_) => Err(err(self.line, None, "not UTF-8 text")),
                    Ok(line) => match self.format {
                        TraceFormat::Csv => Self::csv(
                            line,
                            self.line,
                            &self.pick,
                            self.width,
                            &mut self.all,
                            &mut self.cells,
                        ),
                        TraceFormat::JsonLines => {
                            Self::json(line, self.line, &self.columns, &mut self.cells)
                        }
                    },
                })
            };
            if in_place {
                self.inner.consume(n);
            }
            self.buf = buf;
            match r {
                None => continue,
                Some(r) => return r.map(|()| true),
            }
        }
    }

    fn csv(
        line: &str,
        line_no: u64,
        pick: &[usize],
        width: usize,
        all: &mut Vec<String>,
        cells: &mut [String],
    ) -> Result<(), TraceError> {
        let bytes = line.as_bytes();
        if memchr::memchr(b'"', bytes).is_none() {
            // Only the first `width` cells are read; the rest of the line is not split.
            let mut start = 0;
            let mut n = 0;
            while n < width {
                let end = memchr::memchr(b',', &bytes[start..]).map_or(bytes.len(), |i| start + i);
                let slot = pick[n];
                if slot != usize::MAX {
                    let c = &mut cells[slot];
                    c.clear();
                    // Splitting at an ASCII comma keeps UTF-8 boundaries.
                    c.push_str(line[start..end].trim());
                }
                n += 1;
                if end == bytes.len() {
                    break;
                }
                start = end + 1;
            }
            if n < width {
                return Err(err(line_no, None, format!("{n} cells, the header has more")));
            }
            return Ok(());
        }
        split_csv(line, all).map_err(|e| err(line_no, None, e))?;
        if all.len() < width {
            return Err(err(line_no, None, format!("{} cells, the header has more", all.len())));
        }
        for (i, cell) in all.iter().enumerate().take(width) {
            let slot = pick[i];
            if slot != usize::MAX {
                cells[slot].clear();
                cells[slot].push_str(cell.trim());
            }
        }
        Ok(())
    }

    fn json(
        line: &str,
        line_no: u64,
        columns: &[String],
        cells: &mut [String],
    ) -> Result<(), TraceError> {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| err(line_no, None, format!("not a JSON object: {e}")))?;
        let v = unwrap_sink_line(&v);
        for (slot, col) in columns.iter().enumerate() {
            let found = lookup(v, col).or_else(|| lookup(v, &format!("fields.{col}")));
            let cell = &mut cells[slot];
            cell.clear();
            match found {
                Some(serde_json::Value::String(s)) => cell.push_str(s),
                Some(serde_json::Value::Number(n)) => cell.push_str(&n.to_string()),
                Some(serde_json::Value::Bool(b)) => {
                    cell.push_str(if *b { "true" } else { "false" })
                }
                Some(serde_json::Value::Null) => {
                    return Err(err(line_no, Some(col), "null, not a value"));
                }
                _ => return Err(err(line_no, Some(col), "missing on this line")),
            }
        }
        Ok(())
    }
}

/// The file sink writes `{"topic":...,"payload":{...}}` per message: its payload is the row.
fn unwrap_sink_line(v: &serde_json::Value) -> &serde_json::Value {
    match (v.get("topic"), v.get("payload")) {
        (Some(_), Some(p @ serde_json::Value::Object(_))) => p,
        _ => v,
    }
}

fn lookup<'v>(v: &'v serde_json::Value, path: &str) -> Option<&'v serde_json::Value> {
    if let Some(x) = v.get(path) {
        return Some(x);
    }
    let (head, rest) = path.split_once('.')?;
    lookup(v.get(head)?, rest)
}

/// A time cell: RFC 3339, or epoch seconds (a number below 10^11, fractions allowed) or
/// milliseconds (10^11 and above); in ms since the epoch.
pub(crate) fn parse_time(cell: &str) -> Result<u64, String> {
    // Whole epoch seconds or milliseconds (the common case): exact as integers, the same
    // result as through f64 below 2^53.
    let b = cell.as_bytes();
    if !b.is_empty() && b.len() <= 15 && b.iter().all(u8::is_ascii_digit) {
        let v = b.iter().fold(0u64, |a, &d| a * 10 + (d - b'0') as u64);
        let ms = if v >= 100_000_000_000 { v } else { v * 1000 };
        if ms <= crate::sim::time::LAST_SIM_MS {
            return Ok(ms);
        }
    }
    if let Ok(v) = cell.parse::<f64>() {
        if !v.is_finite() || v < 0.0 {
            return Err(format!("{cell:?} is not a time (a negative or non-finite number)"));
        }
        let ms = if v >= 1e11 { v } else { v * 1000.0 };
        if ms > crate::sim::time::LAST_SIM_MS as f64 {
            return Err(format!("{cell:?} is beyond the year 4100"));
        }
        return Ok(ms.round() as u64);
    }
    crate::sim::time::parse_rfc3339(cell)
        .map_err(|e| format!("not a time (RFC 3339, epoch s or ms): {e}"))
}

/// A plain decimal (`-12.375`: sign, at most 15 digits, one optional point, no exponent) as
/// f64, or None for anything else. Exact: the digits as an integer below 2^53 and a power of
/// ten up to 10^15 are both exact in f64, so their one quotient is rounded once, correctly:
/// the same value `str::parse` gives (Clinger's fast path).
fn parse_plain_decimal(cell: &str) -> Option<f64> {
    const POW10: [f64; 16] =
        [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15];
    let b = cell.as_bytes();
    let (neg, digits) = match b.first()? {
        b'-' => (true, &b[1..]),
        b'+' => (false, &b[1..]),
        _ => (false, b),
    };
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    let (mut m, mut n, mut frac, mut point) = (0u64, 0usize, 0usize, false);
    for &d in digits {
        match d {
            b'0'..=b'9' => {
                m = m * 10 + (d - b'0') as u64;
                n += 1;
                frac += point as usize;
            }
            b'.' if !point => point = true,
            _ => return None,
        }
    }
    if n == 0 || n > 15 {
        return None;
    }
    let v = m as f64 / POW10[frac];
    Some(if neg { -v } else { v })
}

/// A numeric cell.
pub(crate) fn parse_number(cell: &str) -> Result<f64, String> {
    if let Some(v) = parse_plain_decimal(cell) {
        return Ok(v);
    }
    match cell.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("{cell:?} is not a number (the column's first value was)")),
    }
}

/// A trace's first row as a replay publishes it: recorded time (ms), series index, row number
/// and the values in the spec's field order (a text value as its index, a number scaled).
pub(crate) type FirstRow = (u64, u32, u64, Vec<f64>);

/// The first `max` data rows of a checked replay (`iot-sim payload preview`): reads no more
/// of the file than those rows.
pub(crate) fn first_rows(spec: &ReplaySpec, max: usize) -> Result<Vec<FirstRow>, TraceError> {
    let mut r = RowReader::open(&spec.layout)?;
    let first = 1 + spec.layout.has_device as usize;
    let mut out = vec![];
    while out.len() < max && r.next_row()? {
        let line = r.line;
        let t = parse_time(&r.cells[0]).map_err(|e| err(line, Some(&spec.layout.columns[0]), e))?;
        let series = match spec.layout.has_device {
            true => *spec
                .series
                .get(r.cells[1].as_str())
                .ok_or_else(|| err(line, None, "a device the trace did not hold when checked"))?,
            false => 0,
        };
        let mut values = Vec::with_capacity(spec.fields.len());
        for (i, f) in spec.fields.iter().enumerate() {
            let cell = &r.cells[first + i];
            values.push(match &f.text {
                Some(texts) => texts.iter().position(|x| x == cell).ok_or_else(|| {
                    err(line, Some(&f.column), "a text value the trace did not hold when checked")
                })? as f64,
                None => {
                    spec.adjust(i, parse_number(cell).map_err(|e| err(line, Some(&f.column), e))?)
                }
            });
        }
        out.push((t, series, out.len() as u64, values));
    }
    Ok(out)
}

/// What a replay's pre-pass found.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    pub series: BTreeMap<String, u32>,
    pub rows: u64,
    pub first_ms: u64,
    pub last_ms: u64,
    pub lap_ms: u64,
}

/// Reads the whole trace once, checking every row: the time parses and never goes backwards,
/// each field's value parses as its column's first value did (number or text), the device
/// column names at most [`MAX_SERIES`] devices. Fills each field's text values. The first
/// problem ends the scan.
pub(crate) fn scan(layout: &TraceLayout, fields: &mut [ReplayField]) -> Result<Scan, TraceError> {
    let mut r = RowReader::open(layout)?;
    let mut s = Scan::default();
    let first_field = 1 + layout.has_device as usize;
    let mut prev: Option<(u64, u64)> = None;
    let mut texts: Vec<BTreeMap<String, u32>> = vec![BTreeMap::new(); fields.len()];
    while r.next_row()? {
        let t = parse_time(&r.cells[0]).map_err(|e| err(r.line, Some(&layout.columns[0]), e))?;
        if let Some((pt, pline)) = prev {
            if t < pt {
                return Err(err(
                    r.line,
                    Some(&layout.columns[0]),
                    format!(
                        "time goes backwards: {:?} is before line {pline}'s; the trace must be sorted by time",
                        r.cells[0]
                    ),
                ));
            }
            if t > pt {
                s.lap_ms = t - pt;
            }
        } else {
            s.first_ms = t;
        }
        prev = Some((t, r.line));
        s.last_ms = t;
        if layout.has_device {
            let d = &r.cells[1];
            if !s.series.contains_key(d.as_str()) {
                if s.series.len() >= MAX_SERIES {
                    return Err(err(
                        r.line,
                        Some(&layout.columns[1]),
                        format!("more than {MAX_SERIES} distinct devices"),
                    ));
                }
                let n = s.series.len() as u32;
                s.series.insert(d.clone(), n);
            }
        }
        for (i, f) in fields.iter_mut().enumerate() {
            let cell = &r.cells[first_field + i];
            if s.rows == 0 {
                f.text = cell.parse::<f64>().map_or(Some(vec![]), |_| None);
            }
            match &mut f.text {
                None => {
                    parse_number(cell).map_err(|e| err(r.line, Some(&f.column), e))?;
                }
                Some(values) => {
                    if !texts[i].contains_key(cell.as_str()) {
                        if values.len() >= MAX_TEXT_VALUES {
                            return Err(err(
                                r.line,
                                Some(&f.column),
                                format!("more than {MAX_TEXT_VALUES} distinct text values"),
                            ));
                        }
                        texts[i].insert(cell.clone(), values.len() as u32);
                        values.push(cell.clone());
                    }
                }
            }
        }
        s.rows += 1;
    }
    if s.rows == 0 {
        return Err(err(layout.data_line.saturating_sub(1), None, "the trace has no data rows"));
    }
    s.lap_ms = (s.last_ms - s.first_ms) + s.lap_ms.max(1);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("iot-sim-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn fields(published: &[(String, String)]) -> Vec<ReplayField> {
        published
            .iter()
            .map(|(n, c)| ReplayField {
                name: n.clone(),
                column: c.clone(),
                text: None,
                scale: 1.0,
                offset: 0.0,
            })
            .collect()
    }

    #[test]
    fn csv_quotes_and_times() {
        let mut out = vec![];
        split_csv(r#"a,"b,c","d""e",,f"#, &mut out).unwrap();
        assert_eq!(out, vec!["a", "b,c", "d\"e", "", "f"]);
        assert!(split_csv(r#"a,"b"#, &mut out).is_err());
        assert_eq!(parse_time("2026-01-01T00:00:01.5Z").unwrap(), 1_767_225_601_500);
        assert_eq!(parse_time("1767225601.5").unwrap(), 1_767_225_601_500);
        assert_eq!(parse_time("1767225601500").unwrap(), 1_767_225_601_500);
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("-5").is_err());
    }

    #[test]
    fn the_fast_number_paths_agree_with_str_parse() {
        let cells = [
            "0",
            "-0",
            "-0.0",
            "+5",
            "1.",
            ".5",
            "20.97",
            "1.389",
            "-12.375",
            "0.1",
            "0.3",
            "123456789012345",
            "12345678901234.5",
            "9007199254740993",
            "1e3",
            "inf",
            "NaN",
            "1.2.3",
            "-",
            ".",
            "",
            "1,5",
            "0.000000000000001",
            "99999999999999.9",
        ];
        for c in cells {
            let fast = parse_plain_decimal(c);
            let std = c.parse::<f64>().ok();
            if let Some(v) = fast {
                assert_eq!(Some(v.to_bits()), std.map(f64::to_bits), "{c:?}");
            }
            assert_eq!(
                parse_number(c).ok().map(f64::to_bits),
                std.filter(|v| v.is_finite()).map(f64::to_bits),
                "{c:?}"
            );
        }
        // Every two-decimal value of a range, as the bench's trace writes them.
        for i in 0..200_000i64 {
            let c = format!("{}.{:02}", i / 100 - 1000, i % 100);
            assert_eq!(parse_number(&c).unwrap().to_bits(), c.parse::<f64>().unwrap().to_bits());
        }
        assert_eq!(parse_time("1700000000000").unwrap(), 1_700_000_000_000);
        assert_eq!(parse_time("1700000000").unwrap(), 1_700_000_000_000);
        assert_eq!(parse_time("0").unwrap(), 0);
        assert!(parse_time("999999999999999").unwrap_err().contains("4100"));
    }

    #[test]
    fn rows_straddling_the_read_buffer_read_whole() {
        // Lines of varying length across several buffer fills, the last without a newline.
        let mut text = String::from("ts,name,v\n");
        let mut want = vec![];
        for i in 0..20_000u64 {
            let name = "x".repeat((i % 13) as usize + 1);
            text.push_str(&format!("{i},{name},{}.5\n", i % 97));
            want.push(vec![i.to_string(), name, format!("{}.5", i % 97)]);
        }
        text.push_str("20000,last,1");
        want.push(vec!["20000".into(), "last".into(), "1".into()]);
        assert!(text.len() > 2 * READ_BUFFER);
        let p = write("straddle.csv", &text);
        let (layout, _) = open_layout(&p, "ts", Some("name"), None).unwrap();
        let mut r = RowReader::open(&layout).unwrap();
        let mut got = vec![];
        let mut offset = layout.data_offset;
        while r.next_row().unwrap() {
            assert_eq!(r.offset, offset);
            offset = r.next_offset();
            got.push(r.cells.clone());
        }
        assert_eq!(got, want);
        assert_eq!(offset, text.len() as u64);
    }

    #[test]
    fn a_csv_trace_is_scanned_with_its_series_and_text_values() {
        let p = write(
            "ok.csv",
            "ts,sensor,temp,state\n0,a,1.5,on\n1,b,2,off\n\n1,a,3,on\n3,b,4.25,on\n",
        );
        let (layout, published) = open_layout(&p, "ts", Some("sensor"), None).unwrap();
        assert_eq!(
            published,
            vec![("temp".into(), "temp".into()), ("state".into(), "state".into())]
        );
        let mut f = fields(&published);
        let s = scan(&layout, &mut f).unwrap();
        assert_eq!(s.rows, 4);
        assert_eq!(s.series.len(), 2);
        assert_eq!((s.first_ms, s.last_ms, s.lap_ms), (0, 3000, 5000));
        assert!(f[0].text.is_none());
        assert_eq!(f[1].text, Some(vec!["on".to_string(), "off".to_string()]));
    }

    #[test]
    fn bad_traces_name_the_line_and_column() {
        let p = write("back.csv", "ts,v\n10,1\n12,2\n11,3\n");
        let (layout, pubs) = open_layout(&p, "ts", None, None).unwrap();
        let e = scan(&layout, &mut fields(&pubs)).unwrap_err();
        assert_eq!((e.line, e.column.as_deref()), (4, Some("ts")));
        assert!(e.message.contains("backwards") && e.message.contains("line 3"), "{e}");

        let p = write("val.csv", "ts,v\n10,1\n12,x\n");
        let (layout, pubs) = open_layout(&p, "ts", None, None).unwrap();
        let e = scan(&layout, &mut fields(&pubs)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 3, column \"v\": \"x\" is not a number (the column's first value was)"
        );

        let p = write("time.csv", "ts,v\n10,1\nnoon,2\n");
        let (layout, pubs) = open_layout(&p, "ts", None, None).unwrap();
        let e = scan(&layout, &mut fields(&pubs)).unwrap_err();
        assert_eq!((e.line, e.column.as_deref()), (3, Some("ts")));

        let p = write("col.csv", "ts,v\n10,1\n");
        let e = open_layout(&p, "time", None, None).unwrap_err();
        assert!(e.to_string().contains("\"time\"") && e.to_string().contains("ts, v"), "{e}");

        let p = write("empty.csv", "");
        assert!(open_layout(&p, "ts", None, None).unwrap_err().to_string().contains("empty"));
        let p = write("header.csv", "ts,v\n");
        let (layout, pubs) = open_layout(&p, "ts", None, None).unwrap();
        assert!(
            scan(&layout, &mut fields(&pubs)).unwrap_err().to_string().contains("no data rows")
        );
    }

    #[test]
    fn the_file_sinks_envelope_lines_read_as_a_trace() {
        let p = write(
            "env.jsonl",
            concat!(
                r#"{"device_id":"t-0001","device_type":"t","timestamp":"2026-01-01T00:00:00.000Z","fields":{"humidity":40.5,"temp":21.25},"labels":{"site":"x"}}"#,
                "\n",
                r#"{"device_id":"t-0002","device_type":"t","timestamp":"2026-01-01T00:00:01.000Z","fields":{"humidity":41,"temp":-3.5},"labels":{"site":"x"}}"#,
                "\n"
            ),
        );
        let (layout, pubs) = open_layout(&p, "timestamp", Some("device_id"), None).unwrap();
        assert_eq!(
            pubs,
            vec![
                ("humidity".to_string(), "fields.humidity".to_string()),
                ("temp".to_string(), "fields.temp".to_string())
            ]
        );
        let mut f = fields(&pubs);
        let s = scan(&layout, &mut f).unwrap();
        assert_eq!((s.rows, s.series.len()), (2, 2));
        let mut r = RowReader::open(&layout).unwrap();
        assert!(r.next_row().unwrap());
        assert!(r.next_row().unwrap());
        assert_eq!(r.cells, vec!["2026-01-01T00:00:01.000Z", "t-0002", "41", "-3.5"]);
        assert_eq!(r.line, 2);
        assert!(!r.next_row().unwrap());
    }
}
