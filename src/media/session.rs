//! The RTP session of one call: a UDP socket and the task that drives the
//! media cores with it.
//!
//! Owns: the socket bound by [`super::ports`] (and its [`PortPermit`],
//! released when the session ends), symmetric RTP latching (RFC 4961), the
//! receive path (parse with `rtp-rs`, DTMF to the decoder, audio through the
//! jitter buffer, decode by [`super::codec`], 20 ms frames out), the paced send path, the
//! RTP inactivity timeout, and the RTP metrics (names in `crate::metrics`).
//!
//! Must not: decide anything about the call. It reports [`MediaEvent`]s
//! (audio, digits, latching, playout drained, timeout) and does what the
//! [`MediaHandle`] asks (play, clear, send a digit, renegotiate, route the
//! caller's audio: out as events, or straight back for the echo agent, see
//! [`AudioRoute`]), or hands the audio to an attached [`super::port`]
//! and plays what it gives back. RTCP is not implemented: the odd port above ours stays
//! free for it, nothing listens.
//!
//! Latching (symmetric RTP, RFC 4961 §3): until latched we send to the
//! address from SDP; the first valid RTP packet whose source passes the
//! [`LatchPolicy`] pins the session to its address, port and SSRC, and we
//! send there. [`super::latch`] holds the rules; packets it rejects are
//! counted and go no further.
//!
//! The inactivity timeout runs only while the stream is `sendrecv`: a hold
//! in either direction pauses it, since a held party often sends nothing
//! even when it signals `sendonly`. It is reported once as
//! [`MediaEvent::Timeout`] (again only after RTP resumed and stopped anew);
//! ending the call is the caller's decision.
//!
//! SRTP (when negotiated, [`super::srtp`]): every packet we send is
//! protected just before it leaves, every datagram is unprotected before
//! anything else reads it, so a forged or replayed packet can neither latch
//! the session nor play; it is counted and dropped, and the call goes on.
//!
//! Wideband calls (G.722, Opus): the session's PCM stays 8 kHz (what the
//! codec decodes to itself, see [`super::codec`]); while a port is
//! attached a second decoder fed the same payloads gives each frame its
//! 16 kHz form too ([`AudioFrame::wide`]), for the recognizer. Taps and
//! recordings stay 8 kHz.
//!
//! Audio frames come out only while audio arrives: silence suppression, a
//! hold or a dead peer produce no frames, only lost packets inside a stream
//! are concealed (with silence, flagged [`AudioFrame::concealed`]).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use rtp_rs::RtpReader;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::codec::{Decoder, WIDE_RATE};
use super::counters::Counters;
use super::dtmf::DtmfDecoder;
use super::g711::Codec;
use super::handle::{
    AudioFrame, AudioRoute, Command, MediaEvent, MediaEvents, MediaHandle, MediaStats,
};
use super::jitter::{JitterBuffer, JitterConfig, Playout, RtpPacket};
use super::latch::{Latch, LatchPolicy, Verdict};
use super::pacer::{Pacer, PacingClock, Packetizer, SendFormat, Slot};
use super::port::{Attached, PortCommand, PortEvent, PortPlayout};
use super::ports::PortPermit;
use super::sdp::{Direction, NegotiatedMedia};
use super::srtp::SrtpStream;
use super::tap::{Taps, Track};
use super::{CLOCK_RATE, FRAME_SAMPLES};
use crate::metrics::{RTP_JITTER_SECONDS, RTP_TIMEOUTS_TOTAL};

/// Largest datagram we read; RTP over UDP for G.711 is ~172 bytes.
const MAX_DATAGRAM: usize = 2048;
/// Ticks (of 20 ms) between two publications of [`MediaStats`].
const STATS_EVERY_TICKS: u32 = 50;
/// Audio frames buffered towards a consumer before frames are dropped.
const AUDIO_CHANNEL_FRAMES: usize = 250;
/// Control events (digits, timeout, ...) buffered towards a consumer.
const CONTROL_CHANNEL_EVENTS: usize = 64;
/// Commands buffered from handles.
const COMMAND_CHANNEL: usize = 64;

/// Settings of one RTP session.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    /// No RTP for this long while the far end should be sending ends in
    /// [`MediaEvent::Timeout`].
    pub inactivity_timeout: Duration,
    /// Who may latch an unpinned session; once pinned, only the pinned
    /// address, port and SSRC are accepted whatever the policy (see
    /// [`super::latch`]).
    pub latch: LatchPolicy,
    pub jitter: JitterConfig,
    /// Most audio queued for playing; more is refused (dropped with a
    /// warning).
    pub max_queued_audio: Duration,
    /// Once the far end's RTP has arrived, send a frame of silence in
    /// every slot with nothing to play (see [`super::pacer`]).
    pub send_silence: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            inactivity_timeout: Duration::from_secs(30),
            latch: LatchPolicy::SignalledHost,
            jitter: JitterConfig::default(),
            max_queued_audio: Duration::from_secs(120),
            send_silence: true,
        }
    }
}

/// A started session: its handle, its events, and its task.
#[derive(Debug)]
pub struct RtpSession {
    pub handle: MediaHandle,
    pub events: MediaEvents,
    /// Ends when every [`MediaHandle`] is dropped; holds the port permit.
    pub task: JoinHandle<MediaStats>,
}

impl RtpSession {
    /// Starts driving `socket` for the negotiated `media`. `permit` (if the
    /// port came from a [`PortAllocator`]) is released when the task ends.
    pub fn start(
        socket: UdpSocket,
        permit: Option<PortPermit>,
        media: NegotiatedMedia,
        config: SessionConfig,
    ) -> io::Result<RtpSession> {
        let local = socket.local_addr()?;
        let srtp = srtp_stream(&media)?;
        let (command_tx, command_rx) = mpsc::channel(COMMAND_CHANNEL);
        let (control_tx, control_rx) = mpsc::channel(CONTROL_CHANNEL_EVENTS);
        let (audio_tx, audio_rx) = mpsc::channel(AUDIO_CHANNEL_FRAMES);
        let (stats_tx, stats_rx) = watch::channel(MediaStats::default());
        let max_queued =
            usize::try_from(config.max_queued_audio.as_millis() * u128::from(CLOCK_RATE) / 1000)
                .unwrap_or(usize::MAX);
        let mut pacer = Pacer::new(Packetizer::new(), send_format(&media), max_queued)
            .map_err(io::Error::other)?;
        // Silence fill starts once the far end is heard (see `accept_source`).
        pacer.set_silence_fill(false);
        let decoder = Decoder::new(media.codec).map_err(io::Error::other)?;
        let task = SessionTask {
            socket,
            _permit: permit,
            jitter: JitterBuffer::new(jitter_config(&config.jitter, &media)),
            decoder,
            wide: None,
            pending_wide: VecDeque::new(),
            dtmf: DtmfDecoder::new(),
            pacer,
            latch: Latch::new(config.latch, media.remote),
            srtp,
            media,
            config,
            last_activity: Instant::now(),
            timeout_reported: false,
            was_playing: false,
            pending: VecDeque::with_capacity(FRAME_SAMPLES * 4),
            pending_concealed: false,
            route: AudioRoute::Events,
            port: None,
            taps: Taps::default(),
            control: control_tx,
            audio: audio_tx,
            stats_tx,
            stats: MediaStats::default(),
            counters: Counters::new(),
        };
        let task = tokio::spawn(task.run(command_rx));
        Ok(RtpSession {
            handle: MediaHandle {
                commands: command_tx,
                local,
                stats: stats_rx,
            },
            events: MediaEvents {
                control: control_rx,
                audio: audio_rx,
            },
            task,
        })
    }
}

/// The SRTP transforms of `media`, if it is SRTP.
fn srtp_stream(media: &NegotiatedMedia) -> io::Result<Option<SrtpStream>> {
    media
        .srtp
        .as_ref()
        .map(SrtpStream::new)
        .transpose()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// The jitter buffer's settings, counting in the codec's RTP clock.
fn jitter_config(base: &JitterConfig, media: &NegotiatedMedia) -> JitterConfig {
    let clock_rate = media.codec.clock_rate();
    JitterConfig {
        clock_rate,
        packet_samples: clock_rate / 50,
        ..base.clone()
    }
}

fn send_format(media: &NegotiatedMedia) -> SendFormat {
    SendFormat {
        codec: media.codec,
        payload_type: media.payload_type,
        event_payload_type: media.event_payload_type,
    }
}

/// The session task's state. Every field lives only inside the task.
struct SessionTask {
    socket: UdpSocket,
    /// Returns the port to the allocator when the task ends.
    _permit: Option<PortPermit>,
    jitter: JitterBuffer,
    /// Decodes the negotiated codec (G.711 from a static type needs none).
    decoder: Decoder,
    /// The 16 kHz decoder of a wideband codec, while a port is attached.
    wide: Option<Decoder>,
    /// Its samples not yet handed out: always twice `pending`'s length.
    pending_wide: VecDeque<i16>,
    dtmf: DtmfDecoder,
    pacer: Pacer,
    media: NegotiatedMedia,
    config: SessionConfig,
    /// Symmetric RTP peer and its SSRC, once latched.
    latch: Latch,
    /// Protect and unprotect, when the stream is SRTP.
    srtp: Option<SrtpStream>,
    /// Last accepted RTP, or the last (re)negotiation.
    last_activity: Instant,
    timeout_reported: bool,
    /// The pacer had something to send on the previous tick.
    was_playing: bool,
    /// Decoded samples not yet handed out as a frame.
    pending: VecDeque<i16>,
    pending_concealed: bool,
    route: AudioRoute,
    /// The attached audio consumer and producer: while it is there, the
    /// caller's audio and the playout events go to it, whatever `route`.
    port: Option<Attached>,
    /// Copies of both tracks for recorders and forks, never waited on.
    taps: Taps,
    control: mpsc::Sender<MediaEvent>,
    audio: mpsc::Sender<MediaEvent>,
    stats_tx: watch::Sender<MediaStats>,
    stats: MediaStats,
    counters: Counters,
}

impl SessionTask {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) -> MediaStats {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut clock = PacingClock::new();
        let mut ticks: u32 = 0;
        loop {
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    Some(command) => self.on_command(command).await,
                    None => break,
                },
                command = port_command(&mut self.port) => match command {
                    Some(command) => self.on_port_command(command).await,
                    None => {
                        self.port = None;
                        self.reset_wide();
                    }
                },
                tick = clock.tick() => {
                    self.pacer.skip_slots(tick.skipped);
                    self.send_slot().await;
                    self.play_out().await;
                    self.check_inactivity();
                    ticks = ticks.wrapping_add(1);
                    if ticks.is_multiple_of(STATS_EVERY_TICKS) {
                        self.publish_stats();
                    }
                }
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, from)) => self.on_datagram(&buf[..len], from),
                    // ICMP port unreachable surfaces here on some systems.
                    Err(e) => tracing::debug!(error = %e, "RTP receive error"),
                },
            }
        }
        self.publish_stats();
        metrics::histogram!(RTP_JITTER_SECONDS).record(self.stats.jitter.as_secs_f64());
        self.stats
    }

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Play(samples) => self.play(&samples).await,
            Command::Route(route) => self.route = route,
            Command::Attach(port) => {
                self.port = Some(port);
                self.reset_wide();
            }
            Command::Tap(tap) => self.taps.add(tap),
            Command::Clear => self.pacer.clear_audio(),
            Command::Digit(digit) => {
                if !self.pacer.queue_digit(digit) {
                    tracing::warn!(%digit, "far end has no telephone-event, digit not sent");
                }
            }
            Command::Update(media) => {
                if media.srtp != self.media.srtp {
                    match srtp_stream(&media) {
                        Ok(srtp) => self.srtp = srtp,
                        // Never falls back to plain: the old keys stay.
                        Err(e) => tracing::warn!(error = %e, "new SRTP keys refused"),
                    }
                }
                self.latch.resignal(media.remote);
                let changed = media.codec != self.media.codec;
                if changed {
                    match Decoder::new(media.codec) {
                        Ok(decoder) => self.decoder = decoder,
                        Err(e) => tracing::warn!(error = %e, "new codec refused"),
                    }
                    // Timestamps of another clock cannot share a buffer.
                    if media.codec.clock_rate() != self.media.codec.clock_rate() {
                        self.jitter = JitterBuffer::new(jitter_config(&self.config.jitter, &media));
                    }
                }
                if let Err(e) = self.pacer.set_format(send_format(&media)) {
                    tracing::warn!(error = %e, "new codec refused for sending");
                }
                self.media = media;
                if changed {
                    self.reset_wide();
                }
                self.last_activity = Instant::now();
                self.timeout_reported = false;
            }
        }
    }

    async fn on_port_command(&mut self, command: PortCommand) {
        match command {
            PortCommand::Play(samples) => {
                if let Some(port) = self.port.as_mut() {
                    port.received += samples.len() as u64;
                }
                self.play(&samples).await;
            }
            PortCommand::Clear => {
                self.pacer.clear_audio();
                // The next audio starts a run of its own, reported as such
                // even when it comes before the next slot.
                if self.was_playing {
                    self.was_playing = false;
                    self.emit_playout(false);
                }
            }
            PortCommand::Digit(digit) => self.on_command(Command::Digit(digit)).await,
        }
    }

    /// Where the port's audio stands now.
    fn port_playout(&self) -> PortPlayout {
        PortPlayout {
            received: self.port.as_ref().map_or(0, |p| p.received),
            queued: self.pacer.queued_samples() as u64,
        }
    }

    /// Reports a run of our audio starting or ending: to the port when one
    /// is attached, else to the call.
    fn emit_playout(&mut self, started: bool) {
        let at = Instant::now();
        let playout = self.port_playout();
        let Some(port) = self.port.as_ref() else {
            self.emit_control(if started {
                MediaEvent::PlayoutStarted(at)
            } else {
                MediaEvent::PlayoutDrained
            });
            return;
        };
        let event = if started {
            PortEvent::Started { at, playout }
        } else {
            PortEvent::Drained { at, playout }
        };
        if port.events.try_send(event).is_err() {
            tracing::warn!("playout event dropped: the attached consumer is not reading");
        }
    }

    /// Queues audio to play after what is queued.
    async fn play(&mut self, samples: &[i16]) {
        let accepted = self.pacer.queue_audio(samples);
        if accepted < samples.len() {
            tracing::warn!(
                dropped = samples.len() - accepted,
                "playout queue full, audio dropped"
            );
        }
        // New audio after a quiet slot goes out now, not at the next slot
        // up to 20 ms away.
        if accepted > 0
            && let Some(destination) = self.sending_to()
            && let Some(packet) = self.pacer.next_packet_early()
        {
            self.send(Slot::Play(packet), destination).await;
        }
    }

    /// Where our packets go: the latched source, else the SDP address.
    fn destination(&self) -> Option<SocketAddr> {
        self.latch.source().or(self.media.remote)
    }

    /// Where our packets go, if we send at all (not on hold).
    fn sending_to(&self) -> Option<SocketAddr> {
        self.destination().filter(|_| self.media.direction.sends())
    }

    async fn send_slot(&mut self) {
        let Some(destination) = self.sending_to() else {
            // On hold: time passes, the queue waits.
            self.pacer.skip_slots(1);
            return;
        };
        let slot = self.pacer.next_packet();
        self.send(slot, destination).await;
    }

    /// Sends what the pacer put in a slot, and reports playout starting
    /// and draining.
    async fn send(&mut self, slot: Slot, destination: SocketAddr) {
        let playing = matches!(slot, Slot::Play(_));
        // The outbound track is what each slot carries; a slot sent early
        // was tapped when it went.
        if !self.taps.is_empty() && !matches!(slot, Slot::Ahead) {
            let frame = match slot {
                Slot::Play(_) | Slot::Fill(_) => self.pacer.last_frame(),
                _ => &[],
            };
            self.taps.push(Track::Outbound, frame);
        }
        let packet = match slot {
            Slot::Play(packet) | Slot::Fill(packet) => packet,
            Slot::Idle => Vec::new(),
            // Audio sent early may be followed by more just as early (an
            // echo): no drained-started pair for every frame.
            Slot::Ahead => return,
        };
        if self.was_playing && !playing {
            self.emit_playout(false);
        }
        let started = playing && !self.was_playing;
        self.was_playing = playing;
        if packet.is_empty() {
            return;
        }
        let protected;
        let packet = match self.srtp.as_mut().map(|srtp| srtp.protect(&packet)) {
            None => &packet[..],
            Some(Ok(srtp)) => {
                protected = srtp;
                &protected[..]
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "SRTP packet not sent");
                return;
            }
        };
        match self.socket.send_to(packet, destination).await {
            Ok(sent) => {
                self.counters.packets_out.increment(1);
                self.counters.bytes_out.increment(sent as u64);
                self.stats.packets_out += 1;
                self.stats.bytes_out += sent as u64;
                if started {
                    self.emit_playout(true);
                }
            }
            Err(e) => tracing::debug!(error = %e, %destination, "RTP send error"),
        }
    }

    fn on_datagram(&mut self, bytes: &[u8], from: SocketAddr) {
        let unprotected;
        let bytes = match self.srtp.as_mut().map(|srtp| srtp.unprotect(bytes)) {
            None => bytes,
            Some(Ok(plain)) => {
                unprotected = plain;
                &unprotected[..]
            }
            // Counted by the stream; nothing else learns of it.
            Some(Err(_)) => return,
        };
        let Ok(rtp) = RtpReader::new(bytes) else {
            self.counters.malformed.increment(1);
            return;
        };
        if !self.accept_source(from, &rtp) {
            return;
        }
        let now = Instant::now();
        self.counters.packets_in.increment(1);
        self.counters.bytes_in.increment(bytes.len() as u64);
        self.stats.packets_in += 1;
        self.stats.bytes_in += bytes.len() as u64;
        self.last_activity = now;
        self.timeout_reported = false;

        let payload_type = rtp.payload_type();
        let ssrc = rtp.ssrc();
        let sequence: u16 = rtp.sequence_number().into();
        let arrival = now.into_std();
        if Some(payload_type) == self.media.event_payload_type {
            if let Some(digit) = self
                .dtmf
                .push(ssrc, rtp.timestamp(), rtp.payload(), arrival)
            {
                self.emit_control(MediaEvent::Digit(digit));
            }
            self.jitter.push_non_audio(ssrc, sequence, arrival);
        } else if self.codec_for(payload_type).is_some() {
            let packet = RtpPacket {
                ssrc,
                sequence,
                timestamp: rtp.timestamp(),
                payload_type,
                payload: rtp.payload().to_vec(),
            };
            self.jitter.push(packet, arrival);
        } else {
            // Comfort noise and the like: keep the sequence space whole.
            self.counters.unknown_payload_type.increment(1);
            self.jitter.push_non_audio(ssrc, sequence, arrival);
        }
    }

    /// The codec for an inbound payload type: the negotiated one, or a
    /// static G.711 type on an 8 kHz stream (peers sometimes switch between
    /// offered codecs; G.711 needs no decoder state).
    fn codec_for(&self, payload_type: u8) -> Option<Codec> {
        if payload_type == self.media.payload_type {
            Some(self.media.codec)
        } else if self.media.codec.clock_rate() == CLOCK_RATE {
            Codec::from_static_payload_type(payload_type).filter(|c| c.is_g711())
        } else {
            None
        }
    }

    /// Starts (or stops) the 16 kHz decoding: on while a port is attached
    /// to a wideband call. Its buffer starts level with the 8 kHz one.
    fn reset_wide(&mut self) {
        self.wide = None;
        self.pending_wide.clear();
        if self.port.is_none() || !self.media.codec.is_wideband() {
            return;
        }
        match Decoder::wideband(self.media.codec) {
            Ok(wide) => {
                self.wide = wide;
                let ratio = (WIDE_RATE / CLOCK_RATE) as usize;
                self.pending_wide.extend(
                    self.pending
                        .iter()
                        .flat_map(|&s| std::iter::repeat_n(s, ratio)),
                );
            }
            Err(e) => tracing::warn!(error = %e, "no 16 kHz decoder; the port gets 8 kHz"),
        }
    }

    /// Appends the 16 kHz form of what was just added to `pending` (`added`
    /// samples at 8 kHz): `wide` when a decoder made it, else the 8 kHz
    /// samples held, so both buffers stay level.
    fn extend_wide(&mut self, added: usize, wide: &[i16]) {
        if self.wide.is_none() {
            return;
        }
        let want = added * (WIDE_RATE / CLOCK_RATE) as usize;
        let take = wide.len().min(want);
        self.pending_wide.extend(&wide[..take]);
        if take < want {
            let start = self.pending.len() - added;
            let held: Vec<i16> = self
                .pending
                .range(start..)
                .flat_map(|&s| [s, s])
                .skip(take)
                .take(want - take)
                .collect();
            self.pending_wide.extend(held);
        }
    }

    /// Applies the pinning rules of [`super::latch`]; counts rejections.
    fn accept_source(&mut self, from: SocketAddr, rtp: &RtpReader<'_>) -> bool {
        match self.latch.on_packet(from, rtp.ssrc(), rtp.mark()) {
            Verdict::Accepted => true,
            Verdict::NewSsrc(ssrc) => {
                tracing::debug!(%from, ssrc, "RTP source started a new SSRC");
                true
            }
            Verdict::Rejected(why) => {
                self.counters.rejected(why).increment(1);
                false
            }
            Verdict::Latched(from) => {
                tracing::debug!(%from, "RTP latched");
                // Fill our pauses with silence from now on: the far end's
                // media is live. A peer that sends no RTP at all (a
                // signalling-only load test, a dead media path) gets none of
                // ours but the agent's audio, so a call that waits costs no
                // packets.
                self.pacer.set_silence_fill(self.config.send_silence);
                self.stats.latched = Some(from);
                self.emit_control(MediaEvent::Latched(from));
                true
            }
        }
    }

    /// Moves due audio from the jitter buffer out as 20 ms frames, to where
    /// the [`AudioRoute`] says.
    async fn play_out(&mut self) {
        let now = Instant::now().into_std();
        while self.pending.len() < FRAME_SAMPLES {
            match self.jitter.pop(now) {
                Playout::Frame(frame) => {
                    let mut decoded = Vec::with_capacity(FRAME_SAMPLES);
                    let mut wide = Vec::new();
                    match self.codec_for(frame.payload_type) {
                        Some(codec) if codec == self.decoder.codec() => {
                            if !self.decoder.decode_into(&frame.payload, &mut decoded) {
                                self.counters.malformed.increment(1);
                            } else if let Some(w) = self.wide.as_mut() {
                                w.decode_into(&frame.payload, &mut wide);
                            }
                        }
                        Some(codec) => codec.decode_into(&frame.payload, &mut decoded),
                        None => {}
                    }
                    let added = decoded.len();
                    self.pending.extend(decoded);
                    self.extend_wide(added, &wide);
                }
                Playout::Missing { samples } => {
                    // Counted in the RTP clock; the PCM here is 8 kHz.
                    let samples = u64::from(samples) * u64::from(CLOCK_RATE)
                        / u64::from(self.media.codec.clock_rate().max(1));
                    let samples = usize::try_from(samples).unwrap_or(FRAME_SAMPLES);
                    self.pending.extend(std::iter::repeat_n(0, samples));
                    self.extend_wide(samples, &[]);
                    self.pending_concealed = true;
                }
                Playout::NonAudio => {}
                Playout::Idle => break,
            }
        }
        if self.pending.len() < FRAME_SAMPLES {
            return;
        }
        let mut samples = Vec::with_capacity(FRAME_SAMPLES);
        super::move_front(&mut self.pending, FRAME_SAMPLES, &mut samples);
        let concealed = std::mem::take(&mut self.pending_concealed);
        self.taps.push(Track::Inbound, &samples);
        let wide = self.wide.is_some().then(|| {
            let mut wide = Vec::with_capacity(2 * FRAME_SAMPLES);
            super::move_front(&mut self.pending_wide, 2 * FRAME_SAMPLES, &mut wide);
            wide
        });
        if let Some(port) = self.port.as_ref() {
            let event = PortEvent::Audio {
                frame: AudioFrame {
                    samples,
                    concealed,
                    wide,
                },
                at: Instant::now(),
                playout: self.port_playout(),
            };
            if port.events.try_send(event).is_err() {
                self.counters.consumer_slow.increment(1);
            }
            return;
        }
        match self.route {
            AudioRoute::Events => {
                let frame = AudioFrame {
                    samples,
                    concealed,
                    wide: None,
                };
                if self.audio.try_send(MediaEvent::Audio(frame)).is_err() {
                    self.counters.consumer_slow.increment(1);
                }
            }
            // Only what can go back now: on hold the echo is dropped, not
            // saved up to be played stale on resume.
            AudioRoute::Loopback => {
                if self.sending_to().is_some() {
                    self.play(&samples).await;
                }
            }
        }
    }

    fn check_inactivity(&mut self) {
        if self.timeout_reported || self.media.direction != Direction::SendRecv {
            return;
        }
        if self.last_activity.elapsed() >= self.config.inactivity_timeout {
            self.timeout_reported = true;
            metrics::counter!(RTP_TIMEOUTS_TOTAL).increment(1);
            tracing::info!(timeout = ?self.config.inactivity_timeout, "RTP inactivity timeout");
            self.emit_control(MediaEvent::Timeout);
        }
    }

    fn emit_control(&mut self, event: MediaEvent) {
        if self.control.try_send(event).is_err() {
            tracing::warn!("media event dropped: consumer is not reading");
        }
    }

    fn publish_stats(&mut self) {
        let jitter = self.jitter.stats();
        if jitter.lost > self.stats.lost {
            self.counters.lost.increment(jitter.lost - self.stats.lost);
        }
        self.stats.lost = jitter.lost;
        self.stats.late = jitter.late;
        self.stats.duplicates = jitter.duplicates;
        self.stats.concealed = jitter.concealed;
        self.stats.jitter = jitter.jitter;
        self.stats_tx.send_replace(self.stats);
    }
}

/// The next command of the attached port; pending while none is.
async fn port_command(port: &mut Option<Attached>) -> Option<PortCommand> {
    match port {
        Some(port) => port.commands.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::dtmf::TelephoneEvent;
    use rtp_rs::{RtpPacketBuilder, Seq};
    use std::f64::consts::PI;
    use std::sync::Arc;

    fn media(remote: SocketAddr) -> NegotiatedMedia {
        NegotiatedMedia {
            codec: Codec::Pcmu,
            payload_type: 0,
            event_payload_type: Some(101),
            remote: Some(remote),
            direction: Direction::SendRecv,
            srtp: None,
        }
    }

    fn tone(freq: f64, start: usize, len: usize) -> Vec<i16> {
        (start..start + len)
            .map(|n| (8000.0 * (2.0 * PI * freq * n as f64 / 8000.0).sin()) as i16)
            .collect()
    }

    /// Mean share of power at `freq` over the 20 ms chunks that are not
    /// silent, so a concealed or skipped frame cannot spoil the phase.
    fn tone_share(samples: &[i16], freq: f64) -> f64 {
        let shares: Vec<f64> = samples
            .chunks_exact(160)
            .filter(|chunk| chunk.iter().any(|&x| x.abs() > 100))
            .map(|chunk| power_share(chunk, freq))
            .collect();
        assert!(shares.len() >= 10, "only {} audible frames", shares.len());
        shares.iter().sum::<f64>() / shares.len() as f64
    }

    /// Share of the signal's power at `freq` (Goertzel).
    fn power_share(samples: &[i16], freq: f64) -> f64 {
        let coeff = 2.0 * (2.0 * PI * freq / 8000.0).cos();
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        let mut total = 0.0;
        for &x in samples {
            let x = f64::from(x);
            total += x * x;
            let s0 = x + coeff * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
        // A pure tone at `freq` gives power (A*N/2)^2 and energy N*A^2/2,
        // so this ratio is 1 for it and near 0 for other frequencies.
        2.0 * power / (samples.len() as f64 * total.max(1.0))
    }

    fn rtp(pt: u8, seq: u16, ts: u32, marker: bool, payload: &[u8]) -> Vec<u8> {
        RtpPacketBuilder::new()
            .payload_type(pt)
            .sequence(Seq::from(seq))
            .timestamp(ts)
            .ssrc(0x0E05_384E)
            .marked(marker)
            .payload(payload)
            .build()
            .unwrap()
    }

    /// A quick timeout, and silence suppression so that every packet out
    /// is one the test asked for.
    fn short_config() -> SessionConfig {
        SessionConfig {
            inactivity_timeout: Duration::from_millis(300),
            send_silence: false,
            ..SessionConfig::default()
        }
    }

    async fn start(remote: SocketAddr, config: SessionConfig) -> RtpSession {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        RtpSession::start(socket, None, media(remote), config).unwrap()
    }

    /// Collects events until `done` says stop or `limit` passes.
    async fn collect(
        events: &mut MediaEvents,
        limit: Duration,
        mut done: impl FnMut(&[MediaEvent]) -> bool,
    ) -> Vec<MediaEvent> {
        let mut out = Vec::new();
        let deadline = Instant::now() + limit;
        while !done(&out) {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(event)) => out.push(event),
                _ => break,
            }
        }
        out
    }

    /// Sends `frames` 20 ms packets of a 1 kHz PCMU tone.
    async fn send_tone(peer: &UdpSocket, to: SocketAddr, frames: usize) {
        send_tone_from(peer, to, 0, frames).await;
    }

    /// Sends packets `first..first + frames` of that tone's stream.
    async fn send_tone_from(peer: &UdpSocket, to: SocketAddr, first: usize, frames: usize) {
        let mut clock = tokio::time::interval(Duration::from_millis(20));
        for i in first..first + frames {
            clock.tick().await;
            let mut payload = Vec::new();
            Codec::Pcmu.encode_into(&tone(1000.0, i * 160, 160), &mut payload);
            let packet = rtp(0, 1000 + i as u16, 5000 + 160 * i as u32, i == 0, &payload);
            peer.send_to(&packet, to).await.unwrap();
        }
    }

    /// Opus (48 kHz clock) or G.722 in, with a port attached: each frame
    /// holds the tone at 8 kHz and at 16 kHz, and what the port plays goes
    /// back in the same codec at the codec's clock.
    #[tokio::test]
    async fn a_wideband_call_gives_the_port_16_khz_and_sends_its_codec() {
        use crate::media::codec::Encoder;
        for (codec, pt) in [(Codec::G722, 9u8), (Codec::Opus, 111)] {
            let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let negotiated = NegotiatedMedia {
                codec,
                payload_type: pt,
                ..media(peer.local_addr().unwrap())
            };
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let session = RtpSession::start(socket, None, negotiated, short_config()).unwrap();
            let mut port = session.handle.attach().await.unwrap();
            let to = session.handle.local_addr();
            let step = codec.clock_rate() / 50;
            let mut encoder = Encoder::new(codec).unwrap();
            let mut clock = tokio::time::interval(Duration::from_millis(20));
            let (mut narrow, mut wide) = (Vec::new(), Vec::new());
            for i in 0..40u32 {
                clock.tick().await;
                let mut payload = Vec::new();
                encoder.encode_into(&tone(1000.0, i as usize * 160, 160), &mut payload);
                let packet = rtp(pt, i as u16, i * step, i == 0, &payload);
                peer.send_to(&packet, to).await.unwrap();
                while let Ok(event) = port.events.try_recv() {
                    if let PortEvent::Audio { frame, .. } = event {
                        let w = frame.wide.expect("a 16 kHz form");
                        assert_eq!((frame.samples.len(), w.len()), (160, 320));
                        narrow.extend(frame.samples);
                        wide.extend(w);
                    }
                }
            }
            assert!(narrow.len() >= 160 * 20, "{codec:?}: {}", narrow.len());
            assert!(tone_share(&narrow[800..], 1000.0) > 0.8, "{codec:?}");
            // 1 kHz at 16 kHz is 500 Hz on the 8 kHz scale of `tone_share`.
            assert!(tone_share(&wide[1600..], 500.0) > 0.8, "{codec:?}");
            port.commands
                .send(PortCommand::Play(tone(700.0, 0, 800)))
                .await
                .unwrap();
            let mut buf = [0u8; 2048];
            let mut stamps = Vec::new();
            while stamps.len() < 3 {
                let (len, _) =
                    tokio::time::timeout(Duration::from_secs(2), peer.recv_from(&mut buf))
                        .await
                        .unwrap()
                        .unwrap();
                let r = RtpReader::new(&buf[..len]).unwrap();
                if r.payload_type() == pt {
                    stamps.push(r.timestamp());
                }
            }
            assert!(
                stamps
                    .windows(2)
                    .all(|w| w[1].wrapping_sub(w[0]) % step == 0),
                "{codec:?}: {stamps:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_tone_in_comes_out_as_frames_of_that_tone() {
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut session = start(peer.local_addr().unwrap(), short_config()).await;
        let to = session.handle.local_addr();
        let sender = tokio::spawn(async move { send_tone(&peer, to, 40).await });
        let events = collect(&mut session.events, Duration::from_secs(3), |e| {
            e.iter()
                .filter(|e| matches!(e, MediaEvent::Audio(_)))
                .count()
                >= 30
        })
        .await;
        sender.await.unwrap();
        let frames: Vec<&AudioFrame> = events
            .iter()
            .filter_map(|e| match e {
                MediaEvent::Audio(f) => Some(f),
                _ => None,
            })
            .collect();
        assert!(frames.len() >= 30, "{} frames", frames.len());
        assert!(
            frames
                .iter()
                .all(|f| f.samples.len() == 160 && !f.concealed)
        );
        let samples: Vec<i16> = frames
            .iter()
            .flat_map(|f| f.samples.iter().copied())
            .collect();
        let at_1k = tone_share(&samples, 1000.0);
        let at_500 = tone_share(&samples, 500.0);
        assert!(at_1k > 0.9, "1 kHz share {at_1k}");
        assert!(at_500 < 0.01, "500 Hz share {at_500}");
        assert!(events.iter().any(|e| matches!(e, MediaEvent::Latched(_))));
        let stats = session.handle.stats();
        drop(session.handle);
        let final_stats = session.task.await.unwrap();
        assert!(final_stats.packets_in >= 30, "{final_stats:?}");
        assert_eq!(final_stats.lost, 0);
        assert!(final_stats.packets_in >= stats.packets_in);
    }

    #[tokio::test]
    async fn rfc4733_events_become_one_digit_per_press() {
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut session = start(peer.local_addr().unwrap(), short_config()).await;
        let to = session.handle.local_addr();
        // SIPp's dtmf_2833_1 then _2 trains: updates, then the end three times
        // with the same sequence number.
        let mut seq = 7984u16;
        for (event, ts) in [(1u8, 13_280u32), (2, 23_200)] {
            for i in 0..4u16 {
                let payload = TelephoneEvent {
                    event,
                    end: false,
                    volume: 10,
                    duration: i * 320,
                }
                .to_bytes();
                peer.send_to(&rtp(101, seq, ts, i == 0, &payload), to)
                    .await
                    .unwrap();
                seq += 1;
            }
            let end = TelephoneEvent {
                event,
                end: true,
                volume: 10,
                duration: 1280,
            }
            .to_bytes();
            for _ in 0..3 {
                peer.send_to(&rtp(101, seq, ts, false, &end), to)
                    .await
                    .unwrap();
            }
            seq += 1;
        }
        let events = collect(&mut session.events, Duration::from_secs(2), |e| {
            e.iter()
                .filter(|e| matches!(e, MediaEvent::Digit(_)))
                .count()
                >= 2
        })
        .await;
        // Let any stray duplicate show up before judging.
        let more = collect(&mut session.events, Duration::from_millis(200), |_| false).await;
        let digits: String = events
            .iter()
            .chain(&more)
            .filter_map(|e| match e {
                MediaEvent::Digit(d) => Some(d.as_char()),
                _ => None,
            })
            .collect();
        assert_eq!(digits, "12");
        // Events are not audio: no frames, and their sequence numbers are not loss.
        assert!(
            !events
                .iter()
                .chain(&more)
                .any(|e| matches!(e, MediaEvent::Audio(_)))
        );
        drop(session.handle);
        assert_eq!(session.task.await.unwrap().lost, 0);
    }

    #[tokio::test]
    async fn echo_goes_back_to_the_latched_source_paced_and_numbered() {
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // SDP names a different port on the same host: symmetric RTP must win.
        let mut session = start("127.0.0.1:9".parse().unwrap(), short_config()).await;
        let to = session.handle.local_addr();
        let peer = Arc::new(peer);
        let sender = {
            let peer = Arc::clone(&peer);
            tokio::spawn(async move { send_tone(&peer, to, 40).await })
        };
        let handle = session.handle.clone();
        let echo = tokio::spawn(async move {
            let mut played = 0;
            while let Ok(Some(event)) =
                tokio::time::timeout(Duration::from_millis(400), session.events.recv()).await
            {
                if let MediaEvent::Audio(frame) = event {
                    handle.play(frame.samples).await.unwrap();
                    played += 1;
                }
            }
            played
        });
        let mut received = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(Ok((len, from))) =
            tokio::time::timeout(Duration::from_millis(500), peer.recv_from(&mut buf)).await
        {
            assert_eq!(from, to);
            received.push((Instant::now(), buf[..len].to_vec()));
        }
        sender.await.unwrap();
        let played = echo.await.unwrap();
        assert!(played >= 30, "echoed {played} frames");
        assert_eq!(received.len(), played, "every echoed frame came back");
        let headers: Vec<_> = received
            .iter()
            .map(|(_, b)| {
                let r = RtpReader::new(b).unwrap();
                let seq: u16 = r.sequence_number().into();
                (
                    r.mark(),
                    r.payload_type(),
                    seq,
                    r.timestamp(),
                    r.ssrc(),
                    r.payload().to_vec(),
                )
            })
            .collect();
        assert!(headers[0].0, "first packet of the talkspurt is marked");
        for pair in headers.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert_eq!(b.2, a.2.wrapping_add(1), "sequence");
            // A frame on within a talkspurt; a new one may start early, at
            // any sampling instant after the last frame.
            let step = b.3.wrapping_sub(a.3);
            assert!(
                step == 160 || (b.0 && (160..i32::MAX as u32).contains(&step)),
                "timestamp step {step}"
            );
            assert_eq!(b.4, a.4, "one SSRC");
            assert_eq!(b.1, 0);
        }
        // Paced: 20 ms apart on average, not a burst.
        let span = received[received.len() - 1].0 - received[0].0;
        let expected = Duration::from_millis(20) * (received.len() as u32 - 1);
        assert!(
            span + Duration::from_millis(60) >= expected,
            "span {span:?} for {}",
            received.len()
        );
        let mut pcm = Vec::new();
        for h in &headers {
            Codec::Pcmu.decode_into(&h.5, &mut pcm);
        }
        assert!(tone_share(&pcm, 1000.0) > 0.9);
    }

    #[tokio::test]
    async fn loopback_plays_the_caller_back_inside_the_session() {
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut session = start(peer.local_addr().unwrap(), short_config()).await;
        session
            .handle
            .route_audio(AudioRoute::Loopback)
            .await
            .unwrap();
        let to = session.handle.local_addr();
        let peer = Arc::new(peer);
        let sender = {
            let peer = Arc::clone(&peer);
            tokio::spawn(async move { send_tone(&peer, to, 40).await })
        };
        let mut received = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(Ok((len, _))) =
            tokio::time::timeout(Duration::from_millis(500), peer.recv_from(&mut buf)).await
        {
            received.push(buf[..len].to_vec());
        }
        sender.await.unwrap();
        assert!(received.len() >= 30, "{} packets back", received.len());
        let mut pcm = Vec::new();
        let mut sequences = Vec::new();
        for packet in &received {
            let r = RtpReader::new(packet).unwrap();
            sequences.push(u16::from(r.sequence_number()));
            Codec::Pcmu.decode_into(r.payload(), &mut pcm);
        }
        assert!(
            sequences.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
            "{sequences:?}"
        );
        assert!(tone_share(&pcm, 1000.0) > 0.9);
        // The frames went back, not out to the call.
        let events = collect(&mut session.events, Duration::from_millis(100), |_| false).await;
        assert!(!events.iter().any(|e| matches!(e, MediaEvent::Audio(_))));
        assert!(events.iter().any(|e| matches!(e, MediaEvent::Latched(_))));
        // On hold nothing goes back, and nothing is kept for the resume.
        let mut held = media(peer.local_addr().unwrap());
        held.direction = Direction::RecvOnly;
        session.handle.update(held).await.unwrap();
        send_tone_from(&peer, to, 40, 10).await;
        let on_hold =
            tokio::time::timeout(Duration::from_millis(300), peer.recv_from(&mut buf)).await;
        assert!(on_hold.is_err(), "echoed on hold");
        session
            .handle
            .update(media(peer.local_addr().unwrap()))
            .await
            .unwrap();
        let resumed =
            tokio::time::timeout(Duration::from_millis(300), peer.recv_from(&mut buf)).await;
        assert!(resumed.is_err(), "stale echo after the hold");
        // Back to events: the caller's audio reaches the call again.
        session
            .handle
            .route_audio(AudioRoute::Events)
            .await
            .unwrap();
        let sender = tokio::spawn(async move { send_tone_from(&peer, to, 50, 20).await });
        let events = collect(&mut session.events, Duration::from_secs(2), |e| {
            e.iter().any(|e| matches!(e, MediaEvent::Audio(_)))
        })
        .await;
        sender.await.unwrap();
        assert!(events.iter().any(|e| matches!(e, MediaEvent::Audio(_))));
    }

    #[tokio::test]
    async fn other_hosts_cannot_latch_and_silence_times_out() {
        let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // The signalled host is 127.0.0.2 (all of 127/8 is loopback on Linux).
        let signalled = UdpSocket::bind("127.0.0.2:0").await.unwrap();
        let mut session = start(signalled.local_addr().unwrap(), short_config()).await;
        let to = session.handle.local_addr();
        send_tone(&stranger, to, 10).await;
        let events = collect(&mut session.events, Duration::from_secs(2), |e| {
            e.contains(&MediaEvent::Timeout)
        })
        .await;
        assert!(events.contains(&MediaEvent::Timeout));
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, MediaEvent::Audio(_) | MediaEvent::Latched(_)))
        );
        assert_eq!(session.handle.stats().packets_in, 0);
        // The signalled host latches, from whatever port.
        send_tone(&signalled, to, 10).await;
        let events = collect(&mut session.events, Duration::from_secs(2), |e| {
            e.iter().any(|e| matches!(e, MediaEvent::Audio(_)))
        })
        .await;
        assert!(events.contains(&MediaEvent::Latched(signalled.local_addr().unwrap())));
    }

    #[tokio::test]
    async fn clear_stops_playout_and_reports_drained() {
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut session = start(peer.local_addr().unwrap(), short_config()).await;
        session.handle.play(tone(440.0, 0, 8000 * 5)).await.unwrap();
        let mut buf = [0u8; 2048];
        for _ in 0..3 {
            peer.recv_from(&mut buf).await.unwrap();
        }
        session.handle.clear().await.unwrap();
        let events = collect(&mut session.events, Duration::from_secs(1), |e| {
            e.contains(&MediaEvent::PlayoutDrained)
        })
        .await;
        assert!(events.contains(&MediaEvent::PlayoutDrained));
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, MediaEvent::PlayoutStarted(_)))
                .count(),
            1,
            "{events:?}"
        );
        // Drain what was in flight, then nothing more arrives.
        while tokio::time::timeout(Duration::from_millis(60), peer.recv_from(&mut buf))
            .await
            .is_ok()
        {}
        let quiet =
            tokio::time::timeout(Duration::from_millis(200), peer.recv_from(&mut buf)).await;
        assert!(quiet.is_err(), "packets kept coming after clear");
        assert!(session.handle.stats().packets_out < 50);
    }

    #[tokio::test]
    async fn an_attached_port_gets_the_audio_and_the_playout_of_what_it_plays() {
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut session = start(peer.local_addr().unwrap(), short_config()).await;
        let mut port = session.handle.attach().await.unwrap();
        let to = session.handle.local_addr();
        let sender = tokio::spawn(async move {
            send_tone(&peer, to, 20).await;
            peer
        });
        let mut frames = 0;
        while frames < 5 {
            match tokio::time::timeout(Duration::from_secs(2), port.events.recv()).await {
                Ok(Some(PortEvent::Audio { frame, playout, .. })) => {
                    assert_eq!(frame.samples.len(), FRAME_SAMPLES);
                    assert_eq!(playout, PortPlayout::default());
                    frames += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        let peer = sender.await.unwrap();
        // The call's events carry no audio once the port is attached.
        let events = collect(&mut session.events, Duration::from_millis(100), |_| false).await;
        assert!(
            !events.iter().any(|e| matches!(e, MediaEvent::Audio(_))),
            "{events:?}"
        );
        // Ten frames played: a run starts at once, then drains with all of
        // it sent; a clear mid-run drains at once.
        for _ in 0..10 {
            port.commands
                .send(PortCommand::Play(tone(440.0, 0, FRAME_SAMPLES)))
                .await
                .unwrap();
        }
        let mut buf = [0u8; 2048];
        let mut runs = Vec::new();
        while runs.len() < 2 {
            match tokio::time::timeout(Duration::from_secs(2), port.events.recv()).await {
                Ok(Some(PortEvent::Started { playout, .. })) => runs.push(("started", playout)),
                Ok(Some(PortEvent::Drained { playout, .. })) => runs.push(("drained", playout)),
                Ok(Some(PortEvent::Audio { .. })) => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(runs[0].0, "started");
        assert!(runs[0].1.received >= 160, "{runs:?}");
        assert_eq!(
            runs[1],
            (
                "drained",
                PortPlayout {
                    received: 1600,
                    queued: 0
                }
            )
        );
        for _ in 0..10 {
            peer.recv_from(&mut buf).await.unwrap();
        }
        port.commands
            .send(PortCommand::Play(tone(440.0, 0, 8000)))
            .await
            .unwrap();
        port.commands.send(PortCommand::Clear).await.unwrap();
        let drained = loop {
            match tokio::time::timeout(Duration::from_secs(2), port.events.recv()).await {
                Ok(Some(PortEvent::Drained { playout, .. })) => break playout,
                Ok(Some(_)) => {}
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            drained,
            PortPlayout {
                received: 9600,
                queued: 0
            }
        );
    }

    #[tokio::test]
    async fn hold_stops_sending_and_pauses_the_timeout() {
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut session = start(peer.local_addr().unwrap(), short_config()).await;
        let mut held = media(peer.local_addr().unwrap());
        held.direction = Direction::Inactive;
        session.handle.update(held).await.unwrap();
        session.handle.play(tone(440.0, 0, 1600)).await.unwrap();
        let mut buf = [0u8; 2048];
        let nothing =
            tokio::time::timeout(Duration::from_millis(500), peer.recv_from(&mut buf)).await;
        assert!(nothing.is_err(), "nothing is sent on hold");
        let events = collect(&mut session.events, Duration::from_millis(100), |_| false).await;
        assert!(!events.contains(&MediaEvent::Timeout), "no timeout on hold");
        // Resume: the queued audio goes out.
        session
            .handle
            .update(media(peer.local_addr().unwrap()))
            .await
            .unwrap();
        let resumed =
            tokio::time::timeout(Duration::from_millis(500), peer.recv_from(&mut buf)).await;
        assert!(resumed.is_ok());
    }

    #[tokio::test]
    async fn silence_fill_flows_until_hold_and_audio_joins_the_stream() {
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let config = SessionConfig {
            send_silence: true,
            ..short_config()
        };
        let session = start(peer.local_addr().unwrap(), config).await;
        let mut buf = [0u8; 2048];
        // Nothing until the far end is heard.
        let early =
            tokio::time::timeout(Duration::from_millis(200), peer.recv_from(&mut buf)).await;
        assert!(early.is_err(), "silence before the far end sent RTP");
        let to = session.handle.local_addr();
        peer.send_to(&rtp(0, 1, 160, true, &[0xFF; 160]), to)
            .await
            .unwrap();
        let mut packets = Vec::new();
        let mut next = async |packets: &mut Vec<(u16, u32, bool, Vec<u8>)>| {
            let (len, _) = peer.recv_from(&mut buf).await.unwrap();
            let r = RtpReader::new(&buf[..len]).unwrap();
            packets.push((
                r.sequence_number().into(),
                r.timestamp(),
                r.mark(),
                r.payload().to_vec(),
            ));
        };
        for _ in 0..10 {
            next(&mut packets).await;
        }
        session.handle.play(tone(1000.0, 0, 800)).await.unwrap();
        for _ in 0..15 {
            next(&mut packets).await;
        }
        let silent =
            |p: &(u16, u32, bool, Vec<u8>)| p.3.iter().all(|b| *b == Codec::Pcmu.silence());
        assert!(packets[..10].iter().all(silent), "silence before the audio");
        let audible: Vec<usize> = (0..packets.len())
            .filter(|i| !silent(&packets[*i]))
            .collect();
        assert_eq!(audible.len(), 5, "the five frames of tone");
        assert!(audible.windows(2).all(|w| w[1] == w[0] + 1), "{audible:?}");
        assert!(silent(packets.last().unwrap()), "silence again after it");
        // One stream: contiguous numbers and time, marked only at its start.
        assert!(packets.windows(2).all(|w| {
            w[1].0 == w[0].0.wrapping_add(1) && w[1].1 == w[0].1.wrapping_add(160) && !w[1].2
        }));
        // On hold nothing is sent, silence included.
        let mut held = media(peer.local_addr().unwrap());
        held.direction = Direction::Inactive;
        session.handle.update(held).await.unwrap();
        while tokio::time::timeout(Duration::from_millis(60), peer.recv_from(&mut buf))
            .await
            .is_ok()
        {}
        let quiet =
            tokio::time::timeout(Duration::from_millis(200), peer.recv_from(&mut buf)).await;
        assert!(quiet.is_err(), "silence was sent on hold");
    }
}
