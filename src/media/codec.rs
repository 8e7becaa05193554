//! Per-stream encoders and decoders for every codec we negotiate: G.711
//! (stateless, [`super::g711`]), G.722 and Opus (stateful).
//!
//! Owns: turning one 20 ms frame of the session's PCM into an RTP payload
//! and an RTP payload back into PCM, for one direction of one stream. The
//! session's PCM is 8 kHz mono 16-bit ([`super::CLOCK_RATE`]) whatever the
//! codec, so the jitter buffer, pacer, taps, recorders and the agent keep
//! one format; a codec meets that rate without a resampler:
//! - G.722 codes 16 kHz; our 8 kHz frames are resampled up before the
//!   encoder and the decoder's 16 kHz down after it (one
//!   [`super::resample::Resampler`] per direction, about 10 ms of delay).
//!   SpanDSP's 8 kHz mode (the lower sub-band alone) would need neither,
//!   but `ezk-g722` 0.1.2's translation of it gives a constant instead of
//!   the signal (its full-band mode is right), so we do not use it.
//! - Opus (RFC 7587): libopus encodes and decodes at 8 kHz itself, mono.
//!   A stereo stream from the peer is mixed down by the decoder (RFC 7587
//!   §3.4 lets the receiver do so); any frame size up to 120 ms decodes.
//!   Web calls use the same encoder and decoder (`crate::webrtc::peer`).
//!
//! The Opus encoder runs at complexity 5 (`OPUS_COMPLEXITY`), not
//! libopus' default 9 (1.3), and that is a quality trade-off: the encoder
//! is most of an Opus call's CPU, and from 8 kHz input it codes SILK
//! narrowband, where 5 takes about half the time of 9 (measured: ~60 µs
//! against ~110-135 µs per 20 ms frame; BENCHMARKS.md). What 5 gives up
//! is the wider search of SILK's noise-shaping quantiser and pitch
//! analysis: a small loss a listener hears, if at all, at the lowest
//! bitrates, far below what narrowband itself costs. WebRTC's own Opus
//! encoder runs 5 on phones for the same reason. In-band FEC and the
//! bitrate (libopus' VBR choice) stay as they were.
//!
//! A consumer that wants the wideband audio itself (the voice agent's
//! recognizer) gets a second decoder, [`Decoder::wideband`], fed the same
//! payloads: G.722's full 16 kHz QMF decode, or libopus at 16 kHz. Each
//! form comes straight from the codec; nothing is resampled.
//!
//! Must not: know about RTP headers, sockets or timing; payloads from the
//! network are hostile: a payload that does not decode gives no samples
//! and an error count, never a panic.
//!
//! Crates: G.722 is `ezk-g722` (MIT, kbalt, the author of our SIP stack):
//! a Rust translation of SpanDSP's G.722 (the reference that FreeSWITCH and
//! Asterisk use). We use only its `libg722` module, not its media-framework
//! types. Opus is the `opus` crate over Debian's libopus (already used for
//! web calls).

use std::collections::VecDeque;

use ezk_g722::libg722::{
    Bitrate, decoder::Decoder as G722Decoder, encoder::Encoder as G722Encoder,
};

use super::g711::Codec;
use super::resample::Resampler;

/// Largest Opus frame (120 ms, RFC 6716 §2.1.4) at 8 kHz.
const OPUS_MAX_SAMPLES: usize = 960;
/// The rate of the wideband decoders.
pub const WIDE_RATE: u32 = 16_000;
/// Largest Opus payload we write for one frame (RFC 7587 recommends
/// well below the MTU; 20 ms of voice is ~40-80 bytes).
const OPUS_MAX_PAYLOAD: usize = 400;
/// The Opus encoder's complexity (0-10); the module doc says why 5.
const OPUS_COMPLEXITY: i32 = 5;

/// Why a codec could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up {codec:?}: {reason}")]
pub struct CodecError {
    pub codec: Codec,
    pub reason: String,
}

/// G.722's 16 kHz side of an 8 kHz stream.
pub struct G722Send {
    encoder: G722Encoder,
    up: Resampler,
    /// 16 kHz samples not yet encoded.
    wide: VecDeque<i16>,
    scratch: Vec<i16>,
}

/// The encoder of one outgoing stream.
pub enum Encoder {
    G711(Codec),
    G722(Box<G722Send>),
    Opus(Box<opus::Encoder>),
}

fn resampler(codec: Codec, from: u32, to: u32) -> Result<Resampler, CodecError> {
    Resampler::new(from, to).map_err(|e| CodecError {
        codec,
        reason: e.to_string(),
    })
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Encoder({:?})", self.codec())
    }
}

impl Encoder {
    pub fn new(codec: Codec) -> Result<Self, CodecError> {
        Ok(match codec {
            Codec::Pcmu | Codec::Pcma => Encoder::G711(codec),
            Codec::G722 => Encoder::G722(Box::new(G722Send {
                encoder: G722Encoder::new(Bitrate::Mode1_64000, false, false),
                up: resampler(codec, super::CLOCK_RATE, WIDE_RATE)?,
                wide: VecDeque::with_capacity(4 * 160),
                scratch: Vec::with_capacity(2 * 160),
            })),
            Codec::Opus => {
                let mut encoder = opus::Encoder::new(
                    super::CLOCK_RATE,
                    opus::Channels::Mono,
                    opus::Application::Voip,
                )
                .map_err(|e| CodecError {
                    codec,
                    reason: e.to_string(),
                })?;
                // In-band FEC lets the far end recover a lost packet from
                // the next one (RFC 7587 §3.3); harmless if unused.
                let _ = encoder.set_inband_fec(true);
                encoder
                    .set_complexity(OPUS_COMPLEXITY)
                    .map_err(|e| CodecError {
                        codec,
                        reason: e.to_string(),
                    })?;
                Encoder::Opus(Box::new(encoder))
            }
        })
    }

    pub fn codec(&self) -> Codec {
        match self {
            Encoder::G711(codec) => *codec,
            Encoder::G722(_) => Codec::G722,
            Encoder::Opus(_) => Codec::Opus,
        }
    }

    /// Encodes one frame of 8 kHz PCM, appending the payload to `out`.
    /// False if the encoder refused it (nothing appended).
    pub fn encode_into(&mut self, pcm: &[i16], out: &mut Vec<u8>) -> bool {
        match self {
            Encoder::G711(codec) => codec.encode_into(pcm, out),
            Encoder::G722(g722) => {
                let want = 2 * pcm.len();
                g722.scratch.clear();
                if g722.up.push(pcm, &mut g722.scratch).is_err() {
                    return false;
                }
                g722.wide.extend(&g722.scratch);
                // The resampler holds its first ~10 ms back: the stream
                // starts that much later, with silence before it.
                if g722.wide.len() < want {
                    let short = want - g722.wide.len();
                    for _ in 0..short {
                        g722.wide.push_front(0);
                    }
                }
                g722.scratch.clear();
                super::move_front(&mut g722.wide, want, &mut g722.scratch);
                // `want` is even, as the encoder needs (it panics on odd).
                out.extend(g722.encoder.encode(&g722.scratch));
            }
            Encoder::Opus(encoder) => {
                let start = out.len();
                out.resize(start + OPUS_MAX_PAYLOAD, 0);
                match encoder.encode(pcm, &mut out[start..]) {
                    Ok(len) => out.truncate(start + len),
                    Err(e) => {
                        out.truncate(start);
                        tracing::debug!(error = %e, "Opus encode failed");
                        return false;
                    }
                }
            }
        }
        true
    }
}

/// The decoder of one incoming stream.
pub enum Decoder {
    G711(Codec),
    /// G.722 at 16 kHz, brought down to 8 kHz when `down` is there.
    G722 {
        decoder: Box<G722Decoder>,
        down: Option<Box<Resampler>>,
    },
    Opus {
        decoder: Box<opus::Decoder>,
        scratch: Vec<i16>,
    },
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Decoder({:?})", self.codec())
    }
}

impl Decoder {
    pub fn new(codec: Codec) -> Result<Self, CodecError> {
        Ok(match codec {
            Codec::Pcmu | Codec::Pcma => Decoder::G711(codec),
            Codec::G722 => Decoder::G722 {
                decoder: Box::new(G722Decoder::new(Bitrate::Mode1_64000, false, false)),
                down: Some(Box::new(resampler(codec, WIDE_RATE, super::CLOCK_RATE)?)),
            },
            Codec::Opus => Decoder::Opus {
                decoder: Box::new(
                    opus::Decoder::new(super::CLOCK_RATE, opus::Channels::Mono).map_err(|e| {
                        CodecError {
                            codec,
                            reason: e.to_string(),
                        }
                    })?,
                ),
                scratch: vec![0; OPUS_MAX_SAMPLES],
            },
        })
    }

    /// A decoder to 16 kHz PCM ([`WIDE_RATE`]) for a wideband codec;
    /// `None` for G.711.
    pub fn wideband(codec: Codec) -> Result<Option<Self>, CodecError> {
        Ok(match codec {
            Codec::Pcmu | Codec::Pcma => None,
            Codec::G722 => Some(Decoder::G722 {
                decoder: Box::new(G722Decoder::new(Bitrate::Mode1_64000, false, false)),
                down: None,
            }),
            Codec::Opus => Some(Decoder::Opus {
                decoder: Box::new(opus::Decoder::new(WIDE_RATE, opus::Channels::Mono).map_err(
                    |e| CodecError {
                        codec,
                        reason: e.to_string(),
                    },
                )?),
                scratch: vec![0; OPUS_MAX_SAMPLES * 2],
            }),
        })
    }

    pub fn codec(&self) -> Codec {
        match self {
            Decoder::G711(codec) => *codec,
            Decoder::G722 { .. } => Codec::G722,
            Decoder::Opus { .. } => Codec::Opus,
        }
    }

    /// Decodes one payload to PCM (8 kHz, or 16 kHz from
    /// [`Decoder::wideband`]) appended to `out`. False if the
    /// payload is not valid for the codec (nothing appended).
    pub fn decode_into(&mut self, payload: &[u8], out: &mut Vec<i16>) -> bool {
        match self {
            Decoder::G711(codec) => codec.decode_into(payload, out),
            Decoder::G722 { decoder, down } => {
                let wide = decoder.decode(payload);
                match down {
                    None => out.extend(wide),
                    Some(down) => {
                        if down.push(&wide, out).is_err() {
                            return false;
                        }
                    }
                }
            }
            Decoder::Opus { decoder, scratch } => {
                // An empty payload would ask libopus for loss concealment;
                // the session conceals gaps itself.
                if payload.is_empty() {
                    return false;
                }
                match decoder.decode(payload, scratch, false) {
                    Ok(n) => out.extend_from_slice(&scratch[..n.min(scratch.len())]),
                    Err(e) => {
                        tracing::debug!(error = %e, "Opus payload does not decode");
                        return false;
                    }
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::FRAME_SAMPLES;

    fn tone(freq: f32, frames: usize) -> Vec<i16> {
        (0..frames * FRAME_SAMPLES)
            .map(|n| ((n as f32 * freq * std::f32::consts::TAU / 8000.0).sin() * 8000.0) as i16)
            .collect()
    }

    /// Share of the signal's energy at `freq` (Goertzel).
    fn tone_share(pcm: &[i16], freq: f32) -> f64 {
        let w = 2.0 * std::f64::consts::PI * f64::from(freq) / 8000.0;
        let coeff = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        let mut energy = 0.0;
        for &x in pcm {
            let x = f64::from(x);
            energy += x * x;
            let s = x + coeff * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
        2.0 * power / (pcm.len() as f64 * energy.max(1.0))
    }

    fn round_trip(codec: Codec, pcm: &[i16]) -> (Vec<i16>, usize) {
        let mut encoder = Encoder::new(codec).unwrap();
        let mut decoder = Decoder::new(codec).unwrap();
        let mut out = Vec::new();
        let mut bytes = 0;
        for frame in pcm.chunks_exact(FRAME_SAMPLES) {
            let mut payload = Vec::new();
            assert!(encoder.encode_into(frame, &mut payload));
            bytes += payload.len();
            assert!(decoder.decode_into(&payload, &mut out));
        }
        (out, bytes)
    }

    #[test]
    fn every_codec_carries_a_tone_through() {
        let pcm = tone(1000.0, 50);
        for codec in [Codec::Pcmu, Codec::Pcma, Codec::G722, Codec::Opus] {
            let (out, bytes) = round_trip(codec, &pcm);
            // G.722's resamplers hold back about 10 ms.
            assert!(
                out.len() <= pcm.len() && out.len() + FRAME_SAMPLES >= pcm.len(),
                "{codec:?}: {}",
                out.len()
            );
            // Skip the codec's start-up (Opus has a few ms of look-ahead).
            let share = tone_share(&out[800..], 1000.0);
            assert!(share > 0.9, "{codec:?}: {share}");
            match codec {
                // 64 kbit/s: one byte per 8 kHz sample.
                Codec::Pcmu | Codec::Pcma | Codec::G722 => assert_eq!(bytes, pcm.len()),
                // Compressed well below G.711.
                Codec::Opus => assert!(bytes < pcm.len() / 2, "{bytes}"),
            }
        }
    }

    #[test]
    fn g722_bytes_are_a_standard_wideband_stream() {
        // Our stream, decoded by a plain 16 kHz G.722 decoder (what a peer
        // runs), holds the tone at the same frequency.
        let pcm = tone(800.0, 25);
        let mut encoder = Encoder::new(Codec::G722).unwrap();
        let mut payload = Vec::new();
        for frame in pcm.chunks_exact(FRAME_SAMPLES) {
            encoder.encode_into(frame, &mut payload);
        }
        let mut wide = G722Decoder::new(Bitrate::Mode1_64000, false, false);
        let decoded = wide.decode(&payload);
        assert_eq!(decoded.len(), pcm.len() * 2);
        // At 16 kHz, 800 Hz is 400 Hz on the 8 kHz scale of `tone_share`.
        let share = tone_share(&decoded[1600..], 400.0);
        assert!(share > 0.8, "{share}");
    }

    #[test]
    fn wideband_decoders_give_the_same_audio_at_16_khz() {
        let pcm = tone(1000.0, 25);
        for codec in [Codec::G722, Codec::Opus] {
            let mut encoder = Encoder::new(codec).unwrap();
            let mut wide = Decoder::wideband(codec).unwrap().unwrap();
            let mut out = Vec::new();
            for frame in pcm.chunks_exact(FRAME_SAMPLES) {
                let mut payload = Vec::new();
                encoder.encode_into(frame, &mut payload);
                assert!(wide.decode_into(&payload, &mut out));
            }
            assert_eq!(out.len(), 2 * pcm.len(), "{codec:?}");
            // 1 kHz at 16 kHz is 500 Hz on the 8 kHz scale of `tone_share`.
            let share = tone_share(&out[1600..], 500.0);
            assert!(share > 0.8, "{codec:?}: {share}");
        }
        assert!(Decoder::wideband(Codec::Pcmu).unwrap().is_none());
    }

    #[test]
    fn the_opus_encoder_runs_at_the_documented_complexity() {
        let Encoder::Opus(mut opus) = Encoder::new(Codec::Opus).unwrap() else {
            panic!("not an Opus encoder");
        };
        assert_eq!(opus.get_complexity().unwrap(), OPUS_COMPLEXITY);
        assert!(opus.get_inband_fec().unwrap());
    }

    #[test]
    fn hostile_payloads_do_not_panic() {
        let mut rng_state = 0x1234_5678u32;
        let mut next = || {
            rng_state ^= rng_state << 13;
            rng_state ^= rng_state >> 17;
            rng_state ^= rng_state << 5;
            rng_state
        };
        for codec in [Codec::G722, Codec::Opus] {
            let mut decoder = Decoder::new(codec).unwrap();
            let mut out = Vec::new();
            for len in [0usize, 1, 2, 3, 7, 160, 1200, 1500] {
                let payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                out.clear();
                decoder.decode_into(&payload, &mut out);
                assert!(out.len() <= OPUS_MAX_SAMPLES.max(1500), "{codec:?} {len}");
            }
        }
        let mut opus = Decoder::new(Codec::Opus).unwrap();
        assert!(!opus.decode_into(&[], &mut Vec::new()));
    }
}
