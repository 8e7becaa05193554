//! Adaptive jitter buffer for one inbound RTP stream (sans-IO).
//!
//! Owns: ordering received packets by sequence number, deciding at each
//! playout call which packet is due, concealment decisions (a lost packet
//! becomes [`Playout::Missing`]), the playout delay and its adaptation, and
//! the receive statistics of RFC 3550 §6.4.1: cumulative loss (appendix A.3)
//! and interarrival jitter (appendix A.8).
//!
//! Must not: touch sockets, clocks or codecs. Arrival times are passed in,
//! payloads are opaque bytes; the driver decodes them.
//!
//! How it plays out:
//! - Playout follows sequence numbers, extended to 64 bits (RFC 3550 A.1) so
//!   the 16-bit wrap is invisible. A packet behind the playout point is too
//!   late and dropped; a second copy of a buffered packet is a duplicate.
//! - Playout starts (and restarts after an underrun) once the oldest buffered
//!   packet has waited the target delay. During an underrun the playout point
//!   holds, so a talkspurt after silence suppression starts cleanly.
//! - The target delay is one packet plus three times the RFC 3550 jitter,
//!   bounded by [`JitterConfig::min_delay`] and [`JitterConfig::max_delay`].
//!   Until the estimate has settled (16 steps) the initial delay is a floor.
//!   When more than the target (plus two packets) is buffered, playout skips
//!   ahead one packet per call; beyond the maximum it jumps straight back to
//!   the target.
//! - A new SSRC restarts the stream. So does a packet from behind the playout
//!   point after the stream was silent for [`JitterConfig::restart_after_idle`]
//!   (SIPp's pcaps replay the same SSRC and sequence numbers), and a jump of
//!   more than [`MAX_DROPOUT`] ahead or [`MAX_MISORDER`] behind once two
//!   sequential packets confirm it (RFC 3550 A.1 probation).
//! - Packets that carry no audio (RFC 4733 events share the sequence space)
//!   are pushed as placeholders so their sequence numbers are not counted as
//!   lost; their slot plays out as [`Playout::NonAudio`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A jump forward larger than this many packets is a discontinuity, not loss
/// (RFC 3550 A.1 uses 3000).
pub const MAX_DROPOUT: i64 = 3000;
/// A packet this many packets behind the newest is a discontinuity, not a
/// late packet (RFC 3550 A.1 uses 100).
pub const MAX_MISORDER: i64 = 100;
/// Extra buffered packets tolerated above the target before skipping ahead.
const SHRINK_HYSTERESIS_PACKETS: u64 = 2;
/// Safety factor on the RFC 3550 jitter when choosing the target delay.
const JITTER_MULTIPLIER: f64 = 3.0;
/// A timestamp step this far (in seconds) from the arrival step is a
/// discontinuity, left out of the jitter estimate.
const JITTER_DISCONTINUITY_SECS: f64 = 1.0;
/// Jitter samples before the estimate may take the target below the
/// initial delay (the A.8 filter's time constant).
const SETTLE_SAMPLES: u32 = 16;
/// Offset given to the first extended sequence number so it can go back.
const EXT_SEQ_ORIGIN: u64 = 1 << 32;

/// Tuning of one jitter buffer. The defaults suit 20 ms G.711 at 8 kHz.
#[derive(Debug, Clone, PartialEq)]
pub struct JitterConfig {
    /// RTP clock rate of the stream (8000 for G.711).
    pub clock_rate: u32,
    /// Samples per packet assumed until two packets show the real spacing.
    pub packet_samples: u32,
    /// Delay used before any jitter has been measured.
    pub initial_delay: Duration,
    /// Lower bound of the adaptive delay.
    pub min_delay: Duration,
    /// Upper bound of the adaptive delay; more buffered audio is discarded.
    pub max_delay: Duration,
    /// Most packets held at once; older ones are discarded beyond this.
    pub max_packets: usize,
    /// Silence after which a packet from behind the playout point starts a
    /// new stream instead of being dropped as late.
    pub restart_after_idle: Duration,
}

impl Default for JitterConfig {
    fn default() -> Self {
        JitterConfig {
            clock_rate: 8000,
            packet_samples: 160,
            initial_delay: Duration::from_millis(60),
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(300),
            max_packets: 64,
            restart_after_idle: Duration::from_millis(500),
        }
    }
}

/// The header fields and payload of one received RTP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpPacket {
    pub ssrc: u32,
    pub sequence: u16,
    pub timestamp: u32,
    pub payload_type: u8,
    pub payload: Vec<u8>,
}

/// An audio packet that is due for playout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub payload: Vec<u8>,
}

/// What [`JitterBuffer::pop`] hands to the consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Playout {
    /// The next packet in sequence.
    Frame(Frame),
    /// The next packet in sequence is lost: conceal this many samples.
    Missing { samples: u32 },
    /// The next sequence number carried no audio (e.g. an RFC 4733 event).
    NonAudio,
    /// Nothing is due: buffering, or the stream is silent.
    Idle,
}

/// What happened to a pushed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Buffered for playout.
    Buffered,
    /// Buffered as the first packet of a new stream (SSRC change or jump).
    Restarted,
    /// A copy of a packet already buffered; dropped.
    Duplicate,
    /// Behind the playout point; dropped.
    TooLate,
    /// A large sequence jump waiting for confirmation (RFC 3550 A.1); dropped.
    Probation,
}

/// Receive statistics, cumulative over every SSRC the buffer has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct JitterStats {
    /// Packets accepted into the buffer (not duplicates).
    pub received: u64,
    /// Packets expected but never received (RFC 3550 A.3), per stream,
    /// summed.
    pub lost: u64,
    pub duplicates: u64,
    pub late: u64,
    /// Lost packets concealed with [`Playout::Missing`].
    pub concealed: u64,
    /// Buffered packets thrown away to bring the delay down.
    pub discarded: u64,
    /// Times playout ran dry and had to buffer again.
    pub underruns: u64,
    /// Times the stream restarted (new SSRC, replay, confirmed jump).
    pub restarts: u64,
    /// RFC 3550 A.8 interarrival jitter.
    pub jitter: Duration,
    /// The playout delay currently aimed for.
    pub target_delay: Duration,
}

#[derive(Debug)]
enum Entry {
    Audio(Frame),
    NonAudio,
}

#[derive(Debug)]
struct Slot {
    entry: Entry,
    arrival: Instant,
}

/// Per-SSRC sequence state (RFC 3550 A.1).
#[derive(Debug)]
struct Source {
    ssrc: u32,
    base_seq: u64,
    max_seq: u64,
    received: u64,
}

impl Source {
    fn new(ssrc: u32, sequence: u16) -> Self {
        let ext = EXT_SEQ_ORIGIN + u64::from(sequence);
        Source {
            ssrc,
            base_seq: ext,
            max_seq: ext,
            received: 0,
        }
    }

    /// Signed distance of `sequence` from the highest sequence seen.
    fn delta(&self, sequence: u16) -> i64 {
        // Truncation to u16 is the point: RTP sequence numbers wrap.
        i64::from(sequence.wrapping_sub(self.max_seq as u16) as i16)
    }

    fn lost(&self) -> u64 {
        let expected = self.max_seq - self.base_seq + 1;
        expected.saturating_sub(self.received)
    }
}

/// The last packet that went into the jitter estimate.
#[derive(Debug, Clone, Copy)]
struct Transit {
    arrival: Instant,
    timestamp: u32,
}

/// The adaptive jitter buffer. See the module documentation.
#[derive(Debug)]
pub struct JitterBuffer {
    config: JitterConfig,
    source: Option<Source>,
    /// Buffered packets by extended sequence number.
    slots: BTreeMap<u64, Slot>,
    /// Extended sequence number due next; `None` before the first playout.
    next_seq: Option<u64>,
    /// False while (re)buffering.
    playing: bool,
    /// A jump waiting for its confirming successor: (ssrc, sequence).
    probation: Option<(u32, u16)>,
    last_arrival: Option<Instant>,
    last_transit: Option<Transit>,
    /// RFC 3550 A.8 jitter in timestamp units.
    jitter: f64,
    /// How many steps went into `jitter`.
    jitter_samples: u32,
    /// Samples per packet, from the timestamp step of consecutive packets.
    packet_samples: u32,
    target: Duration,
    /// Loss of streams that have ended (restarts).
    lost_before: u64,
    stats: JitterStats,
}

impl JitterBuffer {
    pub fn new(config: JitterConfig) -> Self {
        let target = config
            .initial_delay
            .clamp(config.min_delay, config.max_delay.max(config.min_delay));
        JitterBuffer {
            packet_samples: config.packet_samples.max(1),
            config,
            source: None,
            slots: BTreeMap::new(),
            next_seq: None,
            playing: false,
            probation: None,
            last_arrival: None,
            last_transit: None,
            jitter: 0.0,
            jitter_samples: 0,
            target,
            lost_before: 0,
            stats: JitterStats::default(),
        }
    }

    /// Adds a received audio packet.
    pub fn push(&mut self, packet: RtpPacket, arrival: Instant) -> PushOutcome {
        let RtpPacket {
            ssrc,
            sequence,
            timestamp,
            payload_type,
            payload,
        } = packet;
        let entry = Entry::Audio(Frame {
            payload_type,
            sequence,
            timestamp,
            payload,
        });
        self.insert(ssrc, sequence, Some(timestamp), entry, arrival)
    }

    /// Takes the sequence number of a packet that carries no audio (an RFC
    /// 4733 event), so that it is neither counted lost nor concealed.
    pub fn push_non_audio(&mut self, ssrc: u32, sequence: u16, arrival: Instant) -> PushOutcome {
        self.insert(ssrc, sequence, None, Entry::NonAudio, arrival)
    }

    fn insert(
        &mut self,
        ssrc: u32,
        sequence: u16,
        timestamp: Option<u32>,
        entry: Entry,
        arrival: Instant,
    ) -> PushOutcome {
        let idle = self.last_arrival.is_some_and(|last| {
            arrival.saturating_duration_since(last) >= self.config.restart_after_idle
        });
        let mut outcome = PushOutcome::Buffered;
        let ext = match &self.source {
            None => {
                self.source = Some(Source::new(ssrc, sequence));
                EXT_SEQ_ORIGIN + u64::from(sequence)
            }
            Some(source) if source.ssrc != ssrc => {
                self.restart(ssrc, sequence);
                outcome = PushOutcome::Restarted;
                EXT_SEQ_ORIGIN + u64::from(sequence)
            }
            Some(source) => {
                let delta = source.delta(sequence);
                // `max_seq >= EXT_SEQ_ORIGIN > |delta|`, so this cannot wrap.
                let ext = source.max_seq.wrapping_add_signed(delta);
                let behind = self.next_seq.is_some_and(|next| ext < next);
                if !(-MAX_MISORDER..=MAX_DROPOUT).contains(&delta) {
                    if self.probation == Some((ssrc, sequence)) {
                        self.restart(ssrc, sequence);
                        outcome = PushOutcome::Restarted;
                        EXT_SEQ_ORIGIN + u64::from(sequence)
                    } else {
                        self.probation = Some((ssrc, sequence.wrapping_add(1)));
                        return PushOutcome::Probation;
                    }
                } else if delta <= 0 && idle && (behind || self.slots.is_empty()) {
                    self.restart(ssrc, sequence);
                    outcome = PushOutcome::Restarted;
                    EXT_SEQ_ORIGIN + u64::from(sequence)
                } else if self.slots.contains_key(&ext) {
                    self.stats.duplicates += 1;
                    return PushOutcome::Duplicate;
                } else if behind {
                    self.stats.late += 1;
                    return PushOutcome::TooLate;
                } else {
                    ext
                }
            }
        };
        self.probation = None;
        self.last_arrival = Some(arrival);
        if let Some(source) = self.source.as_mut() {
            source.received += 1;
            source.max_seq = source.max_seq.max(ext);
        }
        self.stats.received += 1;
        if let Some(timestamp) = timestamp {
            self.learn_packet_size(ext, timestamp);
            self.update_jitter(timestamp, arrival);
        }
        self.slots.insert(ext, Slot { entry, arrival });
        while self.slots.len() > self.config.max_packets.max(1) {
            if let Some((ext, _)) = self.slots.pop_first() {
                self.stats.discarded += 1;
                self.next_seq = Some(ext + 1);
            }
        }
        outcome
    }

    fn restart(&mut self, ssrc: u32, sequence: u16) {
        if let Some(old) = self.source.take() {
            self.lost_before += old.lost();
        }
        self.source = Some(Source::new(ssrc, sequence));
        self.stats.restarts += 1;
        self.slots.clear();
        self.next_seq = None;
        self.playing = false;
        self.probation = None;
        self.last_transit = None;
    }

    /// Learns the packet duration from two packets adjacent in sequence.
    fn learn_packet_size(&mut self, ext: u64, timestamp: u32) {
        let neighbour = |slot: Option<&Slot>| match slot.map(|s| &s.entry) {
            Some(Entry::Audio(frame)) => Some(frame.timestamp),
            _ => None,
        };
        let step = if let Some(prev) = neighbour(self.slots.get(&(ext - 1))) {
            timestamp.wrapping_sub(prev)
        } else if let Some(next) = neighbour(self.slots.get(&(ext + 1))) {
            next.wrapping_sub(timestamp)
        } else {
            return;
        };
        // Ignore steps that are not a plausible packet (at most 120 ms).
        if step > 0 && step <= self.config.clock_rate / 8 {
            self.packet_samples = step;
        }
    }

    /// RFC 3550 A.8: J += (|D(i-1,i)| - J) / 16, in timestamp units.
    fn update_jitter(&mut self, timestamp: u32, arrival: Instant) {
        let rate = f64::from(self.config.clock_rate);
        if let Some(last) = self.last_transit {
            let arrival_step = if arrival >= last.arrival {
                (arrival - last.arrival).as_secs_f64()
            } else {
                -(last.arrival - arrival).as_secs_f64()
            } * rate;
            // Truncation to i32 is the point: RTP timestamps wrap.
            let timestamp_step = f64::from(timestamp.wrapping_sub(last.timestamp) as i32);
            let d = (arrival_step - timestamp_step).abs();
            if d > JITTER_DISCONTINUITY_SECS * rate {
                self.last_transit = Some(Transit { arrival, timestamp });
                return;
            }
            self.jitter += (d - self.jitter) / 16.0;
            self.jitter_samples = self.jitter_samples.saturating_add(1);
        }
        self.last_transit = Some(Transit { arrival, timestamp });
        let packet = self.packet_duration();
        let mut wanted = packet + Duration::from_secs_f64(JITTER_MULTIPLIER * self.jitter / rate);
        if self.jitter_samples < SETTLE_SAMPLES {
            wanted = wanted.max(self.config.initial_delay);
        }
        self.target = wanted.clamp(
            self.config.min_delay,
            self.config.max_delay.max(self.config.min_delay),
        );
    }

    fn packet_duration(&self) -> Duration {
        Duration::from_secs_f64(
            f64::from(self.packet_samples) / f64::from(self.config.clock_rate.max(1)),
        )
    }

    /// How many packets the target delay holds (at least one).
    fn target_packets(&self) -> u64 {
        let packet = self.packet_duration().as_secs_f64();
        let packets = (self.target.as_secs_f64() / packet).ceil();
        // A bounded, positive float: the conversion cannot overflow.
        (packets as u64).max(1)
    }

    fn max_packets_by_delay(&self) -> u64 {
        let packet = self.packet_duration().as_secs_f64();
        ((self.config.max_delay.as_secs_f64() / packet).ceil() as u64).max(1)
    }

    /// Hands out what is due at `now`. Call it once per packet duration, or
    /// in a loop until enough samples are gathered.
    pub fn pop(&mut self, now: Instant) -> Playout {
        if !self.playing {
            let Some((&first, slot)) = self.slots.first_key_value() else {
                return Playout::Idle;
            };
            if now < slot.arrival + self.target {
                return Playout::Idle;
            }
            self.playing = true;
            // Anything between the old playout point and `first` went by
            // while we were silent: it is lost, not concealed.
            self.next_seq = Some(first);
        }
        let Some(mut next) = self.next_seq else {
            return Playout::Idle;
        };
        let Some(&newest) = self.slots.keys().next_back() else {
            self.playing = false;
            self.stats.underruns += 1;
            return Playout::Idle;
        };
        let buffered = newest.saturating_sub(next) + 1;
        if buffered > self.max_packets_by_delay() {
            next = newest + 1 - self.target_packets();
            self.skip_to(next);
        } else if buffered > self.target_packets() + SHRINK_HYSTERESIS_PACKETS {
            next += 1;
            self.skip_to(next);
        }
        self.next_seq = Some(next + 1);
        match self.slots.remove(&next) {
            Some(Slot {
                entry: Entry::Audio(frame),
                ..
            }) => Playout::Frame(frame),
            Some(Slot {
                entry: Entry::NonAudio,
                ..
            }) => Playout::NonAudio,
            None => {
                self.stats.concealed += 1;
                Playout::Missing {
                    samples: self.packet_samples,
                }
            }
        }
    }

    /// Drops every buffered packet before `next`.
    fn skip_to(&mut self, next: u64) {
        while let Some(entry) = self.slots.first_entry() {
            if *entry.key() >= next {
                break;
            }
            entry.remove();
            self.stats.discarded += 1;
        }
    }

    /// Samples per packet as currently measured (160 for 20 ms at 8 kHz).
    pub fn packet_samples(&self) -> u32 {
        self.packet_samples
    }

    /// Current statistics.
    pub fn stats(&self) -> JitterStats {
        let lost = self.lost_before + self.source.as_ref().map_or(0, Source::lost);
        JitterStats {
            lost,
            jitter: Duration::from_secs_f64(self.jitter / f64::from(self.config.clock_rate.max(1))),
            target_delay: self.target,
            ..self.stats
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SSRC: u32 = 0x1234_5678;
    const PT: u8 = 0;
    const TICK: Duration = Duration::from_millis(20);

    fn packet(ssrc: u32, sequence: u16, timestamp: u32) -> RtpPacket {
        RtpPacket {
            ssrc,
            sequence,
            timestamp,
            payload_type: PT,
            payload: vec![sequence as u8; 160],
        }
    }

    fn config() -> JitterConfig {
        JitterConfig {
            initial_delay: Duration::from_millis(40),
            ..JitterConfig::default()
        }
    }

    /// Pops until something other than `Idle` comes out, at most `ticks`.
    fn pop_ticks(jb: &mut JitterBuffer, now: &mut Instant, ticks: usize) -> Vec<Playout> {
        let mut out = Vec::new();
        for _ in 0..ticks {
            out.push(jb.pop(*now));
            *now += TICK;
        }
        out
    }

    fn sequences(out: &[Playout]) -> Vec<Option<u16>> {
        out.iter()
            .filter(|p| !matches!(p, Playout::Idle))
            .map(|p| match p {
                Playout::Frame(f) => Some(f.sequence),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn waits_for_the_target_delay_then_plays_in_order() {
        let mut jb = JitterBuffer::new(config());
        let t0 = Instant::now();
        // Arrives reordered: 11 before 10.
        assert_eq!(jb.push(packet(SSRC, 11, 1760), t0), PushOutcome::Buffered);
        assert_eq!(
            jb.push(packet(SSRC, 10, 1600), t0 + Duration::from_millis(5)),
            PushOutcome::Buffered
        );
        assert_eq!(
            jb.push(packet(SSRC, 12, 1920), t0 + TICK),
            PushOutcome::Buffered
        );
        // The oldest (10) arrived at 5 ms; the initial delay is 40 ms.
        assert_eq!(jb.pop(t0 + Duration::from_millis(44)), Playout::Idle);
        let mut now = t0 + Duration::from_millis(45);
        let out = pop_ticks(&mut jb, &mut now, 3);
        assert_eq!(sequences(&out), vec![Some(10), Some(11), Some(12)]);
        assert_eq!(jb.stats().received, 3);
        assert_eq!(jb.stats().lost, 0);
    }

    #[test]
    fn duplicates_and_late_packets_are_dropped() {
        let mut jb = JitterBuffer::new(config());
        let t0 = Instant::now();
        jb.push(packet(SSRC, 100, 0), t0);
        jb.push(packet(SSRC, 101, 160), t0);
        assert_eq!(jb.push(packet(SSRC, 101, 160), t0), PushOutcome::Duplicate);
        let mut now = t0 + Duration::from_millis(40);
        let out = pop_ticks(&mut jb, &mut now, 2);
        assert_eq!(sequences(&out), vec![Some(100), Some(101)]);
        assert_eq!(jb.push(packet(SSRC, 100, 0), now), PushOutcome::TooLate);
        let stats = jb.stats();
        assert_eq!((stats.duplicates, stats.late), (1, 1));
    }

    #[test]
    fn a_gap_inside_the_stream_is_concealed_and_counted_lost() {
        let mut jb = JitterBuffer::new(config());
        let t0 = Instant::now();
        jb.push(packet(SSRC, 1, 160), t0);
        jb.push(packet(SSRC, 2, 320), t0 + TICK);
        // 3 is lost.
        jb.push(packet(SSRC, 4, 640), t0 + 3 * TICK);
        let mut now = t0 + Duration::from_millis(40);
        let out = pop_ticks(&mut jb, &mut now, 4);
        assert_eq!(out[2], Playout::Missing { samples: 160 });
        assert_eq!(sequences(&out), vec![Some(1), Some(2), None, Some(4)]);
        let stats = jb.stats();
        assert_eq!((stats.lost, stats.concealed), (1, 1));
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut jb = JitterBuffer::new(config());
        let t0 = Instant::now();
        for (i, seq) in [65534u16, 65535, 0, 1].into_iter().enumerate() {
            let i = i as u32;
            jb.push(packet(SSRC, seq, i * 160), t0 + TICK * i);
        }
        let mut now = t0 + Duration::from_millis(40);
        let out = pop_ticks(&mut jb, &mut now, 6);
        assert_eq!(
            sequences(&out),
            vec![Some(65534), Some(65535), Some(0), Some(1)]
        );
        assert_eq!(jb.stats().lost, 0);
    }

    #[test]
    fn underrun_holds_and_rebuffers() {
        let mut jb = JitterBuffer::new(config());
        let t0 = Instant::now();
        jb.push(packet(SSRC, 1, 0), t0);
        let mut now = t0 + Duration::from_millis(40);
        assert!(matches!(jb.pop(now), Playout::Frame(_)));
        now += TICK;
        // Silence (e.g. DTX): nothing to play, nothing concealed.
        assert_eq!(jb.pop(now), Playout::Idle);
        assert_eq!(jb.stats().underruns, 1);
        // The talkspurt resumes with the next sequence number.
        jb.push(packet(SSRC, 2, 480), now);
        assert_eq!(jb.pop(now + TICK), Playout::Idle, "rebuffering");
        let played = jb.pop(now + Duration::from_millis(40));
        assert!(matches!(played, Playout::Frame(f) if f.sequence == 2));
        assert_eq!(jb.stats().concealed, 0);
    }

    #[test]
    fn target_delay_grows_with_jitter_and_stays_bounded() {
        let mut jb = JitterBuffer::new(config());
        let t0 = Instant::now();
        // Perfectly paced: the target settles at the minimum plus one packet.
        for i in 0..50u32 {
            jb.push(packet(SSRC, i as u16, i * 160), t0 + TICK * i);
        }
        let calm = jb.stats();
        assert!(calm.jitter < Duration::from_millis(1), "{calm:?}");
        assert!(calm.target_delay <= Duration::from_millis(21), "{calm:?}");
        // Alternating 0 / 15 ms extra delay: |D| = 15 ms each packet.
        let shaky = |max_delay| {
            let mut jb = JitterBuffer::new(JitterConfig {
                max_delay,
                ..config()
            });
            for i in 0..200u32 {
                let extra = Duration::from_millis(if i % 2 == 0 { 0 } else { 15 });
                jb.push(packet(SSRC, i as u16, i * 160), t0 + TICK * i + extra);
            }
            jb.stats()
        };
        let stats = shaky(Duration::from_millis(300));
        let jitter_ms = stats.jitter.as_secs_f64() * 1000.0;
        assert!((14.0..=15.01).contains(&jitter_ms), "jitter {jitter_ms} ms");
        // One packet plus three times the jitter.
        let target_ms = stats.target_delay.as_secs_f64() * 1000.0;
        assert!((62.0..=65.1).contains(&target_ms), "target {target_ms} ms");
        let capped = shaky(Duration::from_millis(50));
        assert_eq!(capped.target_delay, Duration::from_millis(50));
    }

    #[test]
    fn rfc3550_jitter_of_a_known_sequence() {
        // Transit times 0, 10, 0, 10 ms: |D| = 80 timestamp units each step.
        let mut jb = JitterBuffer::new(config());
        let t0 = Instant::now();
        let mut expected = 0.0f64;
        for i in 0..4u32 {
            let extra = Duration::from_millis(if i % 2 == 1 { 10 } else { 0 });
            jb.push(packet(SSRC, i as u16, i * 160), t0 + TICK * i + extra);
            if i > 0 {
                expected += (80.0 - expected) / 16.0;
            }
        }
        let got = jb.stats().jitter.as_secs_f64() * 8000.0;
        assert!(
            (got - expected).abs() < 0.01,
            "got {got}, expected {expected}"
        );
    }

    #[test]
    fn a_burst_beyond_the_target_is_shed() {
        let mut jb = JitterBuffer::new(config());
        let t0 = Instant::now();
        jb.push(packet(SSRC, 0, 0), t0);
        let mut now = t0 + Duration::from_millis(40);
        assert!(matches!(jb.pop(now), Playout::Frame(_)));
        // 20 packets (400 ms) arrive at once after a network stall.
        for i in 1..=20u32 {
            jb.push(packet(SSRC, i as u16, i * 160), now);
        }
        now += TICK;
        let first = jb.pop(now);
        // Above the 300 ms maximum: playout jumps back to the target.
        let stats = jb.stats();
        let keep = (stats.target_delay.as_secs_f64() / 0.02).ceil() as u16;
        assert!(keep < 10, "{stats:?}");
        assert!(
            matches!(first, Playout::Frame(ref f) if f.sequence == 21 - keep),
            "{first:?}"
        );
        assert_eq!(stats.discarded, u64::from(20 - keep));
    }

    #[test]
    fn ssrc_change_restarts_the_stream() {
        let mut jb = JitterBuffer::new(config());
        let t0 = Instant::now();
        jb.push(packet(SSRC, 500, 0), t0);
        jb.push(packet(SSRC, 502, 320), t0 + TICK);
        assert_eq!(
            jb.push(packet(0xBEEF, 7, 99), t0 + TICK),
            PushOutcome::Restarted
        );
        let mut now = t0 + TICK + Duration::from_millis(40);
        let out = pop_ticks(&mut jb, &mut now, 1);
        assert_eq!(sequences(&out), vec![Some(7)]);
        let stats = jb.stats();
        // The old stream lost 501; the new one nothing.
        assert_eq!((stats.restarts, stats.lost), (1, 1));
    }

    #[test]
    fn a_replay_with_the_same_ssrc_and_sequence_numbers_is_played() {
        // SIPp's DTMF pcaps reuse SSRC, sequence numbers and timestamps.
        let mut jb = JitterBuffer::new(config());
        let t0 = Instant::now();
        let mut now = t0;
        for round in 0..2 {
            let mut out = Vec::new();
            for i in 0..10u32 {
                if i < 5 {
                    let outcome = jb.push(packet(SSRC, 7984 + i as u16, i * 160), now);
                    let expected = if round == 1 && i == 0 {
                        PushOutcome::Restarted
                    } else {
                        PushOutcome::Buffered
                    };
                    assert_eq!(outcome, expected, "round {round} packet {i}");
                }
                out.push(jb.pop(now));
                now += TICK;
            }
            let expected: Vec<Option<u16>> = (7984..7989).map(Some).collect();
            assert_eq!(sequences(&out), expected, "round {round}");
            now += Duration::from_secs(1);
        }
    }

    #[test]
    fn a_big_jump_needs_two_sequential_packets() {
        let mut jb = JitterBuffer::new(config());
        let t0 = Instant::now();
        jb.push(packet(SSRC, 10, 0), t0);
        assert_eq!(jb.push(packet(SSRC, 30_000, 0), t0), PushOutcome::Probation);
        assert_eq!(jb.push(packet(SSRC, 11, 160), t0), PushOutcome::Buffered);
        assert_eq!(jb.push(packet(SSRC, 40_000, 0), t0), PushOutcome::Probation);
        assert_eq!(
            jb.push(packet(SSRC, 40_001, 160), t0),
            PushOutcome::Restarted
        );
        assert_eq!(jb.stats().restarts, 1);
    }

    #[test]
    fn non_audio_slots_are_neither_lost_nor_concealed() {
        let mut jb = JitterBuffer::new(config());
        let t0 = Instant::now();
        jb.push(packet(SSRC, 1, 0), t0);
        jb.push_non_audio(SSRC, 2, t0);
        jb.push(packet(SSRC, 3, 320), t0);
        let mut now = t0 + Duration::from_millis(40);
        let out = pop_ticks(&mut jb, &mut now, 3);
        assert_eq!(out[1], Playout::NonAudio);
        let stats = jb.stats();
        assert_eq!((stats.lost, stats.concealed), (0, 0));
    }

    #[test]
    fn the_packet_size_is_learned_from_timestamps() {
        let mut jb = JitterBuffer::new(config());
        let t0 = Instant::now();
        jb.push(packet(SSRC, 1, 0), t0);
        jb.push(packet(SSRC, 2, 240), t0);
        jb.push(packet(SSRC, 4, 720), t0);
        assert_eq!(jb.packet_samples(), 240);
        let mut now = t0 + Duration::from_millis(60);
        let out = pop_ticks(&mut jb, &mut now, 3);
        assert_eq!(out[2], Playout::Missing { samples: 240 });
    }

    #[test]
    fn overflow_discards_the_oldest() {
        let mut jb = JitterBuffer::new(JitterConfig {
            max_packets: 4,
            ..config()
        });
        let t0 = Instant::now();
        for i in 0..6u32 {
            jb.push(packet(SSRC, i as u16, i * 160), t0);
        }
        assert_eq!(jb.stats().discarded, 2);
        assert_eq!(jb.push(packet(SSRC, 0, 0), t0), PushOutcome::TooLate);
    }
}
