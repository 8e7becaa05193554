//! API key authentication and the per-key rate limit.
//!
//! Keys arrive as `Authorization: Bearer <key>` or `X-API-Key: <key>`. The
//! visible prefix finds the candidates; the hash is compared in constant
//! time. Each key gets a GCRA limiter (governor) sized from its own limit or
//! the configured default, and every authenticated answer carries the
//! `X-RateLimit-*` headers.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use super::AppState;
use super::error::ApiError;
use crate::secrets;

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// The key a request was authenticated with, for handlers that care.
#[derive(Debug, Clone)]
pub struct AuthedKey {
    pub id: String,
    pub mode: String,
}

/// One limiter per key, created on first use and replaced when the key's
/// limit changes.
pub struct RateLimits {
    /// The limit of a key that sets none of its own.
    default_per_minute: NonZeroU32,
    /// The one clock every limiter reads.
    clock: DefaultClock,
    // std Mutex: held only to look up or insert, never across an `.await`
    // (clippy's `await_holding_lock` checks it).
    limiters: Mutex<HashMap<String, (NonZeroU32, Arc<Limiter>)>>,
}

/// What the limiter decided for one request.
struct Decision {
    limit: u32,
    remaining: u32,
    reset_secs: u64,
    allowed: bool,
}

impl RateLimits {
    pub fn new(default_per_minute: u32) -> Self {
        Self {
            default_per_minute: NonZeroU32::new(default_per_minute).unwrap_or(NonZeroU32::MIN),
            clock: DefaultClock::default(),
            limiters: Mutex::new(HashMap::new()),
        }
    }

    fn check(&self, key_id: &str, per_minute: Option<i64>) -> Decision {
        let limit = per_minute
            .and_then(|n| u32::try_from(n).ok())
            .and_then(NonZeroU32::new)
            .unwrap_or(self.default_per_minute);
        let limiter = {
            let mut map = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
            match map.get(key_id) {
                Some((l, limiter)) if *l == limit => limiter.clone(),
                _ => {
                    let limiter = Arc::new(
                        RateLimiter::direct(Quota::per_minute(limit))
                            .with_middleware::<StateInformationMiddleware>(),
                    );
                    map.insert(key_id.to_string(), (limit, limiter.clone()));
                    limiter
                }
            }
        };
        // GCRA replenishes one request every 60/limit seconds.
        let per_request = 60.0 / f64::from(limit.get());
        match limiter.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let missing = f64::from(limit.get() - remaining.min(limit.get()));
                Decision {
                    limit: limit.get(),
                    remaining,
                    reset_secs: (missing * per_request).ceil() as u64,
                    allowed: true,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Decision {
                    limit: limit.get(),
                    remaining: 0,
                    reset_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
                    allowed: false,
                }
            }
        }
    }
}

fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim());
    }
    headers.get("x-api-key")?.to_str().ok().map(str::trim)
}

/// Middleware on every protected route.
pub async fn require_key(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let Some(key) = presented_key(req.headers()) else {
        return ApiError::unauthorized().into_response();
    };
    let Some(prefix) = secrets::key_prefix(key) else {
        return ApiError::unauthorized().into_response();
    };
    let candidates = match state.store.api_key_candidates(prefix).await {
        Ok(c) => c,
        Err(e) => return ApiError::internal(e).into_response(),
    };
    let Some(found) = candidates
        .into_iter()
        .find(|c| secrets::key_matches(key, &c.secret_hash))
    else {
        return ApiError::unauthorized().into_response();
    };
    let record = found.record;
    let decision = state
        .rate_limits
        .check(&record.id, record.rate_limit_per_minute);
    let mut response = if decision.allowed {
        req.extensions_mut().insert(AuthedKey {
            id: record.id,
            mode: record.mode,
        });
        next.run(req).await
    } else {
        ApiError::rate_limited(decision.reset_secs).into_response()
    };
    let headers = response.headers_mut();
    headers.insert("x-ratelimit-limit", HeaderValue::from(decision.limit));
    headers.insert(
        "x-ratelimit-remaining",
        HeaderValue::from(decision.remaining),
    );
    headers.insert("x-ratelimit-reset", HeaderValue::from(decision.reset_secs));
    response
}
