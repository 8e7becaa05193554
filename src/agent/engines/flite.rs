//! The embedded synthesiser: Debian's `flite`, one child process per piece
//! of text.
//!
//! Owns: [`Flite`] (a [`Tts`]). `speak` runs `flite -voice V -o /dev/stdout
//! -t TEXT` with the text as one argument (no shell, so nothing in the text
//! is interpreted), reads the RIFF/WAVE stream from the pipe as it arrives,
//! resamples it to 8 kHz (kal is 8 kHz; awb, rms, slt and kal16 are 16 kHz)
//! and sends 20 ms frames on the [`Audio`] channel. Dropping the receiver
//! kills the process at once, even mid-synthesis (a barge-in).
//!
//! Why a process per piece: flite is a program, not a server; it starts in
//! a few milliseconds and synthesises a sentence about fifty times faster
//! than real time, so a chunk of LLM text costs little more than its
//! synthesis. The WAV header is read with [`crate::media::wav`] as the
//! stream arrives (`hound` wants a blocking reader of the whole file).
//!
//! Must not: pass text through a shell, leave a flite process running after
//! its stream is dropped, or load a voice from a path or URL (flite would
//! take any `-voice` value as one: only the names `flite -lv` lists are
//! accepted).

use std::process::Stdio;
use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::sync::{OnceCell, mpsc};
use tracing::Instrument;

use crate::agent::providers::{Audio, ProviderError, Tts};
use crate::agent::turn::FRAME_SAMPLES;
use crate::media::resample::Resampler;
use crate::media::wav;

/// Longest text for one process; the chunker sends sentences.
const MAX_TEXT_CHARS: usize = 4000;
/// Frames buffered ahead of the reader (2 s): flite is far faster than
/// playback, so this bounds what a barge-in throws away.
const QUEUE_FRAMES: usize = 100;

/// The voices flite knows, asked once per binary (a failure is asked again
/// next time, so installing flite needs no restart).
pub type VoiceList = Arc<OnceCell<Vec<String>>>;

/// flite with one voice.
#[derive(Debug, Clone)]
pub struct Flite {
    binary: String,
    voice: String,
    voices: VoiceList,
}

impl Flite {
    /// `voices` caches `flite -lv`; share it between instances of one binary.
    pub fn new(binary: &str, voice: &str, voices: VoiceList) -> Self {
        Flite {
            binary: binary.into(),
            voice: voice.into(),
            voices,
        }
    }

    /// Whether flite has this voice (`flite -lv`, asked once).
    pub async fn check_voice(&self) -> Result<(), ProviderError> {
        let binary = self.binary.clone();
        let voices = self
            .voices
            .get_or_try_init(|| async move { list_voices(&binary).await })
            .await
            .map_err(ProviderError::Config)?;
        if voices.iter().any(|v| v == &self.voice) {
            Ok(())
        } else {
            Err(ProviderError::Config(format!(
                "flite has no voice {:?}; it has {}",
                self.voice,
                voices.join(", ")
            )))
        }
    }
}

/// How long `flite -lv` may take before the list is given up on (it is
/// asked again next time).
const LIST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The voices `binary` has, from `cache` or by asking it once.
pub async fn installed_voices(binary: &str, cache: &VoiceList) -> Result<Vec<String>, String> {
    let binary = binary.to_string();
    cache
        .get_or_try_init(|| async move {
            tokio::time::timeout(LIST_TIMEOUT, list_voices(&binary))
                .await
                .map_err(|_| format!("{binary:?} -lv did not answer in time"))?
        })
        .await
        .cloned()
}

fn missing(binary: &str, e: &std::io::Error) -> String {
    format!(
        "cannot run flite ({binary:?}: {e}); install Debian's flite (apt-get install flite) \
         or set [speech] flite"
    )
}

/// `flite -lv` prints `Voices available: kal awb ...`.
async fn list_voices(binary: &str) -> Result<Vec<String>, String> {
    let out = Command::new(binary)
        .arg("-lv")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| missing(binary, &e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let voices: Vec<String> = text
        .split_once(':')
        .map(|(_, list)| list.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    if voices.is_empty() {
        return Err(format!("{binary:?} -lv listed no voices: is it flite?"));
    }
    Ok(voices)
}

#[async_trait::async_trait]
impl Tts for Flite {
    async fn speak(&self, text: &str) -> Result<Audio, ProviderError> {
        // Control characters (a NUL would not even fit in an argument) say
        // nothing to a synthesiser.
        let text: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let text = text.trim();
        if text.chars().count() > MAX_TEXT_CHARS {
            return Err(ProviderError::Refused(format!(
                "a piece of text for flite may hold at most {MAX_TEXT_CHARS} characters"
            )));
        }
        let (tx, rx) = mpsc::channel(QUEUE_FRAMES);
        if text.is_empty() {
            return Ok(rx);
        }
        self.check_voice().await?;
        let mut child = Command::new(&self.binary)
            .args(["-voice", &self.voice, "-o", "/dev/stdout", "-t", text])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ProviderError::Config(missing(&self.binary, &e)))?;
        let (Some(mut stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(ProviderError::Config(
                "flite's pipes could not be opened".into(),
            ));
        };
        // Read alongside stdout, so a chatty flite never blocks on a full
        // stderr pipe; the start is kept for an error message.
        let errors = tokio::spawn(read_head(stderr, 2048));
        tokio::spawn(
            async move {
                let result = tokio::select! {
                    r = stream_wav(&mut stdout, &tx) => r,
                    () = tx.closed() => Ok(()),
                };
                if tx.is_closed() {
                    // Nobody listens any more: stop synthesising now.
                    let _ = child.kill().await;
                    errors.abort();
                    return;
                }
                let status = child.wait().await;
                let err = errors.await.unwrap_or_default();
                let failed = match (&result, status) {
                    (Err(e), _) => Some(e.clone()),
                    (Ok(_), Ok(s)) if !s.success() => Some(format!("flite exited with {s}")),
                    (Ok(_), Err(e)) => Some(format!("flite could not be waited for: {e}")),
                    _ => None,
                };
                if let Some(mut e) = failed {
                    let err = err.trim();
                    if !err.is_empty() {
                        e = format!("{e}: {err}");
                    }
                    let _ = tx.send(Err(ProviderError::Refused(e))).await;
                }
            }
            .in_current_span(),
        );
        Ok(rx)
    }
}

/// Reads `pipe` to its end, keeping its first `keep` bytes as text.
async fn read_head(mut pipe: impl AsyncReadExt + Unpin, keep: usize) -> String {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = keep.saturating_sub(head.len());
        head.extend_from_slice(&buf[..n.min(room)]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

type Frames = mpsc::Sender<Result<Vec<i16>, ProviderError>>;

/// Reads a WAV stream and sends it as 20 ms frames at 8 kHz; `Ok` at its end.
async fn stream_wav(pipe: &mut (impl AsyncReadExt + Unpin), tx: &Frames) -> Result<(), String> {
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 8192];
    let header = loop {
        if let Some(h) = wav::parse_header(&buf).map_err(|e| format!("flite's output: {e}"))? {
            break h;
        }
        let n = pipe
            .read(&mut chunk)
            .await
            .map_err(|e| format!("cannot read from flite: {e}"))?;
        if n == 0 {
            return Err("flite wrote no audio".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let f = header.format;
    if !f.is_pcm16() || f.channels != 1 {
        return Err(format!(
            "flite's WAV is not 16-bit mono PCM (format {}, {} channels, {} bits, {} Hz)",
            f.tag, f.channels, f.bits, f.rate
        ));
    }
    let mut framer = Framer::new(f.rate)?;
    let mut left = header.data_len;
    buf.drain(..header.data_start);
    loop {
        // Whole samples only; an odd byte waits for its partner.
        let usable = (buf.len().min(left)) & !1;
        let samples: Vec<i16> = buf[..usable]
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        buf.drain(..usable);
        left -= usable;
        for frame in framer.push(&samples)? {
            if tx.send(Ok(frame)).await.is_err() {
                return Ok(());
            }
        }
        if left == 0 {
            break;
        }
        let n = pipe
            .read(&mut chunk)
            .await
            .map_err(|e| format!("cannot read from flite: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    for frame in framer.finish()? {
        if tx.send(Ok(frame)).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// Cuts audio at any rate into 20 ms frames at 8 kHz.
pub struct Framer {
    down: Resampler,
    narrow: Vec<i16>,
}

impl Framer {
    pub fn new(rate: u32) -> Result<Self, String> {
        Ok(Framer {
            down: Resampler::new(rate, 8000).map_err(|e| e.to_string())?,
            narrow: Vec::with_capacity(4 * FRAME_SAMPLES),
        })
    }

    /// The whole frames that `samples` completes.
    pub fn push(&mut self, samples: &[i16]) -> Result<Vec<Vec<i16>>, String> {
        self.down
            .push(samples, &mut self.narrow)
            .map_err(|e| e.to_string())?;
        Ok(self.cut())
    }

    /// The rest, the last frame padded with silence.
    pub fn finish(&mut self) -> Result<Vec<Vec<i16>>, String> {
        self.down
            .flush(&mut self.narrow)
            .map_err(|e| e.to_string())?;
        let rest = self.narrow.len() % FRAME_SAMPLES;
        if rest != 0 {
            self.narrow
                .resize(self.narrow.len() + FRAME_SAMPLES - rest, 0);
        }
        Ok(self.cut())
    }

    fn cut(&mut self) -> Vec<Vec<i16>> {
        let whole = self.narrow.len() / FRAME_SAMPLES * FRAME_SAMPLES;
        let frames = self.narrow[..whole]
            .chunks_exact(FRAME_SAMPLES)
            .map(<[i16]>::to_vec)
            .collect();
        self.narrow.drain(..whole);
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wav_stream_becomes_whole_frames_at_8_khz() {
        let samples: Vec<i16> = (0..16000).map(|i| ((i % 40) * 100) as i16).collect();
        let bytes = crate::media::wav::write_pcm16(&samples, 16000, 1);
        let (tx, mut rx) = mpsc::channel(1000);
        stream_wav(&mut &bytes[..], &tx).await.unwrap();
        drop(tx);
        let mut n = 0;
        while let Some(f) = rx.recv().await {
            assert_eq!(f.unwrap().len(), FRAME_SAMPLES);
            n += 1;
        }
        assert_eq!(n, 50, "one second is 50 frames");
    }
}
