//! The shared counter of the per-key API rate limit (PostgreSQL): one row
//! per key and minute, counted up by every daemon of the database, so a
//! key's limit holds across nodes. The window is the database's clock, not
//! the nodes', so nodes whose clocks drift still count in the same minute.
//!
//! Must not: decide anything (the API's `rate_limit` does), or be used on
//! SQLite (one daemon, which counts in memory).

use super::{Pool, Result, Store, StoreError};

/// Length of a window, in milliseconds: limits are per minute.
pub const WINDOW_MS: i64 = 60_000;

/// Counts one request in the current minute and reads back its count and
/// how far into the minute the request is. `now()` is the statement's
/// start, so both agree.
const COUNT: &str = "INSERT INTO api_rate_windows (key_id, window_start, count)
    VALUES ($1, floor(extract(epoch FROM now()) / 60)::bigint, 1)
    ON CONFLICT (key_id, window_start) DO UPDATE SET count = api_rate_windows.count + 1
    RETURNING window_start, count,
        (floor(extract(epoch FROM now()) * 1000) - window_start * 60000)::bigint";

/// The windows of a key before the current one: no longer read.
const FORGET: &str = "DELETE FROM api_rate_windows WHERE key_id = $1 AND window_start < $2";

/// A key's requests in the current minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowCount {
    /// The minute counted in (minutes since the epoch).
    pub window: i64,
    /// Requests counted in this minute, this one included.
    pub current: i64,
    /// Milliseconds since this minute began.
    pub elapsed_ms: i64,
}

impl Store {
    /// Counts a request of `key_id` in the current minute, shared by every
    /// daemon of this PostgreSQL database.
    pub async fn count_api_request(&self, key_id: &str) -> Result<WindowCount> {
        let Pool::Postgres(p) = &self.pool else {
            return Err(StoreError::Unavailable(
                "the shared rate limit needs PostgreSQL".into(),
            ));
        };
        let (window, current, elapsed_ms): (i64, i64, i64) =
            sqlx::query_as(COUNT).bind(key_id).fetch_one(p).await?;
        if current == 1 {
            // The first request of a minute: the key's older windows are
            // done with. Once a minute per active key.
            sqlx::query(FORGET)
                .bind(key_id)
                .bind(window)
                .execute(p)
                .await?;
        }
        Ok(WindowCount {
            window,
            current,
            elapsed_ms: elapsed_ms.clamp(0, WINDOW_MS),
        })
    }
}
