//! Per-device X.509 client certificates, deterministic: each device's key and serial number are
//! derived from the run's seed and the device id, and the CA's signature is deterministic
//! (ECDSA with RFC 6979 nonces, RSA PKCS#1 v1.5), so the same seed, CA and settings give the
//! same certificates byte for byte.
//!
//! The certificate is written here as DER (a small writer: the TBS of a client certificate is
//! a handful of fields), and the user's CA certificate is read by a small DER reader for the
//! three things issuing needs: its subject (copied byte for byte as the issuer, so chain
//! building matches exactly), its public key (checked against the CA key) and its subject key
//! identifier (the authority key identifier of what it signs).

use p256::ecdsa::signature::Signer;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::pkcs1::DecodeRsaPrivateKey;
use std::fmt;

/// The key type of generated device keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    EcdsaP256,
    Rsa2048,
}

impl KeyKind {
    pub const NAMES: &[&str] = &["ecdsa_p256", "rsa_2048"];

    pub fn parse(s: &str) -> Option<KeyKind> {
        match s {
            "ecdsa_p256" => Some(KeyKind::EcdsaP256),
            "rsa_2048" => Some(KeyKind::Rsa2048),
            _ => None,
        }
    }
}

/// The CA's signing key.
enum CaKey {
    P256(p256::ecdsa::SigningKey),
    Rsa(Box<rsa::pkcs1v15::SigningKey<rsa::sha2::Sha256>>),
}

/// The user's CA: what issuing needs of its certificate, and its key.
pub struct Ca {
    /// The CA certificate, DER (the chain a device presents ends with it).
    pub cert_der: Vec<u8>,
    /// The CA certificate's subject, the DER of its `Name` as it is in the certificate.
    subject: Vec<u8>,
    /// The key identifier of the CA's public key (its subject key identifier extension, or
    /// computed as for the device certificates when it has none).
    key_id: Vec<u8>,
    key: CaKey,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca").field("cert_der_len", &self.cert_der.len()).finish_non_exhaustive()
    }
}

/// A device's certificate and key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    pub cert_der: Vec<u8>,
    /// PKCS#8 DER.
    pub key_der: Vec<u8>,
    pub key_pem: String,
    /// Hex, as `openssl x509 -serial` prints it (upper case).
    pub serial_hex: String,
    /// `CN=...`.
    pub subject: String,
    /// RFC 3339.
    pub not_after: String,
}

/// What one device's certificate says.
pub struct Request<'a> {
    pub seed: u64,
    pub device_id: &'a str,
    pub common_name: &'a str,
    pub sans: &'a [String],
    pub key: KeyKind,
    /// ms since the Unix epoch.
    pub not_before_ms: u64,
    pub validity_ms: u64,
}

// ---------------------------------------------------------------------------------------------
// DER writing.

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 4);
    out.push(tag);
    push_len(&mut out, content.len());
    out.extend_from_slice(content);
    out
}

fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

/// An OID from its dotted arcs.
fn oid(arcs: &[u64]) -> Vec<u8> {
    let mut body = vec![];
    let mut arc = |mut v: u64| {
        let mut tmp = vec![(v & 0x7f) as u8];
        v >>= 7;
        while v > 0 {
            tmp.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        tmp.reverse();
        body.extend(tmp);
    };
    arc(arcs[0] * 40 + arcs[1]);
    for a in &arcs[2..] {
        arc(*a);
    }
    tlv(0x06, &body)
}

/// A positive INTEGER from big-endian bytes.
fn uint(bytes: &[u8]) -> Vec<u8> {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len().saturating_sub(1));
    let mut body = vec![];
    if bytes[start] & 0x80 != 0 {
        body.push(0);
    }
    body.extend_from_slice(&bytes[start..]);
    tlv(0x02, &body)
}

fn bit_string(bytes: &[u8]) -> Vec<u8> {
    let mut body = vec![0];
    body.extend_from_slice(bytes);
    tlv(0x03, &body)
}

/// UTCTime through 2049, GeneralizedTime after (RFC 5280 4.1.2.5).
fn time(ms: u64) -> Vec<u8> {
    let text = crate::sim::time::rfc3339_ms(ms);
    // YYYY-MM-DDTHH:MM:SS.mmmZ
    let digits: String = text[..19].chars().filter(|c| c.is_ascii_digit()).collect();
    let year: u32 = text[..4].parse().unwrap_or(0);
    if year < 2050 {
        tlv(0x17, format!("{}Z", &digits[2..]).as_bytes())
    } else {
        tlv(0x18, format!("{digits}Z").as_bytes())
    }
}

fn extension(id: &[u64], critical: bool, value: &[u8]) -> Vec<u8> {
    let o = oid(id);
    let v = tlv(0x04, value);
    if critical { seq(&[&o, &[0x01, 0x01, 0xff], &v]) } else { seq(&[&o, &v]) }
}

// ---------------------------------------------------------------------------------------------
// DER reading (the CA certificate).

/// One TLV: its tag, the whole encoding and the content.
struct Tlv<'a> {
    tag: u8,
    whole: &'a [u8],
    content: &'a [u8],
}

fn read(input: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let tag = *input.first()?;
    let first = *input.get(1)? as usize;
    let (len, header) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for b in input.get(2..2 + n)? {
            len = (len << 8) | *b as usize;
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    let whole = input.get(..end)?;
    Some((Tlv { tag, whole, content: &whole[header..] }, &input[end..]))
}

/// What issuing reads of a CA certificate: its subject, its public key's bits and its subject
/// key identifier.
struct CaCertInfo {
    subject: Vec<u8>,
    public_key: Vec<u8>,
    ski: Option<Vec<u8>>,
}

fn read_ca_cert(der: &[u8]) -> Option<CaCertInfo> {
    let (cert, _) = read(der)?;
    let (tbs, _) = read(cert.content)?;
    let mut rest = tbs.content;
    let mut fields = vec![];
    while !rest.is_empty() {
        let (t, r) = read(rest)?;
        fields.push(t);
        rest = r;
    }
    // [0] version is optional (v1 certificates).
    let off = usize::from(fields.first()?.tag == 0xa0);
    let subject = fields.get(off + 4)?.whole.to_vec();
    let spki = fields.get(off + 5)?;
    let (_alg, r) = read(spki.content)?;
    let (bits, _) = read(r)?;
    let public_key = bits.content.get(1..)?.to_vec();
    let mut ski = None;
    if let Some(ext) = fields.iter().find(|f| f.tag == 0xa3) {
        let (list, _) = read(ext.content)?;
        let mut rest = list.content;
        let want = oid(&[2, 5, 29, 14]);
        while !rest.is_empty() {
            let (e, r) = read(rest)?;
            rest = r;
            let (id, after) = read(e.content)?;
            if id.whole == want.as_slice() {
                // Skip `critical` if present; the value is an OCTET STRING holding one.
                let (first, after_first) = read(after)?;
                let v = if first.tag == 0x01 { read(after_first)?.0 } else { first };
                let (inner, _) = read(v.content)?;
                ski = Some(inner.content.to_vec());
            }
        }
    }
    Some(CaCertInfo { subject, public_key, ski })
}

/// The public key bits of a SubjectPublicKeyInfo.
fn spki_bits(spki: &[u8]) -> Vec<u8> {
    read(spki)
        .and_then(|(s, _)| read(s.content))
        .and_then(|(_, r)| read(r))
        .and_then(|(b, _)| b.content.get(1..).map(<[u8]>::to_vec))
        .unwrap_or_default()
}

/// A key identifier: the first 160 bits of the SHA-256 of the public key bits (RFC 7093 2.1).
fn key_id(public_key_bits: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, public_key_bits).as_ref()[..20].to_vec()
}

fn pem_blocks(text: &str) -> Vec<(String, Vec<u8>)> {
    use base64::Engine;
    let mut out = vec![];
    let mut label: Option<String> = None;
    let mut body = String::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(l) = line.strip_prefix("-----BEGIN ").and_then(|l| l.strip_suffix("-----")) {
            label = Some(l.to_string());
            body.clear();
        } else if let Some(l) = line.strip_prefix("-----END ").and_then(|l| l.strip_suffix("-----"))
        {
            if label.as_deref() == Some(l)
                && let Ok(der) = base64::engine::general_purpose::STANDARD.decode(&body)
            {
                out.push((l.to_string(), der));
            }
            label = None;
        } else if label.is_some() {
            body.push_str(line);
        }
    }
    out
}

/// PEM text of DER.
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Problems with the CA files: each is (which file: "ca_cert" or "ca_key", message).
pub type CaProblems = Vec<(&'static str, String)>;

impl Ca {
    /// Reads the CA certificate and key (PEM texts); every problem is returned, naming the
    /// file it is about.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, CaProblems> {
        let mut problems: CaProblems = vec![];
        let certs: Vec<Vec<u8>> = pem_blocks(cert_pem)
            .into_iter()
            .filter(|(l, _)| l == "CERTIFICATE")
            .map(|b| b.1)
            .collect();
        let info = match certs.first() {
            None => {
                problems.push(("ca_cert", "no PEM CERTIFICATE block in it".into()));
                None
            }
            Some(der) => match read_ca_cert(der) {
                Some(info) => Some((der.clone(), info)),
                None => {
                    problems.push(("ca_cert", "not a well-formed X.509 certificate".into()));
                    None
                }
            },
        };
        let key = match read_key(key_pem) {
            Ok(k) => Some(k),
            Err(e) => {
                problems.push(("ca_key", e));
                None
            }
        };
        let (Some((cert_der, info)), Some((key, spki))) = (info, key) else {
            return Err(problems);
        };
        let bits = spki_bits(&spki);
        if bits != info.public_key {
            return Err(vec![(
                "ca_key",
                "does not match ca_cert (the key's public key is not the certificate's)".into(),
            )]);
        }
        Ok(Ca {
            cert_der,
            subject: info.subject,
            key_id: info.ski.unwrap_or_else(|| key_id(&bits)),
            key,
        })
    }

    fn sig_alg(&self) -> Vec<u8> {
        match self.key {
            // ecdsa-with-SHA256
            CaKey::P256(_) => seq(&[&oid(&[1, 2, 840, 10045, 4, 3, 2])]),
            // sha256WithRSAEncryption
            CaKey::Rsa(_) => seq(&[&oid(&[1, 2, 840, 113549, 1, 1, 11]), &[0x05, 0x00]]),
        }
    }

    fn sign(&self, tbs: &[u8]) -> Vec<u8> {
        match &self.key {
            CaKey::P256(k) => {
                let sig: p256::ecdsa::Signature = k.sign(tbs);
                sig.to_der().as_bytes().to_vec()
            }
            CaKey::Rsa(k) => {
                use rsa::signature::SignatureEncoding;
                let sig: rsa::pkcs1v15::Signature = k.sign(tbs);
                sig.to_vec()
            }
        }
    }

    /// Issues one device's certificate and key.
    pub fn issue(&self, r: &Request<'_>) -> Result<Issued, String> {
        let master = derive(r.seed, r.device_id, b"device");
        let (key_der, key_pem, spki) = device_key(r.key, &master)?;
        let mut serial = derive(r.seed, r.device_id, b"serial")[..16].to_vec();
        // Positive, and 16 octets long.
        serial[0] = (serial[0] & 0x7f) | 0x40;
        let not_after = r.not_before_ms.saturating_add(r.validity_ms);
        let name =
            seq(&[&tlv(0x31, &seq(&[&oid(&[2, 5, 4, 3]), &tlv(0x0c, r.common_name.as_bytes())]))]);
        let bits = spki_bits(&spki);
        let mut exts: Vec<Vec<u8>> = vec![
            // basicConstraints: not a CA.
            extension(&[2, 5, 29, 19], true, &seq(&[])),
            // keyUsage: digitalSignature (and keyEncipherment for RSA).
            extension(
                &[2, 5, 29, 15],
                true,
                &match r.key {
                    KeyKind::EcdsaP256 => vec![0x03, 0x02, 0x07, 0x80],
                    KeyKind::Rsa2048 => vec![0x03, 0x02, 0x05, 0xa0],
                },
            ),
            // extKeyUsage: clientAuth.
            extension(&[2, 5, 29, 37], false, &seq(&[&oid(&[1, 3, 6, 1, 5, 5, 7, 3, 2])])),
        ];
        if !r.sans.is_empty() {
            let names: Vec<Vec<u8>> = r.sans.iter().map(|s| general_name(s)).collect();
            let refs: Vec<&[u8]> = names.iter().map(Vec::as_slice).collect();
            exts.push(extension(&[2, 5, 29, 17], false, &seq(&refs)));
        }
        exts.push(extension(&[2, 5, 29, 14], false, &tlv(0x04, &key_id(&bits))));
        exts.push(extension(&[2, 5, 29, 35], false, &seq(&[&tlv(0x80, &self.key_id)])));
        let ext_refs: Vec<&[u8]> = exts.iter().map(Vec::as_slice).collect();
        let sig_alg = self.sig_alg();
        let tbs = seq(&[
            &[0xa0, 0x03, 0x02, 0x01, 0x02],
            &uint(&serial),
            &sig_alg,
            &self.subject,
            &seq(&[&time(r.not_before_ms), &time(not_after)]),
            &name,
            &spki,
            &tlv(0xa3, &seq(&ext_refs)),
        ]);
        let sig = self.sign(&tbs);
        let cert_der = seq(&[&tbs, &sig_alg, &bit_string(&sig)]);
        Ok(Issued {
            cert_der,
            key_der,
            key_pem,
            serial_hex: serial.iter().map(|b| format!("{b:02X}")).collect(),
            subject: format!("CN={}", r.common_name),
            not_after: crate::sim::time::rfc3339_ms(not_after),
        })
    }
}

/// A subjectAltName entry: an IP address, a URI (has `://`), else a DNS name.
fn general_name(s: &str) -> Vec<u8> {
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        let bytes = match ip {
            std::net::IpAddr::V4(v) => v.octets().to_vec(),
            std::net::IpAddr::V6(v) => v.octets().to_vec(),
        };
        tlv(0x87, &bytes)
    } else if s.contains("://") {
        tlv(0x86, s.as_bytes())
    } else {
        tlv(0x82, s.as_bytes())
    }
}

/// 32 bytes derived from the seed, the device id and a purpose.
fn derive(seed: u64, device_id: &str, purpose: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"iot-sim device identity v1\0");
    ctx.update(&seed.to_le_bytes());
    ctx.update(purpose);
    ctx.update(b"\0");
    ctx.update(device_id.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// A device key from 32 seed bytes: (PKCS#8 DER, PKCS#8 PEM, SubjectPublicKeyInfo DER).
fn device_key(kind: KeyKind, master: &[u8; 32]) -> Result<(Vec<u8>, String, Vec<u8>), String> {
    match kind {
        KeyKind::EcdsaP256 => {
            // A scalar in [1, n): about one candidate in 2^32 is out of range; take the next.
            let mut candidate = *master;
            let key = loop {
                if let Ok(k) = p256::SecretKey::from_slice(&candidate) {
                    break k;
                }
                let next = ring::digest::digest(&ring::digest::SHA256, &candidate);
                candidate.copy_from_slice(next.as_ref());
            };
            let der = key.to_pkcs8_der().map_err(|e| format!("device key: {e}"))?;
            let pem = key.to_pkcs8_pem(LineEnding::LF).map_err(|e| format!("device key: {e}"))?;
            let spki =
                key.public_key().to_public_key_der().map_err(|e| format!("device key: {e}"))?;
            Ok((der.as_bytes().to_vec(), pem.to_string(), spki.as_bytes().to_vec()))
        }
        KeyKind::Rsa2048 => {
            use rand_chacha::rand_core::SeedableRng;
            let mut rng = rand_chacha::ChaCha20Rng::from_seed(*master);
            let key =
                rsa::RsaPrivateKey::new(&mut rng, 2048).map_err(|e| format!("device key: {e}"))?;
            let der = key.to_pkcs8_der().map_err(|e| format!("device key: {e}"))?;
            let pem = key.to_pkcs8_pem(LineEnding::LF).map_err(|e| format!("device key: {e}"))?;
            let spki =
                key.to_public_key().to_public_key_der().map_err(|e| format!("device key: {e}"))?;
            Ok((der.as_bytes().to_vec(), pem.to_string(), spki.as_bytes().to_vec()))
        }
    }
}

/// Reads a CA private key (PKCS#8, SEC1 or PKCS#1 PEM): the signing key and its
/// SubjectPublicKeyInfo DER.
fn read_key(text: &str) -> Result<(CaKey, Vec<u8>), String> {
    let blocks = pem_blocks(text);
    let Some((label, der)) = blocks.iter().find(|(l, _)| l.ends_with("PRIVATE KEY")) else {
        return Err("no PEM PRIVATE KEY block in it".into());
    };
    let unsupported = "a key of a type iot-sim cannot sign with: use an ECDSA P-256 or an RSA key";
    let p256_key = |k: p256::SecretKey| -> Result<(CaKey, Vec<u8>), String> {
        let spki = k.public_key().to_public_key_der().map_err(|e| e.to_string())?;
        Ok((CaKey::P256(p256::ecdsa::SigningKey::from(k)), spki.as_bytes().to_vec()))
    };
    let rsa_key = |k: rsa::RsaPrivateKey| -> Result<(CaKey, Vec<u8>), String> {
        let spki = k.to_public_key().to_public_key_der().map_err(|e| e.to_string())?;
        Ok((CaKey::Rsa(Box::new(rsa::pkcs1v15::SigningKey::new(k))), spki.as_bytes().to_vec()))
    };
    match label.as_str() {
        "PRIVATE KEY" => {
            if let Ok(k) = p256::SecretKey::from_pkcs8_der(der) {
                return p256_key(k);
            }
            if let Ok(k) = rsa::RsaPrivateKey::from_pkcs8_der(der) {
                return rsa_key(k);
            }
            // A well-formed PKCS#8 of another algorithm, or not PKCS#8 at all.
            match p256::pkcs8::PrivateKeyInfo::try_from(der.as_slice()) {
                Ok(_) => Err(unsupported.into()),
                Err(e) => Err(format!("malformed PKCS#8 private key: {e}")),
            }
        }
        "EC PRIVATE KEY" => match p256::SecretKey::from_sec1_der(der) {
            Ok(k) => p256_key(k),
            Err(e) => {
                Err(format!("malformed EC private key, or not a P-256 one ({unsupported}): {e}"))
            }
        },
        "RSA PRIVATE KEY" => match rsa::RsaPrivateKey::from_pkcs1_der(der) {
            Ok(k) => rsa_key(k),
            Err(e) => Err(format!("malformed RSA private key: {e}")),
        },
        other => Err(format!("PEM block {other:?} is not a supported private key")),
    }
}

/// A throwaway test CA made here (never a committed key): a self-signed P-256 certificate.
#[cfg(test)]
pub(crate) fn test_ca(seed: u64) -> (String, String) {
    let key = p256::SecretKey::from_slice(&derive(seed, "ca", b"test-ca")).unwrap();
    let spki = key.public_key().to_public_key_der().unwrap();
    let signer = p256::ecdsa::SigningKey::from(key.clone());
    let name = seq(&[&tlv(0x31, &seq(&[&oid(&[2, 5, 4, 3]), &tlv(0x0c, b"iot-sim test CA")]))]);
    let bits = spki_bits(spki.as_bytes());
    let alg = seq(&[&oid(&[1, 2, 840, 10045, 4, 3, 2])]);
    let exts = seq(&[
        &extension(&[2, 5, 29, 19], true, &seq(&[&[0x01, 0x01, 0xff]])),
        &extension(&[2, 5, 29, 15], true, &[0x03, 0x02, 0x01, 0x06]),
        &extension(&[2, 5, 29, 14], false, &tlv(0x04, &key_id(&bits))),
    ]);
    let tbs = seq(&[
        &[0xa0, 0x03, 0x02, 0x01, 0x02],
        &uint(&[1]),
        &alg,
        &name,
        &seq(&[&time(1_700_000_000_000), &time(2_700_000_000_000)]),
        &name,
        spki.as_bytes(),
        &tlv(0xa3, &exts),
    ]);
    let sig: p256::ecdsa::Signature = signer.sign(&tbs);
    let cert = seq(&[&tbs, &alg, &bit_string(sig.to_der().as_bytes())]);
    (pem("CERTIFICATE", &cert), key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(seed: u64, key: KeyKind) -> Request<'static> {
        Request {
            seed,
            device_id: "dev-000001",
            common_name: "dev-000001",
            sans: &[],
            key,
            not_before_ms: 1_764_460_800_000,
            validity_ms: 30 * 86_400_000,
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_certificate_and_another_seed_does_not() {
        let (c, k) = test_ca(1);
        let ca = Ca::from_pem(&c, &k).unwrap();
        let a = ca.issue(&request(7, KeyKind::EcdsaP256)).unwrap();
        let b = ca.issue(&request(7, KeyKind::EcdsaP256)).unwrap();
        assert_eq!(a, b);
        let other = ca.issue(&request(8, KeyKind::EcdsaP256)).unwrap();
        assert_ne!(a.cert_der, other.cert_der);
        assert_ne!(a.key_der, other.key_der);
        assert_ne!(a.serial_hex, other.serial_hex);
        assert_eq!(a.not_after, "2025-12-30T00:00:00.000Z");
    }

    #[test]
    fn a_key_of_another_ca_is_refused() {
        let (c, _) = test_ca(1);
        let (_, k2) = test_ca(2);
        let err = Ca::from_pem(&c, &k2).unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!(err[0].0, "ca_key");
        assert!(err[0].1.contains("does not match ca_cert"), "{err:?}");
    }

    #[test]
    fn malformed_pem_is_reported_for_each_file() {
        let err =
            Ca::from_pem("hello", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .unwrap_err();
        assert_eq!(err.len(), 2, "{err:?}");
        assert!(err[0].1.contains("no PEM CERTIFICATE"), "{err:?}");
        assert!(err[1].1.contains("malformed"), "{err:?}");
    }

    #[test]
    fn the_certificate_verifies_under_the_ca_with_webpki() {
        use rustls::pki_types::{CertificateDer, UnixTime};
        let (c, k) = test_ca(3);
        let ca = Ca::from_pem(&c, &k).unwrap();
        let issued = ca
            .issue(&Request {
                sans: &["dev-000001.example".to_string()],
                ..request(5, KeyKind::EcdsaP256)
            })
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(ca.cert_der.clone())).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .unwrap();
        let ee = CertificateDer::from(issued.cert_der.clone());
        let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_764_500_000));
        verifier.verify_client_cert(&ee, &[], at).unwrap();
    }
}
