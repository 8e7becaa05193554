//! API key authentication, the per-key rate limit, the limit on failed
//! authentications per client address, and the scope check.
//!
//! Keys arrive as `Authorization: Bearer <key>` or `X-API-Key: <key>`. A
//! client address that failed too often in the last minute is refused
//! before its key is looked at, so guessed keys cannot keep the store busy.
//! The visible prefix finds the candidates; the hash is compared in constant
//! time. Each key gets a GCRA limiter (governor) sized from its own limit or
//! the configured default, and every authenticated answer carries the
//! `X-RateLimit-*` headers. Last, the route's scope (from the one table in
//! `scopes`) is compared with the key's: 403 `forbidden` names the scope
//! missing.
//!
//! Must not: decide a route's scope itself (that is `scopes::ROUTES`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use super::AppState;
use super::error::ApiError;
use super::scopes::{self, Scope};
use crate::secrets;

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// The key a request was authenticated with, for handlers that care.
#[derive(Debug, Clone)]
pub struct AuthedKey {
    pub id: String,
    pub mode: String,
    pub scope: Scope,
    /// Its own limit, `None` when it follows the daemon's default.
    pub rate_limit_per_minute: Option<i64>,
    /// The limit it is held to: its own or the default.
    pub effective_rate_limit: u32,
}

/// The TCP peer of a request, when the server recorded it.
pub fn client_addr(req: &Request) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

/// Failed authentications per client address in fixed one-minute windows.
/// An IPv6 client is counted by its /64, which one host usually holds whole.
struct FailedAuths {
    per_minute: u32,
    // std Mutex: held only to look up or update, never across an `.await`.
    windows: Mutex<Windows>,
}

/// The windows by address, and when expired ones were last swept.
#[derive(Default)]
struct Windows {
    by_addr: HashMap<IpAddr, (Instant, u32)>,
    swept: Option<Instant>,
}

/// Entries kept before expired windows are swept.
const SWEEP_AT: usize = 10_000;
/// Addresses tracked at most: past it a new address is not counted (its
/// failures still cost a store query each), so that a spread of addresses
/// cannot grow the map without bound.
const MAX_TRACKED: usize = 200_000;
const WINDOW: Duration = Duration::from_secs(60);
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl FailedAuths {
    fn bucket(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let s = v6.segments();
                    IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
                }
            },
            v4 => v4,
        }
    }

    /// Seconds until the address may try again, when it is over its limit.
    fn blocked(&self, ip: IpAddr) -> Option<u64> {
        let w = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let (start, n) = w.by_addr.get(&Self::bucket(ip))?;
        let left = WINDOW.checked_sub(start.elapsed())?;
        (*n >= self.per_minute).then(|| left.as_secs().max(1))
    }

    fn fail(&self, ip: IpAddr) {
        let mut w = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        // At most once a second: a sweep walks the whole map.
        if w.by_addr.len() >= SWEEP_AT && w.swept.is_none_or(|t| t.elapsed() >= SWEEP_EVERY) {
            w.by_addr.retain(|_, (start, _)| start.elapsed() < WINDOW);
            w.swept = Some(Instant::now());
        }
        let map = &mut w.by_addr;
        let bucket = Self::bucket(ip);
        if map.len() >= MAX_TRACKED && !map.contains_key(&bucket) {
            return;
        }
        let entry = map.entry(bucket).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
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
    /// Failed authentications by client address.
    failed: FailedAuths,
}

/// What the limiter decided for one request.
pub(super) struct Decision {
    pub(super) limit: u32,
    pub(super) remaining: u32,
    pub(super) reset_secs: u64,
    pub(super) allowed: bool,
}

impl RateLimits {
    pub fn new(default_per_minute: u32, auth_failures_per_minute: u32) -> Self {
        Self {
            default_per_minute: NonZeroU32::new(default_per_minute).unwrap_or(NonZeroU32::MIN),
            clock: DefaultClock::default(),
            limiters: Mutex::new(HashMap::new()),
            failed: FailedAuths {
                per_minute: auth_failures_per_minute.max(1),
                windows: Mutex::new(Windows::default()),
            },
        }
    }

    /// The limit a key is held to: its own, or the default.
    pub fn effective(&self, per_minute: Option<i64>) -> NonZeroU32 {
        per_minute
            .and_then(|n| u32::try_from(n).ok())
            .and_then(NonZeroU32::new)
            .unwrap_or(self.default_per_minute)
    }

    pub(super) fn check(&self, key_id: &str, per_minute: Option<i64>) -> Decision {
        let limit = self.effective(per_minute);
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
    let ip = client_addr(&req).map(|a| a.ip());
    // Before anything else is read: an address that keeps failing costs
    // no store query.
    if let Some(retry) = ip.and_then(|ip| state.rate_limits.failed.blocked(ip)) {
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many failed authentications from this address, retry in {retry} s"),
        )
        .retry_after(retry)
        .into_response();
    }
    let Some(record) = authenticate(&state, req.headers()).await else {
        if let Some(ip) = ip {
            state.rate_limits.failed.fail(ip);
        }
        return ApiError::unauthorized().into_response();
    };
    let record = match record {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    // Shared by the daemons of a PostgreSQL store (rate_limit.rs).
    let decision =
        super::rate_limit::decide(&state, &record.id, record.rate_limit_per_minute).await;
    // A value outside the three is refused by the schema; read it as the
    // weakest anyway.
    let scope = Scope::parse(&record.scope).unwrap_or(Scope::Read);
    let needed = scopes::required(
        req.method(),
        req.extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    );
    let mut response = if !decision.allowed {
        ApiError::rate_limited(decision.reset_secs).into_response()
    } else if !scope.covers(needed) {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this route needs the `{needed}` scope; the key has `{scope}`"),
        )
        .into_response()
    } else {
        req.extensions_mut().insert(AuthedKey {
            effective_rate_limit: state
                .rate_limits
                .effective(record.rate_limit_per_minute)
                .get(),
            id: record.id,
            mode: record.mode,
            scope,
            rate_limit_per_minute: record.rate_limit_per_minute,
        });
        next.run(req).await
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

/// The unrevoked key the headers present; `None` when there is none (a
/// failure that counts against the address), `Some(Err)` when the store
/// could not say.
async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
) -> Option<Result<crate::store::keys::ApiKeyRecord, ApiError>> {
    let key = presented_key(headers)?;
    let prefix = secrets::key_prefix(key)?;
    let candidates = match state.store.api_key_candidates(prefix).await {
        Ok(c) => c,
        Err(e) => return Some(Err(ApiError::internal(e))),
    };
    candidates
        .into_iter()
        .find(|c| secrets::key_matches(key, &c.secret_hash))
        .map(|c| Ok(c.record))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_per_address_and_ipv6_by_its_64() {
        let f = FailedAuths {
            per_minute: 2,
            windows: Mutex::new(Windows::default()),
        };
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(f.blocked(a), None);
        f.fail(a);
        assert_eq!(f.blocked(b), None);
        f.fail(b);
        assert!(f.blocked(a).is_some_and(|s| (1..=60).contains(&s)));
        assert_eq!(f.blocked(other), None);
    }
}
