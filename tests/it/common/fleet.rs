//! The one fleet builder: writes a fleet file's TOML line by line, in the order the calls come,
//! so a test states only what it varies.
//!
//! ```ignore
//! let toml = Fleet::new()
//!     .run(1, "virtual", "2026-03-14T00:00:00Z", "1h")
//!     .sink("file").set("path", out)
//!     .devices("t", 10)
//!     .profile("t", "file", "1s")
//!     .gaussian("t", "v", 1, 0.5)
//!     .toml();
//! ```
//!
//! Keys go to the table opened last, as in TOML itself; `set` writes `key = VALUE` with the
//! value as [`Value`] renders it (strings quoted, numbers and booleans bare, [`raw`] verbatim).

use std::fmt::Write;
use std::path::{Path, PathBuf};

/// A fleet file under construction.
#[derive(Clone, Default)]
pub struct Fleet {
    text: String,
}

/// A TOML value as `set` writes it.
pub trait Value {
    fn toml(&self) -> String;
}

impl Value for &str {
    fn toml(&self) -> String {
        format!("\"{}\"", self.replace('\\', "\\\\").replace('"', "\\\""))
    }
}
impl Value for String {
    fn toml(&self) -> String {
        self.as_str().toml()
    }
}
impl Value for &String {
    fn toml(&self) -> String {
        self.as_str().toml()
    }
}
impl Value for &Path {
    fn toml(&self) -> String {
        self.to_str().unwrap().toml()
    }
}
impl Value for PathBuf {
    fn toml(&self) -> String {
        self.as_path().toml()
    }
}
impl Value for &PathBuf {
    fn toml(&self) -> String {
        self.as_path().toml()
    }
}
macro_rules! bare {
    ($($t:ty),*) => {$(impl Value for $t {
        fn toml(&self) -> String {
            self.to_string()
        }
    })*};
}
bare!(bool, i32, i64, u16, u32, u64, usize);
impl Value for f64 {
    fn toml(&self) -> String {
        format!("{self:?}")
    }
}

/// A value written as given: an inline table, an array, a float spelled `22.0`.
pub struct Raw(pub String);
pub fn raw(s: impl Into<String>) -> Raw {
    Raw(s.into())
}
impl Value for Raw {
    fn toml(&self) -> String {
        self.0.clone()
    }
}

impl Fleet {
    pub fn new() -> Fleet {
        Fleet::default()
    }

    /// Opens `[name]`.
    pub fn table(mut self, name: &str) -> Fleet {
        let _ = write!(self.text, "\n[{name}]\n");
        self
    }

    /// Opens one more `[[name]]`.
    pub fn entry(mut self, name: &str) -> Fleet {
        let _ = write!(self.text, "\n[[{name}]]\n");
        self
    }

    /// `key = value` in the table opened last.
    pub fn set(mut self, key: &str, value: impl Value) -> Fleet {
        let _ = writeln!(self.text, "{key} = {}", value.toml());
        self
    }

    /// Text written as given (a line or a whole section), followed by a newline.
    pub fn raw(mut self, text: &str) -> Fleet {
        self.text.push_str(text);
        self.text.push('\n');
        self
    }

    /// `[run]` with a seed, a clock, a start time and a duration.
    pub fn run(self, seed: u64, clock: &str, start_time: &str, duration: &str) -> Fleet {
        self.table("run")
            .set("seed", seed)
            .set("clock", clock)
            .set("start_time", start_time)
            .set("duration", duration)
    }

    /// Opens `[sink.KIND]`.
    pub fn sink(self, kind: &str) -> Fleet {
        self.table(&format!("sink.{kind}"))
    }

    /// `[[fleet]]` of `count` devices of `profile`.
    pub fn devices(self, profile: &str, count: impl Value) -> Fleet {
        self.entry("fleet").set("profile", profile).set("count", count)
    }

    /// Opens `[profiles.NAME]` with its protocol and interval.
    pub fn profile(self, name: &str, protocol: &str, interval: &str) -> Fleet {
        self.table(&format!("profiles.{name}")).set("protocol", protocol).set("interval", interval)
    }

    /// Opens `[profiles.PROFILE.fields.NAME]` with its generator type.
    pub fn field(self, profile: &str, name: &str, kind: &str) -> Fleet {
        self.table(&format!("profiles.{profile}.fields.{name}")).set("type", kind)
    }

    /// A gaussian field.
    pub fn gaussian(
        self,
        profile: &str,
        name: &str,
        mean: impl Value,
        stddev: impl Value,
    ) -> Fleet {
        self.field(profile, name, "gaussian").set("mean", mean).set("stddev", stddev)
    }

    /// The fleet file's text.
    pub fn toml(&self) -> String {
        self.text.clone()
    }

    /// Writes the fleet file to `path` and returns the path.
    pub fn write(&self, path: impl Into<PathBuf>) -> PathBuf {
        let path = path.into();
        std::fs::write(&path, &self.text).unwrap();
        path
    }
}
