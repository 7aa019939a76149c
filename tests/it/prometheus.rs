//! A real Prometheus (Debian package `prometheus`, installed by `.ci/run`) scrapes a running
//! fleet through the admin server; its HTTP API must show per-device-type rates and a p99
//! close to the report's. `promtool check metrics` must accept the exposition.

use crate::common;

use common::{Running, bin, free_port, http_get};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

const FLEET: &str = r#"[run]
seed = 7
clock = "realtime"

[[fleet]]
profile = "thermo"
count = 30

[[fleet]]
profile = "meter"
count = 20

[profiles.thermo]
protocol = "null"
interval = "20ms"
[profiles.thermo.fields.t]
type = "gaussian"
mean = 20
stddev = 1

[profiles.meter]
protocol = "null"
interval = "50ms"
[profiles.meter.fields.kw]
type = "gaussian"
mean = 1
stddev = 0.1
"#;

/// Upper bounds of the latency buckets, in seconds (as `/metrics` writes them).
const BOUNDS_S: [f64; 21] = [
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

fn bucket_of(seconds: f64) -> usize {
    BOUNDS_S.iter().position(|&b| seconds <= b).unwrap_or(BOUNDS_S.len())
}

fn tool(name: &str) -> String {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = format!("{dir}/{name}");
        if std::path::Path::new(&p).exists() {
            return p;
        }
    }
    panic!("{name} not found: install the Debian package `prometheus` (.ci/run does)");
}

/// Kills the Prometheus server when the test ends, however it ends.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One Prometheus HTTP API query; the `data.result` array.
fn query(prom: &str, q: &str) -> Vec<serde_json::Value> {
    let mut enc = String::new();
    for b in q.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            enc.push(b as char);
        } else {
            enc.push_str(&format!("%{b:02X}"));
        }
    }
    let (code, body) = http_get(prom, &format!("/api/v1/query?query={enc}"));
    assert_eq!(code, 200, "{q}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

fn value(r: &serde_json::Value) -> f64 {
    r["value"][1].as_str().unwrap().parse().unwrap()
}

#[test]
fn prometheus_scrapes_rates_per_device_type_and_a_p99_close_to_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fleet.toml");
    std::fs::write(&cfg, FLEET).unwrap();
    let rd = dir.path().join("report");
    let mut cmd = bin();
    cmd.args(["--config", cfg.to_str().unwrap(), "--cores", "2", "--admin", "127.0.0.1:0"]).args([
        "--quiet",
        "--run-id",
        "prom-test",
        "--report-dir",
        rd.to_str().unwrap(),
    ]);
    let mut run = Running::start(&mut cmd);
    let admin = run.admin_addr();

    // promtool accepts the exposition (once the shards have published per-type figures).
    let t0 = std::time::Instant::now();
    let (code, metrics) = loop {
        let (code, metrics) = http_get(&admin, "/metrics");
        if code != 200 || metrics.contains("device_type=\"") || t0.elapsed().as_secs() > 30 {
            break (code, metrics);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, 200);
    let mut check = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let checked = common::output_within(check, 30);
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{metrics}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // Prometheus on a free port, scraping the admin server every second.
    let port = free_port();
    let prom = format!("127.0.0.1:{port}");
    let conf = dir.path().join("prometheus.yml");
    std::fs::write(
        &conf,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: iot-sim\n    static_configs:\n      - targets: ['{admin}']\n"
        ),
    )
    .unwrap();
    let data = dir.path().join("tsdb");
    let _server = Server(
        Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address={prom}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t0 = std::time::Instant::now();
    assert!(common::wait_port_for(port, Duration::from_secs(60)), "prometheus did not listen");
    let mut ready = false;
    for _ in 0..600 {
        if http_get(&prom, "/-/ready").0 == 200 {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ready, "prometheus not ready within 60 s");
    eprintln!("prometheus ready after {:?}", t0.elapsed());

    // Wait (bounded) until both device types have a non-zero rate.
    let rate = "sum by (device_type) (rate(iot_sim_messages_sent_total{status=\"ok\"}[30s]))";
    let mut rates = vec![];
    // 30 devices every 20 ms and 20 every 50 ms: 1500/s and 400/s, once the 30 s window holds
    // more than the first samples.
    let want =
        |r: &serde_json::Value| if r["metric"]["device_type"] == "thermo" { 1500.0 } else { 400.0 };
    let close = |r: &serde_json::Value| (value(r) - want(r)).abs() / want(r) < 0.5;
    for _ in 0..120 {
        rates = query(&prom, rate);
        if rates.len() == 2 && rates.iter().all(close) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("rates after {:?}", t0.elapsed());
    assert_eq!(rates.len(), 2, "{rates:?}");
    for r in &rates {
        assert!(close(r), "{r}: want about {}/s", want(r));
    }
    // The run is identified.
    let info = query(&prom, "iot_sim_run_info");
    assert_eq!(info.len(), 1, "{info:?}");
    assert_eq!(info[0]["metric"]["run_id"], "prom-test");

    // A p99 from the rate of the buckets exists...
    let p99_rate = query(
        &prom,
        "histogram_quantile(0.99, sum by (le, device_type) (rate(iot_sim_publish_latency_seconds_bucket[30s])))",
    );
    assert_eq!(p99_rate.len(), 2, "{p99_rate:?}");
    assert!(p99_rate.iter().all(|r| value(r).is_finite()), "{p99_rate:?}");
    // ...and the one over the whole run is close to the report's: same bucket or the next.
    let p99_all = query(
        &prom,
        "histogram_quantile(0.99, sum by (le, device_type) (iot_sim_publish_latency_seconds_bucket))",
    );
    assert_eq!(p99_all.len(), 2, "{p99_all:?}");
    assert!(run.stop().success());
    let report = common::report(dir.path());
    for r in &p99_all {
        let t = r["metric"]["device_type"].as_str().unwrap();
        let row = report["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["device_type"] == t)
            .unwrap_or_else(|| panic!("no report row for {t}: {report}"))
            .clone();
        let report_p99_s = row["latency_us"]["p99"].as_f64().unwrap() / 1e6;
        let (a, b) = (bucket_of(value(r)), bucket_of(report_p99_s));
        assert!(
            a.abs_diff(b) <= 1,
            "{t}: Prometheus p99 {} s (bucket {a}), report p99 {report_p99_s} s (bucket {b})",
            value(r)
        );
    }
}
