//! The dashboard and the HTML reports in a real headless Chromium, driven over WebDriver
//! (chromedriver, plain HTTP/JSON). `scripts/services.sh` installs `chromium` and
//! `chromium-driver`; without them these tests say so loudly and skip. Each test saves a
//! screenshot under `target/browser/`.

use crate::common;

use common::{Running, bin, http_get};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

const FLEET: &str = r#"[run]
seed = 7
clock = "realtime"

[[fleet]]
profile = "meter"
count = 30
labels = { zone = "a" }

[[fleet]]
profile = "meter"
count = 10
labels = { zone = "b" }

[profiles.meter]
protocol = "null"
interval = "100ms"
[profiles.meter.fields.power]
type = "gaussian"
mean = 100
stddev = 5

[[threshold]]
metric = "error_rate"
max = "1%"

[[threshold]]
metric = "latency_p99"
max = "1h"
abort = true
"#;

/// A chromedriver process and one browser session; both ended on drop.
struct Browser {
    driver: std::process::Child,
    addr: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium; `Err` when they are not installed (the
    /// caller skips). Installed but failing to start a session is a test failure.
    fn start() -> Result<Browser, String> {
        let driver_bin = ["chromedriver", "/usr/bin/chromedriver"]
            .into_iter()
            .find(|b| std::process::Command::new(b).arg("--version").output().is_ok())
            .ok_or("chromedriver not installed (scripts/services.sh installs chromium-driver)")?;
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .ok_or("chromium not installed (scripts/services.sh installs it)")?;
        let port = common::free_port();
        let driver = std::process::Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start chromedriver: {e}"))?;
        let addr = format!("127.0.0.1:{port}");
        let profile = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut b = Browser { driver, addr, session: String::new(), _profile: profile };
        if !common::wait_port_for(port, Duration::from_secs(20)) {
            return Err("chromedriver did not listen within 20 s".into());
        }
        let args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1400,1800".into(),
            format!("--user-data-dir={}", b._profile.path().display()),
        ];
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium, "args": args },
            "timeouts": { "script": 20000, "pageLoad": 30000 },
        }}});
        let v = b.call("POST", "/session", &caps).unwrap_or_else(|e| {
            panic!("chromium is installed but no WebDriver session started: {e}")
        });
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromium did not start a session: {v}"))
            .to_string();
        Ok(b)
    }

    /// One WebDriver call; the `value` of its answer, or the error it reported.
    fn call(&self, method: &str, path: &str, body: &Value) -> Result<Value, String> {
        // chromedriver refuses a Host header that is not its own address.
        let body = if body.is_null() { String::new() } else { body.to_string() };
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        let (code, text) =
            exchange(&self.addr, req.as_bytes()).map_err(|e| format!("{method} {path}: {e}"))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{method} {path}: {code}, not JSON ({e}): {text:.300}"))?;
        if code != 200 {
            return Err(format!("{method} {path}: {code}: {}", v["value"]));
        }
        Ok(v["value"].clone())
    }

    fn at(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    fn open(&self, url: &str) {
        self.call("POST", &self.at("/url"), &json!({ "url": url })).unwrap();
    }

    /// Runs `script` (a function body) in the page and returns what it returns.
    fn js(&self, script: &str) -> Value {
        self.call("POST", &self.at("/execute/sync"), &json!({ "script": script, "args": [] }))
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Polls `script` until it returns true (at most `secs`); panics with `what` otherwise.
    fn wait_for(&self, script: &str, secs: u64, what: &str) {
        for _ in 0..secs * 5 {
            if self.js(script) == json!(true) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let errors = self.js("return window.pageErrors || []");
        panic!("{what}: not true within {secs} s ({script}); page errors: {errors}");
    }

    /// Errors the page caught (window.onerror, rejections, console.error).
    fn page_errors(&self) -> Vec<String> {
        let v = self.js("return window.pageErrors || ['page hook missing']");
        v.as_array().unwrap().iter().map(|e| e.as_str().unwrap_or("?").to_string()).collect()
    }

    /// Saves a screenshot as `target/browser/NAME.png`; returns its path.
    fn screenshot(&self, name: &str) -> PathBuf {
        let v = self.call("GET", &self.at("/screenshot"), &Value::Null).unwrap();
        let png = base64_decode(v.as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), &Value::Null);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The browser, or `None` after saying loudly why the test cannot run here.
fn browser() -> Option<Browser> {
    match Browser::start() {
        Ok(b) => Some(b),
        Err(why) => {
            eprintln!("\n*** SKIPPED: headless Chromium cannot run here: {why} ***\n");
            None
        }
    }
}

/// One HTTP/1.1 exchange read up to its Content-Length (chromedriver keeps connections open
/// whatever the request says, so reading to the end would wait for a timeout).
fn exchange(addr: &str, request: &[u8]) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
    s.write_all(request).map_err(|e| e.to_string())?;
    let mut buf = vec![];
    let mut chunk = [0u8; 65536];
    loop {
        let n = s.read(&mut chunk).map_err(|e| format!("no answer: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if len.is_some_and(|len| buf.len() >= end + 4 + len) {
                break;
            }
        }
    }
    let (code, _, body) = common::parse_answer(&buf);
    Ok((code, body))
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let data: Vec<u8> = chunk.iter().copied().filter(|&c| c != b'=').collect();
        let mut n = 0u32;
        for (i, &c) in data.iter().enumerate() {
            n |= val(c) << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..data.len().saturating_sub(1)]);
    }
    out
}

fn status(addr: &str) -> Value {
    let (code, body) = http_get(addr, "/api/v1/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Sets a form field through the page and submits the form, as a person would.
fn fill_and_submit(b: &Browser, form: &str, fields: &[(&str, &str)]) {
    let mut script = String::new();
    for (name, value) in fields {
        script.push_str(&format!(
            "document.getElementById({}).value = {};\n",
            json!(format!("{form}-{name}")),
            json!(value)
        ));
    }
    script.push_str(&format!(
        "document.getElementById({}).click(); return true;",
        json!(format!("{form}-submit"))
    ));
    b.js(&script);
}

/// Starts `iot-sim serve` (with `config`, if any) with admin and gRPC on free ports; returns it
/// once ready, with its admin address.
/// What sticks out of its card: the page scrolling sideways, or a table whose right edge lies
/// past its card's while the card does not scroll it (empty when every table fits or scrolls
/// inside its card).
fn overflowing_tables(b: &Browser) -> Vec<String> {
    let v = b.js(
        r#"const bad = [];
        const root = document.documentElement;
        if (root.scrollWidth > root.clientWidth) bad.push(`page scrolls sideways: ${root.scrollWidth} > ${root.clientWidth}`);
        for (const t of document.querySelectorAll('table')) {
          const s = t.closest('section');
          if (!s) continue;
          const scrolls = ['auto', 'scroll'].includes(getComputedStyle(s).overflowX);
          if (t.getBoundingClientRect().right > s.getBoundingClientRect().right + 1 && !scrolls) {
            const h = s.querySelector('h2');
            bad.push(`${h ? h.textContent : 'a card'}: table overflows`);
          }
        }
        return bad;"#,
    );
    v.as_array().unwrap().iter().map(|x| x.as_str().unwrap_or_default().to_string()).collect()
}

fn serve(
    config: Option<&std::path::Path>,
    report: &std::path::Path,
    extra: &[&str],
) -> (Running, String) {
    let mut cmd = bin();
    cmd.arg("serve");
    if let Some(c) = config {
        cmd.args(["--config", c.to_str().unwrap()]);
    }
    cmd.args(["--admin", "127.0.0.1:0", "--grpc", "127.0.0.1:0", "--quiet"])
        .args(["--report-dir", report.to_str().unwrap()])
        .args(extra);
    let mut run = Running::start(&mut cmd);
    let addr = run.admin_addr();
    common::wait_ready(&addr);
    (run, addr)
}

/// Opens the dashboard of the runtime at `addr` and waits for its script to run.
fn open_dashboard(b: &Browser, addr: &str) {
    b.open(&format!("http://{addr}/"));
    b.wait_for("return window.dashboardReady === true", 20, "the dashboard script ran");
}

#[test]
fn the_dashboard_drives_a_running_fleet() {
    let Some(b) = browser() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fleet.toml");
    std::fs::write(&cfg, FLEET).unwrap();
    let rd = dir.path().join("report");
    let (run, addr) = serve(Some(&cfg), &rd, &["--cores", "2", "--run-id", "dash-test"]);
    open_dashboard(&b, &addr);
    b.wait_for(
        "return document.getElementById('devices-total') !== null && document.getElementById('devices-total').textContent === '40'",
        20,
        "the overview shows the fleet",
    );
    // The thresholds, judged so far on the running figures.
    b.wait_for(
        "return document.querySelectorAll('#thresholds tbody tr').length === 2 && [...document.querySelectorAll('#thresholds tbody tr')].every((r) => r.textContent.includes('pass so far'))",
        20,
        "both thresholds pass so far",
    );
    let row = b.js("return document.querySelectorAll('#thresholds tbody tr')[1].textContent");
    assert!(
        row.as_str().unwrap().contains("latency_p99") && row.as_str().unwrap().contains("abort"),
        "{row}"
    );

    // Live numbers change.
    let read = "return Number(document.getElementById('messages-total').textContent)";
    let first = b.js(read).as_u64().unwrap();
    b.wait_for(&format!("{read} > {first}"), 20, "messages grow");
    b.wait_for(
        "return Number(document.getElementById('chart-rate').dataset.points || 0) >= 2",
        20,
        "the msg/s chart draws the server's history",
    );

    // Device browser: 40 devices, pages of 20.
    b.wait_for("return document.querySelectorAll('#devices tbody tr').length === 20", 20, "page 1");
    let first_page = b.js("return document.querySelector('#devices tbody tr td').textContent");
    b.js("document.getElementById('devices-next').click(); return true;");
    b.wait_for(
        &format!("return document.getElementById('devices-page').textContent.startsWith('page 2') && document.querySelector('#devices tbody tr td').textContent !== {first_page}"),
        20,
        "page 2 shows other devices",
    );
    fill_and_submit(&b, "browse", &[("selector", "zone=b")]);
    b.wait_for(
        "return document.getElementById('devices-page').textContent.includes('10 matching')",
        20,
        "the selector filters",
    );

    // The fleet by a chosen label, counted by the server.
    fill_and_submit(&b, "label", &[("key", "zone"), ("selector", "")]);
    b.wait_for(
        "const t = document.getElementById('by-label').textContent; return t.includes('a30') && t.includes('b10')",
        20,
        "devices by label",
    );

    // Spawn through the form: 5 more devices.
    b.wait_for(
        "return document.getElementById('spawn-device_type').options.length > 0",
        20,
        "profiles listed",
    );
    fill_and_submit(&b, "spawn", &[("count", "5"), ("prefix", "web"), ("labels", "zone=c")]);
    b.wait_for(
        "return document.getElementById('spawn-ok').textContent === 'spawned 5'",
        20,
        "spawn answered",
    );
    for _ in 0..100 {
        if status(&addr)["devices_total"] == 45 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status(&addr)["devices_total"], 45);

    // Bad input: the server's message shows next to the form and nothing changes.
    fill_and_submit(&b, "fault", &[("selector", "zone in (a"), ("duration", "")]);
    b.wait_for(
        "return document.getElementById('fault-error').textContent.length > 0",
        20,
        "refusal shown",
    );
    let refusal = b.js("return document.getElementById('fault-error').textContent");
    assert!(refusal.as_str().unwrap().contains("selector"), "{refusal}");
    fill_and_submit(&b, "spawn", &[("count", "5"), ("prefix", "web"), ("labels", "")]);
    b.wait_for(
        "return document.getElementById('spawn-error').textContent.length > 0",
        20,
        "duplicate refused",
    );
    let dup = b.js("return document.getElementById('spawn-error').textContent");
    assert!(dup.as_str().unwrap().contains("web-0"), "{dup}");
    let s = status(&addr);
    assert_eq!(
        (
            s["devices_total"].as_u64(),
            s["faults_active"].as_array().map(|a| a.iter().filter_map(Value::as_u64).sum::<u64>())
        ),
        (Some(45), Some(0)),
        "{s}"
    );

    // A fault through the form shows up as active.
    fill_and_submit(
        &b,
        "fault",
        &[
            ("selector", "zone=b"),
            ("fault_type", "latency_spike"),
            ("parameters", "{\"latency_ms\": 50}"),
        ],
    );
    b.wait_for(
        "return document.getElementById('fault-ok').textContent === 'fault on 10 device(s)'",
        20,
        "fault answered",
    );
    b.wait_for("return document.getElementById('faults-active').textContent.includes('latency_spike on 10')", 20, "the fault shows as active");

    // Live telemetry for a selector over SSE.
    fill_and_submit(&b, "stream", &[("selector", "zone=a")]);
    b.wait_for(
        "return document.querySelectorAll('#live-rows tr').length > 0",
        20,
        "live telemetry rows",
    );
    assert_eq!(overflowing_tables(&b), Vec::<String>::new(), "tables wider than their cards");
    let errors = b.page_errors();
    let shot = b.screenshot("dashboard");
    assert!(errors.is_empty(), "JS errors on the dashboard: {errors:?}");
    // Leaving the page ends the stream (the runtime frees its slot).
    b.open("about:blank");
    eprintln!("screenshot: {}", shot.display());
    run.stop();
}

#[test]
fn report_html_draws_every_chart_offline_and_compare_html_too() {
    let Some(b) = browser() else { return };
    let dir = tempfile::tempdir().unwrap();
    let toml = FLEET.replace("clock = \"realtime\"", "clock = \"virtual\"\nduration = \"20m\"");
    let mut reports = vec![];
    for seed in [1, 2] {
        let run_dir = dir.path().join(format!("seed{seed}"));
        std::fs::create_dir_all(&run_dir).unwrap();
        let out = common::run(&run_dir, &toml, &["--seed", &seed.to_string()]);
        assert!(out.status.success(), "{}", common::stderr(&out));
        reports.push(run_dir.join("report"));
    }
    let html = reports[0].join("report.html");
    b.open(&format!("file://{}", html.display()));
    b.wait_for("return window.chartsDrawn > 0", 20, "the report script ran");
    let empty = b.js("return [...document.querySelectorAll('canvas')].filter(c => {
            if (!(Number(c.dataset.points) > 0)) return true;
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            for (let i = 3; i < d.length; i += 4) if (d[i] !== 0) return false;
            return true;
        }).map(c => c.id)");
    assert_eq!(empty, json!([]), "charts with nothing drawn");
    let charts = b.js("return document.querySelectorAll('canvas').length").as_u64().unwrap();
    assert!(charts >= 4, "one distribution per row and the time series: {charts}");
    // Nothing was fetched: no resource entries besides the page itself.
    assert_eq!(b.js("return performance.getEntriesByType('resource').length"), json!(0));
    assert_eq!(b.js("return document.getElementById('meta-seed').textContent"), json!("1"));
    let errors = b.page_errors();
    b.screenshot("report");
    assert!(errors.is_empty(), "JS errors in report.html: {errors:?}");

    // compare.html from `report compare`.
    let out_html = dir.path().join("compare.html");
    let out = common::command_within(
        {
            let mut c = bin();
            c.args(["report", "compare"])
                .arg(reports[0].join("report.json"))
                .arg(reports[1].join("report.json"))
                .arg("--out")
                .arg(&out_html);
            c
        },
        60,
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    b.open(&format!("file://{}", out_html.display()));
    b.wait_for("return window.chartsDrawn > 0", 20, "the compare script ran");
    assert_eq!(b.js("return performance.getEntriesByType('resource').length"), json!(0));
    assert_eq!(
        b.js("return [...document.querySelectorAll('canvas')].every(c => Number(c.dataset.points) > 0)"),
        json!(true)
    );
    let errors = b.page_errors();
    b.screenshot("compare");
    assert!(errors.is_empty(), "JS errors in compare.html: {errors:?}");
}

#[test]
fn the_spawn_form_offers_the_config_profiles_on_an_empty_serve_or_says_why_it_cannot() {
    let Some(b) = browser() else { return };
    let dir = tempfile::tempdir().unwrap();
    // Profiles but no [[fleet]]: nothing runs, the form still offers the profile.
    let profiles_only = format!(
        "[run]\nclock = \"realtime\"\n\n{}",
        &FLEET[FLEET.find("[profiles.meter]").unwrap()..]
    );
    let cfg = dir.path().join("profiles.toml");
    std::fs::write(&cfg, profiles_only).unwrap();
    let rd = dir.path().join("report");
    let (run, addr) = serve(Some(&cfg), &rd, &["--cores", "1"]);
    let (code, body) = http_get(&addr, "/api/v1/profiles");
    assert_eq!(code, 200);
    let p: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(p["profiles"], json!([{"device_type": "meter", "protocol": "null"}]), "{p}");
    assert_eq!(status(&addr)["devices_total"], 0);
    open_dashboard(&b, &addr);
    b.wait_for(
        "return [...document.getElementById('spawn-device_type').options].map((o) => o.textContent).join() === 'meter (null)'",
        20,
        "the form offers the config's profile",
    );
    assert_eq!(b.js("return document.getElementById('spawn-hint').textContent"), json!(""));
    // Spawning from it works on the empty runtime.
    fill_and_submit(&b, "spawn", &[("count", "3"), ("prefix", "m")]);
    b.wait_for(
        "return document.getElementById('devices-total').textContent === '3'",
        20,
        "3 devices spawned",
    );
    assert!(b.page_errors().is_empty(), "{:?}", b.page_errors());
    run.stop();

    // No config at all: no device type anywhere, the form says so.
    let (run, addr) = serve(None, &rd, &["--cores", "1"]);
    assert_eq!(
        serde_json::from_str::<Value>(&http_get(&addr, "/api/v1/profiles").1).unwrap()["profiles"],
        json!([])
    );
    open_dashboard(&b, &addr);
    b.wait_for(
        "return document.getElementById('spawn-hint').textContent.includes('no device types yet')",
        20,
        "the hint instead of an empty select",
    );
    // The thresholds section is filled by its own request: wait for it, do not race it.
    b.wait_for(
        "return document.getElementById('thresholds').textContent === 'no thresholds'",
        20,
        "\"no thresholds\" on a runtime without a scenario",
    );
    assert!(b.page_errors().is_empty(), "{:?}", b.page_errors());
    run.stop();
}
