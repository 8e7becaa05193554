//! The agents a call runs: the diagnostic `echo` (the media session sends
//! the caller's audio back), `prompt` (plays a WAV file or a tone, then
//! hangs up), and `voice`, the speech pipeline: an [`AgentSession`] in its
//! own task, attached to the call's media session by an
//! [`crate::media::AudioPort`], so the caller's frames and its own never
//! pass through the call task; and `stream`, the team's own bot over a
//! WebSocket ([`super::stream`]), attached by the same port.
//!
//! The call task keeps the control: it starts the agent, hands it the
//! caller's DTMF, reads its [`AgentRequest`]s (hang up, opt out, transfer)
//! and, at the end, takes the [`Transcript`] (with the summary) to store.
//!
//! Must not: touch SIP, or import `call`, `store` or `api`: the call layer
//! maps a request to its end reason and stores the transcript.

use std::f64::consts::PI;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use super::analysis::{self, Plan};
use super::brain::{Action, AgentContext, Role, TransferCheck};
use super::session::{AgentSession, Nudge, Said, SessionConfig, SessionEnd};
use super::speech::Speech;
use super::stream::{StreamCall, StreamLink, StreamRequest, StreamSettings};
use super::{BrainConfig, CallSettings, PromptSettings, build_brain};
use crate::media::{AudioRoute, CLOCK_RATE, Digit, MediaHandle, SessionClosed};
use crate::net::Guard;

/// Peak of the generated tone: -10 dBFS, loud but far from clipping.
const TONE_AMPLITUDE: f64 = 10_362.0;
/// Caller key presses buffered towards the session; more are dropped.
const SESSION_DTMF: usize = 32;
/// The call's actions buffered from the session.
const SESSION_ACTIONS: usize = 8;
/// How long the session gets to hand back its transcript at the end.
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
    Stream(Box<Stream>),
}

/// The `stream` agent: ready to connect at answer, then relaying.
pub struct Stream {
    /// Taken when the call is answered.
    setup: Option<(StreamSettings, StreamCall, Guard)>,
    link: Option<StreamLink>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("running", &self.task.is_some())
            .finish_non_exhaustive()
    }
}

/// What a `stream` agent needs from the call beyond its settings.
#[derive(Debug, Clone)]
pub struct StreamEnv {
    pub call: StreamCall,
    pub guard: Guard,
}

/// What the agent asks of the call task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentRequest {
    /// Hang up: the agent is done.
    Hangup,
    /// The callee asked not to be called again; hang up.
    OptOut,
    /// Blind transfer to this number or SIP URI (SIP REFER), passing these
    /// SIP headers (name, value) to the transfer target: the call's
    /// variables the agent's `transfer_context` names.
    Transfer(String, Vec<(String, String)>),
    /// Warm transfer: call the number on a second leg, speak the summary
    /// (`None`: the call layer makes one from the transcript) to whoever
    /// answers, then bridge them with the caller; the headers as for
    /// [`AgentRequest::Transfer`]. `attended`: join them by REFER with
    /// Replaces to the caller, bridging only when that is refused.
    WarmTransfer {
        to: String,
        summary: Option<String>,
        headers: Vec<(String, String)>,
        attended: bool,
    },
    /// The agent's far end (a `stream` bot) could not be reached.
    Unreachable(String),
    /// Pause (true) or resume (false) the call's recording.
    Recording(bool),
}

/// The `voice` agent: ready to start, then running.
pub struct Voice {
    /// Taken when the call is answered.
    session: Option<AgentSession>,
    dtmf: Option<mpsc::Sender<Nudge>>,
    actions: Option<mpsc::Receiver<Action>>,
    task: Option<JoinHandle<SessionEnd>>,
    /// How the call is analyzed once it ends, if the agent asks.
    analysis: Option<Plan>,
    /// What a transfer passes on to its target (see [`transfer_headers`]).
    transfer_headers: Vec<(String, String)>,
    /// The trunk's destination policy, for every transfer the agent asks:
    /// a scripted target may be rendered from the caller's own variables.
    transfer_check: TransferCheck,
}

impl std::fmt::Debug for Voice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Voice")
            .field("running", &self.task.is_some())
            .finish_non_exhaustive()
    }
}

/// What a `voice` agent leaves when the call ends.
#[derive(Debug, Clone, Default)]
pub struct Transcript {
    pub said: Vec<Said>,
    pub summary: Option<String>,
    /// The analysis to run after the call, when the agent defines one.
    pub analysis: Option<analysis::Job>,
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
        env: StreamEnv,
        context: Option<AgentContext>,
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
                // Stored credentials are opened here, where awaiting is
                // possible, and checked against the URLs they go to.
                let mut settings = settings.clone();
                if let Some(c) = settings.stt.as_mut() {
                    let base = c.provider.default_base();
                    super::speech::resolve_credential(c, base)
                        .await
                        .map_err(|e| format!("voice agent speech-to-text: {e}"))?;
                }
                if let Some(c) = settings.tts.as_mut() {
                    let base = c.provider.default_base();
                    super::speech::resolve_credential(c, base)
                        .await
                        .map_err(|e| format!("voice agent text-to-speech: {e}"))?;
                }
                let mut brain_config = BrainConfig::from_settings(settings_json)
                    .map_err(|e| format!("voice agent settings: {e}"))?;
                brain_config
                    .resolve_credentials()
                    .await
                    .map_err(|e| format!("voice agent brain: {e}"))?;
                let transfer_headers =
                    transfer_headers(&settings.transfer_context, context.as_ref());
                let transfer_check = context
                    .as_ref()
                    .map(|c| c.transfer_check.clone())
                    .unwrap_or_default();
                let (session, analysis) =
                    voice_session(&settings, &brain_config, speech, inbound, context)?;
                Ok(AgentRun::Voice(Box::new(Voice {
                    session: Some(session),
                    dtmf: None,
                    actions: None,
                    task: None,
                    analysis,
                    transfer_headers,
                    transfer_check,
                })))
            }
            "stream" => {
                let stream = settings
                    .stream
                    .clone()
                    .ok_or("stream agent without stream settings")?;
                // The call's context (its variables, kept SIP headers and
                // facts: `from`, `to`, `call_id`, ...) under the agent's
                // own parameters, which win on a clash.
                let mut call = env.call;
                if let Some(context) = &context {
                    for (name, value) in &context.vars {
                        call.context
                            .entry(name.clone())
                            .or_insert_with(|| value.clone());
                    }
                }
                Ok(AgentRun::Stream(Box::new(Stream {
                    setup: Some((stream, call, env.guard)),
                    link: None,
                    task: None,
                })))
            }
            other => Err(format!("agent kind {other:?} cannot run on a call")),
        }
    }

    /// The call is answered: start talking (or listening). `answered_by`:
    /// the answering-machine verdict when detection ran, which joins the
    /// call's context (`answered_by`) before the first word.
    pub async fn start(
        &mut self,
        media: &MediaHandle,
        answered_by: Option<&str>,
    ) -> Result<(), SessionClosed> {
        match self {
            AgentRun::Prompt { audio } => {
                if let Some(samples) = audio.take() {
                    media.play(samples).await?;
                }
            }
            AgentRun::Voice(v) => v.start(media, answered_by).await?,
            // Connecting happens in the stream's own task: an unreachable
            // bot comes back as a request, never stalls the call task.
            AgentRun::Stream(s) => {
                if let Some((settings, call, guard)) = s.setup.take() {
                    let port = media.attach().await?;
                    let (link, task) = super::stream::spawn(settings, call, guard, port);
                    s.link = Some(link);
                    s.task = Some(task);
                }
            }
            // The media session plays the caller back itself.
            AgentRun::Echo => media.route_audio(AudioRoute::Loopback).await?,
        }
        Ok(())
    }

    /// A digit from the caller (RFC 4733 or SIP INFO), handed on without
    /// waiting: a session that falls behind loses keys rather than stall
    /// the call task.
    pub fn on_digit(&mut self, digit: Digit) {
        if let AgentRun::Stream(s) = self {
            if let Some(link) = &s.link
                && link.digits.try_send(digit).is_err()
            {
                tracing::warn!("stream agent behind, key press dropped");
            }
            return;
        }
        let AgentRun::Voice(v) = self else { return };
        let Some(tx) = &v.dtmf else { return };
        match tx.try_send(Nudge::Dtmf(digit.as_char().to_string())) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!("agent session behind, key press dropped");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => v.dtmf = None,
        }
    }

    /// Tells a running `voice` agent something the call did (a warm
    /// transfer not taken); it replies to it. Dropped when the session is
    /// behind or gone; other agents have no one to tell.
    pub fn notify(&mut self, text: String) {
        let AgentRun::Voice(v) = self else { return };
        let Some(tx) = &v.dtmf else { return };
        if tx.try_send(Nudge::Notice(text)).is_err() {
            tracing::warn!("agent session behind or gone, notice dropped");
        }
    }

    /// The next thing the `voice` agent asks of the call; never resolves
    /// for the other agents. `None`: the session has ended.
    pub async fn next_request(&mut self) -> Option<AgentRequest> {
        if let AgentRun::Stream(s) = self {
            let Some(link) = s.link.as_mut() else {
                return std::future::pending().await;
            };
            return match link.requests.recv().await {
                Some(StreamRequest::Unreachable(e)) => Some(AgentRequest::Unreachable(e)),
                // The bot closed the WebSocket, or the relay ended.
                Some(StreamRequest::Hangup) | None => Some(AgentRequest::Hangup),
            };
        }
        let AgentRun::Voice(v) = self else {
            return std::future::pending().await;
        };
        let Some(rx) = v.actions.as_mut() else {
            return std::future::pending().await;
        };
        // Ends when the session does; its other actions are its own.
        loop {
            match rx.recv().await? {
                Action::Hangup => return Some(AgentRequest::Hangup),
                Action::OptOut => return Some(AgentRequest::OptOut),
                Action::PauseRecording => return Some(AgentRequest::Recording(true)),
                Action::ResumeRecording => return Some(AgentRequest::Recording(false)),
                Action::Transfer { to } => {
                    // The LLM's choices were checked already; a script's
                    // target may be a caller's header rendered in.
                    if let Err(why) = v.transfer_check.check(&to) {
                        tracing::warn!(%to, %why, "transfer refused by the trunk's policy; no REFER");
                        continue;
                    }
                    return Some(AgentRequest::Transfer(to, v.transfer_headers.clone()));
                }
                Action::WarmTransfer {
                    to,
                    summary,
                    attended,
                } => {
                    if let Err(why) = v.transfer_check.check(&to) {
                        tracing::warn!(%to, %why, "warm transfer refused by the trunk's policy; no call");
                        continue;
                    }
                    return Some(AgentRequest::WarmTransfer {
                        to,
                        summary,
                        headers: v.transfer_headers.clone(),
                        attended,
                    });
                }
                Action::SendDtmf { .. } | Action::Summary { .. } => {}
            }
        }
    }

    /// Everything the media session had queued has been sent: the prompt
    /// agent is done.
    pub fn on_playout_drained(&mut self) -> Option<AgentRequest> {
        matches!(self, AgentRun::Prompt { audio: None }).then_some(AgentRequest::Hangup)
    }

    /// Stops the agent; a `voice` agent answers its transcript.
    pub async fn finish(self) -> Option<Transcript> {
        if let AgentRun::Stream(mut s) = self {
            // Dropping the digits sender tells the relay the call ended:
            // it sends `stop` and closes.
            s.link = None;
            if let Some(task) = s.task.take() {
                let abort = task.abort_handle();
                if tokio::time::timeout(SESSION_STOP_TIMEOUT, task)
                    .await
                    .is_err()
                {
                    abort.abort();
                }
            }
            return None;
        }
        let AgentRun::Voice(mut v) = self else {
            return None;
        };
        // The session ends when its DTMF channel closes, and hands back
        // what it said until then.
        v.dtmf = None;
        v.actions = None;
        let end = match v.task.take() {
            Some(task) => {
                let abort = task.abort_handle();
                match tokio::time::timeout(SESSION_STOP_TIMEOUT, task).await {
                    Ok(Ok(end)) => end,
                    _ => {
                        tracing::debug!("agent session did not stop in time");
                        abort.abort();
                        SessionEnd::default()
                    }
                }
            }
            None => SessionEnd::default(),
        };
        let summary = end
            .summary
            .map(|text| text.chars().take(SUMMARY_CHARS).collect())
            .or_else(|| summary_of(&end.said));
        let analysis = v.analysis.take().map(|plan| analysis::Job {
            plan,
            said: end.said.clone(),
            state: end.conversation.state.clone(),
        });
        Some(Transcript {
            said: end.said,
            summary,
            analysis,
        })
    }
}

impl AgentRun {
    /// The transcript lines of a `voice` agent as they are said (asked
    /// before [`AgentRun::start`]); `None` for other agents.
    pub fn live_transcript(
        &mut self,
    ) -> Option<mpsc::UnboundedReceiver<crate::agent::session::Said>> {
        let AgentRun::Voice(v) = self else {
            return None;
        };
        let session = v.session.as_mut()?;
        let (tx, rx) = mpsc::unbounded_channel();
        session.config.live = Some(tx);
        Some(rx)
    }
}

impl Voice {
    /// Attaches the session to the call's media and starts it: transcript
    /// offsets and frame times count from now, the answer.
    async fn start(
        &mut self,
        media: &MediaHandle,
        answered_by: Option<&str>,
    ) -> Result<(), SessionClosed> {
        let Some(mut session) = self.session.take() else {
            return Ok(());
        };
        if let (Some(verdict), Some(context)) = (answered_by, &session.config.context) {
            session.config.context = Some(Arc::new(context.with_fact("answered_by", verdict)));
        }
        let port = media.attach().await?;
        session.config.epoch = Some(Instant::now());
        let (dtmf_tx, dtmf_rx) = mpsc::channel(SESSION_DTMF);
        let (action_tx, action_rx) = mpsc::channel(SESSION_ACTIONS);
        let span = tracing::info_span!("agent_session");
        let run = session.run(port, dtmf_rx, action_tx).instrument(span);
        self.task = Some(tokio::spawn(run));
        self.dtmf = Some(dtmf_tx);
        self.actions = Some(action_rx);
        Ok(())
    }
}

/// The `voice` agent's session, from the agent's settings, and how its
/// calls are analyzed.
fn voice_session(
    settings: &CallSettings,
    brain_config: &BrainConfig,
    speech: &Speech,
    inbound: bool,
    context: Option<AgentContext>,
) -> Result<(AgentSession, Option<Plan>), String> {
    let brain = build_brain(brain_config).map_err(|e| format!("voice agent brain: {e}"))?;
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
        context: context.map(Arc::new),
        ..SessionConfig::default()
    };
    let analysis = settings
        .analysis
        .clone()
        .map(|a| Plan::new(a, brain_config));
    Ok((
        AgentSession {
            brain,
            stt,
            tts,
            config,
        },
        analysis,
    ))
}

/// The longest value a transfer passes on in one header.
const TRANSFER_VALUE_CHARS: usize = 256;

/// The SIP headers a transfer passes to its target: for each variable
/// `keys` names that the call has, `X-` and the name in words
/// (`first_name` is `X-First-Name`, `x_customer_id` `X-Customer-Id`), its
/// value cut to [`TRANSFER_VALUE_CHARS`]. The SIP layer escapes values.
fn transfer_headers(keys: &[String], context: Option<&AgentContext>) -> Vec<(String, String)> {
    let Some(context) = context else {
        return Vec::new();
    };
    keys.iter()
        .filter_map(|key| {
            let value = context.vars.get(key)?;
            let words = key.strip_prefix("x_").unwrap_or(key);
            let name: Vec<String> = words
                .split('_')
                .filter(|w| !w.is_empty())
                .map(|w| {
                    let mut chars = w.chars();
                    chars
                        .next()
                        .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                        .unwrap_or_default()
                })
                .collect();
            if name.is_empty() {
                return None;
            }
            let value = value.chars().take(TRANSFER_VALUE_CHARS).collect();
            Some((format!("X-{}", name.join("-")), value))
        })
        .collect()
}

/// The summary when the brain gave none: how many turns, and the agent's
/// last line.
fn summary_of(said: &[Said]) -> Option<String> {
    if said.is_empty() {
        return None;
    }
    let last = said
        .iter()
        .rev()
        .find(|s| s.role != Role::User)
        .map(|s| s.heard.clone().unwrap_or_else(|| s.text.clone()));
    let count = match said.len() {
        1 => "1 turn".to_owned(),
        n => format!("{n} turns"),
    };
    let text = match last {
        Some(line) => format!("{count}; the agent last said: {line}"),
        None => format!("{count}; the agent said nothing"),
    };
    Some(text.chars().take(SUMMARY_CHARS).collect())
}

/// The prompt's audio: a file from the media directory or an upload, both
/// through the [`super::prompts`] library (checked, capped, loaded once),
/// never a path opened as given.
async fn prompt_audio(settings: &PromptSettings) -> Result<Vec<i16>, String> {
    let library = super::prompts::library();
    if let Some(path) = &settings.wav_path {
        let samples = library
            .file(path)
            .await
            .map_err(|e| format!("prompt.wav_path {path:?}: {e}"))?;
        return Ok(samples.as_ref().clone());
    }
    if let Some(id) = &settings.audio_id {
        let samples = library
            .upload(id)
            .await
            .map_err(|e| format!("prompt.audio_id {id}: {e}"))?;
        return Ok(samples.as_ref().clone());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfers_pass_the_chosen_variables_as_x_headers() {
        let context = AgentContext {
            call_id: "call_1".into(),
            vars: [
                ("x_customer_id", "42"),
                ("first_name", "Ada"),
                ("secret", "no"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            document: serde_json::Value::Null,
            transfer_check: Default::default(),
        };
        let keys = vec![
            "x_customer_id".into(),
            "first_name".into(),
            "missing".into(),
        ];
        assert_eq!(
            transfer_headers(&keys, Some(&context)),
            vec![
                ("X-Customer-Id".to_owned(), "42".to_owned()),
                ("X-First-Name".to_owned(), "Ada".to_owned())
            ]
        );
        assert!(transfer_headers(&keys, None).is_empty());
    }

    #[test]
    fn tone_has_the_asked_length() {
        let t = tone(1000.0, 500);
        assert_eq!(t.len(), 4000);
        assert!(t.iter().any(|s| *s > 10_000));
    }
}
