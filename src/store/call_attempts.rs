//! Call attempts: what each trunk did with an outbound call that may fail
//! over (one row per trunk tried or skipped, in order), read by
//! `GET /v1/calls/{id}`.
//!
//! The row of the call itself stays the one record of its state (see
//! [`super::calls`]); an attempt is written once, when it is over, and
//! never changed, so it needs no place in the call's transitions.
//!
//! Must not: write to `calls`.

use chrono::{DateTime, Utc};

use super::{Result, Store, on_pool};
use crate::model::CallAttempt;

/// One attempt, as the call task reports it when the attempt is over.
#[derive(Debug, Clone)]
pub struct NewAttempt<'a> {
    pub call_id: &'a str,
    /// 1 for the call's first attempt.
    pub seq: i64,
    /// The trunk's id (`trk_...`).
    pub trunk: &'a str,
    /// `answered`, `failed` or `skipped`.
    pub outcome: &'a str,
    pub sip_code: Option<u16>,
    pub sip_call_id: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct AttemptRow {
    seq: i64,
    trunk: String,
    outcome: String,
    sip_code: Option<i64>,
    sip_call_id: Option<String>,
    reason: Option<String>,
    started_at: DateTime<Utc>,
    ended_at: DateTime<Utc>,
}

impl Store {
    /// Records one attempt of a call; a second write of the same attempt
    /// changes nothing.
    pub async fn add_call_attempt(&self, a: NewAttempt<'_>) -> Result<()> {
        let sip_code = a.sip_code.map(i64::from);
        on_pool!(self, p => sqlx::query(
            "INSERT INTO call_attempts
               (call_id, seq, trunk, outcome, sip_code, sip_call_id, reason, started_at, ended_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (call_id, seq) DO NOTHING")
            .bind(a.call_id).bind(a.seq).bind(a.trunk).bind(a.outcome).bind(sip_code)
            .bind(a.sip_call_id).bind(a.reason).bind(a.started_at).bind(a.ended_at)
            .execute(p).await.map(drop))?;
        Ok(())
    }

    /// The attempts of call `id`, in order; empty for a call that made
    /// none (inbound, or placed before attempts were recorded).
    pub async fn call_attempts(&self, id: &str) -> Result<Vec<CallAttempt>> {
        let rows: Vec<AttemptRow> = on_pool!(self, p => sqlx::query_as::<_, AttemptRow>(
            "SELECT seq, trunk, outcome, sip_code, sip_call_id, reason, started_at, ended_at
             FROM call_attempts WHERE call_id = $1 ORDER BY seq")
            .bind(id).fetch_all(p).await)?;
        Ok(rows
            .into_iter()
            .map(|r| CallAttempt {
                seq: r.seq,
                trunk_id: r.trunk,
                outcome: r.outcome,
                sip_code: r.sip_code,
                sip_call_id: r.sip_call_id,
                reason: r.reason,
                started_at: r.started_at,
                ended_at: r.ended_at,
            })
            .collect())
    }
}
