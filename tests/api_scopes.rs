//! Scopes on API keys and the audit log, against a running daemon on SQLite
//! and PostgreSQL: a `read` key is refused on every non-GET route of the
//! OpenAPI document, a `calls` key on key and endpoint management, no key
//! mints a stronger key, and every change lands in `/v1/audit-events` with
//! the key that made it.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Backend, TestDaemon, error_fields, json_of};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A key made by `agentline keys create`, with its id.
struct Key {
    id: String,
    secret: String,
}

fn cli_key(d: &TestDaemon, name: &str, extra: &[&str]) -> Key {
    let out = d
        .command()
        .args(["keys", "create", "--name", name])
        .args(extra)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "keys create: {err}");
    // "created key_... (name, scope S); the key is shown only now:"
    let id = err
        .split_whitespace()
        .find(|w| w.starts_with("key_"))
        .unwrap_or_else(|| panic!("no id in {err:?}"))
        .to_string();
    Key {
        id,
        secret: String::from_utf8(out.stdout).unwrap().trim().to_string(),
    }
}

async fn daemon(backend: Backend) -> TestDaemon {
    TestDaemon::builder()
        .backend(backend)
        .env("AGENTLINE_API__AUTH_FAILURES_PER_MINUTE", "100000")
        .start()
        .await
}

async fn openapi(d: &TestDaemon) -> Value {
    d.http
        .get(d.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Every operation of the document: (METHOD, path, required scope or
/// `None` for an open route).
fn operations(doc: &Value) -> Vec<(reqwest::Method, String, Option<String>)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let scope = op["x-required-scope"].as_str().map(str::to_string);
            ops.push((
                reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                path.clone(),
                scope,
            ));
        }
    }
    ops
}

async fn call(
    d: &TestDaemon,
    key: &str,
    method: reqwest::Method,
    path: &str,
) -> (StatusCode, Value) {
    let concrete = path.replace("{id}", "xyz_123");
    let mut req = d
        .http
        .request(method.clone(), d.url(&concrete))
        .bearer_auth(key);
    if method != reqwest::Method::GET {
        req = req.json(&json!({}));
    }
    if path == "/v1/events" {
        // The stream never ends: the status is all we need.
        let r = req.send().await.unwrap();
        return (r.status(), Value::Null);
    }
    json_of(req.send().await.unwrap()).await
}

/// Walks the whole OpenAPI document with a `read` and a `calls` key: each
/// route answers 403 `forbidden` naming the missing scope exactly when the
/// route's declared scope (`x-required-scope`) is above the key's.
async fn scopes_hold_on_every_route(backend: Backend) {
    let d = daemon(backend).await;
    let read = cli_key(&d, "reader", &["--scope", "read", "--rate-limit", "100000"]);
    let calls = cli_key(
        &d,
        "caller",
        &["--scope", "calls", "--rate-limit", "100000"],
    );
    let doc = openapi(&d).await;
    let ops = operations(&doc);
    assert!(ops.len() >= 60, "{} operations", ops.len());
    let open = ["/health", "/ready", "/openapi.json", "/docs"];
    let rank = |s: &str| match s {
        "read" => 0,
        "calls" => 1,
        "admin" => 2,
        other => panic!("unknown scope {other}"),
    };
    let mut refused_read = 0;
    let mut refused_calls = 0;
    for (method, path, scope) in &ops {
        if open.contains(&path.as_str()) {
            assert!(scope.is_none(), "{path} is open");
            continue;
        }
        let scope = scope
            .as_deref()
            .unwrap_or_else(|| panic!("{method} {path} states no x-required-scope"));
        if scope == "publishable" || scope == "web-call-token" {
            // Only a publishable key or a web call's token opens it:
            // every API key is refused.
            for key in [&read, &calls] {
                let (s, b) = call(&d, &key.secret, method.clone(), path).await;
                assert_eq!(s, StatusCode::UNAUTHORIZED, "{method} {path}: {b}");
            }
            continue;
        }
        if *method != reqwest::Method::GET {
            assert_ne!(scope, "read", "{method} {path} must need more than read");
        }
        for (key, key_scope) in [(&read, "read"), (&calls, "calls")] {
            let (s, b) = call(&d, &key.secret, method.clone(), path).await;
            if rank(scope) > rank(key_scope) {
                assert_eq!(
                    s,
                    StatusCode::FORBIDDEN,
                    "{method} {path} with {key_scope}: {b}"
                );
                error_fields(&b, s);
                assert_eq!(b["error"]["code"], "forbidden", "{b}");
                let message = b["error"]["message"].as_str().unwrap();
                assert!(
                    message.contains(&format!("`{scope}`")),
                    "{method} {path}: {message}"
                );
                if key_scope == "read" {
                    refused_read += 1;
                } else {
                    refused_calls += 1;
                }
            } else {
                assert_ne!(
                    s,
                    StatusCode::FORBIDDEN,
                    "{method} {path} with {key_scope}: {b}"
                );
                assert_ne!(s, StatusCode::UNAUTHORIZED, "{method} {path}: {b}");
            }
        }
    }
    // Every non-GET route is refused to the read key.
    let non_get = ops
        .iter()
        .filter(|(m, p, s)| {
            *m != reqwest::Method::GET
                && !open.contains(&p.as_str())
                && !matches!(s.as_deref(), Some("publishable" | "web-call-token"))
        })
        .count();
    assert!(refused_read > non_get, "{refused_read} vs {non_get}");
    // Key and endpoint management is refused to the calls key.
    for (method, path) in [
        (reqwest::Method::POST, "/v1/api-keys"),
        (reqwest::Method::GET, "/v1/api-keys"),
        (reqwest::Method::DELETE, "/v1/api-keys/{id}"),
        (reqwest::Method::POST, "/v1/webhook-endpoints"),
        (reqwest::Method::PATCH, "/v1/webhook-endpoints/{id}"),
        (reqwest::Method::DELETE, "/v1/webhook-endpoints/{id}"),
        (
            reqwest::Method::POST,
            "/v1/webhook-endpoints/{id}/rotate-secret",
        ),
        (reqwest::Method::GET, "/v1/audit-events"),
    ] {
        let (s, b) = call(&d, &calls.secret, method.clone(), path).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{method} {path}: {b}");
    }
    assert!(refused_calls >= 12, "{refused_calls}");
    // What a read key can do, it does: a GET answers data.
    let (s, b) = call(&d, &read.secret, reqwest::Method::GET, "/v1/agents").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // And a calls key really creates.
    let (s, b) = json_of(
        d.http
            .post(d.url("/v1/agents"))
            .bearer_auth(&calls.secret)
            .json(&json!({"name": "by-calls", "kind": "echo"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
}

async fn create_key(d: &TestDaemon, key: &str, body: Value) -> (StatusCode, Value) {
    json_of(
        d.http
            .post(d.url("/v1/api-keys"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// No key makes a key with a stronger scope, a higher rate limit or live
/// mode from test; what is left out is inherited from the creator.
async fn no_key_mints_a_stronger_key(backend: Backend) {
    let d = daemon(backend).await;
    let admin = cli_key(&d, "limited-admin", &["--rate-limit", "1000"]);
    let calls = cli_key(&d, "caller", &["--scope", "calls"]);
    let test_admin = cli_key(&d, "test-admin", &["--test"]);

    // Above its own limit: refused, naming the limit.
    let (s, b) = create_key(
        &d,
        &admin.secret,
        json!({"name": "x", "rate_limit_per_minute": 1001}),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert_eq!(b["error"]["code"], "forbidden");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("rate_limit_per_minute")
    );
    // Equal is fine; left out, the creator's own limit and scope.
    let (s, b) = create_key(
        &d,
        &admin.secret,
        json!({"name": "same", "rate_limit_per_minute": 1000}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, inherited) = create_key(&d, &admin.secret, json!({"name": "inherit"})).await;
    assert_eq!(s, StatusCode::CREATED, "{inherited}");
    assert_eq!(inherited["rate_limit_per_minute"], 1000, "{inherited}");
    assert_eq!(inherited["scope"], "admin", "{inherited}");
    assert_eq!(inherited["mode"], "live", "{inherited}");
    // A weaker scope is fine, and holds.
    let (s, reader) = create_key(&d, &admin.secret, json!({"name": "r", "scope": "read"})).await;
    assert_eq!(s, StatusCode::CREATED, "{reader}");
    assert_eq!(reader["scope"], "read");
    let reader_secret = reader["secret"].as_str().unwrap();
    let (s, b) = create_key(&d, reader_secret, json!({"name": "up", "scope": "read"})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a read key manages no keys: {b}");
    // A calls key cannot make any key, not even a weaker one.
    for body in [
        json!({"name": "c", "scope": "admin"}),
        json!({"name": "c", "scope": "read"}),
        json!({"name": "c"}),
    ] {
        let (s, b) = create_key(&d, &calls.secret, body).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
        assert!(
            b["error"]["message"].as_str().unwrap().contains("`admin`"),
            "{b}"
        );
    }
    // Nor revoke one.
    let r = d
        .http
        .delete(d.url(&format!("/v1/api-keys/{}", admin.id)))
        .bearer_auth(&calls.secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // A key that follows the daemon's default (100 a minute) cannot ask
    // for more than it.
    let (s, b) = create_key(
        &d,
        &test_admin.secret,
        json!({"name": "t", "rate_limit_per_minute": 101, "mode": "test"}),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    // A test key makes test keys only.
    let (s, b) = create_key(&d, &test_admin.secret, json!({"name": "t", "mode": "live"})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    let (s, b) = create_key(&d, &test_admin.secret, json!({"name": "t"})).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["mode"], "test");
    assert!(b["secret"].as_str().unwrap().starts_with("al_test_"));
    assert_eq!(b["rate_limit_per_minute"], Value::Null, "{b}");
    // A bad scope is a 422 naming the field.
    let (s, b) = create_key(&d, &admin.secret, json!({"name": "b", "scope": "root"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert!(error_fields(&b, s).iter().any(|f| f == "scope"), "{b}");
    // The CLI shows the scope; its keys are admin unless told.
    let out = d.command().args(["keys", "list"]).output().unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    let line = |id: &str| {
        listing
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} in {listing}"))
            .to_string()
    };
    assert!(line(&admin.id).contains("\tadmin\t"), "{listing}");
    assert!(line(&calls.id).contains("\tcalls\t"), "{listing}");
    assert!(
        line(reader["id"].as_str().unwrap()).contains("\tread\t"),
        "{listing}"
    );
}

/// Keys made before scopes existed keep doing everything: the migration
/// gives them `admin`.
async fn keys_from_before_scopes_are_admin(backend: Backend) {
    let d = daemon(backend).await;
    let store = d.store().await;
    let now = chrono::Utc::now();
    let hash = agentline::secrets::hash_key("al_live_old");
    let sql = "INSERT INTO api_keys (id, name, prefix, secret_hash, mode, created_at, updated_at) \
               VALUES ('key_01old', 'old', 'al_live_old', $1, 'live', $2, $2)";
    match &store.pool {
        agentline::store::Pool::Sqlite(p) => {
            sqlx::query(sql)
                .bind(&hash)
                .bind(now)
                .execute(p)
                .await
                .unwrap();
        }
        agentline::store::Pool::Postgres(p) => {
            sqlx::query(sql)
                .bind(&hash)
                .bind(now)
                .execute(p)
                .await
                .unwrap();
        }
    }
    store.close().await;
    let (s, b) = json_of(d.get("/v1/api-keys?limit=100").send().await.unwrap()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let old = b["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == "key_01old")
        .unwrap();
    assert_eq!(old["scope"], "admin", "{old}");
}

async fn audit_events(d: &TestDaemon, query: &str) -> Vec<Value> {
    let (s, b) = json_of(
        d.get(&format!("/v1/audit-events?limit=100{query}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["items"].as_array().unwrap().clone()
}

/// A create, a change and a delete made with a `calls` key are in the
/// audit log with that key's id, the object, the action and the address;
/// reads and refused requests are not; secrets never are.
async fn changes_are_audited(backend: Backend) {
    let d = daemon(backend).await;
    let calls = cli_key(&d, "auditee", &["--scope", "calls"]);
    let send = |req: reqwest::RequestBuilder| req.bearer_auth(&calls.secret).send();
    let (s, agent) = json_of(
        send(
            d.http
                .post(d.url("/v1/agents"))
                .json(&json!({"name": "a", "kind": "echo"})),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{agent}");
    let agent_id = agent["id"].as_str().unwrap();
    let path = format!("/v1/agents/{agent_id}");
    let r = send(d.http.patch(d.url(&path)).json(&json!({"name": "b"})))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = send(d.http.get(d.url(&path))).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Refused: not a change.
    let r = send(
        d.http
            .post(d.url("/v1/webhook-endpoints"))
            .json(&json!({"url": "https://x.example.com"})),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = send(d.http.delete(d.url(&path))).await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    let by_key = audit_events(&d, &format!("&key_id={}", calls.id)).await;
    let actions: Vec<(&str, &str, &str)> = by_key
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["object_type"].as_str().unwrap(),
                e["object_id"].as_str().unwrap_or(""),
            )
        })
        .collect();
    // Newest first.
    assert_eq!(
        actions,
        vec![
            ("delete", "agents", agent_id),
            ("update", "agents", agent_id),
            ("create", "agents", agent_id),
        ],
        "{by_key:?}"
    );
    for e in &by_key {
        assert_eq!(e["key_id"], calls.id.as_str());
        assert_eq!(e["client_addr"], "127.0.0.1", "{e}");
        assert!(e["request_id"].as_str().unwrap().starts_with("req_"), "{e}");
        assert!(e["id"].as_str().unwrap().starts_with("aud_"), "{e}");
        assert!(e["created_at"].is_string(), "{e}");
    }
    assert_eq!(by_key[1]["route"], "/v1/agents/{id}");
    assert_eq!(by_key[1]["method"], "PATCH");
    // By object.
    let by_object = audit_events(&d, &format!("&object_id={agent_id}")).await;
    assert_eq!(by_object.len(), 3, "{by_object:?}");
    let none = audit_events(&d, "&key_id=key_01nobody").await;
    assert!(none.is_empty());

    // A key made through the API is audited by id; its secret is nowhere.
    let (s, made) = create_key(&d, &d.key, json!({"name": "audited", "scope": "read"})).await;
    assert_eq!(s, StatusCode::CREATED);
    let secret = made["secret"].as_str().unwrap();
    let text = d
        .get("/v1/audit-events?object_type=api-keys")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains(made["id"].as_str().unwrap()), "{text}");
    assert!(!text.contains(secret) && !text.contains(&d.key), "{text}");
    let (s, page) = json_of(d.get("/v1/audit-events?limit=1").send().await.unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert!(page["total"].as_i64().unwrap() >= 4, "{page}");
    // Only admin keys read the log.
    let r = d
        .http
        .get(d.url("/v1/audit-events"))
        .bearer_auth(secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // A bad filter is a 400 naming it.
    let (s, b) = json_of(
        d.get(&format!("/v1/audit-events?key_id={}", "k".repeat(101)))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(error_fields(&b, s).iter().any(|f| f == "key_id"), "{b}");
}

/// Key changes made with the CLI (`keys create`, `keys revoke`) are in
/// the audit log like the API's, with `actor` `cli`; the API's say `api`.
async fn cli_key_changes_are_audited(backend: Backend) {
    let d = TestDaemon::builder().backend(backend).start().await;
    let key = d.create_key_cli("ops", None);
    let (s, keys) = json_of(d.get("/v1/api-keys").send().await.unwrap()).await;
    assert_eq!(s, StatusCode::OK, "{keys}");
    let id = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "ops")
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .unwrap();
    assert!(key.starts_with("al_live_"));
    let out = d
        .command()
        .args(["keys", "revoke", &id])
        .output()
        .expect("run keys revoke");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And one change through the API, for the contrast.
    let r = d
        .post("/v1/agents")
        .json(&json!({"name": "a", "kind": "echo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let (s, page) = json_of(
        d.get(&format!("/v1/audit-events?object_id={id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let mut rows: Vec<(String, String, String)> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert!(e["key_id"].is_null(), "{e}");
            assert_eq!(e["object_type"], "api-keys", "{e}");
            (
                e["action"].as_str().unwrap().to_owned(),
                e["actor"].as_str().unwrap().to_owned(),
                e["route"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        vec![
            ("create".into(), "cli".into(), "keys create".into()),
            ("delete".into(), "cli".into(), "keys revoke".into()),
        ],
        "{page}"
    );
    let (_, agents) = json_of(
        d.get("/v1/audit-events?object_type=agents")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(agents["items"][0]["actor"], "api", "{agents}");
    assert!(agents["items"][0]["key_id"].is_string(), "{agents}");
}

both_backends!(
    scopes_hold_on_every_route,
    no_key_mints_a_stronger_key,
    keys_from_before_scopes_are_admin,
    changes_are_audited,
    cli_key_changes_are_audited,
);
