//! `/v1/events`: the live event stream (Server-Sent Events), single events,
//! their deliveries and replay.
//!
//! The stream reads the outbox table in its global order (`seq`), so a
//! client that reconnects with `Last-Event-ID` gets exactly the events after
//! that one, then live ones. It wakes when this process emits and polls for
//! events written by other nodes. On PostgreSQL a sequence number can become
//! visible after a higher one (transactions commit out of order), so the
//! stream waits up to [`GAP_GRACE`] for a missing number before passing it.
//!
//! Must not: write events (the outbox does) or hold SQL.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use serde::Serialize;
use tokio::sync::watch;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
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
/// How often the stream looks for events of other nodes.
const POLL: Duration = Duration::from_millis(500);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(stream_events))
        .routes(routes!(get_event))
        .routes(routes!(list_event_deliveries))
        .routes(routes!(replay_event))
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
/// with the next event. Idle streams get comment heartbeats.
#[utoipa::path(get, path = "/v1/events", tag = "events",
    params(("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id")),
    responses((status = 200, description = "An endless text/event-stream", content_type = "text/event-stream", body = String),
              ErrorResponses))]
async fn stream_events(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
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
        store: state.store.clone(),
        cursor,
        ready: VecDeque::new(),
        gap_since: None,
        emitted: state.outbox.subscribe(),
        closing: state.outbox.closing(),
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
    store: Store,
    /// The last sequence number handed out.
    cursor: i64,
    ready: VecDeque<EventRecord>,
    /// Since when the next sequence number has been missing.
    gap_since: Option<Instant>,
    emitted: watch::Receiver<u64>,
    closing: watch::Receiver<bool>,
}

impl Tail {
    /// The next event, or `None` when the daemon stops.
    async fn next(&mut self) -> Option<EventRecord> {
        loop {
            if *self.closing.borrow() {
                return None;
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
                POLL
            };
            tokio::select! {
                _ = self.emitted.changed() => {}
                _ = self.closing.changed() => {}
                _ = tokio::time::sleep(wait) => {}
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
            self.ready.push_back(row);
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
