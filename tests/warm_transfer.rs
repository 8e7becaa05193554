//! Black-box tests of warm transfer: a SIPp caller reaches a voice agent on
//! the stand-in LLM, presses a key, and the LLM asks `transfer_call` in
//! `warm` mode. The daemon places a consult call through the caller's trunk
//! to a second SIPp (the person), which answers, hears the summary, and
//! streams its own tone; the caller's tone reaches the person and the
//! person's reaches the caller (both found in the daemon's recordings of
//! the two legs). Variant: the person's line is busy, and the caller hears
//! the agent say so. Both stores.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use common::{
    Backend, TestDaemon, chunk, dual_recording, ended_calls, finish, free_udp_port, run_sipp,
    serve, sse_body, tone_power, tone_seconds, tone_ulaw, tool_call_chunks, transcript_turns,
    transfer_desk, wait_for_udp_listener,
};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(60);
const NUMBER: &str = "+14155552671";
/// The person the agent hands the caller to.
const HUMAN: &str = "+14155550100";
const SUMMARY: &str = "The caller needs help with a billing question.";
const CALLER_HZ: f64 = 700.0;
const HUMAN_HZ: f64 = 1100.0;

/// What the stand-in LLM was sent.
#[derive(Default)]
struct StandIn {
    tool_results: Vec<String>,
    notices: Vec<String>,
}

type Seen = Arc<Mutex<StandIn>>;

/// The stand-in LLM: to the caller's key it asks a warm `transfer_call`
/// to [`HUMAN`] with [`SUMMARY`]; given the tool's result it says "One
/// moment please."; given the daemon's notice that the transfer did not go
/// through it tells the caller so, quoting the reason.
async fn llm(State(seen): State<Seen>, body: axum::Json<Value>) -> axum::response::Response {
    let last = body["messages"]
        .as_array()
        .and_then(|m| m.last().cloned())
        .unwrap_or(Value::Null);
    let content = last["content"].as_str().unwrap_or_default().to_string();
    let mut seen = seen.lock().unwrap();
    let zero = Duration::ZERO;
    let mut chunks = vec![(zero, chunk(json!({"role": "assistant", "content": ""})))];
    if last["role"] == "tool" {
        seen.tool_results.push(content.clone());
        chunks.push((zero, chunk(json!({"content": "One moment please."}))));
    } else if content.contains("[Notice") {
        seen.notices.push(content.clone());
        let why = content
            .split("did not go through: ")
            .nth(1)
            .and_then(|r| r.split('.').next())
            .unwrap_or("unknown");
        let text = format!("Sorry, I could not connect you: {why}.");
        chunks.push((zero, chunk(json!({"content": text}))));
    } else if last["role"] == "user" {
        let args = json!({"to": HUMAN, "mode": "warm", "summary": SUMMARY}).to_string();
        chunks.extend(
            tool_call_chunks("call_w1", "transfer_call", &args)
                .into_iter()
                .map(|c| (zero, c)),
        );
    }
    chunks.extend(finish().into_iter().map(|c| (zero, c)));
    axum::response::Response::builder()
        .header("content-type", "text/event-stream")
        .body(sse_body(chunks, Arc::default()))
        .unwrap()
}

/// A daemon whose trunk takes the caller in and sends the consult call to
/// the person's SIPp on `human_port`; a recorded voice agent on the
/// stand-in LLM that may transfer to [`HUMAN`], bound to [`NUMBER`].
async fn daemon(backend: Backend, human_port: u16, rec_dir: &Path) -> (TestDaemon, Seen) {
    let seen: Seen = Arc::default();
    let url = serve(
        axum::Router::new()
            .route("/v1/chat/completions", post(llm))
            .with_state(seen.clone()),
    )
    .await;
    let d = transfer_desk(backend, human_port, rec_dir, &url, HUMAN, NUMBER).await;
    (d, seen)
}

/// The caller: streams `audio` from the answer on (its tone after a
/// silent lead), presses 1 (SIP INFO, so that no second RTP source joins
/// the stream) two seconds after the answer, and hangs up `call_ms` after
/// the answer.
fn caller_scenario(dir: &Path, audio: &Path, call_ms: u32) -> String {
    let head =
        std::fs::read_to_string(common::scenario("uac-invite-dtmf-expect-200-bye.xml")).unwrap();
    let cut = head.find("  <nop>").unwrap();
    let bye = head
        .find("  <send retrans=\"500\">\n    <![CDATA[\n      BYE")
        .unwrap();
    let info = "  <send retrans=\"500\">\n    <![CDATA[\n      \
        INFO [next_url] SIP/2.0\n      \
        Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport\n      \
        From: sipp <sip:+15550001@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]\n      \
        [last_To:]\n      Call-ID: [call_id]\n      CSeq: 2 INFO\n      \
        Contact: <sip:sipp@[local_ip]:[local_port]>\n      Max-Forwards: 70\n      \
        Content-Type: application/dtmf-relay\n      Content-Length: [len]\n\n      \
        Signal=1\n      Duration=160\n    ]]>\n  </send>\n  <recv response=\"200\"/>\n";
    let middle = format!(
        "  <nop>\n    <action>\n      <exec rtp_stream=\"{},1,0\"/>\n    </action>\n  </nop>\n  \
         <pause milliseconds=\"2000\"/>\n{info}  <pause milliseconds=\"{}\"/>\n",
        audio.display(),
        call_ms - 2000
    );
    let xml =
        format!("{}{middle}{}", &head[..cut], &head[bye..]).replace("CSeq: 2 BYE", "CSeq: 3 BYE");
    let path = dir.join("uac-warm-caller.xml");
    std::fs::write(&path, xml).unwrap();
    path.display().to_string()
}

/// The person: answers, streams `audio` from the answer on, and expects
/// our BYE.
fn human_scenario(dir: &Path, audio: &Path) -> String {
    let xml = std::fs::read_to_string(common::scenario("uas-answer-play-audio-expect-bye.xml"))
        .unwrap()
        .replace("answer.ul", &audio.display().to_string());
    let path = dir.join("uas-warm-human.xml");
    std::fs::write(&path, xml).unwrap();
    path.display().to_string()
}

/// Runs the person's SIPp (`scenario` on `port`) and the caller's at once;
/// both must succeed.
async fn run_both(d: &TestDaemon, human: &str, port: u16, caller: &str) {
    let human_media = free_udp_port().to_string();
    let human = human.to_owned();
    let person = tokio::spawn(async move {
        run_sipp(
            &human,
            port,
            None,
            &["-mi", "127.0.0.1", "-mp", &human_media],
            LIMIT,
        )
        .await
    });
    wait_for_udp_listener(port).await;
    let media = free_udp_port().to_string();
    let run = run_sipp(
        caller,
        free_udp_port(),
        Some(([127, 0, 0, 1], d.sip_port).into()),
        &["-s", NUMBER, "-mi", "127.0.0.1", "-mp", &media],
        LIMIT,
    )
    .await;
    assert!(run.success, "caller: {}\n{}", run.output, d.log());
    let person = person.await.unwrap();
    assert!(person.success, "person: {}\n{}", person.output, d.log());
}

/// Seconds (of 100 ms windows) of `samples` loud enough to be speech and
/// carrying neither tone.
fn speech_seconds(samples: &[i16]) -> f64 {
    samples
        .chunks_exact(800)
        .filter(|w| {
            let rms = (w.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / 800.0).sqrt();
            rms > 300.0
                && tone_power(w, 8000, CALLER_HZ) < 0.2
                && tone_power(w, 8000, HUMAN_HZ) < 0.2
        })
        .count() as f64
        / 10.0
}

/// The person answers: they hear the summary, then the caller's tone; the
/// caller hears the person's tone; two call rows, the consult one linked
/// to the caller's; the agent's transcript marks the hand-off.
async fn a_warm_transfer_joins_the_caller_and_the_person(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let human_port = free_udp_port();
    let (d, seen) = daemon(backend, human_port, &dir.path().join("rec")).await;
    // The caller's tone from 18 s after the answer (the agent and the
    // summary are done by then), for 12 s; the person's from 10 s after
    // their answer (the summary is done), for 14 s.
    let caller_tone = tone_ulaw(dir.path(), CALLER_HZ as u32, 18.0, 12.0);
    let human_tone = tone_ulaw(dir.path(), HUMAN_HZ as u32, 10.0, 14.0);
    let caller = caller_scenario(dir.path(), &caller_tone, 32_000);
    let human = human_scenario(dir.path(), &human_tone);
    run_both(&d, &human, human_port, &caller).await;

    let calls = ended_calls(&d, 2).await;
    assert_eq!(calls.len(), 2, "{calls:?}");
    let parent = calls.iter().find(|c| c["direction"] == "inbound").unwrap();
    let consult = calls.iter().find(|c| c["direction"] == "outbound").unwrap();
    let parent_id = parent["id"].as_str().unwrap();
    let consult_id = consult["id"].as_str().unwrap();
    assert_eq!(consult["to"], HUMAN, "{consult}");
    assert_eq!(consult["from"], NUMBER, "{consult}");
    assert!(!consult["answered_at"].is_null(), "{consult}");
    let metadata: Value = match &consult["metadata"] {
        Value::String(s) => serde_json::from_str(s).unwrap(),
        other => other.clone(),
    };
    assert_eq!(metadata["parent_call_id"], parent_id, "{consult}");
    assert_eq!(consult["context"]["parent_call_id"], parent_id, "{consult}");
    assert_eq!(parent["end_reason"], "caller_hangup", "{parent}");
    assert!(
        seen.lock().unwrap().tool_results[0].starts_with("ok"),
        "{}",
        d.log()
    );

    // The person heard the summary first, then the caller's tone; the
    // person's tone came in; the caller heard the person's tone.
    let (from_human, to_human) = dual_recording(&d, consult_id).await;
    let (from_caller, to_caller) = dual_recording(&d, parent_id).await;
    let heard = format!(
        "caller sent {CALLER_HZ} Hz {} s, person got it {} s; person sent {HUMAN_HZ} Hz {} s, \
         caller got it {} s\n{}",
        tone_seconds(&from_caller, CALLER_HZ),
        tone_seconds(&to_human, CALLER_HZ),
        tone_seconds(&from_human, HUMAN_HZ),
        tone_seconds(&to_caller, HUMAN_HZ),
        d.log()
    );
    let summary_end = (8 * 8000).min(to_human.len());
    assert!(
        speech_seconds(&to_human[..summary_end]) > 1.5,
        "the summary is spoken to the person: {} s",
        speech_seconds(&to_human[..summary_end])
    );
    assert!(tone_seconds(&to_human, CALLER_HZ) > 3.0, "{heard}");
    assert!(tone_seconds(&from_human, HUMAN_HZ) > 3.0, "{heard}");
    assert!(tone_seconds(&to_caller, HUMAN_HZ) > 3.0, "{heard}");
    // The caller's transcript: the agent's "one moment", then the hand-off.
    let turns = transcript_turns(&d, parent_id).await;
    let said = |needle: &str| {
        turns
            .iter()
            .position(|t| t["text"].as_str().unwrap_or_default().contains(needle))
    };
    let moment = said("One moment").unwrap_or_else(|| panic!("{turns:?}"));
    let joined =
        said(&format!("joined with call {consult_id}")).unwrap_or_else(|| panic!("{turns:?}"));
    assert!(moment < joined, "{turns:?}");
}

/// The person's line is busy: the consult call ends `busy`, linked to the
/// caller's; the caller's call goes on and the agent tells the caller.
async fn a_busy_person_leaves_the_caller_with_the_agent(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let human_port = free_udp_port();
    let (d, seen) = daemon(backend, human_port, &dir.path().join("rec")).await;
    let silence = tone_ulaw(dir.path(), CALLER_HZ as u32, 30.0, 0.1);
    let caller = caller_scenario(dir.path(), &silence, 16_000);
    run_both(
        &d,
        &common::scenario("uas-invite-expect-486-busy.xml"),
        human_port,
        &caller,
    )
    .await;

    let calls = ended_calls(&d, 2).await;
    let parent = calls.iter().find(|c| c["direction"] == "inbound").unwrap();
    let consult = calls.iter().find(|c| c["direction"] == "outbound").unwrap();
    assert_eq!(consult["end_reason"], "busy", "{consult}");
    assert!(consult["answered_at"].is_null(), "{consult}");
    assert_eq!(parent["end_reason"], "caller_hangup", "{parent}");
    let notices = seen.lock().unwrap().notices.clone();
    assert_eq!(notices.len(), 1, "{notices:?}\n{}", d.log());
    assert!(notices[0].contains("busy"), "{notices:?}");
    // The agent spoke again, to the caller, after the failed transfer.
    let turns = transcript_turns(&d, parent["id"].as_str().unwrap()).await;
    let back = turns
        .iter()
        .find(|t| {
            t["speaker"] == "agent"
                && t["text"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("could not connect you: the line is busy")
        })
        .unwrap_or_else(|| panic!("{turns:?}\n{}", d.log()));
    assert_eq!(back["interrupted"], false, "{back}");
    // And the caller heard it: speech on the caller's side after the key.
    let (_, to_caller) = dual_recording(&d, parent["id"].as_str().unwrap()).await;
    let after = (back["start_ms"].as_u64().unwrap() as usize * 8).min(to_caller.len());
    assert!(
        speech_seconds(&to_caller[after..]) > 1.0,
        "the agent is heard again: {} s",
        speech_seconds(&to_caller[after..])
    );
}

both_backends!(
    a_warm_transfer_joins_the_caller_and_the_person,
    a_busy_person_leaves_the_caller_with_the_agent
);
