//! Call analytics over a time range: counts, answer rate, durations, AMD
//! verdicts and per-turn latency, grouped by day, agent, trunk, campaign,
//! direction or end reason.
//!
//! Two plain queries (the calls created in the range, and the agent turns
//! of those calls), the same SQL on SQLite and PostgreSQL; everything else
//! (groups, means, percentiles) is computed here in Rust, so both stores
//! give the same numbers to the millisecond. The queries are bounded:
//! past [`MAX_CALLS`] calls in the range the answer is
//! [`AnalyticsError::TooMany`] (narrow the range) rather than an unbounded
//! read.
//!
//! Must not: write anything.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::{Store, StoreError, on_pool};
use crate::model::{AnsweredBy, CallStatus, Direction};

/// Most calls one answer reads.
pub const MAX_CALLS: i64 = 200_000;
/// Most agent turns one answer reads (their latencies).
pub const MAX_TURNS: i64 = 1_000_000;

/// What the calls are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// The UTC day the call was created (`2026-12-06`).
    Day,
    Agent,
    Trunk,
    Campaign,
    Direction,
    EndReason,
}

/// Why no answer.
#[derive(Debug, thiserror::Error)]
pub enum AnalyticsError {
    #[error("more than {MAX_CALLS} calls in the range; narrow it")]
    TooMany,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Mean and percentiles of a set of milliseconds (`None`s when empty).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Spread {
    pub count: i64,
    pub mean: Option<f64>,
    pub p50: Option<i64>,
    pub p95: Option<i64>,
}

/// One group's numbers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupStats {
    /// The group's key; `None` for calls without one (no agent, trunk or
    /// campaign, not ended) and for the total.
    pub key: Option<String>,
    pub calls: i64,
    pub answered: i64,
    /// Answered over calls; `None` for no calls.
    pub answer_rate: Option<f64>,
    /// Calls per final (or current) status.
    pub statuses: BTreeMap<String, i64>,
    /// Answered calls' durations.
    pub duration_ms: Spread,
    /// Answering-machine verdicts, per verdict (calls where it ran).
    pub answered_by: BTreeMap<String, i64>,
    /// Agent replies, from the end of the caller's turn: to the first RTP
    /// packet and to each step before it.
    pub first_rtp_ms: Spread,
    pub stt_final_ms: Spread,
    pub llm_first_token_ms: Spread,
    pub tts_first_audio_ms: Spread,
}

/// The answer: every group with calls, in key order, and the total.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallAnalytics {
    pub groups: Vec<GroupStats>,
    pub total: GroupStats,
}

#[derive(Debug, sqlx::FromRow)]
struct Row {
    id: String,
    direction: Direction,
    agent_id: Option<String>,
    trunk: Option<String>,
    campaign_id: Option<String>,
    status: CallStatus,
    end_reason: Option<String>,
    answered_by: Option<AnsweredBy>,
    answered_at: Option<DateTime<Utc>>,
    duration_ms: Option<i64>,
    created_at: DateTime<Utc>,
}

#[derive(Debug, sqlx::FromRow)]
struct TurnRow {
    call_id: String,
    stt_final_ms: Option<i64>,
    llm_first_token_ms: Option<i64>,
    tts_first_audio_ms: Option<i64>,
    first_rtp_ms: Option<i64>,
}

/// Nearest-rank percentile `p` (0 to 100) of sorted `v`.
fn percentile(v: &[i64], p: f64) -> Option<i64> {
    if v.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v.get(rank.clamp(1, v.len()) - 1).copied()
}

fn spread(mut v: Vec<i64>) -> Spread {
    v.sort_unstable();
    let count = v.len() as i64;
    let mean = (!v.is_empty()).then(|| v.iter().map(|x| *x as f64).sum::<f64>() / v.len() as f64);
    Spread {
        count,
        mean: mean.map(|m| (m * 10.0).round() / 10.0),
        p50: percentile(&v, 50.0),
        p95: percentile(&v, 95.0),
    }
}

/// The rows of one group, folded.
#[derive(Default)]
struct Acc {
    calls: i64,
    answered: i64,
    statuses: BTreeMap<String, i64>,
    durations: Vec<i64>,
    answered_by: BTreeMap<String, i64>,
    first_rtp: Vec<i64>,
    stt_final: Vec<i64>,
    llm_first_token: Vec<i64>,
    tts_first_audio: Vec<i64>,
}

impl Acc {
    fn add(&mut self, r: &Row, turns: &[&TurnRow]) {
        self.calls += 1;
        if r.answered_at.is_some() {
            self.answered += 1;
            if let Some(d) = r.duration_ms {
                self.durations.push(d);
            }
        }
        *self.statuses.entry(r.status.as_str().into()).or_default() += 1;
        if let Some(a) = r.answered_by {
            *self.answered_by.entry(a.as_str().into()).or_default() += 1;
        }
        for t in turns {
            self.first_rtp.extend(t.first_rtp_ms);
            self.stt_final.extend(t.stt_final_ms);
            self.llm_first_token.extend(t.llm_first_token_ms);
            self.tts_first_audio.extend(t.tts_first_audio_ms);
        }
    }

    fn stats(self, key: Option<String>) -> GroupStats {
        GroupStats {
            key,
            calls: self.calls,
            answered: self.answered,
            answer_rate: (self.calls > 0).then(|| self.answered as f64 / self.calls as f64),
            statuses: self.statuses,
            duration_ms: spread(self.durations),
            answered_by: self.answered_by,
            first_rtp_ms: spread(self.first_rtp),
            stt_final_ms: spread(self.stt_final),
            llm_first_token_ms: spread(self.llm_first_token),
            tts_first_audio_ms: spread(self.tts_first_audio),
        }
    }
}

fn key_of(r: &Row, by: GroupBy) -> Option<String> {
    match by {
        GroupBy::Day => Some(r.created_at.format("%Y-%m-%d").to_string()),
        GroupBy::Agent => r.agent_id.clone(),
        GroupBy::Trunk => r.trunk.clone(),
        GroupBy::Campaign => r.campaign_id.clone(),
        GroupBy::Direction => Some(r.direction.as_str().to_string()),
        GroupBy::EndReason => r.end_reason.clone(),
    }
}

impl Store {
    /// The calls of one mode (`livemode`) created in `[from, to)`,
    /// grouped by `by`.
    pub async fn call_analytics(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        by: GroupBy,
        livemode: bool,
    ) -> Result<CallAnalytics, AnalyticsError> {
        let rows: Vec<Row> = on_pool!(self, p => sqlx::query_as::<_, Row>(
            "SELECT id, direction, agent_id, trunk, campaign_id, status, end_reason, answered_by,
                answered_at, duration_ms, created_at
             FROM calls WHERE created_at >= $1 AND created_at < $2 AND livemode = $4
             ORDER BY created_at, id LIMIT $3")
            .bind(from).bind(to).bind(MAX_CALLS + 1).bind(livemode).fetch_all(p).await)
        .map_err(StoreError::from)?;
        if rows.len() as i64 > MAX_CALLS {
            return Err(AnalyticsError::TooMany);
        }
        let turns: Vec<TurnRow> = on_pool!(self, p => sqlx::query_as::<_, TurnRow>(
            "SELECT t.call_id, t.stt_final_ms, t.llm_first_token_ms, t.tts_first_audio_ms, t.first_rtp_ms
             FROM call_turns t JOIN calls c ON c.id = t.call_id
             WHERE c.created_at >= $1 AND c.created_at < $2 AND t.speaker = 'agent' AND c.livemode = $4
               AND (t.stt_final_ms IS NOT NULL OR t.llm_first_token_ms IS NOT NULL
                    OR t.tts_first_audio_ms IS NOT NULL OR t.first_rtp_ms IS NOT NULL)
             ORDER BY t.call_id, t.seq LIMIT $3")
            .bind(from).bind(to).bind(MAX_TURNS).bind(livemode).fetch_all(p).await)
            .map_err(StoreError::from)?;
        let mut by_call: BTreeMap<&str, Vec<&TurnRow>> = BTreeMap::new();
        for t in &turns {
            by_call.entry(t.call_id.as_str()).or_default().push(t);
        }
        let mut groups: BTreeMap<Option<String>, Acc> = BTreeMap::new();
        let mut total = Acc::default();
        for r in &rows {
            let of_call = by_call.get(r.id.as_str()).map_or(&[][..], Vec::as_slice);
            groups.entry(key_of(r, by)).or_default().add(r, of_call);
            total.add(r, of_call);
        }
        Ok(CallAnalytics {
            groups: groups.into_iter().map(|(k, acc)| acc.stats(k)).collect(),
            total: total.stats(None),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<i64> = (1..=20).collect();
        assert_eq!(percentile(&v, 50.0), Some(10));
        assert_eq!(percentile(&v, 95.0), Some(19));
        assert_eq!(percentile(&[7], 95.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
        let s = spread(vec![300, 100, 200]);
        assert_eq!(
            (s.count, s.mean, s.p50, s.p95),
            (3, Some(200.0), Some(200), Some(300))
        );
    }
}
