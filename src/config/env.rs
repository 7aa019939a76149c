//! The environment layer of the configuration: the file, then `IOT_SIM_*` variables, then
//! flags; a later layer wins.
//!
//! **Mapping rule** (derived from the schema the walker accepts, not a hand-kept list): the
//! setting `KEY` of the table `[SECTION]` is read from `IOT_SIM_<SECTION>_<KEY>`, upper-cased,
//! with `.` (and `-`) as `_`: `[run] seed` is `IOT_SIM_RUN_SEED`, `[sink.mqtt] url` is
//! `IOT_SIM_SINK_MQTT_URL`. The sections and keys are [`super::RUN_KEYS`] and
//! [`super::sinks::TABLES`], the lists the loader checks a file against, so a key added there
//! gets its variable for free. A variable for a `[sink.NAME]` table the file lacks creates the
//! table (the sink is then configured, its other keys at their defaults).
//!
//! A value reads as it would on the right of `key = ` in TOML (`42` an integer, `true` a
//! boolean, `1.5` a float, `"042"` a string, `[1, 2]` an array), and anything that is no TOML
//! value is a plain string (`mqtt://broker:1883`, `90s`, `out/report`). An empty value is the
//! same as unset. A value that does not fit its key is reported like a bad file value, with the
//! variable's name in front of the TOML path.
//!
//! Unknown `IOT_SIM_*` variables are an error with the closest valid name, so that a typo
//! cannot silently run another test. The variables other modules read (credentials, logging,
//! limits: [`OTHER_VARS`]) are valid names too.

use crate::walk::Problems;
use toml::Value;

/// The prefix of every variable of iot-sim.
pub const PREFIX: &str = "IOT_SIM_";

/// Variables read outside the `[run]`/`[sink.*]` layer (each documented where it is read):
/// valid names for the unknown-variable check.
pub const OTHER_VARS: &[&str] = &[
    "IOT_SIM_LOG",
    "IOT_SIM_LOG_FORMAT",
    crate::memcheck::LIMIT_VAR,
    "IOT_SIM_MQTT_USERNAME",
    "IOT_SIM_MQTT_PASSWORD",
    "IOT_SIM_AMQP_USERNAME",
    "IOT_SIM_AMQP_PASSWORD",
    "IOT_SIM_HTTP_TOKEN",
    "IOT_SIM_ADMIN_TOKEN",
    "IOT_SIM_ADMIN_REQUEST_TIMEOUT",
    "IOT_SIM_PROFILES_DIR",
];

/// One setting the environment can carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    /// `IOT_SIM_RUN_SEED`.
    pub var: String,
    /// `None` for `[run]`, `Some("mqtt")` for `[sink.mqtt]`.
    pub sink: Option<&'static str>,
    pub key: &'static str,
}

impl Setting {
    /// The TOML path, such as `run.seed` or `sink.mqtt.url`.
    pub fn path(&self) -> String {
        match self.sink {
            None => format!("run.{}", self.key),
            Some(s) => format!("sink.{s}.{}", self.key),
        }
    }
}

/// The variable name of a setting: the mapping rule.
pub fn var_name(section: &str, key: &str) -> String {
    format!("{PREFIX}{section}_{key}").to_ascii_uppercase().replace(['.', '-'], "_")
}

/// Every setting of `[run]` and `[sink.*]`, in schema order.
pub fn settings() -> Vec<Setting> {
    let run =
        super::RUN_KEYS.iter().map(|k| Setting { var: var_name("run", k), sink: None, key: k });
    let sinks = super::sinks::TABLES.iter().flat_map(|(name, keys)| {
        keys.iter().map(move |k| Setting {
            var: var_name(&format!("sink.{name}"), k),
            sink: Some(name),
            key: k,
        })
    });
    run.chain(sinks).collect()
}

/// The process's `IOT_SIM_*` variables (names and values as UTF-8; [`check`] reports the
/// ones that are not).
pub fn process_vars() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| {
            let k = k.to_string_lossy().into_owned();
            k.starts_with(PREFIX).then(|| (k, v.to_string_lossy().into_owned()))
        })
        .collect()
}

/// Reports unknown `IOT_SIM_*` names (with the closest valid name) and values that are not
/// UTF-8, for the process's environment.
pub fn check_process() -> Problems {
    let vars: Vec<(String, Option<String>)> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let k = k.to_string_lossy().into_owned();
            k.starts_with(PREFIX).then(|| (k, v.into_string().ok()))
        })
        .collect();
    check(&vars)
}

/// [`check_process`] over given variables (`None`: a value that is not UTF-8).
pub fn check(vars: &[(String, Option<String>)]) -> Problems {
    let known: Vec<String> = settings()
        .into_iter()
        .map(|s| s.var)
        .chain(OTHER_VARS.iter().map(|s| s.to_string()))
        .collect();
    let mut p = Problems::default();
    let mut sorted: Vec<&(String, Option<String>)> = vars.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, value) in sorted {
        if !known.contains(name) {
            let best = known.iter().min_by_key(|k| edit_distance(name, k)).cloned();
            let hint = match best {
                Some(b) if edit_distance(name, &b) <= name.len().max(4) / 2 => {
                    format!("; did you mean {b}?")
                }
                _ => String::new(),
            };
            p.add(
                name.clone(),
                format!(
                    "unknown variable{hint} (the rule: IOT_SIM_<SECTION>_<KEY> for a [run] or \
                     [sink.*] key; `iot-sim config show` lists the settings)"
                ),
            );
        } else if value.is_none() {
            p.add(name.clone(), "the value is not valid UTF-8");
        }
    }
    p
}

/// Levenshtein distance (bytes; the names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A variable's value read as the TOML value `key = VALUE` would be; anything that is no
/// single TOML value is a plain string.
pub fn parse_value(s: &str) -> Value {
    if !s.contains(['\n', '\r'])
        && let Ok(mut t) = format!("v = {s}").parse::<toml::Table>()
        && t.len() == 1
        && let Some(v) = t.remove("v")
    {
        return v;
    }
    Value::String(s.to_string())
}

/// A setting the environment gave, as laid over the document.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    pub setting: Setting,
    pub value: Value,
}

/// Lays the known settings found in `vars` over `doc` (empty values are unset). Returns what
/// was applied, for error messages and `config show`.
pub fn overlay(doc: &mut toml::Table, vars: &[(String, String)]) -> Vec<Applied> {
    let mut applied = vec![];
    for s in settings() {
        let Some((_, raw)) = vars.iter().find(|(k, v)| *k == s.var && !v.is_empty()) else {
            continue;
        };
        let value = parse_value(raw);
        let section = match s.sink {
            None => table_in(doc, "run"),
            Some(name) => table_in(doc, "sink").and_then(|t| table_in(t, name)),
        };
        // A section that is not a table is the file's error, reported by the loader.
        if let Some(t) = section {
            t.insert(s.key.to_string(), value.clone());
            applied.push(Applied { setting: s, value });
        }
    }
    applied
}

fn table_in<'a>(t: &'a mut toml::Table, key: &str) -> Option<&'a mut toml::Table> {
    t.entry(key).or_insert_with(|| Value::Table(toml::Table::new())).as_table_mut()
}

/// Names the variable in front of every problem about a value the environment gave:
/// `IOT_SIM_RUN_SEED (run.seed): expected a non-negative integer, got "abc"`.
pub fn name_vars(problems: &mut Problems, applied: &[Applied]) {
    for p in &mut problems.0 {
        for a in applied {
            let path = a.setting.path();
            let under = p
                .path
                .strip_prefix(&path)
                .is_some_and(|r| r.is_empty() || r.starts_with(['.', '[']));
            if under {
                p.path = format!("{} ({})", a.setting.var, p.path);
                break;
            }
        }
    }
}

/// Whether a key holds a secret (its value is never printed).
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "token", "secret"].iter().any(|s| k.contains(s))
}

/// A URL with its password (or a lone user-info part) masked: `mqtt://u:***@host:1883`.
pub fn mask_url(s: &str) -> String {
    let Some(scheme_end) = s.find("://") else { return s.to_string() };
    let rest = &s[scheme_end + 3..];
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..auth_end].rfind('@') else { return s.to_string() };
    let user = match rest[..at].split_once(':') {
        Some((u, _)) => format!("{u}:***"),
        None => "***".to_string(),
    };
    format!("{}{user}{}", &s[..scheme_end + 3], &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn names_follow_the_section_and_key() {
        assert_eq!(var_name("run", "seed"), "IOT_SIM_RUN_SEED");
        assert_eq!(var_name("sink.mqtt", "client_id_prefix"), "IOT_SIM_SINK_MQTT_CLIENT_ID_PREFIX");
        let all: Vec<String> = settings().into_iter().map(|s| s.var).collect();
        assert!(all.contains(&"IOT_SIM_SINK_AMQP_CONFIRM_WINDOW".to_string()));
        assert!(all.contains(&"IOT_SIM_RUN_PROGRESS_INTERVAL".to_string()));
        let mut dedup = all.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), all.len(), "two settings map to one variable");
        for other in OTHER_VARS {
            assert!(!all.contains(&other.to_string()), "{other} collides with a setting");
        }
    }

    #[test]
    fn values_read_as_toml_values_else_as_strings() {
        assert_eq!(parse_value("42"), Value::Integer(42));
        assert_eq!(parse_value("true"), Value::Boolean(true));
        assert_eq!(parse_value("1.5"), Value::Float(1.5));
        assert_eq!(parse_value("\"042\""), Value::String("042".into()));
        assert_eq!(parse_value("mqtt://h:1883"), Value::String("mqtt://h:1883".into()));
        assert_eq!(parse_value("90s"), Value::String("90s".into()));
        assert_eq!(parse_value("1\nx = 2"), Value::String("1\nx = 2".into()));
    }

    #[test]
    fn overlay_replaces_file_values_and_creates_sink_tables() {
        let mut doc: toml::Table = "[run]\nseed = 1\ncores = 2\n".parse().unwrap();
        let applied = overlay(
            &mut doc,
            &vars(&[
                ("IOT_SIM_RUN_SEED", "7"),
                ("IOT_SIM_SINK_MQTT_URL", "mqtt://b:1"),
                ("IOT_SIM_RUN_CORES", ""),
            ]),
        );
        assert_eq!(applied.len(), 2);
        assert_eq!(doc["run"]["seed"], Value::Integer(7));
        assert_eq!(doc["run"]["cores"], Value::Integer(2));
        assert_eq!(doc["sink"]["mqtt"]["url"], Value::String("mqtt://b:1".into()));
    }

    #[test]
    fn unknown_names_get_the_closest_valid_one() {
        let p = check(&[
            ("IOT_SIM_RUN_SED".into(), Some("1".into())),
            ("IOT_SIM_LOG_FORMAT".into(), Some("json".into())),
            ("IOT_SIM_MEMORY_LIMIT".into(), None),
        ]);
        assert_eq!(p.0.len(), 2, "{p}");
        assert_eq!(p.0[1].path, "IOT_SIM_RUN_SED");
        assert!(p.0[1].message.contains("did you mean IOT_SIM_RUN_SEED?"), "{p}");
        assert!(p.0[0].message.contains("UTF-8"), "{p}");
    }

    #[test]
    fn problems_about_env_values_name_the_variable() {
        let applied = vec![Applied {
            setting: Setting { var: "IOT_SIM_RUN_SEED".into(), sink: None, key: "seed" },
            value: Value::String("x".into()),
        }];
        let mut p = Problems::default();
        p.add("run.seed", "bad");
        p.add("run.seeds", "other");
        name_vars(&mut p, &applied);
        assert_eq!(p.0[0].path, "IOT_SIM_RUN_SEED (run.seed)");
        assert_eq!(p.0[1].path, "run.seeds");
    }

    #[test]
    fn secrets_are_masked() {
        assert_eq!(mask_url("amqp://guest:guest@h:5672/%2f"), "amqp://guest:***@h:5672/%2f");
        assert_eq!(mask_url("mqtt://tok@h"), "mqtt://***@h");
        assert_eq!(mask_url("mqtt://h:1883/a@b"), "mqtt://h:1883/a@b");
        assert!(is_secret_key("IOT_SIM_MQTT_PASSWORD") && is_secret_key("token"));
        assert!(!is_secret_key("url"));
    }
}
