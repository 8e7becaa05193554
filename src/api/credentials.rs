//! `/v1/credentials`: provider keys stored through the API, write-only.
//!
//! A credential is a value (an LLM or speech vendor key), a name and the
//! hosts it may be sent to. The value is sealed (AES-256-GCM, with the
//! operator's key from `AGENTLINE_SECRETS_KEY` or `[secrets] key_file`)
//! before it reaches the store, and never shown again: reads answer the
//! name, the hosts and the times. Agents name one with `credential_id`
//! (`llm`, `stt`, `tts`); it is sent only to its hosts, so a key holder
//! cannot point an agent that uses someone else's credential at their own
//! server.
//!
//! Must not: log, echo or return a value.

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
use crate::ids;
use crate::secrets::{Sealer, Secret};
use crate::store::Store;
use crate::store::credentials::CredentialRecord;

/// The associated data sealed values are bound to.
const PURPOSE: &str = "credential";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_credentials, create_credential))
        .routes(routes!(get_credential, delete_credential))
}

/// A stored credential: never its value.
#[derive(Debug, Serialize, ToSchema)]
pub struct Credential {
    #[schema(example = "cred_01jdw8q1m7k3x9b5n4c2v6t8r0")]
    pub id: String,
    pub name: String,
    /// The hosts the value may be sent to.
    pub hosts: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The body of `POST /v1/credentials`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialCreate {
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// The secret (an API key). Stored sealed, never shown again.
    #[schema(min_length = 1, max_length = 4096, write_only)]
    pub value: String,
    /// Host names (or IP literals, or `*.example.com`) the value may be
    /// sent to; at least one.
    #[schema(min_items = 1, max_items = 20)]
    pub hosts: Vec<String>,
}

impl std::fmt::Debug for CredentialCreate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialCreate")
            .field("name", &self.name)
            .field("value", &"***")
            .field("hosts", &self.hosts)
            .finish()
    }
}

fn to_api(r: CredentialRecord) -> Result<Credential, ApiError> {
    let hosts: Vec<String> = serde_json::from_str(&r.hosts)
        .map_err(|e| ApiError::internal(format!("credential {} hosts: {e}", r.id)))?;
    Ok(Credential {
        id: r.id,
        name: r.name,
        hosts,
        created_at: r.created_at,
        updated_at: r.updated_at,
    })
}

/// A host pattern: a DNS name, an IP literal, or `*.` and a name.
fn is_host(h: &str) -> bool {
    let name = h.strip_prefix("*.").unwrap_or(h);
    if name.parse::<std::net::IpAddr>().is_ok() && !h.starts_with("*.") {
        return true;
    }
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Store a credential (write-only: its value is never shown again).
#[utoipa::path(post, path = "/v1/credentials", tag = "credentials", request_body = CredentialCreate,
    responses((status = 201, description = "Stored", body = Credential), ErrorResponses))]
async fn create_credential(
    State(state): State<AppState>,
    ApiJson(b): ApiJson<CredentialCreate>,
) -> Result<(StatusCode, Json<Credential>), ApiError> {
    let mut d = Vec::new();
    let mut bad = |field: &str, message: &str| {
        d.push(FieldError {
            field: field.into(),
            message: message.into(),
        })
    };
    if b.name.trim().is_empty() || b.name.chars().count() > 100 {
        bad("name", "must be 1 to 100 characters");
    }
    if b.value.is_empty() || b.value.len() > 4096 || b.value.chars().any(char::is_control) {
        bad(
            "value",
            "must be 1 to 4096 characters without control characters",
        );
    }
    if b.hosts.is_empty() || b.hosts.len() > 20 {
        bad("hosts", "must list 1 to 20 hosts the value may be sent to");
    }
    for (i, h) in b.hosts.iter().enumerate() {
        if !is_host(h) {
            bad(
                &format!("hosts[{i}]"),
                "must be a host name, an IP address or *.example.com",
            );
        }
    }
    if !d.is_empty() {
        return Err(ApiError::validation(d));
    }
    if !state.sealer.has_key() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_configured",
            "the daemon has no encryption key for stored secrets \
             (AGENTLINE_SECRETS_KEY or [secrets] key_file)",
        ));
    }
    let sealed = state
        .sealer
        .seal(PURPOSE, &b.value)
        .map_err(ApiError::internal)?;
    let hosts: Vec<String> = b.hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
    let hosts = serde_json::to_string(&hosts).map_err(ApiError::internal)?;
    let id = ids::new(ids::CREDENTIAL);
    let record = state
        .store
        .insert_credential(&id, b.name.trim(), &hosts, &sealed)
        .await?;
    Ok((StatusCode::CREATED, Json(to_api(record)?)))
}

/// List credentials (never their values), newest first.
#[utoipa::path(get, path = "/v1/credentials", tag = "credentials", params(Pagination),
    responses((status = 200, description = "A page of credentials", body = List<Credential>), ErrorResponses))]
async fn list_credentials(
    State(state): State<AppState>,
    ApiQuery(page): ApiQuery<Pagination>,
) -> Result<Json<List<Credential>>, ApiError> {
    let w = page.window()?;
    let records = state.store.list_credentials(w).await?;
    List::try_new(records, w, to_api).map(Json)
}

/// Get a credential's name and hosts (never its value).
#[utoipa::path(get, path = "/v1/credentials/{id}", tag = "credentials", params(("id" = String, Path)),
    responses((status = 200, description = "The credential", body = Credential), ErrorResponses))]
async fn get_credential(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Credential>, ApiError> {
    let r = super::find(
        &id,
        ids::CREDENTIAL,
        "credential",
        state.store.get_credential(&id),
    )
    .await?;
    Ok(Json(to_api(r)?))
}

/// Delete a credential. Agents that name it fail until changed.
#[utoipa::path(delete, path = "/v1/credentials/{id}", tag = "credentials", params(("id" = String, Path)),
    responses((status = 204, description = "Deleted"), ErrorResponses))]
async fn delete_credential(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    super::find(
        &id,
        ids::CREDENTIAL,
        "credential",
        state.store.delete_credential(&id),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Whether credential `id` exists and may be sent to `url` (agent
/// validation): the message names what is wrong.
pub(super) async fn check_use(state: &AppState, id: &str, url: &url::Url) -> Result<(), String> {
    if !ids::has_prefix(id, ids::CREDENTIAL) {
        return Err("must be a credential id (cred_...)".into());
    }
    let (_, hosts) = match state.store.credential_secret(id).await {
        Ok(v) => v,
        Err(crate::store::StoreError::NotFound) => return Err("no such credential".into()),
        Err(e) => return Err(e.to_string()),
    };
    let hosts: Vec<String> = serde_json::from_str(&hosts).unwrap_or_default();
    if crate::net::host_allowed(&hosts, url) {
        Ok(())
    } else {
        Err(format!(
            "the credential may not be sent to {}",
            url.host_str().unwrap_or_default()
        ))
    }
}

/// Opens stored credentials for the daemon's own use (installed at start).
pub struct StoreCredentials {
    pub store: Store,
    pub sealer: Sealer,
}

#[async_trait::async_trait]
impl crate::secrets::CredentialSource for StoreCredentials {
    async fn credential(&self, id: &str) -> Result<Option<(Secret, Vec<String>)>, String> {
        let (sealed, hosts) = match self.store.credential_secret(id).await {
            Ok(v) => v,
            Err(crate::store::StoreError::NotFound) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let secret = self
            .sealer
            .open(PURPOSE, &sealed)
            .map_err(|e| e.to_string())?;
        let hosts: Vec<String> = serde_json::from_str(&hosts).map_err(|e| e.to_string())?;
        Ok(Some((secret, hosts)))
    }
}
