//! The agent on a call. For now the settings a call needs to run one: the
//! pipeline `kind`, the call length limit and the `prompt` agent's sound.
//! The speech pipeline (VAD, STT, LLM, TTS) lands here later.
//!
//! Owns: the shape of the settings the call layer reads from an agent's
//! stored JSON document (the API owns the full document and its validation).
//! Must not: import `call`, `store` or `api`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What the `prompt` agent plays: a WAV file (8 kHz or more, mono) or a tone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wav_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tone_hz: Option<u32>,
    /// How long the tone plays; ignored for a WAV file.
    #[serde(default = "default_tone_ms")]
    pub duration_ms: u32,
}

fn default_tone_ms() -> u32 {
    2000
}

/// What a call needs from an agent's settings document; other keys are
/// ignored here.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CallSettings {
    /// The call is ended after this long (end reason `max_duration`).
    #[serde(default = "default_max_duration")]
    pub max_duration_seconds: u32,
    #[serde(default)]
    pub prompt: Option<PromptSettings>,
}

fn default_max_duration() -> u32 {
    3600
}

impl CallSettings {
    /// Reads the stored settings document.
    pub fn from_json(settings: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(settings)
    }
}
