//! Outgoing RTP: what goes into each 20 ms slot, and the clock that ticks
//! the slots.
//!
//! Owns: the sender's RTP header state (RFC 3550 §5.1: random initial
//! sequence number, timestamp and SSRC; sequence +1 per packet; timestamp
//! +20 ms at the codec's RTP clock per slot (160 at 8 kHz, 960 for Opus's
//! 48 kHz) whether or not a packet is sent; marker bit on the
//! first packet of a talkspurt, RFC 3551 §4.1), the queue of PCM waiting to
//! be played, the stream's encoder ([`super::codec::Encoder`]), outgoing
//! RFC 4733 events, silence fill, and [`PacingClock`].
//!
//! Must not: touch sockets or decide when to start or stop playing. The core
//! ([`Pacer`]) is a plain function of "one more slot has passed"; only
//! [`PacingClock`] awaits tokio time.
//!
//! Silence fill: with it on (as FreeSWITCH and Asterisk do; the session
//! turns it on once the far end's RTP arrives), a slot with nothing queued
//! carries a frame of G.711 silence, so the stream never pauses while the
//! call is up: carriers' and SBCs' RTP timeouts and NAT bindings see
//! traffic even while the agent listens.
//! Off, nothing is sent in such a slot (silence suppression) and the next
//! audio starts a talkspurt with the marker bit.
//!
//! Starting at once: the first frame of new audio should not wait up to
//! 20 ms for the next slot. [`Pacer::next_packet_early`] sends it the
//! moment it is queued, when the slot before sent no audio; the clock's
//! cadence does not move, and the RTP timestamps stay true:
//! - without silence fill the slot now running sent nothing, so the frame
//!   takes that slot, late within it (its timestamp; a talkspurt that had
//!   paused for just that slot goes on unmarked);
//! - with silence fill that slot already carried silence, so the frame
//!   takes the next slot's timestamp, sent up to 20 ms before its time.
//!   The stream then runs one slot ahead until its next silence, which
//!   skips one slot's packet to fall back in step (a 40 ms gap heard
//!   by nobody: it is silence).
//!
//! The clock: [`tokio::time::Interval`] schedules by absolute deadlines, so
//! time spent handling a slot does not accumulate as drift. Missed ticks are
//! sent in a burst ([`MissedTickBehavior::Burst`]) while we are less than
//! [`MAX_CATCH_UP`] behind: the far end's jitter buffer absorbs a short
//! burst and our stream stays at exactly 50 packets a second. Further behind
//! (a stalled runtime) a burst would only overflow the far end, so the clock
//! starts afresh and reports the slots it skipped; the pacer advances its
//! timestamp over them, so RTP time keeps matching wall time.

use std::collections::VecDeque;
use std::time::Duration;

use rtp_rs::{RtpPacketBuilder, Seq};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::codec::{CodecError, Encoder};
use super::dtmf::{self, Digit, EventPacket};
use super::g711::Codec;
use super::{FRAME_DURATION, FRAME_SAMPLES};

/// How far behind the pacing clock may fall before it skips instead of
/// bursting.
pub const MAX_CATCH_UP: Duration = Duration::from_millis(100);
/// Slots per second (20 ms each).
const SLOTS_PER_SECOND: u32 = 50;

/// The RTP header fields of an outgoing stream.
#[derive(Debug, Clone)]
pub struct Packetizer {
    ssrc: u32,
    /// Sequence number of the next packet.
    sequence: u16,
    /// Timestamp of the current slot.
    timestamp: u32,
    /// Timestamp units per slot: 20 ms at the codec's RTP clock.
    slot_timestamp: u32,
    /// Whether the previous slot carried audio (no marker needed).
    in_talkspurt: bool,
    /// Empty slots since the last audio packet of a talkspurt: a slot
    /// taken back ([`Packetizer::reclaim`]) that closes the gap continues
    /// the talkspurt.
    gap: u32,
}

impl Default for Packetizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Packetizer {
    /// Random SSRC, initial sequence number and timestamp (RFC 3550 §5.1).
    pub fn new() -> Self {
        Self::with_state(rand::random(), rand::random(), rand::random())
    }

    /// Fixed initial state, for tests and for resuming a stream.
    pub fn with_state(ssrc: u32, sequence: u16, timestamp: u32) -> Self {
        Packetizer {
            ssrc,
            sequence,
            timestamp,
            slot_timestamp: FRAME_SAMPLES as u32,
            in_talkspurt: false,
            // No talkspurt yet to continue.
            gap: u32::MAX,
        }
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Sets the RTP clock rate the timestamp counts in (a re-INVITE may
    /// change the codec; the timestamp goes on from where it is).
    pub fn set_clock_rate(&mut self, clock_rate: u32) {
        self.slot_timestamp = (clock_rate / SLOTS_PER_SECOND).max(1);
    }

    /// Builds the packet for the current slot; does not advance the slot.
    /// `None` only if the builder refuses the fields, which ours never are
    /// (7-bit payload type, no extension).
    fn build(
        &mut self,
        payload_type: u8,
        marker: bool,
        timestamp: u32,
        payload: &[u8],
    ) -> Option<Vec<u8>> {
        let packet = RtpPacketBuilder::new()
            .payload_type(payload_type & 0x7F)
            .marked(marker)
            .sequence(Seq::from(self.sequence))
            .ssrc(self.ssrc)
            .timestamp(timestamp)
            .payload(payload)
            .build()
            .ok()?;
        self.sequence = self.sequence.wrapping_add(1);
        Some(packet)
    }

    /// One slot of audio: the packet, marked if it starts a talkspurt.
    pub fn audio(&mut self, payload_type: u8, payload: &[u8]) -> Option<Vec<u8>> {
        let marker = !self.in_talkspurt;
        let packet = self.build(payload_type, marker, self.timestamp, payload);
        self.in_talkspurt = true;
        self.gap = 0;
        self.advance(1);
        packet
    }

    /// One slot of an RFC 4733 event that started at `event_timestamp`.
    fn event(
        &mut self,
        payload_type: u8,
        event_timestamp: u32,
        packet: EventPacket,
    ) -> Option<Vec<u8>> {
        let bytes = self.build(
            payload_type,
            packet.marker,
            event_timestamp,
            &packet.payload,
        );
        // Audio after an event starts a new talkspurt.
        self.in_talkspurt = false;
        self.gap = u32::MAX;
        self.advance(1);
        bytes
    }

    /// `slots` slots pass with nothing sent: the timestamp still advances
    /// and the next audio starts a talkspurt.
    pub fn silence(&mut self, slots: u32) {
        if slots > 0 {
            self.in_talkspurt = false;
            self.gap = self.gap.saturating_add(slots);
            self.advance(slots);
        }
    }

    /// Takes back the last empty slot (see [`Pacer::next_packet_early`]).
    /// If it was the only one after audio, the talkspurt goes on.
    fn reclaim(&mut self) {
        self.timestamp = self.timestamp.wrapping_sub(self.slot_timestamp);
        self.gap = self.gap.saturating_sub(1);
        if self.gap == 0 {
            self.in_talkspurt = true;
        }
    }

    fn advance(&mut self, slots: u32) {
        self.timestamp = self
            .timestamp
            .wrapping_add(slots.wrapping_mul(self.slot_timestamp));
    }

    /// Timestamp of the current slot.
    pub fn timestamp(&self) -> u32 {
        self.timestamp
    }
}

/// An RFC 4733 event being sent, one packet per slot.
#[derive(Debug)]
struct ActiveEvent {
    timestamp: u32,
    packets: VecDeque<EventPacket>,
}

/// What the far end negotiated for our outgoing stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendFormat {
    pub codec: Codec,
    pub payload_type: u8,
    /// Payload type of telephone-event, if the far end accepts it.
    pub event_payload_type: Option<u8>,
}

/// What one slot sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// Queued audio or a DTMF event packet.
    Play(Vec<u8>),
    /// A frame of silence fill.
    Fill(Vec<u8>),
    /// Nothing: silence fill is off.
    Idle,
    /// Nothing: this slot's packet went out early. Whatever was playing
    /// may still be playing.
    Ahead,
}

/// What the last slot did, for [`Pacer::next_packet_early`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Last {
    Played,
    Filled,
    /// Nothing sent, the timestamp moved on a slot.
    Empty,
    /// Nothing sent: an early packet had already taken the slot.
    Repaid,
}

/// Decides what each 20 ms slot sends: queued PCM (encoded), a DTMF event
/// packet, silence fill or nothing. See the module documentation.
#[derive(Debug)]
pub struct Pacer {
    packetizer: Packetizer,
    format: SendFormat,
    encoder: Encoder,
    fill_silence: bool,
    last: Last,
    /// Slots whose packet went out early, to be skipped in silence.
    ahead: u32,
    /// PCM waiting to be played, 8 kHz mono.
    queued: VecDeque<i16>,
    max_queued: usize,
    digits: VecDeque<Digit>,
    event: Option<ActiveEvent>,
    /// Reused buffers for one frame.
    frame: Vec<i16>,
    encoded: Vec<u8>,
}

impl Pacer {
    /// `max_queued_samples` bounds the PCM queue; audio beyond it is refused.
    /// Silence fill starts on; see [`Pacer::set_silence_fill`]. Fails only
    /// if the codec library refuses to set up an encoder.
    pub fn new(
        mut packetizer: Packetizer,
        format: SendFormat,
        max_queued_samples: usize,
    ) -> Result<Self, CodecError> {
        packetizer.set_clock_rate(format.codec.clock_rate());
        Ok(Pacer {
            packetizer,
            format,
            encoder: Encoder::new(format.codec)?,
            fill_silence: true,
            last: Last::Empty,
            ahead: 0,
            queued: VecDeque::new(),
            max_queued: max_queued_samples,
            digits: VecDeque::new(),
            event: None,
            frame: Vec::with_capacity(FRAME_SAMPLES),
            encoded: Vec::with_capacity(FRAME_SAMPLES),
        })
    }

    /// Queues PCM for playout; returns how many samples were accepted.
    pub fn queue_audio(&mut self, samples: &[i16]) -> usize {
        let room = self.max_queued.saturating_sub(self.queued.len());
        let accepted = samples.len().min(room);
        self.queued.extend(&samples[..accepted]);
        accepted
    }

    /// Queues a digit to send as an RFC 4733 event. Returns false if the far
    /// end did not negotiate telephone-event.
    pub fn queue_digit(&mut self, digit: Digit) -> bool {
        if self.format.event_payload_type.is_none() {
            return false;
        }
        self.digits.push_back(digit);
        true
    }

    /// Drops queued audio (barge-in). An event being sent is finished.
    pub fn clear_audio(&mut self) {
        self.queued.clear();
    }

    /// Samples still waiting to be sent.
    pub fn queued_samples(&self) -> usize {
        self.queued.len()
    }

    /// Whether anything (audio or digits) is waiting.
    pub fn is_idle(&self) -> bool {
        self.queued.is_empty() && self.digits.is_empty() && self.event.is_none()
    }

    /// Whether an empty slot carries a frame of silence (see the module
    /// documentation).
    pub fn set_silence_fill(&mut self, on: bool) {
        self.fill_silence = on;
    }

    /// Switches codec or payload types (after a re-INVITE). A new codec
    /// gets a fresh encoder; if that fails the old format stays.
    pub fn set_format(&mut self, format: SendFormat) -> Result<(), CodecError> {
        if format.codec != self.format.codec {
            self.encoder = Encoder::new(format.codec)?;
            self.packetizer.set_clock_rate(format.codec.clock_rate());
        }
        self.format = format;
        Ok(())
    }

    pub fn ssrc(&self) -> u32 {
        self.packetizer.ssrc()
    }

    /// Slots that passed without a chance to send (on hold, or a stalled
    /// clock).
    pub fn skip_slots(&mut self, slots: u32) {
        if slots > 0 {
            self.packetizer.silence(slots);
            self.last = Last::Empty;
        }
    }

    /// Consumes one slot: what to send in it. A partial frame at the end of
    /// the queue is padded with silence.
    pub fn next_packet(&mut self) -> Slot {
        if let Some(packet) = self.next_queued() {
            self.last = Last::Played;
            return Slot::Play(packet);
        }
        if self.ahead > 0 {
            // This slot's packet already went out: back in step.
            self.ahead -= 1;
            self.last = Last::Repaid;
            return Slot::Ahead;
        }
        if !self.fill_silence {
            self.packetizer.silence(1);
            self.last = Last::Empty;
            return Slot::Idle;
        }
        self.frame.clear();
        self.frame.resize(FRAME_SAMPLES, 0);
        self.last = Last::Filled;
        match self.encode_frame() {
            Some(packet) => Slot::Fill(packet),
            None => Slot::Idle,
        }
    }

    /// The PCM of the last slot that sent audio or silence fill; empty
    /// after a DTMF event's packet (the media tap's outbound track).
    pub fn last_frame(&self) -> &[i16] {
        &self.frame
    }

    /// The first frame of new audio, sent now rather than at the next slot
    /// (see the module documentation). `None` when the last slot played:
    /// the new audio then waits its turn.
    pub fn next_packet_early(&mut self) -> Option<Vec<u8>> {
        match self.last {
            Last::Played => return None,
            Last::Empty => self.packetizer.reclaim(),
            Last::Filled | Last::Repaid => self.ahead += 1,
        }
        let packet = self.next_queued();
        match packet {
            Some(_) => self.last = Last::Played,
            None => {
                // Nothing was queued after all: undo.
                match self.last {
                    Last::Empty => self.packetizer.silence(1),
                    _ => self.ahead -= 1,
                }
            }
        }
        packet
    }

    /// The slot's DTMF event packet or audio frame, if any is waiting.
    fn next_queued(&mut self) -> Option<Vec<u8>> {
        if self.event.is_none()
            && let (Some(digit), Some(_)) = (self.digits.front(), self.format.event_payload_type)
        {
            let packets = dtmf::encode_digit(
                *digit,
                dtmf::DEFAULT_DURATION,
                dtmf::DEFAULT_VOLUME,
                self.format.codec.clock_rate(),
            );
            self.digits.pop_front();
            self.event = Some(ActiveEvent {
                timestamp: self.packetizer.timestamp(),
                packets: packets.into(),
            });
        }
        if let Some(event) = self.event.as_mut() {
            let timestamp = event.timestamp;
            let next = event.packets.pop_front();
            if event.packets.is_empty() {
                self.event = None;
            }
            // An event's slot carries no audio (see `last_frame`).
            self.frame.clear();
            if let (Some(packet), Some(pt)) = (next, self.format.event_payload_type) {
                return self.packetizer.event(pt, timestamp, packet);
            }
        }
        if self.queued.is_empty() {
            return None;
        }
        let take = self.queued.len().min(FRAME_SAMPLES);
        self.frame.clear();
        super::move_front(&mut self.queued, take, &mut self.frame);
        self.frame.resize(FRAME_SAMPLES, 0);
        self.encode_frame()
    }

    /// `self.frame`, encoded and packetized as the slot's audio.
    fn encode_frame(&mut self) -> Option<Vec<u8>> {
        self.encoded.clear();
        if !self.encoder.encode_into(&self.frame, &mut self.encoded) {
            // The slot passes unsent; the stream's time goes on.
            self.packetizer.silence(1);
            return None;
        }
        self.packetizer
            .audio(self.format.payload_type, &self.encoded)
    }
}

/// One tick of [`PacingClock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// The deadline this tick was scheduled for.
    pub deadline: Instant,
    /// Slots skipped before this one because the clock fell too far behind.
    pub skipped: u32,
}

/// A 20 ms clock on absolute deadlines. See the module documentation.
#[derive(Debug)]
pub struct PacingClock {
    interval: Interval,
}

impl PacingClock {
    /// A clock whose first tick is now.
    pub fn new() -> Self {
        let mut interval = tokio::time::interval(FRAME_DURATION);
        interval.set_missed_tick_behavior(MissedTickBehavior::Burst);
        PacingClock { interval }
    }

    /// Waits for the next slot.
    pub async fn tick(&mut self) -> Tick {
        let deadline = self.interval.tick().await;
        let late = Instant::now().saturating_duration_since(deadline);
        if late <= MAX_CATCH_UP {
            return Tick {
                deadline,
                skipped: 0,
            };
        }
        let period = FRAME_DURATION.as_nanos();
        let skipped = u32::try_from(late.as_nanos() / period).unwrap_or(u32::MAX);
        // Next deadline one period from now: the backlog is dropped.
        self.interval.reset();
        Tick { deadline, skipped }
    }
}

impl Default for PacingClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::dtmf::TelephoneEvent;
    use rtp_rs::RtpReader;

    const FORMAT: SendFormat = SendFormat {
        codec: Codec::Pcmu,
        payload_type: 0,
        event_payload_type: Some(101),
    };

    struct Header {
        marker: bool,
        payload_type: u8,
        sequence: u16,
        timestamp: u32,
        ssrc: u32,
        payload: Vec<u8>,
    }

    fn read(bytes: &[u8]) -> Header {
        let r = RtpReader::new(bytes).unwrap();
        Header {
            marker: r.mark(),
            payload_type: r.payload_type(),
            sequence: r.sequence_number().into(),
            timestamp: r.timestamp(),
            ssrc: r.ssrc(),
            payload: r.payload().to_vec(),
        }
    }

    /// A pacer with silence suppression: empty slots send nothing.
    fn pacer() -> Pacer {
        let mut p = Pacer::new(
            Packetizer::with_state(0xCAFE, 65534, u32::MAX - 159),
            FORMAT,
            8000,
        )
        .unwrap();
        p.set_silence_fill(false);
        p
    }

    /// The packet a slot plays (audio or event), if any.
    fn played(slot: Slot) -> Option<Vec<u8>> {
        match slot {
            Slot::Play(packet) => Some(packet),
            Slot::Fill(_) | Slot::Idle | Slot::Ahead => None,
        }
    }

    #[test]
    fn headers_advance_and_wrap() {
        let mut p = pacer();
        p.queue_audio(&[1000; 480]);
        let packets: Vec<Header> = (0..3)
            .map(|_| read(&played(p.next_packet()).unwrap()))
            .collect();
        let seqs: Vec<u16> = packets.iter().map(|h| h.sequence).collect();
        let stamps: Vec<u32> = packets.iter().map(|h| h.timestamp).collect();
        assert_eq!(seqs, vec![65534, 65535, 0]);
        assert_eq!(stamps, vec![u32::MAX - 159, 0, 160]);
        assert!(
            packets
                .iter()
                .all(|h| h.ssrc == 0xCAFE && h.payload_type == 0)
        );
        assert_eq!(packets.iter().map(|h| h.payload.len()).sum::<usize>(), 480);
        let mut expected = Vec::new();
        Codec::Pcmu.encode_into(&[1000], &mut expected);
        assert_eq!(packets[0].payload[0], expected[0]);
    }

    #[test]
    fn marker_starts_each_talkspurt_and_time_runs_through_silence() {
        let mut p = pacer();
        p.queue_audio(&[5; 320]);
        let a = read(&played(p.next_packet()).unwrap());
        let b = read(&played(p.next_packet()).unwrap());
        // Three silent slots.
        for _ in 0..3 {
            assert_eq!(p.next_packet(), Slot::Idle);
        }
        p.queue_audio(&[5; 100]);
        let c = read(&played(p.next_packet()).unwrap());
        assert_eq!((a.marker, b.marker, c.marker), (true, false, true));
        assert_eq!(
            c.sequence,
            b.sequence.wrapping_add(1),
            "no sequence gap for silence"
        );
        assert_eq!(c.timestamp.wrapping_sub(b.timestamp), 4 * 160);
        // The partial frame was padded to 20 ms with silence.
        assert_eq!(c.payload.len(), 160);
        assert_eq!(c.payload[159], Codec::Pcmu.silence());
    }

    #[test]
    fn random_initial_state_differs_between_streams() {
        let a = Packetizer::new();
        let b = Packetizer::new();
        assert_ne!((a.ssrc(), a.timestamp()), (b.ssrc(), b.timestamp()));
    }

    #[test]
    fn clear_drops_queued_audio() {
        let mut p = pacer();
        assert_eq!(p.queue_audio(&[1; 10_000]), 8000, "queue is bounded");
        p.clear_audio();
        assert_eq!(p.queued_samples(), 0);
        assert_eq!(p.next_packet(), Slot::Idle);
    }

    #[test]
    fn a_digit_is_sent_as_an_event_then_audio_resumes_marked() {
        let mut p = pacer();
        p.queue_audio(&[7; 160 * 2]);
        assert!(p.queue_digit(Digit::from_char('9').unwrap()));
        let mut headers = Vec::new();
        while let Some(bytes) = played(p.next_packet()) {
            headers.push(read(&bytes));
        }
        // The event goes first: 4 updates + 3 end packets, then 2 audio frames.
        assert_eq!(headers.len(), 7 + 2);
        let event_ts = headers[0].timestamp;
        for (i, h) in headers[..7].iter().enumerate() {
            assert_eq!(h.payload_type, 101);
            assert_eq!(h.timestamp, event_ts, "one timestamp per event");
            assert_eq!(h.marker, i == 0);
            let ev = TelephoneEvent::parse(&h.payload).unwrap();
            assert_eq!((ev.event, ev.end), (9, i >= 4));
        }
        assert!(headers[7].marker && headers[7].payload_type == 0);
        assert_eq!(headers[7].timestamp, event_ts.wrapping_add(7 * 160));
        let seqs: Vec<u16> = headers.iter().map(|h| h.sequence).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)));
    }

    #[test]
    fn digits_need_a_negotiated_event_payload_type() {
        let mut p = Pacer::new(
            Packetizer::new(),
            SendFormat {
                event_payload_type: None,
                ..FORMAT
            },
            100,
        )
        .unwrap();
        assert!(!p.queue_digit(Digit::from_char('1').unwrap()));
        assert!(p.is_idle());
    }

    #[test]
    fn opus_slots_count_48_khz_and_a_switch_keeps_the_stream() {
        let opus = SendFormat {
            codec: Codec::Opus,
            payload_type: 111,
            event_payload_type: Some(110),
        };
        let mut p = Pacer::new(Packetizer::with_state(7, 1, 0), opus, 8000).unwrap();
        p.set_silence_fill(false);
        p.queue_audio(&[500; 480]);
        let headers: Vec<Header> = (0..3)
            .filter_map(|_| played(p.next_packet()))
            .map(|b| read(&b))
            .collect();
        assert_eq!(
            headers.iter().map(|h| h.timestamp).collect::<Vec<_>>(),
            [0, 960, 1920]
        );
        assert!(headers.iter().all(|h| h.payload_type == 111));
        // Compressed, not one byte per sample.
        assert!(headers.iter().all(|h| h.payload.len() < 160));
        // A re-INVITE to G.722: 160 a slot from where the stream was.
        p.set_format(SendFormat {
            codec: Codec::G722,
            payload_type: 9,
            event_payload_type: None,
        })
        .unwrap();
        p.queue_audio(&[500; 320]);
        let next: Vec<Header> = (0..2)
            .filter_map(|_| played(p.next_packet()))
            .map(|b| read(&b))
            .collect();
        assert_eq!(next[0].timestamp, 2880);
        assert_eq!(next[1].timestamp, 3040);
        assert_eq!((next[0].payload_type, next[0].payload.len()), (9, 160));
    }

    #[test]
    fn silence_fill_keeps_the_stream_going_unmarked() {
        let mut p = pacer();
        p.set_silence_fill(true);
        let mut headers = Vec::new();
        for i in 0..6 {
            if i == 2 {
                p.queue_audio(&[900; 160]);
            }
            match p.next_packet() {
                Slot::Fill(packet) => {
                    let h = read(&packet);
                    assert!(h.payload.iter().all(|b| *b == Codec::Pcmu.silence()));
                    headers.push(h);
                }
                Slot::Play(packet) => {
                    assert_eq!(i, 2);
                    headers.push(read(&packet));
                }
                Slot::Idle | Slot::Ahead => panic!("slot {i} sent nothing"),
            }
        }
        // One stream: only its very first packet is marked.
        let markers: Vec<bool> = headers.iter().map(|h| h.marker).collect();
        assert_eq!(markers, vec![true, false, false, false, false, false]);
        assert!(headers.windows(2).all(|w| {
            w[1].sequence == w[0].sequence.wrapping_add(1)
                && w[1].timestamp == w[0].timestamp.wrapping_add(160)
        }));
    }

    #[test]
    fn an_early_frame_takes_the_empty_slot_it_lands_in() {
        let mut p = pacer();
        p.queue_audio(&[5; 160]);
        let a = read(&played(p.next_packet()).unwrap());
        assert_eq!(p.next_packet(), Slot::Idle);
        assert_eq!(p.next_packet(), Slot::Idle);
        // Audio during the second empty slot: it goes now, in that slot.
        p.queue_audio(&[5; 320]);
        let b = read(&p.next_packet_early().unwrap());
        assert_eq!(p.next_packet_early(), None, "one early frame per slot");
        let c = read(&played(p.next_packet()).unwrap());
        assert!(b.marker && !c.marker, "a new talkspurt");
        assert_eq!(b.timestamp.wrapping_sub(a.timestamp), 2 * 160);
        assert_eq!(c.timestamp.wrapping_sub(b.timestamp), 160);
        assert_eq!(b.sequence, a.sequence.wrapping_add(1));
    }

    #[test]
    fn a_one_slot_pause_closed_early_stays_one_talkspurt() {
        let mut p = pacer();
        p.queue_audio(&[5; 160]);
        let a = read(&played(p.next_packet()).unwrap());
        // The next frame arrives just after its slot came up empty.
        assert_eq!(p.next_packet(), Slot::Idle);
        p.queue_audio(&[5; 160]);
        let b = read(&p.next_packet_early().unwrap());
        assert!(!b.marker);
        assert_eq!(b.timestamp.wrapping_sub(a.timestamp), 160);
    }

    #[test]
    fn an_early_frame_over_silence_fill_is_paid_back_in_the_next_silence() {
        let mut p = pacer();
        p.set_silence_fill(true);
        let Slot::Fill(fill) = p.next_packet() else {
            panic!("expected silence fill");
        };
        let fill = read(&fill);
        p.queue_audio(&[5; 320]);
        let early = read(&p.next_packet_early().unwrap());
        // No overlap with the silence already sent: the next slot's time.
        assert_eq!(early.timestamp, fill.timestamp.wrapping_add(160));
        assert!(!early.marker, "the stream never paused");
        let next = read(&played(p.next_packet()).unwrap());
        assert_eq!(next.timestamp, early.timestamp.wrapping_add(160));
        // The first silence slot sends nothing, the one after fills again.
        assert_eq!(p.next_packet(), Slot::Ahead);
        let Slot::Fill(after) = p.next_packet() else {
            panic!("expected silence fill");
        };
        let after = read(&after);
        assert_eq!(after.timestamp, next.timestamp.wrapping_add(160));
        assert_eq!(after.sequence, next.sequence.wrapping_add(1));
    }

    #[test]
    fn nothing_goes_early_right_after_a_played_slot() {
        let mut p = pacer();
        p.queue_audio(&[5; 160]);
        assert!(played(p.next_packet()).is_some());
        p.queue_audio(&[5; 160]);
        assert_eq!(p.next_packet_early(), None);
        assert!(played(p.next_packet()).is_some());
    }

    /// The session's loop in small, on paused time: frames arrive at odd
    /// moments, each run's first frame leaves the moment it arrives, and
    /// over many runs every packet's timestamp stays within one slot of
    /// when it left, with silence fill and without.
    #[tokio::test(start_paused = true)]
    async fn early_frames_leave_at_once_and_rtp_time_tracks_wall_time() {
        for fill in [true, false] {
            let mut p = pacer();
            p.set_silence_fill(fill);
            let mut clock = PacingClock::new();
            // Every packet: timestamp and when it left.
            let mut sent: Vec<(u32, Instant)> = Vec::new();
            let mut note = |bytes: &[u8]| sent.push((read(bytes).timestamp, Instant::now()));
            for run in 0..40u64 {
                let quiet_until = Instant::now() + Duration::from_millis(100 + run * 7);
                while Instant::now() < quiet_until {
                    clock.tick().await;
                    match p.next_packet() {
                        Slot::Fill(packet) => note(&packet),
                        Slot::Play(_) => panic!("nothing was queued"),
                        Slot::Idle | Slot::Ahead => {}
                    }
                }
                // Audio arrives 3 to 17 ms into a slot.
                tokio::time::advance(Duration::from_millis(3 + run % 15)).await;
                p.queue_audio(&[100; 160 * 5]);
                note(&p.next_packet_early().expect("sent at once"));
                for _ in 0..4 {
                    clock.tick().await;
                    note(&played(p.next_packet()).unwrap());
                }
            }
            let (ts0, at0) = sent[0];
            for (ts, at) in &sent {
                let rtp_ms = f64::from(ts.wrapping_sub(ts0)) / 8.0;
                let wall_ms = (*at - at0).as_secs_f64() * 1000.0;
                assert!(
                    (rtp_ms - wall_ms).abs() <= 20.001,
                    "fill {fill}: RTP time {rtp_ms} ms, wall time {wall_ms} ms"
                );
            }
            assert!(
                sent.windows(2).all(|w| w[1].0.wrapping_sub(w[0].0) >= 160),
                "fill {fill}: timestamps overlap"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn clock_keeps_absolute_deadlines() {
        let mut clock = PacingClock::new();
        let start = Instant::now();
        for _ in 0..100 {
            let tick = clock.tick().await;
            assert_eq!(tick.skipped, 0);
            // Work done inside a slot must not push later slots back.
            tokio::time::advance(Duration::from_millis(7)).await;
        }
        // Tick 100 is at 99 periods; work after it ran 7 ms.
        assert_eq!(
            Instant::now() - start,
            FRAME_DURATION * 99 + Duration::from_millis(7)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_stall_is_caught_up_in_a_burst() {
        let mut clock = PacingClock::new();
        let start = clock.tick().await.deadline;
        tokio::time::advance(Duration::from_millis(70)).await;
        let before = Instant::now();
        let deadlines: Vec<Instant> = {
            let mut v = Vec::new();
            for _ in 0..3 {
                let tick = clock.tick().await;
                assert_eq!(tick.skipped, 0);
                v.push(tick.deadline);
            }
            v
        };
        assert_eq!(Instant::now(), before, "the missed slots fire at once");
        assert_eq!(deadlines[2] - start, FRAME_DURATION * 3);
        let next = clock.tick().await;
        assert_eq!(next.deadline - start, FRAME_DURATION * 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_stall_skips_and_restarts_the_schedule() {
        let mut clock = PacingClock::new();
        clock.tick().await;
        tokio::time::advance(Duration::from_millis(510)).await;
        let tick = clock.tick().await;
        // Due at 20 ms, now at 510 ms: 24 whole slots behind.
        assert_eq!(tick.skipped, 24);
        let resumed = Instant::now();
        let next = clock.tick().await;
        assert_eq!(next.skipped, 0);
        assert_eq!(next.deadline - resumed, FRAME_DURATION);
    }
}
