//! G.711 (ITU-T Recommendation G.711) companding: PCMU (µ-law) and PCMA (A-law).
//!
//! Owns: the conversion between 16-bit linear PCM and the 8-bit G.711 code
//! words, and the [`Codec`] names the rest of `media` uses (RTP static payload
//! types 0, 8 and 9 from RFC 3551 §6, Opus's dynamic one, and each codec's
//! RTP clock rate).
//!
//! Must not: know about RTP headers, sockets or frame timing. Decoding is
//! table-driven (two 256-entry tables built at compile time); encoding is a
//! few integer operations per sample and needs no table.

/// A codec we negotiate, named after its RTP encoding name (RFC 3551
/// §4.5, RFC 7587 §7). The G.711 pair is stateless and coded here; G.722
/// and Opus keep state per stream and go through [`super::codec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// µ-law, static payload type 0.
    Pcmu,
    /// A-law, static payload type 8.
    Pcma,
    /// G.722 at 64 kbit/s, static payload type 9 (RFC 3551 §4.5.2).
    G722,
    /// Opus (RFC 7587), dynamic payload type.
    Opus,
}

impl Codec {
    /// The payload type we put in our offers: the static one of RFC 3551
    /// §6 (table 4), or for Opus the dynamic one most stacks use.
    pub const fn offered_payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
            Codec::G722 => 9,
            Codec::Opus => 111,
        }
    }

    /// The encoding name used in `a=rtpmap` (RFC 4566 §6).
    pub const fn encoding_name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::G722 => "G722",
            Codec::Opus => "opus",
        }
    }

    /// The RTP clock rate written in `a=rtpmap`: 8000 for G.722 although
    /// it samples at 16 kHz (an erratum kept for compatibility, RFC 3551
    /// §4.5.2), 48000 for Opus whatever it codes (RFC 7587 §4.1).
    pub const fn clock_rate(self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma | Codec::G722 => 8000,
            Codec::Opus => 48_000,
        }
    }

    /// The channel count written in `a=rtpmap`: Opus is always signalled
    /// as two (RFC 7587 §7), whatever is sent; the others leave it out.
    pub const fn rtpmap_channels(self) -> Option<&'static str> {
        match self {
            Codec::Opus => Some("2"),
            _ => None,
        }
    }

    /// Whether a codec is coded here, without state ([`Self::decode_into`]).
    pub const fn is_g711(self) -> bool {
        matches!(self, Codec::Pcmu | Codec::Pcma)
    }

    /// Whether the codec carries 16 kHz audio or more (HD voice).
    pub const fn is_wideband(self) -> bool {
        matches!(self, Codec::G722 | Codec::Opus)
    }

    /// The codec for an encoding name (case-insensitive, RFC 4855 §3).
    pub fn from_encoding_name(name: &str) -> Option<Codec> {
        [Codec::Pcmu, Codec::Pcma, Codec::G722, Codec::Opus]
            .into_iter()
            .find(|c| name.eq_ignore_ascii_case(c.encoding_name()))
    }

    /// The codec behind a static payload type: 0, 8 or 9.
    pub const fn from_static_payload_type(pt: u8) -> Option<Codec> {
        match pt {
            0 => Some(Codec::Pcmu),
            8 => Some(Codec::Pcma),
            9 => Some(Codec::G722),
            _ => None,
        }
    }

    /// Decodes G.711 code words, appending linear samples to `out`. Does
    /// nothing for the stateful codecs: use [`super::codec::Decoder`].
    pub fn decode_into(self, payload: &[u8], out: &mut Vec<i16>) {
        let table = match self {
            Codec::Pcmu => &ULAW_TO_LINEAR,
            Codec::Pcma => &ALAW_TO_LINEAR,
            Codec::G722 | Codec::Opus => return,
        };
        out.extend(payload.iter().map(|&b| table[usize::from(b)]));
    }

    /// Encodes linear samples as G.711, one code word per sample, appended
    /// to `out`. Does nothing for the stateful codecs: use
    /// [`super::codec::Encoder`].
    pub fn encode_into(self, samples: &[i16], out: &mut Vec<u8>) {
        match self {
            Codec::Pcmu => out.extend(samples.iter().map(|&s| linear_to_ulaw(s))),
            Codec::Pcma => out.extend(samples.iter().map(|&s| linear_to_alaw(s))),
            Codec::G722 | Codec::Opus => {}
        }
    }

    /// The G.711 code word for digital silence (linear 0); 0 for the
    /// others, which have no single such word.
    pub const fn silence(self) -> u8 {
        match self {
            Codec::Pcmu => 0xFF,
            Codec::Pcma => 0xD5,
            Codec::G722 | Codec::Opus => 0,
        }
    }
}

/// µ-law bias added before segment search (G.711 §3.2, table 2a).
const ULAW_BIAS: i32 = 0x84;
/// Largest magnitude µ-law represents once the bias is added without overflow.
const ULAW_CLIP: i32 = 32_635;

/// Encodes one sample as µ-law (G.711 table 2a): sign, 3-bit segment,
/// 4-bit step, all bits inverted on the wire.
pub fn linear_to_ulaw(sample: i16) -> u8 {
    let value = i32::from(sample);
    let sign: u8 = if value < 0 { 0x80 } else { 0 };
    let magnitude = value.abs().min(ULAW_CLIP) + ULAW_BIAS;
    // magnitude is in [0x84, 0x7FFF]: its top bit is bit 7..=14, segment 0..=7.
    let top_bit = 31 - magnitude.leading_zeros();
    let segment = top_bit.saturating_sub(7);
    let step = (magnitude >> (segment + 3)) & 0x0F;
    // segment <= 7 and step <= 15, so both fit the byte.
    !(sign | ((segment as u8) << 4) | step as u8)
}

/// Decodes one µ-law code word (G.711 table 2a).
pub const fn ulaw_to_linear(code: u8) -> i16 {
    let code = !code;
    let segment = (code >> 4) & 0x07;
    let step = (code & 0x0F) as i32;
    let magnitude = (((step << 3) + ULAW_BIAS) << segment) - ULAW_BIAS;
    // magnitude <= 32124, fits i16.
    if code & 0x80 != 0 {
        -(magnitude as i16)
    } else {
        magnitude as i16
    }
}

/// Encodes one sample as A-law (G.711 table 1a): 13-bit magnitude, sign,
/// 3-bit segment, 4-bit step, even bits inverted on the wire (XOR 0x55).
pub fn linear_to_alaw(sample: i16) -> u8 {
    let value = i32::from(sample) >> 3;
    // Negative values use one's complement so -1 and 0 share a magnitude.
    let (sign, magnitude) = if value >= 0 {
        (0x80u8, value)
    } else {
        (0x00u8, -value - 1)
    };
    // magnitude is in [0, 4095].
    let (segment, step) = if magnitude < 32 {
        (0u32, magnitude >> 1)
    } else {
        let segment = (31 - magnitude.leading_zeros()) - 4;
        (segment, (magnitude >> segment) & 0x0F)
    };
    (sign | ((segment as u8) << 4) | step as u8) ^ 0x55
}

/// Decodes one A-law code word (G.711 table 1a), to the middle of its
/// quantisation interval.
pub const fn alaw_to_linear(code: u8) -> i16 {
    let code = code ^ 0x55;
    let segment = (code >> 4) & 0x07;
    let step = (code & 0x0F) as i32;
    let magnitude = if segment == 0 {
        (step << 4) + 8
    } else {
        ((step << 4) + 0x108) << (segment - 1)
    };
    // magnitude <= 32256, fits i16.
    if code & 0x80 != 0 {
        magnitude as i16
    } else {
        -(magnitude as i16)
    }
}

const fn build_ulaw_table() -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = ulaw_to_linear(i as u8);
        i += 1;
    }
    table
}

const fn build_alaw_table() -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = alaw_to_linear(i as u8);
        i += 1;
    }
    table
}

static ULAW_TO_LINEAR: [i16; 256] = build_ulaw_table();
static ALAW_TO_LINEAR: [i16; 256] = build_alaw_table();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_known_vectors() {
        // G.711 table 2a end points and the two zeros.
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x7F), 0);
        assert_eq!(ulaw_to_linear(0x80), 32_124);
        assert_eq!(ulaw_to_linear(0x00), -32_124);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(linear_to_ulaw(-1), 0x7F);
        // First step above zero: interval 1..=2 decodes to 8 in 14-bit scale.
        assert_eq!(ulaw_to_linear(0xFE), 8);
        assert_eq!(linear_to_ulaw(8), 0xFE);
    }

    #[test]
    fn alaw_known_vectors() {
        assert_eq!(linear_to_alaw(0), 0xD5);
        assert_eq!(linear_to_alaw(-1), 0x55);
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xAA), 32_256);
        assert_eq!(alaw_to_linear(0x2A), -32_256);
        assert_eq!(linear_to_alaw(i16::MAX), 0xAA);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2A);
    }

    #[test]
    fn every_code_word_round_trips() {
        for code in 0..=255u8 {
            assert_eq!(
                linear_to_alaw(alaw_to_linear(code)),
                code,
                "A-law {code:#04x}"
            );
            // µ-law has two zeros; 0x7F (negative zero) encodes back as 0xFF.
            let expected = if code == 0x7F { 0xFF } else { code };
            assert_eq!(
                linear_to_ulaw(ulaw_to_linear(code)),
                expected,
                "µ-law {code:#04x}"
            );
        }
    }

    #[test]
    fn quantisation_error_is_bounded_and_monotonic() {
        for codec in [Codec::Pcmu, Codec::Pcma] {
            let mut previous = i16::MIN;
            let mut encoded = Vec::new();
            let mut decoded = Vec::new();
            let samples: Vec<i16> = (i16::MIN..=i16::MAX).step_by(7).collect();
            codec.encode_into(&samples, &mut encoded);
            codec.decode_into(&encoded, &mut decoded);
            for (&x, &y) in samples.iter().zip(&decoded) {
                assert!(y >= previous, "{codec:?}: decode not monotonic at {x}");
                previous = y;
                let err = (i32::from(x) - i32::from(y)).abs();
                // Half a step is at most 1/32 of the magnitude; above the
                // top decision level the codecs clip (up to ~650 off).
                let magnitude = i32::from(x).abs();
                let bound = if magnitude > 32_000 {
                    700
                } else {
                    magnitude / 32 + 16
                };
                assert!(err <= bound, "{codec:?}: {x} -> {y} (error {err})");
            }
        }
    }

    #[test]
    fn codec_names_and_payload_types() {
        assert_eq!(Codec::from_encoding_name("pcmu"), Some(Codec::Pcmu));
        assert_eq!(Codec::from_encoding_name("PCMA"), Some(Codec::Pcma));
        assert_eq!(Codec::from_encoding_name("g722"), Some(Codec::G722));
        assert_eq!(Codec::from_encoding_name("OPUS"), Some(Codec::Opus));
        assert_eq!(Codec::from_encoding_name("G729"), None);
        assert_eq!(Codec::from_static_payload_type(8), Some(Codec::Pcma));
        assert_eq!(Codec::from_static_payload_type(9), Some(Codec::G722));
        assert_eq!(Codec::from_static_payload_type(18), None);
        for codec in [Codec::Pcmu, Codec::Pcma] {
            let mut out = Vec::new();
            codec.decode_into(&[codec.silence()], &mut out);
            assert!(out[0].abs() <= 8);
        }
    }
}
