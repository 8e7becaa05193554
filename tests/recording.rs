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

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{
    Backend, Capture, TestDaemon, free_udp_port, json_of, run_sipp, to_caller, tone_caller,
    tone_power, tone_ulaw, ulaw,
};
use receiver::{Receiver, fast_webhooks_config};
use serde_json::{Value, json};

const NUMBER: &str = "+14155552671";
const LIMIT: Duration = Duration::from_secs(30);

fn trunk() -> String {
    "name = \"carrier\"\n[inbound]\nallow = [\"127.0.0.1/32\"]\n[limits]\nmax_calls = 10\n".into()
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

/// The newest call once it has ended (and is not `not`).
async fn ended_call(d: &TestDaemon, not: Option<&str>) -> Value {
    common::newest_ended_call(d, not, Duration::from_secs(20)).await
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
    let rx = Receiver::subscribed(&d, &["recording.completed"]).await;
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

/// A trunk that takes calls from 127.0.0.1 and dials `callee_port`.
fn trunk_to(callee_port: u16) -> String {
    format!(
        "name = \"carrier\"\n[inbound]\nallow = [\"127.0.0.1/32\"]\n\
         [outbound]\nproxy = \"127.0.0.1:{callee_port}\"\n[limits]\nmax_calls = 10\ncps = 50\n"
    )
}

/// The body of a 2xx answer.
async fn ok(r: reqwest::RequestBuilder) -> Value {
    let (status, body) = json_of(r.send().await.unwrap()).await;
    assert!(status.is_success(), "{status}: {body}");
    body
}

/// The fields a 422 names.
async fn refused_fields(r: reqwest::RequestBuilder) -> Vec<String> {
    let (status, body) = json_of(r.send().await.unwrap()).await;
    assert_eq!(status, 422, "{body}");
    common::error_fields(&body, status)
}

/// An echo agent (the call ends after `max_seconds`), with `recording`
/// when given.
async fn echo_agent(d: &TestDaemon, recording: Option<Value>, max_seconds: u32) -> String {
    let mut body = json!({"name": "echo", "kind": "echo", "max_duration_seconds": max_seconds});
    if let Some(r) = recording {
        body["recording"] = r;
    }
    ok(d.post("/v1/agents").json(&body)).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A SIPp call to [`NUMBER`] streaming a 700 Hz tone for `ms`; returns
/// the call once it has ended.
async fn tone_call(d: &TestDaemon, dir: &Path, ms: u32, not: Option<&str>) -> Value {
    let tone = tone_ulaw(dir, 700, 0.2, ms as f32 / 1000.0);
    let scenario = tone_caller(dir, &tone, None, ms);
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
    ended_call(d, not).await
}

/// `GET /v1/calls/{id}` once its recording is no longer `recording` (or
/// at once when it has none).
async fn call_with_recording(d: &TestDaemon, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let call = ok(d.get(&format!("/v1/calls/{id}"))).await;
        if call["recording"]["status"] != "recording" {
            return call;
        }
        assert!(Instant::now() < deadline, "still recording: {call}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Recording settings on numbers and campaigns: stored, shown, merged by
/// PATCH, checked like an agent's; an inbound call to a number that
/// records, on an agent that does not, is recorded (and `GET
/// /v1/calls/{id}` shows it); a number's `enabled: false` over an agent's
/// `true` is not recorded; a campaign that records records its calls, over
/// its From number's `false` (call > campaign > number > agent).
async fn numbers_and_campaigns_record(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let rec_dir = dir.path().join("rec");
    let (mut callee, callee_port) = {
        common::require_sipp();
        let port = free_udp_port();
        let child = tokio::process::Command::new("sipp")
            .args([
                "-sf",
                &common::scenario("uas-invite-expect-answer-then-bye.xml"),
            ])
            .args(["-i", "127.0.0.1", "-p", &port.to_string()])
            .args(["-mi", "127.0.0.1", "-mp", &free_udp_port().to_string()])
            .args(["-m", "1", "-nostdin", "-timeout", "120s"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn sipp");
        (child, port)
    };
    let d = TestDaemon::builder()
        .backend(backend)
        .profile("carrier", &trunk_to(callee_port))
        .config(&format!(
            "[recordings]\ndir = \"{}\"\n[campaigns]\npoll_ms = 100\n",
            rec_dir.display()
        ))
        .start()
        .await;
    let plain = echo_agent(&d, None, 60).await;

    // Stored and shown; PATCH merges field by field; bad values are 422s
    // naming the field, and change nothing.
    let number = ok(d.post("/v1/phone-numbers").json(&json!({
        "number": NUMBER, "agent_id": plain, "trunk_id": "trk_carrier",
        "recording": {"enabled": true, "channels": "mono"}
    })))
    .await;
    assert_eq!(
        number["recording"],
        json!({"enabled": true, "channels": "mono"})
    );
    let num_id = number["id"].as_str().unwrap().to_owned();
    for (bad, field) in [
        (json!({"announcement": ""}), "recording.announcement"),
        (json!({"enabled": "yes"}), "recording.enabled"),
        (json!({"channels": "quad"}), "recording.channels"),
        (json!({"store": "s3"}), "recording.store"),
    ] {
        let fields = refused_fields(
            d.post("/v1/phone-numbers")
                .json(&json!({"number": "+14155550199", "recording": bad})),
        )
        .await;
        assert_eq!(fields, vec![field.to_owned()], "{bad}");
        let fields = refused_fields(
            d.patch(&format!("/v1/phone-numbers/{num_id}"))
                .json(&json!({"recording": bad})),
        )
        .await;
        assert_eq!(fields, vec![field.to_owned()], "{bad}");
    }
    let patched = ok(d
        .patch(&format!("/v1/phone-numbers/{num_id}"))
        .json(&json!({"recording": {"channels": "dual"}})))
    .await;
    assert_eq!(
        patched["recording"],
        json!({"enabled": true, "channels": "dual"})
    );
    let got = ok(d.get(&format!("/v1/phone-numbers/{num_id}"))).await;
    assert_eq!(got["recording"], patched["recording"]);

    // The number records a call its agent would not.
    let call = tone_call(&d, dir.path(), 2500, None).await;
    let id = call["id"].as_str().unwrap().to_owned();
    let shown = call_with_recording(&d, &id).await;
    let rec = &shown["recording"];
    assert_eq!(rec["status"], "completed", "{shown}");
    assert_eq!(rec["channels"], "dual");
    assert_eq!(rec["url"], format!("/v1/calls/{id}/recording").as_str());
    assert!(rec["duration_ms"].as_i64().unwrap() > 1500, "{rec}");
    let wav = d
        .get(rec["url"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(rec["size_bytes"].as_u64().unwrap() as usize, wav.len());
    let (channels, _, tracks) = read_wav(&wav);
    assert_eq!(channels, 2);
    assert!(tone_share(span(&tracks[0], 0.5, 2.0), 700.0) > 0.8);
    // Lists do not carry it.
    let page = ok(d.get("/v1/calls?limit=1")).await;
    assert!(page["items"][0].get("recording").is_none(), "{page}");

    // `enabled: false` on the number wins over the agent's `true`.
    let recorded = echo_agent(&d, Some(json!({"enabled": true})), 60).await;
    ok(d.patch(&format!("/v1/phone-numbers/{num_id}"))
        .json(&json!({"agent_id": recorded, "recording": {"enabled": false}})))
    .await;
    let call = tone_call(&d, dir.path(), 1500, Some(&id)).await;
    let quiet = call["id"].as_str().unwrap().to_owned();
    let shown = ok(d.get(&format!("/v1/calls/{quiet}"))).await;
    assert!(shown.get("recording").is_none(), "{shown}");
    let r = d
        .get(&format!("/v1/calls/{quiet}/recording"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(!rec_dir.join(format!("{quiet}.wav")).exists());

    // A campaign that records, from that number (`enabled: false`), with
    // an agent that does not.
    let short = echo_agent(&d, None, 3).await;
    let zone = common::zone_at(12);
    let bad = refused_fields(d.post("/v1/campaigns").json(&json!({
        "name": "x", "agent_id": short, "caller_number": NUMBER,
        "trunk_ids": ["trk_carrier"], "recording": {"announcement": ""}
    })))
    .await;
    assert_eq!(bad, vec!["recording.announcement".to_owned()]);
    let campaign = ok(d.post("/v1/campaigns").json(&json!({
        "name": "recorded", "agent_id": short, "caller_number": NUMBER,
        "trunk_ids": ["trk_carrier"], "max_attempts": 1,
        "schedule": {"start_time": "06:00", "end_time": "18:00", "timezone": zone},
        "recording": {"enabled": true}
    })))
    .await;
    assert_eq!(campaign["recording"], json!({"enabled": true}));
    let cid = campaign["id"].as_str().unwrap();
    let patched = ok(d
        .patch(&format!("/v1/campaigns/{cid}"))
        .json(&json!({"recording": {"channels": "mono"}})))
    .await;
    assert_eq!(
        patched["recording"],
        json!({"enabled": true, "channels": "mono"})
    );
    ok(d.post(&format!("/v1/campaigns/{cid}/contacts"))
        .json(&json!({"contacts": [{"number": "+14155550100", "timezone": zone}]})))
    .await;
    ok(d.post(&format!("/v1/campaigns/{cid}/start"))).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let dialled = loop {
        let page = ok(d.get(&format!("/v1/calls?agent_id={short}&limit=5"))).await;
        if let Some(call) = page["items"].get(0)
            && !call["ended_at"].is_null()
        {
            break call.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no campaign call: {page}\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let did = dialled["id"].as_str().unwrap();
    let shown = call_with_recording(&d, did).await;
    assert_eq!(shown["recording"]["status"], "completed", "{shown}");
    assert_eq!(shown["recording"]["channels"], "mono");
    assert!(rec_dir.join(format!("{did}.wav")).exists());
    let _ = tokio::time::timeout(Duration::from_secs(10), callee.wait()).await;
}

/// The daemon killed (-9) in the middle of two recorded calls leaves WAV
/// files whose headers say nothing and rows in `recording`. The next start
/// fixes each header from the file's length, completes its row and sends
/// `recording.completed` once; a row whose file is gone is `failed`, with
/// no event.
async fn a_crash_leaves_recordings_the_next_start_closes(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let rec_dir = dir.path().join("rec");
    let mut d = recorded_daemon(
        backend,
        &format!("[recordings]\ndir = \"{}\"\n", rec_dir.display()),
    )
    .await;
    let rx = Receiver::subscribed(&d, &["recording.completed"]).await;
    let agent = echo_agent(&d, Some(json!({"enabled": true})), 120).await;
    ok(d.post("/v1/phone-numbers").json(&json!({
        "number": NUMBER, "agent_id": agent, "trunk_id": "trk_carrier"
    })))
    .await;
    // Two callers that would talk for a minute; the daemon dies first.
    let tone = tone_ulaw(dir.path(), 700, 0.2, 60.0);
    let scenario = tone_caller(dir.path(), &tone, None, 60_000);
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let scenario = scenario.clone();
            let target = ([127, 0, 0, 1], d.sip_port).into();
            tokio::spawn(async move {
                run_sipp(
                    &scenario,
                    free_udp_port(),
                    Some(target),
                    &[
                        "-s",
                        NUMBER,
                        "-mi",
                        "127.0.0.1",
                        "-mp",
                        &free_udp_port().to_string(),
                    ],
                    Duration::from_secs(90),
                )
                .await
            })
        })
        .collect();
    // Both recording, with a few seconds of audio written.
    let deadline = Instant::now() + Duration::from_secs(30);
    let ids = loop {
        let page = ok(d.get("/v1/calls?limit=5")).await;
        let live: Vec<String> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["status"] == "in-progress")
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect();
        let written = live.len() == 2
            && live.iter().all(|id| {
                std::fs::metadata(rec_dir.join(format!("{id}.wav")))
                    .is_ok_and(|m| m.len() > 3 * 32_000)
            });
        if written {
            break live;
        }
        assert!(
            Instant::now() < deadline,
            "not recording: {page}\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    d.kill9().await;
    let (kept, lost) = (&ids[0], &ids[1]);
    let kept_file = rec_dir.join(format!("{kept}.wav"));
    let before = std::fs::read(&kept_file).unwrap();
    assert_eq!(&before[40..44], &[0, 0, 0, 0], "the header says no data");
    std::fs::remove_file(rec_dir.join(format!("{lost}.wav"))).unwrap();
    for caller in callers {
        caller.abort();
    }

    d.restart().await;
    let shown = call_with_recording(&d, kept).await;
    let rec = &shown["recording"];
    assert_eq!(rec["status"], "completed", "{shown}\n{}", d.log());
    let wav = std::fs::read(&kept_file).unwrap();
    let (channels, rate, tracks) = read_wav(&wav);
    assert_eq!((channels, rate), (2, 8000));
    assert_eq!(rec["size_bytes"].as_u64().unwrap() as usize, wav.len());
    let seconds = tracks[0].len() as f64 / 8000.0;
    assert!(seconds > 2.5, "{seconds} s kept");
    assert!(
        (rec["duration_ms"].as_f64().unwrap() / 1000.0 - seconds).abs() < 0.01,
        "{rec}"
    );
    assert!(
        tone_share(span(&tracks[0], 0.5, seconds - 0.2), 700.0) > 0.8,
        "the caller's tone up to the crash"
    );
    let served = d
        .get(&format!("/v1/calls/{kept}/recording"))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.bytes().await.unwrap().as_ref(), wav.as_slice());
    let shown = call_with_recording(&d, lost).await;
    assert_eq!(shown["recording"]["status"], "failed", "{shown}");
    assert!(shown["recording"].get("url").is_none());
    // Both calls ended as lost.
    for id in &ids {
        let call = ok(d.get(&format!("/v1/calls/{id}"))).await;
        assert!(!call["ended_at"].is_null(), "{call}");
    }

    // One event, for the file that was there; a second start adds none.
    let recs = rx
        .wait_until(Duration::from_secs(15), |r| {
            r.iter().any(|r| r.body["type"] == "recording.completed")
        })
        .await;
    let event = recs
        .iter()
        .find(|r| r.body["type"] == "recording.completed")
        .unwrap();
    assert_eq!(event.verified, vec![true]);
    assert_eq!(event.body["data"]["call_id"], kept.as_str());
    assert_eq!(event.body["data"]["duration_ms"], rec["duration_ms"]);
    d.signal("TERM");
    d.wait_exit(Duration::from_secs(30)).await;
    d.restart().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let completed = rx
        .records()
        .iter()
        .filter(|r| r.body["type"] == "recording.completed")
        .map(|r| r.id.clone())
        .collect::<std::collections::BTreeSet<_>>();
    assert_eq!(completed.len(), 1, "one recording.completed in all");
}

both_backends!(
    a_recorded_call,
    a_mono_recording,
    numbers_and_campaigns_record,
    a_crash_leaves_recordings_the_next_start_closes,
);

// ---------------------------------------------------------------- forks

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

// ------------------------------------------------------------ web calls

/// Share of the 100 ms windows of `samples` louder than `level` (rms).
fn active(samples: &[i16], level: f64) -> Vec<bool> {
    samples.chunks_exact(800).map(|w| rms(w) > level).collect()
}

/// A web call from a real browser to an agent that records: the file has
/// the page's speech on the left and the agent's on the right, the call's
/// length, and `GET /v1/calls/{id}` shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_call_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let rec_dir = dir.path().join("rec");
    let d = TestDaemon::builder()
        .allow_loopback()
        .config(&format!("[recordings]\ndir = \"{}\"\n", rec_dir.display()))
        .start()
        .await;
    let reply = "Your appointment is booked, see you soon.";
    let agent = ok(d.post("/v1/agents").json(&json!({
        "name": "Clinic", "kind": "voice", "max_duration_seconds": 90,
        "tts": {"provider": "embedded", "voice": "slt"},
        "recording": {"enabled": true, "channels": "dual"},
        "script": {
            "start": "main",
            "greeting": "Hello, this is the clinic.",
            // Whatever the recognizer makes of the page's sentence on a
            // loaded machine, the agent answers it with the same line.
            "fallback": reply,
            "states": {"main": {"intents": [
                {"name": "book", "keywords": ["appointment", "book"], "reply": reply}
            ]}}
        }
    })))
    .await;
    let wav = common::flite_wav(
        dir.path(),
        "I would like to book an appointment for Tuesday.",
        3.0,
        12.0,
    );
    common::browser_web_call(
        &d,
        agent["id"].as_str().unwrap(),
        dir.path(),
        &wav,
        "booked, see you soon",
    )
    .await;
    let call = ended_call(&d, None).await;
    assert_eq!(call["direction"], "web", "{call}");
    let id = call["id"].as_str().unwrap();
    let shown = call_with_recording(&d, id).await;
    let rec = &shown["recording"];
    assert_eq!(rec["status"], "completed", "{shown}\n{}", d.log());
    let wav = d
        .get(rec["url"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let (channels, _, tracks) = read_wav(&wav);
    assert_eq!(channels, 2);
    let seconds = tracks[0].len() as f64 / 8000.0;
    let call_s = call["duration_ms"].as_f64().unwrap() / 1000.0;
    assert!(
        (seconds - call_s).abs() < 0.5,
        "the file lasts {seconds} s, the call {call_s} s"
    );
    // Both sides spoke, each on its own channel: most of the agent's loud
    // windows are quiet on the caller's side.
    let (caller, agent) = (active(&tracks[0], 300.0), active(&tracks[1], 300.0));
    let caller_n = caller.iter().filter(|a| **a).count();
    let agent_n = agent.iter().filter(|a| **a).count();
    assert!(
        caller_n >= 5,
        "the page's speech on the left: {caller_n} windows"
    );
    assert!(
        agent_n >= 10,
        "the agent's speech on the right: {agent_n} windows"
    );
    let both = caller
        .iter()
        .zip(&agent)
        .filter(|(c, a)| **c && **a)
        .count();
    assert!(
        both * 2 < agent_n,
        "the tracks are apart: {both} of {agent_n} agent windows loud on the left too"
    );
}
