//! Group commit for SQLite: one thread owns a connection of its own and runs
//! the call path's store work (call transitions with their outbox events,
//! the inbound number lookup), the work of many calls in one transaction.
//!
//! Why not sqlx here: sqlx runs each SQLite statement on its connection's
//! worker thread and wakes the awaiting task when it is done, two thread
//! wake-ups per statement. On the daemon's runtime under load the awaiting
//! task also waits behind hundreds of call tasks before it sends its next
//! statement, all the while holding the one connection. Measured at 1,000
//! calls a second: 0.19 ms of SQL per transaction, 1.26 s (p50) to get the
//! connection; and, with the transactions moved to a thread of their own,
//! half the daemon's CPU in the two threads' hand-offs. So this thread
//! calls SQLite itself through rusqlite: a statement is a function call,
//! and one commit (one WAL write) serves every job queued meanwhile.
//!
//! Each writing job runs inside a savepoint of the batch's transaction
//! (SQLite, "SAVEPOINT"): a job that fails is rolled back alone and its
//! caller gets its error; the others commit. A job's result reaches its
//! caller only after the commit, so what a caller is told is stored is.
//!
//! The statements are the store's own texts, the same for both backends
//! (`$N` parameters, bound here by name), and values are written as sqlx
//! writes them ([`Value`]), so the pool reads what this thread wrote. The
//! pool's connection stays for everything else (the API, the webhook
//! worker, campaigns); the two meet in SQLite's busy handler only when both
//! write at once, and a batch takes the write lock first (`BEGIN
//! IMMEDIATE`) so it never fails halfway on a lock.
//!
//! Must not: run anything but short store work (no network, no waiting on
//! other tasks): every job queued behind one waits for it. PostgreSQL does
//! not use this: its connections work in parallel.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::types::{ToSqlOutput, Type};
use rusqlite::{Connection, OpenFlags, Row, ToSql};
use tokio::sync::{mpsc, oneshot};

use super::events::{Fanout, NewEvent};
use super::{Result, StoreError};
use crate::model::EventType;

/// Jobs committed together at most. Bounds how long the first job of a
/// batch waits for the last.
const MAX_BATCH: usize = 256;

/// The least time between two commits. A commit writes every page its
/// batch dirtied to the WAL, whether one job dirtied it or fifty, so under
/// load the batch is let fill for the rest of this interval: fewer commits
/// for the same calls. A job that finds the thread idle waits for nothing.
const MIN_COMMIT_INTERVAL: Duration = Duration::from_millis(2);

/// A job's work, run on the commit thread inside the batch's transaction.
pub(crate) type Work<T> = Box<dyn FnOnce(&mut Batch<'_>) -> Result<T> + Send>;

/// A value bound to a statement, owned so that a job can carry it to the
/// commit thread; PostgreSQL binds the same values ([`bind_values`]).
#[derive(Debug, Clone)]
pub(crate) enum Value {
    Text(Option<String>),
    Int(Option<i64>),
    Time(Option<DateTime<Utc>>),
    /// A flag (`livemode`): INTEGER 0/1 on SQLite, BOOLEAN on PostgreSQL.
    Bool(bool),
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Text(Some(s.to_owned()))
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Text(Some(s))
    }
}

impl From<Option<&str>> for Value {
    fn from(s: Option<&str>) -> Self {
        Value::Text(s.map(str::to_owned))
    }
}

impl From<Option<i64>> for Value {
    fn from(i: Option<i64>) -> Self {
        Value::Int(i)
    }
}

impl From<DateTime<Utc>> for Value {
    fn from(t: DateTime<Utc>) -> Self {
        Value::Time(Some(t))
    }
}

impl From<Option<DateTime<Utc>>> for Value {
    fn from(t: Option<DateTime<Utc>>) -> Self {
        Value::Time(t)
    }
}

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        use rusqlite::types::Value as Sql;
        Ok(match self {
            Value::Text(s) => s.to_sql()?,
            Value::Int(i) => i.to_sql()?,
            Value::Bool(b) => b.to_sql()?,
            // As sqlx-sqlite encodes a DateTime<Utc>, so that text
            // comparisons and sqlx's reads agree.
            Value::Time(t) => ToSqlOutput::Owned(match t {
                Some(t) => Sql::Text(t.to_rfc3339_opts(SecondsFormat::AutoSi, false)),
                None => Sql::Null,
            }),
        })
    }
}

/// Binds `values` to a sqlx query (PostgreSQL's side of a statement that
/// SQLite runs here).
macro_rules! bind_values {
    ($query:expr, $values:expr) => {{
        let mut query = $query;
        for value in $values {
            query = match value {
                $crate::store::commit::Value::Text(s) => query.bind(s.as_deref()),
                $crate::store::commit::Value::Int(i) => query.bind(*i),
                $crate::store::commit::Value::Time(t) => query.bind(*t),
                $crate::store::commit::Value::Bool(b) => query.bind(*b),
            };
        }
        query
    }};
}
pub(crate) use bind_values;

/// A record read from a row of the commit thread's connection, each field
/// from the column of its name (as sqlx's `FromRow` reads it).
pub(crate) trait FromSqlite: Sized {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Self>;
}

/// A timestamp column, as sqlx-sqlite wrote it (RFC 3339).
pub(crate) fn time(row: &Row<'_>, column: &str) -> rusqlite::Result<DateTime<Utc>> {
    let text: String = row.get(column)?;
    parse_time(&text, column)
}

/// A column holding one of a type's labels (a status, a direction...).
pub(crate) fn label<T>(row: &Row<'_>, column: &str) -> rusqlite::Result<T>
where
    T: std::str::FromStr<Err = crate::model::UnknownLabel>,
{
    let text: String = row.get(column)?;
    parse_label(&text)
}

/// A nullable column holding one of a type's labels.
pub(crate) fn label_opt<T>(row: &Row<'_>, column: &str) -> rusqlite::Result<Option<T>>
where
    T: std::str::FromStr<Err = crate::model::UnknownLabel>,
{
    let text: Option<String> = row.get(column)?;
    text.map(|t| parse_label(&t)).transpose()
}

fn parse_label<T>(text: &str) -> rusqlite::Result<T>
where
    T: std::str::FromStr<Err = crate::model::UnknownLabel>,
{
    text.parse()
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, Type::Text, Box::new(e)))
}

/// A nullable timestamp column.
pub(crate) fn time_opt(row: &Row<'_>, column: &str) -> rusqlite::Result<Option<DateTime<Utc>>> {
    let text: Option<String> = row.get(column)?;
    text.map(|t| parse_time(&t, column)).transpose()
}

fn parse_time(text: &str, column: &str) -> rusqlite::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(
                0,
                Type::Text,
                format!("column {column}: {e}").into(),
            )
        })
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ffi;
        match &e {
            rusqlite::Error::SqliteFailure(f, msg) => {
                let msg = msg.clone().unwrap_or_else(|| f.to_string());
                match f.extended_code {
                    ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                        StoreError::Conflict(msg)
                    }
                    ffi::SQLITE_CONSTRAINT_FOREIGNKEY => StoreError::InUse(msg),
                    _ => StoreError::Sqlite(e),
                }
            }
            _ => StoreError::Sqlite(e),
        }
    }
}

/// The open transaction of a batch, as a job sees it.
pub(crate) struct Batch<'c> {
    conn: &'c Connection,
    /// Subscribed endpoints per event type, read once a batch: while the
    /// batch holds the write lock nothing else changes them.
    subscribers: HashMap<(EventType, bool), Vec<String>>,
    /// Deliveries written by this batch's jobs.
    deliveries: usize,
}

impl Batch<'_> {
    /// Runs `sql` with `values` and maps its first row, if any.
    pub(crate) fn row<T: FromSqlite>(&self, sql: &str, values: &[Value]) -> Result<Option<T>> {
        let mut stmt = self.prepare(sql, values)?;
        Ok(stmt.raw_query().next()?.map(T::from_row).transpose()?)
    }

    /// Runs `sql` with `values`; the number of rows changed.
    pub(crate) fn execute(&self, sql: &str, values: &[Value]) -> Result<usize> {
        Ok(self.prepare(sql, values)?.raw_execute()?)
    }

    /// A cached statement with `values` bound to its `$N` parameters by
    /// name (SQLite numbers parameters by first appearance, not by N).
    fn prepare(&self, sql: &str, values: &[Value]) -> Result<rusqlite::CachedStatement<'_>> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        for i in 1..=stmt.parameter_count() {
            let n = stmt
                .parameter_name(i)
                .and_then(|name| name.strip_prefix('$'))
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| StoreError::Corrupt(format!("parameter {i} of {sql:?}")))?;
            let value = values
                .get(n - 1)
                .ok_or_else(|| StoreError::Corrupt(format!("no value for ${n} of {sql:?}")))?;
            stmt.raw_bind_parameter(i, value)?;
        }
        Ok(stmt)
    }

    /// Writes an event and its deliveries, as [`super::events`] does on
    /// the pool.
    pub(crate) fn write_event(&mut self, ev: &NewEvent) -> Result<()> {
        self.execute(
            super::events::INSERT_EVENT,
            &[
                ev.id.as_str().into(),
                ev.event_type.as_str().into(),
                ev.api_version.as_str().into(),
                ev.call_id.as_deref().into(),
                ev.call_seq.into(),
                ev.payload.as_str().into(),
                ev.created_at.into(),
                ev.livemode.into(),
            ],
        )?;
        let endpoints = match &ev.fanout {
            Fanout::Subscribed => self.subscribed(ev.event_type, ev.livemode)?,
            Fanout::Endpoint(id) => vec![id.clone()],
        };
        for endpoint in &endpoints {
            self.execute(
                super::events::INSERT_DELIVERY,
                &[
                    crate::ids::new(crate::ids::DELIVERY).into(),
                    ev.id.as_str().into(),
                    endpoint.as_str().into(),
                    ev.created_at.into(),
                ],
            )?;
        }
        self.deliveries += endpoints.len();
        Ok(())
    }

    fn subscribed(&mut self, event_type: EventType, livemode: bool) -> Result<Vec<String>> {
        if let Some(ids) = self.subscribers.get(&(event_type, livemode)) {
            return Ok(ids.clone());
        }
        let mut ids = Vec::new();
        {
            let mut stmt = self.prepare(
                super::events::SUBSCRIBED_ENDPOINTS,
                &[
                    super::events::subscription_pattern(event_type).into(),
                    livemode.into(),
                ],
            )?;
            let mut rows = stmt.raw_query();
            while let Some(row) = rows.next()? {
                ids.push(row.get(0)?);
            }
        }
        self.subscribers.insert((event_type, livemode), ids.clone());
        Ok(ids)
    }
}

/// A queued job of any result type.
trait Job: Send {
    /// Whether the job writes (and so needs a savepoint).
    fn writes(&self) -> bool;
    /// Runs the work; `true` when it succeeded and its writes stay.
    fn run(&mut self, batch: &mut Batch<'_>) -> bool;
    /// Tells the caller, once the batch committed or failed.
    fn finish(self: Box<Self>, committed: std::result::Result<(), &str>);
}

struct Pending<T> {
    work: Option<Work<T>>,
    writes: bool,
    result: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T: Send + 'static> Job for Pending<T> {
    fn writes(&self) -> bool {
        self.writes
    }

    fn run(&mut self, batch: &mut Batch<'_>) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        let result = work(batch);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, committed: std::result::Result<(), &str>) {
        let result = match (self.result, committed) {
            // A failed job's error is its own, whatever became of the batch.
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(value)), Ok(())) => Ok(value),
            (Some(Ok(_)) | None, Err(why)) => Err(failed(why)),
            (None, Ok(())) => Err(failed("job did not run")),
        };
        // The caller may have gone (its call ended); the commit stands.
        let _ = self.reply.send(result);
    }
}

fn failed(why: &str) -> StoreError {
    StoreError::Unavailable(format!("group commit: {why}"))
}

enum Msg {
    Job(Box<dyn Job>),
    /// Close the connection (checkpointing the WAL) and stop.
    Close(oneshot::Sender<()>),
}

/// Handle to the commit thread; cheap to clone. The thread stops when the
/// store is closed or the last handle is dropped.
#[derive(Clone)]
pub(crate) struct GroupCommit {
    /// Jobs for the thread, and the close that ends it. Unbounded: a job's
    /// caller awaits its own answer, so the queue is bounded by the call
    /// tasks waiting on it.
    queue: mpsc::UnboundedSender<Msg>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupCommit")
    }
}

impl GroupCommit {
    /// Opens the thread's connection to the database file at `path` (which
    /// the pool has created and migrates) and starts the thread, which adds
    /// the deliveries its jobs write to `deliveries` (the store's counter).
    pub(crate) fn start(path: &Path, deliveries: Arc<AtomicU64>) -> Result<Self> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // The pool's settings (see `Store::connect`): WAL is the file's,
        // the rest are the connection's.
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Savepoints keep their journal in a temporary file by default: a
        // write of every page each job touched (SQLite, "Temporary Files").
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.set_prepared_statement_cache_capacity(64);
        let (queue, jobs) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("sqlite-commit".into())
            .spawn(move || serve(conn, jobs, &deliveries))
            .map_err(|e| StoreError::Unavailable(format!("commit thread: {e}")))?;
        Ok(Self { queue })
    }

    /// Runs `work` in the next batch, in a savepoint of its own; its result
    /// once the batch has committed.
    pub(crate) async fn write<T: Send + 'static>(&self, work: Work<T>) -> Result<T> {
        self.submit(work, true).await
    }

    /// Runs read-only `work` in the next batch (no savepoint).
    pub(crate) async fn read<T: Send + 'static>(&self, work: Work<T>) -> Result<T> {
        self.submit(work, false).await
    }

    async fn submit<T: Send + 'static>(&self, work: Work<T>, writes: bool) -> Result<T> {
        let (reply, result) = oneshot::channel();
        let job = Pending {
            work: Some(work),
            writes,
            result: None,
            reply,
        };
        self.queue
            .send(Msg::Job(Box::new(job)))
            .map_err(|_| failed("the store is closed"))?;
        result
            .await
            .map_err(|_| failed("the commit thread stopped"))?
    }

    /// Closes the connection once the jobs queued before have run.
    pub(crate) async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.queue.send(Msg::Close(done)).is_ok() {
            let _ = closed.await;
        }
    }
}

/// The thread's loop: takes what is queued, up to [`MAX_BATCH`], and runs
/// it as one transaction.
fn serve(conn: Connection, mut queue: mpsc::UnboundedReceiver<Msg>, deliveries: &AtomicU64) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    let mut last_commit: Option<Instant> = None;
    while let Some(first) = queue.blocking_recv() {
        // Busy (the last commit was moments ago): let the batch fill for
        // the rest of the interval. Idle: commit at once.
        if let Some(wait) = last_commit.and_then(|t| MIN_COMMIT_INTERVAL.checked_sub(t.elapsed())) {
            std::thread::sleep(wait);
        }
        let mut close = None;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Job(job) => batch.push(job),
                Msg::Close(done) => {
                    close = Some(done);
                    break;
                }
            }
            if batch.len() < MAX_BATCH {
                next = queue.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let committed = run_batch(&conn, &mut batch, deliveries);
            last_commit = Some(Instant::now());
            let committed = committed.as_ref().map_err(|e| e.to_string());
            for job in batch.drain(..) {
                job.finish(committed.as_ref().map(|_| ()).map_err(String::as_str));
            }
        }
        if let Some(done) = close {
            if let Err((_, e)) = conn.close() {
                tracing::warn!(error = %e, "closing the commit connection");
            }
            let _ = done.send(());
            // Jobs sent after the close find the queue gone.
            return;
        }
    }
}

/// One transaction around `batch`: `BEGIN IMMEDIATE`, each writing job in
/// a savepoint (rolled back to when the job fails), `COMMIT`.
fn run_batch(
    conn: &Connection,
    jobs: &mut [Box<dyn Job>],
    deliveries: &AtomicU64,
) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let mut batch = Batch {
        conn,
        subscribers: HashMap::new(),
        deliveries: 0,
    };
    let mut outcome = Ok(());
    for job in jobs.iter_mut() {
        let writes = job.writes();
        // Cached: one statement a job, not worth parsing each time.
        let savepoint = || conn.prepare_cached("SAVEPOINT job")?.execute([]);
        if writes && let Err(e) = savepoint() {
            outcome = Err(e);
            break;
        }
        let before = batch.deliveries;
        // A failed job leaves the transaction open; only its own writes go.
        // The savepoints pile up until the commit, which releases them all.
        // A job that panics fails alone too: the thread serves every call.
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.run(&mut batch)));
        if !ran.unwrap_or(false) {
            batch.deliveries = before;
            if writes && let Err(e) = conn.execute_batch("ROLLBACK TO job") {
                outcome = Err(e);
                break;
            }
        }
    }
    if outcome.is_ok() {
        // Counted before the commit, as the pool's transactions count
        // theirs: a caller that reads the counter after its reply sees them.
        deliveries.fetch_add(batch.deliveries as u64, Ordering::AcqRel);
        outcome = conn.execute_batch("COMMIT");
    }
    if outcome.is_err() && !conn.is_autocommit() {
        // Leave no transaction open for the next batch.
        let _ = conn.execute_batch("ROLLBACK");
    }
    outcome
}

/// Runs `work` on a connection of its own, as a job would, for tests.
#[cfg(test)]
pub(crate) fn with_connection<T>(
    path: &Path,
    work: impl FnOnce(&mut Batch<'_>) -> Result<T>,
) -> Result<T> {
    let conn = Connection::open(path)?;
    let mut batch = Batch {
        conn: &conn,
        subscribers: HashMap::new(),
        deliveries: 0,
    };
    work(&mut batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_bind_by_their_number_not_their_place() {
        let dir = tempfile::tempdir().unwrap();
        let got: Option<(i64, String)> = with_connection(&dir.path().join("t.db"), |b| {
            struct Pair(i64, String);
            impl FromSqlite for Pair {
                fn from_row(row: &Row<'_>) -> rusqlite::Result<Self> {
                    Ok(Pair(row.get(0)?, row.get(1)?))
                }
            }
            Ok(
                b.row::<Pair>("SELECT $2, $1", &["one".into(), Some(2).into()])?
                    .map(|p| (p.0, p.1)),
            )
        })
        .unwrap();
        assert_eq!(got, Some((2, "one".to_owned())));
    }

    /// A job that fails after writing, or panics, is undone alone: the
    /// jobs batched with it commit and their callers get their results.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_job_is_rolled_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t (n INTEGER PRIMARY KEY)")
            .unwrap();
        let deliveries = Arc::new(AtomicU64::new(0));
        let commit = GroupCommit::start(&path, deliveries).unwrap();
        let insert = |n: i64, fail: bool, panic: bool| {
            let commit = commit.clone();
            tokio::spawn(async move {
                commit
                    .write(Box::new(move |b| {
                        b.execute("INSERT INTO t (n) VALUES ($1)", &[Some(n).into()])?;
                        assert!(!panic, "job {n} panics");
                        if fail {
                            return Err(StoreError::Corrupt(format!("job {n} fails")));
                        }
                        Ok(n)
                    }))
                    .await
            })
        };
        // Enough at once that several share a batch.
        let jobs: Vec<_> = (1..=60)
            .map(|n| insert(n, n % 7 == 0, n % 11 == 0))
            .collect();
        for (n, job) in (1..=60).zip(jobs) {
            let result = job.await.unwrap();
            if n % 7 == 0 || n % 11 == 0 {
                assert!(result.is_err(), "job {n} should have failed");
            } else {
                assert_eq!(result.unwrap(), n);
            }
        }
        commit.close().await;
        let kept: Vec<i64> = Connection::open(&path)
            .unwrap()
            .prepare("SELECT n FROM t ORDER BY n")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let expected: Vec<i64> = (1..=60).filter(|n| n % 7 != 0 && n % 11 != 0).collect();
        assert_eq!(kept, expected);
        // Closed: later work is refused, not lost silently.
        assert!(matches!(
            commit.write(Box::new(|_| Ok(()))).await,
            Err(StoreError::Unavailable(_))
        ));
    }

    #[test]
    fn times_are_written_as_sqlx_writes_them() {
        let t = DateTime::from_timestamp_micros(1_764_513_648_123_456).unwrap();
        let value = Value::Time(Some(t));
        let out = value.to_sql().unwrap();
        let ToSqlOutput::Owned(rusqlite::types::Value::Text(text)) = out else {
            panic!("not text: {out:?}");
        };
        assert_eq!(text, "2025-11-30T14:40:48.123456+00:00");
        assert_eq!(parse_time(&text, "t").unwrap(), t);
    }
}
