//! Opening an MQTT connection's transport: TCP (optionally bound to a source address, with
//! `TCP_NODELAY`) and TLS over it. Shared by the pooled connections and per-device sessions.

use crate::config::MqttSettings;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// The TLS configuration and server name of `mqtts://` and `wss://`, built once per shard (or
/// per device, with its own identity).
#[derive(Clone)]
pub struct Tls {
    pub config: Arc<rustls::ClientConfig>,
    pub name: rustls::pki_types::ServerName<'static>,
}

impl Tls {
    /// The TLS handshake over `tcp`, within `timeout`. Both the handshake and the stream are
    /// boxed: the caller's future (a per-device session's task, for its whole life) carries
    /// pointers, not the handshake's state or a stream that its callees' futures would each
    /// keep a copy of room for (an async fn stores its arguments: a stream passed down two
    /// calls took three times its size).
    pub async fn connect(
        &self,
        tcp: tokio::net::TcpStream,
        timeout: Duration,
    ) -> std::io::Result<Box<super::tls::TlsStream>> {
        let handshake = Box::pin(super::tls::connect(self.config.clone(), self.name.clone(), tcp));
        match tokio::time::timeout(timeout, handshake).await {
            Ok(r) => r.map(Box::new),
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timeout")),
        }
    }
}

/// Builds the TLS configuration for `mqtts://` URLs (`None` for `mqtt://`).
pub fn tls(s: &MqttSettings) -> Result<Option<Tls>, String> {
    match &s.tls {
        Some(_) => Ok(Some(Tls { config: super::tls_config(s)?, name: server_name(s)? })),
        None => Ok(None),
    }
}

/// The TLS server name: `server_name`, or the URL's host.
pub fn server_name(s: &MqttSettings) -> Result<rustls::pki_types::ServerName<'static>, String> {
    let name = s.server_name.clone().unwrap_or_else(|| s.host.clone());
    rustls::pki_types::ServerName::try_from(name.clone())
        .map_err(|e| format!("sink.mqtt: server name {name:?}: {e}"))
}

/// Connects to `host:port` (each resolved address in turn), from `source` when given, with
/// `TCP_NODELAY` (without it Nagle's algorithm holds small PUBLISH packets back until the
/// previous one is acknowledged: measured QoS 1 p50 3 ms at 2k msg/s) and a connect timeout.
pub async fn open_tcp(
    host: &str,
    port: u16,
    source: Option<IpAddr>,
    timeout: Duration,
) -> std::io::Result<tokio::net::TcpStream> {
    let addrs = tokio::net::lookup_host((host, port)).await?;
    let mut last = std::io::Error::other("no address");
    for addr in addrs {
        let sock = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        if let Some(ip) = source {
            if ip.is_ipv4() != addr.is_ipv4() {
                continue;
            }
            bind_address_no_port(&sock);
            sock.bind(SocketAddr::new(ip, 0))?;
        }
        sock.set_nodelay(true)?;
        match tokio::time::timeout(timeout, sock.connect(addr)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = e,
            Err(_) => last = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout"),
        }
    }
    Err(last)
}

/// Has the kernel pick a bound socket's source port when it connects, by the whole 4-tuple,
/// instead of when it binds (`IP_BIND_ADDRESS_NO_PORT`). `bind(ip, 0)` must find a port that
/// no other socket bound to that address holds: with ~10,000 sessions per source address that
/// is a walk over the bound ports on every connect (`inet_bind2_bucket_find` and
/// `inet_bhash2_conflict` were 60% of a 19,000-session ramp's CPU, which fell to ~200
/// connections a second). At connect time the port only has to be free towards this broker.
/// Where the option is missing the bind still works, the slow way.
fn bind_address_no_port(sock: &tokio::net::TcpSocket) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let one: libc::c_int = 1;
        // SAFETY: a valid socket descriptor, and an option value of the size passed.
        let _ = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = sock;
}
