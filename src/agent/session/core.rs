//! The agent session's turn logic as a sans-IO core, like
//! [`crate::agent::turn`]: inputs and their times in, [`Effect`]s out. It
//! holds no clock and does no IO; the driver in [`super`] runs the reply
//! tasks, the recognizer and the media port, and feeds it what happened.
//!
//! Time is the session's clock (from the answer). Our audio's playout is
//! the media session's word ([`PortPlayout`], sample counts since the port
//! was attached): a reply's frames are handed over as soon as TTS makes
//! them, the media pacer plays them one 20 ms slot at a time, and the core
//! learns what has gone out from the caller frames and the
//! started/drained events that come back on the same clock. So a barge-in
//! cuts the reply at what was really sent, a reply's first RTP packet is
//! its own (a run is the reply's when the media session had received the
//! reply's first frame), and its actions run once the media session has
//! sent everything before them.
//!
//! Must not: await, spawn, or read a clock.

use std::time::Duration;

use super::{Greeting, Said, TurnLatency};
use crate::agent::brain::{Action, Conversation, Input, Message, Role};
use crate::agent::turn::{Playback, PlaybackLedger, TurnConfig, TurnEvent, TurnTaker};
use crate::media::{CLOCK_RATE, PortPlayout};
use crate::metrics::{
    AGENT_BARGE_INS_TOTAL, AGENT_PIPELINE_OVERHEAD_SECONDS, AGENT_TURN_LATENCY_SECONDS,
};

/// What the core asks the driver to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Effect {
    /// Start a reply task from `conv`: the greeting when `input` is `None`.
    Reply {
        conv: Conversation,
        input: Option<Input>,
    },
    /// Abort the reply task in flight.
    Abort,
    /// Hand this frame to the media session.
    Play(Vec<i16>),
    /// Drop our audio still queued in the media session.
    Clear,
    /// Ask STT for the final text of the caller's turn; answer with
    /// [`SessionCore::on_final`].
    EndOfTurn,
    /// A transcript line.
    Said(Said),
    /// Run this now: the audio before it has been sent.
    Action(Action),
}

/// What a reply task reports.
#[derive(Debug)]
pub(super) enum ReplyMsg {
    /// The brain's first text.
    FirstToken,
    Frame(Vec<i16>),
    Spoken(String, Duration),
    /// The brain is done; this is the conversation with the turn recorded.
    Recorded(Conversation, Vec<Action>),
    Failed(String),
    /// The last frame has been handed over.
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
    first_rtp: Option<Duration>,
}

impl Marks {
    /// The reply's latency, recorded in the metrics.
    fn latency(&self) -> Option<TurnLatency> {
        let since = self.since?;
        let after = |t: Option<Duration>| t.map(|t| t.saturating_sub(since));
        let latency = TurnLatency {
            stt_final: after(self.stt_final),
            llm_first_token: after(self.first_token),
            tts_first_audio: after(self.first_audio),
            first_frame_out: after(self.first_out),
            first_rtp: after(self.first_rtp),
        };
        for (stage, value) in [
            ("stt_final", latency.stt_final),
            ("llm_first_token", latency.llm_first_token),
            ("tts_first_audio", latency.tts_first_audio),
            ("first_frame_out", latency.first_frame_out),
            ("first_rtp", latency.first_rtp),
        ] {
            if let Some(v) = value {
                metrics::histogram!(AGENT_TURN_LATENCY_SECONDS, "stage" => stage)
                    .record(v.as_secs_f64());
            }
        }
        // The daemon's share: TTS's first frame to the wire.
        if let (Some(rtp), Some(tts)) = (self.first_rtp, self.first_audio) {
            metrics::histogram!(AGENT_PIPELINE_OVERHEAD_SECONDS, "path" => "tts_to_rtp_out")
                .record(rtp.saturating_sub(tts).as_secs_f64());
        }
        Some(latency)
    }
}

/// A reply in flight, until its audio has been sent.
#[derive(Debug)]
struct Reply {
    /// The conversation before the reply, and the input it answers.
    before: Conversation,
    input: Option<Input>,
    recorded: Option<Conversation>,
    actions: Vec<Action>,
    text: String,
    /// The reply task is done: every frame has been handed over.
    done: bool,
    marks: Marks,
    /// Samples handed to the media session before this reply's first
    /// frame; `None` until it has one.
    first_sample: Option<u64>,
    /// When the media session had sent (or cleared) every frame handed to
    /// it so far.
    drained_at: Option<Duration>,
}

/// The agent's turn logic on one call.
pub(super) struct SessionCore {
    turn: TurnTaker,
    conv: Conversation,
    /// Set while the agent waits to greet (outbound calls).
    greet_at: Option<Duration>,
    speech_start: Option<Duration>,
    /// The caller's turn (start, end) whose final text STT owes us.
    awaiting: Option<(Duration, Duration)>,
    reply: Option<Reply>,
    ledger: PlaybackLedger,
    /// Samples handed to the media session since the session began.
    handed: u64,
    /// The media session's latest word on our audio.
    playout: PortPlayout,
    effects: Vec<Effect>,
}

fn samples_to_duration(samples: u64) -> Duration {
    Duration::from_micros(samples.saturating_mul(1_000_000) / u64::from(CLOCK_RATE))
}

impl SessionCore {
    pub fn new(turn: TurnConfig) -> Self {
        SessionCore {
            turn: TurnTaker::new(turn),
            conv: Conversation::default(),
            greet_at: None,
            speech_start: None,
            awaiting: None,
            reply: None,
            ledger: PlaybackLedger::default(),
            handed: 0,
            playout: PortPlayout::default(),
            effects: Vec::new(),
        }
    }

    /// The effects asked for since the last call, in order.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// The conversation as it stands (the brain's state included).
    pub fn conversation(&self) -> &Conversation {
        &self.conv
    }

    /// The call the conversation is on (see [`Conversation::context`]).
    pub fn set_context(
        &mut self,
        context: Option<std::sync::Arc<crate::agent::brain::AgentContext>>,
    ) {
        self.conv.context = context;
    }

    /// The session starts at `now`: greet, or wait for the callee.
    pub fn start(&mut self, greeting: Greeting, now: Duration) {
        match greeting {
            Greeting::Now => self.start_reply(None, Marks::default()),
            Greeting::AfterCallee(wait) => self.greet_at = Some(now + wait),
        }
    }

    /// When to greet if nothing comes first: pending while the callee
    /// speaks.
    pub fn greet_deadline(&self) -> Option<Duration> {
        self.greet_at.filter(|_| !self.turn.caller_speaking())
    }

    pub fn on_greet_timeout(&mut self) {
        if self.greet_at.take().is_some() {
            self.start_reply(None, Marks::default());
        }
    }

    /// Whether the driver should read the reply task's messages.
    pub fn replying(&self) -> bool {
        self.reply.as_ref().is_some_and(|r| !r.done)
    }

    /// A caller frame that started at `at`, with the playout at that instant.
    pub fn on_frame(&mut self, at: Duration, pcm: &[i16], playout: PortPlayout) {
        self.observe(playout, at, false);
        match self.turn.push(at, pcm, self.playback()) {
            Some(TurnEvent::SpeechStarted { at }) => self.speech_start = Some(at),
            Some(TurnEvent::Backchannel { .. }) => self.speech_start = None,
            Some(TurnEvent::BargeIn {
                heard_ms,
                start,
                at,
                ..
            }) => {
                self.speech_start.get_or_insert(start);
                self.interrupt(Some(heard_ms), at);
            }
            Some(TurnEvent::EndOfTurn { at: end, .. }) => {
                let start = self.speech_start.take().unwrap_or(end);
                self.awaiting = Some((start, end));
                self.effects.push(Effect::EndOfTurn);
            }
            None => {}
        }
        self.settle(at);
    }

    /// A run of our audio started on the wire at `at`.
    pub fn on_started(&mut self, at: Duration, playout: PortPlayout) {
        // Ours when the media session had this reply's first frame: what
        // came before it was sent or cleared before it arrived.
        if let Some(r) = self.reply.as_mut()
            && let Some(first) = r.first_sample
            && playout.received > first
        {
            r.marks.first_rtp.get_or_insert(at);
        }
        self.observe(playout, at, false);
        self.settle(at);
    }

    /// The media session ran out of our audio at `at`.
    pub fn on_drained(&mut self, at: Duration, playout: PortPlayout) {
        self.observe(playout, at, true);
        self.settle(at);
    }

    /// The caller pressed `digits` at `now`.
    pub fn on_dtmf(&mut self, digits: String, now: Duration) {
        self.greet_at = None;
        let pressed = Input::Dtmf(digits);
        // The transcript stays in order: the cut reply first.
        self.interrupt(None, now);
        self.said_user(pressed.as_history(), now, now);
        let marks = Marks {
            since: Some(now),
            ..Marks::default()
        };
        self.start_reply(Some(pressed), marks);
    }

    /// A notice from the call (see [`super::Nudge::Notice`]): the brain
    /// replies to it as to a turn; the caller said nothing.
    pub fn on_notice(&mut self, text: String, now: Duration) {
        self.greet_at = None;
        self.interrupt(None, now);
        let marks = Marks {
            since: Some(now),
            ..Marks::default()
        };
        self.start_reply(Some(Input::Text(text)), marks);
    }

    /// STT's final text for the turn asked for (`None`: empty, failed, or
    /// none will come).
    pub fn on_final(&mut self, text: Option<String>, now: Duration) {
        let Some((start, end)) = self.awaiting.take() else {
            return;
        };
        let greeting = self.greet_at.take().is_some();
        let Some(text) = text else {
            if greeting {
                self.start_reply(None, Marks::default());
            }
            return;
        };
        self.interrupt(None, now);
        self.said_user(text.clone(), start, end);
        let marks = Marks {
            since: Some(end),
            stt_final: Some(now),
            ..Marks::default()
        };
        // The callee's "Hello?" is answered with the greeting.
        let input = (!greeting).then_some(Input::Text(text));
        self.start_reply(input, marks);
    }

    /// What the reply task reported at `now`.
    pub fn on_reply(&mut self, msg: ReplyMsg, now: Duration) {
        let Some(r) = self.reply.as_mut() else { return };
        match msg {
            ReplyMsg::FirstToken => {
                r.marks.first_token.get_or_insert(now);
            }
            ReplyMsg::Frame(f) => {
                r.marks.first_audio.get_or_insert(now);
                r.marks.first_out.get_or_insert(now);
                r.first_sample.get_or_insert(self.handed);
                r.drained_at = None;
                self.handed += f.len() as u64;
                self.effects.push(Effect::Play(f));
            }
            ReplyMsg::Spoken(text, d) => {
                self.ledger.push(&text, d);
                if !r.text.is_empty() {
                    r.text.push(' ');
                }
                r.text.push_str(&text);
            }
            ReplyMsg::Recorded(c, actions) => {
                r.recorded = Some(c);
                r.actions = actions;
            }
            ReplyMsg::Failed(e) => {
                tracing::warn!(error = %e, "the agent's reply failed");
                r.done = true;
            }
            ReplyMsg::Done => r.done = true,
        }
        self.settle(now);
    }

    /// The call ended at `now`: a reply in flight is cut to what was sent.
    pub fn finish(&mut self, now: Duration) {
        self.interrupt(None, now);
    }

    /// Takes the media session's word on our audio; `drained`: it says
    /// that the last packet has finished (a caller frame only says what
    /// is queued, and the last frame taken from the queue is still on its
    /// way out).
    fn observe(&mut self, playout: PortPlayout, at: Duration, drained: bool) {
        self.playout = playout;
        let all_sent = drained && self.all_sent();
        if let Some(r) = self.reply.as_mut()
            && r.first_sample.is_some()
            && r.drained_at.is_none()
            && all_sent
        {
            r.drained_at = Some(at);
        }
    }

    /// The media session holds none of our audio.
    fn all_sent(&self) -> bool {
        self.playout.queued == 0 && self.playout.received >= self.handed
    }

    /// What the current reply's audio is doing, for turn-taking.
    fn playback(&self) -> Playback {
        match self.reply.as_ref().and_then(|r| r.first_sample) {
            Some(first) if self.playout.queued > 0 => Playback::Playing {
                played: samples_to_duration(self.playout.done().saturating_sub(first)),
            },
            _ => Playback::Idle,
        }
    }

    /// A reply that is complete and fully sent: record it, then act.
    fn settle(&mut self, now: Duration) {
        let complete = self
            .reply
            .as_ref()
            .is_some_and(|r| r.done && (r.first_sample.is_none() || r.drained_at.is_some()));
        if !complete {
            return;
        }
        let Some(r) = self.reply.take() else { return };
        self.conv = r.recorded.unwrap_or(r.before);
        if !r.text.is_empty() {
            let end = r.drained_at.unwrap_or(now);
            self.effects.push(Effect::Said(Said {
                role: Role::Assistant,
                text: r.text,
                start: r.marks.first_rtp.or(r.marks.first_out).unwrap_or(end),
                end,
                interrupted: false,
                heard: None,
                latency: r.marks.latency(),
            }));
        }
        self.effects
            .extend(r.actions.into_iter().map(Effect::Action));
        self.ledger.clear();
    }

    /// Stops the reply in flight (if any) after `heard_ms` of its audio
    /// (default: all that was sent), at `at`.
    fn interrupt(&mut self, heard_ms: Option<u64>, at: Duration) {
        let Some(r) = self.reply.take() else { return };
        self.effects.push(Effect::Abort);
        let sent = r.first_sample.map_or(Duration::ZERO, |first| {
            samples_to_duration(self.playout.done().saturating_sub(first))
        });
        let heard_ms = heard_ms.unwrap_or(sent.as_millis() as u64);
        if r.first_sample.is_some() && !self.all_sent() {
            metrics::counter!(AGENT_BARGE_INS_TOTAL).increment(1);
            self.effects.push(Effect::Clear);
        }
        let heard = self.ledger.heard(heard_ms);
        self.ledger.clear();
        self.conv = match r.recorded {
            Some(c) => c,
            None => {
                let mut c = r.before;
                if let Some(input) = &r.input {
                    c.messages.push(Message::user(input.as_history()));
                }
                c
            }
        };
        self.conv.record_interrupted(&heard);
        if let Some(start) = r.marks.first_rtp.or(r.marks.first_out) {
            self.effects.push(Effect::Said(Said {
                role: Role::Assistant,
                text: r.text,
                start,
                end: at,
                interrupted: true,
                heard: Some(heard),
                latency: r.marks.latency(),
            }));
        }
    }

    fn said_user(&mut self, text: String, start: Duration, end: Duration) {
        self.effects.push(Effect::Said(Said {
            role: Role::User,
            text,
            start,
            end,
            interrupted: false,
            heard: None,
            latency: None,
        }));
    }

    /// Starts a reply: the greeting when `input` is `None`.
    fn start_reply(&mut self, input: Option<Input>, marks: Marks) {
        self.ledger.clear();
        self.reply = Some(Reply {
            before: self.conv.clone(),
            input: input.clone(),
            recorded: None,
            actions: Vec::new(),
            text: String::new(),
            done: false,
            marks,
            first_sample: None,
            drained_at: None,
        });
        self.effects.push(Effect::Reply {
            conv: self.conv.clone(),
            input,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::turn::{FRAME, FRAME_SAMPLES};

    const MS: fn(u64) -> Duration = Duration::from_millis;
    const FRAME_LEN: u64 = FRAME_SAMPLES as u64;

    fn voice(n: u64) -> Vec<i16> {
        (0..FRAME_SAMPLES)
            .map(|i| {
                let t = (n as usize * FRAME_SAMPLES + i) as f32 / 8000.0;
                ((2.0 * std::f32::consts::PI * 220.0 * t).sin() * 4000.0) as i16
            })
            .collect()
    }

    /// The core and a stand-in for the media session: the pacer sends one
    /// handed frame per 20 ms slot, and the caller's frames come with the
    /// playout of that slot, all on made-up time.
    struct Call {
        core: SessionCore,
        effects: Vec<(Duration, Effect)>,
        received: u64,
        queued: u64,
        playing: bool,
        slot: u64,
    }

    impl Call {
        fn new() -> Self {
            let mut core = SessionCore::new(TurnConfig::default());
            core.start(Greeting::Now, Duration::ZERO);
            let mut call = Call {
                core,
                effects: Vec::new(),
                received: 0,
                queued: 0,
                playing: false,
                slot: 0,
            };
            call.collect(Duration::ZERO);
            call
        }

        fn now(&self) -> Duration {
            FRAME * self.slot as u32
        }

        fn playout(&self) -> PortPlayout {
            PortPlayout {
                received: self.received,
                queued: self.queued,
            }
        }

        /// Takes the core's effects; the media session gets its frames.
        fn collect(&mut self, at: Duration) {
            for e in self.core.take_effects() {
                match &e {
                    Effect::Play(f) => {
                        self.received += f.len() as u64;
                        self.queued += f.len() as u64;
                    }
                    Effect::Clear => self.queued = 0,
                    _ => {}
                }
                self.effects.push((at, e));
            }
        }

        /// A reply of `frames` frames whose text is `text`, all made now.
        fn reply(&mut self, text: &str, frames: u64) {
            let now = self.now();
            self.core.on_reply(ReplyMsg::FirstToken, now);
            for n in 0..frames {
                self.core.on_reply(ReplyMsg::Frame(voice(n)), now);
            }
            let length = FRAME * frames as u32;
            self.core
                .on_reply(ReplyMsg::Spoken(text.to_string(), length), now);
            self.core.on_reply(ReplyMsg::Done, now);
            self.collect(now);
        }

        /// One 20 ms slot: the pacer sends, then the caller's frame.
        fn slot(&mut self, caller_voice: bool) {
            let at = self.now();
            if self.queued > 0 {
                self.queued -= FRAME_LEN.min(self.queued);
                if !self.playing {
                    self.playing = true;
                    self.core.on_started(at, self.playout());
                }
            } else if self.playing {
                self.playing = false;
                self.core.on_drained(at, self.playout());
            }
            self.collect(at);
            let pcm = if caller_voice {
                voice(self.slot)
            } else {
                vec![0; FRAME_SAMPLES]
            };
            self.core.on_frame(at, &pcm, self.playout());
            self.collect(at);
            self.slot += 1;
        }

        fn slots(&mut self, caller_voice: bool, ms: u64) {
            for _ in 0..ms / 20 {
                self.slot(caller_voice);
            }
        }

        fn said(&self) -> Vec<&Said> {
            self.effects
                .iter()
                .filter_map(|(_, e)| match e {
                    Effect::Said(s) => Some(s),
                    _ => None,
                })
                .collect()
        }

        fn asked_for_the_end_of_turn(&self) -> bool {
            self.effects.iter().any(|(_, e)| *e == Effect::EndOfTurn)
        }
    }

    /// Issue 13: a caller who starts 200 ms before the greeting ends (less
    /// than the barge-in threshold) and goes on talking is answered; the
    /// call used to sit silent, the utterance taken for a backchannel.
    #[test]
    fn speech_starting_in_the_last_moments_of_the_greeting_is_a_turn() {
        let mut call = Call::new();
        call.reply("Hello, this is the clinic.", 50);
        // The greeting plays from 0 to 1 s; the caller talks from 0.8 s
        // to 2 s, then is silent.
        call.slots(false, 800);
        call.slots(true, 1200);
        call.slots(false, 1000);
        assert!(
            !call.effects.iter().any(|(_, e)| *e == Effect::Clear),
            "no barge-in: {:?}",
            call.said()
        );
        assert!(call.asked_for_the_end_of_turn(), "{:?}", call.said());
        let greeting = call.said()[0].clone();
        assert!(!greeting.interrupted);
        assert_eq!(greeting.end, MS(1000));
        call.core
            .on_final(Some("I need an appointment".into()), MS(3000));
        call.collect(MS(3000));
        let user = call.said()[1].clone();
        assert_eq!(user.role, Role::User);
        assert_eq!((user.start, user.end), (MS(800), MS(2000)));
        assert!(call.effects.iter().any(|(_, e)| matches!(
            e,
            Effect::Reply { input: Some(Input::Text(t)), .. } if t == "I need an appointment"
        )));
    }

    /// Issue 13: every spoken reply has its first RTP time, its own: a
    /// playout start from the greeting that the core learns of after the
    /// reply's first frame went out is not the reply's.
    #[test]
    fn a_reply_gets_its_own_first_rtp_time_whatever_came_before() {
        let mut call = Call::new();
        call.reply("Hello.", 25);
        call.slots(false, 1000);
        call.slots(true, 600);
        call.slots(false, 500);
        assert!(call.asked_for_the_end_of_turn());
        let end_of_speech = MS(1600);
        call.core
            .on_final(Some("I need an appointment".into()), MS(2200));
        call.collect(MS(2200));
        call.slot = 2200 / 20;
        call.reply("Booked.", 30);
        // A start the media session reported before it had the reply's
        // first frame (a greeting's run, late), then the reply's own.
        let stale = PortPlayout {
            received: call.received - 30 * FRAME_LEN,
            queued: 0,
        };
        call.core.on_started(MS(900), stale);
        call.slots(false, 1000);
        let said = call.said();
        let reply = said.last().unwrap();
        assert_eq!(reply.text, "Booked.");
        let latency = reply.latency.expect("a latency");
        assert_eq!(latency.stt_final, Some(MS(600)));
        assert!(latency.llm_first_token.is_some() && latency.tts_first_audio.is_some());
        // The reply's first packet went in the slot at 2.2 s.
        assert_eq!(latency.first_rtp, Some(MS(2200) - end_of_speech));
        assert_eq!(reply.start, MS(2200));
        assert_eq!(reply.end, MS(2200) + FRAME * 30);
    }

    #[test]
    fn actions_wait_until_the_media_session_has_sent_the_reply() {
        let mut call = Call::new();
        call.core.on_reply(
            ReplyMsg::Recorded(Conversation::default(), vec![Action::Hangup]),
            Duration::ZERO,
        );
        call.reply("Goodbye.", 10);
        call.slots(false, 100);
        assert!(
            !call
                .effects
                .iter()
                .any(|(_, e)| matches!(e, Effect::Action(_)))
        );
        call.slots(false, 200);
        let (at, _) = call
            .effects
            .iter()
            .find(|(_, e)| *e == Effect::Action(Action::Hangup))
            .expect("the hang-up");
        // Ten frames from the slot at 0: drained in the slot at 200 ms.
        assert_eq!(*at, MS(200));
    }
}
