//! The admin HTTP server (`--admin ADDR`): health, Prometheus metrics and a JSON status, served
//! from its own thread and current-thread runtime (never a shard thread).
//!
//! - `GET /healthz` -> `ok`
//! - `GET /metrics` -> Prometheus text format (`iot_sim_*`, per shard where counted per shard)
//! - `GET /status`  -> the same figures as JSON
//!
//! A deliberately small HTTP/1.1 server: one request per connection, GET only; anything else
//! gets 404 or 405, never a panic.

use super::plane::{ControlPlane, Figures};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running admin server.
pub struct AdminServer {
    pub addr: SocketAddr,
}

/// Binds `addr` and serves until the process exits.
pub fn start(addr: SocketAddr, plane: Arc<ControlPlane>) -> std::io::Result<AdminServer> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new().name("admin".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "admin: cannot start its runtime");
                return;
            }
        };
        rt.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let plane = plane.clone();
                tokio::spawn(async move {
                    let _ = handle(stream, &plane).await;
                });
            }
        });
    })?;
    Ok(AdminServer { addr: local })
}

async fn handle(mut stream: tokio::net::TcpStream, plane: &ControlPlane) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    // Read until the end of the request head (or 4 KiB).
    while n < buf.len() {
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf[n..]))
            .await;
        match r {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(k)) => n += k,
            Ok(Err(e)) => return Err(e),
        }
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = route(method, path, plane);
    let resp = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(resp.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Answers one request: (status line, content type, body).
pub fn route(
    method: &str,
    path: &str,
    plane: &ControlPlane,
) -> (&'static str, &'static str, String) {
    let path = path.split('?').next().unwrap_or("");
    if method != "GET" {
        return ("405 Method Not Allowed", "text/plain", "only GET is served\n".into());
    }
    match path {
        "/healthz" => ("200 OK", "text/plain", "ok\n".into()),
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", prometheus(&plane.figures())),
        "/status" => {
            let f = plane.figures();
            let mut v = serde_json::to_value(&f).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("devices_total".into(), f.devices.iter().sum::<u64>().into());
                o.insert("messages_total".into(), f.messages.iter().sum::<u64>().into());
                o.insert("resident_memory_bytes".into(), crate::report::rss_bytes().into());
            }
            ("200 OK", "application/json", v.to_string() + "\n")
        }
        _ => ("404 Not Found", "text/plain", "try /healthz, /metrics or /status\n".into()),
    }
}

/// The figures in the Prometheus text exposition format.
pub fn prometheus(f: &Figures) -> String {
    let mut out = String::new();
    let mut per_shard = |name: &str, kind: &str, help: &str, values: &[u64]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (shard, v) in values.iter().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {v}");
        }
    };
    per_shard("iot_sim_devices", "gauge", "Live devices.", &f.devices);
    per_shard("iot_sim_messages_total", "counter", "Messages completed by the sinks.", &f.messages);
    per_shard("iot_sim_errors_total", "counter", "Messages that failed in the sinks.", &f.errors);
    per_shard(
        "iot_sim_messages_suppressed_total",
        "counter",
        "Messages not published because of a DISCONNECT fault.",
        &f.suppressed,
    );
    per_shard(
        "iot_sim_faults_active",
        "gauge",
        "Active faults (one per device and fault).",
        &f.faults_active,
    );
    let _ = writeln!(
        out,
        "# HELP iot_sim_messages_per_second Recent completion rate.\n# TYPE iot_sim_messages_per_second gauge\niot_sim_messages_per_second {}",
        f.messages_per_second
    );
    let _ = writeln!(
        out,
        "# HELP iot_sim_telemetry_points_dropped_total Stream points dropped for slow gRPC clients.\n# TYPE iot_sim_telemetry_points_dropped_total counter\niot_sim_telemetry_points_dropped_total {}",
        f.telemetry_points_dropped
    );
    let _ = writeln!(
        out,
        "# HELP iot_sim_resident_memory_bytes Resident memory.\n# TYPE iot_sim_resident_memory_bytes gauge\niot_sim_resident_memory_bytes {}",
        crate::report::rss_bytes()
    );
    let _ = writeln!(
        out,
        "# HELP iot_sim_uptime_seconds Time since the control plane started.\n# TYPE iot_sim_uptime_seconds gauge\niot_sim_uptime_seconds {:.3}",
        f.uptime_seconds
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_in_prometheus_text_format() {
        let f = Figures {
            devices: vec![3, 4],
            messages: vec![10, 20],
            errors: vec![0, 1],
            suppressed: vec![0, 0],
            faults_active: vec![1, 0],
            messages_per_second: 2.5,
            telemetry_points_dropped: 0,
            uptime_seconds: 1.0,
            fallback_devices: Default::default(),
        };
        let text = prometheus(&f);
        assert!(text.contains("# TYPE iot_sim_messages_total counter\n"));
        assert!(text.contains("iot_sim_messages_total{shard=\"1\"} 20\n"));
        assert!(text.contains("iot_sim_devices{shard=\"0\"} 3\n"));
        assert!(text.contains("iot_sim_messages_per_second 2.5\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let mut it = line.rsplitn(2, ' ');
            let value = it.next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad sample line {line:?}");
        }
    }
}
