//! Recordings' rows: one per recorded call, written when the recording
//! starts, completed (with `recording.completed` in the same transaction)
//! when its file is closed, marked deleted when the file is removed.
//!
//! Must not: touch files (`call::recording` owns them) or render events
//! (the caller hands the builder in).

use chrono::{DateTime, Utc};

use super::events::NewEvent;
use super::{Result, Store, StoreError, on_pool};
use crate::model::{Recording, RecordingChannels, RecordingStatus};

/// A recording's row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RecordingRecord {
    pub call_id: String,
    pub status: RecordingStatus,
    pub channels: RecordingChannels,
    /// The node whose disk holds the file.
    pub node: String,
    pub duration_ms: i64,
    pub size_bytes: i64,
    pub paused_ms: i64,
    pub started_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
}

impl From<RecordingRecord> for Recording {
    fn from(r: RecordingRecord) -> Self {
        Recording {
            url: (r.status == crate::model::RecordingStatus::Completed)
                .then(|| crate::model::recording::recording_url(&r.call_id)),
            call_id: r.call_id,
            status: r.status,
            channels: r.channels,
            duration_ms: r.duration_ms,
            size_bytes: r.size_bytes,
            paused_ms: r.paused_ms,
            started_at: r.started_at,
            completed_at: r.completed_at,
            deleted_at: r.deleted_at,
        }
    }
}

/// What a completed file measured.
#[derive(Debug, Clone, Copy)]
pub struct RecordingTotals {
    pub duration_ms: i64,
    pub size_bytes: i64,
    pub paused_ms: i64,
}

const COLUMNS: &str = "call_id, status, channels, node, duration_ms, size_bytes, paused_ms, \
     started_at, completed_at, deleted_at";

/// Renders the event of a completed recording from its row.
/// Renders the event of a completed recording; `bool` is the call's livemode.
pub type RecordingEmit<'a> = &'a (dyn Fn(&RecordingRecord, bool) -> Result<NewEvent> + Send + Sync);

impl Store {
    /// A recording starts on `node`'s disk.
    pub async fn recording_started(
        &self,
        call_id: &str,
        channels: RecordingChannels,
        node: &str,
    ) -> Result<()> {
        on_pool!(self, p => sqlx::query(
            "INSERT INTO recordings (call_id, status, channels, node, started_at)
             VALUES ($1, 'recording', $2, $3, $4)")
            .bind(call_id).bind(channels.as_str()).bind(node).bind(super::now())
            .execute(p).await.map(|_| ()))?;
        Ok(())
    }

    /// The file is closed: its totals, and `emit`'s event in the same
    /// transaction.
    pub async fn recording_completed(
        &self,
        call_id: &str,
        totals: RecordingTotals,
        failed: bool,
        emit: RecordingEmit<'_>,
    ) -> Result<RecordingRecord> {
        let status = if failed {
            RecordingStatus::Failed
        } else {
            RecordingStatus::Completed
        };
        let sql = format!(
            "UPDATE recordings SET status = $2, duration_ms = $3, size_bytes = $4, paused_ms = $5,
                completed_at = $6 WHERE call_id = $1 AND status = 'recording' RETURNING {COLUMNS}"
        );
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let row = sqlx::query_as::<_, RecordingRecord>(sqlx::AssertSqlSafe(sql))
                .bind(call_id).bind(status.as_str()).bind(totals.duration_ms)
                .bind(totals.size_bytes).bind(totals.paused_ms).bind(super::now())
                .fetch_optional(&mut *tx).await?
                .ok_or(StoreError::NotFound)?;
            if !failed {
                // The event is test or live as its call is.
                let livemode: bool = sqlx::query_scalar("SELECT livemode FROM calls WHERE id = $1")
                    .bind(call_id).fetch_optional(&mut *tx).await?
                    .unwrap_or(true);
                let ev = emit(&row, livemode)?;
                let _ = super::events::write_event!(self, tx, &ev);
            }
            tx.commit().await?;
            Ok(row)
        })
    }

    pub async fn get_recording(&self, call_id: &str) -> Result<RecordingRecord> {
        on_pool!(self, p => sqlx::query_as::<_, RecordingRecord>(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM recordings WHERE call_id = $1")))
            .bind(call_id).fetch_optional(p).await)?
        .ok_or(StoreError::NotFound)
    }

    /// Marks a recording deleted (its file is gone); `NotFound` when there
    /// is none or it already is.
    pub async fn recording_deleted(&self, call_id: &str) -> Result<()> {
        let done = on_pool!(self, p => sqlx::query(
            "UPDATE recordings SET status = 'deleted', deleted_at = $2
             WHERE call_id = $1 AND status <> 'deleted'")
            .bind(call_id).bind(super::now())
            .execute(p).await.map(|r| r.rows_affected()))?;
        if done == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// The recordings on `node`'s disk still marked `recording`: at start,
    /// before any call of this run records, those a crash left behind.
    pub async fn recordings_left(&self, node: &str) -> Result<Vec<RecordingRecord>> {
        Ok(
            on_pool!(self, p => sqlx::query_as::<_, RecordingRecord>(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM recordings WHERE node = $1 AND status = 'recording'
             ORDER BY started_at")))
            .bind(node).fetch_all(p).await)?,
        )
    }

    /// Up to `limit` recordings on `node`'s disk finished before `before`
    /// and not deleted (retention).
    pub async fn recordings_expired(
        &self,
        node: &str,
        before: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<String>> {
        Ok(on_pool!(self, p => sqlx::query_scalar(
            "SELECT call_id FROM recordings
             WHERE node = $1 AND status IN ('completed', 'failed') AND completed_at < $2
             ORDER BY completed_at LIMIT $3")
            .bind(node).bind(before).bind(limit).fetch_all(p).await)?)
    }
}
