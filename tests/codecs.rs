//! Wideband codecs on real calls: baresip (Debian, its g722 and opus
//! modules) offering only G.722, then only Opus, to the echo agent (the
//! tone it plays comes back) and to a voice agent (the sentence it speaks
//! is transcribed, the agent's reply reaches it); SIPp offering only PCMU,
//! or none of our codecs. The codec each call took is read from the
//! daemon's SIP trace (`[sip] trace`) and from baresip's recording, whose
//! rate is the codec's.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{TestDaemon, free_udp_port, json_of, run_sipp};
use serde_json::{Value, json};

const NUMBER: &str = "+14155552671";

/// A trunk that prefers the wideband codecs, G.711 last.
fn wideband_trunk() -> String {
    "name = \"hd\"\n[inbound]\nallow = [\"127.0.0.1/32\"]\n\
     [media]\ncodecs = [\"G722\", \"OPUS\", \"PCMU\"]\n"
        .into()
}

async fn daemon() -> TestDaemon {
    TestDaemon::builder()
        .profile("hd", &wideband_trunk())
        .env("AGENTLINE_SIP__TRACE", "true")
        .start()
        .await
}

/// The newest call once it has ended, within 20 s.
async fn ended_call(d: &TestDaemon) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, page) = json_of(d.get("/v1/calls?limit=1").send().await.unwrap()).await;
        if let Some(call) = page["items"].get(0)
            && !call["ended_at"].is_null()
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

/// The SDP bodies of a call's SIP trace: the `m=audio` and `a=rtpmap`
/// lines, in order (offer first, then our answer).
async fn sdp_lines(d: &TestDaemon, call: &Value) -> Vec<String> {
    let id = call["id"].as_str().unwrap();
    let r = d
        .get(&format!("/v1/calls/{id}/sip-trace"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let trace = r.text().await.unwrap();
    trace
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("m=audio") || l.starts_with("a=rtpmap"))
        .map(str::to_owned)
        .collect()
}

/// Our answer's lines: those after the last `m=audio` line (the trace
/// holds the offer, then the 200's answer).
fn answer_lines(lines: &[String]) -> &[String] {
    let last_m = lines
        .iter()
        .rposition(|l| l.starts_with("m=audio"))
        .expect("an m=audio line");
    &lines[last_m..]
}

/// baresip offers only `codec` and plays a 700 Hz tone to the echo agent:
/// our answer names that codec, and baresip hears the tone back.
async fn echo_with(codec: &str, rtpmap: &str, rate: u32) {
    let d = daemon().await;
    d.provision_echo(NUMBER, "trk_hd", 30).await;
    let dir = tempfile::tempdir().unwrap();
    let tone = dir.path().join("tone.wav");
    common::write_tone_wav(&tone, rate, 700.0, 600, 2500);
    let common::BaresipCall { log, heard } =
        common::baresip_call_with_codec(dir.path(), &tone, NUMBER, d.sip_port, 8, codec).await;
    let call = ended_call(&d).await;
    let lines = sdp_lines(&d, &call).await;
    let answer = answer_lines(&lines);
    assert!(
        answer.iter().any(|l| l.ends_with(rtpmap)),
        "answer {answer:?} lacks {rtpmap}\n{log}"
    );
    assert!(
        !answer
            .iter()
            .any(|l| l.contains("PCMU") || l.contains("PCMA")),
        "answer {answer:?}"
    );
    let heard = heard.unwrap_or_else(|| panic!("baresip recorded nothing:\n{log}\n{}", d.log()));
    let (heard_rate, samples) = common::read_wav(&heard);
    assert_eq!(heard_rate, rate, "baresip decoded {codec} at its rate");
    let at_700 = common::strongest_window(&samples, heard_rate, 700.0);
    let at_1100 = common::strongest_window(&samples, heard_rate, 1100.0);
    assert!(
        at_700 > 0.3,
        "the tone came back over {codec}: 700 Hz {at_700}, 1100 Hz {at_1100}\n{log}\n{}",
        d.log()
    );
    assert!(at_1100 < 0.05, "and nothing else: 1100 Hz {at_1100}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_with_only_g722_hears_its_tone_from_the_echo_agent() {
    echo_with("G722", "G722/8000", 16_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_with_only_opus_hears_its_tone_from_the_echo_agent() {
    echo_with("opus", "opus/48000/2", 48_000).await;
}

/// A voice agent on a call where baresip offers only `codec`: our answer
/// names it (`rtpmap`); baresip speaks a flite sentence; the stored
/// transcript holds it, the agent's reply follows the script, and
/// baresip's recording of the agent is at `rate` and not silent.
async fn voice_with(codec: &str, rtpmap: &str, rate: u32) {
    let d = daemon().await;
    let (status, agent) = json_of(
        d.post("/v1/agents")
            .json(&json!({
                "name": "clinic",
                "kind": "voice",
                "max_duration_seconds": 60,
                "tts": {"provider": "embedded", "voice": "slt"},
                "script": {
                    "start": "main",
                    "greeting": "Hello, this is the clinic.",
                    "slots": {"day": {"pattern": "\\b(monday|tuesday|wednesday|thursday|friday)\\b",
                                      "prompt": "Which day would you like?"}},
                    "states": {"main": {"intents": [
                        {"name": "book", "keywords": ["appointment", "book"], "require": ["day"],
                         "reply": "Your appointment is booked for {day}. Goodbye.",
                         "actions": [{"type": "hangup"}]}
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
        .json(&json!({"number": NUMBER, "agent_id": agent["id"], "trunk_id": "trk_hd"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let dir = tempfile::tempdir().unwrap();
    let kal = dir.path().join("kal.wav");
    let spoken = std::process::Command::new("flite")
        .args([
            "-voice",
            "kal",
            "-t",
            "I would like to book an appointment for Tuesday.",
            "-o",
        ])
        .arg(&kal)
        .status()
        .expect("flite is installed by scripts/test");
    assert!(spoken.success());
    // After the greeting, the sentence; then time for the reply (baresip's
    // helper converts it to the codec's rate).
    let caller = dir.path().join("caller.wav");
    let padded = std::process::Command::new("sox")
        .arg(&kal)
        .arg(&caller)
        .args(["pad", "3", "12"])
        .status()
        .expect("sox is installed by scripts/test");
    assert!(padded.success());

    let common::BaresipCall { log, heard } =
        common::baresip_call_with_codec(dir.path(), &caller, NUMBER, d.sip_port, 25, codec).await;
    let call = ended_call(&d).await;
    let lines = sdp_lines(&d, &call).await;
    assert!(
        answer_lines(&lines).iter().any(|l| l.ends_with(rtpmap)),
        "{codec}: {lines:?}"
    );
    assert_eq!(
        call["end_reason"],
        "agent_hangup",
        "{call}\n{log}\n{}",
        d.log()
    );
    let id = call["id"].as_str().unwrap();
    let (status, t) = json_of(
        d.get(&format!("/v1/calls/{id}/transcript"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{t}");
    let turns = t["turns"].as_array().unwrap();
    let said = turns
        .iter()
        .find(|t| t["speaker"] == "caller")
        .unwrap_or_else(|| panic!("no caller turn: {t}\n{}", d.log()));
    let words = said["text"].as_str().unwrap().to_lowercase();
    assert!(
        words.contains("appointment") && words.contains("tuesday"),
        "{t}"
    );
    let reply = turns.iter().rfind(|t| t["speaker"] == "agent").unwrap();
    assert_eq!(
        reply["text"], "Your appointment is booked for tuesday. Goodbye.",
        "{t}"
    );
    // baresip heard the agent over the codec: its recording is at the
    // codec's rate, and a second or more of it is speech.
    let heard = heard.unwrap_or_else(|| panic!("baresip recorded nothing:\n{log}"));
    let (heard_rate, samples) = common::read_wav(&heard);
    assert_eq!(heard_rate, rate, "baresip decoded {codec} at its rate");
    let loud = samples.iter().filter(|s| s.unsigned_abs() > 1000).count();
    assert!(
        loud > rate as usize,
        "the agent's speech reached baresip: {loud}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voice_agent_on_g722_transcribes_the_callers_sentence() {
    voice_with("G722", "G722/8000", 16_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voice_agent_on_opus_transcribes_the_callers_sentence() {
    voice_with("opus", "opus/48000/2", 48_000).await;
}

/// SIPp offers PCMU only to the trunk that prefers G.722 and Opus: the
/// answer is PCMU alone (the scenario checks the 200's SDP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_of_pcmu_only_still_gets_pcmu() {
    let d = daemon().await;
    d.provision_echo(NUMBER, "trk_hd", 30).await;
    let media_port = free_udp_port();
    let run = run_sipp(
        "uac-invite-pcmu-only-expect-pcmu-answer.xml",
        free_udp_port(),
        Some(([127, 0, 0, 1], d.sip_port).into()),
        &["-s", NUMBER, "-d", "1000", "-mp", &media_port.to_string()],
        Duration::from_secs(20),
    )
    .await;
    assert!(run.success, "{}\n{}", run.output, d.log());
}

/// An offer with none of our codecs (G.729 only) is refused 488, and no
/// call is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_without_our_codecs_gets_488() {
    let d = daemon().await;
    d.provision_echo(NUMBER, "trk_hd", 30).await;
    let run = run_sipp(
        "uac-invite-g729-only-expect-488.xml",
        free_udp_port(),
        Some(([127, 0, 0, 1], d.sip_port).into()),
        &["-s", NUMBER, "-mp", &free_udp_port().to_string()],
        Duration::from_secs(20),
    )
    .await;
    assert!(run.success, "{}\n{}", run.output, d.log());
    // The call's task ends just after its 488 went out: the gauge follows
    // within moments, never stays up.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = d.metrics().await;
        let active = metrics
            .lines()
            .any(|l| l.starts_with("agentline_calls_active") && !l.ends_with(" 0"));
        if !active {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
