//! Call recordings and forks on real calls: the real daemon, SIPp as the
//! caller playing a 700 Hz tone (and pressing a key), a scripted `voice`
//! agent speaking with the embedded synthesizer, the webhook receiver that
//! verifies signatures, and WebSocket listeners for the forks.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/webhook_receiver.rs"]
mod receiver;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Backend, TestDaemon, free_udp_port, json_of, run_sipp, tone_power};
use receiver::{Receiver, fast_webhooks_config};
use serde_json::{Value, json};

const NUMBER: &str = "+14155552671";
const LIMIT: Duration = Duration::from_secs(30);

fn trunk() -> String {
    "name = \"carrier\"\n[inbound]\nallow = [\"127.0.0.1/32\"]\n[limits]\nmax_calls = 10\n".into()
}

/// `seconds` of a `hz` tone as raw 8 kHz µ-law, after `lead` s of silence.
fn tone_ulaw(dir: &Path, hz: u32, lead: f32, seconds: f32) -> PathBuf {
    let ul = dir.join(format!("tone{hz}-{lead}-{seconds}.ul"));
    let ok = Command::new("sox")
        .args(["-n", "-r", "8000", "-c", "1", "-t", "ul"])
        .arg(&ul)
        .args(["synth", &seconds.to_string(), "sine", &hz.to_string()])
        .args(["vol", "0.5", "pad", &lead.to_string(), "0"])
        .status()
        .expect("sox is installed by scripts/test")
        .success();
    assert!(ok, "sox failed");
    ul
}

/// A caller that streams `audio`, presses 2 (RFC 4733) `dtmf_after_ms`
/// after the answer (none when `None`), and hangs up `call_ms` after the
/// answer.
fn tone_caller(dir: &Path, audio: &Path, dtmf_after_ms: Option<u32>, call_ms: u32) -> String {
    let head =
        std::fs::read_to_string(common::scenario("uac-invite-dtmf-expect-200-bye.xml")).unwrap();
    let cut = head.find("  <nop>").unwrap();
    let bye = head
        .find("  <send retrans=\"500\">\n    <![CDATA[\n      BYE")
        .unwrap();
    let key = match dtmf_after_ms {
        Some(at) => format!(
            "  <pause milliseconds=\"{at}\"/>\n  <nop>\n    <action>\n      \
             <exec play_pcap_audio=\"/usr/share/sip-tester/dtmf_2833_2.pcap\"/>\n    </action>\n  </nop>\n  \
             <pause milliseconds=\"{}\"/>\n",
            call_ms - at
        ),
        None => format!("  <pause milliseconds=\"{call_ms}\"/>\n"),
    };
    let xml = format!(
        "{}  <nop>\n    <action>\n      <exec rtp_stream=\"{},1,0\"/>\n    </action>\n  </nop>\n{key}{}",
        &head[..cut],
        audio.display(),
        &head[bye..]
    );
    let path = dir.join(format!("uac-tone-{call_ms}.xml"));
    std::fs::write(&path, xml).unwrap();
    path.display().to_string()
}

/// A scripted voice agent that greets, and on key 2 says a line and then
/// pauses the recording; recorded in `channels`.
async fn provision_voice(d: &TestDaemon, channels: &str) -> Value {
    let (status, agent) = json_of(
        d.post("/v1/agents")
            .json(&json!({
                "name": "recorded", "kind": "voice", "max_duration_seconds": 60,
                // The caller's tone must not cut the greeting short.
                "turn": {"barge_in_min_ms": 3000},
                "recording": {"enabled": true, "channels": channels},
                "script": {
                    "start": "main",
                    "greeting": "Hello and welcome, this call is recorded for quality.",
                    "states": {"main": {"intents": [
                        {"name": "pay", "dtmf": "2", "reply": "Okay.",
                         "actions": [{"type": "pause_recording"}]}
                    ]}}
                }
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
async fn ended_call(d: &TestDaemon, not: Option<&str>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, page) = json_of(d.get("/v1/calls?limit=1").send().await.unwrap()).await;
        if let Some(call) = page["items"].get(0)
            && !call["ended_at"].is_null()
            && call["id"].as_str() != not
        {
            return call.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no ended call: {page}\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A WAV file's channels, rate and samples (de-interleaved).
fn read_wav(bytes: &[u8]) -> (u16, u32, Vec<Vec<i16>>) {
    assert_eq!(&bytes[0..4], b"RIFF");
    assert_eq!(&bytes[8..12], b"WAVE");
    let channels = u16::from_le_bytes([bytes[22], bytes[23]]);
    let rate = u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]);
    assert_eq!(&bytes[36..40], b"data");
    let len = u32::from_le_bytes([bytes[40], bytes[41], bytes[42], bytes[43]]) as usize;
    assert_eq!(len, bytes.len() - 44, "the header was fixed up at the end");
    assert_eq!(
        u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize,
        bytes.len() - 8
    );
    let mut out = vec![Vec::new(); channels as usize];
    for (i, s) in bytes[44..].chunks_exact(2).enumerate() {
        out[i % channels as usize].push(i16::from_le_bytes([s[0], s[1]]));
    }
    (channels, rate, out)
}

fn span(samples: &[i16], from_s: f64, to_s: f64) -> &[i16] {
    let a = ((from_s * 8000.0) as usize).min(samples.len());
    let b = ((to_s * 8000.0) as usize).min(samples.len());
    &samples[a..b]
}

fn rms(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    (samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / samples.len() as f64).sqrt()
}

/// Share of 100 ms windows of `samples` that carry `hz`.
fn tone_share(samples: &[i16], hz: f64) -> f64 {
    let windows: Vec<&[i16]> = samples.chunks_exact(800).collect();
    if windows.is_empty() {
        return 0.0;
    }
    let with = windows
        .iter()
        .filter(|w| tone_power(w, 8000, hz) > 0.2)
        .count();
    with as f64 / windows.len() as f64
}

async fn recorded_daemon(backend: Backend, extra: &str) -> TestDaemon {
    TestDaemon::builder()
        .backend(backend)
        .profile("carrier", &trunk())
        .config(&fast_webhooks_config(&[1], 0))
        .config(extra)
        .allow_loopback()
        .start()
        .await
}

/// A recorded call: the caller's 700 Hz tone on the left, the agent's
/// speech on the right, the length of the call; a Range request gets the
/// exact bytes; `recording.completed` arrives signed; the span paused by
/// the agent's `pause_recording` is silent and marked in the transcript;
/// a read key cannot DELETE, a calls key can; paths are never taken from
/// input; retention removes the file and marks the row.
async fn a_recorded_call(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let rec_dir = dir.path().join("rec");
    let d = recorded_daemon(
        backend,
        &format!(
            "[recordings]\ndir = \"{}\"\nretain_days = 1\ncleanup_interval_seconds = 1\n",
            rec_dir.display()
        ),
    )
    .await;
    let rx = Receiver::start(json!({}));
    let (s, ep) = json_of(
        d.post("/v1/webhook-endpoints")
            .json(&json!({"url": rx.url(), "events": ["recording.completed"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 201, "{ep}");
    rx.set(json!({"secrets": [ep["secret"]]}));
    provision_voice(&d, "dual").await;

    // The tone runs from 0.5 s to the hang-up at 7 s; key 2 at 4 s.
    let tone = tone_ulaw(dir.path(), 700, 0.5, 7.0);
    let scenario = tone_caller(dir.path(), &tone, Some(4000), 7000);
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
    let call = ended_call(&d, None).await;
    let id = call["id"].as_str().unwrap().to_string();

    // recording.completed, signed, with the numbers.
    let recs = rx
        .wait_until(Duration::from_secs(15), |r| {
            r.iter().any(|r| r.body["type"] == "recording.completed")
        })
        .await;
    let event = recs
        .iter()
        .find(|r| r.body["type"] == "recording.completed")
        .unwrap();
    assert_eq!(event.verified, vec![true], "signature verifies");
    let data = &event.body["data"];
    assert_eq!(data["call_id"], id.as_str(), "{data}");
    assert_eq!(data["channels"], "dual");
    assert_eq!(data["status"], "completed");

    // The file.
    let r = d
        .get(&format!("/v1/calls/{id}/recording"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "audio/wav");
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    let wav = r.bytes().await.unwrap().to_vec();
    assert_eq!(data["size_bytes"].as_u64().unwrap() as usize, wav.len());
    let (channels, rate, tracks) = read_wav(&wav);
    assert_eq!((channels, rate), (2, 8000));
    let (caller, agent) = (&tracks[0], &tracks[1]);
    let seconds = caller.len() as f64 / 8000.0;
    let call_s = call["duration_ms"].as_f64().unwrap() / 1000.0;
    assert!(
        (seconds - call_s).abs() < 0.3,
        "the file lasts {seconds} s, the call {call_s} s"
    );
    assert!(
        (data["duration_ms"].as_f64().unwrap() / 1000.0 - seconds).abs() < 0.01,
        "{data}"
    );
    // The caller's tone, left, before the key; nothing of it right.
    let before = span(caller, 1.0, 3.5);
    assert!(
        tone_share(before, 700.0) > 0.8,
        "left carries 700 Hz: {}",
        tone_share(before, 700.0)
    );
    assert!(
        tone_share(span(agent, 0.0, 3.5), 700.0) < 0.1,
        "right does not carry the caller's tone"
    );
    // The agent's greeting, right.
    assert!(
        rms(span(agent, 0.0, 3.5)) > 300.0,
        "right carries the agent's speech: rms {}",
        rms(span(agent, 0.0, 3.5))
    );

    // The pause: marked in the transcript, silent in the file (both
    // sides) from its start to the end, while the caller's tone went on.
    let (s, transcript) = json_of(
        d.get(&format!("/v1/calls/{id}/transcript"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{transcript}");
    let mark = transcript["turns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["text"] == "[recording paused]")
        .unwrap_or_else(|| panic!("no pause in {transcript}"))
        .clone();
    let paused_at = mark["start_ms"].as_f64().unwrap() / 1000.0;
    assert!(
        (4.0..6.5).contains(&paused_at),
        "paused at {paused_at} s: {transcript}"
    );
    assert!(data["paused_ms"].as_i64().unwrap() > 300, "{data}");
    let paused = span(caller, paused_at + 0.2, seconds);
    assert!(paused.len() > 2000, "a paused span to look at");
    assert!(
        paused.iter().all(|&s| s == 0),
        "the paused span is silent on the left (rms {})",
        rms(paused)
    );
    assert!(
        span(agent, paused_at + 0.2, seconds)
            .iter()
            .all(|&s| s == 0)
    );

    // Range: the exact bytes, and 416 past the end.
    let r = d
        .get(&format!("/v1/calls/{id}/recording"))
        .header("range", "bytes=100-1099")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 100-1099/{}", wav.len()).as_str()
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), &wav[100..1100]);
    let r = d
        .get(&format!("/v1/calls/{id}/recording"))
        .header("range", "bytes=-44")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &wav[wav.len() - 44..]);
    let r = d
        .get(&format!("/v1/calls/{id}/recording"))
        .header("range", format!("bytes={}-", wav.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{}", wav.len()).as_str()
    );

    // Paths come from our ids only.
    for bad in [
        "..%2F..%2Fagentline.toml",
        "call_..%2Fagentline",
        "call_x%2F..%2F..%2Fagentline.db",
        "%2e%2e",
    ] {
        let r = d
            .get(&format!("/v1/calls/{bad}/recording"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{bad}");
        let r = d
            .delete(&format!("/v1/calls/{bad}/recording"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{bad}");
    }

    // A read key reads but cannot delete.
    let (s, reader) = json_of(
        d.post("/v1/api-keys")
            .json(&json!({"name": "r", "scope": "read"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 201, "{reader}");
    let secret = reader["secret"].as_str().unwrap();
    let r = d
        .http
        .delete(d.url(&format!("/v1/calls/{id}/recording")))
        .bearer_auth(secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = d
        .http
        .get(d.url(&format!("/v1/calls/{id}/recording")))
        .bearer_auth(secret)
        .header("range", "bytes=0-43")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    let file = rec_dir.join(format!("{id}.wav"));
    assert!(file.exists(), "the file is in [recordings] dir");

    // A second, short call, deleted with a calls key.
    let short = tone_ulaw(dir.path(), 700, 0.2, 1.5);
    let scenario = tone_caller(dir.path(), &short, None, 1500);
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
    let second = ended_call(&d, Some(&id)).await;
    let second = second["id"].as_str().unwrap().to_string();
    rx.wait_until(Duration::from_secs(15), |r| {
        r.iter()
            .filter(|r| r.body["type"] == "recording.completed")
            .count()
            >= 2
    })
    .await;
    let second_file = rec_dir.join(format!("{second}.wav"));
    assert!(second_file.exists());
    let r = d
        .delete(&format!("/v1/calls/{second}/recording"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(!second_file.exists(), "DELETE removes the file");
    let r = d
        .get(&format!("/v1/calls/{second}/recording"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = d
        .delete(&format!("/v1/calls/{second}/recording"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "gone already");

    // Retention: the first recording, made two days old, goes.
    backdate(&d, &id, 2).await;
    common::wait_until(
        Duration::from_secs(10),
        "retention removes the file",
        || {
            let gone = !file.exists();
            async move { gone }
        },
    )
    .await;
    let r = d
        .get(&format!("/v1/calls/{id}/recording"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// Sets a recording's completion `days` days back, as if it were old.
async fn backdate(d: &TestDaemon, call_id: &str, days: i64) {
    use sqlx::Connection;
    let at = chrono::Utc::now() - chrono::Duration::days(days);
    let sql = "UPDATE recordings SET completed_at = $1 WHERE call_id = $2";
    if d.store_url.starts_with("postgres") {
        let mut c = sqlx::PgConnection::connect(&d.store_url).await.unwrap();
        sqlx::query(sql)
            .bind(at)
            .bind(call_id)
            .execute(&mut c)
            .await
            .unwrap();
    } else {
        let mut c = sqlx::SqliteConnection::connect(&d.store_url).await.unwrap();
        sqlx::query(sql)
            .bind(at)
            .bind(call_id)
            .execute(&mut c)
            .await
            .unwrap();
    }
}

/// Mono: one channel, both sides mixed; an invalid recording setting is
/// refused with its field named.
async fn a_mono_recording(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let d = recorded_daemon(
        backend,
        &format!(
            "[recordings]\ndir = \"{}\"\n",
            dir.path().join("rec").display()
        ),
    )
    .await;
    let (s, b) = json_of(
        d.post("/v1/agents")
            .json(&json!({"name": "bad", "kind": "echo",
                          "recording": {"enabled": true, "channels": "quad"}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 422, "{b}");
    provision_voice(&d, "mono").await;
    let tone = tone_ulaw(dir.path(), 700, 0.5, 2.5);
    let scenario = tone_caller(dir.path(), &tone, None, 3000);
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
    let call = ended_call(&d, None).await;
    let id = call["id"].as_str().unwrap();
    let mut wav = None;
    for _ in 0..100 {
        let r = d
            .get(&format!("/v1/calls/{id}/recording"))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            wav = Some(r.bytes().await.unwrap().to_vec());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (channels, _, tracks) = read_wav(&wav.expect("the recording is served"));
    assert_eq!(channels, 1);
    // The greeting and the tone overlap here, mixed into one channel.
    assert!(tone_power(span(&tracks[0], 1.0, 2.5), 8000, 700.0) > 0.01);
    assert!(rms(span(&tracks[0], 0.0, 2.5)) > 300.0);
}

both_backends!(a_recorded_call, a_mono_recording);

// ---------------------------------------------------------------- forks

/// Captures UDP on the loopback to and from `port` until stopped.
struct Capture {
    child: Child,
    path: PathBuf,
}

impl Capture {
    fn start(dir: &Path, port: u16) -> Capture {
        let path = dir.join("call.pcapng");
        let mut child = Command::new("tshark")
            .args(["-q", "-i", "lo", "-f", &format!("udp port {port}"), "-w"])
            .arg(&path)
            .args(["-a", "duration:60"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tshark is installed by scripts/test");
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            line.clear();
            if std::io::BufRead::read_line(&mut stderr, &mut line).unwrap_or(0) == 0
                || line.contains("Capturing on")
            {
                break;
            }
        }
        assert!(
            line.contains("Capturing on"),
            "tshark did not start: {line}"
        );
        Capture { child, path }
    }

    fn stop(mut self) -> PathBuf {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        self.path.clone()
    }
}

/// G.711 µ-law to linear (ITU-T G.711 §3.2).
fn ulaw(b: u8) -> i16 {
    let b = !b;
    let exponent = (b >> 4) & 0x07;
    let mantissa = i32::from(b & 0x0f);
    let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    (if b & 0x80 != 0 { -magnitude } else { magnitude }) as i16
}

/// The PCMU packets sent to the caller's media port: (time, samples).
fn to_caller(capture: &Path, caller_port: u16) -> Vec<(f64, Vec<i16>)> {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(capture)
        .args(["-d", &format!("udp.port=={caller_port},rtp")])
        .args([
            "-Y",
            &format!("rtp.p_type == 0 && udp.dstport == {caller_port}"),
        ])
        .args([
            "-T",
            "fields",
            "-e",
            "frame.time_epoch",
            "-e",
            "rtp.payload",
        ])
        .output()
        .expect("tshark is installed by scripts/test");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let (at, hex) = line.split_once('\t')?;
            let hex = hex.replace(':', "");
            let samples = (0..hex.len() / 2)
                .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
                .map(ulaw)
                .collect();
            Some((at.parse().ok()?, samples))
        })
        .collect()
}

/// A WebSocket listener on a free port: `reading` ones keep every text
/// message; the others accept and then never read again, with a tiny
/// receive buffer so that their end fills soon.
struct Listener {
    port: u16,
    messages: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    async fn start(reading: bool) -> Listener {
        use futures_util::StreamExt;
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if !reading {
            socket.set_recv_buffer_size(4096).unwrap();
        }
        socket.bind(([127, 0, 0, 1], 0).into()).unwrap();
        let listener = socket.listen(8).unwrap();
        let port = listener.local_addr().unwrap().port();
        let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = std::sync::Arc::clone(&messages);
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    continue;
                };
                if !reading {
                    // Never read again; keep the connection open.
                    held.push(ws);
                    continue;
                }
                let keep = std::sync::Arc::clone(&keep);
                tokio::spawn(async move {
                    while let Some(Ok(m)) = ws.next().await {
                        if let Ok(text) = m.to_text()
                            && let Ok(v) = serde_json::from_str::<Value>(text)
                        {
                            keep.lock().unwrap().push(v);
                        }
                    }
                });
            }
        });
        Listener {
            port,
            messages,
            task,
        }
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/listen", self.port)
    }

    fn messages(&self) -> Vec<Value> {
        self.messages.lock().unwrap().clone()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn dropped_by_forks(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("agentline_media_tap_dropped_frames_total{consumer=\"fork\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// An echo call with two forks: a listener that never reads leaves the
/// caller's audio whole (every 20 ms, the echo of the tone) while the drop
/// counter rises; a reading listener gets `connected`, `start` and the
/// caller's tone frames, then `stop`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_fork_never_slows_the_call() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let stuck = Listener::start(false).await;
    let reading = Listener::start(true).await;
    let d = TestDaemon::builder()
        .profile("carrier", &trunk())
        .allow_loopback()
        .start()
        .await;
    let (s, agent) = json_of(
        d.post("/v1/agents")
            .json(&json!({
                "name": "echo", "kind": "echo", "max_duration_seconds": 60,
                "streams": [{"url": stuck.url(), "track": "both"},
                            {"url": reading.url(), "track": "inbound"}]
            }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 201, "{agent}");
    assert_eq!(agent["streams"][0]["track"], "both");
    let r = d
        .post("/v1/phone-numbers")
        .json(&json!({"number": NUMBER, "agent_id": agent["id"], "trunk_id": "trk_carrier"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // A fork URL outside the outbound policy is refused.
    let (s, b) = json_of(
        d.post("/v1/agents")
            .json(&json!({"name": "x", "kind": "echo",
                          "streams": [{"url": "ws://169.254.169.254/x"}]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 422, "{b}");

    let tone = tone_ulaw(dir.path(), 700, 0.0, 8.0);
    let scenario = tone_caller(dir.path(), &tone, None, 8000);
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
    let call = ended_call(&d, None).await;
    assert_eq!(call["end_reason"], "caller_hangup", "{call}");

    // The caller's side: a packet every 20 ms throughout, the tone echoed.
    let packets = to_caller(&pcap, media_port);
    assert!(packets.len() > 300, "{} packets", packets.len());
    let gaps: Vec<f64> = packets.windows(2).map(|w| w[1].0 - w[0].0).collect();
    let worst = gaps.iter().copied().fold(0.0, f64::max);
    assert!(worst < 0.1, "the longest gap to the caller is {worst} s");
    let span_s = packets.last().unwrap().0 - packets[0].0;
    let expected = span_s / 0.02;
    assert!(
        (packets.len() as f64) > expected * 0.97,
        "{} packets over {span_s} s",
        packets.len()
    );
    let echoed = packets
        .iter()
        .filter(|(_, s)| tone_power(s, 8000, 700.0) > 0.2)
        .count();
    assert!(
        echoed as f64 > packets.len() as f64 * 0.8,
        "{echoed} of {} packets echo the tone",
        packets.len()
    );

    // The stuck listener cost frames, counted.
    let dropped = dropped_by_forks(&d.metrics().await);
    assert!(dropped > 10.0, "fork drops counted: {dropped}");

    // The reading listener got the caller's tone.
    common::wait_until(Duration::from_secs(5), "the fork's stop", || {
        let done = reading.messages().iter().any(|m| m["event"] == "stop");
        async move { done }
    })
    .await;
    let messages = reading.messages();
    assert_eq!(messages[0]["event"], "connected");
    assert_eq!(messages[1]["event"], "start");
    assert_eq!(messages[1]["start"]["callSid"], call["id"]);
    assert_eq!(messages[1]["start"]["tracks"], json!(["inbound"]));
    let media: Vec<&Value> = messages.iter().filter(|m| m["event"] == "media").collect();
    assert!(media.len() > 200, "{} media messages", media.len());
    assert!(media.iter().all(|m| m["media"]["track"] == "inbound"));
    let toned = media
        .iter()
        .filter(|m| {
            let payload = base64::engine::general_purpose::STANDARD
                .decode(m["media"]["payload"].as_str().unwrap())
                .unwrap();
            let pcm: Vec<i16> = payload.into_iter().map(ulaw).collect();
            pcm.len() == 160 && tone_power(&pcm, 8000, 700.0) > 0.2
        })
        .count();
    assert!(
        toned as f64 > media.len() as f64 * 0.8,
        "{toned} of {} frames carry the caller's tone",
        media.len()
    );
}
