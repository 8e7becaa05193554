//! Calls: one row per call, written by the call task at each state change
//! and read by the API.

use chrono::{DateTime, Utc};

use super::{Page, Result, Store, StoreError, Window, on_pool};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CallRecord {
    pub id: String,
    pub direction: String,
    pub from_number: String,
    pub to_number: String,
    pub trunk: Option<String>,
    pub agent_id: Option<String>,
    pub status: String,
    pub sip_call_id: Option<String>,
    pub sip_code: Option<i64>,
    pub sip_reason: Option<String>,
    pub end_reason: Option<String>,
    /// Digits received, in order.
    pub dtmf: String,
    /// JSON object given when the call was placed.
    pub metadata: String,
    pub ringing_at: Option<DateTime<Utc>>,
    pub answered_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// How many events the call has emitted: the sequence of the last one.
    pub event_seq: i64,
}

/// Filters of a call listing; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct CallFilter<'a> {
    pub status: Option<&'a str>,
    pub direction: Option<&'a str>,
    /// Matches the From or the To number.
    pub number: Option<&'a str>,
    pub agent_id: Option<&'a str>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
}

/// What a new call row starts with.
pub struct NewCall<'a> {
    pub id: &'a str,
    pub direction: &'a str,
    pub from_number: &'a str,
    pub to_number: &'a str,
    pub trunk: Option<&'a str>,
    pub agent_id: Option<&'a str>,
    pub status: &'a str,
    pub sip_call_id: Option<&'a str>,
    pub metadata: &'a str,
}

impl Store {
    pub async fn insert_call(&self, c: NewCall<'_>) -> Result<CallRecord> {
        let now = super::now();
        on_pool!(self, p => sqlx::query(
            "INSERT INTO calls (id, direction, from_number, to_number, trunk, agent_id, status, sip_call_id,
                                metadata, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)")
            .bind(c.id).bind(c.direction).bind(c.from_number).bind(c.to_number).bind(c.trunk)
            .bind(c.agent_id).bind(c.status).bind(c.sip_call_id).bind(c.metadata).bind(now)
            .execute(p).await.map(|r| r.rows_affected()))?;
        self.get_call(c.id).await
    }

    pub async fn get_call(&self, id: &str) -> Result<CallRecord> {
        on_pool!(self, p => sqlx::query_as::<_, CallRecord>(
            "SELECT id, direction, from_number, to_number, trunk, agent_id, status, sip_call_id,
                sip_code, sip_reason, end_reason, dtmf, metadata, ringing_at, answered_at, ended_at, duration_ms,
                created_at, updated_at, event_seq FROM calls WHERE id = $1")
            .bind(id).fetch_optional(p).await)?
        .ok_or(StoreError::NotFound)
    }

    /// Calls matching `f`, newest first.
    pub async fn list_calls(&self, f: &CallFilter<'_>, w: Window) -> Result<Page<CallRecord>> {
        let items = on_pool!(self, p => sqlx::query_as::<_, CallRecord>(
            "SELECT id, direction, from_number, to_number, trunk, agent_id, status, sip_call_id,
                sip_code, sip_reason, end_reason, dtmf, metadata, ringing_at, answered_at, ended_at, duration_ms,
                created_at, updated_at, event_seq FROM calls
             WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR direction = $2)
               AND ($3 IS NULL OR from_number = $3 OR to_number = $3) AND ($4 IS NULL OR agent_id = $4)
               AND ($5 IS NULL OR created_at >= $5) AND ($6 IS NULL OR created_at < $6)
             ORDER BY created_at DESC, id DESC LIMIT $7 OFFSET $8")
            .bind(f.status).bind(f.direction).bind(f.number).bind(f.agent_id)
            .bind(f.created_after).bind(f.created_before).bind(w.limit).bind(w.offset)
            .fetch_all(p).await)?;
        let total: i64 = on_pool!(self, p => sqlx::query_scalar(
            "SELECT COUNT(*) FROM calls
             WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR direction = $2)
               AND ($3 IS NULL OR from_number = $3 OR to_number = $3) AND ($4 IS NULL OR agent_id = $4)
               AND ($5 IS NULL OR created_at >= $5) AND ($6 IS NULL OR created_at < $6)")
            .bind(f.status).bind(f.direction).bind(f.number).bind(f.agent_id)
            .bind(f.created_after).bind(f.created_before)
            .fetch_one(p).await)?;
        Ok(Page { items, total })
    }
}
