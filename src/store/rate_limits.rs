//! The shared counter of the per-key API rate limit (PostgreSQL): one row
//! per key and minute, counted up by every daemon of the database, so a
//! key's limit holds across nodes. The window is the database's clock, not
//! the nodes', so nodes whose clocks drift still count in the same minute.
//!
//! Must not: decide anything (the API's `rate_limit` does), or be used on
//! SQLite (one daemon, which counts in memory).

use super::{Pool, Result, Store, StoreError};

/// Length of a window, in seconds: limits are per minute.
pub const WINDOW_SECONDS: i64 = 60;

/// Counts one request and reads the window's count back. `now()` is the
/// statement's start, so the window and the time left in it agree.
const COUNT: &str = "INSERT INTO api_rate_windows (key_id, window_start, count)
     VALUES ($1, floor(extract(epoch FROM now()) / 60)::bigint, 1)
     ON CONFLICT (key_id, window_start) DO UPDATE SET count = api_rate_windows.count + 1
     RETURNING count, window_start,
         ((window_start + 1) * 60000 - floor(extract(epoch FROM now()) * 1000))::bigint";

/// The windows of a key before `$2`: gone once a new one starts.
const FORGET: &str = "DELETE FROM api_rate_windows WHERE key_id = $1 AND window_start < $2";

/// A key's requests in the current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowCount {
    /// Requests counted in this window, this one included.
    pub count: i64,
    /// Milliseconds until the window ends (and the count starts over).
    pub resets_in_ms: i64,
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
        let (count, window, resets_in_ms): (i64, i64, i64) =
            sqlx::query_as(COUNT).bind(key_id).fetch_one(p).await?;
        if count == 1 {
            // The first request of a window: the key's older windows are
            // done with. Once a minute per active key.
            sqlx::query(FORGET)
                .bind(key_id)
                .bind(window)
                .execute(p)
                .await?;
        }
        Ok(WindowCount {
            count,
            resets_in_ms: resets_in_ms.clamp(0, WINDOW_SECONDS * 1000),
        })
    }
}
