//! The agent on one call, as a task between two channels: caller audio and
//! DTMF in ([`SessionInput`]), agent audio, actions and transcript lines out
//! ([`SessionOutput`]). The call layer only moves frames between RTP and
//! these channels; everything about turns lives here.
//!
//! One reply at a time runs in its own task: the brain streams text, the
//! [`Chunker`] cuts it, TTS turns each piece into frames, and the session
//! plays the queued frames out one per 20 ms tick (so it knows exactly what
//! has been played). On [`TurnEvent::BargeIn`] the session stops at once:
//! it aborts the reply task (dropping the LLM stream, any tool request and
//! the TTS stream), clears the queue, tells the call layer to drop what it
//! holds ([`SessionOutput::ClearAudio`]) and cuts the agent's last message
//! to what the caller heard. Actions run after the reply has played.
//!
//! Every loop here ends: the session ends when its input channel closes,
//! a reply task when its brain and TTS streams end.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::brain::{Action, Brain, BrainEvent, Conversation, Input, Message, Role};
use super::chunker::Chunker;
use super::providers::{Stt, SttStream, Tts};
use super::turn::{FRAME, Playback, PlaybackLedger, TurnConfig, TurnEvent, TurnTaker};

/// What the call layer feeds the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionInput {
    /// A 20 ms frame of the caller's audio (8 kHz) starting at `at`.
    Frame { at: Duration, pcm: Vec<i16> },
    /// DTMF digits the caller pressed.
    Dtmf(String),
}

/// What the session asks of the call layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOutput {
    /// Play this 20 ms frame now.
    Audio(Vec<i16>),
    /// Barge-in: drop any agent audio not yet sent.
    ClearAudio,
    /// Run this after the audio before it has played.
    Action(Action),
    /// A transcript line (the caller's turn, or the agent's reply as heard).
    Said { role: Role, text: String },
}

/// Settings of a session.
#[derive(Debug, Clone, Default)]
pub struct SessionConfig {
    pub turn: TurnConfig,
    /// How long to wait for STT's final text after the end of a turn
    /// (default 2 s when zero).
    pub stt_final_timeout: Duration,
}

/// What a reply task reports.
enum ReplyMsg {
    Frame(Vec<i16>),
    Spoken(String, Duration),
    /// The brain is done; this is the conversation with the turn recorded.
    Recorded(Conversation, Vec<Action>),
    Failed(String),
    /// The last frame has been queued.
    Done,
}

/// A reply in flight.
struct Reply {
    task: JoinHandle<()>,
    rx: mpsc::UnboundedReceiver<ReplyMsg>,
    /// The conversation before the reply, and the input it answers.
    before: Conversation,
    input: Option<Input>,
    recorded: Option<Conversation>,
    actions: Vec<Action>,
    text: String,
    done: bool,
}

/// The agent on a call.
pub struct AgentSession {
    pub brain: Arc<dyn Brain>,
    pub stt: Arc<dyn Stt>,
    pub tts: Arc<dyn Tts>,
    pub config: SessionConfig,
}

impl AgentSession {
    /// Runs until `input` closes; answers the conversation (the call's
    /// transcript and the brain's final state).
    pub async fn run(
        self,
        mut input: mpsc::Receiver<SessionInput>,
        out: mpsc::Sender<SessionOutput>,
    ) -> Conversation {
        let mut stt = match self.stt.open().await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "STT unavailable; the agent answers DTMF only");
                None
            }
        };
        let mut turn = TurnTaker::new(self.config.turn.clone());
        let mut conv = Conversation::default();
        let mut queue: VecDeque<Vec<i16>> = VecDeque::new();
        let mut ledger = PlaybackLedger::default();
        let mut played = Duration::ZERO;
        let mut reply = Some(self.start(&conv, None));
        let mut tick = tokio::time::interval(FRAME);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // A finished reply's channel is closed: stop polling it.
            let replying = reply.as_ref().is_some_and(|r| !r.done);
            tokio::select! {
                msg = async { reply.as_mut()?.rx.recv().await }, if replying => {
                    let Some(r) = reply.as_mut() else { continue };
                    match msg {
                        Some(ReplyMsg::Frame(f)) => queue.push_back(f),
                        Some(ReplyMsg::Spoken(text, d)) => {
                            ledger.push(&text, d);
                            if !r.text.is_empty() {
                                r.text.push(' ');
                            }
                            r.text.push_str(&text);
                        }
                        Some(ReplyMsg::Recorded(c, actions)) => {
                            r.recorded = Some(c);
                            r.actions = actions;
                        }
                        Some(ReplyMsg::Failed(e)) => {
                            tracing::warn!(error = %e, "the agent's reply failed");
                            r.done = true;
                        }
                        Some(ReplyMsg::Done) | None => r.done = true,
                    }
                }
                _ = tick.tick(), if !queue.is_empty() => {
                    if let Some(frame) = queue.pop_front() {
                        played += FRAME;
                        if out.send(SessionOutput::Audio(frame)).await.is_err() {
                            break;
                        }
                    }
                }
                next = input.recv() => {
                    let Some(next) = next else { break };
                    let playing = !queue.is_empty();
                    let event = match next {
                        SessionInput::Dtmf(d) => {
                            self.interrupt(&mut reply, &mut conv, &mut queue, &ledger, played, &out).await;
                            reply = Some(self.start(&conv, Some(Input::Dtmf(d))));
                            ledger.clear();
                            played = Duration::ZERO;
                            continue;
                        }
                        SessionInput::Frame { at, pcm } => {
                            if let Some(s) = stt.as_mut()
                                && let Err(e) = s.push(&pcm).await
                            {
                                tracing::warn!(error = %e, "STT failed");
                                stt = None;
                            }
                            let playback = if playing {
                                Playback::Playing { played }
                            } else {
                                Playback::Idle
                            };
                            turn.push(at, &pcm, playback)
                        }
                    };
                    match event {
                        Some(TurnEvent::BargeIn { heard_ms, .. }) => {
                            self.interrupt_heard(&mut reply, &mut conv, &mut queue, &ledger, heard_ms, &out).await;
                            ledger.clear();
                            played = Duration::ZERO;
                        }
                        Some(TurnEvent::EndOfTurn { .. }) => {
                            let text = match stt.as_mut() {
                                Some(s) => self.final_text(s.as_mut()).await,
                                None => None,
                            };
                            if let Some(text) = text {
                                let _ = out.send(SessionOutput::Said { role: Role::User, text: text.clone() }).await;
                                self.interrupt(&mut reply, &mut conv, &mut queue, &ledger, played, &out).await;
                                reply = Some(self.start(&conv, Some(Input::Text(text))));
                                ledger.clear();
                                played = Duration::ZERO;
                            }
                        }
                        _ => {}
                    }
                }
            }
            // A reply that is complete and fully played: record it, then act.
            if queue.is_empty() && reply.as_ref().is_some_and(|r| r.done) {
                if let Some(r) = reply.take() {
                    conv = r.recorded.clone().unwrap_or(r.before.clone());
                    if !r.text.is_empty() {
                        let _ = out
                            .send(SessionOutput::Said {
                                role: Role::Assistant,
                                text: r.text.clone(),
                            })
                            .await;
                    }
                    for a in r.actions {
                        let _ = out.send(SessionOutput::Action(a)).await;
                    }
                }
                ledger.clear();
                played = Duration::ZERO;
            }
        }
        if let Some(r) = reply.take() {
            r.task.abort();
            conv = r.recorded.unwrap_or(r.before);
        }
        conv
    }

    /// Waits (bounded) for STT's final text of the turn that just ended.
    async fn final_text(&self, stt: &mut dyn SttStream) -> Option<String> {
        if let Err(e) = stt.end_of_turn().await {
            tracing::warn!(error = %e, "STT failed");
            return None;
        }
        let limit = if self.config.stt_final_timeout.is_zero() {
            Duration::from_secs(2)
        } else {
            self.config.stt_final_timeout
        };
        let deadline = tokio::time::Instant::now() + limit;
        // Bounded by the deadline: partial transcripts are skipped.
        loop {
            match tokio::time::timeout_at(deadline, stt.next()).await {
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

    /// Stops the reply in flight (if any) at `played` of its audio.
    async fn interrupt(
        &self,
        reply: &mut Option<Reply>,
        conv: &mut Conversation,
        queue: &mut VecDeque<Vec<i16>>,
        ledger: &PlaybackLedger,
        played: Duration,
        out: &mpsc::Sender<SessionOutput>,
    ) {
        let heard_ms = played.as_millis() as u64;
        self.interrupt_heard(reply, conv, queue, ledger, heard_ms, out)
            .await;
    }

    async fn interrupt_heard(
        &self,
        reply: &mut Option<Reply>,
        conv: &mut Conversation,
        queue: &mut VecDeque<Vec<i16>>,
        ledger: &PlaybackLedger,
        heard_ms: u64,
        out: &mpsc::Sender<SessionOutput>,
    ) {
        let Some(r) = reply.take() else { return };
        r.task.abort();
        let had_audio = !queue.is_empty();
        queue.clear();
        if had_audio {
            metrics::counter!(crate::metrics::AGENT_BARGE_INS_TOTAL).increment(1);
            let _ = out.send(SessionOutput::ClearAudio).await;
        }
        let heard = ledger.heard(heard_ms);
        *conv = match r.recorded {
            Some(c) => c,
            None => {
                let mut c = r.before;
                if let Some(input) = &r.input {
                    c.messages.push(Message::user(input.as_history()));
                }
                c
            }
        };
        conv.record_interrupted(&heard);
        if !heard.is_empty() {
            let _ = out
                .send(SessionOutput::Said {
                    role: Role::Assistant,
                    text: heard,
                })
                .await;
        }
    }

    /// Starts a reply: the greeting when `input` is `None`.
    fn start(&self, conv: &Conversation, input: Option<Input>) -> Reply {
        let (tx, rx) = mpsc::unbounded_channel();
        let brain = self.brain.clone();
        let tts = self.tts.clone();
        let mut working = conv.clone();
        let task_input = input.clone();
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
            let speak = {
                let tx = tx.clone();
                async move {
                    let mut chunker = Chunker::default();
                    // Ends when the brain drops its sender.
                    while let Some(event) = ev_rx.recv().await {
                        if let BrainEvent::Delta(d) = event {
                            for piece in chunker.push(&d) {
                                speak(tts.as_ref(), &piece, &tx).await;
                            }
                        }
                    }
                    if let Some(piece) = chunker.finish() {
                        speak(tts.as_ref(), &piece, &tx).await;
                    }
                }
            };
            tokio::join!(think, speak);
            let _ = tx.send(ReplyMsg::Done);
        });
        Reply {
            task,
            rx,
            before: conv.clone(),
            input,
            recorded: None,
            actions: Vec::new(),
            text: String::new(),
            done: false,
        }
    }
}

/// Speaks one piece: its frames, then its text with its length.
async fn speak(tts: &dyn Tts, piece: &str, tx: &mpsc::UnboundedSender<ReplyMsg>) {
    match tts.speak(piece).await {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::brain::scripted::{ScriptedBrain, ScriptedDialogue};
    use crate::agent::providers::{ScriptedStt, ToneTts};
    use crate::agent::turn::FRAME_SAMPLES;

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

    /// Feeds `segments` of (voice?, ms) in real (paused) time and collects
    /// every output with the time it came.
    async fn drive(
        s: AgentSession,
        segments: &[(bool, u64)],
    ) -> (Vec<(Duration, SessionOutput)>, Conversation) {
        let (in_tx, in_rx) = mpsc::channel(64);
        let (out_tx, mut out_rx) = mpsc::channel(1024);
        let started = tokio::time::Instant::now();
        let run = tokio::spawn(s.run(in_rx, out_tx));
        let collect = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(o) = out_rx.recv().await {
                got.push((started.elapsed(), o));
            }
            got
        });
        let mut n = 0;
        for &(v, ms) in segments {
            for _ in 0..ms / 20 {
                let pcm = if v { voice(n) } else { vec![0; FRAME_SAMPLES] };
                let at = FRAME * n as u32;
                in_tx.send(SessionInput::Frame { at, pcm }).await.unwrap();
                n += 1;
                tokio::time::sleep_until(started + FRAME * n as u32).await;
            }
        }
        drop(in_tx);
        let conv = run.await.unwrap();
        (collect.await.unwrap(), conv)
    }

    fn audio_frames(outputs: &[(Duration, SessionOutput)]) -> usize {
        outputs
            .iter()
            .filter(|(_, o)| matches!(o, SessionOutput::Audio(_)))
            .count()
    }

    #[tokio::test(start_paused = true)]
    async fn greets_listens_answers_and_acts_after_playing() {
        // Greeting: 33 chars at 40 ms = 1.32 s. Then a 1 s turn, silence.
        let (out, conv) = drive(
            session(&["a large pizza please"]),
            &[(false, 2000), (true, 1000), (false, 3000)],
        )
        .await;
        let said: Vec<&SessionOutput> = out
            .iter()
            .map(|(_, o)| o)
            .filter(|o| matches!(o, SessionOutput::Said { .. }))
            .collect();
        assert_eq!(said.len(), 3, "{said:?}");
        assert_eq!(
            said[1],
            &SessionOutput::Said {
                role: Role::User,
                text: "a large pizza please".into()
            }
        );
        // The hang-up comes after the reply's last frame.
        let last_audio = out
            .iter()
            .rposition(|(_, o)| matches!(o, SessionOutput::Audio(_)))
            .unwrap();
        let hangup = out
            .iter()
            .position(|(_, o)| *o == SessionOutput::Action(Action::Hangup))
            .unwrap();
        assert!(hangup > last_audio);
        assert_eq!(conv.messages.len(), 3);
        assert_eq!(conv.messages[2].content, "One large pizza. Bye!");
        assert!(!out.iter().any(|(_, o)| *o == SessionOutput::ClearAudio));
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
        let (out, conv) = drive(s, &[(true, 600), (false, 1000), (true, 800), (false, 1000)]).await;
        assert!(
            dropped.load(std::sync::atomic::Ordering::SeqCst),
            "LLM not cancelled"
        );
        assert!(out.iter().any(|(_, o)| *o == SessionOutput::ClearAudio));
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
        let (out, conv) = drive(
            session(&["a small pizza"]),
            &[(false, 500), (true, 800), (false, 3000)],
        )
        .await;
        let clear = out
            .iter()
            .position(|(_, o)| *o == SessionOutput::ClearAudio)
            .expect("playback cleared");
        let (at, _) = out[clear];
        // 400 ms of voice from 500 ms: the barge-in is at 900 ms, a frame or
        // two of scheduling later at most.
        assert!(
            at >= Duration::from_millis(880) && at <= Duration::from_millis(960),
            "{at:?}"
        );
        // No greeting audio after the clear until the next reply.
        let greeting_frames = audio_frames(&out[..clear]);
        assert!((40..=48).contains(&greeting_frames), "{greeting_frames}");
        assert_eq!(conv.messages[0].role, Role::Assistant);
        assert!(conv.messages[0].interrupted);
        assert!(
            "Pizza Palace, what can I get you?".starts_with(&conv.messages[0].content),
            "{:?}",
            conv.messages[0].content
        );
        assert_eq!(conv.messages[1].content, "a small pizza");
        assert_eq!(conv.messages[2].content, "One small pizza. Bye!");
    }
}
