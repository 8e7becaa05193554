//! One browser's peer connection: ICE, DTLS-SRTP and the data channel by
//! `str0m`, Opus by libopus, on one UDP socket, driven by one tokio task.
//!
//! The browser's audio is decoded once, by libopus straight to 8 kHz, and
//! handed to the call's media session as the far end of an RTP leg on
//! loopback ([`Bridge`]): the same session every phone call runs (jitter
//! buffer, pacer, barge-in clearing, the agent's audio port), so a web
//! call's agent runs exactly as a phone call's does. The session's 20 ms
//! packets coming back are encoded to Opus from 8 kHz as they are.
//!
//! Why 8 kHz at the codec and no resampler: the session is 8 kHz, so
//! nothing above 4 kHz exists on either side of the bridge. libopus takes
//! and gives any of its rates itself (RFC 6716 §2: the coded bandwidth is
//! independent of the API's rate; the RTP clock stays 48 kHz, RFC 7587
//! §4.1), so decoding at 48 kHz to band-limit it back down, or upsampling
//! 8 kHz to have the encoder code empty bands, only spent CPU (libopus
//! at 48 kHz was 62 % of the daemon's CPU in a web call, and two FFT
//! resamplers more; BENCHMARKS.md) for the same audio. The encoder then codes narrowband
//! (what the browser plays is the same 4 kHz audio as before). The codec
//! is the one SIP calls use ([`crate::media::codec`], whose module doc has
//! the encoder's settings and why).
//!
//! The data channel carries JSON text: from the page, `{"type":"dtmf",
//! "digit":"5"}` (a button press, handed on as a key) and
//! `{"type":"hangup"}`; to the page, whatever the call sends (live
//! transcript lines).
//!
//! Must not: know calls, agents or the store; it reports [`PeerEvent`]s
//! and does what [`PeerCommand`]s say.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::channel::ChannelId;
use str0m::format::Codec;
use str0m::media::{MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::trickle::{self, SdpFrag};

use crate::media::codec::{Decoder, Encoder};
use crate::media::g711::Codec as G711;

/// The largest UDP datagram read.
const MAX_DATAGRAM: usize = 2048;
/// Samples of one 20 ms frame of the session's 8 kHz audio.
const FRAME_8K: usize = 160;
/// RTP timestamp units of one 20 ms Opus frame: the clock is 48 kHz
/// whatever the rate coded (RFC 7587 §4.1).
const FRAME_RTP_TICKS: u64 = 960;
/// How long ICE and DTLS may take before the peer gives up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// RTP payload type the bridge uses for PCMU (RFC 3551 §6, static).
const PCMU: u8 = 0;
/// Data channel messages read at most, in bytes (a key or a hangup).
const MAX_CHANNEL_MESSAGE: usize = 1024;

/// Why a peer could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("the SDP offer does not parse: {0}")]
    BadOffer(String),
    #[error("the offer cannot be accepted: {0}")]
    Refused(String),
    #[error("no usable ICE candidate address: {0}")]
    Candidate(String),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("opus: {0}")]
    Opus(String),
}

/// What the peer tells the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// ICE and DTLS are up: media flows.
    Connected,
    /// A button press on the page.
    Digit(char),
    /// The page asked to hang up over the data channel.
    Hangup,
    /// The connection is gone (ICE failed or disconnected, or it never
    /// connected in time); the text says which.
    Closed(String),
}

/// What the call tells the peer.
#[derive(Debug)]
pub enum PeerCommand {
    /// Text for the page, on the data channel (dropped before it opens).
    Send(String),
    /// Candidates the browser trickled (RFC 9725 §4.3.1); the peer answers
    /// whether it took them.
    Trickle(TrickleRequest),
}

/// A trickle fragment for the peer, and where its answer goes.
#[derive(Debug)]
pub struct TrickleRequest {
    pub frag: SdpFrag,
    pub reply: oneshot::Sender<Result<(), TrickleError>>,
}

/// Why the peer did not take a trickle fragment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrickleError {
    /// Other ICE credentials than the offer's: an ICE restart, which a
    /// web call does not do (RFC 9725 §4.3.2 lets a session refuse it).
    #[error("an ICE restart (other ice-ufrag or ice-pwd) is not supported; start a new web call")]
    Restart,
    #[error(
        "at most {} trickled candidates per web call",
        trickle::MAX_CANDIDATES_PER_CALL
    )]
    TooMany,
    /// The peer is gone.
    #[error("the web call's media is over")]
    Gone,
}

/// Counters of one peer, returned when its task ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerStats {
    pub opus_in: u64,
    pub opus_out: u64,
    pub decode_errors: u64,
}

/// A started peer: the SDP answer for the browser and the ends of its task.
pub struct Peer {
    pub answer: String,
    pub events: mpsc::Receiver<PeerEvent>,
    pub commands: mpsc::Sender<PeerCommand>,
    pub task: JoinHandle<PeerStats>,
    /// Where the browser's media arrives (the ICE host candidate's port).
    pub local: SocketAddr,
}

/// The loopback RTP leg between the peer and the call's media session:
/// our socket, and where the session's socket listens.
pub struct Bridge {
    pub socket: UdpSocket,
    pub session: SocketAddr,
}

/// Where the peer binds and what it announces.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddress {
    /// The address the UDP socket binds.
    pub bind: std::net::IpAddr,
    /// The address the host candidate announces (the public address
    /// behind a 1:1 NAT, else the bound one).
    pub announce: std::net::IpAddr,
    /// `[webrtc] ports`: the inclusive range the socket binds in; `None`:
    /// any free port.
    pub ports: Option<(u16, u16)>,
}

/// The most ports of `[webrtc] ports` tried for one call before giving
/// up (a full range is an operator's sizing problem, not a reason to
/// spin).
const MAX_BIND_TRIES: u32 = 256;

/// Binds the peer's socket: any free port, or one of `ports` starting at
/// a random one (so calls do not race for the same first port).
async fn bind(at: &PeerAddress) -> Result<UdpSocket, PeerError> {
    let Some((low, high)) = at.ports else {
        return Ok(UdpSocket::bind(SocketAddr::new(at.bind, 0)).await?);
    };
    let span = u32::from(high - low) + 1;
    let start = rand::random::<u32>() % span;
    let mut last = None;
    for i in 0..span.min(MAX_BIND_TRIES) {
        let port = u16::try_from(u32::from(low) + (start + i) % span).unwrap_or(high);
        match UdpSocket::bind(SocketAddr::new(at.bind, port)).await {
            Ok(socket) => return Ok(socket),
            Err(e) => last = Some(e),
        }
    }
    Err(PeerError::Io(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::AddrInUse, "no free port")
    })))
}

/// Accepts the browser's `offer`, gathers our one host candidate first
/// (no trickle needed, RFC 9725 §4.4 allows it), and starts the task.
pub async fn start(offer: &str, at: PeerAddress, bridge: Bridge) -> Result<Peer, PeerError> {
    let remote_creds = (trickle::ufrag_of(offer), pwd_of(offer));
    let offer = SdpOffer::from_sdp_string(offer).map_err(|e| PeerError::BadOffer(e.to_string()))?;
    let socket = bind(&at).await?;
    let local = socket.local_addr()?;
    let announced = SocketAddr::new(at.announce, local.port());
    let mut rtc = RtcConfig::new()
        .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
        .clear_codecs()
        .enable_opus(true, false)
        .build(Instant::now());
    let candidate =
        Candidate::host(announced, "udp").map_err(|e| PeerError::Candidate(e.to_string()))?;
    rtc.add_local_candidate(candidate);
    let answer = rtc
        .sdp_api()
        .accept_offer(offer)
        .map_err(|e| PeerError::Refused(e.to_string()))?;
    let encoder = Encoder::new(G711::Opus).map_err(|e| PeerError::Opus(e.to_string()))?;
    let decoder = Decoder::new(G711::Opus).map_err(|e| PeerError::Opus(e.to_string()))?;
    let (event_tx, events) = mpsc::channel(64);
    let (commands, command_rx) = mpsc::channel(64);
    let task = PeerTask {
        rtc,
        socket,
        local,
        announced,
        bridge,
        events: event_tx,
        commands: command_rx,
        audio_mid: None,
        channel: None,
        encoder,
        decoder,
        to_session: Vec::with_capacity(FRAME_8K * 4),
        to_browser: Vec::with_capacity(FRAME_8K * 2),
        rtp_out: RtpOut::new(),
        opus_time: 0,
        connected: false,
        remote_creds,
        trickled: 0,
        stats: PeerStats::default(),
    };
    let task = tokio::spawn(task.run());
    Ok(Peer {
        answer: answer.to_sdp_string(),
        events,
        commands,
        task,
        local,
    })
}

/// The RTP header state of the bridge's sending side.
struct RtpOut {
    seq: u16,
    timestamp: u32,
    ssrc: u32,
}

impl RtpOut {
    fn new() -> Self {
        Self {
            seq: rand::random(),
            timestamp: rand::random(),
            ssrc: rand::random(),
        }
    }

    /// One RTP packet (RFC 3550 §5.1) of `payload` in PCMU.
    fn packet(&mut self, payload: &[u8]) -> Vec<u8> {
        let mut p = Vec::with_capacity(12 + payload.len());
        p.push(0x80);
        p.push(PCMU);
        p.extend_from_slice(&self.seq.to_be_bytes());
        p.extend_from_slice(&self.timestamp.to_be_bytes());
        p.extend_from_slice(&self.ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self
            .timestamp
            .wrapping_add(u32::try_from(payload.len()).unwrap_or(0));
        p
    }
}

/// The PCMU payload of an RTP packet from the session, or `None` for
/// anything else (a telephone-event, a malformed packet). RFC 3550 §5.1:
/// a 12-byte header, CSRCs, an optional extension, optional padding.
fn pcmu_payload(packet: &[u8]) -> Option<&[u8]> {
    if packet.len() < 12 || packet[0] >> 6 != 2 || packet[1] & 0x7f != PCMU {
        return None;
    }
    let csrcs = usize::from(packet[0] & 0x0f);
    let mut start = 12 + 4 * csrcs;
    if packet[0] & 0x10 != 0 {
        let ext = packet.get(start + 2..start + 4)?;
        start += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    let mut end = packet.len();
    if packet[0] & 0x20 != 0 {
        end = end.checked_sub(usize::from(*packet.last()?))?;
    }
    packet.get(start..end)
}

struct PeerTask {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    announced: SocketAddr,
    bridge: Bridge,
    events: mpsc::Sender<PeerEvent>,
    commands: mpsc::Receiver<PeerCommand>,
    /// The browser's audio m-line, once str0m reported it.
    audio_mid: Option<Mid>,
    /// The page's data channel, once open.
    channel: Option<ChannelId>,
    /// Opus from and to the session's 8 kHz.
    encoder: Encoder,
    decoder: Decoder,
    /// Browser audio not yet making a whole 20 ms packet.
    to_session: Vec<i16>,
    /// Session audio not yet making a whole 20 ms Opus frame.
    to_browser: Vec<i16>,
    rtp_out: RtpOut,
    /// RTP time of the next Opus frame we send (48 kHz units).
    opus_time: u64,
    connected: bool,
    /// The offer's `ice-ufrag` and `ice-pwd`: a trickle fragment must not
    /// change them.
    remote_creds: (Option<String>, Option<String>),
    /// Candidates taken by trickle so far.
    trickled: usize,
    stats: PeerStats,
}

impl PeerTask {
    async fn run(mut self) -> PeerStats {
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut bridge_buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let wake = match self.drive().await {
                Ok(Some(wake)) => wake,
                Ok(None) => break,
                Err(reason) => {
                    self.closed(reason).await;
                    break;
                }
            };
            let wake = tokio::time::Instant::from_std(wake);
            let until_connected = if self.connected { None } else { Some(deadline) };
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, source)) => self.receive(&buf[..n], source),
                    Err(e) => tracing::debug!(error = %e, "peer socket read failed"),
                },
                r = self.bridge.socket.recv_from(&mut bridge_buf) => match r {
                    // Only the session's socket is listened to.
                    Ok((n, from)) if from == self.bridge.session => {
                        self.session_audio(&bridge_buf[..n]);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "bridge socket read failed"),
                },
                command = self.commands.recv() => match command {
                    Some(PeerCommand::Send(text)) => self.send_text(&text),
                    Some(PeerCommand::Trickle(req)) => {
                        let result = self.trickle(req.frag);
                        let _ = req.reply.send(result);
                    }
                    // The call dropped its end: the peer goes with it.
                    None => {
                        self.rtc.disconnect();
                        break;
                    }
                },
                () = tokio::time::sleep_until(wake) => {
                    if let Err(e) = self.rtc.handle_input(Input::Timeout(Instant::now())) {
                        self.closed(format!("webrtc: {e}")).await;
                        break;
                    }
                }
                () = sleep_opt(until_connected) => {
                    self.closed("ICE and DTLS did not connect in time".into()).await;
                    break;
                }
            }
        }
        self.stats
    }

    async fn closed(&mut self, reason: String) {
        tracing::info!(%reason, "peer closed");
        let _ = self.events.send(PeerEvent::Closed(reason)).await;
    }

    /// Runs str0m until it waits: sends what it transmits, handles its
    /// events; the instant it next needs a timeout, `None` once the peer
    /// is over, `Err` with why it failed.
    async fn drive(&mut self) -> Result<Option<Instant>, String> {
        loop {
            if !self.rtc.is_alive() {
                return Err("the peer connection closed".into());
            }
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => return Ok(Some(t)),
                Ok(Output::Transmit(t)) => {
                    if let Err(e) = self.socket.send_to(&t.contents, t.destination).await {
                        tracing::debug!(error = %e, "peer send failed");
                    }
                }
                Ok(Output::Event(event)) => {
                    if let Some(end) = self.on_event(event).await {
                        return Err(end);
                    }
                }
                Err(e) => return Err(format!("webrtc: {e}")),
            }
        }
    }

    fn receive(&mut self, data: &[u8], source: SocketAddr) {
        let Ok(contents) = data.try_into() else {
            // Not STUN, DTLS, RTP or RTCP: ignored (RFC 7983 §7).
            return;
        };
        let input = Input::Receive(
            Instant::now(),
            Receive {
                proto: Protocol::Udp,
                source,
                destination: SocketAddr::new(self.announced.ip(), self.local.port()),
                contents,
            },
        );
        if let Err(e) = self.rtc.handle_input(input) {
            tracing::debug!(error = %e, "peer input refused");
        }
    }

    /// A str0m event; `Some(reason)` ends the peer.
    async fn on_event(&mut self, event: Event) -> Option<String> {
        match event {
            Event::Connected => {
                self.connected = true;
                tracing::info!("peer connected (ICE and DTLS)");
                let _ = self.events.send(PeerEvent::Connected).await;
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                return Some("ICE disconnected".into());
            }
            Event::MediaAdded(m) if m.kind == MediaKind::Audio => self.audio_mid = Some(m.mid),
            Event::MediaData(d) if d.params.spec().codec == Codec::Opus => {
                self.browser_audio(&d.data);
            }
            Event::ChannelOpen(id, label) => {
                tracing::debug!(%label, "data channel open");
                self.channel = Some(id);
            }
            Event::ChannelData(d) => {
                if d.data.len() <= MAX_CHANNEL_MESSAGE
                    && let Some(event) = channel_message(&d.data)
                {
                    let _ = self.events.send(event).await;
                }
            }
            Event::ChannelClose(id) if self.channel == Some(id) => self.channel = None,
            _ => {}
        }
        None
    }

    /// One Opus packet from the browser, to the session as 20 ms PCMU.
    fn browser_audio(&mut self, packet: &[u8]) {
        self.stats.opus_in += 1;
        if !self.decoder.decode_into(packet, &mut self.to_session) {
            self.stats.decode_errors += 1;
            return;
        }
        let mut payload = Vec::with_capacity(FRAME_8K);
        while self.to_session.len() >= FRAME_8K {
            payload.clear();
            G711::Pcmu.encode_into(&self.to_session[..FRAME_8K], &mut payload);
            self.to_session.drain(..FRAME_8K);
            let packet = self.rtp_out.packet(&payload);
            // Loopback UDP to a socket that is always read: a full
            // buffer drops the frame, as the network would.
            let _ = self.bridge.socket.try_send_to(&packet, self.bridge.session);
        }
    }

    /// One packet from the session, to the browser as Opus.
    fn session_audio(&mut self, packet: &[u8]) {
        let Some(payload) = pcmu_payload(packet) else {
            return;
        };
        G711::Pcmu.decode_into(payload, &mut self.to_browser);
        while self.to_browser.len() >= FRAME_8K {
            self.send_opus();
            self.to_browser.drain(..FRAME_8K);
        }
    }

    /// The first 20 ms of `to_browser`, to the browser as one Opus frame.
    fn send_opus(&mut self) {
        let time = MediaTime::new(self.opus_time, str0m::media::Frequency::FORTY_EIGHT_KHZ);
        self.opus_time += FRAME_RTP_TICKS;
        let (Some(mid), true) = (self.audio_mid, self.connected) else {
            return;
        };
        let mut payload = Vec::new();
        if !self
            .encoder
            .encode_into(&self.to_browser[..FRAME_8K], &mut payload)
        {
            return;
        }
        let Some(writer) = self.rtc.writer(mid) else {
            return;
        };
        let Some(pt) = writer
            .payload_params()
            .find(|p| p.spec().codec == Codec::Opus)
            .map(|p| p.pt())
        else {
            return;
        };
        match writer.write(pt, Instant::now(), time, payload) {
            Ok(()) => self.stats.opus_out += 1,
            Err(e) => tracing::debug!(error = %e, "opus frame not sent"),
        }
    }

    /// Adds the browser's trickled candidates (RFC 8838 §11: they pair
    /// with ours and are checked like the offer's).
    fn trickle(&mut self, frag: SdpFrag) -> Result<(), TrickleError> {
        let (ufrag, pwd) = &self.remote_creds;
        if frag.ufrag.is_some() && frag.ufrag != *ufrag || frag.pwd.is_some() && frag.pwd != *pwd {
            return Err(TrickleError::Restart);
        }
        if self.trickled + frag.candidates.len() > trickle::MAX_CANDIDATES_PER_CALL {
            return Err(TrickleError::TooMany);
        }
        self.trickled += frag.candidates.len();
        tracing::debug!(
            candidates = frag.candidates.len(),
            skipped = frag.skipped,
            end = frag.end,
            "trickled candidates"
        );
        for c in frag.candidates {
            self.rtc.add_remote_candidate(c);
        }
        Ok(())
    }

    fn send_text(&mut self, text: &str) {
        let Some(id) = self.channel else { return };
        if let Some(mut channel) = self.rtc.channel(id)
            && let Err(e) = channel.write(false, text.as_bytes())
        {
            tracing::debug!(error = %e, "data channel write failed");
        }
    }
}

/// The `a=ice-pwd` of an SDP, if any.
fn pwd_of(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix("a=ice-pwd:"))
        .map(|p| p.trim().to_owned())
}

/// Sleeps until `at`, or forever for `None`.
async fn sleep_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What a data channel message from the page asks, if anything we know:
/// `{"type":"dtmf","digit":"5"}` (one of `0-9*#A-D`) or
/// `{"type":"hangup"}`. Anything else is ignored.
pub fn channel_message(data: &[u8]) -> Option<PeerEvent> {
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    match v.get("type")?.as_str()? {
        "hangup" => Some(PeerEvent::Hangup),
        "dtmf" => {
            let digit = v.get("digit")?.as_str()?;
            let mut chars = digit.chars();
            let c = chars.next()?.to_ascii_uppercase();
            (chars.next().is_none() && matches!(c, '0'..='9' | '*' | '#' | 'A'..='D'))
                .then_some(PeerEvent::Digit(c))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_may_press_keys_and_hang_up_only() {
        assert_eq!(
            channel_message(br#"{"type":"dtmf","digit":"5"}"#),
            Some(PeerEvent::Digit('5'))
        );
        assert_eq!(
            channel_message(br#"{"type":"dtmf","digit":"a"}"#),
            Some(PeerEvent::Digit('A'))
        );
        assert_eq!(
            channel_message(br#"{"type":"hangup"}"#),
            Some(PeerEvent::Hangup)
        );
        for bad in [
            &br#"{"type":"dtmf","digit":"55"}"#[..],
            br#"{"type":"dtmf","digit":"x"}"#,
            br#"{"type":"dtmf"}"#,
            br#"{"type":"other"}"#,
            b"not json",
            br#"["hangup"]"#,
        ] {
            assert_eq!(
                channel_message(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_bridge_reads_pcmu_only() {
        let mut out = RtpOut::new();
        let p = out.packet(&[1, 2, 3]);
        assert_eq!(pcmu_payload(&p), Some(&[1u8, 2, 3][..]));
        let mut event = p.clone();
        event[1] = 101;
        assert_eq!(pcmu_payload(&event), None);
        assert_eq!(pcmu_payload(&p[..11]), None);
        // An extension header longer than the packet.
        let mut ext = p.clone();
        ext[0] |= 0x10;
        assert_eq!(pcmu_payload(&ext), None);
        // Padding longer than the packet.
        let mut pad = p;
        pad[0] |= 0x20;
        *pad.last_mut().unwrap() = 200;
        assert_eq!(pcmu_payload(&pad), None);
    }
}
