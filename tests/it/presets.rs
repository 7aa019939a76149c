//! Platform presets (`[sink.mqtt] preset`): what each one fills, with its source in `config
//! show`, explicit keys winning, the errors, the shipped examples, and a ThingsBoard-preset run
//! against a private Mosquitto that admits only provisioned access tokens.

use crate::common;

use common::mqtt::{Broker, Subscriber};
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A fleet of `count` devices of profile `tb` publishing over MQTT every `interval` (`sink`:
/// the `[sink.mqtt]` body, `profile`: extra profile keys).
fn fleet(sink: &str, profile: &str, count: u32, interval: &str, duration: &str) -> String {
    format!(
        "[run]\nseed = 3\nclock = \"realtime\"\nduration = \"{duration}\"\n\n[sink.mqtt]\n{sink}\n\n\
         [[fleet]]\nprofile = \"tb\"\ncount = {count}\nlabels = {{ site = \"berlin\" }}\n\n\
         [profiles.tb]\nprotocol = \"mqtt\"\ninterval = \"{interval}\"\n{profile}\n\n\
         [profiles.tb.fields.temperature]\ntype = \"gaussian\"\nmean = 21.0\nstddev = 0.5\n\
         decimals = 1\n\n[profiles.tb.fields.door]\ntype = \"markov\"\nstates = [\"open\", \
         \"closed\"]\ntransition_matrix = [[0.5, 0.5], [0.5, 0.5]]\n"
    )
}

/// `iot-sim config show --config` of `toml` (written to `dir`), with `env`.
fn show(dir: &Path, toml: &str, env: &[(&str, &str)]) -> std::process::Output {
    let cfg = dir.join("fleet.toml");
    std::fs::write(&cfg, toml).unwrap();
    let mut c = bin();
    c.args(["config", "show", "--config", cfg.to_str().unwrap()]).envs(env.iter().copied());
    command_within(c, 30)
}

/// The line of `text` that starts with `key = `.
fn line<'a>(text: &'a str, key: &str) -> &'a str {
    let want = format!("{key} = ");
    text.lines().find(|l| l.starts_with(&want)).unwrap_or_else(|| panic!("no {key} in:\n{text}"))
}

#[test]
fn config_show_names_the_preset_as_the_source_of_what_it_filled_and_explicit_keys_win() {
    let dir = tempfile::tempdir().unwrap();
    let toml = fleet(
        "preset = \"thingsboard\"\nurl = \"mqtt://127.0.0.1:1883\"",
        "format = \"flat\"",
        2,
        "1s",
        "2s",
    );
    let out = show(dir.path(), &toml, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(line(&text, "preset").ends_with("# file"), "{text}");
    assert!(line(&text, "url").ends_with("# file"), "{text}");
    assert!(
        line(&text, "qos").contains("= 1 ") && line(&text, "qos").ends_with("# preset thingsboard"),
        "{text}"
    );
    assert!(line(&text, "retain").ends_with("# default"), "{text}");
    let username = line(&text, "sink.mqtt.per_device.username");
    assert!(
        username.contains("\"{device_id}\"") && username.ends_with("# preset thingsboard"),
        "{text}"
    );
    let topic = line(&text, "profiles.tb.topic");
    assert!(
        topic.contains("\"v1/devices/me/telemetry\"") && topic.ends_with("# preset thingsboard"),
        "{text}"
    );
    assert!(line(&text, "profiles.tb.connection").contains("\"per_device\""), "{text}");
    // The profile's own format wins: no template filled.
    assert!(!text.contains("profiles.tb.template"), "{text}");
    assert!(!text.contains("profiles.tb.format"), "{text}");

    // An explicit key (file or environment) beats the preset.
    let toml = toml.replace("preset = \"thingsboard\"", "preset = \"thingsboard\"\nqos = 0");
    let out = show(dir.path(), &toml, &[("IOT_SIM_SINK_MQTT_RETAIN", "true")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        line(&text, "qos").contains("= 0 ") && line(&text, "qos").ends_with("# file"),
        "{text}"
    );
    assert!(line(&text, "retain").ends_with("# env IOT_SIM_SINK_MQTT_RETAIN"), "{text}");

    // The preset may come from the environment, like any [sink.mqtt] key.
    let toml = fleet("url = \"mqtt://127.0.0.1:1883\"", "", 2, "1s", "2s");
    let out = show(dir.path(), &toml, &[("IOT_SIM_SINK_MQTT_PRESET", "thingsboard")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(line(&text, "preset").ends_with("# env IOT_SIM_SINK_MQTT_PRESET"), "{text}");
    let template = line(&text, "profiles.tb.template");
    assert!(
        template.contains("fields|tojson") && template.ends_with("# preset thingsboard"),
        "{text}"
    );
}

#[test]
fn azure_fills_its_login_and_completes_the_sas_token() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("root.pem");
    std::fs::write(&ca, "placeholder").unwrap();
    let sink = format!(
        "preset = \"azure_iot_hub\"\nhub = \"my-hub\"\nca_file = \"{}\"\n\
         [sink.mqtt.per_device.token]\nsecret_env = \"AZ_TEST_SAS\"",
        ca.display()
    );
    let out = show(dir.path(), &fleet(&sink, "", 2, "1s", "2s"), &[("AZ_TEST_SAS", "c2VjcmV0")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let url = line(&text, "url");
    assert!(url.contains("\"mqtts://my-hub.azure-devices.net:8883\""), "{text}");
    assert!(url.ends_with("# preset azure_iot_hub"), "{text}");
    let user = line(&text, "sink.mqtt.per_device.username");
    assert!(
        user.contains("\"my-hub.azure-devices.net/{device_id}/?api-version=2021-04-12\""),
        "{text}"
    );
    assert!(
        line(&text, "profiles.tb.topic").contains("\"devices/{device_id}/messages/events/\""),
        "{text}"
    );
    // The SAS token's kind and resource complete the user's token table.
    let resource = "\"my-hub.azure-devices.net/devices/{device_id}\"";
    assert!(
        text.lines()
            .any(|l| l.contains("sink.mqtt.per_device.token.resource") && l.contains(resource)),
        "{text}"
    );
}

#[test]
fn preset_problems_are_all_listed_with_path_and_value_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "preset = \"hivemq\"",
            "",
            &[
                "sink.mqtt.preset: unknown preset \"hivemq\"; known presets: aws_iot, azure_iot_hub, thingsboard",
            ],
        ),
        (
            "preset = \"azure_iot_hub\"\nqos = 2",
            "",
            &["sink.mqtt.hub: missing: preset azure_iot_hub needs the IoT hub's name"],
        ),
        (
            "preset = \"azure_iot_hub\"\nhub = \"h!\"\nurl = \"mqtt://h:1883\"",
            "qos = 2",
            &[
                "sink.mqtt.hub: expected an IoT hub name",
                "\"h!\"",
                "sink.mqtt.url: scheme \"mqtt\": Azure IoT Hub takes MQTT over TLS only",
            ],
        ),
        (
            "preset = \"azure_iot_hub\"\nhub = \"hub1\"\nca_file = \"/etc/hostname\"",
            "qos = 2",
            &[
                "profiles.tb.qos: 2: preset azure_iot_hub: Azure IoT Hub has no QoS 2",
                "sink.mqtt.per_device.token: missing: preset azure_iot_hub",
            ],
        ),
        (
            "preset = \"aws_iot\"",
            "",
            &[
                "sink.mqtt.url: missing: preset aws_iot needs your account's AWS IoT Core endpoint",
                "sink.mqtt.per_device.identity: missing: preset aws_iot (profiles tb): AWS IoT Core \
                 authenticates each thing by its own X.509 client certificate",
            ],
        ),
        (
            "preset = \"aws_iot\"\nurl = \"mqtts://x.iot.eu-west-1.amazonaws.com\"\nqos = 2",
            "topic = \"a/b/c/d/e/f/g/h/{device_id}\"",
            &[
                "sink.mqtt.ca_file: missing: preset aws_iot",
                "sink.mqtt.qos: 2: preset aws_iot: AWS IoT Core takes QoS 0 and 1 only",
                "profiles.tb.topic: preset aws_iot: the topic of tb-0002 (fleet[0]) has 23 bytes \
                 and 8 slashes",
            ],
        ),
        (
            "preset = \"thingsboard\"\nhub = \"h\"",
            "",
            &[
                "sink.mqtt.hub: \"h\" is only read with preset = \"azure_iot_hub\", not \"thingsboard\"",
            ],
        ),
    ];
    for (sink, profile, want) in cases {
        let toml = fleet(sink, profile, 3, "1s", "2s");
        let out = validate_within(dir.path(), &toml, 30);
        let e = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{sink}: {e}");
        for w in *want {
            assert!(e.contains(w), "{sink}: missing {w:?} in:\n{e}");
        }
        assert!(!e.contains("panicked"), "{e}");
    }
    // Seven slashes are AWS's most; eight are refused (above). Its own topic fits.
    let ok = fleet(
        "preset = \"aws_iot\"\nurl = \"mqtts://x.iot.eu-west-1.amazonaws.com\"\nca_file = \"/etc/hostname\"",
        "topic = \"a/b/c/d/e/f/g/{device_id}\"",
        3,
        "1s",
        "2s",
    );
    let e = stderr(&validate_within(dir.path(), &ok, 30));
    assert!(!e.contains("profiles.tb.topic"), "{e}");
}

#[test]
fn the_shipped_preset_examples_validate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = bin().args(["validate", "--config", "configs/thingsboard.toml"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // aws_iot and azure_iot_hub name files of the user's (pki/...): given stand-ins here.
    for name in ["aws_iot", "azure_iot_hub"] {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        std::fs::create_dir(&pki).unwrap();
        let ca = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(&pki)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        };
        ca(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=presets test CA",
        ]);
        for root_ca in ["AmazonRootCA1.pem", "DigiCertGlobalRootG2.pem"] {
            std::fs::copy(pki.join("ca.pem"), pki.join(root_ca)).unwrap();
        }
        std::fs::copy(root.join(format!("configs/{name}.toml")), dir.path().join("f.toml"))
            .unwrap();
        let out = bin()
            .args(["validate", "--config", "f.toml"])
            .current_dir(dir.path())
            .env("AZURE_IOT_KEY", "c2VjcmV0")
            .output()
            .unwrap();
        let e = stderr(&out);
        assert!(!e.contains("panicked"), "{e}");
        assert!(out.status.success(), "{name}: {e}");
    }
}

/// A folder the broker (which drops root to its own user) can read.
fn readable_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[test]
fn a_thingsboard_preset_fleet_logs_in_with_its_tokens_and_speaks_thingsboard_json() {
    let dir = readable_dir();
    let d = dir.path();
    // ThingsBoard's devices log in with their access token as the username; here the broker
    // knows the tokens of tb-0000 and tb-0001 (each device's token is its id) and of the
    // subscriber; tb-0002 is not provisioned.
    let pw = d.join("passwd");
    for (i, user) in ["tb-0000", "tb-0001", "observer"].iter().enumerate() {
        let mut cmd = std::process::Command::new("mosquitto_passwd");
        if i == 0 {
            cmd.arg("-c");
        }
        let out = cmd.arg("-b").arg(&pw).arg(user).arg("tb-secret").output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let port = free_port();
    let broker = Broker::with_conf(
        port,
        d,
        &format!("allow_anonymous false\npassword_file {}", pw.display()),
    );
    let sub = Subscriber::start_as(port, "v1/devices/me/telemetry", "observer", "tb-secret");
    let sink = format!(
        "preset = \"thingsboard\"\nurl = \"mqtt://127.0.0.1:{port}\"\nbackoff_initial = \"50ms\"\n\
         backoff_max = \"400ms\"\n[sink.mqtt.per_device]\npassword_env = \"TB_TEST_PASSWORD\""
    );
    let toml = fleet(&sink, "", 3, "200ms", "3s");
    let out = run_env(d, &toml, &["--cores", "1"], &[("TB_TEST_PASSWORD", "tb-secret")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = report(d);
    let ev = &r["sink_events"];
    assert_eq!(ev["mqtt.session_connected"], 2, "{ev}");
    let refused = ev["mqtt.session_refused_not_authorized"].as_u64().unwrap_or(0)
        + ev["mqtt.session_refused_bad_credentials"].as_u64().unwrap_or(0);
    assert!(refused >= 1, "the unprovisioned device is refused and counted: {ev}");
    let log = broker.log();
    for (id, admitted) in [("tb-0000", true), ("tb-0001", true), ("tb-0002", false)] {
        let line = format!("as {id} (");
        let user = format!("u'{id}'");
        assert_eq!(
            log.lines().any(|l| l.contains(&line) && l.contains(&user)),
            admitted,
            "{id}: {log}"
        );
    }
    let row = &r["runs"][0];
    let sent = row["messages"].as_u64().unwrap() as usize;
    assert!(sent >= 2 * 10, "two devices at 5/s for 3 s: {row}");
    let got = sub.wait_for(sent);
    assert_eq!(got.len(), sent, "the subscriber sees what the report says was sent");
    for (topic, payload) in &got {
        assert_eq!(topic, "v1/devices/me/telemetry");
        let v: serde_json::Value = serde_json::from_slice(payload)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(payload)));
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), 2, "{v}");
        assert!(v["ts"].as_u64().is_some_and(|ts| ts > 1_700_000_000_000), "{v}");
        let values = v["values"].as_object().unwrap();
        assert_eq!(values.len(), 2, "{v}");
        assert!(values["temperature"].is_f64(), "{v}");
        assert!(["open", "closed"].contains(&values["door"].as_str().unwrap()), "{v}");
    }
}
