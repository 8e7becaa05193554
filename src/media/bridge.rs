//! The media half of a back-to-back call: two running RTP sessions joined
//! so that each one's decoded audio plays out on the other (a warm
//! transfer's caller and the person it was handed to).
//!
//! Owns: the copying task between two [`AudioPort`]s. Each session decodes
//! its own codec to 8 kHz PCM and encodes its own on the way out, so legs
//! that negotiated different codecs are transcoded by construction; each
//! session's pacer stays the only clock of its leg. The two clocks drift
//! apart (two carriers, two sound cards): a leg whose queue holds more
//! than [`MAX_QUEUED`] samples of the other's audio is cleared and starts
//! again from the newest frame, so the delay stays bounded rather than
//! growing for the length of the call.
//!
//! Must not: touch SIP, relay digits (they are control events the call
//! task reads and sends on with [`MediaHandle::send_digit`]), or decide
//! when the bridge ends: it ends when either session does, or when the
//! [`Bridge`] is dropped.

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{AudioPort, MediaHandle, PortCommand, PortEvent, SessionClosed};

/// Most of one leg's audio queued on the other before the queue is
/// cleared: 120 ms (six frames) over what the pacer holds anyway.
pub const MAX_QUEUED: u64 = 960;

/// A running bridge; dropping it stops the copying (each session goes
/// back to reporting its audio as events).
#[derive(Debug)]
pub struct Bridge {
    task: JoinHandle<()>,
}

impl Bridge {
    /// Joins `a` and `b`: from the next frame on, each one's audio plays on
    /// the other. Replaces whatever port either had attached.
    pub async fn start(a: &MediaHandle, b: &MediaHandle) -> Result<Self, SessionClosed> {
        let port_a = a.attach().await?;
        let port_b = b.attach().await?;
        Ok(Self {
            task: tokio::spawn(copy(port_a, port_b)),
        })
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies audio both ways until either session ends.
async fn copy(mut a: AudioPort, mut b: AudioPort) {
    loop {
        let go_on = tokio::select! {
            event = a.events.recv() => match event {
                Some(event) => forward(event, &a.commands, &b.commands).await,
                None => false,
            },
            event = b.events.recv() => match event {
                Some(event) => forward(event, &b.commands, &a.commands).await,
                None => false,
            },
        };
        if !go_on {
            return;
        }
    }
}

/// Plays a frame of the leg `from` on the leg `to`; `false` once either is
/// gone. The event's playout is the `from` leg's own queue: what the other
/// direction queued there, cleared when too far behind.
async fn forward(
    event: PortEvent,
    from: &mpsc::Sender<PortCommand>,
    to: &mpsc::Sender<PortCommand>,
) -> bool {
    let PortEvent::Audio { frame, playout, .. } = event else {
        return true;
    };
    if playout.queued > MAX_QUEUED && from.send(PortCommand::Clear).await.is_err() {
        return false;
    }
    to.send(PortCommand::Play(frame.samples)).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{AudioFrame, PortPlayout};
    use tokio::time::Instant;

    fn audio(sample: i16, queued: u64) -> PortEvent {
        PortEvent::Audio {
            frame: AudioFrame {
                samples: vec![sample; 160],
                concealed: false,
                wide: None,
            },
            at: Instant::now(),
            playout: PortPlayout {
                received: 0,
                queued,
            },
        }
    }

    #[tokio::test]
    async fn frames_go_to_the_other_leg_and_a_lagging_leg_is_cleared() {
        let (from_tx, mut from_rx) = mpsc::channel(4);
        let (to_tx, mut to_rx) = mpsc::channel(4);
        assert!(forward(audio(7, 0), &from_tx, &to_tx).await);
        assert_eq!(to_rx.try_recv(), Ok(PortCommand::Play(vec![7; 160])));
        assert!(from_rx.try_recv().is_err(), "nothing to clear");
        assert!(forward(audio(9, MAX_QUEUED + 1), &from_tx, &to_tx).await);
        assert_eq!(from_rx.try_recv(), Ok(PortCommand::Clear));
        assert_eq!(to_rx.try_recv(), Ok(PortCommand::Play(vec![9; 160])));
        drop(to_rx);
        assert!(
            !forward(audio(1, 0), &from_tx, &to_tx).await,
            "the other leg is gone"
        );
    }
}
