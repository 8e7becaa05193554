//! SDP offer/answer for one audio stream (RFC 3264 over RFC 4566 SDP).
//!
//! Owns: reading a remote offer or answer, choosing the codec (PCMU, PCMA,
//! G.722 or Opus) and the telephone-event payload type at that codec's
//! clock rate (RFC 4733 §2.1, §7.1.1), the
//! media direction of each side (RFC 3264 §6.1, including hold), the remote
//! RTP address, and writing our own offers and answers with a correct
//! `o=` version (RFC 3264 §8).
//!
//! Must not: bind sockets, resolve host names, or decide whether a call is
//! accepted. Every failure is an [`SdpError`]; the SIP layer answers any of
//! them with 488 Not Acceptable Here (RFC 3261 §21.4.26). No input panics.
//!
//! Parsing uses `ezk-sdp-types` 0.6.1 (pinned): a lenient line parser that
//! keeps unknown attributes, with typed `m=`, `c=`, `a=rtpmap`, `a=fmtp` and
//! direction attributes, and a writer we use for our own descriptions.
//!
//! Choices:
//! - The codec is the first of *our* list (the trunk's preference) that the
//!   offer carries, recognised by `a=rtpmap` or, without one, by the static
//!   payload types 0, 8 and 9 (RFC 3551 §6). G.722 is `G722/8000` though it
//!   samples at 16 kHz (RFC 3551 §4.5.2); Opus is `opus/48000/2` whatever
//!   it carries (RFC 7587 §7), and our `a=fmtp` asks for mono at the rate
//!   we play (`maxplaybackrate`, `stereo=0`, RFC 7587 §6.1). The answer keeps the offer's
//!   payload type numbers (RFC 3264 §6.1) and lists only the chosen codec and
//!   telephone-event, so the far end cannot switch codecs mid-call.
//! - Only the first usable `m=audio` with `RTP/AVP` is accepted; every other
//!   `m=` line is answered with port 0 (RFC 3264 §6) in the same order.
//! - `c=0.0.0.0` is the RFC 2543 way of putting a call on hold (RFC 3264
//!   §8.4): we keep the stream but have nowhere to send.
//! - Host names in `c=` are refused: resolving them is IO, and trunks send
//!   addresses.
//! - SRTP with SDES (`a=crypto`, RFC 4568) follows the trunk's
//!   [`SrtpMode`]; [`super::srtp`] reads and writes the lines and holds the
//!   keys.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use ezk_sdp_types::{
    Connection, Direction as SdpDirection, Fmtp, MediaDescription, MediaType, Origin, RtpMap,
    SessionDescription, TaggedAddress, Time, TransportProtocol, UnknownAttribute,
};

use super::g711::Codec;
use super::srtp::{self, CryptoRefusal, Sdes, SrtpMode, SrtpParams};
use super::{CLOCK_RATE, FRAME_DURATION};

/// Payload type we offer for telephone-event/8000 (any dynamic one works).
pub const OFFERED_EVENT_PAYLOAD_TYPE: u8 = 101;
/// Payload type we offer for telephone-event/48000, beside Opus.
pub const OFFERED_WIDE_EVENT_PAYLOAD_TYPE: u8 = 110;
/// Our Opus parameters (RFC 7587 §6.1): mono; we decode up to 16 kHz (the
/// recognizer's rate) and send what we capture, 8 kHz; in-band FEC welcome.
const OPUS_FMTP: &str =
    "maxplaybackrate=16000;sprop-maxcapturerate=8000;stereo=0;sprop-stereo=0;useinbandfec=1";
/// The DTMF events we send and understand (RFC 4733 §3.2).
const EVENT_RANGE: &str = "0-15";

/// Why a description cannot be used. All of them mean 488 in SIP.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SdpError {
    #[error("SDP is not valid UTF-8")]
    NotUtf8,
    #[error("SDP is malformed: {0}")]
    Malformed(String),
    #[error("no audio stream over RTP/AVP is offered")]
    NoAudio,
    #[error("none of our codecs ({ours}) is offered")]
    NoCommonCodec { ours: String },
    #[error("the audio stream has no connection address")]
    MissingConnection,
    #[error("the connection address {0} is a host name; only IP addresses are accepted")]
    HostnameConnection(String),
    #[error("the answer rejects our audio stream")]
    Rejected,
    #[error("SRTP is required and the audio stream offers no a=crypto")]
    SrtpRequired,
    #[error(
        "no a=crypto line of the audio stream is usable (suite, one key without MKI, no session parameters)"
    )]
    NoUsableCrypto,
    #[error("the answer's a=crypto does not match any line of our offer")]
    CryptoMismatch,
}

/// Media direction of one side (RFC 3264 §5.1, §6.1), from that side's
/// point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    pub const fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    pub const fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    /// The direction that answers `self` when we are willing to do
    /// `ours` (RFC 3264 §6.1): we send only if they receive, and receive
    /// only if they send.
    pub const fn answer(self, ours: Direction) -> Direction {
        let send = self.receives() && ours.sends();
        let recv = self.sends() && ours.receives();
        match (send, recv) {
            (true, true) => Direction::SendRecv,
            (true, false) => Direction::SendOnly,
            (false, true) => Direction::RecvOnly,
            (false, false) => Direction::Inactive,
        }
    }

    fn from_sdp(direction: SdpDirection) -> Direction {
        match direction {
            SdpDirection::SendRecv => Direction::SendRecv,
            SdpDirection::SendOnly => Direction::SendOnly,
            SdpDirection::RecvOnly => Direction::RecvOnly,
            SdpDirection::Inactive => Direction::Inactive,
        }
    }

    fn to_sdp(self) -> SdpDirection {
        match self {
            Direction::SendRecv => SdpDirection::SendRecv,
            Direction::SendOnly => SdpDirection::SendOnly,
            Direction::RecvOnly => SdpDirection::RecvOnly,
            Direction::Inactive => SdpDirection::Inactive,
        }
    }
}

/// The outcome of a negotiation: what the media session needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiatedMedia {
    pub codec: Codec,
    /// Payload type of `codec` in both directions.
    pub payload_type: u8,
    /// Payload type of telephone-event, if both sides have it.
    pub event_payload_type: Option<u8>,
    /// Where to send RTP; `None` on hold with `c=0.0.0.0`.
    pub remote: Option<SocketAddr>,
    /// What we may do, from our point of view. Never includes sending when
    /// `remote` is `None`.
    pub direction: Direction,
    /// SRTP keys when the stream is SRTP (SDES), `None` for plain RTP.
    pub srtp: Option<SrtpParams>,
}

/// Our side of the offer/answer exchange for one call: the local RTP
/// address, the codecs we allow (in preference order) and the `o=` line
/// state that must persist across re-INVITEs.
#[derive(Debug, Clone)]
pub struct LocalSdp {
    address: IpAddr,
    port: u16,
    codecs: Vec<Codec>,
    session_id: u64,
    version: u64,
    /// The last description we sent, without its `o=` line.
    last_sent: Option<String>,
    /// The trunk's SRTP policy.
    srtp: SrtpMode,
    /// Our SDES keys.
    sdes: Sdes,
}

impl LocalSdp {
    /// `address` and `port` are where our RTP session listens; `codecs` is
    /// the allowed list in preference order.
    pub fn new(address: IpAddr, port: u16, codecs: Vec<Codec>) -> Self {
        // RFC 4566 §5.2 suggests an NTP timestamp; any unique number works.
        let session_id = rand::random::<u32>().into();
        LocalSdp {
            address,
            port,
            codecs,
            session_id,
            version: session_id,
            last_sent: None,
            srtp: SrtpMode::Off,
            sdes: Sdes::default(),
        }
    }

    /// Applies the trunk's SRTP policy to every offer and answer.
    pub fn with_srtp(mut self, mode: SrtpMode) -> Self {
        self.srtp = mode;
        self
    }

    /// Our offer for an outbound call or a re-INVITE: every allowed codec,
    /// telephone-event, ptime 20, and `direction` (sendonly puts the far
    /// end on hold, RFC 3264 §8.4).
    pub fn offer(&mut self, direction: Direction) -> String {
        let formats = self
            .codecs
            .iter()
            .map(|c| (*c, c.offered_payload_type()))
            .collect::<Vec<_>>();
        // One telephone-event per clock rate among our codecs (RFC 4733
        // §2.1: events run at the audio's clock).
        let mut events = Vec::with_capacity(2);
        for codec in &self.codecs {
            let event = match codec.clock_rate() {
                CLOCK_RATE => (OFFERED_EVENT_PAYLOAD_TYPE, CLOCK_RATE),
                rate => (OFFERED_WIDE_EVENT_PAYLOAD_TYPE, rate),
            };
            if !events.contains(&event) {
                events.push(event);
            }
        }
        let mut media = self.audio_description(&formats, &events, direction);
        self.sdes.offer(&mut media, self.srtp);
        self.render(vec![media])
    }

    /// Answers a remote offer (RFC 3264 §6). `willing` is what we want to
    /// do, normally [`Direction::SendRecv`].
    pub fn answer(
        &mut self,
        offer: &[u8],
        willing: Direction,
    ) -> Result<(String, NegotiatedMedia), SdpError> {
        let sdp = parse(offer)?;
        let chosen = choose_audio(&sdp, &self.codecs, self.srtp)?;
        let mut descriptions = Vec::with_capacity(sdp.media_descriptions.len());
        let mut srtp = None;
        for (index, offered) in sdp.media_descriptions.iter().enumerate() {
            if index == chosen.index {
                let ours = chosen.their_direction.answer(willing);
                let events: Vec<(u8, u32)> = chosen
                    .event_payload_type
                    .map(|pt| (pt, chosen.codec.clock_rate()))
                    .into_iter()
                    .collect();
                let mut media =
                    self.audio_description(&[(chosen.codec, chosen.payload_type)], &events, ours);
                // The answer keeps the offer's profile (RFC 3264 §6).
                media.media.proto = offered.media.proto.clone();
                srtp = chosen
                    .crypto
                    .as_ref()
                    .map(|remote| self.sdes.answer(&mut media, remote));
                descriptions.push(media);
            } else {
                descriptions.push(rejected(offered));
            }
        }
        let ours = chosen.their_direction.answer(willing);
        let mut negotiated = chosen.negotiated(ours);
        negotiated.srtp = srtp;
        Ok((self.render(descriptions), negotiated))
    }

    /// Reads the answer to our last offer.
    pub fn accept_answer(&self, answer: &[u8]) -> Result<NegotiatedMedia, SdpError> {
        let sdp = parse(answer)?;
        let first_audio = sdp
            .media_descriptions
            .iter()
            .find(|m| m.media.media_type == MediaType::Audio)
            .ok_or(SdpError::NoAudio)?;
        if first_audio.media.port == 0 {
            return Err(SdpError::Rejected);
        }
        let chosen = choose_audio(&sdp, &self.codecs, self.srtp)?;
        // Their recvonly means we only send, and so on.
        let ours = match chosen.their_direction {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            other => other,
        };
        let mut negotiated = chosen.negotiated(ours);
        negotiated.srtp = match &chosen.crypto {
            Some(remote) => Some(self.sdes.accept(remote).ok_or(SdpError::CryptoMismatch)?),
            None => None,
        };
        Ok(negotiated)
    }

    fn audio_description(
        &self,
        formats: &[(Codec, u8)],
        events: &[(u8, u32)],
        direction: Direction,
    ) -> MediaDescription {
        let mut media = MediaDescription::rejected(MediaType::Audio);
        media.media.port = self.port;
        media.media.proto = TransportProtocol::RtpAvp;
        media.direction = direction.to_sdp();
        for &(codec, payload_type) in formats {
            media.media.fmts.push(payload_type);
            media.rtpmap.push(RtpMap {
                payload: payload_type,
                encoding: codec.encoding_name().into(),
                clock_rate: codec.clock_rate(),
                params: codec.rtpmap_channels().map(Into::into),
            });
            if codec == Codec::Opus {
                media.fmtp.push(Fmtp {
                    format: payload_type,
                    params: OPUS_FMTP.into(),
                });
            }
        }
        for &(pt, clock_rate) in events {
            media.media.fmts.push(pt);
            media.rtpmap.push(RtpMap {
                payload: pt,
                encoding: "telephone-event".into(),
                clock_rate,
                params: None,
            });
            media.fmtp.push(Fmtp {
                format: pt,
                params: EVENT_RANGE.into(),
            });
        }
        media.attributes.push(UnknownAttribute {
            name: "ptime".into(),
            value: Some(FRAME_DURATION.as_millis().to_string().into()),
        });
        media
    }

    /// Writes the description, bumping the `o=` version only when the
    /// content changed since the last one we sent (RFC 3264 §8).
    fn render(&mut self, media_descriptions: Vec<MediaDescription>) -> String {
        let mut sdp = SessionDescription {
            origin: Origin {
                username: "-".into(),
                session_id: self.session_id.to_string().into(),
                session_version: String::new().into(),
                address: TaggedAddress::from(self.address),
            },
            name: "agentline".into(),
            connection: Some(Connection {
                address: TaggedAddress::from(self.address),
                ttl: None,
                num: None,
            }),
            bandwidth: Vec::new(),
            time: Time { start: 0, stop: 0 },
            direction: SdpDirection::SendRecv,
            group: Vec::new(),
            extmap: Vec::new(),
            extmap_allow_mixed: false,
            ice_lite: false,
            ice_options: Default::default(),
            ice_ufrag: None,
            ice_pwd: None,
            setup: None,
            fingerprint: Vec::new(),
            attributes: Vec::new(),
            media_descriptions,
        };
        let body = sdp.to_string();
        if self.last_sent.as_ref().is_some_and(|last| *last != body) {
            self.version += 1;
        }
        self.last_sent = Some(body);
        sdp.origin.session_version = self.version.to_string().into();
        sdp.to_string()
    }
}

/// Parses bytes into SDP, turning every problem into an [`SdpError`].
fn parse(bytes: &[u8]) -> Result<SessionDescription, SdpError> {
    let text = std::str::from_utf8(bytes).map_err(|_| SdpError::NotUtf8)?;
    if !text.trim_start().starts_with("v=") {
        return Err(SdpError::Malformed("does not start with v=".into()));
    }
    let text = srtp::clamp_lifetimes(text);
    SessionDescription::parse(&text.into_owned().into())
        .map_err(|e| SdpError::Malformed(first_line(&e.to_string())))
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    line.chars().take(200).collect()
}

/// An `m=` line answered with port 0, keeping its type and formats.
fn rejected(offered: &MediaDescription) -> MediaDescription {
    let mut media = MediaDescription::rejected(offered.media.media_type);
    media.media.proto = offered.media.proto.clone();
    media.media.fmts = offered.media.fmts.clone();
    if media.media.fmts.is_empty() {
        // RFC 4566 §5.14 requires at least one format.
        media.media.fmts.push(0);
    }
    media
}

/// The audio stream picked out of a remote description.
struct Chosen {
    index: usize,
    codec: Codec,
    payload_type: u8,
    event_payload_type: Option<u8>,
    remote: Option<SocketAddr>,
    their_direction: Direction,
    /// Their `a=crypto` line we use, when the stream is SRTP.
    crypto: Option<srtp::RemoteCrypto>,
}

impl Chosen {
    fn negotiated(&self, ours: Direction) -> NegotiatedMedia {
        let direction = match (self.remote, ours) {
            (Some(_), ours) => ours,
            (None, Direction::SendRecv) => Direction::RecvOnly,
            (None, Direction::SendOnly) => Direction::Inactive,
            (None, ours) => ours,
        };
        NegotiatedMedia {
            codec: self.codec,
            payload_type: self.payload_type,
            event_payload_type: self.event_payload_type,
            remote: self.remote,
            direction,
            srtp: None,
        }
    }
}

/// Finds the first usable audio stream and the codec for it.
fn choose_audio(
    sdp: &SessionDescription,
    allowed: &[Codec],
    srtp_mode: SrtpMode,
) -> Result<Chosen, SdpError> {
    let mut saw_audio = false;
    let mut crypto_refused = None;
    for (index, media) in sdp.media_descriptions.iter().enumerate() {
        if media.media.media_type != MediaType::Audio
            || media.media.port == 0
            || !srtp::transport_usable(&media.media.proto, srtp_mode)
        {
            continue;
        }
        saw_audio = true;
        let Some((codec, payload_type)) = allowed
            .iter()
            .find_map(|&codec| find_codec(media, codec).map(|pt| (codec, pt)))
        else {
            continue;
        };
        let connection = media
            .connection
            .as_ref()
            .or(sdp.connection.as_ref())
            .ok_or(SdpError::MissingConnection)?;
        let ip = match &connection.address {
            TaggedAddress::IP4(ip) => IpAddr::V4(*ip),
            TaggedAddress::IP6(ip) => IpAddr::V6(*ip),
            TaggedAddress::IP4FQDN(host) | TaggedAddress::IP6FQDN(host) => {
                return Err(SdpError::HostnameConnection(host.to_string()));
            }
        };
        let remote = (!ip.is_unspecified()).then_some(SocketAddr::new(ip, media.media.port));
        let crypto = match srtp::pick(media, srtp_mode) {
            Ok(crypto) => crypto,
            Err(refusal) => {
                crypto_refused.get_or_insert(refusal);
                continue;
            }
        };
        return Ok(Chosen {
            index,
            codec,
            payload_type,
            event_payload_type: find_telephone_event(media, codec.clock_rate()),
            remote,
            their_direction: Direction::from_sdp(media.direction),
            crypto,
        });
    }
    match crypto_refused {
        Some(CryptoRefusal::Required) => return Err(SdpError::SrtpRequired),
        Some(CryptoRefusal::NoUsableLine) => return Err(SdpError::NoUsableCrypto),
        None => {}
    }
    if saw_audio {
        let mut ours = String::new();
        for (i, codec) in allowed.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(ours, "{sep}{}", codec.encoding_name());
        }
        Err(SdpError::NoCommonCodec { ours })
    } else {
        Err(SdpError::NoAudio)
    }
}

/// The payload type `codec` has in `media`, if offered.
fn find_codec(media: &MediaDescription, codec: Codec) -> Option<u8> {
    media.media.fmts.iter().copied().find(|&pt| {
        match media.rtpmap.iter().find(|map| map.payload == pt) {
            Some(map) => {
                let channels = map.params.as_deref();
                Codec::from_encoding_name(&map.encoding) == Some(codec)
                    && map.clock_rate == codec.clock_rate()
                    && match codec {
                        // Always "2" by RFC 7587 §7; we decode it to mono.
                        Codec::Opus => matches!(channels, Some("2" | "1") | None),
                        _ => channels.is_none_or(|channels| channels == "1"),
                    }
            }
            None => Codec::from_static_payload_type(pt) == Some(codec),
        }
    })
}

/// The payload type of `telephone-event` at `clock_rate` (the audio
/// codec's, RFC 4733 §2.1) in `media`, if offered.
fn find_telephone_event(media: &MediaDescription, clock_rate: u32) -> Option<u8> {
    media.media.fmts.iter().copied().find(|&pt| {
        media.rtpmap.iter().any(|map| {
            map.payload == pt
                && map.encoding.eq_ignore_ascii_case("telephone-event")
                && map.clock_rate == clock_rate
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::net::Ipv4Addr;

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));

    fn local() -> LocalSdp {
        LocalSdp::new(LOCAL, 40_000, vec![Codec::Pcmu, Codec::Pcma])
    }

    fn offer(media_lines: &str) -> String {
        format!(
            "v=0\r\no=alice 2890844526 2890844526 IN IP4 198.51.100.7\r\ns=-\r\n\
             c=IN IP4 198.51.100.7\r\nt=0 0\r\n{media_lines}"
        )
    }

    const BASIC: &str = "m=audio 49170 RTP/AVP 8 0 101\r\n\
        a=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n";

    #[test]
    fn answers_with_our_preferred_codec_and_their_event_type() {
        let mut ours = local();
        let (answer, media) = ours
            .answer(offer(BASIC).as_bytes(), Direction::SendRecv)
            .unwrap();
        assert_eq!(
            media,
            NegotiatedMedia {
                codec: Codec::Pcmu,
                payload_type: 0,
                event_payload_type: Some(101),
                remote: Some("198.51.100.7:49170".parse().unwrap()),
                direction: Direction::SendRecv,
                srtp: None,
            }
        );
        assert!(
            answer.contains("m=audio 40000 RTP/AVP 0 101\r\n"),
            "{answer}"
        );
        assert!(answer.contains("c=IN IP4 192.0.2.10\r\n"));
        assert!(answer.contains("a=rtpmap:101 telephone-event/8000\r\n"));
        assert!(answer.contains("a=fmtp:101 0-15\r\n"));
        assert!(answer.contains("a=sendrecv\r\n"));
        assert!(answer.contains("a=ptime:20\r\n"));
    }

    #[test]
    fn trunk_preference_order_decides() {
        let mut ours = LocalSdp::new(LOCAL, 40_000, vec![Codec::Pcma]);
        let (_, media) = ours
            .answer(offer(BASIC).as_bytes(), Direction::SendRecv)
            .unwrap();
        assert_eq!((media.codec, media.payload_type), (Codec::Pcma, 8));
        let only_g729 = offer("m=audio 49170 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n");
        let err = ours
            .answer(only_g729.as_bytes(), Direction::SendRecv)
            .unwrap_err();
        assert_eq!(
            err,
            SdpError::NoCommonCodec {
                ours: "PCMA".into()
            }
        );
    }

    #[test]
    fn static_payload_types_without_rtpmap_and_dynamic_ones_with_it() {
        let mut ours = local();
        let (_, media) = ours
            .answer(
                offer("m=audio 5004 RTP/AVP 0\r\n").as_bytes(),
                Direction::SendRecv,
            )
            .unwrap();
        assert_eq!(
            (media.codec, media.payload_type, media.event_payload_type),
            (Codec::Pcmu, 0, None)
        );
        let dynamic = offer("m=audio 5004 RTP/AVP 96\r\na=rtpmap:96 pcmu/8000\r\n");
        let (answer, media) = ours
            .answer(dynamic.as_bytes(), Direction::SendRecv)
            .unwrap();
        assert_eq!(media.payload_type, 96);
        assert!(answer.contains("m=audio 40000 RTP/AVP 96\r\n"));
        assert!(answer.contains("a=rtpmap:96 PCMU/8000\r\n"));
        // PT 0 remapped to something else is not PCMU.
        let remapped = offer("m=audio 5004 RTP/AVP 0\r\na=rtpmap:0 G722/8000\r\n");
        assert!(matches!(
            ours.answer(remapped.as_bytes(), Direction::SendRecv),
            Err(SdpError::NoCommonCodec { .. })
        ));
    }

    #[test]
    fn wideband_codecs_by_trunk_preference_with_events_at_their_clock() {
        // What baresip offers: Opus, G.722, G.711, events at both clocks.
        let wide = offer(
            "m=audio 5004 RTP/AVP 96 9 0 8 101 102\r\n\
             a=rtpmap:96 opus/48000/2\r\na=fmtp:96 stereo=1;sprop-stereo=1\r\n\
             a=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
             a=rtpmap:101 telephone-event/48000\r\na=rtpmap:102 telephone-event/8000\r\n",
        );
        let mut g722 = LocalSdp::new(LOCAL, 40_000, vec![Codec::G722, Codec::Pcmu]);
        let (answer, media) = g722.answer(wide.as_bytes(), Direction::SendRecv).unwrap();
        assert_eq!(
            (media.codec, media.payload_type, media.event_payload_type),
            (Codec::G722, 9, Some(102))
        );
        assert!(
            answer.contains("m=audio 40000 RTP/AVP 9 102\r\n"),
            "{answer}"
        );
        assert!(answer.contains("a=rtpmap:9 G722/8000\r\n"), "{answer}");
        assert!(answer.contains("a=rtpmap:102 telephone-event/8000\r\n"));
        let mut opus = LocalSdp::new(LOCAL, 40_000, vec![Codec::Opus, Codec::G722]);
        let (answer, media) = opus.answer(wide.as_bytes(), Direction::SendRecv).unwrap();
        assert_eq!(
            (media.codec, media.payload_type, media.event_payload_type),
            (Codec::Opus, 96, Some(101))
        );
        assert!(
            answer.contains("m=audio 40000 RTP/AVP 96 101\r\n"),
            "{answer}"
        );
        assert!(answer.contains("a=rtpmap:96 opus/48000/2\r\n"), "{answer}");
        assert!(
            answer.contains("a=fmtp:96 maxplaybackrate=16000;"),
            "{answer}"
        );
        assert!(answer.contains("a=rtpmap:101 telephone-event/48000\r\n"));
        // G.722 without an rtpmap is static type 9; Opus at the wrong clock
        // is not Opus.
        let (_, media) = g722
            .answer(
                offer("m=audio 5004 RTP/AVP 9\r\n").as_bytes(),
                Direction::SendRecv,
            )
            .unwrap();
        assert_eq!((media.codec, media.event_payload_type), (Codec::G722, None));
        let bad_opus = offer("m=audio 5004 RTP/AVP 96\r\na=rtpmap:96 opus/8000/2\r\n");
        assert!(matches!(
            opus.answer(bad_opus.as_bytes(), Direction::SendRecv),
            Err(SdpError::NoCommonCodec { ours }) if ours == "opus, G722"
        ));
    }

    #[test]
    fn our_wideband_offer_names_every_codec_and_both_event_clocks() {
        let mut ours = LocalSdp::new(LOCAL, 40_000, vec![Codec::Opus, Codec::G722, Codec::Pcmu]);
        let text = ours.offer(Direction::SendRecv);
        assert!(
            text.contains("m=audio 40000 RTP/AVP 111 9 0 110 101\r\n"),
            "{text}"
        );
        assert!(text.contains("a=rtpmap:111 opus/48000/2\r\n"));
        assert!(text.contains("a=rtpmap:110 telephone-event/48000\r\n"));
        assert!(text.contains("a=rtpmap:101 telephone-event/8000\r\n"));
        // An answerer that takes G.722 replies with its 8 kHz event type.
        let mut callee = LocalSdp::new("203.0.113.9".parse().unwrap(), 30_000, vec![Codec::G722]);
        let (answer, theirs) = callee.answer(text.as_bytes(), Direction::SendRecv).unwrap();
        assert_eq!(
            (theirs.codec, theirs.event_payload_type),
            (Codec::G722, Some(101))
        );
        let accepted = ours.accept_answer(answer.as_bytes()).unwrap();
        assert_eq!(
            (
                accepted.codec,
                accepted.payload_type,
                accepted.event_payload_type
            ),
            (Codec::G722, 9, Some(101))
        );
    }

    #[test]
    fn directions_are_answered_per_rfc3264_section_6_1() {
        let cases = [
            ("sendrecv", "sendrecv", Direction::SendRecv),
            ("sendonly", "recvonly", Direction::RecvOnly),
            ("recvonly", "sendonly", Direction::SendOnly),
            ("inactive", "inactive", Direction::Inactive),
        ];
        for (offered, answered, ours) in cases {
            let text = offer(&format!("{BASIC}a={offered}\r\n"));
            let (answer, media) = local()
                .answer(text.as_bytes(), Direction::SendRecv)
                .unwrap();
            assert!(
                answer.contains(&format!("a={answered}\r\n")),
                "{offered}: {answer}"
            );
            assert_eq!(media.direction, ours, "{offered}");
        }
        // A session-level attribute applies to the stream.
        let text = offer(BASIC).replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n");
        let (_, media) = local()
            .answer(text.as_bytes(), Direction::SendRecv)
            .unwrap();
        assert_eq!(media.direction, Direction::RecvOnly);
        // We put them on hold: willing only to send.
        let (answer, _) = local()
            .answer(offer(BASIC).as_bytes(), Direction::SendOnly)
            .unwrap();
        assert!(answer.contains("a=sendonly\r\n"));
    }

    #[test]
    fn legacy_hold_with_zero_address_keeps_the_stream_but_stops_sending() {
        let text = offer(BASIC).replace("c=IN IP4 198.51.100.7", "c=IN IP4 0.0.0.0");
        let (answer, media) = local()
            .answer(text.as_bytes(), Direction::SendRecv)
            .unwrap();
        assert_eq!(media.remote, None);
        assert!(!media.direction.sends());
        assert!(media.direction.receives());
        assert!(answer.contains("m=audio 40000 "));
    }

    #[test]
    fn media_level_connection_wins_and_ipv6_works() {
        let text = offer(&format!("{BASIC}c=IN IP6 2001:db8::5\r\n"));
        let (_, media) = local()
            .answer(text.as_bytes(), Direction::SendRecv)
            .unwrap();
        assert_eq!(media.remote, Some("[2001:db8::5]:49170".parse().unwrap()));
        let no_conn =
            "v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
        assert_eq!(
            local()
                .answer(no_conn.as_bytes(), Direction::SendRecv)
                .unwrap_err(),
            SdpError::MissingConnection
        );
        let fqdn = offer(BASIC).replace("c=IN IP4 198.51.100.7", "c=IN IP4 media.example.com");
        assert!(matches!(
            local().answer(fqdn.as_bytes(), Direction::SendRecv),
            Err(SdpError::HostnameConnection(h)) if h == "media.example.com"
        ));
    }

    #[test]
    fn other_streams_are_rejected_in_place() {
        let text = offer(&format!(
            "m=video 51372 RTP/AVP 31\r\nm=audio 0 RTP/AVP 0\r\n{BASIC}m=audio 6000 RTP/SAVP 0\r\n"
        ));
        let (answer, media) = local()
            .answer(text.as_bytes(), Direction::SendRecv)
            .unwrap();
        assert_eq!(media.remote.map(|a| a.port()), Some(49170));
        let m_lines: Vec<&str> = answer.lines().filter(|l| l.starts_with("m=")).collect();
        assert_eq!(
            m_lines,
            vec![
                "m=video 0 RTP/AVP 31",
                "m=audio 0 RTP/AVP 0",
                "m=audio 40000 RTP/AVP 0 101",
                "m=audio 0 RTP/SAVP 0",
            ]
        );
        let srtp_only = offer("m=audio 6000 RTP/SAVP 0\r\n");
        assert_eq!(
            local()
                .answer(srtp_only.as_bytes(), Direction::SendRecv)
                .unwrap_err(),
            SdpError::NoAudio
        );
    }

    #[test]
    fn our_offer_round_trips_through_an_answerer() {
        let mut caller = local();
        let text = caller.offer(Direction::SendRecv);
        assert!(text.starts_with("v=0\r\no=- "));
        assert!(text.contains("m=audio 40000 RTP/AVP 0 8 101\r\n"), "{text}");
        let mut callee = LocalSdp::new("203.0.113.9".parse().unwrap(), 30_000, vec![Codec::Pcma]);
        let (answer, theirs) = callee.answer(text.as_bytes(), Direction::SendRecv).unwrap();
        assert_eq!(theirs.codec, Codec::Pcma);
        assert_eq!(theirs.remote, Some("192.0.2.10:40000".parse().unwrap()));
        let ours = caller.accept_answer(answer.as_bytes()).unwrap();
        assert_eq!(
            ours,
            NegotiatedMedia {
                codec: Codec::Pcma,
                payload_type: 8,
                event_payload_type: Some(101),
                remote: Some("203.0.113.9:30000".parse().unwrap()),
                direction: Direction::SendRecv,
                srtp: None,
            }
        );
    }

    #[test]
    fn answer_direction_is_seen_from_our_side_and_rejection_is_an_error() {
        let caller = local();
        let answer =
            |dir: &str, port: u16| offer(&format!("m=audio {port} RTP/AVP 0\r\na={dir}\r\n"));
        let held = caller
            .accept_answer(answer("recvonly", 5000).as_bytes())
            .unwrap();
        assert_eq!(held.direction, Direction::SendOnly);
        let err = caller
            .accept_answer(answer("sendrecv", 0).as_bytes())
            .unwrap_err();
        assert_eq!(err, SdpError::Rejected);
    }

    #[test]
    fn version_increments_only_when_the_description_changes() {
        let mut ours = local();
        let version = |sdp: &str| -> u64 {
            let o = sdp.lines().find(|l| l.starts_with("o=")).unwrap();
            o.split(' ').nth(2).unwrap().parse().unwrap()
        };
        let first = version(&ours.offer(Direction::SendRecv));
        let same = version(&ours.offer(Direction::SendRecv));
        let hold = version(&ours.offer(Direction::SendOnly));
        assert_eq!(same, first);
        assert_eq!(hold, first + 1);
    }

    const CRYPTO_80: &str =
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n";
    const CRYPTO_GCM: &str = "a=crypto:7 AEAD_AES_256_GCM inline:Qk7GgHWBNzFmdb3hlYqJ1fi9uVx20E7ydHhNmxNS9clO7iGvS/iDjTQ6sVo=\r\n";

    fn srtp_local(mode: SrtpMode) -> LocalSdp {
        local().with_srtp(mode)
    }

    /// The one `a=crypto` line of `sdp`: tag, suite and key.
    fn crypto_of(sdp: &str) -> Vec<(String, String, String)> {
        sdp.lines()
            .filter_map(|l| l.strip_prefix("a=crypto:"))
            .map(|l| {
                let parts: Vec<&str> = l.split(' ').collect();
                (
                    parts[0].to_string(),
                    parts[1].to_string(),
                    parts[2].trim_start_matches("inline:").to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn a_savp_offer_is_answered_with_the_first_usable_suite_and_our_own_key() {
        let text = offer(&format!(
            "m=audio 49170 RTP/SAVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n\
             a=crypto:3 F8_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n\
             a=crypto:4 AES_CM_128_HMAC_SHA1_80 inline:c2hvcnQ=\r\n{CRYPTO_GCM}{CRYPTO_80}"
        ));
        for mode in [SrtpMode::Optional, SrtpMode::Mandatory] {
            let mut ours = srtp_local(mode);
            let (answer, media) = ours.answer(text.as_bytes(), Direction::SendRecv).unwrap();
            assert!(
                answer.contains("m=audio 40000 RTP/SAVP 0 101\r\n"),
                "{answer}"
            );
            let lines = crypto_of(&answer);
            assert_eq!(lines.len(), 1, "{answer}");
            assert_eq!((&*lines[0].0, &*lines[0].1), ("7", "AEAD_AES_256_GCM"));
            let srtp = media.srtp.expect("SRTP negotiated");
            assert_eq!(srtp.suite, srtp::Suite::AeadAes256Gcm);
            assert_ne!(srtp.local, srtp.remote);
            // A re-offer gets the same answer: same key, same version.
            let (again, _) = ours.answer(text.as_bytes(), Direction::SendRecv).unwrap();
            assert_eq!(again, answer);
        }
        // SRTP off: RTP/SAVP is not ours.
        assert_eq!(
            local()
                .answer(text.as_bytes(), Direction::SendRecv)
                .unwrap_err(),
            SdpError::NoAudio
        );
    }

    #[test]
    fn mandatory_refuses_plain_and_unusable_crypto_optional_takes_either() {
        let plain = offer(BASIC);
        assert_eq!(
            srtp_local(SrtpMode::Mandatory)
                .answer(plain.as_bytes(), Direction::SendRecv)
                .unwrap_err(),
            SdpError::SrtpRequired
        );
        let (answer, media) = srtp_local(SrtpMode::Optional)
            .answer(plain.as_bytes(), Direction::SendRecv)
            .unwrap();
        assert!(media.srtp.is_none() && crypto_of(&answer).is_empty());
        // Best-effort SRTP: a=crypto on RTP/AVP.
        let best_effort = offer(&format!("{BASIC}{CRYPTO_80}"));
        for mode in [SrtpMode::Optional, SrtpMode::Mandatory] {
            let (answer, media) = srtp_local(mode)
                .answer(best_effort.as_bytes(), Direction::SendRecv)
                .unwrap();
            assert!(answer.contains("RTP/AVP 0 101"), "{answer}");
            assert_eq!(crypto_of(&answer)[0].1, "AES_CM_128_HMAC_SHA1_80");
            assert!(media.srtp.is_some());
        }
        // Off ignores the line: plain RTP.
        let (answer, media) = local()
            .answer(best_effort.as_bytes(), Direction::SendRecv)
            .unwrap();
        assert!(media.srtp.is_none() && crypto_of(&answer).is_empty());
        // Lines we cannot run: MKI, session parameters, wrong key length.
        for bad in [
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4\r\n",
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz UNENCRYPTED_SRTP\r\n",
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:c2hvcnQ=\r\n",
            "a=crypto:1 NULL_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n",
        ] {
            let text = offer(&format!("m=audio 49170 RTP/SAVP 0\r\n{bad}"));
            assert_eq!(
                srtp_local(SrtpMode::Optional)
                    .answer(text.as_bytes(), Direction::SendRecv)
                    .unwrap_err(),
                SdpError::NoUsableCrypto,
                "{bad}"
            );
        }
        // A lifetime of 2^48 is legal and does not trouble the parser.
        let long_life = offer(
            "m=audio 49170 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 \
             inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^48\r\n",
        );
        assert!(
            srtp_local(SrtpMode::Mandatory)
                .answer(long_life.as_bytes(), Direction::SendRecv)
                .unwrap()
                .1
                .srtp
                .is_some()
        );
    }

    #[test]
    fn our_srtp_offer_round_trips_and_a_wrong_answer_is_refused() {
        let mut caller = srtp_local(SrtpMode::Mandatory);
        let text = caller.offer(Direction::SendRecv);
        assert!(
            text.contains("m=audio 40000 RTP/SAVP 0 8 101\r\n"),
            "{text}"
        );
        let offered = crypto_of(&text);
        let suites: Vec<&str> = offered.iter().map(|c| c.1.as_str()).collect();
        assert_eq!(
            suites,
            [
                "AES_CM_128_HMAC_SHA1_80",
                "AES_CM_128_HMAC_SHA1_32",
                "AEAD_AES_128_GCM",
                "AEAD_AES_256_GCM"
            ]
        );
        assert_eq!(caller.offer(Direction::SendRecv), text, "keys kept");
        let mut callee = LocalSdp::new("203.0.113.9".parse().unwrap(), 30_000, vec![Codec::Pcmu])
            .with_srtp(SrtpMode::Optional);
        let (answer, theirs) = callee.answer(text.as_bytes(), Direction::SendRecv).unwrap();
        let ours = caller.accept_answer(answer.as_bytes()).unwrap();
        let (ours, theirs) = (ours.srtp.unwrap(), theirs.srtp.unwrap());
        assert_eq!(ours.suite, srtp::Suite::AesCm128HmacSha1_80);
        assert_eq!((&ours.local, &ours.remote), (&theirs.remote, &theirs.local));
        // An answer naming a tag we did not offer, or another suite on it.
        let wrong_tag = answer.replace("a=crypto:1 ", "a=crypto:9 ");
        assert_eq!(
            caller.accept_answer(wrong_tag.as_bytes()).unwrap_err(),
            SdpError::CryptoMismatch
        );
        let wrong_suite = answer.replace(
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80",
            "a=crypto:1 AES_CM_128_HMAC_SHA1_32",
        );
        assert_eq!(
            caller.accept_answer(wrong_suite.as_bytes()).unwrap_err(),
            SdpError::CryptoMismatch
        );
        // A plain answer to a mandatory offer.
        let plain = offer("m=audio 5000 RTP/AVP 0\r\n");
        assert_eq!(
            caller.accept_answer(plain.as_bytes()).unwrap_err(),
            SdpError::SrtpRequired
        );
        // Optional offers RTP/AVP with the lines; a plain answer is fine.
        let mut optional = srtp_local(SrtpMode::Optional);
        let text = optional.offer(Direction::SendRecv);
        assert!(text.contains("RTP/AVP") && crypto_of(&text).len() == 4);
        assert!(
            optional
                .accept_answer(plain.as_bytes())
                .unwrap()
                .srtp
                .is_none()
        );
        assert!(!local().offer(Direction::SendRecv).contains("a=crypto"));
    }

    #[test]
    fn garbage_is_a_typed_error() {
        let cases: [&[u8]; 8] = [
            b"",
            b"hello world",
            b"v=0\r\n",
            b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\n",
            b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\nm=audio 99999 RTP/AVP 0\r\n",
            b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=x y\r\n",
            b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:x\r\n",
            b"\xff\xfe\x00v=0",
        ];
        for case in cases {
            let result = local().answer(case, Direction::SendRecv);
            assert!(result.is_err(), "{:?}", String::from_utf8_lossy(case));
        }
        assert_eq!(
            local().answer(b"\xff", Direction::SendRecv).unwrap_err(),
            SdpError::NotUtf8
        );
    }

    #[test]
    fn mutated_offers_never_panic() {
        let base = offer(&format!("{BASIC}a=sendonly\r\nc=IN IP6 ::1\r\n")).into_bytes();
        let mut rng = rand::rngs::StdRng::seed_from_u64(4733);
        let alphabet = b"v=omcat:/ 0123456789.\r\nINP4RTAV-";
        let mut accepted = 0;
        for _ in 0..3000 {
            let mut bytes = base.clone();
            for _ in 0..rng.random_range(1..6) {
                if bytes.is_empty() {
                    break;
                }
                let at = rng.random_range(0..bytes.len());
                match rng.random_range(0..3) {
                    0 => bytes[at] = alphabet[rng.random_range(0..alphabet.len())],
                    1 => {
                        bytes.remove(at);
                    }
                    _ => bytes.truncate(at.max(1)),
                }
            }
            if local().answer(&bytes, Direction::SendRecv).is_ok() {
                accepted += 1;
            }
        }
        // Some mutations stay valid, most do not: both paths ran.
        assert!(accepted > 0 && accepted < 3000, "accepted {accepted}");
    }
}
