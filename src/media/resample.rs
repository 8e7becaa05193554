//! Sample-rate conversion of mono 16-bit PCM between the telephone rate and
//! what each speech engine wants.
//!
//! Owns: [`Resampler`], a streaming converter fed 20 ms frames (8 kHz to
//! 16 kHz for the recogniser; 16, 22.05 or 24 kHz to 8 kHz for synthesisers
//! and vendors), and [`resample`], the one-shot form for a whole clip. Both
//! use `rubato`'s synchronous FFT resampler: the rates are fixed for a
//! stream, and it is band-limited (no aliasing when going down to 8 kHz) at a
//! delay of half an FFT block, about 10 ms here. The delay is trimmed so the
//! output lines up with the input, and [`Resampler::flush`] pushes the tail
//! out, so `n` samples in give `round(n * to / from)` samples out.
//!
//! Must not: know about frames, codecs or engines; it converts samples only.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler as _};

/// Why a conversion could not be set up or run.
#[derive(Debug, thiserror::Error)]
pub enum ResampleError {
    #[error("cannot resample from {from} Hz to {to} Hz: {reason}")]
    Rates { from: u32, to: u32, reason: String },
    #[error("resampling failed: {0}")]
    Process(String),
}

/// A streaming converter for one mono stream at fixed rates.
pub struct Resampler {
    from: u32,
    to: u32,
    /// `None` when the rates are equal: samples pass through.
    fft: Option<Fft<f32>>,
    /// Input frames the FFT takes per call (20 ms at `from`).
    chunk_in: usize,
    /// Input not yet making a whole chunk.
    pending: Vec<f32>,
    /// Scratch for one call's output, sized once.
    scratch: Vec<f32>,
    /// Output samples of the startup delay still to drop.
    skip: usize,
    /// Input samples taken since the start or the last flush.
    fed: u64,
    /// Output samples given since the start or the last flush.
    given: u64,
}

impl Resampler {
    /// A converter from `from` Hz to `to` Hz.
    pub fn new(from: u32, to: u32) -> Result<Self, ResampleError> {
        let bad = |reason: &str| ResampleError::Rates {
            from,
            to,
            reason: reason.into(),
        };
        if from == 0 || to == 0 {
            return Err(bad("rates must be positive"));
        }
        if from > 192_000 || to > 192_000 {
            return Err(bad("rates above 192000 Hz are not supported"));
        }
        let chunk_in = (from as usize / 50).max(1);
        let (fft, skip, scratch) = if from == to {
            (None, 0, Vec::new())
        } else {
            let fft = Fft::<f32>::new(from as usize, to as usize, chunk_in, 1, FixedSync::Input)
                .map_err(|e| bad(&e.to_string()))?;
            let skip = fft.output_delay();
            let scratch = vec![0.0; fft.output_frames_max()];
            (Some(fft), skip, scratch)
        };
        Ok(Resampler {
            from,
            to,
            fft,
            chunk_in,
            pending: Vec::with_capacity(chunk_in * 2),
            scratch,
            skip,
            fed: 0,
            given: 0,
        })
    }

    /// The input rate.
    pub fn from_rate(&self) -> u32 {
        self.from
    }

    /// The output rate.
    pub fn to_rate(&self) -> u32 {
        self.to
    }

    /// Converts `input`, appending what is ready to `out` (the last few
    /// milliseconds stay inside until more input or [`Resampler::flush`]).
    pub fn push(&mut self, input: &[i16], out: &mut Vec<i16>) -> Result<(), ResampleError> {
        self.fed += input.len() as u64;
        if self.fft.is_none() {
            out.extend_from_slice(input);
            self.given += input.len() as u64;
            return Ok(());
        }
        self.pending
            .extend(input.iter().map(|&s| f32::from(s) / 32768.0));
        while self.pending.len() >= self.chunk_in {
            self.run_chunk(out, u64::MAX)?;
        }
        Ok(())
    }

    /// Pushes out everything still inside, so the output since the start
    /// (or the last flush) is exactly as long as the input at the new rate;
    /// then the converter is ready for a new, unrelated stream.
    pub fn flush(&mut self, out: &mut Vec<i16>) -> Result<(), ResampleError> {
        let expected =
            (self.fed * u64::from(self.to) + u64::from(self.from) / 2) / u64::from(self.from);
        if let Some(fft) = &self.fft {
            // Zero chunks move the held samples out; each call gives at
            // least one output block, so this many calls always suffice.
            let calls = self.skip / fft.output_frames_next().max(1) + 3;
            for _ in 0..calls {
                if self.given >= expected {
                    break;
                }
                self.pending.resize(self.chunk_in, 0.0);
                self.run_chunk(out, expected)?;
            }
        }
        self.reset();
        Ok(())
    }

    /// Forgets the stream so far.
    pub fn reset(&mut self) {
        if let Some(fft) = &mut self.fft {
            fft.reset();
            self.skip = fft.output_delay();
        }
        self.pending.clear();
        self.fed = 0;
        self.given = 0;
    }

    /// Runs one chunk of `pending` and appends its output, giving no more
    /// than `limit` samples in total since the start.
    fn run_chunk(&mut self, out: &mut Vec<i16>, limit: u64) -> Result<(), ResampleError> {
        let Some(fft) = &mut self.fft else {
            return Ok(());
        };
        let process = |e: &dyn std::fmt::Display| ResampleError::Process(e.to_string());
        let input = InterleavedSlice::new(&self.pending[..self.chunk_in], 1, self.chunk_in)
            .map_err(|e| process(&e))?;
        let frames = self.scratch.len();
        let mut output =
            InterleavedSlice::new_mut(&mut self.scratch, 1, frames).map_err(|e| process(&e))?;
        let (used, made) = fft
            .process_into_buffer(&input, &mut output, None)
            .map_err(|e| process(&e))?;
        self.pending.drain(..used);
        let dropped = made.min(self.skip);
        self.skip -= dropped;
        let room = usize::try_from(limit.saturating_sub(self.given)).unwrap_or(usize::MAX);
        let ready = &self.scratch[dropped..made];
        let ready = &ready[..ready.len().min(room)];
        out.extend(ready.iter().map(|&s| to_i16(s)));
        self.given += ready.len() as u64;
        Ok(())
    }
}

fn to_i16(s: f32) -> i16 {
    (s * 32768.0).round().clamp(-32768.0, 32767.0) as i16
}

/// Converts a whole clip; the result is `round(len * to / from)` samples.
pub fn resample(input: &[i16], from: u32, to: u32) -> Result<Vec<i16>, ResampleError> {
    let mut r = Resampler::new(from, to)?;
    let mut out = Vec::with_capacity(input.len() * to as usize / from as usize + 1);
    r.push(input, &mut out)?;
    r.flush(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(hz: f32, rate: u32, len: usize, amplitude: f32) -> Vec<i16> {
        (0..len)
            .map(|i| {
                let t = i as f32 / rate as f32;
                ((2.0 * std::f32::consts::PI * hz * t).sin() * amplitude) as i16
            })
            .collect()
    }

    fn rms(x: &[i16]) -> f64 {
        (x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    /// Power of `hz` in `x` relative to the signal's total power (Goertzel).
    fn share_at(x: &[i16], hz: f64, rate: u32) -> f64 {
        let w = 2.0 * std::f64::consts::PI * hz / f64::from(rate);
        let coeff = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0, 0.0);
        for &v in x {
            let s0 = f64::from(v) + coeff * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
        let total: f64 = x.iter().map(|&v| f64::from(v).powi(2)).sum();
        2.0 * power / (x.len() as f64 * total)
    }

    #[test]
    fn a_tone_keeps_its_frequency_and_level_both_ways() {
        for (from, to) in [(8000, 16000), (16000, 8000), (22050, 8000), (24000, 8000)] {
            let input = tone(1000.0, from, from as usize, 10_000.0);
            let out = resample(&input, from, to).unwrap();
            // Away from the edges, where the filter settles.
            let mid = &out[out.len() / 10..out.len() * 9 / 10];
            let share = share_at(mid, 1000.0, to);
            assert!(
                share > 0.95,
                "{from}->{to}: 1 kHz holds {share:.3} of the power"
            );
            let ratio = rms(mid) / rms(&input);
            assert!(
                (0.95..1.05).contains(&ratio),
                "{from}->{to}: level ratio {ratio:.3}"
            );
        }
    }

    #[test]
    fn lengths_follow_the_ratio_and_streaming_matches_one_shot() {
        assert_eq!(resample(&[0; 1000], 8000, 16000).unwrap().len(), 2000);
        assert_eq!(resample(&[0; 1000], 22050, 8000).unwrap().len(), 363);
        assert_eq!(resample(&[0; 7], 24000, 8000).unwrap().len(), 2);
        assert_eq!(resample(&[5; 10], 8000, 8000).unwrap(), vec![5; 10]);

        let input = tone(440.0, 8000, 8000, 8000.0);
        let whole = resample(&input, 8000, 16000).unwrap();
        let mut r = Resampler::new(8000, 16000).unwrap();
        let mut streamed = Vec::new();
        for frame in input.chunks(160) {
            r.push(frame, &mut streamed).unwrap();
        }
        // Only the filter delay (10 ms) is held back while streaming.
        assert!(streamed.len() >= 16000 - 160, "{}", streamed.len());
        r.flush(&mut streamed).unwrap();
        assert_eq!(streamed.len(), whole.len());
        let diff = streamed
            .iter()
            .zip(&whole)
            .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
            .max()
            .unwrap();
        assert!(diff <= 2, "streamed and one-shot differ by {diff}");

        // After a flush the converter starts a new stream aligned again.
        let mut again = Vec::new();
        r.push(&input, &mut again).unwrap();
        r.flush(&mut again).unwrap();
        assert_eq!(again.len(), whole.len());
    }

    #[test]
    fn going_down_removes_what_the_new_rate_cannot_carry() {
        let input = tone(6000.0, 16000, 16000, 10_000.0);
        let out = resample(&input, 16000, 8000).unwrap();
        let mid = &out[out.len() / 10..out.len() * 9 / 10];
        assert!(
            rms(mid) < 100.0,
            "6 kHz leaked into 8 kHz as {:.0}",
            rms(mid)
        );
    }

    #[test]
    fn bad_rates_are_refused() {
        let e = Resampler::new(0, 8000).err().unwrap();
        assert!(e.to_string().contains("from 0 Hz"), "{e}");
        assert!(Resampler::new(8000, 1_000_000).is_err());
    }
}
