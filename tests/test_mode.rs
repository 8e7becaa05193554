//! Black-box tests of test mode, on both stores: an `al_test_` key's call
//! never reaches the trunk (SIPp, the trunk's UAS, logs no INVITE from it,
//! and logs the live control call's), runs the real agent on the simulated
//! carrier (the transcript has the agent's greeting), ends as the simulated
//! callee decides, and its webhooks carry `livemode: false` and go to the
//! test endpoint only; live and test keys never see each other's objects;
//! the magic numbers give busy, no-answer and failed; a test campaign
//! completes on the simulated carrier.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

#[path = "common/webhook_receiver.rs"]
mod receiver;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Backend, TestDaemon, free_udp_port, json_of};
use reqwest::StatusCode;
use serde_json::{Value, json};

const TEST_NUMBER: &str = "+14155550111";
const LIVE_NUMBER: &str = "+14155550122";
const GREETING: &str = "Hello from the test agent.";

/// SIPp as the trunk's UAS: answers one INVITE with 486, logging every
/// message it receives to `log`.
fn trunk_uas(log: &Path) -> (tokio::process::Child, u16) {
    common::require_sipp();
    let port = free_udp_port();
    let child = tokio::process::Command::new("sipp")
        .args(["-sf", &common::scenario("uas-invite-expect-486-busy.xml")])
        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["-m", "1", "-nostdin", "-timeout", "120s"])
        .arg("-trace_msg")
        .arg("-message_file")
        .arg(log)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sipp");
    (child, port)
}

/// INVITEs SIPp logged as received.
fn invites_in(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("INVITE sip:"))
        .count()
}

async fn daemon(backend: Backend, trunk_port: u16) -> TestDaemon {
    TestDaemon::builder()
        .backend(backend)
        .allow_loopback()
        .profile(
            "carrier",
            &format!("name = \"carrier\"\n[outbound]\nproxy = \"127.0.0.1:{trunk_port}\"\n"),
        )
        .config(
            "[calls]\ntest_hangup_after_seconds = 4\ntest_max_calls = 5\n\
             [campaigns]\npoll_ms = 100\nmin_retry_delay_seconds = 1\n\
             [webhooks]\nretry_schedule_seconds = [1]\nretry_for_seconds = 30\njitter = 0.0\n\
             poll_interval_ms = 100\ntimeout_seconds = 2\n",
        )
        .start()
        .await
}

/// An `al_test_` key made with the CLI.
fn test_key(d: &TestDaemon) -> String {
    let out = d
        .command()
        .args(["keys", "create", "--name", "tester", "--test"])
        .args(["--rate-limit", "100000"])
        .output()
        .expect("run keys create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(key.starts_with("al_test_"), "{key}");
    key
}

/// A request as `key`.
fn req(d: &TestDaemon, method: reqwest::Method, path: &str, key: &str) -> reqwest::RequestBuilder {
    d.http.request(method, d.url(path)).bearer_auth(key)
}

async fn ok(r: reqwest::RequestBuilder) -> Value {
    let (s, b) = json_of(r.send().await.unwrap()).await;
    assert!(s.is_success(), "{s}: {b}");
    b
}

/// A scripted voice agent saying [`GREETING`] at once, and `number` bound
/// to it, made with `key`; the agent's id.
async fn provision(d: &TestDaemon, key: &str, number: &str) -> String {
    let agent = ok(
        req(d, reqwest::Method::POST, "/v1/agents", key).json(&json!({
            "name": "tester",
            "kind": "voice",
            "max_duration_seconds": 30,
            "opening": {"outbound_wait_ms": 0},
            "tts": {"provider": "embedded", "voice": "slt"},
            "script": {"start": "main", "greeting": GREETING,
                       "states": {"main": {"intents": [
                           {"name": "yes", "keywords": ["yes"], "reply": "Good."}]}}}
        })),
    )
    .await;
    let id = agent["id"].as_str().unwrap().to_owned();
    let n = ok(
        req(d, reqwest::Method::POST, "/v1/phone-numbers", key).json(&json!({
            "number": number, "agent_id": id, "trunk_id": "trk_carrier"
        })),
    )
    .await;
    assert_eq!(n["livemode"], agent["livemode"], "{n}");
    id
}

/// The call `id` once it has ended (as `key` sees it).
async fn ended(d: &TestDaemon, key: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let call = ok(req(
            d,
            reqwest::Method::GET,
            &format!("/v1/calls/{id}"),
            key,
        ))
        .await;
        if !call["ended_at"].is_null() {
            return call;
        }
        assert!(Instant::now() < deadline, "not ended: {call}\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ids_of(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

/// A test key's call: no INVITE at the trunk, the real agent on the
/// simulated carrier, the callee's hangup, `livemode: false` webhooks to
/// the test endpoint only, and two worlds that never see each other. Then
/// a live control call through the same trunk does reach SIPp.
async fn a_test_call_never_reaches_the_trunk(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let sipp_log = dir.path().join("sipp-messages.log");
    let (mut sipp, sipp_port) = trunk_uas(&sipp_log);
    let d = daemon(backend, sipp_port).await;
    let test = test_key(&d);
    let live = d.key.clone();
    use reqwest::Method as M;

    let rx = receiver::Receiver::start(json!({}));
    let events = json!([
        "call.initiated",
        "call.ringing",
        "call.answered",
        "call.ended"
    ]);
    let test_ep = ok(req(&d, M::POST, "/v1/webhook-endpoints", &test)
        .json(&json!({"url": rx.url(), "events": events})))
    .await;
    let live_ep = ok(req(&d, M::POST, "/v1/webhook-endpoints", &live)
        .json(&json!({"url": rx.url(), "events": events})))
    .await;
    assert_eq!(test_ep["livemode"], false, "{test_ep}");
    assert_eq!(live_ep["livemode"], true, "{live_ep}");
    rx.set(json!({"secrets": [test_ep["secret"], live_ep["secret"]]}));

    let test_agent = provision(&d, &test, TEST_NUMBER).await;
    let live_agent = provision(&d, &live, LIVE_NUMBER).await;

    // A test key cannot use the live number, nor the live agent.
    let (s, b) = json_of(
        req(&d, M::POST, "/v1/calls", &test)
            .json(&json!({"from": LIVE_NUMBER, "to": "+15005550006"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    let (s, b) = json_of(
        req(&d, M::POST, "/v1/calls", &test)
            .json(&json!({"from": TEST_NUMBER, "to": "+15005550006", "agent_id": live_agent}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");

    let call = ok(req(&d, M::POST, "/v1/calls", &test)
        .json(&json!({"from": TEST_NUMBER, "to": "+15005550006"})))
    .await;
    assert_eq!(call["livemode"], false, "{call}");
    let id = call["id"].as_str().unwrap().to_owned();
    let call = ended(&d, &test, &id).await;
    assert_eq!(call["status"], "completed", "{call}\n{}", d.log());
    assert_eq!(call["end_reason"], "callee_hangup", "{call}");
    assert!(call["trunk_id"].is_null(), "{call}");
    assert!(call["duration_ms"].as_i64().unwrap() >= 3000, "{call}");
    let t = ok(req(
        &d,
        M::GET,
        &format!("/v1/calls/{id}/transcript"),
        &test,
    ))
    .await;
    assert!(
        t["turns"]
            .as_array()
            .unwrap()
            .iter()
            .any(|turn| turn["speaker"] == "agent" && turn["text"] == GREETING),
        "{t}"
    );
    assert_eq!(invites_in(&sipp_log), 0, "an INVITE reached the trunk");

    // Its webhooks: livemode false, signed for the test endpoint only.
    let records = rx
        .wait_until(Duration::from_secs(15), |r| {
            r.iter().any(|r| r.body["type"] == "call.ended")
        })
        .await;
    let ours: Vec<_> = records
        .iter()
        .filter(|r| r.body["data"]["id"] == id.as_str())
        .collect();
    let types: Vec<&str> = ours
        .iter()
        .map(|r| r.body["type"].as_str().unwrap())
        .collect();
    for t in [
        "call.initiated",
        "call.ringing",
        "call.answered",
        "call.ended",
    ] {
        assert!(types.contains(&t), "{types:?}");
    }
    for r in &ours {
        assert_eq!(r.body["livemode"], false, "{:?}", r.body);
        assert_eq!(r.body["data"]["livemode"], false, "{:?}", r.body);
        assert_eq!(r.verified, vec![true, false], "{:?}", r);
    }

    // The event itself: the test key reads it, the live key does not.
    let event_id = ours[0].id.clone();
    ok(req(&d, M::GET, &format!("/v1/events/{event_id}"), &test)).await;
    let (s, b) = json_of(
        req(&d, M::GET, &format!("/v1/events/{event_id}"), &live)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");

    // Two worlds: lists and gets.
    for (path, theirs, ours_) in [
        ("/v1/calls", &id, None),
        ("/v1/agents", &test_agent, Some(&live_agent)),
    ] {
        let live_page = ok(req(&d, M::GET, path, &live)).await;
        assert!(!ids_of(&live_page).contains(theirs), "{path}: {live_page}");
        let test_page = ok(req(&d, M::GET, path, &test)).await;
        assert!(ids_of(&test_page).contains(theirs), "{path}: {test_page}");
        if let Some(live_id) = ours_ {
            assert!(!ids_of(&test_page).contains(live_id), "{path}: {test_page}");
        }
    }
    for (path, key) in [
        (format!("/v1/calls/{id}"), &live),
        (format!("/v1/calls/{id}/transcript"), &live),
        (format!("/v1/agents/{test_agent}"), &live),
        (format!("/v1/agents/{live_agent}"), &test),
        (
            format!("/v1/webhook-endpoints/{}", live_ep["id"].as_str().unwrap()),
            &test,
        ),
    ] {
        let (s, b) = json_of(req(&d, M::GET, &path, key).send().await.unwrap()).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {b}");
    }
    let r = req(&d, M::DELETE, &format!("/v1/agents/{live_agent}"), &test)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let numbers = ok(req(&d, M::GET, "/v1/phone-numbers", &test)).await;
    assert_eq!(numbers["total"], 1, "{numbers}");
    assert_eq!(numbers["items"][0]["number"], TEST_NUMBER, "{numbers}");
    let endpoints = ok(req(&d, M::GET, "/v1/webhook-endpoints", &live)).await;
    assert_eq!(ids_of(&endpoints), vec![live_ep["id"].as_str().unwrap()]);

    // Control: a live call through the same trunk reaches SIPp (486), and
    // its webhooks are live and go to the live endpoint only.
    let live_call = ok(req(&d, M::POST, "/v1/calls", &live)
        .json(&json!({"from": LIVE_NUMBER, "to": "+14155550100"})))
    .await;
    let live_id = live_call["id"].as_str().unwrap().to_owned();
    let live_call = ended(&d, &live, &live_id).await;
    assert_eq!(live_call["end_reason"], "busy", "{live_call}");
    assert_eq!(live_call["livemode"], true, "{live_call}");
    assert_eq!(
        invites_in(&sipp_log),
        1,
        "the live INVITE reached the trunk"
    );
    let records = rx
        .wait_until(Duration::from_secs(15), |r| {
            r.iter()
                .any(|r| r.body["type"] == "call.ended" && r.body["data"]["id"] == live_id.as_str())
        })
        .await;
    for r in records
        .iter()
        .filter(|r| r.body["data"]["id"] == live_id.as_str())
    {
        assert_eq!(r.body["livemode"], true, "{:?}", r.body);
        assert_eq!(r.verified, vec![false, true], "{:?}", r);
    }
    let _ = sipp.kill().await;
}

/// The magic numbers: busy, no-answer and failed, each as a real carrier
/// would say it.
async fn magic_numbers_give_their_outcomes(backend: Backend) {
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let d = daemon(backend, sink.local_addr().unwrap().port()).await;
    let test = test_key(&d);
    provision(&d, &test, TEST_NUMBER).await;
    let mut placed = Vec::new();
    for to in ["+15005550001", "+15005550002", "+15005550003"] {
        let call = ok(req(&d, reqwest::Method::POST, "/v1/calls", &test)
            .json(&json!({"from": TEST_NUMBER, "to": to})))
        .await;
        placed.push(call["id"].as_str().unwrap().to_owned());
    }
    let mut got = Vec::new();
    for id in &placed {
        let call = ended(&d, &test, id).await;
        assert!(call["answered_at"].is_null(), "{call}");
        assert!(!call["ringing_at"].is_null(), "rang first: {call}");
        got.push((
            call["status"].as_str().unwrap().to_owned(),
            call["end_reason"].as_str().unwrap().to_owned(),
            call["sip_code"].as_i64().unwrap(),
        ));
    }
    assert_eq!(
        got,
        vec![
            ("busy".into(), "busy".into(), 486),
            ("no-answer".into(), "no_answer".into(), 480),
            ("failed".into(), "declined".into(), 503),
        ],
        "{}",
        d.log()
    );
    sink.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 2048];
    assert!(sink.recv(&mut buf).is_err(), "a packet reached the trunk");
}

/// A campaign made with a test key dials on the simulated carrier and
/// completes; its calls are test calls and the trunk hears nothing.
async fn a_test_campaign_completes_on_the_simulated_carrier(backend: Backend) {
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let d = daemon(backend, sink.local_addr().unwrap().port()).await;
    let test = test_key(&d);
    use reqwest::Method as M;
    let agent = provision(&d, &test, TEST_NUMBER).await;
    let campaign = ok(req(&d, M::POST, "/v1/campaigns", &test).json(&json!({
        "name": "trial",
        "agent_id": agent,
        "caller_number": TEST_NUMBER,
        "trunk_ids": ["trk_carrier"],
        "schedule": {"start_time": "00:00", "end_time": "23:59", "timezone": "UTC"},
        "max_concurrent_calls": 2,
        "calls_per_second": 10,
        "max_attempts": 1,
    })))
    .await;
    assert_eq!(campaign["livemode"], false, "{campaign}");
    let id = campaign["id"].as_str().unwrap().to_owned();
    ok(
        req(&d, M::POST, &format!("/v1/campaigns/{id}/contacts"), &test).json(&json!({
            "contacts": [{"number": "+15005550006"}, {"number": "+15005550001"}]
        })),
    )
    .await;
    // The live key does not see it.
    let (s, _) = json_of(
        req(&d, M::GET, &format!("/v1/campaigns/{id}"), &d.key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    ok(req(
        &d,
        M::POST,
        &format!("/v1/campaigns/{id}/start"),
        &test,
    ))
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c = ok(req(&d, M::GET, &format!("/v1/campaigns/{id}"), &test)).await;
        if c["status"] == "completed" {
            break;
        }
        assert!(Instant::now() < deadline, "not completed: {c}\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let calls = ok(req(
        &d,
        M::GET,
        &format!("/v1/calls?campaign_id={id}"),
        &test,
    ))
    .await;
    let mut outcomes: Vec<(String, String)> = calls["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["livemode"], false, "{c}");
            (
                c["to"].as_str().unwrap().to_owned(),
                c["end_reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    outcomes.sort();
    assert_eq!(
        outcomes,
        vec![
            ("+15005550001".into(), "busy".into()),
            ("+15005550006".into(), "callee_hangup".into()),
        ]
    );
    let live_calls = ok(req(
        &d,
        M::GET,
        &format!("/v1/calls?campaign_id={id}"),
        &d.key,
    ))
    .await;
    assert_eq!(live_calls["total"], 0, "{live_calls}");
    sink.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 2048];
    assert!(sink.recv(&mut buf).is_err(), "a packet reached the trunk");
}

both_backends!(
    a_test_call_never_reaches_the_trunk,
    magic_numbers_give_their_outcomes,
    a_test_campaign_completes_on_the_simulated_carrier
);
