//! Routes for operators and tools: `/health`, `/ready`, `/metrics`,
//! `/openapi.json` and `/docs`. `/metrics` is protected unless
//! `api.metrics_open`.

use std::sync::atomic::{AtomicU8, Ordering};

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorResponses};

/// Whether the daemon takes new work: starting, ready, or draining on
/// SIGTERM. `/ready` answers 503 unless ready, so a load balancer moves
/// traffic away before calls are refused.
#[derive(Debug)]
pub struct Readiness(
    /// `STARTING`, `READY` or `DRAINING`; written by `app`, read per probe.
    AtomicU8,
);

const STARTING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;

impl Default for Readiness {
    fn default() -> Self {
        Self(AtomicU8::new(STARTING))
    }
}

impl Readiness {
    pub fn set_ready(&self) {
        self.0.store(READY, Ordering::SeqCst);
    }

    pub fn set_draining(&self) {
        self.0.store(DRAINING, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::SeqCst) == DRAINING
    }

    fn label(&self) -> &'static str {
        match self.0.load(Ordering::SeqCst) {
            READY => "ready",
            DRAINING => "draining",
            _ => "starting",
        }
    }
}

pub fn open_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(openapi))
        .routes(routes!(docs))
}

pub fn metrics_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(metrics))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    /// `ok`; for readiness `ready`, `starting` or `draining`.
    pub status: String,
}

/// Liveness: answers while the process runs.
#[utoipa::path(get, path = "/health", tag = "system", security(()),
    responses((status = 200, description = "Alive", body = Status)))]
async fn health() -> Json<Status> {
    Json(Status {
        status: "ok".into(),
    })
}

/// Readiness: 503 while starting, while draining, or when the store is down.
#[utoipa::path(get, path = "/ready", tag = "system", security(()),
    responses((status = 200, description = "Ready", body = Status),
              (status = 503, description = "Starting, draining or store unavailable", body = Status)))]
async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Status>) {
    let mut label = state.readiness.label();
    if label == "ready" && state.store.ping().await.is_err() {
        label = "store_unavailable";
    }
    let code = if label == "ready" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(Status {
            status: label.into(),
        }),
    )
}

/// Prometheus metrics in the text exposition format. Needs a key (a `read`
/// key is enough) unless `api.metrics_open` is set; `api.metrics_listen`
/// serves it without a key on an address of its own.
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
              ErrorResponses))]
async fn metrics(State(state): State<AppState>) -> Response {
    let body = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// This API's OpenAPI 3 document.
#[utoipa::path(get, path = "/openapi.json", tag = "system", security(()),
    responses((status = 200, description = "OpenAPI 3 document", body = Object)))]
async fn openapi(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi_json.clone(),
    )
        .into_response()
}

/// A readable page generated from the OpenAPI document.
#[utoipa::path(get, path = "/docs", tag = "system", security(()),
    responses((status = 200, description = "HTML page", body = String, content_type = "text/html")))]
async fn docs() -> Html<&'static str> {
    Html(include_str!("docs.html"))
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("route")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}
