//! `GET /v1/calls/{id}/transcript`: what was said on a call with a `voice`
//! agent, turn by turn, with offsets from the answer, barge-in marks and
//! each reply's latency. Stored when the call ends; a call still up or
//! without a voice agent has no turns yet.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorResponses};
use crate::ids;
use crate::store::transcripts::TurnRecord;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_transcript))
}

/// Who spoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Speaker {
    Caller,
    Agent,
}

/// How long an agent reply took, in milliseconds from the end of the
/// caller's speech (or the key press) to each step; a step that did not
/// happen is `null`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TurnLatency {
    /// The recognizer's final text.
    pub stt_final_ms: Option<i64>,
    /// The brain's first token.
    pub llm_first_token_ms: Option<i64>,
    /// The synthesizer's first audio.
    pub tts_first_audio_ms: Option<i64>,
    /// The first RTP packet of the reply on the wire.
    pub first_rtp_ms: Option<i64>,
}

/// One turn of the conversation.
#[derive(Debug, Serialize, ToSchema)]
pub struct Turn {
    pub speaker: Speaker,
    /// The caller's words (`[DTMF 1]` for a key), or the agent's reply.
    pub text: String,
    /// Milliseconds from the answer.
    pub start_ms: i64,
    pub end_ms: i64,
    /// This agent turn was cut short: the caller talked over it, pressed a
    /// key, or the call ended.
    pub interrupted: bool,
    /// Of an interrupted agent turn: the part of `text` that was played.
    pub heard: Option<String>,
    /// Of an agent turn that answered the caller.
    pub latency: Option<TurnLatency>,
}

/// A call's transcript.
#[derive(Debug, Serialize, ToSchema)]
pub struct Transcript {
    #[schema(example = "call_01jdw8q1m7k3x9b5n4c2v6t8r0")]
    pub call_id: String,
    /// The brain's summary, or the number of turns and the agent's last line.
    pub summary: Option<String>,
    pub turns: Vec<Turn>,
}

fn to_turn(r: TurnRecord) -> Turn {
    let has_latency = r.stt_final_ms.is_some()
        || r.llm_first_token_ms.is_some()
        || r.tts_first_audio_ms.is_some()
        || r.first_rtp_ms.is_some();
    Turn {
        speaker: if r.speaker == "caller" {
            Speaker::Caller
        } else {
            Speaker::Agent
        },
        text: r.text,
        start_ms: r.start_ms,
        end_ms: r.end_ms,
        interrupted: r.interrupted,
        heard: r.heard,
        latency: has_latency.then_some(TurnLatency {
            stt_final_ms: r.stt_final_ms,
            llm_first_token_ms: r.llm_first_token_ms,
            tts_first_audio_ms: r.tts_first_audio_ms,
            first_rtp_ms: r.first_rtp_ms,
        }),
    }
}

/// Get a call's transcript.
#[utoipa::path(get, path = "/v1/calls/{id}/transcript", tag = "calls",
    params(("id" = String, Path)),
    responses((status = 200, description = "The call's transcript", body = Transcript), ErrorResponses))]
async fn get_transcript(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Transcript>, ApiError> {
    let call = super::find(&id, ids::CALL, "call", state.store.get_call(&id)).await?;
    let turns = state.store.transcript(&id).await?;
    Ok(Json(Transcript {
        call_id: call.id,
        summary: call.summary,
        turns: turns.into_iter().map(to_turn).collect(),
    }))
}
