//! Media: RTP in and out for one call.
//!
//! Owns: G.711 codecs ([`g711`]), the per-stream G.711, G.722 and Opus
//! encoders and decoders ([`codec`]), the adaptive jitter buffer ([`jitter`]),
//! RFC 4733 telephone events ([`dtmf`]), answering-machine detection
//! ([`amd`]), outgoing packetization and pacing ([`pacer`]), sample-rate
//! conversion for the speech engines and vendors ([`resample`]), SDP
//! offer/answer for audio ([`sdp`]), RTP source pinning ([`latch`]), RTP
//! port allocation ([`ports`]), the task that ties them to a UDP socket
//! ([`session`]), its control surface ([`handle`]), the [`port`] an agent
//! attaches to, the copies of both tracks for recorders and forks
//! ([`tap`]), SRTP with SDES keys ([`srtp`]), 16-bit PCM WAV files
//! ([`wav`]), and the [`bridge`] joining two sessions' audio (a warm
//! transfer).
//!
//! Must not: import `call`, `store` or `api`, or decide anything about a
//! call. It reports what arrived (audio, digits, timeouts) and does what it
//! is told. The protocol cores (`g711`, `jitter`, `dtmf`, `amd`, `pacer`, `resample`, `sdp`, `latch`, `wav`) do
//! no IO; only `session`, `ports` and the pacing clock touch tokio.
//!
//! For the call task, a call's media goes:
//! 1. [`bind_rtp`] takes a port from the [`PortAllocator`] and binds it.
//! 2. [`LocalSdp`] answers the offer (or makes ours and reads the answer)
//!    and yields [`NegotiatedMedia`]; an [`SdpError`] means 488.
//! 3. [`RtpSession::start`] runs the session: [`MediaEvents`] brings 20 ms
//!    [`AudioFrame`]s, [`Digit`]s and the timeout; [`MediaHandle`] plays PCM,
//!    clears it on barge-in, sends digits and applies re-INVITEs.
//! 4. [`MediaHandle::attach`] hands the audio to an [`AudioPort`] instead:
//!    the voice agent sits on the session's clock, and the call task keeps
//!    only the control events.
//! 5. Dropping every [`MediaHandle`] ends the session and frees the port.

pub mod amd;
pub mod bridge;
pub mod codec;
mod counters;
pub mod dtmf;
pub mod g711;
pub mod handle;
pub mod jitter;
pub mod latch;
pub mod pacer;
pub mod port;
pub mod ports;
pub mod resample;
pub mod sdp;
pub mod session;
pub mod srtp;
pub mod tap;
pub mod wav;

use std::time::Duration;

pub use dtmf::Digit;
pub use g711::Codec;
pub use handle::{
    AudioFrame, AudioRoute, MediaEvent, MediaEvents, MediaHandle, MediaStats, SessionClosed,
};
pub use latch::LatchPolicy;
pub use port::{AudioPort, PortCommand, PortEvent, PortPlayout};
pub use ports::{MediaError, PortAllocator, PortPermit, bind_rtp};
pub use sdp::{Direction, LocalSdp, NegotiatedMedia, SdpError};
pub use session::{RtpSession, SessionConfig};
pub use srtp::SrtpMode;
pub use tap::{TapFrame, TapReceiver, Track};

/// Sample rate of the PCM inside a session (and the RTP clock rate of
/// G.711, G.722 and their telephone-event; Opus's is 48000, see
/// [`Codec::clock_rate`]).
pub const CLOCK_RATE: u32 = 8000;
/// Samples in one 20 ms frame at 8 kHz.
pub const FRAME_SAMPLES: usize = 160;

/// Moves the first `n` samples of `from` (at most all of them) to the end
/// of `to`, slice by slice: collecting a `VecDeque` drain pushes one sample
/// at a time, which was 6% of the daemon's CPU at 1,000 calls.
pub(crate) fn move_front(from: &mut std::collections::VecDeque<i16>, n: usize, to: &mut Vec<i16>) {
    let n = n.min(from.len());
    let (front, back) = from.as_slices();
    let first = front.len().min(n);
    to.extend_from_slice(&front[..first]);
    to.extend_from_slice(&back[..n - first]);
    from.drain(..n);
}
/// Duration of one frame, the packetization time we send and ask for.
pub const FRAME_DURATION: Duration = Duration::from_millis(20);

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    #[test]
    fn move_front_takes_samples_in_order_across_the_wrap() {
        let mut from = VecDeque::with_capacity(8);
        from.extend([0, 0, 0, 0, 0, 0]);
        from.drain(..5);
        // The ring now wraps: its samples sit at its end and its start.
        from.extend([1, 2, 3, 4, 5]);
        assert!(
            !from.as_slices().1.is_empty(),
            "the test needs a wrapped deque"
        );
        let mut to = vec![9];
        super::move_front(&mut from, 4, &mut to);
        assert_eq!(to, [9, 0, 1, 2, 3]);
        assert_eq!(from, [4, 5]);
        super::move_front(&mut from, 10, &mut to);
        assert_eq!(to, [9, 0, 1, 2, 3, 4, 5]);
        assert!(from.is_empty());
    }
}
