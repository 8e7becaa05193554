//! The PostgreSQL write path at scale: call transitions batched into shared
//! transactions keep each call's state change and its outbox event together
//! and in order (also through kill -9 under call load, losing no webhook);
//! a failing transition fails alone; a NOTIFY wakes another daemon's event
//! stream; the per-key API rate limit is shared by the daemons of one
//! database.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/webhook_receiver.rs"]
mod receiver;

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use agentline::model::{CallStatus, Direction};
use agentline::store::calls::{EndFields, NewCall};
use agentline::store::{Store, StoreError};
use agentline::webhook::Outbox;
use common::{TestDaemon, free_udp_port, require_sipp, scenario, wait_until};
use receiver::{Receiver, fast_webhooks_config};
use serde_json::{Value, json};
use sqlx::Connection;

const NUMBER: &str = "+14155552671";

/// A fresh PostgreSQL database, migrated, with one enabled endpoint
/// subscribed to every call event; the daemon holder owns the database.
async fn fresh_store() -> (TestDaemon, Store) {
    let d = TestDaemon::builder().postgres().prepare().await;
    let store = Store::connect(&d.store_url).await.unwrap();
    store.migrate().await.unwrap();
    store
        .insert_endpoint(
            &agentline::ids::new(agentline::ids::WEBHOOK_ENDPOINT),
            &agentline::secrets::new_webhook_secret(),
            agentline::store::webhooks::EndpointFields {
                url: "http://127.0.0.1:9/",
                description: None,
                events: r#"["call.ringing","call.answered","call.ended"]"#,
                enabled: true,
                include_transcript: false,
            },
            true,
        )
        .await
        .unwrap();
    (d, store)
}

fn inbound(id: &str) -> NewCall<'_> {
    NewCall {
        id,
        direction: Direction::Inbound,
        from_number: "+14155550100",
        to_number: NUMBER,
        trunk: Some("trk_carrier"),
        agent_id: None,
        status: CallStatus::Ringing,
        sip_call_id: None,
        metadata: "{}",
        campaign: None,
        context: None,
        agent_source: None,
        agent_source_error: None,
        livemode: true,
        api_key_id: None,
    }
}

fn ended() -> EndFields<'static> {
    EndFields {
        status: CallStatus::Completed,
        sip_code: None,
        sip_reason: None,
        end_reason: "caller_hangup",
        duration_ms: Some(10),
        answered_by: None,
    }
}

/// (call id, call_seq, type, xmin) of every call event, in stream order.
async fn call_events(url: &str) -> Vec<(String, i64, String, i64)> {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_as(
        "SELECT call_id, call_seq, type, xmin::text::bigint FROM events
         WHERE call_id IS NOT NULL ORDER BY seq",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

/// Every call's events, in stream order, are its sequence 1..=event_seq
/// with nothing missing or extra: each committed transition has its event
/// and no event outlived a rolled-back transition.
async fn assert_calls_whole(url: &str) -> HashMap<String, Vec<String>> {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let calls: Vec<(String, i64)> = sqlx::query_as("SELECT id, event_seq FROM calls")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let mut per_call: HashMap<String, Vec<(i64, String)>> = HashMap::new();
    for (call, seq, kind, _) in call_events(url).await {
        per_call.entry(call).or_default().push((seq, kind));
    }
    assert_eq!(per_call.len(), calls.len(), "events of unknown calls");
    let mut types = HashMap::new();
    for (id, event_seq) in calls {
        let events = per_call.remove(&id).unwrap_or_default();
        let seqs: Vec<i64> = events.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            seqs,
            (1..=event_seq).collect::<Vec<_>>(),
            "call {id}: its events in stream order, against its event_seq"
        );
        types.insert(id, events.into_iter().map(|(_, t)| t).collect());
    }
    types
}

/// Many calls at once on one PostgreSQL store: their transitions share
/// transactions (fewer transactions than events), and each call's events
/// come in its order, each with its transition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transitions_share_transactions_in_order() {
    const CALLS: usize = 200;
    let (d, store) = fresh_store().await;
    let outbox = Outbox::new(store.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..CALLS {
        let outbox = outbox.clone();
        tasks.spawn(async move {
            let id = format!("call_batch{n:04}");
            outbox.call_created(inbound(&id)).await.unwrap();
            outbox.call_answered(&id, None).await.unwrap();
            outbox.call_ended(&id, ended()).await.unwrap();
            // Past that state: no row matches, nothing is written.
            assert!(matches!(
                outbox.call_answered(&id, None).await,
                Err(StoreError::NotFound)
            ));
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let types = assert_calls_whole(&d.store_url).await;
    assert_eq!(types.len(), CALLS);
    for (id, t) in &types {
        assert_eq!(
            t,
            &["call.ringing", "call.answered", "call.ended"],
            "call {id}"
        );
    }
    let events = call_events(&d.store_url).await;
    let transactions: HashSet<i64> = events.iter().map(|e| e.3).collect();
    assert_eq!(events.len(), CALLS * 3);
    assert!(
        transactions.len() <= events.len() / 2,
        "{} events in {} transactions: not batched",
        events.len(),
        transactions.len()
    );
    // Every event has its delivery, written in the same transaction.
    let mut conn = sqlx::PgConnection::connect(&d.store_url).await.unwrap();
    let (deliveries, same_tx): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(*) FILTER (WHERE d.xmin = e.xmin)
         FROM webhook_deliveries d JOIN events e ON e.id = d.event_id",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(deliveries, (CALLS * 3) as i64);
    assert_eq!(same_tx, deliveries);
    store.close().await;
}

/// With the worker's direct lane open and a place free in its line, a
/// fresh delivery is written leased to the worker and handed over after
/// the commit, without a claim and without a wake-up; without a place (or
/// with the lane closed) it is written for a claim as before. A handed row is a
/// claimed row: a claim skips it, and only its lease token records it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_deliveries_skip_the_claim() {
    use agentline::store::deliveries::{AttemptResult, NextState};
    let (d, store) = fresh_store().await;
    let lease = chrono::Duration::seconds(60);
    let (lane, mut handed) = store.direct_lane(2, lease).unwrap();
    assert!(
        store.direct_lane(2, lease).is_none(),
        "one worker has the lane"
    );
    let outbox = Outbox::new(store.clone());

    // Closed (as until the worker's first claim comes back short).
    let mark = store.deliveries_written();
    outbox.call_created(inbound("call_direct_a")).await.unwrap();
    assert_eq!(store.deliveries_written(), mark + 1, "left for a claim");
    assert!(handed.try_recv().is_err());

    // Open, two places: two handed, the third left for a claim.
    lane.set_open(true);
    let mark = store.deliveries_written();
    for id in ["call_direct_b", "call_direct_c", "call_direct_d"] {
        outbox.call_created(inbound(id)).await.unwrap();
    }
    assert_eq!(
        store.deliveries_written(),
        mark + 1,
        "only the one without a place"
    );
    let first = handed.try_recv().unwrap();
    let second = handed.try_recv().unwrap();
    assert!(handed.try_recv().is_err());
    let left = first.lease_until - chrono::Utc::now();
    assert!(
        left > chrono::Duration::seconds(50) && left <= lease,
        "{left}"
    );
    let mut calls: Vec<_> = [&first, &second]
        .iter()
        .map(|h| h.claimed.call_id.clone().unwrap())
        .collect();
    calls.sort();
    assert_eq!(calls, ["call_direct_b", "call_direct_c"]);
    let c = &first.claimed;
    assert_eq!((c.attempts, c.retry_step, c.retry_until), (0, 0, None));
    assert_eq!(c.event_type, "call.ringing");
    assert_eq!(c.url, "http://127.0.0.1:9/");
    assert!(c.secret.starts_with("whsec_"));
    let payload: Value = serde_json::from_str(&c.payload).unwrap();
    assert_eq!(payload["id"], c.event_id.as_str());
    assert_eq!(payload["data"]["id"], c.call_id.as_deref().unwrap());

    // In the table: leased with the token handed, until about the lease.
    let mut conn = sqlx::PgConnection::connect(&d.store_url).await.unwrap();
    let (token, until): (Option<String>, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT lease_token, lease_until FROM webhook_deliveries WHERE id = $1")
            .bind(&c.delivery_id)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(token.as_deref(), Some(c.lease_token.as_str()));
    let left = until.unwrap() - chrono::Utc::now();
    assert!(
        left > chrono::Duration::seconds(50) && left <= lease,
        "{left}"
    );

    // A claim takes only the rows left for it.
    let claimed = store
        .claim_deliveries(chrono::Utc::now() + lease, 10)
        .await
        .unwrap();
    let mut claimed: Vec<_> = claimed.into_iter().map(|c| c.call_id.unwrap()).collect();
    claimed.sort();
    assert_eq!(claimed, ["call_direct_a", "call_direct_d"]);

    // A handed row holds its place until the worker starts it (drops it):
    // with both taken the next is left for a claim, with one given back
    // the next is handed.
    let mark = store.deliveries_written();
    outbox.call_created(inbound("call_direct_e")).await.unwrap();
    assert_eq!(store.deliveries_written(), mark + 1, "the line is full");
    drop(second);
    outbox.call_created(inbound("call_direct_f")).await.unwrap();
    assert_eq!(store.deliveries_written(), mark + 1, "a place came back");
    let next = handed.try_recv().unwrap();
    assert_eq!(next.claimed.call_id.as_deref(), Some("call_direct_f"));

    // The handed row records as a claimed one: with its token only.
    let result = |token: &str| AttemptResult {
        delivery_id: c.delivery_id.clone(),
        lease_token: token.to_owned(),
        endpoint_id: c.endpoint_id.clone(),
        attempt: 1,
        status_code: Some(204),
        latency_ms: 1,
        outcome: "success",
        reason: "2xx".into(),
        error: None,
        started_at: chrono::Utc::now(),
        next: NextState::Succeeded,
        retry_step: 1,
        retry_until: chrono::Utc::now() + chrono::Duration::hours(24),
        disable_endpoint: false,
    };
    const STATUS: &str = "SELECT status FROM webhook_deliveries WHERE id = $1";
    store
        .record_attempts(&[result("lease_other")])
        .await
        .unwrap();
    let status: String = sqlx::query_scalar(STATUS)
        .bind(&c.delivery_id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(status, "pending", "another lease's result moves nothing");
    store
        .record_attempts(&[result(&c.lease_token)])
        .await
        .unwrap();
    let status: String = sqlx::query_scalar(STATUS)
        .bind(&c.delivery_id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(status, "succeeded");
    store.close().await;
}

/// Two transitions of one call in flight at once (the dialog write races
/// the end, as the call layer spawns it) may share a batch, where the
/// transitions of many calls run as one statement: they still run one
/// after the other, each with the answer its place gives it (the dialog
/// stored before the end, or refused after it), and every event is in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_transitions_of_one_call_keep_their_order() {
    const CALLS: usize = 150;
    let (d, store) = fresh_store().await;
    let outbox = Outbox::new(store.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..CALLS {
        let outbox = outbox.clone();
        let store = store.clone();
        tasks.spawn(async move {
            let id = format!("call_race{n:04}");
            outbox.call_created(inbound(&id)).await.unwrap();
            outbox.call_answered(&id, None).await.unwrap();
            let dialog = format!("{{\"n\":{n}}}");
            let (stored, end) = tokio::join!(
                store.call_dialog(&id, &dialog),
                outbox.call_ended(&id, ended())
            );
            end.unwrap();
            (id, dialog, stored)
        });
    }
    let mut conn = sqlx::PgConnection::connect(&d.store_url).await.unwrap();
    let (mut before, mut after) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        let (id, dialog, stored) = r.unwrap();
        let row: Option<String> = sqlx::query_scalar("SELECT dialog FROM calls WHERE id = $1")
            .bind(&id)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        match stored {
            Ok(record) => {
                assert_eq!(record.ended_at, None, "{id}: stored before the end");
                assert_eq!(record.status, CallStatus::InProgress, "{id}");
                assert_eq!(row.as_deref(), Some(dialog.as_str()), "{id}");
                before += 1;
            }
            Err(StoreError::NotFound) => {
                assert_eq!(row, None, "{id}: refused after the end, nothing written");
                after += 1;
            }
            Err(e) => panic!("{id}: {e}"),
        }
    }
    assert_eq!(before + after, CALLS);
    let types = assert_calls_whole(&d.store_url).await;
    assert!(
        types
            .values()
            .all(|t| t == &["call.ringing", "call.answered", "call.ended"]),
        "{types:?}"
    );
    store.close().await;
}

/// A transition that fails (a call id that exists already) fails alone:
/// the batch it shared is committed again without it, every other caller
/// gets its row, and the failed one left neither a row nor an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_transition_fails_alone() {
    let (d, store) = fresh_store().await;
    let outbox = Outbox::new(store.clone());
    for n in 0..10 {
        outbox
            .call_created(inbound(&format!("call_taken{n}")))
            .await
            .unwrap();
    }
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..150 {
        let outbox = outbox.clone();
        tasks.spawn(async move {
            // Every 15th a duplicate, spread through the batches.
            let id = if n % 15 == 7 {
                format!("call_taken{}", n / 15)
            } else {
                format!("call_fresh{n:03}")
            };
            (id.clone(), outbox.call_created(inbound(&id)).await)
        });
    }
    let mut conflicts = 0;
    while let Some(r) = tasks.join_next().await {
        let (id, result) = r.unwrap();
        if id.starts_with("call_taken") {
            assert!(
                matches!(result, Err(StoreError::Conflict(_))),
                "{id}: {result:?}"
            );
            conflicts += 1;
        } else {
            assert_eq!(result.unwrap().id, id);
        }
    }
    assert_eq!(conflicts, 10);
    let types = assert_calls_whole(&d.store_url).await;
    assert_eq!(types.len(), 150, "10 taken + 140 fresh, no more");
    assert!(types.values().all(|t| t == &["call.ringing"]));
    store.close().await;
}

/// SIPp at 60 calls a second into a daemon on PostgreSQL with an endpoint
/// subscribed to every call event; kill -9 in the middle. After the
/// restart (which ends the calls it left as lost) every call is whole in
/// the store, and every event in the outbox reaches the receiver, each
/// call's with a gap-free sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_under_call_load_loses_no_webhook() {
    require_sipp();
    let mut d = TestDaemon::builder()
        .postgres()
        .profile(
            "carrier",
            "name = \"carrier\"\n[inbound]\nallow = [\"127.0.0.1/32\"]\n",
        )
        .config(&fast_webhooks_config(&[1], 300))
        .start()
        .await;
    let rx = Receiver::start(json!({}));
    let r = d
        .post("/v1/webhook-endpoints")
        .json(&json!({"url": rx.url(), "events": ["call.ringing", "call.answered", "call.ended"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let ep: Value = r.json().await.unwrap();
    // Each first attempt fails (retried 1 s later): deliveries are always
    // pending when the daemon is killed.
    rx.set(json!({"secrets": [ep["secret"]], "fail_first": 1, "fail_status": 500}));
    d.provision_echo(NUMBER, "trk_carrier", 60).await;

    let mut sipp = tokio::process::Command::new("sipp")
        .arg(format!("127.0.0.1:{}", d.sip_port))
        .args(["-sf", &scenario("uac-invite-expect-200-bye.xml")])
        .args(["-s", NUMBER, "-i", "127.0.0.1"])
        .args(["-p", &free_udp_port().to_string()])
        .args(["-mp", &free_udp_port().to_string()])
        .args(["-r", "60", "-m", "900", "-l", "300", "-d", "700"])
        .args(["-nostdin", "-timeout", "60s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sipp");
    // Kill once a good number of calls went through, mid-flow.
    let store = d.store().await;
    wait_until(Duration::from_secs(60), "120 calls placed", || {
        let store = store.clone();
        async move {
            let page = store
                .list_calls(
                    &Default::default(),
                    agentline::store::Window {
                        limit: 1,
                        offset: 0,
                    },
                )
                .await
                .unwrap();
            page.total >= 120
        }
    })
    .await;
    d.kill9().await;
    let _ = sipp.kill().await;
    let at_kill: i64 = {
        let mut conn = sqlx::PgConnection::connect(&d.store_url).await.unwrap();
        sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE call_id IS NOT NULL")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };
    let delivered_before = rx
        .records()
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.id.clone())
        .collect::<HashSet<_>>()
        .len();
    assert!(
        delivered_before < at_kill as usize,
        "everything was delivered before the kill"
    );
    d.restart().await;

    // The restart ended the calls the killed daemon left.
    let mut conn = sqlx::PgConnection::connect(&d.store_url).await.unwrap();
    let open: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM calls WHERE ended_at IS NULL")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(open, 0, "calls left open after the restart");
    let types = assert_calls_whole(&d.store_url).await;
    assert!(types.len() >= 120);
    let ids: HashSet<String> = sqlx::query_scalar("SELECT id FROM events")
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let recs = rx
        .wait_until(Duration::from_secs(120), |r| {
            r.iter()
                .filter(|x| x.status == 200)
                .map(|x| x.id.as_str())
                .collect::<HashSet<_>>()
                .len()
                >= ids.len()
        })
        .await;
    let delivered: HashSet<String> = recs
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.id.clone())
        .collect();
    assert_eq!(delivered, ids, "every event in the outbox was delivered");
    assert!(recs.iter().all(|r| r.verified == vec![true]));
    // Each call's deliveries carry its sequence without a gap.
    let mut per_call: HashMap<String, HashSet<i64>> = HashMap::new();
    for r in recs.iter().filter(|r| r.status == 200) {
        per_call
            .entry(r.body["data"]["id"].as_str().unwrap().to_owned())
            .or_default()
            .insert(r.body["data"]["sequence"].as_i64().unwrap());
    }
    for (call, seqs) in per_call {
        let n = types[&call].len() as i64;
        assert_eq!(
            seqs,
            (1..=n).collect::<HashSet<_>>(),
            "call {call}: delivered sequences"
        );
        assert_eq!(types[&call].last().unwrap(), "call.ended", "call {call}");
    }
    store.close().await;
}

/// Two daemons on one PostgreSQL database; `b` gets `b_env` too.
async fn pair(config: &str, b_env: &[(&str, &str)]) -> (TestDaemon, TestDaemon) {
    let a = TestDaemon::builder()
        .postgres()
        .env("AGENTLINE_STORE__NODE", "node-a")
        .config(config)
        .start()
        .await;
    let mut b = TestDaemon::builder()
        .postgres()
        .env("AGENTLINE_STORE__NODE", "node-b")
        .config(config);
    for (k, v) in b_env {
        b = b.env(k, v);
    }
    let mut b = b.prepare().await;
    // b's own throwaway database stays unused: it runs on a's.
    let text = std::fs::read_to_string(&b.config_path)
        .unwrap()
        .replace(&b.store_url, &a.store_url);
    std::fs::write(&b.config_path, text).unwrap();
    b.store_url = a.store_url.clone();
    b.key = a.key.clone();
    b.spawn();
    b.wait_ready().await;
    (a, b)
}

/// An event written through node a's API shows on node b's event stream
/// within about a second, while b's streams poll only every 10 minutes:
/// only a's NOTIFY can have woken it; also after the listeners' connections
/// were cut (they reconnect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_wakes_another_daemons_event_stream() {
    let (a, b) = pair(
        &fast_webhooks_config(&[1], 0),
        &[("AGENTLINE_STORE__LISTEN_POLL_MS", "600000")],
    )
    .await;
    wait_until(
        Duration::from_secs(10),
        "b's outbox listener connected",
        || {
            let log = b.log();
            async move { log.contains("outbox listener connected") }
        },
    )
    .await;
    let r = a
        .post("/v1/webhook-endpoints")
        .json(&json!({"url": "http://127.0.0.1:9/hook"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let ep: Value = r.json().await.unwrap();
    let ep = ep["id"].as_str().unwrap().to_owned();

    let mut stream = b.get("/v1/events").send().await.unwrap();
    assert_eq!(stream.status(), 200);
    // The stream takes its position when its first read runs: give it a
    // heartbeat's worth of a moment by reading nothing yet, then emit.
    let mut admin = sqlx::PgConnection::connect(&a.store_url).await.unwrap();
    for round in 0..4 {
        if round == 2 {
            // Cut the listeners' connections (a's and b's): b's must come
            // back by itself and hear a again.
            let cut: Vec<bool> = sqlx::query_scalar(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = current_database() AND query LIKE 'LISTEN%'",
            )
            .fetch_all(&mut admin)
            .await
            .unwrap();
            assert_eq!(cut, [true, true], "two listeners");
            let back = Instant::now() + Duration::from_secs(10);
            while b.log().matches("outbox listener connected").count() < 2
                && !b.log().contains("outbox listener reconnected")
            {
                assert!(Instant::now() < back, "b's listener not back:\n{}", b.log());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = a
            .post(&format!("/v1/webhook-endpoints/{ep}/test"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "round {round}");
        let event: Value = r.json().await.unwrap();
        let id = event["event_id"]
            .as_str()
            .or_else(|| event["id"].as_str())
            .unwrap()
            .to_owned();
        let sent = Instant::now();
        let mut buf = String::new();
        loop {
            let left = Duration::from_millis(1500).saturating_sub(sent.elapsed());
            let chunk = tokio::time::timeout(left, stream.chunk())
                .await
                .unwrap_or_else(|_| {
                    panic!("round {round}: event {id} not on node b's stream within 1.5 s")
                })
                .unwrap()
                .expect("stream open");
            buf.push_str(&String::from_utf8_lossy(&chunk));
            if buf.contains(&id) {
                break;
            }
        }
        assert!(
            sent.elapsed() < Duration::from_millis(1500),
            "{:?}",
            sent.elapsed()
        );
    }
}

/// One key limited to 10 requests a minute, used on two daemons of one
/// database: 5 on a and 5 on b pass, the 11th on either is 429 with
/// Retry-After, although neither daemon saw more than 6.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_is_shared_by_two_daemons() {
    let (a, b) = pair("", &[]).await;
    let key = a.create_key_cli("shared", Some(10));
    // A window is a minute of the database's clock: start early in one so
    // that all 12 requests fall in it.
    let mut conn = sqlx::PgConnection::connect(&a.store_url).await.unwrap();
    for _ in 0..20 {
        let second: f64 = sqlx::query_scalar("SELECT extract(second FROM now())::float8")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        if second < 45.0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let get = |d: &TestDaemon| d.http.get(d.url("/v1/agents")).bearer_auth(&key).send();
    for (n, d) in [&a, &a, &a, &a, &a, &b, &b, &b, &b, &b].iter().enumerate() {
        let r = get(d).await.unwrap();
        assert_eq!(r.status(), 200, "request {}", n + 1);
        assert_eq!(r.headers()["x-ratelimit-limit"], "10");
        assert_eq!(
            r.headers()["x-ratelimit-remaining"],
            (9 - n).to_string().as_str()
        );
    }
    for d in [&b, &a] {
        let r = get(d).await.unwrap();
        assert_eq!(r.status(), 429);
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry), "Retry-After {retry}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    }
    // Another key is not affected.
    let r = a.get("/v1/agents").send().await.unwrap();
    assert_eq!(r.status(), 200);
}
