//! The dashboard's routes over plain HTTP (the browser tests drive the page itself): the
//! aggregates, bad queries, and telemetry streams that are bounded, freed when the client goes
//! away and ended before the request deadline. Also `report compare` refusing bad input.

use crate::common;

use common::{Running, bin, http_get};
use std::io::{Read, Write};
use std::time::Duration;

const FLEET: &str = "[run]\nseed = 3\nclock = \"realtime\"\n\n[[fleet]]\nprofile = \"p\"\ncount = 30\nlabels = { zone = \"a\" }\n\n[[fleet]]\nprofile = \"p\"\ncount = 10\nlabels = { zone = \"b\" }\n\n[profiles.p]\nprotocol = \"null\"\ninterval = \"100ms\"\n[profiles.p.fields.x]\ntype = \"gaussian\"\nmean = 0\nstddev = 1\n";

fn start(dir: &std::path::Path, env: &[(&str, &str)]) -> (Running, String) {
    start_with(dir, FLEET, env)
}

/// Runs the fleet file `fleet` (written in `dir`) with the admin server; returns it once ready.
fn start_with(dir: &std::path::Path, fleet: &str, env: &[(&str, &str)]) -> (Running, String) {
    let cfg = dir.join("fleet.toml");
    std::fs::write(&cfg, fleet).unwrap();
    let rd = dir.join("report");
    let mut cmd = bin();
    cmd.args(["--config", cfg.to_str().unwrap(), "--cores", "2", "--admin", "127.0.0.1:0"])
        .args(["--quiet", "--report-dir", rd.to_str().unwrap()])
        .envs(env.iter().copied());
    let mut run = Running::start(&mut cmd);
    let addr = run.admin_addr();
    common::wait_ready(&addr);
    (run, addr)
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

/// Opens a telemetry stream and reads its answer's head; the connection is returned open.
fn open_stream(addr: &str, query: &str) -> (u16, std::net::TcpStream, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET /api/v1/telemetry/stream?{query} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut buf = vec![];
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, s, head)
}

#[test]
fn the_dashboard_routes_aggregate_the_fleet_and_refuse_bad_queries() {
    let dir = tempfile::tempdir().unwrap();
    let (run, addr) = start(dir.path(), &[]);
    let (code, page) = http_get(&addr, "/");
    assert_eq!(code, 200);
    assert!(
        page.contains("<title>iot-sim dashboard</title>") && page.contains("connect-src 'self'")
    );
    assert!(!page.contains("src=\"http"), "the page loads nothing from elsewhere");

    let overview = json(&http_get(&addr, "/api/v1/overview").1);
    assert_eq!(overview["devices"], 40, "{overview}");
    assert_eq!(overview["by_type"][0]["device_type"], "p", "{overview}");
    assert_eq!(overview["by_state"]["running"], 40, "{overview}");

    let labels = json(&http_get(&addr, "/api/v1/overview/labels?key=zone").1);
    assert_eq!(
        labels["values"],
        serde_json::json!([{"value": "a", "devices": 30}, {"value": "b", "devices": 10}])
    );
    let labels = json(&http_get(&addr, "/api/v1/overview/labels?key=nope&selector=zone%3Db").1);
    assert_eq!(labels["values"], serde_json::json!([{"value": null, "devices": 10}]));
    for (path, want) in [
        ("/api/v1/overview/labels?key=", "key"),
        ("/api/v1/overview/labels?key=zone&selector=zone%20in%20(", "selector"),
        ("/api/v1/overview/labels?key=zone&bogus=1", "bogus"),
        ("/api/v1/telemetry/stream?selector=zone%3Da&device_id=p-1", "not both"),
        ("/api/v1/telemetry/stream?selector=zone%20in%20(", "selector"),
    ] {
        let (code, body) = http_get(&addr, path);
        assert_eq!(code, 400, "{path}: {body}");
        assert!(json(&body)["error"].as_str().unwrap().contains(want), "{path}: {body}");
    }

    // The history fills one point a second, messages flowing.
    let mut points = vec![];
    for _ in 0..100 {
        points = json(&http_get(&addr, "/api/v1/history").1)["points"].as_array().unwrap().clone();
        if points.len() >= 2 && points.iter().any(|p| p["msgs_per_s"].as_f64().unwrap() > 0.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(points.len() >= 2, "{points:?}");
    let last = points.last().unwrap();
    assert!(last["by_type"]["p"]["msgs_per_s"].as_f64().unwrap() > 0.0, "{last}");
    drop(run);
}

#[test]
fn telemetry_streams_are_freed_when_the_client_goes_and_end_before_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (run, addr) = start(dir.path(), &[("IOT_SIM_ADMIN_REQUEST_TIMEOUT", "3s")]);
    // A stream delivers points and ends by itself, cleanly, before the 3 s deadline.
    let (code, mut s, head) = open_stream(&addr, "selector=zone%3Db");
    assert_eq!(code, 200, "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
    let mut body = vec![];
    s.read_to_end(&mut body).unwrap();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("retry: 300"), "{body}");
    assert!(body.contains("event: points"), "{body}");
    assert!(body.contains("\"device_id\":\"p-"), "{body}");
    assert!(!body.contains("deadline"), "ended before the deadline cut it: {body}");

    // More streams than the runtime serves at once (256), one after the other, each dropped
    // by its client at once: every one is served, so each gave its slot back.
    for i in 0..300 {
        let mut tries = 0;
        loop {
            let (code, s, head) = open_stream(&addr, "device_id=p-1");
            drop(s);
            if code == 200 {
                break;
            }
            assert_eq!(code, 503, "stream {i}: {head}");
            tries += 1;
            assert!(tries < 100, "stream {i}: slots not given back: {head}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // And the runtime still answers.
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    drop(run);
}

#[test]
fn report_compare_refuses_missing_and_malformed_reports_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"runs\": [").unwrap();
    let missing = dir.path().join("missing.json");
    for (old, new, want) in
        [(&missing, &bad, "missing.json: cannot read"), (&bad, &bad, "bad.json: not a report.json")]
    {
        let out = bin().args(["report", "compare"]).arg(old).arg(new).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", common::stderr(&out));
        assert!(common::stderr(&out).contains(want), "{}", common::stderr(&out));
    }
}

#[test]
fn report_compare_sets_two_runs_side_by_side_and_writes_compare_html() {
    let dir = tempfile::tempdir().unwrap();
    let toml = FLEET.replace("clock = \"realtime\"", "clock = \"virtual\"\nduration = \"10m\"");
    let mut reports = vec![];
    for (name, extra) in [("old", vec![]), ("new", vec!["--seed", "4"])] {
        let run_dir = dir.path().join(name);
        std::fs::create_dir_all(&run_dir).unwrap();
        let r = common::run_ok(&run_dir, &toml, &extra);
        // Every run writes report.html next to report.json, with the time series in both.
        let html = std::fs::read_to_string(run_dir.join("report/report.html")).unwrap();
        assert!(html.contains(&format!("\"run_id\":\"{}\"", r["run_id"].as_str().unwrap())));
        assert!(
            r["timeline"]["t_s"].as_array().is_some_and(|t| !t.is_empty()),
            "{}",
            r["timeline"]
        );
        assert!(r["runs"][0]["latency_distribution"].as_array().is_some_and(|d| d.len() > 2));
        reports.push(run_dir.join("report/report.json"));
    }
    let out_html = dir.path().join("cmp.html");
    let out = bin()
        .args(["report", "compare"])
        .args(&reports)
        .arg("--out")
        .arg(&out_html)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for want in ["null     p                        msg/s", "p99 µs", "1 row(s) compared"] {
        assert!(text.contains(want), "{want:?} in {text}");
    }
    assert!(text.contains("not compared: config hashes differ"), "the seed differs: {text}");
    let html = std::fs::read_to_string(&out_html).unwrap();
    assert!(html.contains("\"old_distribution\":[[") && html.contains("default-src 'none'"));
}

#[test]
fn thresholds_are_listed_with_so_far_values_while_the_run_goes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("s.toml"),
        "name = \"two_phases\"\nduration = \"10m\"\n[[step]]\nat = \"0s\"\nphase = \"warm\"\n[[step]]\nat = \"1s\"\nphase = \"steady\"\n",
    )
    .unwrap();
    let fleet = FLEET.replace("[run]\n", "[run]\nscenario = \"s.toml\"\n")
        + "\n[[threshold]]\nmetric = \"error_rate\"\nmax = \"1%\"\n\n[[threshold]]\nmetric = \"latency_max\"\nmax = \"1h\"\nabort = true\n\n[[threshold]]\nmetric = \"messages_per_second\"\nmin = 1000000\n\n[[threshold]]\nmetric = \"messages_per_second\"\nmin = 1\nphase = \"steady\"\nsink = \"null\"\n";
    let (run, addr) = start_with(dir.path(), &fleet, &[]);
    // Poll until the shards have published completed messages (about once a second).
    let mut t = serde_json::Value::Null;
    for _ in 0..100 {
        t = json(&http_get(&addr, "/api/v1/thresholds").1);
        if t["thresholds"][2]["verdict"]["value"].as_f64().unwrap_or(0.0) > 0.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(t["ended"], false, "{t}");
    let rows = t["thresholds"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "{t}");
    // Whole-run thresholds: judged so far on the published figures.
    assert_eq!(rows[0]["status"], "so_far", "{t}");
    assert_eq!((rows[0]["limit"].as_str(), rows[0]["bound"].as_str()), (Some("1%"), Some("max")));
    assert_eq!(rows[0]["verdict"]["passed"], true, "{t}");
    assert_eq!(
        (rows[1]["abort"].as_bool(), rows[1]["verdict"]["passed"].as_bool()),
        (Some(true), Some(true)),
        "{t}"
    );
    assert!(rows[1]["verdict"]["value"].as_f64().unwrap() > 0.0, "a latency was measured: {t}");
    // 40 devices every 100 ms: about 400 msg/s so far, far below a million.
    let rate = rows[2]["verdict"]["value"].as_f64().unwrap();
    assert!(rate > 10.0 && rate < 10_000.0, "{t}");
    assert_eq!(rows[2]["verdict"]["passed"], false, "{t}");
    // A phase threshold is judged on its phase at the end.
    assert_eq!(
        (rows[3]["status"].as_str(), rows[3]["phase"].as_str(), rows[3]["sink"].as_str()),
        (Some("at_end"), Some("steady"), Some("null")),
        "{t}"
    );
    assert!(rows[3]["reason"].as_str().unwrap().contains("phase"), "{t}");
    let o = json(&http_get(&addr, "/api/v1/overview").1);
    assert_eq!(o["scenario"]["name"], "two_phases", "{o}");
    run.stop();
    // The run's verdicts agree with the so-far view on the failing one.
    let r = common::report(dir.path());
    assert_eq!(r["thresholds"][2]["passed"], false);
    assert_eq!(r["thresholds"][0]["passed"], true);
}

#[test]
fn a_fast_virtual_run_has_its_time_series_sampled_by_sim_time() {
    let dir = tempfile::tempdir().unwrap();
    // One sim hour, done in a few wall seconds: by wall second it would get a handful of
    // points; by sim time it gets one per 8 sim seconds (3600 s / 500, in whole seconds).
    let toml = FLEET.replace("clock = \"realtime\"", "clock = \"virtual\"\nduration = \"1h\"");
    let toml = toml.replace("interval = \"100ms\"", "interval = \"10s\"");
    let r = common::run_ok(dir.path(), &toml, &["--cores", "2"]);
    let t = &r["timeline"];
    assert_eq!(t["axis"], "sim", "{t}");
    let ts: Vec<f64> = t["t_s"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    // By wall second this sub-second run would have a point or two. By sim time it gets one
    // per 8 sim seconds, fewer when a shard skips a step's snapshot (its progress channel
    // half full: it never blocks) or finishes ahead of the other (known: the aligner then
    // folds the rest into the last point).
    assert!(ts.len() >= 100 && ts.len() <= 600, "{} points: {ts:?}", ts.len());
    assert!(ts.windows(2).all(|w| w[1] >= w[0]), "{ts:?}");
    let mut steps: Vec<f64> = ts.windows(2).map(|w| w[1] - w[0]).collect();
    steps.sort_by(f64::total_cmp);
    let median = steps[steps.len() / 2];
    assert!((7.0..=10.0).contains(&median), "median step {median}: {ts:?}");
    assert_eq!(ts.last().copied(), Some(3600.0));
    // Every message is in some point: 40 devices, one message each 10 sim seconds.
    let sum: u64 = t["messages"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(sum, 40 * 360, "{t}");
}
