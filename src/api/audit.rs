//! The audit log: a middleware on every protected route that appends one
//! row per successful create, change or delete (which key by id, what
//! object, what action, when, from which address), and
//! `GET /v1/audit-events` to read them (admin keys).
//!
//! One middleware instead of a call in each handler, so a new route is
//! audited without anyone remembering to. The action and object come from
//! the route template: `POST /v1/agents` is `create` of `agents` (the id is
//! read from the answer), `PATCH|DELETE /v1/agents/{id}` is `update` or
//! `delete` of that id, `POST /v1/calls/{id}/hangup` is `hangup` of the call.
//!
//! Must not: record a secret (request and answer bodies are not stored;
//! only the new object's `id` is read from a create's answer), or fail a
//! request whose change is already made because its row could not be
//! written (that is logged).

use axum::Json;
use axum::body::{Body, HttpBody as _};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::{AuthedKey, client_addr};
use super::error::{ApiError, ErrorResponses, FieldError};
use super::extract::{ApiQuery, List, Pagination};
use super::observe::RequestId;
use crate::ids;
use crate::store::audit::{AuditFilter, AuditRecord, NewAudit};

/// Id prefix of an audit event.
pub const AUDIT: &str = "aud";
/// A new audit event id (`aud_...`), also for the CLI's rows.
pub fn new_id() -> String {
    ids::new(AUDIT)
}

/// The largest answer read to find a created object's id.
const MAX_READ: u64 = 1024 * 1024;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_audit_events))
}

/// One change made through the API.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEvent {
    #[schema(example = "aud_01jdw8q1m7k3x9b5n4c2v6t8r0")]
    pub id: String,
    /// The key that made the change (its id; never the secret).
    pub key_id: Option<String>,
    /// `create`, `update`, `delete`, or the action's name (`hangup`,
    /// `start`, `rotate-secret`, ...).
    pub action: String,
    /// The kind of object, as in its route: `agents`, `api-keys`, ...
    pub object_type: String,
    /// The object's id, when it has one.
    pub object_id: Option<String>,
    pub method: String,
    /// The route template, for example `/v1/agents/{id}`.
    pub route: String,
    /// The HTTP status answered (0 for a change made with the CLI).
    pub status: i64,
    /// The client's address (the TCP peer).
    pub client_addr: Option<String>,
    /// The request's `X-Request-Id`.
    pub request_id: Option<String>,
    /// `api` (a request, made with `key_id`) or `cli` (`agentline keys
    /// create` or `keys revoke` on the daemon's host; no key, no address).
    pub actor: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only changes made with this key.
    pub key_id: Option<String>,
    /// Only changes of this object.
    pub object_id: Option<String>,
    /// Only changes of this kind of object (`agents`, `api-keys`, ...).
    pub object_type: Option<String>,
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

fn to_api(r: AuditRecord) -> AuditEvent {
    AuditEvent {
        id: r.id,
        key_id: r.key_id,
        action: r.action,
        object_type: r.object_type,
        object_id: r.object_id,
        method: r.method,
        route: r.route,
        status: r.status,
        client_addr: r.client_addr,
        request_id: r.request_id,
        actor: r.actor,
        created_at: r.created_at,
    }
}

/// List audit events, newest first: every create, change and delete made
/// through the API.
#[utoipa::path(get, path = "/v1/audit-events", tag = "audit", params(AuditQuery),
    responses((status = 200, description = "A page of audit events", body = List<AuditEvent>), ErrorResponses))]
async fn list_audit_events(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<List<AuditEvent>>, ApiError> {
    let w = Pagination::new(q.limit, q.offset).window()?;
    let mut details = Vec::new();
    for (field, value) in [
        ("key_id", &q.key_id),
        ("object_id", &q.object_id),
        ("object_type", &q.object_type),
    ] {
        if value
            .as_ref()
            .is_some_and(|v| v.is_empty() || v.len() > 100)
        {
            details.push(FieldError {
                field: field.into(),
                message: "must be 1 to 100 characters".into(),
            });
        }
    }
    if !details.is_empty() {
        return Err(ApiError::bad_request("invalid query parameters").with_details(details));
    }
    let filter = AuditFilter {
        key_id: q.key_id.as_deref(),
        object_id: q.object_id.as_deref(),
        object_type: q.object_type.as_deref(),
    };
    let page = state.store.list_audit(filter, w).await?;
    Ok(Json(List::new(page, w, to_api)))
}

/// What a route template says about a change: (action, object type, the
/// object id's place). `None` for a read.
#[derive(Debug, PartialEq, Eq)]
struct Change {
    action: String,
    object_type: String,
    /// The object id is the path's `{id}`; else it is read from the answer.
    id_in_path: bool,
}

fn classify(method: &Method, template: &str) -> Option<Change> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    let rest = template.strip_prefix("/v1/").unwrap_or(template);
    let mut parts = rest.split('/');
    let object_type = parts.next().unwrap_or_default().to_string();
    let second = parts.next();
    let third = parts.next();
    let (action, id_in_path) = match (second, third) {
        // `/v1/agents`
        (None, _) => ("create".to_string(), false),
        // `/v1/agents/{id}`
        (Some("{id}"), None) => (
            match *method {
                Method::DELETE => "delete",
                _ => "update",
            }
            .to_string(),
            true,
        ),
        // `/v1/calls/{id}/hangup`
        (Some("{id}"), Some(action)) => (action.to_string(), true),
        // `/v1/do-not-call/import`
        (Some(action), _) => (action.to_string(), false),
    };
    Some(Change {
        action,
        object_type,
        id_in_path,
    })
}

/// The path's `{id}`: the segment at the template's `{id}`.
fn path_id<'a>(template: &str, path: &'a str) -> Option<&'a str> {
    let at = template.split('/').position(|s| s == "{id}")?;
    path.split('/').nth(at)
}

/// Middleware inside the authentication on every protected route.
pub async fn record(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let Some(template) = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
    else {
        return next.run(req).await;
    };
    let Some(change) = classify(&method, &template) else {
        return next.run(req).await;
    };
    let key_id = req.extensions().get::<AuthedKey>().map(|k| k.id.clone());
    let request_id = req.extensions().get::<RequestId>().map(|r| r.0.clone());
    let client = client_addr(&req).map(|a| a.ip().to_string());
    let path_object = if change.id_in_path {
        path_id(&template, req.uri().path()).map(str::to_string)
    } else {
        None
    };
    let response = next.run(req).await;
    if !response.status().is_success() {
        return response;
    }
    let (response, object_id) = if change.id_in_path {
        (response, path_object)
    } else {
        created_id(response).await
    };
    let row = NewAudit {
        id: &ids::new(AUDIT),
        key_id: key_id.as_deref(),
        action: &change.action,
        object_type: &change.object_type,
        object_id: object_id.as_deref(),
        method: method.as_str(),
        route: &template,
        status: i64::from(response.status().as_u16()),
        client_addr: client.as_deref(),
        request_id: request_id.as_deref(),
        actor: "api",
    };
    if let Err(e) = state.store.insert_audit(row).await {
        tracing::error!(error = %e, route = %template, "audit event not written");
    }
    response
}

/// The `id` of a JSON answer, and the answer rebuilt. Only a small answer
/// of known length is read (a stream is passed on untouched).
async fn created_id(response: Response) -> (Response, Option<String>) {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let small = response
        .body()
        .size_hint()
        .upper()
        .is_some_and(|n| n <= MAX_READ);
    if !is_json || !small {
        return (response, None);
    }
    let (parts, body) = response.into_parts();
    match axum::body::to_bytes(body, MAX_READ as usize).await {
        Ok(bytes) => {
            let id = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_string));
            (Response::from_parts(parts, Body::from(bytes)), id)
        }
        Err(e) => {
            tracing::warn!(error = %e, "answer not read for the audit log");
            (
                ApiError::internal("answer lost while read for the audit log").into_response(),
                None,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_become_actions_on_objects() {
        let c =
            |m: Method, t: &str| classify(&m, t).map(|c| (c.action, c.object_type, c.id_in_path));
        assert_eq!(c(Method::GET, "/v1/agents"), None);
        assert_eq!(
            c(Method::POST, "/v1/agents"),
            Some(("create".into(), "agents".into(), false))
        );
        assert_eq!(
            c(Method::PATCH, "/v1/agents/{id}"),
            Some(("update".into(), "agents".into(), true))
        );
        assert_eq!(
            c(Method::DELETE, "/v1/api-keys/{id}"),
            Some(("delete".into(), "api-keys".into(), true))
        );
        assert_eq!(
            c(Method::POST, "/v1/calls/{id}/hangup"),
            Some(("hangup".into(), "calls".into(), true))
        );
        assert_eq!(
            c(Method::POST, "/v1/do-not-call/import"),
            Some(("import".into(), "do-not-call".into(), false))
        );
        assert_eq!(
            path_id("/v1/calls/{id}/hangup", "/v1/calls/call_01x/hangup"),
            Some("call_01x")
        );
    }
}
