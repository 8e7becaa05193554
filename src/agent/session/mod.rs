//! The agent on one call: attached to the call's media session by an
//! [`AudioPort`] (the caller's frames and the playout of ours come in on
//! the media pacer's clock, our frames go straight back), with the call
//! task only for control: the caller's DTMF in, the call's actions out
//! (hang up, transfer, opt out), and the transcript when it ends.
//!
//! The turn logic is a sans-IO core ([`core::SessionCore`]); this module
//! is its thin driver: it runs one reply at a time in its own task
//! ([`reply`]), the recognizer ([`recognizer`]), and the port, and feeds
//! the core what happened with its time on the session's clock. On a
//! barge-in the core asks for the reply task to be aborted (dropping the
//! LLM stream, any tool request and the TTS stream) and for the media
//! session to drop our queued audio, and cuts the agent's last message to
//! what was sent. Actions run after the reply's audio has been sent.
//!
//! The loop does not wait on the providers: the recognizer opens while the
//! greeting plays (frames are kept until it is ready), and after an end of
//! turn the final text is awaited as one more event, so playback, barge-in
//! and the caller's next frames go on meanwhile (only an end of turn
//! that comes before the recognizer has opened waits for it, bounded).
//!
//! Opening ([`Greeting`]): the agent greets at once, or (outbound calls)
//! waits for the callee's first words to end, or for a timeout when none
//! come, and then greets.
//!
//! Time: the session's clock starts at [`SessionConfig::epoch`] (the
//! answer, on a call) or when [`AgentSession::run`] is called; frame times,
//! transcript offsets and latencies are all on that clock. Each reply keeps
//! when the caller stopped speaking (or pressed a key), when STT gave its
//! final text, when the brain's first token and TTS's first frame came,
//! and when its first RTP packet left: the per-turn latency
//! ([`TurnLatency`], exported as `agentline_agent_turn_latency_seconds`).
//!
//! Every loop here ends: the session ends when the media session or the
//! call task's DTMF channel closes, a reply task when its brain and TTS
//! streams end.
//!
//! Must not: import `call`, `store` or `api`; the call layer maps the
//! actions and stores the transcript.

mod core;
mod recognizer;
mod reply;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};

use self::core::{Effect, ReplyMsg, SessionCore};
use self::recognizer::{Recognizer, SttEvent};
use super::brain::{Action, Brain, Conversation, Role};
use super::providers::{Stt, Tts};
use super::turn::TurnConfig;
use crate::media::{AudioPort, Digit, PortCommand, PortEvent, SessionClosed};
use crate::metrics::AGENT_PIPELINE_OVERHEAD_SECONDS;

/// How long STT may take to finalise a turn by default. Generous: the wait
/// holds nothing up, and a loaded machine's recognizer can lag by seconds
/// (a turn given up on gets no reply at all).
pub const DEFAULT_STT_FINAL_TIMEOUT: Duration = Duration::from_secs(5);

/// One line of the transcript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Said {
    pub role: Role,
    /// The caller's words (`[DTMF 1]` for keys), or what the agent said.
    pub text: String,
    /// Offsets on the session's clock (from the answer).
    pub start: Duration,
    pub end: Duration,
    /// The agent was cut short (the caller talked over it, pressed a key,
    /// or the call ended): `heard` is the part of `text` that was played.
    pub interrupted: bool,
    pub heard: Option<String>,
    /// An agent reply's latency, when it answered speech or a key.
    pub latency: Option<TurnLatency>,
}

/// How long a reply took, from the end of the caller's speech (or the key
/// press) to each step. `None`: the step did not happen (no STT for a key,
/// a reply cut before it spoke).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TurnLatency {
    pub stt_final: Option<Duration>,
    pub llm_first_token: Option<Duration>,
    pub tts_first_audio: Option<Duration>,
    /// The first frame handed to the media session.
    pub first_frame_out: Option<Duration>,
    /// The reply's first RTP packet on the wire, as the media session
    /// reported it.
    pub first_rtp: Option<Duration>,
}

/// How the agent opens the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Greeting {
    /// Greet as soon as the session starts (inbound calls).
    #[default]
    Now,
    /// Wait for the callee's first words to end, or this long when none
    /// start, then greet (outbound calls).
    AfterCallee(Duration),
}

/// Settings of a session.
#[derive(Debug, Clone, Default)]
pub struct SessionConfig {
    pub turn: TurnConfig,
    /// How long to wait for STT's final text after the end of a turn
    /// ([`DEFAULT_STT_FINAL_TIMEOUT`] when zero).
    pub stt_final_timeout: Duration,
    pub greeting: Greeting,
    /// The session's clock starts here (the call's answer); `None`: when
    /// `run` is called.
    pub epoch: Option<Instant>,
    /// The call the session is on, for the brain's templates and tools.
    pub context: Option<Arc<crate::agent::brain::AgentContext>>,
    /// Each transcript line as it is said, for a live view (a web call's
    /// captions); unbounded, as a line is rare and small.
    pub live: Option<mpsc::UnboundedSender<Said>>,
}

/// What the call hands the running session besides its audio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nudge {
    /// Keys the caller pressed.
    Dtmf(String),
    /// Something the call did that the agent must react to (a warm
    /// transfer the person did not take): the brain gets it as input and
    /// replies; it is not a caller line in the transcript.
    Notice(String),
}

/// The agent on a call.
pub struct AgentSession {
    pub brain: Arc<dyn Brain>,
    pub stt: Arc<dyn Stt>,
    pub tts: Arc<dyn Tts>,
    pub config: SessionConfig,
}

/// What a session leaves when it ends.
#[derive(Debug, Clone, Default)]
pub struct SessionEnd {
    /// The transcript, in order.
    pub said: Vec<Said>,
    /// The brain's summary action's text, if it gave one.
    pub summary: Option<String>,
    /// The conversation (the brain's final state).
    pub conversation: Conversation,
}

/// The session's IO around its core.
struct SessionIo {
    brain: Arc<dyn Brain>,
    tts: Arc<dyn Tts>,
    epoch: Instant,
    final_limit: Duration,
    core: SessionCore,
    stt: Recognizer,
    /// The reply task in flight and its messages.
    reply: Option<(JoinHandle<()>, mpsc::UnboundedReceiver<ReplyMsg>)>,
    /// Set while STT owes the final text of a turn.
    final_deadline: Option<Instant>,
    media: mpsc::Sender<PortCommand>,
    actions: mpsc::Sender<Action>,
    end: SessionEnd,
    /// See [`SessionConfig::live`].
    live: Option<mpsc::UnboundedSender<Said>>,
}

impl AgentSession {
    /// Runs on `port` until the media session or `dtmf` closes; sends the
    /// call's actions (hang up, transfer, opt out) to `actions`.
    pub async fn run(
        self,
        port: AudioPort,
        mut dtmf: mpsc::Receiver<Nudge>,
        actions: mpsc::Sender<Action>,
    ) -> SessionEnd {
        let AudioPort {
            mut events,
            commands,
        } = port;
        let epoch = self.config.epoch.unwrap_or_else(Instant::now);
        let final_limit = match self.config.stt_final_timeout {
            d if d.is_zero() => DEFAULT_STT_FINAL_TIMEOUT,
            d => d,
        };
        let mut d = SessionIo {
            brain: self.brain,
            tts: self.tts,
            epoch,
            final_limit,
            core: SessionCore::new(self.config.turn),
            // The recognizer opens while the greeting plays (a cold one
            // loads its model for about half a second).
            stt: Recognizer::opening(self.stt),
            reply: None,
            final_deadline: None,
            media: commands,
            actions,
            end: SessionEnd::default(),
            live: self.config.live.clone(),
        };
        d.core.set_context(self.config.context);
        d.core.start(self.config.greeting, d.now());
        let mut open = d.apply().await.is_ok();
        while open {
            let greet = d.core.greet_deadline().map(|t| epoch + t);
            let stt_waits = d.stt.is_opening() || d.final_deadline.is_some();
            tokio::select! {
                msg = next_reply(&mut d.reply), if d.core.replying() => {
                    let now = d.now();
                    d.core.on_reply(msg, now);
                }
                event = d.stt.next_event(d.final_deadline), if stt_waits => match event {
                    SttEvent::Opened(opened) => d.stt.ready(opened).await,
                    SttEvent::Final(text) => {
                        d.final_deadline = None;
                        let now = d.now();
                        d.core.on_final(text, now);
                    }
                },
                () = sleep_until(greet.unwrap_or(epoch)), if greet.is_some() => {
                    d.core.on_greet_timeout();
                }
                event = events.recv() => match event {
                    Some(event) => d.on_port(event).await,
                    None => break,
                },
                nudge = dtmf.recv() => match nudge {
                    Some(Nudge::Dtmf(digits)) => {
                        let now = d.now();
                        d.core.on_dtmf(digits, now);
                    }
                    Some(Nudge::Notice(text)) => {
                        let now = d.now();
                        d.core.on_notice(text, now);
                    }
                    None => break,
                },
            }
            open = d.apply().await.is_ok();
        }
        d.finish()
    }
}

impl SessionIo {
    /// Now on the session's clock.
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn since_epoch(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.epoch)
    }

    async fn on_port(&mut self, event: PortEvent) {
        match event {
            PortEvent::Audio { frame, at, playout } => {
                let at = self.since_epoch(at);
                if self.stt.push(&frame.samples, frame.wide.as_deref()).await {
                    metrics::histogram!(AGENT_PIPELINE_OVERHEAD_SECONDS, "path" => "rtp_in_to_stt")
                        .record(self.now().saturating_sub(at).as_secs_f64());
                }
                self.core.on_frame(at, &frame.samples, playout);
            }
            PortEvent::Started { at, playout } => {
                let at = self.since_epoch(at);
                self.core.on_started(at, playout);
            }
            PortEvent::Drained { at, playout } => {
                let at = self.since_epoch(at);
                self.core.on_drained(at, playout);
            }
        }
    }

    /// Carries out what the core asked, and what that leads to; an error
    /// when the media session is gone.
    async fn apply(&mut self) -> Result<(), SessionClosed> {
        let mut effects = self.core.take_effects();
        while !effects.is_empty() {
            for effect in effects {
                self.effect(effect).await?;
            }
            effects = self.core.take_effects();
        }
        Ok(())
    }

    async fn effect(&mut self, effect: Effect) -> Result<(), SessionClosed> {
        match effect {
            Effect::Reply { conv, input } => {
                self.abort_reply();
                let (brain, tts) = (self.brain.clone(), self.tts.clone());
                self.reply = Some(reply::spawn(brain, tts, conv, input));
            }
            Effect::Abort => self.abort_reply(),
            Effect::Play(frame) => self.send_media(PortCommand::Play(frame)).await?,
            Effect::Clear => {
                tracing::debug!("barge-in: agent audio cleared");
                self.send_media(PortCommand::Clear).await?;
            }
            Effect::EndOfTurn => {
                // The final text is awaited in the loop: playback and
                // barge-in go on meanwhile.
                if self.stt.end_of_turn(self.final_limit).await {
                    self.final_deadline = Some(Instant::now() + self.final_limit);
                } else {
                    let now = self.now();
                    self.core.on_final(None, now);
                }
            }
            Effect::Said(said) => {
                if let Some(live) = &self.live {
                    let _ = live.send(said.clone());
                }
                self.end.said.push(said)
            }
            Effect::Action(action) => self.act(action).await?,
        }
        Ok(())
    }

    async fn act(&mut self, action: Action) -> Result<(), SessionClosed> {
        tracing::info!(?action, "agent action");
        match action {
            Action::SendDtmf { digits } => {
                for key in digits.chars() {
                    match Digit::from_char(key) {
                        Some(digit) => self.send_media(PortCommand::Digit(digit)).await?,
                        None => tracing::info!(%key, "not a DTMF key, not sent"),
                    }
                }
            }
            Action::Summary { text } => self.end.summary = Some(text),
            // The call's to carry out; a call already ending has stopped
            // listening.
            other => {
                let _ = self.actions.send(other).await;
            }
        }
        Ok(())
    }

    async fn send_media(&mut self, command: PortCommand) -> Result<(), SessionClosed> {
        self.media.send(command).await.map_err(|_| SessionClosed)
    }

    fn abort_reply(&mut self) {
        if let Some((task, _)) = self.reply.take() {
            task.abort();
        }
    }

    /// The call ended mid-reply: the transcript keeps what was sent, cut
    /// short like a barge-in (nothing is left to clear).
    fn finish(mut self) -> SessionEnd {
        let now = self.now();
        self.core.finish(now);
        for effect in self.core.take_effects() {
            if let Effect::Said(said) = effect {
                self.end.said.push(said);
            }
        }
        self.abort_reply();
        self.end.conversation = self.core.conversation().clone();
        self.end
    }
}

/// The reply task's next message; its end is [`ReplyMsg::Done`].
async fn next_reply(
    reply: &mut Option<(JoinHandle<()>, mpsc::UnboundedReceiver<ReplyMsg>)>,
) -> ReplyMsg {
    match reply {
        Some((_, rx)) => rx.recv().await.unwrap_or(ReplyMsg::Done),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::brain::scripted::{ScriptedBrain, ScriptedDialogue};
    use crate::agent::providers::{ScriptedStt, ToneTts};
    use crate::agent::turn::{FRAME, FRAME_SAMPLES};
    use crate::media::{AudioFrame, PortPlayout};

    fn session(lines: &[&str]) -> AgentSession {
        let script = serde_json::json!({
            "start": "main",
            "greeting": "Pizza Palace, what can I get you?",
            "slots": {"size": {"pattern": "(small|large)"}},
            "states": {"main": {"intents": [
                {"name": "order", "keywords": ["pizza"], "reply": "One {size} pizza. Bye!",
                 "actions": [{"type": "hangup"}]}
            ]}}
        });
        AgentSession {
            brain: Arc::new(ScriptedBrain::new(
                ScriptedDialogue::parse(&script, "script").unwrap(),
                None,
            )),
            stt: Arc::new(ScriptedStt {
                lines: lines.iter().map(|l| l.to_string()).collect(),
            }),
            tts: Arc::new(ToneTts {
                per_char: Duration::from_millis(40),
            }),
            config: SessionConfig::default(),
        }
    }

    fn voice(n: usize) -> Vec<i16> {
        (0..FRAME_SAMPLES)
            .map(|i| {
                let t = (n * FRAME_SAMPLES + i) as f32 / 8000.0;
                ((2.0 * std::f32::consts::PI * 220.0 * t).sin() * 4000.0) as i16
            })
            .collect()
    }

    /// What went out of the stand-in media session, and when.
    #[derive(Debug, Clone, PartialEq)]
    enum Out {
        /// A frame of ours on the wire.
        Audio,
        Clear,
        Action(Action),
    }

    /// Runs `s` against a stand-in media session on paused time: a pacer
    /// that sends one queued frame per 20 ms slot, reports its runs, and
    /// brings the caller's `segments` of (voice?, ms) with the playout.
    async fn drive(
        s: AgentSession,
        segments: &[(bool, u64)],
    ) -> (Vec<(Duration, Out)>, SessionEnd) {
        let (event_tx, event_rx) = mpsc::channel(256);
        let (command_tx, mut command_rx) = mpsc::channel(1024);
        let (_dtmf_tx, dtmf_rx) = mpsc::channel(4);
        let (action_tx, mut action_rx) = mpsc::channel(8);
        let port = AudioPort {
            events: event_rx,
            commands: command_tx,
        };
        let started = Instant::now();
        let run = tokio::spawn(s.run(port, dtmf_rx, action_tx));
        let mut out = Vec::new();
        let mut queue = std::collections::VecDeque::new();
        let (mut received, mut playing) = (0u64, false);
        let frames: Vec<bool> = segments
            .iter()
            .flat_map(|&(v, ms)| std::iter::repeat_n(v, (ms / 20) as usize))
            .collect();
        for (n, v) in frames.into_iter().enumerate() {
            sleep_until(started + FRAME * n as u32).await;
            let at = Instant::now();
            let t = at - started;
            while let Ok(c) = command_rx.try_recv() {
                match c {
                    PortCommand::Play(f) => {
                        received += f.len() as u64;
                        queue.push_back(f);
                    }
                    PortCommand::Clear => {
                        queue.clear();
                        out.push((t, Out::Clear));
                    }
                    PortCommand::Digit(_) => {}
                }
            }
            while let Ok(a) = action_rx.try_recv() {
                out.push((t, Out::Action(a)));
            }
            let playout = |queue: &std::collections::VecDeque<Vec<i16>>| PortPlayout {
                received,
                queued: queue.iter().map(|f| f.len() as u64).sum(),
            };
            if queue.pop_front().is_some() {
                out.push((t, Out::Audio));
                if !playing {
                    playing = true;
                    let playout = playout(&queue);
                    event_tx
                        .send(PortEvent::Started { at, playout })
                        .await
                        .unwrap();
                }
            } else if playing {
                playing = false;
                let playout = playout(&queue);
                event_tx
                    .send(PortEvent::Drained { at, playout })
                    .await
                    .unwrap();
            }
            let samples = if v { voice(n) } else { vec![0; FRAME_SAMPLES] };
            let frame = AudioFrame {
                samples,
                concealed: false,
                wide: None,
            };
            let playout = playout(&queue);
            event_tx
                .send(PortEvent::Audio { frame, at, playout })
                .await
                .unwrap();
        }
        drop(event_tx);
        let end = run.await.unwrap();
        (out, end)
    }

    fn count(out: &[(Duration, Out)], what: &Out) -> usize {
        out.iter().filter(|(_, o)| o == what).count()
    }

    fn first(out: &[(Duration, Out)], what: &Out) -> Option<Duration> {
        out.iter().find(|(_, o)| o == what).map(|(t, _)| *t)
    }

    #[tokio::test(start_paused = true)]
    async fn greets_listens_answers_and_acts_after_playing() {
        // Greeting: 33 chars at 40 ms = 1.32 s. Then a 1 s turn, silence.
        let (out, end) = drive(
            session(&["a large pizza please"]),
            &[(false, 2000), (true, 1000), (false, 3000)],
        )
        .await;
        let said = &end.said;
        assert_eq!(said.len(), 3, "{said:?}");
        assert_eq!(said[1].role, Role::User);
        assert_eq!(said[1].text, "a large pizza please");
        // The greeting went out from the first slot, 33 chars at 40 ms.
        assert!(said[0].start <= FRAME, "{:?}", said[0]);
        assert!(
            said[0].end >= Duration::from_millis(1300)
                && said[0].end <= Duration::from_millis(1400),
            "{:?}",
            said[0]
        );
        // The caller spoke from 2 s to 3 s; the reply answers it.
        assert_eq!(said[1].start, Duration::from_secs(2));
        assert_eq!(said[1].end, Duration::from_secs(3));
        assert!(said[2].start > said[1].end);
        let latency = said[2].latency.expect("the reply's latency");
        assert!(latency.stt_final.is_some() && latency.llm_first_token.is_some());
        assert!(latency.tts_first_audio.is_some() && latency.first_rtp.is_some());
        assert!(latency.first_rtp >= latency.tts_first_audio);
        assert_eq!(said[2].start, said[1].end + latency.first_rtp.unwrap());
        assert!(!said[2].interrupted);
        // The hang-up comes after the reply's last frame went out.
        let last_audio = out.iter().rposition(|(_, o)| *o == Out::Audio).unwrap();
        let hangup = out
            .iter()
            .position(|(_, o)| *o == Out::Action(Action::Hangup))
            .unwrap();
        assert!(hangup > last_audio);
        assert_eq!(end.conversation.messages.len(), 3);
        assert_eq!(
            end.conversation.messages[2].content,
            "One large pizza. Bye!"
        );
        assert_eq!(count(&out, &Out::Clear), 0);
    }

    /// An LLM that says one sentence, then thinks forever; it notes when
    /// its request is dropped.
    struct Endless(Arc<std::sync::atomic::AtomicBool>);

    struct Dropped(Arc<std::sync::atomic::AtomicBool>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[async_trait::async_trait]
    impl crate::agent::brain::Llm for Endless {
        async fn chat(
            &self,
            _request: crate::agent::brain::ChatRequest<'_>,
            on_delta: &(dyn for<'s> Fn(&'s str) + Send + Sync),
        ) -> Result<crate::agent::brain::LlmReply, crate::agent::brain::LlmError> {
            let _guard = Dropped(self.0.clone());
            on_delta("Sure, let me tell you a long story. ");
            std::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn barge_in_cancels_the_llm_in_flight() {
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let brain = crate::agent::brain::LlmBrain::new(
            Arc::new(Endless(dropped.clone())),
            None,
            None,
            Vec::new(),
            reqwest::Client::new(),
        );
        let s = AgentSession {
            brain: Arc::new(brain),
            ..session(&["hi"])
        };
        // "hi" ends at 1.1 s; the reply plays from then; the caller talks
        // over it from 1.6 s.
        let (out, end) = drive(s, &[(true, 600), (false, 1000), (true, 800), (false, 1000)]).await;
        assert!(
            dropped.load(std::sync::atomic::Ordering::SeqCst),
            "LLM not cancelled"
        );
        assert_eq!(count(&out, &Out::Clear), 1);
        let conv = end.conversation;
        assert_eq!(conv.messages.len(), 2, "{:?}", conv.messages);
        assert_eq!(conv.messages[0].content, "hi");
        let cut = &conv.messages[1];
        assert!(cut.interrupted);
        assert!(!cut.content.is_empty() && cut.content.len() < 36, "{cut:?}");
        assert!("Sure, let me tell you a long story.".starts_with(&cut.content));
    }

    #[tokio::test(start_paused = true)]
    async fn barge_in_stops_playback_at_once_and_cuts_the_greeting() {
        // The caller talks over the greeting from 500 ms on.
        let (out, end) = drive(
            session(&["a small pizza"]),
            &[(false, 500), (true, 800), (false, 3000)],
        )
        .await;
        let clear = first(&out, &Out::Clear).expect("playback cleared");
        // 400 ms of voice from 500 ms: the barge-in is on the frame that
        // ends at 900 ms; the pacer drops the rest by its next slot.
        assert_eq!(clear, Duration::from_millis(900));
        let greeting_frames = out
            .iter()
            .filter(|(t, o)| *o == Out::Audio && *t < clear)
            .count();
        assert_eq!(greeting_frames, 44, "every slot from 20 to 880 ms");
        let conv = &end.conversation;
        assert_eq!(conv.messages[0].role, Role::Assistant);
        assert!(conv.messages[0].interrupted);
        assert!(
            "Pizza Palace, what can I get you?".starts_with(&conv.messages[0].content),
            "{:?}",
            conv.messages[0].content
        );
        assert_eq!(conv.messages[1].content, "a small pizza");
        assert_eq!(conv.messages[2].content, "One small pizza. Bye!");
        // The transcript keeps what was meant and what was heard.
        let cut = end
            .said
            .iter()
            .find(|s| s.interrupted)
            .expect("an interrupted line");
        assert_eq!(cut.text, "Pizza Palace, what can I get you?");
        assert_eq!(
            cut.heard.as_deref(),
            Some(conv.messages[0].content.as_str())
        );
        assert_eq!(cut.end, clear);
    }

    #[tokio::test(start_paused = true)]
    async fn the_end_of_the_call_cuts_the_reply_in_the_transcript() {
        // The call ends 600 ms into the 1.32 s greeting.
        let (out, end) = drive(session(&[]), &[(false, 600)]).await;
        let cut = end.said.last().expect("a line");
        assert!(cut.interrupted);
        let heard = cut.heard.as_deref().unwrap();
        assert!(!heard.is_empty() && cut.text.starts_with(heard) && heard.len() < cut.text.len());
        assert_eq!(count(&out, &Out::Clear), 0);
        assert_eq!(end.conversation.messages[0].content, heard);
    }

    #[tokio::test(start_paused = true)]
    async fn outbound_greeting_waits_for_the_callee_or_the_timeout() {
        let waiting = |lines: &[&str]| AgentSession {
            config: SessionConfig {
                greeting: Greeting::AfterCallee(Duration::from_secs(2)),
                ..SessionConfig::default()
            },
            ..session(lines)
        };
        // Nobody speaks: the greeting starts at the timeout.
        let (out, end) = drive(waiting(&[]), &[(false, 4000)]).await;
        let at = first(&out, &Out::Audio).expect("some audio");
        assert!(
            at >= Duration::from_secs(2) && at <= Duration::from_millis(2040),
            "{at:?}"
        );
        assert_eq!(
            end.conversation.messages[0].content,
            "Pizza Palace, what can I get you?"
        );
        // "Hello?" from 500 ms to 1.1 s: the greeting follows its end of
        // turn (500 ms of silence later, seen on the frame that starts at
        // 1.58 s), before the timeout.
        let (out, end) = drive(
            waiting(&["hello"]),
            &[(false, 500), (true, 600), (false, 3000)],
        )
        .await;
        let at = first(&out, &Out::Audio).expect("some audio");
        assert!(
            at >= Duration::from_millis(1580) && at < Duration::from_secs(2),
            "{at:?}"
        );
        assert_eq!(
            end.conversation.messages.len(),
            1,
            "{:?}",
            end.conversation.messages
        );
        assert_eq!(end.said[0].text, "hello");
        assert_eq!(end.said[1].role, Role::Assistant);
    }
}
