//! Events: the outbox. An event row is written in the same transaction as
//! the state change that caused it, together with one delivery row per
//! enabled endpoint subscribed to its type, so a crash between the change and
//! the delivery loses nothing.
//!
//! The seam for the call layer is [`Store::insert_call_and_emit`] and
//! [`Store::update_call_and_emit`]: each takes the call change and a closure
//! that builds the event from the call row as it stands inside the
//! transaction (with its per-call sequence already taken), and commits both or
//! neither. Events that change no call (trunk registration, test events) use
//! [`Store::emit`]. The caller renders the payload; this module stores it as
//! opaque text and never parses it.
//!
//! Must not: render JSON, sign or send anything (that is `webhook`).

use chrono::{DateTime, Utc};

use super::calls::{CallRecord, NewCall};
use super::{Result, Store, StoreError, on_pool};
use crate::ids;

/// Who gets a delivery of a new event.
#[derive(Debug, Clone)]
pub enum Fanout {
    /// Every enabled endpoint subscribed to the event's type.
    Subscribed,
    /// Only this endpoint, whatever it subscribes to (test events).
    Endpoint(String),
}

/// An event ready to be written. `payload` is the exact body that will be
/// signed and delivered.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: String,
    pub event_type: String,
    pub api_version: String,
    pub call_id: Option<String>,
    pub call_seq: Option<i64>,
    pub payload: String,
    pub created_at: DateTime<Utc>,
    pub fanout: Fanout,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRecord {
    /// Global order of the live stream.
    pub seq: i64,
    pub id: String,
    #[sqlx(rename = "type")]
    pub event_type: String,
    pub api_version: String,
    pub call_id: Option<String>,
    pub call_seq: Option<i64>,
    pub payload: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A change to a call row; `None` leaves a column as it is.
#[derive(Debug, Clone, Default)]
pub struct CallUpdate<'a> {
    pub status: Option<&'a str>,
    pub sip_code: Option<i64>,
    pub sip_reason: Option<&'a str>,
    pub end_reason: Option<&'a str>,
    /// Appended to the digits already received.
    pub dtmf: Option<&'a str>,
    pub ringing_at: Option<DateTime<Utc>>,
    pub answered_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
}

const EVENT_COLUMNS: &str =
    "seq, id, type, api_version, call_id, call_seq, payload, created_at, updated_at";

const CALL_COLUMNS: &str = "id, direction, from_number, to_number, trunk, agent_id, status, sip_call_id,
    sip_code, sip_reason, end_reason, dtmf, metadata, ringing_at, answered_at, ended_at, duration_ms,
    created_at, updated_at, event_seq";

/// Writes the event and its deliveries inside the open transaction `$tx`.
macro_rules! write_event {
    ($tx:ident, $ev:expr) => {{
        let ev: &NewEvent = $ev;
        sqlx::query(
            "INSERT INTO events (id, type, api_version, call_id, call_seq, payload, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        )
        .bind(&ev.id)
        .bind(&ev.event_type)
        .bind(&ev.api_version)
        .bind(&ev.call_id)
        .bind(ev.call_seq)
        .bind(&ev.payload)
        .bind(ev.created_at)
        .execute(&mut *$tx)
        .await?;
        let endpoints: Vec<String> = match &ev.fanout {
            Fanout::Subscribed => {
                sqlx::query_scalar(
                    "SELECT id FROM webhook_endpoints WHERE enabled AND events LIKE $1 ORDER BY id",
                )
                .bind(format!("%\"{}\"%", ev.event_type))
                .fetch_all(&mut *$tx)
                .await?
            }
            Fanout::Endpoint(id) => vec![id.clone()],
        };
        for endpoint in &endpoints {
            sqlx::query(
                "INSERT INTO webhook_deliveries (id, event_id, endpoint_id, status, next_attempt_at,
                     created_at, updated_at)
                 VALUES ($1, $2, $3, 'pending', $4, $4, $4)",
            )
            .bind(ids::new(ids::DELIVERY))
            .bind(&ev.id)
            .bind(endpoint)
            .bind(ev.created_at)
            .execute(&mut *$tx)
            .await?;
        }
        sqlx::query_as::<_, EventRecord>(sqlx::AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE id = $1"
        )))
        .bind(&ev.id)
        .fetch_one(&mut *$tx)
        .await?
    }};
}

impl Store {
    /// Inserts a call and its first event (usually `call.initiated` or
    /// `call.ringing`) in one transaction. `build` sees the new row with its
    /// per-call sequence (1).
    pub async fn insert_call_and_emit(
        &self,
        c: NewCall<'_>,
        build: impl FnOnce(&CallRecord) -> Result<NewEvent>,
    ) -> Result<(CallRecord, EventRecord)> {
        let now = super::now();
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let call = sqlx::query_as::<_, CallRecord>(sqlx::AssertSqlSafe(format!(
                "INSERT INTO calls (id, direction, from_number, to_number, trunk, agent_id, status, sip_call_id,
                                    metadata, created_at, updated_at, event_seq)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, 1) RETURNING {CALL_COLUMNS}")))
                .bind(c.id).bind(c.direction).bind(c.from_number).bind(c.to_number).bind(c.trunk)
                .bind(c.agent_id).bind(c.status).bind(c.sip_call_id).bind(c.metadata).bind(now)
                .fetch_one(&mut *tx).await?;
            let ev = build(&call)?;
            let event = write_event!(tx, &ev);
            tx.commit().await?;
            Ok((call, event))
        })
    }

    /// Applies `u` to call `id` and writes the event `build` makes from the
    /// updated row, in one transaction: both are stored or neither. The row
    /// handed to `build` carries the event's per-call sequence in
    /// `event_seq`.
    pub async fn update_call_and_emit(
        &self,
        id: &str,
        u: &CallUpdate<'_>,
        build: impl FnOnce(&CallRecord) -> Result<NewEvent>,
    ) -> Result<(CallRecord, EventRecord)> {
        let now = super::now();
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let call = sqlx::query_as::<_, CallRecord>(sqlx::AssertSqlSafe(format!(
                "UPDATE calls SET status = COALESCE($2, status), sip_code = COALESCE($3, sip_code),
                    sip_reason = COALESCE($4, sip_reason), end_reason = COALESCE($5, end_reason),
                    dtmf = dtmf || COALESCE($6, ''), ringing_at = COALESCE($7, ringing_at),
                    answered_at = COALESCE($8, answered_at), ended_at = COALESCE($9, ended_at),
                    duration_ms = COALESCE($10, duration_ms), event_seq = event_seq + 1, updated_at = $11
                 WHERE id = $1 RETURNING {CALL_COLUMNS}")))
                .bind(id).bind(u.status).bind(u.sip_code).bind(u.sip_reason).bind(u.end_reason)
                .bind(u.dtmf).bind(u.ringing_at).bind(u.answered_at).bind(u.ended_at)
                .bind(u.duration_ms).bind(now)
                .fetch_optional(&mut *tx).await?
                .ok_or(StoreError::NotFound)?;
            let ev = build(&call)?;
            let event = write_event!(tx, &ev);
            tx.commit().await?;
            Ok((call, event))
        })
    }

    /// Writes an event that changes no call, with its deliveries.
    pub async fn emit(&self, ev: &NewEvent) -> Result<EventRecord> {
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let event = write_event!(tx, ev);
            tx.commit().await?;
            Ok(event)
        })
    }

    pub async fn get_event(&self, id: &str) -> Result<EventRecord> {
        on_pool!(self, p => sqlx::query_as::<_, EventRecord>(sqlx::AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE id = $1")))
            .bind(id).fetch_optional(p).await)?
        .ok_or(StoreError::NotFound)
    }

    /// Up to `limit` events after `seq` in stream order.
    pub async fn events_after(&self, seq: i64, limit: i64) -> Result<Vec<EventRecord>> {
        Ok(
            on_pool!(self, p => sqlx::query_as::<_, EventRecord>(sqlx::AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE seq > $1 ORDER BY seq LIMIT $2")))
            .bind(seq).bind(limit).fetch_all(p).await)?,
        )
    }

    /// The stream position of the newest event (0 when there is none).
    pub async fn last_event_seq(&self) -> Result<i64> {
        let seq: Option<i64> = on_pool!(self, p => sqlx::query_scalar("SELECT MAX(seq) FROM events").fetch_one(p).await)?;
        Ok(seq.unwrap_or(0))
    }
}
