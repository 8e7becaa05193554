//! The `stream` agent: the call's audio goes to the team's own bot over a
//! WebSocket in the Twilio Media Streams message format, and the bot's
//! audio comes back and is played on the call.
//!
//! Owns: the connection (made through the outbound address guard,
//! [`crate::net::Guard`], resolving only through it, with a
//! connect timeout), the messages both ways, the bound on the bot's queued
//! audio and the acknowledgement of marks once the audio before them has
//! been played. Attached to the call's media session by an
//! [`AudioPort`] like the `voice` agent, so its frames never pass through
//! the call task.
//!
//! Messages we send: `connected`, `start`, `media` (the caller, 20 ms of
//! base64 µ-law each), `dtmf`, `mark` (acknowledgements) and `stop`. From
//! the bot we take `media` (any length, µ-law 8 kHz), `mark` and `clear`.
//! A frame we cannot read is logged and counted, never fatal.
//!
//! Must not: touch SIP or the call's state; it asks the call task to hang
//! up (the WebSocket closed) or to fail the call (the bot unreachable)
//! through [`StreamRequest`]s.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use utoipa::ToSchema;

use crate::media::g711::{linear_to_ulaw, ulaw_to_linear};
use crate::media::{AudioPort, Digit, PortCommand, PortEvent, PortPlayout};
use crate::net::Guard;

/// How long the bot gets to accept the connection (TCP, TLS and upgrade).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most of the bot's audio queued for playing (30 s); more is dropped and
/// counted.
const MAX_QUEUED_SAMPLES: u64 = 30 * 8000;
/// Marks waiting for their audio to play; more are acknowledged at once.
const MAX_PENDING_MARKS: usize = 1024;
/// Longest frame taken from the bot (a 1 MiB frame is 90 s of base64
/// µ-law, far past the queue's bound).
const MAX_FRAME_BYTES: usize = 1 << 20;
/// Largest mark name echoed back.
const MAX_MARK_NAME: usize = 256;
/// Most custom parameters, and their key and value lengths.
pub const MAX_PARAMETERS: usize = 32;
pub const MAX_PARAMETER_KEY: usize = 64;
pub const MAX_PARAMETER_VALUE: usize = 1024;
/// Bad frames from bots, by what was wrong.
pub const STREAM_BAD_FRAMES: &str = "agentline_stream_bad_frames_total";
/// Bot audio dropped because the queue was full, in samples.
pub const STREAM_DROPPED_SAMPLES: &str = "agentline_stream_dropped_samples_total";

/// Where the bot is and what it is told in `start`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamSettings {
    /// `ws://` or `wss://` URL of the bot.
    pub url: String,
    /// Sent as `start.customParameters`.
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
}

impl StreamSettings {
    /// What is wrong with the settings, as (field, message) pairs.
    pub fn problems(&self) -> Vec<(&'static str, &'static str)> {
        let mut out = Vec::new();
        match url::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "ws" | "wss") && u.host().is_some() => {}
            _ => out.push(("url", "must be a ws:// or wss:// URL with a host")),
        }
        if self.url.len() > 2048 {
            out.push(("url", "must be at most 2048 characters"));
        }
        if self.parameters.len() > MAX_PARAMETERS {
            out.push(("parameters", "at most 32 parameters"));
        }
        if self.parameters.iter().any(|(k, v)| {
            k.is_empty() || k.len() > MAX_PARAMETER_KEY || v.len() > MAX_PARAMETER_VALUE
        }) {
            out.push((
                "parameters",
                "keys must be 1 to 64 bytes and values at most 1024 bytes",
            ));
        }
        out
    }
}

/// Which of the call's audio a fork carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ForkTrack {
    /// The caller.
    #[default]
    Inbound,
    /// The agent.
    Outbound,
    /// Both, as two tracks of `media` messages.
    Both,
}

/// Most forks on one agent.
pub const MAX_FORKS: usize = 4;

/// A listener that gets a one-way copy of the call's audio in the same
/// message format (live supervision, analytics): it is never heard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkSettings {
    /// `ws://` or `wss://` URL of the listener.
    pub url: String,
    #[serde(default)]
    pub track: ForkTrack,
}

impl ForkSettings {
    /// What is wrong with the settings, as (field, message) pairs.
    pub fn problems(&self) -> Vec<(&'static str, &'static str)> {
        StreamSettings {
            url: self.url.clone(),
            parameters: BTreeMap::new(),
        }
        .problems()
    }
}

/// What the stream asks of the call task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamRequest {
    /// The bot closed the WebSocket: the agent hung up.
    Hangup,
    /// The bot could not be reached at answer.
    Unreachable(String),
}

/// Who the call is, for `start` and `stop`.
#[derive(Debug, Clone)]
pub struct StreamCall {
    pub call_id: String,
    pub account: String,
    /// Extra `customParameters` from the call (they do not override the
    /// agent's own).
    pub context: BTreeMap<String, String>,
}

/// The running stream's ends in the call task.
pub struct StreamLink {
    pub digits: mpsc::Sender<Digit>,
    pub requests: mpsc::Receiver<StreamRequest>,
}

/// Starts the stream task: connects, then relays until the call ends (the
/// `digits` sender is dropped) or the bot goes away.
pub fn spawn(
    settings: StreamSettings,
    call: StreamCall,
    guard: Guard,
    port: AudioPort,
) -> (StreamLink, tokio::task::JoinHandle<()>) {
    let (digit_tx, digit_rx) = mpsc::channel(32);
    let (req_tx, req_rx) = mpsc::channel(4);
    let span = tracing::info_span!("stream_agent", call_id = %call.call_id);
    let task = tokio::spawn(tracing::Instrument::instrument(
        run(settings, call, guard, port, digit_rx, req_tx),
        span,
    ));
    (
        StreamLink {
            digits: digit_tx,
            requests: req_rx,
        },
        task,
    )
}

async fn run(
    settings: StreamSettings,
    call: StreamCall,
    guard: Guard,
    port: AudioPort,
    digits: mpsc::Receiver<Digit>,
    requests: mpsc::Sender<StreamRequest>,
) {
    let ws = match tokio::time::timeout(CONNECT_TIMEOUT, connect(&settings.url, &guard)).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "stream bot unreachable");
            let _ = requests.send(StreamRequest::Unreachable(e)).await;
            return;
        }
        Err(_) => {
            tracing::warn!("stream bot did not answer in time");
            let _ = requests
                .send(StreamRequest::Unreachable("connect timed out".into()))
                .await;
            return;
        }
    };
    let mut relay = Relay::new(settings, call);
    if relay.serve(ws, port, digits).await {
        let _ = requests.send(StreamRequest::Hangup).await;
    }
}

/// `start` (Twilio Media Streams): who the call is, its tracks, the
/// custom parameters and the media format (µ-law, 8 kHz, mono).
pub(crate) fn start_json(
    sequence: &str,
    stream_sid: &str,
    call: &StreamCall,
    tracks: &[&str],
    params: &BTreeMap<String, String>,
) -> Value {
    json!({
        "event": "start",
        "sequenceNumber": sequence,
        "streamSid": stream_sid,
        "start": {
            "streamSid": stream_sid,
            "accountSid": call.account,
            "callSid": call.call_id,
            "tracks": tracks,
            "customParameters": params,
            "mediaFormat": {
                "encoding": "audio/x-mulaw",
                "sampleRate": 8000,
                "channels": 1,
            },
        },
    })
}

/// `media`: 20 ms of one track, base64 µ-law, `timestamp` in ms since the
/// stream started.
pub(crate) fn media_json(
    sequence: &str,
    stream_sid: &str,
    track: &str,
    chunk: u64,
    since_start: Duration,
    samples: &[i16],
) -> Value {
    let payload: Vec<u8> = samples.iter().map(|s| linear_to_ulaw(*s)).collect();
    json!({
        "event": "media",
        "sequenceNumber": sequence,
        "streamSid": stream_sid,
        "media": {
            "track": track,
            "chunk": chunk.to_string(),
            "timestamp": since_start.as_millis().to_string(),
            "payload": B64.encode(payload),
        },
    })
}

/// `stop`: the call ended.
pub(crate) fn stop_json(sequence: &str, stream_sid: &str, call: &StreamCall) -> Value {
    json!({
        "event": "stop",
        "sequenceNumber": sequence,
        "streamSid": stream_sid,
        "stop": {"accountSid": call.account, "callSid": call.call_id},
    })
}

/// A new `streamSid`.
pub(crate) fn new_stream_sid() -> String {
    format!("MZ{:032x}", rand::random::<u128>())
}

pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Resolves the host through the guard and connects only to an address it
/// allowed (a name rebinding to a private address is refused).
pub(crate) async fn connect(url: &str, guard: &Guard) -> Result<Ws, String> {
    connect_with(url, guard, None).await
}

/// [`connect`], with the socket's send buffer bounded to `send_buffer`
/// bytes (a fork: a listener that stops reading is noticed soon).
pub(crate) async fn connect_with(
    url: &str,
    guard: &Guard,
    send_buffer: Option<u32>,
) -> Result<Ws, String> {
    let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    let host = parsed.host_str().ok_or("no host")?;
    let port = parsed.port_or_known_default().unwrap_or(443);
    let addrs: Vec<SocketAddr> = guard.resolve(host, port).await.map_err(|e| e.to_string())?;
    let mut last = String::from("no address");
    for addr in addrs {
        match tcp_connect(addr, send_buffer).await {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                let mut config =
                    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
                config.max_message_size = Some(MAX_FRAME_BYTES);
                config.max_frame_size = Some(MAX_FRAME_BYTES);
                return tokio_tungstenite::client_async_tls_with_config(
                    url,
                    tcp,
                    Some(config),
                    None,
                )
                .await
                .map(|(ws, _)| ws)
                .map_err(|e| format!("WebSocket handshake: {e}"));
            }
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}

async fn tcp_connect(
    addr: SocketAddr,
    send_buffer: Option<u32>,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    if let Some(size) = send_buffer {
        socket.set_send_buffer_size(size)?;
    }
    socket.connect(addr).await
}

/// One stream's state.
struct Relay {
    settings: StreamSettings,
    call: StreamCall,
    stream_sid: String,
    sequence: u64,
    chunk: u64,
    started: Instant,
    /// The port's playout as last reported, and what we handed over since.
    playout: PortPlayout,
    sent_since: u64,
    /// Marks with the count of handed-over samples they follow.
    marks: VecDeque<(u64, String)>,
    /// Samples handed to the port in all.
    handed: u64,
}

impl Relay {
    fn new(settings: StreamSettings, call: StreamCall) -> Self {
        let stream_sid = new_stream_sid();
        Self {
            settings,
            call,
            stream_sid,
            sequence: 0,
            chunk: 0,
            started: Instant::now(),
            playout: PortPlayout::default(),
            sent_since: 0,
            marks: VecDeque::new(),
            handed: 0,
        }
    }

    fn seq(&mut self) -> String {
        self.sequence += 1;
        self.sequence.to_string()
    }

    fn start_message(&mut self) -> Value {
        let mut params: BTreeMap<String, String> = self.call.context.clone();
        params.extend(self.settings.parameters.clone());
        let sequence = self.seq();
        start_json(
            &sequence,
            &self.stream_sid,
            &self.call,
            &["inbound"],
            &params,
        )
    }

    /// Relays until the call or the bot ends it; true when the bot did.
    async fn serve(&mut self, ws: Ws, port: AudioPort, mut digits: mpsc::Receiver<Digit>) -> bool {
        let (mut sink, mut stream) = ws.split();
        let AudioPort {
            mut events,
            commands,
        } = port;
        let connected = json!({"event": "connected", "protocol": "Call", "version": "1.0.0"});
        let start = self.start_message();
        for m in [connected, start] {
            if sink.send(Message::text(m.to_string())).await.is_err() {
                return true;
            }
        }
        self.started = Instant::now();
        let bot_ended = loop {
            let mut out: Vec<Value> = Vec::new();
            tokio::select! {
                event = events.recv() => match event {
                    Some(PortEvent::Audio { frame, playout, .. }) => {
                        self.on_playout(playout, &mut out);
                        out.push(self.media_message(&frame.samples));
                    }
                    Some(PortEvent::Started { playout, .. } | PortEvent::Drained { playout, .. }) => {
                        self.on_playout(playout, &mut out);
                    }
                    // The media session ended: the call is ending.
                    None => break false,
                },
                digit = digits.recv() => match digit {
                    Some(d) => out.push(json!({
                        "event": "dtmf",
                        "streamSid": self.stream_sid,
                        "sequenceNumber": self.seq(),
                        "dtmf": {"track": "inbound_track", "digit": d.as_char().to_string()},
                    })),
                    // The call task let go: the call ended.
                    None => break false,
                },
                frame = stream.next() => match frame {
                    Some(Ok(Message::Text(text))) => self.on_bot(text.as_str(), &commands, &mut out),
                    Some(Ok(Message::Binary(_))) => bad_frame("binary"),
                    Some(Ok(Message::Close(_))) | None => break true,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::info!(error = %e, "stream bot connection lost");
                        break true;
                    }
                },
            }
            for m in out {
                if let Err(e) = sink.send(Message::text(m.to_string())).await {
                    tracing::info!(error = %e, "stream bot connection lost");
                    return true;
                }
            }
        };
        if !bot_ended {
            let sequence = self.seq();
            let stop = stop_json(&sequence, &self.stream_sid, &self.call);
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let _ = sink.send(Message::text(stop.to_string())).await;
                let _ = sink.close().await;
            })
            .await;
        }
        bot_ended
    }

    fn media_message(&mut self, samples: &[i16]) -> Value {
        self.chunk += 1;
        let sequence = self.seq();
        media_json(
            &sequence,
            &self.stream_sid,
            "inbound",
            self.chunk,
            self.started.elapsed(),
            samples,
        )
    }

    /// The port says where playing stands: acknowledge the marks whose
    /// audio has all left the queue (played, or cleared).
    fn on_playout(&mut self, playout: PortPlayout, out: &mut Vec<Value>) {
        self.playout = playout;
        self.sent_since = self.handed.saturating_sub(playout.received);
        // Only what the port has received and no longer queues is done.
        let done = playout.done();
        while let Some((at, _)) = self.marks.front() {
            if *at > done {
                break;
            }
            if let Some((_, name)) = self.marks.pop_front() {
                out.push(self.mark_message(name));
            }
        }
    }

    fn mark_message(&mut self, name: String) -> Value {
        json!({
            "event": "mark",
            "sequenceNumber": self.seq(),
            "streamSid": self.stream_sid,
            "mark": {"name": name},
        })
    }

    fn on_bot(&mut self, text: &str, commands: &mpsc::Sender<PortCommand>, out: &mut Vec<Value>) {
        let Ok(msg) = serde_json::from_str::<Value>(text) else {
            return bad_frame("json");
        };
        match msg.get("event").and_then(Value::as_str) {
            Some("media") => {
                let Some(payload) = msg.pointer("/media/payload").and_then(Value::as_str) else {
                    return bad_frame("media");
                };
                let Ok(bytes) = B64.decode(payload) else {
                    return bad_frame("base64");
                };
                let queued = self.playout.queued + self.sent_since;
                if queued + bytes.len() as u64 > MAX_QUEUED_SAMPLES {
                    metrics::counter!(STREAM_DROPPED_SAMPLES).increment(bytes.len() as u64);
                    tracing::debug!("stream bot audio past the queue's bound, dropped");
                    return;
                }
                let pcm: Vec<i16> = bytes.iter().map(|b| ulaw_to_linear(*b)).collect();
                let n = pcm.len() as u64;
                match commands.try_send(PortCommand::Play(pcm)) {
                    Ok(()) => {
                        self.handed += n;
                        self.sent_since += n;
                    }
                    Err(_) => {
                        metrics::counter!(STREAM_DROPPED_SAMPLES).increment(n);
                    }
                }
            }
            Some("mark") => {
                let Some(name) = msg.pointer("/mark/name").and_then(Value::as_str) else {
                    return bad_frame("mark");
                };
                let name: String = name.chars().take(MAX_MARK_NAME).collect();
                if self.marks.len() >= MAX_PENDING_MARKS {
                    out.push(self.mark_message(name));
                } else if self.handed == self.playout.done() && self.sent_since == 0 {
                    // Nothing is waiting to play: it is already past.
                    out.push(self.mark_message(name));
                } else {
                    self.marks.push_back((self.handed, name));
                }
            }
            Some("clear") => {
                // Barge-in: drop the queue now; the marks waiting on it
                // come back as the queue empties (Twilio does the same).
                if commands.try_send(PortCommand::Clear).is_err() {
                    bad_frame("clear_busy");
                }
            }
            _ => bad_frame("event"),
        }
    }
}

fn bad_frame(what: &'static str) {
    metrics::counter!(STREAM_BAD_FRAMES, "kind" => what).increment(1);
    tracing::info!(kind = what, "bad frame from the stream bot, ignored");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> StreamSettings {
        StreamSettings {
            url: url.into(),
            parameters: BTreeMap::new(),
        }
    }

    #[test]
    fn urls_must_be_websockets() {
        assert!(settings("wss://bot.example/ws").problems().is_empty());
        assert!(settings("ws://127.0.0.1:9000/").problems().is_empty());
        assert!(!settings("https://bot.example/ws").problems().is_empty());
        assert!(!settings("ws://").problems().is_empty());
        let mut s = settings("ws://a/");
        for i in 0..33 {
            s.parameters.insert(format!("k{i}"), "v".into());
        }
        assert!(!s.problems().is_empty());
    }

    fn media(samples: usize) -> String {
        json!({"event": "media", "media": {"payload": B64.encode(vec![0xffu8; samples])}})
            .to_string()
    }

    fn relay() -> Relay {
        let call = StreamCall {
            call_id: "call_1".into(),
            account: "node-a".into(),
            context: BTreeMap::new(),
        };
        Relay::new(settings("ws://a/"), call)
    }

    #[test]
    fn marks_wait_for_their_audio_and_the_queue_is_bounded() {
        let (tx, mut rx) = mpsc::channel(8);
        let mut r = relay();
        let mut out = Vec::new();
        // A mark with nothing queued is already past.
        r.on_bot(r#"{"event":"mark","mark":{"name":"now"}}"#, &tx, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["mark"]["name"], "now");
        out.clear();
        r.on_bot(&media(800), &tx, &mut out);
        r.on_bot(r#"{"event":"mark","mark":{"name":"a"}}"#, &tx, &mut out);
        assert!(out.is_empty());
        assert!(matches!(rx.try_recv(), Ok(PortCommand::Play(p)) if p.len() == 800));
        // Received but half of it still queued: not yet.
        r.on_playout(
            PortPlayout {
                received: 800,
                queued: 400,
            },
            &mut out,
        );
        assert!(out.is_empty());
        r.on_playout(
            PortPlayout {
                received: 800,
                queued: 0,
            },
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["mark"]["name"], "a");
        // Past 30 s queued, audio is dropped, not queued.
        r.on_bot(&media(MAX_QUEUED_SAMPLES as usize + 1), &tx, &mut out);
        assert!(rx.try_recv().is_err());
        // Garbage is ignored.
        out.clear();
        for bad in ["nope", "{}", r#"{"event":"media"}"#, r#"{"event":"mark"}"#] {
            r.on_bot(bad, &tx, &mut out);
        }
        assert!(out.is_empty());
        assert!(rx.try_recv().is_err());
        r.on_bot(r#"{"event":"clear"}"#, &tx, &mut out);
        assert!(matches!(rx.try_recv(), Ok(PortCommand::Clear)));
    }

    #[test]
    fn start_carries_the_call_and_the_parameters() {
        let mut s = settings("ws://a/");
        s.parameters.insert("lang".into(), "en".into());
        let call = StreamCall {
            call_id: "call_1".into(),
            account: "node-a".into(),
            context: BTreeMap::from([("lang".into(), "fr".into()), ("to".into(), "+1".into())]),
        };
        let mut r = Relay::new(s, call);
        let m = r.start_message();
        assert_eq!(m["start"]["callSid"], "call_1");
        assert_eq!(m["start"]["customParameters"]["lang"], "en");
        assert_eq!(m["start"]["customParameters"]["to"], "+1");
        assert_eq!(m["start"]["mediaFormat"]["encoding"], "audio/x-mulaw");
        assert!(m["streamSid"].as_str().unwrap().starts_with("MZ"));
    }
}
