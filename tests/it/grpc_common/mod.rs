//! Helpers shared by the gRPC integration tests: start the real binary, build specs and
//! selectors, stop it with SIGTERM.
#![allow(dead_code)]

use iot_sim::control::proto;
use proto::device_selector::Selector;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running `iot-sim` with its gRPC address.
pub struct Runtime {
    pub child: Child,
    pub addr: String,
    /// Everything it printed on stderr after the address line.
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Runtime {
    /// Starts `iot-sim ARGS` (which must include `--grpc 127.0.0.1:0`) and waits for its
    /// "grpc: listening on" line.
    pub fn start(args: &[&str]) -> Runtime {
        Runtime::start_env(args, &[])
    }

    /// [`Runtime::start`] with extra environment variables.
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Runtime {
        let mut child = Command::new(env!("CARGO_BIN_EXE_iot-sim"))
            .args(args)
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start iot-sim");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = String::new();
        let addr = loop {
            let line = match lines.next() {
                Some(Ok(l)) => l,
                _ => panic!("iot-sim {args:?} ended before serving gRPC:\n{seen}"),
            };
            if let Some(a) = line.strip_prefix("grpc: listening on ") {
                break a.trim().to_string();
            }
            seen.push_str(&line);
            seen.push('\n');
        };
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&l);
                s.push('\n');
            }
        });
        Runtime { child, addr, stderr }
    }

    /// Starts `iot-sim CMD --config CFG --grpc 127.0.0.1:0 --quiet [--report-dir DIR] EXTRA`
    /// (CMD = `run` or `serve`).
    pub fn with_config(
        cmd: &str,
        cfg: &std::path::Path,
        report_dir: Option<&std::path::Path>,
        extra: &[&str],
    ) -> Runtime {
        let mut args =
            vec![cmd, "--config", cfg.to_str().unwrap(), "--grpc", "127.0.0.1:0", "--quiet"];
        if let Some(d) = report_dir {
            args.extend(["--report-dir", d.to_str().unwrap()]);
        }
        args.extend_from_slice(extra);
        Runtime::start(&args)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGTERM, then waits (at most 60 s) for a clean exit.
    pub fn terminate(&mut self) -> ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "iot-sim did not exit after SIGTERM:\n{}",
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn num(v: f64) -> prost_types::Value {
    prost_types::Value { kind: Some(prost_types::value::Kind::NumberValue(v)) }
}
pub fn text(s: &str) -> prost_types::Value {
    prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(s.into())) }
}
pub fn obj(pairs: Vec<(&str, prost_types::Value)>) -> prost_types::Struct {
    prost_types::Struct { fields: pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect() }
}
pub fn objv(pairs: Vec<(&str, prost_types::Value)>) -> prost_types::Value {
    prost_types::Value { kind: Some(prost_types::value::Kind::StructValue(obj(pairs))) }
}

/// A device spec with one gaussian `temperature` field.
pub fn spec(
    id: &str,
    device_type: &str,
    labels: &[(&str, &str)],
    interval_ms: i32,
    protocol: &str,
) -> proto::DeviceSpec {
    proto::DeviceSpec {
        device_id: id.into(),
        device_type: device_type.into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        telemetry_interval: Some(prost_types::Duration {
            seconds: (interval_ms / 1000) as i64,
            nanos: (interval_ms % 1000) * 1_000_000,
        }),
        behavior_params: Some(obj(vec![(
            "fields",
            objv(vec![(
                "temperature",
                objv(vec![("type", text("gaussian")), ("mean", num(22.0)), ("stddev", num(1.0))]),
            )]),
        )])),
        protocol: protocol.into(),
        topic_template: String::new(),
    }
}

pub fn labels(s: &str) -> Option<proto::DeviceSelector> {
    Some(proto::DeviceSelector { selector: Some(Selector::LabelSelector(s.into())) })
}

/// Sim ms of a protobuf timestamp.
pub fn ms(t: &Option<prost_types::Timestamp>) -> u64 {
    let t = t.as_ref().expect("timestamp set");
    t.seconds as u64 * 1000 + t.nanos as u64 / 1_000_000
}

/// Waits (polling every 20 ms, at most `secs`) until `f` holds; panics with `what` otherwise.
pub async fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(secs), "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
