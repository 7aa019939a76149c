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
    let cfg = dir.join("fleet.toml");
    std::fs::write(&cfg, toml).unwrap();
    let mut args = vec!["--config", cfg.to_str().unwrap(), "--quiet", "--report-dir"];
    let rd = dir.join("report");
    args.push(rd.to_str().unwrap());
    args.extend_from_slice(extra);
    bin().args(&args).output().unwrap()
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
