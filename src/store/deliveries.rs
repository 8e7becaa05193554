//! Deliveries and their attempts: one delivery per event and endpoint, one
//! attempt row per HTTP request made for it.
//!
//! Claiming is a lease: a worker sets `lease_until` and a random
//! `lease_token` on due rows in one statement (`FOR UPDATE SKIP LOCKED` on
//! PostgreSQL so concurrent daemons never take the same row; an atomic
//! `UPDATE ... RETURNING` on SQLite, where writers are serialized), and only
//! the holder of the token can record the result. A worker that dies leaves
//! the lease to expire, and the row is claimed again.
//!
//! On PostgreSQL a fresh delivery can skip the claim: when this process's
//! worker has caught up and has room in its line, the group commit
//! ([`super::pg_commit`]) writes the row already leased to it and, once the
//! transaction commits, hands it over through the worker's
//! [`DirectLane`]. The row is a claimed row like any other:
//! a worker killed before recording it leaves the lease to expire, and any
//! daemon claims it then (at least once). What this saves is a statement
//! and a row version per delivery (the claim's `UPDATE` and its read of the
//! event), and the wait between the commit and the next claim.
//!
//! Must not: decide retries or sign (that is `webhook`); it stores what it is
//! told.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::{Page, Pool, Result, Store, StoreError, Window, on_pool};
use crate::ids;

/// A claimed delivery with everything needed to make the request.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub delivery_id: String,
    pub lease_token: String,
    pub attempts: i64,
    pub retry_step: i64,
    pub retry_until: Option<DateTime<Utc>>,
    pub event_id: String,
    pub event_created_at: DateTime<Utc>,
    pub payload: String,
    pub endpoint_id: String,
    pub url: String,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    /// The endpoint wants the call's transcript in `call.ended`.
    pub include_transcript: bool,
    pub event_type: String,
    /// The call a `call.*` event is about.
    pub call_id: Option<String>,
}

/// Where a delivery goes after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextState {
    Succeeded,
    /// Try again at this time.
    Retry(DateTime<Utc>),
    /// No more attempts (dead-lettered); the row stays visible.
    Failed,
}

/// The result of one attempt, as the worker records it.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    pub delivery_id: String,
    pub lease_token: String,
    pub endpoint_id: String,
    /// 1 for the first attempt ever made for this delivery.
    pub attempt: i64,
    pub status_code: Option<i64>,
    pub latency_ms: i64,
    /// `success`, `retry` or `fail`.
    pub outcome: &'static str,
    pub reason: String,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub next: NextState,
    /// The schedule step after this attempt.
    pub retry_step: i64,
    pub retry_until: DateTime<Utc>,
    /// The endpoint answered 410 Gone: stop sending to it.
    pub disable_endpoint: bool,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryRecord {
    pub id: String,
    pub event_id: String,
    pub event_type: String,
    pub endpoint_id: String,
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: DateTime<Utc>,
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttemptRecord {
    pub id: String,
    pub delivery_id: String,
    pub attempt: i64,
    pub status_code: Option<i64>,
    pub latency_ms: i64,
    pub outcome: String,
    pub reason: String,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
}

/// Which deliveries a listing shows.
#[derive(Debug, Clone, Copy)]
pub enum DeliveryScope<'a> {
    Endpoint(&'a str),
    Event(&'a str),
}

/// How many deliveries wait and since when.
#[derive(Debug, Clone, Copy)]
pub struct OutboxStats {
    pub pending: i64,
    pub oldest: Option<DateTime<Utc>>,
}

/// A fresh delivery handed to this process's worker without a claim: the
/// row is committed, leased to `claimed.lease_token` until `lease_until`,
/// and `place` is its place in the worker's line.
#[derive(Debug)]
pub struct Handed {
    pub claimed: Claimed,
    pub lease_until: DateTime<Utc>,
    pub place: OwnedSemaphorePermit,
}

/// The way from the group commit to this process's worker (PostgreSQL).
/// The worker opens it while nothing older waits in the table (its last
/// claim was not full) and closes it when deliveries are left there, so a
/// handed row never jumps a queue.
///
/// A handed row takes a place in the worker's line when it is written and
/// a request slot only once it is handed (the slots go to the line in its
/// order). A slot taken at the write would be held through the batch's
/// commit: at 1,000 calls a second the commits, not the requests, used
/// the slots up, rows were left for claims, and a claim that comes back
/// full keeps the lane closed, so nearly every delivery went the dearer
/// way of claims and they fell seconds behind (issue 16). The line is
/// long (many rounds of slots) and costs only memory; a row whose lease
/// runs short while it waits is not sent but left to expire and be
/// claimed (the worker checks), so no request goes out on a lease that
/// may lapse. Only with the line full is a row left for a claim.
#[derive(Debug)]
pub struct DirectLane {
    /// The places in the worker's line.
    places: Arc<Semaphore>,
    /// Whether fresh deliveries may be handed now.
    open: AtomicBool,
    /// How long a handed row stays leased (as a claim's lease).
    lease: chrono::Duration,
    tx: mpsc::UnboundedSender<Handed>,
}

impl DirectLane {
    /// Opens (the table has nothing due for this worker) or closes it.
    pub fn set_open(&self, open: bool) {
        self.open.store(open, Ordering::Release);
    }

    /// A place in line for a fresh delivery, if the lane is open and one
    /// is free now.
    pub(crate) fn reserve(&self) -> Option<OwnedSemaphorePermit> {
        if !self.open.load(Ordering::Acquire) {
            return None;
        }
        self.places.clone().try_acquire_owned().ok()
    }

    /// When a row written now and handed stops being leased.
    pub(crate) fn lease_until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + self.lease
    }

    /// Hands a committed, leased delivery over. A worker that stopped has
    /// dropped its end: the row then waits for its lease to expire.
    pub(crate) fn hand(&self, handed: Handed) {
        let _ = self.tx.send(handed);
    }
}

const CLAIM_SQLITE: &str = "UPDATE webhook_deliveries SET lease_until = $1, lease_token = $2, updated_at = $3
     WHERE id IN (SELECT d.id FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
                  WHERE d.status = 'pending' AND d.next_attempt_at <= $3
                    AND (d.lease_until IS NULL OR d.lease_until < $3) AND e.enabled
                  ORDER BY d.next_attempt_at LIMIT $4)";

/// The claim and the read of what was claimed in one statement (one round
/// trip; SQLite runs [`CLAIM_SQLITE`] then [`CLAIMED_ROWS`]).
const CLAIM_POSTGRES: &str = "WITH c AS (
       UPDATE webhook_deliveries SET lease_until = $1, lease_token = $2, updated_at = $3
       WHERE id IN (SELECT d.id FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
                    WHERE d.status = 'pending' AND d.next_attempt_at <= $3
                      AND (d.lease_until IS NULL OR d.lease_until < $3) AND e.enabled
                    ORDER BY d.next_attempt_at LIMIT $4
                    FOR UPDATE OF d SKIP LOCKED)
       RETURNING id, lease_token, attempts, retry_step, retry_until, event_id, endpoint_id)
     SELECT c.id AS delivery_id, c.lease_token, c.attempts, c.retry_step, c.retry_until,
        ev.id AS event_id, ev.created_at AS event_created_at, ev.payload,
        e.id AS endpoint_id, e.url, e.secret, e.previous_secret, e.previous_secret_expires_at,
        e.include_transcript, ev.type AS event_type, ev.call_id
     FROM c
     JOIN events ev ON ev.id = c.event_id
     JOIN webhook_endpoints e ON e.id = c.endpoint_id";

const CLAIMED_ROWS: &str =
    "SELECT d.id AS delivery_id, d.lease_token, d.attempts, d.retry_step, d.retry_until,
        ev.id AS event_id, ev.created_at AS event_created_at, ev.payload,
        e.id AS endpoint_id, e.url, e.secret, e.previous_secret, e.previous_secret_expires_at,
        e.include_transcript, ev.type AS event_type, ev.call_id
     FROM webhook_deliveries d
     JOIN events ev ON ev.id = d.event_id
     JOIN webhook_endpoints e ON e.id = d.endpoint_id
     WHERE d.lease_token = $1";

const DELIVERY_COLUMNS: &str = "d.id, d.event_id, ev.type AS event_type, d.endpoint_id, d.status,
        d.attempts, d.next_attempt_at, d.last_status_code, d.last_error, d.created_at, d.updated_at";

impl AttemptResult {
    /// The delivery's status, next attempt time and last error after this
    /// attempt.
    fn next_columns(&self, now: DateTime<Utc>) -> (&'static str, DateTime<Utc>, Option<&str>) {
        let last_error = match self.next {
            NextState::Succeeded => None,
            _ => Some(self.error.as_deref().unwrap_or(&self.reason)),
        };
        let (status, next_at) = match self.next {
            NextState::Succeeded => ("succeeded", now),
            NextState::Retry(at) => ("pending", at),
            NextState::Failed => ("failed", now),
        };
        (status, next_at, last_error)
    }
}

/// A batch of attempts on PostgreSQL in one statement: every attempt row,
/// every delivery's move (only while the lease is still the result's), and
/// the endpoints that answered 410, from arrays (`unnest`), so one round
/// trip records the batch whatever its size (a statement is atomic: no
/// BEGIN and COMMIT either). SQLite runs the same as one transaction of a
/// statement per row.
const RECORD_ATTEMPTS_PG: &str = "WITH a AS (
       INSERT INTO webhook_attempts (id, delivery_id, attempt, status_code, latency_ms, outcome,
           reason, error, started_at, created_at, updated_at)
       SELECT id, delivery_id, attempt, status_code, latency_ms, outcome, reason, error, started_at, $1, $1
       FROM unnest($2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[], $7::text[], $8::text[],
                   $9::text[], $10::timestamptz[])
            AS t(id, delivery_id, attempt, status_code, latency_ms, outcome, reason, error, started_at)
       RETURNING 1),
     u AS (
       UPDATE webhook_deliveries d SET status = t.status, attempts = t.attempt, retry_step = t.retry_step,
           next_attempt_at = t.next_at, retry_until = t.retry_until, last_status_code = t.status_code,
           last_error = t.last_error, lease_until = NULL, lease_token = NULL, updated_at = $1
       FROM unnest($3::text[], $11::text[], $12::text[], $4::int8[], $13::int8[], $14::timestamptz[],
                   $15::timestamptz[], $5::int8[], $16::text[])
            AS t(id, token, status, attempt, retry_step, next_at, retry_until, status_code, last_error)
       WHERE d.id = t.id AND d.lease_token = t.token
       RETURNING 1)
     UPDATE webhook_endpoints SET enabled = false, updated_at = $1 WHERE id = ANY($17::text[])";

async fn record_attempts_pg(
    p: &sqlx::PgPool,
    results: &[AttemptResult],
    now: DateTime<Utc>,
) -> Result<()> {
    let n = results.len();
    let mut id = Vec::with_capacity(n);
    let mut delivery = Vec::with_capacity(n);
    let mut attempt = Vec::with_capacity(n);
    let mut status_code = Vec::with_capacity(n);
    let mut latency = Vec::with_capacity(n);
    let mut outcome = Vec::with_capacity(n);
    let mut reason = Vec::with_capacity(n);
    let mut error = Vec::with_capacity(n);
    let mut started = Vec::with_capacity(n);
    let mut token = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    let mut step = Vec::with_capacity(n);
    let mut next_at = Vec::with_capacity(n);
    let mut until = Vec::with_capacity(n);
    let mut last_error = Vec::with_capacity(n);
    let mut disable = Vec::new();
    for r in results {
        let (s, at, e) = r.next_columns(now);
        id.push(ids::new(ids::WEBHOOK_ATTEMPT));
        delivery.push(r.delivery_id.as_str());
        attempt.push(r.attempt);
        status_code.push(r.status_code);
        latency.push(r.latency_ms);
        outcome.push(r.outcome);
        reason.push(r.reason.as_str());
        error.push(r.error.as_deref());
        started.push(r.started_at);
        token.push(r.lease_token.as_str());
        status.push(s);
        step.push(r.retry_step);
        next_at.push(at);
        until.push(r.retry_until);
        last_error.push(e);
        if r.disable_endpoint {
            disable.push(r.endpoint_id.as_str());
        }
    }
    sqlx::query(RECORD_ATTEMPTS_PG)
        .bind(now)
        .bind(&id)
        .bind(&delivery)
        .bind(&attempt)
        .bind(&status_code)
        .bind(&latency)
        .bind(&outcome)
        .bind(&reason)
        .bind(&error)
        .bind(&started)
        .bind(&token)
        .bind(&status)
        .bind(&step)
        .bind(&next_at)
        .bind(&until)
        .bind(&last_error)
        .bind(&disable)
        .execute(p)
        .await?;
    Ok(())
}

impl Store {
    /// The direct lane for this process's worker, with a line of `places`
    /// and rows leased for `lease`: the lane (closed until the worker opens
    /// it) and its receiving end. `None` on SQLite (its
    /// commit thread writes rows for the claim) or when a worker has it
    /// already.
    pub fn direct_lane(
        &self,
        places: usize,
        lease: chrono::Duration,
    ) -> Option<(Arc<DirectLane>, mpsc::UnboundedReceiver<Handed>)> {
        let commit = self.pg_commit.as_ref()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let lane = Arc::new(DirectLane {
            places: Arc::new(Semaphore::new(places)),
            open: AtomicBool::new(false),
            lease,
            tx,
        });
        commit.set_lane(lane.clone()).then_some((lane, rx))
    }

    /// Leases up to `limit` due deliveries of enabled endpoints until
    /// `lease_until` and returns them with their payload and endpoint.
    pub async fn claim_deliveries(
        &self,
        lease_until: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Claimed>> {
        let now = super::now();
        let token = ids::new("lease");
        match &self.pool {
            Pool::Sqlite(p) => {
                let claimed = sqlx::query(CLAIM_SQLITE)
                    .bind(lease_until)
                    .bind(&token)
                    .bind(now)
                    .bind(limit)
                    .execute(p)
                    .await?
                    .rows_affected();
                if claimed == 0 {
                    return Ok(Vec::new());
                }
                Ok(sqlx::query_as::<_, Claimed>(CLAIMED_ROWS)
                    .bind(&token)
                    .fetch_all(p)
                    .await?)
            }
            Pool::Postgres(p) => Ok(sqlx::query_as::<_, Claimed>(CLAIM_POSTGRES)
                .bind(lease_until)
                .bind(&token)
                .bind(now)
                .bind(limit)
                .fetch_all(p)
                .await?),
        }
    }

    /// Records a batch of attempts in one transaction. A result whose lease
    /// was taken over (expired and claimed by another worker) still leaves
    /// its attempt row but does not move the delivery.
    pub async fn record_attempts(&self, results: &[AttemptResult]) -> Result<()> {
        if results.is_empty() {
            return Ok(());
        }
        let now = super::now();
        if let Pool::Postgres(p) = &self.pool {
            return record_attempts_pg(p, results, now).await;
        }
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            for r in results {
                sqlx::query(
                    "INSERT INTO webhook_attempts (id, delivery_id, attempt, status_code, latency_ms, outcome,
                         reason, error, started_at, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)")
                    .bind(ids::new(ids::WEBHOOK_ATTEMPT)).bind(&r.delivery_id).bind(r.attempt).bind(r.status_code)
                    .bind(r.latency_ms).bind(r.outcome).bind(&r.reason).bind(&r.error).bind(r.started_at)
                    .bind(now)
                    .execute(&mut *tx).await?;
                let (status, next_at, last_error) = r.next_columns(now);
                sqlx::query(
                    "UPDATE webhook_deliveries SET status = $3, attempts = $4, retry_step = $5,
                         next_attempt_at = $6, retry_until = $7, last_status_code = $8, last_error = $9,
                         lease_until = NULL, lease_token = NULL, updated_at = $10
                     WHERE id = $1 AND lease_token = $2")
                    .bind(&r.delivery_id).bind(&r.lease_token).bind(status).bind(r.attempt)
                    .bind(r.retry_step).bind(next_at).bind(r.retry_until).bind(r.status_code)
                    .bind(last_error).bind(now)
                    .execute(&mut *tx).await?;
                if r.disable_endpoint {
                    sqlx::query("UPDATE webhook_endpoints SET enabled = $2, updated_at = $3 WHERE id = $1")
                        .bind(&r.endpoint_id).bind(false).bind(now)
                        .execute(&mut *tx).await?;
                }
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Deliveries of one endpoint or one event, newest first, optionally of
    /// one status.
    pub async fn list_deliveries(
        &self,
        scope: DeliveryScope<'_>,
        status: Option<&str>,
        w: Window,
    ) -> Result<Page<DeliveryRecord>> {
        let (column, id) = match scope {
            DeliveryScope::Endpoint(id) => ("d.endpoint_id", id),
            DeliveryScope::Event(id) => ("d.event_id", id),
        };
        let items = on_pool!(self, p => sqlx::query_as::<_, DeliveryRecord>(sqlx::AssertSqlSafe(format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d JOIN events ev ON ev.id = d.event_id
             WHERE {column} = $1 AND ($2 IS NULL OR d.status = $2)
             ORDER BY d.created_at DESC, d.id DESC LIMIT $3 OFFSET $4")))
            .bind(id).bind(status).bind(w.limit).bind(w.offset).fetch_all(p).await)?;
        let total: i64 = on_pool!(self, p => sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM webhook_deliveries d WHERE {column} = $1 AND ($2 IS NULL OR d.status = $2)")))
            .bind(id).bind(status).fetch_one(p).await)?;
        Ok(Page { items, total })
    }

    /// The attempts of the given deliveries, oldest first.
    pub async fn attempts_of(&self, delivery_ids: &[String]) -> Result<Vec<AttemptRecord>> {
        if delivery_ids.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders = (1..=delivery_ids.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT id, delivery_id, attempt, status_code, latency_ms, outcome, reason, error, started_at
             FROM webhook_attempts WHERE delivery_id IN ({placeholders}) ORDER BY delivery_id, attempt"
        );
        Ok(on_pool!(self, p => {
            let mut q = sqlx::query_as::<_, AttemptRecord>(sqlx::AssertSqlSafe(sql.as_str()));
            for id in delivery_ids {
                q = q.bind(id);
            }
            q.fetch_all(p).await
        })?)
    }

    /// Sends event `event_id` again: every delivery it has goes back to
    /// pending with a fresh retry schedule, and enabled endpoints subscribed
    /// to its type (and of its mode) that never had it get one. Returns how many deliveries
    /// are now pending for it.
    pub async fn replay_event(&self, event_id: &str) -> Result<u64> {
        let now = super::now();
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let event_type: Option<String> = sqlx::query_scalar("SELECT type FROM events WHERE id = $1")
                .bind(event_id).fetch_optional(&mut *tx).await?;
            let event_type = event_type.ok_or(StoreError::NotFound)?;
            let mut count = sqlx::query(
                "UPDATE webhook_deliveries SET status = 'pending', retry_step = 0, retry_until = NULL,
                     next_attempt_at = $2, updated_at = $2
                 WHERE event_id = $1")
                .bind(event_id).bind(now).execute(&mut *tx).await?.rows_affected();
            let missing: Vec<String> = sqlx::query_scalar(
                "SELECT id FROM webhook_endpoints e WHERE enabled AND events LIKE '%' || $2 || '%'
                   AND livemode = (SELECT livemode FROM events WHERE id = $1)
                   AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = $1 AND d.endpoint_id = e.id)")
                .bind(event_id).bind(format!("\"{event_type}\"")).fetch_all(&mut *tx).await?;
            for endpoint in &missing {
                sqlx::query(
                    "INSERT INTO webhook_deliveries (id, event_id, endpoint_id, status, next_attempt_at,
                         created_at, updated_at)
                     VALUES ($1, $2, $3, 'pending', $4, $4, $4)")
                    .bind(ids::new(ids::DELIVERY)).bind(event_id).bind(endpoint).bind(now)
                    .execute(&mut *tx).await?;
                count += 1;
            }
            tx.commit().await?;
            Ok(count)
        })
    }

    /// Puts every failed (dead-lettered) delivery of an endpoint created at
    /// or after `since` back to pending with a fresh retry schedule.
    pub async fn replay_failed(&self, endpoint_id: &str, since: DateTime<Utc>) -> Result<u64> {
        let now = super::now();
        Ok(on_pool!(self, p => sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending', retry_step = 0, retry_until = NULL,
                 next_attempt_at = $3, updated_at = $3
             WHERE endpoint_id = $1 AND status = 'failed' AND created_at >= $2")
            .bind(endpoint_id).bind(since).bind(now).execute(p).await?.rows_affected()))
    }

    /// Pending deliveries to enabled endpoints and the creation time of the
    /// oldest.
    pub async fn outbox_stats(&self) -> Result<OutboxStats> {
        let (pending, oldest): (i64, Option<DateTime<Utc>>) = on_pool!(self, p => sqlx::query_as(
            "SELECT COUNT(*), MIN(d.created_at) FROM webhook_deliveries d
             JOIN webhook_endpoints e ON e.id = d.endpoint_id
             WHERE d.status = 'pending' AND e.enabled")
            .fetch_one(p).await)?;
        Ok(OutboxStats { pending, oldest })
    }
}
