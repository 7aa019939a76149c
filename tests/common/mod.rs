//! Helpers shared by the integration tests: run the built binary on a fleet file, read the
//! report, find free ports.
#![allow(dead_code)]

pub mod mqtt;

use std::path::Path;
use std::process::{Command, Output};

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_iot-sim"))
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Writes `fleet.toml` into `dir` and runs it; panics with stderr on failure.
pub fn run_ok(dir: &Path, toml: &str, extra: &[&str]) -> serde_json::Value {
    let out = run(dir, toml, extra);
    assert!(out.status.success(), "iot-sim failed: {}", stderr(&out));
    report(dir)
}

/// Writes `fleet.toml` into `dir` and runs it.
pub fn run(dir: &Path, toml: &str, extra: &[&str]) -> Output {
    run_env(dir, toml, extra, &[])
}

/// Writes `fleet.toml` into `dir` and runs it with extra environment variables.
pub fn run_env(dir: &Path, toml: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let cfg = dir.join("fleet.toml");
    std::fs::write(&cfg, toml).unwrap();
    let mut args = vec!["--config", cfg.to_str().unwrap(), "--quiet", "--report-dir"];
    let rd = dir.join("report");
    args.push(rd.to_str().unwrap());
    args.extend_from_slice(extra);
    bin().args(&args).envs(env.iter().copied()).output().unwrap()
}

pub fn report(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report/report.json")).unwrap()).unwrap()
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A unique name for this test process (topics, exchanges).
pub fn unique(prefix: &str) -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Asserts that two sorted lists are equal, showing only the sizes and the first difference.
pub fn assert_same(got: &[(String, String)], want: &[(String, String)]) {
    if got != want {
        let first =
            got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
        panic!(
            "got {} messages, want {}; first difference at {first}: {:?} vs {:?}",
            got.len(),
            want.len(),
            got.get(first),
            want.get(first)
        );
    }
}

/// The single `runs[]` row of `sink` in a report.
pub fn sink_row(r: &serde_json::Value, sink: &str) -> serde_json::Value {
    let rows: Vec<&serde_json::Value> =
        r["runs"].as_array().unwrap().iter().filter(|x| x["sink"] == sink).collect();
    assert_eq!(rows.len(), 1, "{r}");
    rows[0].clone()
}

/// Starts the binary on `cfg` in the background (quiet, report in `dir/report`, stderr piped).
pub fn spawn_run(dir: &Path, cfg: &Path, extra: &[&str]) -> std::process::Child {
    let rd = dir.join("report");
    bin()
        .args(["--config", cfg.to_str().unwrap(), "--quiet", "--report-dir", rd.to_str().unwrap()])
        .args(extra)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits (up to 5 s) until something listens on 127.0.0.1:`port`; true if it does.
pub fn wait_port(port: u16) -> bool {
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

/// Sends SIGTERM to a child (a run then stops, flushes and writes its report).
pub fn sigterm(child: &std::process::Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
}

/// Waits at most `secs` for a child to exit and returns its output (stdout and stderr read
/// as it runs, when piped). A child still running then is killed and the test fails with
/// what it printed, instead of hanging.
pub fn output_within(mut child: std::process::Child, secs: u64) -> Output {
    use std::io::Read;
    fn drain<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = vec![];
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > std::time::Duration::from_secs(secs) {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
            panic!("iot-sim did not exit within {secs} s; stderr:\n{stderr}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// The (topic, payload) pairs of a file sink's JSON Lines output, sorted.
pub fn file_messages(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out: Vec<(String, String)> = text
        .lines()
        .map(|l| {
            // {"topic":"...","payload":<the payload as sent>}
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let at = l.find(",\"payload\":").unwrap() + 11;
            (v["topic"].as_str().unwrap().to_string(), l[at..l.len() - 1].to_string())
        })
        .collect();
    out.sort();
    out
}

/// Spawns `cmd` with stdout and stderr piped and waits at most `secs` for it ([`output_within`]).
pub fn command_within(mut cmd: Command, secs: u64) -> Output {
    use std::process::Stdio;
    let child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    output_within(child, secs)
}

/// Writes `fleet.toml` into `dir` and runs it (quiet, report in `dir/report`) for at most
/// `secs`.
pub fn run_within(dir: &Path, toml: &str, extra: &[&str], secs: u64) -> Output {
    let cfg = dir.join("fleet.toml");
    std::fs::write(&cfg, toml).unwrap();
    let rd = dir.join("report");
    let mut cmd = bin();
    cmd.args(["--config", cfg.to_str().unwrap(), "--quiet", "--report-dir", rd.to_str().unwrap()])
        .args(extra);
    command_within(cmd, secs)
}

/// `iot-sim validate` of `toml` (written to `dir/fleet.toml`), for at most `secs`.
pub fn validate_within(dir: &Path, toml: &str, secs: u64) -> Output {
    let cfg = dir.join("fleet.toml");
    std::fs::write(&cfg, toml).unwrap();
    let mut cmd = bin();
    cmd.args(["validate", "--config", cfg.to_str().unwrap()]);
    command_within(cmd, secs)
}
