//! The agent pipeline on a call: listen, think, speak.
//!
//! - [`turn`]: turn-taking core (VAD, endpointing, barge-in), sans-IO.
//! - [`chunker`]: cuts streaming LLM text at sentence and clause boundaries
//!   so TTS starts before the reply is complete.
//! - [`brain`]: the [`brain::Brain`] trait and its two kinds, scripted
//!   dialogue and LLM (OpenAI-compatible) with HTTP tools and built-in
//!   actions.
//! - [`session`]: the agent on one call, attached to the call's media
//!   session (a sans-IO core and its driver); [`runner`]: the agents a
//!   call runs (`echo`, `prompt`, `voice`, `stream`) as the call task sees
//!   them; [`stream`]: the team's own bot over Twilio Media Streams;
//!   [`fork`]: one-way copies of a call's audio to listeners, same format.
//! - [`prompts`]: the audio a `prompt` agent may play (media directory,
//!   uploads), loaded once.
//! - [`analysis`]: the call's structured result, made after the call.
//! - [`catalog`]: the voices and models an agent can name here.
//! - [`providers`]: the STT and TTS seams; [`speech`]: which engine a call
//!   gets; [`engines`]: the embedded ones (PocketSphinx, flite);
//!   [`vendors`]: the cloud ones (OpenAI-compatible, Deepgram, Cartesia).
//!   Sample-rate conversion is `media`'s ([`crate::media::resample`]).
//!
//! How the session drives it: every inbound frame goes to [`turn::TurnTaker::push`] and to the STT stream; on `EndOfTurn`
//! the final transcript becomes a [`brain::Input::Text`] (DTMF digits a
//! [`brain::Input::Dtmf`]) for [`brain::Brain::respond`]; its
//! [`brain::BrainEvent::Delta`]s go through a [`chunker::Chunker`] to TTS,
//! each spoken chunk is recorded in a [`turn::PlaybackLedger`]; its
//! [`brain::Action`]s run after the text has played. On `BargeIn` the
//! driver stops playback, drops queued audio and the reply future, and
//! calls [`brain::Conversation::record_interrupted`] with
//! [`turn::PlaybackLedger::heard`].
//!
//! Also owns the shape of the settings the call layer reads from an agent's
//! stored JSON document ([`CallSettings`], [`PromptSettings`],
//! [`TurnSettings`], [`OpeningSettings`], and the brain's part with
//! [`BrainConfig::from_settings`], read the same way for a chat session and
//! a call); the API owns the full document and its validation.
//!
//! Must not: import `call`, `store` or `api` (the API converts its agent
//! settings into a [`BrainConfig`]).

pub mod analysis;
pub mod brain;
pub mod catalog;
pub mod chunker;
pub mod engines;
pub mod fork;
pub mod prompts;
pub mod providers;
pub mod runner;
pub mod session;
pub mod speech;
pub mod stream;
pub mod turn;
pub mod vendors;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use brain::scripted::{ScriptedBrain, ScriptedDialogue};
use brain::tools::HttpTool;
use brain::{Brain, BrainError, LlmBrain, Secret};

/// Which engine answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlmKind {
    Scripted,
    OpenAi,
}

/// How to reach the LLM.
#[derive(Debug, Clone)]
pub struct LlmConfig {
    pub kind: LlmKind,
    pub base_url: Option<String>,
    pub model: Option<String>,
    /// The environment variable holding the API key.
    pub api_key_env: Option<String>,
    /// A stored credential (`cred_...`) holding the key.
    pub credential_id: Option<String>,
    /// The key of `credential_id`, opened by
    /// [`BrainConfig::resolve_credentials`]; wins over `api_key_env`.
    pub api_key: Option<Secret>,
}

/// An HTTP tool as configured; the secret is read from `secret_env`.
#[derive(Debug, Clone)]
pub struct ToolConfig {
    pub name: String,
    pub description: String,
    pub url: String,
    pub parameters: serde_json::Value,
    pub timeout_ms: u32,
    pub secret_env: Option<String>,
}

/// Everything a brain is built from, as the agent's settings say.
#[derive(Debug, Clone, Default)]
pub struct BrainConfig {
    pub greeting: Option<String>,
    pub instructions: Option<String>,
    pub script: Option<serde_json::Value>,
    pub llm: Option<LlmConfig>,
    pub tools: Vec<ToolConfig>,
    /// Where the LLM's `transfer_call` may go: E.164 numbers or `+prefix*`.
    pub transfer_targets: Vec<String>,
}

/// The brain's part of an agent's stored settings document (the API writes
/// it; these are its field names).
#[derive(Debug, Deserialize)]
struct StoredBrain {
    #[serde(default)]
    greeting: Option<String>,
    #[serde(default)]
    instructions: Option<String>,
    #[serde(default)]
    script: Option<serde_json::Value>,
    #[serde(default)]
    llm: Option<StoredLlm>,
    #[serde(default)]
    tools: Vec<StoredTool>,
    #[serde(default)]
    transfer_targets: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StoredLlmProvider {
    Scripted,
    Openai,
}

#[derive(Debug, Deserialize)]
struct StoredLlm {
    provider: StoredLlmProvider,
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    api_key_env: Option<String>,
    #[serde(default)]
    credential_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct StoredTool {
    name: String,
    #[serde(default)]
    description: String,
    url: String,
    parameters: serde_json::Value,
    timeout_ms: u32,
    #[serde(default)]
    secret_env: Option<String>,
}

impl BrainConfig {
    /// The brain an agent's stored settings document describes (the same
    /// document for a chat session and a call).
    pub fn from_settings(settings: &str) -> Result<Self, serde_json::Error> {
        let s: StoredBrain = serde_json::from_str(settings)?;
        Ok(BrainConfig {
            greeting: s.greeting,
            instructions: s.instructions,
            script: s.script,
            llm: s.llm.map(|l| LlmConfig {
                kind: match l.provider {
                    StoredLlmProvider::Scripted => LlmKind::Scripted,
                    StoredLlmProvider::Openai => LlmKind::OpenAi,
                },
                base_url: l.base_url,
                model: l.model,
                api_key_env: l.api_key_env,
                credential_id: l.credential_id,
                api_key: None,
            }),
            tools: s
                .tools
                .into_iter()
                .map(|t| ToolConfig {
                    name: t.name,
                    description: t.description,
                    url: t.url,
                    parameters: t.parameters,
                    timeout_ms: t.timeout_ms,
                    secret_env: t.secret_env,
                })
                .collect(),
            transfer_targets: s.transfer_targets,
        })
    }
}

impl BrainConfig {
    /// Opens the stored credential the LLM names (if any), refused unless
    /// it may be sent to the LLM's URL. Run before [`build_brain`].
    pub async fn resolve_credentials(&mut self) -> Result<(), BrainError> {
        let Some(l) = self.llm.as_mut() else {
            return Ok(());
        };
        let Some(id) = l.credential_id.clone() else {
            return Ok(());
        };
        let base = l
            .base_url
            .as_deref()
            .unwrap_or(brain::openai::DEFAULT_BASE_URL);
        let url = checked_url("llm.base_url", base)?;
        let key = crate::secrets::credential_for(&id, &url)
            .await
            .map_err(|e| BrainError::Config(format!("llm.credential_id: {e}")))?;
        l.api_key = Some(key);
        Ok(())
    }
}

/// The HTTP client for LLMs, tools and speech vendors, shared by every
/// brain: the outbound policy's ([`crate::net`]): names resolve only
/// through the address guard, no redirects (a tool's answer comes from the
/// URL configured, and a 3xx cannot point inside), no environment proxy.
pub fn http() -> Result<reqwest::Client, BrainError> {
    Ok(crate::net::outbound().client())
}

/// Parses a URL an agent points at and checks it against the outbound
/// policy (scheme, and the address when it is an IP literal; names are
/// checked again at every connect).
fn checked_url(field: &str, raw: &str) -> Result<url::Url, BrainError> {
    let url =
        url::Url::parse(raw).map_err(|_| BrainError::Config(format!("{field} is not a URL")))?;
    crate::net::outbound()
        .check_url(&url)
        .map_err(|e| BrainError::Config(format!("{field}: {e}")))?;
    Ok(url)
}

/// The secret in environment variable `name`, if the operator bound it to
/// `url`'s host.
fn bound_secret(field: &str, name: &str, url: &url::Url) -> Result<Secret, BrainError> {
    crate::net::outbound()
        .env_secret(name, url, false)
        .map_err(|e| BrainError::Config(format!("{field}: {e}")))
}

/// Builds the brain an agent's settings describe: the OpenAI-compatible LLM
/// when `llm.provider` says so, else the scripted dialogue.
pub fn build_brain(config: &BrainConfig) -> Result<Arc<dyn Brain>, BrainError> {
    let kind = config.llm.as_ref().map(|l| l.kind);
    match (kind, &config.script) {
        (Some(LlmKind::OpenAi), _) => {
            let Some(llm) = &config.llm else {
                return Err(BrainError::Config("no llm settings".into()));
            };
            let base = llm
                .base_url
                .as_deref()
                .unwrap_or(brain::openai::DEFAULT_BASE_URL);
            let base_url = checked_url("llm.base_url", base)?;
            let key = match (&llm.api_key, llm.api_key_env.as_deref()) {
                (Some(k), _) => Some(k.clone()),
                (None, _) if llm.credential_id.is_some() => {
                    return Err(BrainError::Config(
                        "llm.credential_id: the stored credential was not opened".into(),
                    ));
                }
                (None, Some(name)) => Some(bound_secret("llm.api_key_env", name, &base_url)?),
                (None, None) => None,
            };
            let http = http()?;
            let client = brain::openai::OpenAiLlm::new(
                http.clone(),
                llm.base_url.as_deref(),
                llm.model.as_deref(),
                key,
            );
            let mut tools = Vec::with_capacity(config.tools.len());
            for (i, t) in config.tools.iter().enumerate() {
                let url = checked_url(&format!("tools[{i}].url"), &t.url)?;
                let secret = t
                    .secret_env
                    .as_deref()
                    .map(|name| bound_secret(&format!("tools[{i}].secret_env"), name, &url))
                    .transpose()?;
                tools.push(HttpTool {
                    name: t.name.clone(),
                    description: t.description.clone(),
                    url: t.url.clone(),
                    parameters: t.parameters.clone(),
                    timeout: Duration::from_millis(u64::from(t.timeout_ms)),
                    secret,
                });
            }
            Ok(Arc::new(
                LlmBrain::new(
                    Arc::new(client),
                    config.instructions.clone(),
                    config.greeting.clone(),
                    tools,
                    http,
                )
                .with_transfer_targets(config.transfer_targets.clone()),
            ))
        }
        (_, Some(script)) => {
            let dialogue = ScriptedDialogue::parse(script, "script").map_err(|errors| {
                let first = errors
                    .first()
                    .map(|e| format!("{}: {}", e.path, e.message))
                    .unwrap_or_default();
                BrainError::Config(first)
            })?;
            Ok(Arc::new(ScriptedBrain::new(
                dialogue,
                config.greeting.clone(),
            )))
        }
        (_, None) => Err(BrainError::Config(
            "the agent has neither a script nor an llm with provider openai".into(),
        )),
    }
}

/// What the `prompt` agent plays: a WAV file (8 kHz or more, mono) or a tone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptSettings {
    /// A WAV file in the operator's media directory (`[media] dir`),
    /// relative to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wav_path: Option<String>,
    /// Audio uploaded with `POST /v1/audio` (`snd_...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_id: Option<String>,
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
    /// Turn-taking of the speech pipeline.
    #[serde(default)]
    pub turn: Option<TurnSettings>,
    /// Who speaks first (the `voice` agent).
    #[serde(default)]
    pub opening: Option<OpeningSettings>,
    /// The recognizer of the `voice` agent (embedded when left out).
    #[serde(default)]
    pub stt: Option<speech::SpeechChoice<speech::SttKind>>,
    /// The synthesizer of the `voice` agent (embedded when left out).
    #[serde(default)]
    pub tts: Option<speech::SpeechChoice<speech::TtsKind>>,
    /// What to extract from the call once it ends (`voice` agents).
    #[serde(default)]
    pub analysis: Option<analysis::AnalysisSettings>,
    /// The bot of the `stream` agent.
    #[serde(default)]
    pub stream: Option<stream::StreamSettings>,
    /// The call's variables a transfer passes to its target, as `X-`
    /// headers in the REFER's Refer-To (`first_name` as `X-First-Name`).
    #[serde(default)]
    pub transfer_context: Vec<String>,
    /// Whether and how the agent's calls are recorded (a number, a
    /// campaign or the call may say otherwise).
    #[serde(default)]
    pub recording: Option<crate::model::RecordingSettings>,
    /// Listeners that get a copy of the call's audio (forks).
    #[serde(default)]
    pub streams: Vec<stream::ForkSettings>,
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

/// Who speaks first on a call. Each left out keeps its default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpeningSettings {
    /// Inbound calls: the agent greets as soon as the call is answered
    /// (default true). When false it waits like on an outbound call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_speaks_first: Option<bool>,
    /// Outbound calls: how long the agent waits for the callee's first words
    /// before greeting (default 2000). The callee's "Hello?" ends the wait
    /// as soon as it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 10000)]
    pub outbound_wait_ms: Option<u32>,
}

/// Default of [`OpeningSettings::outbound_wait_ms`].
pub const DEFAULT_OUTBOUND_WAIT_MS: u32 = 2000;

impl OpeningSettings {
    /// The fields out of range, as (field, message).
    pub fn problems(&self) -> Vec<(&'static str, &'static str)> {
        match self.outbound_wait_ms {
            Some(ms) if ms > 10_000 => vec![("outbound_wait_ms", "must be between 0 and 10000")],
            _ => Vec::new(),
        }
    }

    /// How the session opens a call in this direction.
    pub fn greeting(&self, inbound: bool) -> session::Greeting {
        if inbound && self.inbound_speaks_first.unwrap_or(true) {
            return session::Greeting::Now;
        }
        let ms = self.outbound_wait_ms.unwrap_or(DEFAULT_OUTBOUND_WAIT_MS);
        session::Greeting::AfterCallee(Duration::from_millis(u64::from(ms)))
    }
}

/// Turn-taking settings of an agent (see [`turn`]); each left out keeps
/// its default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TurnSettings {
    /// Silence that ends the caller's turn (default 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 100, maximum = 5000)]
    pub end_silence_ms: Option<u32>,
    /// A turn is cut after this long (default 30000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1000, maximum = 120000)]
    pub max_turn_ms: Option<u32>,
    /// Caller speech during playback that interrupts the agent (default 400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 60, maximum = 3000)]
    pub barge_in_min_ms: Option<u32>,
    /// Whether short speech ("mm-hm") interrupts too (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backchannels_interrupt: Option<bool>,
}

impl TurnSettings {
    /// The fields out of range, as (field, message).
    pub fn problems(&self) -> Vec<(&'static str, &'static str)> {
        let mut out = Vec::new();
        let check = |v: Option<u32>, range: std::ops::RangeInclusive<u32>| {
            v.is_some_and(|v| !range.contains(&v))
        };
        if check(self.end_silence_ms, 100..=5000) {
            out.push(("end_silence_ms", "must be between 100 and 5000"));
        }
        if check(self.max_turn_ms, 1000..=120_000) {
            out.push(("max_turn_ms", "must be between 1000 and 120000"));
        }
        if check(self.barge_in_min_ms, 60..=3000) {
            out.push(("barge_in_min_ms", "must be between 60 and 3000"));
        }
        out
    }

    /// The turn-taking core's configuration.
    pub fn config(&self) -> turn::TurnConfig {
        let d = turn::TurnConfig::default();
        let ms = |v: Option<u32>, default: Duration| {
            v.map_or(default, |v| Duration::from_millis(u64::from(v)))
        };
        turn::TurnConfig {
            end_silence: ms(self.end_silence_ms, d.end_silence),
            max_turn: ms(self.max_turn_ms, d.max_turn),
            barge_in_min: ms(self.barge_in_min_ms, d.barge_in_min),
            backchannels_interrupt: self
                .backchannels_interrupt
                .unwrap_or(d.backchannels_interrupt),
            ..d
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_settings_override_the_defaults_and_name_bad_fields() {
        let t: TurnSettings =
            serde_json::from_value(serde_json::json!({"end_silence_ms": 700})).unwrap();
        let c = t.config();
        assert_eq!(c.end_silence, Duration::from_millis(700));
        assert_eq!(c.barge_in_min, turn::TurnConfig::default().barge_in_min);
        let bad = TurnSettings {
            barge_in_min_ms: Some(5),
            ..TurnSettings::default()
        };
        assert_eq!(bad.problems()[0].0, "barge_in_min_ms");
        let s = CallSettings::from_json(r#"{"turn": {"max_turn_ms": 5000}}"#).unwrap();
        assert_eq!(
            s.turn.unwrap_or_default().config().max_turn,
            Duration::from_secs(5)
        );
    }
}
