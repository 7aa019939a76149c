//! A client no one here wrote: Python `grpcio` stubs generated from `proto/` at test time (in a
//! venv under target/, created once by `tests/python/setup_venv.sh`) drive `iot-sim serve`:
//! spawn, a fault by label selector, the telemetry stream, the fault's effect in the points.
//!
//! Needs python3 and PyPI on the first run; if the venv cannot be built the test FAILS (it
//! never skips), printing pip's output.

use crate::common::Running;

use std::process::Command;

#[test]
fn python_grpcio_client_spawns_injects_a_fault_and_reads_the_stream() {
    let root = env!("CARGO_MANIFEST_DIR");
    let gen_dir = tempfile::tempdir().unwrap();
    let setup = Command::new(format!("{root}/tests/python/setup_venv.sh"))
        .arg(gen_dir.path())
        .output()
        .expect("run tests/python/setup_venv.sh");
    assert!(
        setup.status.success(),
        "building the Python venv (grpcio, grpcio-tools) or generating the stubs failed:\n{}\n{}",
        String::from_utf8_lossy(&setup.stdout),
        String::from_utf8_lossy(&setup.stderr)
    );
    let python = String::from_utf8(setup.stdout).unwrap().trim().to_string();

    let rt = Running::grpc(&["serve", "--cores", "2", "--grpc", "127.0.0.1:0", "--quiet"]);
    let out = Command::new(&python)
        .arg(format!("{root}/tests/python/client.py"))
        .arg(gen_dir.path())
        .arg(&rt.addr)
        .output()
        .expect("run the Python client");
    assert!(
        out.status.success(),
        "the Python client failed:\n{}\n{}\nserver:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        rt.stderr.lock().unwrap()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("python client: ok"));
}
