//! The admin HTTP server of a running fleet: routes, JSON errors, bad and abusive requests.

use crate::common;

use common::{Running, bin, http_get, http_raw};
use std::io::Write;
use std::time::Duration;

const FLEET: &str = "[run]\nseed = 1\nclock = \"realtime\"\n\n[[fleet]]\nprofile = \"p\"\ncount = 40\n\n[profiles.p]\nprotocol = \"null\"\ninterval = \"50ms\"\n[profiles.p.fields.x]\ntype = \"gaussian\"\nmean = 0\nstddev = 1\n";

/// A realtime fleet of 40 devices on 2 shards with the admin server on a free port.
fn start(dir: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> (Running, String) {
    let cfg = dir.join("fleet.toml");
    std::fs::write(&cfg, FLEET).unwrap();
    let rd = dir.join("report");
    let mut cmd = bin();
    cmd.args(["--config", cfg.to_str().unwrap(), "--cores", "2", "--admin", "127.0.0.1:0"])
        .args(["--quiet", "--report-dir", rd.to_str().unwrap()])
        .args(extra)
        .envs(env.iter().copied());
    let mut run = Running::start(&mut cmd);
    let addr = run.admin_addr();
    (run, addr)
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

#[test]
fn routes_describe_the_running_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let (run, addr) = start(dir.path(), &["--run-id", "admin-test-1"], &[]);
    // Poll until every shard has published figures (they do so every wheel turn).
    let mut status = serde_json::Value::Null;
    for _ in 0..200 {
        let (code, body) = http_get(&addr, "/api/v1/status");
        assert_eq!(code, 200, "{body}");
        status = json(&body);
        if status["messages_total"].as_u64().unwrap_or(0) > 0 && status["devices_total"] == 40 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status["devices_total"], 40, "{status}");
    assert!(status["messages_total"].as_u64().unwrap() > 0, "{status}");
    assert_eq!(status["run"]["run_id"], "admin-test-1", "{status}");
    assert_eq!(status["run"]["seed"], 1, "{status}");
    // /status is the same document.
    let (code, body) = http_get(&addr, "/status");
    assert_eq!((code, json(&body)["devices_total"].as_u64()), (200, Some(40)));
    assert_eq!(http_get(&addr, "/healthz"), (200, "ok\n".to_string()));

    // Classic text format by default.
    let (code, head, metrics) = http_raw(&addr, b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n");
    assert_eq!(code, 200);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert!(metrics.contains("# TYPE iot_sim_messages_sent_total counter"), "{metrics}");
    assert!(!metrics.contains("# EOF"), "{metrics}");
    assert!(
        metrics.contains(
            "iot_sim_run_info{run_id=\"admin-test-1\",seed=\"1\",version=\"0.1.0\",clock=\"realtime\"} 1"
        ),
        "{metrics}"
    );
    let sample = |prefix: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    assert_eq!(sample("iot_sim_shard_devices{"), 40.0, "{metrics}");
    // Per device type, from what the shards publish (about once a second).
    let ok_line = "iot_sim_messages_sent_total{device_type=\"p\",protocol=\"null\",status=\"ok\"} ";
    let mut metrics = metrics;
    for _ in 0..100 {
        if metrics.lines().any(|l| l.starts_with(ok_line) && !l.ends_with(" 0")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        metrics = http_get(&addr, "/metrics").1;
    }
    let sample = |prefix: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    assert_eq!(
        sample("iot_sim_devices_active{device_type=\"p\",protocol=\"null\"}"),
        40.0,
        "{metrics}"
    );
    assert!(
        sample("iot_sim_messages_sent_total{device_type=\"p\",protocol=\"null\",status=\"ok\"}")
            > 0.0,
        "{metrics}"
    );
    assert!(
        sample("iot_sim_publish_latency_seconds_count{device_type=\"p\",protocol=\"null\"}") > 0.0,
        "{metrics}"
    );
    assert!(sample("iot_sim_tick_lateness_seconds_count") > 0.0, "{metrics}");
    assert!(sample("iot_sim_memory_bytes") > 0.0, "{metrics}");
    assert!(sample("iot_sim_threads") >= 3.0, "{metrics}");
    // Ready: the shards run and the null sink has no connection to wait for.
    let (code, body) = http_get(&addr, "/readyz");
    assert_eq!(code, 200, "{body}");
    // OpenMetrics when asked for (as Prometheus does).
    let (code, head, om) = http_raw(
        &addr,
        b"GET /metrics HTTP/1.1\r\nhost: x\r\naccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n",
    );
    assert_eq!(code, 200);
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(om.contains("# TYPE iot_sim_messages_sent counter"), "{om}");
    assert!(om.ends_with("# EOF\n"), "{om}");

    // Errors are JSON with the right status.
    let (code, body) = http_get(&addr, "/nope");
    assert_eq!(code, 404);
    assert!(json(&body)["error"].as_str().unwrap().contains("/nope"), "{body}");
    let (code, body) = common::http_json(&addr, "DELETE", "/metrics", "", None);
    assert_eq!(code, 405);
    assert!(json(&body)["error"].as_str().unwrap().contains("DELETE"), "{body}");

    // SIGTERM ends the run normally, with a report that carries the run id.
    assert!(run.stop().success());
    let report = common::report(dir.path());
    assert_eq!(report["run_id"], "admin-test-1");
}

/// Issue 15 #12: every malformed or abusive request gets a status, within a whole-request
/// deadline, and the server keeps serving.
#[test]
fn bad_requests_get_a_status_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (run, addr) = start(dir.path(), &[], &[("IOT_SIM_ADMIN_REQUEST_TIMEOUT", "1s")]);

    // A request line without an HTTP version.
    let (code, _, _) = http_raw(&addr, b"GET /healthz\r\n\r\n");
    assert_eq!(code, 400);
    // A 1 MB URL.
    let mut long = b"GET /".to_vec();
    long.extend(std::iter::repeat_n(b'a', 1 << 20));
    long.extend_from_slice(b" HTTP/1.1\r\nhost: x\r\n\r\n");
    assert_eq!(http_raw(&addr, &long).0, 414);
    // A 10 MB body (sent in full: the server must answer, not reset the connection).
    let mut big =
        b"POST /api/v1/status HTTP/1.1\r\nhost: x\r\ncontent-length: 10485760\r\n\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'x', 10 << 20));
    let (code, _, body) = http_raw(&addr, &big);
    assert_eq!(code, 413, "{body}");
    assert!(json(&body)["error"].as_str().unwrap().contains("larger than"), "{body}");

    // A head that stalls half-way: 408 at the deadline, never 200.
    let (code, _, body) = http_raw(&addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\n");
    assert_eq!(code, 408, "{body}");
    // A head trickled one byte every 300 ms: each read is quick, the request as a whole is not.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    for b in b"GET /hea" {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut buf = vec![];
    let _ = std::io::Read::read_to_end(&mut s, &mut buf);
    assert_eq!(common::parse_answer(&buf).0, 408, "{}", String::from_utf8_lossy(&buf));
    // A body that stalls half-way: 408 too.
    let (code, _, body) = http_raw(
        &addr,
        b"POST /api/v1/spawn HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"count\":",
    );
    assert_eq!(code, 408, "{body}");

    // Still serving.
    assert_eq!(http_get(&addr, "/healthz"), (200, "ok\n".to_string()));
    assert!(run.stop().success());
}

/// utime + stime of the process's thread named `name`, in clock ticks.
fn thread_cpu_ticks(pid: u32, name: &str) -> u64 {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
            // Fields after the ")" that ends the name: state is field 3; utime 14, stime 15.
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            let f: Vec<&str> = rest.split(' ').collect();
            return f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        }
    }
    panic!("no thread named {name}");
}

/// Issue 15 #11: with the descriptors exhausted by idle connections, the admin thread backs off
/// instead of spinning on `accept`, and serves again once they are gone.
#[test]
fn the_accept_loop_backs_off_when_descriptors_run_out() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fleet.toml");
    std::fs::write(&cfg, FLEET).unwrap();
    let rd = dir.path().join("report");
    let bin = env!("CARGO_BIN_EXE_iot-sim");
    let script = format!(
        "ulimit -n 64 && exec {bin} --config {} --cores 1 --admin 127.0.0.1:0 --quiet --report-dir {}",
        cfg.display(),
        rd.display()
    );
    let mut cmd = std::process::Command::new("bash");
    cmd.args(["-c", &script]).env("IOT_SIM_ADMIN_REQUEST_TIMEOUT", "60s");
    let mut run = Running::start(&mut cmd);
    let addr = run.admin_addr();
    // The shards open their own descriptors after the admin server listens: let them start.
    common::wait_ready(&addr);
    let pid = run.child.id();
    // More idle connections than descriptors: the kernel completes them (backlog), the
    // server cannot accept them all.
    let idle: Vec<_> = (0..100).filter_map(|_| std::net::TcpStream::connect(&addr).ok()).collect();
    assert!(idle.len() >= 64, "only {} connections", idle.len());
    // Out of descriptors: the accept loop says so (and backs off).
    run.wait_line("accept failed");
    let before = thread_cpu_ticks(pid, "admin");
    std::thread::sleep(Duration::from_secs(2));
    let used = thread_cpu_ticks(pid, "admin") - before;
    // A spinning accept loop burns ~200 ticks (100 Hz) in 2 s; backing off costs a few.
    assert!(used < 40, "the admin thread used {used} ticks in 2 s: it spins");
    assert!(
        run.lines().iter().any(|l| l.contains("accept failed")),
        "no accept failure logged: {:?}",
        run.lines()
    );
    drop(idle);
    // Served again once descriptors are free (the back-off is at most 1 s).
    let mut ok = false;
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n");
            let mut buf = vec![];
            let _ = std::io::Read::read_to_end(&mut s, &mut buf);
            if common::parse_answer(&buf).0 == 200 {
                ok = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ok, "the admin server did not recover: {:?}", run.lines());
    assert!(run.stop().success());
}

/// The device listing and the mutating routes, with a bearer token and bad input.
#[test]
fn api_routes_spawn_list_fault_pause_and_stop_devices() {
    let dir = tempfile::tempdir().unwrap();
    let (run, addr) = start(dir.path(), &[], &[("IOT_SIM_ADMIN_TOKEN", "s3cret")]);
    let t = Some("s3cret");
    let post = |path: &str, body: &str, token| common::http_json(&addr, "POST", path, body, token);
    let spec = |id: &str| {
        format!(
            r#"{{"device_id":"{id}","device_type":"meter","protocol":"null","telemetry_interval":"100ms","labels":{{"zone":"b"}},"behavior_params":{{"fields":{{"kw":{{"type":"gaussian","mean":1,"stddev":0.1}}}}}}}}"#
        )
    };
    let spawn = format!(r#"{{"specs":[{},{},{}]}}"#, spec("m-1"), spec("m-2"), spec("m-3"));

    // Mutating routes need the token; reads do not.
    let (code, body) = post("/api/v1/spawn", &spawn, None);
    assert_eq!(code, 401, "{body}");
    assert!(json(&body)["error"].as_str().unwrap().contains("Bearer"), "{body}");
    assert_eq!(post("/api/v1/spawn", &spawn, Some("wrong")).0, 401);
    let (code, body) = post("/api/v1/spawn", &spawn, t);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["spawned"], 3, "{body}");
    // The same ids again: refused per device, with the reason (as over gRPC).
    let (code, body) = post("/api/v1/spawn", &spawn, t);
    assert_eq!(code, 200, "{body}");
    let b = json(&body);
    assert_eq!(b["spawned"], 0, "{body}");
    assert!(b["failure_reasons"]["m-1"].as_str().unwrap().contains("already exists"), "{body}");

    // Listing, paged.
    let (code, body) = http_get(&addr, "/api/v1/devices?selector=zone%3Db&limit=2");
    assert_eq!(code, 200, "{body}");
    let page = json(&body);
    assert_eq!(page["total"], 3, "{body}");
    assert_eq!(page["devices"].as_array().unwrap().len(), 2, "{body}");
    assert_eq!(page["devices"][0]["id"], "m-1");
    assert_eq!(page["devices"][0]["type"], "meter");
    assert_eq!(page["devices"][0]["labels"]["zone"], "b");
    assert_eq!(page["devices"][0]["state"], "running");
    assert_eq!(page["next_after"], "m-2");
    let (_, body) = http_get(&addr, "/api/v1/devices?selector=zone%3Db&after=m-2");
    let page = json(&body);
    assert_eq!(page["devices"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(page["devices"][0]["id"], "m-3");
    assert!(page["next_after"].is_null(), "{body}");

    // A small page of the whole fleet is the start of the full listing (each shard keeps only
    // its smallest ids).
    let (_, all) = http_get(&addr, "/api/v1/devices?limit=10000");
    let all = json(&all);
    assert_eq!(all["total"], 43, "{all}");
    assert!(all["next_after"].is_null(), "{all}");
    let ids: Vec<&str> =
        all["devices"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let mut walked = vec![];
    let mut after = String::new();
    loop {
        let q =
            if after.is_empty() { "limit=5".to_string() } else { format!("limit=5&after={after}") };
        let (_, body) = http_get(&addr, &format!("/api/v1/devices?{q}"));
        let page = json(&body);
        walked.extend(
            page["devices"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["id"].as_str().unwrap().to_string()),
        );
        match page["next_after"].as_str() {
            Some(n) => after = n.to_string(),
            None => break,
        }
    }
    assert_eq!(walked, ids);

    // Faults: inject, see them listed, clear.
    let (code, body) = post(
        "/api/v1/faults",
        r#"{"selector":{"label_selector":"zone=b"},"fault_type":"disconnect","duration":"10m"}"#,
        t,
    );
    assert_eq!((code, json(&body)["affected"].as_u64()), (200, Some(3)), "{body}");
    let (_, body) = http_get(&addr, "/api/v1/devices?selector=zone%3Db&limit=1");
    assert_eq!(json(&body)["devices"][0]["faults"][0], "FAULT_TYPE_DISCONNECT", "{body}");
    let (code, body) = common::http_json(
        &addr,
        "DELETE",
        "/api/v1/faults",
        r#"{"selector":{"device_ids":["m-1","m-2"]}}"#,
        t,
    );
    assert_eq!((code, json(&body)["cleared"].as_u64()), (200, Some(2)), "{body}");

    // Pause and resume.
    let (code, body) = post("/api/v1/pause", r#"{"selector":{"device_ids":["m-3","nope"]}}"#, t);
    assert_eq!(code, 200, "{body}");
    let b = json(&body);
    assert_eq!(
        (b["affected"].as_u64(), b["failed_device_ids"][0].as_str()),
        (Some(1), Some("nope"))
    );
    let (_, body) = http_get(&addr, "/api/v1/devices?selector=zone%3Db&after=m-2");
    assert_eq!(json(&body)["devices"][0]["state"], "paused", "{body}");
    let (code, _) = post("/api/v1/resume", r#"{"selector":{"device_ids":["m-3"]}}"#, t);
    assert_eq!(code, 200);

    // Bad input: a clear JSON error, and the run goes on.
    for (path, body, want) in [
        ("/api/v1/spawn", "{not json", "JSON"),
        ("/api/v1/spawn", r#"{"specs":[]}"#, "must not be empty"),
        (
            "/api/v1/spawn",
            r#"{"specs":[{"device_id":"x","telemetry_interval":"soon","behavior_params":{}}]}"#,
            "telemetry_interval",
        ),
        ("/api/v1/stop", r#"{"selector":{"label_selector":"zone in (a"}}"#, "selector"),
        ("/api/v1/stop", r#"{"selector":{"label_selector":"a=b","device_ids":[]}}"#, "not both"),
        ("/api/v1/stop", r#"{"selectr":{}}"#, "unknown field"),
        ("/api/v1/faults", r#"{"fault_type":"meltdown"}"#, "meltdown"),
        (
            "/api/v1/faults",
            r#"{"fault_type":"latency_spike","parameters":{"latency_ms":-5}}"#,
            "latency_ms",
        ),
    ] {
        let (code, text) = post(path, body, t);
        assert_eq!(code, 400, "{path} {body}: {text}");
        let err = json(&text)["error"].as_str().unwrap().to_string();
        assert!(err.contains(want), "{path} {body}: {err}");
    }
    for q in ["limit=0", "limit=100000", "selector=zone%20in%20(", "bogus=1"] {
        let (code, text) = http_get(&addr, &format!("/api/v1/devices?{q}"));
        assert_eq!(code, 400, "{q}: {text}");
        assert!(json(&text)["error"].is_string(), "{q}: {text}");
    }

    // Stop them; the fleet file's 40 devices are untouched.
    let (code, body) = post("/api/v1/stop", r#"{"selector":{"label_selector":"zone=b"}}"#, t);
    assert_eq!((code, json(&body)["stopped"].as_u64()), (200, Some(3)), "{body}");
    let (_, body) = http_get(&addr, "/api/v1/devices?limit=1");
    assert_eq!(json(&body)["total"], 40, "{body}");
    assert!(run.stop().success());
}

/// Beyond loopback the server refuses to start without a token.
#[test]
fn an_admin_address_beyond_loopback_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fleet.toml");
    std::fs::write(&cfg, FLEET).unwrap();
    let child = bin()
        .args(["--config", cfg.to_str().unwrap(), "--quiet", "--admin", "0.0.0.0:0"])
        .args(["--duration", "1s", "--report-dir", dir.path().join("r").to_str().unwrap()])
        .env("IOT_SIM_ADMIN_TOKEN", "")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = common::output_within(child, 60);
    assert_eq!(out.status.code(), Some(1), "{}", common::stderr(&out));
    assert!(common::stderr(&out).contains("IOT_SIM_ADMIN_TOKEN"), "{}", common::stderr(&out));
}
