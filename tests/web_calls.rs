//! Publishable keys and `POST /v1/web-calls` against a running daemon, on
//! SQLite and PostgreSQL: a publishable key opens no other route of the
//! OpenAPI document, starts calls only for the agents and from the origins
//! it lists (CORS answered for exactly those), is rate-limited and capped
//! per key and per client address, and stops working once revoked; a web
//! call is a call (direction `web`, its context) that ends `no-answer`
//! when its token is not used in time.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Backend, TestDaemon, error_fields, json_of, wait_until};
use reqwest::StatusCode;
use serde_json::{Value, json};

const PAGE: &str = "http://127.0.0.1:18081";
const OTHER_PAGE: &str = "http://127.0.0.1:18082";

async fn daemon(backend: Backend, webrtc: &str) -> TestDaemon {
    TestDaemon::builder()
        .backend(backend)
        .env("AGENTLINE_API__AUTH_FAILURES_PER_MINUTE", "100000")
        .config(&format!("[webrtc]\n{webrtc}"))
        .start()
        .await
}

async fn agent(d: &TestDaemon, name: &str) -> String {
    let (s, b) = json_of(
        d.post("/v1/agents")
            .json(&json!({"name": name, "kind": "echo"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    b["id"].as_str().unwrap().to_string()
}

async fn publishable(d: &TestDaemon, body: Value) -> (StatusCode, Value) {
    json_of(
        d.post("/v1/publishable-keys")
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// `POST /v1/web-calls` as a page on `origin` would send it.
async fn web_call(
    d: &TestDaemon,
    pk: &str,
    origin: Option<&str>,
    body: Value,
) -> reqwest::Response {
    let mut req = d
        .http
        .post(d.url("/v1/web-calls"))
        .bearer_auth(pk)
        .json(&body);
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    req.send().await.unwrap()
}

fn cors(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get("access-control-allow-origin")
        .map(|v| v.to_str().unwrap().to_string())
}

/// A publishable key does one thing: every other operation of the
/// document answers it 401, as for no key at all.
async fn a_publishable_key_opens_nothing_else(backend: Backend) {
    let d = daemon(backend, "").await;
    let a = agent(&d, "web-a").await;
    let (s, pk) = publishable(
        &d,
        json!({"name": "site", "agent_ids": [a], "origins": [PAGE]}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{pk}");
    let secret = pk["secret"].as_str().unwrap();
    assert!(
        secret.starts_with("al_pk_") && secret.len() == 38,
        "{secret}"
    );
    let doc: Value = d
        .http
        .get(d.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        doc["paths"]["/v1/web-calls"]["post"]["x-required-scope"],
        "publishable"
    );
    let open = [
        "/health",
        "/ready",
        "/openapi.json",
        "/docs",
        "/v1/web-calls",
        "/v1/web-calls/{id}/whip",
        "/v1/web-calls/{id}/session",
    ];
    let mut refused = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        if open.contains(&path.as_str()) {
            continue;
        }
        for method in item.as_object().unwrap().keys() {
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let concrete = path.replace("{id}", "xyz_123");
            let mut req = d
                .http
                .request(method.clone(), d.url(&concrete))
                .bearer_auth(secret)
                .header("origin", PAGE);
            if method != reqwest::Method::GET {
                req = req.json(&json!({}));
            }
            let r = req.send().await.unwrap();
            assert_eq!(
                r.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} with a publishable key"
            );
            assert_eq!(cors(&r), None, "{method} {path} answers no CORS");
            refused += 1;
        }
    }
    assert!(refused >= 60, "{refused} operations walked");
    // Nor does an API key open the web-call route.
    let r = web_call(&d, &d.key, Some(PAGE), json!({"agent_id": a})).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // No route but this one answers a preflight.
    let r = d
        .http
        .request(reqwest::Method::OPTIONS, d.url("/v1/agents"))
        .header("origin", PAGE)
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(cors(&r), None);
    assert_ne!(r.status(), StatusCode::NO_CONTENT);
    // Only admin keys manage publishable keys.
    let out = d
        .command()
        .args(["keys", "create", "--name", "c", "--scope", "calls"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let calls_secret = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let r = d
        .http
        .post(d.url("/v1/publishable-keys"))
        .bearer_auth(&calls_secret)
        .json(&json!({"name": "x", "agent_ids": [a], "origins": [PAGE]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

/// Bound agents, listed origins, CORS, the call it starts, validation,
/// the per-key rate and cap, the expiry of an unused token, revocation.
async fn web_calls_follow_the_keys_lists(backend: Backend) {
    let d = daemon(
        backend,
        "token_ttl_seconds = 6\nice_servers = [{ urls = [\"stun:stun.example.net:3478\"] }]",
    )
    .await;
    let a = agent(&d, "Ada").await;
    let b = agent(&d, "Bob").await;

    // Bad bodies change nothing.
    for (body, field) in [
        (
            json!({"name": "x", "agent_ids": [a], "origins": ["http://127.0.0.1:1/page"]}),
            "origins[0]",
        ),
        (
            json!({"name": "x", "agent_ids": [a], "origins": ["*"]}),
            "origins[0]",
        ),
        (
            json!({"name": "x", "agent_ids": ["agt_01nonexistent"], "origins": [PAGE]}),
            "agent_ids[0]",
        ),
        (
            json!({"name": "x", "agent_ids": [], "origins": [PAGE]}),
            "agent_ids",
        ),
        (
            json!({"name": "x", "agent_ids": [a], "origins": []}),
            "origins",
        ),
    ] {
        let (s, e) = publishable(&d, body).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
        assert!(
            error_fields(&e, s).iter().any(|f| f == field),
            "{field}: {e}"
        );
    }
    let (s, list) = json_of(d.get("/v1/publishable-keys").send().await.unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["total"], 0, "{list}");

    let (s, pk) = publishable(
        &d,
        json!({"name": "site", "agent_ids": [a], "origins": [PAGE, "https://Shop.Example"],
               "max_concurrent_calls": 2}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{pk}");
    assert_eq!(pk["origins"], json!([PAGE, "https://shop.example"]));
    let secret = pk["secret"].as_str().unwrap().to_string();

    // The preflight: the listed origin only.
    let preflight = |origin: &'static str| {
        d.http
            .request(reqwest::Method::OPTIONS, d.url("/v1/web-calls"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let r = preflight(PAGE).await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(cors(&r).as_deref(), Some(PAGE));
    let allowed = r.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap();
    assert!(allowed.contains("authorization"), "{allowed}");
    let r = preflight(OTHER_PAGE).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(cors(&r), None);

    // A call for the bound agent, from the listed origin.
    let r = web_call(
        &d,
        &secret,
        Some(PAGE),
        json!({"agent_id": a, "caller_name": "Grace\u{7}", "metadata": {"plan": "pro"}}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(cors(&r).as_deref(), Some(PAGE));
    let (_, created) = json_of(r).await;
    let call_id = created["call_id"].as_str().unwrap().to_string();
    assert_eq!(created["agent"]["name"], "Ada", "{created}");
    assert!(created["token"].as_str().unwrap().len() >= 32, "{created}");
    assert_eq!(
        created["ice_servers"],
        json!([{"urls": ["stun:stun.example.net:3478"]}])
    );
    assert_eq!(created["whip_url"], format!("/v1/web-calls/{call_id}/whip"));
    let (s, call) = json_of(d.get(&format!("/v1/calls/{call_id}")).send().await.unwrap()).await;
    assert_eq!(s, StatusCode::OK, "{call}");
    assert_eq!(call["direction"], "web", "{call}");
    assert_eq!(call["status"], "queued", "{call}");
    assert_eq!(call["agent_id"], a.as_str());
    assert_eq!(call["context"]["origin"], PAGE, "{call}");
    assert_eq!(call["context"]["caller_name"], "Grace", "{call}");
    assert_eq!(call["context"]["metadata"]["plan"], "pro", "{call}");
    assert_eq!(call["context"]["direction"], "web", "{call}");
    // Listing by direction finds it.
    let (_, page) = json_of(d.get("/v1/calls?direction=web").send().await.unwrap()).await;
    assert_eq!(page["total"], 1, "{page}");

    // An agent the key does not list, an origin it does not list, no
    // origin at all: refused, and the refusal from a foreign page
    // carries no CORS header.
    let r = web_call(&d, &secret, Some(PAGE), json!({"agent_id": b})).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = web_call(&d, &secret, Some(OTHER_PAGE), json!({"agent_id": a})).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(cors(&r), None);
    let r = web_call(&d, &secret, None, json!({"agent_id": a})).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // A bad body: 422 naming the field, with CORS so the page reads it.
    let r = web_call(
        &d,
        &secret,
        Some(PAGE),
        json!({"agent_id": a, "metadata": [1]}),
    )
    .await;
    assert_eq!(cors(&r).as_deref(), Some(PAGE));
    let (s, e) = json_of(r).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert!(error_fields(&e, s).iter().any(|f| f == "metadata"), "{e}");
    let (_, page) = json_of(d.get("/v1/calls?direction=web").send().await.unwrap()).await;
    assert_eq!(page["total"], 1, "refusals start no call: {page}");

    // The media token: refused without it, from another origin, or as
    // another content type; spent by its first offer (one that cannot be
    // answered ends the call `not_acceptable`), refused the second time.
    let whip = |id: String, token: String, origin: &'static str, ct: &'static str| {
        d.http
            .post(d.url(&format!("/v1/web-calls/{id}/whip")))
            .bearer_auth(token)
            .header("origin", origin)
            .header("content-type", ct)
            .body("v=0\r\nnot an offer\r\n")
            .send()
    };
    let token = created["token"].as_str().unwrap().to_string();
    let r = d
        .http
        .request(
            reqwest::Method::OPTIONS,
            d.url(&format!("/v1/web-calls/{call_id}/whip")),
        )
        .header("origin", OTHER_PAGE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(cors(&r), None);
    let r = whip(
        call_id.clone(),
        token.clone(),
        OTHER_PAGE,
        "application/sdp",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = whip(call_id.clone(), "x".repeat(40), PAGE, "application/sdp")
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = whip(call_id.clone(), token.clone(), PAGE, "text/plain")
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Still unspent after those: the first real use takes it.
    let r = whip(call_id.clone(), token.clone(), PAGE, "application/sdp")
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(cors(&r).as_deref(), Some(PAGE));
    let r = whip(call_id.clone(), token.clone(), PAGE, "application/sdp")
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "a token works once");
    let (_, call) = json_of(d.get(&format!("/v1/calls/{call_id}")).send().await.unwrap()).await;
    assert_eq!(call["end_reason"], "not_acceptable", "{call}");
    assert_eq!(call["status"], "failed", "{call}");

    // The key's cap: two calls up at once, the third refused (the one
    // just ended no longer counts).
    let r = web_call(&d, &secret, Some(PAGE), json!({"agent_id": a})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let (_, unused) = json_of(r).await;
    let r = web_call(&d, &secret, Some(PAGE), json!({"agent_id": a})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = web_call(&d, &secret, Some(PAGE), json!({"agent_id": a})).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let (_, e) = json_of(r).await;
    assert_eq!(e["error"]["code"], "too_many_calls", "{e}");

    // An unused token expires (6 s here): refused, and its call ends
    // no-answer.
    let call_id = unused["call_id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(6300)).await;
    let r = whip(
        call_id.clone(),
        unused["token"].as_str().unwrap().to_string(),
        PAGE,
        "application/sdp",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "an expired token");
    wait_until(
        Duration::from_secs(15),
        "the unused web call ends",
        || async {
            let (_, call) =
                json_of(d.get(&format!("/v1/calls/{call_id}")).send().await.unwrap()).await;
            call["status"] == "no-answer"
        },
    )
    .await;
    let (_, call) = json_of(d.get(&format!("/v1/calls/{call_id}")).send().await.unwrap()).await;
    assert_eq!(call["end_reason"], "no_answer", "{call}");

    // Revoked: refused at once.
    let pk_id = pk["id"].as_str().unwrap();
    let (s, revoked) = json_of(
        d.delete(&format!("/v1/publishable-keys/{pk_id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{revoked}");
    assert!(revoked["revoked_at"].is_string());
    let r = web_call(&d, &secret, Some(PAGE), json!({"agent_id": a})).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // And its origin gets no preflight any more.
    let r = preflight(PAGE).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

/// A key's own rate, then the client address's over every key.
async fn web_calls_are_rate_limited(backend: Backend) {
    let d = daemon(backend, "requests_per_address_per_minute = 8").await;
    let a = agent(&d, "rated").await;
    let (_, pk) = publishable(
        &d,
        json!({"name": "slow", "agent_ids": [a], "origins": [PAGE], "rate_limit_per_minute": 2}),
    )
    .await;
    let secret = pk["secret"].as_str().unwrap().to_string();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let r = web_call(&d, &secret, Some(PAGE), json!({"agent_id": a})).await;
        statuses.push(r.status());
    }
    assert_eq!(
        statuses,
        [
            StatusCode::CREATED,
            StatusCode::CREATED,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    // The address: 8 a minute whatever the key (a wrong one included),
    // so 3 counted above and 5 more pass the address check.
    let mut limited_at = None;
    for i in 0..10 {
        let r = web_call(
            &d,
            "al_pk_wrongwrongwrongwrongwrongwrong00",
            Some(PAGE),
            json!({}),
        )
        .await;
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(r.headers().contains_key("retry-after"));
            limited_at = Some(i);
            break;
        }
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    // 5: the 9th request of the minute. On PostgreSQL the count is a
    // fixed clock minute, so a run across its boundary starts afresh (up
    // to 8 more).
    assert!(matches!(limited_at, Some(5..=8)), "{limited_at:?}");
}

both_backends!(
    a_publishable_key_opens_nothing_else,
    web_calls_follow_the_keys_lists,
    web_calls_are_rate_limited,
);

/// A bad `[webrtc]` value (in the file or the environment) stops the
/// daemon before anything is bound or stored, naming the key.
#[tokio::test]
async fn a_bad_webrtc_config_refuses_to_start() {
    for (webrtc, env, key, says) in [
        (
            "ice_servers = [{ urls = [\"turn:turn.example.net\"] }]",
            None,
            "webrtc.ice_servers[0]",
            "username and credential",
        ),
        (
            "ice_servers = [{ urls = [\"https://stun.example.net\"] }]",
            None,
            "webrtc.ice_servers[0]",
            "stun:",
        ),
        ("ports = \"10000-10010\"", None, "webrtc.ports", "rtp_ports"),
        ("max_calls = 0", None, "webrtc.max_calls", "between 1"),
        (
            "",
            Some(("AGENTLINE_WEBRTC__PUBLIC_IP", "0.0.0.0")),
            "webrtc.public_ip",
            "unspecified",
        ),
    ] {
        let mut b = TestDaemon::builder()
            .config(&format!("[webrtc]\n{webrtc}"))
            .sip("rtp_ports = \"10000-10100\"");
        if let Some((k, v)) = env {
            b = b.env(k, v);
        }
        let d = b.prepare().await;
        for command in ["check-config", "run"] {
            let out = tokio::time::timeout(
                Duration::from_secs(30),
                tokio::task::spawn_blocking({
                    let mut c = d.command();
                    c.arg(command);
                    move || c.output().unwrap()
                }),
            )
            .await
            .expect("refused at once")
            .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{webrtc} {command}: {err}");
            assert!(err.contains(key) && err.contains(says), "{webrtc}: {err}");
        }
        assert!(
            std::net::TcpStream::connect(d.api).is_err(),
            "nothing listens"
        );
        assert!(
            !d.dir.path().join("agentline.db").exists(),
            "nothing was stored"
        );
    }
}
