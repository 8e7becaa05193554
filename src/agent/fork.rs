//! Forks: one-way copies of a call's audio to listeners (live supervision,
//! analytics) in the Twilio Media Streams message format of
//! [`super::stream`] (`connected`, `start`, `media`, `stop`), from any
//! agent's `streams: [{"url", "track"}]`.
//!
//! Owns: one task per listener, connected through the outbound address
//! guard ([`crate::net::Guard`], as the `stream` agent), fed from the
//! call's media tap ([`crate::media::tap`]).
//!
//! Must not: slow the call. The tap hands frames over with `try_send` and
//! drops (and counts, `agentline_media_tap_dropped_frames_total{consumer =
//! "fork"}`) what a slow listener leaves in its bounded queue; the
//! socket's send buffer is kept small so a listener that stops reading
//! shows as drops within seconds, not after megabytes. Nothing a listener
//! sends is read but its close.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::SinkExt;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::stream::{
    CONNECT_TIMEOUT, ForkSettings, ForkTrack, StreamCall, connect_with, media_json, new_stream_sid,
    start_json, stop_json,
};
use crate::media::tap::{TapReceiver, Track};
use crate::net::Guard;

/// Frames of both tracks buffered for a listener (1 s).
pub const FORK_TAP_FRAMES: usize = 100;
/// The fork socket's send buffer: about 3 s of one track's messages.
const SEND_BUFFER: u32 = 32 * 1024;

/// The running forks of a call; dropping it (the call's end) stops them:
/// each sends `stop` if its listener still takes it.
pub struct Forks {
    _ended: watch::Sender<()>,
    tasks: Vec<JoinHandle<()>>,
}

impl Forks {
    /// Starts one task per listener on the taps given (one tap each).
    pub fn start(
        forks: Vec<(ForkSettings, TapReceiver)>,
        call: &StreamCall,
        guard: &Guard,
    ) -> Forks {
        let (ended, watch_ended) = watch::channel(());
        let tasks = forks
            .into_iter()
            .map(|(fork, tap)| {
                let span = tracing::info_span!("fork", call_id = %call.call_id);
                tokio::spawn(tracing::Instrument::instrument(
                    run(fork, call.clone(), guard.clone(), tap, watch_ended.clone()),
                    span,
                ))
            })
            .collect();
        Forks {
            _ended: ended,
            tasks,
        }
    }

    /// Ends the forks: each gets a second to send `stop`, then is cut.
    pub async fn stop(self) {
        let Forks { _ended, tasks } = self;
        drop(_ended);
        for task in tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(1), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

fn track_label(track: Track) -> &'static str {
    match track {
        Track::Inbound => "inbound",
        Track::Outbound => "outbound",
    }
}

fn wanted(setting: ForkTrack, track: Track) -> bool {
    matches!(
        (setting, track),
        (ForkTrack::Both, _)
            | (ForkTrack::Inbound, Track::Inbound)
            | (ForkTrack::Outbound, Track::Outbound)
    )
}

async fn run(
    fork: ForkSettings,
    call: StreamCall,
    guard: Guard,
    mut tap: TapReceiver,
    mut ended: watch::Receiver<()>,
) {
    let connected = tokio::select! {
        c = tokio::time::timeout(CONNECT_TIMEOUT, connect_with(&fork.url, &guard, Some(SEND_BUFFER))) => c,
        _ = ended.changed() => return,
    };
    let mut ws = match connected {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "fork listener unreachable; the call goes on");
            return;
        }
        Err(_) => {
            tracing::warn!("fork listener did not answer in time; the call goes on");
            return;
        }
    };
    let stream_sid = new_stream_sid();
    let mut sequence: u64 = 0;
    let mut next = || {
        sequence += 1;
        sequence.to_string()
    };
    let tracks: &[&str] = match fork.track {
        ForkTrack::Inbound => &["inbound"],
        ForkTrack::Outbound => &["outbound"],
        ForkTrack::Both => &["inbound", "outbound"],
    };
    let mut messages: Vec<Value> = vec![
        serde_json::json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}),
        start_json(&next(), &stream_sid, &call, tracks, &BTreeMap::new()),
    ];
    let started = Instant::now();
    let mut chunks: [u64; 2] = [0, 0];
    loop {
        for m in messages.drain(..) {
            // A listener that stops reading holds us here; the tap drops
            // meanwhile, and the call's end cuts the wait.
            tokio::select! {
                sent = ws.send(Message::text(m.to_string())) => {
                    if let Err(e) = sent {
                        tracing::info!(error = %e, "fork listener gone");
                        return;
                    }
                }
                _ = ended.changed() => return,
            }
        }
        tokio::select! {
            biased;
            _ = ended.changed() => break,
            frame = tap.recv() => match frame {
                Some(frame) if wanted(fork.track, frame.track) => {
                    let n = match frame.track {
                        Track::Inbound => 0,
                        Track::Outbound => 1,
                    };
                    chunks[n] += 1;
                    messages.push(media_json(
                        &next(),
                        &stream_sid,
                        track_label(frame.track),
                        chunks[n],
                        frame.at.saturating_duration_since(started),
                        &frame.samples,
                    ));
                }
                Some(_) => {}
                None => break,
            },
        }
    }
    let dropped = tap.dropped();
    if dropped > 0 {
        tracing::info!(dropped, "fork listener was slow; frames dropped");
    }
    let stop = stop_json(&next(), &stream_sid, &call);
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        let _ = ws.send(Message::text(stop.to_string())).await;
        let _ = ws.close(None).await;
    })
    .await;
}
