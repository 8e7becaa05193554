//! How much a trunk or an API key was used: the outbound calls placed
//! through it (by it) since a time and the minutes they lasted, for the
//! daily caps of toll-fraud policy ([`crate::config::profile::Limits`],
//! `[calls] daily_calls_per_key` and `daily_minutes_per_key`). Counted in
//! the store, so a cap holds over every node of a PostgreSQL store.
//!
//! Must not: decide whether a cap is reached (that is the call layer's).

use chrono::{DateTime, Utc};

use super::{Result, Store, on_pool};

impl Store {
    /// Outbound calls through `trunk_id` created at or after `since`, and
    /// the milliseconds the ended ones lasted.
    pub async fn outbound_usage(&self, trunk_id: &str, since: DateTime<Utc>) -> Result<(i64, i64)> {
        Ok(on_pool!(self, p => sqlx::query_as::<_, (i64, i64)>(
            "SELECT COUNT(*), CAST(COALESCE(SUM(duration_ms), 0) AS BIGINT) FROM calls
             WHERE trunk = $1 AND direction = 'outbound' AND created_at >= $2")
            .bind(trunk_id).bind(since).fetch_one(p).await)?)
    }

    /// Calls placed with API key `key_id` created at or after `since`, and
    /// the milliseconds the ended ones lasted.
    pub async fn key_usage(&self, key_id: &str, since: DateTime<Utc>) -> Result<(i64, i64)> {
        Ok(on_pool!(self, p => sqlx::query_as::<_, (i64, i64)>(
            "SELECT COUNT(*), CAST(COALESCE(SUM(duration_ms), 0) AS BIGINT) FROM calls
             WHERE api_key_id = $1 AND created_at >= $2")
            .bind(key_id).bind(since).fetch_one(p).await)?)
    }
}
