//! DTMF as RFC 4733 telephone events: the payload format, a decoder that
//! turns a stream of event packets into one digit per key press, and an
//! encoder that turns a digit into the packets to send.
//!
//! Owns: the 4-byte event payload (RFC 4733 §2.3), recognising one event
//! among its updates and retransmissions (§2.5.1), the packet schedule of
//! an outgoing event (§2.5.1.2 to §2.5.1.4), and the bodies of SIP INFO
//! keys some carriers send instead ([`Digit::from_sip_info`]).
//!
//! Must not: read sockets or clocks (arrival times are passed in), assign
//! RTP sequence numbers or timestamps (the pacer does), or decode in-band
//! tones.
//!
//! Decoding: all packets of one event share its RTP timestamp (§2.5.1.1),
//! the end packet is sent three times (§2.5.1.4), and any of them may be
//! lost. A digit is reported on the first packet seen of an event, whatever
//! its kind, so a lost start packet (or a lost end) still yields exactly one
//! digit. Packets are of the same event when SSRC, timestamp and event code
//! match one of the last few events and less than [`SAME_EVENT_GAP`] passed
//! since that event's previous packet: SIPp's pcaps replay the same
//! timestamps for every press, which the gap tells apart.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Silence within one event after which a packet with the same SSRC,
/// timestamp and event is a new key press. Updates come every 50 ms at most
/// (§2.5.1.2), so a live event never leaves such a gap.
pub const SAME_EVENT_GAP: Duration = Duration::from_millis(300);
/// Events remembered for de-duplication, enough to absorb reordering.
const RECENT_EVENTS: usize = 8;
/// Packets of an outgoing event per second (one every 20 ms).
const UPDATES_PER_SECOND: u32 = 50;
/// How often the end packet is sent (§2.5.1.4).
const END_REPEATS: usize = 3;

/// One DTMF key: RFC 4733 §3.2 event codes 0 to 15.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digit(u8);

impl Digit {
    /// The digit for an event code, if it is a DTMF event (0-15).
    pub const fn from_event(code: u8) -> Option<Digit> {
        if code <= 15 { Some(Digit(code)) } else { None }
    }

    /// The digit for a key: `0-9`, `*`, `#`, `A-D` (case-insensitive).
    pub fn from_char(key: char) -> Option<Digit> {
        let code = match key.to_ascii_uppercase() {
            c @ '0'..='9' => c as u8 - b'0',
            '*' => 10,
            '#' => 11,
            c @ 'A'..='D' => c as u8 - b'A' + 12,
            _ => return None,
        };
        Some(Digit(code))
    }

    /// A key sent in a SIP INFO body (RFC 6086 carries it; the formats are
    /// de facto): `application/dtmf-relay` is `Signal=5` and `Duration=160`
    /// lines, `Signal` being the key or its RFC 4733 event code (10 for `*`);
    /// `application/dtmf` is the key alone. Anything else is no key.
    pub fn from_sip_info(content_type: &str, body: &[u8]) -> Option<Digit> {
        let body = std::str::from_utf8(body).ok()?;
        let media_type = content_type.split(';').next()?.trim();
        let signal = if media_type.eq_ignore_ascii_case("application/dtmf-relay") {
            body.lines().find_map(|line| {
                let (key, value) = line.split_once('=')?;
                key.trim()
                    .eq_ignore_ascii_case("signal")
                    .then(|| value.trim())
            })?
        } else if media_type.eq_ignore_ascii_case("application/dtmf") {
            body.trim()
        } else {
            return None;
        };
        match signal.parse::<u8>() {
            Ok(code @ 0..=15) => Some(Digit(code)),
            Ok(_) => None,
            Err(_) => {
                let mut chars = signal.chars();
                let key = chars.next()?;
                chars.next().is_none().then_some(())?;
                Digit::from_char(key)
            }
        }
    }

    /// The RFC 4733 event code.
    pub const fn event_code(self) -> u8 {
        self.0
    }

    /// The key as a character: `0-9`, `*`, `#`, `A-D`.
    pub const fn as_char(self) -> char {
        match self.0 {
            c @ 0..=9 => (b'0' + c) as char,
            10 => '*',
            11 => '#',
            c => (b'A' + (c - 12)) as char,
        }
    }
}

impl std::fmt::Display for Digit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.as_char())
    }
}

/// The payload of one telephone-event packet (RFC 4733 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    pub event: u8,
    /// The E bit: this packet ends the event.
    pub end: bool,
    /// Power level in -dBm0 (0 to 63).
    pub volume: u8,
    /// Duration so far, in timestamp units.
    pub duration: u16,
}

impl TelephoneEvent {
    /// Reads the first event of a payload; `None` if it is shorter than the
    /// 4 bytes of §2.3.
    pub fn parse(payload: &[u8]) -> Option<TelephoneEvent> {
        let [event, flags, d0, d1, ..] = *payload else {
            return None;
        };
        Some(TelephoneEvent {
            event,
            end: flags & 0x80 != 0,
            volume: flags & 0x3F,
            duration: u16::from_be_bytes([d0, d1]),
        })
    }

    /// The 4-byte wire form; the R bit is always zero.
    pub fn to_bytes(self) -> [u8; 4] {
        let flags = (u8::from(self.end) << 7) | (self.volume & 0x3F);
        let [d0, d1] = self.duration.to_be_bytes();
        [self.event, flags, d0, d1]
    }
}

#[derive(Debug, Clone, Copy)]
struct SeenEvent {
    ssrc: u32,
    timestamp: u32,
    event: u8,
    last_seen: Instant,
}

/// Turns received telephone-event packets into digits, one per key press.
#[derive(Debug, Default)]
pub struct DtmfDecoder {
    recent: VecDeque<SeenEvent>,
}

impl DtmfDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one telephone-event packet; returns the digit when the packet
    /// is the first seen of a new DTMF event. Events outside 0-15 (RFC 4733
    /// §3.2 lists only these as DTMF) and short payloads are ignored.
    pub fn push(
        &mut self,
        ssrc: u32,
        timestamp: u32,
        payload: &[u8],
        arrival: Instant,
    ) -> Option<Digit> {
        let event = TelephoneEvent::parse(payload)?;
        let digit = Digit::from_event(event.event)?;
        let known = self.recent.iter_mut().find(|seen| {
            seen.ssrc == ssrc
                && seen.timestamp == timestamp
                && seen.event == event.event
                && arrival.saturating_duration_since(seen.last_seen) < SAME_EVENT_GAP
        });
        if let Some(seen) = known {
            seen.last_seen = seen.last_seen.max(arrival);
            return None;
        }
        if self.recent.len() == RECENT_EVENTS {
            self.recent.pop_front();
        }
        self.recent.push_back(SeenEvent {
            ssrc,
            timestamp,
            event: event.event,
            last_seen: arrival,
        });
        Some(digit)
    }
}

/// One packet of an outgoing event, to be sent in its own 20 ms slot with
/// the RTP timestamp of the event's first slot (§2.5.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPacket {
    /// Set on the first packet of the event (§2.5.1.1).
    pub marker: bool,
    pub payload: [u8; 4],
}

/// Default tone power for events we send: -10 dBm0.
pub const DEFAULT_VOLUME: u8 = 10;
/// Default length of a key press we send.
pub const DEFAULT_DURATION: Duration = Duration::from_millis(100);

/// The packets that send `digit` for `duration` at `clock_rate`, the audio
/// codec's (RFC 4733 §2.1: 8000 for G.711 and G.722, 48000 for Opus),
/// clamped to 40 ms .. what one event's 16-bit duration holds (8 s at
/// 8 kHz, 1.3 s at 48 kHz): an update every 20 ms, the first one marked,
/// then the end packet three times.
pub fn encode_digit(
    digit: Digit,
    duration: Duration,
    volume: u8,
    clock_rate: u32,
) -> Vec<EventPacket> {
    let clock_rate = clock_rate.max(UPDATES_PER_SECOND);
    let update_samples = clock_rate / UPDATES_PER_SECOND;
    let samples = duration.as_millis().saturating_mul(u128::from(clock_rate)) / 1000;
    let total = u32::try_from(samples)
        .unwrap_or(u32::MAX)
        .clamp(2 * update_samples, u32::from(u16::MAX));
    let updates = total.div_ceil(update_samples) - 1;
    let packet = |end: bool, elapsed: u32| TelephoneEvent {
        event: digit.event_code(),
        end,
        volume: volume.min(63),
        // `elapsed <= total <= u16::MAX`.
        duration: u16::try_from(elapsed).unwrap_or(u16::MAX),
    };
    let mut packets: Vec<EventPacket> = (1..=updates)
        .map(|k| EventPacket {
            marker: k == 1,
            payload: packet(false, k * update_samples).to_bytes(),
        })
        .collect();
    let end = packet(true, total).to_bytes();
    packets.extend((0..END_REPEATS).map(|_| EventPacket {
        marker: false,
        payload: end,
    }));
    packets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_info_bodies_give_their_key() {
        let relay = "application/dtmf-relay";
        let key =
            |ct: &str, body: &str| Digit::from_sip_info(ct, body.as_bytes()).map(Digit::as_char);
        assert_eq!(key(relay, "Signal=5\r\nDuration=160\r\n"), Some('5'));
        assert_eq!(key(relay, "Signal= #\r\nDuration=100"), Some('#'));
        assert_eq!(key(relay, "Signal=10\r\n"), Some('*'));
        assert_eq!(key("Application/DTMF; charset=x", "9"), Some('9'));
        assert_eq!(key(relay, "Duration=160"), None);
        assert_eq!(key(relay, "Signal=16"), None);
        assert_eq!(key(relay, "Signal=55"), None);
        assert_eq!(key("text/plain", "5"), None);
    }

    const SSRC: u32 = 0x0E05_384E;

    fn event(code: u8, end: bool, duration: u16) -> [u8; 4] {
        TelephoneEvent {
            event: code,
            end,
            volume: 10,
            duration,
        }
        .to_bytes()
    }

    #[test]
    fn all_sixteen_keys_map_both_ways() {
        let keys = "0123456789*#ABCD";
        for (code, key) in keys.chars().enumerate() {
            let digit = Digit::from_event(code as u8).unwrap();
            assert_eq!(digit.as_char(), key);
            assert_eq!(Digit::from_char(key), Some(digit));
        }
        assert_eq!(Digit::from_char('a'), Digit::from_event(12));
        assert_eq!(Digit::from_char('E'), None);
        assert_eq!(Digit::from_event(16), None);
    }

    #[test]
    fn payload_round_trips() {
        let bytes = [0x05, 0x8A, 0x03, 0x20];
        let ev = TelephoneEvent::parse(&bytes).unwrap();
        assert_eq!(
            ev,
            TelephoneEvent {
                event: 5,
                end: true,
                volume: 10,
                duration: 800
            }
        );
        assert_eq!(ev.to_bytes(), bytes);
        assert_eq!(TelephoneEvent::parse(&bytes[..3]), None);
    }

    #[test]
    fn one_digit_per_event_despite_three_end_packets() {
        // The packet train of SIPp's dtmf_2833_1.pcap.
        let mut dec = DtmfDecoder::new();
        let t0 = Instant::now();
        let mut digits = Vec::new();
        for i in 0..7u16 {
            let at = t0 + Duration::from_millis(20 * u64::from(i));
            digits.extend(dec.push(SSRC, 13280, &event(1, false, i * 320), at));
        }
        for _ in 0..3 {
            let at = t0 + Duration::from_millis(140);
            digits.extend(dec.push(SSRC, 13280, &event(1, true, 2240), at));
        }
        assert_eq!(digits, vec![Digit::from_char('1').unwrap()]);
    }

    #[test]
    fn a_lost_start_still_gives_the_digit_once() {
        let mut dec = DtmfDecoder::new();
        let t0 = Instant::now();
        let first = dec.push(SSRC, 500, &event(11, true, 800), t0);
        assert_eq!(first, Digit::from_char('#'));
        assert_eq!(dec.push(SSRC, 500, &event(11, true, 800), t0), None);
        assert_eq!(dec.push(SSRC, 500, &event(11, true, 800), t0), None);
    }

    #[test]
    fn consecutive_presses_of_the_same_key_are_two_digits() {
        let mut dec = DtmfDecoder::new();
        let t0 = Instant::now();
        assert!(dec.push(SSRC, 1000, &event(3, true, 800), t0).is_some());
        // Next press: new timestamp.
        assert!(
            dec.push(
                SSRC,
                2600,
                &event(3, false, 160),
                t0 + Duration::from_millis(200)
            )
            .is_some()
        );
        // Replay of the first press (same timestamp) a second later.
        assert!(
            dec.push(SSRC, 1000, &event(3, false, 0), t0 + Duration::from_secs(1))
                .is_some()
        );
    }

    #[test]
    fn late_packets_of_an_earlier_event_are_not_new_digits() {
        let mut dec = DtmfDecoder::new();
        let t0 = Instant::now();
        assert!(dec.push(SSRC, 1000, &event(4, false, 160), t0).is_some());
        let next = t0 + Duration::from_millis(60);
        assert!(dec.push(SSRC, 1480, &event(5, false, 160), next).is_some());
        // An end packet of the '4' event, reordered behind the '5'.
        assert_eq!(dec.push(SSRC, 1000, &event(4, true, 480), next), None);
    }

    #[test]
    fn non_dtmf_events_and_garbage_are_ignored() {
        let mut dec = DtmfDecoder::new();
        let t0 = Instant::now();
        assert_eq!(dec.push(SSRC, 1, &event(16, false, 0), t0), None);
        assert_eq!(dec.push(SSRC, 1, &[1, 2], t0), None);
        assert_eq!(dec.push(SSRC, 1, &[], t0), None);
    }

    #[test]
    fn encoded_digit_has_the_rfc4733_packet_schedule() {
        let digit = Digit::from_char('7').unwrap();
        let packets = encode_digit(digit, Duration::from_millis(100), DEFAULT_VOLUME, 8000);
        // 100 ms = 800 samples: updates at 160..640, then the end three times.
        assert_eq!(packets.len(), 4 + 3);
        assert!(packets[0].marker);
        assert!(packets[1..].iter().all(|p| !p.marker));
        let events: Vec<_> = packets
            .iter()
            .map(|p| TelephoneEvent::parse(&p.payload).unwrap())
            .collect();
        let durations: Vec<u16> = events.iter().map(|e| e.duration).collect();
        assert_eq!(durations, vec![160, 320, 480, 640, 800, 800, 800]);
        assert!(events[..4].iter().all(|e| !e.end && e.event == 7));
        assert!(events[4..].iter().all(|e| e.end && e.volume == 10));
        // The decoder sees exactly one digit.
        let mut dec = DtmfDecoder::new();
        let t0 = Instant::now();
        let decoded: Vec<Digit> = packets
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                dec.push(
                    SSRC,
                    42,
                    &p.payload,
                    t0 + Duration::from_millis(20 * i as u64),
                )
            })
            .collect();
        assert_eq!(decoded, vec![digit]);
    }

    #[test]
    fn opus_calls_count_event_time_at_48_khz() {
        let digit = Digit::from_char('#').unwrap();
        let packets = encode_digit(digit, Duration::from_millis(100), DEFAULT_VOLUME, 48_000);
        // 100 ms = 4800 units of 48 kHz: an update every 960.
        let durations: Vec<u16> = packets
            .iter()
            .map(|p| TelephoneEvent::parse(&p.payload).unwrap().duration)
            .collect();
        assert_eq!(durations, vec![960, 1920, 2880, 3840, 4800, 4800, 4800]);
    }

    #[test]
    fn encoded_duration_is_clamped() {
        let digit = Digit::from_char('0').unwrap();
        let short = encode_digit(digit, Duration::ZERO, DEFAULT_VOLUME, 8000);
        assert_eq!(
            TelephoneEvent::parse(&short[short.len() - 1].payload)
                .unwrap()
                .duration,
            320
        );
        let long = encode_digit(digit, Duration::from_secs(60), DEFAULT_VOLUME, 8000);
        assert_eq!(
            TelephoneEvent::parse(&long[long.len() - 1].payload)
                .unwrap()
                .duration,
            u16::MAX
        );
    }
}
