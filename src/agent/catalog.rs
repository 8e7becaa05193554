//! The voices and models an agent can name here: the embedded flite voices
//! installed on this machine (`flite -lv`, asked once and cached by
//! [`Speech`]), OpenAI's documented voices, Cartesia's voice list from its
//! API when the daemon has `CARTESIA_API_KEY` (fetched with a timeout and
//! cached, so a request never waits on the vendor more than once in a
//! while), and the STT, TTS and LLM models per provider; and the checks an
//! agent's settings are held to against them.
//!
//! Lists are closed for the embedded engines and for a vendor's own
//! endpoint; an agent with a `base_url` of its own (an OpenAI-compatible
//! server, a stand-in) may name any model and voice that server has.
//!
//! Must not: import `call`, `store` or `api`; log an API key.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::speech::Speech;
use super::vendors::{self, cartesia, deepgram, openai};

/// How long one look-up of a vendor's voice list may take.
const VENDOR_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a vendor's list is kept.
const VENDOR_TTL: Duration = Duration::from_secs(600);
/// How long a failed look-up is remembered before it is tried again, so a
/// vendor that is down costs one timeout a minute, not one per request.
const VENDOR_RETRY: Duration = Duration::from_secs(60);
/// Most vendor voices kept (a vendor's list is not ours to bound).
const MAX_VENDOR_VOICES: usize = 1000;

/// OpenAI's text-to-speech voices (`/v1/audio/speech`), as documented:
/// the API has no endpoint that lists them.
pub const OPENAI_VOICES: &[&str] = &[
    "alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse",
];

/// What a pipeline stage a model serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Stt,
    Tts,
    Llm,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Stt => "stt",
            Stage::Tts => "tts",
            Stage::Llm => "llm",
        }
    }
}

/// A model an agent can name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    pub stage: Stage,
    pub provider: &'static str,
    pub id: &'static str,
    /// The one used when the agent names none.
    pub default: bool,
}

/// Every model, per stage and provider (defaults first).
pub fn models() -> Vec<Model> {
    let table: &[(Stage, &'static str, &[&'static str])] = &[
        (Stage::Stt, "embedded", &["pocketsphinx-en-us"]),
        (
            Stage::Stt,
            "openai",
            &[
                openai::DEFAULT_STT_MODEL,
                "gpt-4o-transcribe",
                "gpt-4o-mini-transcribe",
            ],
        ),
        (
            Stage::Stt,
            "deepgram",
            &[
                deepgram::DEFAULT_MODEL,
                "nova-3-medical",
                "nova-2",
                "nova-2-phonecall",
                "nova-2-general",
                "nova-2-meeting",
                "nova",
                "enhanced",
                "base",
            ],
        ),
        (Stage::Tts, "embedded", &["flite"]),
        (
            Stage::Tts,
            "openai",
            &[openai::DEFAULT_TTS_MODEL, "tts-1-hd", "gpt-4o-mini-tts"],
        ),
        (
            Stage::Tts,
            "cartesia",
            &[cartesia::DEFAULT_MODEL, "sonic-turbo", "sonic"],
        ),
        (Stage::Llm, "scripted", &["script"]),
        (
            Stage::Llm,
            "openai",
            &[
                super::brain::openai::DEFAULT_MODEL,
                "gpt-4o",
                "gpt-4.1",
                "gpt-4.1-mini",
                "gpt-4.1-nano",
            ],
        ),
    ];
    table
        .iter()
        .flat_map(|(stage, provider, ids)| {
            ids.iter().enumerate().map(move |(i, id)| Model {
                stage: *stage,
                provider,
                id,
                default: i == 0,
            })
        })
        .collect()
}

/// Why `model` cannot be used by `provider` at `stage`, if it cannot. An
/// agent with its own `base_url` may name any model its server has, and
/// LLM names are not checked (OpenAI-compatible servers each have their
/// own).
pub fn model_problem(
    stage: Stage,
    provider: &str,
    model: Option<&str>,
    base_url: Option<&str>,
) -> Option<String> {
    let model = model?;
    if base_url.is_some() || stage == Stage::Llm {
        return None;
    }
    let known: Vec<&str> = models()
        .into_iter()
        .filter(|m| m.stage == stage && m.provider == provider)
        .map(|m| m.id)
        .collect();
    if known.is_empty() || known.contains(&model) {
        return None;
    }
    Some(format!(
        "not a {} model of {provider}; one of {} (GET /v1/models)",
        stage.as_str(),
        known.join(", ")
    ))
}

/// A voice an agent can name in `tts.voice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voice {
    pub provider: &'static str,
    /// What `tts.voice` takes.
    pub id: String,
    pub name: String,
    pub language: Option<String>,
    /// The voice used when the agent names none.
    pub default: bool,
}

/// Every voice usable here: flite's installed voices, OpenAI's, and
/// Cartesia's when the daemon has a key for it. A source that cannot be
/// asked (flite missing, the vendor down) lists nothing and is logged.
pub async fn voices(speech: &Speech) -> Vec<Voice> {
    let mut out = Vec::new();
    match speech.flite_voices().await {
        Ok(names) => out.extend(names.into_iter().map(|v| Voice {
            provider: "embedded",
            default: v == speech.config().voice,
            name: v.clone(),
            id: v,
            language: Some("en".into()),
        })),
        Err(e) => tracing::warn!(error = %e, "cannot list the flite voices"),
    }
    out.extend(OPENAI_VOICES.iter().map(|v| Voice {
        provider: "openai",
        id: (*v).to_string(),
        name: (*v).to_string(),
        language: None,
        default: *v == openai::DEFAULT_VOICE,
    }));
    out.extend(cartesia_voices().await);
    out
}

/// Why `voice` cannot be used by the TTS `provider`, if it cannot: an
/// embedded voice must be installed (when flite can be asked at all), an
/// OpenAI voice on OpenAI's own endpoint must be one of its voices.
pub async fn voice_problem(
    speech: &Speech,
    provider: &str,
    voice: Option<&str>,
    base_url: Option<&str>,
) -> Option<String> {
    let voice = voice?;
    match provider {
        "embedded" => {
            // flite missing: the call-time check says so; nothing to
            // hold the agent against here.
            let installed = speech.flite_voices().await.ok()?;
            (!installed.iter().any(|v| v == voice)).then(|| {
                format!(
                    "not a flite voice installed here; one of {} (GET /v1/voices)",
                    installed.join(", ")
                )
            })
        }
        "openai" if base_url.is_none() && !OPENAI_VOICES.contains(&voice) => Some(format!(
            "not an OpenAI voice; one of {} (GET /v1/voices)",
            OPENAI_VOICES.join(", ")
        )),
        _ => None,
    }
}

/// Cartesia's answer to `GET /voices`: a list, or a page of one.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum CartesiaVoices {
    List(Vec<CartesiaVoice>),
    Page { data: Vec<CartesiaVoice> },
}

#[derive(Debug, Deserialize)]
struct CartesiaVoice {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    language: Option<String>,
}

/// The last look-up of Cartesia's voices and when it was made.
type Cached = Option<(Instant, Result<Vec<Voice>, String>)>;

static CARTESIA: Mutex<Cached> = Mutex::new(None);

/// Cartesia's voices, from the cache or (with a timeout) from its API; none
/// when the daemon has no `CARTESIA_API_KEY`.
async fn cartesia_voices() -> Vec<Voice> {
    let Ok(Some(key)) = vendors::api_key(
        None,
        "CARTESIA_API_KEY",
        false,
        None,
        vendors::cartesia::DEFAULT_BASE_URL,
    ) else {
        return Vec::new();
    };
    let fresh = |at: &Instant, ok: bool| at.elapsed() < if ok { VENDOR_TTL } else { VENDOR_RETRY };
    if let Ok(cache) = CARTESIA.lock()
        && let Some((at, result)) = cache.as_ref()
        && fresh(at, result.is_ok())
    {
        return result.clone().unwrap_or_default();
    }
    let result = match tokio::time::timeout(VENDOR_TIMEOUT, fetch_cartesia(key.expose())).await {
        Ok(Ok(voices)) => Ok(voices),
        Ok(Err(e)) => Err(vendors::scrub(&e, Some(&key))),
        Err(_) => Err("timed out".to_string()),
    };
    if let Err(e) = &result {
        tracing::warn!(error = %e, "cannot list Cartesia's voices");
    }
    if let Ok(mut cache) = CARTESIA.lock() {
        *cache = Some((Instant::now(), result.clone()));
    }
    result.unwrap_or_default()
}

async fn fetch_cartesia(key: &str) -> Result<Vec<Voice>, String> {
    let http = super::http().map_err(|e| e.to_string())?;
    let response = http
        .get("https://api.cartesia.ai/voices")
        .header("X-API-Key", key)
        .header("Cartesia-Version", cartesia::API_VERSION)
        .timeout(VENDOR_TIMEOUT)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("Cartesia answered {}", response.status()));
    }
    let body: CartesiaVoices = response.json().await.map_err(|e| e.to_string())?;
    let list = match body {
        CartesiaVoices::List(v) | CartesiaVoices::Page { data: v } => v,
    };
    Ok(list
        .into_iter()
        .take(MAX_VENDOR_VOICES)
        .map(|v| Voice {
            provider: "cartesia",
            name: v.name.unwrap_or_else(|| v.id.clone()),
            id: v.id,
            language: v.language,
            default: false,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_lists_refuse_unknown_models_and_open_ones_do_not() {
        assert!(model_problem(Stage::Tts, "openai", Some("tts-1"), None).is_none());
        let p = model_problem(Stage::Tts, "openai", Some("tts-9"), None).unwrap();
        assert!(p.contains("tts-1-hd"), "{p}");
        assert!(
            model_problem(Stage::Tts, "openai", Some("tts-9"), Some("http://x")).is_none(),
            "a server of its own names its own models"
        );
        assert!(model_problem(Stage::Llm, "openai", Some("my-llm"), None).is_none());
        assert!(model_problem(Stage::Stt, "embedded", Some("whisper-1"), None).is_some());
        let defaults = models().into_iter().filter(|m| m.default).count();
        assert_eq!(defaults, 8, "one default per stage and provider");
    }
}
