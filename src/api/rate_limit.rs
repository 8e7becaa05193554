//! The per-key API rate limit across daemons.
//!
//! On SQLite one daemon serves the store and counts each key in memory
//! (a GCRA limiter, [`super::auth::RateLimits`]). On PostgreSQL several
//! daemons may serve the same keys, so the count is kept in the store: a
//! fixed one-minute window per key ([`crate::store::rate_limits`]) of the
//! database's clock, counted by every node. The client sees the same as on
//! SQLite: `X-RateLimit-*` headers on every answer, and 429 with
//! `Retry-After` (seconds to the next minute, at most 60) once the key's
//! requests of the minute exceed its limit. The difference: a fixed window
//! lets a client spend its limit at the end of one minute and again at the
//! start of the next (up to twice the limit within 60 s across the
//! boundary), where the in-memory limiter spreads requests evenly; the
//! limit holds in every clock minute. Refused requests count too (they
//! only matter until the minute ends).
//!
//! If the store cannot count (PostgreSQL unreachable), the node falls back
//! to its own in-memory count rather than refusing every request: the
//! limit then holds per node until the store answers again.
//!
//! Must not: authenticate (auth.rs does), or hold SQL.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::AppState;
use super::auth::Decision;
use crate::store::rate_limits::{WINDOW_MS, WindowCount};

/// The decision for one request of `key_id`, whose own limit (if any) is
/// `per_minute`.
pub(super) async fn decide(state: &AppState, key_id: &str, per_minute: Option<i64>) -> Decision {
    if state.store.backend() == "postgres" {
        let limit = state.rate_limits.effective(per_minute);
        match state.store.count_api_request(key_id).await {
            Ok(window) => return shared(limit, window),
            Err(e) => warn_sometimes(&e),
        }
    }
    state.rate_limits.check(key_id, per_minute)
}

/// What a minute's count means for a key limited to `limit` a minute.
fn shared(limit: NonZeroU32, w: WindowCount) -> Decision {
    let limit = limit.get();
    let used = u32::try_from(w.current.max(0)).unwrap_or(u32::MAX);
    // Whole seconds to the next minute, rounded up: a client that waits
    // this long is counted afresh. At least 1, so a 429 never says "retry
    // in 0 s".
    let reset_secs = ((WINDOW_MS - w.elapsed_ms + 999) / 1000).max(1) as u64;
    Decision {
        limit,
        remaining: limit.saturating_sub(used),
        reset_secs,
        allowed: used <= limit,
    }
}

/// Logs a failed count at most once a minute (every request would fail
/// the same way while the store is down).
fn warn_sometimes(e: &crate::store::StoreError) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let last = LAST.load(Ordering::Relaxed);
    if now >= last + 60
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(error = %e,
            "cannot count the API rate limit in the store; counting per node meanwhile");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(current: i64, elapsed_ms: i64) -> WindowCount {
        WindowCount {
            window: 29_000_000,
            current,
            elapsed_ms,
        }
    }

    #[test]
    fn the_limit_holds_within_a_minute() {
        let five = NonZeroU32::new(5).unwrap();
        let remaining: Vec<u32> = (1..=5)
            .map(|n| shared(five, counts(n, 1_000)))
            .inspect(|d| assert!(d.allowed))
            .map(|d| d.remaining)
            .collect();
        assert_eq!(remaining, [4, 3, 2, 1, 0]);
        let d = shared(five, counts(6, 1_000));
        assert!(!d.allowed);
        assert_eq!((d.remaining, d.reset_secs), (0, 59));
        let d = shared(five, counts(9, 49_999));
        assert_eq!(d.reset_secs, 11);
        // The last moment of a minute still says wait a second, not zero.
        let d = shared(five, counts(9, 60_000));
        assert!(!d.allowed);
        assert_eq!(d.reset_secs, 1);
    }
}
