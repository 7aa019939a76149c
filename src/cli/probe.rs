//! `iot-sim probe`: is a runtime ready? Exit 0 yes, 1 no — a container `HEALTHCHECK` (or a
//! Kubernetes exec probe) that needs no shell, curl or grpc_health_probe in the image.
//!
//! `--admin ADDR` asks `GET /readyz` (200 = every shard runs and every network sink is
//! connected); `--grpc ADDR` asks `grpc.health.v1.Health/Check` (SERVING). Both may be given;
//! every check must pass. Every step is bounded by `--timeout`.

use super::exit;
use anyhow::Context;
use clap::Args;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// Admin HTTP address whose /readyz must answer 200 (e.g. 127.0.0.1:9090).
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// gRPC address whose grpc.health.v1 Check must answer SERVING (e.g. 127.0.0.1:50051).
    #[arg(long, value_name = "ADDR")]
    pub grpc: Option<SocketAddr>,
    /// The most each check may take (connect, request and answer), such as 3s.
    #[arg(long, value_name = "D", default_value = "3s", value_parser = parse_timeout)]
    pub timeout: u64,
}

fn parse_timeout(s: &str) -> Result<u64, String> {
    let ms = super::parse_duration(s)?;
    let max = crate::limits::MAX_PROBE_TIMEOUT_S;
    if ms > max * 1000 {
        return Err(format!("at most {max}s, got {s}"));
    }
    Ok(ms)
}

pub fn main(a: &ProbeArgs) -> anyhow::Result<i32> {
    if a.admin.is_none() && a.grpc.is_none() {
        eprintln!("error: probe needs --admin ADDR, --grpc ADDR or both");
        return Ok(exit::BAD_CONFIG);
    }
    let timeout = Duration::from_millis(a.timeout);
    let mut ok = true;
    if let Some(addr) = a.admin {
        match readyz(addr, timeout) {
            Ok(()) => println!("admin {addr}: ready"),
            Err(e) => {
                println!("admin {addr}: not ready: {e}");
                ok = false;
            }
        }
    }
    if let Some(addr) = a.grpc {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start tokio")?;
        match rt.block_on(async { tokio::time::timeout(timeout, grpc_health(addr, timeout)).await })
        {
            Ok(Ok(())) => println!("grpc {addr}: serving"),
            Ok(Err(e)) => {
                println!("grpc {addr}: not serving: {e}");
                ok = false;
            }
            Err(_) => {
                println!("grpc {addr}: not serving: no answer within {timeout:?}");
                ok = false;
            }
        }
    }
    Ok(if ok { exit::OK } else { exit::FAILED })
}

/// `GET /readyz` over a plain HTTP/1.1 connection; Ok for status 200.
fn readyz(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let req = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|e| format!("send: {e}"))?;
    // The status line and a little of the body (the reason when not ready) are enough.
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    while n < buf.len() {
        match s.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if n == 0 => return Err(format!("read: {e}")),
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&buf[..n]);
    let status = text.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").trim();
        Err(format!("{status} {body}").trim().to_string())
    }
}

async fn grpc_health(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(timeout)
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut client = tonic_health::pb::health_client::HealthClient::new(ch);
    let r = client
        .check(HealthCheckRequest { service: String::new() })
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    match ServingStatus::try_from(r.status) {
        Ok(ServingStatus::Serving) => Ok(()),
        Ok(other) => Err(format!("status {}", other.as_str_name())),
        Err(_) => Err(format!("status {}", r.status)),
    }
}
