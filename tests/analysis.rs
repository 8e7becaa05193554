//! Structured results after the call (issue 17): a scripted booking call
//! ends with `analysis` holding its slots; an LLM agent's `analysis` schema
//! is filled by the (stand-in) model from the transcript, stored on the
//! call and delivered as `call.analyzed`, verified by the reference
//! Standard Webhooks library (tests/webhook_receiver.py); a model that
//! fails still gives the call a recorded (failed) analysis and its event;
//! an endpoint with `include_transcript` gets the turns in `call.ended`.
//! And the agent API's checks of `analysis`.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/webhook_receiver.rs"]
mod receiver;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::post;
use common::{
    Backend, TestDaemon, chunk, error_fields, finish, free_udp_port, json_of, run_sipp, serve,
    sse_body,
};
use receiver::{Receiver, fast_webhooks_config};
use serde_json::{Value, json};

const NUMBER: &str = "+14155552671";
const LIMIT: Duration = Duration::from_secs(40);

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

/// A webhook endpoint for call.ended and call.analyzed at a fresh
/// receiver that verifies with the endpoint's secret.
async fn receiver(d: &TestDaemon, include_transcript: bool) -> Receiver {
    let rx = Receiver::start(json!({}));
    let (status, ep) = json_of(
        d.post("/v1/webhook-endpoints")
            .json(
                &json!({"url": rx.url(), "events": ["call.ended", "call.analyzed"],
                          "include_transcript": include_transcript}),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{ep}");
    assert_eq!(ep["include_transcript"], include_transcript);
    rx.set(json!({"secrets": [ep["secret"]]}));
    rx
}

/// The newest call once its analysis is stored, within 30 s.
async fn analyzed_call(d: &TestDaemon) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, page) = json_of(d.get("/v1/calls?limit=1").send().await.unwrap()).await;
        if let Some(call) = page["items"].get(0)
            && !call["analysis"].is_null()
        {
            let (status, one) = json_of(
                d.get(&format!("/v1/calls/{}", call["id"].as_str().unwrap()))
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!(status, 200);
            return one;
        }
        assert!(
            Instant::now() < deadline,
            "no analyzed call: {page}\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The receiver's verified `call.ended` and `call.analyzed` for `call_id`,
/// once both arrived.
async fn ended_and_analyzed(rx: &Receiver, call_id: &str) -> (Value, Value) {
    let records = rx
        .wait_until(Duration::from_secs(20), |recs| {
            ["call.ended", "call.analyzed"].iter().all(|t| {
                recs.iter()
                    .any(|r| r.body["type"] == *t && r.body["data"]["id"] == call_id)
            })
        })
        .await;
    let find = |t: &str| {
        let r = records
            .iter()
            .find(|r| r.body["type"] == t && r.body["data"]["id"] == call_id)
            .unwrap();
        assert_eq!(r.verified, vec![true], "{t} verifies with standardwebhooks");
        r.body.clone()
    };
    (find("call.ended"), find("call.analyzed"))
}

/// Speech from flite's kal voice, 8 kHz µ-law, after `lead_s` of silence.
fn caller_speech(dir: &std::path::Path, text: &str, lead_s: f32) -> std::path::PathBuf {
    let wav = dir.join("caller.wav");
    let ok = std::process::Command::new("flite")
        .args(["-voice", "kal", "-t", text, "-o"])
        .arg(&wav)
        .status()
        .expect("flite is installed by scripts/test")
        .success();
    assert!(ok, "flite failed");
    let ul = dir.join("caller.ul");
    let ok = std::process::Command::new("sox")
        .arg(&wav)
        .args(["-r", "8000", "-c", "1", "-t", "ul"])
        .arg(&ul)
        .args(["pad", &lead_s.to_string(), "1"])
        .status()
        .expect("sox is installed by scripts/test")
        .success();
    assert!(ok, "sox failed");
    ul
}

/// A SIPp caller that streams `audio` after the answer and hangs up
/// `call_ms` later (the DTMF caller's INVITE, ACK and BYE around it).
fn streaming_caller(dir: &std::path::Path, audio: &std::path::Path, call_ms: u32) -> String {
    let head =
        std::fs::read_to_string(common::scenario("uac-invite-dtmf-expect-200-bye.xml")).unwrap();
    let cut = head.find("  <nop>").unwrap();
    let bye = head
        .find("  <send retrans=\"500\">\n    <![CDATA[\n      BYE")
        .unwrap();
    let xml = format!(
        "{}  <nop>\n    <action>\n      <exec rtp_stream=\"{},1,0\"/>\n    </action>\n  </nop>\n  \
         <pause milliseconds=\"{call_ms}\"/>\n{}",
        &head[..cut],
        audio.display(),
        &head[bye..]
    );
    let path = dir.join("uac-invite-stream-expect-200-bye.xml");
    std::fs::write(&path, xml).unwrap();
    path.display().to_string()
}

async fn call_number(d: &TestDaemon, scenario: &str) -> common::SippRun {
    let media_port = free_udp_port().to_string();
    run_sipp(
        scenario,
        free_udp_port(),
        Some(([127, 0, 0, 1], d.sip_port).into()),
        &["-s", NUMBER, "-mi", "127.0.0.1", "-mp", &media_port],
        LIMIT,
    )
    .await
}

/// A scripted booking call by voice (the caller asks for Tuesday, the
/// embedded recognizer hears it): the call's `analysis` holds the slot,
/// the success (every required field filled) and the final state; the
/// receiver gets `call.analyzed` after `call.ended`, both verified, and
/// `call.ended` carries the transcript (the endpoint asked for it).
async fn scripted_booking_call_ends_with_its_slots(backend: Backend) {
    let d = TestDaemon::builder()
        .backend(backend)
        .profile("carrier", &trunk())
        .config(&fast_webhooks_config(&[1], 30))
        .start()
        .await;
    let rx = receiver(&d, true).await;
    provision(
        &d,
        json!({
            "name": "clinic",
            "kind": "voice",
            "max_duration_seconds": 60,
            "tts": {"provider": "embedded", "voice": "slt"},
            "script": {
                "start": "main",
                "greeting": "Hello, this is the clinic.",
                "slots": {"day": {"pattern": "\\b(monday|tuesday|wednesday|thursday|friday)\\b",
                                  "prompt": "Which day would you like?"}},
                "states": {
                    "main": {"intents": [
                        {"name": "book", "keywords": ["appointment", "book"], "require": ["day"],
                         "reply": "Your appointment is booked for {day}.", "next": "booked"}
                    ]},
                    "booked": {"intents": []}
                }
            },
            "analysis": {"schema": {"type": "object", "required": ["day"], "properties": {
                "day": {"type": "string", "description": "The day booked"},
                "time": {"type": "string"}}}}
        }),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let speech = caller_speech(
        dir.path(),
        "I would like to book an appointment for Tuesday.",
        2.5,
    );
    let run = call_number(&d, &streaming_caller(dir.path(), &speech, 10_000)).await;
    assert!(run.success, "{}\n{}", run.output, d.log());

    let call = analyzed_call(&d).await;
    let a = &call["analysis"];
    assert_eq!(a["status"], "completed", "{call}\n{}", d.log());
    assert_eq!(a["source"], "script", "{a}");
    assert_eq!(a["data"], json!({"day": "tuesday", "time": null}), "{a}");
    assert_eq!(a["success"], true, "{a}");
    assert_eq!(a["state"], "booked", "{a}");

    let (ended, analyzed) = ended_and_analyzed(&rx, call["id"].as_str().unwrap()).await;
    assert!(
        analyzed["data"]["sequence"].as_i64() > ended["data"]["sequence"].as_i64(),
        "call.analyzed follows call.ended: {ended}\n{analyzed}"
    );
    assert!(ended["data"]["analysis"].is_null(), "{ended}");
    assert_eq!(analyzed["data"]["analysis"], *a);
    let turns = ended["data"]["transcript"]["turns"].as_array().unwrap();
    assert!(
        turns.iter().any(|t| t["speaker"] == "caller"
            && t["text"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .contains("tuesday")),
        "{ended}"
    );
    assert_eq!(turns[0]["text"], "Hello, this is the clinic.", "{ended}");
    assert!(analyzed["data"].get("transcript").is_none(), "{analyzed}");
}

/// What the stand-in model saw and how it answers the analysis request.
struct StandIn {
    /// Answer the analysis request with a 500.
    fail_analysis: bool,
    /// The bodies of the analysis requests (`response_format` set).
    analysis_requests: Vec<Value>,
}

type Seen = Arc<Mutex<StandIn>>;

/// The stand-in for an OpenAI-compatible server: the conversation gets a
/// streamed reply; the analysis request (a JSON-object completion) gets
/// the fields, or a 500.
async fn llm_handler(
    State(seen): State<Seen>,
    body: axum::Json<Value>,
) -> axum::response::Response {
    let body = body.0;
    let mut seen = seen.lock().unwrap();
    if body.get("response_format").is_some() {
        seen.analysis_requests.push(body);
        if seen.fail_analysis {
            return axum::response::Response::builder()
                .status(500)
                .body(axum::body::Body::from("overloaded"))
                .unwrap();
        }
        let content = json!({"data": {"reason": "billing", "callback": true, "invented": 1},
                             "success": true});
        return axum::Json(json!({
            "id": "chatcmpl-2", "object": "chat.completion", "model": "stand-in",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content.to_string()}}]
        }))
        .into_response();
    }
    let zero = Duration::ZERO;
    let mut chunks = vec![(zero, chunk(json!({"role": "assistant", "content": ""})))];
    chunks.push((
        zero,
        chunk(json!({"content": "Billing will call you back."})),
    ));
    chunks.extend(finish().into_iter().map(|c| (zero, c)));
    axum::response::Response::builder()
        .header("content-type", "text/event-stream")
        .body(sse_body(chunks, Arc::default()))
        .unwrap()
}

/// A daemon whose LLM agent (the stand-in) has an `analysis` schema; the
/// caller presses 2 and hangs up. Returns the daemon, the receiver and
/// what the stand-in saw.
async fn llm_call(backend: Backend, fail_analysis: bool) -> (TestDaemon, Receiver, Seen) {
    let seen: Seen = Arc::new(Mutex::new(StandIn {
        fail_analysis,
        analysis_requests: Vec::new(),
    }));
    let llm = serve(
        axum::Router::new()
            .route("/v1/chat/completions", post(llm_handler))
            .with_state(seen.clone()),
    )
    .await;
    let d = TestDaemon::builder()
        .backend(backend)
        .profile("carrier", &trunk())
        .config(&fast_webhooks_config(&[1], 30))
        .start()
        .await;
    let rx = receiver(&d, false).await;
    provision(
        &d,
        json!({
            "name": "desk",
            "kind": "voice",
            "max_duration_seconds": 60,
            "greeting": "Help desk.",
            "instructions": "Help the caller.",
            "tts": {"provider": "embedded", "voice": "slt"},
            "llm": {"provider": "openai", "base_url": format!("{llm}/v1"), "model": "stand-in"},
            "analysis": {
                "schema": {"type": "object", "properties": {
                    "reason": {"type": "string", "enum": ["billing", "support", "other"]},
                    "callback": {"type": "boolean"}}},
                "success_criterion": "The caller's question was routed"
            }
        }),
    )
    .await;
    let run = call_number(&d, "uac-invite-dtmf-2-expect-200-bye.xml").await;
    assert!(run.success, "{}\n{}", run.output, d.log());
    (d, rx, seen)
}

/// The LLM agent's analysis: the stand-in is asked once for a JSON object
/// with the schema, the criterion and the transcript; its fields (only
/// those asked for) are stored on the call and delivered in
/// `call.analyzed`, verified.
async fn llm_agent_gets_its_analysis_filled(backend: Backend) {
    let (d, rx, seen) = llm_call(backend, false).await;
    let call = analyzed_call(&d).await;
    let a = &call["analysis"];
    assert_eq!(a["status"], "completed", "{call}\n{}", d.log());
    assert_eq!(a["source"], "llm");
    assert_eq!(a["data"], json!({"reason": "billing", "callback": true}));
    assert_eq!(a["success"], true);
    let (_, analyzed) = ended_and_analyzed(&rx, call["id"].as_str().unwrap()).await;
    assert_eq!(analyzed["data"]["analysis"], *a);
    assert_eq!(analyzed["data"]["status"], "completed");

    let requests = seen.lock().unwrap().analysis_requests.clone();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let r = &requests[0];
    assert_eq!(r["response_format"]["type"], "json_object");
    assert_eq!(r["stream"], false);
    assert_eq!(r["model"], "stand-in");
    let system = r["messages"][0]["content"].as_str().unwrap();
    assert!(system.contains("\"callback\""), "{system}");
    assert!(
        system.contains("The caller's question was routed"),
        "{system}"
    );
    let transcript = r["messages"][1]["content"].as_str().unwrap();
    assert!(transcript.contains("agent: Help desk."), "{transcript}");
    assert!(transcript.contains("caller: [DTMF 2]"), "{transcript}");
}

/// A model that fails: the call still ends normally, and its analysis is
/// recorded as failed with the error, and delivered.
async fn a_failing_model_records_a_failed_analysis(backend: Backend) {
    let (d, rx, _seen) = llm_call(backend, true).await;
    let call = analyzed_call(&d).await;
    assert_eq!(call["end_reason"], "caller_hangup", "{call}");
    let a = &call["analysis"];
    assert_eq!(a["status"], "failed", "{call}");
    assert!(a["error"].as_str().unwrap().contains("500"), "{a}");
    assert!(a["data"].is_null(), "{a}");
    let (_, analyzed) = ended_and_analyzed(&rx, call["id"].as_str().unwrap()).await;
    assert_eq!(analyzed["data"]["analysis"]["status"], "failed");
}

both_backends!(
    scripted_booking_call_ends_with_its_slots,
    llm_agent_gets_its_analysis_filled,
    a_failing_model_records_a_failed_analysis,
);

/// The agent API holds `analysis` to its bounds and names each bad field;
/// PATCH with `null` removes it (RFC 7396).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analysis_settings_are_checked_and_cleared() {
    let d = TestDaemon::builder().start().await;
    let script = json!({"start": "m", "states": {"m": {"intents": []}}});
    let bad = |analysis: Value, kind: &str| json!({"name": "a", "kind": kind, "script": script, "analysis": analysis});
    for (body, want) in [
        (
            bad(
                json!({"schema": {"properties": {"a": {"type": "string"}}}}),
                "echo",
            ),
            vec!["analysis"],
        ),
        (
            bad(
                json!({"schema": {"type": "array", "properties": {}}}),
                "voice",
            ),
            vec!["analysis.schema.type", "analysis.schema.properties"],
        ),
        (
            bad(
                json!({"schema": {"properties": {"day": {"type": "date"}}, "required": ["x"]}}),
                "voice",
            ),
            vec![
                "analysis.schema.properties.day.type",
                "analysis.schema.required[0]",
            ],
        ),
        (
            bad(
                json!({"schema": {"properties": {"a": {"type": "string",
                                  "description": "x".repeat(20_000)}}}}),
                "voice",
            ),
            vec!["analysis.schema"],
        ),
        (
            bad(json!({"success_criterion": "y".repeat(3000)}), "voice"),
            vec!["analysis.success_criterion"],
        ),
        (
            bad(json!({"schemas": {}}), "voice"),
            vec!["analysis.schemas"],
        ),
    ] {
        let (status, e) = json_of(d.post("/v1/agents").json(&body).send().await.unwrap()).await;
        assert_eq!(status, 422, "{e}");
        assert_eq!(error_fields(&e, status), want, "{e}");
    }
    let (status, agent) = json_of(
        d.post("/v1/agents")
            .json(&bad(
                json!({"schema": {"properties": {"day": {"type": "string"}}}}),
                "voice",
            ))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{agent}");
    assert_eq!(
        agent["analysis"]["schema"]["properties"]["day"]["type"],
        "string"
    );
    let id = agent["id"].as_str().unwrap();
    let (status, agent) = json_of(
        d.patch(&format!("/v1/agents/{id}"))
            .json(&json!({"analysis": null}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{agent}");
    assert!(agent["analysis"].is_null(), "{agent}");
    assert_eq!(agent["script"], script, "the rest is kept");
}
