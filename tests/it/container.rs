//! The container image, built and run with podman: the Dockerfile's `runtime-prebuilt` stage
//! (the same base, user, ports, health check and command as the default `runtime` stage, with
//! this build's binary instead of the Rust builder's, which cannot be pulled here) on a base
//! made offline by `deploy/container/base-image.sh` (debootstrap + podman import, cached under
//! target/container/).
//!
//! Checks: gRPC health and /readyz reached from the host, the health check command works in
//! the container, the process is not root, devices spawn, SIGTERM writes the report to the
//! mounted folder within the grace period, a missing mounted fleet file exits 2 naming it.
//! Prints the image size and the time from start to ready.
//!
//! Skips (loudly) only where podman cannot run a container at all. Every wait is bounded.

use crate::common;

use common::{bin, command_within, free_port, http_get, stderr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const IMAGE: &str = "localhost/iot-sim:container-test";
/// The runtime flags these sandboxes need (see /work/shared notes): runc, not crun; ulimits
/// within the sandbox's hard limits; the host network.
const RUN_FLAGS: &[&str] =
    &["--network", "host", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"];

fn podman(args: &[&str], secs: u64) -> Output {
    let mut c = Command::new("podman");
    c.arg("--runtime").arg("runc").args(args);
    command_within(c, secs)
}

fn ok(args: &[&str], secs: u64) -> String {
    let out = podman(args, secs);
    assert!(
        out.status.success(),
        "podman {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Removes the container when the test ends, passed or not.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", "-t", "2", &self.0], 60);
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether podman can run a container here at all (the only reason to skip).
fn podman_usable() -> Result<(), String> {
    match Command::new("podman").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => return Err(format!("podman --version failed: {}", stderr(&o))),
        Err(e) => return Err(format!("podman not found ({e}); scripts/services.sh installs it")),
    }
    let out = podman(&["info", "--format", "{{.Host.OCIRuntime.Name}}"], 60);
    if !out.status.success() {
        return Err(format!("podman info failed: {}", stderr(&out)));
    }
    Ok(())
}

/// The build context: this build's binary alone, stripped of debug info.
fn context() -> PathBuf {
    let dir = repo().join("target/container/ctx");
    std::fs::create_dir_all(&dir).unwrap();
    let dst = dir.join("iot-sim");
    let _ = std::fs::remove_file(&dst);
    let src = env!("CARGO_BIN_EXE_iot-sim");
    let stripped = Command::new("objcopy")
        .args(["--strip-debug", src, dst.to_str().unwrap()])
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(src, &dst).unwrap();
    }
    dir
}

fn fleet_dir(dir: &Path) -> PathBuf {
    let cfg = dir.join("config");
    std::fs::create_dir_all(cfg.join("profiles")).unwrap();
    std::fs::write(
        cfg.join("fleet.toml"),
        "[run]\nprogress_interval = \"1s\"\n\n[[fleet]]\nprofile = \"profiles/meter.toml\"\ncount = 20\n",
    )
    .unwrap();
    std::fs::write(
        cfg.join("profiles/meter.toml"),
        "protocol = \"null\"\ninterval = \"1s\"\n\n[fields.power]\ntype = \"gaussian\"\nmean = 3.0\nstddev = 0.5\n",
    )
    .unwrap();
    cfg
}

#[test]
fn the_image_serves_is_healthy_runs_as_non_root_and_writes_its_report_on_sigterm() {
    if let Err(why) = podman_usable() {
        eprintln!("\n!!!!! SKIPPED tests/it/container.rs: podman cannot run here: {why} !!!!!\n");
        return;
    }
    // The base image, made offline (cached); then the runtime stage with this binary.
    let base = Command::new(repo().join("deploy/container/base-image.sh"))
        .arg(repo().join("target/container"))
        .output()
        .unwrap();
    assert!(base.status.success(), "base image: {}", stderr(&base));
    let ctx = context();
    let dockerfile = repo().join("Dockerfile");
    let built = Instant::now();
    ok(
        &[
            "build",
            "--pull=never",
            "--format",
            "docker",
            "--network",
            "host",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=4096:4096",
            "--target",
            "runtime-prebuilt",
            "-f",
            dockerfile.to_str().unwrap(),
            "-t",
            IMAGE,
            ctx.to_str().unwrap(),
        ],
        600,
    );
    let build_s = built.elapsed().as_secs_f64();
    let size: u64 = ok(&["image", "inspect", "--format", "{{.Size}}", IMAGE], 60).parse().unwrap();
    let binary = std::fs::metadata(ctx.join("iot-sim")).unwrap().len();
    // The image's own settings: non-root user, 0.0.0.0 binds by default, the probe as health check.
    let user = ok(&["image", "inspect", "--format", "{{.Config.User}}", IMAGE], 60);
    assert_eq!(user, "10001:10001");
    let cmd = ok(&["image", "inspect", "--format", "{{json .Config.Cmd}}", IMAGE], 60);
    assert!(cmd.contains("0.0.0.0:50051") && cmd.contains("0.0.0.0:9090"), "{cmd}");
    let health = ok(&["image", "inspect", "--format", "{{json .Config.Healthcheck}}", IMAGE], 60);
    assert!(health.contains("probe") && health.contains("127.0.0.1:9090"), "{health}");

    // Run it: fleet from a read-only /config, report into a writable /data. Free ports on
    // loopback (the host network is shared with other tests), not the default 0.0.0.0.
    let dir = tempfile::tempdir().unwrap();
    let cfg = fleet_dir(dir.path());
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // The container's user (uid 10001) must be able to write the mounted folder.
    std::process::Command::new("chmod").args(["0777", data.to_str().unwrap()]).status().unwrap();
    let (grpc, admin) = (free_port(), free_port());
    let name = format!("iot-sim-test-{}", std::process::id());
    let started = Instant::now();
    let mut args: Vec<String> = ["run", "-d", "--name", &name].map(String::from).to_vec();
    args.extend(RUN_FLAGS.iter().map(|s| s.to_string()));
    args.extend(
        [
            "-v",
            &format!("{}:/config:ro", cfg.display()),
            "-v",
            &format!("{}:/data", data.display()),
            "-e",
            "IOT_SIM_ADMIN_TOKEN=container-test",
            "-e",
            "IOT_SIM_RUN_SEED=42",
            IMAGE,
            "serve",
            "--config",
            "/config/fleet.toml",
            "--cores",
            "1",
            "--grpc",
            &format!("127.0.0.1:{grpc}"),
            "--admin",
            &format!("127.0.0.1:{admin}"),
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&args, 120);
    let container = Container(name.clone());
    let admin_addr = format!("127.0.0.1:{admin}");
    let mut ready = None;
    while started.elapsed() < Duration::from_secs(60) {
        // http_get panics on a refused connection: the port opens first, then /readyz is 200.
        let open = std::net::TcpStream::connect(&admin_addr).is_ok();
        if open && http_get(&admin_addr, "/readyz").0 == 200 {
            ready = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let logs = || {
        let o = podman(&["logs", &name], 60);
        format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o))
    };
    let ready = ready.unwrap_or_else(|| panic!("/readyz not 200 within 60 s:\n{}", logs()));
    // gRPC health from the host, and the image's health check command inside the container.
    let mut probe = bin();
    probe.args(["probe", "--grpc", &format!("127.0.0.1:{grpc}"), "--admin", &admin_addr]);
    let out = command_within(probe, 30);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let inside =
        ok(&["exec", &name, "/usr/local/bin/iot-sim", "probe", "--admin", &admin_addr], 60);
    assert!(inside.contains("ready"), "{inside}");

    // Not root: the container's main process, seen from the host.
    let pid = ok(&["inspect", "--format", "{{.State.Pid}}", &name], 60);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap().to_string();
    assert!(uid.split_whitespace().skip(1).all(|u| u == "10001"), "{uid}");

    // Devices spawned over gRPC join the fleet file's 20.
    let profile = cfg.join("profiles/meter.toml");
    let mut spawn = bin();
    spawn.args([
        "spawn",
        "-r",
        &format!("127.0.0.1:{grpc}"),
        "--profile",
        profile.to_str().unwrap(),
        "--count",
        "10",
        "--offset",
        "100",
    ]);
    let out = command_within(spawn, 60);
    assert!(out.status.success(), "{}", stderr(&out));

    // Once messages went out (at most 60 s), SIGTERM with a 10 s grace period: the report lands
    // on the mounted folder.
    let sent = || {
        http_get(&admin_addr, "/metrics").1.lines().any(|l| {
            l.starts_with("iot_sim_messages_sent_total{")
                && l.contains("status=\"ok\"")
                && !l.ends_with(" 0")
        })
    };
    let t0 = Instant::now();
    while !sent() {
        assert!(t0.elapsed() < Duration::from_secs(60), "no message sent:\n{}", logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    let stopping = Instant::now();
    ok(&["stop", "-t", "10", &name], 60);
    let stop_s = stopping.elapsed().as_secs_f64();
    let code = ok(&["inspect", "--format", "{{.State.ExitCode}}", &name], 60);
    // 0, not 137: it exited within the grace period instead of being killed.
    assert_eq!(code, "0", "exit code after SIGTERM:\n{}", logs());
    let report_path = data.join("iot-sim-report/report.json");
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&report_path)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", report_path.display(), logs())),
    )
    .unwrap();
    assert_eq!(report["seed"], 42, "IOT_SIM_RUN_SEED reached the container");
    assert_eq!(report["devices"], 30, "20 from the mounted fleet file + 10 spawned");
    assert!(report["messages"].as_u64().unwrap_or(0) > 0, "{report}");
    drop(container);

    // A missing mounted fleet file: exit 2, the path named.
    let mut args: Vec<&str> = vec!["run", "--rm"];
    args.extend_from_slice(RUN_FLAGS);
    args.extend_from_slice(&[IMAGE, "validate", "--config", "/config/missing.toml"]);
    let out = podman(&args, 120);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("/config/missing.toml"), "{}", stderr(&out));

    println!(
        "container: image {IMAGE} size {:.1} MiB (binary {:.1} MiB, debug build, debug info \
         stripped), build {build_s:.1} s, start to ready {:.2} s, SIGTERM to exit {stop_s:.2} s",
        size as f64 / 1048576.0,
        binary as f64 / 1048576.0,
        ready.as_secs_f64()
    );
}
