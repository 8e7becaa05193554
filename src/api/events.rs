//! `/v1/events`: the live event stream (Server-Sent Events), single events,
//! their deliveries and replay.
//!
//! The stream reads the outbox table in its global order (`seq`), so a
//! client that reconnects with `Last-Event-ID` gets exactly the events after
//! that one, then live ones. It wakes when this process emits and, on
//! PostgreSQL, when another node's NOTIFY says it wrote events; a slow poll
//! is the safety net. On PostgreSQL a sequence number can become
//! visible after a higher one (transactions commit out of order), so the
//! stream waits up to [`GAP_GRACE`] for a missing number before passing it.
//!
//! A key sees the events of its own mode only (`livemode`, see `mode`):
//! the stream passes over the others' events.
//!
//! A stream outlives the request that authenticated it, so it checks every
//! `api.stream_key_check_seconds` that its key is still unrevoked and ends
//! when it is not; and one key holds at most `api.max_streams_per_key`
//! streams open ([`Streams`]).
//!
//! Must not: write events (the outbox does) or hold SQL.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::{Extension, Json};
use futures_util::Stream;
use serde::Serialize;
use tokio::sync::watch;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::AuthedKey;
use super::deliveries::{self, Delivery, DeliveryQuery};
use super::error::{ApiError, ErrorResponses};
use super::extract::{ApiQuery, List};
use crate::ids;
use crate::store::events::EventRecord;
use crate::store::{Store, StoreError, deliveries::DeliveryScope};

/// How long the stream waits for a missing sequence number to commit.
const GAP_GRACE: Duration = Duration::from_secs(2);
/// Events read per query.
const PAGE: i64 = 200;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(stream_events))
        .routes(routes!(get_event))
        .routes(routes!(list_event_deliveries))
        .routes(routes!(replay_event))
}

/// Open event streams per key.
#[derive(Clone, Default)]
pub struct Streams(
    // std Mutex: held only to count, never across an `.await`.
    Arc<Mutex<HashMap<String, usize>>>,
);

/// One open stream of a key; dropping it (the stream ended or the client
/// went away) frees the place.
struct StreamSlot {
    streams: Streams,
    key_id: String,
}

impl Streams {
    /// A place for one more stream of `key_id`, unless it holds `max`.
    fn open(&self, key_id: &str, max: usize) -> Option<StreamSlot> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(key_id.to_string()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            streams: self.clone(),
            key_id: key_id.to_string(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut map = self.streams.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.key_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.key_id);
            }
        }
    }
}

/// The answer to a replay.
#[derive(Debug, Serialize, ToSchema)]
pub struct Replayed {
    /// Deliveries now pending because of the replay.
    pub deliveries: u64,
}

/// Stream events as they happen (Server-Sent Events).
///
/// Each message has `id` (the event id), `event` (its type) and `data` (the
/// JSON envelope, as webhooks carry it: `WebhookEvent_CallEventData`,
/// `WebhookEvent_TrunkEventData`, `WebhookEvent_CampaignEventData` or
/// `WebhookEvent_TestEventData`). Send
/// `Last-Event-ID` to resume after an event; without it the stream starts
/// with the next event. Idle streams get comment heartbeats. The stream
/// ends soon after its key is revoked; a key holds a few streams at most
/// (429 beyond).
#[utoipa::path(get, path = "/v1/events", tag = "events",
    params(("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id")),
    responses((status = 200, description = "An endless text/event-stream", content_type = "text/event-stream", body = String),
              ErrorResponses))]
async fn stream_events(
    State(state): State<AppState>,
    Extension(key): Extension<AuthedKey>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let max = state.api.max_streams_per_key;
    let Some(slot) = state.streams.open(&key.id, max) else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_streams",
            format!("this key already holds {max} open event streams"),
        )
        .retry_after(5));
    };
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty());
    let cursor = match last {
        Some(id) => {
            let unknown =
                || ApiError::bad_request(format!("Last-Event-ID {id:?} is not a known event"));
            if !ids::has_prefix(id, ids::EVENT) {
                return Err(unknown());
            }
            match state.store.get_event(id).await {
                Ok(e) => e.seq,
                Err(StoreError::NotFound) => return Err(unknown()),
                Err(e) => return Err(e.into()),
            }
        }
        None => state.store.last_event_seq().await?,
    };
    let tail = Tail {
        livemode: super::mode::Mode::of_key(&key).livemode(),
        store: state.store.clone(),
        cursor,
        ready: VecDeque::new(),
        gap_since: None,
        emitted: state.outbox.subscribe(),
        closing: state.outbox.closing(),
        check_every: Duration::from_secs(state.api.stream_key_check_seconds),
        next_check: tokio::time::Instant::now()
            + Duration::from_secs(state.api.stream_key_check_seconds),
        slot,
        poll: state.outbox.stream_poll(),
    };
    let stream = futures_util::stream::unfold(tail, |mut tail| async move {
        let event = tail.next().await?;
        let sse = SseEvent::default()
            .id(event.id)
            .event(event.event_type.as_str())
            .data(event.payload);
        Some((Ok(sse), tail))
    });
    let heartbeat = Duration::from_secs(state.webhooks.sse_heartbeat_seconds);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(heartbeat).text("heartbeat")))
}

/// Follows the outbox from a position.
struct Tail {
    /// The key's mode: events of the other mode are passed over.
    livemode: bool,
    store: Store,
    /// The last sequence number handed out.
    cursor: i64,
    ready: VecDeque<EventRecord>,
    /// Since when the next sequence number has been missing.
    gap_since: Option<Instant>,
    emitted: watch::Receiver<u64>,
    closing: watch::Receiver<bool>,
    /// How often the key is checked, and when next.
    check_every: Duration,
    next_check: tokio::time::Instant,
    /// The key's place among its streams; names the key checked.
    slot: StreamSlot,
    /// How often to look without a wake-up (other nodes' events come with
    /// a NOTIFY on PostgreSQL; this is the safety net).
    poll: Duration,
}

impl Tail {
    /// The next event, or `None` when the daemon stops or the key is
    /// revoked.
    async fn next(&mut self) -> Option<EventRecord> {
        loop {
            if *self.closing.borrow() {
                return None;
            }
            if tokio::time::Instant::now() >= self.next_check {
                self.next_check = tokio::time::Instant::now() + self.check_every;
                match self.store.api_key_active(&self.slot.key_id).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::info!(key_id = %self.slot.key_id, "event stream closed: its key is revoked");
                        return None;
                    }
                    // A store hiccup does not end the stream; the next
                    // check decides.
                    Err(e) => tracing::warn!(error = %e, "event stream cannot check its key"),
                }
            }
            if let Some(e) = self.ready.pop_front() {
                return Some(e);
            }
            self.emitted.mark_unchanged();
            match self.store.events_after(self.cursor, PAGE).await {
                Ok(rows) => self.accept(rows),
                Err(e) => tracing::warn!(error = %e, "event stream cannot read the outbox"),
            }
            if !self.ready.is_empty() {
                continue;
            }
            let wait = if self.gap_since.is_some() {
                Duration::from_millis(100)
            } else {
                self.poll
            };
            tokio::select! {
                _ = self.emitted.changed() => {}
                _ = self.closing.changed() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = tokio::time::sleep_until(self.next_check) => {}
            }
        }
    }

    /// Queues rows in order, stopping at a gap younger than the grace.
    fn accept(&mut self, rows: Vec<EventRecord>) {
        for row in rows {
            if row.seq != self.cursor + 1 {
                let since = *self.gap_since.get_or_insert_with(Instant::now);
                if since.elapsed() < GAP_GRACE {
                    return;
                }
            }
            self.gap_since = None;
            self.cursor = row.seq;
            if row.livemode == self.livemode {
                self.ready.push_back(row);
            }
        }
    }
}

async fn fetch(state: &AppState, id: &str) -> Result<EventRecord, ApiError> {
    super::find(id, ids::EVENT, "event", state.store.get_event(id)).await
}

/// Get an event: its envelope exactly as delivered.
#[utoipa::path(get, path = "/v1/events/{id}", tag = "events", params(("id" = String, Path)),
    responses((status = 200, description = "The event envelope: `WebhookEvent_CallEventData`, \
        `WebhookEvent_TrunkEventData`, `WebhookEvent_CampaignEventData` or `WebhookEvent_TestEventData`", body = Object), ErrorResponses))]
async fn get_event(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let event = fetch(&state, &id).await?;
    serde_json::from_str(&event.payload)
        .map(Json)
        .map_err(|e| ApiError::internal(format!("event {id} payload: {e}")))
}

/// List the deliveries of an event, with their attempts.
#[utoipa::path(get, path = "/v1/events/{id}/deliveries", tag = "events",
    params(("id" = String, Path), DeliveryQuery),
    responses((status = 200, description = "A page of deliveries", body = List<Delivery>), ErrorResponses))]
async fn list_event_deliveries(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<DeliveryQuery>,
) -> Result<Json<List<Delivery>>, ApiError> {
    fetch(&state, &id).await?;
    deliveries::list(&state, DeliveryScope::Event(&id), &q)
        .await
        .map(Json)
}

/// Send an event again to every endpoint that had it and every enabled
/// endpoint subscribed to its type; the receivers see the same `webhook-id`.
#[utoipa::path(post, path = "/v1/events/{id}/replay", tag = "events", params(("id" = String, Path)),
    responses((status = 202, description = "Deliveries queued", body = Replayed), ErrorResponses))]
async fn replay_event(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Replayed>), ApiError> {
    fetch(&state, &id).await?;
    let deliveries = state.store.replay_event(&id).await?;
    state.outbox.deliveries_due();
    Ok((StatusCode::ACCEPTED, Json(Replayed { deliveries })))
}
