//! The call's recognition stream as the session driver uses it: opening
//! while the greeting plays (frames are kept until it is ready), open, or
//! gone (the agent then answers DTMF only).
//!
//! Must not: decide turns; the core says when a turn ended, this asks STT
//! for its final text.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::agent::providers::{ProviderError, Stt, SttStream};

/// Frames kept while the recognizer opens (5 s); older ones are dropped.
const EARLY_FRAMES: usize = 250;

type Opening = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Box<dyn SttStream>, ProviderError>> + Send>,
>;

/// The call's recognition stream: opening (frames are kept and sent once
/// it is open), open, or gone (the agent answers DTMF only).
pub(super) struct Recognizer {
    opening: Option<Opening>,
    stream: Option<Box<dyn SttStream>>,
    /// Kept frames: 8 kHz, and 16 kHz when the call has it.
    early: VecDeque<(Vec<i16>, Option<Vec<i16>>)>,
}

impl Recognizer {
    pub(super) fn opening(stt: Arc<dyn Stt>) -> Self {
        Recognizer {
            opening: Some(Box::pin(async move { stt.open().await })),
            stream: None,
            early: VecDeque::new(),
        }
    }

    pub(super) fn is_opening(&self) -> bool {
        self.opening.is_some()
    }

    /// Resolves when the stream has opened (or failed to).
    async fn opened(&mut self) -> Result<Box<dyn SttStream>, ProviderError> {
        match self.opening.as_mut() {
            Some(f) => f.await,
            None => std::future::pending().await,
        }
    }

    /// Takes the opened stream and sends it the frames kept meanwhile.
    pub(super) async fn ready(&mut self, opened: Result<Box<dyn SttStream>, ProviderError>) {
        self.opening = None;
        match opened {
            Ok(stream) => {
                self.stream = Some(stream);
                let early = std::mem::take(&mut self.early);
                for (frame, wide) in early {
                    if !self.push(&frame, wide.as_deref()).await {
                        break;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "STT unavailable; the agent answers DTMF only");
                self.early.clear();
            }
        }
    }

    /// Sends a frame, with its 16 kHz form when the call is wideband (or
    /// keeps it while opening); whether it was sent.
    pub(super) async fn push(&mut self, frame: &[i16], wide: Option<&[i16]>) -> bool {
        if let Some(s) = self.stream.as_mut() {
            if let Err(e) = s.push_frame(frame, wide).await {
                tracing::warn!(error = %e, "STT failed");
                self.stream = None;
                return false;
            }
            return true;
        }
        if self.opening.is_some() {
            if self.early.len() == EARLY_FRAMES {
                self.early.pop_front();
            }
            self.early
                .push_back((frame.to_vec(), wide.map(<[i16]>::to_vec)));
        }
        false
    }

    /// The caller's turn ended: asks the stream (waiting up to `limit` for
    /// one still opening) to finalise it; whether a final text will come.
    pub(super) async fn end_of_turn(&mut self, limit: Duration) -> bool {
        if self.opening.is_some() {
            match tokio::time::timeout(limit, self.opened()).await {
                Ok(opened) => self.ready(opened).await,
                Err(_) => tracing::debug!("STT still opening at the end of a turn"),
            }
        }
        let Some(s) = self.stream.as_mut() else {
            return false;
        };
        if let Err(e) = s.end_of_turn().await {
            tracing::warn!(error = %e, "STT failed");
            self.stream = None;
            return false;
        }
        true
    }

    /// The stream has opened, or the final text of the turn asked for
    /// (by `deadline`) is there.
    pub(super) async fn next_event(&mut self, deadline: Option<Instant>) -> SttEvent {
        if self.opening.is_some() {
            return SttEvent::Opened(self.opened().await);
        }
        SttEvent::Final(self.final_text(deadline).await)
    }

    /// The final text of the turn asked for, skipping partials; `None`
    /// when it is empty, fails, or is not there by `deadline`. Cancel-safe
    /// (a stream's `next` is; only partials are consumed).
    async fn final_text(&mut self, deadline: Option<Instant>) -> Option<String> {
        let deadline = deadline?;
        let stream = self.stream.as_mut()?;
        // Bounded by the deadline.
        loop {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(Ok(t))) if t.is_final => {
                    let text = t.text.trim().to_string();
                    return (!text.is_empty()).then_some(text);
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => {
                    tracing::warn!(error = %e, "STT failed");
                    return None;
                }
                Ok(None) | Err(_) => return None,
            }
        }
    }
}

/// What the recognizer has for the session.
pub(super) enum SttEvent {
    Opened(Result<Box<dyn SttStream>, ProviderError>),
    Final(Option<String>),
}
