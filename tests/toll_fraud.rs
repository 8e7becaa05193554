//! Black-box tests of the toll-fraud policy: a caller who talks the LLM
//! into transferring to a number outside the agent's `transfer_targets`
//! gets no transfer (SIPp, the caller, sees no REFER; the LLM reads the
//! refusal and the transcript shows it); a number inside the list is
//! transferred (control); `POST /v1/calls` to a number on the do-not-call
//! list is a 403 and places nothing.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use common::{
    Backend, TestDaemon, chunk, finish, free_udp_port, json_of, run_sipp, serve, sse_body,
    tool_call_chunks,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(30);
const NUMBER: &str = "+14155552671";
const ALLOWED: &str = "+14155550100";
const PREMIUM: &str = "+19005550199";

fn trunk() -> String {
    "name = \"carrier\"\n[inbound]\nallow = [\"127.0.0.1/32\"]\n[limits]\nmax_calls = 10\n".into()
}

/// The stand-in LLM: to any caller input it asks `transfer_call` to the
/// number it holds; given the tool's result it says that result aloud.
/// It keeps every tool result it was sent.
#[derive(Default)]
struct StandIn {
    target: String,
    tool_results: Vec<String>,
}

type Shared = Arc<Mutex<StandIn>>;

async fn llm(State(seen): State<Shared>, body: axum::Json<Value>) -> axum::response::Response {
    let last = body["messages"]
        .as_array()
        .and_then(|m| m.last().cloned())
        .unwrap_or(Value::Null);
    let mut seen = seen.lock().unwrap();
    let zero = Duration::ZERO;
    let mut chunks = vec![(zero, chunk(json!({"role": "assistant", "content": ""})))];
    if last["role"] == "tool" {
        let result = last["content"].as_str().unwrap_or_default().to_string();
        seen.tool_results.push(result.clone());
        let text = if result.contains("refused") {
            "Sorry, transfer refused."
        } else {
            "Transferring you now."
        };
        chunks.push((zero, chunk(json!({"content": text}))));
    } else if last["role"] == "user" {
        let args = json!({"to": seen.target}).to_string();
        chunks.extend(
            tool_call_chunks("call_t1", "transfer_call", &args)
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

/// A daemon with a voice agent on the stand-in LLM allowed to transfer to
/// [`ALLOWED`] only, bound to [`NUMBER`].
async fn daemon(target: &str) -> (TestDaemon, Shared) {
    daemon_with(target, &[ALLOWED]).await
}

/// [`daemon`] with the agent's `transfer_targets`.
async fn daemon_with(target: &str, targets: &[&str]) -> (TestDaemon, Shared) {
    let seen: Shared = Arc::new(Mutex::new(StandIn {
        target: target.into(),
        ..StandIn::default()
    }));
    let url = serve(
        axum::Router::new()
            .route("/v1/chat/completions", post(llm))
            .with_state(seen.clone()),
    )
    .await;
    let d = TestDaemon::builder()
        .profile("carrier", &trunk())
        .allow_loopback()
        .start()
        .await;
    let (s, agent) = json_of(
        d.post("/v1/agents")
            .json(&json!({
                "name": "desk", "kind": "voice", "max_duration_seconds": 60,
                "greeting": "Front desk.",
                "tts": {"provider": "embedded", "voice": "slt"},
                "llm": {"provider": "openai", "base_url": format!("{url}/v1"), "model": "stand-in"},
                "transfer_targets": targets
            }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{agent}");
    assert_eq!(agent["transfer_targets"], json!(targets));
    let r = d
        .post("/v1/phone-numbers")
        .json(&json!({"number": NUMBER, "agent_id": agent["id"], "trunk_id": "trk_carrier"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    (d, seen)
}

async fn ended_call(d: &TestDaemon) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, page) = json_of(d.get("/v1/calls?limit=1").send().await.unwrap()).await;
        if let Some(call) = page["items"].get(0)
            && !call["ended_at"].is_null()
        {
            return call.clone();
        }
        assert!(Instant::now() < deadline, "no ended call: {page}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn call(d: &TestDaemon, scenario: &str) -> common::SippRun {
    let media = free_udp_port().to_string();
    run_sipp(
        scenario,
        free_udp_port(),
        Some(([127, 0, 0, 1], d.sip_port).into()),
        &["-s", NUMBER, "-mi", "127.0.0.1", "-mp", &media],
        LIMIT,
    )
    .await
}

/// (a) The caller presses 1; the LLM tries to transfer to a premium-rate
/// number outside the list. SIPp's scenario has no REFER in it, so a REFER
/// would fail the run; the call ends with the caller's BYE, the LLM read
/// the refusal and the transcript has the agent saying it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_llm_transfer_outside_the_list_sends_no_refer() {
    let (d, seen) = daemon(PREMIUM).await;
    let run = call(&d, "uac-invite-dtmf-1-listen-expect-200-bye.xml").await;
    assert!(run.success, "{}\n{}", run.output, d.log());
    let call = ended_call(&d).await;
    assert_ne!(call["end_reason"], "transferred", "{call}");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.tool_results.len(), 1, "{}", d.log());
        assert!(
            seen.tool_results[0].contains("transfer refused"),
            "{:?}",
            seen.tool_results
        );
    }
    let (s, t) = json_of(
        d.get(&format!(
            "/v1/calls/{}/transcript",
            call["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{t}");
    assert!(
        t["turns"]
            .as_array()
            .unwrap()
            .iter()
            .any(|turn| turn["speaker"] == "agent"
                && turn["text"].as_str().unwrap().contains("transfer refused")),
        "{t}"
    );
    assert!(d.log().contains("transfer refused"), "{}", d.log());
}

/// (b) Control: a number in the list is transferred (SIPp expects the REFER).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_llm_transfer_inside_the_list_is_sent() {
    let (d, seen) = daemon(ALLOWED).await;
    let run = call(&d, "uac-invite-dtmf-0-expect-refer-bye.xml").await;
    assert!(run.success, "{}\n{}", run.output, d.log());
    let call = ended_call(&d).await;
    assert_eq!(call["end_reason"], "transferred", "{call}");
    assert!(seen.lock().unwrap().tool_results[0].starts_with("ok"));
}

/// (b2) The trunk's destination policy binds transfers too: the agent lists
/// a premium-rate number, but the call's trunk denies premium-rate ranges
/// (its default `deny_destinations`): no REFER (SIPp's scenario has none),
/// the LLM reads the trunk's refusal and the transcript shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_the_trunk_denies_sends_no_refer() {
    let (d, seen) = daemon_with(PREMIUM, &[PREMIUM]).await;
    let run = call(&d, "uac-invite-dtmf-1-listen-expect-200-bye.xml").await;
    assert!(run.success, "{}\n{}", run.output, d.log());
    let call = ended_call(&d).await;
    assert_ne!(call["end_reason"], "transferred", "{call}");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.tool_results.len(), 1, "{}", d.log());
        assert!(
            seen.tool_results[0].contains("transfer refused")
                && seen.tool_results[0].contains("trunk"),
            "{:?}",
            seen.tool_results
        );
    }
    let (s, t) = json_of(
        d.get(&format!(
            "/v1/calls/{}/transcript",
            call["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{t}");
    assert!(
        t["turns"]
            .as_array()
            .unwrap()
            .iter()
            .any(|turn| turn["speaker"] == "agent"
                && turn["text"].as_str().unwrap().contains("transfer refused")),
        "{t}"
    );
    assert!(
        d.log().contains("the trunk's destination policy"),
        "{}",
        d.log()
    );
}

/// (b3) A scripted transfer passes the trunk's policy too: its target may
/// be rendered from a caller's own header or a contact's variable. The
/// script names a premium-rate number (denied by the trunk's default
/// `deny_destinations`); the caller presses 1: no REFER (SIPp's scenario has
/// none), the call goes on and ends with the caller's BYE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_transfer_the_trunk_denies_sends_no_refer() {
    let d = TestDaemon::builder()
        .profile("carrier", &trunk())
        .start()
        .await;
    let (s, agent) = json_of(
        d.post("/v1/agents")
            .json(&json!({
                "name": "desk", "kind": "voice", "max_duration_seconds": 60,
                "tts": {"provider": "embedded", "voice": "slt"},
                "script": {
                    "start": "main",
                    "greeting": "Front desk.",
                    "states": {"main": {"intents": [
                        {"name": "operator", "dtmf": "1", "reply": "One moment.",
                         "actions": [{"type": "transfer", "to": PREMIUM}]}
                    ]}}
                }
            }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{agent}");
    let r = d
        .post("/v1/phone-numbers")
        .json(&json!({"number": NUMBER, "agent_id": agent["id"], "trunk_id": "trk_carrier"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let run = call(&d, "uac-invite-dtmf-1-listen-expect-200-bye.xml").await;
    assert!(run.success, "{}\n{}", run.output, d.log());
    let call = ended_call(&d).await;
    assert_eq!(call["end_reason"], "caller_hangup", "{call}");
    assert!(
        d.log().contains("transfer refused by the trunk's policy"),
        "{}",
        d.log()
    );
}

/// (c) `transfer_targets` entries are checked when saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_targets_are_validated() {
    let d = TestDaemon::builder().start().await;
    let (s, b) = json_of(
        d.post("/v1/agents")
            .json(&json!({"name": "x", "kind": "voice",
                          "llm": {"provider": "openai"},
                          "transfer_targets": ["+14155550100", "+44*", "0800", "+*", "+1*"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    let fields: Vec<&str> = b["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        vec![
            "transfer_targets[2]",
            "transfer_targets[3]",
            "transfer_targets[4]"
        ],
        "{b}"
    );
}

/// (d) The do-not-call list binds `POST /v1/calls`: 403, no call made; a
/// number off the list goes on to the usual checks.
async fn a_call_to_a_dnc_number_is_forbidden(backend: Backend) {
    let d = TestDaemon::builder()
        .backend(backend)
        .profile("carrier", &trunk())
        .start()
        .await;
    let r = d
        .post("/v1/do-not-call")
        .json(&json!({"number": "+1 415 555 0199", "reason": "asked"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (s, b) = json_of(
        d.post("/v1/calls")
            .json(&json!({"from": NUMBER, "to": "+14155550199"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert_eq!(b["error"]["code"], "do_not_call", "{b}");
    let (_, page) = json_of(d.get("/v1/calls").send().await.unwrap()).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 0, "{page}");
    // Off the list: not a 403 (here a 422, the `from` number is unknown).
    let (s, b) = json_of(
        d.post("/v1/calls")
            .json(&json!({"from": NUMBER, "to": "+14155550198"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
}

/// (e) A trunk's destination policy: premium-rate and high-risk ranges are
/// refused with 403 before anything is sent (the carrier's socket gets no
/// packet); a trunk that allows a range explicitly places the call.
async fn trunk_policy_refuses_premium_destinations(backend: Backend) {
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sink.local_addr().unwrap().port();
    let open_sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let open_port = open_sink.local_addr().unwrap().port();
    let d = TestDaemon::builder()
        .backend(backend)
        .profile(
            "carrier",
            &format!("name = \"carrier\"\n[outbound]\nproxy = \"127.0.0.1:{port}\"\n"),
        )
        .profile(
            "premium",
            &format!(
                "name = \"premium\"\n[outbound]\nproxy = \"127.0.0.1:{open_port}\"\n\
                 allow_destinations = [\"+1900\"]\n"
            ),
        )
        .start()
        .await;
    let (s, agent) = json_of(
        d.post("/v1/agents")
            .json(&json!({"name": "p", "kind": "prompt", "prompt": {"tone_hz": 440}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{agent}");
    let r = d
        .post("/v1/phone-numbers")
        .json(&json!({"number": NUMBER, "agent_id": agent["id"], "trunk_id": "trk_carrier"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    for to in [PREMIUM, "+449098790000"] {
        let (s, b) = json_of(
            d.post("/v1/calls")
                .json(&json!({"from": NUMBER, "to": to}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{to}: {b}");
        assert_eq!(b["error"]["code"], "destination_denied", "{b}");
    }
    let (_, page) = json_of(d.get("/v1/calls").send().await.unwrap()).await;
    assert_eq!(page["total"], 0, "{page}");
    sink.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 2048];
    assert!(sink.recv(&mut buf).is_err(), "a packet reached the carrier");

    // The premium trunk allows +1900 explicitly: the call is placed.
    let (s, b) = json_of(
        d.post("/v1/calls")
            .json(
                &json!({"from": NUMBER, "to": PREMIUM, "trunk_id": "trk_premium",
                          "ring_timeout_seconds": 1}),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    open_sink
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let n = open_sink
        .recv(&mut buf)
        .expect("the INVITE reached the carrier");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("INVITE"));
}

#[path = "common/webhook_receiver.rs"]
mod receiver;

/// (f) Daily caps: a trunk with `daily_calls = 1` refuses the second call
/// (429 `daily_cap`) and sends `trunk.cap_reached` once; a key capped at 2
/// calls a day is refused its third placed call, on any trunk.
async fn daily_caps_refuse_and_notify(backend: Backend) {
    let sink_a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let sink_b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let trunk = |name: &str, port: u16, extra: &str| {
        format!("name = \"{name}\"\n[outbound]\nproxy = \"127.0.0.1:{port}\"\n{extra}")
    };
    let d = TestDaemon::builder()
        .backend(backend)
        .allow_loopback()
        .profile(
            "capped",
            &trunk(
                "capped",
                sink_a.local_addr().unwrap().port(),
                "[limits]\ndaily_calls = 1\n",
            ),
        )
        .profile(
            "open",
            &trunk("open", sink_b.local_addr().unwrap().port(), ""),
        )
        .config("[calls]\ndaily_calls_per_key = 2")
        .start()
        .await;
    let rx = receiver::Receiver::start(json!({}));
    let (s, b) = json_of(
        d.post("/v1/webhook-endpoints")
            .json(&json!({"url": rx.url(), "events": ["trunk.cap_reached"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, agent) = json_of(
        d.post("/v1/agents")
            .json(&json!({"name": "p", "kind": "prompt", "prompt": {"tone_hz": 440}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{agent}");
    let r = d
        .post("/v1/phone-numbers")
        .json(&json!({"number": NUMBER, "agent_id": agent["id"], "trunk_id": "trk_capped"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let place = |trunk: &'static str| {
        let r = d
            .post("/v1/calls")
            .json(&json!({"from": NUMBER, "to": ALLOWED, "trunk_id": trunk,
                          "ring_timeout_seconds": 1}))
            .send();
        async move { json_of(r.await.unwrap()).await }
    };
    let (s, b) = place("trk_capped").await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    for _ in 0..2 {
        let (s, b) = place("trk_capped").await;
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{b}");
        assert_eq!(b["error"]["code"], "daily_cap", "{b}");
        assert!(
            b["error"]["message"].as_str().unwrap().contains("trunk"),
            "{b}"
        );
    }
    let records = rx
        .wait_until(Duration::from_secs(10), |r| !r.is_empty())
        .await;
    assert_eq!(
        records[0].body["type"], "trunk.cap_reached",
        "{:?}",
        records[0]
    );
    assert_eq!(
        records[0].body["data"]["trunk_id"], "capped",
        "{:?}",
        records[0]
    );

    let (s, b) = place("trk_open").await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, b) = place("trk_open").await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{b}");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("API key"),
        "{b}"
    );
    // One notification for the day, however many calls were refused: the
    // store holds one such event.
    let events = d.store().await.events_after(0, 1000).await.unwrap();
    let capped = events
        .iter()
        .filter(|e| e.event_type == agentline::model::EventType::TrunkCapReached)
        .count();
    assert_eq!(capped, 1);
}

/// (g) A key's daily minutes (`[calls] daily_minutes_per_key = 1`) are
/// counted from the calls in the store, whichever node ran them: a call of
/// the key that lasted a minute (written as another node would) makes its
/// next call a 429 `daily_cap` naming minutes, with one
/// `api_key.cap_reached` (in the key's mode); another key is not capped.
async fn daily_minutes_per_key_are_counted_in_the_store(backend: Backend) {
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let d = TestDaemon::builder()
        .backend(backend)
        .allow_loopback()
        .profile(
            "open",
            &format!(
                "name = \"open\"\n[outbound]\nproxy = \"127.0.0.1:{}\"\n",
                sink.local_addr().unwrap().port()
            ),
        )
        .config("[calls]\ndaily_minutes_per_key = 1")
        .start()
        .await;
    let rx = receiver::Receiver::start(json!({}));
    let (s, b) = json_of(
        d.post("/v1/webhook-endpoints")
            .json(&json!({"url": rx.url(), "events": ["api_key.cap_reached"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (_, agent) = json_of(
        d.post("/v1/agents")
            .json(&json!({"name": "p", "kind": "prompt", "prompt": {"tone_hz": 440}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let r = d
        .post("/v1/phone-numbers")
        .json(&json!({"number": NUMBER, "agent_id": agent["id"], "trunk_id": "trk_open"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let other = d.create_key_cli("other", Some(100_000));
    let (_, keys) = json_of(d.get("/v1/api-keys").send().await.unwrap()).await;
    let harness = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "harness")
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .unwrap();
    let place = |key: String| {
        let r = d
            .http
            .post(d.url("/v1/calls"))
            .bearer_auth(key)
            .json(&json!({"from": NUMBER, "to": ALLOWED, "ring_timeout_seconds": 1}))
            .send();
        async move { json_of(r.await.unwrap()).await }
    };
    // Under the cap: placed.
    let (s, b) = place(d.key.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    // A minute-long call of this key, as another node would record it.
    let store = d.store().await;
    store
        .call_created(
            agentline::store::calls::NewCall {
                id: "call_elsewhere",
                direction: agentline::model::Direction::Outbound,
                from_number: NUMBER,
                to_number: ALLOWED,
                trunk: Some("trk_open"),
                agent_id: None,
                status: agentline::model::CallStatus::Queued,
                sip_call_id: None,
                metadata: "{}",
                campaign: None,
                context: None,
                agent_source: None,
                agent_source_error: None,
                livemode: true,
                api_key_id: Some(&harness),
            },
            None,
        )
        .await
        .unwrap();
    store
        .call_ended(
            "call_elsewhere",
            agentline::store::calls::EndFields {
                status: agentline::model::CallStatus::Completed,
                sip_code: Some(200),
                sip_reason: None,
                end_reason: "callee_hangup",
                duration_ms: Some(61_000),
                answered_by: None,
            },
            None,
        )
        .await
        .unwrap();
    store.close().await;
    for _ in 0..2 {
        let (s, b) = place(d.key.clone()).await;
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{b}");
        assert_eq!(b["error"]["code"], "daily_cap", "{b}");
        assert!(
            b["error"]["message"]
                .as_str()
                .unwrap()
                .contains("1 minutes"),
            "{b}"
        );
    }
    let records = rx
        .wait_until(Duration::from_secs(10), |r| !r.is_empty())
        .await;
    assert_eq!(
        records[0].body["type"], "api_key.cap_reached",
        "{:?}",
        records[0]
    );
    assert_eq!(records[0].body["data"]["api_key_id"], harness.as_str());
    assert_eq!(records[0].body["livemode"], true);
    // Another key has its own day.
    let (s, b) = place(other).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.records().len(), 1, "one notification a day");
}

both_backends!(
    a_call_to_a_dnc_number_is_forbidden,
    trunk_policy_refuses_premium_destinations,
    daily_caps_refuse_and_notify,
    daily_minutes_per_key_are_counted_in_the_store
);
