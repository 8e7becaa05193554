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
//! delivery of the batch with the NOTIFY ([`super::notify`]) (arrays
//! through `unnest`, one prepared statement whatever the batch's size) and
//! COMMIT are paid once per batch.
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
//! A delivery to an endpoint is written already leased to this process's
//! worker, and handed to it after the commit, when the worker's
//! [`DirectLane`] is open and has room in its line (see
//! [`super::deliveries`]); the others are written for a claim, and only
//! they wake a worker (this one through [`super::Store::deliveries_written`],
//! the others by the NOTIFY).
//!
//! Must not: run anything but the call path's short transitions (every job
//! queued behind a batch waits for it), or hold a transaction across
//! anything but its own statements.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use sqlx::postgres::PgPool;
use sqlx::{Postgres, Transaction};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::calls::{CallRecord, Emit};
use super::commit::{Value, bind_values};
use super::deliveries::{Claimed, DirectLane, Handed};
use super::events::{Fanout, NewEvent, subscription_pattern};
use super::notify::Notices;
use super::{Result, StoreError};

/// Jobs committed together at most. Bounds how long the first job of a
/// batch waits for the last one's statement.
const MAX_BATCH: usize = 256;

/// Every event of a batch and every delivery, and the NOTIFY
/// ([`super::notify`]), in one statement: the arrays are the columns
/// (`unnest` zips them), so the text never changes with the batch's size
/// and sqlx prepares it once per connection. The events go in the jobs'
/// order (`ORDER BY ord`), so their stream sequence follows it. The
/// deliveries' foreign key to the events is checked at the end of the
/// statement, when the events of the other CTE are in; the notice is
/// delivered when (and only if) the transaction commits.
const INSERT_EVENTS: &str = "WITH ev AS (
    INSERT INTO events (id, type, api_version, call_id, call_seq, payload, created_at, updated_at, livemode)
    SELECT id, type, api_version, call_id, call_seq, payload, created_at, created_at, livemode
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::text[], $7::timestamptz[], $12::bool[])
         WITH ORDINALITY AS t(id, type, api_version, call_id, call_seq, payload, created_at, livemode, ord)
    ORDER BY ord
    RETURNING 1),
dl AS (
    INSERT INTO webhook_deliveries (id, event_id, endpoint_id, status, next_attempt_at, created_at, updated_at,
        lease_until, lease_token)
    SELECT id, event_id, endpoint_id, 'pending', at, at, at, lease_until, lease_token
    FROM unnest($8::text[], $9::text[], $10::text[], $11::timestamptz[], $15::timestamptz[], $16::text[])
         AS d(id, event_id, endpoint_id, at, lease_until, lease_token)
    RETURNING 1)
SELECT pg_notify($13, $14)";

/// Every enabled endpoint, the event types it subscribes to (a JSON
/// array) and what a request to it needs (for a delivery handed to the
/// worker), read once a batch; matched as
/// [`super::events::SUBSCRIBED_ENDPOINTS`] matches one type.
const ENABLED_ENDPOINTS: &str =
    "SELECT id, events, livemode, url, secret, previous_secret, previous_secret_expires_at,
        include_transcript
     FROM webhook_endpoints WHERE enabled ORDER BY id";

/// A row of [`ENABLED_ENDPOINTS`].
#[derive(sqlx::FromRow)]
struct Endpoint {
    id: String,
    events: String,
    livemode: bool,
    url: String,
    secret: String,
    previous_secret: Option<String>,
    previous_secret_expires_at: Option<DateTime<Utc>>,
    include_transcript: bool,
}

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
    /// This process's webhook worker's lane, once it runs.
    lane: Arc<OnceLock<Arc<DirectLane>>>,
}

/// Handle to the collector task; cheap to clone.
#[derive(Clone)]
pub(crate) struct PgCommit {
    /// Unbounded: each caller awaits its own answer, so the queue is bounded
    /// by the call tasks waiting on it.
    queue: mpsc::UnboundedSender<Msg>,
    /// Shared with the writers: where fresh deliveries are handed.
    lane: Arc<OnceLock<Arc<DirectLane>>>,
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
        let lane = Arc::new(OnceLock::new());
        let shared = Arc::new(Shared {
            pool,
            deliveries,
            notices,
            lane: lane.clone(),
        });
        tokio::spawn(collect(rx, writers.max(1), shared));
        Self { queue, lane }
    }

    /// Hands this process's fresh deliveries to `lane` from now on; false
    /// if a lane was set before (it stays).
    pub(crate) fn set_lane(&self, lane: Arc<DirectLane>) -> bool {
        self.lane.set(lane).is_ok()
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

/// One transaction around `jobs`: the transitions (those of one statement
/// for several calls as one statement, [`batched_sql`]), then every event
/// and delivery with the NOTIFY, COMMIT. The outer error fails the whole
/// batch (rolled back when the transaction drops); the inner results are
/// each job's own (`NotFound` for a transition that matched no row).
async fn attempt(shared: &Shared, jobs: &[Job]) -> Result<Vec<Result<CallRecord>>> {
    // One statement without an event is atomic on its own: no BEGIN and
    // COMMIT around it.
    if let [job] = jobs
        && job.emit.is_none()
    {
        let row = bind_values!(sqlx::query_as::<_, CallRecord>(job.sql), &job.values)
            .fetch_optional(&shared.pool)
            .await?;
        return Ok(vec![row.ok_or(StoreError::NotFound)]);
    }
    let mut tx = shared.pool.begin().await?;
    let rows = transitions(&mut tx, jobs).await?;
    let mut outcomes = Vec::with_capacity(jobs.len());
    let mut events = Vec::new();
    // In the jobs' order: the events' stream sequence follows it.
    for (job, row) in jobs.iter().zip(rows) {
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
    let mut handed = Vec::new();
    if !events.is_empty() {
        let lane = shared.lane.get().map(|l| &**l);
        let written = write_events(&mut tx, &events, &shared.notices, lane).await?;
        // Counted before the commit, as the pool's transactions count
        // theirs: a caller that reads the counter after its reply sees
        // them. Handed ones need no claim, so they wake no one.
        if written.for_claim > 0 {
            shared
                .deliveries
                .fetch_add(written.for_claim as u64, Ordering::AcqRel);
        }
        handed = written.handed;
    }
    tx.commit().await?;
    // Rolled back (an error above), the handed rows are not there: their
    // places are dropped with them.
    if let Some(lane) = shared.lane.get() {
        for h in handed {
            lane.hand(h);
        }
    }
    Ok(outcomes)
}

/// Runs the transitions of `jobs` in `tx`; each job's row (`None`: no row
/// matched). Jobs of one statement run as one statement over arrays of
/// their values when the statement has a batched form: a transition is
/// then a row of a statement rather than a statement (a round trip and an
/// executor start-up on the server, a statement's work in sqlx). A
/// statement changes a row once, and two transitions of one call must run
/// in their order, so the jobs run in rounds: a call's first job in the
/// first, its second (a dialog write racing the end) in the next, and so
/// on.
async fn transitions(
    tx: &mut Transaction<'_, Postgres>,
    jobs: &[Job],
) -> Result<Vec<Option<CallRecord>>> {
    let mut rows: Vec<Option<CallRecord>> = vec![None; jobs.len()];
    // Each round: the jobs of each statement, in the order of their first.
    let mut rounds: Vec<Vec<(&'static str, Vec<usize>)>> = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(jobs.len());
    for (i, job) in jobs.iter().enumerate() {
        let Some(call) = call_of(job) else {
            // Not a call's transition: alone, in the first round.
            rounds.resize_with(rounds.len().max(1), Vec::new);
            rounds[0].push((job.sql, vec![i]));
            continue;
        };
        let n = seen.entry(call).or_insert(0);
        let round = *n;
        *n += 1;
        rounds.resize_with(rounds.len().max(round + 1), Vec::new);
        let groups = &mut rounds[round];
        match groups.iter_mut().find(|(sql, members)| {
            std::ptr::eq(*sql, job.sql) && call_of(&jobs[members[0]]).is_some()
        }) {
            Some((_, members)) => members.push(i),
            None => groups.push((job.sql, vec![i])),
        }
    }
    for (sql, members) in rounds.into_iter().flatten() {
        let batched = match members.as_slice() {
            [_, _, ..] => Batch::of(sql, members.iter().map(|&i| &jobs[i].values)),
            _ => None,
        };
        match batched {
            Some(batch) => {
                let found = batch.run(tx).await?;
                let by_call: HashMap<&str, usize> = members
                    .iter()
                    .filter_map(|&i| Some((call_of(&jobs[i])?, i)))
                    .collect();
                for record in found {
                    if let Some(&i) = by_call.get(record.id.as_str()) {
                        rows[i] = Some(record);
                    }
                }
            }
            None => {
                for i in members {
                    let job = &jobs[i];
                    rows[i] = bind_values!(sqlx::query_as::<_, CallRecord>(job.sql), &job.values)
                        .fetch_optional(&mut **tx)
                        .await?;
                }
            }
        }
    }
    Ok(rows)
}

/// The call a transition is about: its first value (`$1`, the call's id,
/// in every statement of `super::calls`).
fn call_of(job: &Job) -> Option<&str> {
    match job.values.first() {
        Some(Value::Text(Some(id))) => Some(id.as_str()),
        _ => None,
    }
}

/// One statement of `super::calls` for several calls: its `$n` are the
/// columns `j.pn` of `unnest` over one array per parameter.
struct Batch {
    sql: String,
    columns: Vec<Column>,
}

/// The values of one parameter, one per job.
enum Column {
    Text(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
    Time(Vec<Option<DateTime<Utc>>>),
    Bool(Vec<bool>),
}

impl Column {
    fn sql_type(&self) -> &'static str {
        match self {
            Column::Text(_) => "text",
            Column::Int(_) => "int8",
            Column::Time(_) => "timestamptz",
            Column::Bool(_) => "bool",
        }
    }

    /// Appends `v`; false when it is not of this column's type.
    fn push(&mut self, v: &Value) -> bool {
        match (self, v) {
            (Column::Text(c), Value::Text(x)) => c.push(x.clone()),
            (Column::Int(c), Value::Int(x)) => c.push(*x),
            (Column::Time(c), Value::Time(x)) => c.push(*x),
            (Column::Bool(c), Value::Bool(x)) => c.push(*x),
            _ => return false,
        }
        true
    }

    fn empty_like(v: &Value) -> Self {
        match v {
            Value::Text(_) => Column::Text(Vec::new()),
            Value::Int(_) => Column::Int(Vec::new()),
            Value::Time(_) => Column::Time(Vec::new()),
            Value::Bool(_) => Column::Bool(Vec::new()),
        }
    }
}

impl Batch {
    /// The batched form of `sql` over `values` (one list per job), or
    /// `None`: a statement of another shape, or values whose types differ
    /// between jobs.
    fn of<'a>(sql: &str, mut values: impl Iterator<Item = &'a Vec<Value>>) -> Option<Self> {
        let first = values.next()?;
        let mut columns: Vec<Column> = first.iter().map(Column::empty_like).collect();
        for (column, v) in columns.iter_mut().zip(first) {
            column.push(v);
        }
        for job in values {
            if job.len() != columns.len() {
                return None;
            }
            for (column, v) in columns.iter_mut().zip(job) {
                if !column.push(v) {
                    return None;
                }
            }
        }
        let types: Vec<&str> = columns.iter().map(Column::sql_type).collect();
        Some(Self {
            sql: batched_sql(sql, &types)?,
            columns,
        })
    }

    /// The rows the statement changed or wrote, in no particular order.
    async fn run(self, tx: &mut Transaction<'_, Postgres>) -> Result<Vec<CallRecord>> {
        let mut query = sqlx::query_as::<_, CallRecord>(sqlx::AssertSqlSafe(self.sql));
        for column in self.columns {
            query = match column {
                Column::Text(c) => query.bind(c),
                Column::Int(c) => query.bind(c),
                Column::Time(c) => query.bind(c),
                Column::Bool(c) => query.bind(c),
            };
        }
        Ok(query.fetch_all(&mut **tx).await?)
    }
}

/// `sql` (a transition of `super::calls`: an `UPDATE calls ... WHERE ...
/// RETURNING` without sub-select, or an `INSERT INTO calls ... VALUES (...)
/// RETURNING`) for many calls: parameter `$n` of type `types[n - 1]`
/// becomes column `j.pn` of `unnest($1::type[], ...) AS j(p1, ...)`, the
/// arrays zipped (PostgreSQL, "unnest ... multiple arrays"): an UPDATE
/// reads them in a FROM (the call's row matched by `id = j.p1`), an INSERT
/// selects its rows from them. `None` for any other shape (run job by
/// job).
fn batched_sql(sql: &str, types: &[&str]) -> Option<String> {
    let arrays: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(i, t)| format!("${}::{t}[]", i + 1))
        .collect();
    let names: Vec<String> = (1..=types.len()).map(|i| format!("p{i}")).collect();
    let source = format!("unnest({}) AS j({})", arrays.join(", "), names.join(", "));
    let sql = sql.trim_start();
    if sql.contains("SELECT") {
        return None;
    }
    if sql.starts_with("UPDATE calls SET ") && sql.matches("WHERE").count() == 1 {
        let (set, filter) = sql.split_at(sql.find("WHERE")?);
        return Some(format!(
            "{} FROM {source} {}",
            columns(set),
            columns(filter)
        ));
    }
    if sql.starts_with("INSERT INTO calls ") {
        let open = sql.find("VALUES (")?;
        let list = open + "VALUES (".len();
        let close = list + sql[list..].find(')')?;
        return Some(format!(
            "{} SELECT {} FROM {source}{}",
            &sql[..open],
            columns(&sql[list..close]),
            &sql[close + 1..]
        ));
    }
    None
}

/// `text` with each parameter `$n` replaced by the column `j.pn`.
fn columns(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push_str("j.p");
        } else {
            out.push(c);
        }
    }
    out
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
    /// Set for a delivery written leased to this process's worker.
    delivery_lease_until: Vec<Option<DateTime<Utc>>>,
    delivery_lease_token: Vec<Option<String>>,
    livemode: Vec<bool>,
}

/// What [`write_events`] wrote: deliveries left for a claim, and those
/// leased to this process's worker, to hand over once committed.
struct Written {
    for_claim: usize,
    handed: Vec<Handed>,
}

/// Writes `events` and their deliveries, and sends the notice, in one
/// statement. A delivery to a subscribed endpoint is leased to this
/// process's worker when `lane` has room for it.
async fn write_events(
    tx: &mut Transaction<'_, Postgres>,
    events: &[NewEvent],
    notices: &Notices,
    lane: Option<&DirectLane>,
) -> Result<Written> {
    let mut endpoints: Option<Vec<Endpoint>> = None;
    let mut c = Columns::default();
    let mut handed = Vec::new();
    let now = super::now();
    // One lease token for the batch, as one claim has one.
    let mut token: Option<String> = None;
    for ev in events {
        c.id.push(ev.id.clone());
        c.event_type.push(ev.event_type.as_str());
        c.api_version.push(ev.api_version.clone());
        c.call_id.push(ev.call_id.clone());
        c.call_seq.push(ev.call_seq);
        c.payload.push(ev.payload.clone());
        c.created_at.push(ev.created_at);
        c.livemode.push(ev.livemode);
        match &ev.fanout {
            Fanout::Endpoint(id) => {
                c.delivery_id.push(crate::ids::new(crate::ids::DELIVERY));
                c.delivery_event.push(ev.id.clone());
                c.delivery_endpoint.push(id.clone());
                c.delivery_at.push(ev.created_at);
                c.delivery_lease_until.push(None);
                c.delivery_lease_token.push(None);
            }
            Fanout::Subscribed => {
                if endpoints.is_none() {
                    endpoints = Some(
                        sqlx::query_as(ENABLED_ENDPOINTS)
                            .fetch_all(&mut **tx)
                            .await?,
                    );
                }
                let pattern = subscription_pattern(ev.event_type);
                for e in endpoints.iter().flatten() {
                    if e.livemode != ev.livemode || !e.events.contains(&pattern) {
                        continue;
                    }
                    let id = crate::ids::new(crate::ids::DELIVERY);
                    c.delivery_event.push(ev.id.clone());
                    c.delivery_endpoint.push(e.id.clone());
                    c.delivery_at.push(ev.created_at);
                    match lane.and_then(|l| Some((l, l.reserve()?))) {
                        Some((lane, place)) => {
                            let token = token
                                .get_or_insert_with(|| crate::ids::new("lease"))
                                .clone();
                            let lease_until = lane.lease_until(now);
                            c.delivery_lease_until.push(Some(lease_until));
                            c.delivery_lease_token.push(Some(token.clone()));
                            handed.push(Handed {
                                claimed: handed_claim(ev, e, &id, token),
                                lease_until,
                                place,
                            });
                        }
                        None => {
                            c.delivery_lease_until.push(None);
                            c.delivery_lease_token.push(None);
                        }
                    }
                    c.delivery_id.push(id);
                }
            }
        }
    }
    let for_claim = c.delivery_id.len() - handed.len();
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
        .bind(super::notify::CHANNEL)
        // Only deliveries left for a claim concern the other daemons.
        .bind(notices.payload(for_claim > 0))
        .bind(&c.delivery_lease_until)
        .bind(&c.delivery_lease_token)
        .execute(&mut **tx)
        .await?;
    Ok(Written { for_claim, handed })
}

/// What a claim of delivery `id` of `ev` to endpoint `e`, leased with
/// `token`, would have read: a first attempt.
fn handed_claim(ev: &NewEvent, e: &Endpoint, id: &str, token: String) -> Claimed {
    Claimed {
        delivery_id: id.to_owned(),
        lease_token: token,
        attempts: 0,
        retry_step: 0,
        retry_until: None,
        event_id: ev.id.clone(),
        event_created_at: ev.created_at,
        payload: ev.payload.clone(),
        endpoint_id: e.id.clone(),
        url: e.url.clone(),
        secret: e.secret.clone(),
        previous_secret: e.previous_secret.clone(),
        previous_secret_expires_at: e.previous_secret_expires_at,
        include_transcript: e.include_transcript,
        event_type: ev.event_type.as_str().to_owned(),
        call_id: ev.call_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_reads_its_values_from_arrays() {
        let sql = "UPDATE calls SET status = $2, ended_at = $3, event_seq = event_seq + 1
     WHERE id = $1 AND ended_at IS NULL RETURNING id, status";
        assert_eq!(
            batched_sql(sql, &["text", "text", "timestamptz"]).as_deref(),
            Some(
                "UPDATE calls SET status = j.p2, ended_at = j.p3, event_seq = event_seq + 1
      FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS j(p1, p2, p3) \
WHERE id = j.p1 AND ended_at IS NULL RETURNING id, status"
            )
        );
    }

    #[test]
    fn an_insert_selects_its_rows_from_arrays() {
        let sql = "INSERT INTO calls (id, created_at, updated_at, event_seq, node)
     VALUES ($1, $2, $2, 1, $10) RETURNING id";
        let types = ["text"; 10];
        let batched = batched_sql(sql, &types).unwrap();
        assert!(batched.starts_with(
            "INSERT INTO calls (id, created_at, updated_at, event_seq, node)
      SELECT j.p1, j.p2, j.p2, 1, j.p10 FROM unnest($1::text[], $2::text[],"
        ));
        assert!(batched.ends_with("AS j(p1, p2, p3, p4, p5, p6, p7, p8, p9, p10) RETURNING id"));
    }

    #[test]
    fn other_shapes_run_job_by_job() {
        // A fenced insert (a sub-select), a statement of another table.
        for sql in [
            "INSERT INTO calls (id) SELECT $1 WHERE EXISTS (SELECT 1 FROM x) RETURNING id",
            "UPDATE events SET payload = $2 WHERE id = $1",
        ] {
            assert_eq!(batched_sql(sql, &["text", "text"]), None, "{sql}");
        }
    }
}
