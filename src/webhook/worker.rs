//! The delivery worker: claims due deliveries with a lease, POSTs each
//! signed payload, and records every attempt and the next step.
//!
//! Three parts run at once. The claim loop leases at most as many rows as
//! there are free request slots (a semaphore permit moves into each request
//! task and frees the slot when dropped). It claims when told deliveries
//! may wait in the table (a wake-up, the poll, a claim that came back
//! full), not after every request: a claim that finds nothing costs the
//! database as much as one that finds something. On PostgreSQL the fresh
//! deliveries of this process's own events come without a claim, already
//! leased, through the store's direct lane
//! ([`crate::store::deliveries::DirectLane`]), which the loop opens only
//! while nothing older waits; each takes the next free slot in the line's
//! order. Request tasks send, classify and
//! hand the result to the recorder, which writes results in batches, one
//! transaction each, so the database sees a few commits per second rather
//! than one per request. On stop the loop claims nothing more, in-flight
//! requests finish (they are bounded by the request timeout) and the
//! recorder flushes; a row whose result was never recorded keeps its lease
//! until it expires and is then delivered again (at least once, never lost).
//!
//! Must not: build payloads (they are stored, signed as they are; the one
//! addition is the stored transcript in `call.ended` for an endpoint with
//! `include_transcript`, rendered by [`super::event::with_transcript`]) or
//! touch the call layer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant as Deadline;

use super::Outbox;
use super::policy::{self, Backoff, DeliveryVerdict, Next, Response};
use crate::config::WebhooksConfig;
use crate::metrics as m;
use crate::net::{Guard, GuardError};
use crate::signing;
use crate::store::Store;
use crate::store::deliveries::{AttemptResult, Claimed, Handed, NextState};

/// Results written per transaction at most.
const RECORD_BATCH: usize = 500;
/// How much of a response body is read (and dropped) so the connection can
/// be reused; the rest is discarded with the connection.
const MAX_BODY: usize = 64 * 1024;
/// The direct lane's line holds this many rounds of requests (slots
/// times this): memory only, a payload each.
const LINE_ROUNDS: usize = 16;
/// A handed row is sent only with this much of its lease left beyond the
/// request timeout, for recording the result; with less it is left to
/// expire and be claimed.
const RECORD_MARGIN: chrono::TimeDelta = chrono::TimeDelta::seconds(5);
/// How often the outbox depth and age are measured.
const STATS_EVERY: Duration = Duration::from_secs(5);

/// Everything a request task needs; shared read-only.
struct Ctx {
    /// Resolves names through the guard, follows no redirect, one timeout
    /// per attempt; its pool is shared by every request task.
    client: reqwest::Client,
    /// Refuses addresses inside (loopback, private) at resolution.
    guard: Guard,
    /// The retry schedule: when a failed delivery is due again, or dead.
    backoff: Backoff,
    /// Woken when a request slot frees, so a loop waiting for room claims.
    freed: Notify,
    /// Opens the endpoints' sealed signing secrets.
    sealer: crate::secrets::Sealer,
    /// Reads the transcripts `call.ended` carries to endpoints that ask.
    store: Store,
    /// One request's time limit, which a handed row's lease must cover.
    timeout_seconds: u64,
}

/// The worker, built from the config; [`Worker::run`] drives it.
pub struct Worker {
    /// Claims deliveries (with a lease) and records attempts.
    store: Store,
    /// Shared by the request tasks, which may outlive one loop pass.
    ctx: Arc<Ctx>,
    /// Concurrency, batch size, poll interval and timeouts.
    config: WebhooksConfig,
    /// The outbox's wake-up: deliveries were written for a claim (by this
    /// process, or by another daemon: its NOTIFY) or became due (a replay,
    /// an endpoint enabled), so claim now rather than at the next poll.
    wake: Arc<Notify>,
    /// Turns true when the outbox is closed at shutdown: claim nothing
    /// more, let requests in flight finish and record them, then return.
    closing: watch::Receiver<bool>,
}

/// The HTTP client of deliveries: names resolve only through the guard,
/// redirects are not followed (a 3xx is a failed attempt), one timeout
/// covers connect to last byte.
pub fn http_client(
    c: &WebhooksConfig,
    outbound: &crate::net::Outbound,
) -> Result<reqwest::Client, reqwest::Error> {
    // The policy's builder: the guard as resolver, no redirects, no
    // environment proxy. A proxy URL was validated with the config.
    let builder = outbound
        .http_builder()
        .unwrap_or_else(|_| reqwest::Client::builder().no_proxy());
    builder
        .dns_resolver(Arc::new(outbound.guard().clone()))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(c.timeout_seconds))
        .pool_max_idle_per_host(c.concurrency)
        .build()
}

impl Worker {
    pub fn new(
        store: Store,
        outbox: &Outbox,
        config: &WebhooksConfig,
        sealer: crate::secrets::Sealer,
    ) -> Result<Self, reqwest::Error> {
        let outbound = crate::net::outbound();
        let guard = outbound.guard().clone();
        let client = http_client(config, outbound)?;
        Ok(Self {
            store: store.clone(),
            ctx: Arc::new(Ctx {
                client,
                guard,
                backoff: Backoff::new(config),
                freed: Notify::new(),
                sealer,
                store,
                timeout_seconds: config.timeout_seconds,
            }),
            config: config.clone(),
            wake: outbox.wake.clone(),
            closing: outbox.closing(),
        })
    }

    /// Delivers until the outbox is closed, then lets in-flight requests
    /// finish and records them.
    pub async fn run(mut self) {
        let slots = Arc::new(Semaphore::new(self.config.concurrency));
        let (results, rx) = mpsc::channel(self.config.concurrency.max(RECORD_BATCH));
        let recorder = tokio::spawn(record_loop(self.store.clone(), rx));
        let mut tasks = JoinSet::new();
        let poll = Duration::from_millis(self.config.poll_interval_ms);
        // The lease outlives the request timeout by a margin for recording.
        let lease = chrono::Duration::seconds(self.config.timeout_seconds as i64 + 30);
        let places = self.config.concurrency * LINE_ROUNDS;
        let (lane, mut handed) = match self.store.direct_lane(places, lease) {
            Some((lane, rx)) => (Some(lane), Some(rx)),
            None => (None, None),
        };
        let mut next_stats = Instant::now();
        let low_water = (self.config.concurrency.min(self.config.batch_size) / 4).max(1);
        // Whether due deliveries may wait in the table: at start (a backlog,
        // or rows a killed worker left), then after each wake-up or poll,
        // until a claim comes back short of full.
        let mut claim = true;
        let mut next_poll = Deadline::now() + poll;
        while !*self.closing.borrow() {
            while tasks.try_join_next().is_some() {}
            let mut again = false;
            if claim {
                let room = slots.available_permits().min(self.config.batch_size);
                // While requests are in flight, wait until a good share of
                // the slots is free: one claim per few deliveries.
                // The slots are taken before the claim, never waited for:
                // the direct lane may hold the others for deliveries this
                // loop has yet to receive.
                let mut permits = Vec::new();
                if room >= low_water || (room > 0 && tasks.is_empty()) {
                    while permits.len() < room {
                        match slots.clone().try_acquire_owned() {
                            Ok(p) => permits.push(p),
                            Err(_) => break,
                        }
                    }
                }
                let room = permits.len();
                if room > 0 {
                    next_poll = Deadline::now() + poll;
                    match self
                        .store
                        .claim_deliveries(crate::store::now() + lease, room as i64)
                        .await
                    {
                        Ok(claimed) => {
                            let full = claimed.len() == room;
                            for (c, permit) in claimed.into_iter().zip(permits) {
                                tasks.spawn(deliver(self.ctx.clone(), c, permit, results.clone()));
                            }
                            // Full: there may be more; short: nothing is
                            // left, fresh deliveries may skip the table.
                            claim = full;
                            again = full;
                            if let Some(lane) = &lane {
                                lane.set_open(!full);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot claim webhook deliveries");
                            claim = false;
                        }
                    }
                }
            }
            if next_stats <= Instant::now() {
                next_stats = Instant::now() + STATS_EVERY;
                self.record_stats().await;
            }
            if again {
                continue;
            }
            tokio::select! {
                _ = self.wake.notified() => {
                    // Deliveries were left in the table: they go first.
                    claim = true;
                    if let Some(lane) = &lane {
                        lane.set_open(false);
                    }
                }
                _ = self.ctx.freed.notified(), if claim => {}
                Some(h) = recv(&mut handed) => {
                    tasks.spawn(deliver_handed(self.ctx.clone(), h, slots.clone(), results.clone()));
                }
                _ = tokio::time::sleep_until(next_poll) => {
                    // Retries fall due, leases expire: no one wakes for them.
                    claim = true;
                    next_poll = Deadline::now() + poll;
                }
                _ = self.closing.changed() => {}
            }
        }
        if let Some(lane) = &lane {
            lane.set_open(false);
        }
        // Handed before the lane closed: they are leased to us, send them.
        if let Some(rx) = handed.as_mut() {
            while let Ok(h) = rx.try_recv() {
                tasks.spawn(deliver_handed(
                    self.ctx.clone(),
                    h,
                    slots.clone(),
                    results.clone(),
                ));
            }
        }
        let deadline = Duration::from_secs(self.config.timeout_seconds + 1);
        if tokio::time::timeout(deadline, async {
            while tasks.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!("webhook requests still in flight at stop; their leases will expire");
        }
        drop(results);
        let _ = recorder.await;
        tracing::info!("webhook worker stopped");
    }

    async fn record_stats(&self) {
        match self.store.outbox_stats().await {
            Ok(s) => {
                metrics::gauge!(m::WEBHOOK_OUTBOX_DEPTH).set(s.pending as f64);
                let age = s.oldest.map_or(0.0, |t| {
                    (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0
                });
                metrics::gauge!(m::WEBHOOK_OUTBOX_OLDEST_AGE).set(age);
            }
            Err(e) => tracing::warn!(error = %e, "cannot measure the webhook outbox"),
        }
    }
}

/// Makes one attempt for a handed delivery once its place in line gets a
/// request slot, if its lease still covers the request and the recording.
async fn deliver_handed(
    ctx: Arc<Ctx>,
    h: Handed,
    slots: Arc<Semaphore>,
    results: mpsc::Sender<AttemptResult>,
) {
    // The slots are never closed.
    let Ok(slot) = slots.acquire_owned().await else {
        return;
    };
    drop(h.place);
    let needed = chrono::TimeDelta::seconds(ctx.timeout_seconds as i64) + RECORD_MARGIN;
    if h.lease_until - crate::store::now() < needed {
        tracing::info!(delivery = %h.claimed.delivery_id,
            "a handed delivery waited too long for a slot; its lease expires and a claim takes it");
        return;
    }
    deliver(ctx, h.claimed, slot, results).await;
}

/// Makes one attempt and hands its result to the recorder.
async fn deliver(
    ctx: Arc<Ctx>,
    c: Claimed,
    permit: OwnedSemaphorePermit,
    results: mpsc::Sender<AttemptResult>,
) {
    let started_at = crate::store::now();
    let clock = Instant::now();
    let response = if wants_transcript(&c) {
        match with_transcript(&ctx.store, c.clone()).await {
            Ok(full) => send(&ctx, &full, started_at.timestamp()).await,
            Err(e) => Response::Transport(format!("the call's transcript cannot be read: {e}")),
        }
    } else {
        send(&ctx, &c, started_at.timestamp()).await
    };
    let latency = clock.elapsed();
    drop(permit);
    ctx.freed.notify_one();
    let outcome = policy::classify(&response);
    let now = crate::store::now();
    let retry_until = c
        .retry_until
        .unwrap_or_else(|| ctx.backoff.retry_until(started_at));
    let step = c.retry_step.max(0) as usize;
    let next = match &outcome {
        DeliveryVerdict::Success => NextState::Succeeded,
        DeliveryVerdict::Retry { after, .. } => {
            match ctx.backoff.next(step, now, retry_until, *after) {
                Next::RetryAt(at) => NextState::Retry(at),
                Next::DeadLetter => NextState::Failed,
            }
        }
        DeliveryVerdict::DontRetry { .. } => NextState::Failed,
    };
    metrics::counter!(m::WEBHOOK_ATTEMPTS, "outcome" => outcome.label()).increment(1);
    metrics::histogram!(m::WEBHOOK_ATTEMPT_DURATION).record(latency.as_secs_f64());
    let delivery_outcome = match next {
        NextState::Succeeded => Some("delivered"),
        NextState::Failed => Some("dead_lettered"),
        NextState::Retry(_) => None,
    };
    if let Some(o) = delivery_outcome {
        metrics::counter!(m::WEBHOOK_DELIVERIES, "outcome" => o).increment(1);
    }
    let (status_code, error) = match &response {
        Response::Status { code, .. } => (Some(i64::from(*code)), None),
        Response::Timeout => (None, Some("timeout".to_string())),
        Response::Blocked(e) | Response::Transport(e) => (None, Some(e.clone())),
    };
    let result = AttemptResult {
        delivery_id: c.delivery_id,
        lease_token: c.lease_token,
        endpoint_id: c.endpoint_id,
        attempt: c.attempts + 1,
        status_code,
        latency_ms: latency.as_millis() as i64,
        outcome: outcome.label(),
        reason: outcome.reason(),
        error,
        started_at,
        next,
        retry_step: c.retry_step + 1,
        retry_until,
        disable_endpoint: matches!(
            outcome,
            DeliveryVerdict::DontRetry {
                disable_endpoint: true,
                ..
            }
        ),
    };
    if result.disable_endpoint {
        tracing::warn!(endpoint = %result.endpoint_id, "endpoint answered 410 Gone; disabling it");
    }
    // The recorder only stops after every sender is dropped.
    let _ = results.send(result).await;
}

/// The next delivery handed through the direct lane; never, without one.
async fn recv(handed: &mut Option<mpsc::UnboundedReceiver<Handed>>) -> Option<Handed> {
    match handed {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A `call.ended` delivery to an endpoint that asks for the transcript.
fn wants_transcript(c: &Claimed) -> bool {
    c.include_transcript
        && c.call_id.is_some()
        && c.event_type == crate::model::EventType::CallEnded.as_str()
}

/// The claimed delivery with the call's transcript in its payload.
async fn with_transcript(
    store: &Store,
    mut c: Claimed,
) -> Result<Claimed, crate::store::StoreError> {
    let Some(call_id) = c.call_id.as_deref() else {
        return Ok(c);
    };
    let turns = store.transcript(call_id).await?;
    c.payload = super::event::with_transcript(&c.payload, &turns)?;
    Ok(c)
}

/// The request itself: signed headers over the stored payload.
async fn send(ctx: &Ctx, c: &Claimed, timestamp: i64) -> Response {
    let url = match reqwest::Url::parse(&c.url) {
        Ok(u) => u,
        Err(e) => return Response::Transport(format!("bad url: {e}")),
    };
    if let Err(e) = ctx.guard.check_literal(&url) {
        return Response::Blocked(e.to_string());
    }
    let now = Utc::now();
    // Secrets are stored sealed when the operator gave a key.
    let open = |s: &str| ctx.sealer.open(crate::secrets::WEBHOOK_PURPOSE, s);
    let current = match open(&c.secret) {
        Ok(s) => s,
        Err(e) => return Response::Transport(format!("signing secret: {e}")),
    };
    let mut opened = vec![current];
    if let (Some(prev), Some(until)) = (&c.previous_secret, c.previous_secret_expires_at)
        && until > now
        && let Ok(p) = open(prev)
    {
        opened.push(p);
    }
    let secrets: Vec<&str> = opened.iter().map(|s| s.expose()).collect();
    let signature =
        match signing::signature_header(&secrets, &c.event_id, timestamp, c.payload.as_bytes()) {
            Ok(s) => s,
            Err(e) => return Response::Transport(e.to_string()),
        };
    let request = ctx
        .client
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &c.event_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(c.payload.clone());
    let mut resp = match request.send().await {
        Ok(r) => r,
        Err(e) => return transport_error(&e),
    };
    let code = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| policy::parse_retry_after(v, now));
    let mut read = 0usize;
    while read < MAX_BODY {
        match resp.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            Ok(None) => break,
            Err(e) if e.is_timeout() => return Response::Timeout,
            Err(_) => break,
        }
    }
    Response::Status { code, retry_after }
}

fn transport_error(e: &reqwest::Error) -> Response {
    if e.is_timeout() {
        return Response::Timeout;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut depth = 0;
    let mut chain = Vec::new();
    while let Some(s) = source
        && depth < 16
    {
        if let Some(g) = s.downcast_ref::<GuardError>() {
            return Response::Blocked(g.to_string());
        }
        chain.push(s.to_string());
        source = s.source();
        depth += 1;
    }
    Response::Transport(chain.join(": "))
}

/// Writes results in batches until every sender is gone.
async fn record_loop(store: Store, mut rx: mpsc::Receiver<AttemptResult>) {
    let mut batch = Vec::with_capacity(RECORD_BATCH);
    while rx.recv_many(&mut batch, RECORD_BATCH).await > 0 {
        let mut tries = 0;
        loop {
            tries += 1;
            match store.record_attempts(&batch).await {
                Ok(()) => break,
                Err(e) if tries < 3 => {
                    tracing::warn!(error = %e, tries, "cannot record webhook attempts; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * tries)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, n = batch.len(),
                        "webhook attempts not recorded; their deliveries run again when the leases expire");
                    break;
                }
            }
        }
        batch.clear();
    }
}
