//! The diagnostic agents that prove a call before the speech pipeline
//! exists: `echo` sends the caller's audio back, `prompt` plays a WAV file
//! or a tone and then hangs up.
//!
//! Must not: touch SIP; an agent sees audio frames and the playout state
//! and answers with audio to play or a reason to end the call.

use std::f64::consts::PI;
use std::path::Path;

use crate::agent::PromptSettings;
use crate::media::{AudioFrame, CLOCK_RATE, MediaHandle, SessionClosed};

use super::EndReason;

/// Peak of the generated tone: -10 dBFS, loud but far from clipping.
const TONE_AMPLITUDE: f64 = 10_362.0;

/// An agent running on one call.
#[derive(Debug)]
pub enum AgentRun {
    Echo,
    Prompt {
        /// 8 kHz mono PCM, taken when playing starts.
        audio: Option<Vec<i16>>,
    },
}

impl AgentRun {
    /// The agent for `kind` (`echo` or `prompt`); a `prompt` whose sound
    /// cannot be read is an error the call ends with.
    pub async fn new(kind: &str, prompt: Option<&PromptSettings>) -> Result<Self, String> {
        match kind {
            "echo" => Ok(AgentRun::Echo),
            "prompt" => {
                let settings = prompt.ok_or("prompt agent without prompt settings")?;
                let audio = prompt_audio(settings).await?;
                Ok(AgentRun::Prompt { audio: Some(audio) })
            }
            other => Err(format!("agent kind {other:?} cannot run on a call yet")),
        }
    }

    /// The call is answered: start talking.
    pub async fn start(&mut self, media: &MediaHandle) -> Result<(), SessionClosed> {
        if let AgentRun::Prompt { audio } = self
            && let Some(samples) = audio.take()
        {
            media.play(samples).await?;
        }
        Ok(())
    }

    /// A 20 ms frame from the caller.
    pub async fn on_audio(
        &mut self,
        frame: AudioFrame,
        media: &MediaHandle,
    ) -> Result<(), SessionClosed> {
        match self {
            AgentRun::Echo => media.play(frame.samples).await,
            AgentRun::Prompt { .. } => Ok(()),
        }
    }

    /// Everything queued has been played; the prompt agent is done.
    pub fn on_playout_drained(&mut self) -> Option<EndReason> {
        match self {
            AgentRun::Prompt { audio: None } => Some(EndReason::AgentHangup),
            _ => None,
        }
    }
}

async fn prompt_audio(settings: &PromptSettings) -> Result<Vec<i16>, String> {
    if let Some(path) = &settings.wav_path {
        let bytes = tokio::fs::read(Path::new(path))
            .await
            .map_err(|e| format!("cannot read {path}: {e}"))?;
        return read_wav(&bytes).map_err(|e| format!("{path}: {e}"));
    }
    let hz = settings.tone_hz.unwrap_or(440);
    Ok(tone(f64::from(hz), settings.duration_ms))
}

/// A sine tone at 8 kHz.
pub fn tone(hz: f64, duration_ms: u32) -> Vec<i16> {
    let samples = u64::from(duration_ms) * u64::from(CLOCK_RATE) / 1000;
    (0..samples)
        .map(|n| {
            let t = n as f64 / f64::from(CLOCK_RATE);
            // Bounded by TONE_AMPLITUDE, inside i16.
            (TONE_AMPLITUDE * (2.0 * PI * hz * t).sin()) as i16
        })
        .collect()
}

/// Reads a 16-bit PCM WAV (RIFF) file, mixes it to mono and resamples it
/// to 8 kHz (linear interpolation).
pub fn read_wav(bytes: &[u8]) -> Result<Vec<i16>, String> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err("not a RIFF/WAVE file".into());
    }
    let mut format: Option<(u16, u16, u32, u16)> = None;
    let mut data: Option<&[u8]> = None;
    let mut rest = &bytes[12..];
    while rest.len() >= 8 {
        let id = &rest[0..4];
        let len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        let body = rest.get(8..8 + len).unwrap_or(&rest[8..]);
        match id {
            b"fmt " if body.len() >= 16 => {
                format = Some((
                    u16::from_le_bytes([body[0], body[1]]),
                    u16::from_le_bytes([body[2], body[3]]),
                    u32::from_le_bytes([body[4], body[5], body[6], body[7]]),
                    u16::from_le_bytes([body[14], body[15]]),
                ));
            }
            b"data" => data = Some(body),
            _ => {}
        }
        // Chunks are padded to an even length.
        let next = 8 + len + (len & 1);
        rest = rest.get(next..).unwrap_or(&[]);
    }
    let (tag, channels, rate, bits) = format.ok_or("no fmt chunk")?;
    let data = data.ok_or("no data chunk")?;
    // 1 = PCM, 0xFFFE = WAVE_FORMAT_EXTENSIBLE (PCM in practice here).
    if !(tag == 1 || tag == 0xFFFE) || bits != 16 || channels == 0 || rate == 0 {
        return Err(format!(
            "only 16-bit PCM is supported (format {tag}, {bits} bits, {channels} channels)"
        ));
    }
    let channels = usize::from(channels);
    let mono: Vec<f64> = data
        .chunks_exact(2 * channels)
        .map(|frame| {
            let sum: f64 = frame
                .chunks_exact(2)
                .map(|s| f64::from(i16::from_le_bytes([s[0], s[1]])))
                .sum();
            sum / channels as f64
        })
        .collect();
    if mono.is_empty() {
        return Ok(Vec::new());
    }
    let step = f64::from(rate) / f64::from(CLOCK_RATE);
    let out_len = (mono.len() as f64 / step) as usize;
    Ok((0..out_len)
        .map(|i| {
            let pos = i as f64 * step;
            let at = pos as usize;
            let frac = pos - at as f64;
            let a = mono[at.min(mono.len() - 1)];
            let b = mono[(at + 1).min(mono.len() - 1)];
            (a + (b - a) * frac).round().clamp(-32768.0, 32767.0) as i16
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(rate: u32, channels: u16, samples: &[i16]) -> Vec<u8> {
        let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let mut out = Vec::new();
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&channels.to_le_bytes());
        out.extend_from_slice(&rate.to_le_bytes());
        out.extend_from_slice(&(rate * 2 * u32::from(channels)).to_le_bytes());
        out.extend_from_slice(&(2 * channels).to_le_bytes());
        out.extend_from_slice(&16u16.to_le_bytes());
        out.extend_from_slice(b"data");
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&data);
        out
    }

    #[test]
    fn wav_is_mixed_to_mono_and_resampled_to_8k() {
        let stereo16k: Vec<i16> = (0..3200).flat_map(|i| [i as i16, i as i16 + 2]).collect();
        let pcm = read_wav(&wav(16_000, 2, &stereo16k)).unwrap();
        assert_eq!(pcm.len(), 1600);
        assert_eq!(pcm[10], 21);
        assert!(read_wav(b"RIFF....WAVEjunk").is_err());
        assert!(read_wav(b"nope").is_err());
    }

    #[test]
    fn tone_has_the_asked_length() {
        let t = tone(1000.0, 500);
        assert_eq!(t.len(), 4000);
        assert!(t.iter().any(|s| *s > 10_000));
    }
}
