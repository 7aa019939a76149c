//! `iot-sim certs issue --config F --out DIR [--seed N]`: every per-device session's
//! certificate and key, as a run with that seed would make them (`[sink.mqtt.per_device.identity]`
//! with `ca_cert` and `ca_key`; a Sparkplug edge node's session is the node's: one per node, named
//! by the node's id), written as PEM files with a CSV manifest, so the same
//! identities can be registered in a platform ahead of a test (bulk registration).
//!
//! DIR gets `ca.pem` (the CA certificate), `DEVICE.pem` and `DEVICE.key` per device (the id
//! with characters other than letters, digits, `.`, `_` and `-` written as `_`) and
//! `manifest.csv`: device_id, client_id, subject, serial, fingerprint_sha256, not_after,
//! cert_path, key_path.

use super::exit;
use crate::config::Overrides;
use crate::config::identity::{DeviceIdentity, Source};
use clap::{Args, Subcommand};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum CertsCmd {
    /// Write every per-device session's certificate and key (PEM) and a CSV manifest.
    Issue(IssueArgs),
}

#[derive(Args, Debug)]
pub struct IssueArgs {
    /// The fleet file (TOML) with [sink.mqtt.per_device.identity] ca_cert and ca_key.
    #[arg(short, long, value_name = "FILE")]
    pub config: PathBuf,
    /// Where the files go (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The run's seed (default: the file's [run] seed; without one, a random seed, printed):
    /// a run with this seed presents these certificates.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
}

/// A file name for a device id.
fn file_stem(id: &str) -> String {
    id.chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .collect()
}

fn csv(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

struct Device {
    id: String,
    client_id: String,
    identity: DeviceIdentity,
}

pub fn main(cmd: &CertsCmd) -> anyhow::Result<i32> {
    let CertsCmd::Issue(a) = cmd;
    let config = match super::load(&a.config, &Overrides::default()) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let identity = config.sinks.mqtt.as_ref().and_then(|m| m.per_device.identity.clone());
    let Some(identity) = identity.filter(|i| matches!(i.source, Source::Generated { .. })) else {
        eprintln!(
            "error: {}: certs issue needs [sink.mqtt.per_device.identity] with ca_cert and ca_key \
             (generated certificates)",
            a.config.display()
        );
        return Ok(exit::BAD_CONFIG);
    };
    let Some(mqtt) = &config.sinks.mqtt else { return Ok(exit::BAD_CONFIG) };
    let seed = match a.seed.or(config.run.seed) {
        Some(s) => s,
        None => {
            let s = crate::run::random_seed();
            eprintln!(
                "seed: {s} (chosen at random; run with --seed {s} to present these certificates)"
            );
            s
        }
    };
    let mut identity = (*identity).clone();
    identity.seed = seed;
    let fleet = &config.fleet;
    let mut devices = vec![];
    let mut id = String::new();
    // A Sparkplug profile's sessions are its edge nodes': one identity per node (as a run
    // makes them), named by the node's id.
    let mut nodes = std::collections::HashSet::new();
    for g in &fleet.groups {
        let profile = &fleet.profiles[g.profile];
        if !profile.delivery.per_device {
            continue;
        }
        let render_as = |id: &str, t: &crate::sim::profile::TopicTemplate| {
            let mut out = vec![];
            t.render(&mut out, id, &profile.device_type, &g.labels);
            String::from_utf8_lossy(&out).into_owned()
        };
        for i in 0..g.count {
            g.device_id(profile, i, &mut id);
            let client_id = match profile.format.sparkplug() {
                Some(spec) => {
                    let node = render_as(&id, &spec.edge_node);
                    let client_id = format!("spb-{}-{node}", spec.group_id);
                    if !nodes.insert(client_id.clone()) {
                        continue;
                    }
                    id = node;
                    client_id
                }
                None => render_as(&id, &mqtt.per_device.client_id),
            };
            devices.push(Device {
                id: id.clone(),
                client_id,
                identity: identity.for_device(&id, |t| render_as(&id, t)),
            });
        }
    }
    if devices.is_empty() {
        eprintln!(
            "error: {}: no profile has connection = \"per_device\": no device has a session",
            a.config.display()
        );
        return Ok(exit::BAD_CONFIG);
    }
    std::fs::create_dir_all(&a.out)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", a.out.display()))?;
    let Source::Generated { ca, .. } = &identity.source else { return Ok(exit::BAD_CONFIG) };
    std::fs::write(
        a.out.join("ca.pem"),
        crate::config::identity::x509::pem("CERTIFICATE", &ca.cert_der),
    )?;
    let rows = issue_all(&identity, &devices, &a.out)?;
    let mut manifest = std::io::BufWriter::new(std::fs::File::create(a.out.join("manifest.csv"))?);
    writeln!(
        manifest,
        "device_id,client_id,subject,serial,fingerprint_sha256,not_after,cert_path,key_path"
    )?;
    for row in &rows {
        writeln!(manifest, "{row}")?;
    }
    manifest.flush()?;
    println!(
        "{} certificates (seed {seed}) in {}: manifest.csv, ca.pem, DEVICE.pem, DEVICE.key",
        rows.len(),
        a.out.display()
    );
    Ok(exit::OK)
}

/// Issues and writes every device's files on all cores; returns the manifest rows in order.
fn issue_all(
    identity: &crate::config::identity::IdentitySettings,
    devices: &[Device],
    out: &Path,
) -> anyhow::Result<Vec<String>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(devices.len());
    let chunk = devices.len().div_ceil(threads);
    let parts: Vec<anyhow::Result<Vec<String>>> = std::thread::scope(|s| {
        let handles: Vec<_> = devices
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || -> anyhow::Result<Vec<String>> {
                    part.iter().map(|d| issue_one(identity, d, out)).collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a worker failed"))))
            .collect()
    });
    let mut rows = Vec::with_capacity(devices.len());
    for p in parts {
        rows.extend(p?);
    }
    Ok(rows)
}

fn issue_one(
    identity: &crate::config::identity::IdentitySettings,
    d: &Device,
    out: &Path,
) -> anyhow::Result<String> {
    let m = identity.materialize(&d.identity).map_err(|e| anyhow::anyhow!("{}: {e}", d.id))?;
    let Some(issued) = &m.issued else { anyhow::bail!("{}: not generated", d.id) };
    let stem = file_stem(&d.id);
    let cert_path = out.join(format!("{stem}.pem"));
    let key_path = out.join(format!("{stem}.key"));
    std::fs::write(&cert_path, crate::config::identity::x509::pem("CERTIFICATE", &issued.cert_der))
        .map_err(|e| anyhow::anyhow!("{}: {e}", cert_path.display()))?;
    write_key(&key_path, &issued.key_pem)?;
    let fingerprint: String = ring::digest::digest(&ring::digest::SHA256, &issued.cert_der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok([
        csv(&d.id),
        csv(&d.client_id),
        csv(&issued.subject),
        issued.serial_hex.clone(),
        fingerprint,
        issued.not_after.clone(),
        csv(&cert_path.display().to_string()),
        csv(&key_path.display().to_string()),
    ]
    .join(","))
}

/// Writes a private key readable by its owner only.
fn write_key(path: &Path, pem: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    f.write_all(pem.as_bytes())?;
    Ok(())
}
