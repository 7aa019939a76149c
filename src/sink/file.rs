//! The file sink: JSON Lines, one `{"topic":...,"payload":{...}}` object per message.
//!
//! With more than one shard, each shard writes its own file named `<stem>.shard-<k>.<ext>`,
//! so no lock is shared; with one shard the configured path is used as is.

use super::{Message, Outcome};
use crate::sim::payload::write_json_str;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

pub struct FileSink {
    out: BufWriter<File>,
    line: Vec<u8>,
    path: PathBuf,
    failed: bool,
}

/// The file a shard writes.
pub fn shard_path(path: &Path, shard: usize, shards: usize) -> PathBuf {
    if shards <= 1 {
        return path.to_path_buf();
    }
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.shard-{shard}.{}", ext.to_string_lossy()),
        None => format!("{stem}.shard-{shard}"),
    };
    path.with_file_name(name)
}

impl FileSink {
    pub fn open(path: &Path) -> io::Result<FileSink> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let f = File::create(path).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display()))
        })?;
        Ok(FileSink {
            out: BufWriter::with_capacity(1 << 20, f),
            line: Vec::with_capacity(512),
            path: path.into(),
            failed: false,
        })
    }

    pub fn submit(&mut self, msg: &Message<'_>) -> Outcome {
        if self.failed {
            return Outcome::Failed;
        }
        self.line.clear();
        self.line.extend_from_slice(b"{\"topic\":");
        write_json_str(&mut self.line, std::str::from_utf8(msg.topic).unwrap_or(""));
        self.line.extend_from_slice(b",\"payload\":");
        self.line.extend_from_slice(msg.payload);
        self.line.extend_from_slice(b"}\n");
        match self.out.write_all(&self.line) {
            Ok(()) => Outcome::Completed,
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "file sink write failed; further messages count as errors");
                self.failed = true;
                Outcome::Failed
            }
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_files_are_named_after_their_shard() {
        assert_eq!(shard_path(Path::new("out/t.jsonl"), 0, 1), Path::new("out/t.jsonl"));
        assert_eq!(shard_path(Path::new("out/t.jsonl"), 1, 2), Path::new("out/t.shard-1.jsonl"));
        assert_eq!(shard_path(Path::new("t"), 3, 4), Path::new("t.shard-3"));
    }
}
