//! Label selectors: the original runtime's single `key=value`, extended to the Kubernetes
//! grammar.
//!
//! ```text
//! selector    := "" | requirement ("," requirement)*        (comma = AND)
//! requirement := key ("=" | "==" | "!=") value
//!              | key ("in" | "notin") "(" value ("," value)* ")"
//!              | key                                          (label present)
//!              | "!" key                                      (label absent)
//! ```
//!
//! Whitespace around tokens is ignored. A `=`/`!=` value runs to the next comma and may itself
//! contain `=`, so the original's `a=b=c` (key `a`, value `b=c`) still means the same thing.
//! As in the original, `key=` (an empty value) also matches a device without that label.
//! The empty selector matches every device. A syntax error names its byte position.

use std::collections::BTreeMap;
use std::fmt;

/// One condition on a device's labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector: every requirement must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub requirements: Vec<Requirement>,
}

/// A selector that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("label selector {input:?}: at position {pos}: {message}")]
pub struct SelectorError {
    pub input: String,
    /// Byte offset of the problem.
    pub pos: usize,
    pub message: String,
}

impl LabelSelector {
    /// Parses a selector (see the module docs for the grammar).
    pub fn parse(input: &str) -> Result<LabelSelector, SelectorError> {
        Parser { input, pos: 0 }.selector()
    }

    /// True when every requirement holds for `labels`.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl Requirement {
    /// True when the condition holds for `labels`.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let get = |k: &str| labels.get(k).map(String::as_str);
        match self {
            // The original compared against "" for a missing key; keep that for `k=`.
            Requirement::Equals(k, v) => get(k).unwrap_or("") == v,
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        }
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match r {
                Requirement::Equals(k, v) => write!(f, "{k}={v}")?,
                Requirement::NotEquals(k, v) => write!(f, "{k}!={v}")?,
                Requirement::In(k, vs) => write!(f, "{k} in ({})", vs.join(","))?,
                Requirement::NotIn(k, vs) => write!(f, "{k} notin ({})", vs.join(","))?,
                Requirement::Exists(k) => write!(f, "{k}")?,
                Requirement::NotExists(k) => write!(f, "!{k}")?,
            }
        }
        Ok(())
    }
}

struct Parser<'a> {
    input: &'a str,
    pos: usize,
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')
}

impl Parser<'_> {
    fn err(&self, pos: usize, message: impl Into<String>) -> SelectorError {
        SelectorError { input: self.input.to_string(), pos, message: message.into() }
    }

    fn rest(&self) -> &str {
        &self.input[self.pos..]
    }

    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.input.len() - trimmed.len();
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn eat(&mut self, s: &str) -> bool {
        if self.rest().starts_with(s) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }

    fn found(&self) -> String {
        match self.peek() {
            Some(c) => format!("{c:?}"),
            None => "the end".to_string(),
        }
    }

    fn selector(mut self) -> Result<LabelSelector, SelectorError> {
        let mut requirements = vec![];
        self.skip_ws();
        if self.peek().is_none() {
            return Ok(LabelSelector { requirements });
        }
        loop {
            requirements.push(self.requirement()?);
            self.skip_ws();
            match self.peek() {
                None => return Ok(LabelSelector { requirements }),
                Some(',') => self.pos += 1,
                Some(_) => {
                    return Err(self.err(
                        self.pos,
                        format!("expected ',' or the end, found {}", self.found()),
                    ));
                }
            }
        }
    }

    fn key(&mut self) -> Result<String, SelectorError> {
        self.skip_ws();
        let start = self.pos;
        let len = self.rest().find(|c: char| !is_key_char(c)).unwrap_or(self.rest().len());
        if len == 0 {
            return Err(self.err(
                start,
                format!(
                    "expected a label key (letters, digits, '.', '_', '-', '/'), found {}",
                    self.found()
                ),
            ));
        }
        self.pos += len;
        Ok(self.input[start..self.pos].to_string())
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        self.skip_ws();
        if self.eat("!") {
            if self.peek() == Some('=') {
                return Err(self.err(self.pos - 1, "expected a label key before '!='"));
            }
            return Ok(Requirement::NotExists(self.key()?));
        }
        let key = self.key()?;
        self.skip_ws();
        let op_pos = self.pos;
        if self.eat("!=") {
            return Ok(Requirement::NotEquals(key, self.value()));
        }
        if self.eat("==") || self.eat("=") {
            return Ok(Requirement::Equals(key, self.value()));
        }
        // A word operator needs a space before it, which `key` already stopped at.
        let word_len =
            self.rest().find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(self.rest().len());
        let word = &self.rest()[..word_len];
        match word {
            "in" | "notin" => {
                let notin = word == "notin";
                self.pos += word_len;
                let values = self.set()?;
                Ok(if notin { Requirement::NotIn(key, values) } else { Requirement::In(key, values) })
            }
            "" => match self.peek() {
                None | Some(',') => Ok(Requirement::Exists(key)),
                Some(_) => Err(self.err(
                    op_pos,
                    format!("expected '=', '==', '!=', 'in', 'notin', ',' or the end after key {key:?}, found {}", self.found()),
                )),
            },
            other => Err(self.err(
                op_pos,
                format!("unknown operator {other:?} after key {key:?}; accepted: =, ==, !=, in, notin"),
            )),
        }
    }

    /// The value of `=`/`!=`: everything up to the next comma, trimmed.
    fn value(&mut self) -> String {
        let len = self.rest().find(',').unwrap_or(self.rest().len());
        let v = self.rest()[..len].trim().to_string();
        self.pos += len;
        v
    }

    /// `( v1, v2, ... )`
    fn set(&mut self) -> Result<Vec<String>, SelectorError> {
        self.skip_ws();
        if !self.eat("(") {
            return Err(self.err(
                self.pos,
                format!("expected '(' to open the value set, found {}", self.found()),
            ));
        }
        let mut values = vec![];
        loop {
            self.skip_ws();
            let start = self.pos;
            let len = self.rest().find([',', ')', '(']).unwrap_or(self.rest().len());
            let v = self.rest()[..len].trim();
            if v.is_empty() {
                return Err(
                    self.err(start, format!("expected a value in the set, found {}", self.found()))
                );
            }
            if v.contains(char::is_whitespace) {
                return Err(
                    self.err(start, format!("a set value must not contain spaces, got {v:?}"))
                );
            }
            values.push(v.to_string());
            self.pos += len;
            match self.peek() {
                Some(',') => self.pos += 1,
                Some(')') => {
                    self.pos += 1;
                    return Ok(values);
                }
                _ => {
                    return Err(self.err(
                        self.pos,
                        format!("expected ',' or ')' in the value set, found {}", self.found()),
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// (selector, labels, expected match)
    fn check(sel: &str, cases: &[(&[(&str, &str)], bool)]) {
        let s = LabelSelector::parse(sel).unwrap_or_else(|e| panic!("{e}"));
        for (l, want) in cases {
            assert_eq!(s.matches(&labels(l)), *want, "{sel:?} on {l:?}");
        }
    }

    #[test]
    fn the_original_single_equality_still_works() {
        check(
            "device_type=thermo",
            &[(&[("device_type", "thermo")], true), (&[("device_type", "x")], false), (&[], false)],
        );
        check("group=alpha", &[(&[("group", "alpha"), ("x", "y")], true)]);
    }

    #[test]
    fn a_value_may_contain_an_equals_sign_as_in_the_original() {
        let s = LabelSelector::parse("a=b=c").unwrap();
        assert_eq!(s.requirements, vec![Requirement::Equals("a".into(), "b=c".into())]);
    }

    #[test]
    fn an_empty_value_matches_a_missing_label_as_in_the_original() {
        check("k=", &[(&[], true), (&[("k", "")], true), (&[("k", "v")], false)]);
    }

    #[test]
    fn commas_are_and() {
        check(
            "a=1,b=2",
            &[
                (&[("a", "1"), ("b", "2")], true),
                (&[("a", "1")], false),
                (&[("a", "1"), ("b", "3")], false),
            ],
        );
    }

    #[test]
    fn double_equals_and_not_equals() {
        check(
            "a==1, b != 2",
            &[
                (&[("a", "1")], true),
                (&[("a", "1"), ("b", "2")], false),
                (&[("a", "1"), ("b", "3")], true),
            ],
        );
    }

    #[test]
    fn set_membership() {
        check(
            "site in (berlin, paris)",
            &[(&[("site", "paris")], true), (&[("site", "rome")], false), (&[], false)],
        );
        check(
            "site notin (rome)",
            &[(&[("site", "paris")], true), (&[("site", "rome")], false), (&[], true)],
        );
    }

    #[test]
    fn existence_and_absence() {
        check("fw", &[(&[("fw", "1")], true), (&[], false)]);
        check("!fw", &[(&[("fw", "1")], false), (&[], true)]);
    }

    #[test]
    fn the_full_kubernetes_example() {
        let sel = "a=b,c!=d,e in (x,y),f notin (z),g";
        let s = LabelSelector::parse(sel).unwrap();
        assert_eq!(s.requirements.len(), 5);
        let ok = labels(&[("a", "b"), ("c", "q"), ("e", "y"), ("f", "w"), ("g", "")]);
        assert!(s.matches(&ok));
        let mut bad = ok.clone();
        bad.insert("f".into(), "z".into());
        assert!(!s.matches(&bad));
        assert_eq!(LabelSelector::parse(&s.to_string()).unwrap(), s);
    }

    #[test]
    fn the_empty_selector_matches_everything() {
        check("", &[(&[], true), (&[("a", "b")], true)]);
        check("   ", &[(&[], true)]);
    }

    #[test]
    fn syntax_errors_name_the_position() {
        for (sel, pos, needle) in [
            ("a in x", 5, "expected '('"),
            ("a in (x", 7, "expected ',' or ')'"),
            ("a in ()", 6, "expected a value"),
            ("a=1,", 4, "expected a label key"),
            (",a", 0, "expected a label key"),
            ("a foo (x)", 2, "unknown operator \"foo\""),
            ("a in (x) b", 9, "expected ',' or the end"),
            ("a <1", 2, "expected '='"),
            ("!=x", 0, "before '!='"),
        ] {
            let e = LabelSelector::parse(sel).unwrap_err();
            assert_eq!(e.pos, pos, "{sel:?}: {e}");
            assert!(e.to_string().contains(needle), "{sel:?}: {e}");
            assert!(e.to_string().contains(&format!("position {pos}")), "{e}");
        }
    }
}
