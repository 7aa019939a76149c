//! Layered configuration (file < `IOT_SIM_*` environment < flags), `config show`, `probe` and
//! `--runtime dns:///`, run through the built binary as a user (or a container) would.

use crate::common;
use crate::common::fleet::Fleet;

use common::{Running, bin, command_within, free_port, report, stderr, wait_port};
use iot_sim::control::client::owner;
use std::path::Path;

/// A tiny virtual-clock fleet with seed 7 that writes to `dir`.
fn fleet(dir: &Path) -> std::path::PathBuf {
    Fleet::new()
        .run(7, "virtual", "2026-03-14T22:30:00Z", "1m")
        .set("report_dir", dir.join("report"))
        .sink("file")
        .set("path", dir.join("out.jsonl"))
        .devices("t", 3)
        .profile("t", "file", "10s")
        .gaussian("t", "x", 1.0, 0.1)
        .write(dir.join("fleet.toml"))
}

fn seed_of(dir: &Path) -> u64 {
    report(dir)["seed"].as_u64().expect("report.json has a seed")
}

#[test]
fn the_environment_overrides_the_file_and_flags_override_the_environment() {
    let d = tempfile::tempdir().unwrap();
    let cfg = fleet(d.path());
    let cfg = cfg.to_str().unwrap();
    let run = |env: &[(&str, &str)], extra: &[&str]| {
        let mut c = bin();
        c.args(["--config", cfg, "--quiet"]).args(extra).envs(env.iter().copied());
        let out = command_within(c, 60);
        assert!(out.status.success(), "{}", stderr(&out));
    };
    run(&[], &[]);
    assert_eq!(seed_of(d.path()), 7, "the file's seed");
    run(&[("IOT_SIM_RUN_SEED", "11")], &[]);
    assert_eq!(seed_of(d.path()), 11, "the environment beats the file");
    run(&[("IOT_SIM_RUN_SEED", "11")], &["--seed", "13"]);
    assert_eq!(seed_of(d.path()), 13, "a flag beats the environment");
    // A sink setting from the environment: the file sink writes elsewhere.
    let moved = d.path().join("moved.jsonl");
    run(&[("IOT_SIM_SINK_FILE_PATH", moved.to_str().unwrap()), ("IOT_SIM_RUN_CORES", "1")], &[]);
    assert!(std::fs::read_to_string(&moved).unwrap().lines().count() > 0, "nothing in {moved:?}");
}

#[test]
fn bad_environment_values_are_all_listed_with_the_variable_and_exit_2() {
    let d = tempfile::tempdir().unwrap();
    let cfg = fleet(d.path());
    let mut c = bin();
    c.args(["validate", "--config", cfg.to_str().unwrap()])
        .env("IOT_SIM_RUN_SEED", "twelve")
        .env("IOT_SIM_RUN_CLOCK", "sundial")
        .env("IOT_SIM_SINK_MQTT_QOS", "7");
    let out = command_within(c, 30);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("3 problems"), "{err}");
    assert!(err.contains("IOT_SIM_RUN_SEED (run.seed)") && err.contains("\"twelve\""), "{err}");
    assert!(err.contains("IOT_SIM_RUN_CLOCK (run.clock)") && err.contains("\"sundial\""), "{err}");
    assert!(err.contains("IOT_SIM_SINK_MQTT_QOS (sink.mqtt.qos)"), "{err}");
}

#[test]
fn an_unknown_variable_is_refused_with_the_closest_name_but_existing_ones_stay_valid() {
    let d = tempfile::tempdir().unwrap();
    let cfg = fleet(d.path());
    let mut c = bin();
    c.args(["validate", "--config", cfg.to_str().unwrap()]).env("IOT_SIM_SINK_MQTT_URI", "x");
    let out = command_within(c, 30);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("IOT_SIM_SINK_MQTT_URI") && err.contains("IOT_SIM_SINK_MQTT_URL"),
        "{err}"
    );
    // Variables other modules read are not "unknown".
    let mut c = bin();
    c.args(["validate", "--config", cfg.to_str().unwrap()]);
    for (k, v) in [
        ("IOT_SIM_LOG_FORMAT", "text"),
        ("IOT_SIM_LOG", "info"),
        ("IOT_SIM_MEMORY_LIMIT", "8GiB"),
        ("IOT_SIM_MQTT_USERNAME", "u"),
        ("IOT_SIM_MQTT_PASSWORD", "p"),
        ("IOT_SIM_AMQP_USERNAME", "u"),
        ("IOT_SIM_AMQP_PASSWORD", "p"),
        ("IOT_SIM_HTTP_TOKEN", "t"),
        ("IOT_SIM_ADMIN_TOKEN", "t"),
        ("IOT_SIM_ADMIN_REQUEST_TIMEOUT", "10s"),
        ("IOT_SIM_PROFILES_DIR", "profiles"),
    ] {
        c.env(k, v);
    }
    let out = command_within(c, 30);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn config_show_prints_every_source_and_masks_secrets() {
    let d = tempfile::tempdir().unwrap();
    let cfg = fleet(d.path());
    let mut c = bin();
    c.args(["config", "show", "--config", cfg.to_str().unwrap(), "--cores", "2"])
        .env("IOT_SIM_RUN_SEED", "5")
        .env("IOT_SIM_SINK_AMQP_URL", "amqp://guest@127.0.0.1:5672/%2f")
        .env("IOT_SIM_AMQP_PASSWORD", "hunter2")
        .env("IOT_SIM_ADMIN_TOKEN", "s3cret");
    let out = command_within(c, 30);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |start: &str| {
        text.lines().find(|l| l.starts_with(start)).unwrap_or_else(|| panic!("{start}: {text}"))
    };
    assert!(line("seed = 5").ends_with("# env IOT_SIM_RUN_SEED"), "{text}");
    assert!(line("cores = 2").ends_with("# flag --cores"), "{text}");
    assert!(line("clock = \"virtual\"").ends_with("# file"), "{text}");
    assert!(line("speed = 1.0").ends_with("# default"), "{text}");
    assert!(
        line("url = \"amqp://guest:***@127.0.0.1").ends_with("# env IOT_SIM_SINK_AMQP_URL"),
        "{text}"
    );
    // The password from IOT_SIM_AMQP_PASSWORD is merged into the URL, and masked there too.
    assert!(!text.contains("hunter2") && !text.contains("s3cret"), "{text}");
    assert!(line("exchange = \"iot.telemetry\"").ends_with("# default"), "{text}");
    // An invalid layer fails show as it would fail the run.
    let mut c = bin();
    c.args(["config", "show"]).env("IOT_SIM_RUN_CORES", "0");
    let out = command_within(c, 30);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("IOT_SIM_RUN_CORES (run.cores): must be between 1 and 1024, got 0")
    );
}

#[test]
fn a_missing_fleet_file_names_its_path_and_exits_2() {
    let out = command_within(
        {
            let mut c = bin();
            c.args(["serve", "--config", "/config/no-such-fleet.toml"]);
            c
        },
        30,
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("/config/no-such-fleet.toml"), "{}", stderr(&out));
}

#[test]
fn probe_and_dns_runtimes_reach_a_serving_runtime() {
    let grpc = free_port();
    let mut serve = Running::start(bin().args([
        "serve",
        "--cores",
        "1",
        "--grpc",
        &format!("127.0.0.1:{grpc}"),
        "--admin",
        "127.0.0.1:0",
    ]));
    let admin = serve.admin_addr();
    assert!(wait_port(grpc), "gRPC port {grpc} never opened");
    let probe = |args: &[&str]| {
        let mut c = bin();
        c.arg("probe").args(args);
        command_within(c, 30)
    };
    // Ready within a bounded wait (the shards start after the ports open).
    let mut ok = false;
    for _ in 0..100 {
        if probe(&["--admin", &admin, "--grpc", &format!("127.0.0.1:{grpc}")]).status.success() {
            ok = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(ok, "probe never succeeded: {:?}", serve.lines());
    let closed = free_port();
    let out = probe(&["--admin", &format!("127.0.0.1:{closed}"), "--timeout", "1s"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("not ready"));
    let out = probe(&["--grpc", &format!("127.0.0.1:{closed}"), "--timeout", "1s"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(probe(&[]).status.code(), Some(2));

    // `dns:///localhost:PORT` expands to the runtime behind the name.
    let d = tempfile::tempdir().unwrap();
    let profile = d.path().join("p.toml");
    std::fs::write(
        &profile,
        "protocol = \"null\"\ninterval = \"5s\"\n\n[fields.x]\ntype = \"gaussian\"\nmean = 1.0\nstddev = 0.5\n",
    )
    .unwrap();
    let rt = format!("dns:///localhost:{grpc}");
    let mut c = bin();
    c.args(["spawn", "--profile", profile.to_str().unwrap(), "--count", "5", "-r", &rt]);
    let out = command_within(c, 60);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut c = bin();
    c.args(["status", "-r", &rt]);
    let out = command_within(c, 60);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("Total devices: 5"), "{text}");
    assert!(text.contains(&format!("Runtime 127.0.0.1:{grpc}")), "{text}");
    let mut c = bin();
    c.args(["status", "-r", "dns:///no-such-runtime.invalid:50051"]);
    let out = command_within(c, 60);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no-such-runtime.invalid"), "{}", stderr(&out));

    // The Kubernetes Job's command: a scenario run against `dns:///` (here one runtime).
    let sc = d.path().join("sc.toml");
    std::fs::write(
        &sc,
        "name = \"dns\"\nduration = \"2s\"\n\n[profiles.q]\nprotocol = \"null\"\n\
         interval = \"1s\"\n[profiles.q.fields.x]\ntype = \"gaussian\"\nmean = 1.0\n\
         stddev = 0.1\n\n[[step]]\nat = \"0s\"\nspawn = { profile = \"q\", count = 4 }\n",
    )
    .unwrap();
    let mut c = bin();
    c.args(["scenario", "run", sc.to_str().unwrap(), "--runtime", &rt, "--quiet"])
        .arg("--report-dir")
        .arg(d.path().join("sc-report"));
    let out = command_within(c, 60);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut c = bin();
    c.args(["status", "-r", &rt]);
    let out = command_within(c, 60);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Total devices: 9"), "{text}");
    let mut c = bin();
    c.args(["scenario", "run", sc.to_str().unwrap(), "-r", "dns:///no-such-runtime.invalid:1"]);
    let out = command_within(c, 60);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    // A runtime down among several: the command fails naming it (UNAVAILABLE after the
    // retries); the live runtime got its share of the devices and keeps running.
    let live = format!("127.0.0.1:{grpc}");
    let dead = format!("127.0.0.1:{}", free_port());
    let mut c = bin();
    c.args(["spawn", "--profile", profile.to_str().unwrap(), "--count", "20", "--offset", "1000"])
        .args(["-r", &format!("{live},{dead}")]);
    let out = command_within(c, 60);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("runtime {dead} is unavailable")), "{}", stderr(&out));
    let addrs = vec![live.clone(), dead.clone()];
    let mine = (1000..1020).filter(|i| owner(&addrs, &format!("p-{i:04}")) == 0).count();
    let mut c = bin();
    c.args(["status", "-r", &live]);
    let out = command_within(c, 60);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("Total devices: {}", 9 + mine)), "{mine}: {text}");
    assert!(serve.stop().success());
}
