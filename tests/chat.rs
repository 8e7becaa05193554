//! Black-box tests of text chat with an agent: a scripted agent, the SSE
//! wire format, and an OpenAI-compatible LLM played by a local stand-in
//! server that speaks the real streaming format, calls a tool (a local
//! server that checks the Standard Webhooks signature), and streams slowly.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxStatus};
use axum::routing::post;
use common::{
    Backend, TestDaemon, chunk, finish, json_of, serve, sse_body, tool_call_chunks, verify,
};
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

const TOOL_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const LLM_KEY: &str = "sk-test-never-logged-4242";

fn pizza_script() -> Value {
    json!({
        "start": "main",
        "greeting": "Pizza Palace, what can I get you?",
        "slots": {"size": {"pattern": "\\b(small|medium|large)\\b", "prompt": "Which size?"}},
        "states": {
            "main": {"intents": [
                {"name": "order", "keywords": ["pizza"], "require": ["size"],
                 "reply": "One {size} pizza. Anything else?", "next": "more"},
                {"name": "human", "dtmf": "0", "reply": "Transferring you.",
                 "actions": [{"type": "transfer", "to": "+14155550100"}]}
            ]},
            "more": {"intents": [
                {"name": "done", "keywords": ["no", "that's all"], "reply": "Bye!",
                 "actions": [{"type": "summary", "text": "A {size} pizza"}, {"type": "hangup"}]}
            ]}
        }
    })
}

async fn create_agent(d: &TestDaemon, body: Value) -> String {
    let (s, b) = json_of(d.post("/v1/agents").json(&body).send().await.unwrap()).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    b["id"].as_str().unwrap().to_string()
}

async fn start_session(d: &TestDaemon, agent: &str) -> Value {
    let (s, b) = json_of(
        d.post(&format!("/v1/agents/{agent}/chat-sessions"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    b
}

async fn say(d: &TestDaemon, session: &str, body: Value) -> (StatusCode, Value) {
    json_of(
        d.post(&format!("/v1/chat-sessions/{session}/messages"))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// Reads an SSE answer: each `data:` payload with the time it arrived.
async fn read_sse(r: reqwest::Response) -> Vec<(Duration, String)> {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = String::new();
    let mut body = r.bytes_stream();
    while let Some(chunk) = body.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            for line in event.lines() {
                if let Some(data) = line.strip_prefix("data: ") {
                    out.push((started.elapsed(), data.to_string()));
                }
            }
        }
    }
    out
}

async fn scripted_chat_with_intents_slots_dtmf_and_history(backend: Backend) {
    let d = TestDaemon::builder().backend(backend).start().await;
    let agent = create_agent(
        &d,
        json!({"name": "pizza", "kind": "echo", "script": pizza_script()}),
    )
    .await;
    let session = start_session(&d, &agent).await;
    let sid = session["id"].as_str().unwrap();
    assert!(sid.starts_with("chat_"), "{session}");
    assert_eq!(session["agent_id"], agent.as_str());
    assert_eq!(session["messages"][0]["role"], "assistant");
    assert_eq!(
        session["messages"][0]["content"],
        "Pizza Palace, what can I get you?"
    );

    let (s, r) = say(&d, sid, json!({"content": "A pizza please"})).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["content"], "Which size?");
    let (_, r) = say(&d, sid, json!({"content": "large"})).await;
    assert_eq!(r["content"], "One large pizza. Anything else?");
    assert!(r["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(r["session_id"], sid);
    let (_, r) = say(&d, sid, json!({"content": "No, that's all"})).await;
    assert_eq!(r["content"], "Bye!");
    assert_eq!(
        r["actions"],
        json!([{"type": "summary", "text": "A large pizza"}, {"type": "hangup"}])
    );

    // The history survives, in order, with the reply's id and actions.
    let (s, h) = json_of(
        d.get(&format!("/v1/chat-sessions/{sid}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let messages = h["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 7, "{h}");
    assert_eq!(messages[5]["content"], "No, that's all");
    assert_eq!(messages[6]["id"], r["id"]);
    assert_eq!(messages[6]["actions"][1]["type"], "hangup");

    // DTMF is an input too, in a fresh session.
    let sid2 = start_session(&d, &agent).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, r) = say(&d, &sid2, json!({"dtmf": "0"})).await;
    assert_eq!(
        r["actions"],
        json!([{"type": "transfer", "to": "+14155550100"}])
    );

    // Bad input and unknown sessions.
    let (s, _) = say(&d, sid, json!({"content": "", "stream": false})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _) = say(&d, sid, json!({"content": "x", "dtmf": "1"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _) = say(
        &d,
        "chat_00000000000000000000000000",
        json!({"content": "x"}),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // The session is gone with its agent.
    let r = d
        .delete(&format!("/v1/agents/{agent}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = d
        .get(&format!("/v1/chat-sessions/{sid}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

async fn a_bad_script_is_refused_naming_the_field(backend: Backend) {
    let d = TestDaemon::builder().backend(backend).start().await;
    let mut script = pizza_script();
    script["states"]["main"]["intents"][0]["next"] = json!("nowhere");
    let (s, b) = json_of(
        d.post("/v1/agents")
            .json(&json!({"name": "bad", "kind": "echo", "script": script}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(
        b["error"]["details"][0]["field"],
        "script.states.main.intents[0].next"
    );

    // And on update.
    let agent = create_agent(&d, json!({"name": "ok", "kind": "echo"})).await;
    let (s, b) = json_of(
        d.patch(&format!("/v1/agents/{agent}"))
            .json(
                &json!({"script": {"start": "a", "states": {"a": {"intents": [
                {"name": "x", "patterns": ["(oops"], "reply": "hi"}]}}}}),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(
        b["error"]["details"][0]["field"],
        "script.states.a.intents[0].patterns[0]"
    );

    // Turn-taking settings are validated and kept.
    let (s, b) = json_of(
        d.patch(&format!("/v1/agents/{agent}"))
            .json(&json!({"turn": {"end_silence_ms": 50}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(b["error"]["details"][0]["field"], "turn.end_silence_ms");
    let (s, b) = json_of(
        d.patch(&format!("/v1/agents/{agent}"))
            .json(&json!({"turn": {"end_silence_ms": 800, "backchannels_interrupt": true}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        b["turn"],
        json!({"end_silence_ms": 800, "backchannels_interrupt": true})
    );

    // An agent with no brain cannot chat.
    let r = d
        .post(&format!("/v1/agents/{agent}/chat-sessions"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
}

both_backends!(
    scripted_chat_with_intents_slots_dtmf_and_history,
    a_bad_script_is_refused_naming_the_field
);

/// An agent whose LLM cannot be reached answers 502 `llm_failed` (the
/// documented upstream failure), and the session goes on: the next message
/// fails the same way, not with a server error.
#[tokio::test]
async fn an_unreachable_llm_is_a_502_not_a_server_error() {
    let d = TestDaemon::builder().allow_loopback().start().await;
    let closed = common::free_port();
    let agent = create_agent(
        &d,
        json!({"name": "down", "kind": "voice",
               "llm": {"provider": "openai", "base_url": format!("http://127.0.0.1:{closed}/v1"),
                       "model": "m"}}),
    )
    .await;
    let session = start_session(&d, &agent).await;
    let id = session["id"].as_str().unwrap();
    for _ in 0..2 {
        let (s, b) = say(&d, id, json!({"content": "hello"})).await;
        assert_eq!(s, StatusCode::BAD_GATEWAY, "{b}");
        assert_eq!(b["error"]["code"], "llm_failed", "{b}");
    }
    assert!(!d.log().contains("internal error"), "{}", d.log());
}

#[tokio::test]
async fn streaming_answers_in_sse_ending_with_done() {
    let d = TestDaemon::builder().start().await;
    let agent = create_agent(
        &d,
        json!({"name": "pizza", "kind": "echo", "script": pizza_script()}),
    )
    .await;
    let sid = start_session(&d, &agent).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = d
        .post(&format!("/v1/chat-sessions/{sid}/messages"))
        .json(&json!({"content": "a small pizza", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = read_sse(r).await;
    let (_, last) = events.last().unwrap();
    assert_eq!(last, "[DONE]");
    let first: Value = serde_json::from_str(&events[0].1).unwrap();
    assert!(first["id"].as_str().unwrap().starts_with("msg_"));
    let text: String = events[..events.len() - 1]
        .iter()
        .map(|(_, e)| serde_json::from_str::<Value>(e).unwrap())
        .inspect(|e| assert_eq!(e["id"], first["id"]))
        .filter_map(|e| e["delta"].as_str().map(String::from))
        .collect();
    assert_eq!(text, "One small pizza. Anything else?");
    // The streamed reply is stored under the same id.
    let h: Value = d
        .get(&format!("/v1/chat-sessions/{sid}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["messages"][2]["id"], first["id"]);
}

/// What the stand-in LLM and the tool server saw.
#[derive(Default)]
struct Seen {
    llm_requests: Vec<(Option<String>, Value)>,
    tool_requests: Vec<(HeaderMap, Bytes)>,
}

type Shared = Arc<Mutex<Seen>>;

/// The stand-in for an OpenAI-compatible server: without a tool result in
/// the history it asks for `get_weather`; with one, it answers with it.
/// A user message containing "slow" gets a reply in two parts 1.5 s apart.
async fn llm_handler(
    State(seen): State<Shared>,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> axum::response::Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let body = body.0;
    seen.lock().unwrap().llm_requests.push((auth, body.clone()));
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let last = messages.last().cloned().unwrap_or(Value::Null);
    let zero = Duration::ZERO;
    let mut chunks = vec![(zero, chunk(json!({"role": "assistant", "content": ""})))];
    if last["role"] == "tool" {
        let result: Value = serde_json::from_str(last["content"].as_str().unwrap()).unwrap();
        let text = format!("It is {} in Oslo.", result["forecast"].as_str().unwrap());
        for word in text.split_inclusive(' ') {
            chunks.push((zero, chunk(json!({"content": word}))));
        }
    } else if last["content"].as_str().unwrap_or("").contains("slow") {
        chunks.push((zero, chunk(json!({"content": "Let me think. "}))));
        chunks.push((
            Duration::from_millis(1500),
            chunk(json!({"content": "Done thinking."})),
        ));
    } else {
        let call = tool_call_chunks("call_w1", "get_weather", r#"{"city": "Oslo"}"#);
        chunks.extend(call.into_iter().map(|c| (zero, c)));
    }
    chunks.extend(finish().into_iter().map(|c| (zero, c)));
    axum::response::Response::builder()
        .header("content-type", "text/event-stream")
        .body(sse_body(chunks, Arc::default()))
        .unwrap()
}

async fn tool_handler(
    State(seen): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> (AxStatus, axum::Json<Value>) {
    seen.lock().unwrap().tool_requests.push((headers, body));
    (
        AxStatus::OK,
        axum::Json(json!({"forecast": "sunny and 21 degrees"})),
    )
}

async fn llm_daemon() -> (TestDaemon, Shared, String) {
    let seen: Shared = Arc::default();
    let llm = serve(
        axum::Router::new()
            .route("/v1/chat/completions", post(llm_handler))
            .with_state(seen.clone()),
    )
    .await;
    let tools = serve(
        axum::Router::new()
            .route("/weather", post(tool_handler))
            .with_state(seen.clone()),
    )
    .await;
    let d = TestDaemon::builder()
        .allow_loopback()
        .env("STANDIN_LLM_KEY", LLM_KEY)
        .env("WEATHER_TOOL_SECRET", TOOL_SECRET)
        .config(
            "[secrets.env.STANDIN_LLM_KEY]\nhosts = [\"127.0.0.1\"]\n\
             [secrets.env.WEATHER_TOOL_SECRET]\nhosts = [\"127.0.0.1\"]",
        )
        .start()
        .await;
    let agent = create_agent(
        &d,
        json!({
            "name": "weather",
            "kind": "echo",
            "greeting": "Weather desk.",
            "instructions": "Answer with the weather.",
            "llm": {"provider": "openai", "base_url": format!("{llm}/v1"),
                    "model": "stand-in", "api_key_env": "STANDIN_LLM_KEY"},
            "tools": [{
                "name": "get_weather",
                "description": "The forecast for a city",
                "url": format!("{tools}/weather"),
                "parameters": {"type": "object", "required": ["city"],
                               "properties": {"city": {"type": "string"}}},
                "timeout_ms": 2000,
                "secret_env": "WEATHER_TOOL_SECRET"
            }]
        }),
    )
    .await;
    (d, seen, agent)
}

#[tokio::test]
async fn an_openai_agent_calls_a_signed_tool_and_answers_with_its_result() {
    let (d, seen, agent) = llm_daemon().await;
    let session = start_session(&d, &agent).await;
    assert_eq!(session["messages"][0]["content"], "Weather desk.");
    let sid = session["id"].as_str().unwrap();
    let (s, r) = say(&d, sid, json!({"content": "What's the weather in Oslo?"})).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["content"], "It is sunny and 21 degrees in Oslo.");

    {
        let seen = seen.lock().unwrap();
        // The tool got the LLM's arguments, signed.
        assert_eq!(seen.tool_requests.len(), 1);
        let (headers, body) = &seen.tool_requests[0];
        let args: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(args, json!({"city": "Oslo"}));
        assert!(
            verify(TOOL_SECRET, headers, body),
            "bad signature: {headers:?}"
        );

        // The LLM was asked twice, with the key, the system prompt, the tools,
        // and the second time the tool's result.
        assert_eq!(seen.llm_requests.len(), 2);
        let (auth, first) = &seen.llm_requests[0];
        assert_eq!(auth.as_deref(), Some(format!("Bearer {LLM_KEY}").as_str()));
        assert_eq!(first["stream"], true);
        assert_eq!(first["model"], "stand-in");
        assert_eq!(first["messages"][0]["role"], "system");
        let names: Vec<&str> = first["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["function"]["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"get_weather") && names.contains(&"end_call"));
        let (_, second) = &seen.llm_requests[1];
        let msgs = second["messages"].as_array().unwrap();
        assert_eq!(msgs[msgs.len() - 2]["tool_calls"][0]["id"], "call_w1");
        assert_eq!(msgs[msgs.len() - 1]["tool_call_id"], "call_w1");
    }

    // The tool exchange is in the stored history.
    let h: Value = d
        .get(&format!("/v1/chat-sessions/{sid}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let roles: Vec<&str> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        vec!["assistant", "user", "assistant", "tool", "assistant"]
    );
    assert_eq!(h["messages"][2]["tool_calls"][0]["name"], "get_weather");
    let metrics = d
        .get("/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"agentline_agent_tool_calls_total{outcome="ok"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"agentline_agent_llm_requests_total{outcome="ok"} 2"#),
        "{metrics}"
    );
    assert!(!d.log().contains(LLM_KEY), "the LLM key was logged");
    assert!(!d.log().contains(TOOL_SECRET), "the tool secret was logged");
}

#[tokio::test]
async fn the_first_chunk_of_a_slow_reply_arrives_before_it_is_complete() {
    let (d, _seen, agent) = llm_daemon().await;
    let sid = start_session(&d, &agent).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = d
        .post(&format!("/v1/chat-sessions/{sid}/messages"))
        .json(&json!({"content": "be slow", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let events = read_sse(r).await;
    let deltas: Vec<(Duration, String)> = events
        .iter()
        .filter_map(|(t, e)| {
            let v: Value = serde_json::from_str(e).ok()?;
            Some((*t, v["delta"].as_str()?.to_string()))
        })
        .collect();
    assert_eq!(deltas[0].1, "Let me think. ");
    let (done_at, last) = events.last().unwrap();
    assert_eq!(last, "[DONE]");
    assert!(
        *done_at - deltas[0].0 >= Duration::from_millis(1200),
        "first delta at {:?}, done at {done_at:?}",
        deltas[0].0
    );
    assert_eq!(
        deltas.iter().map(|(_, d)| d.as_str()).collect::<String>(),
        "Let me think. Done thinking."
    );
}
