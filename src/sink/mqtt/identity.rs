//! A TLS client certificate per device (`[sink.mqtt.per_device.identity]`).
//!
//! A device's certificate and key are made (or read from its files) at its session's first
//! connect, by a few worker threads per shard (`workers` per run, split across shards, at
//! least one each) rather than on the shard's thread: an RSA-2048 key takes tens of
//! milliseconds, and a ramp of 100,000 devices must not stall the shard's tick. The device's
//! task awaits the answer (a `oneshot`), then keeps the resulting rustls configuration for the
//! life of the run: a reconnect (after a fault, an outage, a broker restart) presents the same
//! certificate without making it again. Each device's configuration has its own TLS session
//! cache (resuming another device's TLS session would present that device's identity).
//!
//! Counted in the sink's events: `session_identity_issued` (generated), `session_identity_loaded`
//! (read from files), `session_identity_error` (could not be made: the session retries after
//! its backoff). A broker that refuses a certificate (a TLS alert) is counted by the alert:
//! `session_refused_tls_<alert>` (see [`tls_refusal`]).

use crate::config::MqttSettings;
use crate::config::identity::{DeviceIdentity, IdentitySettings, Material};
use std::sync::Arc;

type Reply = Result<Arc<rustls::ClientConfig>, String>;

struct Job {
    identity: DeviceIdentity,
    reply: tokio::sync::oneshot::Sender<Reply>,
}

/// What every device's TLS configuration shares: the trust anchors, the crypto provider and
/// the ALPN protocols.
#[derive(Clone)]
pub struct Base {
    roots: Arc<rustls::RootCertStore>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    alpn: Vec<Vec<u8>>,
}

impl Base {
    pub fn new(s: &MqttSettings) -> Result<Base, String> {
        Ok(Base {
            roots: Arc::new(super::roots(s)?),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            alpn: s.alpn.clone(),
        })
    }

    /// A device's rustls configuration: its certificate chain and key as client identity.
    pub fn client_config(&self, m: &Material) -> Reply {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let chain: Vec<CertificateDer<'static>> =
            m.chain.iter().map(|c| CertificateDer::from(c.clone())).collect();
        let key = match PrivateKeyDer::try_from(m.key.clone()) {
            Ok(k) => k,
            Err(_) => PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(m.key.clone())),
        };
        let mut config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("client certificate: {e}"))?;
        config.alpn_protocols = self.alpn.clone();
        // One device's tickets only: a store of its own that keeps one.
        config.resumption = one_server_resumption();
        Ok(Arc::new(config))
    }
}

/// Resumption for one device's sessions to one server: see [`OneServer`].
pub fn one_server_resumption() -> rustls::client::Resumption {
    rustls::client::Resumption::store(Arc::new(OneServer::default()))
}

/// One device's TLS resumption state: the newest TLS 1.3 ticket (or TLS 1.2 session) and the
/// key-exchange group the server chose. A device talks to one server, and a reconnect needs
/// one ticket. rustls' in-memory cache, even sized for one server, keeps a map sized for
/// several and every ticket a server sends (OpenSSL sends two per connection), each with its
/// own copy of the server's certificate chain: about 3.5 KiB per device that this store does
/// not hold (`bench/mqtt_identity.sh`, RSS per TLS session).
#[derive(Debug, Default)]
struct OneServer(std::sync::Mutex<Resume>);

#[derive(Debug, Default)]
struct Resume {
    kx_hint: Option<rustls::NamedGroup>,
    tls12: Option<rustls::client::Tls12ClientSessionValue>,
    tls13: Option<rustls::client::Tls13ClientSessionValue>,
}

impl OneServer {
    fn with<T>(&self, f: impl FnOnce(&mut Resume) -> T) -> T {
        // A poisoned lock only means another thread panicked holding it: the state is whole.
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

type Name<'a> = rustls::pki_types::ServerName<'a>;

impl rustls::client::ClientSessionStore for OneServer {
    fn set_kx_hint(&self, _: Name<'static>, group: rustls::NamedGroup) {
        self.with(|r| r.kx_hint = Some(group));
    }

    fn kx_hint(&self, _: &Name<'_>) -> Option<rustls::NamedGroup> {
        self.with(|r| r.kx_hint)
    }

    fn set_tls12_session(&self, _: Name<'static>, value: rustls::client::Tls12ClientSessionValue) {
        self.with(|r| r.tls12 = Some(value));
    }

    fn tls12_session(&self, _: &Name<'_>) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.with(|r| r.tls12.clone())
    }

    fn remove_tls12_session(&self, _: &Name<'static>) {
        self.with(|r| r.tls12 = None);
    }

    /// Keeps the newest: it lives longest.
    fn insert_tls13_ticket(
        &self,
        _: Name<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.with(|r| r.tls13 = Some(value));
    }

    fn take_tls13_ticket(
        &self,
        _: &Name<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.with(|r| r.tls13.take())
    }
}

/// One shard's identity workers.
pub struct Identities {
    settings: Arc<IdentitySettings>,
    jobs: crossbeam_channel::Sender<Job>,
}

impl Identities {
    /// Starts this shard's workers (they end when the shard's sink is dropped).
    pub fn new(
        s: &MqttSettings,
        settings: Arc<IdentitySettings>,
        shards: usize,
    ) -> Result<Identities, String> {
        let base = Base::new(s)?;
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let n = (settings.workers / shards.max(1)).max(1);
        for i in 0..n {
            let (rx, base, settings) = (rx.clone(), base.clone(), settings.clone());
            std::thread::Builder::new()
                .name(format!("identity-{i}"))
                .spawn(move || {
                    for job in rx {
                        let reply = settings
                            .materialize(&job.identity)
                            .and_then(|m| base.client_config(&m));
                        let _ = job.reply.send(reply);
                    }
                })
                .map_err(|e| format!("identity worker: {e}"))?;
        }
        Ok(Identities { settings, jobs: tx })
    }

    pub fn settings(&self) -> &IdentitySettings {
        &self.settings
    }

    /// Whether certificates are generated (else read from files).
    pub fn generated(&self) -> bool {
        matches!(self.settings.source, crate::config::identity::Source::Generated { .. })
    }

    /// A device's TLS configuration, made by a worker.
    pub async fn client_config(&self, identity: DeviceIdentity) -> Reply {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.jobs.send(Job { identity, reply }).map_err(|_| "identity workers are gone")?;
        rx.await.map_err(|_| "identity worker ended".to_string())?
    }
}

/// The event of a broker's refusal seen in a TLS error (a fatal alert it sent), if it is one.
pub fn tls_refusal(error: &str) -> Option<&'static str> {
    let alert = error.split("received fatal alert: ").nth(1)?;
    let name = alert.split(|c: char| !c.is_ascii_alphanumeric()).next().unwrap_or_default();
    Some(match name {
        "BadCertificate" => "session_refused_tls_bad_certificate",
        "UnknownCA" => "session_refused_tls_unknown_ca",
        "CertificateRequired" => "session_refused_tls_certificate_required",
        "CertificateExpired" => "session_refused_tls_certificate_expired",
        "CertificateRevoked" => "session_refused_tls_certificate_revoked",
        "CertificateUnknown" => "session_refused_tls_certificate_unknown",
        "UnsupportedCertificate" => "session_refused_tls_unsupported_certificate",
        "AccessDenied" => "session_refused_tls_access_denied",
        "DecryptError" => "session_refused_tls_decrypt_error",
        "HandshakeFailure" => "session_refused_tls_handshake_failure",
        "NoApplicationProtocol" => "session_refused_tls_no_application_protocol",
        _ => "session_refused_tls_other",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_alerts_are_read_as_refusals_by_reason() {
        assert_eq!(
            tls_refusal("read: received fatal alert: UnknownCA"),
            Some("session_refused_tls_unknown_ca")
        );
        assert_eq!(
            tls_refusal("tls: received fatal alert: BadCertificate"),
            Some("session_refused_tls_bad_certificate")
        );
        assert_eq!(
            tls_refusal("read: received fatal alert: Unknown(99)"),
            Some("session_refused_tls_other")
        );
        assert_eq!(tls_refusal("connect: connection refused"), None);
    }
}
