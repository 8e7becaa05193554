//! Group commit for PostgreSQL: the call transitions of many calls (each
//! with its outbox event and deliveries) share one transaction, as SQLite's
//! commit thread ([`super::commit`]) shares one.
//!
//! Why: a transition in a transaction of its own is six round trips
//! (BEGIN, the UPDATE, the event, the subscribed endpoints, the delivery,
//! COMMIT) and a WAL flush, and the daemon paid about 1 ms of CPU per call
//! in sqlx's per-statement work (issue 16: 780 calls a second at most with
//! the server on the same two cores). Batched, a transition is one
//! statement; BEGIN, the endpoint lookup, one insert of every event and
//! delivery of the batch (arrays through `unnest`, one prepared statement
//! whatever the batch's size), the NOTIFY ([`super::notify`]) and COMMIT
//! are paid once per batch.
//!
//! How: one collector task takes what is queued (up to [`MAX_BATCH`]) as
//! soon as a writer is free, and hands it to that writer; at most
//! `writers` transactions are open at once. Idle, a job is committed at
//! once in a batch of one; busy, jobs queue while the writers work and the
//! next batch takes them all. Each caller gets its own result after the
//! commit. A call's transitions stay in order because its task awaits each
//! one before sending the next.
//!
//! A failing job must not fail the others: a transition that matches no row
//! is that job's `NotFound` and changes nothing; any error (a constraint, an
//! event that cannot be rendered, a lost connection) rolls the whole batch
//! back, and its jobs are then run again one transaction each, so only the
//! failing one gets the error. (A COMMIT whose answer was lost may have
//! committed: the retried transitions then find their state already moved
//! and answer `NotFound`, as a lone transaction's caller would have had an
//! error it could not tell from a rollback.)
//!
//! Must not: run anything but the call path's short transitions (every job
//! queued behind a batch waits for it), or hold a transaction across
//! anything but its own statements.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use sqlx::postgres::PgPool;
use sqlx::{Postgres, Transaction};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::calls::{CallRecord, Emit};
use super::commit::{Value, bind_values};
use super::events::{Fanout, NewEvent, subscription_pattern};
use super::notify::Notices;
use super::{Result, StoreError};

/// Jobs committed together at most. Bounds how long the first job of a
/// batch waits for the last one's statement.
const MAX_BATCH: usize = 256;

/// Every event of a batch and every delivery, in one statement: the arrays
/// are the columns (`unnest` zips them), so the text never changes with the
/// batch's size and sqlx prepares it once per connection. The events go in
/// the jobs' order (`ORDER BY ord`), so their stream sequence follows it.
/// The deliveries' foreign key to the events is checked at the end of the
/// statement, when the events of the CTE are in.
const INSERT_EVENTS: &str = "WITH ev AS (
    INSERT INTO events (id, type, api_version, call_id, call_seq, payload, created_at, updated_at, livemode)
    SELECT id, type, api_version, call_id, call_seq, payload, created_at, created_at, livemode
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::text[], $7::timestamptz[], $12::bool[])
         WITH ORDINALITY AS t(id, type, api_version, call_id, call_seq, payload, created_at, livemode, ord)
    ORDER BY ord
    RETURNING 1)
INSERT INTO webhook_deliveries (id, event_id, endpoint_id, status, next_attempt_at, created_at, updated_at)
SELECT id, event_id, endpoint_id, 'pending', at, at, at
FROM unnest($8::text[], $9::text[], $10::text[], $11::timestamptz[]) AS d(id, event_id, endpoint_id, at)";

/// Every enabled endpoint and the event types it subscribes to (a JSON
/// array), read once a batch; matched as [`super::events::SUBSCRIBED_ENDPOINTS`]
/// matches one type.
const ENABLED_ENDPOINTS: &str =
    "SELECT id, events, livemode FROM webhook_endpoints WHERE enabled ORDER BY id";

/// One call transition: a statement of `super::calls` that returns the row,
/// and the event to render from it.
struct Job {
    sql: &'static str,
    values: Vec<Value>,
    emit: Emit,
    reply: oneshot::Sender<Result<CallRecord>>,
}

enum Msg {
    Job(Job),
    /// Commit what is queued, wait for the writers, stop.
    Close(oneshot::Sender<()>),
}

/// What every writer shares.
struct Shared {
    pool: PgPool,
    /// The store's count of deliveries written (see `Store::deliveries_written`).
    deliveries: Arc<AtomicU64>,
    /// The NOTIFY that wakes the other nodes.
    notices: Notices,
}

/// Handle to the collector task; cheap to clone.
#[derive(Clone)]
pub(crate) struct PgCommit {
    /// Unbounded: each caller awaits its own answer, so the queue is bounded
    /// by the call tasks waiting on it.
    queue: mpsc::UnboundedSender<Msg>,
}

impl std::fmt::Debug for PgCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgCommit")
    }
}

fn failed(why: &str) -> StoreError {
    StoreError::Unavailable(format!("group commit: {why}"))
}

impl PgCommit {
    /// Starts the collector (on the current runtime) with at most `writers`
    /// transactions open at once.
    pub(crate) fn start(
        pool: PgPool,
        writers: usize,
        deliveries: Arc<AtomicU64>,
        notices: Notices,
    ) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            pool,
            deliveries,
            notices,
        });
        tokio::spawn(collect(rx, writers.max(1), shared));
        Self { queue }
    }

    /// Runs `sql` with `values` (returning the call row) and writes the
    /// event `emit` renders from it, in the next batch; the row once the
    /// batch has committed. `NotFound` when no row matched.
    pub(crate) async fn transition(
        &self,
        sql: &'static str,
        values: Vec<Value>,
        emit: Emit,
    ) -> Result<CallRecord> {
        let (reply, result) = oneshot::channel();
        self.queue
            .send(Msg::Job(Job {
                sql,
                values,
                emit,
                reply,
            }))
            .map_err(|_| failed("the store is closed"))?;
        result
            .await
            .map_err(|_| failed("the commit task stopped"))?
    }

    /// Commits what was queued before, then stops; later jobs are refused.
    pub(crate) async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.queue.send(Msg::Close(done)).is_ok() {
            let _ = closed.await;
        }
    }
}

/// Takes what is queued whenever a writer is free and hands it over.
async fn collect(mut rx: mpsc::UnboundedReceiver<Msg>, writers: usize, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(writers));
    let mut msgs = Vec::with_capacity(MAX_BATCH);
    loop {
        // A free writer first: while all are busy, jobs pile up in the
        // queue and the next batch takes them together.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        if rx.recv_many(&mut msgs, MAX_BATCH).await == 0 {
            return;
        }
        let mut jobs = Vec::with_capacity(msgs.len());
        let mut close = None;
        for msg in msgs.drain(..) {
            match msg {
                Msg::Job(job) => jobs.push(job),
                Msg::Close(done) => close = Some(done),
            }
        }
        if jobs.is_empty() {
            drop(permit);
        } else {
            let shared = shared.clone();
            tokio::spawn(async move {
                run(&shared, jobs).await;
                drop(permit);
            });
        }
        if let Some(done) = close {
            // Every writer back: every batch committed or failed.
            let _ = slots.acquire_many(writers as u32).await;
            rx.close();
            let _ = done.send(());
            // Jobs still queued are dropped: their callers get an error.
            return;
        }
    }
}

/// Commits `jobs` together, or (the batch failed) each alone, and answers
/// each caller.
async fn run(shared: &Shared, jobs: Vec<Job>) {
    let batch = attempt(shared, &jobs).await;
    match batch {
        Ok(outcomes) => {
            for (job, outcome) in jobs.into_iter().zip(outcomes) {
                // The caller may have gone (its call ended); the commit stands.
                let _ = job.reply.send(outcome);
            }
        }
        Err(e) if jobs.len() == 1 => {
            if let Some(job) = jobs.into_iter().next() {
                let _ = job.reply.send(Err(e));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, jobs = jobs.len(),
                "a batch of call transitions failed; committing them one by one");
            for job in jobs {
                let outcome = attempt(shared, std::slice::from_ref(&job))
                    .await
                    .and_then(|mut one| one.pop().unwrap_or(Err(failed("no outcome"))));
                if let Err(e) = &outcome {
                    tracing::warn!(error = %e, "call transition failed");
                }
                let _ = job.reply.send(outcome);
            }
        }
    }
}

/// One transaction around `jobs`: each transition, then every event and
/// delivery, the NOTIFY, COMMIT. The outer error fails the whole batch
/// (rolled back when the transaction drops); the inner results are each
/// job's own (`NotFound` for a transition that matched no row).
async fn attempt(shared: &Shared, jobs: &[Job]) -> Result<Vec<Result<CallRecord>>> {
    let mut tx = shared.pool.begin().await?;
    let mut outcomes = Vec::with_capacity(jobs.len());
    let mut events = Vec::new();
    for job in jobs {
        let row = bind_values!(sqlx::query_as::<_, CallRecord>(job.sql), &job.values)
            .fetch_optional(&mut *tx)
            .await?;
        match row {
            None => outcomes.push(Err(StoreError::NotFound)),
            Some(record) => {
                // A render error fails the batch: this job's change is
                // already in the transaction, and must go with it.
                if let Some(build) = &job.emit {
                    events.push(build(&record)?);
                }
                outcomes.push(Ok(record));
            }
        }
    }
    if !events.is_empty() {
        let deliveries = write_events(&mut tx, &events).await?;
        shared.notices.notify(&mut tx, deliveries > 0).await?;
        // Counted before the commit, as the pool's transactions count
        // theirs: a caller that reads the counter after its reply sees them.
        if deliveries > 0 {
            shared
                .deliveries
                .fetch_add(deliveries as u64, Ordering::AcqRel);
        }
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// The columns of a batch's events and deliveries, as [`INSERT_EVENTS`]
/// binds them.
#[derive(Default)]
struct Columns {
    id: Vec<String>,
    event_type: Vec<&'static str>,
    api_version: Vec<String>,
    call_id: Vec<Option<String>>,
    call_seq: Vec<Option<i64>>,
    payload: Vec<String>,
    created_at: Vec<DateTime<Utc>>,
    delivery_id: Vec<String>,
    delivery_event: Vec<String>,
    delivery_endpoint: Vec<String>,
    delivery_at: Vec<DateTime<Utc>>,
    livemode: Vec<bool>,
}

/// Writes `events` and their deliveries in one statement; how many
/// deliveries it wrote.
async fn write_events(tx: &mut Transaction<'_, Postgres>, events: &[NewEvent]) -> Result<usize> {
    let mut endpoints: Option<Vec<(String, String, bool)>> = None;
    let mut c = Columns::default();
    for ev in events {
        c.id.push(ev.id.clone());
        c.event_type.push(ev.event_type.as_str());
        c.api_version.push(ev.api_version.clone());
        c.call_id.push(ev.call_id.clone());
        c.call_seq.push(ev.call_seq);
        c.payload.push(ev.payload.clone());
        c.created_at.push(ev.created_at);
        c.livemode.push(ev.livemode);
        let mut deliver = |endpoint: &str| {
            c.delivery_id.push(crate::ids::new(crate::ids::DELIVERY));
            c.delivery_event.push(ev.id.clone());
            c.delivery_endpoint.push(endpoint.to_owned());
            c.delivery_at.push(ev.created_at);
        };
        match &ev.fanout {
            Fanout::Endpoint(id) => deliver(id),
            Fanout::Subscribed => {
                if endpoints.is_none() {
                    endpoints = Some(
                        sqlx::query_as(ENABLED_ENDPOINTS)
                            .fetch_all(&mut **tx)
                            .await?,
                    );
                }
                let pattern = subscription_pattern(ev.event_type);
                for (id, subscribed, livemode) in endpoints.iter().flatten() {
                    if *livemode == ev.livemode && subscribed.contains(&pattern) {
                        deliver(id);
                    }
                }
            }
        }
    }
    sqlx::query(INSERT_EVENTS)
        .bind(&c.id)
        .bind(&c.event_type)
        .bind(&c.api_version)
        .bind(&c.call_id)
        .bind(&c.call_seq)
        .bind(&c.payload)
        .bind(&c.created_at)
        .bind(&c.delivery_id)
        .bind(&c.delivery_event)
        .bind(&c.delivery_endpoint)
        .bind(&c.delivery_at)
        .bind(&c.livemode)
        .execute(&mut **tx)
        .await?;
    Ok(c.delivery_id.len())
}
