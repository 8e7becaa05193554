//! `GET /v1/voices` and `GET /v1/models`: the TTS voices usable here (the
//! flite voices installed on this machine, OpenAI's, Cartesia's when the
//! daemon has its key) and the STT, TTS and LLM models per provider, as
//! `agent::catalog` knows them. Agents are held to the same lists when
//! they are created or changed (`api::agents`).
//!
//! Must not: call a vendor itself (the catalog does, bounded and cached).

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorResponses};
use super::extract::{ApiQuery, List, Pagination};
use crate::agent::catalog;
use crate::store::Page;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_voices))
        .routes(routes!(list_models))
}

/// A voice an agent can name as `tts.voice` with `tts.provider`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Voice {
    /// `embedded` (flite), `openai` or `cartesia`.
    #[schema(example = "embedded")]
    pub provider: String,
    /// What `tts.voice` takes.
    #[schema(example = "slt")]
    pub id: String,
    pub name: String,
    pub language: Option<String>,
    /// The provider's voice when the agent names none.
    pub default: bool,
}

/// A model an agent can name as `stt.model`, `tts.model` or `llm.model`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Model {
    /// `stt`, `tts` or `llm`.
    #[schema(example = "tts")]
    pub kind: String,
    #[schema(example = "openai")]
    pub provider: String,
    #[schema(example = "tts-1")]
    pub id: String,
    /// The provider's model when the agent names none.
    pub default: bool,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VoiceQuery {
    /// Only this provider's voices (`embedded`, `openai`, `cartesia`).
    pub provider: Option<String>,
    /// How many items to return, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// How many items to skip (default 0).
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ModelQuery {
    /// Only models of this stage (`stt`, `tts`, `llm`).
    pub kind: Option<String>,
    /// Only this provider's models.
    pub provider: Option<String>,
    /// How many items to return, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// How many items to skip (default 0).
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

/// One page of an in-memory list.
fn page<T>(all: Vec<T>, limit: Option<i64>, offset: Option<i64>) -> Result<List<T>, ApiError> {
    let w = Pagination::new(limit, offset).window()?;
    let total = all.len() as i64;
    let items = all
        .into_iter()
        .skip(usize::try_from(w.offset).unwrap_or(usize::MAX))
        .take(usize::try_from(w.limit).unwrap_or(0))
        .collect();
    Ok(List::new(Page { items, total }, w, |v| v))
}

/// List the TTS voices usable here: the flite voices installed on this
/// machine (`embedded`), OpenAI's, and Cartesia's when the daemon has a
/// `CARTESIA_API_KEY` (asked with a timeout, cached for ten minutes).
#[utoipa::path(get, path = "/v1/voices", tag = "agents", params(VoiceQuery),
    responses((status = 200, description = "A page of voices", body = List<Voice>), ErrorResponses))]
async fn list_voices(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<VoiceQuery>,
) -> Result<Json<List<Voice>>, ApiError> {
    let all = catalog::voices(state.calls.speech())
        .await
        .into_iter()
        .filter(|v| q.provider.as_deref().is_none_or(|p| p == v.provider))
        .map(|v| Voice {
            provider: v.provider.to_string(),
            id: v.id,
            name: v.name,
            language: v.language,
            default: v.default,
        })
        .collect();
    page(all, q.limit, q.offset).map(Json)
}

/// List the STT, TTS and LLM models per provider. The embedded engines'
/// and the vendors' own endpoints' lists are closed (an agent naming
/// another model is refused); an agent with a `base_url` of its own, and
/// any LLM, may name other models.
#[utoipa::path(get, path = "/v1/models", tag = "agents", params(ModelQuery),
    responses((status = 200, description = "A page of models", body = List<Model>), ErrorResponses))]
async fn list_models(ApiQuery(q): ApiQuery<ModelQuery>) -> Result<Json<List<Model>>, ApiError> {
    let all = catalog::models()
        .into_iter()
        .filter(|m| q.kind.as_deref().is_none_or(|k| k == m.stage.as_str()))
        .filter(|m| q.provider.as_deref().is_none_or(|p| p == m.provider))
        .map(|m| Model {
            kind: m.stage.as_str().to_string(),
            provider: m.provider.to_string(),
            id: m.id.to_string(),
            default: m.default,
        })
        .collect();
    page(all, q.limit, q.offset).map(Json)
}
