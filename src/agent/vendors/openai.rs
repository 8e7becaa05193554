//! OpenAI-compatible audio: speech to text with `/v1/audio/transcriptions`
//! and text to speech with `/v1/audio/speech` (OpenAI itself, and the
//! servers that copy its API, such as vLLM or a local Whisper server).
//!
//! Base URL: the same form the LLM takes (`https://api.openai.com/v1`); a
//! base without a trailing `/v1` gets one, so `http://host:8000` works too.
//! The key, if any, goes as `Authorization: Bearer`.
//!
//! STT ([`OpenAiStt`]): the API transcribes a whole file, so the stream
//! buffers the turn's frames and on `end_of_turn` posts them as a 16-bit mono 8 kHz WAV (multipart/form-data
//! fields `file`, `model`, `response_format=json`, `language`; RIFF per the
//! Microsoft Multimedia Programming Interface, 1991) and yields the answer's
//! `text` as the turn's one final transcript. Requests run in the
//! background, so `next` is what waits, under the caller's deadline.
//! The buffer starts [`PRE_ROLL`] before the first frame the energy VAD
//! ([`crate::agent::turn::EnergyVad`]) calls voice and holds at most
//! [`MAX_TURN`]: frames go up every 20 ms whether anyone speaks, and the
//! silence while the agent talked would only slow the upload (and Whisper
//! models are known to invent words in silence). A turn with no voice at
//! all is answered with an empty final and no request.
//!
//! TTS ([`OpenAiTts`]): posts `{model, voice, input, response_format:
//! "pcm"}`; the body streams raw 24 kHz 16-bit little-endian mono PCM, which
//! is resampled to 8 kHz and sent as 20 ms frames as it arrives, so playback
//! starts before the body ends. Dropping the receiver drops the request.
//!
//! Must not: log or return the key.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::{error_message, scrub};
use crate::agent::brain::Secret;
use crate::agent::engines::flite::Framer;
use crate::agent::providers::{Audio, ProviderError, Stt, SttStream, Transcript, Tts};
use crate::agent::turn::{EnergyVad, FRAME_SAMPLES, Vad, VadConfig};

pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
pub const DEFAULT_STT_MODEL: &str = "whisper-1";
pub const DEFAULT_TTS_MODEL: &str = "tts-1";
pub const DEFAULT_VOICE: &str = "alloy";
/// The rate of `response_format: "pcm"`.
pub const PCM_RATE: u32 = 24_000;
/// Audio kept from before the first voiced frame, for soft onsets.
pub const PRE_ROLL: Duration = Duration::from_millis(300);
/// The longest stretch of audio one transcription carries.
pub const MAX_TURN: Duration = Duration::from_secs(60);
/// Longest wait for a transcription, or for the next piece of speech.
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// Frames buffered ahead of playback (2 s).
const QUEUE_FRAMES: usize = 100;
/// Longest piece of text for one request (the API takes 4096).
const MAX_TEXT_CHARS: usize = 4096;

/// `{base}/audio/{what}`, adding `/v1` when the base lacks it.
fn endpoint(base_url: Option<&str>, what: &str) -> Result<String, ProviderError> {
    let base = base_url.unwrap_or(DEFAULT_BASE_URL).trim_end_matches('/');
    let url = url::Url::parse(base)
        .map_err(|e| ProviderError::Config(format!("base_url {base:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ProviderError::Config(format!(
            "base_url {base:?} must be http:// or https://"
        )));
    }
    if base.ends_with("/v1") {
        Ok(format!("{base}/audio/{what}"))
    } else {
        Ok(format!("{base}/v1/audio/{what}"))
    }
}

/// Why a request failed, from its status and body.
async fn refusal(response: reqwest::Response, key: Option<&Secret>) -> ProviderError {
    let status = response.status().as_u16();
    let body = crate::net::error_text(response, 16 * 1024, TIMEOUT).await;
    ProviderError::Refused(scrub(
        &format!(
            "the OpenAI-compatible API answered HTTP {status}: {}",
            error_message(&body)
        ),
        key,
    ))
}

fn unreachable(e: reqwest::Error, key: Option<&Secret>) -> ProviderError {
    let e = if e.is_timeout() {
        format!("no answer within {} s", TIMEOUT.as_secs())
    } else {
        e.without_url().to_string()
    };
    ProviderError::Unreachable(scrub(&format!("the OpenAI-compatible API: {e}"), key))
}

/// OpenAI-compatible transcription, one request per turn.
#[derive(Debug, Clone)]
pub struct OpenAiStt {
    http: reqwest::Client,
    url: String,
    model: String,
    language: Option<String>,
    key: Option<Secret>,
}

impl OpenAiStt {
    pub fn new(
        http: reqwest::Client,
        base_url: Option<&str>,
        model: Option<&str>,
        language: Option<&str>,
        key: Option<Secret>,
    ) -> Result<Self, ProviderError> {
        Ok(OpenAiStt {
            http,
            url: endpoint(base_url, "transcriptions")?,
            model: model.unwrap_or(DEFAULT_STT_MODEL).to_string(),
            // The API takes ISO-639-1 ("en"), not a locale ("en-US").
            language: language.map(|l| l.split(['-', '_']).next().unwrap_or(l).to_lowercase()),
            key,
        })
    }

    async fn transcribe(self, samples: Vec<i16>) -> Result<Transcript, ProviderError> {
        let key = self.key.as_ref();
        let file = reqwest::multipart::Part::bytes(wav(&samples))
            .file_name("turn.wav")
            .mime_str("audio/wav")
            .map_err(|e| unreachable(e, key))?;
        let mut form = reqwest::multipart::Form::new()
            .part("file", file)
            .text("model", self.model.clone())
            .text("response_format", "json");
        if let Some(l) = &self.language {
            form = form.text("language", l.clone());
        }
        let mut request = self.http.post(&self.url).multipart(form).timeout(TIMEOUT);
        if let Some(k) = key {
            request = request.bearer_auth(k.expose());
        }
        let response = request.send().await.map_err(|e| unreachable(e, key))?;
        if !response.status().is_success() {
            return Err(refusal(response, key).await);
        }
        let bytes = crate::net::read_limited(response, 256 * 1024, TIMEOUT)
            .await
            .map_err(|e| ProviderError::Unreachable(format!("the OpenAI-compatible API: {e}")))?;
        let body: Value = serde_json::from_slice(&bytes)
            .map_err(|_| ProviderError::Refused("the transcription answer is not JSON".into()))?;
        let text = body.get("text").and_then(Value::as_str).ok_or_else(|| {
            ProviderError::Refused("the transcription answer has no \"text\"".into())
        })?;
        Ok(Transcript {
            text: text.trim().to_string(),
            is_final: true,
        })
    }
}

#[async_trait::async_trait]
impl Stt for OpenAiStt {
    async fn open(&self) -> Result<Box<dyn SttStream>, ProviderError> {
        Ok(Box::new(OpenAiSttStream {
            stt: self.clone(),
            turn: VecDeque::new(),
            vad: EnergyVad::new(VadConfig::default()),
            voiced: false,
            requests: JoinSet::new(),
        }))
    }
}

struct OpenAiSttStream {
    stt: OpenAiStt,
    /// The turn's audio so far: PRE_ROLL until voice, then at most MAX_TURN.
    turn: VecDeque<i16>,
    vad: EnergyVad,
    /// The turn has had a voiced frame.
    voiced: bool,
    /// Transcriptions in flight; dropping the stream aborts them.
    requests: JoinSet<Result<Transcript, ProviderError>>,
}

#[async_trait::async_trait]
impl SttStream for OpenAiSttStream {
    async fn push(&mut self, frame: &[i16]) -> Result<(), ProviderError> {
        self.voiced |= self.vad.is_voice(frame);
        let keep = if self.voiced { MAX_TURN } else { PRE_ROLL };
        let max = (keep.as_millis() as usize / 20) * FRAME_SAMPLES;
        self.turn.extend(frame);
        let over = self.turn.len().saturating_sub(max);
        self.turn.drain(..over);
        Ok(())
    }

    async fn end_of_turn(&mut self) -> Result<(), ProviderError> {
        let samples: Vec<i16> = self.turn.drain(..).collect();
        if !std::mem::take(&mut self.voiced) {
            self.requests.spawn(async {
                Ok(Transcript {
                    text: String::new(),
                    is_final: true,
                })
            });
        } else {
            self.requests
                .spawn(self.stt.clone().transcribe(samples).in_current_span());
        }
        Ok(())
    }

    async fn next(&mut self) -> Option<Result<Transcript, ProviderError>> {
        match self.requests.join_next().await? {
            Ok(r) => Some(r),
            Err(e) => Some(Err(ProviderError::Unreachable(format!(
                "the transcription task failed: {e}"
            )))),
        }
    }
}

/// A RIFF/WAVE file of 16-bit mono PCM at 8 kHz.
fn wav(samples: &[i16]) -> Vec<u8> {
    crate::media::wav::write_pcm16(samples, crate::media::CLOCK_RATE, 1)
}

/// OpenAI-compatible speech, streamed.
#[derive(Debug, Clone)]
pub struct OpenAiTts {
    http: reqwest::Client,
    url: String,
    model: String,
    voice: String,
    key: Option<Secret>,
}

impl OpenAiTts {
    pub fn new(
        http: reqwest::Client,
        base_url: Option<&str>,
        model: Option<&str>,
        voice: Option<&str>,
        key: Option<Secret>,
    ) -> Result<Self, ProviderError> {
        Ok(OpenAiTts {
            http,
            url: endpoint(base_url, "speech")?,
            model: model.unwrap_or(DEFAULT_TTS_MODEL).to_string(),
            voice: voice.unwrap_or(DEFAULT_VOICE).to_string(),
            key,
        })
    }
}

#[async_trait::async_trait]
impl Tts for OpenAiTts {
    async fn speak(&self, text: &str) -> Result<Audio, ProviderError> {
        let text = text.trim();
        if text.chars().count() > MAX_TEXT_CHARS {
            return Err(ProviderError::Refused(format!(
                "a piece of text for the speech API may hold at most {MAX_TEXT_CHARS} characters"
            )));
        }
        let (tx, rx) = mpsc::channel(QUEUE_FRAMES);
        if text.is_empty() {
            return Ok(rx);
        }
        let key = self.key.as_ref();
        let body = json!({
            "model": self.model,
            "voice": self.voice,
            "input": text,
            "response_format": "pcm",
        });
        let mut request = self.http.post(&self.url).json(&body);
        if let Some(k) = key {
            request = request.bearer_auth(k.expose());
        }
        let response = tokio::time::timeout(TIMEOUT, request.send())
            .await
            .map_err(|_| {
                ProviderError::Unreachable(format!(
                    "the OpenAI-compatible API did not answer within {} s",
                    TIMEOUT.as_secs()
                ))
            })?
            .map_err(|e| unreachable(e, key))?;
        if !response.status().is_success() {
            return Err(refusal(response, key).await);
        }
        let key = self.key.clone();
        tokio::spawn(
            async move {
                let result = tokio::select! {
                    r = stream_pcm(response, &tx) => r,
                    () = tx.closed() => Ok(()),
                };
                if let Err(e) = result {
                    let e = ProviderError::Unreachable(scrub(&e, key.as_ref()));
                    tracing::warn!(error = %e, "speech stream failed");
                    let _ = tx.send(Err(e)).await;
                }
            }
            .in_current_span(),
        );
        Ok(rx)
    }
}

/// Reads a raw 24 kHz PCM body as it arrives, sending 20 ms frames at 8 kHz.
async fn stream_pcm(
    response: reqwest::Response,
    tx: &mpsc::Sender<Result<Vec<i16>, ProviderError>>,
) -> Result<(), String> {
    let mut framer = Framer::new(PCM_RATE)?;
    let mut body = response.bytes_stream();
    let mut odd: Option<u8> = None;
    // Bounded: each piece comes within TIMEOUT and the body ends.
    loop {
        let next = tokio::time::timeout(TIMEOUT, body.next())
            .await
            .map_err(|_| format!("the speech stream stalled for {} s", TIMEOUT.as_secs()))?;
        let Some(piece) = next else { break };
        let piece = piece.map_err(|e| format!("the speech stream broke: {}", e.without_url()))?;
        let mut bytes: Vec<u8> = Vec::with_capacity(piece.len() + 1);
        bytes.extend(odd.take());
        bytes.extend_from_slice(&piece);
        if bytes.len() % 2 == 1 {
            odd = bytes.pop();
        }
        let samples: Vec<i16> = bytes
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        for frame in framer.push(&samples)? {
            if tx.send(Ok(frame)).await.is_err() {
                return Ok(());
            }
        }
    }
    for frame in framer.finish()? {
        if tx.send(Ok(frame)).await.is_err() {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_take_the_llm_style_base_or_a_bare_host() {
        assert_eq!(
            endpoint(None, "speech").unwrap(),
            "https://api.openai.com/v1/audio/speech"
        );
        assert_eq!(
            endpoint(Some("http://127.0.0.1:8000/"), "transcriptions").unwrap(),
            "http://127.0.0.1:8000/v1/audio/transcriptions"
        );
        assert!(endpoint(Some("ftp://x"), "speech").is_err());
    }

    #[test]
    fn the_wav_header_describes_8khz_mono_16_bit() {
        let w = wav(&[1, -1]);
        assert_eq!(w.len(), 48);
        assert_eq!(&w[0..4], b"RIFF");
        assert_eq!(u32::from_le_bytes([w[24], w[25], w[26], w[27]]), 8000);
        assert_eq!(u32::from_le_bytes([w[40], w[41], w[42], w[43]]), 4);
        assert_eq!(&w[44..], &[1, 0, 0xff, 0xff]);
    }
}
