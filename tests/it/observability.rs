//! Structured logs (JSON lines with the run id, lifecycle events aggregated per command) and
//! the Grafana dashboard against a live `/metrics`.

use crate::common;

use common::{Running, bin, http_get};
use std::collections::BTreeSet;

const FLEET: &str = "[run]\nseed = 3\nclock = \"realtime\"\nprogress_interval = \"300ms\"\n\n[[fleet]]\nprofile = \"p\"\ncount = 20\n\n[profiles.p]\nprotocol = \"null\"\ninterval = \"100ms\"\n[profiles.p.fields.x]\ntype = \"gaussian\"\nmean = 0\nstddev = 1\n";

fn start(dir: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> (Running, String) {
    let cfg = dir.join("fleet.toml");
    std::fs::write(&cfg, FLEET).unwrap();
    let rd = dir.join("report");
    let mut cmd = bin();
    cmd.args(["--config", cfg.to_str().unwrap(), "--cores", "2", "--admin", "127.0.0.1:0"])
        .args(["--report-dir", rd.to_str().unwrap()])
        .args(extra)
        .envs(env.iter().copied());
    let mut run = Running::start(&mut cmd);
    let addr = run.admin_addr();
    common::wait_ready(&addr);
    (run, addr)
}

/// Spawns `n` devices over the admin API in one request.
fn spawn(addr: &str, n: usize) {
    let specs: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"device_id":"d-{i}","device_type":"sensor","protocol":"null","telemetry_interval":"1s","labels":{{"batch":"x"}},"behavior_params":{{"fields":{{"v":{{"type":"static","value":1}}}}}}}}"#
            )
        })
        .collect();
    let body = format!(r#"{{"specs":[{}]}}"#, specs.join(","));
    let (code, text) = common::http_json(addr, "POST", "/api/v1/spawn", &body, None);
    assert_eq!(code, 200, "{text}");
}

#[test]
fn json_log_lines_parse_carry_the_run_id_and_aggregate_commands() {
    for (extra, env) in [
        (vec!["--log-format", "json", "--run-id", "logs-1"], vec![]),
        (vec!["--run-id", "logs-1"], vec![("IOT_SIM_LOG_FORMAT", "json")]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (mut run, addr) = start(dir.path(), &extra, &env);
        spawn(&addr, 2000);
        let (code, text) = common::http_json(
            &addr,
            "POST",
            "/api/v1/faults",
            r#"{"selector":{"label_selector":"batch=x"},"fault_type":"disconnect","duration":"1m"}"#,
            None,
        );
        assert_eq!(code, 200, "{text}");
        // The fault's line, then a progress line.
        run.wait_line("fault injected");
        run.wait_line("\"msg_per_s\"");
        let collected = run.stderr.clone();
        assert!(run.stop().success());
        let lines: Vec<String> = collected.lock().unwrap().lines().map(String::from).collect();
        assert!(lines.len() >= 5, "{lines:?}");
        let mut spawned = vec![];
        let mut faults = vec![];
        for line in &lines {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
            assert_eq!(v["run_id"], "logs-1", "{line}");
            assert!(v["level"].is_string() && v["timestamp"].is_string(), "{line}");
            assert!(v["message"].is_string(), "{line}");
            if v["message"] == "devices spawned" {
                spawned.push(v.clone());
            }
            if v["message"].as_str().unwrap().starts_with("fault injected") {
                faults.push(v.clone());
            }
        }
        // One line for the 2,000 devices, with the counts (per device only at debug).
        assert_eq!(spawned.len(), 1, "{lines:?}");
        assert_eq!(spawned[0]["spawned"], 2000, "{}", spawned[0]);
        assert_eq!(spawned[0]["level"], "INFO");
        assert!(spawned[0]["per_shard"].as_str().unwrap().contains("0:"), "{}", spawned[0]);
        assert_eq!(faults.len(), 1, "{lines:?}");
        assert_eq!(faults[0]["devices"], 2000, "{}", faults[0]);
        assert!(lines.iter().any(|l| l.contains("\"msg_per_s\"")), "no progress line: {lines:?}");
        assert!(lines.iter().any(|l| l.contains("\"admin\"")), "{lines:?}");
    }
}

#[test]
fn text_log_lines_carry_the_run_id_too() {
    let dir = tempfile::tempdir().unwrap();
    let (run, addr) = start(dir.path(), &["--quiet", "--run-id", "text-1"], &[]);
    spawn(&addr, 10);
    let lines = run.stderr.clone();
    assert!(run.stop().success());
    let lines: Vec<String> = lines.lock().unwrap().lines().map(String::from).collect();
    let line = lines.iter().find(|l| l.contains("devices spawned")).expect("a spawn line");
    assert!(line.contains(" INFO ") && line.contains("spawned=10"), "{line}");
    assert!(line.ends_with("run_id=text-1"), "{line}");
}

/// Metric names used in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = vec![];
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("iot_sim_") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        out.push(expr[start..end].to_string());
        i = end;
    }
    out
}

#[test]
fn every_metric_a_dashboard_panel_queries_is_served() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/deploy/grafana/iot-sim.json")).unwrap(),
    )
    .unwrap();
    let provisioning =
        std::fs::read_to_string(format!("{root}/deploy/grafana/provisioning.yaml")).unwrap();
    assert!(provisioning.contains("type: file"), "{provisioning}");

    let dir = tempfile::tempdir().unwrap();
    let (run, addr) = start(dir.path(), &["--quiet"], &[]);
    let (code, metrics) = http_get(&addr, "/metrics");
    assert_eq!(code, 200);
    assert!(run.stop().success());
    // Families by their `# TYPE` line (present even before a family has samples).
    let mut families = BTreeSet::new();
    let mut histograms = BTreeSet::new();
    for l in metrics.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            families.insert(name.to_string());
            if kind == "histogram" {
                histograms.insert(name.to_string());
            }
        }
    }
    let mut used = BTreeSet::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            for name in metric_names(t["expr"].as_str().unwrap()) {
                used.insert((panel["title"].as_str().unwrap().to_string(), name));
            }
        }
    }
    assert!(used.len() >= 15, "{used:?}");
    for (title, name) in &used {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| histograms.contains(*b)));
        let known = families.contains(name) || base.is_some();
        assert!(known, "panel {title:?} queries {name}, which /metrics does not serve");
    }
    // And every family of the seed's twelve is on some panel.
    for name in [
        "iot_sim_devices_active",
        "iot_sim_messages_sent_total",
        "iot_sim_publish_latency_seconds",
        "iot_sim_device_errors_total",
        "iot_sim_faults_active",
        "iot_sim_backpressure_drops_total",
        "iot_sim_tick_lateness_seconds",
        "iot_sim_sink_connections",
    ] {
        assert!(
            used.iter().any(|(_, n)| n == name || n.strip_suffix("_bucket") == Some(name)),
            "no panel shows {name}"
        );
    }
}
