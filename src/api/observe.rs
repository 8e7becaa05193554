//! Per-request observability: a request id (`X-Request-Id`, echoed or made),
//! a tracing span carrying it, and the HTTP metrics by route and status.
//! The id is also left in the request's extensions ([`RequestId`]) for the
//! audit log.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::{ids, metrics as m};

/// The request id, as the request's extension.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

pub async fn observe(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| ids::new(ids::REQUEST));
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = req.method().to_string();
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let span = tracing::info_span!("http", request_id = %request_id, %method, %route);
    let mut response = next.run(req).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.in_scope(|| {
        tracing::debug!(
            status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "request"
        )
    });
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    let labels = [
        ("route", route),
        ("method", method),
        ("status", status.to_string()),
    ];
    metrics::counter!(m::HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(m::HTTP_REQUEST_DURATION, &labels[..2])
        .record(started.elapsed().as_secs_f64());
    response
}
