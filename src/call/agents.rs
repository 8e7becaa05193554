//! The agents a call runs: the diagnostic `echo` (sends the caller's audio
//! back) and `prompt` (plays a WAV file or a tone, then hangs up), and
//! `voice`, the speech pipeline: an [`AgentSession`] in its own task, fed
//! the caller's frames and RFC 4733 digits, answering with frames to play,
//! barge-in clears, transcript lines and actions.
//!
//! For `voice` this module also keeps the transcript (with each reply's
//! latency to the first RTP packet, measured with
//! [`MediaEvent::PlayoutStarted`](crate::media::MediaEvent)) and the
//! summary, and holds an action that must wait for the audio before it
//! (hang up after the goodbye, transfer after "transferring you") until
//! the media session has sent everything.
//!
//! Must not: touch SIP; an agent sees audio frames, digits and the playout
//! state and answers with audio to play or a request for the call task
//! ([`AgentRequest`]).

use std::f64::consts::PI;
use std::path::Path;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::agent::brain::{Action, Conversation, Role};
use crate::agent::session::{AgentSession, Said, SessionConfig, SessionInput, SessionOutput};
use crate::agent::speech::Speech;
use crate::agent::{BrainConfig, CallSettings, PromptSettings, build_brain};
use crate::media::{AudioFrame, AudioRoute, CLOCK_RATE, Digit, MediaHandle, SessionClosed};
use crate::metrics::{AGENT_PIPELINE_OVERHEAD_SECONDS, AGENT_TURN_LATENCY_SECONDS};
use crate::store::transcripts::NewTurn;

use super::EndReason;

/// Peak of the generated tone: -10 dBFS, loud but far from clipping.
const TONE_AMPLITUDE: f64 = 10_362.0;
/// Caller frames buffered towards the session (2 s); more are dropped.
const SESSION_INPUT_FRAMES: usize = 100;
/// Session outputs buffered towards the call task.
const SESSION_OUTPUT: usize = 64;
/// How long the session gets to hand back its conversation at the end.
const SESSION_STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest summary kept.
const SUMMARY_CHARS: usize = 500;

/// An agent running on one call.
#[derive(Debug)]
pub enum AgentRun {
    Echo,
    Prompt {
        /// 8 kHz mono PCM, taken when playing starts.
        audio: Option<Vec<i16>>,
    },
    Voice(Box<Voice>),
}

/// What the agent asks of the call task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentRequest {
    End(EndReason),
    /// Blind transfer to this number or SIP URI (SIP REFER).
    Transfer(String),
}

/// The `voice` agent: ready to start, then running.
pub struct Voice {
    /// Taken when the call is answered.
    session: Option<AgentSession>,
    /// The clock of the session's offsets: the answer (set by `start`).
    epoch: Instant,
    input: Option<mpsc::Sender<SessionInput>>,
    output: Option<mpsc::Receiver<SessionOutput>>,
    task: Option<JoinHandle<Conversation>>,
    turns: Vec<NewTurn>,
    summary: Option<String>,
    /// The media session holds audio of ours not yet sent.
    playing: bool,
    /// When the frame that (re)started playout was handed to the media.
    play_requested: Option<Instant>,
    /// When the current reply's first RTP packet left, until the reply is
    /// recorded.
    first_rtp_at: Option<Instant>,
    /// Waits for the audio queued before it to be sent.
    after_playout: Option<AgentRequest>,
}

impl std::fmt::Debug for Voice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Voice")
            .field("turns", &self.turns.len())
            .field("playing", &self.playing)
            .finish_non_exhaustive()
    }
}

/// What a `voice` agent leaves when the call ends.
#[derive(Debug, Clone, Default)]
pub struct Transcript {
    pub turns: Vec<NewTurn>,
    pub summary: Option<String>,
}

impl AgentRun {
    /// The agent for `kind` (`echo`, `prompt` or `voice`); `settings_json`
    /// is the agent's stored settings document. An agent that cannot run
    /// (a `prompt` whose sound cannot be read, a `voice` agent whose brain
    /// or speech engines cannot be built) is an error the call is refused
    /// or ended with.
    pub async fn new(
        kind: &str,
        settings: &CallSettings,
        settings_json: &str,
        speech: &Speech,
        inbound: bool,
    ) -> Result<Self, String> {
        match kind {
            "echo" => Ok(AgentRun::Echo),
            "prompt" => {
                let prompt = settings
                    .prompt
                    .as_ref()
                    .ok_or("prompt agent without prompt settings")?;
                let audio = prompt_audio(prompt).await?;
                Ok(AgentRun::Prompt { audio: Some(audio) })
            }
            "voice" => {
                let brain_config = BrainConfig::from_settings(settings_json)
                    .map_err(|e| format!("voice agent settings: {e}"))?;
                let brain =
                    build_brain(&brain_config).map_err(|e| format!("voice agent brain: {e}"))?;
                let stt = speech
                    .stt(settings.stt.as_ref())
                    .map_err(|e| format!("voice agent speech-to-text: {e}"))?;
                let tts = speech
                    .tts(settings.tts.as_ref())
                    .map_err(|e| format!("voice agent text-to-speech: {e}"))?;
                let config = SessionConfig {
                    turn: settings.turn.clone().unwrap_or_default().config(),
                    greeting: settings
                        .opening
                        .clone()
                        .unwrap_or_default()
                        .greeting(inbound),
                    ..SessionConfig::default()
                };
                Ok(AgentRun::Voice(Box::new(Voice {
                    session: Some(AgentSession {
                        brain,
                        stt,
                        tts,
                        config,
                    }),
                    epoch: Instant::now(),
                    input: None,
                    output: None,
                    task: None,
                    turns: Vec::new(),
                    summary: None,
                    playing: false,
                    play_requested: None,
                    first_rtp_at: None,
                    after_playout: None,
                })))
            }
            other => Err(format!("agent kind {other:?} cannot run on a call")),
        }
    }

    /// The call is answered: start talking (or listening).
    pub async fn start(&mut self, media: &MediaHandle) -> Result<(), SessionClosed> {
        match self {
            AgentRun::Prompt { audio } => {
                if let Some(samples) = audio.take() {
                    media.play(samples).await?;
                }
            }
            AgentRun::Voice(v) => v.start(),
            // The media session plays the caller back itself.
            AgentRun::Echo => media.route_audio(AudioRoute::Loopback).await?,
        }
        Ok(())
    }

    /// A 20 ms frame from the caller.
    pub fn on_audio(&mut self, frame: AudioFrame) {
        match self {
            // Looped back in the media session from the start on; a frame
            // reported before the loop began is from before the agent.
            AgentRun::Echo | AgentRun::Prompt { .. } => {}
            AgentRun::Voice(v) => {
                let at = v.epoch.elapsed();
                v.feed(SessionInput::Frame {
                    at,
                    pcm: frame.samples,
                });
            }
        }
    }

    /// A digit from the caller (RFC 4733).
    pub fn on_digit(&mut self, digit: Digit) {
        if let AgentRun::Voice(v) = self {
            v.feed(SessionInput::Dtmf(digit.as_char().to_string()));
        }
    }

    /// The next thing the `voice` agent's session asks for; never resolves
    /// for the other agents. `None`: the session has ended.
    pub async fn next_output(&mut self) -> Option<SessionOutput> {
        match self {
            AgentRun::Voice(v) => match v.output.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            },
            _ => std::future::pending().await,
        }
    }

    /// Carries out one output of the session.
    pub async fn on_output(
        &mut self,
        output: SessionOutput,
        media: &MediaHandle,
    ) -> Result<Option<AgentRequest>, SessionClosed> {
        let AgentRun::Voice(v) = self else {
            return Ok(None);
        };
        match output {
            SessionOutput::Audio(frame) => {
                if !v.playing {
                    v.playing = true;
                    v.play_requested = Some(Instant::now());
                }
                media.play(frame).await?;
            }
            SessionOutput::ClearAudio => {
                tracing::debug!("barge-in: agent audio cleared");
                // What was handed out may never be sent: no measurement.
                v.play_requested = None;
                media.clear().await?;
            }
            SessionOutput::Said(said) => v.record(said),
            SessionOutput::Action(action) => return v.act(action, media).await,
        }
        Ok(None)
    }

    /// The media session sent its first packet after an idle spell, at
    /// `sent`.
    pub fn on_playout_started(&mut self, sent: Instant) {
        // Only a reply's first run counts: a reply whose TTS fell behind
        // between sentences starts playing again.
        if let AgentRun::Voice(v) = self
            && v.play_requested.take().is_some()
        {
            v.first_rtp_at.get_or_insert(sent);
        }
    }

    /// Everything queued has been played: the prompt agent is done; the
    /// voice agent carries out what waited for its audio.
    pub fn on_playout_drained(&mut self) -> Option<AgentRequest> {
        match self {
            AgentRun::Prompt { audio: None } => Some(AgentRequest::End(EndReason::AgentHangup)),
            AgentRun::Voice(v) => {
                v.playing = false;
                v.after_playout.take()
            }
            _ => None,
        }
    }

    /// Stops the agent; a `voice` agent answers its transcript.
    pub async fn finish(self) -> Option<Transcript> {
        let AgentRun::Voice(mut v) = self else {
            return None;
        };
        v.input = None;
        if let Some(task) = v.task.take() {
            // The session ends when its input closes; what it still says is
            // recorded until then.
            let mut output = v.output.take();
            let drain = async {
                if let Some(rx) = output.as_mut() {
                    while let Some(o) = rx.recv().await {
                        if let SessionOutput::Said(said) = o {
                            v.record(said);
                        }
                    }
                }
            };
            if tokio::time::timeout(SESSION_STOP_TIMEOUT, drain)
                .await
                .is_err()
            {
                tracing::debug!("agent session did not stop in time");
            }
            task.abort();
        }
        let summary = v.summary.take().or_else(|| summary_of(&v.turns));
        Some(Transcript {
            turns: std::mem::take(&mut v.turns),
            summary,
        })
    }
}

impl Voice {
    fn start(&mut self) {
        let Some(mut session) = self.session.take() else {
            return;
        };
        // Transcript offsets and frame times count from the answer.
        self.epoch = Instant::now();
        session.config.epoch = Some(self.epoch);
        let (in_tx, in_rx) = mpsc::channel(SESSION_INPUT_FRAMES);
        let (out_tx, out_rx) = mpsc::channel(SESSION_OUTPUT);
        let span = tracing::info_span!("agent_session");
        self.task = Some(tokio::spawn(session.run(in_rx, out_tx).instrument(span)));
        self.input = Some(in_tx);
        self.output = Some(out_rx);
    }

    /// Hands input to the session without ever waiting: a session that
    /// falls 2 s behind loses frames rather than stall the call task.
    fn feed(&mut self, input: SessionInput) {
        let Some(tx) = &self.input else { return };
        match tx.try_send(input) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!("agent session behind, caller input dropped");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.input = None,
        }
    }

    fn record(&mut self, said: Said) {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let latency = said.latency.unwrap_or_default();
        // The reply's first frame left the session at `said.start` (from the
        // epoch), `first_frame_out` after what it answers; its RTP packet
        // left at `first_rtp_at`. Unknown when the reply joined audio still
        // playing (no idle spell, so no PlayoutStarted of its own).
        let sent = match said.role {
            Role::User => None,
            _ => self.first_rtp_at.take(),
        };
        let first_rtp = latency.first_frame_out.zip(sent).and_then(|(out, sent)| {
            let sent = sent.saturating_duration_since(self.epoch);
            Some(out + sent.checked_sub(said.start)?)
        });
        if let Some(d) = first_rtp {
            metrics::histogram!(AGENT_TURN_LATENCY_SECONDS, "stage" => "first_rtp")
                .record(d.as_secs_f64());
            // The daemon's share: TTS's first frame to the wire.
            if let Some(tts) = latency.tts_first_audio {
                metrics::histogram!(AGENT_PIPELINE_OVERHEAD_SECONDS, "path" => "tts_to_rtp_out")
                    .record(d.saturating_sub(tts).as_secs_f64());
            }
        }
        self.turns.push(NewTurn {
            speaker: match said.role {
                Role::User => "caller",
                _ => "agent",
            },
            text: said.text,
            start_ms: ms(said.start),
            end_ms: ms(said.end),
            interrupted: said.interrupted,
            heard: said.heard,
            stt_final_ms: latency.stt_final.map(ms),
            llm_first_token_ms: latency.llm_first_token.map(ms),
            tts_first_audio_ms: latency.tts_first_audio.map(ms),
            first_rtp_ms: first_rtp.map(ms),
        });
    }

    async fn act(
        &mut self,
        action: Action,
        media: &MediaHandle,
    ) -> Result<Option<AgentRequest>, SessionClosed> {
        tracing::info!(?action, "agent action");
        let request = match action {
            Action::Hangup => AgentRequest::End(EndReason::AgentHangup),
            // A campaign's dialer puts the number on the do-not-call list
            // for this reason, as for the opt-out key.
            Action::OptOut => AgentRequest::End(EndReason::OptedOut),
            Action::Transfer { to } => AgentRequest::Transfer(to),
            Action::SendDtmf { digits } => {
                for key in digits.chars() {
                    match Digit::from_char(key) {
                        Some(digit) => media.send_digit(digit).await?,
                        None => tracing::info!(%key, "not a DTMF key, not sent"),
                    }
                }
                return Ok(None);
            }
            Action::Summary { text } => {
                self.summary = Some(text.chars().take(SUMMARY_CHARS).collect());
                return Ok(None);
            }
        };
        if self.playing {
            // The goodbye is still in the media session's queue.
            self.after_playout = Some(request);
            return Ok(None);
        }
        Ok(Some(request))
    }
}

/// The summary when the brain gave none: how many turns, and the agent's
/// last line.
fn summary_of(turns: &[NewTurn]) -> Option<String> {
    if turns.is_empty() {
        return None;
    }
    let last = turns
        .iter()
        .rev()
        .find(|t| t.speaker == "agent")
        .map(|t| t.heard.clone().unwrap_or_else(|| t.text.clone()));
    let count = match turns.len() {
        1 => "1 turn".to_owned(),
        n => format!("{n} turns"),
    };
    let text = match last {
        Some(line) => format!("{count}; the agent last said: {line}"),
        None => format!("{count}; the agent said nothing"),
    };
    Some(text.chars().take(SUMMARY_CHARS).collect())
}

async fn prompt_audio(settings: &PromptSettings) -> Result<Vec<i16>, String> {
    if let Some(path) = &settings.wav_path {
        let bytes = tokio::fs::read(Path::new(path))
            .await
            .map_err(|e| format!("cannot read {path}: {e}"))?;
        return read_wav(&bytes).map_err(|e| format!("{path}: {e}"));
    }
    let hz = settings.tone_hz.unwrap_or(440);
    Ok(tone(f64::from(hz), settings.duration_ms))
}

/// A sine tone at 8 kHz.
pub fn tone(hz: f64, duration_ms: u32) -> Vec<i16> {
    let samples = u64::from(duration_ms) * u64::from(CLOCK_RATE) / 1000;
    (0..samples)
        .map(|n| {
            let t = n as f64 / f64::from(CLOCK_RATE);
            // Bounded by TONE_AMPLITUDE, inside i16.
            (TONE_AMPLITUDE * (2.0 * PI * hz * t).sin()) as i16
        })
        .collect()
}

/// Reads a 16-bit PCM WAV (RIFF) file, mixes it to mono and resamples it
/// to 8 kHz (rubato, through [`crate::media::resample`]).
pub fn read_wav(bytes: &[u8]) -> Result<Vec<i16>, String> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err("not a RIFF/WAVE file".into());
    }
    let mut format: Option<(u16, u16, u32, u16)> = None;
    let mut data: Option<&[u8]> = None;
    let mut rest = &bytes[12..];
    while rest.len() >= 8 {
        let id = &rest[0..4];
        let len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        let body = rest.get(8..8 + len).unwrap_or(&rest[8..]);
        match id {
            b"fmt " if body.len() >= 16 => {
                format = Some((
                    u16::from_le_bytes([body[0], body[1]]),
                    u16::from_le_bytes([body[2], body[3]]),
                    u32::from_le_bytes([body[4], body[5], body[6], body[7]]),
                    u16::from_le_bytes([body[14], body[15]]),
                ));
            }
            b"data" => data = Some(body),
            _ => {}
        }
        // Chunks are padded to an even length.
        let next = 8 + len + (len & 1);
        rest = rest.get(next..).unwrap_or(&[]);
    }
    let (tag, channels, rate, bits) = format.ok_or("no fmt chunk")?;
    let data = data.ok_or("no data chunk")?;
    // 1 = PCM, 0xFFFE = WAVE_FORMAT_EXTENSIBLE (PCM in practice here).
    if !(tag == 1 || tag == 0xFFFE) || bits != 16 || channels == 0 || rate == 0 {
        return Err(format!(
            "only 16-bit PCM is supported (format {tag}, {bits} bits, {channels} channels)"
        ));
    }
    let channels = usize::from(channels);
    let mono: Vec<i16> = data
        .chunks_exact(2 * channels)
        .map(|frame| {
            let sum: i32 = frame
                .chunks_exact(2)
                .map(|s| i32::from(i16::from_le_bytes([s[0], s[1]])))
                .sum();
            // The mean of i16 samples is an i16.
            (sum / channels as i32) as i16
        })
        .collect();
    if mono.is_empty() || rate == CLOCK_RATE {
        return Ok(mono);
    }
    crate::media::resample::resample(&mono, rate, CLOCK_RATE).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(rate: u32, channels: u16, samples: &[i16]) -> Vec<u8> {
        let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let mut out = Vec::new();
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&channels.to_le_bytes());
        out.extend_from_slice(&rate.to_le_bytes());
        out.extend_from_slice(&(rate * 2 * u32::from(channels)).to_le_bytes());
        out.extend_from_slice(&(2 * channels).to_le_bytes());
        out.extend_from_slice(&16u16.to_le_bytes());
        out.extend_from_slice(b"data");
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&data);
        out
    }

    #[test]
    fn wav_is_mixed_to_mono_and_resampled_to_8k() {
        let stereo16k: Vec<i16> = (0..3200).flat_map(|i| [i as i16, i as i16 + 2]).collect();
        let pcm = read_wav(&wav(16_000, 2, &stereo16k)).unwrap();
        assert_eq!(pcm.len(), 1600);
        // The mean of the two channels, every other sample, away from the
        // edges the filter rings at.
        assert!((i32::from(pcm[800]) - 1601).abs() <= 8, "{}", pcm[800]);
        assert!(read_wav(b"RIFF....WAVEjunk").is_err());
        assert!(read_wav(b"nope").is_err());
    }

    #[test]
    fn tone_has_the_asked_length() {
        let t = tone(1000.0, 500);
        assert_eq!(t.len(), 4000);
        assert!(t.iter().any(|s| *s > 10_000));
    }
}
