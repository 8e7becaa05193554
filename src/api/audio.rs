//! `/v1/audio`: audio prompts uploaded through the API, the one way besides
//! the operator's media directory for a `prompt` agent to get a recording
//! (`prompt.audio_id`). An upload is a WAV file (16-bit PCM, any rate, mono
//! or stereo) or raw G.711 at 8 kHz (`audio/PCMU`, `audio/PCMA`), read with
//! the `[media] max_bytes` cap, decoded and validated once, and stored as
//! 8 kHz samples ready to play.
//!
//! Must not: touch the filesystem (uploads live in the store).

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorResponses};
use super::extract::{ApiQuery, List, Pagination};
use crate::agent::prompts;
use crate::ids;
use crate::media::CLOCK_RATE;
use crate::store::audio::AudioRecord;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_audio, upload_audio))
        .routes(routes!(get_audio, delete_audio))
}

/// An uploaded audio prompt (its samples are not shown).
#[derive(Debug, Serialize, ToSchema)]
pub struct Audio {
    #[schema(example = "snd_01jdw8q1m7k3x9b5n4c2v6t8r0")]
    pub id: String,
    pub name: String,
    /// What was uploaded: `wav`, `pcmu` or `pcma`.
    pub format: String,
    /// Length at 8 kHz.
    pub duration_ms: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn to_api(r: AudioRecord) -> Audio {
    Audio {
        id: r.id,
        name: r.name,
        format: r.format,
        duration_ms: r.duration_ms,
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// A label for listings (default `upload`), at most 100 characters.
    pub name: Option<String>,
    /// What an `application/octet-stream` body holds: `wav` (default),
    /// `pcmu` or `pcma`. An `audio/*` content type says it instead.
    pub format: Option<UploadFormat>,
}

/// The formats an upload may have.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UploadFormat {
    Wav,
    Pcmu,
    Pcma,
}

impl UploadFormat {
    fn as_str(self) -> &'static str {
        match self {
            UploadFormat::Wav => "wav",
            UploadFormat::Pcmu => "pcmu",
            UploadFormat::Pcma => "pcma",
        }
    }
}

/// The raw bytes of an upload.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)] // a schema only: the handler reads the body itself
pub struct AudioBytes(Vec<u8>);

/// The format a content type names.
fn format_of(content_type: &str) -> Option<&'static str> {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/octet-stream" => Some("octet"),
        "audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => Some("wav"),
        "audio/pcmu" | "audio/basic" => Some("pcmu"),
        "audio/pcma" => Some("pcma"),
        _ => None,
    }
}

/// Upload an audio prompt: a WAV file (16-bit PCM, any rate) or raw G.711
/// at 8 kHz, at most `[media] max_bytes`. The content type says which
/// (`audio/wav`, `audio/PCMU`, `audio/PCMA`), or `application/octet-stream`
/// with `format`. Play it with `prompt.audio_id`.
#[utoipa::path(post, path = "/v1/audio", tag = "audio", params(UploadQuery),
    request_body(content((AudioBytes = "application/octet-stream"))),
    responses((status = 201, description = "Stored", body = Audio),
        (status = 413, description = "Larger than the configured cap", body = super::error::ErrorBody),
        (status = 415, description = "Not WAV or G.711", body = super::error::ErrorBody),
        ErrorResponses))]
async fn upload_audio(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<UploadQuery>,
    req: Request,
) -> Result<(StatusCode, Json<Audio>), ApiError> {
    let name = q.name.unwrap_or_else(|| "upload".into());
    if name.trim().is_empty() || name.chars().count() > 100 {
        return Err(ApiError::field("name", "must be 1 to 100 characters"));
    }
    let content_type = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let format = match format_of(&content_type) {
        Some("octet") => q.format.unwrap_or(UploadFormat::Wav).as_str(),
        Some(f) => f,
        None => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send audio/wav (16-bit PCM), audio/PCMU, audio/PCMA, or \
                 application/octet-stream with format",
            ));
        }
    };
    let max = state.media.max_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the audio is larger than {max} bytes"),
        )
    };
    let mut stream = req.into_body().into_data_stream();
    let mut bytes: Vec<u8> = Vec::new();
    // Bounded: the body stops at `max` bytes.
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ApiError::bad_request("the body could not be read"))?;
        if (bytes.len() + chunk.len()) as u64 > max {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    let samples = prompts::decode_upload(format, &bytes).map_err(|e| ApiError::field("body", e))?;
    let duration_ms = samples.len() as i64 * 1000 / i64::from(CLOCK_RATE);
    let raw: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let id = ids::new(ids::AUDIO);
    let record = state
        .store
        .insert_audio(&id, name.trim(), format, duration_ms, &raw)
        .await?;
    Ok((StatusCode::CREATED, Json(to_api(record))))
}

/// List uploaded audio, newest first.
#[utoipa::path(get, path = "/v1/audio", tag = "audio", params(Pagination),
    responses((status = 200, description = "A page of uploads", body = List<Audio>), ErrorResponses))]
async fn list_audio(
    State(state): State<AppState>,
    ApiQuery(page): ApiQuery<Pagination>,
) -> Result<Json<List<Audio>>, ApiError> {
    let w = page.window()?;
    let records = state.store.list_audio(w).await?;
    List::try_new(records, w, |r| Ok(to_api(r))).map(Json)
}

/// Get an upload's description.
#[utoipa::path(get, path = "/v1/audio/{id}", tag = "audio", params(("id" = String, Path)),
    responses((status = 200, description = "The upload", body = Audio), ErrorResponses))]
async fn get_audio(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Audio>, ApiError> {
    let r = super::find(&id, ids::AUDIO, "audio", state.store.get_audio(&id)).await?;
    Ok(Json(to_api(r)))
}

/// Delete an upload. Agents that name it fail their calls until changed.
#[utoipa::path(delete, path = "/v1/audio/{id}", tag = "audio", params(("id" = String, Path)),
    responses((status = 204, description = "Deleted"), ErrorResponses))]
async fn delete_audio(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    super::find(&id, ids::AUDIO, "audio", state.store.delete_audio(&id)).await?;
    prompts::library().forget(&id);
    Ok(StatusCode::NO_CONTENT)
}

/// Plays uploads from the store (installed into [`prompts`] at start).
pub struct StoreAudio(pub crate::store::Store);

#[async_trait::async_trait]
impl prompts::AudioSource for StoreAudio {
    async fn samples(&self, id: &str) -> Result<Option<Vec<i16>>, String> {
        match self.0.audio_samples(id).await {
            Ok(raw) => Ok(Some(
                raw.chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]))
                    .collect(),
            )),
            Err(crate::store::StoreError::NotFound) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}
