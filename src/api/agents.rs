//! `/v1/agents`: what answers a call. `kind` selects the pipeline; the other
//! fields are the settings that pipeline uses.

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
use super::extract::{ApiJson, ApiQuery, List, Pagination, patched};
use super::mode::Mode;
use crate::agent::BrainConfig;
use crate::agent::analysis::AnalysisSettings;
use crate::agent::brain::scripted::ScriptedDialogue;
use crate::agent::stream::{ForkSettings, MAX_FORKS, StreamSettings};
use crate::agent::{OpeningSettings, PromptSettings, TurnSettings};
use crate::ids;
use crate::model::RecordingSettings;
use crate::store::agents::AgentRecord;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_agents, create_agent))
        .routes(routes!(get_agent, update_agent, delete_agent))
}

/// The pipeline an agent runs on its calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentKind {
    /// Diagnostic: sends the caller's audio back.
    Echo,
    /// Diagnostic: plays a WAV file or a tone, then hangs up.
    Prompt,
    /// The speech pipeline: STT, then the brain (a `script` or an `llm`),
    /// then TTS, with barge-in, DTMF and actions.
    Voice,
    /// The team's own bot over a WebSocket, in the Twilio Media Streams
    /// message format (`stream.url`).
    Stream,
}

impl AgentKind {
    fn as_str(self) -> &'static str {
        match self {
            AgentKind::Echo => "echo",
            AgentKind::Prompt => "prompt",
            AgentKind::Voice => "voice",
            AgentKind::Stream => "stream",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SttProvider {
    Embedded,
    Openai,
    Deepgram,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LlmProvider {
    Scripted,
    Openai,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TtsProvider {
    Embedded,
    Openai,
    Elevenlabs,
    Cartesia,
}

/// Which engine a pipeline stage uses and how to reach it. Secrets are never
/// stored here: `api_key_env` names an environment variable the operator
/// listed in `[secrets.env]` for the URL's host, or `credential_id` a
/// credential stored with `POST /v1/credentials`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderChoice<P> {
    pub provider: P,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_id: Option<String>,
}

/// An HTTP tool the LLM may call; the daemon POSTs the arguments to `url`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub url: String,
    /// JSON Schema of the arguments.
    #[schema(value_type = Object)]
    #[serde(default = "empty_object")]
    pub parameters: serde_json::Value,
    #[serde(default = "default_tool_timeout")]
    pub timeout_ms: u32,
    /// The environment variable holding the `whsec_...` secret that signs
    /// the requests (Standard Webhooks v1); unsigned when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({"type": "object", "properties": {}})
}

fn default_tool_timeout() -> u32 {
    5000
}

/// The settings document stored with an agent.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct Settings {
    greeting: Option<String>,
    instructions: Option<String>,
    script: Option<serde_json::Value>,
    stt: Option<ProviderChoice<SttProvider>>,
    llm: Option<ProviderChoice<LlmProvider>>,
    tts: Option<ProviderChoice<TtsProvider>>,
    #[serde(default)]
    tools: Vec<Tool>,
    max_duration_seconds: u32,
    silence_timeout_seconds: u32,
    prompt: Option<PromptSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    turn: Option<TurnSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    opening: Option<OpeningSettings>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    transfer_targets: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    analysis: Option<AnalysisSettings>,
    stream: Option<StreamSettings>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    transfer_context: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    recording: Option<RecordingSettings>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    streams: Vec<ForkSettings>,
}

const DEFAULT_MAX_DURATION: u32 = 3600;
const DEFAULT_SILENCE_TIMEOUT: u32 = 30;

/// An agent.
#[derive(Debug, Serialize, ToSchema)]
pub struct Agent {
    #[schema(example = "agt_01jdw8q1m7k3x9b5n4c2v6t8r0")]
    pub id: String,
    pub name: String,
    /// `false` for an agent made with a test key (`al_test_`): only test
    /// keys see it, and only test calls run it.
    pub livemode: bool,
    pub kind: AgentKind,
    /// Spoken first on inbound calls.
    pub greeting: Option<String>,
    /// Instructions (system prompt) for an LLM brain.
    pub instructions: Option<String>,
    /// Scripted dialogue for the embedded brain.
    #[schema(value_type = Option<Object>)]
    pub script: Option<serde_json::Value>,
    #[schema(value_type = Option<ProviderChoice<SttProvider>>)]
    pub stt: Option<ProviderChoice<SttProvider>>,
    #[schema(value_type = Option<ProviderChoice<LlmProvider>>)]
    pub llm: Option<ProviderChoice<LlmProvider>>,
    #[schema(value_type = Option<ProviderChoice<TtsProvider>>)]
    pub tts: Option<ProviderChoice<TtsProvider>>,
    pub tools: Vec<Tool>,
    pub max_duration_seconds: u32,
    pub silence_timeout_seconds: u32,
    pub prompt: Option<PromptSettings>,
    /// Turn-taking: end-of-turn silence, barge-in, backchannels.
    pub turn: Option<TurnSettings>,
    /// Who speaks first on a call (`voice` agents).
    pub opening: Option<OpeningSettings>,
    /// Where the LLM's `transfer_call` may go: E.164 numbers (`+14155550100`)
    /// or prefixes (`+44207*`). Empty (the default): the LLM may not
    /// transfer anywhere; a refused transfer is told to the LLM.
    pub transfer_targets: Vec<String>,
    /// What to extract from each call once it ends (`voice` agents): the
    /// result is the call's `analysis` and a `call.analyzed` event.
    pub analysis: Option<AnalysisSettings>,
    /// The bot of a `stream` agent: its `ws://` or `wss://` URL and the
    /// `customParameters` sent in `start`.
    pub stream: Option<StreamSettings>,
    /// The call's variables a transfer passes to its target, as SIP
    /// headers (`first_name` as `X-First-Name`).
    pub transfer_context: Vec<String>,
    /// Whether and how the agent's calls are recorded.
    pub recording: Option<RecordingSettings>,
    /// Listeners that get a one-way copy of the call's audio.
    pub streams: Vec<ForkSettings>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The body of `POST /v1/agents`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentCreate {
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    pub kind: AgentKind,
    pub greeting: Option<String>,
    pub instructions: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub script: Option<serde_json::Value>,
    #[schema(value_type = Option<ProviderChoice<SttProvider>>)]
    pub stt: Option<ProviderChoice<SttProvider>>,
    #[schema(value_type = Option<ProviderChoice<LlmProvider>>)]
    pub llm: Option<ProviderChoice<LlmProvider>>,
    #[schema(value_type = Option<ProviderChoice<TtsProvider>>)]
    pub tts: Option<ProviderChoice<TtsProvider>>,
    #[serde(default)]
    pub tools: Vec<Tool>,
    /// Calls are ended after this long (default 3600).
    #[schema(minimum = 1, maximum = 86400)]
    pub max_duration_seconds: Option<u32>,
    /// Calls are ended after this much silence from the caller (default 30).
    #[schema(minimum = 1, maximum = 3600)]
    pub silence_timeout_seconds: Option<u32>,
    pub prompt: Option<PromptSettings>,
    /// Turn-taking: end-of-turn silence, barge-in, backchannels.
    pub turn: Option<TurnSettings>,
    /// Who speaks first on a call (`voice` agents).
    pub opening: Option<OpeningSettings>,
    /// Where the LLM's `transfer_call` may go: E.164 numbers (`+14155550100`)
    /// or prefixes (`+44207*`). Empty (the default): the LLM may not
    /// transfer anywhere; a refused transfer is told to the LLM.
    #[serde(default)]
    pub transfer_targets: Vec<String>,
    /// What to extract from each call once it ends (`voice` agents).
    pub analysis: Option<AnalysisSettings>,
    /// The bot of a `stream` agent: its `ws://` or `wss://` URL and the
    /// `customParameters` sent in `start`.
    pub stream: Option<StreamSettings>,
    /// The call's variables a transfer passes to its target as SIP
    /// headers in the REFER (`first_name` as `X-First-Name`,
    /// `x_customer_id` as `X-Customer-Id`); at most 20 names.
    #[serde(default)]
    pub transfer_context: Vec<String>,
    /// Record the agent's calls: `{"enabled": true, "channels": "dual"}`
    /// (a number, a campaign or the call may say otherwise).
    pub recording: Option<RecordingSettings>,
    /// Listeners that get a one-way copy of the call's audio in the
    /// Twilio Media Streams format (`[{"url", "track"}]`, at most 4).
    #[serde(default)]
    pub streams: Vec<ForkSettings>,
}

/// The body of `PATCH /v1/agents/{id}`, a JSON Merge Patch (RFC 7396) of
/// the agent: fields left out keep their value, `null` clears one.
// The PATCH body as the OpenAPI document shows it; the handler merges the
// raw body (RFC 7396, `extract::patched`), so nothing reads these fields.
#[allow(dead_code)]
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentUpdate {
    pub name: Option<String>,
    pub kind: Option<AgentKind>,
    pub greeting: Option<String>,
    pub instructions: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub script: Option<serde_json::Value>,
    #[schema(value_type = Option<ProviderChoice<SttProvider>>)]
    pub stt: Option<ProviderChoice<SttProvider>>,
    #[schema(value_type = Option<ProviderChoice<LlmProvider>>)]
    pub llm: Option<ProviderChoice<LlmProvider>>,
    #[schema(value_type = Option<ProviderChoice<TtsProvider>>)]
    pub tts: Option<ProviderChoice<TtsProvider>>,
    pub tools: Option<Vec<Tool>>,
    #[schema(minimum = 1, maximum = 86400)]
    pub max_duration_seconds: Option<u32>,
    #[schema(minimum = 1, maximum = 3600)]
    pub silence_timeout_seconds: Option<u32>,
    pub prompt: Option<PromptSettings>,
    /// Turn-taking: end-of-turn silence, barge-in, backchannels.
    pub turn: Option<TurnSettings>,
    /// Who speaks first on a call (`voice` agents).
    pub opening: Option<OpeningSettings>,
    /// Where the LLM's `transfer_call` may go: E.164 numbers (`+14155550100`)
    /// or prefixes (`+44207*`). Empty (the default): the LLM may not
    /// transfer anywhere; a refused transfer is told to the LLM.
    pub transfer_targets: Option<Vec<String>>,
    /// What to extract from each call once it ends (`voice` agents).
    pub analysis: Option<AnalysisSettings>,
    /// The bot of a `stream` agent: its `ws://` or `wss://` URL and the
    /// `customParameters` sent in `start`.
    pub stream: Option<StreamSettings>,
    pub transfer_context: Option<Vec<String>>,
    pub recording: Option<RecordingSettings>,
    pub streams: Option<Vec<ForkSettings>>,
}

fn to_agent(r: AgentRecord) -> Result<Agent, ApiError> {
    let livemode = r.livemode;
    let kind: AgentKind = serde_json::from_value(serde_json::Value::String(r.kind.clone()))
        .map_err(|e| ApiError::internal(format!("agent {} has kind {:?}: {e}", r.id, r.kind)))?;
    let s: Settings = serde_json::from_str(&r.settings)
        .map_err(|e| ApiError::internal(format!("agent {} settings: {e}", r.id)))?;
    Ok(Agent {
        id: r.id,
        name: r.name,
        kind,
        greeting: s.greeting,
        instructions: s.instructions,
        script: s.script,
        stt: s.stt,
        llm: s.llm,
        tts: s.tts,
        tools: s.tools,
        max_duration_seconds: s.max_duration_seconds,
        silence_timeout_seconds: s.silence_timeout_seconds,
        prompt: s.prompt,
        turn: s.turn,
        opening: s.opening,
        transfer_targets: s.transfer_targets,
        analysis: s.analysis,
        stream: s.stream,
        transfer_context: s.transfer_context,
        recording: s.recording,
        streams: s.streams,
        livemode,
        created_at: r.created_at,
        updated_at: r.updated_at,
    })
}

fn validate(name: &str, kind: AgentKind, s: &Settings) -> Result<(), ApiError> {
    let mut d = Vec::new();
    let mut bad = |field: &str, message: &str| {
        d.push(FieldError {
            field: field.into(),
            message: message.into(),
        })
    };
    if name.trim().is_empty() || name.chars().count() > 100 {
        bad("name", "must be 1 to 100 characters");
    }
    if s.greeting
        .as_ref()
        .is_some_and(|g| g.chars().count() > 2000)
    {
        bad("greeting", "must be at most 2000 characters");
    }
    if s.instructions
        .as_ref()
        .is_some_and(|g| g.chars().count() > 100_000)
    {
        bad("instructions", "must be at most 100000 characters");
    }
    match &s.script {
        Some(v) if !v.is_object() => bad("script", "must be an object"),
        Some(v) => {
            if let Err(errors) = ScriptedDialogue::parse(v, "script") {
                for e in errors {
                    bad(&e.path, &e.message);
                }
            }
        }
        None => {}
    }
    let env_names = [
        (
            "llm.api_key_env".to_string(),
            s.llm.as_ref().and_then(|p| p.api_key_env.as_deref()),
        ),
        (
            "stt.api_key_env".to_string(),
            s.stt.as_ref().and_then(|p| p.api_key_env.as_deref()),
        ),
        (
            "tts.api_key_env".to_string(),
            s.tts.as_ref().and_then(|p| p.api_key_env.as_deref()),
        ),
    ]
    .into_iter()
    .chain(
        s.tools
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("tools[{i}].secret_env"), t.secret_env.as_deref())),
    );
    for (field, name) in env_names {
        if name.is_some_and(|n| !is_env_name(n)) {
            bad(&field, "must be an environment variable name (A-Z, 0-9, _)");
        }
    }
    if !(1..=86_400).contains(&s.max_duration_seconds) {
        bad("max_duration_seconds", "must be between 1 and 86400");
    }
    if !(1..=3600).contains(&s.silence_timeout_seconds) {
        bad("silence_timeout_seconds", "must be between 1 and 3600");
    }
    let mut names = std::collections::HashSet::new();
    for (i, t) in s.tools.iter().enumerate() {
        let ok_name = !t.name.is_empty()
            && t.name.len() <= 64
            && t.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok_name {
            bad(
                &format!("tools[{i}].name"),
                "must be 1 to 64 letters, digits, '_' or '-'",
            );
        } else if !names.insert(t.name.as_str()) {
            bad(&format!("tools[{i}].name"), "is used by another tool");
        }
        if !super::is_http_url(&t.url) {
            bad(&format!("tools[{i}].url"), "must be an http or https URL");
        }
        if !t.parameters.is_object() {
            bad(
                &format!("tools[{i}].parameters"),
                "must be a JSON Schema object",
            );
        }
        if !(100..=60_000).contains(&t.timeout_ms) {
            bad(
                &format!("tools[{i}].timeout_ms"),
                "must be between 100 and 60000",
            );
        }
    }
    for (field, url) in [
        (
            "stt.base_url",
            s.stt.as_ref().and_then(|p| p.base_url.as_deref()),
        ),
        (
            "llm.base_url",
            s.llm.as_ref().and_then(|p| p.base_url.as_deref()),
        ),
        (
            "tts.base_url",
            s.tts.as_ref().and_then(|p| p.base_url.as_deref()),
        ),
    ] {
        if url.is_some_and(|u| {
            !super::is_http_url(u) && !u.starts_with("ws://") && !u.starts_with("wss://")
        }) {
            bad(field, "must be an http(s) or ws(s) URL");
        }
    }
    // What the synthesizer factory would refuse at call time is refused
    // here, where the operator can see it.
    if let Some(t) = &s.tts {
        let voice = t.voice.as_deref().map(str::trim).filter(|v| !v.is_empty());
        match t.provider {
            TtsProvider::Elevenlabs => bad(
                "tts.provider",
                "elevenlabs is not supported; the streaming vendor is cartesia \
                 (or use openai or embedded)",
            ),
            TtsProvider::Cartesia if voice.is_none() => {
                bad("tts.voice", "must name a Cartesia voice id")
            }
            TtsProvider::Embedded
                if voice.is_some_and(|v| !crate::agent::speech::is_voice_name(v)) =>
            {
                bad(
                    "tts.voice",
                    "must be a flite voice name (such as slt or kal)",
                )
            }
            _ => {}
        }
    }
    if let Some(t) = &s.turn {
        for (field, message) in t.problems() {
            bad(&format!("turn.{field}"), message);
        }
    }
    if s.transfer_context.len() > 20 {
        bad("transfer_context", "at most 20 names");
    }
    for (i, key) in s.transfer_context.iter().enumerate() {
        let ok = !key.is_empty()
            && key.len() <= 64
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && key.chars().any(|c| c.is_ascii_alphanumeric());
        if !ok {
            bad(
                &format!("transfer_context[{i}]"),
                "must be a variable name (a-z, 0-9, _)",
            );
        }
    }
    if let Some(o) = &s.opening {
        for (field, message) in o.problems() {
            bad(&format!("opening.{field}"), message);
        }
    }
    if s.transfer_targets.len() > 100 {
        bad("transfer_targets", "at most 100 entries");
    }
    for (i, t) in s.transfer_targets.iter().enumerate() {
        if !is_transfer_target(t) {
            bad(
                &format!("transfer_targets[{i}]"),
                "must be an E.164 number (+14155550100) or a prefix (+44207*)",
            );
        }
    }
    if let Some(a) = &s.analysis {
        if kind != AgentKind::Voice {
            bad("analysis", "only a voice agent's calls are analyzed");
        }
        for (field, message) in a.problems() {
            bad(&format!("analysis.{field}"), &message);
        }
    }
    let has_llm = s
        .llm
        .as_ref()
        .is_some_and(|l| l.provider == LlmProvider::Openai);
    if kind == AgentKind::Voice && s.script.is_none() && !has_llm {
        bad(
            "script",
            "a voice agent needs a script or an llm with provider openai",
        );
    }
    if let Some(r) = &s.recording {
        for (field, message) in r.problems() {
            bad(&format!("recording.{field}"), message);
        }
    }
    if s.streams.len() > MAX_FORKS {
        bad("streams", "at most 4 streams");
    }
    for (i, fork) in s.streams.iter().enumerate() {
        for (field, message) in fork.problems() {
            bad(&format!("streams[{i}].{field}"), message);
        }
    }
    match (kind, &s.stream) {
        (AgentKind::Stream, None) => bad("stream", "a stream agent needs stream.url"),
        (_, Some(st)) => {
            for (field, message) in st.problems() {
                bad(&format!("stream.{field}"), message);
            }
        }
        _ => {}
    }
    match (kind, &s.prompt) {
        (AgentKind::Prompt, None) => bad(
            "prompt",
            "a prompt agent needs wav_path, audio_id or tone_hz",
        ),
        (AgentKind::Prompt, Some(p)) => match (
            &p.wav_path,
            p.tone_hz,
            [
                p.wav_path.is_some(),
                p.audio_id.is_some(),
                p.tone_hz.is_some(),
            ]
            .iter()
            .filter(|x| **x)
            .count(),
        ) {
            (_, _, n) if n != 1 => bad(
                "prompt",
                "give exactly one of wav_path, audio_id and tone_hz",
            ),
            // Only a regular file inside the operator's media directory,
            // never a path as given (`/dev/zero`, `/etc/passwd`).
            (Some(path), _, _) if crate::agent::prompts::library().resolve(path).is_err() => {
                let message = crate::agent::prompts::library()
                    .resolve(path)
                    .err()
                    .unwrap_or_default();
                bad("prompt.wav_path", &message)
            }
            (None, Some(hz), _) if !(50..=4000).contains(&hz) => {
                bad("prompt.tone_hz", "must be between 50 and 4000")
            }
            _ if !(100..=600_000).contains(&p.duration_ms) => {
                bad("prompt.duration_ms", "must be between 100 and 600000")
            }
            _ => {}
        },
        _ => {}
    }
    if d.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(d))
    }
}

/// Where the agent's requests go and which secrets go with them, checked
/// against the outbound policy ([`crate::net`]) before the agent is saved:
/// every URL must reach an allowed address (names are resolved now, and
/// again at every connect), and every environment variable named must be in
/// the operator's `[secrets.env]` allow-list, bound to the host it would be
/// sent to. The same checks run again when the agent is used.
async fn check_outbound(state: &AppState, s: &Settings) -> Result<(), ApiError> {
    use crate::agent::brain::openai::DEFAULT_BASE_URL as LLM_BASE;
    use crate::agent::vendors::{cartesia, deepgram, openai};
    let outbound = crate::net::outbound();
    // (stage, the URL, field of the variable, the variable, the credential)
    type Target = (String, String, String, Option<String>, Option<String>);
    let mut targets: Vec<Target> = Vec::new();
    if let Some(l) = s.llm.as_ref().filter(|l| l.provider == LlmProvider::Openai) {
        targets.push((
            "llm.base_url".into(),
            l.base_url.clone().unwrap_or_else(|| LLM_BASE.into()),
            "llm.api_key_env".into(),
            l.api_key_env.clone(),
            l.credential_id.clone(),
        ));
    }
    if let Some(c) = &s.stt {
        let base = match c.provider {
            SttProvider::Embedded => None,
            SttProvider::Openai => Some(openai::DEFAULT_BASE_URL),
            SttProvider::Deepgram => Some(deepgram::DEFAULT_BASE_URL),
        };
        if let Some(base) = base {
            targets.push((
                "stt.base_url".into(),
                c.base_url.clone().unwrap_or_else(|| base.into()),
                "stt.api_key_env".into(),
                c.api_key_env.clone(),
                c.credential_id.clone(),
            ));
        }
    }
    if let Some(c) = &s.tts {
        let base = match c.provider {
            TtsProvider::Embedded | TtsProvider::Elevenlabs => None,
            TtsProvider::Openai => Some(openai::DEFAULT_BASE_URL),
            TtsProvider::Cartesia => Some(cartesia::DEFAULT_BASE_URL),
        };
        if let Some(base) = base {
            targets.push((
                "tts.base_url".into(),
                c.base_url.clone().unwrap_or_else(|| base.into()),
                "tts.api_key_env".into(),
                c.api_key_env.clone(),
                c.credential_id.clone(),
            ));
        }
    }
    for (i, t) in s.tools.iter().enumerate() {
        targets.push((
            format!("tools[{i}].url"),
            t.url.clone(),
            format!("tools[{i}].secret_env"),
            t.secret_env.clone(),
            None,
        ));
    }
    let mut d = Vec::new();
    let defaults = [
        LLM_BASE,
        openai::DEFAULT_BASE_URL,
        deepgram::DEFAULT_BASE_URL,
        cartesia::DEFAULT_BASE_URL,
    ];
    for (url_field, raw, env_field, env, credential) in targets {
        // A vendor's own default URL is the code's choice, not the key
        // holder's: it is not resolved here (it is at connect time).
        let given = !defaults.contains(&raw.as_str());
        if given && let Err(e) = state.guard.check_url(&raw).await {
            d.push(FieldError {
                field: url_field,
                message: e.to_string(),
            });
            continue;
        }
        let Ok(url) = url::Url::parse(&raw) else {
            continue;
        };
        if let Some(id) = credential {
            let field = env_field.replace("api_key_env", "credential_id");
            if env.is_some() {
                d.push(FieldError {
                    field,
                    message: "give api_key_env or credential_id, not both".into(),
                });
            } else if let Err(message) = super::credentials::check_use(state, &id, &url).await {
                d.push(FieldError { field, message });
            }
            continue;
        }
        let Some(name) = env else {
            continue;
        };
        if let Err(e) = outbound.may_send(&name, &url, false) {
            d.push(FieldError {
                field: env_field,
                message: e.to_string(),
            });
        }
    }
    if let Some(id) = s.prompt.as_ref().and_then(|p| p.audio_id.as_deref()) {
        let known = ids::has_prefix(id, ids::AUDIO)
            && match state.store.get_audio(id).await {
                Ok(_) => true,
                Err(crate::store::StoreError::NotFound) => false,
                Err(e) => return Err(e.into()),
            };
        if !known {
            d.push(FieldError {
                field: "prompt.audio_id".into(),
                message: "no such uploaded audio (POST /v1/audio)".into(),
            });
        }
    }
    if d.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(d))
    }
}

/// The agent's voice and models against what is usable here
/// (`GET /v1/voices`, `GET /v1/models`): 422 naming each field that is not.
async fn check_catalog(state: &AppState, s: &Settings) -> Result<(), ApiError> {
    use crate::agent::catalog::{self, Stage};
    let label = |v: serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let mut d = Vec::new();
    let mut stages = Vec::new();
    if let Some(p) = &s.stt {
        stages.push((
            Stage::Stt,
            label(serde_json::json!(p.provider)),
            p.model.as_deref(),
            p.base_url.as_deref(),
        ));
    }
    if let Some(p) = &s.tts {
        stages.push((
            Stage::Tts,
            label(serde_json::json!(p.provider)),
            p.model.as_deref(),
            p.base_url.as_deref(),
        ));
    }
    for (stage, provider, model, base_url) in stages {
        if let Some(message) = catalog::model_problem(stage, &provider, model, base_url) {
            d.push(FieldError {
                field: format!("{}.model", stage.as_str()),
                message,
            });
        }
    }
    if let Some(t) = &s.tts {
        let provider = label(serde_json::json!(t.provider));
        let voice = t.voice.as_deref().map(str::trim).filter(|v| !v.is_empty());
        let speech = state.calls.speech();
        if let Some(message) =
            catalog::voice_problem(speech, &provider, voice, t.base_url.as_deref()).await
        {
            d.push(FieldError {
                field: "tts.voice".into(),
                message,
            });
        }
    }
    if d.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(d))
    }
}

/// `+` and 1 to 15 digits, or a prefix ending in `*` of at least 2 digits
/// (so a bare `+*` or `+1*` cannot open every number of a zone at once).
fn is_transfer_target(t: &str) -> bool {
    let (digits, prefix) = match t.strip_suffix('*') {
        Some(d) => (d, true),
        None => (t, false),
    };
    let Some(digits) = digits.strip_prefix('+') else {
        return false;
    };
    let min = if prefix { 2 } else { 1 };
    (min..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// The bot's address must pass the outbound guard (`[net]`), as every
/// outbound URL does (checked again at every connect); the scheme was
/// checked to be ws or wss by `validate`.
async fn check_stream_url(state: &AppState, s: &Settings) -> Result<(), ApiError> {
    let mut urls: Vec<(String, &str)> = s
        .stream
        .iter()
        .map(|st| ("stream.url".to_owned(), st.url.as_str()))
        .collect();
    for (i, fork) in s.streams.iter().enumerate() {
        urls.push((format!("streams[{i}].url"), fork.url.as_str()));
    }
    for (field, url) in urls {
        state.guard.check_url(url).await.map_err(|e| {
            ApiError::validation(vec![FieldError {
                field,
                message: e.to_string(),
            }])
        })?;
    }
    Ok(())
}

fn is_env_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && !n.starts_with(|c: char| c.is_ascii_digit())
        && n.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// What the agent's brain is built from.
pub(super) fn brain_config(r: &AgentRecord) -> Result<BrainConfig, ApiError> {
    BrainConfig::from_settings(&r.settings)
        .map_err(|e| ApiError::internal(format!("agent {} settings: {e}", r.id)))
}

/// The name, kind and settings a create body (or a patched agent) gives.
fn from_create(body: AgentCreate) -> (String, AgentKind, Settings) {
    let settings = Settings {
        greeting: body.greeting,
        instructions: body.instructions,
        script: body.script,
        stt: body.stt,
        llm: body.llm,
        tts: body.tts,
        tools: body.tools,
        max_duration_seconds: body.max_duration_seconds.unwrap_or(DEFAULT_MAX_DURATION),
        silence_timeout_seconds: body
            .silence_timeout_seconds
            .unwrap_or(DEFAULT_SILENCE_TIMEOUT),
        prompt: body.prompt,
        turn: body.turn,
        opening: body.opening,
        transfer_targets: body.transfer_targets,
        analysis: body.analysis,
        stream: body.stream,
        transfer_context: body.transfer_context,
        recording: body.recording,
        streams: body.streams,
    };
    (body.name, body.kind, settings)
}

fn settings_json(s: &Settings) -> Result<String, ApiError> {
    serde_json::to_string(s).map_err(ApiError::internal)
}

/// Create an agent.
#[utoipa::path(post, path = "/v1/agents", tag = "agents", request_body = AgentCreate,
    responses((status = 201, description = "Created", body = Agent), ErrorResponses))]
async fn create_agent(
    State(state): State<AppState>,
    mode: Mode,
    ApiJson(body): ApiJson<AgentCreate>,
) -> Result<(StatusCode, Json<Agent>), ApiError> {
    let (name, kind, settings) = from_create(body);
    validate(&name, kind, &settings)?;
    check_outbound(&state, &settings).await?;
    check_catalog(&state, &settings).await?;
    check_stream_url(&state, &settings).await?;
    let id = ids::new(ids::AGENT);
    let record = state
        .store
        .insert_agent(
            &id,
            name.trim(),
            kind.as_str(),
            &settings_json(&settings)?,
            mode.livemode(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(to_agent(record)?)))
}

/// List agents, newest first.
#[utoipa::path(get, path = "/v1/agents", tag = "agents", params(Pagination),
    responses((status = 200, description = "A page of agents", body = List<Agent>), ErrorResponses))]
async fn list_agents(
    State(state): State<AppState>,
    mode: Mode,
    ApiQuery(page): ApiQuery<Pagination>,
) -> Result<Json<List<Agent>>, ApiError> {
    let w = page.window()?;
    let records = state.store.list_agents(mode.livemode(), w).await?;
    List::try_new(records, w, to_agent).map(Json)
}

pub(super) async fn fetch(state: &AppState, id: &str) -> Result<AgentRecord, ApiError> {
    super::find(id, ids::AGENT, "agent", state.store.get_agent(id)).await
}

/// Get an agent.
#[utoipa::path(get, path = "/v1/agents/{id}", tag = "agents", params(("id" = String, Path)),
    responses((status = 200, description = "The agent", body = Agent), ErrorResponses))]
async fn get_agent(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Agent>, ApiError> {
    Ok(Json(to_agent(fetch(&state, &id).await?)?))
}

/// Update an agent (JSON Merge Patch, RFC 7396): fields left out keep
/// their value, `null` clears one (back to its default).
#[utoipa::path(patch, path = "/v1/agents/{id}", tag = "agents", params(("id" = String, Path)),
    request_body = AgentUpdate,
    responses((status = 200, description = "The updated agent", body = Agent), ErrorResponses))]
async fn update_agent(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<serde_json::Value>,
) -> Result<Json<Agent>, ApiError> {
    let current = to_agent(fetch(&state, &id).await?)?;
    let (name, kind, settings) = from_create(patched(&current, &patch)?);
    validate(&name, kind, &settings)?;
    check_outbound(&state, &settings).await?;
    check_catalog(&state, &settings).await?;
    check_stream_url(&state, &settings).await?;
    let record = state
        .store
        .update_agent(&id, name.trim(), kind.as_str(), &settings_json(&settings)?)
        .await?;
    Ok(Json(to_agent(record)?))
}

/// Delete an agent. Refused with 409 while a phone number is bound to it.
#[utoipa::path(delete, path = "/v1/agents/{id}", tag = "agents", params(("id" = String, Path)),
    responses((status = 204, description = "Deleted"), ErrorResponses))]
async fn delete_agent(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    fetch(&state, &id).await?;
    match state.store.delete_agent(&id).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(crate::store::StoreError::InUse(_)) => Err(ApiError::conflict(
            "the agent is bound to phone numbers; rebind or delete them first",
        )),
        Err(e) => Err(e.into()),
    }
}
