//! Call recordings: a WAV file per recorded call, written while the call
//! runs by a task of its own fed from the media tap ([`crate::media::tap`]),
//! never from the media path itself; its row, `recording.completed`, the
//! paths the API serves, and the retention cleanup.
//!
//! Owns: the file layout (`[recordings] dir`/`<call id>.wav`, the name
//! only ever built from a call id that passes [`file_name`], never from
//! what a request carries), placing both tracks on the call's clock
//! ([`Aligner`]), pause and resume, the header fixed up at the end,
//! closing the files a crash left open ([`Recordings::recover`]: the
//! header from the file's length, the row completed, `recording.completed`
//! once), and deleting files (`DELETE`, retention).
//!
//! Time alignment: the file's sample `n` is `n / 8000` seconds after the
//! recording started (the answer). Each frame from the tap carries the
//! instant it passed; a track's frames are laid end to end while they come
//! on time, and a frame that comes more than [`GAP_SLACK`] after the end
//! of the track's last one starts where its instant says, the gap left
//! silent. So silence suppression, hold, a caller who sends nothing and a
//! tap frame lost to a slow writer all stay silent gaps of the right
//! length, and the two tracks never drift apart.
//!
//! Must not: block the call or its media: the tap drops what the writer
//! cannot take (counted), a full disk ends the file (status `failed`), not
//! the call.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::media::tap::{DEFAULT_CAPACITY, TapFrame, TapReceiver, Track};
use crate::media::{CLOCK_RATE, MediaHandle};
use crate::model::{EventType, Recording, RecordingChannels, RecordingStatus};
use crate::store::Store;
use crate::store::recordings::{RecordingRecord, RecordingTotals};

/// A track's frame that comes this much after the end of its previous one
/// starts a new run where its instant says (the gap is silence).
pub const GAP_SLACK: Duration = Duration::from_millis(60);
/// Audio kept in memory before it is written: a frame may still arrive
/// for this span (the tap's queue, the writer's wake-up).
const HORIZON: Duration = Duration::from_millis(400);
/// How often the writer writes what is past the horizon.
const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// Size of the RIFF/WAVE header we write (PCM, no extra chunks).
pub const HEADER_LEN: u64 = 44;
/// Longest call id a file name is built from.
const MAX_ID_LEN: usize = 64;

/// The file name of call `call_id`'s recording, or `None` when the id is
/// not one we issue (`call_` and Crockford base-32 / ASCII alphanumerics):
/// nothing else ever reaches a path.
pub fn file_name(call_id: &str) -> Option<String> {
    let rest = call_id.strip_prefix("call_")?;
    let ok = !rest.is_empty()
        && call_id.len() <= MAX_ID_LEN
        && rest.bytes().all(|b| b.is_ascii_alphanumeric());
    ok.then(|| format!("{call_id}.wav"))
}

/// Samples since `start` at `at`, on the 8 kHz clock.
fn samples_at(start: Instant, at: Instant) -> u64 {
    let nanos = at.saturating_duration_since(start).as_nanos();
    u64::try_from(nanos * u128::from(CLOCK_RATE) / 1_000_000_000).unwrap_or(u64::MAX)
}

/// A RIFF/WAVE header for 16-bit PCM at 8 kHz, `data_len` bytes of samples.
pub fn wav_header(channels: u16, data_len: u32) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    let block_align = channels * 2;
    let byte_rate = CLOCK_RATE * u32::from(block_align);
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&data_len.saturating_add(36).to_le_bytes());
    h[8..12].copy_from_slice(b"WAVE");
    h[12..16].copy_from_slice(b"fmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes());
    h[22..24].copy_from_slice(&channels.to_le_bytes());
    h[24..28].copy_from_slice(&CLOCK_RATE.to_le_bytes());
    h[28..32].copy_from_slice(&byte_rate.to_le_bytes());
    h[32..34].copy_from_slice(&block_align.to_le_bytes());
    h[34..36].copy_from_slice(&16u16.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_len.to_le_bytes());
    h
}

/// Both tracks placed on the recording's clock, sans IO. See the module
/// documentation.
#[derive(Debug)]
pub struct Aligner {
    start: Instant,
    channels: RecordingChannels,
    /// Samples already handed out by [`Aligner::take`].
    flushed: u64,
    /// Caller and agent, from sample `flushed` on.
    inbound: VecDeque<i16>,
    outbound: VecDeque<i16>,
    /// Where each track's next frame goes when it comes on time.
    cursor_in: u64,
    cursor_out: u64,
}

impl Aligner {
    pub fn new(start: Instant, channels: RecordingChannels) -> Self {
        Aligner {
            start,
            channels,
            flushed: 0,
            inbound: VecDeque::new(),
            outbound: VecDeque::new(),
            cursor_in: 0,
            cursor_out: 0,
        }
    }

    /// Places one frame; `silent` writes zeros in its place (paused).
    pub fn push(&mut self, track: Track, samples: &[i16], at: Instant, silent: bool) {
        let len = samples.len() as u64;
        // An inbound frame is handed on once its 20 ms have arrived; an
        // outbound one is sent as its 20 ms start.
        let due = samples_at(self.start, at);
        let due = match track {
            Track::Inbound => due.saturating_sub(len),
            Track::Outbound => due,
        };
        let slack = samples_at(self.start, self.start + GAP_SLACK);
        let (cursor, buf) = match track {
            Track::Inbound => (&mut self.cursor_in, &mut self.inbound),
            Track::Outbound => (&mut self.cursor_out, &mut self.outbound),
        };
        if due > cursor.saturating_add(slack) {
            *cursor = due;
        }
        // Too late to place where it belongs: it goes at the earliest
        // sample not written yet.
        let at = (*cursor).max(self.flushed);
        let offset = usize::try_from(at - self.flushed).unwrap_or(usize::MAX);
        let end = offset.saturating_add(samples.len());
        if buf.len() < end {
            buf.resize(end, 0);
        }
        if !silent {
            for (slot, &s) in buf.range_mut(offset..end).zip(samples) {
                *slot = s;
            }
        }
        *cursor = at + len;
    }

    /// Samples placed so far (the longer track's end).
    pub fn end(&self) -> u64 {
        self.cursor_in.max(self.cursor_out).max(self.flushed)
    }

    /// Hands out, as little-endian PCM frames (interleaved caller/agent
    /// for dual, mixed for mono), every sample before `upto`; a track
    /// with nothing there is silent.
    pub fn take(&mut self, upto: u64, out: &mut Vec<u8>) {
        if upto <= self.flushed {
            return;
        }
        let n = usize::try_from(upto - self.flushed).unwrap_or(usize::MAX);
        for i in 0..n {
            let caller = self.inbound.get(i).copied().unwrap_or(0);
            let agent = self.outbound.get(i).copied().unwrap_or(0);
            match self.channels {
                RecordingChannels::Dual => {
                    out.extend_from_slice(&caller.to_le_bytes());
                    out.extend_from_slice(&agent.to_le_bytes());
                }
                RecordingChannels::Mono => {
                    out.extend_from_slice(&caller.saturating_add(agent).to_le_bytes());
                }
            }
        }
        self.inbound.drain(..n.min(self.inbound.len()));
        self.outbound.drain(..n.min(self.outbound.len()));
        self.flushed = upto;
    }

    /// Samples on the clock at `now`.
    pub fn clock(&self, now: Instant) -> u64 {
        samples_at(self.start, now)
    }
}

/// Fixes the header of a file a crash left open (its `data` length still
/// 0) from the file's length, dropping a torn last frame: the audio
/// written up to the crash (all but the last [`HORIZON`] and what was not
/// flushed) plays. `None` when there is no file.
pub async fn repair(
    path: &Path,
    channels: RecordingChannels,
) -> Result<Option<RecordingTotals>, std::io::Error> {
    let mut file = match tokio::fs::OpenOptions::new().write(true).open(path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata().await?.len();
    let block = u64::from(channels.count()) * 2;
    // A WAV data chunk is at most u32::MAX bytes (RIFF's 32-bit sizes).
    let data_len = len.saturating_sub(HEADER_LEN).min(u64::from(u32::MAX) - 36);
    let data_len = data_len - data_len % block;
    file.set_len(HEADER_LEN + data_len).await?;
    file.seek(std::io::SeekFrom::Start(0)).await?;
    let data_len32 = u32::try_from(data_len).unwrap_or(u32::MAX);
    file.write_all(&wav_header(channels.count(), data_len32))
        .await?;
    file.flush().await?;
    file.sync_data().await?;
    Ok(Some(totals_of(data_len, channels, Duration::ZERO)))
}

/// The totals of a file with `data_len` bytes of samples.
fn totals_of(data_len: u64, channels: RecordingChannels, paused: Duration) -> RecordingTotals {
    let bytes_per_second = u64::from(CLOCK_RATE) * u64::from(channels.count()) * 2;
    let ms = |d: u64| i64::try_from(d).unwrap_or(i64::MAX);
    RecordingTotals {
        duration_ms: ms(data_len * 1000 / bytes_per_second),
        size_bytes: ms(data_len + HEADER_LEN),
        paused_ms: ms(u64::try_from(paused.as_millis()).unwrap_or(u64::MAX)),
    }
}

/// `recording.completed` of `row`, test or live as its call.
fn completed_event(
    row: &RecordingRecord,
    livemode: bool,
) -> Result<crate::store::events::NewEvent, crate::store::StoreError> {
    crate::webhook::event::recording_event(
        EventType::RecordingCompleted,
        Recording::from(row.clone()),
        livemode,
    )
}

/// Why a recording was not deleted.
#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("the call has no recording")]
    NotFound,
    #[error("the call is still being recorded")]
    StillRecording,
    #[error("the file cannot be removed: {0}")]
    Io(std::io::Error),
    #[error(transparent)]
    Store(crate::store::StoreError),
}

/// The recordings of this node: where files go, and the store.
#[derive(Clone)]
pub struct Recordings {
    dir: PathBuf,
    store: Store,
    node: String,
}

/// What the call task holds of a running recording.
pub struct Recorder {
    call_id: String,
    /// `None` once stopped: closing it tells the writer the call is over.
    paused: Option<watch::Sender<bool>>,
    task: JoinHandle<Result<RecordingTotals, std::io::Error>>,
    /// Pause spans as offsets from the start, for the transcript.
    spans: Vec<(Duration, Option<Duration>)>,
    start: Instant,
}

impl Recordings {
    pub fn new(dir: PathBuf, store: Store, node: String) -> Self {
        Recordings { dir, store, node }
    }

    /// The file of call `call_id`'s recording, if the id is one we issue.
    pub fn path(&self, call_id: &str) -> Option<PathBuf> {
        file_name(call_id).map(|name| self.dir.join(name))
    }

    /// This node's id: the disk a recording row names.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// This node's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts recording call `call_id` from now on; `None` (logged) when
    /// the file or the tap cannot be had: the call goes on unrecorded.
    pub async fn start(
        &self,
        call_id: &str,
        media: &MediaHandle,
        channels: RecordingChannels,
    ) -> Option<Recorder> {
        let path = self.path(call_id)?;
        if let Err(e) = tokio::fs::create_dir_all(&self.dir).await {
            tracing::warn!(error = %e, dir = %self.dir.display(), "recordings directory not created");
            return None;
        }
        let file = match tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
        {
            Ok(file) => file,
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "recording not started");
                return None;
            }
        };
        let tap = match media.tap(DEFAULT_CAPACITY, "recorder").await {
            Ok(tap) => tap,
            Err(_) => {
                let _ = tokio::fs::remove_file(&path).await;
                return None;
            }
        };
        if let Err(e) = self
            .store
            .recording_started(call_id, channels, &self.node)
            .await
        {
            tracing::warn!(error = %e, "recording row not written; not recording");
            let _ = tokio::fs::remove_file(&path).await;
            return None;
        }
        let start = Instant::now();
        let (paused, paused_rx) = watch::channel(false);
        let task = tokio::spawn(write(file, tap, Aligner::new(start, channels), paused_rx));
        tracing::info!(channels = channels.as_str(), "recording started");
        Some(Recorder {
            call_id: call_id.to_owned(),
            paused: Some(paused),
            task,
            spans: Vec::new(),
            start,
        })
    }

    /// Deletes call `call_id`'s file and marks its row.
    pub async fn delete(&self, call_id: &str) -> Result<(), DeleteError> {
        let row = match self.store.get_recording(call_id).await {
            Ok(row) => row,
            Err(crate::store::StoreError::NotFound) => return Err(DeleteError::NotFound),
            Err(e) => return Err(DeleteError::Store(e)),
        };
        match row.status {
            RecordingStatus::Recording => return Err(DeleteError::StillRecording),
            RecordingStatus::Deleted => return Err(DeleteError::NotFound),
            RecordingStatus::Completed | RecordingStatus::Failed => {}
        }
        if let Some(path) = self.path(call_id) {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(DeleteError::Io(e)),
            }
        }
        match self.store.recording_deleted(call_id).await {
            Ok(()) => Ok(()),
            Err(crate::store::StoreError::NotFound) => Err(DeleteError::NotFound),
            Err(e) => Err(DeleteError::Store(e)),
        }
    }

    /// Deletes the recordings on this node older than `retain`; returns
    /// how many.
    pub async fn clean(&self, retain: Duration) -> usize {
        let Ok(retain) = chrono::Duration::from_std(retain) else {
            return 0;
        };
        let before = crate::store::now() - retain;
        let expired = match self.store.recordings_expired(&self.node, before, 500).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "expired recordings not listed");
                return 0;
            }
        };
        let mut n = 0;
        for id in expired {
            match self.delete(&id).await {
                Ok(()) => n += 1,
                Err(e) => {
                    tracing::warn!(error = %e, call_id = %id, "expired recording not deleted")
                }
            }
        }
        n
    }

    /// Closes the recordings a crash left open: on `node`'s disk (this
    /// node's at start, before any call of this run records; a dead node's
    /// when its files are on this node's disk too, a shared `[recordings]
    /// dir`). Each file's header is fixed from its length ([`repair`]) and
    /// its row completed with `recording.completed`, once (the row moves
    /// out of `recording` in the same transaction); `failed` when the file
    /// is gone or cannot be fixed. A dead node's recording whose file is
    /// not here is left for that node's own start. Returns how many rows
    /// this call closed.
    pub async fn recover(&self, node: &str, outbox: &crate::webhook::Outbox) -> usize {
        let left = match self.store.recordings_left(node).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, node, "recordings left open not listed");
                return 0;
            }
        };
        let mine = node == self.node;
        let mut closed = 0;
        for row in left {
            let Some(path) = self.path(&row.call_id) else {
                continue;
            };
            let repaired = repair(&path, row.channels).await;
            let (totals, failed) = match repaired {
                Ok(Some(totals)) => (totals, false),
                // Not on this disk: the dead node's own start closes it.
                Ok(None) if !mine => continue,
                Ok(None) => {
                    tracing::warn!(call_id = %row.call_id, "recording left open has no file");
                    (zero_totals(), true)
                }
                Err(e) => {
                    tracing::warn!(call_id = %row.call_id, error = %e, "recording left open not repaired");
                    (zero_totals(), true)
                }
            };
            match outbox
                .recording_completed(&row.call_id, totals, failed, &completed_event)
                .await
            {
                Ok(_) => {
                    closed += 1;
                    tracing::info!(
                        call_id = %row.call_id,
                        failed,
                        duration_ms = totals.duration_ms,
                        "recording left open by a crash closed"
                    );
                }
                // Another node closed it first.
                Err(crate::store::StoreError::NotFound) => {}
                Err(e) => {
                    tracing::warn!(call_id = %row.call_id, error = %e, "recording left open not closed")
                }
            }
        }
        closed
    }

    /// Runs the retention cleanup every `every` until the process ends.
    pub fn spawn_cleanup(&self, retain: Duration, every: Duration) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
            loop {
                tick.tick().await;
                let n = this.clean(retain).await;
                if n > 0 {
                    tracing::info!(deleted = n, "expired recordings deleted");
                }
            }
        })
    }
}

impl Recorder {
    /// Pauses (true) or resumes (false) the recording: frames while paused
    /// are written as silence, so the file keeps the call's length.
    pub fn set_paused(&mut self, paused: bool) {
        let Some(sender) = &self.paused else {
            return;
        };
        if *sender.borrow() == paused {
            return;
        }
        let at = self.start.elapsed();
        if paused {
            self.spans.push((at, None));
        } else if let Some(span) = self.spans.last_mut() {
            span.1 = Some(at);
        }
        tracing::info!(paused, "recording paused or resumed");
        sender.send_replace(paused);
    }

    /// Ends the file's audio now (the call's end); the writer closes it
    /// in the background and [`Recorder::finish`] waits for it.
    pub fn stop(&mut self) {
        if self.paused.take().is_some() {
            let now = self.start.elapsed();
            if let Some(span) = self.spans.last_mut() {
                span.1.get_or_insert(now);
            }
        }
    }

    /// The paused spans, as (start, end) offsets from the recording's start.
    pub fn paused_spans(&self) -> Vec<(Duration, Duration)> {
        let now = self.start.elapsed();
        self.spans
            .iter()
            .map(|(from, to)| (*from, to.unwrap_or(now)))
            .collect()
    }

    /// Waits for the file to be closed (stopping it first if
    /// [`Recorder::stop`] was not called), completes its row with
    /// `recording.completed`.
    pub async fn finish(mut self, outbox: &crate::webhook::Outbox) -> Option<RecordingRecord> {
        self.stop();
        let Recorder { call_id, task, .. } = self;
        let (totals, failed) = match task.await {
            Ok(Ok(totals)) => (totals, false),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "recording failed");
                (zero_totals(), true)
            }
            Err(e) => {
                tracing::warn!(error = %e, "recording task failed");
                (zero_totals(), true)
            }
        };
        match outbox
            .recording_completed(&call_id, totals, failed, &completed_event)
            .await
        {
            Ok(row) => {
                tracing::info!(
                    duration_ms = row.duration_ms,
                    size_bytes = row.size_bytes,
                    "recording completed"
                );
                Some(row)
            }
            Err(e) => {
                tracing::warn!(error = %e, "recording row not completed");
                None
            }
        }
    }
}

fn zero_totals() -> RecordingTotals {
    RecordingTotals {
        duration_ms: 0,
        size_bytes: 0,
        paused_ms: 0,
    }
}

/// The writer task: tap frames into the aligner, past-the-horizon audio to
/// the file, until the call ends (the pause channel closes) or the media
/// session does; then the rest and the header.
async fn write(
    mut file: tokio::fs::File,
    mut tap: TapReceiver,
    mut aligner: Aligner,
    mut paused: watch::Receiver<bool>,
) -> Result<RecordingTotals, std::io::Error> {
    let channels = aligner.channels;
    file.write_all(&wav_header(channels.count(), 0)).await?;
    let mut data_len: u64 = 0;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let horizon = aligner.clock(aligner.start + HORIZON);
    let mut is_paused = false;
    let mut paused_since: Option<Instant> = None;
    let mut paused_total = Duration::ZERO;
    let mut tap_open = true;
    let end = loop {
        tokio::select! {
            biased;
            changed = paused.changed() => match changed {
                Ok(()) => {
                    is_paused = *paused.borrow_and_update();
                    match (is_paused, paused_since) {
                        (true, None) => paused_since = Some(Instant::now()),
                        (false, Some(since)) => {
                            paused_total += since.elapsed();
                            paused_since = None;
                        }
                        _ => {}
                    }
                }
                // The call is over.
                Err(_) => break Instant::now(),
            },
            frame = tap.recv(), if tap_open => match frame {
                Some(TapFrame { track, samples, at }) => {
                    aligner.push(track, &samples, at, is_paused);
                }
                // The media session ended first; wait for the call's end
                // to know the length.
                None => tap_open = false,
            },
            _ = flush.tick() => {
                let upto = aligner.clock(Instant::now()).saturating_sub(horizon);
                aligner.take(upto, &mut buf);
                if !buf.is_empty() {
                    file.write_all(&buf).await?;
                    data_len += buf.len() as u64;
                    buf.clear();
                }
            }
        }
    };
    // What the tap still holds belongs to the call.
    while let Ok(TapFrame { track, samples, at }) = tap.try_recv() {
        aligner.push(track, &samples, at, is_paused);
    }
    if let Some(since) = paused_since {
        paused_total += since.elapsed();
    }
    let upto = aligner.clock(end).max(aligner.end());
    aligner.take(upto, &mut buf);
    file.write_all(&buf).await?;
    data_len += buf.len() as u64;
    let data_len32 = u32::try_from(data_len).unwrap_or(u32::MAX);
    file.seek(std::io::SeekFrom::Start(0)).await?;
    file.write_all(&wav_header(channels.count(), data_len32))
        .await?;
    file.flush().await?;
    file.sync_data().await?;
    Ok(totals_of(data_len, channels, paused_total))
}

/// Recording settings merged for one call, `levels` from the least
/// specific (the agent's) to the most (the call's): each level's fields
/// over those before it, so the call's win over the campaign's over the
/// number's over the agent's.
pub fn merged(
    levels: &[Option<&crate::model::RecordingSettings>],
) -> crate::model::RecordingSettings {
    levels
        .iter()
        .flatten()
        .fold(crate::model::RecordingSettings::default(), |acc, level| {
            level.over(&acc)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn only_issued_ids_make_file_names() {
        assert_eq!(
            file_name("call_01JDW8Q1M7").as_deref(),
            Some("call_01JDW8Q1M7.wav")
        );
        for bad in [
            "call_../x",
            "../call_1",
            "call_",
            "call_a/b",
            "call_a.wav",
            "call_%2e%2e",
            "agt_1",
            "call_a\0",
        ] {
            assert_eq!(file_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn frames_on_time_run_on_and_late_ones_leave_silence() {
        let start = Instant::now();
        let mut a = Aligner::new(start, RecordingChannels::Dual);
        // The agent speaks from 0 to 40 ms, then from 200 ms.
        a.push(Track::Outbound, &[1; 160], start, false);
        a.push(Track::Outbound, &[1; 160], start + ms(20), false);
        a.push(Track::Outbound, &[2; 160], start + ms(200), false);
        // The caller's frame handed on at 120 ms covers 100..120 ms.
        a.push(Track::Inbound, &[3; 160], start + ms(120), false);
        let mut out = Vec::new();
        a.take(a.end(), &mut out);
        let frames: Vec<(i16, i16)> = out
            .chunks_exact(4)
            .map(|c| {
                (
                    i16::from_le_bytes([c[0], c[1]]),
                    i16::from_le_bytes([c[2], c[3]]),
                )
            })
            .collect();
        assert_eq!(frames.len(), 1760);
        assert_eq!(frames[0], (0, 1));
        assert_eq!(frames[319], (0, 1));
        assert_eq!(frames[320], (0, 0));
        assert_eq!(frames[800], (3, 0));
        assert_eq!(frames[1600], (0, 2));
    }

    #[test]
    fn paused_frames_are_silent_and_mono_mixes() {
        let start = Instant::now();
        let mut a = Aligner::new(start, RecordingChannels::Mono);
        a.push(Track::Outbound, &[100; 160], start, false);
        a.push(Track::Inbound, &[50; 160], start + ms(20), false);
        a.push(Track::Outbound, &[100; 160], start + ms(20), true);
        let mut out = Vec::new();
        a.take(a.end(), &mut out);
        let s: Vec<i16> = out
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(s.len(), 320);
        assert_eq!(s[0], 150);
        assert_eq!(s[200], 0);
    }

    #[tokio::test]
    async fn a_torn_file_gets_its_header_from_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("call_1.wav");
        // The header as written at the start (no data yet), 1 s of dual
        // audio, and half a frame torn by the crash.
        let mut bytes = wav_header(2, 0).to_vec();
        bytes.extend(std::iter::repeat_n(7u8, 32_000 + 2));
        std::fs::write(&path, &bytes).unwrap();
        let totals = repair(&path, RecordingChannels::Dual)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(totals.duration_ms, 1000);
        assert_eq!(totals.size_bytes, 44 + 32_000);
        let fixed = std::fs::read(&path).unwrap();
        assert_eq!(fixed.len(), 44 + 32_000);
        let parsed = crate::media::wav::parse_header(&fixed).unwrap().unwrap();
        assert_eq!(parsed.data_len, 32_000);
        // A header cut short: an empty file that plays.
        std::fs::write(&path, b"RIFF").unwrap();
        let totals = repair(&path, RecordingChannels::Mono)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((totals.duration_ms, totals.size_bytes), (0, 44));
        assert_eq!(std::fs::read(&path).unwrap().len(), 44);
        assert!(
            repair(&dir.path().join("call_2.wav"), RecordingChannels::Dual)
                .await
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn the_most_specific_level_wins() {
        use crate::model::RecordingSettings;
        let agent = RecordingSettings {
            enabled: Some(true),
            channels: Some(RecordingChannels::Mono),
            announcement: Some("recorded".into()),
        };
        let number = RecordingSettings {
            enabled: Some(false),
            ..RecordingSettings::default()
        };
        let call = RecordingSettings {
            channels: Some(RecordingChannels::Dual),
            ..RecordingSettings::default()
        };
        let m = merged(&[Some(&agent), Some(&number), None, Some(&call)]);
        assert_eq!(m.enabled, Some(false));
        assert_eq!(m.channels, Some(RecordingChannels::Dual));
        assert_eq!(m.announcement.as_deref(), Some("recorded"));
        let on = RecordingSettings {
            enabled: Some(true),
            ..RecordingSettings::default()
        };
        assert!(merged(&[Some(&agent), Some(&number), Some(&on)]).is_enabled());
        assert!(!merged(&[]).is_enabled());
    }

    #[test]
    fn the_header_says_what_follows() {
        let h = wav_header(2, 32_000);
        let parsed = crate::media::wav::parse_header(&h).unwrap().unwrap();
        assert_eq!(parsed.format.channels, 2);
        assert_eq!(parsed.format.rate, 8000);
        assert_eq!(parsed.data_len, 32_000);
        assert_eq!(parsed.data_start, 44);
    }
}
