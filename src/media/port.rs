//! The audio port: a consumer and producer of audio (the voice agent)
//! attached to a running session, so that its frames go between the RTP
//! session and it without passing through the task that owns the call.
//!
//! Owns: the two channels and the messages on them. The session's pacer is
//! the only clock: the consumer gets each caller frame as the pacer's slot
//! decodes it, with where the producer's audio stands at that instant
//! ([`PortPlayout`]), and hands its own audio over as soon as it has it;
//! the pacer plays it out one slot at a time and says when a run of it
//! starts and ends on the wire.
//!
//! Must not: know who is attached (`media` imports no agent), or decide
//! anything about the call. The port carries no control of the call (no
//! digits in, no timeout): those stay [`super::MediaEvent`]s for the call.

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{AudioFrame, Digit};

/// Port events buffered towards the consumer (5 s of caller frames).
pub(super) const PORT_EVENTS: usize = 250;
/// Port commands buffered from the producer.
pub(super) const PORT_COMMANDS: usize = 64;

/// Where the producer's audio stands, in samples (8 kHz) since it was
/// attached: how much it handed over with [`PortCommand::Play`], and how
/// much of that still waits in the queue. Everything else went out on the
/// wire or was cleared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortPlayout {
    pub received: u64,
    pub queued: u64,
}

impl PortPlayout {
    /// Samples that left the queue (sent, or cleared).
    pub fn done(&self) -> u64 {
        self.received.saturating_sub(self.queued)
    }
}

/// What the session tells the attached consumer, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortEvent {
    /// A 20 ms frame of the caller's audio, taken from the jitter buffer
    /// at `at`.
    Audio {
        frame: AudioFrame,
        at: Instant,
        playout: PortPlayout,
    },
    /// The first packet of a run of the producer's audio left at `at`.
    Started { at: Instant, playout: PortPlayout },
    /// The queue ran empty at `at` (played out, or cleared).
    Drained { at: Instant, playout: PortPlayout },
}

/// What the attached producer asks of the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortCommand {
    /// Queue 8 kHz mono PCM to play after what is queued.
    Play(Vec<i16>),
    /// Drop everything queued (barge-in).
    Clear,
    /// Send a digit as an RFC 4733 event.
    Digit(Digit),
}

/// The attached side's ends: the session ends its side when it ends, and
/// detaches when `commands` is dropped.
#[derive(Debug)]
pub struct AudioPort {
    pub events: mpsc::Receiver<PortEvent>,
    pub commands: mpsc::Sender<PortCommand>,
}

/// The session's ends of a port.
#[derive(Debug)]
pub(super) struct Attached {
    pub events: mpsc::Sender<PortEvent>,
    pub commands: mpsc::Receiver<PortCommand>,
    /// Samples received with [`PortCommand::Play`].
    pub received: u64,
}

/// A connected pair of ends.
pub(super) fn pair() -> (AudioPort, Attached) {
    let (event_tx, event_rx) = mpsc::channel(PORT_EVENTS);
    let (command_tx, command_rx) = mpsc::channel(PORT_COMMANDS);
    (
        AudioPort {
            events: event_rx,
            commands: command_tx,
        },
        Attached {
            events: event_tx,
            commands: command_rx,
            received: 0,
        },
    )
}
