//! RIFF/WAVE (Microsoft Multimedia Programming Interface, 1991) for 16-bit
//! PCM, the one copy used everywhere: the prompt agent's files, flite's
//! output read as it streams, and the uploads to speech-to-text vendors.
//!
//! Must not: do IO; callers hand bytes in and take bytes out.

use super::CLOCK_RATE;

/// WAVE_FORMAT_PCM, and WAVE_FORMAT_EXTENSIBLE (PCM in practice here).
const PCM: u16 = 1;
const EXTENSIBLE: u16 = 0xFFFE;

/// The `fmt ` chunk's fields we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavFormat {
    pub tag: u16,
    pub channels: u16,
    pub rate: u32,
    pub bits: u16,
}

impl WavFormat {
    /// 16-bit PCM with at least one channel and a rate.
    pub fn is_pcm16(&self) -> bool {
        (self.tag == PCM || self.tag == EXTENSIBLE)
            && self.bits == 16
            && self.channels > 0
            && self.rate > 0
    }
}

/// What a WAV header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavHeader {
    pub format: WavFormat,
    /// Offset of the first sample.
    pub data_start: usize,
    /// Bytes of samples, as the header says (a stream may not know).
    pub data_len: usize,
}

/// Parses the header up to the start of the `data` chunk; `None` until
/// `buf` holds all of it (so it reads a stream as it arrives).
pub fn parse_header(buf: &[u8]) -> Result<Option<WavHeader>, String> {
    if buf.len() < 12 {
        return Ok(None);
    }
    if &buf[0..4] != b"RIFF" || &buf[8..12] != b"WAVE" {
        return Err("not a RIFF/WAVE file".into());
    }
    let mut at = 12;
    let mut format = None;
    loop {
        let Some(head) = buf.get(at..at + 8) else {
            return Ok(None);
        };
        let id = &head[0..4];
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        let body = at + 8;
        if id == b"data" {
            let format = format.ok_or("no fmt chunk before the data")?;
            return Ok(Some(WavHeader {
                format,
                data_start: body,
                data_len: len,
            }));
        }
        if id == b"fmt " {
            let Some(fmt) = buf.get(body..body + 16) else {
                return Ok(None);
            };
            format = Some(WavFormat {
                tag: u16::from_le_bytes([fmt[0], fmt[1]]),
                channels: u16::from_le_bytes([fmt[2], fmt[3]]),
                rate: u32::from_le_bytes([fmt[4], fmt[5], fmt[6], fmt[7]]),
                bits: u16::from_le_bytes([fmt[14], fmt[15]]),
            });
        }
        // Chunks are padded to an even length.
        at = body + len + (len & 1);
    }
}

/// Reads a whole 16-bit PCM file, mixes it to mono and resamples it to
/// 8 kHz (rubato, through [`super::resample`]).
pub fn read_mono_8k(bytes: &[u8]) -> Result<Vec<i16>, String> {
    let header = parse_header(bytes)?.ok_or("the file ends inside its header")?;
    let f = header.format;
    if !f.is_pcm16() {
        return Err(format!(
            "only 16-bit PCM is supported (format {}, {} bits, {} channels)",
            f.tag, f.bits, f.channels
        ));
    }
    let end = header
        .data_start
        .saturating_add(header.data_len)
        .min(bytes.len());
    let data = &bytes[header.data_start..end];
    let channels = usize::from(f.channels);
    let mono: Vec<i16> = data
        .chunks_exact(2 * channels)
        .map(|frame| {
            let sum: i32 = frame
                .chunks_exact(2)
                .map(|s| i32::from(i16::from_le_bytes([s[0], s[1]])))
                .sum();
            // The mean of i16 samples is an i16.
            (sum / channels as i32) as i16
        })
        .collect();
    if mono.is_empty() || f.rate == CLOCK_RATE {
        return Ok(mono);
    }
    super::resample::resample(&mono, f.rate, CLOCK_RATE).map_err(|e| e.to_string())
}

/// A file of 16-bit PCM: `samples` interleaved over `channels`, at `rate`.
pub fn write_pcm16(samples: &[i16], rate: u32, channels: u16) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let block = 2 * channels;
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&PCM.to_le_bytes());
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * u32::from(block)).to_le_bytes());
    out.extend_from_slice(&block.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_files_read_back_mixed_to_mono_and_resampled_to_8k() {
        let stereo16k: Vec<i16> = (0..3200).flat_map(|i| [i as i16, i as i16 + 2]).collect();
        let pcm = read_mono_8k(&write_pcm16(&stereo16k, 16_000, 2)).unwrap();
        assert_eq!(pcm.len(), 1600);
        // The mean of the two channels, every other sample, away from the
        // edges the filter rings at.
        assert!((i32::from(pcm[800]) - 1601).abs() <= 8, "{}", pcm[800]);
        let mono = read_mono_8k(&write_pcm16(&[1, -1, 7], 8000, 1)).unwrap();
        assert_eq!(mono, [1, -1, 7]);
        assert!(read_mono_8k(b"RIFF....WAVEjunk").is_err());
        assert!(read_mono_8k(b"nope").is_err());
    }

    #[test]
    fn the_header_is_read_once_complete_across_padded_chunks() {
        let plain = write_pcm16(&[1, 2, 3], 16_000, 1);
        // An odd-length chunk before the format, to check the padding.
        let mut w = plain[..12].to_vec();
        w.extend_from_slice(b"LIST");
        w.extend_from_slice(&1u32.to_le_bytes());
        w.extend_from_slice(&[0, 0]);
        w.extend_from_slice(&plain[12..]);
        for cut in 0..54 {
            assert_eq!(parse_header(&w[..cut]).unwrap(), None, "cut at {cut}");
        }
        let h = parse_header(&w).unwrap().unwrap();
        assert_eq!((h.format.rate, h.data_start, h.data_len), (16_000, 54, 6));
        assert!(h.format.is_pcm16());
        assert!(parse_header(b"RIFX\0\0\0\0WAVE").is_err());
    }
}
