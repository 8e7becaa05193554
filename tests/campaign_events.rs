//! Black-box test of the campaign events: every status change, by an
//! operator's action or by the dialer finishing, reaches a live webhook
//! receiver (which verifies the signature with the `standardwebhooks` PyPI
//! package) exactly once, with the campaign as it stands after the change; a
//! refused action sends nothing. On SQLite and PostgreSQL.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/webhook_receiver.rs"]
mod receiver;

use std::time::Duration;

use common::{Backend, TestDaemon, json_of};
use receiver::{Receiver, Record, fast_webhooks_config};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The trunk is never dialled: the campaigns here either have nothing to
/// dial or a window that opens in 2099. Its proxy is a free port nobody
/// listens on.
fn trunk() -> String {
    format!(
        "name = \"carrier\"\n[outbound]\nproxy = \"127.0.0.1:{}\"\n",
        common::free_udp_port()
    )
}

async fn ok(r: reqwest::RequestBuilder) -> Value {
    let (s, b) = json_of(r.send().await.expect("request")).await;
    assert!(s.is_success(), "{s}: {b}");
    b
}

/// A draft campaign with one contact, `number`.
async fn campaign(d: &TestDaemon, agent: &Value, schedule: Value, number: &str) -> String {
    let c = ok(d.post("/v1/campaigns").json(&json!({
        "name": "events",
        "agent_id": agent["id"],
        "caller_number": "+14155550100",
        "trunk_ids": ["trk_carrier"],
        "schedule": schedule,
    })))
    .await;
    let id = c["id"].as_str().expect("id").to_owned();
    ok(d.post(&format!("/v1/campaigns/{id}/contacts"))
        .json(&json!({"contacts": [{"number": number}]})))
    .await;
    id
}

/// The records of campaign `id`, as (type, data.status).
fn of(recs: &[Record], id: &str) -> Vec<(String, String)> {
    let mut mine: Vec<&Record> = recs.iter().filter(|r| r.body["data"]["id"] == id).collect();
    // Deliveries may overtake one another; the events' own times order them.
    mine.sort_by_key(|r| {
        chrono::DateTime::parse_from_rfc3339(r.body["created_at"].as_str().unwrap_or_default())
            .expect("created_at is RFC 3339")
    });
    mine.iter()
        .map(|r| {
            (
                r.body["type"].as_str().unwrap_or_default().to_owned(),
                r.body["data"]["status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

async fn status_changes_reach_the_receiver(backend: Backend) {
    let d = TestDaemon::builder()
        .backend(backend)
        .profile("carrier", &trunk())
        .config(&fast_webhooks_config(&[1], 0))
        .config("[campaigns]\npoll_ms = 100")
        .start()
        .await;
    let rx = Receiver::start(json!({}));
    // No `events`: the default subscription includes the campaign events.
    let endpoint = ok(d
        .post("/v1/webhook-endpoints")
        .json(&json!({"url": rx.url()})))
    .await;
    rx.set(json!({"secrets": [endpoint["secret"]]}));
    let agent = ok(d
        .post("/v1/agents")
        .json(&json!({"name": "caller", "kind": "echo"})))
    .await;

    // An operator's actions on a campaign whose window opens in 2099.
    let later = campaign(
        &d,
        &agent,
        json!({"start_date": "2099-01-01"}),
        "+14155550111",
    )
    .await;
    let (s, _) = json_of(
        d.post(&format!("/v1/campaigns/{later}/pause"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "a draft cannot pause");
    for action in ["start", "pause", "resume", "cancel"] {
        ok(d.post(&format!("/v1/campaigns/{later}/{action}"))).await;
    }

    // A campaign whose only contact is on the do-not-call list: the dialer
    // finds nothing to dial and completes it.
    ok(d.post("/v1/do-not-call")
        .json(&json!({"number": "+14155550122"})))
    .await;
    let done = campaign(&d, &agent, json!({}), "+14155550122").await;
    ok(d.post(&format!("/v1/campaigns/{done}/start"))).await;

    let recs = rx
        .wait_until(Duration::from_secs(20), |r| r.len() >= 6)
        .await;
    // Anything sent twice or by mistake would arrive before the events of a
    // campaign that completes after these: the dialer has passed over every
    // campaign again, and the outbox delivers in the order events fall due.
    let barrier = campaign(&d, &agent, json!({}), "+14155550122").await;
    ok(d.post(&format!("/v1/campaigns/{barrier}/start"))).await;
    let recs_after: Vec<Record> = rx
        .wait_until(Duration::from_secs(20), |r| {
            of(r, &barrier).contains(&("campaign.completed".into(), "completed".into()))
        })
        .await
        .into_iter()
        .filter(|r| r.body["data"]["id"] != barrier.as_str())
        .collect();
    assert_eq!(recs_after.len(), recs.len(), "{recs_after:#?}");
    let pair = |t: &str, s: &str| (t.to_owned(), s.to_owned());
    assert_eq!(
        of(&recs, &later),
        [
            pair("campaign.started", "running"),
            pair("campaign.paused", "paused"),
            pair("campaign.resumed", "running"),
            pair("campaign.canceled", "canceled"),
        ]
    );
    assert_eq!(
        of(&recs, &done),
        [
            pair("campaign.started", "running"),
            pair("campaign.completed", "completed"),
        ]
    );
    for r in &recs {
        assert_eq!(r.verified, vec![true], "{r:?}");
        assert_eq!(r.body["id"], r.id.as_str());
        assert_eq!(r.body["data"]["trunk_ids"], json!(["trk_carrier"]));
        let finished = r.body["data"]["finished_at"].is_string();
        let terminal = matches!(
            r.body["type"].as_str(),
            Some("campaign.completed" | "campaign.canceled")
        );
        assert_eq!(finished, terminal, "finished_at set by the end: {r:?}");
        // The stored event is the delivered one.
        let stored = ok(d.get(&format!("/v1/events/{}", r.id))).await;
        assert_eq!(stored, r.body);
    }
}

both_backends!(status_changes_reach_the_receiver);
