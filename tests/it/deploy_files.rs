//! The deployment files, checked offline: `deploy/compose.yaml` (docker-compose config), the
//! Prometheus config (promtool), the Kubernetes manifests against their schemas
//! (`kubernetes-validate` from PyPI, in a venv under target/), and what the schemas cannot
//! see: the ConfigMap's files are deploy/config's and iot-sim accepts them; the StatefulSet's
//! CPU requests equal its limits in whole CPUs and match `--cores`.

use crate::common;

use common::{bin, command_within, stderr};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tool(name: &str) -> Command {
    assert!(
        Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .is_ok_and(|o| o.status.success()),
        "{name} is not installed: scripts/services.sh installs it"
    );
    Command::new(name)
}

#[test]
fn the_compose_file_is_valid_and_needs_an_admin_token() {
    let mut c = tool("docker-compose");
    c.current_dir(repo()).args(["-f", "deploy/compose.yaml", "config", "--services"]);
    c.env("IOT_SIM_ADMIN_TOKEN", "t");
    let out = command_within(c, 120);
    assert!(out.status.success(), "{}", stderr(&out));
    let services = String::from_utf8_lossy(&out.stdout);
    for s in ["iot-sim", "mosquitto", "rabbitmq", "prometheus", "grafana"] {
        assert!(services.lines().any(|l| l == s), "no service {s}: {services}");
    }
    // Without a token the admin server could not start beyond loopback: compose says so.
    let mut c = tool("docker-compose");
    c.current_dir(repo()).args(["-f", "deploy/compose.yaml", "config", "--quiet"]);
    c.env_remove("IOT_SIM_ADMIN_TOKEN");
    let out = command_within(c, 120);
    assert!(!out.status.success() && stderr(&out).contains("IOT_SIM_ADMIN_TOKEN"));
    // Every file the stack mounts exists, and the mounted fleet is valid.
    let text = std::fs::read_to_string(repo().join("deploy/compose.yaml")).unwrap();
    for m in text.lines().filter_map(|l| l.trim().strip_prefix("- ./")) {
        let host = m.split(':').next().unwrap();
        assert!(repo().join("deploy").join(host).exists(), "compose mounts missing {host}");
    }
    let mut c = bin();
    c.args(["validate", "--config"]).arg(repo().join("deploy/config/fleet.toml"));
    let out = command_within(c, 60);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn the_prometheus_config_passes_promtool() {
    let mut c = tool("promtool");
    c.args(["check", "config"]).arg(repo().join("deploy/compose/prometheus.yml"));
    let out = command_within(c, 60);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
}

/// A venv under target/ with kubernetes-validate (pinned), made once.
fn venv() -> PathBuf {
    let dir = repo().join("target/k8s-venv");
    let exe = dir.join("bin/kubernetes-validate");
    if exe.exists() {
        return dir;
    }
    let mut c = tool("python3");
    c.args(["-m", "venv"]).arg(&dir);
    let out = command_within(c, 120);
    assert!(out.status.success(), "python3 -m venv: {}", stderr(&out));
    let mut c = Command::new(dir.join("bin/pip"));
    c.args(["install", "--quiet", "kubernetes-validate==1.37.0"]);
    let out = command_within(c, 300);
    assert!(out.status.success(), "pip install kubernetes-validate: {}", stderr(&out));
    dir
}

/// The manifests of one file as JSON (PyYAML comes with kubernetes-validate).
fn manifests(venv: &Path, file: &str) -> Vec<serde_json::Value> {
    let mut c = Command::new(venv.join("bin/python"));
    c.args([
        "-c",
        "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
    ])
    .arg(repo().join("deploy/k8s").join(file));
    let out = command_within(c, 60);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_kubernetes_manifests_match_their_schemas_and_iot_sims_rules() {
    let venv = venv();
    let files =
        ["namespace.yaml", "configmap.yaml", "service.yaml", "statefulset.yaml", "job.yaml"];
    let mut c = Command::new(venv.join("bin/kubernetes-validate"));
    c.current_dir(repo().join("deploy/k8s")).args(["--strict", "-k", "1.30.0"]).args(files);
    let out = command_within(c, 120);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches(" passed for resource ").count(), files.len(), "{text}");

    // The ConfigMap holds deploy/config's files, which iot-sim accepts.
    let cm = &manifests(&venv, "configmap.yaml")[0]["data"];
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("profiles")).unwrap();
    for (key, file) in [
        ("fleet.toml", "fleet.toml"),
        ("thermostat.toml", "profiles/thermostat.toml"),
        ("scenario.toml", "scenario.toml"),
    ] {
        let text = cm[key].as_str().unwrap_or_else(|| panic!("ConfigMap has no {key}"));
        let want = std::fs::read_to_string(repo().join("deploy/config").join(file)).unwrap();
        assert_eq!(text, want, "ConfigMap {key} differs from deploy/config/{file}");
        std::fs::write(dir.path().join(file), text).unwrap();
    }
    let mut c = bin();
    c.args(["scenario", "validate"])
        .arg(dir.path().join("scenario.toml"))
        .arg("--config")
        .arg(dir.path().join("fleet.toml"));
    let out = command_within(c, 60);
    assert!(out.status.success(), "{}", stderr(&out));

    // Whole CPUs, requests == limits (Guaranteed QoS: the static CPU manager pins them),
    // and one shard per CPU.
    let sts = &manifests(&venv, "statefulset.yaml")[0];
    let pod = &sts["spec"]["template"]["spec"];
    assert_eq!(pod["enableServiceLinks"], false, "service links inject IOT_SIM_* variables");
    let c = &pod["containers"][0];
    let res = &c["resources"];
    assert_eq!(res["requests"], res["limits"], "requests must equal limits");
    let cpus: u32 = res["limits"]["cpu"].as_str().unwrap().parse().expect("a whole CPU count");
    let args: Vec<&str> = c["args"].as_array().unwrap().iter().filter_map(|a| a.as_str()).collect();
    let cores = args.iter().position(|a| *a == "--cores").map(|i| args[i + 1]);
    assert_eq!(cores, Some(cpus.to_string().as_str()), "{args:?}");
    let ann = &sts["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], "9090");
    let svc = &manifests(&venv, "service.yaml")[0];
    assert_eq!(svc["spec"]["clusterIP"], "None", "the Service must be headless");

    // The Job reaches every pod through the headless Service's name.
    let job = &manifests(&venv, "job.yaml")[0]["spec"]["template"]["spec"];
    let args = job["containers"][0]["args"].to_string();
    let svc_name = format!(
        "dns:///{}.{}.svc.cluster.local:50051",
        svc["metadata"]["name"].as_str().unwrap(),
        svc["metadata"]["namespace"].as_str().unwrap()
    );
    assert!(args.contains(&svc_name), "{args}");
    assert_eq!(job["enableServiceLinks"], false);
}
