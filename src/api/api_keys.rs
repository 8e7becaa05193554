//! `/v1/api-keys`: create (the secret is shown once), list (prefix only) and
//! revoke. The first key comes from `agentline keys create`.
//!
//! A key never makes a stronger one: the new key's scope is at most the
//! creator's (and defaults to it), its rate limit at most the creator's
//! effective limit (and defaults to the creator's own limit), and a test
//! key makes only test keys. Only `admin` keys reach these routes at all
//! (`scopes::ROUTES`); the checks here hold even if that changed.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::AuthedKey;
use super::error::{ApiError, ErrorResponses, FieldError};
use super::extract::{ApiJson, ApiQuery, List, Pagination};
use super::scopes::Scope;
use crate::secrets::{self, KeyMode};
use crate::store::StoreError;
use crate::store::keys::{ApiKeyRecord, NewApiKey};
use crate::{ids, store::Store};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_keys, create_key))
        .routes(routes!(revoke_key))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Live,
    Test,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKey {
    #[schema(example = "key_01jdw8q1m7k3x9b5n4c2v6t8r0")]
    pub id: String,
    pub name: String,
    /// The visible start of the key, enough to recognize it.
    #[schema(example = "al_live_AbCd1234")]
    pub prefix: String,
    pub mode: Mode,
    /// What the key may do: `admin`, `calls` or `read`.
    pub scope: Scope,
    /// Requests per minute; `null` means the daemon's default.
    pub rate_limit_per_minute: Option<i64>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// A new key and its secret, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyCreated {
    #[serde(flatten)]
    pub key: ApiKey,
    pub secret: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyCreate {
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// Default: the creating key's mode (`live` for a live key); a test
    /// key makes only test keys.
    pub mode: Option<Mode>,
    /// Default: the creating key's scope. At most the creator's.
    pub scope: Option<Scope>,
    /// Default: the creating key's own limit (`null` when it follows the
    /// daemon's default). At most the creator's effective limit.
    #[schema(minimum = 1, maximum = 1000000)]
    pub rate_limit_per_minute: Option<i64>,
}

pub(crate) fn to_api(r: ApiKeyRecord) -> ApiKey {
    ApiKey {
        mode: if r.mode == "test" {
            Mode::Test
        } else {
            Mode::Live
        },
        // A value outside the three is refused by the schema's CHECK.
        scope: Scope::parse(&r.scope).unwrap_or(Scope::Read),
        id: r.id,
        name: r.name,
        prefix: r.prefix,
        rate_limit_per_minute: r.rate_limit_per_minute,
        revoked_at: r.revoked_at,
        created_at: r.created_at,
    }
}

/// Makes a key and stores only its hash. Shared by the API and the CLI.
pub async fn create(
    store: &Store,
    name: &str,
    mode: KeyMode,
    scope: Scope,
    rate_limit_per_minute: Option<i64>,
) -> Result<(ApiKeyRecord, String), StoreError> {
    let key = secrets::new_api_key(mode);
    let record = store
        .insert_api_key(NewApiKey {
            id: &ids::new(ids::API_KEY),
            name,
            prefix: &key.prefix,
            secret_hash: &key.hash,
            mode: mode.as_str(),
            scope: scope.as_str(),
            rate_limit_per_minute,
        })
        .await?;
    Ok((record, key.secret))
}

/// Create an API key; the answer carries the secret once. The new key can
/// do at most what the creating key can: its scope, rate limit and mode
/// default to the creator's, and asking for more is 403.
#[utoipa::path(post, path = "/v1/api-keys", tag = "api-keys", request_body = ApiKeyCreate,
    responses((status = 201, description = "Created", body = ApiKeyCreated), ErrorResponses))]
async fn create_key(
    State(state): State<AppState>,
    Extension(creator): Extension<AuthedKey>,
    ApiJson(body): ApiJson<ApiKeyCreate>,
) -> Result<(StatusCode, Json<ApiKeyCreated>), ApiError> {
    let mut details = Vec::new();
    if body.name.trim().is_empty() || body.name.chars().count() > 100 {
        details.push(FieldError {
            field: "name".into(),
            message: "must be 1 to 100 characters".into(),
        });
    }
    if body
        .rate_limit_per_minute
        .is_some_and(|n| !(1..=1_000_000).contains(&n))
    {
        details.push(FieldError {
            field: "rate_limit_per_minute".into(),
            message: "must be between 1 and 1000000".into(),
        });
    }
    if !details.is_empty() {
        return Err(ApiError::validation(details));
    }
    let creator_is_test = creator.mode == KeyMode::Test.as_str();
    let mode = match body.mode {
        Some(Mode::Test) => KeyMode::Test,
        Some(Mode::Live) if creator_is_test => {
            return Err(forbidden("a test key cannot make a live key"));
        }
        Some(Mode::Live) => KeyMode::Live,
        None if creator_is_test => KeyMode::Test,
        None => KeyMode::Live,
    };
    let scope = body.scope.unwrap_or(creator.scope);
    if !creator.scope.covers(scope) {
        return Err(forbidden(format!(
            "a `{}` key cannot make a `{scope}` key",
            creator.scope
        )));
    }
    let rate_limit = match body.rate_limit_per_minute {
        Some(n) if n > i64::from(creator.effective_rate_limit) => {
            return Err(forbidden(format!(
                "rate_limit_per_minute {n} is above this key's own limit ({})",
                creator.effective_rate_limit
            )));
        }
        Some(n) => Some(n),
        None => creator.rate_limit_per_minute,
    };
    let (record, secret) = create(&state.store, body.name.trim(), mode, scope, rate_limit).await?;
    Ok((
        StatusCode::CREATED,
        Json(ApiKeyCreated {
            key: to_api(record),
            secret,
        }),
    ))
}

fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// List API keys (prefixes only), newest first.
#[utoipa::path(get, path = "/v1/api-keys", tag = "api-keys", params(Pagination),
    responses((status = 200, description = "A page of keys", body = List<ApiKey>), ErrorResponses))]
async fn list_keys(
    State(state): State<AppState>,
    ApiQuery(page): ApiQuery<Pagination>,
) -> Result<Json<List<ApiKey>>, ApiError> {
    let w = page.window()?;
    let page = state.store.list_api_keys(w).await?;
    Ok(Json(List::new(page, w, to_api)))
}

/// Revoke an API key; it stops working at once.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "api-keys", params(("id" = String, Path)),
    responses((status = 200, description = "The revoked key", body = ApiKey), ErrorResponses))]
async fn revoke_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ApiKey>, ApiError> {
    if !ids::has_prefix(&id, ids::API_KEY) {
        return Err(ApiError::not_found("API key"));
    }
    match state.store.revoke_api_key(&id).await {
        Ok(r) => Ok(Json(to_api(r))),
        Err(StoreError::NotFound) => Err(ApiError::not_found("API key")),
        Err(e) => Err(e.into()),
    }
}
