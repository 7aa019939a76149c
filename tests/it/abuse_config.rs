//! Abuse of the fleet file and the command line: input a careless user or an attacker could give.
//! Each case once crashed, hung, bloated or silently failed a run (issue 15); every wait here is
//! bounded, so a regression fails instead of hanging CI.

use crate::common;
use crate::common::fleet::Fleet;

use common::{command_within, run_within, stderr, validate_within};
use std::path::Path;

/// A virtual fleet of `count` devices of a 1-field profile on the file sink at `out`.
fn fleet(out: &Path, start: &str, duration: &str, count: u64) -> String {
    Fleet::new()
        .run(1, "virtual", start, duration)
        .sink("file")
        .set("path", out)
        .devices("t", count)
        .profile("t", "file", "1s")
        .gaussian("t", "v", 1, 0.5)
        .toml()
}

#[test]
fn a_start_time_the_clock_cannot_hold_is_refused_and_the_last_hours_still_end() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    // 2^46 ms: every deadline was clamped there, and a 2 s run published forever.
    let far = fleet(&out, "4199-11-24T01:22:57.664Z", "2s", 10);
    let v = validate_within(dir.path(), &far, 20);
    assert_eq!(v.status.code(), Some(2), "{}", stderr(&v));
    assert!(stderr(&v).contains("run.start_time: 4199-11-24T01:22:57.664Z is too far ahead"));
    let r = run_within(dir.path(), &far, &[], 20);
    assert_eq!(r.status.code(), Some(2), "{}", stderr(&r));
    assert!(!out.exists(), "a refused run wrote output");

    // Just before the end of the clock, a 2 s run ends with 2 messages per device.
    let late = fleet(&out, "4099-12-31T23:59:50Z", "2s", 10);
    let r = run_within(dir.path(), &late, &["--cores", "1"], 30);
    assert!(r.status.success(), "{}", stderr(&r));
    let lines = std::fs::read_to_string(&out).unwrap().lines().count();
    assert_eq!(lines, 20);
    // A duration that would cross the end is refused, from the file or the flag.
    let r = run_within(dir.path(), &late, &["--duration", "1h"], 20);
    assert_eq!(r.status.code(), Some(2), "{}", stderr(&r));
    assert!(stderr(&r).contains("--duration: a run of 1h from 4099-12-31T23:59:50.000Z would end"));
}

#[test]
fn nonsense_parameters_and_missing_topic_labels_fail_validate() {
    let dir = tempfile::tempdir().unwrap();
    let base = fleet(&dir.path().join("o.jsonl"), "2026-01-01T00:00:00Z", "10s", 1);
    let cases = [
        ("mean = 1", "mean = nan", "profiles.t.fields.v.mean: must be a finite number, got NaN"),
        ("stddev = 0.5", "stddev = inf", "profiles.t.fields.v.stddev: must be a finite number"),
        (
            "interval = \"1s\"",
            "interval = \"1s\"\ntopic = \"a/{labels.nosuch}\"",
            "uses {labels.nosuch}, which these devices do not have",
        ),
        ("[profiles.t.fields.v]", "[profiles.t.fields.\"\"]", "field name must not be empty"),
    ];
    for (from, to, want) in cases {
        let v = validate_within(dir.path(), &base.replace(from, to), 20);
        assert_eq!(v.status.code(), Some(2), "{to}: {}", stderr(&v));
        assert!(stderr(&v).contains(want), "{to}: {}", stderr(&v));
    }
}

#[test]
fn profile_paths_that_never_end_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.toml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path only.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // /dev/zero was read until memory ran out; a FIFO blocked validate forever.
    for profile in ["/dev/zero", fifo.to_str().unwrap()] {
        let text = format!("[[fleet]]\nprofile = \"{profile}\"\ncount = 1\n");
        let v = validate_within(dir.path(), &text, 20);
        assert_eq!(v.status.code(), Some(2), "{profile}: {}", stderr(&v));
        assert!(stderr(&v).contains("not a regular file"), "{profile}: {}", stderr(&v));
    }
}

/// Runs the binary with its address space limited to `bytes` (RLIMIT_AS).
fn limited(dir: &Path, args: &[&str], bytes: u64) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut cmd = common::bin();
    cmd.args(args).current_dir(dir);
    // SAFETY: setrlimit is async-signal-safe and touches only this child's limits.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit { rlim_cur: bytes, rlim_max: bytes };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command_within(cmd, 60)
}

#[test]
fn a_fleet_too_big_for_the_memory_limit_is_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let text = fleet(&dir.path().join("o.jsonl"), "2026-01-01T00:00:00Z", "1s", 50_000_000);
    let cfg = dir.path().join("fleet.toml");
    std::fs::write(&cfg, text).unwrap();
    let cfg = cfg.to_str().unwrap();
    // 50M devices under a 2 GiB cap aborted with "memory allocation failed" (exit 134).
    let v = limited(dir.path(), &["validate", "--config", cfg], 2 << 30);
    assert_eq!(v.status.code(), Some(2), "{}", stderr(&v));
    assert!(stderr(&v).contains("needs about"), "{}", stderr(&v));
    assert!(stderr(&v).contains("(RLIMIT_AS)"), "{}", stderr(&v));
    let r = limited(dir.path(), &["--config", cfg, "--quiet", "--cores", "1"], 2 << 30);
    assert_eq!(r.status.code(), Some(2), "{}", stderr(&r));
    assert!(stderr(&r).contains("50000000 devices on 1 shards) needs about"), "{}", stderr(&r));
}

#[test]
fn a_directory_as_the_file_path_gets_the_shard_files_inside_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("telemetry");
    std::fs::create_dir(&out).unwrap();
    let r = run_within(
        dir.path(),
        &fleet(&out, "2026-01-01T00:00:00Z", "3s", 10),
        &["--cores", "2"],
        30,
    );
    assert!(r.status.success(), "{}", stderr(&r));
    let mut lines = 0;
    for k in 0..2 {
        let f = out.join(format!("telemetry.shard-{k}.jsonl"));
        lines += std::fs::read_to_string(&f).unwrap().lines().count();
    }
    assert_eq!(lines, 30);
    assert!(!dir.path().join("telemetry.shard-0").exists(), "a file landed beside the directory");
}

#[test]
fn a_device_as_the_file_path_with_several_shards_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let before = Path::new("/dev/full.shard-0").exists();
    let r = run_within(
        dir.path(),
        &fleet(Path::new("/dev/full"), "2026-01-01T00:00:00Z", "3s", 10),
        &["--cores", "2"],
        30,
    );
    assert_eq!(r.status.code(), Some(1), "{}", stderr(&r));
    assert!(stderr(&r).contains("/dev/full is not a regular file"), "{}", stderr(&r));
    assert!(before || !Path::new("/dev/full.shard-0").exists(), "created /dev/full.shard-0");
}

#[test]
fn a_file_sink_that_cannot_write_counts_errors_and_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    // One shard on /dev/full: every write fails; it reported "200 messages, 0 errors", exit 0.
    let r = run_within(
        dir.path(),
        &fleet(Path::new("/dev/full"), "2026-01-01T00:00:00Z", "20s", 10),
        &["--cores", "1"],
        30,
    );
    assert_eq!(r.status.code(), Some(1), "{}", stderr(&r));
    assert!(stderr(&r).contains("the file sink lost 200 messages"), "{}", stderr(&r));
    let report = common::report(dir.path());
    let row = common::sink_row(&report, "file");
    assert_eq!(row["messages"], 0, "{row}");
    assert_eq!(row["errors"], 200, "{row}");
    assert_eq!(row["error_kinds"]["write"], 200, "{row}");
}
