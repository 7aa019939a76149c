//! `[sink.mqtt.per_device.token]`: a password that expires. Each per-device session connects
//! with a token made for it at that moment (a JWT, or an Azure IoT Hub SAS token) and, before
//! the token expires, reconnects with a fresh one (`sink::mqtt::token` makes and times them).
//!
//! The signing material is read and checked here, once, at load time: a key file that cannot
//! be read or parsed, an `alg` the key cannot sign, an unset variable are config problems with
//! their path and value, never a failure at the first connect.

use crate::sim::profile::TopicTemplate;
use crate::walk::{Problems, Table, join, show};
use std::sync::Arc;

/// The shortest `ttl`: a token renewed more often than this is a reconnect storm, not a test.
pub const MIN_TTL_MS: u64 = 60_000;
/// The default `ttl`.
pub const DEFAULT_TTL_MS: u64 = 3_600_000;
/// What a renewal leaves of the token's life at least.
pub const MIN_RENEW_GAP_MS: u64 = 5_000;

/// A JWT signature algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    Hs256,
    Rs256,
    Es256,
}

impl Alg {
    pub fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
        }
    }
}

/// A key that signs JWTs.
#[derive(Clone, Debug)]
pub enum Signer {
    Hmac(ring::hmac::Key),
    Rsa(Arc<ring::signature::RsaKeyPair>),
    Ecdsa(Arc<ring::signature::EcdsaKeyPair>),
}

/// One claim's value: strings are templates (`{device_id}`, `{device_type}`, `{labels.KEY}`).
#[derive(Clone, Debug)]
pub enum Claim {
    Text(TopicTemplate),
    /// A number or a boolean, as is.
    Json(serde_json::Value),
    List(Vec<Claim>),
}

/// What kind of token, with its material.
#[derive(Clone, Debug)]
pub enum TokenKind {
    Jwt {
        alg: Alg,
        signer: Signer,
        /// In the order written (`iat` and `exp` are added from the wall clock).
        claims: Vec<(String, Claim)>,
    },
    /// `SharedAccessSignature sr=…&sig=…&se=…[&skn=…]`.
    Sas {
        /// The shared access key (decoded from base64).
        key: ring::hmac::Key,
        /// `sr`, before URL-encoding: `{hub}.azure-devices.net/devices/{device_id}`.
        resource: TopicTemplate,
        /// `skn`: a shared access policy's name (none for a device key).
        policy: Option<String>,
    },
}

/// Resolved `[sink.mqtt.per_device.token]`.
#[derive(Clone, Debug)]
pub struct TokenSettings {
    pub kind: TokenKind,
    pub ttl_ms: u64,
    /// A session reconnects with a fresh token between `renew_before` and three quarters of
    /// it before its token expires (the point drawn per device and renewal).
    pub renew_before_ms: u64,
}

/// The keys of the table, in the catalogue's order (`config::keys::MQTT_TOKEN`).
const KEYS: &[&str] = &[
    "kind",
    "alg",
    "key_file",
    "secret_env",
    "claims",
    "resource",
    "policy",
    "ttl",
    "renew_before",
];

/// A secret read from the environment variable that `key` names, refusing iot-sim's own
/// namespace like the password keys do.
fn secret(t: &mut Table<'_>, key: &str, p: &mut Problems) -> Option<Vec<u8>> {
    let var = t.str(key, p)?;
    if var.starts_with(super::env::PREFIX) && !super::env::OTHER_VARS.contains(&var) {
        p.add(
            t.path_of(key),
            format!(
                "{var:?}: names starting with {} are iot-sim's own settings; put the secret in a \
                 variable of another name",
                super::env::PREFIX
            ),
        );
        return None;
    }
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v.into_bytes()),
        _ => {
            p.add(
                t.path_of(key),
                format!("environment variable {var:?} holds no secret (unset or empty)"),
            );
            None
        }
    }
}

/// Reads a PEM private key: PKCS#8 (`PRIVATE KEY`: RSA or ECDSA P-256) or PKCS#1
/// (`RSA PRIVATE KEY`).
pub fn load_signing_key(path: &str) -> Result<Signer, String> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let key = PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{path:?}: {e}"))?;
    let rng = ring::rand::SystemRandom::new();
    match &key {
        PrivateKeyDer::Pkcs1(der) => ring::signature::RsaKeyPair::from_der(der.secret_pkcs1_der())
            .map(|k| Signer::Rsa(Arc::new(k)))
            .map_err(|e| format!("{path:?}: not a usable RSA key: {e}")),
        PrivateKeyDer::Pkcs8(der) => {
            let der = der.secret_pkcs8_der();
            if let Ok(k) = ring::signature::EcdsaKeyPair::from_pkcs8(
                &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                der,
                &rng,
            ) {
                return Ok(Signer::Ecdsa(Arc::new(k)));
            }
            ring::signature::RsaKeyPair::from_pkcs8(der).map(|k| Signer::Rsa(Arc::new(k))).map_err(
                |_| format!("{path:?}: neither an RSA key nor an ECDSA P-256 key (PKCS#8)"),
            )
        }
        PrivateKeyDer::Sec1(_) => Err(format!(
            "{path:?}: a SEC1 EC key; convert it to PKCS#8 (openssl pkcs8 -topk8 -nocrypt)"
        )),
        _ => Err(format!("{path:?}: an unsupported private key format")),
    }
}

fn claim(path: &str, v: &toml::Value, p: &mut Problems) -> Option<Claim> {
    match v {
        toml::Value::String(s) => match TopicTemplate::parse(s) {
            Ok(t) => Some(Claim::Text(t)),
            Err(e) => {
                p.add(path, e);
                None
            }
        },
        toml::Value::Integer(i) => Some(Claim::Json((*i).into())),
        toml::Value::Float(f) if f.is_finite() => Some(Claim::Json((*f).into())),
        toml::Value::Boolean(b) => Some(Claim::Json((*b).into())),
        toml::Value::Array(a) => {
            let items: Vec<Option<Claim>> =
                a.iter().enumerate().map(|(i, v)| claim(&format!("{path}[{i}]"), v, p)).collect();
            items.into_iter().collect::<Option<Vec<_>>>().map(Claim::List)
        }
        other => {
            p.add(
                path,
                format!(
                    "expected a string (template), number, boolean or array, got {} {}",
                    crate::walk::type_name(other),
                    show(other)
                ),
            );
            None
        }
    }
}

/// Compiles `[sink.mqtt.per_device.token]`; every problem is added with its path and value.
pub fn compile(mut t: Table<'_>, p: &mut Problems) -> Option<TokenSettings> {
    // Paths for problems found after the keys are checked (`finish_with` takes the table).
    let base = t.path.clone();
    let at = |key: &str| join(&base, key);
    let kind = match t.get("kind") {
        None => {
            p.add(at("kind"), "missing: \"jwt\" or \"sas\" is required");
            None
        }
        Some(toml::Value::String(k)) if k == "jwt" || k == "sas" => Some(k.as_str()),
        Some(other) => {
            p.add(at("kind"), format!("expected \"jwt\" or \"sas\", got {}", show(other)));
            None
        }
    };
    let alg = match t.get("alg") {
        None => None,
        Some(toml::Value::String(a)) if a == "HS256" => Some(Alg::Hs256),
        Some(toml::Value::String(a)) if a == "RS256" => Some(Alg::Rs256),
        Some(toml::Value::String(a)) if a == "ES256" => Some(Alg::Es256),
        Some(other) => {
            p.add(
                at("alg"),
                format!("expected \"HS256\", \"RS256\" or \"ES256\", got {}", show(other)),
            );
            None
        }
    };
    let present: Vec<&str> = KEYS.iter().copied().filter(|k| t.has(k)).collect();
    let has = |k: &str| present.contains(&k);
    let key_file = t.str("key_file", p);
    let secret = secret(&mut t, "secret_env", p);
    let mut claims = vec![];
    let claims_ok = match t.table("claims", p) {
        Some(c) => {
            let mut ok = true;
            for (name, v) in c.table {
                let path = c.path_of(name);
                if name == "iat" || name == "exp" {
                    p.add(&path, format!("set from the wall clock and ttl; got {}", show(v)));
                    ok = false;
                    continue;
                }
                match claim(&path, v, p) {
                    Some(cl) => claims.push((name.clone(), cl)),
                    None => ok = false,
                }
            }
            ok
        }
        None => !has("claims"),
    };
    let resource = match t.str("resource", p).map(TopicTemplate::parse) {
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => {
            p.add(at("resource"), e);
            None
        }
        None => None,
    };
    let policy = t.str("policy", p).map(str::to_string);
    let ttl_ms = match t.duration_ms("ttl", p) {
        Some(ms) if ms < MIN_TTL_MS => {
            p.add(at("ttl"), format!("must be at least 1m, got {ms}ms"));
            None
        }
        Some(ms) => Some(ms),
        None if has("ttl") => None,
        None => Some(DEFAULT_TTL_MS),
    };
    let renew_before_ms = match (t.duration_ms("renew_before", p), ttl_ms) {
        (Some(rb), Some(ttl)) if rb < 1000 || rb + MIN_RENEW_GAP_MS > ttl => {
            p.add(
                at("renew_before"),
                format!(
                    "must be at least 1s and leave at least 5s of the ttl ({ttl}ms), got {rb}ms"
                ),
            );
            None
        }
        (Some(rb), _) => Some(rb),
        (None, Some(ttl)) if !has("renew_before") => Some(ttl / 10),
        (None, _) => None,
    };
    t.finish_with(&super::keys::MQTT_TOKEN.names(), p);
    let kind = match kind? {
        "jwt" => {
            for key in ["resource", "policy"] {
                if has(key) {
                    p.add(at(key), "a kind = \"sas\" key; this token is a jwt");
                }
            }
            let signer = match (key_file, has("secret_env")) {
                (Some(_), true) => {
                    p.add(at("key_file"), "key_file and secret_env exclude each other");
                    None
                }
                (None, false) => {
                    p.add(
                        at("key_file"),
                        "missing: a jwt needs key_file (RS256, ES256) or secret_env (HS256)",
                    );
                    None
                }
                (Some(f), false) => match load_signing_key(f) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        p.add(at("key_file"), e);
                        None
                    }
                },
                (None, true) => {
                    secret.map(|s| Signer::Hmac(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &s)))
                }
            };
            let signer = signer?;
            let fits = match &signer {
                Signer::Hmac(_) => Alg::Hs256,
                Signer::Rsa(_) => Alg::Rs256,
                Signer::Ecdsa(_) => Alg::Es256,
            };
            match alg {
                Some(a) if a != fits => {
                    p.add(
                        at("alg"),
                        format!("the key signs {} only, got {:?}", fits.name(), a.name()),
                    );
                    return None;
                }
                None if has("alg") => return None,
                _ => {}
            }
            if !claims_ok {
                return None;
            }
            TokenKind::Jwt { alg: fits, signer, claims }
        }
        _ => {
            for key in ["alg", "key_file", "claims"] {
                if has(key) {
                    p.add(at(key), "a kind = \"jwt\" key; a sas token is signed with secret_env");
                }
            }
            if !has("secret_env") {
                p.add(
                    at("secret_env"),
                    "missing: a sas token needs the shared access key's variable",
                );
            }
            if !has("resource") {
                p.add(
                    at("resource"),
                    "missing: the resource URI (sr), e.g. \"HUB.azure-devices.net/devices/{device_id}\"",
                );
            }
            let key = match secret {
                Some(s) => {
                    use base64::Engine;
                    match base64::engine::general_purpose::STANDARD.decode(s.trim_ascii()) {
                        Ok(k) => Some(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &k)),
                        Err(e) => {
                            p.add(
                                at("secret_env"),
                                format!("the shared access key is not base64: {e}"),
                            );
                            None
                        }
                    }
                }
                None => None,
            };
            TokenKind::Sas { key: key?, resource: resource?, policy }
        }
    };
    Some(TokenSettings { kind, ttl_ms: ttl_ms?, renew_before_ms: renew_before_ms? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile_text(text: &str) -> (Option<TokenSettings>, Vec<String>) {
        let table: toml::Table = toml::from_str(text).unwrap();
        let mut p = Problems::default();
        let s = compile(Table::new("sink.mqtt.per_device.token", &table), &mut p);
        (s, p.0.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn a_jwt_with_an_env_secret_is_hs256_with_default_ttl_and_renewal() {
        // Any variable that is set serves as the secret (tests do not set variables: the
        // environment is shared by the test threads).
        let (s, p) = compile_text(
            r#"kind = "jwt"
            secret_env = "PATH"
            claims = { sub = "{device_id}", n = 3, ok = true, roles = ["a", "{device_type}"] }"#,
        );
        assert!(p.is_empty(), "{p:?}");
        let s = s.unwrap();
        assert_eq!((s.ttl_ms, s.renew_before_ms), (3_600_000, 360_000));
        let TokenKind::Jwt { alg, claims, .. } = &s.kind else { panic!("{s:?}") };
        assert_eq!(*alg, Alg::Hs256);
        let names: Vec<&str> = claims.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(names, ["n", "ok", "roles", "sub"]);
    }

    #[test]
    fn bad_values_are_all_reported() {
        let (s, p) = compile_text(
            r#"kind = "sas"
            secret_env = "IOT_SIM_SECRET"
            ttl = "59s"
            claims = { exp = 5 }
            zz = 1"#,
        );
        assert!(s.is_none());
        let all = p.join("\n");
        for want in [
            "sink.mqtt.per_device.token.secret_env: \"IOT_SIM_SECRET\": names starting with IOT_SIM_",
            "sink.mqtt.per_device.token.ttl: must be at least 1m, got 59000ms",
            "sink.mqtt.per_device.token.claims.exp: set from the wall clock and ttl; got 5",
            "sink.mqtt.per_device.token.zz: unknown key",
            "sink.mqtt.per_device.token.claims: a kind = \"jwt\" key",
            "sink.mqtt.per_device.token.resource: missing",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
    }
}
