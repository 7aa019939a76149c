use super::*;

fn compile_text(text: &str) -> (Option<IdentitySettings>, Vec<String>) {
    let table: toml::Table = toml::from_str(text).unwrap();
    let mut p = Problems::default();
    let s = compile(Table::new("sink.mqtt.per_device.identity", &table), &mut p);
    (s, p.0.iter().map(|e| e.to_string()).collect())
}

fn ca_files(dir: &std::path::Path, seed: u64) -> (String, String) {
    let (cert, key) = x509::test_ca(seed);
    let c = dir.join(format!("ca{seed}.pem"));
    let k = dir.join(format!("ca{seed}.key"));
    std::fs::write(&c, cert).unwrap();
    std::fs::write(&k, key).unwrap();
    (c.display().to_string(), k.display().to_string())
}

#[test]
fn generated_identities_compile_with_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = ca_files(dir.path(), 1);
    let (s, errs) = compile_text(&format!("ca_cert = {c:?}\nca_key = {k:?}\n"));
    assert!(errs.is_empty(), "{errs:?}");
    let s = s.unwrap();
    let Source::Generated { subject_cn, key, validity_ms, .. } = &s.source else {
        panic!("generated expected")
    };
    assert_eq!(subject_cn.source, "{device_id}");
    assert_eq!(*key, KeyKind::EcdsaP256);
    assert_eq!(*validity_ms, 30 * 86_400_000);
}

#[test]
fn two_loads_with_one_seed_issue_the_same_certificates_and_another_seed_differs() {
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = ca_files(dir.path(), 1);
    let text = format!(
        "ca_cert = {c:?}\nca_key = {k:?}\nsubject_cn = \"dev-{{device_id}}\"\n\
         sans = [\"{{device_id}}.devices.example\"]\nnot_before = 2026-01-01T00:00:00Z\n"
    );
    let issue = |seed: u64| {
        let (s, errs) = compile_text(&text);
        assert!(errs.is_empty(), "{errs:?}");
        let s = crate::config::identity::IdentitySettings { seed, ..s.unwrap() };
        let d = s.for_device("sensor-7", |t| {
            let mut out = vec![];
            t.render(&mut out, "sensor-7", "sensor", &Default::default());
            String::from_utf8(out).unwrap()
        });
        s.materialize(&d).unwrap()
    };
    let (a, b, other) = (issue(42), issue(42), issue(43));
    assert_eq!(a.chain, b.chain);
    assert_eq!(a.key, b.key);
    assert_ne!(a.chain[0], other.chain[0]);
    assert_ne!(a.key, other.key);
    let issued = a.issued.unwrap();
    assert_eq!(issued.subject, "CN=dev-sensor-7");
    assert_eq!(issued.not_after, "2026-01-31T00:00:00.000Z");
}

#[test]
fn every_bad_identity_value_is_reported_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let (c1, _) = ca_files(dir.path(), 1);
    let (_, k2) = ca_files(dir.path(), 2);
    let (_, errs) = compile_text(&format!(
        "ca_cert = {c1:?}\nca_key = {k2:?}\nsubject_cn = \"fleet\"\nkey = \"ed448\"\n\
         validity = \"a month\"\nsans = [3]\nworkers = 0\n"
    ));
    let all = errs.join("\n");
    for want in [
        "sink.mqtt.per_device.identity.ca_key: ",
        "does not match ca_cert",
        "sink.mqtt.per_device.identity.subject_cn: must contain {device_id}",
        "got \"fleet\"",
        "sink.mqtt.per_device.identity.key: unknown key type \"ed448\"; expected ecdsa_p256 or rsa_2048",
        "sink.mqtt.per_device.identity.validity: ",
        "\"a month\"",
        "sink.mqtt.per_device.identity.sans[0]: expected a string, got 3",
        "sink.mqtt.per_device.identity.workers: must be between 1 and 64, got 0",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
}

#[test]
fn unreadable_and_malformed_pem_and_both_sources_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not pem at all").unwrap();
    let missing = dir.path().join("missing.key");
    let (_, errs) = compile_text(&format!("ca_cert = {junk:?}\nca_key = {missing:?}\n"));
    let all = errs.join("\n");
    assert!(all.contains("sink.mqtt.per_device.identity.ca_key: cannot read"), "{all}");
    assert!(all.contains("missing.key"), "{all}");
    let (c, k) = ca_files(dir.path(), 1);
    let (_, errs) = compile_text(&format!("ca_cert = {junk:?}\nca_key = {k:?}\n"));
    let all = errs.join("\n");
    assert!(
        all.contains("sink.mqtt.per_device.identity.ca_cert: ")
            && all.contains("no PEM CERTIFICATE"),
        "{all}"
    );
    let (_, errs) = compile_text(&format!(
        "ca_cert = {c:?}\nca_key = {k:?}\ncert_file = \"certs/{{device_id}}.pem\"\n\
         key_file = \"certs/{{device_id}}.key\"\n"
    ));
    assert!(errs.join("\n").contains("exclude each other"), "{errs:?}");
    let (_, errs) = compile_text("cert_file = \"certs/all.pem\"\n");
    let all = errs.join("\n");
    assert!(all.contains("cert_file: must contain {device_id}"), "{all}");
    assert!(all.contains("key_file: cert_file needs key_file"), "{all}");
    let (_, errs) = compile_text("");
    assert!(errs.join("\n").contains("an identity needs ca_cert and ca_key"), "{errs:?}");
}
