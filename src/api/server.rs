//! The HTTP/1.1 server under the API: accepts connections and holds each
//! client to the `[api]` limits, so that a slow or greedy client costs a
//! bounded share of the daemon.
//!
//! - `header_read_timeout_seconds`: a request's headers must arrive within
//!   it (a slow-loris client sending a byte at a time is disconnected);
//! - `body_timeout_seconds`: a request's body must arrive within it;
//! - `max_connections`: connections beyond it are closed at accept;
//! - `max_concurrent_requests`: requests beyond it get 503 at once (an
//!   event stream counts only until its answer starts).
//!
//! Each request carries its TCP peer (`ConnectInfo<SocketAddr>`) for the
//! per-address limit on failed authentications and the audit log.
//!
//! Must not: route, authenticate or know any handler.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

use super::error::ApiError;
use crate::config::ApiConfig;

/// How long open connections get to finish once the server is told to stop.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The limits one server holds its clients to.
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
    pub max_concurrent_requests: usize,
}

impl Limits {
    pub fn from_config(c: &ApiConfig) -> Self {
        Self {
            header_read_timeout: Duration::from_secs(c.header_read_timeout_seconds),
            body_timeout: Duration::from_secs(c.body_timeout_seconds),
            max_connections: c.max_connections,
            max_concurrent_requests: c.max_concurrent_requests,
        }
    }
}

/// What the per-request layer shares.
struct RequestLimits {
    body_timeout: Duration,
    in_flight: Semaphore,
}

/// Serves `router` on `listener` until `stop` turns true, then lets open
/// connections finish (bounded).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let shared = Arc::new(RequestLimits {
        body_timeout: limits.body_timeout,
        in_flight: Semaphore::new(limits.max_concurrent_requests),
    });
    let router = router.layer(middleware::from_fn_with_state(shared, limit_request));
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, mostly: wait for some to
                    // free rather than spin.
                    tracing::warn!(error = %e, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            tracing::debug!(%peer, "API connection refused: api.max_connections reached");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let router = router.clone();
            async move {
                let res: Result<Response, Infallible> = router.oneshot(req.map(Body::new)).await;
                res
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(TokioIo::new(tcp), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "API connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(STOP_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("API connections still open after the stop grace");
    }
    Ok(())
}

/// Returns once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Refuses a request over the concurrency limit, and gives its body a
/// deadline.
async fn limit_request(
    State(limits): State<Arc<RequestLimits>>,
    req: Request,
    next: Next,
) -> Response {
    let Ok(_permit) = limits.in_flight.try_acquire() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many requests in progress; retry shortly",
        )
        .retry_after(1)
        .into_response();
    };
    next.run(with_body_deadline(req, limits.body_timeout)).await
}

/// The request with a body that fails once `timeout` has passed since the
/// request arrived, whatever pace the client keeps.
fn with_body_deadline(req: Request, timeout: Duration) -> Request {
    let deadline = tokio::time::Instant::now() + timeout;
    let (parts, body) = req.into_parts();
    let chunks = body.into_data_stream();
    let timed = futures_util::stream::unfold(Some(chunks), move |chunks| async move {
        let mut chunks = chunks?;
        match tokio::time::timeout_at(deadline, chunks.next()).await {
            Ok(Some(item)) => Some((item, Some(chunks))),
            Ok(None) => None,
            Err(_) => Some((
                Err(axum::Error::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the request body did not arrive in time",
                ))),
                None,
            )),
        }
    });
    Request::from_parts(parts, Body::from_stream(timed))
}
