//! The embedded recogniser: PocketSphinx 5 in a Python child process.
//!
//! Owns: [`PocketSphinx`] (an [`Stt`]) with its pool of warm workers, and
//! the stream of one call. Each stream gets its own worker process running
//! `pocketsphinx_worker.py` (embedded in the binary, run as `python -c`),
//! which feeds the `pocketsphinx` module's `Decoder` with `process_raw` and
//! answers with JSON lines: partial text while the caller speaks, the final
//! text after each end of turn.
//!
//! Why a child process and not the C library linked in: a crash or a hang in
//! the decoder ends one call's recognition, never the daemon; nothing is
//! compiled or downloaded at build time (the PyPI wheel carries the en-US
//! model); and the decoder's CPU runs outside the tokio workers. The cost: a
//! Python process and a loaded model per active call (about 110 MB
//! resident), a pipe hop per frame, and a model load of about half a second,
//! which the pool hides by keeping `warm_workers` loaded spares.
//!
//! The audio path, in Rust before the pipe: the 8 kHz frames are gated by
//! the same energy VAD that takes turns (long silences are not sent: the
//! decoder does worse on them and they cost CPU; 300 ms before speech and
//! 700 ms after it are kept, digital silence never), then upsampled to the
//! 16 kHz the model wants. On a wideband call (G.722, Opus) the gate
//! decides on the 8 kHz frames but the codec's own 16 kHz audio is what
//! goes to the model, with no resampling.
//! A push never waits on the worker: frames go through a bounded queue to a
//! writer task, and a worker more than ten seconds behind is an error.
//!
//! How well it hears (`bench/stt-accuracy.sh`: 15 short task sentences per
//! flite voice through G.711, paced as a call): 51 word errors in 348,
//! 2% for the voice rms, 6% awb, 18% kal, 32% slt; the final text comes
//! about 0.3 s after the end of the turn. Tried and not kept: dither,
//! other language weights (4, 5, 9, 12), wider beams, a second decode of
//! each whole utterance with batch CMN for the final text (53 errors
//! against 51, and the final then waits for a whole decode), a narrower
//! filterbank (the model's `feat.params` overrides it).
//!
//! Must not: block the caller's task, panic on a dead worker (that is a
//! [`ProviderError`]), or keep a worker once its stream is dropped (the
//! process is killed on drop).

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::agent::providers::{ProviderError, Stt, SttStream, Transcript};
use crate::agent::turn::{EnergyVad, FRAME_SAMPLES, Vad, VadConfig};
use crate::media::resample::Resampler;

/// The worker's source, run with `python -c`.
const WORKER: &str = include_str!("pocketsphinx_worker.py");

/// Decoder options on top of the model's defaults.
///
/// `cmninit`, the starting cepstral mean: the model's is that of wideband
/// speech, and telephone audio upsampled from 8 kHz has nothing above
/// 4 kHz, so with it the first turns of a call were mostly wrong (82% word
/// errors on the first turn of a fresh decoder) until the live mean had
/// adapted. This is the mean of whole-utterance (batch) CMN over 30 flite
/// sentences (voices kal and awb) through G.711; with it a fresh decoder
/// made 15% word errors on the voices rms and slt it was not taken from,
/// about what batch CMN over each utterance gives (13%), without waiting
/// for the utterance to end before decoding. See `bench/stt-accuracy.sh`.
const DECODER_OPTIONS: &str = r#"{"cmninit": "48.51,32.02,-30.22,46.84,-20.30,-2.24,17.98,-24.89,14.92,-11.50,1.31,10.75,-15.43"}"#;

/// How long a worker may take to load its model.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Frames queued for the worker before it counts as stuck (10 s).
const QUEUE_FRAMES: usize = 500;
/// Audio kept before the first voiced frame (300 ms).
const PREROLL_FRAMES: usize = 15;
/// Audio still sent after the last voiced frame (700 ms).
const HANGOVER_FRAMES: usize = 35;
/// Frames quieter than this are never sent: digital silence (a softphone
/// playing a padded file, a muted line) drags the live cepstral mean far
/// from speech, and the next turns were misheard.
const SILENT_DBFS: f32 = -70.0;

/// Where to find the worker's interpreter and how many to keep warm.
#[derive(Debug, Clone)]
pub struct PocketSphinxConfig {
    pub python: String,
    pub warm_workers: usize,
}

/// The PocketSphinx 5 recogniser; cheap to clone, shares its pool.
#[derive(Clone)]
pub struct PocketSphinx {
    pool: Arc<Pool>,
}

struct Pool {
    config: PocketSphinxConfig,
    /// Loaded workers waiting for a call. A std mutex: held only to push or
    /// pop, never across an `.await`.
    spares: Mutex<Vec<Worker>>,
    /// Spares being started, so a burst of calls does not overshoot.
    starting: AtomicUsize,
}

/// A running worker whose model is loaded.
struct Worker {
    /// Killed when dropped (`kill_on_drop`).
    child: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
}

/// One line from the worker.
#[derive(Debug, Deserialize)]
struct Message {
    #[serde(default)]
    ready: bool,
    partial: Option<String>,
    #[serde(rename = "final")]
    done: Option<String>,
    error: Option<String>,
}

impl std::fmt::Debug for PocketSphinx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PocketSphinx")
            .field("config", &self.pool.config)
            .finish()
    }
}

impl PocketSphinx {
    pub fn new(config: PocketSphinxConfig) -> Self {
        PocketSphinx {
            pool: Arc::new(Pool {
                config,
                spares: Mutex::new(Vec::new()),
                starting: AtomicUsize::new(0),
            }),
        }
    }

    /// Starts loading spares up to `warm_workers` in the background (needs
    /// a tokio runtime; does nothing outside one).
    pub fn warm_up(&self) {
        Pool::refill(&self.pool);
    }

    /// Spares loaded and waiting.
    pub fn warm(&self) -> usize {
        self.pool.lock().len()
    }
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Worker>> {
        self.spares.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A loaded spare that is still alive, if any.
    fn take(&self) -> Option<Worker> {
        let mut spares = self.lock();
        while let Some(mut w) = spares.pop() {
            if matches!(w.child.try_wait(), Ok(None)) {
                return Some(w);
            }
        }
        None
    }

    fn refill(pool: &Arc<Pool>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        loop {
            let have = pool.lock().len() + pool.starting.load(Ordering::SeqCst);
            if have >= pool.config.warm_workers {
                return;
            }
            pool.starting.fetch_add(1, Ordering::SeqCst);
            let p = pool.clone();
            // Its own span: a spare serves whichever call comes next, not
            // the one that was opening when it was started.
            handle.spawn(
                async move {
                    match start_worker(&p.config.python).await {
                        Ok(w) => p.lock().push(w),
                        Err(e) => tracing::warn!(error = %e, "cannot start a spare recognizer"),
                    }
                    p.starting.fetch_sub(1, Ordering::SeqCst);
                }
                .instrument(tracing::info_span!("recognizer_spare")),
            );
        }
    }
}

/// Starts a worker and waits until its model is loaded.
async fn start_worker(python: &str) -> Result<Worker, ProviderError> {
    let mut child = Command::new(python)
        .arg("-c")
        .arg(WORKER)
        .arg(DECODER_OPTIONS)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            ProviderError::Config(format!(
                "cannot run the Python interpreter {python:?} for the PocketSphinx recognizer \
                 ({e}); install python3 and `pip install pocketsphinx==5.1.1`, or set \
                 [speech] python"
            ))
        })?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(ProviderError::Config(
            "the recognizer's pipes could not be opened".into(),
        ));
    };
    // Forwards the worker's stderr to tracing; ends with the process. The
    // pid ties its lines to the call the worker serves (logged at open).
    let pid = child.id().unwrap_or_default();
    tokio::spawn(
        async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::warn!(pid, "recognizer: {line}");
            }
        }
        .in_current_span(),
    );
    let mut worker = Worker {
        child,
        stdin,
        stdout: BufReader::new(stdout).lines(),
    };
    let first = tokio::time::timeout(READY_TIMEOUT, worker.stdout.next_line()).await;
    match first {
        Err(_) => Err(ProviderError::Unreachable(format!(
            "the PocketSphinx recognizer did not load its model within {}s",
            READY_TIMEOUT.as_secs()
        ))),
        Ok(Err(e)) => Err(ProviderError::Unreachable(format!(
            "cannot read from the PocketSphinx recognizer: {e}"
        ))),
        Ok(Ok(None)) => {
            let status = worker.child.wait().await.map(|s| s.to_string());
            Err(ProviderError::Config(format!(
                "the Python interpreter {python:?} exited before the PocketSphinx recognizer \
                 started ({}); is it Python 3 with `pip install pocketsphinx==5.1.1`?",
                status.unwrap_or_else(|e| e.to_string())
            )))
        }
        Ok(Ok(Some(line))) => match serde_json::from_str::<Message>(&line) {
            Ok(m) if m.ready => Ok(worker),
            Ok(Message {
                error: Some(error), ..
            }) => Err(ProviderError::Config(error)),
            _ => Err(ProviderError::Unreachable(format!(
                "the PocketSphinx recognizer said {line:?} instead of ready"
            ))),
        },
    }
}

#[async_trait::async_trait]
impl Stt for PocketSphinx {
    async fn open(&self) -> Result<Box<dyn SttStream>, ProviderError> {
        let worker = match self.pool.take() {
            Some(w) => w,
            None => start_worker(&self.pool.config.python).await?,
        };
        tracing::debug!(pid = worker.child.id(), "recognizer opened");
        Pool::refill(&self.pool);
        PocketSphinxStream::start(worker).map(|s| Box::new(s) as Box<dyn SttStream>)
    }
}

/// What the writer task sends to the worker.
enum ToWorker {
    /// 16 kHz audio, little-endian.
    Audio(Vec<u8>),
    EndOfTurn,
}

/// One call's recognition.
struct PocketSphinxStream {
    /// Killed when the stream is dropped.
    _child: Child,
    to_worker: mpsc::Sender<ToWorker>,
    from_worker: mpsc::Receiver<Result<Transcript, ProviderError>>,
    /// Answers made here without asking the worker (an empty turn).
    local: VecDeque<Transcript>,
    writer: JoinHandle<()>,
    reader: JoinHandle<()>,
    up: Resampler,
    gate: Gate,
    /// Audio of this turn has been sent.
    sent: bool,
    /// Scratch for one frame's resampled samples.
    wide: Vec<i16>,
}

impl Drop for PocketSphinxStream {
    fn drop(&mut self) {
        self.writer.abort();
        self.reader.abort();
    }
}

impl PocketSphinxStream {
    fn start(worker: Worker) -> Result<Self, ProviderError> {
        let Worker {
            child,
            mut stdin,
            mut stdout,
        } = worker;
        let (to_worker, mut queue) = mpsc::channel::<ToWorker>(QUEUE_FRAMES);
        let writer = tokio::spawn(
            async move {
                while let Some(msg) = queue.recv().await {
                    let (kind, payload) = match &msg {
                        ToWorker::Audio(pcm) => (b'A', pcm.as_slice()),
                        ToWorker::EndOfTurn => (b'E', &[][..]),
                    };
                    let mut head = [kind, 0, 0, 0, 0];
                    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
                    head[1..].copy_from_slice(&len.to_le_bytes());
                    let wrote = async {
                        stdin.write_all(&head).await?;
                        stdin.write_all(payload).await?;
                        if matches!(msg, ToWorker::EndOfTurn) {
                            stdin.flush().await?;
                        }
                        Ok::<_, std::io::Error>(())
                    };
                    if let Err(e) = wrote.await {
                        tracing::warn!(error = %e, "cannot write to the recognizer");
                        return;
                    }
                }
            }
            .in_current_span(),
        );
        let (results, from_worker) = mpsc::channel(64);
        let reader = tokio::spawn(
            async move {
                loop {
                    let line = match stdout.next_line().await {
                        Ok(Some(line)) => line,
                        Ok(None) => {
                            let _ = results
                                .send(Err(ProviderError::Unreachable(
                                    "the PocketSphinx recognizer exited".into(),
                                )))
                                .await;
                            return;
                        }
                        Err(e) => {
                            let _ = results
                                .send(Err(ProviderError::Unreachable(format!(
                                    "cannot read from the PocketSphinx recognizer: {e}"
                                ))))
                                .await;
                            return;
                        }
                    };
                    match serde_json::from_str::<Message>(&line) {
                        Ok(Message {
                            partial: Some(text),
                            ..
                        }) => {
                            // Partials are advisory: when nobody reads them
                            // they are dropped rather than queued.
                            let _ = results.try_send(Ok(Transcript {
                                text,
                                is_final: false,
                            }));
                        }
                        Ok(Message {
                            done: Some(text), ..
                        }) => {
                            let t = Transcript {
                                text,
                                is_final: true,
                            };
                            if results.send(Ok(t)).await.is_err() {
                                return;
                            }
                        }
                        Ok(Message { error: Some(e), .. }) => {
                            let _ = results.send(Err(ProviderError::Refused(e))).await;
                            return;
                        }
                        _ => tracing::warn!(%line, "the recognizer said something unexpected"),
                    }
                }
            }
            .in_current_span(),
        );
        Ok(PocketSphinxStream {
            _child: child,
            to_worker,
            from_worker,
            local: VecDeque::new(),
            writer,
            reader,
            up: Resampler::new(8000, 16000).map_err(|e| ProviderError::Config(e.to_string()))?,
            gate: Gate::new(),
            sent: false,
            wide: Vec::with_capacity(2 * FRAME_SAMPLES + 16),
        })
    }

    fn send(&mut self, msg: ToWorker) -> Result<(), ProviderError> {
        self.to_worker.try_send(msg).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ProviderError::Unreachable(
                "the PocketSphinx recognizer is more than 10 s behind".into(),
            ),
            mpsc::error::TrySendError::Closed(_) => {
                ProviderError::Unreachable("the PocketSphinx recognizer has stopped".into())
            }
        })
    }

    fn send_wide(&mut self) -> Result<(), ProviderError> {
        if self.wide.is_empty() {
            return Ok(());
        }
        let bytes = self.wide.iter().flat_map(|s| s.to_le_bytes()).collect();
        self.wide.clear();
        self.sent = true;
        self.send(ToWorker::Audio(bytes))
    }
}

#[async_trait::async_trait]
impl SttStream for PocketSphinxStream {
    async fn push(&mut self, frame: &[i16]) -> Result<(), ProviderError> {
        for f in self.gate.push(frame) {
            self.up
                .push(&f, &mut self.wide)
                .map_err(|e| ProviderError::Refused(e.to_string()))?;
        }
        self.send_wide()
    }

    /// On a wideband call the recognizer hears the codec's own 16 kHz
    /// audio, not the 8 kHz frame brought back up: no resampling, and the
    /// 4-8 kHz band that telephone speech recognition otherwise lacks. The
    /// gate still decides on the 8 kHz frame.
    async fn push_frame(
        &mut self,
        frame: &[i16],
        wide: Option<&[i16]>,
    ) -> Result<(), ProviderError> {
        let Some(wide) = wide else {
            return self.push(frame).await;
        };
        for f in self.gate.push_with(frame, wide) {
            self.wide.extend_from_slice(&f);
        }
        self.send_wide()
    }

    async fn end_of_turn(&mut self) -> Result<(), ProviderError> {
        // What is still queued belongs to earlier turns: partials nobody
        // read, or a final that came after its reader gave up.
        while let Ok(old) = self.from_worker.try_recv() {
            old?;
        }
        self.gate.end_of_turn();
        if !self.sent {
            self.local.push_back(Transcript {
                text: String::new(),
                is_final: true,
            });
            return Ok(());
        }
        self.up
            .flush(&mut self.wide)
            .map_err(|e| ProviderError::Refused(e.to_string()))?;
        self.send_wide()?;
        self.sent = false;
        self.send(ToWorker::EndOfTurn)
    }

    async fn next(&mut self) -> Option<Result<Transcript, ProviderError>> {
        if let Some(t) = self.local.pop_front() {
            return Some(Ok(t));
        }
        self.from_worker.recv().await
    }
}

/// Lets speech through with a little silence around it; drops the rest.
struct Gate {
    vad: EnergyVad,
    /// The last frames before speech.
    preroll: VecDeque<Vec<i16>>,
    /// Frames since the last voiced one; `None` while closed.
    open: Option<usize>,
}

impl Gate {
    fn new() -> Self {
        Gate {
            vad: EnergyVad::new(VadConfig::default()),
            preroll: VecDeque::with_capacity(PREROLL_FRAMES + 1),
            open: None,
        }
    }

    /// The frames to send for this one (none, it, or the pre-roll and it).
    fn push(&mut self, frame: &[i16]) -> Vec<Vec<i16>> {
        self.push_with(frame, frame)
    }

    /// [`Gate::push`] deciding on the 8 kHz `frame` but keeping and giving
    /// `payload`, the same 20 ms in the form the recognizer gets.
    fn push_with(&mut self, frame: &[i16], payload: &[i16]) -> Vec<Vec<i16>> {
        let voice = self.vad.is_voice(frame);
        if EnergyVad::level_dbfs(frame) < SILENT_DBFS {
            self.open = self.open.map(|n| n + 1).filter(|&n| n <= HANGOVER_FRAMES);
            return Vec::new();
        }
        match (self.open, voice) {
            (_, true) => {
                self.open = Some(0);
                let mut out: Vec<Vec<i16>> = self.preroll.drain(..).collect();
                out.push(payload.to_vec());
                out
            }
            (Some(n), false) if n < HANGOVER_FRAMES => {
                self.open = Some(n + 1);
                vec![payload.to_vec()]
            }
            _ => {
                self.open = None;
                if self.preroll.len() == PREROLL_FRAMES {
                    self.preroll.pop_front();
                }
                self.preroll.push_back(payload.to_vec());
                Vec::new()
            }
        }
    }

    /// Closes the gate: the next turn starts with its own pre-roll.
    fn end_of_turn(&mut self) {
        self.open = None;
        self.preroll.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voiced() -> Vec<i16> {
        (0..FRAME_SAMPLES)
            .map(|i| ((i as f32 * 0.157).sin() * 8000.0) as i16)
            .collect()
    }

    #[test]
    fn the_gate_keeps_speech_with_its_margins_and_drops_long_silence() {
        let mut g = Gate::new();
        // Line noise around -60 dBFS.
        let quiet: Vec<i16> = (0..FRAME_SAMPLES)
            .map(|i| if i % 2 == 0 { 30 } else { -30 })
            .collect();
        let sent: usize = (0..50).map(|_| g.push(&quiet).len()).sum();
        assert_eq!(sent, 0, "quiet alone is not sent");
        assert_eq!(g.push(&voiced()).len(), PREROLL_FRAMES + 1);
        let after: usize = (0..100).map(|_| g.push(&quiet).len()).sum();
        assert_eq!(after, HANGOVER_FRAMES);
        g.end_of_turn();
        assert_eq!(
            g.push(&voiced()).len(),
            1,
            "a new turn has no stale pre-roll"
        );
        let zeros = vec![0i16; FRAME_SAMPLES];
        assert!(g.push(&zeros).is_empty(), "digital silence is never sent");
        assert_eq!(g.push(&quiet).len(), 1, "the gate stayed open through it");
    }
}
