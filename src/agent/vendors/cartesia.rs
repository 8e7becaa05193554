//! Cartesia's text to speech over a WebSocket.
//!
//! Wire protocol (Cartesia "Text to Speech (WebSocket)" API,
//! `wss://api.cartesia.ai/tts/websocket`): the key and the API version go in
//! the query (`api_key`, `cartesia_version`), as the API documents for
//! WebSocket clients. One generation request goes up as JSON: `model_id`,
//! `transcript`, `voice: {"mode": "id", "id"}`, `language`, `context_id`,
//! `output_format: {"container": "raw", "encoding": "pcm_s16le",
//! "sample_rate": 8000}` and `continue: false` (the chunker sends whole
//! sentences). Answers come down for that context: `{"type": "chunk",
//! "data": base64 PCM}` pieces, then `{"type": "done"}`; or `{"type":
//! "error", "message" or "error"}`. Dropping the [`Audio`] receiver (a
//! barge-in) sends `{"context_id", "cancel": true}` and closes the socket.
//!
//! One socket per piece of text: simple and isolated (a failed context
//! cannot disturb the next); the cost is a handshake per sentence, which a
//! shared multiplexed socket could save later.
//!
//! Asking for 8 kHz means no resampling: chunks are cut into 20 ms frames
//! as they arrive (a chunk may end mid-sample: the odd byte waits).
//!
//! Must not: log or return the key, or the URL that carries it.

use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tracing::Instrument;
use url::Url;

use super::{Ws, connect, scrub};
use crate::agent::brain::Secret;
use crate::agent::engines::flite::Framer;
use crate::agent::providers::{Audio, ProviderError, Tts};

pub const DEFAULT_BASE_URL: &str = "wss://api.cartesia.ai";
pub const DEFAULT_MODEL: &str = "sonic-2";
/// The API version this client speaks.
pub const API_VERSION: &str = "2025-04-16";
/// Longest wait for the next message of a generation.
pub const STALL: Duration = Duration::from_secs(15);
/// Frames buffered ahead of playback (2 s), as for the other synthesisers.
const QUEUE_FRAMES: usize = 100;
/// Longest piece of text for one request.
const MAX_TEXT_CHARS: usize = 4000;

/// Cartesia TTS with one model, voice and language. Not `Debug`: its URL
/// carries the key.
#[derive(Clone)]
pub struct Cartesia {
    url: Url,
    model: String,
    voice: String,
    language: String,
    key: Secret,
}

impl Cartesia {
    pub fn new(
        base_url: Option<&str>,
        model: Option<&str>,
        voice: Option<&str>,
        language: Option<&str>,
        key: Secret,
    ) -> Result<Self, ProviderError> {
        let voice = voice.filter(|v| !v.trim().is_empty()).ok_or_else(|| {
            ProviderError::Config("tts.voice must name a Cartesia voice id".into())
        })?;
        let mut url = super::ws_base(base_url, DEFAULT_BASE_URL)?;
        let path = format!("{}/tts/websocket", url.path().trim_end_matches('/'));
        url.set_path(&path);
        url.query_pairs_mut()
            .clear()
            .append_pair("api_key", key.expose())
            .append_pair("cartesia_version", API_VERSION);
        Ok(Cartesia {
            url,
            model: model.unwrap_or(DEFAULT_MODEL).to_string(),
            voice: voice.to_string(),
            language: language.unwrap_or("en").to_string(),
            key,
        })
    }

    fn request(&self, text: &str, context_id: &str) -> Value {
        json!({
            "model_id": self.model,
            "transcript": text,
            "voice": {"mode": "id", "id": self.voice},
            "language": self.language,
            "context_id": context_id,
            "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 8000},
            "continue": false,
        })
    }
}

#[async_trait::async_trait]
impl Tts for Cartesia {
    async fn speak(&self, text: &str) -> Result<Audio, ProviderError> {
        let text = text.trim();
        if text.chars().count() > MAX_TEXT_CHARS {
            return Err(ProviderError::Refused(format!(
                "a piece of text for Cartesia may hold at most {MAX_TEXT_CHARS} characters"
            )));
        }
        let (tx, rx) = mpsc::channel(QUEUE_FRAMES);
        if text.is_empty() {
            return Ok(rx);
        }
        let mut ws = connect(&self.url, &[], Some(&self.key), "Cartesia").await?;
        let context_id = ulid::Ulid::new().to_string();
        let request = self.request(text, &context_id).to_string();
        ws.send(Message::text(request)).await.map_err(|e| {
            ProviderError::Unreachable(scrub(&format!("Cartesia: {e}"), Some(&self.key)))
        })?;
        let key = self.key.clone();
        tokio::spawn(
            async move {
                let result = tokio::select! {
                    r = receive(&mut ws, &tx) => r,
                    () = tx.closed() => {
                        // Nobody listens any more: stop the generation.
                        let cancel = json!({"context_id": context_id, "cancel": true});
                        let _ = ws.send(Message::text(cancel.to_string())).await;
                        Ok(())
                    }
                };
                let _ = ws.close(None).await;
                if let Err(e) = result {
                    let e = ProviderError::Refused(scrub(&e, Some(&key)));
                    tracing::warn!(error = %e, "Cartesia generation failed");
                    let _ = tx.send(Err(e)).await;
                }
            }
            .in_current_span(),
        );
        Ok(rx)
    }
}

type Frames = mpsc::Sender<Result<Vec<i16>, ProviderError>>;

/// Reads one context's answers until `done`, sending 20 ms frames.
async fn receive(ws: &mut Ws, tx: &Frames) -> Result<(), String> {
    let mut framer = Framer::new(8000)?;
    let mut odd: Option<u8> = None;
    // Bounded: each message comes within STALL, and the server ends the
    // context with `done` or an error.
    loop {
        let msg = tokio::time::timeout(STALL, ws.next())
            .await
            .map_err(|_| format!("Cartesia sent nothing for {} s", STALL.as_secs()))?;
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | None => {
                return Err("Cartesia closed the connection before done".into());
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("Cartesia: {e}")),
        };
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| format!("Cartesia sent a message that is not JSON: {e}"))?;
        match v.get("type").and_then(Value::as_str) {
            Some("chunk") => {
                let data = v.get("data").and_then(Value::as_str).unwrap_or_default();
                let mut bytes = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .map_err(|e| format!("Cartesia sent a chunk that is not base64: {e}"))?;
                if let Some(b) = odd.take() {
                    bytes.insert(0, b);
                }
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
            Some("done") => {
                for frame in framer.finish()? {
                    if tx.send(Ok(frame)).await.is_err() {
                        break;
                    }
                }
                return Ok(());
            }
            Some("error") => {
                let message = ["message", "error", "title"]
                    .iter()
                    .find_map(|k| v.get(*k).and_then(Value::as_str))
                    .unwrap_or("an error with no message");
                let status = v.get("status_code").and_then(Value::as_u64);
                return Err(match status {
                    Some(s) => format!("Cartesia refused ({s}): {message}"),
                    None => format!("Cartesia refused: {message}"),
                });
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_names_model_voice_and_raw_8khz_pcm() {
        let c = Cartesia::new(
            Some("ws://127.0.0.1:9"),
            None,
            Some("v-1"),
            None,
            Secret::new("key"),
        )
        .unwrap();
        assert_eq!(
            c.url.as_str(),
            "ws://127.0.0.1:9/tts/websocket?api_key=key&cartesia_version=2025-04-16"
        );
        let r = c.request("Hi.", "ctx");
        assert_eq!(r["voice"], json!({"mode": "id", "id": "v-1"}));
        assert_eq!(r["output_format"]["sample_rate"], 8000);
        assert_eq!(r["model_id"], DEFAULT_MODEL);
        let e = Cartesia::new(None, None, None, None, Secret::new("k"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("voice"), "{e}");
    }
}
