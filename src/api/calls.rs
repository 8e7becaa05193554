//! `/v1/calls`: the call records, filtered and paged; placing an outbound
//! call (refused with 403 to a number on the do-not-call list) and hanging
//! up any call, both handed to the call layer.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorBody, ErrorResponses, FieldError};
use super::extract::{ApiJson, ApiQuery, List, Pagination};
use super::mode::Mode;
use crate::call::{HangupError, OutboundRequest, PlaceError};
use crate::media::amd::AmdMode;
use crate::model::{Call, CallStatus, Direction, TrunkId};
use crate::store::calls::{CallFilter, CallRecord};
use crate::{e164, ids};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_calls, create_call))
        .routes(routes!(get_call))
        .routes(routes!(hangup_call))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallQuery {
    pub status: Option<CallStatus>,
    pub direction: Option<Direction>,
    /// E.164; matches the From or the To number.
    pub number: Option<String>,
    pub agent_id: Option<String>,
    /// RFC 3339; calls created at or after.
    pub created_after: Option<DateTime<Utc>>,
    /// RFC 3339; calls created before.
    pub created_before: Option<DateTime<Utc>>,
    /// Only this campaign's calls.
    pub campaign_id: Option<String>,
    /// Only calls that ended so, e.g. `no_answer` or `caller_hangup`.
    pub end_reason: Option<String>,
    /// How many items to return, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// How many items to skip (default 0).
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

/// The call as the API answers it; a row that cannot be shown is a 500.
fn to_api(r: CallRecord) -> Result<Call, ApiError> {
    Ok(Call::try_from(r)?)
}

/// List calls, newest first, with filters.
#[utoipa::path(get, path = "/v1/calls", tag = "calls", params(CallQuery),
    responses((status = 200, description = "A page of calls", body = List<Call>), ErrorResponses))]
async fn list_calls(
    State(state): State<AppState>,
    mode: Mode,
    ApiQuery(q): ApiQuery<CallQuery>,
) -> Result<Json<List<Call>>, ApiError> {
    let w = Pagination::new(q.limit, q.offset).window()?;
    let number = match q.number.as_deref().map(e164::normalize) {
        Some(Err(message)) => {
            return Err(
                ApiError::bad_request("invalid query parameters").with_details(vec![FieldError {
                    field: "number".into(),
                    message,
                }]),
            );
        }
        Some(Ok(n)) => Some(n),
        None => None,
    };
    let filter = CallFilter {
        status: q.status,
        direction: q.direction,
        number: number.as_deref(),
        agent_id: q.agent_id.as_deref(),
        created_after: q.created_after,
        created_before: q.created_before,
        campaign_id: q.campaign_id.as_deref(),
        end_reason: q.end_reason.as_deref(),
        livemode: Some(mode.livemode()),
    };
    let page = state.store.list_calls(&filter, w).await?;
    List::try_new(page, w, to_api).map(Json)
}

/// Get a call.
#[utoipa::path(get, path = "/v1/calls/{id}", tag = "calls", params(("id" = String, Path)),
    responses((status = 200, description = "The call", body = Call), ErrorResponses))]
async fn get_call(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Call>, ApiError> {
    let record = super::find(&id, ids::CALL, "call", state.store.get_call(&id)).await?;
    let outbound = record.direction == crate::model::Direction::Outbound;
    let mut call = to_api(record)?;
    if outbound {
        call.attempts = Some(state.store.call_attempts(&id).await?);
    }
    call.recording = match state.store.get_recording(&id).await {
        Ok(row) => Some(row.into()),
        Err(crate::store::StoreError::NotFound) => None,
        Err(e) => return Err(e.into()),
    };
    Ok(Json(call))
}

/// The body of `POST /v1/calls`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CallCreate {
    /// A provisioned number (E.164): the caller ID.
    pub from: String,
    /// E.164 number to call.
    pub to: String,
    /// The agent on the call; default: the one bound to `from`.
    pub agent_id: Option<String>,
    /// `trk_` id of the trunk; default: the one bound to `from`.
    pub trunk_id: Option<String>,
    /// Trunk failover: `trk_` ids tried in order (instead of `trunk_id`,
    /// 1 to 8, no repeats). A trunk down by its OPTIONS probe or
    /// registration is skipped without an INVITE; a 408, a 5xx (or what the
    /// trunk's `failover_on` lists) or no answer moves the same call to the
    /// next. Each attempt shows in `GET /v1/calls/{id}` `attempts`.
    #[serde(default)]
    pub trunk_ids: Vec<String>,
    /// Seconds to ring before giving up (`no-answer`); default from config.
    #[schema(minimum = 1, maximum = 600)]
    pub ring_timeout_seconds: Option<u32>,
    /// Seconds the answered call may last; default: the agent's.
    #[schema(minimum = 1, maximum = 86400)]
    pub max_duration_seconds: Option<u32>,
    /// Extra SIP headers on the INVITE, e.g. `{"X-Campaign": "c42"}`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Free JSON object stored with the call; part of its `context`.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// The call's template variables, e.g. `{"first_name": "Ada"}`: the
    /// agent's greeting and instructions use them (`{{first_name}}`).
    /// At most 100; names are letters, digits and `_`; values strings of
    /// at most 1000 characters, numbers or booleans.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub variables: BTreeMap<String, serde_json::Value>,
    /// Answering-machine detection (default `off`): `hangup` ends the call
    /// on a machine (end reason `machine_detected`); `message_after_beep`
    /// starts the agent after the greeting's beep. Either way the agent
    /// waits for the verdict, 3.5 s at most.
    pub amd: Option<AmdMode>,
    /// This call's recording settings, over the agent's (for example
    /// `{"enabled": true, "channels": "mono"}`).
    pub recording: Option<crate::model::RecordingSettings>,
}

/// Headers the SIP layer owns; a request may not set them.
const RESERVED_HEADERS: &[&str] = &[
    "via",
    "from",
    "to",
    "call-id",
    "cseq",
    "contact",
    "max-forwards",
    "content-type",
    "content-length",
    "route",
    "record-route",
    "authorization",
    "proxy-authorization",
    "expires",
    "allow",
    "supported",
    "require",
];

fn check_header(name: &str, value: &str) -> Option<String> {
    let token = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.!%*+`'~".contains(c));
    if !token {
        return Some("must be a SIP header name (letters, digits, '-')".into());
    }
    if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Some("is set by agentline and cannot be given".into());
    }
    if value.len() > 1024 || value.chars().any(|c| c.is_control()) {
        return Some("value must be at most 1024 characters without control characters".into());
    }
    None
}

/// Place an outbound call through a trunk. Answers at once with the
/// `queued` call; its progress shows in `GET /v1/calls/{id}`.
#[utoipa::path(post, path = "/v1/calls", tag = "calls", request_body = CallCreate,
    responses((status = 201, description = "The call, queued", body = Call),
        (status = 429, description = "A rate limit, the trunk's capacity or a daily cap (key or trunk) is reached", body = ErrorBody),
        (status = 403, description = "The number is on the do-not-call list, or the trunk's policy refuses the destination", body = ErrorBody),
        ErrorResponses))]
async fn create_call(
    State(state): State<AppState>,
    mode: Mode,
    key: Option<axum::Extension<super::auth::AuthedKey>>,
    ApiJson(body): ApiJson<CallCreate>,
) -> Result<(StatusCode, Json<Call>), ApiError> {
    let mut details = Vec::new();
    let mut bad = |field: &str, message: String| {
        details.push(FieldError {
            field: field.into(),
            message,
        })
    };
    let from = e164::normalize(&body.from).map_err(|m| bad("from", m)).ok();
    let to = e164::normalize(&body.to).map_err(|m| bad("to", m)).ok();
    if body
        .agent_id
        .as_deref()
        .is_some_and(|a| !ids::has_prefix(a, ids::AGENT))
    {
        bad("agent_id", "must be an agent id (agt_...)".into());
    }
    let trunk = match body.trunk_id.as_deref().map(str::parse::<TrunkId>) {
        Some(Ok(id)) => Some(id),
        Some(Err(e)) => {
            bad("trunk_id", e.to_string());
            None
        }
        None => None,
    };
    let mut failover = Vec::new();
    if !body.trunk_ids.is_empty() {
        if body.trunk_id.is_some() {
            bad("trunk_ids", "give trunk_id or trunk_ids, not both".into());
        }
        if body.trunk_ids.len() > 8 {
            bad("trunk_ids", "at most 8 trunks".into());
        }
        for (i, t) in body.trunk_ids.iter().enumerate() {
            match t.parse::<TrunkId>() {
                Ok(id) if failover.contains(&id) => {
                    bad(&format!("trunk_ids[{i}]"), "named twice".into());
                }
                Ok(id) => failover.push(id),
                Err(e) => bad(&format!("trunk_ids[{i}]"), e.to_string()),
            }
        }
    }
    let trunk = if failover.is_empty() {
        trunk
    } else {
        Some(failover.remove(0))
    };
    if body
        .ring_timeout_seconds
        .is_some_and(|s| !(1..=600).contains(&s))
    {
        bad("ring_timeout_seconds", "must be between 1 and 600".into());
    }
    if body
        .max_duration_seconds
        .is_some_and(|s| !(1..=86_400).contains(&s))
    {
        bad("max_duration_seconds", "must be between 1 and 86400".into());
    }
    if let Some(r) = &body.recording {
        for (field, message) in r.problems() {
            bad(&format!("recording.{field}"), message.into());
        }
    }
    for (name, value) in &body.headers {
        if let Some(message) = check_header(name, value) {
            bad(&format!("headers.{name}"), message);
        }
    }
    if body.variables.len() > 100 {
        bad("variables", "at most 100 variables".into());
    }
    for (name, value) in &body.variables {
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        let value_ok = match value {
            serde_json::Value::String(s) => s.chars().count() <= 1000,
            serde_json::Value::Number(_) | serde_json::Value::Bool(_) => true,
            _ => false,
        };
        if !name_ok {
            bad(
                &format!("variables.{name}"),
                "names are letters, digits and _ (at most 64)".into(),
            );
        } else if !value_ok {
            bad(
                &format!("variables.{name}"),
                "must be a string of at most 1000 characters, a number or a boolean".into(),
            );
        }
    }
    let metadata = body
        .metadata
        .unwrap_or_else(|| serde_json::Value::Object(Default::default()));
    if !metadata.is_object() {
        bad("metadata", "must be an object".into());
    }
    let (Some(from), Some(to)) = (from, to) else {
        return Err(ApiError::validation(details));
    };
    if !details.is_empty() {
        return Err(ApiError::validation(details));
    }
    // The do-not-call list binds every outbound call, not only campaigns.
    match state.store.find_dnc(&to).await {
        Ok(_) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "do_not_call",
                "the number is on the do-not-call list",
            ));
        }
        Err(crate::store::StoreError::NotFound) => {}
        Err(e) => return Err(e.into()),
    }
    let key_id = key.map(|k| k.0.id);
    if let Some(id) = &key_id {
        check_key_caps(&state, id, mode).await?;
    }
    let trunks_given = !body.trunk_ids.is_empty();
    let request = OutboundRequest {
        call_id: None,
        from,
        to,
        agent_id: body.agent_id,
        trunk,
        failover,
        ring_timeout: body
            .ring_timeout_seconds
            .map(|s| Duration::from_secs(u64::from(s))),
        max_duration: body
            .max_duration_seconds
            .map(|s| Duration::from_secs(u64::from(s))),
        headers: body.headers.into_iter().collect(),
        metadata: metadata.to_string(),
        amd: body.amd.unwrap_or_default(),
        opt_out_digit: None,
        campaign: None,
        variables: body.variables,
        agent_webhook: None,
        recording: body.recording,
        livemode: mode.livemode(),
        api_key_id: key_id.clone(),
    };
    let record = state.calls.place(request).await.map_err(|e| match e {
        PlaceError::UnknownFrom => ApiError::field("from", e.to_string()),
        PlaceError::NoAgent | PlaceError::UnknownAgent => {
            ApiError::field("agent_id", e.to_string())
        }
        PlaceError::NoTrunk | PlaceError::UnknownTrunk | PlaceError::TrunkNotOutbound => {
            let field = if trunks_given {
                "trunk_ids"
            } else {
                "trunk_id"
            };
            ApiError::field(field, e.to_string())
        }
        PlaceError::TrunkFull => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "trunk_full", e.to_string())
        }
        PlaceError::TrunkRate => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "trunk_cps", e.to_string())
        }
        PlaceError::Draining | PlaceError::NotRunning => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        ),
        PlaceError::DailyCap(_) => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "daily_cap", e.to_string())
        }
        PlaceError::DestinationDenied(_) => {
            ApiError::new(StatusCode::FORBIDDEN, "destination_denied", e.to_string())
        }
        PlaceError::AgentSettings(_) => ApiError::internal(e),
        PlaceError::Store(e) => e.into(),
    })?;
    Ok((StatusCode::CREATED, Json(to_api(record)?)))
}

/// Refuses a call once the key's daily caps (`[calls]
/// daily_calls_per_key`, `daily_minutes_per_key`, per UTC day) are reached,
/// counted from the calls' rows so that they hold over every node; sends
/// `api_key.cap_reached` the first time this node refuses one that day.
async fn check_key_caps(state: &AppState, key_id: &str, mode: Mode) -> Result<(), ApiError> {
    let (calls_cap, minutes_cap) = (state.daily_calls_per_key, state.daily_minutes_per_key);
    if calls_cap.is_none() && minutes_cap.is_none() {
        return Ok(());
    }
    let now = Utc::now();
    let midnight = now
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .map_or(now, |t| t.and_utc());
    let (calls, ms) = state.store.key_usage(key_id, midnight).await?;
    let reason = match (calls_cap, minutes_cap) {
        (Some(cap), _) if calls >= i64::from(cap) => format!("{cap} calls today"),
        (_, Some(cap)) if ms >= i64::from(cap) * 60_000 => format!("{cap} minutes today"),
        _ => return Ok(()),
    };
    // std Mutex: held for a lookup, never across an `.await`.
    static NOTIFIED: std::sync::Mutex<Vec<(String, chrono::NaiveDate)>> =
        std::sync::Mutex::new(Vec::new());
    let first = {
        let mut seen = NOTIFIED.lock().unwrap_or_else(|e| e.into_inner());
        let entry = (key_id.to_string(), now.date_naive());
        seen.retain(|(_, day)| *day == entry.1);
        let first = !seen.contains(&entry);
        if first {
            seen.push(entry);
        }
        first
    };
    if first {
        tracing::warn!(key_id, %reason, "API key daily cap reached; its calls are refused until midnight UTC");
        let data = crate::webhook::event::ApiKeyEventData {
            api_key_id: key_id.to_string(),
            reason: reason.clone(),
        };
        if let Err(e) = state
            .outbox
            .api_key_cap_reached(data, mode.livemode())
            .await
        {
            tracing::warn!(error = %e, "api_key.cap_reached not written");
        }
    }
    Err(ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "daily_cap",
        format!("this API key reached its daily cap ({reason}, UTC)"),
    ))
}

/// The optional body of `POST /v1/calls/{id}/hangup`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HangupBody {
    /// Who hangs up: `api` (the default; end reason `api_hangup`) or
    /// `agent` (end reason `agent_hangup`: a `stream` bot ending its call
    /// through the API, as if it had closed its WebSocket).
    pub by: Option<HangupBy>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HangupBy {
    Api,
    Agent,
}

/// Hang up a call in any state: CANCEL or a final response before the
/// answer, BYE after. Answers with the call as it stands; the end shows
/// in it shortly after. `{"by": "agent"}` ends it as the agent's hang-up.
#[utoipa::path(post, path = "/v1/calls/{id}/hangup", tag = "calls", params(("id" = String, Path)),
    request_body(content = Option<HangupBody>, description = "Optional: who hangs up"),
    responses((status = 202, description = "Hangup under way", body = Call), ErrorResponses))]
async fn hangup_call(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Option<ApiJson<Option<HangupBody>>>,
) -> Result<(StatusCode, Json<Call>), ApiError> {
    let record = super::find(&id, ids::CALL, "call", state.store.get_call(&id)).await?;
    if record.ended_at.is_some() {
        return Err(ApiError::conflict("the call has already ended"));
    }
    let by = body
        .and_then(|ApiJson(b)| b)
        .and_then(|b| b.by)
        .unwrap_or(HangupBy::Api);
    let hung = match by {
        HangupBy::Api => state.calls.hangup(&id),
        HangupBy::Agent => state.calls.hangup_as_agent(&id),
    };
    hung.map_err(|e| match e {
        HangupError::NotRunning => ApiError::conflict("the call is not running on this node"),
    })?;
    Ok((StatusCode::ACCEPTED, Json(to_api(record)?)))
}
