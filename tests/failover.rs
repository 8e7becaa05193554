//! Trunk failover end to end: the real daemon, SIPp as two trunks' proxies,
//! the call and its attempts read back through the API, on both stores.
//!
//! - the first trunk answers 503, the second 200: one call (one
//!   `call.initiated`, one `call.answered`), two attempts;
//! - a trunk down by its OPTIONS probe gets no INVITE;
//! - every trunk fails: the call ends with the last trunk's answer;
//! - a 486 (the callee's answer) does not fail over;
//! - a campaign with two trunks fails over the same way.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Backend, TestDaemon, free_udp_port, run_sipp};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(20);
const NUMBER: &str = "+14155552671";
const CALLEE: &str = "+442079460958";

/// An outbound-only trunk to `127.0.0.1:port`.
fn trunk(name: &str, port: u16, extra: &str) -> String {
    format!(
        "name = \"{name}\"\n[outbound]\nproxy = \"127.0.0.1:{port}\"\n{extra}\n[limits]\ncps = 100\n"
    )
}

async fn daemon(backend: Backend, a: &str, b: &str) -> TestDaemon {
    TestDaemon::builder()
        .backend(backend)
        .profile("a", a)
        .profile("b", b)
        .start()
        .await
}

/// A prompt agent (a 600 ms tone, then it hangs up) on the number, bound
/// to trunk `a`; returns the agent id.
async fn provision(d: &TestDaemon) -> String {
    let r = d
        .post("/v1/agents")
        .json(
            &json!({"name": "p", "kind": "prompt", "prompt": {"tone_hz": 440, "duration_ms": 600}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let agent: Value = r.json().await.unwrap();
    let r = d
        .post("/v1/phone-numbers")
        .json(&json!({"number": NUMBER, "agent_id": agent["id"], "trunk_id": "trk_a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    agent["id"].as_str().unwrap().to_owned()
}

/// SIPp answering one INVITE with `code` (503, 502 or 486; reason
/// phrase `Trunk-Failure`) and expecting the ACK.
fn failing(port: u16, code: u16) -> tokio::task::JoinHandle<common::SippRun> {
    let scenario = match code {
        503 => "uas-invite-fail-503-expect-ack.xml",
        502 => "uas-invite-fail-502-expect-ack.xml",
        486 => "uas-invite-fail-486-expect-ack.xml",
        _ => panic!("no scenario for {code}"),
    };
    tokio::spawn(run_sipp(scenario, port, None, &[], LIMIT))
}

/// SIPp answering one INVITE with 200 and expecting our BYE.
fn answering(port: u16) -> tokio::task::JoinHandle<common::SippRun> {
    tokio::spawn(run_sipp(
        "uas-invite-expect-answer-then-bye.xml",
        port,
        None,
        &[],
        LIMIT,
    ))
}

async fn place(d: &TestDaemon, body: Value) -> String {
    let r = d.post("/v1/calls").json(&body).send().await.unwrap();
    let status = r.status();
    let call: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{call}");
    assert_eq!(call["status"], "queued");
    call["id"].as_str().unwrap().to_owned()
}

/// The call once it has ended, within 15 s.
async fn ended(d: &TestDaemon, id: &str) -> Value {
    let mut call = Value::Null;
    for _ in 0..150 {
        call = d
            .get(&format!("/v1/calls/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if call["ended_at"].is_string() {
            return call;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the call did not end: {call}\n{}", d.log());
}

/// How many events of `kind` call `id` emitted.
async fn events(d: &TestDaemon, id: &str, kind: &str) -> i64 {
    let store = d.store().await;
    let sql = "SELECT COUNT(*) FROM events WHERE call_id = $1 AND type = $2";
    match &store.pool {
        agentline::store::Pool::Sqlite(p) => sqlx::query_scalar(sql)
            .bind(id)
            .bind(kind)
            .fetch_one(p)
            .await
            .unwrap(),
        agentline::store::Pool::Postgres(p) => sqlx::query_scalar(sql)
            .bind(id)
            .bind(kind)
            .fetch_one(p)
            .await
            .unwrap(),
    }
}

fn attempts(call: &Value) -> &Vec<Value> {
    call["attempts"].as_array().expect("attempts")
}

async fn first_503_then_the_second_trunk_answers(backend: Backend) {
    let (pa, pb) = (free_udp_port(), free_udp_port());
    // One call at a time on each: the call's own slot never counts
    // against it when it moves.
    let d = daemon(
        backend,
        &trunk("a", pa, "").replace(
            "cps = 100",
            "cps = 100
max_calls = 1",
        ),
        &trunk("b", pb, "").replace(
            "cps = 100",
            "cps = 100
max_calls = 1",
        ),
    )
    .await;
    provision(&d).await;
    let (first, second) = (failing(pa, 503), answering(pb));
    common::wait_for_udp_listener(pa).await;
    common::wait_for_udp_listener(pb).await;
    let id = place(
        &d,
        json!({"from": NUMBER, "to": CALLEE, "trunk_ids": ["trk_a", "trk_b"]}),
    )
    .await;
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert!(first.success, "{}", first.output);
    assert!(second.success, "{}", second.output);
    let call = ended(&d, &id).await;
    assert_eq!(call["status"], "completed", "{call}");
    assert_eq!(call["end_reason"], "agent_hangup", "{call}");
    assert_eq!(call["trunk_id"], "trk_b", "the trunk that carried it");
    let tried = attempts(&call);
    assert_eq!(tried.len(), 2, "{call}");
    assert_eq!(tried[0]["trunk_id"], "trk_a");
    assert_eq!(tried[0]["outcome"], "failed");
    assert_eq!(tried[0]["sip_code"], 503);
    assert!(
        tried[0]["reason"]
            .as_str()
            .unwrap()
            .contains("Trunk-Failure")
    );
    assert_eq!(tried[1]["trunk_id"], "trk_b");
    assert_eq!(tried[1]["outcome"], "answered");
    assert_eq!(tried[1]["sip_code"], 200);
    assert_ne!(
        tried[0]["sip_call_id"], tried[1]["sip_call_id"],
        "a new SIP dialog per trunk"
    );
    assert_eq!(call["sip_call_id"], tried[1]["sip_call_id"]);
    // One call lifecycle, whatever the trunks did.
    assert_eq!(events(&d, &id, "call.initiated").await, 1);
    assert_eq!(events(&d, &id, "call.answered").await, 1);
    assert_eq!(events(&d, &id, "call.ended").await, 1);
    // Lists do not carry attempts.
    let page: Value = d
        .get("/v1/calls?limit=1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(page["items"][0].get("attempts").is_none(), "{page}");
}

/// A trunk's proxy that answers every OPTIONS with 503 and counts the
/// INVITEs it gets (answering none).
struct DownProxy {
    port: u16,
    invites: Arc<AtomicUsize>,
    options: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl DownProxy {
    async fn start() -> DownProxy {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = socket.local_addr().unwrap().port();
        let invites = Arc::new(AtomicUsize::new(0));
        let options = Arc::new(AtomicUsize::new(0));
        let (i, o) = (invites.clone(), options.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                if text.starts_with("INVITE ") {
                    i.fetch_add(1, Ordering::SeqCst);
                } else if text.starts_with("OPTIONS ") {
                    o.fetch_add(1, Ordering::SeqCst);
                    let mut answer = String::from("SIP/2.0 503 Service Unavailable\r\n");
                    for line in text.lines() {
                        let lower = line.to_ascii_lowercase();
                        if ["via:", "from:", "to:", "call-id:", "cseq:"]
                            .iter()
                            .any(|h| lower.starts_with(h))
                        {
                            answer.push_str(line);
                            if lower.starts_with("to:") && !lower.contains("tag=") {
                                answer.push_str(";tag=down");
                            }
                            answer.push_str("\r\n");
                        }
                    }
                    answer.push_str("Content-Length: 0\r\n\r\n");
                    let _ = socket.send_to(answer.as_bytes(), from).await;
                }
            }
        });
        DownProxy {
            port,
            invites,
            options,
            task,
        }
    }
}

async fn a_trunk_down_by_its_probe_gets_no_invite(backend: Backend) {
    let down = DownProxy::start().await;
    let pb = free_udp_port();
    let d = daemon(
        backend,
        &trunk("a", down.port, "ping_seconds = 1"),
        &trunk("b", pb, ""),
    )
    .await;
    provision(&d).await;
    common::wait_until(Duration::from_secs(10), "trunk a down", || async {
        let t: Value = d
            .get("/v1/trunks/trk_a")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        t["health"]["state"] == "down"
    })
    .await;
    let second = answering(pb);
    common::wait_for_udp_listener(pb).await;
    let id = place(
        &d,
        json!({"from": NUMBER, "to": CALLEE, "trunk_ids": ["trk_a", "trk_b"]}),
    )
    .await;
    let second = second.await.unwrap();
    assert!(second.success, "{}", second.output);
    let call = ended(&d, &id).await;
    assert_eq!(call["status"], "completed", "{call}");
    let tried = attempts(&call);
    assert_eq!(tried.len(), 2, "{call}");
    assert_eq!(tried[0]["trunk_id"], "trk_a");
    assert_eq!(tried[0]["outcome"], "skipped");
    assert!(tried[0]["sip_call_id"].is_null());
    assert!(
        tried[0]["reason"].as_str().unwrap().contains("down"),
        "{call}"
    );
    assert_eq!(tried[1]["outcome"], "answered");
    assert!(down.options.load(Ordering::SeqCst) >= 1, "probed");
    assert_eq!(
        down.invites.load(Ordering::SeqCst),
        0,
        "no INVITE to a down trunk"
    );
    down.task.abort();
}

async fn every_trunk_fails_and_the_call_ends_with_the_last(backend: Backend) {
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let d = daemon(backend, &trunk("a", pa, ""), &trunk("b", pb, "")).await;
    provision(&d).await;
    let (first, second) = (failing(pa, 503), failing(pb, 502));
    common::wait_for_udp_listener(pa).await;
    common::wait_for_udp_listener(pb).await;
    let id = place(
        &d,
        json!({"from": NUMBER, "to": CALLEE, "trunk_ids": ["trk_a", "trk_b"]}),
    )
    .await;
    assert!(first.await.unwrap().success);
    assert!(second.await.unwrap().success);
    let call = ended(&d, &id).await;
    assert_eq!(call["status"], "failed", "{call}");
    assert_eq!(call["sip_code"], 502, "the last trunk's answer: {call}");
    assert_eq!(call["sip_reason"], "Trunk-Failure");
    let tried = attempts(&call);
    assert_eq!(tried.len(), 2, "{call}");
    assert_eq!(tried[0]["sip_code"], 503);
    assert_eq!(tried[1]["sip_code"], 502);
    assert!(tried.iter().all(|t| t["outcome"] == "failed"));
    assert_eq!(events(&d, &id, "call.initiated").await, 1);
    assert_eq!(events(&d, &id, "call.ended").await, 1);
}

async fn busy_is_the_callee_and_does_not_fail_over(backend: Backend) {
    let (pa, pb) = (free_udp_port(), free_udp_port());
    // Trunk a moves on only on 503; b would answer if it got the call.
    let d = daemon(
        backend,
        &trunk("a", pa, "failover_on = [503]"),
        &trunk("b", pb, ""),
    )
    .await;
    provision(&d).await;
    let first = failing(pa, 486);
    common::wait_for_udp_listener(pa).await;
    let b = tokio::net::UdpSocket::bind(("127.0.0.1", pb))
        .await
        .unwrap();
    let id = place(
        &d,
        json!({"from": NUMBER, "to": CALLEE, "trunk_ids": ["trk_a", "trk_b"]}),
    )
    .await;
    assert!(first.await.unwrap().success);
    let call = ended(&d, &id).await;
    assert_eq!(call["status"], "busy", "{call}");
    assert_eq!(attempts(&call).len(), 1, "{call}");
    let mut buf = [0u8; 2048];
    let got = tokio::time::timeout(Duration::from_millis(300), b.recv_from(&mut buf)).await;
    assert!(got.is_err(), "trunk b got a request");
}

async fn a_campaign_fails_over_too(backend: Backend) {
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let d = TestDaemon::builder()
        .backend(backend)
        .profile("a", &trunk("a", pa, ""))
        .profile("b", &trunk("b", pb, ""))
        .config("[campaigns]\npoll_ms = 100")
        .start()
        .await;
    let agent_id = provision(&d).await;
    let (first, second) = (failing(pa, 503), answering(pb));
    common::wait_for_udp_listener(pa).await;
    common::wait_for_udp_listener(pb).await;
    let r = d
        .post("/v1/campaigns")
        .json(&json!({
            "name": "failover",
            "agent_id": agent_id,
            "caller_number": NUMBER,
            "trunk_ids": ["trk_a", "trk_b"],
            "schedule": {"start_time": "00:00", "end_time": "23:59", "timezone": "Etc/GMT"},
            "max_concurrent_calls": 1,
            "calls_per_second": 1,
        }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let campaign: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{campaign}");
    let cid = campaign["id"].as_str().unwrap();
    let r = d
        .post(&format!("/v1/campaigns/{cid}/contacts"))
        .json(&json!({"contacts": [{"number": CALLEE}]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let r = d
        .post(&format!("/v1/campaigns/{cid}/start"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert!(first.await.unwrap().success);
    let second = second.await.unwrap();
    assert!(second.success, "{}", second.output);
    let page: Value = d
        .get(&format!("/v1/calls?campaign_id={cid}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "one call: {page}");
    let call = ended(&d, items[0]["id"].as_str().unwrap()).await;
    assert_eq!(call["status"], "completed", "{call}");
    let tried = attempts(&call);
    assert_eq!(tried.len(), 2, "{call}");
    assert_eq!(tried[0]["trunk_id"], "trk_a");
    assert_eq!(tried[0]["sip_code"], 503);
    assert_eq!(tried[1]["trunk_id"], "trk_b");
    assert_eq!(tried[1]["outcome"], "answered");
}

#[tokio::test]
async fn trunk_ids_are_checked() {
    let d = daemon(
        Backend::Sqlite,
        &trunk("a", free_udp_port(), ""),
        &trunk("b", free_udp_port(), ""),
    )
    .await;
    provision(&d).await;
    for (body, field) in [
        (
            json!({"from": NUMBER, "to": CALLEE, "trunk_ids": ["trk_a", "trk_a"]}),
            "trunk_ids[1]",
        ),
        (
            json!({"from": NUMBER, "to": CALLEE, "trunk_ids": ["trk_a", "b"]}),
            "trunk_ids[1]",
        ),
        (
            json!({"from": NUMBER, "to": CALLEE, "trunk_id": "trk_a", "trunk_ids": ["trk_b"]}),
            "trunk_ids",
        ),
        (
            json!({"from": NUMBER, "to": CALLEE, "trunk_ids": ["trk_a", "trk_nope"]}),
            "trunk_ids",
        ),
    ] {
        let r = d.post("/v1/calls").json(&body).send().await.unwrap();
        let (status, err) = common::json_of(r).await;
        assert_eq!(status, 422, "{body}: {err}");
        assert_eq!(
            common::error_fields(&err, status),
            vec![field.to_owned()],
            "{err}"
        );
    }
    let page: Value = d
        .get("/v1/calls")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 0, "nothing placed");
}

both_backends!(
    first_503_then_the_second_trunk_answers,
    a_trunk_down_by_its_probe_gets_no_invite,
    every_trunk_fails_and_the_call_ends_with_the_last,
    busy_is_the_callee_and_does_not_fail_over,
    a_campaign_fails_over_too,
);
