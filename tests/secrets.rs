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
        let r = d.post(&format!("/v1/agents/{agent}/chat-sessions")).send();
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

const SEAL_KEY: &str = "8f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";

/// (c) Stored credentials: write-only (no read shows the value), sealed in
/// the store, sent only to their hosts; without a key they are refused.
async fn credentials_are_write_only_sealed_and_bound(backend: Backend) {
    const VALUE: &str = "sk-stored-credential-5521";
    let (base, seen) = stand_in().await;
    let d = TestDaemon::builder()
        .backend(backend)
        .allow_loopback()
        .env("AGENTLINE_SECRETS_KEY", SEAL_KEY)
        .start()
        .await;
    let (s, c) = json_of(
        d.post("/v1/credentials")
            .json(&json!({"name": "llm", "value": VALUE, "hosts": ["127.0.0.1"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    assert!(!c.to_string().contains(VALUE), "{c}");
    let id = c["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("cred_"), "{c}");
    assert_eq!(c["hosts"], json!(["127.0.0.1"]));
    for path in [
        format!("/v1/credentials/{id}"),
        "/v1/credentials".to_string(),
    ] {
        let text = d.get(&path).send().await.unwrap().text().await.unwrap();
        assert!(text.contains(&id) && !text.contains(VALUE), "{text}");
    }
    let (sealed, _) = d.store().await.credential_secret(&id).await.unwrap();
    assert!(sealed.starts_with("enc:v1:") && !sealed.contains(VALUE));
    // Bad input changes nothing.
    let (s, b) = json_of(
        d.post("/v1/credentials")
            .json(&json!({"name": "x", "value": "v", "hosts": []}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(fields(&b), vec!["hosts"]);

    // An agent on a host the credential is not bound to is refused.
    let agent = |url: String| {
        json!({"name": "c", "kind": "voice",
               "llm": {"provider": "openai", "base_url": url, "credential_id": id}})
    };
    let localhost = base.replace("127.0.0.1", "localhost");
    let (s, b) = json_of(
        d.post("/v1/agents")
            .json(&agent(format!("{localhost}/v1")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(fields(&b), vec!["llm.credential_id"], "{b}");
    let (s, b) = json_of(
        d.post("/v1/agents")
            .json(&json!({"name": "c", "kind": "voice",
                          "llm": {"provider": "openai", "credential_id": "cred_nope"}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(fields(&b), vec!["llm.credential_id"], "{b}");

    // On its host, the LLM gets it as the bearer key.
    let (s, a) = json_of(
        d.post("/v1/agents")
            .json(&agent(format!("{base}/v1")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{a}");
    let (s, session) = json_of(
        d.post(&format!(
            "/v1/agents/{}/chat-sessions",
            a["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{session}");
    let (s, r) = json_of(
        d.post(&format!(
            "/v1/chat-sessions/{}/messages",
            session["id"].as_str().unwrap()
        ))
        .json(&json!({"content": "hi"}))
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(
        seen.lock().unwrap().clone(),
        vec![Some(format!("Bearer {VALUE}"))]
    );
    assert!(!d.log().contains(VALUE), "the value is in the log");

    let r = d
        .delete(&format!("/v1/credentials/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    // A daemon without a key stores no credential.
    let bare = TestDaemon::builder().backend(backend).start().await;
    let (s, b) = json_of(
        bare.post("/v1/credentials")
            .json(&json!({"name": "x", "value": "v", "hosts": ["api.openai.com"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert_eq!(b["error"]["code"], "not_configured", "{b}");
}

#[path = "common/webhook_receiver.rs"]
mod receiver;

/// (d) Webhook signing secrets: an endpoint made on a daemon without a key
/// is stored in clear; once the operator gives a key, the next start seals
/// it in place, and deliveries are still signed with the same secret.
async fn webhook_secrets_are_sealed_at_rest(backend: Backend) {
    let mut d = TestDaemon::builder()
        .backend(backend)
        .allow_loopback()
        .config(&receiver::fast_webhooks_config(&[1], 60))
        .start()
        .await;
    let rx = receiver::Receiver::start(json!({}));
    let (s, b) = json_of(
        d.post("/v1/webhook-endpoints")
            .json(&json!({"url": rx.url()}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let ep = b["id"].as_str().unwrap().to_string();
    let secret = b["secret"].as_str().unwrap().to_string();
    rx.set(json!({"secrets": [secret]}));
    assert_eq!(
        d.store().await.get_endpoint(&ep).await.unwrap().secret,
        secret
    );

    d.signal("TERM");
    d.wait_exit(Duration::from_secs(20)).await;
    let key_file = d.dir.path().join("secrets.key");
    std::fs::write(&key_file, SEAL_KEY).unwrap();
    let config = std::fs::read_to_string(&d.config_path).unwrap();
    std::fs::write(
        &d.config_path,
        format!(
            "{config}\n[secrets]\nkey_file = \"{}\"\n",
            key_file.display()
        ),
    )
    .unwrap();
    d.restart().await;
    let stored = d.store().await.get_endpoint(&ep).await.unwrap().secret;
    assert!(stored.starts_with("enc:v1:"), "{stored}");
    assert!(!stored.contains(&secret[6..]));

    let (s, b) = json_of(
        d.post(&format!("/v1/webhook-endpoints/{ep}/test"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    let records = rx
        .wait_until(Duration::from_secs(10), |r| !r.is_empty())
        .await;
    assert_eq!(records[0].verified, vec![true], "{:?}", records[0]);

    // A rotation is stored sealed too.
    let (s, b) = json_of(
        d.post(&format!("/v1/webhook-endpoints/{ep}/rotate-secret"))
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let e = d.store().await.get_endpoint(&ep).await.unwrap();
    assert!(e.secret.starts_with("enc:v1:"));
    assert!(e.previous_secret.unwrap().starts_with("enc:v1:"));
}

both_backends!(
    unlisted_variables_are_refused,
    credentials_are_write_only_sealed_and_bound,
    webhook_secrets_are_sealed_at_rest
);
