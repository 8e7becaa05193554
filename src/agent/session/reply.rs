//! One reply in its own task: the brain streams text, the [`Chunker`]
//! cuts it, TTS turns each piece into frames, and every frame goes back to
//! the session as soon as it is made (the media pacer plays it out).
//!
//! Must not: decide when a reply starts or stops; the session aborts the
//! task on a barge-in, which drops the LLM stream, any tool request and
//! the TTS stream. Every loop here ends when its brain or TTS stream ends.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::core::ReplyMsg;
use crate::agent::brain::{Brain, BrainEvent, Conversation, Input};
use crate::agent::chunker::Chunker;
use crate::agent::providers::{Audio, ProviderError, Tts};
use crate::agent::turn::FRAME;

/// Pieces of a reply whose synthesis may run ahead of the one playing.
const TTS_AHEAD: usize = 2;

/// Starts a reply from `conv`: the greeting when `input` is `None`.
pub(super) fn spawn(
    brain: Arc<dyn Brain>,
    tts: Arc<dyn Tts>,
    mut working: Conversation,
    input: Option<Input>,
) -> (JoinHandle<()>, mpsc::UnboundedReceiver<ReplyMsg>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task_input = input;
    let task = tokio::spawn(async move {
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
        let think = {
            let tx = tx.clone();
            async move {
                let result = match task_input {
                    None => brain.greet(&mut working, &ev_tx).await,
                    Some(i) => brain.respond(&mut working, i, &ev_tx).await,
                };
                drop(ev_tx);
                match result {
                    Ok(reply) => {
                        let _ = tx.send(ReplyMsg::Recorded(working, reply.actions));
                    }
                    Err(e) => {
                        let _ = tx.send(ReplyMsg::Failed(e.to_string()));
                    }
                }
            }
        };
        // Each piece's synthesis starts as soon as the piece is cut, up
        // to `TTS_AHEAD` pieces before the one playing, so the next
        // sentence is ready when the current one ends (a piece's TTS
        // process starting late would leave a gap on the wire).
        let (piece_tx, mut piece_rx) = mpsc::channel(TTS_AHEAD);
        let cut = {
            let tx = tx.clone();
            async move {
                let mut chunker = Chunker::default();
                let mut first = true;
                // Ends when the brain drops its sender.
                while let Some(event) = ev_rx.recv().await {
                    if let BrainEvent::Delta(d) = event {
                        if first {
                            first = false;
                            let _ = tx.send(ReplyMsg::FirstToken);
                        }
                        for piece in chunker.push(&d) {
                            let audio = tts.speak(&piece).await;
                            if piece_tx.send((piece, audio)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                if let Some(piece) = chunker.finish() {
                    let audio = tts.speak(&piece).await;
                    let _ = piece_tx.send((piece, audio)).await;
                }
            }
        };
        let speak = {
            let tx = tx.clone();
            async move {
                // Ends when the cutter is done and every piece is played.
                while let Some((piece, audio)) = piece_rx.recv().await {
                    forward(&piece, audio, &tx).await;
                }
            }
        };
        tokio::join!(think, cut, speak);
        let _ = tx.send(ReplyMsg::Done);
    });
    (task, rx)
}

/// Forwards one piece's audio: its frames, then its text with its length.
async fn forward(
    piece: &str,
    audio: Result<Audio, ProviderError>,
    tx: &mpsc::UnboundedSender<ReplyMsg>,
) {
    match audio {
        Ok(mut audio) => {
            let mut length = Duration::ZERO;
            // Ends when the TTS stream ends.
            while let Some(frame) = audio.recv().await {
                match frame {
                    Ok(f) => {
                        length += FRAME;
                        let _ = tx.send(ReplyMsg::Frame(f));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "TTS failed");
                        break;
                    }
                }
            }
            let _ = tx.send(ReplyMsg::Spoken(piece.to_string(), length));
        }
        Err(e) => tracing::warn!(error = %e, "TTS failed"),
    }
}
