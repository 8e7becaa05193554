//! `/v1/publishable-keys`: create (the key is shown once), list and revoke
//! publishable keys (`al_pk_...`).
//!
//! A publishable key is meant to sit in a web page's source, so it can do
//! exactly one thing: start web calls (`POST /v1/web-calls`) for the agents
//! it lists, from the web origins it lists (`web_calls` checks both). It
//! is not an API key: the API key middleware does not know its prefix, so
//! every other route answers it 401. Only `admin` keys reach these routes
//! (`scopes::ROUTES`).
//!
//! Must not: authenticate a publishable key (that is `web_calls`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorResponses, FieldError};
use super::extract::{ApiJson, ApiQuery, List, Pagination};
use crate::ids;
use crate::secrets;
use crate::store::StoreError;
use crate::store::web_calls::{NewPublishableKey, PublishableKeyRecord};

/// What every publishable key starts with.
pub const KEY_START: &str = "al_pk_";
/// Length of the random part.
const KEY_BODY_LEN: usize = 32;
/// How many characters of the random part the visible prefix keeps.
const PREFIX_BODY_LEN: usize = 8;
/// Agents one key may list at most.
const MAX_AGENTS: usize = 50;
/// Origins one key may list at most.
const MAX_ORIGINS: usize = 20;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_keys, create_key))
        .routes(routes!(revoke_key))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PublishableKey {
    #[schema(example = "pk_01jdw8q1m7k3x9b5n4c2v6t8r0")]
    pub id: String,
    pub name: String,
    /// The visible start of the key, enough to recognize it.
    #[schema(example = "al_pk_AbCd1234")]
    pub prefix: String,
    /// The agents it may start web calls for.
    pub agent_ids: Vec<String>,
    /// The web origins it may be used from (`https://shop.example`).
    pub origins: Vec<String>,
    /// `POST /v1/web-calls` per minute; `null` means the daemon's API
    /// default.
    pub rate_limit_per_minute: Option<i64>,
    /// Web calls at once; `null` means `[webrtc] max_calls_per_key`.
    pub max_concurrent_calls: Option<i64>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// A new key, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublishableKeyCreated {
    #[serde(flatten)]
    pub key: PublishableKey,
    #[schema(example = "al_pk_AbCd1234EfGh5678IjKl9012MnOp3456")]
    pub secret: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishableKeyCreate {
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// 1 to 50 existing agents.
    pub agent_ids: Vec<String>,
    /// 1 to 20 origins, `http(s)://host[:port]` as a browser sends them in
    /// `Origin` (no path, no wildcard).
    pub origins: Vec<String>,
    #[schema(minimum = 1, maximum = 100000)]
    pub rate_limit_per_minute: Option<i64>,
    #[schema(minimum = 1, maximum = 10000)]
    pub max_concurrent_calls: Option<i64>,
}

pub(crate) fn to_api(r: PublishableKeyRecord) -> PublishableKey {
    PublishableKey {
        agent_ids: r.agents(),
        origins: r.allowed_origins(),
        id: r.id,
        name: r.name,
        prefix: r.prefix,
        rate_limit_per_minute: r.rate_limit_per_minute,
        max_concurrent_calls: r.max_concurrent_calls,
        revoked_at: r.revoked_at,
        created_at: r.created_at,
    }
}

/// A web origin in the form browsers send it (RFC 6454 §6.2, the ASCII
/// serialization): `scheme://host[:port]`, default port omitted, lower
/// case. `None` for anything else (a path, credentials, `null`, another
/// scheme).
pub fn normalize_origin(s: &str) -> Option<String> {
    if s.len() > 200 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    let url = url::Url::parse(s).ok()?;
    if !matches!(url.scheme(), "http" | "https")
        || url.host_str().is_none_or(str::is_empty)
        || !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
        || url.path() != "/"
        // `Url` reads `https://a/` and `https://a` alike; a path of more
        // than that one `/` is refused above.
        || s.strip_suffix('/')
            .unwrap_or(s)
            .split_once("://")
            .is_none_or(|(_, rest)| rest.contains('/'))
    {
        return None;
    }
    let origin = url.origin().ascii_serialization();
    (origin != "null").then_some(origin)
}

/// The visible prefix of a well-formed publishable key, or `None`.
pub fn key_prefix(key: &str) -> Option<&str> {
    let body = key.strip_prefix(KEY_START)?;
    if body.len() != KEY_BODY_LEN || !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    Some(&key[..KEY_START.len() + PREFIX_BODY_LEN])
}

fn field(name: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: name.into(),
        message: message.into(),
    }
}

/// Create a publishable key for web pages; the answer carries the key once.
/// It can only start web calls (`POST /v1/web-calls`) for the listed
/// agents, from the listed origins.
#[utoipa::path(post, path = "/v1/publishable-keys", tag = "web-calls",
    request_body = PublishableKeyCreate,
    responses((status = 201, description = "Created", body = PublishableKeyCreated), ErrorResponses))]
async fn create_key(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<PublishableKeyCreate>,
) -> Result<(StatusCode, Json<PublishableKeyCreated>), ApiError> {
    let mut details = Vec::new();
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        details.push(field("name", "must be 1 to 100 characters"));
    }
    if body.agent_ids.is_empty() || body.agent_ids.len() > MAX_AGENTS {
        details.push(field(
            "agent_ids",
            format!("must list 1 to {MAX_AGENTS} agents"),
        ));
    }
    let mut agents: Vec<String> = Vec::new();
    for (i, id) in body.agent_ids.iter().enumerate() {
        if !ids::has_prefix(id, ids::AGENT) {
            details.push(field(&format!("agent_ids[{i}]"), "is not an agent id"));
        } else if !agents.contains(id) {
            agents.push(id.clone());
        }
    }
    if body.origins.is_empty() || body.origins.len() > MAX_ORIGINS {
        details.push(field(
            "origins",
            format!("must list 1 to {MAX_ORIGINS} origins"),
        ));
    }
    let mut origins: Vec<String> = Vec::new();
    for (i, o) in body.origins.iter().enumerate() {
        match normalize_origin(o) {
            Some(n) if !origins.contains(&n) => origins.push(n),
            Some(_) => {}
            None => details.push(field(
                &format!("origins[{i}]"),
                "must be an origin: http(s)://host[:port], no path",
            )),
        }
    }
    if body
        .rate_limit_per_minute
        .is_some_and(|n| !(1..=100_000).contains(&n))
    {
        details.push(field(
            "rate_limit_per_minute",
            "must be between 1 and 100000",
        ));
    }
    if body
        .max_concurrent_calls
        .is_some_and(|n| !(1..=10_000).contains(&n))
    {
        details.push(field("max_concurrent_calls", "must be between 1 and 10000"));
    }
    if !details.is_empty() {
        return Err(ApiError::validation(details));
    }
    // Every agent must exist now; one deleted later simply cannot be
    // called (the web call looks it up again).
    for (i, id) in agents.iter().enumerate() {
        match state.store.get_agent(id).await {
            Ok(_) => {}
            Err(StoreError::NotFound) => {
                details.push(field(&format!("agent_ids[{i}]"), "no such agent"))
            }
            Err(e) => return Err(e.into()),
        }
    }
    if !details.is_empty() {
        return Err(ApiError::validation(details));
    }
    let body_chars: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(KEY_BODY_LEN)
        .map(char::from)
        .collect();
    let secret = format!("{KEY_START}{body_chars}");
    let prefix = key_prefix(&secret).unwrap_or_default().to_string();
    let agent_ids = serde_json::to_string(&agents).map_err(ApiError::internal)?;
    let origins = serde_json::to_string(&origins).map_err(ApiError::internal)?;
    let record = state
        .store
        .insert_publishable_key(NewPublishableKey {
            id: &ids::new(ids::PUBLISHABLE_KEY),
            name,
            prefix: &prefix,
            secret_hash: &secrets::hash_key(&secret),
            agent_ids: &agent_ids,
            origins: &origins,
            rate_limit_per_minute: body.rate_limit_per_minute,
            max_concurrent_calls: body.max_concurrent_calls,
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(PublishableKeyCreated {
            key: to_api(record),
            secret,
        }),
    ))
}

/// List publishable keys (prefixes only), newest first.
#[utoipa::path(get, path = "/v1/publishable-keys", tag = "web-calls", params(Pagination),
    responses((status = 200, description = "A page of keys", body = List<PublishableKey>), ErrorResponses))]
async fn list_keys(
    State(state): State<AppState>,
    ApiQuery(page): ApiQuery<Pagination>,
) -> Result<Json<List<PublishableKey>>, ApiError> {
    let w = page.window()?;
    let page = state.store.list_publishable_keys(w).await?;
    Ok(Json(List::new(page, w, to_api)))
}

/// Revoke a publishable key: it starts no web call from now on (calls
/// already up go on).
#[utoipa::path(delete, path = "/v1/publishable-keys/{id}", tag = "web-calls",
    params(("id" = String, Path)),
    responses((status = 200, description = "The revoked key", body = PublishableKey), ErrorResponses))]
async fn revoke_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<PublishableKey>, ApiError> {
    let record = super::find(
        &id,
        ids::PUBLISHABLE_KEY,
        "publishable key",
        state.store.revoke_publishable_key(&id),
    )
    .await?;
    Ok(Json(to_api(record)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_what_browsers_send() {
        assert_eq!(
            normalize_origin("https://Shop.Example").as_deref(),
            Some("https://shop.example")
        );
        assert_eq!(
            normalize_origin("http://127.0.0.1:8081").as_deref(),
            Some("http://127.0.0.1:8081")
        );
        assert_eq!(
            normalize_origin("https://shop.example:443").as_deref(),
            Some("https://shop.example")
        );
        for bad in [
            "*",
            "null",
            "shop.example",
            "ftp://shop.example",
            "https://shop.example/page",
            "https://user@shop.example",
            "https://shop.example?x=1",
            "https://shop.example#x",
            "https:// shop.example",
            "javascript:alert(1)",
        ] {
            assert_eq!(normalize_origin(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_well_formed_keys_have_a_prefix() {
        let key = format!("{KEY_START}{}", "a".repeat(32));
        assert_eq!(key_prefix(&key), Some("al_pk_aaaaaaaa"));
        assert_eq!(key_prefix("al_pk_short"), None);
        assert_eq!(key_prefix(&format!("al_live_{}", "a".repeat(32))), None);
        assert_eq!(key_prefix(&format!("{KEY_START}{}!", "a".repeat(31))), None);
    }
}
