//! Deepgram's live speech to text over a WebSocket.
//!
//! Wire protocol (Deepgram "Live Audio" API, `wss://api.deepgram.com/v1/listen`):
//! the query names the audio (`encoding=linear16&sample_rate=8000&channels=1`)
//! and the options (`model`, `language`, `interim_results=true`,
//! `endpointing` in ms); the key goes in the `Authorization: Token KEY`
//! header. Audio goes up as binary frames (here each 20 ms frame, 320 bytes
//! of little-endian 16-bit PCM); control messages go up as JSON text frames:
//! `{"type":"Finalize"}` flushes what the server holds (sent at the end of
//! the caller's turn), `{"type":"KeepAlive"}` keeps an idle stream from the
//! server's 10 s timeout (sent after [`KEEPALIVE`] with nothing sent), and
//! `{"type":"CloseStream"}` ends it (sent when the stream is dropped).
//! Results come down as `{"type":"Results", "is_final", "speech_final",
//! "from_finalize", "channel": {"alternatives": [{"transcript"}]}}`; other
//! types (`Metadata`, `SpeechStarted`, `UtteranceEnd`) are not needed here.
//!
//! How results become [`Transcript`]s: the `is_final` pieces of a turn are
//! joined; each interim result is a partial (the joined pieces plus the
//! interim words); the answer to our `Finalize` (`from_finalize: true`) gives
//! the turn's one final transcript, so every `end_of_turn` gets exactly one.
//! Deepgram does not promise that answer when little audio is buffered, so
//! after [`FINALIZE_GRACE`] without it the pieces already final are the
//! turn's transcript (a late answer then counts towards the next turn).
//!
//! One task per stream owns the socket, so `push` never waits on the
//! network: frames queue (bounded, [`QUEUE_FRAMES`]) and a stream that
//! cannot keep up fails instead of delaying the call.
//!
//! Must not: log or return the key; block the caller on the socket.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tracing::Instrument;
use url::Url;

use super::{Ws, connect, scrub};
use crate::agent::brain::Secret;
use crate::agent::providers::{ProviderError, Stt, SttStream, Transcript};

pub const DEFAULT_BASE_URL: &str = "wss://api.deepgram.com";
pub const DEFAULT_MODEL: &str = "nova-3";
/// Deepgram's own end-of-speech silence; ours decides the turn, this only
/// marks `speech_final`.
pub const ENDPOINTING_MS: u32 = 300;
/// Silence on the socket after which a `KeepAlive` goes (Deepgram asks for
/// one every 3 to 5 s).
pub const KEEPALIVE: Duration = Duration::from_secs(4);
/// How long the answer to `Finalize` is waited for before the turn's final
/// pieces stand as its transcript (under the session's 2 s default).
pub const FINALIZE_GRACE: Duration = Duration::from_secs(1);
/// Frames queued for the socket (5 s of audio).
pub const QUEUE_FRAMES: usize = 250;
/// Transcripts not yet read; partials are dropped when it is nearly full.
const TRANSCRIPTS: usize = 32;
/// How long a dropped stream waits for the server to close after
/// `CloseStream`.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Deepgram live STT for one model and language.
#[derive(Debug, Clone)]
pub struct Deepgram {
    url: Url,
    key: Secret,
}

impl Deepgram {
    pub fn new(
        base_url: Option<&str>,
        model: Option<&str>,
        language: Option<&str>,
        key: Secret,
    ) -> Result<Self, ProviderError> {
        let mut url = super::ws_base(base_url, DEFAULT_BASE_URL)?;
        let path = format!("{}/v1/listen", url.path().trim_end_matches('/'));
        url.set_path(&path);
        {
            let mut q = url.query_pairs_mut();
            q.clear()
                .append_pair("encoding", "linear16")
                .append_pair("sample_rate", "8000")
                .append_pair("channels", "1")
                .append_pair("model", model.unwrap_or(DEFAULT_MODEL))
                .append_pair("interim_results", "true")
                .append_pair("endpointing", &ENDPOINTING_MS.to_string());
            if let Some(l) = language {
                q.append_pair("language", l);
            }
        }
        Ok(Deepgram { url, key })
    }
}

#[async_trait::async_trait]
impl Stt for Deepgram {
    async fn open(&self) -> Result<Box<dyn SttStream>, ProviderError> {
        let auth = format!("Token {}", self.key.expose());
        let ws = connect(
            &self.url,
            &[("authorization", &auth)],
            Some(&self.key),
            "Deepgram",
        )
        .await?;
        let (cmd_tx, cmd_rx) = mpsc::channel(QUEUE_FRAMES);
        let (out_tx, out_rx) = mpsc::channel(TRANSCRIPTS);
        let driver = Driver {
            ws,
            out: out_tx,
            key: self.key.clone(),
            pieces: String::new(),
            audio_since_finalize: false,
            finalizing: None,
        };
        tokio::spawn(driver.run(cmd_rx).in_current_span());
        Ok(Box::new(DeepgramStream {
            cmd: cmd_tx,
            transcripts: out_rx,
        }))
    }
}

enum Cmd {
    Audio(Vec<u8>),
    Finalize,
}

struct DeepgramStream {
    /// To the socket's task; dropping it sends `CloseStream`.
    cmd: mpsc::Sender<Cmd>,
    transcripts: mpsc::Receiver<Result<Transcript, ProviderError>>,
}

impl DeepgramStream {
    fn queue(&self, cmd: Cmd) -> Result<(), ProviderError> {
        self.cmd.try_send(cmd).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ProviderError::Unreachable(
                "Deepgram is not taking audio fast enough (5 s queued)".into(),
            ),
            mpsc::error::TrySendError::Closed(_) => {
                ProviderError::Unreachable("the Deepgram connection is closed".into())
            }
        })
    }
}

#[async_trait::async_trait]
impl SttStream for DeepgramStream {
    async fn push(&mut self, frame: &[i16]) -> Result<(), ProviderError> {
        let bytes = frame.iter().flat_map(|s| s.to_le_bytes()).collect();
        self.queue(Cmd::Audio(bytes))
    }

    async fn end_of_turn(&mut self) -> Result<(), ProviderError> {
        self.queue(Cmd::Finalize)
    }

    async fn next(&mut self) -> Option<Result<Transcript, ProviderError>> {
        self.transcripts.recv().await
    }
}

/// The task that owns one socket.
struct Driver {
    ws: Ws,
    out: mpsc::Sender<Result<Transcript, ProviderError>>,
    key: Secret,
    /// The `is_final` pieces of the turn so far.
    pieces: String,
    /// Whether audio went up since the last `Finalize` (else the server
    /// would have nothing to answer it with).
    audio_since_finalize: bool,
    /// Until when the answer to the last `Finalize` is waited for.
    finalizing: Option<tokio::time::Instant>,
}

impl Driver {
    async fn run(mut self, mut cmds: mpsc::Receiver<Cmd>) {
        let idle = tokio::time::sleep(KEEPALIVE);
        tokio::pin!(idle);
        // Bounded: ends when the socket closes or fails, or CLOSE_WAIT
        // after the stream is dropped.
        loop {
            tokio::select! {
                cmd = cmds.recv() => {
                    let sent = match cmd {
                        Some(Cmd::Audio(bytes)) => {
                            self.audio_since_finalize = true;
                            self.ws.send(Message::binary(bytes)).await
                        }
                        Some(Cmd::Finalize) if !self.audio_since_finalize => {
                            // Nothing for the server to flush: the turn is
                            // what is already final.
                            self.emit_final();
                            Ok(())
                        }
                        Some(Cmd::Finalize) => {
                            self.audio_since_finalize = false;
                            self.finalizing = Some(tokio::time::Instant::now() + FINALIZE_GRACE);
                            self.ws.send(Message::text(r#"{"type":"Finalize"}"#)).await
                        }
                        None => {
                            self.close().await;
                            return;
                        }
                    };
                    if let Err(e) = sent {
                        self.fail(ProviderError::Unreachable(format!("Deepgram: {e}")));
                        return;
                    }
                    idle.as_mut().reset(tokio::time::Instant::now() + KEEPALIVE);
                }
                () = sleep_until(self.finalizing), if self.finalizing.is_some() => {
                    tracing::debug!("Deepgram did not answer Finalize; the final pieces stand");
                    self.emit_final();
                }
                () = &mut idle => {
                    if let Err(e) = self.ws.send(Message::text(r#"{"type":"KeepAlive"}"#)).await {
                        self.fail(ProviderError::Unreachable(format!("Deepgram: {e}")));
                        return;
                    }
                    idle.as_mut().reset(tokio::time::Instant::now() + KEEPALIVE);
                }
                msg = self.ws.next() => match msg {
                    Some(Ok(Message::Text(text))) => {
                        if let Err(e) = self.message(&text) {
                            self.fail(e);
                            return;
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let why = frame
                            .map(|f| format!("{} {}", u16::from(f.code), f.reason))
                            .unwrap_or_else(|| "no reason".into());
                        self.fail(ProviderError::Unreachable(format!(
                            "Deepgram closed the stream: {why}"
                        )));
                        return;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        self.fail(ProviderError::Unreachable(format!("Deepgram: {e}")));
                        return;
                    }
                    None => {
                        self.fail(ProviderError::Unreachable("Deepgram closed the connection".into()));
                        return;
                    }
                },
            }
        }
    }

    /// Handles one JSON message from the server.
    fn message(&mut self, text: &str) -> Result<(), ProviderError> {
        let v: Value = serde_json::from_str(text).map_err(|e| {
            ProviderError::Unreachable(format!("Deepgram sent a message that is not JSON: {e}"))
        })?;
        match v.get("type").and_then(Value::as_str) {
            Some("Results") => {
                let words = v
                    .pointer("/channel/alternatives/0/transcript")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .trim();
                let flag = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
                if flag("is_final") {
                    join(&mut self.pieces, words);
                    if flag("from_finalize") && self.finalizing.is_some() {
                        self.emit_final();
                    }
                } else if !words.is_empty() && self.out.capacity() > 1 {
                    // Leave room for the final: partials are only hints.
                    let mut text = self.pieces.clone();
                    join(&mut text, words);
                    let _ = self.out.try_send(Ok(Transcript {
                        text,
                        is_final: false,
                    }));
                }
                Ok(())
            }
            Some("Error") => {
                let message = ["description", "message", "variant"]
                    .iter()
                    .find_map(|k| v.get(*k).and_then(Value::as_str))
                    .unwrap_or("an error with no description");
                Err(ProviderError::Refused(format!("Deepgram: {message}")))
            }
            _ => Ok(()),
        }
    }

    fn emit_final(&mut self) {
        self.finalizing = None;
        let text = std::mem::take(&mut self.pieces);
        if self
            .out
            .try_send(Ok(Transcript {
                text,
                is_final: true,
            }))
            .is_err()
        {
            tracing::warn!("a Deepgram transcript was dropped: nobody reads them");
        }
    }

    fn fail(&mut self, e: ProviderError) {
        let e = match e {
            ProviderError::Unreachable(m) => ProviderError::Unreachable(scrub(&m, Some(&self.key))),
            ProviderError::Refused(m) => ProviderError::Refused(scrub(&m, Some(&self.key))),
            ProviderError::Config(m) => ProviderError::Config(scrub(&m, Some(&self.key))),
        };
        tracing::warn!(error = %e, "Deepgram stream failed");
        let _ = self.out.try_send(Err(e));
    }

    /// Sends `CloseStream` and waits, bounded, for the server to close.
    async fn close(mut self) {
        if self
            .ws
            .send(Message::text(r#"{"type":"CloseStream"}"#))
            .await
            .is_err()
        {
            return;
        }
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// Sleeps until `at` (forever when `None`; the select guards that arm).
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn join(text: &mut String, words: &str) {
    if words.is_empty() {
        return;
    }
    if !text.is_empty() {
        text.push(' ');
    }
    text.push_str(words);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_names_the_audio_and_options() {
        let d = Deepgram::new(
            Some("ws://127.0.0.1:9/base/"),
            None,
            Some("en-US"),
            Secret::new("k"),
        )
        .unwrap();
        assert_eq!(
            d.url.as_str(),
            "ws://127.0.0.1:9/base/v1/listen?encoding=linear16&sample_rate=8000&channels=1\
             &model=nova-3&interim_results=true&endpointing=300&language=en-US"
        );
        assert!(Deepgram::new(Some("ws://192.0.2.1"), None, None, Secret::new("k")).is_err());
    }
}
