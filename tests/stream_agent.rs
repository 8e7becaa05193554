//! The `stream` agent on real calls: the real daemon, SIPp as the caller
//! (its RTP captured by tshark), and two bots on the far end of the
//! WebSocket: a real Pipecat bot (`pipecat-ai`'s FastAPIWebsocketTransport
//! and TwilioFrameSerializer, tests/peers/pipecat_bot.py) and a raw one on
//! the `websockets` library for what Pipecat does not send by itself:
//! marks, and a `clear` at a known instant (tests/peers/stream_bot.py).

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/webhook_receiver.rs"]
mod receiver;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    Backend, Capture, TestDaemon, free_port, free_udp_port, json_of, run_sipp, to_caller,
    tone_caller, tone_power, tone_ulaw,
};
use receiver::{Receiver, fast_webhooks_config};
use serde_json::{Value, json};

const NUMBER: &str = "+14155552671";
const LIMIT: Duration = Duration::from_secs(30);

fn trunk() -> String {
    "name = \"carrier\"\n[inbound]\nallow = [\"127.0.0.1/32\"]\n[limits]\nmax_calls = 10\n".into()
}

/// A bot script on a free port, killed when dropped.
struct Bot {
    child: Child,
    port: u16,
    report: PathBuf,
}

impl Bot {
    async fn start(script: &str, dir: &Path) -> Bot {
        Bot::start_with(script, dir, &[]).await
    }

    async fn start_with(script: &str, dir: &Path, args: &[&str]) -> Bot {
        let port = free_port();
        let report = dir.join(format!("{script}.report"));
        let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "peers", script]
            .iter()
            .collect();
        let child = Command::new("python3")
            .arg(path)
            .arg(port.to_string())
            .arg(&report)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join(format!("{script}.log"))).unwrap(),
            ))
            .spawn()
            .expect("python3 with pipecat-ai and websockets (scripts/test)");
        let bot = Bot {
            child,
            port,
            report,
        };
        common::wait_until(
            Duration::from_secs(30),
            &format!("{script} listens"),
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
        bot
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// The JSON objects the bot wrote, one a line.
    fn report(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.report)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Bot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `stream` agent on [`NUMBER`]; returns the agent.
async fn provision(d: &TestDaemon, url: &str) -> Value {
    let (status, agent) = json_of(
        d.post("/v1/agents")
            .json(&json!({
                "name": "bot", "kind": "stream", "max_duration_seconds": 60,
                "stream": {"url": url, "parameters": {"team": "qa"}}
            }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{agent}");
    let r = d
        .post("/v1/phone-numbers")
        .json(&json!({"number": NUMBER, "agent_id": agent["id"], "trunk_id": "trk_carrier"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    agent
}

/// The newest call once it has ended.
async fn ended_call(d: &TestDaemon) -> Value {
    common::newest_ended_call(d, None, Duration::from_secs(20)).await
}

/// Whether a 20 ms packet carries the `hz` tone (against silence or the
/// other tone).
fn carries(samples: &[i16], hz: f64) -> bool {
    !samples.is_empty() && tone_power(samples, 8000, hz) > 0.05
}

/// A Pipecat bot on a call: it gets `connected` and `start` (our call id,
/// the parameters, µ-law 8 kHz), hears the caller's 700 Hz tone and answers
/// with 1200 Hz that reaches the caller on the wire; the caller's key
/// reaches it as a Pipecat DTMF frame, on which it interrupts itself
/// (Pipecat's `clear`) and the caller's line goes quiet within 100 ms; the
/// caller's hang-up ends the call and closes the bot's WebSocket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipecat_bot_hears_the_caller_and_answers() {
    let dir = tempfile::tempdir().unwrap();
    let bot = Bot::start("pipecat_bot.py", dir.path()).await;
    let d = TestDaemon::builder()
        .profile("carrier", &trunk())
        .allow_loopback()
        .start()
        .await;
    provision(&d, &bot.url()).await;
    let tone = tone_ulaw(dir.path(), 700, 0.5, 2.0);
    let scenario = tone_caller(dir.path(), &tone, Some(4000), 6000);
    let media_port = free_udp_port();
    let capture = Capture::start(dir.path(), media_port);
    let run = run_sipp(
        &scenario,
        free_udp_port(),
        Some(([127, 0, 0, 1], d.sip_port).into()),
        &[
            "-s",
            NUMBER,
            "-mi",
            "127.0.0.1",
            "-mp",
            &media_port.to_string(),
        ],
        LIMIT,
    )
    .await;
    let pcap = capture.stop();
    assert!(run.success, "{}\n{}", run.output, d.log());
    let call = ended_call(&d).await;
    assert_eq!(call["end_reason"], "caller_hangup", "{call}");
    common::wait_until(Duration::from_secs(10), "the bot sees the hang-up", || {
        let r = bot.report();
        async move { r.iter().any(|e| e["event"] == "disconnected") }
    })
    .await;
    let report = bot.report();
    let log = || {
        format!(
            "{report:?}\n{}\n{}",
            std::fs::read_to_string(dir.path().join("pipecat_bot.py.log")).unwrap_or_default(),
            d.log()
        )
    };
    let start = report
        .iter()
        .find(|e| e["event"] == "start")
        .unwrap_or_else(|| panic!("no start: {}", log()));
    assert_eq!(start["connected"]["event"], "connected");
    let s = &start["start"]["start"];
    assert_eq!(s["callSid"], call["id"], "{start}");
    assert!(
        s["streamSid"].as_str().unwrap().starts_with("MZ"),
        "{start}"
    );
    assert_eq!(s["customParameters"]["team"], "qa", "{start}");
    assert_eq!(s["customParameters"]["agentline_direction"], "inbound");
    // The call's context, under the agent's own parameters.
    assert_eq!(s["customParameters"]["call_id"], call["id"], "{start}");
    assert_eq!(s["customParameters"]["to"], NUMBER, "{start}");
    assert_eq!(s["customParameters"]["direction"], "inbound", "{start}");
    assert_eq!(
        s["mediaFormat"],
        json!({"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1})
    );
    assert!(
        report.iter().any(|e| e["event"] == "tone"),
        "the bot did not hear the caller's tone: {}",
        log()
    );
    let key = report
        .iter()
        .find(|e| e["event"] == "dtmf" && e["digit"] == "2")
        .unwrap_or_else(|| panic!("the key did not reach the bot: {}", log()));
    let interrupted_at = key["interrupted_at"].as_f64().unwrap();
    let heard = to_caller(&pcap, media_port);
    let toned: Vec<f64> = heard
        .iter()
        .filter(|(_, s)| carries(s, 1200.0))
        .map(|(t, _)| *t)
        .collect();
    // The tone starts about 0.6 s after the answer and is cut by the key
    // at about 4 s: some 170 packets, never the 500 of its 10 s.
    assert!(
        (100..=250).contains(&toned.len()),
        "{} packets of the bot's 1200 Hz tone reached the caller ({} in all)\n{}",
        toned.len(),
        heard.len(),
        log()
    );
    let last = toned.iter().copied().fold(0.0, f64::max);
    let after_ms = (last - interrupted_at) * 1000.0;
    println!("Pipecat's clear: the tone stopped {after_ms:.0} ms after the interruption");
    assert!(
        after_ms <= 100.0,
        "the bot's tone went on {after_ms:.0} ms after it interrupted itself"
    );
}

/// The bot asking through our API ends the call as the agent's hang-up:
/// `POST /v1/calls/{id}/hangup {"by": "agent"}` with the `callSid` it got
/// in `start`; the caller gets BYE, the call ends `agent_hangup`, the
/// bot's WebSocket gets `stop` and closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bot_hangs_up_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let bot = Bot::start("pipecat_bot.py", dir.path()).await;
    let d = TestDaemon::builder()
        .profile("carrier", &trunk())
        .allow_loopback()
        .start()
        .await;
    provision(&d, &bot.url()).await;
    let media_port = free_udp_port().to_string();
    let args = ["-s", NUMBER, "-mi", "127.0.0.1", "-mp", &media_port];
    let sipp = run_sipp(
        "uac-invite-expect-bye-from-daemon.xml",
        free_udp_port(),
        Some(([127, 0, 0, 1], d.sip_port).into()),
        &args,
        LIMIT,
    );
    let hangup = async {
        common::wait_until(Duration::from_secs(15), "the bot's start", || {
            let r = bot.report();
            async move { r.iter().any(|e| e["event"] == "start") }
        })
        .await;
        let report = bot.report();
        let start = report.iter().find(|e| e["event"] == "start").unwrap();
        let call_sid = start["start"]["start"]["callSid"]
            .as_str()
            .unwrap()
            .to_string();
        let r = d
            .post(&format!("/v1/calls/{call_sid}/hangup"))
            .json(&json!({"by": "agent"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        call_sid
    };
    let (run, call_sid) = tokio::join!(sipp, hangup);
    assert!(run.success, "{}\n{}", run.output, d.log());
    let call = ended_call(&d).await;
    assert_eq!(call["id"], call_sid.as_str());
    assert_eq!(call["end_reason"], "agent_hangup", "{call}");
    common::wait_until(Duration::from_secs(10), "the bot sees the end", || {
        let r = bot.report();
        async move { r.iter().any(|e| e["event"] == "disconnected") }
    })
    .await;
    // Anything but api or agent is refused, and changes nothing.
    let r = d
        .post(&format!("/v1/calls/{call_sid}/hangup"))
        .json(&json!({"by": "caller"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
}

/// The raw bot: a mark comes back only once the audio before it has
/// played (about 1 s); a `clear` silences the caller's line within 100 ms
/// and its pending mark comes back; garbage frames are counted, not
/// fatal; the bot closing its WebSocket hangs the call up (BYE to the
/// caller, `agent_hangup`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marks_clear_and_the_bot_hanging_up() {
    let dir = tempfile::tempdir().unwrap();
    let bot = Bot::start("stream_bot.py", dir.path()).await;
    let d = TestDaemon::builder()
        .profile("carrier", &trunk())
        .allow_loopback()
        .start()
        .await;
    provision(&d, &bot.url()).await;
    let media_port = free_udp_port();
    let capture = Capture::start(dir.path(), media_port);
    let run = run_sipp(
        "uac-invite-expect-bye-from-daemon.xml",
        free_udp_port(),
        Some(([127, 0, 0, 1], d.sip_port).into()),
        &[
            "-s",
            NUMBER,
            "-mi",
            "127.0.0.1",
            "-mp",
            &media_port.to_string(),
        ],
        LIMIT,
    )
    .await;
    let pcap = capture.stop();
    let log = || {
        format!(
            "{}\n{}",
            std::fs::read_to_string(dir.path().join("stream_bot.py.log")).unwrap_or_default(),
            d.log()
        )
    };
    assert!(run.success, "{}\n{}", run.output, log());
    let call = ended_call(&d).await;
    assert_eq!(call["end_reason"], "agent_hangup", "{call}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&bot.report).unwrap_or_default())
            .unwrap_or_else(|e| panic!("no report ({e}): {}", log()));
    let f = |k: &str| report[k].as_f64().unwrap();
    let waited = f("one_back") - f("one_sent");
    assert!(
        (0.8..3.0).contains(&waited),
        "mark `one` after 1 s of audio came back after {waited:.3} s"
    );
    let cleared = f("two_back") - f("clear_at");
    println!("mark after 1 s of audio back in {waited:.3} s; after a clear in {cleared:.3} s");
    assert!(
        cleared < 0.3,
        "mark `two` came back {cleared:.3} s after the clear"
    );
    let heard = to_caller(&pcap, media_port);
    let clear_at = f("clear_at");
    let playing_before = heard
        .iter()
        .any(|(t, s)| (clear_at - 0.2..clear_at).contains(t) && carries(s, 1000.0));
    assert!(
        playing_before,
        "the bot's audio was not playing at the clear"
    );
    let last = heard
        .iter()
        .filter(|(_, s)| carries(s, 1000.0))
        .map(|(t, _)| *t)
        .fold(0.0, f64::max);
    let after_ms = (last - clear_at) * 1000.0;
    println!("the bot's audio stopped {after_ms:.0} ms after its clear");
    assert!(
        after_ms <= 100.0,
        "audio went on {after_ms:.0} ms after the clear"
    );
    // 1 s before the first mark plus 1 s before the clear: about 100
    // packets of the tone in all, never the 7 s the bot sent.
    let toned = heard.iter().filter(|(_, s)| carries(s, 1000.0)).count();
    assert!((80..=130).contains(&toned), "{toned} tone packets");
    let metrics = d.metrics().await;
    for kind in ["json", "base64"] {
        assert!(
            metrics.contains(&format!(
                "agentline_stream_bad_frames_total{{kind=\"{kind}\"}} 1"
            )),
            "{kind}: {}",
            metrics
                .lines()
                .filter(|l| l.contains("stream"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// What the daemon sends, message by message, when the caller talks,
/// presses keys and hangs up: `connected`, `start`, `media` every 20 ms
/// (160 bytes of µ-law, `chunk` counting from 1, `timestamp` rising), the
/// keys as `dtmf`, then `stop` with the call, and the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wire_format_and_stop_when_the_caller_hangs_up() {
    let dir = tempfile::tempdir().unwrap();
    let bot = Bot::start_with("stream_bot.py", dir.path(), &["listen"]).await;
    let d = TestDaemon::builder()
        .profile("carrier", &trunk())
        .allow_loopback()
        .start()
        .await;
    provision(&d, &bot.url()).await;
    let tone = tone_ulaw(dir.path(), 700, 0.5, 2.0);
    let scenario = tone_caller(dir.path(), &tone, Some(3000), 4000);
    let run = run_sipp(
        &scenario,
        free_udp_port(),
        Some(([127, 0, 0, 1], d.sip_port).into()),
        &[
            "-s",
            NUMBER,
            "-mi",
            "127.0.0.1",
            "-mp",
            &free_udp_port().to_string(),
        ],
        LIMIT,
    )
    .await;
    assert!(run.success, "{}\n{}", run.output, d.log());
    let call = ended_call(&d).await;
    assert_eq!(call["end_reason"], "caller_hangup", "{call}");
    common::wait_until(Duration::from_secs(10), "the bot's report", || {
        let done = bot.report.exists();
        async move { done }
    })
    .await;
    let got: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&bot.report).unwrap()).unwrap();
    let events: Vec<&str> = got.iter().filter_map(|m| m["event"].as_str()).collect();
    assert_eq!(events[..2], ["connected", "start"], "{events:?}");
    assert_eq!(
        got[0],
        json!({"event": "connected", "protocol": "Call", "version": "1.0.0"})
    );
    let sid = got[1]["streamSid"].as_str().unwrap();
    assert_eq!(got[1]["start"]["tracks"], json!(["inbound"]));
    assert_eq!(*events.last().unwrap(), "stop", "{events:?}");
    let stop = got.iter().rev().find(|m| m["event"] == "stop").unwrap();
    assert_eq!(stop["stop"]["callSid"], call["id"], "{stop}");
    assert_eq!(
        got.last().unwrap(),
        &json!({"closed": true}),
        "closed after stop"
    );
    let media: Vec<&Value> = got.iter().filter(|m| m["event"] == "media").collect();
    // 2.5 s of the caller's audio: 125 frames of 20 ms.
    assert!(
        (100..=250).contains(&media.len()),
        "{} media messages",
        media.len()
    );
    let mut last_ts = 0u64;
    for (i, m) in media.iter().enumerate() {
        assert_eq!(m["streamSid"], sid);
        assert_eq!(m["media"]["track"], "inbound");
        assert_eq!(m["media"]["payload"], 160, "{m}");
        assert_eq!(m["media"]["chunk"], (i + 1).to_string(), "{m}");
        let ts: u64 = m["media"]["timestamp"].as_str().unwrap().parse().unwrap();
        assert!(ts >= last_ts, "{m}");
        last_ts = ts;
    }
    let seqs: Vec<u64> = got
        .iter()
        .filter_map(|m| m["sequenceNumber"].as_str()?.parse().ok())
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "gap-free sequence"
    );
    let digits: Vec<&Value> = got
        .iter()
        .filter(|m| m["event"] == "dtmf")
        .map(|m| &m["dtmf"])
        .collect();
    assert_eq!(
        digits,
        [&json!({"track": "inbound_track", "digit": "2"})],
        "{digits:?}"
    );
}

/// A bot that is not there: the answered call ends at once with
/// `agent_unreachable` (BYE to the caller, `call.ended`), no hang.
async fn an_unreachable_bot_ends_the_call(backend: Backend) {
    let d = TestDaemon::builder()
        .backend(backend)
        .profile("carrier", &trunk())
        .config(&fast_webhooks_config(&[1], 0))
        .allow_loopback()
        .start()
        .await;
    let rx = Receiver::subscribed(&d, &["call.ended"]).await;
    // Nothing listens on a fresh free port.
    provision(&d, &format!("ws://127.0.0.1:{}/ws", free_port())).await;
    let started = Instant::now();
    let run = run_sipp(
        "uac-invite-expect-bye-from-daemon.xml",
        free_udp_port(),
        Some(([127, 0, 0, 1], d.sip_port).into()),
        &[
            "-s",
            NUMBER,
            "-mi",
            "127.0.0.1",
            "-mp",
            &free_udp_port().to_string(),
        ],
        LIMIT,
    )
    .await;
    assert!(run.success, "{}\n{}", run.output, d.log());
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let call = ended_call(&d).await;
    assert_eq!(call["end_reason"], "agent_unreachable", "{call}");
    let recs = rx
        .wait_until(Duration::from_secs(20), |r| {
            r.iter().any(|x| x.body["type"] == "call.ended")
        })
        .await;
    let ended = recs
        .iter()
        .find(|x| x.body["type"] == "call.ended")
        .unwrap();
    assert_eq!(
        ended.body["data"]["end_reason"], "agent_unreachable",
        "{}",
        ended.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_bot_ends_the_call_sqlite() {
    an_unreachable_bot_ends_the_call(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_bot_ends_the_call_postgres() {
    an_unreachable_bot_ends_the_call(Backend::Postgres).await;
}

/// Bad stream settings are refused at create with the fields named, and
/// a bot on a private address is refused unless the operator allowed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_settings_are_checked_at_create() {
    let d = TestDaemon::builder().start().await;
    let many: serde_json::Map<String, Value> =
        (0..33).map(|i| (format!("k{i}"), json!("v"))).collect();
    for (body, field) in [
        (json!({"name": "b", "kind": "stream"}), "stream"),
        (
            json!({"name": "b", "kind": "stream", "stream": {"url": "https://bot.example/ws"}}),
            "stream.url",
        ),
        (
            json!({"name": "b", "kind": "stream", "stream": {"url": "wss://bot.example/ws", "parameters": many}}),
            "stream.parameters",
        ),
        (
            json!({"name": "b", "kind": "stream", "stream": {"url": "ws://127.0.0.1:9/ws"}}),
            "stream.url",
        ),
    ] {
        let r = d.post("/v1/agents").json(&body).send().await.unwrap();
        let status = r.status();
        let (_, err) = json_of(r).await;
        assert_eq!(status, 422, "{body} -> {err}");
        assert!(
            common::error_fields(&err, status).contains(&field.to_owned()),
            "{body} -> {err}"
        );
    }
    let (_, page) = json_of(d.get("/v1/agents").send().await.unwrap()).await;
    assert_eq!(page["items"], json!([]), "nothing was created");
}
