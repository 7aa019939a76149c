//! The file sink: JSON Lines, one `{"topic":...,"payload":{...}}` object per message.
//!
//! A payload that is not JSON stays on one line: a binary one (CBOR) is written as base64,
//! `{"topic":...,"payload":"<base64>","encoding":"base64"}`, a text one (a CSV or
//! line-protocol template) as a JSON string with `"encoding":"text"`.
//!
//! With more than one shard, each shard writes its own file named `<stem>.shard-<k>.<ext>` in
//! the folder of the configured path, so no lock is shared; with one shard the configured path
//! is used as is. A path that names a directory gets `telemetry.jsonl` (or
//! `telemetry.shard-<k>.jsonl`) inside it. A path that names a device or a FIFO is written as
//! is by a single shard and refused with several (`/dev/full.shard-0` would be a regular file
//! created in `/dev`).
//!
//! Output is buffered; a message counts as delivered when it is handed to the buffer, and a
//! write that fails later (when the buffer is written out) turns every message of the buffer
//! that did not reach the file into a lost one: [`FileSink::take_lost`] hands those counts to
//! the shard, which moves them from messages to errors (kind `write`). After a failure the sink
//! stops writing and every further message is an error.

use super::{Message, Submitted};
use crate::sim::format::Body;
use crate::sim::payload::write_json_str;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Bytes buffered before they are written out.
const BUFFER_BYTES: usize = 1 << 20;
/// The file name used inside a directory given as the path.
const DEFAULT_NAME: &str = "telemetry.jsonl";

pub struct FileSink {
    out: File,
    /// Lines not written yet.
    buf: Vec<u8>,
    /// Per buffered message: its end offset in `buf` and its profile.
    ends: Vec<(u32, u16)>,
    /// Messages lost by a failed write, by profile, not yet taken by the shard.
    lost: Vec<u64>,
    line: Vec<u8>,
    path: PathBuf,
    failed: bool,
}

/// The file a shard writes, or why the path cannot be shared out between `shards` shards.
pub fn shard_path(path: &Path, shard: usize, shards: usize) -> io::Result<PathBuf> {
    let meta = std::fs::metadata(path).ok();
    let is_dir = meta.as_ref().is_some_and(|m| m.is_dir())
        || path.as_os_str().to_string_lossy().ends_with('/');
    let special = meta.as_ref().is_some_and(|m| !m.is_dir() && !m.is_file());
    let (dir, file): (PathBuf, PathBuf) = if is_dir {
        (path.to_path_buf(), PathBuf::from(DEFAULT_NAME))
    } else {
        let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
        (parent, path.file_name().map(PathBuf::from).unwrap_or_else(|| DEFAULT_NAME.into()))
    };
    if shards <= 1 {
        return Ok(dir.join(file));
    }
    if special {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is not a regular file, so {shards} shards cannot each get their own file \
                 beside it; give a directory or a file path, or run with --cores 1",
                path.display()
            ),
        ));
    }
    let stem = Path::new(&file).file_stem().map(|s| s.to_string_lossy().into_owned());
    let name = match Path::new(&file).extension() {
        Some(ext) => {
            format!("{}.shard-{shard}.{}", stem.unwrap_or_default(), ext.to_string_lossy())
        }
        None => format!("{}.shard-{shard}", stem.unwrap_or_default()),
    };
    Ok(dir.join(name))
}

impl FileSink {
    pub fn open(path: &Path, profiles: usize) -> io::Result<FileSink> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let f = File::create(path).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display()))
        })?;
        Ok(FileSink {
            out: f,
            buf: Vec::with_capacity(BUFFER_BYTES + 4096),
            ends: Vec::with_capacity(4096),
            lost: vec![0; profiles],
            line: Vec::with_capacity(512),
            path: path.into(),
            failed: false,
        })
    }

    pub fn submit(&mut self, msg: &Message<'_>) -> Submitted {
        if self.failed {
            return Submitted::Failed;
        }
        self.line.clear();
        self.line.extend_from_slice(b"{\"topic\":");
        write_json_str(&mut self.line, std::str::from_utf8(msg.topic).unwrap_or(""));
        self.line.extend_from_slice(b",\"payload\":");
        match msg.wire.body {
            Body::Json => {
                self.line.extend_from_slice(msg.payload);
                self.line.extend_from_slice(b"}\n");
            }
            Body::Text => {
                write_json_str(&mut self.line, &String::from_utf8_lossy(msg.payload));
                self.line.extend_from_slice(b",\"encoding\":\"text\"}\n");
            }
            Body::Binary => {
                self.line.push(b'"');
                let start = self.line.len();
                let n = base64::encoded_len(msg.payload.len(), true).unwrap_or(0);
                self.line.resize(start + n, 0);
                let _ = STANDARD.encode_slice(msg.payload, &mut self.line[start..]);
                self.line.extend_from_slice(b"\",\"encoding\":\"base64\"}\n");
            }
        }
        self.buf.extend_from_slice(&self.line);
        self.ends.push((self.buf.len() as u32, msg.profile as u16));
        if self.buf.len() >= BUFFER_BYTES {
            // A failure here is accounted through `take_lost` like any other.
            let _ = self.flush();
        }
        Submitted::Completed
    }

    /// Writes the buffer out. On failure, the messages that did not reach the file are counted
    /// as lost and the sink stops writing.
    pub fn flush(&mut self) -> io::Result<()> {
        let mut written = 0;
        let result = loop {
            if written == self.buf.len() {
                break Ok(());
            }
            match self.out.write(&self.buf[written..]) {
                Ok(0) => break Err(io::Error::new(io::ErrorKind::WriteZero, "wrote 0 bytes")),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        if let Err(e) = &result {
            let mut n = 0;
            for &(end, profile) in &self.ends {
                if end as usize > written {
                    n += 1;
                    // Profiles spawned over gRPC come after those the sink was opened with.
                    let ix = profile as usize;
                    if ix >= self.lost.len() {
                        self.lost.resize(ix + 1, 0);
                    }
                    self.lost[ix] += 1;
                }
            }
            tracing::error!(path = %self.path.display(), error = %e, lost = n, "file sink write failed; the buffered messages and every further one count as errors");
            self.failed = true;
        }
        self.buf.clear();
        self.ends.clear();
        result
    }

    /// Messages lost by failed writes since the last call, by profile index.
    pub fn take_lost(&mut self) -> Vec<(usize, u64)> {
        let mut out = vec![];
        for (profile, n) in self.lost.iter_mut().enumerate() {
            if *n > 0 {
                out.push((profile, std::mem::take(n)));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_files_are_named_after_their_shard() {
        let p = |s: &str, k, n| shard_path(Path::new(s), k, n).unwrap();
        assert_eq!(p("out/t.jsonl", 0, 1), Path::new("out/t.jsonl"));
        assert_eq!(p("out/t.jsonl", 1, 2), Path::new("out/t.shard-1.jsonl"));
        assert_eq!(p("t", 3, 4), Path::new("t.shard-3"));
    }

    #[test]
    fn a_directory_gets_its_files_inside_it() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(shard_path(d, 0, 1).unwrap(), d.join("telemetry.jsonl"));
        assert_eq!(shard_path(d, 1, 2).unwrap(), d.join("telemetry.shard-1.jsonl"));
        let slash = format!("{}/new/", d.display());
        assert_eq!(
            shard_path(Path::new(&slash), 0, 2).unwrap(),
            d.join("new").join("telemetry.shard-0.jsonl")
        );
    }

    #[test]
    fn a_device_is_written_by_one_shard_only() {
        assert_eq!(shard_path(Path::new("/dev/null"), 0, 1).unwrap(), Path::new("/dev/null"));
        let e = shard_path(Path::new("/dev/full"), 0, 2).unwrap_err();
        assert!(e.to_string().contains("/dev/full is not a regular file"), "{e}");
    }

    static EMPTY: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();

    fn message(profile: usize) -> Message<'static> {
        Message {
            topic: b"t",
            payload: b"{}",
            profile,
            intended_ns: 0,
            device_hash: 0,
            device_id: "d",
            labels: &EMPTY,
            phase: crate::sink::net::NO_PHASE,
            wire: Default::default(),
            device_type: "t",
            mqtt5: None,
        }
    }

    #[test]
    fn failed_writes_count_every_buffered_message_as_lost() {
        let mut s = FileSink::open(Path::new("/dev/full"), 2).unwrap();
        for i in 0..200 {
            assert!(matches!(s.submit(&message(i % 2)), Submitted::Completed));
        }
        assert!(s.flush().is_err());
        assert_eq!(s.take_lost(), vec![(0, 100), (1, 100)]);
        assert!(s.take_lost().is_empty());
        assert!(matches!(s.submit(&message(0)), Submitted::Failed));
    }

    #[test]
    fn binary_and_text_payloads_stay_one_json_line() {
        use crate::sim::format::Wire;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let mut s = FileSink::open(&path, 1).unwrap();
        let bin = Wire { body: Body::Binary, content_type: "application/cbor", coap: 60 };
        s.submit(&Message { payload: &[0xa1, 0x61, b'a', 0x01], wire: bin, ..message(0) });
        let text = Wire { body: Body::Text, content_type: "text/plain", coap: 0 };
        s.submit(&Message { payload: b"m,a=1 x=2\n", wire: text, ..message(0) });
        s.submit(&message(0));
        s.flush().unwrap();
        let out = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], r#"{"topic":"t","payload":"oWFhAQ==","encoding":"base64"}"#);
        assert_eq!(lines[1], r#"{"topic":"t","payload":"m,a=1 x=2\n","encoding":"text"}"#);
        assert_eq!(lines[2], r#"{"topic":"t","payload":{}}"#);
    }

    #[test]
    fn writes_that_succeed_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let mut s = FileSink::open(&path, 1).unwrap();
        for _ in 0..3 {
            s.submit(&message(0));
        }
        s.flush().unwrap();
        assert!(s.take_lost().is_empty());
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 3);
    }
}
