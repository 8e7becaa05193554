//! Black-box tests of screening outbound calls, with SIPp as the callee:
//! - opt-out: a campaign call's callee presses the campaign's key (RFC 4733
//!   from SIPp's shipped pcaps); the number lands on the do-not-call list
//!   with its source, the call ends, and the next campaign skips it;
//! - answering-machine detection: SIPp streams speech made by flite and sox
//!   (a long voicemail greeting and a beep, or a short "hello?"), and the
//!   call says who answered and acts on it (`hangup`, `message_after_beep`);
//!   a campaign counts a machine hung up on as no answer and retries it.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::{Timelike, Utc};
use common::{Backend, TestDaemon, free_udp_port, json_of, require_sipp, scenario};
use reqwest::StatusCode;
use serde_json::{Value, json};

const CALLER: &str = "+14155550100";

async fn ok(r: reqwest::RequestBuilder) -> Value {
    let (s, b) = json_of(r.send().await.expect("request")).await;
    assert!(s.is_success(), "{s}: {b}");
    b
}

/// SIPp as a callee for one call on a free port, with `scenario`, running
/// in `dir` (where `answer.ul` is read from), for at most 60 s.
fn callee(name: &str, dir: &Path) -> (tokio::process::Child, u16) {
    callee_for(name, dir, 1)
}

/// The same for `calls` calls, one after the other.
fn callee_for(name: &str, dir: &Path, calls: u32) -> (tokio::process::Child, u16) {
    require_sipp();
    let port = free_udp_port();
    let child = tokio::process::Command::new("sipp")
        .args(["-sf", &scenario(name)])
        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["-mi", "127.0.0.1", "-mp", &free_udp_port().to_string()])
        .args(["-m", &calls.to_string(), "-nostdin", "-timeout", "60s"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sipp");
    (child, port)
}

/// A daemon with one trunk to the callee at `port`, an agent of `kind`
/// (settings `agent`) and the caller number bound to both; campaigns may
/// retry after 1 s.
async fn daemon(port: u16, agent: Value) -> (TestDaemon, String) {
    daemon_on(Backend::Sqlite, port, agent).await
}

async fn daemon_on(backend: Backend, port: u16, agent: Value) -> (TestDaemon, String) {
    let trunk = format!(
        "name = \"callee\"\n[inbound]\nallow = [\"127.0.0.1/32\"]\n\
         [outbound]\nproxy = \"127.0.0.1:{port}\"\n"
    );
    let d = TestDaemon::builder()
        .backend(backend)
        .profile("callee", &trunk)
        .config("[campaigns]\npoll_ms = 100\nmin_retry_delay_seconds = 1")
        .start()
        .await;
    let agent = ok(d.post("/v1/agents").json(&agent)).await;
    let id = agent["id"].as_str().expect("id").to_owned();
    ok(d.post("/v1/phone-numbers")
        .json(&json!({"number": CALLER, "agent_id": id, "trunk_id": "trk_callee"})))
    .await;
    (d, id)
}

/// A fixed-offset zone where it is now about noon, so the default calling
/// hours are open.
fn noon_zone() -> String {
    let offset = 12 - i64::from(Utc::now().hour());
    let offset = if offset > 12 { offset - 24 } else { offset };
    // Etc/GMT signs are inverted: Etc/GMT-3 is UTC+3.
    match offset {
        0 => "Etc/GMT".to_owned(),
        o if o > 0 => format!("Etc/GMT-{o}"),
        o => format!("Etc/GMT+{}", -o),
    }
}

/// A campaign with `number` as its only contact (in a zone where the
/// default calling hours are open), started; returns its id and the import
/// report.
async fn campaign(d: &TestDaemon, agent: &str, number: &str, extra: Value) -> (String, Value) {
    let mut body = json!({
        "name": "screening",
        "agent_id": agent,
        "caller_number": CALLER,
        "trunk_ids": ["trk_callee"],
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let c = ok(d.post("/v1/campaigns").json(&body)).await;
    let id = c["id"].as_str().expect("id").to_owned();
    let report = ok(d
        .post(&format!("/v1/campaigns/{id}/contacts"))
        .json(&json!({"contacts": [{"number": number, "timezone": noon_zone()}]})))
    .await;
    ok(d.post(&format!("/v1/campaigns/{id}/start"))).await;
    (id, report)
}

/// Polls `path` until `done` holds, for at most 30 s.
async fn wait(d: &TestDaemon, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = ok(d.get(path)).await;
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{path}: {v}\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The newest call, once ended.
async fn ended_call(d: &TestDaemon) -> Value {
    let page = wait(d, "/v1/calls?limit=1", |p| {
        p["items"][0]["ended_at"].is_string()
    })
    .await;
    page["items"][0].clone()
}

async fn an_opt_out_key_lists_the_number_and_the_next_campaign_skips_it(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut sipp, port) = callee("uas-answer-press-9-expect-bye.xml", dir.path());
    let (d, agent) = daemon_on(
        backend,
        port,
        json!({"name": "echo", "kind": "echo", "max_duration_seconds": 30}),
    )
    .await;
    let number = "+14155550123";
    let (first, _) = campaign(&d, &agent, number, json!({"opt_out_digit": "9"})).await;
    let stats = wait(&d, &format!("/v1/campaigns/{first}/stats"), |s| {
        s["status"] == "completed"
    })
    .await;
    assert_eq!(stats["contacts"]["opted_out"], 1, "{stats}");
    assert_eq!(stats["attempts"]["opted_out"], 1, "{stats}");

    let call = ended_call(&d).await;
    assert_eq!(call["end_reason"], "opted_out", "{call}\n{}", d.log());
    assert_eq!(call["status"], "completed");
    assert!(
        call["dtmf"].as_str().is_some_and(|k| k.ends_with('9')),
        "{call}"
    );
    // The callee got our BYE after the key (the scenario expects it).
    let status = tokio::time::timeout(Duration::from_secs(15), sipp.wait())
        .await
        .expect("sipp ends")
        .expect("sipp ran");
    assert!(status.success(), "sipp: {status}\n{}", d.log());

    let listed = ok(d.get(&format!(
        "/v1/do-not-call?number={}",
        number.replace('+', "%2B")
    )))
    .await;
    assert_eq!(listed["total"], 1, "{listed}");
    let entry = &listed["items"][0];
    assert_eq!(entry["source"], "opt_out");
    assert!(
        entry["reason"]
            .as_str()
            .is_some_and(|r| r.contains(call["id"].as_str().unwrap_or("?"))),
        "{entry}"
    );

    // The next campaign with that number dials nothing and completes.
    let (second, report) = campaign(&d, &agent, number, json!({})).await;
    assert_eq!(report["blocked"], 1, "{report}");
    let stats = wait(&d, &format!("/v1/campaigns/{second}/stats"), |s| {
        s["status"] == "completed"
    })
    .await;
    assert_eq!(stats["contacts"]["dnc"], 1, "{stats}");
    let calls = ok(d.get("/v1/calls")).await;
    assert_eq!(calls["total"], 1, "one call in all: {calls}");

    // An opt-out key must be one DTMF key.
    let (s, b) = json_of(
        d.post("/v1/campaigns")
            .json(
                &json!({"name": "x", "agent_id": agent, "caller_number": CALLER,
                "trunk_ids": ["trk_callee"], "opt_out_digit": "99"}),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(common::error_fields(&b, s), ["opt_out_digit"]);
}

/// Runs `cmd` with `args`, which must succeed.
fn run(cmd: &str, args: &[&str]) {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} runs (scripts/test installs it): {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `answer.ul` in `dir`: `lead` s of silence, `text` spoken by
/// flite, then, if `beep`, 0.4 s of silence and a 1 kHz beep of 0.5 s,
/// then `tail` s of silence. Returns where the audio ends before the tail,
/// in seconds.
fn answer_audio(dir: &Path, lead: f64, text: &str, beep: bool, tail: f64) -> f64 {
    let p = |name: &str| dir.join(name).display().to_string();
    let rate = ["-r", "8000", "-c", "1", "-b", "16"];
    run("flite", &["-t", text, "-o", &p("speech.wav")]);
    let mut sox = vec![p("speech.wav")];
    sox.extend(rate.iter().map(|s| s.to_string()));
    sox.push(p("speech8k.wav"));
    run("sox", &sox.iter().map(String::as_str).collect::<Vec<_>>());
    let silence = |name: &str, seconds: f64| {
        let mut a: Vec<String> = vec!["-n".into()];
        a.extend(rate.iter().map(|s| s.to_string()));
        a.extend([p(name), "trim".into(), "0".into(), seconds.to_string()]);
        run("sox", &a.iter().map(String::as_str).collect::<Vec<_>>());
    };
    silence("lead.wav", lead);
    silence("gap.wav", 0.4);
    silence("tail.wav", tail);
    let mut parts = vec![p("lead.wav"), p("speech8k.wav")];
    if beep {
        let mut a: Vec<String> = vec!["-n".into()];
        a.extend(rate.iter().map(|s| s.to_string()));
        a.extend([
            p("beep.wav"),
            "synth".into(),
            "0.5".into(),
            "sine".into(),
            "1000".into(),
            "vol".into(),
            "0.5".into(),
        ]);
        run("sox", &a.iter().map(String::as_str).collect::<Vec<_>>());
        parts.extend([p("gap.wav"), p("beep.wav")]);
    }
    let spoken: f64 = parts
        .iter()
        .map(|f| {
            let out = std::process::Command::new("soxi")
                .args(["-D", f])
                .output()
                .expect("soxi runs");
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<f64>()
                .expect("duration")
        })
        .sum();
    parts.push(p("tail.wav"));
    let mut a = parts.clone();
    a.extend(["-t".into(), "ul".into(), p("answer.ul")]);
    run("sox", &a.iter().map(String::as_str).collect::<Vec<_>>());
    spoken
}

const GREETING: &str = "Hi, you have reached the voicemail of Alex Morgan. \
    I am not able to take your call right now. \
    Please leave your name, your number and a short message after the tone, \
    and I will call you back as soon as I can.";

/// Places a call with `amd` to a callee that plays `answer.ul` from `dir`;
/// the ended call.
async fn amd_call(dir: &Path, agent: Value, amd: &str) -> (Value, TestDaemon) {
    let (mut sipp, port) = callee("uas-answer-play-audio-expect-bye.xml", dir);
    let (d, _) = daemon(port, agent).await;
    let placed = ok(d
        .post("/v1/calls")
        .json(&json!({"from": CALLER, "to": "+442079460958", "amd": amd})))
    .await;
    assert!(placed["answered_by"].is_null(), "{placed}");
    let call = ended_call(&d).await;
    assert_eq!(call["id"], placed["id"]);
    let status = tokio::time::timeout(Duration::from_secs(30), sipp.wait())
        .await
        .expect("sipp ends")
        .expect("sipp ran");
    assert!(status.success(), "sipp: {status}\n{}", d.log());
    (call, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_greeting_with_a_beep_is_a_machine_and_is_hung_up_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let beep_ends = answer_audio(dir.path(), 0.5, GREETING, true, 3.0);
    let echo = json!({"name": "echo", "kind": "echo", "max_duration_seconds": 30});
    let (call, d) = amd_call(dir.path(), echo, "hangup").await;
    assert_eq!(call["answered_by"], "machine", "{call}\n{}", d.log());
    assert_eq!(call["end_reason"], "machine_detected", "{call}");
    assert_eq!(call["status"], "completed");
    // Hung up while the greeting still played: the verdict did not wait
    // for its end (the unit tests pin the 3.5 s).
    let lasted = call["duration_ms"].as_i64().unwrap_or(i64::MAX) as f64 / 1000.0;
    assert!(lasted < beep_ends - 1.0, "{lasted} s of {beep_ends} s");
    let metrics = d.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("agentline_call_amd_verdicts_total{answered_by=\"machine\"} 1")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_hello_is_a_human_and_the_agent_talks() {
    let dir = tempfile::tempdir().expect("tempdir");
    answer_audio(dir.path(), 0.5, "Hello?", false, 8.0);
    let echo = json!({"name": "echo", "kind": "echo", "max_duration_seconds": 5});
    let (call, d) = amd_call(dir.path(), echo, "hangup").await;
    assert_eq!(call["answered_by"], "human", "{call}\n{}", d.log());
    assert_eq!(call["end_reason"], "max_duration", "{call}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_after_the_beep_starts_when_the_greeting_ends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let beep_ends = answer_audio(dir.path(), 0.5, GREETING, true, 4.0);
    // The prompt agent plays 1 s and hangs up: the call lasts past the
    // beep's end plus that second only if the agent waited for the beep.
    let prompt = json!({"name": "message", "kind": "prompt",
        "prompt": {"tone_hz": 440, "duration_ms": 1000}, "max_duration_seconds": 60});
    let (call, d) = amd_call(dir.path(), prompt, "message_after_beep").await;
    assert_eq!(call["answered_by"], "machine", "{call}\n{}", d.log());
    assert_eq!(call["end_reason"], "agent_hangup", "{call}");
    let lasted = call["duration_ms"].as_i64().unwrap_or(0) as f64 / 1000.0;
    assert!(
        lasted >= beep_ends + 1.0,
        "the message began after the beep ({beep_ends:.1} s): the call lasted {lasted:.1} s\n{}",
        d.log()
    );
    // The call.ended event carries the verdict too.
    let store = d.store().await;
    let events = store.events_after(0, 1000).await.expect("events");
    let ended = events
        .iter()
        .find(|e| {
            e.event_type.as_str() == "call.ended"
                && e.call_id.as_ref() == call["id"].as_str().map(String::from).as_ref()
        })
        .expect("call.ended written");
    let payload: Value = serde_json::from_str(&ended.payload).expect("json");
    assert_eq!(payload["data"]["answered_by"], "machine", "{payload}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_hangs_up_on_machines_and_retries_them_as_no_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    answer_audio(dir.path(), 0.5, GREETING, true, 3.0);
    let (mut sipp, port) = callee_for("uas-answer-play-audio-expect-bye.xml", dir.path(), 2);
    let (d, agent) = daemon(
        port,
        json!({"name": "echo", "kind": "echo", "max_duration_seconds": 30}),
    )
    .await;
    let rule = json!({"retries": 1, "delay_seconds": 1});
    let (id, _) = campaign(
        &d,
        &agent,
        "+14155550177",
        json!({"amd": "hangup",
            "retry_policy": {"busy": rule, "no_answer": rule, "failed": rule}}),
    )
    .await;
    let stats = wait(&d, &format!("/v1/campaigns/{id}/stats"), |s| {
        s["status"] == "completed"
    })
    .await;
    assert_eq!(stats["attempts"]["no_answer"], 2, "{stats}\n{}", d.log());
    assert_eq!(stats["contacts"]["exhausted"], 1, "{stats}");
    let calls = ok(d.get("/v1/calls")).await;
    let items = calls["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{calls}");
    for call in items {
        assert_eq!(call["answered_by"], "machine", "{call}");
        assert_eq!(call["end_reason"], "machine_detected", "{call}");
    }
    let status = tokio::time::timeout(Duration::from_secs(15), sipp.wait())
        .await
        .expect("sipp ends")
        .expect("sipp ran");
    assert!(status.success(), "sipp: {status}");
}

both_backends!(an_opt_out_key_lists_the_number_and_the_next_campaign_skips_it);
