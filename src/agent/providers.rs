//! Provider seams for speech: streaming speech to text and text to speech.
//!
//! [`Stt`] opens a [`SttStream`] per call: the driver pushes 20 ms frames
//! of 8 kHz PCM (with the same 20 ms at 16 kHz when the call's codec is
//! wideband, for an engine that takes it) and receives [`Transcript`]s (partial while the caller
//! speaks, final after the end of turn). [`Tts`] turns one piece of text
//! (a [`crate::agent::chunker`] chunk) into a stream of 8 kHz PCM frames, so
//! playback starts with the first frame. Dropping a stream cancels it: a
//! barge-in drops the TTS stream in flight.
//!
//! The embedded engines (flite, PocketSphinx) and the vendor clients come
//! later; [`ScriptedStt`] and [`ToneTts`] are doubles for tests of the call
//! pipeline.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::mpsc;

use super::turn::FRAME_SAMPLES;

/// Text recognised so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transcript {
    pub text: String,
    /// `false` while the words may still change.
    pub is_final: bool,
}

/// Why a speech provider failed.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("cannot reach the provider: {0}")]
    Unreachable(String),
    #[error("the provider refused: {0}")]
    Refused(String),
    #[error("configuration: {0}")]
    Config(String),
}

/// One recognition session (one call).
#[async_trait::async_trait]
pub trait SttStream: Send {
    /// Pushes a 20 ms frame of 8 kHz mono PCM.
    async fn push(&mut self, frame: &[i16]) -> Result<(), ProviderError>;
    /// Pushes a 20 ms frame of 8 kHz mono PCM and, on a wideband call
    /// (G.722, Opus), the same 20 ms at 16 kHz. An engine that recognises
    /// 16 kHz natively uses `wide`; the default hears the 8 kHz frame.
    async fn push_frame(
        &mut self,
        frame: &[i16],
        wide: Option<&[i16]>,
    ) -> Result<(), ProviderError> {
        let _ = wide;
        self.push(frame).await
    }
    /// The caller's turn ended (see [`crate::agent::turn::TurnEvent`]): the
    /// provider should finalise what it heard.
    async fn end_of_turn(&mut self) -> Result<(), ProviderError>;
    /// The next transcript; `None` when the session is over.
    async fn next(&mut self) -> Option<Result<Transcript, ProviderError>>;
}

/// A speech-to-text engine.
#[async_trait::async_trait]
pub trait Stt: Send + Sync {
    async fn open(&self) -> Result<Box<dyn SttStream>, ProviderError>;
}

/// A stream of 20 ms frames of 8 kHz mono PCM for one piece of text.
pub type Audio = mpsc::Receiver<Result<Vec<i16>, ProviderError>>;

/// A text-to-speech engine.
#[async_trait::async_trait]
pub trait Tts: Send + Sync {
    /// Starts speaking `text`; frames arrive as they are made.
    async fn speak(&self, text: &str) -> Result<Audio, ProviderError>;
}

/// STT double: answers each end of turn with the next scripted line.
pub struct ScriptedStt {
    pub lines: Vec<String>,
}

struct ScriptedSttStream {
    lines: VecDeque<String>,
    ready: VecDeque<Transcript>,
    heard_audio: bool,
}

#[async_trait::async_trait]
impl SttStream for ScriptedSttStream {
    async fn push(&mut self, _frame: &[i16]) -> Result<(), ProviderError> {
        self.heard_audio = true;
        Ok(())
    }

    async fn end_of_turn(&mut self) -> Result<(), ProviderError> {
        if self.heard_audio
            && let Some(text) = self.lines.pop_front()
        {
            self.ready.push_back(Transcript {
                text,
                is_final: true,
            });
        }
        self.heard_audio = false;
        Ok(())
    }

    async fn next(&mut self) -> Option<Result<Transcript, ProviderError>> {
        self.ready.pop_front().map(Ok)
    }
}

#[async_trait::async_trait]
impl Stt for ScriptedStt {
    async fn open(&self) -> Result<Box<dyn SttStream>, ProviderError> {
        Ok(Box::new(ScriptedSttStream {
            lines: self.lines.iter().cloned().collect(),
            ready: VecDeque::new(),
            heard_audio: false,
        }))
    }
}

/// TTS double: a 440 Hz tone, `per_char` of audio per character of text.
pub struct ToneTts {
    pub per_char: Duration,
}

impl ToneTts {
    /// How long `text` plays.
    pub fn duration(&self, text: &str) -> Duration {
        self.per_char * text.chars().count() as u32
    }
}

#[async_trait::async_trait]
impl Tts for ToneTts {
    async fn speak(&self, text: &str) -> Result<Audio, ProviderError> {
        let frames = (self.duration(text).as_millis() / 20) as usize;
        let (tx, rx) = mpsc::channel(frames.max(1));
        for n in 0..frames {
            let frame = (0..FRAME_SAMPLES)
                .map(|i| {
                    let t = (n * FRAME_SAMPLES + i) as f32 / 8000.0;
                    ((2.0 * std::f32::consts::PI * 440.0 * t).sin() * 8000.0) as i16
                })
                .collect();
            if tx.try_send(Ok(frame)).is_err() {
                break;
            }
        }
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_doubles_behave() {
        let stt = ScriptedStt {
            lines: vec!["hello".into()],
        };
        let mut s = stt.open().await.unwrap();
        s.end_of_turn().await.unwrap();
        assert!(s.next().await.is_none(), "no audio, no transcript");
        s.push(&[0; FRAME_SAMPLES]).await.unwrap();
        s.end_of_turn().await.unwrap();
        assert_eq!(s.next().await.unwrap().unwrap().text, "hello");

        let tts = ToneTts {
            per_char: Duration::from_millis(60),
        };
        let mut audio = tts.speak("hello").await.unwrap();
        let mut n = 0;
        while let Some(frame) = audio.recv().await {
            assert_eq!(frame.unwrap().len(), FRAME_SAMPLES);
            n += 1;
        }
        assert_eq!(n, 15);
    }
}
