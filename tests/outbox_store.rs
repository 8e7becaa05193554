//! The outbox store on both backends: concurrent claimers never take the
//! same delivery, an expired lease is claimed again, only the lease holder
//! moves a delivery, and only deliveries written wake the worker.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;

use agentline::store::Store;
use agentline::store::deliveries::{AttemptResult, NextState};
use agentline::store::webhooks::EndpointFields;
use agentline::webhook::Outbox;
use common::{Backend, TestDaemon};

async fn fresh_store(backend: Backend) -> (TestDaemon, Store, String) {
    let d = TestDaemon::builder().backend(backend).prepare().await;
    let store = Store::connect(&d.store_url).await.unwrap();
    store.migrate().await.unwrap();
    let ep = add_endpoint(&store, "[\"call.ended\"]").await;
    (d, store, ep)
}

/// An enabled endpoint subscribed to `events` (a JSON array); its id.
async fn add_endpoint(store: &Store, events: &str) -> String {
    let ep = agentline::ids::new(agentline::ids::WEBHOOK_ENDPOINT);
    store
        .insert_endpoint(
            &ep,
            &agentline::secrets::new_webhook_secret(),
            EndpointFields {
                url: "http://127.0.0.1:9/",
                description: None,
                events,
                enabled: true,
                include_transcript: false,
            },
            true,
        )
        .await
        .unwrap();
    ep
}

async fn concurrent_claims_are_disjoint(backend: Backend) {
    const N: usize = 300;
    let (_d, store, ep) = fresh_store(backend).await;
    let outbox = Outbox::new(store.clone());
    for _ in 0..N {
        outbox.test_event(&ep, true).await.unwrap();
    }
    let lease = agentline::store::now() + chrono::Duration::seconds(60);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        // A separate pool per claimer, as separate daemons would have.
        let s = Store::connect(&_d.store_url).await.unwrap();
        tasks.spawn(async move {
            let mut mine = Vec::new();
            for _ in 0..200 {
                let batch = s.claim_deliveries(lease, 7).await.unwrap();
                if batch.is_empty() {
                    break;
                }
                mine.extend(batch.into_iter().map(|c| c.delivery_id));
            }
            mine
        });
    }
    let mut all = Vec::new();
    while let Some(mine) = tasks.join_next().await {
        all.extend(mine.unwrap());
    }
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!(distinct.len(), all.len(), "a delivery was claimed twice");
    assert_eq!(all.len(), N);
}

async fn expired_leases_are_claimed_again(backend: Backend) {
    let (_d, store, ep) = fresh_store(backend).await;
    Outbox::new(store.clone())
        .test_event(&ep, true)
        .await
        .unwrap();
    let past = agentline::store::now() - chrono::Duration::seconds(1);
    let first = store.claim_deliveries(past, 10).await.unwrap();
    assert_eq!(first.len(), 1);
    let again = store
        .claim_deliveries(agentline::store::now() + chrono::Duration::seconds(60), 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "an expired lease is free");
    assert!(
        store
            .claim_deliveries(agentline::store::now() + chrono::Duration::seconds(60), 10)
            .await
            .unwrap()
            .is_empty(),
        "a live lease is not"
    );
    // The first holder's late result does not move the delivery.
    let result = |c: &agentline::store::deliveries::Claimed, next| AttemptResult {
        delivery_id: c.delivery_id.clone(),
        lease_token: c.lease_token.clone(),
        endpoint_id: c.endpoint_id.clone(),
        attempt: c.attempts + 1,
        status_code: Some(200),
        latency_ms: 1,
        outcome: "success",
        reason: "2xx".into(),
        error: None,
        started_at: agentline::store::now(),
        next,
        retry_step: 1,
        retry_until: agentline::store::now(),
        disable_endpoint: false,
    };
    store
        .record_attempts(&[result(&first[0], NextState::Succeeded)])
        .await
        .unwrap();
    let stats = store.outbox_stats().await.unwrap();
    assert_eq!(stats.pending, 1);
    assert!(stats.oldest.is_some());
    store
        .record_attempts(&[result(&again[0], NextState::Succeeded)])
        .await
        .unwrap();
    assert_eq!(store.outbox_stats().await.unwrap().pending, 0);
}

/// The count the outbox wakes its worker by: an event nobody subscribes
/// to writes no delivery and leaves it alone; one that fans out to the
/// subscribed endpoint counts its delivery.
async fn only_events_with_deliveries_count(backend: Backend) {
    use agentline::model::EventType;
    use agentline::webhook::event::{TrunkEventData, trunk_event};
    let registered = || {
        let data = TrunkEventData {
            trunk_id: "carrier".into(),
            sip_code: Some(200),
            reason: None,
            expires_at: None,
            next_attempt_at: None,
        };
        trunk_event(EventType::TrunkRegistered, data).unwrap()
    };
    let (_d, store, _ep) = fresh_store(backend).await;
    let before = store.deliveries_written();
    store.emit(&registered()).await.unwrap();
    assert_eq!(
        store.deliveries_written(),
        before,
        "nobody wants trunk events"
    );
    assert_eq!(store.outbox_stats().await.unwrap().pending, 0);
    add_endpoint(&store, "[\"trunk.registered\"]").await;
    store.emit(&registered()).await.unwrap();
    assert_eq!(store.deliveries_written(), before + 1);
    assert_eq!(store.outbox_stats().await.unwrap().pending, 1);
}

both_backends!(
    concurrent_claims_are_disjoint,
    expired_leases_are_claimed_again,
    only_events_with_deliveries_count
);
