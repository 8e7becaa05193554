//! Black-box tests of webhook delivery and the event stream against the real
//! daemon and a live receiver that verifies with the `standardwebhooks` PyPI
//! package, on SQLite and on PostgreSQL.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/webhook_receiver.rs"]
mod receiver;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{Backend, TestDaemon};
use receiver::{Receiver, fast_webhooks_config};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn daemon(backend: Backend, webhooks: &str) -> TestDaemon {
    TestDaemon::builder()
        .backend(backend)
        .config(webhooks)
        .start()
        .await
}

async fn json_of(r: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let r = r.send().await.expect("request");
    let status = r.status();
    (status, r.json::<Value>().await.unwrap_or(Value::Null))
}

/// Creates an endpoint for `url`; returns its id and secret.
async fn endpoint(d: &TestDaemon, url: &str, events: Option<&[&str]>) -> (String, String) {
    let mut body = json!({"url": url});
    if let Some(e) = events {
        body["events"] = json!(e);
    }
    let (s, b) = json_of(d.post("/v1/webhook-endpoints").json(&body)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    (
        b["id"].as_str().unwrap().to_string(),
        b["secret"].as_str().unwrap().to_string(),
    )
}

/// Waits until a test event sent now to an endpoint of its own has been
/// delivered after `retries` failed attempts (1 s apart under the fast
/// schedules): the worker claims deliveries in the order they fall due, so
/// by then anything due before that last attempt has gone out.
async fn worker_caught_up(d: &TestDaemon, retries: u64) {
    let rx = Receiver::start(json!({"fail_first": retries, "fail_status": 503}));
    let (ep, _) = endpoint(d, &rx.url(), None).await;
    test_event(d, &ep).await;
    rx.wait_until(Duration::from_secs(10), |r| r.len() as u64 > retries)
        .await;
}

/// Sends a test event to the endpoint; returns the event id.
async fn test_event(d: &TestDaemon, endpoint: &str) -> String {
    let (s, b) = json_of(d.post(&format!("/v1/webhook-endpoints/{endpoint}/test"))).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    assert_eq!(b["type"], "webhook.test");
    b["id"].as_str().unwrap().to_string()
}

async fn deliveries(d: &TestDaemon, path: &str) -> Vec<Value> {
    let (s, b) = json_of(d.get(path)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["items"].as_array().unwrap().clone()
}

/// Polls the delivery listing at `path` until `done` holds for it.
async fn wait_deliveries(
    d: &TestDaemon,
    path: &str,
    timeout: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let items = deliveries(d, path).await;
        if done(&items) {
            return items;
        }
        assert!(
            Instant::now() < deadline,
            "deliveries never settled: {items:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn a_test_event_arrives_signed(backend: Backend) {
    let d = daemon(backend, &fast_webhooks_config(&[1], 0)).await;
    let rx = Receiver::start(json!({}));
    let (ep, secret) = endpoint(&d, &rx.url(), None).await;
    rx.set(json!({"secrets": [secret]}));
    let id = test_event(&d, &ep).await;
    let recs = rx
        .wait_until(Duration::from_secs(10), |r| !r.is_empty())
        .await;
    assert_eq!(recs[0].id, id);
    assert_eq!(recs[0].verified, vec![true], "{:?}", recs[0]);
    assert_eq!(recs[0].body["id"], id.as_str());
    assert_eq!(recs[0].body["data"]["endpoint_id"], ep.as_str());
    assert!(recs[0].body["api_version"].is_string());
    let items = wait_deliveries(
        &d,
        &format!("/v1/events/{id}/deliveries"),
        Duration::from_secs(5),
        |i| i.first().is_some_and(|x| x["status"] == "succeeded"),
    )
    .await;
    assert_eq!(items[0]["endpoint_id"], ep.as_str());
    assert_eq!(items[0]["attempts"][0]["status_code"], 200);
    assert_eq!(items[0]["attempts"][0]["outcome"], "success");
    let (s, event) = json_of(d.get(&format!("/v1/events/{id}"))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(event, recs[0].body);
    let metrics = d.metrics().await;
    for name in [
        "agentline_webhook_attempts_total",
        "agentline_webhook_deliveries_total",
        "agentline_webhook_attempt_duration_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
}

async fn failed_attempts_follow_the_schedule(backend: Backend) {
    let d = daemon(backend, &fast_webhooks_config(&[1, 2], 0)).await;
    let rx = Receiver::start(json!({}));
    let (ep, secret) = endpoint(&d, &rx.url(), None).await;
    rx.set(json!({"secrets": [secret], "fail_first": 2, "fail_status": 500}));
    let id = test_event(&d, &ep).await;
    let recs = rx
        .wait_until(Duration::from_secs(15), |r| r.len() >= 3)
        .await;
    assert!(recs.iter().all(|r| r.id == id && r.verified == vec![true]));
    let gaps: Vec<f64> = recs
        .windows(2)
        .map(|w| w[1].received_at - w[0].received_at)
        .collect();
    assert!((0.9..2.0).contains(&gaps[0]), "first retry after {gaps:?}");
    assert!((1.9..3.2).contains(&gaps[1]), "second retry after {gaps:?}");
    let items = wait_deliveries(
        &d,
        &format!("/v1/webhook-endpoints/{ep}/deliveries"),
        Duration::from_secs(5),
        |i| i.first().is_some_and(|x| x["status"] == "succeeded"),
    )
    .await;
    let outcomes: Vec<&str> = items[0]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["retry", "retry", "success"]);
    assert_eq!(items[0]["attempts"][0]["status_code"], 500);
    assert_eq!(items[0]["attempts"][0]["reason"], "http 500");
}

async fn retry_after_is_honoured(backend: Backend) {
    let d = daemon(backend, &fast_webhooks_config(&[1], 0)).await;
    let rx = Receiver::start(json!({}));
    let (ep, secret) = endpoint(&d, &rx.url(), None).await;
    rx.set(json!({"secrets": [secret], "fail_first": 1, "fail_status": 429, "retry_after": 3}));
    test_event(&d, &ep).await;
    let recs = rx
        .wait_until(Duration::from_secs(15), |r| r.len() >= 2)
        .await;
    let gap = recs[1].received_at - recs[0].received_at;
    assert!(
        (2.9..4.5).contains(&gap),
        "retried after {gap} s instead of Retry-After 3"
    );
    assert_eq!(recs[0].status, 429);
    assert_eq!(recs[1].status, 200);
}

async fn gone_disables_the_endpoint(backend: Backend) {
    let d = daemon(backend, &fast_webhooks_config(&[1], 60)).await;
    let rx = Receiver::start(json!({}));
    let (ep, secret) = endpoint(&d, &rx.url(), None).await;
    rx.set(json!({"secrets": [secret], "status": 410}));
    let id = test_event(&d, &ep).await;
    let items = wait_deliveries(
        &d,
        &format!("/v1/events/{id}/deliveries"),
        Duration::from_secs(10),
        |i| i.first().is_some_and(|x| x["status"] == "failed"),
    )
    .await;
    assert_eq!(items[0]["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(items[0]["last_status_code"], 410);
    let (_, e) = json_of(d.get(&format!("/v1/webhook-endpoints/{ep}"))).await;
    assert_eq!(e["enabled"], false, "{e}");
    // Nothing more goes out until the endpoint is enabled again.
    rx.set(json!({"secrets": [secret]}));
    let later = test_event(&d, &ep).await;
    worker_caught_up(&d, 0).await;
    assert_eq!(rx.records().len(), 1);
    let (s, e) = json_of(d.post(&format!("/v1/webhook-endpoints/{ep}/enable"))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(e["enabled"], true);
    rx.wait_until(Duration::from_secs(10), |r| r.iter().any(|x| x.id == later))
        .await;
}

async fn dead_letters_stay_visible_and_replay(backend: Backend) {
    let d = daemon(backend, &fast_webhooks_config(&[1, 1], 0)).await;
    let rx = Receiver::start(json!({}));
    let (ep, secret) = endpoint(&d, &rx.url(), None).await;
    rx.set(json!({"secrets": [secret], "fail_first": 1000, "fail_status": 503}));
    let since = chrono::Utc::now() - chrono::Duration::seconds(5);
    let id = test_event(&d, &ep).await;
    let failed_path = format!("/v1/webhook-endpoints/{ep}/deliveries?status=failed");
    let items = wait_deliveries(&d, &failed_path, Duration::from_secs(15), |i| !i.is_empty()).await;
    assert_eq!(items[0]["event_id"], id.as_str());
    assert_eq!(items[0]["attempts"].as_array().unwrap().len(), 3);
    assert_eq!(items[0]["attempts"][2]["outcome"], "retry");
    assert!(items[0]["next_attempt_at"].is_null());
    // A fourth attempt would be due 1 s after the third.
    worker_caught_up(&d, 1).await;
    assert_eq!(rx.records().len(), 3, "no attempt after the dead letter");

    // Replay every failed delivery since a time: same webhook-id, delivered.
    rx.set(json!({"secrets": [secret]}));
    let (s, b) = json_of(
        d.post(&format!("/v1/webhook-endpoints/{ep}/replay"))
            .json(&json!({"since": since.to_rfc3339()})),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    assert_eq!(b["deliveries"], 1);
    let recs = rx
        .wait_until(Duration::from_secs(10), |r| r.len() >= 4)
        .await;
    assert_eq!(recs[3].id, id);
    assert_eq!(recs[3].status, 200);
    assert_eq!(recs[3].verified, vec![true]);

    // Replay one event: delivered again, still the same webhook-id.
    let (s, b) = json_of(d.post(&format!("/v1/events/{id}/replay"))).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    let recs = rx
        .wait_until(Duration::from_secs(10), |r| r.len() >= 5)
        .await;
    assert_eq!(recs[4].id, id);
    let items = wait_deliveries(
        &d,
        &format!("/v1/events/{id}/deliveries"),
        Duration::from_secs(5),
        |i| i.first().is_some_and(|x| x["status"] == "succeeded"),
    )
    .await;
    assert_eq!(items[0]["attempts"].as_array().unwrap().len(), 5);
}

async fn rotation_signs_with_both_secrets(backend: Backend) {
    let d = daemon(backend, &fast_webhooks_config(&[1], 0)).await;
    let rx = Receiver::start(json!({}));
    let (ep, old) = endpoint(&d, &rx.url(), None).await;
    let (s, b) = json_of(
        d.post(&format!("/v1/webhook-endpoints/{ep}/rotate-secret"))
            .json(&json!({})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let new = b["secret"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    rx.set(json!({"secrets": [old, new]}));
    test_event(&d, &ep).await;
    let recs = rx
        .wait_until(Duration::from_secs(10), |r| !r.is_empty())
        .await;
    assert_eq!(recs[0].verified, vec![true, true], "{:?}", recs[0]);
    assert_eq!(recs[0].signature.split(' ').count(), 2);

    // A rotation with no overlap: only the newest secret signs.
    let (_, b) = json_of(
        d.post(&format!("/v1/webhook-endpoints/{ep}/rotate-secret"))
            .json(&json!({"overlap_seconds": 0})),
    )
    .await;
    let newest = b["secret"].as_str().unwrap().to_string();
    rx.set(json!({"secrets": [new, newest]}));
    test_event(&d, &ep).await;
    let recs = rx
        .wait_until(Duration::from_secs(10), |r| r.len() >= 2)
        .await;
    assert_eq!(recs[1].verified, vec![false, true], "{:?}", recs[1]);
    assert_eq!(recs[1].signature.split(' ').count(), 1);
}

async fn private_addresses_are_refused(backend: Backend) {
    let d = TestDaemon::builder().backend(backend).start().await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://169.254.169.254/latest",
        "http://[::1]/hook",
        "http://10.0.0.1/hook",
    ] {
        let (s, b) = json_of(d.post("/v1/webhook-endpoints").json(&json!({"url": url}))).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {b}");
        assert_eq!(b["error"]["details"][0]["field"], "url");
    }
}

/// An endpoint saved while its address was allowed is refused at delivery
/// once it is not (as after a DNS change): nothing reaches it.
async fn delivery_checks_the_address_again(backend: Backend) {
    let mut d = daemon(backend, &fast_webhooks_config(&[1], 60)).await;
    let rx = Receiver::start(json!({}));
    let (ep, secret) = endpoint(&d, &rx.url(), None).await;
    rx.set(json!({"secrets": [secret]}));
    d.signal("TERM");
    d.wait_exit(Duration::from_secs(20)).await;
    let config = std::fs::read_to_string(&d.config_path).unwrap();
    let config = config.replace("allowed_networks = [\"127.0.0.0/8\"]\n", "");
    std::fs::write(&d.config_path, config).unwrap();
    d.restart().await;
    let id = test_event(&d, &ep).await;
    let items = wait_deliveries(
        &d,
        &format!("/v1/events/{id}/deliveries"),
        Duration::from_secs(10),
        |i| {
            i.first()
                .is_some_and(|x| !x["attempts"].as_array().unwrap().is_empty())
        },
    )
    .await;
    let attempt = &items[0]["attempts"][0];
    assert!(attempt["status_code"].is_null(), "{attempt}");
    assert!(
        attempt["reason"].as_str().unwrap().starts_with("blocked"),
        "{attempt}"
    );
    assert!(rx.records().is_empty(), "a refused address was reached");
}

async fn call_events_carry_the_call_and_its_sequence(backend: Backend) {
    use agentline::model::{CallStatus, Direction};
    use agentline::store::calls::{EndFields, NewCall};
    use agentline::webhook::Outbox;

    let d = daemon(backend, &fast_webhooks_config(&[1], 0)).await;
    let rx = Receiver::start(json!({}));
    let (_, secret) = endpoint(
        &d,
        &rx.url(),
        Some(&["call.ringing", "call.answered", "call.ended", "call.dtmf"]),
    )
    .await;
    rx.set(json!({"secrets": [secret]}));
    // The call layer's seam, used from outside the daemon on the same store:
    // the daemon's worker finds the rows by polling.
    let outbox = Outbox::new(d.store().await);
    let call_id = agentline::ids::new(agentline::ids::CALL);
    outbox
        .call_created(NewCall {
            id: &call_id,
            direction: Direction::Inbound,
            from_number: "+14155550111",
            to_number: "+14155550100",
            trunk: Some("carrier-a"),
            agent_id: None,
            status: CallStatus::Ringing,
            sip_call_id: Some("abc@127.0.0.1"),
            metadata: "{}",
            campaign: None,
            context: None,
            agent_source: None,
            agent_source_error: None,
            livemode: true,
            api_key_id: None,
        })
        .await
        .unwrap();
    outbox.call_answered(&call_id, None).await.unwrap();
    outbox.call_dtmf(&call_id, '5').await.unwrap();
    let ended = || EndFields {
        status: CallStatus::Completed,
        sip_code: None,
        sip_reason: None,
        end_reason: "caller_hangup",
        duration_ms: Some(4200),
        answered_by: None,
    };
    let call = outbox.call_ended(&call_id, ended()).await.unwrap();
    assert_eq!(call.event_seq, 4);
    // A transition that does not apply writes no event.
    assert!(outbox.call_ended(&call_id, ended()).await.is_err());
    assert!(outbox.call_answered("call_missing", None).await.is_err());
    let recs = rx
        .wait_until(Duration::from_secs(10), |r| r.len() >= 4)
        .await;
    let mut by_seq: Vec<&Value> = recs.iter().map(|r| &r.body).collect();
    by_seq.sort_by_key(|b| b["data"]["sequence"].as_i64());
    let types: Vec<&str> = by_seq.iter().map(|b| b["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["call.ringing", "call.answered", "call.dtmf", "call.ended"]
    );
    let seqs: Vec<i64> = by_seq
        .iter()
        .map(|b| b["data"]["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    assert_eq!(by_seq[2]["data"]["digit"], "5");
    let end = &by_seq[3]["data"];
    assert_eq!(end["id"], call_id.as_str());
    assert_eq!(end["status"], "completed");
    assert_eq!(end["end_reason"], "caller_hangup");
    assert_eq!(end["sip_code"], 200);
    assert_eq!(end["duration_ms"], 4200);
    assert_eq!(end["dtmf"], "5");
    // The call object is the one the API answers.
    let (_, api_call) = json_of(d.get(&format!("/v1/calls/{call_id}"))).await;
    let mut data = end.clone();
    data.as_object_mut().unwrap().remove("sequence");
    assert_eq!(data, api_call);
    assert!(recs.iter().all(|r| r.verified == vec![true]));
}

/// kill -9 with 1,000 undelivered events and a receiver that fails every
/// first attempt: after the restart each event arrives, with its id.
async fn a_crash_loses_no_event(backend: Backend) {
    const N: usize = 1000;
    let d = daemon(backend, &fast_webhooks_config(&[1], 120)).await;
    let mut d = d;
    let rx = Receiver::start(json!({}));
    let (ep, secret) = endpoint(&d, &rx.url(), None).await;
    rx.set(json!({"secrets": [secret], "fail_first": 1, "fail_status": 500}));
    // Queue everything while the endpoint is paused, so all N are undelivered.
    let (s, _) = json_of(d.post(&format!("/v1/webhook-endpoints/{ep}/disable"))).await;
    assert_eq!(s, StatusCode::OK);
    let mut ids = HashSet::new();
    for _ in 0..N {
        ids.insert(test_event(&d, &ep).await);
    }
    assert_eq!(ids.len(), N);
    let (s, _) = json_of(d.post(&format!("/v1/webhook-endpoints/{ep}/enable"))).await;
    assert_eq!(s, StatusCode::OK);
    rx.wait_until(Duration::from_secs(30), |r| r.len() >= 100)
        .await;
    d.kill9().await;
    let before = rx.records();
    let delivered_before: HashSet<&str> = before
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.id.as_str())
        .collect();
    assert!(
        delivered_before.len() < N,
        "everything was delivered before the kill"
    );
    d.restart().await;
    let recs = rx
        .wait_until(Duration::from_secs(120), |r| {
            r.iter()
                .filter(|x| x.status == 200)
                .map(|x| x.id.as_str())
                .collect::<HashSet<_>>()
                .len()
                >= N
        })
        .await;
    let delivered: HashSet<String> = recs
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.id.clone())
        .collect();
    assert_eq!(
        delivered, ids,
        "every event delivered with its original webhook-id"
    );
    assert!(recs.iter().all(|r| r.verified == vec![true]));
    let mut per_id: HashMap<&str, u64> = HashMap::new();
    for r in &recs {
        *per_id.entry(r.id.as_str()).or_default() += 1;
    }
    assert!(
        per_id.values().all(|n| *n >= 2),
        "each first attempt failed"
    );
}

/// Reads SSE messages (id, event, data) from a streaming response.
struct SseReader {
    resp: reqwest::Response,
    buf: String,
}

impl SseReader {
    async fn open(d: &TestDaemon, last_event_id: Option<&str>) -> Self {
        let mut req = d.get("/v1/events");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        Self {
            resp,
            buf: String::new(),
        }
    }

    /// The next message that carries an id (heartbeats are skipped).
    async fn next(&mut self) -> (String, String, Value) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (String::new(), String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if !id.is_empty() {
                    return (id, event, serde_json::from_str(&data).unwrap());
                }
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.resp.chunk())
                .await
                .expect("an SSE message within 10 s")
                .unwrap()
                .expect("stream open");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

async fn sse_resumes_after_last_event_id(backend: Backend) {
    let d = daemon(backend, &fast_webhooks_config(&[1], 0)).await;
    let rx = Receiver::start(json!({}));
    let (ep, _) = endpoint(&d, &rx.url(), None).await;
    let mut stream = SseReader::open(&d, None).await;
    let mut sent = Vec::new();
    for _ in 0..3 {
        sent.push(test_event(&d, &ep).await);
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        let (id, event, data) = stream.next().await;
        assert_eq!(event, "webhook.test");
        assert_eq!(data["id"], id.as_str());
        got.push(id);
    }
    assert_eq!(got, sent);
    drop(stream);
    // Missed while disconnected.
    for _ in 0..2 {
        sent.push(test_event(&d, &ep).await);
    }
    let mut stream = SseReader::open(&d, Some(&sent[1])).await;
    let mut resumed = Vec::new();
    for _ in 0..3 {
        resumed.push(stream.next().await.0);
    }
    assert_eq!(resumed, sent[2..5]);
    // Then live ones.
    let live = test_event(&d, &ep).await;
    assert_eq!(stream.next().await.0, live);
    let (s, _) = json_of(d.get("/v1/events").header("last-event-id", "evt_nope")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

async fn the_openapi_document_describes_events(backend: Backend) {
    let d = TestDaemon::builder().backend(backend).start().await;
    let doc: Value = d
        .http
        .get(d.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/v1/events",
        "/v1/events/{id}/replay",
        "/v1/events/{id}/deliveries",
        "/v1/webhook-endpoints/{id}/deliveries",
        "/v1/webhook-endpoints/{id}/replay",
        "/v1/webhook-endpoints/{id}/rotate-secret",
        "/v1/webhook-endpoints/{id}/test",
        "/v1/webhook-endpoints/{id}/enable",
        "/v1/webhook-endpoints/{id}/disable",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} undocumented");
    }
    for schema in [
        "WebhookEvent_CallEventData",
        "WebhookEvent_TrunkEventData",
        "WebhookEvent_TestEventData",
        "Delivery",
        "Attempt",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "{schema} undocumented"
        );
    }
}

both_backends!(
    the_openapi_document_describes_events,
    a_test_event_arrives_signed,
    failed_attempts_follow_the_schedule,
    retry_after_is_honoured,
    gone_disables_the_endpoint,
    dead_letters_stay_visible_and_replay,
    rotation_signs_with_both_secrets,
    private_addresses_are_refused,
    delivery_checks_the_address_again,
    call_events_carry_the_call_and_its_sequence,
    a_crash_loses_no_event,
    sse_resumes_after_last_event_id,
);
