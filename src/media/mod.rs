//! Media: RTP in and out for one call.
//!
//! Owns: G.711 codecs ([`g711`]), the adaptive jitter buffer ([`jitter`]),
//! RFC 4733 telephone events ([`dtmf`]), outgoing packetization and pacing
//! ([`pacer`]), SDP offer/answer for audio ([`sdp`]) and the tokio driver that
//! ties them to a UDP socket ([`session`]).
//!
//! Must not: import `call`, `store` or `api`, or decide anything about a
//! call. It reports what arrived (audio, digits, timeouts) and does what it
//! is told. The protocol cores (`g711`, `jitter`, `dtmf`, `pacer`, `sdp`) do
//! no IO; only `session` and the pacing clock touch tokio.

pub mod dtmf;
pub mod g711;
pub mod jitter;
pub mod pacer;
pub mod sdp;
pub mod session;

use std::time::Duration;

/// RTP clock rate of every codec we negotiate (G.711 and telephone-event).
pub const CLOCK_RATE: u32 = 8000;
/// Samples in one 20 ms frame at 8 kHz.
pub const FRAME_SAMPLES: usize = 160;
/// Duration of one frame, the packetization time we send and ask for.
pub const FRAME_DURATION: Duration = Duration::from_millis(20);
