//! Black-box tests of the secrets allow-list: an agent may name an
//! environment variable (`api_key_env`, `secret_env`) only when the
//! operator listed it in `[secrets.env.NAME]`, and the value goes only to
//! the hosts bound there. A key holder cannot read the daemon's environment
//! by pointing an agent at their own host.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use common::{Backend, TestDaemon, chunk, finish, json_of, serve, sse_body};
use reqwest::StatusCode;
use serde_json::{Value, json};

const KEY: &str = "sk-bound-to-loopback-7731";

/// Every Authorization header the stand-in LLM received.
type Seen = Arc<Mutex<Vec<Option<String>>>>;

async fn llm(State(seen): State<Seen>, headers: HeaderMap) -> axum::response::Response {
    seen.lock().unwrap().push(
        headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string()),
    );
    let zero = Duration::ZERO;
    let mut chunks = vec![(zero, chunk(json!({"role": "assistant", "content": "ok"})))];
    chunks.extend(finish().into_iter().map(|c| (zero, c)));
    axum::response::Response::builder()
        .header("content-type", "text/event-stream")
        .body(sse_body(chunks, Arc::default()))
        .unwrap()
}

async fn stand_in() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let url = serve(
        axum::Router::new()
            .route("/v1/chat/completions", post(llm))
            .with_state(seen.clone()),
    )
    .await;
    (url, seen)
}

fn fields(body: &Value) -> Vec<String> {
    body["error"]["details"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|e| e["field"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// (a) A variable outside the allow-list is a 422 naming the field, for
/// the LLM, the speech vendors and tools; nothing is saved.
async fn unlisted_variables_are_refused(backend: Backend) {
    let (base, seen) = stand_in().await;
    let d = TestDaemon::builder()
        .backend(backend)
        .allow_loopback()
        .env("LISTED_KEY", KEY)
        .config("[secrets.env.LISTED_KEY]\nhosts = [\"127.0.0.1\"]")
        .start()
        .await;
    let llm = |env: &str| json!({"provider": "openai", "base_url": format!("{base}/v1"), "api_key_env": env});
    for (body, field) in [
        (
            json!({"name": "x", "kind": "voice", "llm": llm("AGENTLINE_STORE__URL")}),
            "llm.api_key_env",
        ),
        (
            json!({"name": "x", "kind": "voice", "llm": llm("LISTED_KEY"),
                   "stt": {"provider": "openai", "base_url": format!("{base}/v1"), "api_key_env": "PATH"}}),
            "stt.api_key_env",
        ),
        (
            json!({"name": "x", "kind": "voice", "llm": llm("LISTED_KEY"),
                   "tts": {"provider": "openai", "base_url": format!("{base}/v1"), "api_key_env": "HOME"}}),
            "tts.api_key_env",
        ),
        (
            json!({"name": "x", "kind": "voice", "llm": llm("LISTED_KEY"),
                   "tools": [{"name": "t", "url": format!("{base}/tool"), "parameters": {"type": "object"},
                              "secret_env": "AGENTLINE_SECRETS_KEY"}]}),
            "tools[0].secret_env",
        ),
        // Listed, but bound to 127.0.0.1 and not to the name `localhost`.
        (
            json!({"name": "x", "kind": "voice", "llm": {"provider": "openai",
                   "base_url": base.replace("127.0.0.1", "localhost") + "/v1", "api_key_env": "LISTED_KEY"}}),
            "llm.api_key_env",
        ),
    ] {
        let (s, b) = json_of(d.post("/v1/agents").json(&body).send().await.unwrap()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {b}");
        assert_eq!(fields(&b), vec![field.to_string()], "{b}");
    }
    let (_, page) = json_of(d.get("/v1/agents").send().await.unwrap()).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 0, "{page}");
    assert!(seen.lock().unwrap().is_empty());
}

both_backends!(unlisted_variables_are_refused);

/// (b) The secret goes to its bound host (control), and stops going there
/// at use once the operator binds it elsewhere: the request is refused
/// before it leaves, the stand-in sees no new request, the log no key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_goes_only_to_the_hosts_it_is_bound_to() {
    let (base, seen) = stand_in().await;
    let mut d = TestDaemon::builder()
        .allow_loopback()
        .env("LISTED_KEY", KEY)
        .config("[secrets.env.LISTED_KEY]\nhosts = [\"127.0.0.1\"]")
        .start()
        .await;
    let (s, agent) = json_of(
        d.post("/v1/agents")
            .json(&json!({"name": "k", "kind": "voice",
                          "llm": {"provider": "openai", "base_url": format!("{base}/v1"),
                                  "api_key_env": "LISTED_KEY"}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{agent}");
    let agent = agent["id"].as_str().unwrap().to_string();
    let chat = |d: &TestDaemon| {
        let r = d
            .post(&format!("/v1/agents/{agent}/chat-sessions"))
            .send();
        async move { json_of(r.await.unwrap()).await }
    };
    let (s, session) = chat(&d).await;
    assert_eq!(s, StatusCode::CREATED, "{session}");
    let sid = session["id"].as_str().unwrap().to_string();
    let say = |d: &TestDaemon| {
        let r = d
            .post(&format!("/v1/chat-sessions/{sid}/messages"))
            .json(&json!({"content": "hello"}))
            .send();
        async move { json_of(r.await.unwrap()).await }
    };
    let (s, r) = say(&d).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(
        seen.lock().unwrap().clone(),
        vec![Some(format!("Bearer {KEY}"))]
    );

    // The operator rebinds the variable to another host.
    let config = std::fs::read_to_string(&d.config_path).unwrap();
    std::fs::write(
        &d.config_path,
        config.replace("hosts = [\"127.0.0.1\"]", "hosts = [\"llm.example.com\"]"),
    )
    .unwrap();
    d.signal("TERM");
    d.wait_exit(Duration::from_secs(20)).await;
    d.restart().await;
    let (s, b) = say(&d).await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert_eq!(b["error"]["code"], "agent_misconfigured", "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("LISTED_KEY"),
        "{b}"
    );
    assert_eq!(seen.lock().unwrap().len(), 1, "a request left with the key");
    assert!(!d.log().contains(KEY), "the key is in the log");
}
