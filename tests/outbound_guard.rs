//! Black-box tests of the outbound policy: what an API key can point the
//! daemon at. Agents whose LLM `base_url`, speech `base_url` or tool URL
//! reaches loopback, `[::1]`, the metadata address or a name resolving to
//! loopback are refused when saved; an agent saved under a looser policy
//! fails at use; redirects are not followed. In every case a listener the
//! test runs at the forbidden address sees no request.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use common::{Backend, TestDaemon, chunk, finish, json_of, sse_body, tool_call_chunks};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A listener on `addr` that counts every request it gets (and answers 200).
async fn counting(addr: &str) -> Option<(String, Arc<AtomicUsize>)> {
    let listener = tokio::net::TcpListener::bind(addr).await.ok()?;
    let local = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let router = axum::Router::new()
        .fallback(|State(h): State<Arc<AtomicUsize>>| async move {
            h.fetch_add(1, Ordering::SeqCst);
            "{}"
        })
        .with_state(hits.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    Some((format!("http://{local}"), hits))
}

async fn create(d: &TestDaemon, body: &Value) -> (StatusCode, Value) {
    json_of(d.post("/v1/agents").json(body).send().await.unwrap()).await
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

fn llm_agent(base_url: &str) -> Value {
    json!({"name": "a", "kind": "voice",
           "llm": {"provider": "openai", "base_url": base_url, "model": "m"}})
}

fn tool_agent(url: &str) -> Value {
    json!({"name": "t", "kind": "voice",
           "llm": {"provider": "openai", "base_url": "https://api.openai.com/v1", "model": "m"},
           "tools": [{"name": "lookup", "url": url, "parameters": {"type": "object"},
                      "timeout_ms": 1000}]})
}

/// (a) Refused at create, under the default policy: loopback, `[::1]`, the
/// metadata address and `localhost`, for the LLM, the speech vendors and
/// tools; the error names the field and not the resolved address; nothing
/// reaches the listeners.
async fn inside_urls_are_refused_when_saved(backend: Backend) {
    let d = TestDaemon::builder().backend(backend).start().await;
    let (v4, v4_hits) = counting("127.0.0.1:0").await.unwrap();
    let v6 = counting("[::1]:0").await;
    let port = v4.rsplit(':').next().unwrap().to_string();
    let mut urls = vec![
        format!("{v4}/v1"),
        format!("http://localhost:{port}/v1"),
        "http://169.254.169.254/latest/meta-data".to_string(),
        "http://[::ffff:127.0.0.1]:80/v1".to_string(),
        "http://[::127.0.0.1]/v1".to_string(),
        "http://[2002:7f00:1::1]/v1".to_string(),
        "http://192.0.0.8/v1".to_string(),
        "http://[fec0::1]/v1".to_string(),
        "http://10.0.0.1/v1".to_string(),
    ];
    if let Some((v6, _)) = &v6 {
        urls.push(format!("{v6}/v1"));
    } else {
        urls.push("http://[::1]:9/v1".to_string());
    }
    for url in &urls {
        let (s, b) = create(&d, &llm_agent(url)).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {b}");
        assert_eq!(fields(&b), vec!["llm.base_url"], "{url}: {b}");
        let message = b["error"]["details"][0]["message"].as_str().unwrap();
        assert!(
            !message.contains("127.0.0.1") && !message.contains("::1"),
            "the resolved address is echoed: {message}"
        );

        let (s, b) = create(&d, &tool_agent(url)).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {b}");
        assert_eq!(fields(&b), vec!["tools[0].url"], "{url}: {b}");
    }
    // The speech vendors: OpenAI-compatible STT over HTTP, Deepgram's
    // WebSocket (ws:// to loopback would otherwise be allowed in clear).
    for body in [
        json!({"name": "s", "kind": "voice", "llm": {"provider": "openai", "base_url": "https://api.openai.com/v1"},
               "stt": {"provider": "openai", "base_url": format!("{v4}/v1")}}),
        json!({"name": "s", "kind": "voice", "llm": {"provider": "openai", "base_url": "https://api.openai.com/v1"},
               "stt": {"provider": "deepgram", "base_url": format!("ws://127.0.0.1:{port}")}}),
        json!({"name": "s", "kind": "voice", "llm": {"provider": "openai", "base_url": "https://api.openai.com/v1"},
               "tts": {"provider": "cartesia", "voice": "v", "base_url": format!("ws://localhost:{port}")}}),
    ] {
        let (s, b) = create(&d, &body).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        let f = fields(&b);
        assert!(
            f == vec!["stt.base_url"] || f == vec!["tts.base_url"],
            "{b}"
        );
    }
    // An update is checked the same way.
    let (s, b) = create(&d, &llm_agent("https://api.openai.com/v1")).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let id = b["id"].as_str().unwrap();
    let (s, b) = json_of(
        d.patch(&format!("/v1/agents/{id}"))
            .json(&json!({"llm": {"provider": "openai", "base_url": format!("{v4}/v1")}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(fields(&b), vec!["llm.base_url"], "{b}");

    assert_eq!(v4_hits.load(Ordering::SeqCst), 0);
    if let Some((_, hits)) = v6 {
        assert_eq!(hits.load(Ordering::SeqCst), 0);
    }
}

both_backends!(inside_urls_are_refused_when_saved);

/// (b) Refused at use: an agent saved while loopback was allowed, pointing
/// at `localhost` (a name, so only the connect-time resolver can stop it),
/// fails once the daemon runs under the default policy; the listener sees
/// nothing. Before the policy change the same agent reached it (control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_resolves_inside_fails_at_use() {
    let (base, hits) = counting("127.0.0.1:0").await.unwrap();
    let port = base.rsplit(':').next().unwrap().to_string();
    let mut d = TestDaemon::builder().allow_loopback().start().await;
    let config = std::fs::read_to_string(&d.config_path).unwrap();
    assert!(config.contains("[net]"), "{config}");
    let (s, b) = create(&d, &llm_agent(&format!("http://localhost:{port}/v1"))).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let agent = b["id"].as_str().unwrap().to_string();
    let (s, session) = json_of(
        d.post(&format!("/v1/agents/{agent}/chat-sessions"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{session}");
    let sid = session["id"].as_str().unwrap().to_string();
    // Control: allowed, the stand-in is asked (it answers `{}`, which is no
    // chat completion, so the reply fails; the request arrived).
    let _ = d
        .post(&format!("/v1/chat-sessions/{sid}/messages"))
        .json(&json!({"content": "hello"}))
        .send()
        .await
        .unwrap();
    let control = hits.load(Ordering::SeqCst);
    assert!(control >= 1, "the control request did not arrive");

    // The same agent under the default policy.
    let strict: String = config
        .lines()
        .filter(|l| *l != "[net]" && !l.starts_with("allowed_networks"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&d.config_path, strict).unwrap();
    d.signal("TERM");
    d.wait_exit(Duration::from_secs(20)).await;
    d.restart().await;
    let (s, b) = json_of(
        d.post(&format!("/v1/chat-sessions/{sid}/messages"))
            .json(&json!({"content": "hello"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        s == StatusCode::BAD_GATEWAY || s == StatusCode::CONFLICT,
        "{s} {b}"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        control,
        "a request got through"
    );
}

/// What the stand-in LLM does: ask for the `lookup` tool, then repeat the
/// tool's result as its answer.
async fn llm(body: axum::Json<Value>) -> axum::response::Response {
    let last = body["messages"]
        .as_array()
        .and_then(|m| m.last().cloned())
        .unwrap_or(Value::Null);
    let zero = Duration::ZERO;
    let mut chunks = vec![(zero, chunk(json!({"role": "assistant", "content": ""})))];
    if last["role"] == "tool" {
        let text = format!("Tool said: {}", last["content"].as_str().unwrap_or(""));
        chunks.push((zero, chunk(json!({"content": text}))));
    } else {
        chunks.extend(
            tool_call_chunks("call_1", "lookup", "{}")
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

/// (c) Redirects are not followed: with only 127.0.0.1 allowed, a tool on
/// 127.0.0.1 that redirects to 127.0.0.2 (loopback, not allowed) and an LLM
/// that redirects there: the LLM hears the tool failed, the chat fails for
/// the LLM, and the listener on 127.0.0.2 sees nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_inside_are_not_followed() {
    let (inside, inside_hits) = counting("127.0.0.2:0").await.unwrap();
    let target = format!("{inside}/secret");
    let to = target.clone();
    let redirector = common::serve(axum::Router::new().fallback(move || {
        let to = to.clone();
        async move {
            axum::response::Response::builder()
                .status(307)
                .header("location", to)
                .body(axum::body::Body::empty())
                .unwrap()
        }
    }))
    .await;
    let llm_url = common::serve(axum::Router::new().route("/v1/chat/completions", post(llm))).await;
    let d = TestDaemon::builder()
        .config("[net]\nallowed_networks = [\"127.0.0.1/32\"]")
        .start()
        .await;
    // The redirect target itself is refused when saved.
    let (s, b) = create(&d, &tool_agent(&target)).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");

    let (s, b) = create(
        &d,
        &json!({"name": "r", "kind": "voice",
                "llm": {"provider": "openai", "base_url": format!("{llm_url}/v1"), "model": "m"},
                "tools": [{"name": "lookup", "url": format!("{redirector}/tool"),
                           "parameters": {"type": "object"}, "timeout_ms": 2000}]}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let agent = b["id"].as_str().unwrap();
    let (_, session) = json_of(
        d.post(&format!("/v1/agents/{agent}/chat-sessions"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let sid = session["id"].as_str().unwrap();
    let (s, r) = json_of(
        d.post(&format!("/v1/chat-sessions/{sid}/messages"))
            .json(&json!({"content": "look it up"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let content = r["content"].as_str().unwrap();
    assert!(content.contains("307"), "{content}");

    // An LLM base_url that redirects.
    let (s, b) = create(&d, &llm_agent(&format!("{redirector}/v1"))).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let agent = b["id"].as_str().unwrap();
    let (_, session) = json_of(
        d.post(&format!("/v1/agents/{agent}/chat-sessions"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let sid = session["id"].as_str().unwrap();
    let (s, b) = json_of(
        d.post(&format!("/v1/chat-sessions/{sid}/messages"))
            .json(&json!({"content": "hi"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{b}");
    assert_eq!(inside_hits.load(Ordering::SeqCst), 0);
}

/// (d) A tool answer larger than the cap is refused, not read whole: the
/// LLM hears an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_tool_answer_is_cut_off() {
    let big =
        common::serve(axum::Router::new().fallback(|| async { "x".repeat(4 * 1024 * 1024) })).await;
    let llm_url = common::serve(axum::Router::new().route("/v1/chat/completions", post(llm))).await;
    let d = TestDaemon::builder().allow_loopback().start().await;
    let (s, b) = create(
        &d,
        &json!({"name": "big", "kind": "voice",
                "llm": {"provider": "openai", "base_url": format!("{llm_url}/v1"), "model": "m"},
                "tools": [{"name": "lookup", "url": format!("{big}/tool"),
                           "parameters": {"type": "object"}, "timeout_ms": 5000}]}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let agent = b["id"].as_str().unwrap();
    let (_, session) = json_of(
        d.post(&format!("/v1/agents/{agent}/chat-sessions"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let sid = session["id"].as_str().unwrap();
    let (s, r) = json_of(
        d.post(&format!("/v1/chat-sessions/{sid}/messages"))
            .json(&json!({"content": "look it up"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let content = r["content"].as_str().unwrap();
    assert!(content.contains("larger than"), "{content}");
    assert!(content.len() < 1024, "{}", content.len());
}
