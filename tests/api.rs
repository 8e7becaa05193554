//! Black-box tests of the admin API against a running daemon, on SQLite and
//! on PostgreSQL.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Backend, TestDaemon, error_fields, json_of};
use reqwest::StatusCode;
use serde_json::{Value, json};

const TRUNK: &str = r#"
name = "carrier-a"
[inbound]
allow = ["127.0.0.1/32"]
[outbound]
proxy = "127.0.0.1:5080"
caller_id = "+14155550100"
[limits]
max_calls = 7
cps = 3
"#;

async fn daemon(backend: Backend) -> TestDaemon {
    TestDaemon::builder()
        .backend(backend)
        // These tests send hundreds of wrong keys on purpose; the limit on
        // failed authentications per address has tests of its own
        // (tests/http_hardening.rs).
        .env("AGENTLINE_API__AUTH_FAILURES_PER_MINUTE", "100000")
        .profile("carrier-a", TRUNK)
        .start()
        .await
}

async fn create_agent(d: &TestDaemon, name: &str) -> Value {
    let (s, b) = json_of(
        d.post("/v1/agents")
            .json(&json!({"name": name, "kind": "echo"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    b
}

/// The key with its last character replaced by another one, so that it is
/// well formed but wrong whatever the key ended with.
fn last_char_changed(key: &str) -> String {
    let (head, last) = key.split_at(key.len() - 1);
    let other = if last == "x" { 'y' } else { 'x' };
    format!("{head}{other}")
}

/// Walks every route of the OpenAPI document (generated from the router
/// itself) and proves that all but the open ones refuse a missing key, a
/// malformed key and a well-formed wrong key.
async fn every_protected_route_refuses_bad_keys(backend: Backend) {
    let d = daemon(backend).await;
    let doc: Value = d
        .http
        .get(d.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // `/metrics` needs a key by default (`api.metrics_open = false`).
    let open = ["/health", "/ready", "/openapi.json", "/docs"];
    let paths = doc["paths"].as_object().expect("paths");
    assert!(
        paths.len() >= 17,
        "the document lists every route: {:?}",
        paths.keys()
    );
    let wrong_keys = [
        None,
        Some("Bearer not-a-key".to_string()),
        Some(format!("Bearer al_live_{}", "A".repeat(32))),
        Some(format!("Bearer {}", last_char_changed(&d.key))),
    ];
    let mut checked = 0;
    for (path, item) in paths {
        let concrete = path.replace("{id}", "xyz_123");
        for method in item.as_object().unwrap().keys() {
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            if open.contains(&path.as_str()) {
                let r = d
                    .http
                    .request(method, d.url(&concrete))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "{path} is open: {}", r.status());
                continue;
            }
            for auth in &wrong_keys {
                let mut req = d
                    .http
                    .request(method.clone(), d.url(&concrete))
                    .json(&json!({}));
                if let Some(a) = auth {
                    req = req.header("authorization", a);
                }
                let (s, b) = json_of(req.send().await.unwrap()).await;
                assert_eq!(
                    s,
                    StatusCode::UNAUTHORIZED,
                    "{method} {path} with {auth:?}: {b}"
                );
                error_fields(&b, s);
                checked += 1;
            }
            // The other header form with a wrong key.
            let r = d
                .http
                .request(method.clone(), d.url(&concrete))
                .header("x-api-key", format!("al_test_{}", "b".repeat(32)))
                .send()
                .await
                .unwrap();
            assert_eq!(
                r.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} X-API-Key"
            );
        }
    }
    assert!(checked >= 4 * 15, "checked {checked} route/key pairs");
    // And the right key in either header form is accepted.
    let r = d
        .http
        .get(d.url("/v1/agents"))
        .header("x-api-key", &d.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

async fn agents_crud_and_validation(backend: Backend) {
    let d = daemon(backend).await;
    let a = create_agent(&d, "Front desk").await;
    let id = a["id"].as_str().unwrap();
    assert!(id.starts_with("agt_"), "{a}");
    assert_eq!(a["kind"], "echo");
    assert_eq!(a["max_duration_seconds"], 3600);
    assert!(
        a["created_at"].as_str().unwrap().ends_with('Z'),
        "RFC 3339 UTC: {a}"
    );

    let (s, got) = json_of(d.get(&format!("/v1/agents/{id}")).send().await.unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got, a);

    let (s, up) = json_of(
        d.patch(&format!("/v1/agents/{id}"))
            .json(&json!({"greeting": "Hello!", "silence_timeout_seconds": 12}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{up}");
    assert_eq!(up["greeting"], "Hello!");
    assert_eq!(up["silence_timeout_seconds"], 12);
    assert_eq!(
        up["name"], "Front desk",
        "untouched fields keep their value"
    );

    // Validation: every bad field is named.
    let (s, b) = json_of(
        d.post("/v1/agents")
            .json(
                &json!({"name": "", "kind": "echo", "max_duration_seconds": 0,
                          "tools": [{"name": "bad name", "url": "ftp://x"}]}),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    let fields = error_fields(&b, s);
    for f in [
        "name",
        "max_duration_seconds",
        "tools[0].name",
        "tools[0].url",
    ] {
        assert!(fields.contains(&f.to_string()), "{f} in {fields:?}");
    }
    // Wrong type, unknown kind, missing field, unknown field.
    for (body, field) in [
        (json!({"name": 5, "kind": "echo"}), "name"),
        (json!({"name": "x", "kind": "robot"}), "kind"),
        (json!({"kind": "echo"}), "name"),
        (
            json!({"name": "x", "kind": "echo", "colour": "red"}),
            "colour",
        ),
        (json!({"name": "x", "kind": "prompt"}), "prompt"),
        (
            json!({"name": "x", "kind": "prompt", "prompt": {"tone_hz": 99999}}),
            "prompt.tone_hz",
        ),
        // Speech choices a call could not use.
        (
            json!({"name": "x", "kind": "echo", "tts": {"provider": "elevenlabs"}}),
            "tts.provider",
        ),
        (
            json!({"name": "x", "kind": "echo", "tts": {"provider": "cartesia"}}),
            "tts.voice",
        ),
        (
            json!({"name": "x", "kind": "echo", "tts": {"provider": "embedded", "voice": "../slt"}}),
            "tts.voice",
        ),
    ] {
        let (s, b) = json_of(d.post("/v1/agents").json(&body).send().await.unwrap()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {b}");
        assert_eq!(error_fields(&b, s), vec![field.to_string()], "{body}");
    }
    // NUL characters are refused alike on both stores.
    let (s, b) = json_of(
        d.post("/v1/agents")
            .json(&json!({"name": "a\u{0}b", "kind": "echo"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(error_fields(&b, s), vec!["name"]);
    let r = d.get("/v1/agents/agt_%00").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = d.get("/v1/calls?agent_id=%00").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Malformed JSON is 400.
    let r = d
        .post("/v1/agents")
        .header("content-type", "application/json")
        .body("{\"name\":")
        .send()
        .await
        .unwrap();
    let (s, b) = json_of(r).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    error_fields(&b, s);

    // A prompt agent with a tone is fine.
    let (s, b) = json_of(d.post("/v1/agents")
        .json(&json!({"name": "beep", "kind": "prompt", "prompt": {"tone_hz": 1000, "duration_ms": 500}}))
        .send().await.unwrap()).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");

    let r = d.delete(&format!("/v1/agents/{id}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (s, b) = json_of(d.get(&format!("/v1/agents/{id}")).send().await.unwrap()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    error_fields(&b, s);
    let r = d.delete(&format!("/v1/agents/{id}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

async fn phone_numbers_are_normalized_unique_and_bound(backend: Backend) {
    let d = daemon(backend).await;
    let agent = create_agent(&d, "sales").await;
    let agent_id = agent["id"].as_str().unwrap();
    let (s, n) = json_of(d.post("/v1/phone-numbers")
        .json(&json!({"number": "+1 (415) 555-2671", "agent_id": agent_id, "trunk_id": "trk_carrier-a"}))
        .send().await.unwrap()).await;
    assert_eq!(s, StatusCode::CREATED, "{n}");
    assert_eq!(n["number"], "+14155552671");
    assert!(n["id"].as_str().unwrap().starts_with("num_"));

    // The same number written differently is a duplicate: 409, not 500.
    let (s, b) = json_of(
        d.post("/v1/phone-numbers")
            .json(&json!({"number": "+14155552671"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    error_fields(&b, s);

    let (s, b) = json_of(
        d.post("/v1/phone-numbers")
            .json(&json!({"number": "555-2671", "agent_id": "agt_nope", "trunk_id": "trk_nope"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    let mut fields = error_fields(&b, s);
    fields.sort();
    assert_eq!(fields, vec!["agent_id", "number", "trunk_id"]);

    // An agent bound to a number cannot be deleted.
    let r = d
        .delete(&format!("/v1/agents/{agent_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);

    // Unbind with null, then the agent can go.
    let id = n["id"].as_str().unwrap();
    let (s, b) = json_of(
        d.patch(&format!("/v1/phone-numbers/{id}"))
            .json(&json!({"agent_id": null}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["agent_id"], Value::Null);
    assert_eq!(b["trunk_id"], "trk_carrier-a");
    let r = d
        .delete(&format!("/v1/agents/{agent_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    // Filter by agent.
    let other = create_agent(&d, "other").await;
    let other_id = other["id"].as_str().unwrap();
    let (s, _) = json_of(
        d.post("/v1/phone-numbers")
            .json(&json!({"number": "+442079460958", "agent_id": other_id}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, list) = json_of(
        d.get(&format!("/v1/phone-numbers?agent_id={other_id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(list["total"], 1);
    assert_eq!(list["items"][0]["number"], "+442079460958");
}

async fn pagination_pages_through_everything(backend: Backend) {
    let d = daemon(backend).await;
    for i in 0..25 {
        create_agent(&d, &format!("agent {i:02}")).await;
    }
    let mut seen = Vec::new();
    for offset in [0, 10, 20] {
        let (s, page) = json_of(
            d.get(&format!("/v1/agents?limit=10&offset={offset}"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(page["total"], 25);
        assert_eq!(page["limit"], 10);
        assert_eq!(page["offset"], offset);
        for a in page["items"].as_array().unwrap() {
            seen.push(a["name"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(seen.len(), 25);
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 25, "no item twice across pages");
    assert_eq!(seen[0], "agent 24", "newest first");
    // Default limit, and the bounds.
    let (_, page) = json_of(d.get("/v1/agents").send().await.unwrap()).await;
    assert_eq!(page["limit"], 20);
    assert_eq!(page["items"].as_array().unwrap().len(), 20);
    for q in ["limit=101", "limit=0", "offset=-1", "limit=ten"] {
        let (s, b) = json_of(d.get(&format!("/v1/agents?{q}")).send().await.unwrap()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {b}");
        let fields = error_fields(&b, s);
        assert_eq!(fields.len(), 1, "{q}: {b}");
        assert!(q.starts_with(&fields[0]), "{q}: {fields:?}");
    }
}

async fn rate_limit_answers_429_with_retry_after(backend: Backend) {
    let d = daemon(backend).await;
    let key = d.create_key_cli("limited", Some(5));
    let mut remaining = Vec::new();
    for _ in 0..5 {
        let r = d
            .http
            .get(d.url("/v1/agents"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["x-ratelimit-limit"], "5");
        assert!(r.headers().contains_key("x-ratelimit-reset"));
        remaining.push(
            r.headers()["x-ratelimit-remaining"]
                .to_str()
                .unwrap()
                .parse::<u32>()
                .unwrap(),
        );
    }
    assert_eq!(remaining, vec![4, 3, 2, 1, 0]);
    let r = d
        .http
        .get(d.url("/v1/agents"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    let (s, b) = json_of(r).await;
    error_fields(&b, s);
    assert_eq!(b["error"]["code"], "rate_limited");
    // Other keys are not affected.
    let r = d.get("/v1/agents").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

async fn api_keys_are_shown_once_and_stored_hashed(backend: Backend) {
    let d = daemon(backend).await;
    let (s, created) = json_of(
        d.post("/v1/api-keys")
            .json(&json!({"name": "ci", "mode": "test"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let secret = created["secret"].as_str().unwrap().to_string();
    assert!(
        secret.starts_with("al_test_") && secret.len() >= 40,
        "{secret}"
    );
    let id = created["id"].as_str().unwrap().to_string();
    assert!(secret.starts_with(created["prefix"].as_str().unwrap()));

    // Never again in a listing.
    let text = d
        .get("/v1/api-keys?limit=100")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains(&secret), "secret must not be listed");
    assert!(text.contains(&id));

    // The database holds the hash and prefix only.
    let store = d.store().await;
    let rows: Vec<(String, String, String)> = match &store.pool {
        agentline::store::Pool::Sqlite(p) => {
            sqlx::query_as("SELECT id, prefix, secret_hash FROM api_keys")
                .fetch_all(p)
                .await
                .unwrap()
        }
        agentline::store::Pool::Postgres(p) => {
            sqlx::query_as("SELECT id, prefix, secret_hash FROM api_keys")
                .fetch_all(p)
                .await
                .unwrap()
        }
    };
    let row = rows.iter().find(|r| r.0 == id).expect("row");
    assert_eq!(row.2, agentline::secrets::hash_key(&secret));
    for r in &rows {
        assert!(
            !r.2.contains(&secret[8..]) && !r.1.contains(&secret[16..]),
            "no secret stored: {r:?}"
        );
    }
    store.close().await;

    // The new key works; revoked, it stops at once.
    let r = d
        .http
        .get(d.url("/v1/agents"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (s, revoked) = json_of(
        d.delete(&format!("/v1/api-keys/{id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(revoked["revoked_at"].is_string());
    let r = d
        .http
        .get(d.url("/v1/agents"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // CLI listing shows the prefix, not the key.
    let out = d.command().args(["keys", "list"]).output().unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains(&id) && listing.contains("revoked") && !listing.contains(&secret),
        "{listing}"
    );
}

async fn webhook_endpoints_crud(backend: Backend) {
    let d = daemon(backend).await;
    let (s, e) = json_of(
        d.post("/v1/webhook-endpoints")
            .json(&json!({"url": "https://hooks.example.com/a", "description": "crm"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    let secret = e["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    let id = e["id"].as_str().unwrap();
    assert!(id.starts_with("whk_"));
    let events: Vec<&str> = e["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        events.contains(&"call.ended") && !events.contains(&"call.dtmf"),
        "{events:?}"
    );
    let text = d
        .get(&format!("/v1/webhook-endpoints/{id}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains(&secret));
    let (s, b) = json_of(
        d.patch(&format!("/v1/webhook-endpoints/{id}"))
            .json(&json!({"enabled": false, "events": ["call.dtmf", "call.ended"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["enabled"], false);
    assert_eq!(b["events"], json!(["call.dtmf", "call.ended"]));
    let (s, b) = json_of(
        d.post("/v1/webhook-endpoints")
            .json(&json!({"url": "not a url", "events": ["call.exploded"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_fields(&b, s), vec!["url", "events[0]"]);
    let r = d
        .delete(&format!("/v1/webhook-endpoints/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
}

async fn calls_are_listed_with_filters(backend: Backend) {
    use agentline::store::calls::NewCall;
    let d = daemon(backend).await;
    let store = d.store().await;
    let rows = [
        (
            "call_01a",
            "inbound",
            "+14155552671",
            "+14155550100",
            "completed",
            "agt_x",
        ),
        (
            "call_01b",
            "outbound",
            "+14155550100",
            "+442079460958",
            "busy",
            "agt_y",
        ),
        (
            "call_01c",
            "inbound",
            "+442079460958",
            "+14155550100",
            "in-progress",
            "agt_x",
        ),
    ];
    for (id, direction, from, to, status, agent) in rows {
        store
            .call_created(
                NewCall {
                    id,
                    direction: direction.parse().unwrap(),
                    from_number: from,
                    to_number: to,
                    trunk: Some("trk_carrier-a"),
                    agent_id: Some(agent),
                    status: status.parse().unwrap(),
                    sip_call_id: Some("abc@host"),
                    metadata: "{\"crm\":7}",
                    campaign: None,
                    context: None,
                    agent_source: None,
                    agent_source_error: None,
                    livemode: true,
                    api_key_id: None,
                },
                None,
            )
            .await
            .unwrap();
    }
    store.close().await;
    let ids = |v: &Value| -> Vec<String> {
        let mut ids: Vec<String> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    for (query, expected) in [
        ("", vec!["call_01a", "call_01b", "call_01c"]),
        ("status=busy", vec!["call_01b"]),
        ("direction=inbound", vec!["call_01a", "call_01c"]),
        (
            "number=%2B44%2020%207946%200958",
            vec!["call_01b", "call_01c"],
        ),
        ("agent_id=agt_x&status=completed", vec!["call_01a"]),
        (
            "created_after=2000-01-01T00:00:00Z",
            vec!["call_01a", "call_01b", "call_01c"],
        ),
        ("created_before=2000-01-01T00:00:00Z", vec![]),
    ] {
        let (s, b) = json_of(d.get(&format!("/v1/calls?{query}")).send().await.unwrap()).await;
        assert_eq!(s, StatusCode::OK, "{query}: {b}");
        assert_eq!(ids(&b), expected, "{query}");
        assert_eq!(b["total"], expected.len());
    }
    let (s, c) = json_of(d.get("/v1/calls/call_01b").send().await.unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(c["status"], "busy");
    assert_eq!(c["from"], "+14155550100");
    assert_eq!(c["metadata"]["crm"], 7);
    for q in ["status=exploded", "created_after=yesterday", "number=12"] {
        let (s, b) = json_of(d.get(&format!("/v1/calls?{q}")).send().await.unwrap()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {b}");
    }
    let r = d.get("/v1/calls/call_nope").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

async fn trunks_come_from_the_profiles(backend: Backend) {
    let d = daemon(backend).await;
    let (s, list) = json_of(d.get("/v1/trunks").send().await.unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["total"], 1);
    let t = &list["items"][0];
    assert_eq!(t["id"], "trk_carrier-a");
    assert_eq!(t["max_calls"], 7);
    assert_eq!(t["registration"]["state"], "not_configured");
    assert_eq!(t["active_calls"], 0);
    let (s, _) = json_of(d.get("/v1/trunks/trk_carrier-a").send().await.unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = json_of(d.get("/v1/trunks/trk_none").send().await.unwrap()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Trunks are read-only.
    let r = d
        .post("/v1/trunks")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
}

both_backends!(
    every_protected_route_refuses_bad_keys,
    agents_crud_and_validation,
    phone_numbers_are_normalized_unique_and_bound,
    pagination_pages_through_everything,
    rate_limit_answers_429_with_retry_after,
    api_keys_are_shown_once_and_stored_hashed,
    webhook_endpoints_crud,
    calls_are_listed_with_filters,
    trunks_come_from_the_profiles,
);
