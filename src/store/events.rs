//! Events: the outbox. An event row is written in the same transaction as
//! the state change that caused it, together with one delivery row per
//! enabled endpoint subscribed to its type, so a crash between the change and
//! the delivery loses nothing.
//!
//! The seam for the call layer is the call transitions of
//! [`super::calls`] (`call_created`, `call_ringing`, `call_answered`,
//! `call_dtmf`, `call_ended`): each takes an [`super::calls::Emit`], a closure that renders
//! the event from the call row as it stands inside the transaction (with its
//! per-call sequence already taken), and commits the change and the event
//! together or neither. Events that change no call (trunk registration, test
//! events) use [`Store::emit`]. The caller renders the payload; this module
//! stores it as opaque text and never parses it.
//!
//! On PostgreSQL the call transitions are batched by [`super::pg_commit`],
//! which writes the events of a batch in one statement; every transaction
//! that writes events also sends the NOTIFY of [`super::notify`].
//!
//! Must not: render JSON, sign or send anything (that is `webhook`).

use chrono::{DateTime, Utc};

use super::{Result, Store, StoreError, on_pool};
use crate::model::EventType;

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
    pub event_type: EventType,
    pub api_version: String,
    pub call_id: Option<String>,
    pub call_seq: Option<i64>,
    pub payload: String,
    pub created_at: DateTime<Utc>,
    pub fanout: Fanout,
    /// The mode of the object the event is about: `false` for test-mode
    /// objects, delivered only to test-mode endpoints (and live to live).
    pub livemode: bool,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRecord {
    /// Global order of the live stream.
    pub seq: i64,
    pub id: String,
    #[sqlx(rename = "type")]
    pub event_type: EventType,
    pub api_version: String,
    pub call_id: Option<String>,
    pub call_seq: Option<i64>,
    pub payload: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// `false` for an event about a test-mode object.
    pub livemode: bool,
}

/// The columns of an [`EventRecord`], as a literal for `concat!`.
macro_rules! event_columns {
    () => {
        "seq, id, type, api_version, call_id, call_seq, payload, created_at, updated_at, livemode"
    };
}
pub(crate) use event_columns;

pub(crate) const EVENT_COLUMNS: &str = event_columns!();

/// The INSERT of an event, as a literal for `concat!`.
macro_rules! insert_event_sql {
    () => {
        "INSERT INTO events (id, type, api_version, call_id, call_seq, payload, created_at, updated_at, livemode)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)"
    };
}
pub(crate) use insert_event_sql;

/// Writes an event (the group commit's writer runs it too).
pub(crate) const INSERT_EVENT: &str = insert_event_sql!();

/// The enabled endpoints of one mode (`$2`, the event's `livemode`)
/// subscribed to an event type; `$1` is [`subscription_pattern`]. The pattern is an expression, not a bare
/// parameter: SQLite recompiles a statement whose LIKE pattern is a
/// parameter each time its value changes (sqlite3_prepare_v2, "the specific
/// value bound ... might influence the query plan"), which was a fifth of a
/// call's CPU.
pub(crate) const SUBSCRIBED_ENDPOINTS: &str = "SELECT id FROM webhook_endpoints WHERE enabled AND events LIKE '%' || $1 || '%' AND livemode = $2 ORDER BY id";

/// What [`SUBSCRIBED_ENDPOINTS`] looks for in an endpoint's event list (a
/// JSON array of strings).
pub(crate) fn subscription_pattern(event_type: EventType) -> String {
    format!("\"{event_type}\"")
}

/// A pending delivery of event `$2` to endpoint `$3`, due at `$4`.
pub(crate) const INSERT_DELIVERY: &str =
    "INSERT INTO webhook_deliveries (id, event_id, endpoint_id, status, next_attempt_at, created_at, updated_at)
     VALUES ($1, $2, $3, 'pending', $4, $4, $4)";

/// Writes the event and its deliveries inside the open transaction `$tx`
/// of `$store`.
macro_rules! write_event {
    ($store:expr, $tx:ident, $ev:expr) => {{
        let ev: &$crate::store::events::NewEvent = $ev;
        // Read back with RETURNING: one round trip fewer per event.
        let record = sqlx::query_as::<_, $crate::store::events::EventRecord>(concat!(
            $crate::store::events::insert_event_sql!(),
            " RETURNING ",
            $crate::store::events::event_columns!()
        ))
        .bind(&ev.id)
        .bind(ev.event_type.as_str())
        .bind(&ev.api_version)
        .bind(&ev.call_id)
        .bind(ev.call_seq)
        .bind(&ev.payload)
        .bind(ev.created_at)
        .bind(ev.livemode)
        .fetch_one(&mut *$tx)
        .await?;
        let endpoints: Vec<String> = match &ev.fanout {
            $crate::store::events::Fanout::Subscribed => {
                sqlx::query_scalar($crate::store::events::SUBSCRIBED_ENDPOINTS)
                    .bind($crate::store::events::subscription_pattern(ev.event_type))
                    .bind(ev.livemode)
                    .fetch_all(&mut *$tx)
                    .await?
            }
            $crate::store::events::Fanout::Endpoint(id) => vec![id.clone()],
        };
        $store.note_deliveries(endpoints.len());
        for endpoint in &endpoints {
            sqlx::query($crate::store::events::INSERT_DELIVERY)
                .bind($crate::ids::new($crate::ids::DELIVERY))
                .bind(&ev.id)
                .bind(endpoint)
                .bind(ev.created_at)
                .execute(&mut *$tx)
                .await?;
        }
        // PostgreSQL: wake the other daemons when this commits (SQLite
        // has no payload: it wakes in-process only).
        if let Some(payload) = $store.notice_payload(!endpoints.is_empty()) {
            sqlx::query($crate::store::notify::NOTIFY)
                .bind($crate::store::notify::CHANNEL)
                .bind(payload)
                .execute(&mut *$tx)
                .await?;
        }
        record
    }};
}
pub(crate) use write_event;

impl Store {
    /// Writes an event that changes no call, with its deliveries.
    pub async fn emit(&self, ev: &NewEvent) -> Result<EventRecord> {
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let event = write_event!(self, tx, ev);
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
