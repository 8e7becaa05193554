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
//! answer, on a call) or when [`AgentSession::run`] is called; frame times, transcript
//! offsets and latencies are all on that clock. Each reply keeps when the
//! caller stopped speaking (or pressed a key), when STT gave its final
//! text, when the brain's first token and TTS's first frame came, and
//! when the first frame went to the call layer: the per-turn latency
//! ([`TurnLatency`], exported as `agentline_agent_turn_latency_seconds`).
//!
//! Every loop here ends: the session ends when its input channel closes,
//! a reply task when its brain and TTS streams end.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};

use super::brain::{Action, Brain, BrainEvent, Conversation, Input, Message, Role};
use super::chunker::Chunker;
use super::providers::{ProviderError, Stt, SttStream, Tts};
use super::turn::{FRAME, Playback, PlaybackLedger, TurnConfig, TurnEvent, TurnTaker};
use crate::metrics::{AGENT_PIPELINE_OVERHEAD_SECONDS, AGENT_TURN_LATENCY_SECONDS};

/// Frames handed out at once when a reply starts playing: the call layer's
/// RTP pacer then holds one frame ahead of our 20 ms tick and does not run
/// dry when the two clocks drift by a few milliseconds.
const LEAD_FRAMES: usize = 2;
/// Pieces of a reply whose synthesis may run ahead of the one playing.
const TTS_AHEAD: usize = 2;

/// How long STT may take to finalise a turn by default. Generous: the wait
/// holds nothing up, and a loaded machine's recognizer can lag by seconds
/// (a turn given up on gets no reply at all).
pub const DEFAULT_STT_FINAL_TIMEOUT: Duration = Duration::from_secs(5);

/// What the call layer feeds the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionInput {
    /// A 20 ms frame of the caller's audio (8 kHz); `at` is when it reached
    /// the call layer, on the session's clock.
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
    Said(Said),
}

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
    /// The first frame handed to the call layer (RTP goes out on the
    /// pacer's next 20 ms slot; the call layer measures that).
    pub first_frame_out: Option<Duration>,
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
    /// The session's clock starts here (the call layer's answer, which
    /// also times the frames it feeds); `None`: when `run` is called.
    pub epoch: Option<Instant>,
}

/// What a reply task reports.
enum ReplyMsg {
    /// The brain's first text.
    FirstToken,
    Frame(Vec<i16>),
    Spoken(String, Duration),
    /// The brain is done; this is the conversation with the turn recorded.
    Recorded(Conversation, Vec<Action>),
    Failed(String),
    /// The last frame has been queued.
    Done,
}

/// When the steps of one reply happened, on the session's clock.
#[derive(Debug, Clone, Copy, Default)]
struct Marks {
    /// The end of the caller's speech, or the key press, being answered.
    since: Option<Duration>,
    stt_final: Option<Duration>,
    first_token: Option<Duration>,
    first_audio: Option<Duration>,
    first_out: Option<Duration>,
    last_out: Option<Duration>,
}

impl Marks {
    fn latency(&self) -> Option<TurnLatency> {
        let since = self.since?;
        let after = |t: Option<Duration>| t.map(|t| t.saturating_sub(since));
        let latency = TurnLatency {
            stt_final: after(self.stt_final),
            llm_first_token: after(self.first_token),
            tts_first_audio: after(self.first_audio),
            first_frame_out: after(self.first_out),
        };
        for (stage, value) in [
            ("stt_final", latency.stt_final),
            ("llm_first_token", latency.llm_first_token),
            ("tts_first_audio", latency.tts_first_audio),
            ("first_frame_out", latency.first_frame_out),
        ] {
            if let Some(v) = value {
                metrics::histogram!(AGENT_TURN_LATENCY_SECONDS, "stage" => stage)
                    .record(v.as_secs_f64());
            }
        }
        Some(latency)
    }
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
    marks: Marks,
}

/// The agent on a call.
pub struct AgentSession {
    pub brain: Arc<dyn Brain>,
    pub stt: Arc<dyn Stt>,
    pub tts: Arc<dyn Tts>,
    pub config: SessionConfig,
}

/// The mutable state of a running session.
struct Playout {
    queue: VecDeque<Vec<i16>>,
    ledger: PlaybackLedger,
    /// How much of the current reply has been handed out.
    played: Duration,
    /// When the current run of frames would have started had it always
    /// been on time: frames are handed out by this clock, not by counting
    /// ticks, so a late tick is caught up and never drifts.
    base: Option<Instant>,
}

impl Playout {
    fn reset(&mut self) {
        self.ledger.clear();
        self.played = Duration::ZERO;
        self.base = None;
    }

    /// How many frames to hand out now: those due by the clock, keeping
    /// [`LEAD_FRAMES`] ahead. After a gap (TTS slower than real time, the
    /// call layer's queue ran dry) a new run starts with the lead again
    /// rather than a burst.
    fn due(&mut self, now: Instant) -> usize {
        let handed = (self.played.as_millis() / FRAME.as_millis()) as usize;
        let restart = now.checked_sub(self.played).unwrap_or(now);
        let base = *self.base.get_or_insert(restart);
        let elapsed =
            (now.saturating_duration_since(base).as_millis() / FRAME.as_millis()) as usize;
        let due = (elapsed + LEAD_FRAMES).saturating_sub(handed);
        if due > LEAD_FRAMES + 1 || self.played.is_zero() {
            self.base = Some(restart);
            return LEAD_FRAMES;
        }
        due
    }
}

/// Frames kept while the recognizer opens (5 s); older ones are dropped.
const EARLY_FRAMES: usize = 250;

type Opening = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Box<dyn SttStream>, ProviderError>> + Send>,
>;

/// The call's recognition stream: opening (frames are kept and sent once
/// it is open), open, or gone (the agent answers DTMF only).
struct Recognizer {
    opening: Option<Opening>,
    stream: Option<Box<dyn SttStream>>,
    early: VecDeque<Vec<i16>>,
}

impl Recognizer {
    fn opening(stt: Arc<dyn Stt>) -> Self {
        Recognizer {
            opening: Some(Box::pin(async move { stt.open().await })),
            stream: None,
            early: VecDeque::new(),
        }
    }

    fn is_opening(&self) -> bool {
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
    async fn ready(&mut self, opened: Result<Box<dyn SttStream>, ProviderError>) {
        self.opening = None;
        match opened {
            Ok(stream) => {
                self.stream = Some(stream);
                let early = std::mem::take(&mut self.early);
                for frame in early {
                    if !self.push(&frame).await {
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

    /// Sends a frame (or keeps it while opening); whether it was sent.
    async fn push(&mut self, frame: &[i16]) -> bool {
        if let Some(s) = self.stream.as_mut() {
            if let Err(e) = s.push(frame).await {
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
            self.early.push_back(frame.to_vec());
        }
        false
    }

    /// The caller's turn ended: asks the stream (waiting up to `limit` for
    /// one still opening) to finalise it; whether a final text will come.
    async fn end_of_turn(&mut self, limit: Duration) -> bool {
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
    async fn next_event(&mut self, deadline: Option<Instant>) -> SttEvent {
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
enum SttEvent {
    Opened(Result<Box<dyn SttStream>, ProviderError>),
    Final(Option<String>),
}

/// A caller's turn waiting for its final text.
#[derive(Debug, Clone, Copy)]
struct Awaiting {
    start: Duration,
    end: Duration,
    deadline: Instant,
}

impl AgentSession {
    /// Runs until `input` closes; answers the conversation (the call's
    /// transcript and the brain's final state).
    pub async fn run(
        self,
        mut input: mpsc::Receiver<SessionInput>,
        out: mpsc::Sender<SessionOutput>,
    ) -> Conversation {
        let epoch = self.config.epoch.unwrap_or_else(Instant::now);
        let now = || epoch.elapsed();
        // The recognizer opens while the greeting plays (a cold one loads
        // its model for about half a second).
        let mut stt = Recognizer::opening(self.stt.clone());
        let mut turn = TurnTaker::new(self.config.turn.clone());
        let mut conv = Conversation::default();
        let mut p = Playout {
            queue: VecDeque::new(),
            ledger: PlaybackLedger::default(),
            played: Duration::ZERO,
            base: None,
        };
        // Set while the agent waits to greet.
        let mut greet_at = match self.config.greeting {
            Greeting::Now => None,
            Greeting::AfterCallee(wait) => Some(epoch + wait),
        };
        let mut reply = greet_at
            .is_none()
            .then(|| self.start(&conv, None, Marks::default()));
        let mut speech_start: Option<Duration> = None;
        // The caller's turn whose final text STT owes us.
        let mut awaiting: Option<Awaiting> = None;
        let mut tick = tokio::time::interval(FRAME);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        'session: loop {
            // A finished reply's channel is closed: stop polling it.
            let replying = reply.as_ref().is_some_and(|r| !r.done);
            // The greeting waits while the callee is speaking.
            let greet_wait = greet_at.filter(|_| !turn.caller_speaking());
            tokio::select! {
                msg = async { reply.as_mut()?.rx.recv().await }, if replying => {
                    let Some(r) = reply.as_mut() else { continue };
                    match msg {
                        Some(ReplyMsg::FirstToken) => {
                            r.marks.first_token.get_or_insert(now());
                        }
                        Some(ReplyMsg::Frame(f)) => {
                            r.marks.first_audio.get_or_insert(now());
                            if p.queue.is_empty() && p.played.is_zero() {
                                // A new run of audio goes out now, not on the
                                // next 20 ms boundary of an idle clock.
                                tick.reset_immediately();
                            }
                            p.queue.push_back(f);
                        }
                        Some(ReplyMsg::Spoken(text, d)) => {
                            p.ledger.push(&text, d);
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
                event = stt.next_event(awaiting.map(|a| a.deadline)), if stt.is_opening() || awaiting.is_some() => {
                    let text = match event {
                        SttEvent::Opened(opened) => {
                            stt.ready(opened).await;
                            continue;
                        }
                        SttEvent::Final(text) => text,
                    };
                    let Some(Awaiting { start, end, .. }) = awaiting.take() else { continue };
                    let stt_final = now();
                    let greeting = greet_at.take().is_some();
                    if let Some(text) = text {
                        self.interrupt(&mut reply, &mut conv, &mut p, None, &out, stt_final).await;
                        let _ = out.send(SessionOutput::Said(Said {
                            role: Role::User,
                            text: text.clone(),
                            start,
                            end,
                            interrupted: false,
                            heard: None,
                            latency: None,
                        })).await;
                        let marks = Marks {
                            since: Some(end),
                            stt_final: Some(stt_final),
                            ..Marks::default()
                        };
                        // The callee's "Hello?" is answered with the greeting.
                        let input = (!greeting).then_some(Input::Text(text));
                        reply = Some(self.start(&conv, input, marks));
                        p.reset();
                    } else if greeting {
                        reply = Some(self.start(&conv, None, Marks::default()));
                    }
                }
                _ = tick.tick(), if !p.queue.is_empty() => {
                    for _ in 0..p.due(Instant::now()) {
                        let Some(frame) = p.queue.pop_front() else { break };
                        if let Some(r) = reply.as_mut() {
                            let t = now();
                            r.marks.first_out.get_or_insert(t);
                            r.marks.last_out = Some(t);
                        }
                        p.played += FRAME;
                        if out.send(SessionOutput::Audio(frame)).await.is_err() {
                            break 'session;
                        }
                    }
                }
                () = sleep_until(greet_wait.unwrap_or(epoch)), if greet_wait.is_some() => {
                    greet_at = None;
                    reply = Some(self.start(&conv, None, Marks::default()));
                }
                next = input.recv() => {
                    let Some(next) = next else { break };
                    let playing = !p.queue.is_empty();
                    match next {
                        SessionInput::Dtmf(d) => {
                            greet_at = None;
                            let at = now();
                            let pressed = Input::Dtmf(d);
                            // The transcript stays in order: the cut reply first.
                            self.interrupt(&mut reply, &mut conv, &mut p, None, &out, at).await;
                            let _ = out.send(SessionOutput::Said(Said {
                                role: Role::User,
                                text: pressed.as_history(),
                                start: at,
                                end: at,
                                interrupted: false,
                                heard: None,
                                latency: None,
                            })).await;
                            let marks = Marks { since: Some(at), ..Marks::default() };
                            reply = Some(self.start(&conv, Some(pressed), marks));
                            p.reset();
                        }
                        SessionInput::Frame { at, pcm } => {
                            if stt.push(&pcm).await {
                                metrics::histogram!(AGENT_PIPELINE_OVERHEAD_SECONDS, "path" => "rtp_in_to_stt")
                                    .record(now().saturating_sub(at).as_secs_f64());
                            }
                            let playback = if playing {
                                Playback::Playing { played: p.played }
                            } else {
                                Playback::Idle
                            };
                            match turn.push(at, &pcm, playback) {
                                Some(TurnEvent::SpeechStarted { at }) => speech_start = Some(at),
                                Some(TurnEvent::Backchannel { .. }) => speech_start = None,
                                Some(TurnEvent::BargeIn { heard_ms, start, .. }) => {
                                    speech_start.get_or_insert(start);
                                    self.interrupt(&mut reply, &mut conv, &mut p, Some(heard_ms), &out, now()).await;
                                    p.reset();
                                }
                                Some(TurnEvent::EndOfTurn { at: end, .. }) => {
                                    let start = speech_start.take().unwrap_or(end);
                                    if stt.end_of_turn(self.final_limit()).await {
                                        // The final text is awaited in the loop: playback
                                        // and barge-in go on meanwhile.
                                        awaiting = Some(Awaiting {
                                            start,
                                            end,
                                            deadline: Instant::now() + self.final_limit(),
                                        });
                                    } else if greet_at.take().is_some() {
                                        reply = Some(self.start(&conv, None, Marks::default()));
                                    }
                                }
                                None => {}
                            }
                        }
                    }
                }
            }
            // A reply that is complete and fully played: record it, then act.
            if p.queue.is_empty() && reply.as_ref().is_some_and(|r| r.done) {
                if let Some(r) = reply.take() {
                    conv = r.recorded.clone().unwrap_or(r.before.clone());
                    if !r.text.is_empty() {
                        let end = r.marks.last_out.map_or_else(now, |t| t + FRAME);
                        let _ = out
                            .send(SessionOutput::Said(Said {
                                role: Role::Assistant,
                                text: r.text.clone(),
                                start: r.marks.first_out.unwrap_or(end),
                                end,
                                interrupted: false,
                                heard: None,
                                latency: r.marks.latency(),
                            }))
                            .await;
                    }
                    for a in r.actions {
                        let _ = out.send(SessionOutput::Action(a)).await;
                    }
                }
                p.reset();
            }
        }
        // The call ended mid-reply: the transcript keeps what was played,
        // cut short like a barge-in (nothing is left to clear).
        p.queue.clear();
        self.interrupt(&mut reply, &mut conv, &mut p, None, &out, now())
            .await;
        conv
    }

    /// How long STT may take to give the final text of a turn.
    fn final_limit(&self) -> Duration {
        if self.config.stt_final_timeout.is_zero() {
            DEFAULT_STT_FINAL_TIMEOUT
        } else {
            self.config.stt_final_timeout
        }
    }

    /// Stops the reply in flight (if any) after `heard_ms` of its audio
    /// (default: all it handed out), at `at` on the session's clock.
    async fn interrupt(
        &self,
        reply: &mut Option<Reply>,
        conv: &mut Conversation,
        p: &mut Playout,
        heard_ms: Option<u64>,
        out: &mpsc::Sender<SessionOutput>,
        at: Duration,
    ) {
        let Some(r) = reply.take() else { return };
        r.task.abort();
        let heard_ms = heard_ms.unwrap_or(p.played.as_millis() as u64);
        let had_audio = !p.queue.is_empty();
        p.queue.clear();
        if had_audio {
            metrics::counter!(crate::metrics::AGENT_BARGE_INS_TOTAL).increment(1);
            let _ = out.send(SessionOutput::ClearAudio).await;
        }
        let heard = p.ledger.heard(heard_ms);
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
        if let Some(start) = r.marks.first_out {
            let _ = out
                .send(SessionOutput::Said(Said {
                    role: Role::Assistant,
                    text: r.text,
                    start,
                    end: at,
                    interrupted: true,
                    heard: Some(heard),
                    latency: r.marks.latency(),
                }))
                .await;
        }
    }

    /// Starts a reply: the greeting when `input` is `None`.
    fn start(&self, conv: &Conversation, input: Option<Input>, marks: Marks) -> Reply {
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
        Reply {
            task,
            rx,
            before: conv.clone(),
            input,
            recorded: None,
            actions: Vec::new(),
            text: String::new(),
            done: false,
            marks,
        }
    }
}

/// Forwards one piece's audio: its frames, then its text with its length.
async fn forward(
    piece: &str,
    audio: Result<super::providers::Audio, ProviderError>,
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
        let said: Vec<&Said> = out
            .iter()
            .filter_map(|(_, o)| match o {
                SessionOutput::Said(s) => Some(s),
                _ => None,
            })
            .collect();
        assert_eq!(said.len(), 3, "{said:?}");
        assert_eq!(said[1].role, Role::User);
        assert_eq!(said[1].text, "a large pizza please");
        // The greeting played from the start, 33 chars at 40 ms.
        assert_eq!(said[0].start, Duration::ZERO);
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
        assert!(latency.stt_final.is_some() && latency.first_frame_out.is_some());
        assert!(latency.first_frame_out >= latency.tts_first_audio);
        assert!(!said[2].interrupted);
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
        // The transcript keeps what was meant and what was heard.
        let cut = out
            .iter()
            .find_map(|(_, o)| match o {
                SessionOutput::Said(s) if s.interrupted => Some(s),
                _ => None,
            })
            .expect("an interrupted line");
        assert_eq!(cut.text, "Pizza Palace, what can I get you?");
        assert_eq!(
            cut.heard.as_deref(),
            Some(conv.messages[0].content.as_str())
        );
        assert_eq!(cut.end, at);
    }

    #[test]
    fn frames_go_out_by_the_clock_with_a_lead_and_no_burst_after_a_gap() {
        let mut p = Playout {
            queue: VecDeque::new(),
            ledger: PlaybackLedger::default(),
            played: Duration::ZERO,
            base: None,
        };
        let t0 = Instant::now();
        let hand = |p: &mut Playout, at: Duration| {
            let n = p.due(t0 + at);
            p.played += FRAME * n as u32;
            n
        };
        assert_eq!(hand(&mut p, Duration::ZERO), LEAD_FRAMES);
        assert_eq!(hand(&mut p, FRAME), 1);
        // A tick 20 ms late catches up.
        assert_eq!(hand(&mut p, FRAME * 3), 2);
        assert_eq!(hand(&mut p, FRAME * 4), 1);
        // A second without audio: a new run starts with the lead only.
        assert_eq!(hand(&mut p, FRAME * 54), LEAD_FRAMES);
        assert_eq!(hand(&mut p, FRAME * 55), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_end_of_the_call_cuts_the_reply_in_the_transcript() {
        // The call ends 600 ms into the 1.32 s greeting.
        let (out, conv) = drive(session(&[]), &[(false, 600)]).await;
        let (_, last) = out.last().expect("outputs");
        let SessionOutput::Said(cut) = last else {
            panic!("{last:?}")
        };
        assert!(cut.interrupted);
        let heard = cut.heard.as_deref().unwrap();
        assert!(!heard.is_empty() && cut.text.starts_with(heard) && heard.len() < cut.text.len());
        assert!(!out.iter().any(|(_, o)| *o == SessionOutput::ClearAudio));
        assert_eq!(conv.messages[0].content, heard);
    }

    fn first_audio(outputs: &[(Duration, SessionOutput)]) -> Duration {
        outputs
            .iter()
            .find(|(_, o)| matches!(o, SessionOutput::Audio(_)))
            .map(|(t, _)| *t)
            .expect("some audio")
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
        let (out, conv) = drive(waiting(&[]), &[(false, 4000)]).await;
        let at = first_audio(&out);
        assert!(
            at >= Duration::from_secs(2) && at <= Duration::from_millis(2040),
            "{at:?}"
        );
        assert_eq!(
            conv.messages[0].content,
            "Pizza Palace, what can I get you?"
        );
        // "Hello?" from 500 ms to 1.1 s: the greeting follows its end of
        // turn (500 ms of silence later, seen on the frame that starts at
        // 1.58 s), before the timeout.
        let (out, conv) = drive(
            waiting(&["hello"]),
            &[(false, 500), (true, 600), (false, 3000)],
        )
        .await;
        let at = first_audio(&out);
        assert!(
            at >= Duration::from_millis(1580) && at < Duration::from_secs(2),
            "{at:?}"
        );
        assert_eq!(conv.messages.len(), 1, "{:?}", conv.messages);
        let said: Vec<&Said> = out
            .iter()
            .filter_map(|(_, o)| match o {
                SessionOutput::Said(s) => Some(s),
                _ => None,
            })
            .collect();
        assert_eq!(said[0].text, "hello");
        assert_eq!(said[1].role, Role::Assistant);
    }
}
