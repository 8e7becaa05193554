//! Which speech-to-text and text-to-speech engine a call gets.
//!
//! [`Speech`] is built once at start from the `[speech]` config table and
//! shared by every call; [`Speech::stt`] and [`Speech::tts`] turn an agent's
//! [`SpeechChoice`] (its `stt` / `tts` settings) into a provider. The
//! embedded engines ([`super::engines`]) are the default: they need no
//! account; the cloud vendors ([`super::vendors`]: OpenAI-compatible,
//! Deepgram, Cartesia) take their key from the environment variable the
//! agent names in `api_key_env`. [`Speech`] owns the recogniser's pool of
//! warm workers, so every call shares it; [`Speech::warm_up`] fills it at
//! start.
//!
//! Must not: hold per-call state (a provider opens one stream per call or
//! per utterance), or log an API key.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::engines::flite::{Flite, VoiceList};
use super::engines::pocketsphinx::{PocketSphinx, PocketSphinxConfig};
use super::providers::{ProviderError, Stt, Tts};
use super::vendors::{
    self, cartesia::Cartesia, deepgram::Deepgram, openai::OpenAiStt, openai::OpenAiTts,
};

/// The shared HTTP client (see [`crate::agent::http`]): resolves through
/// the address guard, follows no redirect.
fn http() -> Result<reqwest::Client, ProviderError> {
    crate::agent::http().map_err(|e| ProviderError::Config(e.to_string()))
}

/// A vendor needs its settings (never reached: the kind comes from them).
fn no_settings() -> ProviderError {
    ProviderError::Config("the provider's settings are missing".into())
}

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
    /// Recognizers kept loaded ahead of calls, so a call's STT opens
    /// without waiting for the model (0 to 16).
    pub warm_workers: usize,
}

impl Default for SpeechConfig {
    fn default() -> Self {
        SpeechConfig {
            python: "python3".into(),
            flite: "flite".into(),
            voice: "slt".into(),
            warm_workers: 1,
        }
    }
}

impl SpeechConfig {
    /// The first bad value, as (key, message).
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.python.trim().is_empty() {
            return Some(("python", "must name a Python 3 interpreter".into()));
        }
        if self.flite.trim().is_empty() {
            return Some(("flite", "must name the flite binary".into()));
        }
        if !is_voice_name(&self.voice) {
            return Some((
                "voice",
                format!(
                    "{:?} is not a flite voice name (letters, digits and _ only, \
                     such as slt or kal)",
                    self.voice
                ),
            ));
        }
        if self.warm_workers > 16 {
            return Some(("warm_workers", "must be between 0 and 16".into()));
        }
        None
    }
}

/// A built-in flite voice is a plain name; anything else flite would load
/// as a file or URL.
pub(crate) fn is_voice_name(v: &str) -> bool {
    !v.is_empty() && v.len() <= 64 && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
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
    /// A stored credential (`cred_...`) holding the API key.
    #[serde(default)]
    pub credential_id: Option<String>,
    /// The key of `credential_id`, opened by [`resolve_credential`] before
    /// the engine is built; never stored.
    #[serde(skip)]
    pub key: Option<super::brain::Secret>,
}

/// Opens the stored credential a choice names (if any) into its `key`,
/// refused unless it may go to the choice's URL (`default_base` when it
/// gives none; `None` for embedded engines, which need no key).
pub async fn resolve_credential<K>(
    c: &mut SpeechChoice<K>,
    default_base: Option<&str>,
) -> Result<(), ProviderError> {
    let (Some(id), Some(base)) = (
        c.credential_id.clone(),
        c.base_url.as_deref().or(default_base),
    ) else {
        return Ok(());
    };
    let url = url::Url::parse(base)
        .map_err(|_| ProviderError::Config(format!("base_url {base:?} is not a URL")))?;
    let key = crate::secrets::credential_for(&id, &url)
        .await
        .map_err(ProviderError::Config)?;
    c.key = Some(key);
    Ok(())
}

impl SttKind {
    /// The vendor's own base URL (`None`: the embedded engine).
    pub fn default_base(self) -> Option<&'static str> {
        match self {
            SttKind::Embedded => None,
            SttKind::Openai => Some(vendors::openai::DEFAULT_BASE_URL),
            SttKind::Deepgram => Some(vendors::deepgram::DEFAULT_BASE_URL),
        }
    }
}

impl TtsKind {
    /// The vendor's own base URL (`None`: no key is sent).
    pub fn default_base(self) -> Option<&'static str> {
        match self {
            TtsKind::Embedded | TtsKind::Elevenlabs => None,
            TtsKind::Openai => Some(vendors::openai::DEFAULT_BASE_URL),
            TtsKind::Cartesia => Some(vendors::cartesia::DEFAULT_BASE_URL),
        }
    }
}

/// The key for a vendor: the opened credential, else the environment
/// variable the agent names (or the vendor's default), bound to its host.
fn key_of<K>(
    c: &SpeechChoice<K>,
    default_env: &str,
    required: bool,
    default_base: &str,
) -> Result<Option<super::brain::Secret>, ProviderError> {
    if let Some(k) = &c.key {
        return Ok(Some(k.clone()));
    }
    if c.credential_id.is_some() {
        return Err(ProviderError::Config(
            "the stored credential was not opened".into(),
        ));
    }
    vendors::api_key(
        c.api_key_env.as_deref(),
        default_env,
        required,
        c.base_url.as_deref(),
        default_base,
    )
}

/// The engines a call can get; clones share the recognizer pool.
#[derive(Debug, Clone)]
pub struct Speech {
    config: SpeechConfig,
    recognizer: PocketSphinx,
    /// `flite -lv`, asked once.
    voices: VoiceList,
}

impl Default for Speech {
    fn default() -> Self {
        Speech::new(SpeechConfig::default())
    }
}

impl Speech {
    pub fn new(config: SpeechConfig) -> Self {
        let recognizer = PocketSphinx::new(PocketSphinxConfig {
            python: config.python.clone(),
            warm_workers: config.warm_workers,
        });
        Speech {
            config,
            recognizer,
            voices: VoiceList::default(),
        }
    }

    /// Starts loading the recognizer's warm spares in the background (call
    /// from within the runtime, once at start).
    pub fn warm_up(&self) {
        self.recognizer.warm_up();
    }

    /// Recognizers loaded and waiting for a call.
    pub fn warm_recognizers(&self) -> usize {
        self.recognizer.warm()
    }

    pub fn config(&self) -> &SpeechConfig {
        &self.config
    }

    /// The voices the embedded synthesizer has on this machine (`flite
    /// -lv`, asked once and cached).
    pub async fn flite_voices(&self) -> Result<Vec<String>, String> {
        super::engines::flite::installed_voices(&self.config.flite, &self.voices).await
    }

    /// The recognizer for an agent (the embedded one when it names none).
    pub fn stt(
        &self,
        choice: Option<&SpeechChoice<SttKind>>,
    ) -> Result<Arc<dyn Stt>, ProviderError> {
        let kind = choice.map(|c| c.provider).unwrap_or_default();
        match kind {
            SttKind::Embedded => {
                let language = choice.and_then(|c| c.language.as_deref());
                if let Some(l) = language
                    && !l.eq_ignore_ascii_case("en")
                    && !l.eq_ignore_ascii_case("en-us")
                {
                    return Err(ProviderError::Config(format!(
                        "the embedded recognizer knows only English (en-US), not {l:?}"
                    )));
                }
                Ok(Arc::new(self.recognizer.clone()))
            }
            SttKind::Openai => {
                let c = choice.ok_or_else(no_settings)?;
                let key = key_of(
                    c,
                    "OPENAI_API_KEY",
                    false,
                    vendors::openai::DEFAULT_BASE_URL,
                )?;
                Ok(Arc::new(OpenAiStt::new(
                    http()?,
                    c.base_url.as_deref(),
                    c.model.as_deref(),
                    c.language.as_deref(),
                    key,
                )?))
            }
            SttKind::Deepgram => {
                let c = choice.ok_or_else(no_settings)?;
                let key = key_of(
                    c,
                    "DEEPGRAM_API_KEY",
                    true,
                    vendors::deepgram::DEFAULT_BASE_URL,
                )?
                .ok_or_else(no_settings)?;
                Ok(Arc::new(Deepgram::new(
                    c.base_url.as_deref(),
                    c.model.as_deref(),
                    c.language.as_deref(),
                    key,
                )?))
            }
        }
    }

    /// The synthesizer for an agent (the embedded one when it names none).
    /// Whether the synthesizer `choice` names can be had: [`Speech::tts`],
    /// and for the embedded one that flite has the voice.
    pub async fn check_tts(
        &self,
        choice: Option<&SpeechChoice<TtsKind>>,
    ) -> Result<(), ProviderError> {
        self.tts(choice)?;
        if choice.map(|c| c.provider).unwrap_or_default() == TtsKind::Embedded {
            let voice = choice
                .and_then(|c| c.voice.as_deref())
                .unwrap_or(&self.config.voice);
            Flite::new(&self.config.flite, voice, self.voices.clone())
                .check_voice()
                .await?;
        }
        Ok(())
    }

    pub fn tts(
        &self,
        choice: Option<&SpeechChoice<TtsKind>>,
    ) -> Result<Arc<dyn Tts>, ProviderError> {
        let kind = choice.map(|c| c.provider).unwrap_or_default();
        match kind {
            TtsKind::Embedded => {
                let voice = choice
                    .and_then(|c| c.voice.as_deref())
                    .unwrap_or(&self.config.voice);
                if !is_voice_name(voice) {
                    return Err(ProviderError::Config(format!(
                        "{voice:?} is not a flite voice name (such as slt or kal)"
                    )));
                }
                Ok(Arc::new(Flite::new(
                    &self.config.flite,
                    voice,
                    self.voices.clone(),
                )))
            }
            TtsKind::Openai => {
                let c = choice.ok_or_else(no_settings)?;
                let key = key_of(
                    c,
                    "OPENAI_API_KEY",
                    false,
                    vendors::openai::DEFAULT_BASE_URL,
                )?;
                Ok(Arc::new(OpenAiTts::new(
                    http()?,
                    c.base_url.as_deref(),
                    c.model.as_deref(),
                    c.voice.as_deref(),
                    key,
                )?))
            }
            TtsKind::Cartesia => {
                let c = choice.ok_or_else(no_settings)?;
                let key = key_of(
                    c,
                    "CARTESIA_API_KEY",
                    true,
                    vendors::cartesia::DEFAULT_BASE_URL,
                )?
                .ok_or_else(no_settings)?;
                Ok(Arc::new(Cartesia::new(
                    c.base_url.as_deref(),
                    c.model.as_deref(),
                    c.voice.as_deref(),
                    c.language.as_deref(),
                    key,
                )?))
            }
            TtsKind::Elevenlabs => Err(ProviderError::Config(
                "text-to-speech provider elevenlabs is not supported; the streaming \
                 vendor supported is cartesia (or use openai or embedded)"
                    .into(),
            )),
        }
    }
}
