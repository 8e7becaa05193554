//! `/v1/webhook-endpoints`: where call lifecycle events are delivered. The
//! signing secret is shown once, when the endpoint is created or rotated.
//! Also the endpoint's delivery log, test events, replay of failed
//! deliveries, enable/disable and secret rotation.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::deliveries::{self, Delivery, DeliveryQuery};
use super::error::{ApiError, ErrorResponses, FieldError};
use super::events::Replayed;
use super::extract::{ApiJson, ApiQuery, List, Pagination};
use super::mode::Mode;
use crate::model::EventType;
use crate::store::deliveries::DeliveryScope;
use crate::store::webhooks::{EndpointFields, EndpointRecord};
use crate::webhook::event::{TestEventData, WebhookEvent};
use crate::{ids, secrets};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_endpoints, create_endpoint))
        .routes(routes!(get_endpoint, update_endpoint, delete_endpoint))
        .routes(routes!(list_endpoint_deliveries))
        .routes(routes!(send_test_event))
        .routes(routes!(enable_endpoint))
        .routes(routes!(disable_endpoint))
        .routes(routes!(rotate_secret))
        .routes(routes!(replay_failed))
}

/// Event types an endpoint can subscribe to: all but `webhook.test`, which
/// goes to the one endpoint tested whatever it subscribes to.
fn subscribable() -> impl Iterator<Item = EventType> {
    EventType::ALL
        .iter()
        .copied()
        .filter(|t| *t != EventType::WebhookTest)
}

/// Subscribed when an endpoint names no events: everything but the
/// high-volume, opt-in `call.dtmf`.
fn default_events() -> Vec<String> {
    subscribable()
        .filter(|t| *t != EventType::CallDtmf)
        .map(|t| t.to_string())
        .collect()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookEndpoint {
    #[schema(example = "whk_01jdw8q1m7k3x9b5n4c2v6t8r0")]
    pub id: String,
    pub url: String,
    pub description: Option<String>,
    pub events: Vec<String>,
    pub enabled: bool,
    /// `call.ended` carries the call's transcript (`data.transcript`: the
    /// summary and the turns as `GET /v1/calls/{id}/transcript` answers).
    pub include_transcript: bool,
    /// `false` for an endpoint made with a test key: it receives only the
    /// events of test-mode objects (`livemode: false`), and live
    /// endpoints never receive those.
    pub livemode: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The answer to a create: the endpoint and its signing secret, shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookEndpointCreated {
    #[serde(flatten)]
    pub endpoint: WebhookEndpoint,
    /// Standard Webhooks secret (`whsec_...`); not shown again.
    pub secret: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookEndpointCreate {
    #[schema(example = "https://example.com/agentline/events")]
    pub url: String,
    pub description: Option<String>,
    /// Event types; all but `call.dtmf` when left out.
    pub events: Option<Vec<String>>,
    /// Default true.
    pub enabled: Option<bool>,
    /// Send the call's transcript in `call.ended` (default false).
    pub include_transcript: Option<bool>,
}

/// A JSON Merge Patch (RFC 7396) of the endpoint: fields left out keep
/// their value, `null` clears one (back to its default).
// The PATCH body as the OpenAPI document shows it; the handler merges the
// raw body (RFC 7396, `extract::patched`), so nothing reads these fields.
#[allow(dead_code)]
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookEndpointUpdate {
    pub url: Option<String>,
    pub description: Option<String>,
    pub events: Option<Vec<String>>,
    pub enabled: Option<bool>,
    pub include_transcript: Option<bool>,
}

fn to_api(r: EndpointRecord) -> Result<WebhookEndpoint, ApiError> {
    let events = serde_json::from_str(&r.events)
        .map_err(|e| ApiError::internal(format!("endpoint {} events: {e}", r.id)))?;
    Ok(WebhookEndpoint {
        id: r.id,
        url: r.url,
        description: r.description,
        events,
        enabled: r.enabled,
        include_transcript: r.include_transcript,
        livemode: r.livemode,
        created_at: r.created_at,
        updated_at: r.updated_at,
    })
}

fn validate(url: &str, description: Option<&str>, events: &[String]) -> Result<String, ApiError> {
    let mut details = Vec::new();
    if !super::is_http_url(url) || url.len() > 2048 {
        details.push(FieldError {
            field: "url".into(),
            message: "must be an http or https URL of at most 2048 characters".into(),
        });
    }
    if description.is_some_and(|d| d.chars().count() > 500) {
        details.push(FieldError {
            field: "description".into(),
            message: "must be at most 500 characters".into(),
        });
    }
    if events.is_empty() {
        details.push(FieldError {
            field: "events".into(),
            message: "must name at least one event type".into(),
        });
    }
    for (i, e) in events.iter().enumerate() {
        if !subscribable().any(|t| t.as_str() == e) {
            let all: Vec<&str> = subscribable().map(EventType::as_str).collect();
            details.push(FieldError {
                field: format!("events[{i}]"),
                message: format!("unknown event type; one of {}", all.join(", ")),
            });
        }
    }
    if !details.is_empty() {
        return Err(ApiError::validation(details));
    }
    let mut events = events.to_vec();
    events.sort();
    events.dedup();
    serde_json::to_string(&events).map_err(ApiError::internal)
}

/// Refuses a URL whose host is (or resolves to) an address deliveries may
/// not reach.
async fn check_address(state: &AppState, url: &str) -> Result<(), ApiError> {
    state
        .guard
        .check_url(url)
        .await
        .map_err(|e| ApiError::field("url", format!("not allowed: {e}")))
}

/// Create a webhook endpoint; the answer carries its signing secret once.
/// URLs that resolve to loopback, private or link-local addresses are
/// refused unless the daemon's config allows them.
#[utoipa::path(post, path = "/v1/webhook-endpoints", tag = "webhook-endpoints",
    request_body = WebhookEndpointCreate,
    responses((status = 201, description = "Created", body = WebhookEndpointCreated), ErrorResponses))]
async fn create_endpoint(
    State(state): State<AppState>,
    mode: Mode,
    ApiJson(body): ApiJson<WebhookEndpointCreate>,
) -> Result<(StatusCode, Json<WebhookEndpointCreated>), ApiError> {
    let events = body.events.unwrap_or_else(default_events);
    let events = validate(&body.url, body.description.as_deref(), &events)?;
    check_address(&state, &body.url).await?;
    let secret = secrets::new_webhook_secret();
    // Stored sealed (AES-256-GCM) when the operator gave a key.
    let stored = state
        .sealer
        .seal_if_keyed(secrets::WEBHOOK_PURPOSE, &secret)
        .map_err(ApiError::internal)?;
    let fields = EndpointFields {
        url: &body.url,
        description: body.description.as_deref(),
        events: &events,
        enabled: body.enabled.unwrap_or(true),
        include_transcript: body.include_transcript.unwrap_or(false),
    };
    let record = state
        .store
        .insert_endpoint(
            &ids::new(ids::WEBHOOK_ENDPOINT),
            &stored,
            fields,
            mode.livemode(),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(WebhookEndpointCreated {
            endpoint: to_api(record)?,
            secret,
        }),
    ))
}

/// List webhook endpoints, newest first.
#[utoipa::path(get, path = "/v1/webhook-endpoints", tag = "webhook-endpoints", params(Pagination),
    responses((status = 200, description = "A page of endpoints", body = List<WebhookEndpoint>), ErrorResponses))]
async fn list_endpoints(
    State(state): State<AppState>,
    mode: Mode,
    ApiQuery(page): ApiQuery<Pagination>,
) -> Result<Json<List<WebhookEndpoint>>, ApiError> {
    let w = page.window()?;
    let page = state.store.list_endpoints(mode.livemode(), w).await?;
    List::try_new(page, w, to_api).map(Json)
}

async fn fetch(state: &AppState, id: &str) -> Result<EndpointRecord, ApiError> {
    super::find(
        id,
        ids::WEBHOOK_ENDPOINT,
        "webhook endpoint",
        state.store.get_endpoint(id),
    )
    .await
}

/// Get a webhook endpoint.
#[utoipa::path(get, path = "/v1/webhook-endpoints/{id}", tag = "webhook-endpoints", params(("id" = String, Path)),
    responses((status = 200, description = "The endpoint", body = WebhookEndpoint), ErrorResponses))]
async fn get_endpoint(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<WebhookEndpoint>, ApiError> {
    to_api(fetch(&state, &id).await?).map(Json)
}

/// Update a webhook endpoint; `enabled: false` pauses deliveries.
#[utoipa::path(patch, path = "/v1/webhook-endpoints/{id}", tag = "webhook-endpoints", params(("id" = String, Path)),
    request_body = WebhookEndpointUpdate,
    responses((status = 200, description = "The updated endpoint", body = WebhookEndpoint), ErrorResponses))]
async fn update_endpoint(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<serde_json::Value>,
) -> Result<Json<WebhookEndpoint>, ApiError> {
    let current = to_api(fetch(&state, &id).await?)?;
    let body: WebhookEndpointCreate = super::extract::patched(&current, &patch)?;
    let (url, description) = (body.url, body.description);
    let events = body.events.unwrap_or_else(default_events);
    let events = validate(&url, description.as_deref(), &events)?;
    check_address(&state, &url).await?;
    let fields = EndpointFields {
        url: &url,
        description: description.as_deref(),
        events: &events,
        enabled: body.enabled.unwrap_or(true),
        include_transcript: body.include_transcript.unwrap_or(false),
    };
    to_api(state.store.update_endpoint(&id, fields).await?).map(Json)
}

/// Delete a webhook endpoint.
#[utoipa::path(delete, path = "/v1/webhook-endpoints/{id}", tag = "webhook-endpoints", params(("id" = String, Path)),
    responses((status = 204, description = "Deleted"), ErrorResponses))]
async fn delete_endpoint(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    fetch(&state, &id).await?;
    state.store.delete_endpoint(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List an endpoint's deliveries, newest first, with their attempts.
#[utoipa::path(get, path = "/v1/webhook-endpoints/{id}/deliveries", tag = "webhook-endpoints",
    params(("id" = String, Path), DeliveryQuery),
    responses((status = 200, description = "A page of deliveries", body = List<Delivery>), ErrorResponses))]
async fn list_endpoint_deliveries(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<DeliveryQuery>,
) -> Result<Json<List<Delivery>>, ApiError> {
    fetch(&state, &id).await?;
    deliveries::list(&state, DeliveryScope::Endpoint(&id), &q)
        .await
        .map(Json)
}

/// Send a `webhook.test` event to this endpoint only (even when it does not
/// subscribe to it); it is delivered, retried and logged like any event.
#[utoipa::path(post, path = "/v1/webhook-endpoints/{id}/test", tag = "webhook-endpoints",
    params(("id" = String, Path)),
    responses((status = 202, description = "The queued event", body = WebhookEvent<TestEventData>), ErrorResponses))]
async fn send_test_event(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let endpoint = fetch(&state, &id).await?;
    let event = state.outbox.test_event(&id, endpoint.livemode).await?;
    let body = serde_json::from_str(&event.payload).map_err(ApiError::internal)?;
    Ok((StatusCode::ACCEPTED, Json(body)))
}

/// Enable an endpoint: its pending deliveries resume.
#[utoipa::path(post, path = "/v1/webhook-endpoints/{id}/enable", tag = "webhook-endpoints",
    params(("id" = String, Path)),
    responses((status = 200, description = "The endpoint", body = WebhookEndpoint), ErrorResponses))]
async fn enable_endpoint(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<WebhookEndpoint>, ApiError> {
    fetch(&state, &id).await?;
    let record = state.store.set_endpoint_enabled(&id, true).await?;
    state.outbox.deliveries_due();
    to_api(record).map(Json)
}

/// Disable an endpoint: nothing is sent to it and new events do not queue
/// for it; deliveries already queued wait until it is enabled.
#[utoipa::path(post, path = "/v1/webhook-endpoints/{id}/disable", tag = "webhook-endpoints",
    params(("id" = String, Path)),
    responses((status = 200, description = "The endpoint", body = WebhookEndpoint), ErrorResponses))]
async fn disable_endpoint(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<WebhookEndpoint>, ApiError> {
    fetch(&state, &id).await?;
    to_api(state.store.set_endpoint_enabled(&id, false).await?).map(Json)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecret {
    /// How long the current secret stays valid and keeps signing beside the
    /// new one; the daemon's `webhooks.secret_overlap_seconds` when left
    /// out, at most 7 days.
    #[schema(maximum = 604800)]
    pub overlap_seconds: Option<u64>,
}

/// The answer to a rotation: the new secret, shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct SecretRotated {
    /// The new Standard Webhooks secret (`whsec_...`).
    pub secret: String,
    /// Until then requests carry two signatures, one per secret.
    pub previous_secret_expires_at: DateTime<Utc>,
}

/// Rotate the signing secret. The old secret stays valid for the overlap:
/// requests are signed with both (space-separated signatures).
#[utoipa::path(post, path = "/v1/webhook-endpoints/{id}/rotate-secret", tag = "webhook-endpoints",
    params(("id" = String, Path)), request_body = RotateSecret,
    responses((status = 200, description = "The new secret", body = SecretRotated), ErrorResponses))]
async fn rotate_secret(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RotateSecret>,
) -> Result<Json<SecretRotated>, ApiError> {
    let overlap = body
        .overlap_seconds
        .unwrap_or(state.webhooks.secret_overlap_seconds);
    if overlap > 604_800 {
        return Err(ApiError::field("overlap_seconds", "must be at most 604800"));
    }
    fetch(&state, &id).await?;
    let secret = secrets::new_webhook_secret();
    let stored = state
        .sealer
        .seal_if_keyed(secrets::WEBHOOK_PURPOSE, &secret)
        .map_err(ApiError::internal)?;
    let until = crate::store::now() + chrono::Duration::seconds(overlap as i64);
    state
        .store
        .rotate_endpoint_secret(&id, &stored, until)
        .await?;
    Ok(Json(SecretRotated {
        secret,
        previous_secret_expires_at: until,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayFailed {
    /// RFC 3339; failed deliveries created at or after this time.
    pub since: DateTime<Utc>,
}

/// Replay every failed (dead-lettered) delivery of this endpoint created
/// since a time, each with a fresh retry schedule.
#[utoipa::path(post, path = "/v1/webhook-endpoints/{id}/replay", tag = "webhook-endpoints",
    params(("id" = String, Path)), request_body = ReplayFailed,
    responses((status = 202, description = "Deliveries queued", body = Replayed), ErrorResponses))]
async fn replay_failed(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ReplayFailed>,
) -> Result<(StatusCode, Json<Replayed>), ApiError> {
    fetch(&state, &id).await?;
    let deliveries = state.store.replay_failed(&id, body.since).await?;
    state.outbox.deliveries_due();
    Ok((StatusCode::ACCEPTED, Json(Replayed { deliveries })))
}
