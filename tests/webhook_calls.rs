//! A real call's lifecycle reaches a webhook receiver: SIPp calls the
//! daemon, and the receiver (verifying with the `standardwebhooks` PyPI
//! package) gets `call.ringing`, `call.answered`, `call.dtmf` and
//! `call.ended`, each carrying the call object and a gap-free sequence.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/webhook_receiver.rs"]
mod receiver;

use std::time::Duration;

use common::{Backend, TestDaemon, free_udp_port, run_sipp};
use receiver::{Receiver, fast_webhooks_config};
use serde_json::{Value, json};

const NUMBER: &str = "+14155552671";

async fn a_real_call_is_reported_in_order(backend: Backend) {
    let d = TestDaemon::builder()
        .backend(backend)
        .profile(
            "carrier",
            "name = \"carrier\"\n[inbound]\nallow = [\"127.0.0.1/32\"]\n",
        )
        .config(&fast_webhooks_config(&[1], 0))
        .start()
        .await;
    let rx = Receiver::start(json!({}));
    let r = d
        .post("/v1/webhook-endpoints")
        .json(&json!({"url": rx.url(), "events": [
            "call.initiated", "call.ringing", "call.answered", "call.dtmf", "call.ended"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let ep: Value = r.json().await.unwrap();
    rx.set(json!({"secrets": [ep["secret"]]}));
    let agent: Value = d
        .post("/v1/agents")
        .json(&json!({"name": "echo", "kind": "echo", "max_duration_seconds": 60}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = d
        .post("/v1/phone-numbers")
        .json(&json!({"number": NUMBER, "agent_id": agent["id"], "trunk_id": "trk_carrier"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let run = run_sipp(
        "uac-invite-dtmf-expect-200-bye.xml",
        free_udp_port(),
        Some(([127, 0, 0, 1], d.sip_port).into()),
        &[
            "-s",
            NUMBER,
            "-mi",
            "127.0.0.1",
            "-mp",
            &free_udp_port().to_string(),
        ],
        Duration::from_secs(20),
    )
    .await;
    assert!(run.success, "{}\n{}", run.output, d.log());

    let recs = rx
        .wait_until(Duration::from_secs(20), |r| {
            r.iter().any(|x| x.body["type"] == "call.ended")
        })
        .await;
    assert!(recs.iter().all(|r| r.verified == vec![true]), "{recs:?}");
    let mut events: Vec<&Value> = recs.iter().map(|r| &r.body).collect();
    events.sort_by_key(|e| e["data"]["sequence"].as_i64());
    let seqs: Vec<i64> = events
        .iter()
        .map(|e| e["data"]["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "{events:#?}"
    );
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types[0], "call.ringing", "{types:?}");
    assert_eq!(types[1], "call.answered", "{types:?}");
    assert_eq!(*types.last().unwrap(), "call.ended", "{types:?}");
    assert!(types.contains(&"call.dtmf"), "{types:?}");
    let end = &events.last().unwrap()["data"];
    let id = end["id"].as_str().unwrap();
    let call: Value = d
        .get(&format!("/v1/calls/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut data = end.clone();
    data.as_object_mut().unwrap().remove("sequence");
    assert_eq!(
        data, call,
        "call.ended carries the call as the API shows it"
    );
    assert_eq!(call["status"], "completed");
    assert_eq!(call["end_reason"], "caller_hangup");
}

/// A receiver that hangs never delays call handling: three calls run to
/// completion, promptly, while every delivery to it is stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_never_delays_calls() {
    let d = TestDaemon::builder()
        .profile(
            "carrier",
            "name = \"carrier\"\n[inbound]\nallow = [\"127.0.0.1/32\"]\n",
        )
        .config(&fast_webhooks_config(&[1], 0))
        .start()
        .await;
    let rx = Receiver::start(json!({"hang_seconds": 60}));
    let r = d
        .post("/v1/webhook-endpoints")
        .json(&json!({"url": rx.url()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let agent: Value = d
        .post("/v1/agents")
        .json(&json!({"name": "echo", "kind": "echo", "max_duration_seconds": 60}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = d
        .post("/v1/phone-numbers")
        .json(&json!({"number": NUMBER, "agent_id": agent["id"], "trunk_id": "trk_carrier"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let started = std::time::Instant::now();
    for _ in 0..3 {
        let run = run_sipp(
            "uac-invite-expect-200-bye.xml",
            free_udp_port(),
            Some(([127, 0, 0, 1], d.sip_port).into()),
            &["-s", NUMBER, "-d", "300"],
            Duration::from_secs(20),
        )
        .await;
        assert!(run.success, "{}\n{}", run.output, d.log());
    }
    // The last call's end is written just after SIPp's BYE is answered.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let page: Value = d
            .get("/v1/calls?status=completed")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if page["total"] == 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(15),
        "calls took {elapsed:?} with a stuck receiver"
    );
    assert!(
        rx.records().is_empty(),
        "the receiver was still stuck, so nothing was delivered yet"
    );
}

both_backends!(a_real_call_is_reported_in_order);
