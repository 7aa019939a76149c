//! `iot-sim config show`: the effective `[run]` and `[sink.*]` settings after the layers
//! (file, then `IOT_SIM_*` environment, then flags), each with where its value came from.
//! Secrets (passwords, tokens, credentials in URLs) are masked.

use super::{RunArgs, exit};
use crate::config::{self, RunSettings, env, preset};
use clap::{Args, Subcommand};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use toml::Value;

/// `iot-sim config ...`.
#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Print the effective configuration ([run], [sink.*]) and the source of each value
    /// (default, file, env VAR, flag --x); secrets are masked. Exit 2 if it is invalid.
    Show(ShowArgs),
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// The flags of `run`/`serve`: --config FILE and the overrides.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Where a value came from.
#[derive(Clone, Debug, PartialEq)]
enum Source {
    Default,
    File,
    Env(String),
    Flag(&'static str),
    /// Filled by `[sink.mqtt] preset` (`config::preset`).
    Preset(&'static str),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File => f.write_str("file"),
            Source::Env(v) => write!(f, "env {v}"),
            Source::Flag(v) => write!(f, "flag {v}"),
            Source::Preset(v) => write!(f, "preset {v}"),
        }
    }
}

pub fn main(cmd: &ConfigCmd) -> anyhow::Result<i32> {
    let ConfigCmd::Show(a) = cmd;
    let args = &a.run;
    let o = args.overrides();
    // The same loading as `run`/`serve`, so that an invalid layer fails here exactly as there.
    let (loaded, doc, name) = match &args.config {
        Some(path) => {
            let doc = std::fs::read_to_string(path)
                .ok()
                .and_then(|t| t.parse::<toml::Table>().ok())
                .unwrap_or_default();
            (config::load_with(path, &o, true), doc, path.display().to_string())
        }
        None => (config::load_empty(&o), toml::Table::new(), config::NO_FILE_NAME.to_string()),
    };
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(exit::BAD_CONFIG);
        }
    };
    let vars = env::process_vars();
    print!("{}", render(&name, &doc, &vars, &flag_sources(args), &config.run, &config.sinks));
    Ok(exit::OK)
}

/// The `[run]` keys set by flags, with the flag's name.
fn flag_sources(a: &RunArgs) -> BTreeMap<&'static str, &'static str> {
    let mut m = BTreeMap::new();
    let set = [
        ("seed", "--seed", a.seed.is_some()),
        ("cores", "--cores", a.cores.is_some()),
        ("duration", "--duration", a.duration.is_some()),
        ("clock", "--clock", a.clock.is_some()),
        ("speed", "--speed", a.speed.is_some()),
        ("report_dir", "--report-dir", a.report_dir.is_some()),
    ];
    for (key, flag, on) in set {
        if on {
            m.insert(key, flag);
        }
    }
    m
}

/// The effective `[run]` values (after every layer), as TOML text or a note in parentheses.
fn run_value(run: &RunSettings, key: &str) -> String {
    let q = |s: &str| format!("{s:?}");
    match key {
        "seed" => run.seed.map_or("(random, printed at start)".into(), |s| s.to_string()),
        "cores" => run.cores.map_or("(every core)".into(), |c| c.to_string()),
        "clock" => q(match run.clock {
            config::ClockMode::Realtime => "realtime",
            config::ClockMode::Virtual => "virtual",
        }),
        "speed" => format!("{:?}", run.speed),
        "start_time" => {
            run.start_ms.map_or("(now)".into(), |ms| q(&crate::sim::time::rfc3339_ms(ms)))
        }
        "duration" => run
            .duration_ms
            .map_or("(until stopped)".into(), |ms| q(&crate::sim::time::format_duration_ms(ms))),
        "report_dir" => q(&run.report_dir.display().to_string()),
        "progress_interval" => q(&crate::sim::time::format_duration_ms(run.progress_interval_ms)),
        "timer_slack" => q(&crate::sim::time::format_duration_ms(run.timer_slack_ms)),
        "pin" => run.pin.to_string(),
        "scenario" => {
            run.scenario.as_ref().map_or("(none)".into(), |s| q(&s.display().to_string()))
        }
        "journal_max_bytes" => run.journal_max_bytes.to_string(),
        _ => "?".into(),
    }
}

/// The effective value of `[sink.NAME] KEY` after every layer (defaults included), as TOML
/// text; `None` for a key this table does not know (a unit test keeps it complete).
fn sink_value(s: &config::SinkSettings, sink: &str, key: &str) -> Option<String> {
    let q = |v: &str| format!("{:?}", env::mask_url(v));
    let d = |ms: u64| format!("{:?}", crate::sim::time::format_duration_ms(ms));
    let path = |p: &Option<std::path::PathBuf>| {
        p.as_ref().map_or("(none)".to_string(), |p| format!("{:?}", p.display().to_string()))
    };
    Some(match (sink, key) {
        ("file", "path") => format!("{:?}", s.file.as_ref()?.path.display().to_string()),
        ("mqtt", k) => {
            let m = s.mqtt.as_ref()?;
            let tls = m.tls.clone().unwrap_or_default();
            match k {
                "url" => q(&m.url),
                "version" => m.version.to_string(),
                "qos" => m.qos.to_string(),
                "retain" => m.retain.to_string(),
                "pool_size" => m.pool_size.to_string(),
                "keep_alive" => d(m.keep_alive_ms),
                "client_id_prefix" => q(&m.client_id_prefix),
                "inflight" => m.inflight.to_string(),
                "queue_size" => m.queue_size.to_string(),
                "backoff_initial" => d(m.backoff.initial_ms),
                "backoff_max" => d(m.backoff.max_ms),
                "ca_file" => path(&tls.ca_file),
                "client_cert" => path(&tls.client_cert),
                "client_key" => path(&tls.client_key),
                "preset" => m.preset.as_deref().map_or("(none)".into(), q),
                "hub" => m.hub.as_deref().map_or("(none)".into(), q),
                "server_name" => m.server_name.as_deref().map_or("(the URL's host)".to_string(), q),
                "alpn" => format!(
                    "{:?}",
                    m.alpn
                        .iter()
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect::<Vec<_>>()
                ),
                _ => return None,
            }
        }
        ("amqp", k) => {
            let a = s.amqp.as_ref()?;
            match k {
                "url" => q(&a.url),
                "exchange" => q(&a.exchange),
                "routing_separator" => q(&a.routing_separator),
                "confirms" => a.confirms.to_string(),
                "confirm_window" => a.confirm_window.to_string(),
                "queue_size" => a.queue_size.to_string(),
                "backoff_initial" => d(a.backoff.initial_ms),
                "backoff_max" => d(a.backoff.max_ms),
                _ => return None,
            }
        }
        ("http", k) => {
            let h = s.http.as_ref()?;
            match k {
                "endpoint" => q(&h.endpoint),
                "topic_header" => q(&h.topic_header),
                "batch_size" => h.batch_size.to_string(),
                "batch_linger" => d(h.batch_linger_ms),
                "max_retries" => h.max_retries.to_string(),
                "timeout" => d(h.timeout_ms),
                "concurrency" => h.concurrency.to_string(),
                "queue_size" => h.queue_size.to_string(),
                "backoff_initial" => d(h.backoff.initial_ms),
                "backoff_max" => d(h.backoff.max_ms),
                _ => return None,
            }
        }
        ("coap", k) => {
            let c = s.coap.as_ref()?;
            match k {
                "url" => q(&c.url),
                "confirmable" => c.confirmable.to_string(),
                "ack_timeout" => d(c.ack_timeout_ms),
                "ack_random_factor" => format!("{:?}", c.ack_random_factor),
                "max_retransmit" => c.max_retransmit.to_string(),
                "max_inflight" => c.max_inflight.to_string(),
                "queue_size" => c.queue_size.to_string(),
                _ => return None,
            }
        }
        _ => return None,
    })
}

/// A value for printing: secrets masked.
fn masked(key: &str, v: &Value) -> String {
    if env::is_secret_key(key) {
        return "\"***\"".into();
    }
    match v {
        Value::String(s) => format!("{:?}", env::mask_url(s)),
        other => other.to_string(),
    }
}

fn line(out: &mut String, key: &str, value: &str, source: &Source) {
    let _ = writeln!(out, "{:<40} # {source}", format!("{key} = {value}"));
}

/// The report text (pure, for tests).
fn render(
    name: &str,
    file: &toml::Table,
    vars: &[(String, String)],
    flags: &BTreeMap<&'static str, &'static str>,
    run: &RunSettings,
    sinks_now: &config::SinkSettings,
) -> String {
    let mut layered = file.clone();
    let applied = env::overlay(&mut layered, vars);
    // The preset's keys, as the loader fills them (its problems were reported by the load).
    let expansion = preset::expand(&mut layered, &mut crate::walk::Problems::default());
    let from_env = |path: &str| {
        applied
            .iter()
            .find(|a| a.setting.path() == path)
            .map(|a| Source::Env(a.setting.var.clone()))
    };
    let in_file = |sink: Option<&str>, key: &str| {
        let section = match sink {
            None => file.get("run"),
            Some(s) => file.get("sink").and_then(|t| t.get(s)),
        };
        section.and_then(|t| t.get(key)).is_some()
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# effective configuration of {name}\n# layers: default < file < environment \
         (IOT_SIM_<SECTION>_<KEY>) < flags; secrets masked\n\n[run]"
    );
    for key in config::RUN_KEYS {
        let path = format!("run.{key}");
        let source = if let Some(f) = flags.get(key) {
            Source::Flag(f)
        } else if let Some(e) = from_env(&path) {
            e
        } else if in_file(None, key) {
            Source::File
        } else {
            Source::Default
        };
        line(&mut out, key, &run_value(run, key), &source);
    }
    let sinks = layered.get("sink").and_then(Value::as_table);
    for (sink, keys) in config::sinks::TABLES {
        let Some(table) = sinks.and_then(|s| s.get(*sink)).and_then(Value::as_table) else {
            continue;
        };
        let _ = writeln!(out, "\n[sink.{sink}]");
        for key in *keys {
            let path = format!("sink.{sink}.{key}");
            let source = match (table.get(*key), expansion.source_of(&path)) {
                (Some(_), Some(preset)) => Source::Preset(preset),
                (Some(_), None) => from_env(&path).unwrap_or(Source::File),
                (None, _) => Source::Default,
            };
            // The compiled value (defaults filled in); the raw one if the sink did not compile.
            let value = sink_value(sinks_now, sink, key)
                .or_else(|| table.get(*key).map(|v| masked(key, v)))
                .unwrap_or_else(|| "(default)".into());
            line(&mut out, key, &value, &source);
        }
    }
    // What the preset filled beyond the [sink.*] keys above: per-device sessions, profiles,
    // and keys of features this build does not have.
    let shown = |f: &preset::Filled| {
        f.applied && f.path.len() == 3 && f.path[0] == "sink" && f.path[1] == "mqtt"
    };
    let rest: Vec<&preset::Filled> = expansion.filled.iter().filter(|f| !shown(f)).collect();
    if let (Some(name), false) = (expansion.preset, rest.is_empty()) {
        let _ = writeln!(out, "\n# filled by preset {name} (the keys the file leaves out)");
        for f in rest {
            let key = f.dotted();
            let value = masked(f.path.last().map_or("", String::as_str), &f.value);
            if f.applied {
                line(&mut out, &key, &value, &Source::Preset(name));
            } else {
                let _ = writeln!(
                    out,
                    "# {key} = {value}  (preset {name}; not applied: this build has no such key)"
                );
            }
        }
    }
    for other in ["console", "null"] {
        if sinks.is_some_and(|s| s.contains_key(other)) {
            let _ = writeln!(out, "\n[sink.{other}]                              # file");
        }
    }
    let others: Vec<&(String, String)> =
        vars.iter().filter(|(k, _)| env::OTHER_VARS.contains(&k.as_str())).collect();
    if !others.is_empty() {
        let _ = writeln!(out, "\n# other variables read from the environment");
        let mut others = others;
        others.sort();
        for (k, v) in others {
            let shown = if env::is_secret_key(k) { "***".into() } else { env::mask_url(v) };
            let _ = writeln!(out, "# {k} = {shown:?}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_value_names_its_layer_and_secrets_stay_hidden() {
        let file: toml::Table =
            "[run]\nseed = 1\nspeed = 2.0\n[sink.amqp]\nexchange = \"x\"\n".parse().unwrap();
        let vars: Vec<(String, String)> = [
            ("IOT_SIM_RUN_SEED", "5"),
            ("IOT_SIM_SINK_AMQP_URL", "amqp://u:hunter2@h:5672/%2f"),
            ("IOT_SIM_MQTT_PASSWORD", "hunter2"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut flags = BTreeMap::new();
        flags.insert("cores", "--cores");
        let run = RunSettings { seed: Some(5), cores: Some(3), speed: 2.0, ..Default::default() };
        let text = render("f.toml", &file, &vars, &flags, &run, &config::SinkSettings::default());
        assert!(!text.contains("hunter2"), "{text}");
        let find = |k: &str| text.lines().find(|l| l.starts_with(k)).unwrap_or("").to_string();
        assert!(find("seed = 5").ends_with("# env IOT_SIM_RUN_SEED"), "{text}");
        assert!(find("cores = 3").ends_with("# flag --cores"), "{text}");
        assert!(find("speed = 2.0").ends_with("# file"), "{text}");
        assert!(find("clock = \"realtime\"").ends_with("# default"), "{text}");
        assert!(find("url = \"amqp://u:***@h").ends_with("# env IOT_SIM_SINK_AMQP_URL"), "{text}");
        assert!(find("exchange = \"x\"").ends_with("# file"), "{text}");
        assert!(text.contains("# IOT_SIM_MQTT_PASSWORD = \"***\""), "{text}");
    }

    #[test]
    fn every_sink_key_has_its_effective_value() {
        let mut doc = toml::Table::new();
        let mut sink = toml::Table::new();
        for (name, _) in config::sinks::TABLES {
            let mut t = toml::Table::new();
            if *name == "file" {
                t.insert("path".into(), Value::String("out.jsonl".into()));
            }
            if *name == "http" {
                t.insert("endpoint".into(), Value::String("http://127.0.0.1:1/x".into()));
            }
            sink.insert(name.to_string(), Value::Table(t));
        }
        doc.insert("sink".into(), Value::Table(sink));
        let c = config::compile_with_env(&doc, std::path::Path::new("."), true, &[]).unwrap();
        for (name, keys) in config::sinks::TABLES {
            for key in *keys {
                assert!(sink_value(&c.sinks, name, key).is_some(), "[sink.{name}] {key}");
            }
        }
        assert_eq!(sink_value(&c.sinks, "mqtt", "keep_alive").unwrap(), "\"30s\"");
    }

    #[test]
    fn every_run_key_has_its_effective_value() {
        let run = config::RunSettings::default();
        for key in config::RUN_KEYS {
            assert_ne!(run_value(&run, key), "?", "[run] {key}");
        }
    }
}
