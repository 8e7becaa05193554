//! The store: every SQL statement agentline runs, for SQLite (the embedded
//! default) and PostgreSQL (several nodes), one repo file per aggregate.
//!
//! Both backends run the same statements: `$N` placeholders work on both, and
//! the schemas in `migrations/{sqlite,postgres}` have the same tables and
//! columns. [`on_pool!`] runs one statement text on whichever pool is open, so
//! a query is written once and type-checked against both drivers. We do not
//! use sqlx's `Any` driver because it cannot decode timestamps, and we do not
//! use the `query!` macros because they need a database at compile time.
//!
//! Must not: know HTTP, SIP or JSON schemas. Callers get typed records and a
//! [`StoreError`] that says what they can do about it (not found, conflict,
//! in use); driver errors stay inside [`StoreError::Database`].

pub mod agents;
pub mod analytics;
pub mod audio;
pub mod audit;
pub mod call_attempts;
pub mod calls;
pub mod campaigns;
pub mod chat;
mod commit;
pub mod contacts;
pub mod credentials;
pub mod deliveries;
pub mod dnc;
pub mod events;
pub mod keys;
pub mod modes;
pub mod nodes;
pub mod notify;
pub mod numbers;
mod pg_commit;
pub mod rate_limits;
pub mod recordings;
pub mod transcripts;
pub mod usage;
pub mod web_calls;
pub mod webhooks;

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{SqlSafeStr, error::ErrorKind};

/// Runs `$body` with `$pool` bound to the open pool, whichever backend it is.
/// The body is compiled once per backend, so both must accept it.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            $crate::store::Pool::Sqlite($pool) => $body,
            $crate::store::Pool::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

/// The open connection pool.
#[derive(Clone, Debug)]
pub enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Handle to the store; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    /// The sqlx pool: every read, and the writes off the call path (API,
    /// webhook worker, campaigns); on PostgreSQL the call path's too.
    pub pool: Pool,
    /// SQLite only: the thread that commits the call path's writes in
    /// batches ([`commit`]).
    commit: Option<commit::GroupCommit>,
    /// PostgreSQL only: the task that commits the call transitions in
    /// batches ([`pg_commit`]).
    pg_commit: Option<pg_commit::PgCommit>,
    /// PostgreSQL only: the NOTIFY sent with every event ([`notify`]).
    notices: Option<notify::Notices>,
    /// This daemon's name, written on the calls it runs (`None` for the
    /// CLI, which runs none); see [`Store::set_node`].
    node: Option<Arc<str>>,
    /// Webhook deliveries this process has written (counted before their
    /// transaction commits): the outbox wakes its worker only when an
    /// event of its own added some (see [`Store::deliveries_written`]).
    deliveries_written: Arc<AtomicU64>,
}

/// What a caller can do about a failed store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A unique constraint refused the write (for example a number that is
    /// already provisioned).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A row is still referenced (for example an agent bound to a number).
    #[error("in use: {0}")]
    InUse(String),
    #[error("database: {0}")]
    Database(#[source] sqlx::Error),
    /// An error of the group commit's own SQLite connection ([`commit`]).
    #[error("database: {0}")]
    Sqlite(#[source] rusqlite::Error),
    /// The store cannot take work (it is closed, or a batch's commit
    /// failed).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(db) => match db.kind() {
                ErrorKind::UniqueViolation => StoreError::Conflict(db.message().to_string()),
                ErrorKind::ForeignKeyViolation => StoreError::InUse(db.message().to_string()),
                _ => StoreError::Database(e),
            },
            _ => StoreError::Database(e),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One page of a listing and the total number of matching rows.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: i64,
}

/// Where a listing starts and how long it is.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub limit: i64,
    pub offset: i64,
}

fn migrations(sources: &'static [(i64, &'static str, &'static str)]) -> Migrator {
    let migrations = sources
        .iter()
        .map(|(version, description, sql)| {
            Migration::new(
                *version,
                Cow::Borrowed(*description),
                MigrationType::Simple,
                (*sql).into_sql_str(),
                false,
            )
        })
        .collect::<Vec<_>>();
    Migrator {
        migrations: Cow::Owned(migrations),
        ..Migrator::DEFAULT
    }
}

/// The SQLite migrations, embedded in the binary.
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "webhooks",
        include_str!("../../migrations/sqlite/0002_webhooks.sql"),
    ),
    (
        4,
        "chat",
        include_str!("../../migrations/sqlite/0004_chat.sql"),
    ),
    (
        5,
        "campaigns",
        include_str!("../../migrations/sqlite/0005_campaigns.sql"),
    ),
    (
        6,
        "transcripts",
        include_str!("../../migrations/sqlite/0006_transcripts.sql"),
    ),
    (
        7,
        "screening",
        include_str!("../../migrations/sqlite/0007_screening.sql"),
    ),
    (
        8,
        "call node",
        include_str!("../../migrations/sqlite/0008_call_node.sql"),
    ),
    (
        9,
        "call campaign attempt",
        include_str!("../../migrations/sqlite/0009_call_campaign_attempt.sql"),
    ),
    (
        10,
        "call context",
        include_str!("../../migrations/sqlite/0010_call_context.sql"),
    ),
    (
        11,
        "call results",
        include_str!("../../migrations/sqlite/0011_call_results.sql"),
    ),
    (
        12,
        "scopes and audit",
        include_str!("../../migrations/sqlite/0012_scopes_audit.sql"),
    ),
    (
        13,
        "security",
        include_str!("../../migrations/sqlite/0013_security.sql"),
    ),
    (
        14,
        "cluster",
        include_str!("../../migrations/sqlite/0014_cluster.sql"),
    ),
    (
        15,
        "api rate windows",
        include_str!("../../migrations/sqlite/0015_api_rate_windows.sql"),
    ),
    (
        16,
        "test mode",
        include_str!("../../migrations/sqlite/0016_test_mode.sql"),
    ),
    (
        17,
        "recordings",
        include_str!("../../migrations/sqlite/0017_recordings.sql"),
    ),
    (
        18,
        "recording settings",
        include_str!("../../migrations/sqlite/0018_recording_settings.sql"),
    ),
    (
        19,
        "call attempts",
        include_str!("../../migrations/sqlite/0019_call_attempts.sql"),
    ),
    (
        21,
        "web calls",
        include_str!("../../migrations/sqlite/0021_web_calls.sql"),
    ),
];

/// The PostgreSQL migrations, embedded in the binary.
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "webhooks",
        include_str!("../../migrations/postgres/0002_webhooks.sql"),
    ),
    (
        4,
        "chat",
        include_str!("../../migrations/postgres/0004_chat.sql"),
    ),
    (
        5,
        "campaigns",
        include_str!("../../migrations/postgres/0005_campaigns.sql"),
    ),
    (
        6,
        "transcripts",
        include_str!("../../migrations/postgres/0006_transcripts.sql"),
    ),
    (
        7,
        "screening",
        include_str!("../../migrations/postgres/0007_screening.sql"),
    ),
    (
        8,
        "call node",
        include_str!("../../migrations/postgres/0008_call_node.sql"),
    ),
    (
        9,
        "call campaign attempt",
        include_str!("../../migrations/postgres/0009_call_campaign_attempt.sql"),
    ),
    (
        10,
        "call context",
        include_str!("../../migrations/postgres/0010_call_context.sql"),
    ),
    (
        11,
        "call results",
        include_str!("../../migrations/postgres/0011_call_results.sql"),
    ),
    (
        12,
        "scopes and audit",
        include_str!("../../migrations/postgres/0012_scopes_audit.sql"),
    ),
    (
        13,
        "security",
        include_str!("../../migrations/postgres/0013_security.sql"),
    ),
    (
        14,
        "cluster",
        include_str!("../../migrations/postgres/0014_cluster.sql"),
    ),
    (
        15,
        "api rate windows",
        include_str!("../../migrations/postgres/0015_api_rate_windows.sql"),
    ),
    (
        16,
        "test mode",
        include_str!("../../migrations/postgres/0016_test_mode.sql"),
    ),
    (
        17,
        "recordings",
        include_str!("../../migrations/postgres/0017_recordings.sql"),
    ),
    (
        18,
        "recording settings",
        include_str!("../../migrations/postgres/0018_recording_settings.sql"),
    ),
    (
        19,
        "call attempts",
        include_str!("../../migrations/postgres/0019_call_attempts.sql"),
    ),
    (
        21,
        "web calls",
        include_str!("../../migrations/postgres/0021_web_calls.sql"),
    ),
];

/// How the store sizes its PostgreSQL side (SQLite has one connection and
/// its commit thread whatever these say).
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// Connections of the pool at most (the API, the webhook worker,
    /// campaigns, and the group commit's writers). The outbox listener has
    /// one of its own besides.
    pub pool_size: u32,
    /// Transactions of call transitions open at once ([`pg_commit`]).
    pub commit_writers: u32,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            pool_size: 16,
            commit_writers: 2,
        }
    }
}

impl Store {
    /// Opens the store at `url` (`sqlite://PATH` or `postgres://...`) with
    /// the default [`Tuning`]. The SQLite file is created when missing.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, Tuning::default()).await
    }

    /// Opens the store at `url`, sized by `tuning` on PostgreSQL. Starts
    /// the group commit (a thread on SQLite, a task on PostgreSQL: call it
    /// inside the runtime).
    pub async fn connect_with(url: &str, tuning: Tuning) -> Result<Self> {
        let deliveries_written = Arc::new(AtomicU64::new(0));
        let mut commit = None;
        let mut pg_commit = None;
        let mut notices = None;
        let pool = if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                // WAL with synchronous=NORMAL: a commit survives a crash of
                // the daemon (kill -9 included) without an fsync per
                // transaction; only a power loss can take back the last
                // commits, and then the state and its outbox events go
                // together (SQLite, "WAL mode", §5). Four fsyncs per call
                // cost more than the rest of the call's SQL.
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                // For other processes on the same file (the CLI).
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true);
            // One connection in the pool, and one of the group commit's for
            // the call path ([`commit`]): SQLite has one writer anyway, and
            // with eight the writers met in its busy handler, which sleeps
            // and retries (eight sleeps per call under load). Queued, they
            // wait without sleeping; reads are microseconds.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options.clone())
                .await?;
            commit = Some(commit::GroupCommit::start(
                options.get_filename(),
                deliveries_written.clone(),
            )?);
            Pool::Sqlite(pool)
        } else {
            let options = PgConnectOptions::from_str(url)?;
            // The writers hold a connection each for a batch's length; the
            // rest serve the API, the webhook worker and campaigns.
            let pool = PgPoolOptions::new()
                .max_connections(tuning.pool_size.max(tuning.commit_writers + 2))
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await?;
            let n = notify::Notices::new();
            pg_commit = Some(pg_commit::PgCommit::start(
                pool.clone(),
                tuning.commit_writers as usize,
                deliveries_written.clone(),
                n.clone(),
            ));
            notices = Some(n);
            Pool::Postgres(pool)
        };
        Ok(Self {
            pool,
            commit,
            pg_commit,
            notices,
            node: None,
            deliveries_written,
        })
    }

    /// Names the daemon that uses this store: the calls it creates carry
    /// the name, and [`Store::unended_calls_of`] finds them after a crash. Set
    /// before the store is cloned.
    pub fn set_node(&mut self, node: &str) {
        self.node = Some(node.into());
    }

    /// How many webhook deliveries this process has written so far. Read
    /// before a write and again after its commit: a change means deliveries
    /// may be due now (another task's change as well, which only costs a
    /// look).
    pub fn deliveries_written(&self) -> u64 {
        self.deliveries_written.load(Ordering::Acquire)
    }

    /// Counts deliveries written by an open transaction.
    pub(crate) fn note_deliveries(&self, n: usize) {
        if n > 0 {
            self.deliveries_written
                .fetch_add(n as u64, Ordering::AcqRel);
        }
    }

    /// Applies every migration not yet applied. Idempotent; concurrent
    /// daemons on PostgreSQL serialize on sqlx's advisory lock.
    pub async fn migrate(&self) -> Result<()> {
        match &self.pool {
            Pool::Sqlite(p) => migrations(SQLITE_MIGRATIONS).run(p).await?,
            Pool::Postgres(p) => migrations(POSTGRES_MIGRATIONS).run(p).await?,
        }
        Ok(())
    }

    /// Cheap liveness probe for `/ready`.
    pub async fn ping(&self) -> Result<()> {
        on_pool!(self, p => sqlx::query("SELECT 1").execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    pub async fn close(&self) {
        if let Some(commit) = &self.commit {
            commit.close().await;
        }
        if let Some(commit) = &self.pg_commit {
            commit.close().await;
        }
        on_pool!(self, p => p.close().await)
    }

    /// The group commit of a SQLite store.
    fn group_commit(&self) -> Result<&commit::GroupCommit> {
        self.commit
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("no group commit on this store".into()))
    }

    /// The group commit of a PostgreSQL store.
    fn pg_group_commit(&self) -> Result<&pg_commit::PgCommit> {
        self.pg_commit
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("no group commit on this store".into()))
    }

    /// The payload of the NOTIFY that a transaction writing events sends
    /// ([`notify`]); `None` on SQLite, which has one daemon and wakes it
    /// in-process.
    pub(crate) fn notice_payload(&self, deliveries: bool) -> Option<String> {
        self.notices.as_ref().map(|n| n.payload(deliveries))
    }

    /// On PostgreSQL, starts this process's outbox listener: `on_notice`
    /// hears the other daemons' events until `closing` turns true. `false`
    /// (and nothing started) on SQLite.
    pub fn listen(
        &self,
        on_notice: Arc<dyn Fn(notify::Notice) + Send + Sync>,
        closing: tokio::sync::watch::Receiver<bool>,
    ) -> bool {
        match (&self.pool, &self.notices) {
            (Pool::Postgres(p), Some(notices)) => {
                notify::listen(
                    (*p.connect_options()).clone(),
                    notices.clone(),
                    on_notice,
                    closing,
                );
                true
            }
            _ => false,
        }
    }
}

/// The current time, truncated to microseconds so that what is written reads
/// back equal on both backends (PostgreSQL keeps microseconds).
pub fn now() -> chrono::DateTime<chrono::Utc> {
    let now = chrono::Utc::now();
    chrono::DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}
