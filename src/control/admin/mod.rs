//! The admin HTTP server (`--admin ADDR`), on axum, from its own thread and current-thread
//! runtime (never a shard thread).
//!
//! - [`routes`]: the router, its middleware (body limit, deadline, bearer token) and errors;
//! - [`api`]: readiness, the device listing and the mutating routes (through the plane);
//! - [`dashboard`]: the live dashboard page (`/`), its aggregates, history ring and SSE;
//! - [`metrics`]: the Prometheus registry and the collector that reads what shards publish;
//! - [`server`]: accept loop and connections (file-descriptor back-off, whole-request deadline).

pub mod api;
pub mod dashboard;
pub mod metrics;
pub mod routes;
pub mod server;

use crate::control::plane::ControlPlane;
use crate::measure::run_identity::RunIdentity;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A running admin server.
pub struct AdminServer {
    pub addr: SocketAddr,
}

/// The request deadline, from `IOT_SIM_ADMIN_REQUEST_TIMEOUT` (a duration such as `10s`).
pub fn limits_from_env() -> Result<server::Limits, String> {
    let mut limits = server::Limits::default();
    if let Ok(v) = std::env::var("IOT_SIM_ADMIN_REQUEST_TIMEOUT") {
        match crate::sim::time::parse_duration_ms(&v) {
            Ok(ms) if ms > 0 => limits.request_timeout = Duration::from_millis(ms),
            _ => {
                return Err(format!(
                    "IOT_SIM_ADMIN_REQUEST_TIMEOUT: expected a duration such as 10s, got {v:?}"
                ));
            }
        }
    }
    Ok(limits)
}

/// Binds `addr` and serves until the process exits.
pub fn start(
    addr: SocketAddr,
    plane: Arc<ControlPlane>,
    run: RunIdentity,
    audit: Option<crate::audit::AuditProbe>,
    thresholds: Arc<dashboard::Thresholds>,
    configured: Vec<(String, &'static str)>,
) -> std::io::Result<AdminServer> {
    let limits = limits_from_env().map_err(std::io::Error::other)?;
    let token = std::env::var("IOT_SIM_ADMIN_TOKEN").ok().filter(|t| !t.trim().is_empty());
    if token.is_none() && !addr.ip().is_loopback() {
        return Err(std::io::Error::other(format!(
            "{addr} is beyond loopback: set IOT_SIM_ADMIN_TOKEN (the bearer token the mutating routes will require), or bind 127.0.0.1"
        )));
    }
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let metrics = metrics::Metrics::new(plane.clone(), run.clone(), audit);
    let history = dashboard::History::default();
    let state = Arc::new(routes::AdminState {
        plane,
        metrics,
        run,
        token,
        history,
        thresholds,
        configured,
    });
    let router = routes::router(state.clone());
    std::thread::Builder::new().name("admin".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "admin: cannot start its runtime");
                return;
            }
        };
        rt.block_on(async move {
            tokio::spawn(dashboard::sample_loop(state));
            match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => server::accept_loop(l, router, limits).await,
                Err(e) => tracing::error!(error = %e, "admin: cannot use its listener"),
            }
        });
    })?;
    Ok(AdminServer { addr: local })
}
