//! The `voice` agent on real calls: the real daemon with its embedded
//! speech engines, SIPp or baresip as the caller, and the transcript read
//! back through the API.

mod common;

use std::time::{Duration, Instant};

use common::{Backend, TestDaemon, error_fields, free_udp_port, json_of, run_sipp};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(30);
const NUMBER: &str = "+14155552671";

fn trunk() -> String {
    "name = \"carrier\"\n[inbound]\nallow = [\"127.0.0.1/32\"]\n[limits]\nmax_calls = 10\n".into()
}

/// An agent and the number bound to it; returns the agent id.
async fn provision(d: &TestDaemon, agent: Value) -> String {
    let (status, agent) = json_of(d.post("/v1/agents").json(&agent).send().await.unwrap()).await;
    assert_eq!(status, 201, "{agent}");
    let id = agent["id"].as_str().unwrap().to_owned();
    let r = d
        .post("/v1/phone-numbers")
        .json(&json!({"number": NUMBER, "agent_id": id, "trunk_id": "trk_carrier"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    id
}

/// A phone menu: 1 for sales, 2 for support.
fn menu_agent() -> Value {
    json!({
        "name": "menu",
        "kind": "voice",
        "max_duration_seconds": 60,
        "script": {
            "start": "menu",
            "greeting": "Press one for sales or two for support.",
            "states": {"menu": {"intents": [
                {"name": "sales", "dtmf": "1", "reply": "Sales here, how can we help?"},
                {"name": "support", "dtmf": "2", "reply": "Support here, what is the problem?",
                 "actions": [{"type": "summary", "text": "The caller asked for support"}]}
            ]}}
        }
    })
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

async fn transcript(d: &TestDaemon, id: &str) -> Value {
    let (status, t) = json_of(
        d.get(&format!("/v1/calls/{id}/transcript"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{t}");
    t
}

/// (a) The caller presses 2 (RFC 4733): the scripted menu takes the
/// support branch, and the stored transcript holds the key and the reply.
async fn dtmf_picks_the_menu_branch(backend: Backend) {
    let d = TestDaemon::builder()
        .backend(backend)
        .profile("carrier", &trunk())
        .start()
        .await;
    provision(&d, menu_agent()).await;
    let run = run_sipp(
        "uac-invite-dtmf-2-expect-200-bye.xml",
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
    let id = call["id"].as_str().unwrap();
    let t = transcript(&d, id).await;
    let turns = t["turns"].as_array().unwrap();
    let agent_lines: Vec<&str> = turns
        .iter()
        .filter(|t| t["speaker"] == "agent")
        .map(|t| t["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        agent_lines.first(),
        Some(&"Press one for sales or two for support."),
        "{t}\n{}",
        d.log()
    );
    assert!(
        agent_lines.iter().any(|l| l.starts_with("Support here")),
        "{t}\n{}",
        d.log()
    );
    assert!(!agent_lines.iter().any(|l| l.contains("Sales")), "{t}");
    assert!(
        turns
            .iter()
            .any(|t| t["speaker"] == "caller" && t["text"] == "[DTMF 2]"),
        "{t}"
    );
    assert_eq!(call["dtmf"].as_str().unwrap().chars().last(), Some('2'));
}

/// (b) The transcript's shape: ordered turns with offsets from the answer,
/// the reply's latency, and the brain's summary on the call, in the
/// transcript and in `call.ended`; 404 for unknown or foreign ids.
async fn transcript_shape_summary_and_404s(backend: Backend) {
    let d = TestDaemon::builder()
        .backend(backend)
        .profile("carrier", &trunk())
        .start()
        .await;
    provision(&d, menu_agent()).await;
    let run = run_sipp(
        "uac-invite-dtmf-2-expect-200-bye.xml",
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
    let id = call["id"].as_str().unwrap();
    let t = transcript(&d, id).await;
    assert_eq!(t["call_id"], id);
    assert_eq!(t["summary"], "The caller asked for support", "{t}");
    assert_eq!(call["summary"], t["summary"], "{call}");
    let turns = t["turns"].as_array().unwrap();
    let duration = call["duration_ms"].as_i64().unwrap();
    let mut last_start = 0;
    for turn in turns {
        let (start, end) = (
            turn["start_ms"].as_i64().unwrap(),
            turn["end_ms"].as_i64().unwrap(),
        );
        assert!(start >= last_start && start <= end, "{t}");
        assert!(end <= duration + 100, "{t} vs {duration} ms");
        last_start = start;
        assert!(turn["interrupted"].is_boolean(), "{turn}");
        if !turn["interrupted"].as_bool().unwrap() {
            assert!(turn["heard"].is_null(), "{turn}");
        }
    }
    // The greeting plays first, from the answer on, and lasts.
    assert_eq!(turns[0]["speaker"], "agent");
    assert!(turns[0]["start_ms"].as_i64().unwrap() < 500, "{t}");
    assert!(turns[0]["end_ms"].as_i64().unwrap() > 1000, "{t}");
    assert!(turns[0]["latency"].is_null(), "{t}");
    // A reply to a key has no STT step but every other one.
    let reply = turns
        .iter()
        .rfind(|t| t["speaker"] == "agent" && !t["interrupted"].as_bool().unwrap())
        .unwrap();
    let latency = &reply["latency"];
    assert!(latency["stt_final_ms"].is_null(), "{reply}");
    for step in ["llm_first_token_ms", "tts_first_audio_ms", "first_rtp_ms"] {
        assert!(latency[step].as_i64().is_some(), "{step}: {reply}");
    }
    assert!(
        latency["first_rtp_ms"].as_i64() >= latency["tts_first_audio_ms"].as_i64(),
        "{reply}"
    );
    // call.ended carries the summary.
    let events = d.store().await.events_after(0, 100).await.unwrap();
    let ended: Value = events
        .iter()
        .find(|e| e.event_type == "call.ended")
        .map(|e| serde_json::from_str(&e.payload).unwrap())
        .expect("call.ended written");
    assert_eq!(ended["data"]["summary"], "The caller asked for support");

    for missing in [
        "/v1/calls/call_01jdw8q1m7k3x9b5n4c2v6t8r0/transcript",
        "/v1/calls/agt_01jdw8q1m7k3x9b5n4c2v6t8r0/transcript",
    ] {
        let (status, body) = json_of(d.get(missing).send().await.unwrap()).await;
        assert_eq!(status, 404, "{missing}: {body}");
        assert_eq!(body["error"]["code"], "not_found", "{body}");
    }
}

both_backends!(
    dtmf_picks_the_menu_branch,
    transcript_shape_summary_and_404s
);

/// A call to a number whose agent has no transcript (echo) answers an empty
/// one; a voice agent without a script or an LLM is refused by the API.
#[tokio::test]
async fn voice_agents_need_a_brain_and_other_calls_have_no_turns() {
    let d = TestDaemon::builder()
        .profile("carrier", &trunk())
        .start()
        .await;
    let (status, body) = json_of(
        d.post("/v1/agents")
            .json(&json!({"name": "mute", "kind": "voice"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(error_fields(&body, status), vec!["script".to_string()]);
    let (status, body) = json_of(
        d.post("/v1/agents")
            .json(
                &json!({"name": "slow", "kind": "voice", "script": menu_agent()["script"],
                          "opening": {"outbound_wait_ms": 20000}}),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        error_fields(&body, status),
        vec!["opening.outbound_wait_ms".to_string()]
    );

    provision(
        &d,
        json!({"name": "echo", "kind": "echo", "max_duration_seconds": 60}),
    )
    .await;
    let run = run_sipp(
        "uac-invite-expect-200-bye.xml",
        free_udp_port(),
        Some(([127, 0, 0, 1], d.sip_port).into()),
        &["-s", NUMBER, "-d", "500"],
        LIMIT,
    )
    .await;
    assert!(run.success, "{}\n{}", run.output, d.log());
    let call = ended_call(&d).await;
    let t = transcript(&d, call["id"].as_str().unwrap()).await;
    assert_eq!(t["turns"], json!([]), "{t}");
    assert!(t["summary"].is_null(), "{t}");
}
