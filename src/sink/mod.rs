//! Sinks: where a shard's messages go. Each shard owns its own sink instances.
//!
//! A sink takes one message at a time through [`Sink::submit`] and says what became of it:
//! completed now (console, file, null), or — for the network sinks of a later issue — pending,
//! with completion recorded later into the shard's [`crate::shard::stats`]. Latency is measured
//! by the shard from each message's intended time, so a sink only reports outcomes.

mod console;
mod file;

pub use console::ConsoleSink;
pub use file::FileSink;

use crate::config::SinkSettings;
use crate::sim::profile::Protocol;
use std::io;

/// One message handed to a sink.
pub struct Message<'a> {
    pub topic: &'a [u8],
    pub payload: &'a [u8],
}

/// What became of a submitted message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered (for this sink's definition of delivered).
    Completed,
    /// Not delivered; counted as an error.
    Failed,
}

/// A shard's sink for one protocol.
pub enum Sink {
    Console(ConsoleSink),
    File(FileSink),
    Null,
}

impl Sink {
    /// Opens the sink for `protocol` on shard `shard` of `shards`.
    pub fn open(
        protocol: Protocol,
        settings: &SinkSettings,
        shard: usize,
        shards: usize,
    ) -> io::Result<Sink> {
        Ok(match protocol {
            Protocol::Console => Sink::Console(ConsoleSink::new()),
            Protocol::Null => Sink::Null,
            Protocol::File => {
                let Some(f) = &settings.file else {
                    return Err(io::Error::other("the file sink has no [sink.file] path"));
                };
                Sink::File(FileSink::open(&file::shard_path(&f.path, shard, shards))?)
            }
        })
    }

    /// Hands a message over. Never blocks on the network.
    pub fn submit(&mut self, msg: &Message<'_>) -> Outcome {
        match self {
            Sink::Console(c) => c.submit(msg),
            Sink::File(f) => f.submit(msg),
            Sink::Null => Outcome::Completed,
        }
    }

    /// Pushes buffered output out; called between wheel turns and at shutdown.
    pub fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Console(c) => c.flush(),
            Sink::File(f) => f.flush(),
            Sink::Null => Ok(()),
        }
    }

    /// The protocol name used in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Sink::Console(_) => "console",
            Sink::File(_) => "file",
            Sink::Null => "null",
        }
    }
}
