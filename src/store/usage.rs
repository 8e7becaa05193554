//! How much a trunk was used: the outbound calls placed through it since a
//! time and the minutes they lasted, for the daily caps of toll-fraud
//! policy ([`crate::config::profile::Limits`]).
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
}
