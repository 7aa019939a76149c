//! Expiring passwords of per-device sessions (`[sink.mqtt.per_device.token]`): a JWT signed
//! with the configured key (HS256, RS256, ES256 with `ring`), or an Azure IoT Hub SAS token.
//!
//! A device's session takes a fresh token at every connect attempt (the first, a reconnect
//! after a loss, a fault or an outage, and a renewal), with `iat`/`exp` (`se`) from the wall
//! clock. It renews it by reconnecting between `renew_before` and three quarters of
//! `renew_before` before expiry: the point is drawn per device and renewal from the device's
//! hash, so a fleet that connected at once does not renew at once, and a run is repeatable.

use crate::config::token::{Alg, Claim, Signer, TokenKind, TokenSettings};
use crate::sim::profile::TopicTemplate;
use base64::Engine;
use std::sync::Arc;

const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// One device's token maker.
pub struct DeviceToken {
    settings: Arc<TokenSettings>,
    /// JWT: the claims rendered for this device, as JSON members (`"sub":"d1","aud":"iot"`);
    /// SAS: the URL-encoded resource URI.
    fixed: String,
    /// The device's hash, for its renewal jitter.
    seed: u64,
    /// Tokens issued so far.
    issued: u64,
}

fn claim_json(c: &Claim, render: &dyn Fn(&TopicTemplate) -> String) -> serde_json::Value {
    match c {
        Claim::Text(t) => serde_json::Value::String(render(t)),
        Claim::Json(v) => v.clone(),
        Claim::List(items) => items.iter().map(|c| claim_json(c, render)).collect(),
    }
}

impl DeviceToken {
    /// `render` fills a template for this device.
    pub fn new(
        settings: &Arc<TokenSettings>,
        seed: u64,
        render: &dyn Fn(&TopicTemplate) -> String,
    ) -> DeviceToken {
        let fixed = match &settings.kind {
            TokenKind::Jwt { claims, .. } => claims
                .iter()
                .map(|(name, c)| {
                    format!("{}:{}", serde_json::Value::String(name.clone()), claim_json(c, render))
                })
                .collect::<Vec<_>>()
                .join(","),
            TokenKind::Sas { resource, .. } => url_encode(&render(resource)),
        };
        DeviceToken { settings: settings.clone(), fixed, seed, issued: 0 }
    }

    /// A token valid from `now_s` (seconds since the Unix epoch) for the ttl.
    pub fn issue(&mut self, now_s: u64) -> String {
        self.issued += 1;
        let exp = now_s + self.settings.ttl_ms / 1000;
        match &self.settings.kind {
            TokenKind::Jwt { alg, signer, .. } => jwt(*alg, signer, &self.fixed, now_s, exp),
            TokenKind::Sas { key, policy, .. } => sas(key, &self.fixed, policy.as_deref(), exp),
        }
    }

    /// How long after issuing the last token the session renews it (ms): `ttl -
    /// renew_before`, plus up to a quarter of `renew_before` drawn from the device and the
    /// number of the token.
    pub fn renew_after_ms(&self) -> u64 {
        let s = &self.settings;
        let spread = (s.renew_before_ms / 4).max(1);
        let draw = crate::sim::seed::mix64(self.seed ^ self.issued.wrapping_mul(0x9e37_79b9));
        s.ttl_ms - s.renew_before_ms + draw % spread
    }
}

/// A compact JWS: base64url(header).base64url(claims).base64url(signature), the claims being
/// `members` plus `iat` and `exp`.
pub fn jwt(alg: Alg, signer: &Signer, members: &str, iat: u64, exp: u64) -> String {
    let header = format!(r#"{{"alg":"{}","typ":"JWT"}}"#, alg.name());
    let sep = if members.is_empty() { "" } else { "," };
    let claims = format!(r#"{{{members}{sep}"iat":{iat},"exp":{exp}}}"#);
    let mut out = B64URL.encode(header);
    out.push('.');
    out.push_str(&B64URL.encode(claims));
    let sig = sign(signer, out.as_bytes());
    out.push('.');
    out.push_str(&B64URL.encode(sig));
    out
}

fn sign(signer: &Signer, msg: &[u8]) -> Vec<u8> {
    let rng = ring::rand::SystemRandom::new();
    match signer {
        Signer::Hmac(k) => ring::hmac::sign(k, msg).as_ref().to_vec(),
        Signer::Rsa(k) => {
            let mut sig = vec![0; k.public().modulus_len()];
            // Fails only for a buffer of the wrong length or a broken RNG.
            k.sign(&ring::signature::RSA_PKCS1_SHA256, &rng, msg, &mut sig)
                .expect("RSA signing with a modulus-sized buffer");
            sig
        }
        Signer::Ecdsa(k) => k.sign(&rng, msg).expect("ECDSA signing").as_ref().to_vec(),
    }
}

/// An Azure IoT Hub SAS token: `SharedAccessSignature sr=SR&sig=SIG&se=SE[&skn=POLICY]`,
/// `SIG` = base64(HMAC-SHA256(key, SR + "\n" + SE)) URL-encoded; `sr` is the URL-encoded
/// resource URI.
pub fn sas(key: &ring::hmac::Key, sr: &str, policy: Option<&str>, se: u64) -> String {
    let tag = ring::hmac::sign(key, format!("{sr}\n{se}").as_bytes());
    let sig = url_encode(&base64::engine::general_purpose::STANDARD.encode(tag.as_ref()));
    let mut out = format!("SharedAccessSignature sr={sr}&sig={sig}&se={se}");
    if let Some(p) = policy {
        out.push_str("&skn=");
        out.push_str(&url_encode(p));
    }
    out
}

/// Percent-encodes all but RFC 3986's unreserved characters.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(kind: TokenKind) -> Arc<TokenSettings> {
        Arc::new(TokenSettings { kind, ttl_ms: 3_600_000, renew_before_ms: 360_000 })
    }

    #[test]
    fn hs256_matches_the_rfc_7515_example_signature_scheme() {
        // Verified independently: the signature is HMAC-SHA256 over "header.claims".
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"secret");
        let t = jwt(Alg::Hs256, &Signer::Hmac(key.clone()), r#""sub":"d1""#, 10, 70);
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(B64URL.decode(parts[0]).unwrap(), br#"{"alg":"HS256","typ":"JWT"}"#);
        assert_eq!(B64URL.decode(parts[1]).unwrap(), br#"{"sub":"d1","iat":10,"exp":70}"#);
        let signed = format!("{}.{}", parts[0], parts[1]);
        assert!(
            ring::hmac::verify(&key, signed.as_bytes(), &B64URL.decode(parts[2]).unwrap()).is_ok()
        );
    }

    #[test]
    fn es256_tokens_verify_with_the_public_key() {
        let rng = ring::rand::SystemRandom::new();
        let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        use ring::signature::KeyPair;
        let public = pair.public_key().as_ref().to_vec();
        let t = jwt(Alg::Es256, &Signer::Ecdsa(Arc::new(pair)), "", 1, 2);
        let (signed, sig) = t.rsplit_once('.').unwrap();
        let key = ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            public,
        );
        assert!(key.verify(signed.as_bytes(), &B64URL.decode(sig).unwrap()).is_ok());
    }

    #[test]
    fn sas_token_is_the_documented_hmac_of_the_encoded_resource_and_expiry() {
        let key_bytes = b"0123456789abcdef0123456789abcdef";
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key_bytes);
        let sr = url_encode("hub.azure-devices.net/devices/d1");
        assert_eq!(sr, "hub.azure-devices.net%2Fdevices%2Fd1");
        let t = sas(&key, &sr, None, 1_800_000_000);
        // Computed by hand: base64(HMAC-SHA256(key, sr + "\n" + se)).
        let tag = ring::hmac::sign(&key, b"hub.azure-devices.net%2Fdevices%2Fd1\n1800000000");
        let sig = url_encode(&base64::engine::general_purpose::STANDARD.encode(tag.as_ref()));
        assert_eq!(
            t,
            format!(
                "SharedAccessSignature sr=hub.azure-devices.net%2Fdevices%2Fd1&sig={sig}&se=1800000000"
            )
        );
        assert!(sas(&key, &sr, Some("device owner"), 5).ends_with("&se=5&skn=device%20owner"));
    }

    #[test]
    fn renewal_points_spread_over_devices_within_the_window() {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"k");
        let s =
            settings(TokenKind::Jwt { alg: Alg::Hs256, signer: Signer::Hmac(key), claims: vec![] });
        let render = |t: &TopicTemplate| t.source.clone();
        let mut points = std::collections::BTreeSet::new();
        for dev in 0..100u64 {
            let mut t = DeviceToken::new(&s, crate::sim::seed::mix64(dev), &render);
            t.issue(1000);
            let after = t.renew_after_ms();
            // Renewed between renew_before and 3/4 of it before the hour is up.
            assert!((3_240_000..3_330_000).contains(&after), "{after}");
            points.insert(after);
            // The same device and token number: the same point.
            assert_eq!(after, t.renew_after_ms());
        }
        assert!(points.len() > 90, "{} distinct renewal points of 100", points.len());
    }
}
