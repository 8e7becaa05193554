//! What the call sees of a running RTP session: the [`MediaHandle`] it
//! controls the session with, the [`MediaEvents`] it reads, and the shapes
//! on them (frames, events, counters).
//!
//! Must not: touch the socket or the media cores; the session task in
//! [`super::session`] does, and ends when every handle is dropped.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::dtmf::Digit;
use super::port::{self, Attached, AudioPort};
use super::sdp::NegotiatedMedia;

/// The session task has ended; the call should treat media as gone.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
#[error("the RTP session has ended")]
pub struct SessionClosed;

/// 20 ms of decoded audio: 160 samples, 8 kHz, mono.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioFrame {
    pub samples: Vec<i16>,
    /// Part of the frame stands in for lost packets (silence).
    pub concealed: bool,
    /// The same 20 ms at 16 kHz (320 samples), decoded straight from a
    /// wideband codec (G.722, Opus) for an attached port (the voice
    /// agent's recognizer); `None` on G.711 and for every other consumer.
    pub wide: Option<Vec<i16>>,
}

/// What the session reports to the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    Audio(AudioFrame),
    /// A DTMF key press (RFC 4733), once per press.
    Digit(Digit),
    /// We now send to and accept from this address.
    Latched(SocketAddr),
    /// Everything queued with [`MediaHandle::play`] has been sent.
    PlayoutDrained,
    /// The first packet after an idle spell left at this instant (the agent
    /// layer measures its own latency to the wire with it).
    PlayoutStarted(Instant),
    /// No RTP arrived within the inactivity timeout.
    Timeout,
}

/// Counters of one session, published about once a second.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MediaStats {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub lost: u64,
    pub late: u64,
    pub duplicates: u64,
    pub concealed: u64,
    /// RFC 3550 A.8 interarrival jitter.
    pub jitter: Duration,
    pub latched: Option<SocketAddr>,
}

/// Where the caller's decoded audio goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AudioRoute {
    /// Out as [`MediaEvent::Audio`], for the call to hand on (the default).
    #[default]
    Events,
    /// Played straight back to the caller, after anything queued: the
    /// `echo` agent. The frames never leave the session task, as an echo
    /// application does in a media server's own thread: a hop through the
    /// call task and back was two task wake-ups and two channel passes per
    /// frame, a fifth of the daemon's CPU at 1,000 echo calls. Nothing is
    /// saved up while on hold.
    Loopback,
}

#[derive(Debug)]
pub(super) enum Command {
    Play(Vec<i16>),
    Clear,
    Digit(Digit),
    Update(NegotiatedMedia),
    Route(AudioRoute),
    Attach(Attached),
    Tap(super::tap::TapSender),
}

/// Control of a running session. Cloning is cheap; the session ends when
/// every handle is dropped.
#[derive(Debug, Clone)]
pub struct MediaHandle {
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) local: SocketAddr,
    pub(super) stats: watch::Receiver<MediaStats>,
}

impl MediaHandle {
    /// The address our RTP socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Queues 8 kHz mono PCM to be played, after what is already queued.
    pub async fn play(&self, samples: Vec<i16>) -> Result<(), SessionClosed> {
        self.send(Command::Play(samples)).await
    }

    /// Drops everything queued for playing (barge-in).
    pub async fn clear(&self) -> Result<(), SessionClosed> {
        self.send(Command::Clear).await
    }

    /// Sends a digit as an RFC 4733 event, if the far end negotiated one.
    pub async fn send_digit(&self, digit: Digit) -> Result<(), SessionClosed> {
        self.send(Command::Digit(digit)).await
    }

    /// Applies a new negotiation (re-INVITE, hold, resume).
    pub async fn update(&self, media: NegotiatedMedia) -> Result<(), SessionClosed> {
        self.send(Command::Update(media)).await
    }

    /// Sends the caller's audio, from the next frame on, where `route`
    /// says. Frames already reported as events stay reported.
    pub async fn route_audio(&self, route: AudioRoute) -> Result<(), SessionClosed> {
        self.send(Command::Route(route)).await
    }

    /// Attaches an audio consumer and producer (see [`super::port`]): from
    /// the next frame on, the caller's audio and the playout of what it
    /// plays go to its [`AudioPort`] instead of [`MediaEvents`]. Attaching
    /// again replaces the port.
    pub async fn attach(&self) -> Result<AudioPort, SessionClosed> {
        let (port, attached) = port::pair();
        self.send(Command::Attach(attached)).await?;
        Ok(port)
    }

    /// A copy of both tracks from the next frame on (see [`super::tap`]),
    /// buffered `capacity` frames; `consumer` labels the drop metric.
    pub async fn tap(
        &self,
        capacity: usize,
        consumer: &'static str,
    ) -> Result<super::tap::TapReceiver, SessionClosed> {
        let (sender, receiver) = super::tap::pair(capacity, consumer);
        self.send(Command::Tap(sender)).await?;
        Ok(receiver)
    }

    /// The latest published counters.
    pub fn stats(&self) -> MediaStats {
        *self.stats.borrow()
    }

    async fn send(&self, command: Command) -> Result<(), SessionClosed> {
        self.commands.send(command).await.map_err(|_| SessionClosed)
    }
}

/// The receiving end of a session's events.
#[derive(Debug)]
pub struct MediaEvents {
    pub(super) control: mpsc::Receiver<MediaEvent>,
    pub(super) audio: mpsc::Receiver<MediaEvent>,
}

impl MediaEvents {
    /// The next event; control events (digits, timeout) come before queued
    /// audio. `None` once the session has ended.
    pub async fn recv(&mut self) -> Option<MediaEvent> {
        tokio::select! {
            biased;
            Some(event) = self.control.recv() => Some(event),
            Some(event) = self.audio.recv() => Some(event),
            else => None,
        }
    }
}
