//! `/v1/calls`: the call records, filtered and paged. Placing and hanging up
//! calls arrives with the SIP call layer.

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorResponses, FieldError};
use super::extract::{ApiQuery, List, Pagination};
use crate::store::StoreError;
use crate::store::calls::{CallFilter, CallRecord};
use crate::{e164, ids};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_calls))
        .routes(routes!(get_call))
}

/// Call statuses, named as Twilio and jambonz users know them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CallStatus {
    Queued,
    Ringing,
    InProgress,
    Completed,
    Busy,
    NoAnswer,
    Failed,
    Canceled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Call {
    #[schema(example = "call_01jdw8q1m7k3x9b5n4c2v6t8r0")]
    pub id: String,
    pub direction: Direction,
    pub from: String,
    pub to: String,
    pub trunk_id: Option<String>,
    pub agent_id: Option<String>,
    pub status: CallStatus,
    pub sip_call_id: Option<String>,
    /// Final SIP status, when there was one.
    pub sip_code: Option<i64>,
    pub sip_reason: Option<String>,
    /// Why the call ended, for example `caller_hangup` or `max_duration`.
    pub end_reason: Option<String>,
    /// RFC 4733 digits received, in order.
    pub dtmf: String,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub ringing_at: Option<DateTime<Utc>>,
    pub answered_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
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
    /// How many items to return, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// How many items to skip (default 0).
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

fn enum_str<T: Serialize>(v: T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn parse_enum<T: serde::de::DeserializeOwned>(
    id: &str,
    field: &str,
    v: &str,
) -> Result<T, ApiError> {
    serde_json::from_value(serde_json::Value::String(v.to_string()))
        .map_err(|e| ApiError::internal(format!("call {id} has {field} {v:?}: {e}")))
}

pub fn to_api(r: CallRecord) -> Result<Call, ApiError> {
    let direction = parse_enum(&r.id, "direction", &r.direction)?;
    let status = parse_enum(&r.id, "status", &r.status)?;
    let metadata = serde_json::from_str(&r.metadata)
        .map_err(|e| ApiError::internal(format!("call {} metadata: {e}", r.id)))?;
    Ok(Call {
        direction,
        status,
        metadata,
        id: r.id,
        from: r.from_number,
        to: r.to_number,
        trunk_id: r.trunk,
        agent_id: r.agent_id,
        sip_call_id: r.sip_call_id,
        sip_code: r.sip_code,
        sip_reason: r.sip_reason,
        end_reason: r.end_reason,
        dtmf: r.dtmf,
        created_at: r.created_at,
        ringing_at: r.ringing_at,
        answered_at: r.answered_at,
        ended_at: r.ended_at,
        duration_ms: r.duration_ms,
    })
}

/// List calls, newest first, with filters.
#[utoipa::path(get, path = "/v1/calls", tag = "calls", params(CallQuery),
    responses((status = 200, description = "A page of calls", body = List<Call>), ErrorResponses))]
async fn list_calls(
    State(state): State<AppState>,
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
    let status = q.status.map(enum_str);
    let direction = q.direction.map(enum_str);
    let filter = CallFilter {
        status: status.as_deref(),
        direction: direction.as_deref(),
        number: number.as_deref(),
        agent_id: q.agent_id.as_deref(),
        created_after: q.created_after,
        created_before: q.created_before,
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
    if !ids::has_prefix(&id, ids::CALL) {
        return Err(ApiError::not_found("call"));
    }
    let record = state.store.get_call(&id).await.map_err(|e| match e {
        StoreError::NotFound => ApiError::not_found("call"),
        e => e.into(),
    })?;
    Ok(Json(to_api(record)?))
}
