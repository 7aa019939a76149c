//! Helpers shared by the integration tests: run the built binary on a fleet file, read the
//! report, find free ports.
#![allow(dead_code)]

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

/// Runs `cmd` to its end, waiting at most `secs`: on time out the child is killed and the test
/// fails (a regression must fail, not hang CI). stdout and stderr are captured.
pub fn output_within(mut cmd: Command, secs: u64) -> Output {
    use std::process::Stdio;
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // Drain the pipes on their own threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = vec![];
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = vec![];
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let e = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
            panic!("the child did not end within {secs} s; stderr:\n{e}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Output { status, stdout: out_t.join().unwrap(), stderr: err_t.join().unwrap() }
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
    output_within(cmd, secs)
}

/// `iot-sim validate` of `toml` (written to `dir/fleet.toml`), for at most `secs`.
pub fn validate_within(dir: &Path, toml: &str, secs: u64) -> Output {
    let cfg = dir.join("fleet.toml");
    std::fs::write(&cfg, toml).unwrap();
    let mut cmd = bin();
    cmd.args(["validate", "--config", cfg.to_str().unwrap()]);
    output_within(cmd, secs)
}
