//! The MQTT sink: MQTT 3.1.1 or 5, QoS 0/1/2, TLS, over one protocol engine.
//!
//! [`session`] is the sans-IO MQTT session (protocol state without sockets, packets encoded
//! and decoded with `rumqttc::mqttbytes`); two drivers run it on the shard's runtime:
//! - [`pooled`] (the default, `connection = "pooled"`): `pool_size` connections per shard, each
//!   serving the devices that hash to it, writing every packet of a wheel turn in one write;
//! - [`devices`] (`connection = "per_device"`): every device its own MQTT client, with its own
//!   client id, credentials, keep-alive, last will and command subscription.
//!
//! [`transport`] opens their TCP (and TLS) connections; [`ws`] carries the session's bytes in
//! WebSocket frames for `ws://` and `wss://` URLs.

pub mod devices;
pub mod identity;
pub mod pooled;
pub mod props;
pub mod session;
pub mod tls;
pub mod token;
pub mod transport;
pub mod ws;

use super::net::NetShared;
use crate::config::MqttSettings;
use crate::sim::profile::Fleet;
use std::rc::Rc;
use std::sync::Arc;

/// The trust anchors of `ca_file` (none without one).
pub fn roots(s: &MqttSettings) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let tls = s.tls.clone().unwrap_or_default();
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &tls.ca_file {
        for cert in CertificateDer::pem_file_iter(ca)
            .map_err(|e| format!("ca_file {}: {e}", ca.display()))?
        {
            let cert = cert.map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
            roots.add(cert).map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
        }
    }
    Ok(roots)
}

/// Builds the rustls client configuration for `mqtts://`.
pub fn tls_config(s: &MqttSettings) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let tls = s.tls.clone().unwrap_or_default();
    let roots = roots(s)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match (&tls.client_cert, &tls.client_key) {
        (Some(c), Some(k)) => {
            let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(c)
                .map_err(|e| format!("client_cert {}: {e}", c.display()))?
                .collect();
            let certs = certs.map_err(|e| format!("client_cert {}: {e}", c.display()))?;
            let key = PrivateKeyDer::from_pem_file(k)
                .map_err(|e| format!("client_key {}: {e}", k.display()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("client certificate: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = config;
    config.alpn_protocols = s.alpn.clone();
    Ok(Arc::new(config))
}

/// Starts every pooled connection of this shard's MQTT sink.
pub fn start(s: &MqttSettings, fleet: &Fleet, shared: Rc<NetShared>) -> Result<(), String> {
    pooled::start(s, fleet, shared)
}
