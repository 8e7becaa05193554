//! The media tap: copies of a call's two audio tracks for consumers off the
//! media path (the recorder, listening forks).
//!
//! Owns: the tracks' shape ([`TapFrame`]: 20 ms of 8 kHz PCM, the track,
//! the instant it passed), the bounded channel per consumer, and the count
//! of frames dropped because a consumer was slow (the metric
//! `agentline_media_tap_dropped_frames_total{consumer}` and
//! [`TapReceiver::dropped`]).
//!
//! - Inbound: the caller's audio as the session hands it on, after the
//!   jitter buffer and decoding (concealed frames included, as silence).
//!   Nothing while the caller sends nothing.
//! - Outbound: exactly what the pacer sends, one frame per slot that sends
//!   or could send (silence fill and silence-suppressed slots are frames of
//!   zeros, a DTMF event's slot too), so a consumer sees the agent's
//!   timing, pauses included. Nothing while on hold.
//!
//! Must not: block or await. The session task calls [`Taps::push`] with
//! `try_send`: a full channel drops the frame and counts it, so a stuck
//! consumer never delays a packet.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::metrics::MEDIA_TAP_DROPPED_TOTAL;

/// Frames buffered per consumer: 2 seconds of both tracks.
pub const DEFAULT_CAPACITY: usize = 200;

/// Which side of the call a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Track {
    /// The caller (the far end).
    Inbound,
    /// The agent (what we send).
    Outbound,
}

/// One 20 ms frame of one track.
#[derive(Debug, Clone)]
pub struct TapFrame {
    pub track: Track,
    /// 160 samples, 8 kHz mono; shared by every consumer.
    pub samples: Arc<[i16]>,
    /// When the session handed it on (inbound) or sent it (outbound).
    pub at: Instant,
}

/// The session's end of one consumer.
#[derive(Debug)]
pub(crate) struct TapSender {
    frames: mpsc::Sender<TapFrame>,
    dropped: Arc<AtomicU64>,
    consumer: &'static str,
}

/// What a consumer reads.
#[derive(Debug)]
pub struct TapReceiver {
    frames: mpsc::Receiver<TapFrame>,
    dropped: Arc<AtomicU64>,
}

impl TapReceiver {
    /// The next frame; `None` once the session has ended.
    pub async fn recv(&mut self) -> Option<TapFrame> {
        self.frames.recv().await
    }

    /// A frame already queued, without waiting.
    pub fn try_recv(&mut self) -> Result<TapFrame, mpsc::error::TryRecvError> {
        self.frames.try_recv()
    }

    /// Frames dropped so far because this consumer was not reading.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// A counter that keeps counting after the receiver moved on.
    pub fn dropped_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.dropped)
    }
}

/// A consumer's two ends; `consumer` labels the drop metric.
pub(crate) fn pair(capacity: usize, consumer: &'static str) -> (TapSender, TapReceiver) {
    let (frames, rx) = mpsc::channel(capacity.max(1));
    let dropped = Arc::new(AtomicU64::new(0));
    (
        TapSender {
            frames,
            dropped: Arc::clone(&dropped),
            consumer,
        },
        TapReceiver {
            frames: rx,
            dropped,
        },
    )
}

/// Every consumer of a session. Empty costs one branch per frame.
#[derive(Debug, Default)]
pub(crate) struct Taps {
    senders: Vec<TapSender>,
}

/// A frame of zeros, shared (silent slots are the common case).
fn silence() -> Arc<[i16]> {
    Arc::from(vec![0i16; super::FRAME_SAMPLES])
}

impl Taps {
    pub fn add(&mut self, sender: TapSender) {
        self.senders.push(sender);
    }

    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    /// Hands `samples` (empty: a silent slot) to every consumer without
    /// waiting; a consumer gone is forgotten, a full one loses the frame.
    pub fn push(&mut self, track: Track, samples: &[i16]) {
        if self.senders.is_empty() {
            return;
        }
        let samples: Arc<[i16]> = if samples.is_empty() || samples.iter().all(|&s| s == 0) {
            silence()
        } else {
            Arc::from(samples)
        };
        let frame = TapFrame {
            track,
            samples,
            at: Instant::now(),
        };
        self.senders
            .retain(|sender| match sender.frames.try_send(frame.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    sender.dropped.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(MEDIA_TAP_DROPPED_TOTAL, "consumer" => sender.consumer)
                        .increment(1);
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_consumer_loses_frames_and_counts_them_without_waiting() {
        let mut taps = Taps::default();
        let (tx, mut rx) = pair(2, "test");
        taps.add(tx);
        for n in 0..5 {
            taps.push(Track::Inbound, &[n; 160]);
        }
        assert_eq!(rx.dropped(), 3);
        let first = rx.recv().await.unwrap();
        assert_eq!(first.track, Track::Inbound);
        assert_eq!(first.samples[0], 0);
        assert_eq!(rx.recv().await.unwrap().samples[0], 1);
        drop(rx);
        taps.push(Track::Outbound, &[]);
        assert!(taps.is_empty(), "a consumer gone is forgotten");
    }
}
