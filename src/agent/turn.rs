//! Turn-taking on a call, as a sans-IO core: voice activity detection on the
//! caller's audio, endpointing (when has the caller finished?) and barge-in
//! (the caller talks over the agent).
//!
//! The driver feeds [`TurnTaker::push`] one 20 ms frame of 8 kHz mono PCM at
//! a time with the frame's time and whether the agent is playing audio; the
//! core answers with at most one [`TurnEvent`]. It holds no clock and does no
//! IO, so its tests are synthetic frames on a made-up timeline.
//!
//! ## The VAD, and why not `earshot`
//! [`EnergyVad`] is an energy detector with an adaptive noise floor and a
//! zero-crossing-rate veto. A frame is voice when its level is
//! `margin_db` above the tracked floor (and above an absolute minimum) and
//! its zero-crossing rate is below that of hiss, unless it is loud enough to
//! be a fricative. Measured on flite speech at 8 kHz through G.711 µ-law
//! with low background noise (the `flite_*` tests): 97% of the frames above
//! -35 dBFS are voice, none of the noise-only second before and after is,
//! a spoken sentence is exactly one turn, and "Yeah." during playback is a
//! backchannel; one frame costs about 3 µs in a debug build. `earshot`
//! (pure Rust, a small network) is built to tell speech from noise that is
//! as loud as speech, which energy cannot; but it scores only 256-sample
//! frames at 16 kHz: telephone
//! audio would need a resampler and re-framing from 20 ms to 16 ms in front
//! of it, and its decisions would no longer line up with our 20 ms packets.
//! The [`Vad`] trait keeps the choice open: a driver can plug a detector that
//! does that work without touching endpointing or barge-in.
//!
//! ## The rules
//! - An utterance starts after `min_speech` of voice within it (clicks and
//!   single loud frames are ignored) and emits [`TurnEvent::SpeechStarted`].
//! - It ends after `end_silence` without voice ([`TurnEvent::EndOfTurn`],
//!   reason silence), or when it has lasted `max_turn` (reason max length).
//! - While the agent plays, an utterance becomes a barge-in once it holds
//!   `barge_in_min` of voice: [`TurnEvent::BargeIn`] tells the driver to stop
//!   playback, drop queued audio, cancel the brain and TTS, and cut the
//!   agent's last message to `heard_ms` of audio (see
//!   [`PlaybackLedger::heard`]). The utterance then goes on to its own
//!   end of turn. Shorter speech during playback ("mm-hm", "yeah") ends as a
//!   [`TurnEvent::Backchannel`] and changes nothing, unless
//!   `backchannels_interrupt` is set, or unless it goes on for `min_speech`
//!   after the playback stopped: the caller who started in the last moments
//!   of the agent's words is taking a turn.

use std::time::Duration;

/// Samples in one 20 ms frame at 8 kHz.
pub const FRAME_SAMPLES: usize = 160;
/// The length of one frame.
pub const FRAME: Duration = Duration::from_millis(20);

/// Turn-taking settings, with the documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnConfig {
    /// Silence that ends the caller's turn (default 500 ms).
    pub end_silence: Duration,
    /// A turn is cut after this long even without silence (default 30 s).
    pub max_turn: Duration,
    /// Voice needed before an utterance counts as speech (default 60 ms).
    pub min_speech: Duration,
    /// Voice needed during playback to interrupt the agent (default 400 ms).
    pub barge_in_min: Duration,
    /// Whether short speech during playback interrupts too (default false).
    pub backchannels_interrupt: bool,
    pub vad: VadConfig,
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            end_silence: Duration::from_millis(500),
            max_turn: Duration::from_secs(30),
            min_speech: Duration::from_millis(60),
            barge_in_min: Duration::from_millis(400),
            backchannels_interrupt: false,
            vad: VadConfig::default(),
        }
    }
}

/// What the agent's audio output is doing when a frame arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Playback {
    Idle,
    /// Playing; `played` is how much of the current reply has gone out.
    Playing {
        played: Duration,
    },
}

/// Why a turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnEnd {
    Silence,
    MaxLength,
}

/// What the core tells the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnEvent {
    /// The caller started speaking; `at` is the first voiced frame.
    SpeechStarted { at: Duration },
    /// The caller finished: hand the transcript to the brain.
    EndOfTurn {
        at: Duration,
        speech: Duration,
        reason: TurnEnd,
    },
    /// Stop playback now; the caller heard `heard_ms` of the reply. `start`
    /// is the utterance's first voiced frame (a barge-in on the frame that
    /// confirms speech comes without a `SpeechStarted`).
    BargeIn {
        at: Duration,
        start: Duration,
        heard_ms: u64,
    },
    /// Short speech during playback that did not interrupt.
    Backchannel { at: Duration, speech: Duration },
}

/// A voice activity detector over 20 ms frames.
pub trait Vad: Send {
    /// Whether `frame` holds voice.
    fn is_voice(&mut self, frame: &[i16]) -> bool;
}

/// Settings of [`EnergyVad`].
#[derive(Debug, Clone, PartialEq)]
pub struct VadConfig {
    /// How far above the noise floor a frame must be (default 12 dB).
    pub margin_db: f32,
    /// Frames quieter than this are never voice (default -50 dBFS).
    pub min_dbfs: f32,
    /// Frames with more zero crossings per sample are hiss (default 0.45),
    /// unless they are `loud_db` above the floor (default 25 dB).
    pub max_zcr: f32,
    pub loud_db: f32,
}

impl Default for VadConfig {
    fn default() -> Self {
        Self {
            margin_db: 12.0,
            min_dbfs: -50.0,
            max_zcr: 0.45,
            loud_db: 25.0,
        }
    }
}

/// Energy + zero-crossing-rate VAD with an adaptive noise floor.
#[derive(Debug, Clone)]
pub struct EnergyVad {
    config: VadConfig,
    /// Tracked background level in dBFS: falls fast, rises slowly.
    floor_db: f32,
}

const FLOOR_START_DB: f32 = -70.0;
const FLOOR_MIN_DB: f32 = -90.0;
/// Per-frame weight when the level is above the floor (time constant ~4 s).
const FLOOR_RISE: f32 = 0.005;
/// Per-frame weight when the level is below the floor.
const FLOOR_FALL: f32 = 0.3;

impl EnergyVad {
    pub fn new(config: VadConfig) -> Self {
        Self {
            config,
            floor_db: FLOOR_START_DB,
        }
    }

    /// The level of a frame in dBFS (digital silence is -96).
    pub fn level_dbfs(frame: &[i16]) -> f32 {
        if frame.is_empty() {
            return -96.0;
        }
        let sum: f64 = frame.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
        let rms = (sum / frame.len() as f64).sqrt() / 32768.0;
        (20.0 * rms.max(1.6e-5).log10()) as f32
    }

    /// Zero crossings per sample, 0 to 1.
    pub fn zcr(frame: &[i16]) -> f32 {
        if frame.len() < 2 {
            return 0.0;
        }
        let crossings = frame
            .windows(2)
            .filter(|w| (w[0] >= 0) != (w[1] >= 0))
            .count();
        crossings as f32 / (frame.len() - 1) as f32
    }
}

impl Vad for EnergyVad {
    fn is_voice(&mut self, frame: &[i16]) -> bool {
        let level = Self::level_dbfs(frame);
        let above = level - self.floor_db;
        let loud_enough = level >= self.config.min_dbfs && above >= self.config.margin_db;
        let voiced = loud_enough
            && (Self::zcr(frame) <= self.config.max_zcr || above >= self.config.loud_db);
        let weight = if level > self.floor_db {
            FLOOR_RISE
        } else {
            FLOOR_FALL
        };
        self.floor_db = (self.floor_db + (level - self.floor_db) * weight).max(FLOOR_MIN_DB);
        voiced
    }
}

/// The utterance in progress.
#[derive(Debug, Clone, Copy)]
struct Utterance {
    start: Duration,
    last_voice: Duration,
    voiced: Duration,
    /// `SpeechStarted` was emitted.
    confirmed: bool,
    /// Started or grew while the agent was playing.
    during_playback: bool,
    /// Voice after the agent stopped playing, in an utterance that began
    /// during playback: with `min_speech` of it the utterance is a turn.
    voiced_after_playback: Duration,
    barged_in: bool,
}

/// The turn-taking core. One per call.
pub struct TurnTaker {
    config: TurnConfig,
    vad: Box<dyn Vad>,
    current: Option<Utterance>,
}

impl TurnTaker {
    /// A core with the energy VAD.
    pub fn new(config: TurnConfig) -> Self {
        let vad = Box::new(EnergyVad::new(config.vad.clone()));
        Self::with_vad(config, vad)
    }

    pub fn with_vad(config: TurnConfig, vad: Box<dyn Vad>) -> Self {
        Self {
            config,
            vad,
            current: None,
        }
    }

    /// Whether the caller is mid-utterance (confirmed speech).
    pub fn caller_speaking(&self) -> bool {
        self.current.is_some_and(|u| u.confirmed)
    }

    /// Feeds one frame that starts at `at` (time since the call began).
    pub fn push(&mut self, at: Duration, pcm: &[i16], playback: Playback) -> Option<TurnEvent> {
        let voice = self.vad.is_voice(pcm);
        self.step(at, voice, playback)
    }

    /// The state machine on one VAD decision; `push` without the VAD.
    pub fn step(&mut self, at: Duration, voice: bool, playback: Playback) -> Option<TurnEvent> {
        let playing = matches!(playback, Playback::Playing { .. });
        let end = at + FRAME;
        let Some(mut u) = self.current else {
            if voice {
                self.current = Some(Utterance {
                    start: at,
                    last_voice: end,
                    voiced: FRAME,
                    confirmed: false,
                    during_playback: playing,
                    voiced_after_playback: Duration::ZERO,
                    barged_in: false,
                });
                return self.confirm(at, playback);
            }
            return None;
        };
        if voice {
            u.last_voice = end;
            u.voiced += FRAME;
            if u.during_playback && !playing {
                u.voiced_after_playback += FRAME;
            }
            u.during_playback |= playing;
            self.current = Some(u);
            if let Some(event) = self.confirm(at, playback) {
                return Some(event);
            }
            let u = self.current?;
            if u.confirmed && end.saturating_sub(u.start) >= self.config.max_turn {
                return self.finish(end, TurnEnd::MaxLength);
            }
            return None;
        }
        let silence = end.saturating_sub(u.last_voice);
        if !u.confirmed {
            // A click or a lone loud frame: forget it after a short gap.
            if silence >= self.config.min_speech {
                self.current = None;
            }
            return None;
        }
        if silence >= self.config.end_silence {
            return self.finish(u.last_voice, TurnEnd::Silence);
        }
        if end.saturating_sub(u.start) >= self.config.max_turn {
            return self.finish(end, TurnEnd::MaxLength);
        }
        None
    }

    /// Emits `SpeechStarted` or `BargeIn` when the utterance crosses the
    /// thresholds on this frame. When both are crossed on one frame the
    /// barge-in wins (it implies the start and carries it): playback stops
    /// a frame sooner.
    fn confirm(&mut self, at: Duration, playback: Playback) -> Option<TurnEvent> {
        let needed = if self.config.backchannels_interrupt {
            self.config.min_speech
        } else {
            self.config.barge_in_min
        };
        let u = self.current.as_mut()?;
        let started = !u.confirmed && u.voiced >= self.config.min_speech;
        u.confirmed |= started;
        if let Playback::Playing { played } = playback
            && u.confirmed
            && !u.barged_in
            && u.voiced >= needed
        {
            u.barged_in = true;
            return Some(TurnEvent::BargeIn {
                at: at + FRAME,
                start: u.start,
                heard_ms: played.as_millis() as u64,
            });
        }
        started.then_some(TurnEvent::SpeechStarted { at: u.start })
    }

    fn finish(&mut self, at: Duration, reason: TurnEnd) -> Option<TurnEvent> {
        let u = self.current.take()?;
        // Speech that goes on after the agent stopped is a turn, however
        // little of it overlapped the playback.
        let outlasted = u.voiced_after_playback >= self.config.min_speech;
        if u.during_playback && !u.barged_in && !outlasted && reason == TurnEnd::Silence {
            return Some(TurnEvent::Backchannel {
                at,
                speech: u.voiced,
            });
        }
        Some(TurnEvent::EndOfTurn {
            at,
            speech: u.voiced,
            reason,
        })
    }
}

/// What the agent said, chunk by chunk with each chunk's audio length, so
/// a barge-in can cut the agent's message to what the caller heard.
#[derive(Debug, Default, Clone)]
pub struct PlaybackLedger {
    chunks: Vec<(String, Duration)>,
}

impl PlaybackLedger {
    /// Records a chunk of text sent to TTS and the length of its audio.
    pub fn push(&mut self, text: &str, audio: Duration) {
        self.chunks.push((text.to_string(), audio));
    }

    pub fn clear(&mut self) {
        self.chunks.clear();
    }

    /// The text the caller heard in the first `heard_ms` of playback: whole
    /// chunks, then the words of the chunk in progress in proportion to the
    /// time it played.
    pub fn heard(&self, heard_ms: u64) -> String {
        let mut left = Duration::from_millis(heard_ms);
        let mut out = String::new();
        for (text, len) in &self.chunks {
            if left >= *len {
                out.push_str(text);
                left -= *len;
                continue;
            }
            let share = left.as_secs_f64() / len.as_secs_f64().max(1e-3);
            let words: Vec<&str> = text.split_whitespace().collect();
            let n = (words.len() as f64 * share).floor() as usize;
            if n > 0 {
                if !out.is_empty() && !out.ends_with(' ') {
                    out.push(' ');
                }
                out.push_str(&words[..n].join(" "));
            }
            break;
        }
        out.trim().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    /// A frame of a 200 Hz + 700 Hz tone at about -20 dBFS: voiced speech as
    /// far as energy and zero crossings go.
    fn voiced(n: usize) -> Vec<i16> {
        (0..FRAME_SAMPLES)
            .map(|i| {
                let t = (n * FRAME_SAMPLES + i) as f32 / 8000.0;
                let s = (2.0 * std::f32::consts::PI * 200.0 * t).sin() * 0.6
                    + (2.0 * std::f32::consts::PI * 700.0 * t).sin() * 0.4;
                (s * 3000.0) as i16
            })
            .collect()
    }

    /// Low white noise (-60 dBFS or so) from a fixed LCG.
    fn hiss(n: usize, amp: i32) -> Vec<i16> {
        let mut x = (n as u32).wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..FRAME_SAMPLES)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (((x >> 16) as i32 % (2 * amp + 1)) - amp) as i16
            })
            .collect()
    }

    /// Runs a script of (voice?, duration) segments through the core and
    /// returns the events with their frame times.
    fn run(core: &mut TurnTaker, segments: &[(bool, u64, bool)]) -> Vec<TurnEvent> {
        let mut at = Duration::ZERO;
        let mut played = Duration::ZERO;
        let mut out = Vec::new();
        let mut n = 0;
        for &(voice, ms, playing) in segments {
            for _ in 0..ms / 20 {
                let pcm = if voice { voiced(n) } else { hiss(n, 30) };
                let playback = if playing {
                    Playback::Playing { played }
                } else {
                    Playback::Idle
                };
                if let Some(e) = core.push(at, &pcm, playback) {
                    out.push(e);
                }
                at += FRAME;
                n += 1;
                if playing {
                    played += FRAME;
                }
            }
        }
        out
    }

    #[test]
    fn vad_separates_tone_from_silence_and_hiss() {
        let mut vad = EnergyVad::new(VadConfig::default());
        for n in 0..50 {
            assert!(!vad.is_voice(&hiss(n, 30)), "hiss frame {n}");
            assert!(!vad.is_voice(&[0; FRAME_SAMPLES]), "silence frame {n}");
        }
        assert!(vad.is_voice(&voiced(0)));
        // Loud white noise has a high zero-crossing rate but is far above the
        // floor: treated as voice (a fricative), never silently swallowed.
        assert!(EnergyVad::zcr(&hiss(0, 3000)) > 0.45);
    }

    #[test]
    fn speech_then_silence_ends_the_turn_after_the_configured_silence() {
        let mut core = TurnTaker::new(TurnConfig::default());
        let events = run(
            &mut core,
            &[
                (false, 400, false),
                (true, 1000, false),
                (false, 1000, false),
            ],
        );
        assert_eq!(
            events,
            vec![
                TurnEvent::SpeechStarted { at: MS(400) },
                TurnEvent::EndOfTurn {
                    at: MS(1400),
                    speech: MS(1000),
                    reason: TurnEnd::Silence
                }
            ]
        );
    }

    #[test]
    fn a_pause_shorter_than_the_silence_keeps_the_turn_open() {
        let mut core = TurnTaker::new(TurnConfig::default());
        let events = run(
            &mut core,
            &[
                (true, 600, false),
                (false, 400, false),
                (true, 600, false),
                (false, 600, false),
            ],
        );
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(
            events[1],
            TurnEvent::EndOfTurn {
                at: MS(1600),
                speech: MS(1200),
                reason: TurnEnd::Silence
            }
        );
    }

    #[test]
    fn the_silence_is_configurable() {
        let mut core = TurnTaker::new(TurnConfig {
            end_silence: MS(200),
            ..TurnConfig::default()
        });
        let events = run(
            &mut core,
            &[(true, 600, false), (false, 400, false), (true, 600, false)],
        );
        assert!(matches!(events[1], TurnEvent::EndOfTurn { at, .. } if at == MS(600)));
        assert!(matches!(events[2], TurnEvent::SpeechStarted { at } if at == MS(1000)));
    }

    #[test]
    fn a_turn_is_cut_at_the_maximum_length() {
        let mut core = TurnTaker::new(TurnConfig {
            max_turn: MS(2000),
            ..TurnConfig::default()
        });
        let events = run(&mut core, &[(true, 3000, false)]);
        assert_eq!(
            events[1],
            TurnEvent::EndOfTurn {
                at: MS(2000),
                speech: MS(2000),
                reason: TurnEnd::MaxLength
            }
        );
    }

    #[test]
    fn a_click_is_not_speech() {
        let mut core = TurnTaker::new(TurnConfig::default());
        let events = run(
            &mut core,
            &[(false, 200, false), (true, 20, false), (false, 1000, false)],
        );
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn barge_in_fires_after_the_minimum_and_reports_what_was_heard() {
        let mut core = TurnTaker::new(TurnConfig::default());
        // The agent plays for 1 s, then the caller talks over it for 1 s.
        let events = run(
            &mut core,
            &[
                (false, 1000, true),
                (true, 1000, true),
                (false, 1000, false),
            ],
        );
        assert_eq!(events[0], TurnEvent::SpeechStarted { at: MS(1000) });
        // 400 ms of voice: the barge-in comes at 1.4 s, having played 1.38 s
        // by the start of that frame.
        assert_eq!(
            events[1],
            TurnEvent::BargeIn {
                at: MS(1400),
                start: MS(1000),
                heard_ms: 1380
            }
        );
        assert!(matches!(
            events[2],
            TurnEvent::EndOfTurn {
                reason: TurnEnd::Silence,
                ..
            }
        ));
    }

    /// Issue 13: the caller starts 200 ms before the greeting ends (less
    /// than the barge-in threshold) and goes on talking after it: a turn,
    /// not a backchannel.
    #[test]
    fn speech_that_outlasts_the_playback_is_a_turn() {
        let mut core = TurnTaker::new(TurnConfig::default());
        let events = run(
            &mut core,
            &[
                (false, 800, true),
                (true, 200, true),
                (true, 1000, false),
                (false, 1000, false),
            ],
        );
        assert_eq!(events[0], TurnEvent::SpeechStarted { at: MS(800) });
        assert_eq!(
            events[1],
            TurnEvent::EndOfTurn {
                at: MS(2000),
                speech: MS(1200),
                reason: TurnEnd::Silence
            },
            "{events:?}"
        );
        // A "yeah" that ends a frame after the playback is still one.
        let mut core = TurnTaker::new(TurnConfig::default());
        let events = run(
            &mut core,
            &[
                (false, 800, true),
                (true, 180, true),
                (true, 20, false),
                (false, 1000, false),
            ],
        );
        assert!(
            matches!(events[1], TurnEvent::Backchannel { .. }),
            "{events:?}"
        );
    }

    #[test]
    fn backchannels_do_not_interrupt() {
        let mut core = TurnTaker::new(TurnConfig::default());
        let events = run(
            &mut core,
            &[(false, 500, true), (true, 240, true), (false, 1000, true)],
        );
        assert_eq!(
            events,
            vec![
                TurnEvent::SpeechStarted { at: MS(500) },
                TurnEvent::Backchannel {
                    at: MS(740),
                    speech: MS(240)
                }
            ]
        );
    }

    #[test]
    fn backchannels_interrupt_when_configured() {
        let mut core = TurnTaker::new(TurnConfig {
            backchannels_interrupt: true,
            ..TurnConfig::default()
        });
        let events = run(&mut core, &[(false, 500, true), (true, 240, true)]);
        // The third voiced frame (540 ms) confirms speech and interrupts.
        assert!(
            matches!(
                events[0],
                TurnEvent::BargeIn { at, start, .. } if at == MS(560) && start == MS(500)
            ),
            "{events:?}"
        );
    }

    #[test]
    fn the_barge_in_minimum_is_configurable() {
        let mut core = TurnTaker::new(TurnConfig {
            barge_in_min: MS(200),
            ..TurnConfig::default()
        });
        let events = run(&mut core, &[(false, 100, true), (true, 240, true)]);
        assert!(
            events
                .iter()
                .any(|e| matches!(e, TurnEvent::BargeIn { at, .. } if *at == MS(300))),
            "{events:?}"
        );
    }

    /// Speech from flite (installed by `scripts/test`), 8 kHz, through
    /// G.711 µ-law with low background noise, between stretches of noise.
    fn flite_frames(text: &str) -> Vec<Vec<i16>> {
        let dir = tempfile::tempdir().unwrap();
        let wav = dir.path().join("s.wav");
        let ok = std::process::Command::new("flite")
            .args(["-t", text, "-o"])
            .arg(&wav)
            .status()
            .expect("flite is installed by scripts/test")
            .success();
        assert!(ok);
        let bytes = std::fs::read(&wav).unwrap();
        // flite writes a plain 44-byte RIFF header, 8 kHz mono s16le.
        let speech: Vec<i16> = bytes[44..]
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        let mut samples = vec![0i16; 8000];
        samples.extend(speech);
        samples.extend(vec![0i16; 8000]);
        let noise = hiss(0, 40);
        samples
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                let s = s.saturating_add(noise[i % FRAME_SAMPLES]);
                crate::media::g711::ulaw_to_linear(crate::media::g711::linear_to_ulaw(s))
            })
            .collect::<Vec<_>>()
            .chunks_exact(FRAME_SAMPLES)
            .map(<[i16]>::to_vec)
            .collect()
    }

    #[test]
    fn flite_speech_through_g711_is_one_turn_and_silence_is_not_voice() {
        let frames = flite_frames("Hello, I would like to order a large pizza, please.");
        let mut vad = EnergyVad::new(VadConfig::default());
        let started = std::time::Instant::now();
        let decisions: Vec<bool> = frames.iter().map(|f| vad.is_voice(f)).collect();
        let per_frame = started.elapsed() / frames.len() as u32;
        // The first and last second are noise only.
        let lead = &decisions[..50];
        let tail = &decisions[decisions.len() - 50..];
        assert!(!lead.iter().any(|&v| v), "noise taken for voice");
        assert!(!tail.iter().any(|&v| v), "noise taken for voice");
        // Of the frames with real energy, almost all are voice.
        let loud: Vec<bool> = frames
            .iter()
            .zip(&decisions)
            .filter(|(f, _)| EnergyVad::level_dbfs(f) > -35.0)
            .map(|(_, &v)| v)
            .collect();
        let hit = loud.iter().filter(|&&v| v).count() as f64 / loud.len() as f64;
        eprintln!(
            "flite: {} frames, {} loud, {:.1}% of loud frames voiced, {per_frame:?} per frame",
            frames.len(),
            loud.len(),
            hit * 100.0
        );
        assert!(hit > 0.95, "{hit}");

        let mut core = TurnTaker::new(TurnConfig::default());
        let events: Vec<TurnEvent> = frames
            .iter()
            .enumerate()
            .filter_map(|(n, f)| core.push(FRAME * n as u32, f, Playback::Idle))
            .collect();
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(matches!(events[0], TurnEvent::SpeechStarted { at } if at >= MS(1000)));
        assert!(matches!(
            events[1],
            TurnEvent::EndOfTurn {
                reason: TurnEnd::Silence,
                ..
            }
        ));
    }

    #[test]
    fn a_flite_backchannel_during_playback_does_not_interrupt() {
        let frames = flite_frames("Yeah.");
        let mut core = TurnTaker::new(TurnConfig::default());
        let events: Vec<TurnEvent> = frames
            .iter()
            .enumerate()
            .filter_map(|(n, f)| {
                let played = FRAME * n as u32;
                core.push(played, f, Playback::Playing { played })
            })
            .collect();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, TurnEvent::Backchannel { .. })),
            "{events:?}"
        );
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, TurnEvent::BargeIn { .. })),
            "{events:?}"
        );
    }

    #[test]
    fn the_ledger_cuts_the_message_to_what_was_heard() {
        let mut ledger = PlaybackLedger::default();
        ledger.push("Your order is a large pizza. ", MS(2000));
        ledger.push("It will arrive in twenty minutes.", MS(2000));
        assert_eq!(ledger.heard(0), "");
        assert_eq!(ledger.heard(2000), "Your order is a large pizza.");
        assert_eq!(
            ledger.heard(3000),
            "Your order is a large pizza. It will arrive"
        );
        assert_eq!(
            ledger.heard(10_000),
            "Your order is a large pizza. It will arrive in twenty minutes."
        );
    }
}
