//! Before the shards start: is every broker a network sink needs reachable? A run whose broker
//! is down fails at once with the URL in the message, instead of filling queues and reports
//! with connection errors; `--wait-for-sinks D` retries for up to D first (for brokers that
//! start alongside the simulator, as in a compose file or a Kubernetes pod).

use crate::config::SinkSettings;
use crate::config::sinks::split_url;
use crate::sim::profile::{Fleet, Protocol};
use std::net::ToSocketAddrs;
use std::time::{Duration, Instant};

/// The (name, url, host:port) of each TCP endpoint the fleet needs. CoAP is UDP: nothing to
/// connect to in advance.
pub fn endpoints(fleet: &Fleet, sinks: &SinkSettings) -> Vec<(&'static str, String, String)> {
    let mut out = vec![];
    for proto in fleet.protocols() {
        match proto {
            Protocol::Mqtt => {
                if let Some(m) = &sinks.mqtt {
                    out.push(("mqtt", m.url.clone(), format!("{}:{}", m.host, m.port)));
                }
            }
            Protocol::Amqp => {
                if let Some(a) = &sinks.amqp
                    && let Ok(u) = split_url(&a.url)
                {
                    let port = u.port.unwrap_or(if u.scheme == "amqps" { 5671 } else { 5672 });
                    out.push((
                        "amqp",
                        crate::sink::redact_url(&a.url),
                        format!("{}:{port}", u.host),
                    ));
                }
            }
            Protocol::Http => {
                let mut urls: Vec<String> = fleet
                    .profiles
                    .iter()
                    .filter(|p| p.protocol == Protocol::Http)
                    .filter_map(|p| {
                        p.delivery
                            .endpoint
                            .clone()
                            .or_else(|| sinks.http.as_ref().map(|h| h.endpoint.clone()))
                    })
                    .collect();
                urls.sort();
                urls.dedup();
                for url in urls {
                    if let Ok(u) =
                        split_url(&url.replace("{topic}", "t").replace("{device_id}", "d"))
                    {
                        let port = u.port.unwrap_or(if u.scheme == "https" { 443 } else { 80 });
                        out.push(("http", url.clone(), format!("{}:{port}", u.host)));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn try_connect(addr: &str) -> Result<(), String> {
    let addrs: Vec<_> =
        addr.to_socket_addrs().map_err(|e| format!("cannot resolve {addr}: {e}"))?.collect();
    let mut last = format!("{addr} resolves to no address");
    for a in addrs {
        match std::net::TcpStream::connect_timeout(&a, Duration::from_secs(3)) {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// Checks every endpoint, retrying for up to `wait` if given.
pub fn check(fleet: &Fleet, sinks: &SinkSettings, wait: Option<Duration>) -> Result<(), String> {
    let started = Instant::now();
    for (name, url, addr) in endpoints(fleet, sinks) {
        loop {
            match try_connect(&addr) {
                Ok(()) => break,
                Err(e) => match wait {
                    Some(w) if started.elapsed() < w => {
                        tracing::info!(sink = name, url = %url, error = %e, "waiting for the server");
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    _ => {
                        return Err(format!(
                            "cannot reach the {name} server at {url}: {e}{}",
                            if wait.is_some() {
                                " (gave up waiting)"
                            } else {
                                "; start it, or pass --wait-for-sinks 60s"
                            }
                        ));
                    }
                },
            }
        }
    }
    Ok(())
}
