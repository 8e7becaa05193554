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
//! barge-in) sends `{"context_id", "cancel": true}` at the next chunk.
//!
//! One socket per [`Cartesia`] (`Speech::tts` builds a new one each time,
//! so a call that asks once has its own), as Cartesia advises: the first
//! piece of text opens it and the next ones skip the TLS and
//! WebSocket handshakes. A task owns it and routes answers by `context_id`
//! (a fresh ULID per piece); an error ends only its own context, a broken
//! socket ends every context in progress and the next piece opens a new
//! one. Dropping the [`Cartesia`] closes the socket.
//!
//! Asking for 8 kHz means no resampling: chunks are cut into 20 ms frames
//! as they arrive (a chunk may end mid-sample: the odd byte waits).
//!
//! Must not: log or return the key, or the URL that carries it.

use std::collections::HashMap;
use std::sync::Arc;
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
    /// The socket shared by this instance's generations: opened at the
    /// first, again after it ends.
    conn: Arc<tokio::sync::Mutex<Option<mpsc::Sender<Start>>>>,
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
            conn: Arc::default(),
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

impl Cartesia {
    /// The shared socket's task, opened now if there is none or it ended.
    async fn connection(&self) -> Result<mpsc::Sender<Start>, ProviderError> {
        let mut conn = self.conn.lock().await;
        if let Some(tx) = conn.as_ref().filter(|tx| !tx.is_closed()) {
            return Ok(tx.clone());
        }
        let ws = connect(&self.url, &[], Some(&self.key), "Cartesia").await?;
        let (tx, rx) = mpsc::channel(8);
        let task = Connection {
            ws,
            key: self.key.clone(),
            contexts: HashMap::new(),
        };
        tokio::spawn(task.run(rx).in_current_span());
        *conn = Some(tx.clone());
        Ok(tx)
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
        let context_id = ulid::Ulid::new().to_string();
        let start = Start {
            request: self.request(text, &context_id).to_string(),
            context_id,
            frames: tx,
        };
        if let Err(mpsc::error::SendError(start)) = self.connection().await?.send(start).await {
            // The socket ended since its last use: open a new one, once.
            self.connection().await?.send(start).await.map_err(|_| {
                ProviderError::Unreachable("the Cartesia connection closed at once".into())
            })?;
        }
        Ok(rx)
    }
}

type Frames = mpsc::Sender<Result<Vec<i16>, ProviderError>>;

/// A generation to start on the shared socket.
struct Start {
    context_id: String,
    /// The JSON request.
    request: String,
    frames: Frames,
}

/// A generation in progress.
struct Context {
    framer: Framer,
    /// A chunk may end mid-sample: its last byte waits here.
    odd: Option<u8>,
    frames: Frames,
}

/// The task that owns one socket and routes its answers by `context_id`.
struct Connection {
    ws: Ws,
    key: Secret,
    contexts: HashMap<String, Context>,
}

impl Connection {
    async fn run(mut self, mut starts: mpsc::Receiver<Start>) {
        // Bounded: ends when the Cartesia instance is dropped, the socket
        // fails, or a generation in progress stalls for STALL.
        loop {
            let stall = (!self.contexts.is_empty()).then(|| tokio::time::Instant::now() + STALL);
            tokio::select! {
                start = starts.recv() => {
                    let Some(start) = start else {
                        let _ = self.ws.close(None).await;
                        return;
                    };
                    let framer = match Framer::new(8000) {
                        Ok(f) => f,
                        Err(e) => {
                            let _ = start.frames.send(Err(ProviderError::Config(e))).await;
                            continue;
                        }
                    };
                    self.contexts.insert(
                        start.context_id,
                        Context { framer, odd: None, frames: start.frames },
                    );
                    if let Err(e) = self.ws.send(Message::text(start.request)).await {
                        self.fail_all(&format!("Cartesia: {e}")).await;
                        return;
                    }
                }
                () = sleep_until(stall), if stall.is_some() => {
                    self.fail_all(&format!("Cartesia sent nothing for {} s", STALL.as_secs())).await;
                    return;
                }
                msg = self.ws.next() => {
                    let text = match msg {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Close(_))) | None => {
                            self.fail_all("Cartesia closed the connection").await;
                            return;
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => {
                            self.fail_all(&format!("Cartesia: {e}")).await;
                            return;
                        }
                    };
                    match serde_json::from_str::<Value>(&text) {
                        Ok(v) => self.message(&v).await,
                        Err(e) => {
                            self.fail_all(&format!("Cartesia sent a message that is not JSON: {e}")).await;
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Routes one answer to its generation.
    async fn message(&mut self, v: &Value) {
        let Some(id) = v.get("context_id").and_then(Value::as_str) else {
            return;
        };
        let Some(ctx) = self.contexts.get_mut(id) else {
            return;
        };
        let outcome = match v.get("type").and_then(Value::as_str) {
            Some("chunk") => chunk(ctx, v).await,
            Some("done") => done(ctx).await.map(|()| Outcome::Finished),
            Some("error") => {
                let message = ["message", "error", "title"]
                    .iter()
                    .find_map(|k| v.get(*k).and_then(Value::as_str))
                    .unwrap_or("an error with no message");
                Err(match v.get("status_code").and_then(Value::as_u64) {
                    Some(s) => format!("Cartesia refused ({s}): {message}"),
                    None => format!("Cartesia refused: {message}"),
                })
            }
            _ => Ok(Outcome::Going),
        };
        match outcome {
            Ok(Outcome::Going) => {}
            Ok(Outcome::Finished) => {
                self.contexts.remove(id);
            }
            Ok(Outcome::Unheard) => {
                // Nobody listens any more (a barge-in): stop the generation.
                self.contexts.remove(id);
                let cancel = json!({"context_id": id, "cancel": true});
                if let Err(e) = self.ws.send(Message::text(cancel.to_string())).await {
                    tracing::debug!(error = %e, "Cartesia cancel not sent");
                }
            }
            Err(e) => {
                if let Some(ctx) = self.contexts.remove(id) {
                    let e = ProviderError::Refused(scrub(&e, Some(&self.key)));
                    tracing::warn!(error = %e, "Cartesia generation failed");
                    let _ = ctx.frames.send(Err(e)).await;
                }
            }
        }
    }

    /// Ends every generation in progress with `why`.
    async fn fail_all(&mut self, why: &str) {
        let why = scrub(why, Some(&self.key));
        if !self.contexts.is_empty() {
            tracing::warn!(error = %why, "Cartesia connection failed");
        }
        for (_, ctx) in self.contexts.drain() {
            let _ = ctx
                .frames
                .send(Err(ProviderError::Unreachable(why.clone())))
                .await;
        }
    }
}

/// What became of a generation after an answer.
enum Outcome {
    Going,
    Finished,
    /// Its listener is gone.
    Unheard,
}

/// Sends a chunk's audio as 20 ms frames.
async fn chunk(ctx: &mut Context, v: &Value) -> Result<Outcome, String> {
    let data = v.get("data").and_then(Value::as_str).unwrap_or_default();
    let mut bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| format!("Cartesia sent a chunk that is not base64: {e}"))?;
    if let Some(b) = ctx.odd.take() {
        bytes.insert(0, b);
    }
    if bytes.len() % 2 == 1 {
        ctx.odd = bytes.pop();
    }
    let samples: Vec<i16> = bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    for frame in ctx.framer.push(&samples)? {
        if ctx.frames.send(Ok(frame)).await.is_err() {
            return Ok(Outcome::Unheard);
        }
    }
    Ok(Outcome::Going)
}

/// Sends the rest of a finished generation, the last frame padded.
async fn done(ctx: &mut Context) -> Result<(), String> {
    for frame in ctx.framer.finish()? {
        if ctx.frames.send(Ok(frame)).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// Sleeps until `at` (forever when `None`; the select guards that arm).
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
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
