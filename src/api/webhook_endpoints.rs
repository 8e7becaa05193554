//! `/v1/webhook-endpoints`: where call lifecycle events are delivered. The
//! signing secret is shown once, when the endpoint is created.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorResponses, FieldError};
use super::extract::{ApiJson, ApiQuery, List, Pagination};
use crate::store::StoreError;
use crate::store::webhooks::{EndpointFields, EndpointRecord};
use crate::{ids, secrets};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_endpoints, create_endpoint))
        .routes(routes!(get_endpoint, update_endpoint, delete_endpoint))
}

/// Event types an endpoint can subscribe to.
pub const EVENT_TYPES: &[&str] = &[
    "call.initiated",
    "call.ringing",
    "call.answered",
    "call.ended",
    "call.dtmf",
    "trunk.registered",
    "trunk.registration_failed",
];

/// Subscribed when an endpoint names no events: everything but the
/// high-volume, opt-in `call.dtmf`.
fn default_events() -> Vec<String> {
    EVENT_TYPES
        .iter()
        .filter(|t| **t != "call.dtmf")
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
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookEndpointUpdate {
    pub url: Option<String>,
    pub description: Option<String>,
    pub events: Option<Vec<String>>,
    pub enabled: Option<bool>,
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
        if !EVENT_TYPES.contains(&e.as_str()) {
            details.push(FieldError {
                field: format!("events[{i}]"),
                message: format!("unknown event type; one of {}", EVENT_TYPES.join(", ")),
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

/// Create a webhook endpoint; the answer carries its signing secret once.
#[utoipa::path(post, path = "/v1/webhook-endpoints", tag = "webhook-endpoints",
    request_body = WebhookEndpointCreate,
    responses((status = 201, description = "Created", body = WebhookEndpointCreated), ErrorResponses))]
async fn create_endpoint(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<WebhookEndpointCreate>,
) -> Result<(StatusCode, Json<WebhookEndpointCreated>), ApiError> {
    let events = body.events.unwrap_or_else(default_events);
    let events = validate(&body.url, body.description.as_deref(), &events)?;
    let secret = secrets::new_webhook_secret();
    let fields = EndpointFields {
        url: &body.url,
        description: body.description.as_deref(),
        events: &events,
        enabled: body.enabled.unwrap_or(true),
    };
    let record = state
        .store
        .insert_endpoint(&ids::new(ids::WEBHOOK_ENDPOINT), &secret, fields)
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
    ApiQuery(page): ApiQuery<Pagination>,
) -> Result<Json<List<WebhookEndpoint>>, ApiError> {
    let w = page.window()?;
    let page = state.store.list_endpoints(w).await?;
    List::try_new(page, w, to_api).map(Json)
}

async fn fetch(state: &AppState, id: &str) -> Result<EndpointRecord, ApiError> {
    if !ids::has_prefix(id, ids::WEBHOOK_ENDPOINT) {
        return Err(ApiError::not_found("webhook endpoint"));
    }
    state.store.get_endpoint(id).await.map_err(|e| match e {
        StoreError::NotFound => ApiError::not_found("webhook endpoint"),
        e => e.into(),
    })
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
    ApiJson(body): ApiJson<WebhookEndpointUpdate>,
) -> Result<Json<WebhookEndpoint>, ApiError> {
    let current = to_api(fetch(&state, &id).await?)?;
    let url = body.url.unwrap_or(current.url);
    let description = body.description.or(current.description);
    let events = body.events.unwrap_or(current.events);
    let events = validate(&url, description.as_deref(), &events)?;
    let fields = EndpointFields {
        url: &url,
        description: description.as_deref(),
        events: &events,
        enabled: body.enabled.unwrap_or(current.enabled),
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
