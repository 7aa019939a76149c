//! The admin routes: one [`Router`] built by [`router`], state in an `Arc`, small handlers, and
//! every error as an [`ApiError`] (JSON `{"error": ...}` with its status).

use super::api;
use super::dashboard;
use super::metrics::{self, Metrics};
use super::server::Deadline;
use crate::control::plane::ControlPlane;
use crate::measure::run_identity::RunIdentity;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;

/// Largest request body accepted (JSON bodies of the mutating routes).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// What the handlers share.
pub struct AdminState {
    pub plane: Arc<ControlPlane>,
    pub metrics: Metrics,
    pub run: RunIdentity,
    /// The bearer token the mutating routes require (`IOT_SIM_ADMIN_TOKEN`); `None` = open
    /// (only allowed on loopback).
    pub token: Option<String>,
    /// The dashboard's ring of fleet figures (one point a second).
    pub history: dashboard::History,
    /// The run's thresholds and, once judged, their verdicts.
    pub thresholds: Arc<dashboard::Thresholds>,
    /// The device types (and protocols) of the config's profiles, devices or not: what the
    /// spawn form offers before anything runs.
    pub configured: Vec<(String, &'static str)>,
}

/// Every admin route.
pub fn router(state: Arc<AdminState>) -> Router {
    let mutating = Router::new()
        .route("/api/v1/spawn", post(api::spawn))
        .route("/api/v1/stop", post(api::stop))
        .route("/api/v1/pause", post(api::pause))
        .route("/api/v1/resume", post(api::resume))
        .route("/api/v1/faults", post(api::inject_fault).delete(api::clear_faults))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/", get(dashboard::page))
        .route("/api/v1/overview", get(dashboard::overview))
        .route("/api/v1/overview/labels", get(dashboard::labels))
        .route("/api/v1/history", get(dashboard::history))
        .route("/api/v1/profiles", get(dashboard::profiles))
        .route("/api/v1/thresholds", get(dashboard::thresholds))
        .route("/api/v1/telemetry/stream", get(dashboard::telemetry_stream))
        .route("/healthz", get(healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/api/v1/status", get(status))
        .route("/api/v1/devices", get(api::devices))
        .merge(mutating)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(guard))
        .with_state(state)
}

/// An error answer: its status and a JSON body `{"error": message}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("request not complete within the deadline")]
    Timeout,
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Timeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.to_string() });
        (self.status(), Json(body)).into_response()
    }
}

/// A JSON body whose rejections (malformed, wrong shape, too large) are [`ApiError`]s.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::TooLarge(format!("request body larger than {MAX_BODY_BYTES} bytes")))
            }
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

/// Refuses a body announced larger than [`MAX_BODY_BYTES`] on any route (413, before reading
/// it), and cuts a handler still running at the request's deadline (set per connection by the
/// server) with 408.
async fn guard(req: Request, next: Next) -> Response {
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = announced.filter(|&n| n > MAX_BODY_BYTES as u64) {
        return ApiError::TooLarge(format!(
            "request body of {n} bytes is larger than the limit of {MAX_BODY_BYTES} bytes"
        ))
        .into_response();
    }
    match req.extensions().get::<Deadline>().copied() {
        Some(Deadline(at)) => match tokio::time::timeout_at(at, next.run(req)).await {
            Ok(r) => r,
            Err(_) => ApiError::Timeout.into_response(),
        },
        None => next.run(req).await,
    }
}

/// Mutating routes: with a token configured, `Authorization: Bearer <token>` or 401.
async fn auth(State(s): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    if let Some(token) = &s.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| same(g.trim().as_bytes(), token.as_bytes())) {
            return ApiError::Unauthorized(
                "this route needs Authorization: Bearer <IOT_SIM_ADMIN_TOKEN>".into(),
            )
            .into_response();
        }
    }
    // The journal records what this request changes with `"source": "admin"`.
    crate::control::journal::FRONT_END.scope("admin", next.run(req)).await
}

/// Compares without stopping at the first difference (no timing hint about the token).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(s): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let ctype = if openmetrics { metrics::OPENMETRICS } else { metrics::TEXT };
    ([(header::CONTENT_TYPE, ctype)], s.metrics.render(openmetrics)).into_response()
}

async fn status(State(s): State<Arc<AdminState>>) -> Json<serde_json::Value> {
    let f = s.plane.figures();
    let mut v = serde_json::to_value(&f).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("devices_total".into(), f.devices.iter().sum::<u64>().into());
        o.insert("messages_total".into(), f.messages.iter().sum::<u64>().into());
        o.insert("errors_total".into(), f.errors.iter().sum::<u64>().into());
        o.insert("resident_memory_bytes".into(), crate::report::rss_bytes().into());
        o.insert("threads".into(), metrics::thread_count().into());
        o.insert("run".into(), serde_json::to_value(&s.run).unwrap_or_default());
    }
    Json(v)
}

async fn not_found(req: Request) -> ApiError {
    ApiError::NotFound(format!(
        "no route {} {}; try / (the dashboard), /healthz, /readyz, /metrics, /api/v1/status, /api/v1/devices",
        req.method(),
        req.uri().path()
    ))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::MethodNotAllowed(format!("{} is not served on {}", req.method(), req.uri().path()))
}
