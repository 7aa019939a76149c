//! The console sink: `[topic] payload` lines on stdout; a binary payload (CBOR) is printed as
//! `[topic] hex:<hex> cbor:<diagnostic notation>`.
//!
//! Each shard fills its own buffer and writes whole lines with one `write_all` under the stdout
//! lock, so lines from different shards never interleave.

use super::{Message, Submitted};
use crate::sim::cbor::diagnostic;
use crate::sim::format::{Body, write_hex};
use std::io::{self, Write};

const FLUSH_AT: usize = 64 * 1024;

pub struct ConsoleSink {
    buf: Vec<u8>,
    failed: bool,
}

impl ConsoleSink {
    pub fn new() -> ConsoleSink {
        ConsoleSink { buf: Vec::with_capacity(FLUSH_AT + 4096), failed: false }
    }

    pub fn submit(&mut self, msg: &Message<'_>) -> Submitted {
        if self.failed {
            return Submitted::Failed;
        }
        self.buf.push(b'[');
        self.buf.extend_from_slice(msg.topic);
        self.buf.extend_from_slice(b"] ");
        if msg.wire.body == Body::Binary {
            // Binary: hex, then the decoded view.
            self.buf.extend_from_slice(b"hex:");
            write_hex(&mut self.buf, msg.payload);
            // Protobuf without its descriptor at hand: field numbers and values, as
            // `protoc --decode_raw` shows them; CBOR in diagnostic notation.
            match crate::sim::proto::raw_view(msg.payload) {
                Some(v) if msg.wire.content_type == "application/x-protobuf" => {
                    self.buf.extend_from_slice(b" protobuf:{ ");
                    self.buf.extend_from_slice(v.as_bytes());
                    self.buf.extend_from_slice(b" }");
                }
                _ => {
                    self.buf.extend_from_slice(b" cbor:");
                    self.buf.extend_from_slice(diagnostic(msg.payload).as_bytes());
                }
            }
        } else {
            self.buf.extend_from_slice(msg.payload);
        }
        self.buf.push(b'\n');
        if self.buf.len() >= FLUSH_AT && self.flush().is_err() {
            return Submitted::Failed;
        }
        Submitted::Completed
    }

    pub fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut out = io::stdout().lock();
        let r = out.write_all(&self.buf).and_then(|_| out.flush());
        self.buf.clear();
        if r.is_err() {
            // A closed pipe (`iot-sim ... | head`) must not kill the run; count the rest as errors.
            self.failed = true;
        }
        r
    }
}

impl Default for ConsoleSink {
    fn default() -> Self {
        Self::new()
    }
}
