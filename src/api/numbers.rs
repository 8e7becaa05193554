//! `/v1/phone-numbers`: the numbers agentline answers, each bound to an agent
//! and a trunk. Numbers are E.164, normalized, and unique. A number may
//! name an agent webhook, asked for the agent of each inbound call; its
//! signing secret is shown once, in the answer that set the URL.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorResponses, FieldError};
use super::extract::{ApiJson, ApiQuery, List, Pagination};
use super::mode::Mode;
use crate::model::RecordingSettings;
use crate::store::StoreError;
use crate::store::numbers::{NumberFields, NumberRecord};
use crate::{e164, ids, secrets};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_numbers, create_number))
        .routes(routes!(get_number, update_number, delete_number))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PhoneNumber {
    #[schema(example = "num_01jdw8q1m7k3x9b5n4c2v6t8r0")]
    pub id: String,
    /// E.164.
    #[schema(example = "+14155552671")]
    pub number: String,
    pub name: Option<String>,
    pub agent_id: Option<String>,
    pub trunk_id: Option<String>,
    /// `false` for a number provisioned with a test key: it places test
    /// calls (simulated carrier) and is never routed an inbound call.
    pub livemode: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Asked for the agent of each inbound call (see the README): a
    /// signed POST of the call's context, answered within
    /// `[calls] agent_webhook_timeout_ms` with an agent id or overrides.
    pub agent_webhook_url: Option<String>,
    /// `whsec_...`, the Standard Webhooks secret that signs the agent
    /// webhook's requests: only in the answer that set or changed
    /// `agent_webhook_url`, never shown again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_webhook_secret: Option<String>,
    /// Recording of the number's calls (inbound to it, outbound from it):
    /// over the agent's settings, under a campaign's and a call's.
    pub recording: Option<RecordingSettings>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PhoneNumberCreate {
    /// E.164, with or without formatting; stored normalized.
    #[schema(example = "+1 415 555 2671")]
    pub number: String,
    pub name: Option<String>,
    pub agent_id: Option<String>,
    pub trunk_id: Option<String>,
    /// http(s) URL asked for the agent of each inbound call; public
    /// addresses only unless `[webhooks]` allows others.
    pub agent_webhook_url: Option<String>,
    /// Recording of the number's calls, field by field over the agent's
    /// (`{"enabled": false}` turns off an agent's recording here).
    pub recording: Option<RecordingSettings>,
}

/// A JSON Merge Patch (RFC 7396) of the number: fields left out keep their
/// value; `null` clears `name`, `agent_id` or `trunk_id`.
// The PATCH body as the OpenAPI document shows it; the handler merges the
// raw body (RFC 7396, `extract::patched`), so nothing reads these fields.
#[allow(dead_code)]
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PhoneNumberUpdate {
    pub number: Option<String>,
    #[schema(value_type = Option<String>)]
    pub name: Option<Option<String>>,
    #[schema(value_type = Option<String>)]
    pub agent_id: Option<Option<String>>,
    #[schema(value_type = Option<String>)]
    pub trunk_id: Option<Option<String>>,
    /// A new URL gets a new signing secret (in this answer); `null` turns
    /// the agent webhook off.
    #[schema(value_type = Option<String>)]
    pub agent_webhook_url: Option<Option<String>>,
    /// Merged into the current settings; `null` removes them.
    pub recording: Option<RecordingSettings>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NumberQuery {
    /// Only numbers bound to this agent.
    pub agent_id: Option<String>,
    /// How many items to return, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// How many items to skip (default 0).
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

/// The number as the API shows it: never its webhook secret (see
/// [`with_secret`]).
fn to_api(r: NumberRecord) -> PhoneNumber {
    PhoneNumber {
        id: r.id,
        number: r.number,
        name: r.name,
        agent_id: r.agent_id,
        trunk_id: r.trunk,
        livemode: r.livemode,
        created_at: r.created_at,
        updated_at: r.updated_at,
        agent_webhook_url: r.agent_webhook_url,
        agent_webhook_secret: None,
        recording: r.recording.as_deref().and_then(|j| {
            serde_json::from_str(j)
                .inspect_err(|e| tracing::warn!(error = %e, "stored recording settings unreadable"))
                .ok()
        }),
    }
}

/// The answer that set a new agent webhook URL: the one time its secret
/// is shown.
fn with_secret(r: NumberRecord, new_secret: Option<String>) -> PhoneNumber {
    PhoneNumber {
        agent_webhook_secret: new_secret,
        ..to_api(r)
    }
}

/// The longest agent webhook URL.
const MAX_URL: usize = 2000;

/// Checks an agent webhook URL as webhook endpoints' are: http(s), and an
/// address the guard lets deliveries reach.
pub(super) async fn check_agent_webhook(
    state: &AppState,
    field: &str,
    url: &str,
) -> Result<(), FieldError> {
    let bad = |message: String| FieldError {
        field: field.into(),
        message,
    };
    if url.len() > MAX_URL {
        return Err(bad(format!("must be at most {MAX_URL} characters")));
    }
    state
        .guard
        .check_url(url)
        .await
        .map_err(|e| bad(format!("not allowed: {e}")))
}

/// Checks every field and answers all problems at once.
#[allow(clippy::too_many_arguments)] // one per field of the number
async fn validate(
    state: &AppState,
    number: &str,
    name: Option<&str>,
    agent_id: Option<&str>,
    trunk_id: Option<&str>,
    agent_webhook_url: Option<&str>,
    recording: Option<&RecordingSettings>,
    mode: Mode,
) -> Result<String, ApiError> {
    let mut details = Vec::new();
    for (field, message) in recording
        .map(RecordingSettings::problems)
        .unwrap_or_default()
    {
        details.push(FieldError {
            field: format!("recording.{field}"),
            message: message.into(),
        });
    }
    if let Some(url) = agent_webhook_url
        && let Err(e) = check_agent_webhook(state, "agent_webhook_url", url).await
    {
        details.push(e);
    }
    let normalized = e164::normalize(number).unwrap_or_else(|message| {
        details.push(FieldError {
            field: "number".into(),
            message,
        });
        String::new()
    });
    if name.is_some_and(|n| n.chars().count() > 100) {
        details.push(FieldError {
            field: "name".into(),
            message: "must be at most 100 characters".into(),
        });
    }
    if let Some(agent) = agent_id {
        // An agent of the other mode is no agent to this key.
        let exists = ids::has_prefix(agent, ids::AGENT)
            && match state.store.get_agent(agent).await {
                Ok(a) => a.livemode == mode.livemode(),
                Err(StoreError::NotFound) => false,
                Err(e) => return Err(e.into()),
            };
        if !exists {
            details.push(FieldError {
                field: "agent_id".into(),
                message: "no such agent".into(),
            });
        }
    }
    if let Some(trunk) = trunk_id
        && state.profiles().get_by_id(trunk).is_none()
    {
        details.push(FieldError {
            field: "trunk_id".into(),
            message: "no such trunk".into(),
        });
    }
    if details.is_empty() {
        Ok(normalized)
    } else {
        Err(ApiError::validation(details))
    }
}

/// Recording settings as stored: JSON, `None` when not set.
pub(super) fn settings_json(r: Option<&RecordingSettings>) -> Result<Option<String>, ApiError> {
    r.map(serde_json::to_string)
        .transpose()
        .map_err(ApiError::internal)
}

fn conflict(e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict(_) => ApiError::conflict("this number is already provisioned"),
        StoreError::InUse(_) => ApiError::field("agent_id", "no such agent"),
        e => e.into(),
    }
}

/// Provision a phone number.
#[utoipa::path(post, path = "/v1/phone-numbers", tag = "phone-numbers", request_body = PhoneNumberCreate,
    responses((status = 201, description = "Created", body = PhoneNumber), ErrorResponses))]
async fn create_number(
    State(state): State<AppState>,
    mode: Mode,
    ApiJson(body): ApiJson<PhoneNumberCreate>,
) -> Result<(StatusCode, Json<PhoneNumber>), ApiError> {
    let number = validate(
        &state,
        &body.number,
        body.name.as_deref(),
        body.agent_id.as_deref(),
        body.trunk_id.as_deref(),
        body.agent_webhook_url.as_deref(),
        body.recording.as_ref(),
        mode,
    )
    .await?;
    let recording = settings_json(body.recording.as_ref())?;
    let secret = body
        .agent_webhook_url
        .as_ref()
        .map(|_| secrets::new_webhook_secret());
    let fields = NumberFields {
        number: &number,
        name: body.name.as_deref(),
        agent_id: body.agent_id.as_deref(),
        trunk: body.trunk_id.as_deref(),
        agent_webhook_url: body.agent_webhook_url.as_deref(),
        agent_webhook_secret: secret.as_deref(),
        recording: recording.as_deref(),
    };
    let record = state
        .store
        .insert_number(&ids::new(ids::NUMBER), fields, mode.livemode())
        .await
        .map_err(conflict)?;
    Ok((StatusCode::CREATED, Json(with_secret(record, secret))))
}

/// List phone numbers, newest first.
#[utoipa::path(get, path = "/v1/phone-numbers", tag = "phone-numbers", params(NumberQuery),
    responses((status = 200, description = "A page of numbers", body = List<PhoneNumber>), ErrorResponses))]
async fn list_numbers(
    State(state): State<AppState>,
    mode: Mode,
    ApiQuery(q): ApiQuery<NumberQuery>,
) -> Result<Json<List<PhoneNumber>>, ApiError> {
    let w = Pagination::new(q.limit, q.offset).window()?;
    let page = state
        .store
        .list_numbers(q.agent_id.as_deref(), mode.livemode(), w)
        .await?;
    Ok(Json(List::new(page, w, to_api)))
}

async fn fetch(state: &AppState, id: &str) -> Result<NumberRecord, ApiError> {
    super::find(id, ids::NUMBER, "phone number", state.store.get_number(id)).await
}

/// Get a phone number.
#[utoipa::path(get, path = "/v1/phone-numbers/{id}", tag = "phone-numbers", params(("id" = String, Path)),
    responses((status = 200, description = "The number", body = PhoneNumber), ErrorResponses))]
async fn get_number(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<PhoneNumber>, ApiError> {
    Ok(Json(to_api(fetch(&state, &id).await?)))
}

/// Update a phone number.
#[utoipa::path(patch, path = "/v1/phone-numbers/{id}", tag = "phone-numbers", params(("id" = String, Path)),
    request_body = PhoneNumberUpdate,
    responses((status = 200, description = "The updated number", body = PhoneNumber), ErrorResponses))]
async fn update_number(
    State(state): State<AppState>,
    mode: Mode,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<serde_json::Value>,
) -> Result<Json<PhoneNumber>, ApiError> {
    let record = fetch(&state, &id).await?;
    let (current_url, current_secret) = (
        record.agent_webhook_url.clone(),
        record.agent_webhook_secret.clone(),
    );
    // Merge Patch (RFC 7396) for the plain fields; the hook by what the
    // patch says of it: absent keeps it, `null` turns it off, a URL (even
    // the same) gets a new secret, shown once.
    let hook = super::extract::patched_field(&patch, "agent_webhook_url")?;
    let PhoneNumberCreate {
        number,
        name,
        agent_id,
        trunk_id,
        recording,
        ..
    } = super::extract::patched(&to_api(record), &patch)?;
    let (url, secret, new_secret) = match hook {
        Some(Some(url)) => {
            let secret = secrets::new_webhook_secret();
            (Some(url), Some(secret.clone()), Some(secret))
        }
        Some(None) => (None, None, None),
        None => (current_url, current_secret, None),
    };
    let number = validate(
        &state,
        &number,
        name.as_deref(),
        agent_id.as_deref(),
        trunk_id.as_deref(),
        new_secret.as_ref().and(url.as_deref()),
        recording.as_ref(),
        mode,
    )
    .await?;
    let recording = settings_json(recording.as_ref())?;
    let fields = NumberFields {
        number: &number,
        name: name.as_deref(),
        agent_id: agent_id.as_deref(),
        trunk: trunk_id.as_deref(),
        agent_webhook_url: url.as_deref(),
        agent_webhook_secret: secret.as_deref(),
        recording: recording.as_deref(),
    };
    let record = state
        .store
        .update_number(&id, fields)
        .await
        .map_err(conflict)?;
    Ok(Json(with_secret(record, new_secret)))
}

/// Release a phone number.
#[utoipa::path(delete, path = "/v1/phone-numbers/{id}", tag = "phone-numbers", params(("id" = String, Path)),
    responses((status = 204, description = "Deleted"), ErrorResponses))]
async fn delete_number(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    fetch(&state, &id).await?;
    state.store.delete_number(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
