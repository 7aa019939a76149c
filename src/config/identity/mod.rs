//! `[sink.mqtt.per_device.identity]`: a TLS client certificate per device.
//!
//! Either generated (`ca_cert` + `ca_key`: each device's key and certificate made in memory at
//! its session's first connect, signed by the user's CA, reproducible from the run's seed), or
//! pre-provisioned (`cert_file` + `key_file` templates, e.g. `certs/{device_id}.pem`). The CA
//! files are read and checked here, at load: a key that is not the certificate's, a file that
//! cannot be read or holds no usable PEM is a config error like any other.

pub mod x509;

use crate::sim::profile::{TopicPart, TopicTemplate};
use crate::walk::{Problems, Table};
use std::sync::Arc;
pub use x509::{Ca, Issued, KeyKind, Request};

/// Where devices' certificates come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// Generated per device, signed by the CA.
    Generated {
        ca: Arc<Ca>,
        subject_cn: TopicTemplate,
        sans: Vec<TopicTemplate>,
        key: KeyKind,
        validity_ms: u64,
        /// ms since the Unix epoch.
        not_before_ms: u64,
    },
    /// Read per device from these files (PEM certificate chain, PEM private key).
    Files { cert: TopicTemplate, key: TopicTemplate },
}

/// Resolved `[sink.mqtt.per_device.identity]`.
#[derive(Clone, Debug)]
pub struct IdentitySettings {
    pub source: Source,
    /// Threads per runtime that generate keys or read key files (split across shards, at
    /// least one each), so a ramp of many devices never waits on the shard's thread.
    pub workers: usize,
    /// The run's seed (set by the run once it is settled: [`crate::config::SinkSettings::seeded`]).
    pub seed: u64,
}

/// A device's identity, rendered from the templates: what a worker needs to make it.
#[derive(Clone, Debug)]
pub enum DeviceIdentity {
    Generated { device_id: String, common_name: String, sans: Vec<String> },
    Files { cert: String, key: String },
}

impl IdentitySettings {
    /// This device's identity request (templates rendered with `render`).
    pub fn for_device(
        &self,
        device_id: &str,
        render: impl Fn(&TopicTemplate) -> String,
    ) -> DeviceIdentity {
        match &self.source {
            Source::Generated { subject_cn, sans, .. } => DeviceIdentity::Generated {
                device_id: device_id.to_string(),
                common_name: render(subject_cn),
                sans: sans.iter().map(&render).collect(),
            },
            Source::Files { cert, key } => {
                DeviceIdentity::Files { cert: render(cert), key: render(key) }
            }
        }
    }

    /// Makes (or reads) a device's certificate chain and key: DER certificates (the device's
    /// first) and its PKCS#8 (or other PEM-labelled) key DER. Blocking: run on a worker.
    pub fn materialize(&self, d: &DeviceIdentity) -> Result<Material, String> {
        match (&self.source, d) {
            (
                Source::Generated { ca, key, validity_ms, not_before_ms, .. },
                DeviceIdentity::Generated { device_id, common_name, sans },
            ) => {
                let issued = ca.issue(&Request {
                    seed: self.seed,
                    device_id,
                    common_name,
                    sans,
                    key: *key,
                    not_before_ms: *not_before_ms,
                    validity_ms: *validity_ms,
                })?;
                Ok(Material {
                    chain: vec![issued.cert_der.clone(), ca.cert_der.clone()],
                    key: issued.key_der.clone(),
                    issued: Some(issued),
                })
            }
            (_, DeviceIdentity::Files { cert, key }) => read_files(cert, key),
            _ => Err("identity source and request differ".into()),
        }
    }
}

/// A device's certificate chain and private key.
#[derive(Clone, Debug)]
pub struct Material {
    /// DER certificates, the device's first.
    pub chain: Vec<Vec<u8>>,
    /// PKCS#8 DER private key.
    pub key: Vec<u8>,
    /// What was generated (none for files).
    pub issued: Option<Issued>,
}

fn read_files(cert: &str, key: &str) -> Result<Material, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Result<Vec<_>, _> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cert_file {cert}: {e}"))?
        .map(|c| c.map(|c| c.to_vec()))
        .collect();
    let chain = chain.map_err(|e| format!("cert_file {cert}: {e}"))?;
    if chain.is_empty() {
        return Err(format!("cert_file {cert}: no certificate in it"));
    }
    let k = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("key_file {key}: {e}"))?;
    Ok(Material { chain, key: k.secret_der().to_vec(), issued: None })
}

fn template(t: &mut Table<'_>, key: &str, p: &mut Problems) -> Option<TopicTemplate> {
    let s = t.str(key, p)?;
    match TopicTemplate::parse(s) {
        Ok(tpl) => Some(tpl),
        Err(e) => {
            p.add(t.path_of(key), e);
            None
        }
    }
}

/// A template that must name the device (two devices with one identity are one to a broker).
fn device_template(
    t: &mut Table<'_>,
    key: &str,
    what: &str,
    p: &mut Problems,
) -> Option<TopicTemplate> {
    let tpl = template(t, key, p)?;
    if !tpl.parts.contains(&TopicPart::DeviceId) {
        p.add(
            t.path_of(key),
            format!(
                "must contain {{device_id}} ({what} must be unique per device), got {:?}",
                tpl.source
            ),
        );
    }
    Some(tpl)
}

fn read_text(t: &Table<'_>, key: &str, path: &str, p: &mut Problems) -> Option<String> {
    match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(s) => Some(s),
            Err(_) => {
                p.add(t.path_of(key), format!("{path:?} is not PEM text"));
                None
            }
        },
        Err(e) => {
            p.add(t.path_of(key), format!("cannot read {path:?}: {e}"));
            None
        }
    }
}

/// Today's UTC midnight: the default `not_before`.
fn today_ms() -> u64 {
    let now = crate::measure::clock::wall_us() / 1000;
    now - now % 86_400_000
}

/// The longest `validity`: 100 years.
const MAX_VALIDITY_MS: u64 = 100 * 365 * 86_400_000;

/// Compiles `[sink.mqtt.per_device.identity]`; every problem is added with its path and value.
pub fn compile(mut t: Table<'_>, p: &mut Problems) -> Option<IdentitySettings> {
    let before = p.0.len();
    let ca_cert = t.str("ca_cert", p);
    let ca_key = t.str("ca_key", p);
    let subject_cn = device_template(&mut t, "subject_cn", "subjects", p);
    let mut sans = vec![];
    if let Some(list) = t.array("sans", p) {
        let path = t.path_of("sans");
        for (i, v) in list.iter().enumerate() {
            match v.as_str().map(TopicTemplate::parse) {
                Some(Ok(tpl)) => sans.push(tpl),
                Some(Err(e)) => p.add(format!("{path}[{i}]"), e),
                None => p.add(
                    format!("{path}[{i}]"),
                    format!("expected a string, got {}", crate::walk::show(v)),
                ),
            }
        }
    }
    let key = match t.str("key", p) {
        None => Some(KeyKind::EcdsaP256),
        Some(s) => match KeyKind::parse(s) {
            Some(k) => Some(k),
            None => {
                p.add(
                    t.path_of("key"),
                    format!("unknown key type {s:?}; expected {}", KeyKind::NAMES.join(" or ")),
                );
                None
            }
        },
    };
    let validity_ms = match t.duration_ms("validity", p) {
        None => 30 * 86_400_000,
        Some(0) => {
            p.add(t.path_of("validity"), "must be longer than 0, got \"0\"");
            0
        }
        Some(ms) if ms > MAX_VALIDITY_MS => {
            p.add(t.path_of("validity"), format!("must be at most 36500d, got {ms}ms"));
            0
        }
        Some(ms) => ms,
    };
    let not_before_ms = match t.get("not_before") {
        None => today_ms(),
        Some(v) => {
            let text = match v {
                toml::Value::Datetime(d) => d.to_string(),
                other => other.as_str().unwrap_or_default().to_string(),
            };
            match crate::sim::time::parse_rfc3339(&text) {
                Ok(ms) => ms,
                Err(e) => {
                    p.add(t.path_of("not_before"), format!("{e} (got {})", crate::walk::show(v)));
                    0
                }
            }
        }
    };
    let cert_file = device_template(&mut t, "cert_file", "certificates", p);
    let key_file = device_template(&mut t, "key_file", "keys", p);
    let workers = match t.int("workers", p) {
        None => 2,
        Some(n) if (1..=64).contains(&n) => n as usize,
        Some(n) => {
            p.add(t.path_of("workers"), format!("must be between 1 and 64, got {n}"));
            2
        }
    };
    let generated = ca_cert.is_some() || ca_key.is_some();
    let files = t.has("cert_file") || t.has("key_file");
    let generated_only = ["subject_cn", "sans", "key", "validity", "not_before"];
    let source = if generated && files {
        p.add(
            t.path_of("cert_file"),
            "cert_file/key_file (pre-provisioned) and ca_cert/ca_key (generated) exclude each \
             other: give one pair",
        );
        None
    } else if files {
        for k in generated_only {
            if t.has(k) {
                p.add(t.path_of(k), "applies to generated certificates (ca_cert, ca_key) only");
            }
        }
        match (cert_file, key_file) {
            (Some(cert), Some(key)) => Some(Source::Files { cert, key }),
            (Some(_), None) => {
                p.add(t.path_of("key_file"), "cert_file needs key_file");
                None
            }
            _ => {
                if !t.has("cert_file") {
                    p.add(t.path_of("cert_file"), "key_file needs cert_file");
                }
                None
            }
        }
    } else if generated {
        let cert_text = match ca_cert {
            Some(path) => read_text(&t, "ca_cert", path, p),
            None => {
                p.add(t.path_of("ca_cert"), "ca_key needs ca_cert (the CA's certificate)");
                None
            }
        };
        let key_text = match ca_key {
            Some(path) => read_text(&t, "ca_key", path, p),
            None => {
                p.add(t.path_of("ca_key"), "ca_cert needs ca_key (the CA's private key)");
                None
            }
        };
        let ca = match (cert_text, key_text) {
            (Some(c), Some(k)) => match Ca::from_pem(&c, &k) {
                Ok(ca) => Some(ca),
                Err(errs) => {
                    for (which, msg) in errs {
                        let file = if which == "ca_cert" { ca_cert } else { ca_key };
                        p.add(t.path_of(which), format!("{:?}: {msg}", file.unwrap_or_default()));
                    }
                    None
                }
            },
            (Some(c), None) => {
                // The key could not be read: the certificate is still checked on its own.
                for (which, msg) in Ca::from_pem(&c, "").err().unwrap_or_default() {
                    if which == "ca_cert" {
                        p.add(
                            t.path_of(which),
                            format!("{:?}: {msg}", ca_cert.unwrap_or_default()),
                        );
                    }
                }
                None
            }
            _ => None,
        };
        let subject_cn = subject_cn
            .unwrap_or_else(|| TopicTemplate::parse("{device_id}").expect("valid template"));
        match (ca, key) {
            (Some(ca), Some(key)) => Some(Source::Generated {
                ca: Arc::new(ca),
                subject_cn,
                sans,
                key,
                validity_ms,
                not_before_ms,
            }),
            _ => None,
        }
    } else {
        p.add(
            t.path_of("ca_cert"),
            "an identity needs ca_cert and ca_key (generated certificates) or cert_file and \
             key_file (pre-provisioned ones)",
        );
        None
    };
    t.finish_with(&crate::config::keys::MQTT_IDENTITY.names(), p);
    if p.0.len() > before {
        return None;
    }
    Some(IdentitySettings { source: source?, workers, seed: 0 })
}

impl crate::config::SinkSettings {
    /// These settings with the run's seed given to what derives from it (per-device
    /// certificates).
    pub fn seeded(mut self, seed: u64) -> Self {
        if let Some(m) = &mut self.mqtt
            && let Some(id) = &mut m.per_device.identity
        {
            Arc::make_mut(id).seed = seed;
        }
        self
    }
}

#[cfg(test)]
mod tests;
