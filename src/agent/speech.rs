//! Which speech-to-text and text-to-speech engine a call gets.
//!
//! [`Speech`] is built once at start from the `[speech]` config table and
//! shared by every call; [`Speech::stt`] and [`Speech::tts`] turn an agent's
//! [`SpeechChoice`] (its `stt` / `tts` settings) into a provider. The
//! embedded engines are the default: they need no account.
//!
//! Must not: hold per-call state (a provider opens one stream per call or
//! per utterance), or log an API key.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::providers::{ProviderError, Stt, Tts};

/// The `[speech]` config table: where the embedded engines live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpeechConfig {
    /// The Python interpreter that runs the PocketSphinx 5 recognizer.
    pub python: String,
    /// The flite binary.
    pub flite: String,
    /// The flite voice when an agent names none.
    pub voice: String,
}

impl Default for SpeechConfig {
    fn default() -> Self {
        SpeechConfig {
            python: "python3".into(),
            flite: "flite".into(),
            voice: "slt".into(),
        }
    }
}

/// An STT engine an agent can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SttKind {
    #[default]
    Embedded,
    Openai,
    Deepgram,
}

/// A TTS engine an agent can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TtsKind {
    #[default]
    Embedded,
    Openai,
    Elevenlabs,
    Cartesia,
}

/// An agent's `stt` or `tts` settings, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct SpeechChoice<K> {
    pub provider: K,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub voice: Option<String>,
    #[serde(default)]
    pub language: Option<String>,
    /// The environment variable that holds the API key.
    #[serde(default)]
    pub api_key_env: Option<String>,
}

/// The engines a call can get.
#[derive(Debug, Clone, Default)]
pub struct Speech {
    config: SpeechConfig,
}

impl Speech {
    pub fn new(config: SpeechConfig) -> Self {
        Speech { config }
    }

    pub fn config(&self) -> &SpeechConfig {
        &self.config
    }

    /// The recognizer for an agent (the embedded one when it names none).
    pub fn stt(
        &self,
        choice: Option<&SpeechChoice<SttKind>>,
    ) -> Result<Arc<dyn Stt>, ProviderError> {
        let kind = choice.map(|c| c.provider).unwrap_or_default();
        Err(ProviderError::Config(format!(
            "speech-to-text provider {kind:?} is not available in this build"
        )))
    }

    /// The synthesizer for an agent (the embedded one when it names none).
    pub fn tts(
        &self,
        choice: Option<&SpeechChoice<TtsKind>>,
    ) -> Result<Arc<dyn Tts>, ProviderError> {
        let kind = choice.map(|c| c.provider).unwrap_or_default();
        Err(ProviderError::Config(format!(
            "text-to-speech provider {kind:?} is not available in this build"
        )))
    }
}
