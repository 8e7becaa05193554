//! Call transcripts: one row per turn, written once when the call's agent
//! session ends, together with the call's short summary, in one
//! transaction (before the call's end is recorded, so `call.ended` carries
//! the summary and a receiver that fetches the transcript finds it).
//!
//! Must not: write anything else of the call row than its summary.

use chrono::{DateTime, Utc};

use super::{Result, Store, on_pool};

/// One turn of a call's conversation, as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TurnRecord {
    pub call_id: String,
    pub seq: i64,
    /// `caller` or `agent`.
    pub speaker: String,
    pub text: String,
    /// Milliseconds from the answer.
    pub start_ms: i64,
    pub end_ms: i64,
    /// An agent turn cut short (barge-in, a key, the end of the call);
    /// `heard` is what was played.
    pub interrupted: bool,
    pub heard: Option<String>,
    /// An agent turn's latency from the end of the caller's speech (or key
    /// press), in milliseconds, per step.
    pub stt_final_ms: Option<i64>,
    pub llm_first_token_ms: Option<i64>,
    pub tts_first_audio_ms: Option<i64>,
    pub first_rtp_ms: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A turn to store; `seq` is its position in the list given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewTurn {
    pub speaker: &'static str,
    pub text: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub interrupted: bool,
    pub heard: Option<String>,
    pub stt_final_ms: Option<i64>,
    pub llm_first_token_ms: Option<i64>,
    pub tts_first_audio_ms: Option<i64>,
    pub first_rtp_ms: Option<i64>,
}

impl Store {
    /// Stores a call's transcript and summary. Turns already stored for
    /// the call are kept (a second write adds nothing twice: it conflicts).
    pub async fn save_transcript(
        &self,
        call_id: &str,
        turns: &[NewTurn],
        summary: Option<&str>,
    ) -> Result<()> {
        let now = super::now();
        on_pool!(self, p => async {
            let mut tx = p.begin().await?;
            for (seq, t) in turns.iter().enumerate() {
                sqlx::query(
                    "INSERT INTO call_turns (call_id, seq, speaker, text, start_ms, end_ms, interrupted, heard,
                        stt_final_ms, llm_first_token_ms, tts_first_audio_ms, first_rtp_ms, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13)")
                    .bind(call_id).bind(seq as i64).bind(t.speaker).bind(&t.text)
                    .bind(t.start_ms).bind(t.end_ms).bind(t.interrupted).bind(&t.heard)
                    .bind(t.stt_final_ms).bind(t.llm_first_token_ms).bind(t.tts_first_audio_ms)
                    .bind(t.first_rtp_ms).bind(now)
                    .execute(&mut *tx).await?;
            }
            sqlx::query("UPDATE calls SET summary = $2, updated_at = $3 WHERE id = $1")
                .bind(call_id).bind(summary).bind(now)
                .execute(&mut *tx).await?;
            tx.commit().await
        }.await)?;
        Ok(())
    }

    /// A call's turns, in order (empty for a call without an agent
    /// conversation or not ended yet).
    pub async fn transcript(&self, call_id: &str) -> Result<Vec<TurnRecord>> {
        Ok(on_pool!(self, p => sqlx::query_as::<_, TurnRecord>(
            "SELECT call_id, seq, speaker, text, start_ms, end_ms, interrupted, heard, stt_final_ms,
                llm_first_token_ms, tts_first_audio_ms, first_rtp_ms, created_at, updated_at
             FROM call_turns WHERE call_id = $1 ORDER BY seq")
            .bind(call_id).fetch_all(p).await)?)
    }
}
