//! Helpers shared by the integration tests: run the built binary on a fleet file, read the
//! report, find free ports.
#![allow(dead_code)]

pub mod fleet;
pub mod mqtt;
pub mod rabbit;
pub mod tls;

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

/// A unique name for this call (topics, exchanges): every test shares this one process, so a
/// counter tells apart calls in the same nanosecond.
pub fn unique(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}-{}-{nanos}-{n}", std::process::id())
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

/// The one process harness: a running `iot-sim` whose stderr is collected in the background
/// (line by line, into `stderr`), with the gRPC address when started by one of the `grpc`
/// constructors or [`Running::with_config`]. Killed on drop.
pub struct Running {
    pub child: std::process::Child,
    /// Its gRPC address (`grpc: listening on ADDR`); empty when started by [`Running::start`].
    pub addr: String,
    /// Everything it printed on stderr so far, one line after another.
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Starts `cmd` (stdout to /dev/null), its stderr collected line by line.
    pub fn start(cmd: &mut Command) -> Running {
        use std::io::BufRead;
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start iot-sim");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        let err = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Running { child, addr: String::new(), stderr, reader: Some(reader) }
    }

    /// Starts `cmd` (which must serve gRPC, `--grpc 127.0.0.1:0`) and waits for its
    /// "grpc: listening on" line, whose address becomes `addr`.
    pub fn grpc_cmd(cmd: &mut Command) -> Running {
        let mut run = Running::start(cmd);
        run.addr = run.wait_line_within("grpc: listening on ", 120);
        run
    }

    /// `iot-sim ARGS` (which must include `--grpc 127.0.0.1:0`), once it serves gRPC.
    pub fn grpc(args: &[&str]) -> Running {
        Running::grpc_env(args, &[])
    }

    /// [`Running::grpc`] with extra environment variables.
    pub fn grpc_env(args: &[&str], env: &[(&str, &str)]) -> Running {
        Running::grpc_cmd(bin().args(args).envs(env.iter().copied()))
    }

    /// `iot-sim CMD --config CFG --grpc 127.0.0.1:0 --quiet [--report-dir DIR] EXTRA`
    /// (CMD = `run` or `serve`), once it serves gRPC.
    pub fn with_config(
        cmd: &str,
        cfg: &Path,
        report_dir: Option<&Path>,
        extra: &[&str],
    ) -> Running {
        let mut args =
            vec![cmd, "--config", cfg.to_str().unwrap(), "--grpc", "127.0.0.1:0", "--quiet"];
        if let Some(d) = report_dir {
            args.extend(["--report-dir", d.to_str().unwrap()]);
        }
        args.extend_from_slice(extra);
        Running::grpc(&args)
    }

    /// The gRPC endpoint, `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits (up to 30 s) for a stderr line containing `marker`; returns the text after it (up
    /// to a space or a quote).
    pub fn wait_line(&mut self, marker: &str) -> String {
        self.wait_line_within(marker, 30)
    }

    /// [`Running::wait_line`] for at most `secs`.
    pub fn wait_line_within(&mut self, marker: &str, secs: u64) -> String {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        let mut exited = None;
        loop {
            if let Some(l) = self.lines().iter().find(|l| l.contains(marker)) {
                let rest = &l[l.find(marker).unwrap() + marker.len()..];
                return rest.split(['"', ' ']).next().unwrap_or("").to_string();
            }
            if let Some(status) = exited {
                panic!("exited ({status}) before printing {marker:?}: {:?}", self.lines());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Its last lines may still be on their way: look once more after the reader ends.
                self.wait_reader();
                exited = Some(status);
                continue;
            }
            if std::time::Instant::now() > end {
                panic!("no line with {marker:?} within {secs} s: {:?}", self.lines());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The admin address printed at start (`admin: listening on http://ADDR`).
    pub fn admin_addr(&mut self) -> String {
        self.wait_line("admin: listening on http://")
    }

    /// The stderr lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().lines().map(String::from).collect()
    }

    /// SIGTERM, then waits up to 60 s for the exit (SIGKILL and a failed test after that) and
    /// for the last stderr lines.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        sigterm(&self.child);
        let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.wait_reader();
                return s;
            }
            if std::time::Instant::now() > end {
                let _ = self.child.kill();
                panic!("no exit within 60 s of SIGTERM: {:?}", self.lines());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Waits up to `secs` for the exit (on its own, no signal; SIGKILL and a failed test after
    /// that) and for the last stderr lines.
    pub fn wait_exit_within(&mut self, secs: u64) -> std::process::ExitStatus {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.wait_reader();
                return s;
            }
            if std::time::Instant::now() > end {
                let _ = self.child.kill();
                panic!("no exit within {secs} s: {:?}", self.lines());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// [`Running::terminate`], consuming the harness.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.terminate()
    }

    /// After the exit: waits (up to 5 s) until the reader saw the end of stderr, so `stderr`
    /// holds every line.
    fn wait_reader(&mut self) {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.reader.as_ref().is_some_and(|r| !r.is_finished()) {
            if std::time::Instant::now() > end {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One raw HTTP/1.1 exchange: sends `request` and reads the answer until the server closes
/// (at most 30 s). Returns (status code, headers, body); status 0 when nothing came back.
pub fn http_raw(addr: &str, request: &[u8]) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let _ = s.write_all(request);
    let mut buf = vec![];
    let _ = s.read_to_end(&mut buf);
    parse_answer(&buf)
}

/// Splits an HTTP answer into (status code, head, body).
pub fn parse_answer(buf: &[u8]) -> (u16, String, String) {
    let text = String::from_utf8_lossy(buf).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else { return (0, text, String::new()) };
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, head.to_string(), body.to_string())
}

/// `GET path` with an optional bearer token; (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let (code, _, body) = http_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
    );
    (code, body)
}

/// A request with a JSON body; (status, body).
pub fn http_json(
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, String) {
    let auth = token.map(|t| format!("authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\n{auth}content-length: {}\r\n\r\n{body}",
        body.len()
    );
    let (code, _, body) = http_raw(addr, req.as_bytes());
    (code, body)
}

/// Waits (up to `limit`) until something listens on 127.0.0.1:`port`.
pub fn wait_port_for(port: u16, limit: std::time::Duration) -> bool {
    let end = std::time::Instant::now() + limit;
    while std::time::Instant::now() < end {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

/// Waits (up to 30 s) until the admin server at `addr` answers `/readyz` with 200: the shards
/// run (and the signal handlers are installed).
pub fn wait_ready(addr: &str) {
    for _ in 0..300 {
        if http_get(addr, "/readyz").0 == 200 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("{addr}/readyz not 200 within 30 s");
}
