//! A copy of a call's audio taken on the side of the media path, for a
//! recording writer (and later listening forks).
//!
//! The session hands each 20 ms frame it plays out (the caller) and each
//! frame it sends (the agent) to a [`Tap`] with its position on the media
//! clock (samples since the session started), so the two sides line up in
//! time whatever their arrival order. The tap never waits: a bounded
//! channel, and a frame that does not fit is dropped and counted.
//!
//! Must not: block, allocate more than one frame per call, or decide what
//! is recorded (pauses come as [`TapFrame::Pause`] from the call).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

/// Frames buffered towards the writer: 10 s of both sides at 20 ms.
pub const TAP_FRAMES: usize = 1000;

/// Which side of the call a frame is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// What the far end sent us (the left channel).
    Caller,
    /// What we sent (the right channel).
    Agent,
}

/// One item for the writer.
#[derive(Debug, Clone, PartialEq)]
pub enum TapFrame {
    /// 8 kHz PCM of one side, starting `at` samples into the session.
    Audio {
        side: Side,
        at: u64,
        samples: Vec<i16>,
    },
    /// From sample `at` on, nothing is recorded (silence) until
    /// [`TapFrame::Resume`].
    Pause {
        at: u64,
    },
    Resume {
        at: u64,
    },
}

/// The sending end, held by the media session.
#[derive(Debug, Clone)]
pub struct Tap {
    tx: mpsc::Sender<TapFrame>,
    dropped: Arc<AtomicU64>,
}

impl Tap {
    /// A tap and the receiving end for the writer task.
    pub fn new(capacity: usize) -> (Tap, mpsc::Receiver<TapFrame>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (
            Tap {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            rx,
        )
    }

    /// Hands a frame to the writer, or drops and counts it if the writer
    /// is behind (or gone): the media path never waits for a disk.
    pub fn push(&self, frame: TapFrame) {
        if self.tx.try_send(frame).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Frames dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_channel_drops_and_counts_without_waiting() {
        let (tap, mut rx) = Tap::new(2);
        for at in 0..5 {
            tap.push(TapFrame::Audio {
                side: Side::Caller,
                at: at * 160,
                samples: vec![1; 160],
            });
        }
        assert_eq!(tap.dropped(), 3);
        assert!(matches!(rx.try_recv(), Ok(TapFrame::Audio { at: 0, .. })));
        assert!(matches!(rx.try_recv(), Ok(TapFrame::Audio { at: 160, .. })));
        assert!(rx.try_recv().is_err());
        drop(rx);
        tap.push(TapFrame::Pause { at: 0 });
        assert_eq!(tap.dropped(), 4);
    }
}
