//! Black-box tests of attended transfer with Replaces (RFC 5589 §7, RFC
//! 3891). A SIPp caller reaches a voice agent on the stand-in LLM, presses
//! a key, and the LLM asks `transfer_call` in `attended` mode: the daemon
//! places the consult call to a second SIPp (the person), which answers
//! and hears the summary; then the caller's SIPp gets a REFER whose
//! Refer-To carries a Replaces naming the consult dialog. Accepted (202,
//! NOTIFY sipfrag 200): the daemon leaves both legs. Refused (603): the
//! daemon bridges the caller and the person itself, tones both ways.
//!
//! And the other way (RFC 3891 §3): a PBX moves a call it has with us
//! onto a new dialog by an INVITE with Replaces; from the call's trunk it
//! takes the call over (200, BYE of the old dialog, RTP to the new SDP),
//! while an unknown Call-ID, or the right one from another trunk's
//! address, gets 481 and leaves the call alone. Both stores.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use common::{
    Backend, TestDaemon, chunk, dual_recording, ended_calls, finish, free_udp_port, json_of,
    run_sipp, serve, sse_body, tone_seconds, tone_ulaw, tool_call_chunks, transcript_turns,
    transfer_desk, wait_for_udp_listener,
};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(60);
const NUMBER: &str = "+14155552671";
/// The person the agent hands the caller to.
const HUMAN: &str = "+14155550100";
const CALLER_HZ: f64 = 700.0;
const HUMAN_HZ: f64 = 1100.0;

type ToolResults = Arc<Mutex<Vec<String>>>;

/// The stand-in LLM: to the caller's key it asks an attended
/// `transfer_call` to [`HUMAN`]; given the tool's result it says "One
/// moment please.".
async fn llm(State(seen): State<ToolResults>, body: axum::Json<Value>) -> axum::response::Response {
    let last = body["messages"]
        .as_array()
        .and_then(|m| m.last().cloned())
        .unwrap_or(Value::Null);
    let zero = Duration::ZERO;
    let mut chunks = vec![(zero, chunk(json!({"role": "assistant", "content": ""})))];
    if last["role"] == "tool" {
        let content = last["content"].as_str().unwrap_or_default().to_string();
        seen.lock().unwrap().push(content);
        chunks.push((zero, chunk(json!({"content": "One moment please."}))));
    } else if last["role"] == "user" {
        let args = json!({"to": HUMAN, "mode": "attended",
            "summary": "The caller needs help with a billing question."})
        .to_string();
        chunks.extend(
            tool_call_chunks("call_a1", "transfer_call", &args)
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
async fn daemon(backend: Backend, human_port: u16, rec_dir: &Path) -> (TestDaemon, ToolResults) {
    let seen: ToolResults = Arc::default();
    let url = serve(
        axum::Router::new()
            .route("/v1/chat/completions", post(llm))
            .with_state(seen.clone()),
    )
    .await;
    let d = transfer_desk(backend, human_port, rec_dir, &url, HUMAN, NUMBER).await;
    (d, seen)
}

/// `scenario` (from tests/sipp) written to `dir` with `placeholder`
/// (an audio file name in it) replaced by `audio`.
fn with_audio(dir: &Path, scenario: &str, placeholder: &str, audio: &Path) -> String {
    let xml = std::fs::read_to_string(common::scenario(scenario))
        .unwrap()
        .replace(placeholder, &audio.display().to_string());
    let path = dir.join(scenario);
    std::fs::write(&path, xml).unwrap();
    path.display().to_string()
}

/// Runs the person's SIPp (`human` on `port`) and the caller's
/// (`caller`, with `caller_extra` arguments) at once; both must succeed.
async fn run_both(d: &TestDaemon, human: &str, port: u16, caller: &str, caller_extra: &[&str]) {
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
    let mut args = vec!["-s", NUMBER, "-mi", "127.0.0.1", "-mp", &media];
    args.extend_from_slice(caller_extra);
    let run = run_sipp(
        caller,
        free_udp_port(),
        Some(([127, 0, 0, 1], d.sip_port).into()),
        &args,
        LIMIT,
    )
    .await;
    assert!(run.success, "caller: {}\n{}", run.output, d.log());
    let person = person.await.unwrap();
    assert!(person.success, "person: {}\n{}", person.output, d.log());
}

/// RFC 3261 §19.1.1 escaping as the daemon does it for a URI header value.
fn escaped(value: &str) -> String {
    value
        .bytes()
        .map(
            |b| match b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                true => char::from(b).to_string(),
                false => format!("%{b:02X}"),
            },
        )
        .collect()
}

/// The caller's side takes the REFER: its Refer-To names the consult
/// dialog (the consult call's SIP Call-ID, the person's tag as to-tag),
/// NOTIFY 200 completes it, the daemon BYEs the caller and then the
/// consult leg; both calls end `transferred`, the transcript says how.
async fn an_accepted_refer_with_replaces_leaves_both_legs(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let human_port = free_udp_port();
    let (d, seen) = daemon(backend, human_port, &dir.path().join("rec")).await;
    let silence = tone_ulaw(dir.path(), CALLER_HZ as u32, 40.0, 0.1);
    let caller = with_audio(
        dir.path(),
        "uac-invite-info-1-expect-refer-replaces-202-notify-200-expect-bye.xml",
        "caller.ul",
        &silence,
    );
    let human = with_audio(
        dir.path(),
        "uas-answer-play-audio-expect-bye.xml",
        "answer.ul",
        &silence,
    );
    let log = dir.path().join("caller.log");
    let log_arg = log.display().to_string();
    run_both(
        &d,
        &human,
        human_port,
        &caller,
        &["-trace_logs", "-log_file", &log_arg],
    )
    .await;

    let calls = ended_calls(&d, 2).await;
    let parent = calls.iter().find(|c| c["direction"] == "inbound").unwrap();
    let consult = calls.iter().find(|c| c["direction"] == "outbound").unwrap();
    assert_eq!(parent["end_reason"], "transferred", "{parent}\n{}", d.log());
    assert_eq!(consult["end_reason"], "transferred", "{consult}");
    assert_eq!(consult["to"], HUMAN, "{consult}");
    assert!(!consult["answered_at"].is_null(), "{consult}");
    assert!(seen.lock().unwrap()[0].starts_with("ok"), "{}", d.log());
    // The Refer-To the caller's side got names the consult dialog.
    let sip_call_id = consult["sip_call_id"].as_str().unwrap();
    let logged = std::fs::read_to_string(&log).unwrap();
    let expected = format!("?Replaces={}%3Bto-tag%3D", escaped(sip_call_id));
    assert!(
        logged.contains(&expected),
        "{expected} not in the Refer-To: {logged}"
    );
    let turns = transcript_turns(&d, parent["id"].as_str().unwrap()).await;
    assert!(
        turns.iter().any(|t| t["text"]
            .as_str()
            .unwrap_or_default()
            .contains("by REFER with Replaces")),
        "{turns:?}"
    );
}

/// The caller's side refuses the REFER (603): the daemon bridges the
/// caller and the person itself; each hears the other's tone, and the
/// transcript records the refusal.
async fn a_refused_refer_falls_back_to_the_bridge(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let human_port = free_udp_port();
    let (d, _) = daemon(backend, human_port, &dir.path().join("rec")).await;
    // The caller's tone from 16 s after the answer (the REFER is refused
    // by then), the person's from 12 s after theirs (the summary is done).
    let caller_tone = tone_ulaw(dir.path(), CALLER_HZ as u32, 16.0, 10.0);
    let human_tone = tone_ulaw(dir.path(), HUMAN_HZ as u32, 12.0, 14.0);
    let caller = with_audio(
        dir.path(),
        "uac-invite-info-1-expect-refer-replaces-603-then-bye.xml",
        "caller.ul",
        &caller_tone,
    );
    let human = with_audio(
        dir.path(),
        "uas-answer-play-audio-expect-bye.xml",
        "answer.ul",
        &human_tone,
    );
    run_both(&d, &human, human_port, &caller, &[]).await;

    let calls = ended_calls(&d, 2).await;
    let parent = calls.iter().find(|c| c["direction"] == "inbound").unwrap();
    let consult = calls.iter().find(|c| c["direction"] == "outbound").unwrap();
    assert_eq!(
        parent["end_reason"],
        "caller_hangup",
        "{parent}\n{}",
        d.log()
    );
    let parent_id = parent["id"].as_str().unwrap();
    let consult_id = consult["id"].as_str().unwrap();
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
    assert!(tone_seconds(&to_human, CALLER_HZ) > 3.0, "{heard}");
    assert!(tone_seconds(&to_caller, HUMAN_HZ) > 3.0, "{heard}");
    let turns = transcript_turns(&d, parent_id).await;
    assert!(
        turns.iter().any(|t| {
            let text = t["text"].as_str().unwrap_or_default();
            text.contains(&format!("joined with call {consult_id}"))
                && text.contains("REFER with Replaces refused: REFER answered 603")
        }),
        "{turns:?}"
    );
}

/// A daemon with the echo agent on [`NUMBER`] through trunk `carrier`
/// (127.0.0.1), and a second trunk `other` for 127.0.0.2.
async fn echo_daemon(backend: Backend) -> TestDaemon {
    let d = TestDaemon::builder()
        .backend(backend)
        .profile(
            "carrier",
            "name = \"carrier\"\n[inbound]\nallow = [\"127.0.0.1/32\"]\n",
        )
        .profile(
            "other",
            "name = \"other\"\n[inbound]\nallow = [\"127.0.0.2/32\"]\n",
        )
        .allow_loopback()
        .start()
        .await;
    d.provision_echo(NUMBER, "trk_carrier", 60).await;
    d
}

/// Runs `scenario` from `ip` against the daemon with `Replaces: replaces`
/// and `sdp_port` as its SDP's audio port.
async fn replacing(d: &TestDaemon, scenario: &str, ip: &str, replaces: &str, sdp_port: u16) {
    let media = free_udp_port().to_string();
    let sdp_port = sdp_port.to_string();
    let run = run_sipp(
        scenario,
        free_udp_port(),
        Some(([127, 0, 0, 1], d.sip_port).into()),
        &[
            "-s", NUMBER, "-i", ip, "-mi", ip, "-mp", &media, "-key", "replaces", replaces, "-key",
            "sdp_port", &sdp_port,
        ],
        LIMIT,
    )
    .await;
    assert!(
        run.success,
        "{scenario} from {ip}: {}\n{}",
        run.output,
        d.log()
    );
}

/// Call A is up; an INVITE with Replaces for an unknown Call-ID gets 481,
/// one naming A's dialog from the other trunk's address gets 481 and A
/// stays up; one from A's trunk is answered 200, A gets BYE, our RTP goes
/// to the new SDP's port, and the call (one row) goes on until the new
/// dialog hangs up, its transcript noting the replacement. Then A's
/// dialog, ended, is declined (603) to its trunk and still 481 to others.
async fn an_invite_with_replaces_moves_the_call_onto_the_new_dialog(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let d = echo_daemon(backend).await;
    let tone = tone_ulaw(dir.path(), CALLER_HZ as u32, 0.0, 2.0);
    let caller = with_audio(
        dir.path(),
        "uac-invite-log-dialog-expect-bye.xml",
        "caller.ul",
        &tone,
    );
    let log = dir.path().join("a.log");
    let log_arg = log.display().to_string();
    let sip = ([127, 0, 0, 1], d.sip_port).into();
    let media = free_udp_port().to_string();
    let a = tokio::spawn(async move {
        run_sipp(
            &caller,
            free_udp_port(),
            Some(sip),
            &[
                "-s",
                NUMBER,
                "-mi",
                "127.0.0.1",
                "-mp",
                &media,
                "-trace_logs",
                "-log_file",
                &log_arg,
            ],
            LIMIT,
        )
        .await
    });
    // A's dialog as its log names it: Call-ID;to-tag=ours;from-tag=its.
    let deadline = Instant::now() + Duration::from_secs(20);
    let dialog = loop {
        let logged = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = logged.lines().find(|l| l.starts_with("dialog ")) {
            break line
                .trim_start_matches("dialog ")
                .trim_end_matches(" end")
                .to_owned();
        }
        assert!(Instant::now() < deadline, "A logged no dialog\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // A's tone is sent by now (our RTP latched to A, silence fill on).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let unused = free_udp_port();
    replacing(
        &d,
        "uac-invite-replaces-expect-481.xml",
        "127.0.0.1",
        "nosuch@127.0.0.1;to-tag=1;from-tag=2",
        unused,
    )
    .await;
    replacing(
        &d,
        "uac-invite-replaces-expect-481.xml",
        "127.0.0.2",
        &dialog,
        unused,
    )
    .await;
    let (_, page) = json_of(d.get("/v1/calls").send().await.unwrap()).await;
    let items = page["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 1, "only A: {page}");
    assert!(items[0]["ended_at"].is_null(), "A is untouched: {page}");
    assert!(!a.is_finished(), "A got no BYE");

    // Our RTP to the new dialog's SDP port, counted while it is up.
    let rtp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let rtp_port = rtp.local_addr().unwrap().port();
    let packets = Arc::new(AtomicUsize::new(0));
    let counted = packets.clone();
    let counter = tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_secs(10), rtp.recv_from(&mut buf)).await
        {
            if n >= 12 && buf[0] >> 6 == 2 {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    replacing(
        &d,
        "uac-invite-replaces-expect-200-bye.xml",
        "127.0.0.1",
        &dialog,
        rtp_port,
    )
    .await;
    let a = a.await.unwrap();
    assert!(a.success, "A: {}\n{}", a.output, d.log());
    counter.abort();
    let got = packets.load(Ordering::Relaxed);
    assert!(
        got > 50,
        "{got} RTP packets to the new SDP's port\n{}",
        d.log()
    );

    let calls = ended_calls(&d, 1).await;
    assert_eq!(calls.len(), 1, "one call row: {calls:?}");
    assert_eq!(calls[0]["end_reason"], "caller_hangup", "{calls:?}");
    // A's dialog has ended (replaced): its trunk is declined, any other
    // source still learns nothing.
    for (scenario, ip) in [
        ("uac-invite-replaces-expect-603.xml", "127.0.0.1"),
        ("uac-invite-replaces-expect-481.xml", "127.0.0.2"),
    ] {
        replacing(&d, scenario, ip, &dialog, unused).await;
    }
    let turns = transcript_turns(&d, calls[0]["id"].as_str().unwrap()).await;
    assert!(
        turns.iter().any(|t| t["text"]
            .as_str()
            .unwrap_or_default()
            .starts_with("[replaced: the call moved to SIP dialog")),
        "{turns:?}\n{}",
        d.log()
    );
}

both_backends!(
    an_accepted_refer_with_replaces_leaves_both_legs,
    a_refused_refer_falls_back_to_the_bridge,
    an_invite_with_replaces_moves_the_call_onto_the_new_dialog
);
