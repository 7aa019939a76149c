//! A small walker over `toml::Value`s that records every problem with its path and bad value,
//! instead of stopping at the first one (which is all serde's `deny_unknown_fields` can do).

use std::fmt;
use toml::Value;

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// TOML path, such as `profiles.thermo.fields.t.stddev` or `fleet[2].count`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a config, in the order found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem { path: path.into(), message: message.into() });
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(f, "{n} problem{} found:", if n == 1 { "" } else { "s" })?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// Joins a path and a key.
pub fn join(path: &str, key: &str) -> String {
    let plain = key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if !key.is_empty() && plain { key.to_string() } else { format!("{key:?}") };
    if path.is_empty() { key } else { format!("{path}.{key}") }
}

/// A short rendering of a bad value for messages.
pub fn show(v: &Value) -> String {
    let s = match v {
        Value::String(s) => format!("{s:?}"),
        Value::Table(_) => "a table".to_string(),
        other => other.to_string(),
    };
    if s.len() > 80 {
        format!("{}...", &s[..s.char_indices().nth(77).map_or(s.len(), |c| c.0)])
    } else {
        s
    }
}

/// The TOML type name of a value.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// A table being read: remembers which keys were used, to report the unknown ones.
pub struct Table<'a> {
    pub path: String,
    pub table: &'a toml::Table,
    used: Vec<&'a str>,
}

impl<'a> Table<'a> {
    pub fn new(path: impl Into<String>, table: &'a toml::Table) -> Table<'a> {
        Table { path: path.into(), table, used: vec![] }
    }

    /// Reads a value that must be a table; reports a type error otherwise.
    pub fn from_value(path: String, v: &'a Value, p: &mut Problems) -> Option<Table<'a>> {
        match v {
            Value::Table(t) => Some(Table::new(path, t)),
            other => {
                p.add(path, format!("expected a table, got {} {}", type_name(other), show(other)));
                None
            }
        }
    }

    pub fn path_of(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The raw value of `key`, marking it used.
    pub fn get(&mut self, key: &str) -> Option<&'a Value> {
        let (k, v) = self.table.get_key_value(key)?;
        self.used.push(k.as_str());
        Some(v)
    }

    /// Marks `key` used without reading it.
    pub fn allow(&mut self, key: &str) {
        let _ = self.get(key);
    }

    pub fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    fn typed<T>(
        &mut self,
        key: &str,
        want: &str,
        p: &mut Problems,
        f: impl Fn(&'a Value) -> Option<T>,
    ) -> Option<T> {
        let v = self.get(key)?;
        let r = f(v);
        if r.is_none() {
            p.add(self.path_of(key), format!("expected {want}, got {} {}", type_name(v), show(v)));
        }
        r
    }

    /// A finite number: TOML's `nan` and `inf` are refused (a generator fed one publishes
    /// `null` forever).
    pub fn f64(&mut self, key: &str, p: &mut Problems) -> Option<f64> {
        let v = self.typed(key, "a number", p, |v| match v {
            Value::Float(f) => Some(*f),
            Value::Integer(i) => Some(*i as f64),
            _ => None,
        })?;
        if !v.is_finite() {
            p.add(self.path_of(key), format!("must be a finite number, got {v}"));
            return None;
        }
        Some(v)
    }

    pub fn req_f64(&mut self, key: &str, p: &mut Problems) -> Option<f64> {
        if !self.has(key) {
            p.add(self.path_of(key), "missing: a number is required");
            return None;
        }
        self.f64(key, p)
    }

    pub fn int(&mut self, key: &str, p: &mut Problems) -> Option<i64> {
        self.typed(key, "an integer", p, Value::as_integer)
    }

    pub fn str(&mut self, key: &str, p: &mut Problems) -> Option<&'a str> {
        self.typed(key, "a string", p, Value::as_str)
    }

    pub fn req_str(&mut self, key: &str, p: &mut Problems) -> Option<&'a str> {
        if !self.has(key) {
            p.add(self.path_of(key), "missing: a string is required");
            return None;
        }
        self.str(key, p)
    }

    pub fn bool(&mut self, key: &str, p: &mut Problems) -> Option<bool> {
        self.typed(key, "true or false", p, Value::as_bool)
    }

    pub fn array(&mut self, key: &str, p: &mut Problems) -> Option<&'a Vec<Value>> {
        self.typed(key, "an array", p, Value::as_array)
    }

    pub fn table(&mut self, key: &str, p: &mut Problems) -> Option<Table<'a>> {
        let path = self.path_of(key);
        let v = self.get(key)?;
        Table::from_value(path, v, p)
    }

    /// A duration string, in milliseconds.
    pub fn duration_ms(&mut self, key: &str, p: &mut Problems) -> Option<u64> {
        let s = self.str(key, p)?;
        match crate::sim::time::parse_duration_ms(s) {
            Ok(ms) => Some(ms),
            Err(e) => {
                p.add(self.path_of(key), e);
                None
            }
        }
    }

    /// Reports every key that was not read, listing the accepted ones. A key that was read
    /// but is not in `accepted` is refused too: the accepted lists are the files' schema (see
    /// `config::keys`), so a key the loader reads must be in them.
    pub fn finish_with(self, accepted: &[&str], p: &mut Problems) {
        for (k, v) in self.table {
            if !self.used.contains(&k.as_str()) || !accepted.contains(&k.as_str()) {
                p.add(
                    join(&self.path, k),
                    format!(
                        "unknown key (value {}); accepted keys here: {}",
                        show(v),
                        accepted.join(", ")
                    ),
                );
            }
        }
    }
}
