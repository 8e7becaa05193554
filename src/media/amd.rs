//! Answering-machine detection (AMD): 20 ms frames of what the callee sends
//! in, a verdict out (`human`, `machine` or `unknown`) within
//! [`VERDICT_WITHIN`] of the answer, and, to leave a message, the moment a
//! machine's greeting is over.
//!
//! Owns: the classifier and the beep detector. Sans-IO: time is the audio's
//! own (one frame is 20 ms), plus [`Detector::expire`] for the driver to call
//! when the wall clock passes [`Detector::deadline`] with no audio (a callee
//! that sends none, or silence suppression). Must not: touch sockets, timers
//! or the call; the call layer decides what a verdict does.
//!
//! The heuristics are the classic greeting-length ones (Asterisk's
//! `app_amd` and the carriers' AMD work the same way), with these rules:
//! - A frame is voiced when its RMS passes [`VOICE_RMS`] (about -36 dBFS).
//! - An utterance runs from the first voiced frame until [`UTTERANCE_END`]
//!   of silence; a "word" is a voiced run of at least [`MIN_WORD`].
//! - Machine: the first utterance lasts [`MACHINE_SPEECH`] or more (a
//!   recorded greeting talks on), or holds [`MACHINE_WORDS`] words, or a
//!   beep is heard.
//! - Human: the first utterance ends (the callee said "hello?" and waits)
//!   shorter than that.
//! - Unknown: nobody speaks within [`INITIAL_SILENCE`] (someone waiting
//!   for the caller, or a dead line), or nothing above is clear by
//!   [`VERDICT_WITHIN`]. Unknown is treated like a human by the call layer:
//!   hanging up on a person costs more than talking to a machine.
//!
//! Beep: a single tone between 400 and 2000 Hz (where voicemail beeps sit)
//! holding at least [`MIN_BEEP`]. Each frame is scanned with the Goertzel
//! algorithm every 25 Hz across the band; a frame is tonal when one
//! frequency carries at least [`TONE_SHARE`] of its power, and a beep is a
//! run of tonal frames on the same frequency (within 50 Hz). Speech has its
//! power spread over several harmonics that move, so it does not pass. The
//! Goertzel loop is a dozen lines; a crate for it would bring more than it
//! saves.
//!
//! After a `machine` verdict, a detector made for [`AmdMode::MessageAfterBeep`]
//! keeps listening and reports [`AmdEvent::GreetingOver`] when the beep
//! ends, or after [`GREETING_GAP`] of silence (machines without a beep), or
//! at [`GREETING_CAP`] at the latest.

use std::f64::consts::PI;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::CLOCK_RATE;

/// The verdict comes this long after the answer at the latest.
pub const VERDICT_WITHIN: Duration = Duration::from_millis(3500);
/// RMS (16-bit PCM) above which a frame is voiced: about -36 dBFS, above
/// line noise and far below speech.
pub const VOICE_RMS: f64 = 500.0;
/// No voice this long after the answer: unknown.
pub const INITIAL_SILENCE: Duration = Duration::from_millis(2500);
/// Silence that ends an utterance: a person who said "hello?" waits about
/// this long for an answer.
pub const UTTERANCE_END: Duration = Duration::from_millis(800);
/// A first utterance this long is a recorded greeting (people answer in
/// one or two words).
pub const MACHINE_SPEECH: Duration = Duration::from_millis(2400);
/// Shortest voiced run that counts as a word.
pub const MIN_WORD: Duration = Duration::from_millis(100);
/// This many words in the first utterance: a greeting.
pub const MACHINE_WORDS: u32 = 6;
/// Shortest tone that counts as a beep.
pub const MIN_BEEP: Duration = Duration::from_millis(200);
/// Share of a frame's power one frequency must carry for the frame to be
/// tonal.
pub const TONE_SHARE: f64 = 0.6;
/// Silence after a machine's speech that ends a greeting without a beep.
pub const GREETING_GAP: Duration = Duration::from_millis(2500);
/// A message starts this long after the answer at the latest.
pub const GREETING_CAP: Duration = Duration::from_secs(30);

/// The lowest and highest beep frequencies scanned, and the step.
const BEEP_LOW_HZ: f64 = 400.0;
const BEEP_HIGH_HZ: f64 = 2000.0;
const BEEP_STEP_HZ: f64 = 25.0;
/// Tonal frames on frequencies this close belong to one beep.
const BEEP_DRIFT_HZ: f64 = 50.0;

const FRAME: Duration = Duration::from_millis(20);

/// What answering-machine detection does on an outbound call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AmdMode {
    /// No detection: the agent starts at the answer.
    #[default]
    Off,
    /// The agent waits for the verdict (3.5 s at most); a machine is hung
    /// up on.
    Hangup,
    /// The agent waits for the verdict; on a machine it waits for the
    /// greeting to end (the beep) and then speaks, so the message is
    /// recorded whole.
    MessageAfterBeep,
}

impl AmdMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AmdMode::Off => "off",
            AmdMode::Hangup => "hangup",
            AmdMode::MessageAfterBeep => "message_after_beep",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [AmdMode::Off, AmdMode::Hangup, AmdMode::MessageAfterBeep]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// What answered. Its labels (`human`, `machine`, `unknown`), as the API
/// and the store spell them, are given in `crate::model::call`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AnsweredBy {
    Human,
    Machine,
    Unknown,
}

/// What the detector reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmdEvent {
    /// Once, within [`VERDICT_WITHIN`].
    Verdict(AnsweredBy),
    /// After `Verdict(Machine)`, in [`AmdMode::MessageAfterBeep`] only: a
    /// message spoken from now on is recorded whole.
    GreetingOver,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Classifying,
    /// A machine; waiting for its greeting to end.
    Greeting,
    Done,
}

/// One call's detector. Feed it every frame from the answer on.
#[derive(Debug)]
pub struct Detector {
    mode: AmdMode,
    phase: Phase,
    /// Frames seen: the audio clock.
    frames: u32,
    /// Frame of the first voiced frame.
    speech_start: Option<u32>,
    /// Frame of the last voiced frame.
    last_voiced: Option<u32>,
    /// Voiced frames in a row, and words completed.
    voiced_run: u32,
    words: u32,
    beep: BeepDetector,
    /// A beep has been heard (the greeting ends when it stops).
    beeped: bool,
}

fn frames(d: Duration) -> u32 {
    u32::try_from(d.as_millis() / FRAME.as_millis()).unwrap_or(u32::MAX)
}

impl Detector {
    /// A detector for `mode` (which decides whether it follows a machine's
    /// greeting after the verdict).
    pub fn new(mode: AmdMode) -> Self {
        Self {
            mode,
            phase: Phase::Classifying,
            frames: 0,
            speech_start: None,
            last_voiced: None,
            voiced_run: 0,
            words: 0,
            beep: BeepDetector::default(),
            beeped: false,
        }
    }

    /// When, counted from the answer, [`Detector::expire`] is due if no
    /// audio comes; `None` once there is nothing left to report.
    pub fn deadline(&self) -> Option<Duration> {
        match self.phase {
            Phase::Classifying => Some(VERDICT_WITHIN),
            Phase::Greeting => Some(GREETING_CAP),
            Phase::Done => None,
        }
    }

    /// The wall clock says `elapsed` since the answer: what is due.
    pub fn expire(&mut self, elapsed: Duration) -> Option<AmdEvent> {
        match self.deadline() {
            Some(d) if elapsed >= d => Some(self.decided_at_deadline()),
            _ => None,
        }
    }

    fn decided_at_deadline(&mut self) -> AmdEvent {
        match self.phase {
            Phase::Classifying => self.verdict(AnsweredBy::Unknown),
            Phase::Greeting | Phase::Done => {
                self.phase = Phase::Done;
                AmdEvent::GreetingOver
            }
        }
    }

    fn verdict(&mut self, v: AnsweredBy) -> AmdEvent {
        self.phase = if v == AnsweredBy::Machine && self.mode == AmdMode::MessageAfterBeep {
            Phase::Greeting
        } else {
            Phase::Done
        };
        AmdEvent::Verdict(v)
    }

    /// One 20 ms frame of 8 kHz audio from the callee.
    pub fn push(&mut self, samples: &[i16]) -> Option<AmdEvent> {
        if self.phase == Phase::Done {
            return None;
        }
        let now = self.frames;
        self.frames = self.frames.saturating_add(1);
        let energy: f64 = samples.iter().map(|s| f64::from(*s).powi(2)).sum();
        let rms = (energy / samples.len().max(1) as f64).sqrt();
        let voiced = rms >= VOICE_RMS;
        let beep = self.beep.push(samples, energy, voiced);
        if beep == Some(Beep::Started) {
            self.beeped = true;
        }
        if voiced {
            self.speech_start.get_or_insert(now);
            self.last_voiced = Some(now);
            self.voiced_run += 1;
        } else {
            if self.voiced_run >= frames(MIN_WORD) {
                self.words += 1;
            }
            self.voiced_run = 0;
        }
        match self.phase {
            Phase::Classifying => self.classify(now),
            Phase::Greeting => self.greeting(now, beep),
            Phase::Done => None,
        }
    }

    fn classify(&mut self, now: u32) -> Option<AmdEvent> {
        if self.beeped {
            return Some(self.verdict(AnsweredBy::Machine));
        }
        let elapsed = now + 1;
        let Some(start) = self.speech_start else {
            return (elapsed >= frames(INITIAL_SILENCE)).then(|| self.verdict(AnsweredBy::Unknown));
        };
        let last = self.last_voiced.unwrap_or(start);
        let words = self.words + u32::from(self.voiced_run >= frames(MIN_WORD));
        if last - start + 1 >= frames(MACHINE_SPEECH) || words >= MACHINE_WORDS {
            return Some(self.verdict(AnsweredBy::Machine));
        }
        if now - last >= frames(UTTERANCE_END) {
            return Some(self.verdict(AnsweredBy::Human));
        }
        (elapsed >= frames(VERDICT_WITHIN)).then(|| self.verdict(AnsweredBy::Unknown))
    }

    fn greeting(&mut self, now: u32, beep: Option<Beep>) -> Option<AmdEvent> {
        let silent_for = self.last_voiced.map_or(now + 1, |last| now - last);
        let over = beep == Some(Beep::Ended)
            || (!self.beeped && silent_for >= frames(GREETING_GAP))
            || now + 1 >= frames(GREETING_CAP);
        over.then(|| {
            self.phase = Phase::Done;
            AmdEvent::GreetingOver
        })
    }
}

/// A change in the beep detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Beep {
    /// A tone has held [`MIN_BEEP`].
    Started,
    /// That tone stopped.
    Ended,
}

/// Finds a steady single tone in the beep band.
#[derive(Debug, Default)]
struct BeepDetector {
    /// Frequency of the current run of tonal frames, and its length.
    run: Option<(f64, u32)>,
    /// The run became a beep.
    beeping: bool,
}

impl BeepDetector {
    fn push(&mut self, samples: &[i16], energy: f64, voiced: bool) -> Option<Beep> {
        let tone = if voiced {
            dominant(samples, energy)
        } else {
            None
        };
        match (tone, self.run) {
            (Some(f), Some((hz, n))) if (f - hz).abs() <= BEEP_DRIFT_HZ => {
                self.run = Some((hz, n + 1));
                if !self.beeping && n + 1 >= frames(MIN_BEEP) {
                    self.beeping = true;
                    return Some(Beep::Started);
                }
                None
            }
            (tone, _) => {
                let ended = std::mem::take(&mut self.beeping);
                self.run = tone.map(|f| (f, 1));
                ended.then_some(Beep::Ended)
            }
        }
    }
}

/// The frequency in the beep band that carries at least [`TONE_SHARE`] of
/// the frame's power, if one does.
fn dominant(samples: &[i16], energy: f64) -> Option<f64> {
    if energy <= 0.0 || samples.is_empty() {
        return None;
    }
    let n = samples.len() as f64;
    let steps = ((BEEP_HIGH_HZ - BEEP_LOW_HZ) / BEEP_STEP_HZ) as u32;
    let (hz, power) = (0..=steps)
        .map(|i| {
            let hz = BEEP_LOW_HZ + f64::from(i) * BEEP_STEP_HZ;
            (hz, goertzel(samples, hz))
        })
        .fold((0.0, 0.0), |best, x| if x.1 > best.1 { x } else { best });
    // A pure tone of amplitude A over n samples: power (A n / 2)^2 and
    // energy A^2 n / 2, so this share is 1 for a tone and small for noise.
    let share = 2.0 * power / (n * energy);
    (share >= TONE_SHARE).then_some(hz)
}

/// The squared magnitude of `samples` at `hz` (the Goertzel algorithm).
fn goertzel(samples: &[i16], hz: f64) -> f64 {
    let coeff = 2.0 * (2.0 * PI * hz / f64::from(CLOCK_RATE)).cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &x in samples {
        let s = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::FRAME_SAMPLES;

    const RATE: f64 = 8000.0;

    fn frames_of(samples: &[i16]) -> impl Iterator<Item = &[i16]> {
        samples.chunks(FRAME_SAMPLES)
    }

    fn silence(ms: u32) -> Vec<i16> {
        vec![0; (ms * 8) as usize]
    }

    /// A tone at `hz`, amplitude 8000.
    fn tone(hz: f64, ms: u32) -> Vec<i16> {
        (0..ms * 8)
            .map(|n| (8000.0 * (2.0 * PI * hz * f64::from(n) / RATE).sin()) as i16)
            .collect()
    }

    /// Something voiced that is no tone: a 130 Hz voice with its first
    /// twelve harmonics, the pitch gliding as speech does.
    fn syllable(ms: u32, seed: f64) -> Vec<i16> {
        (0..ms * 8)
            .map(|n| {
                let t = f64::from(n) / RATE;
                let f0 = 130.0 + 20.0 * (2.0 * PI * 3.0 * t + seed).sin();
                let v: f64 = (1..=12)
                    .map(|h| {
                        let h = f64::from(h);
                        (2.0 * PI * f0 * h * t + seed * h).sin() / h
                    })
                    .sum();
                (3000.0 * v) as i16
            })
            .collect()
    }

    /// `count` syllables of `ms`, `gap` ms apart.
    fn talk(count: u32, ms: u32, gap: u32) -> Vec<i16> {
        (0..count)
            .flat_map(|i| {
                let mut s = syllable(ms, f64::from(i));
                s.extend(silence(gap));
                s
            })
            .collect()
    }

    /// Runs `audio` through a detector; every event with the time it came.
    fn run(mode: AmdMode, audio: &[i16]) -> Vec<(Duration, AmdEvent)> {
        let mut d = Detector::new(mode);
        let mut out = Vec::new();
        for (i, frame) in frames_of(audio).enumerate() {
            if let Some(e) = d.push(frame) {
                out.push((FRAME * (i as u32 + 1), e));
            }
        }
        out
    }

    fn concat(parts: &[Vec<i16>]) -> Vec<i16> {
        parts.concat()
    }

    #[test]
    fn a_short_hello_then_silence_is_a_human() {
        let audio = concat(&[silence(400), talk(2, 200, 60), silence(3000)]);
        let events = run(AmdMode::Hangup, &audio);
        assert_eq!(events.len(), 1, "{events:?}");
        let (at, e) = events[0];
        assert_eq!(e, AmdEvent::Verdict(AnsweredBy::Human));
        // Speech ends near 0.86 s; the verdict follows the 0.8 s pause.
        assert!(at <= Duration::from_millis(1700), "{at:?}");
    }

    #[test]
    fn a_long_greeting_is_a_machine_within_the_limit() {
        let audio = concat(&[silence(300), talk(20, 220, 90), tone(1000.0, 500)]);
        let events = run(AmdMode::Hangup, &audio);
        assert_eq!(events[0].1, AmdEvent::Verdict(AnsweredBy::Machine));
        assert!(events[0].0 <= VERDICT_WITHIN, "{events:?}");
        assert_eq!(events.len(), 1, "hangup mode says nothing more");
    }

    #[test]
    fn a_message_waits_for_the_end_of_the_beep() {
        let greeting = concat(&[silence(300), talk(20, 220, 90), silence(400)]);
        let beep_at = Duration::from_millis((greeting.len() / 8) as u64);
        let audio = concat(&[greeting, tone(1400.0, 500), silence(2000)]);
        let events = run(AmdMode::MessageAfterBeep, &audio);
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0].1, AmdEvent::Verdict(AnsweredBy::Machine));
        assert_eq!(events[1].1, AmdEvent::GreetingOver);
        let end = beep_at + Duration::from_millis(500);
        assert!(
            events[1].0 >= end && events[1].0 <= end + FRAME * 2,
            "over right after the beep: {events:?}"
        );
    }

    #[test]
    fn a_beep_alone_is_a_machine_and_a_short_tone_is_not() {
        let events = run(AmdMode::Hangup, &concat(&[silence(200), tone(800.0, 260)]));
        assert_eq!(
            events,
            [(
                Duration::from_millis(400),
                AmdEvent::Verdict(AnsweredBy::Machine)
            )]
        );
        let short = concat(&[silence(200), tone(800.0, 140), silence(1500)]);
        let events = run(AmdMode::Hangup, &short);
        assert_eq!(events[0].1, AmdEvent::Verdict(AnsweredBy::Human));
        // A tone outside the band (a dial tone's 350 Hz) is no beep either.
        assert_eq!(dominant(&tone(350.0, 20), energy(&tone(350.0, 20))), None);
        assert!(dominant(&tone(1975.0, 20), energy(&tone(1975.0, 20))).is_some());
    }

    fn energy(s: &[i16]) -> f64 {
        s.iter().map(|x| f64::from(*x).powi(2)).sum()
    }

    #[test]
    fn speech_is_never_taken_for_a_beep() {
        let speech = talk(30, 300, 40);
        let tonal = frames_of(&speech)
            .filter(|f| dominant(f, energy(f)).is_some())
            .count();
        assert_eq!(tonal, 0, "no speech frame looks tonal");
        let mut d = BeepDetector::default();
        assert!(frames_of(&speech).all(|f| d.push(f, energy(f), true) != Some(Beep::Started)));
    }

    #[test]
    fn silence_is_unknown_and_late_speech_undecided_is_unknown() {
        let events = run(AmdMode::Hangup, &silence(4000));
        assert_eq!(
            events,
            [(INITIAL_SILENCE, AmdEvent::Verdict(AnsweredBy::Unknown))]
        );
        // Speech from 2.4 s that is neither long nor over by 3.5 s.
        let audio = concat(&[silence(2400), talk(5, 180, 60), silence(400)]);
        let events = run(AmdMode::Hangup, &audio);
        assert_eq!(
            events,
            [(VERDICT_WITHIN, AmdEvent::Verdict(AnsweredBy::Unknown))]
        );
    }

    #[test]
    fn the_clock_decides_when_no_audio_comes() {
        let mut d = Detector::new(AmdMode::MessageAfterBeep);
        assert_eq!(d.expire(Duration::from_secs(3)), None);
        assert_eq!(
            d.expire(VERDICT_WITHIN),
            Some(AmdEvent::Verdict(AnsweredBy::Unknown))
        );
        assert_eq!(d.deadline(), None);
        let mut d = Detector::new(AmdMode::MessageAfterBeep);
        for f in frames_of(&concat(&[silence(200), tone(1000.0, 300)])) {
            d.push(f);
        }
        assert_eq!(d.deadline(), Some(GREETING_CAP));
        assert_eq!(d.expire(GREETING_CAP), Some(AmdEvent::GreetingOver));
    }

    #[test]
    fn a_greeting_without_a_beep_ends_in_silence() {
        let audio = concat(&[silence(300), talk(20, 220, 90), silence(3000)]);
        let events = run(AmdMode::MessageAfterBeep, &audio);
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[1].1, AmdEvent::GreetingOver);
        assert!(events[1].0 >= Duration::from_millis(300 + 20 * 310 + 2000));
    }

    #[test]
    fn modes_read_and_write_their_names() {
        for m in [AmdMode::Off, AmdMode::Hangup, AmdMode::MessageAfterBeep] {
            assert_eq!(AmdMode::parse(m.as_str()), Some(m));
        }
        assert_eq!(AmdMode::parse("sometimes"), None);
    }
}
