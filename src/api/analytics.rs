//! `GET /v1/analytics/calls`: counts, answer rate, durations, AMD verdicts
//! and per-turn latency of the calls created in a time range, grouped by
//! day, agent, trunk, campaign, direction or end reason. The numbers are
//! the store's (`store::analytics`), the same on SQLite and PostgreSQL.
//!
//! Must not: compute anything itself beyond the shape of the answer.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorResponses, FieldError};
use super::extract::ApiQuery;
use crate::store::analytics::{AnalyticsError, GroupBy, GroupStats, Spread};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(call_analytics))
}

/// What the calls are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Grouping {
    /// The UTC day each call was created.
    Day,
    Agent,
    Trunk,
    Campaign,
    Direction,
    EndReason,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AnalyticsQuery {
    /// RFC 3339; calls created at or after (default: 7 days before `to`).
    pub from: Option<DateTime<Utc>>,
    /// RFC 3339; calls created before (default: now).
    pub to: Option<DateTime<Utc>>,
    /// Grouping (default `day`).
    pub group_by: Option<Grouping>,
}

/// Milliseconds: how many, their mean, median and 95th percentile
/// (nearest rank); `null`s when there are none.
#[derive(Debug, Serialize, ToSchema)]
pub struct Distribution {
    pub count: i64,
    pub mean: Option<f64>,
    pub p50: Option<i64>,
    pub p95: Option<i64>,
}

/// An agent reply's latency from the end of the caller's turn, per step.
#[derive(Debug, Serialize, ToSchema)]
pub struct TurnLatencies {
    /// To the reply's first RTP packet: what the caller waits.
    pub first_rtp_ms: Distribution,
    pub stt_final_ms: Distribution,
    pub llm_first_token_ms: Distribution,
    pub tts_first_audio_ms: Distribution,
}

/// The numbers of one group of calls.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallGroup {
    /// The day (`2026-12-06`), agent, trunk, campaign, direction or end
    /// reason; `null` for calls without one, and for the total.
    pub key: Option<String>,
    pub calls: i64,
    pub answered: i64,
    /// Answered calls over calls.
    pub answer_rate: Option<f64>,
    /// Calls per status.
    pub statuses: BTreeMap<String, i64>,
    /// Answered calls' durations.
    pub duration_ms: Distribution,
    /// Answering-machine detection's verdicts (`human`, `machine`,
    /// `unknown`), where it ran.
    pub answered_by: BTreeMap<String, i64>,
    /// Agent replies' latency (calls with a `voice` agent).
    pub turn_latency: TurnLatencies,
}

/// The answer of `GET /v1/analytics/calls`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallAnalytics {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub group_by: Grouping,
    /// Every group with calls, by key.
    pub groups: Vec<CallGroup>,
    /// All the calls of the range.
    pub total: CallGroup,
}

fn distribution(s: Spread) -> Distribution {
    Distribution {
        count: s.count,
        mean: s.mean,
        p50: s.p50,
        p95: s.p95,
    }
}

fn group(g: GroupStats) -> CallGroup {
    CallGroup {
        key: g.key,
        calls: g.calls,
        answered: g.answered,
        answer_rate: g.answer_rate,
        statuses: g.statuses,
        duration_ms: distribution(g.duration_ms),
        answered_by: g.answered_by,
        turn_latency: TurnLatencies {
            first_rtp_ms: distribution(g.first_rtp_ms),
            stt_final_ms: distribution(g.stt_final_ms),
            llm_first_token_ms: distribution(g.llm_first_token_ms),
            tts_first_audio_ms: distribution(g.tts_first_audio_ms),
        },
    }
}

/// Call analytics for the calls created in `[from, to)`: counts, answer
/// rate, durations (mean, p50, p95), AMD verdicts and per-turn latency
/// (p50, p95), per group. At most 200000 calls per answer (422 past it:
/// narrow the range).
#[utoipa::path(get, path = "/v1/analytics/calls", tag = "calls", params(AnalyticsQuery),
    responses((status = 200, description = "The calls' numbers", body = CallAnalytics), ErrorResponses))]
async fn call_analytics(
    State(state): State<AppState>,
    mode: super::mode::Mode,
    ApiQuery(q): ApiQuery<AnalyticsQuery>,
) -> Result<Json<CallAnalytics>, ApiError> {
    let to = q.to.unwrap_or_else(crate::store::now);
    let from = q.from.unwrap_or_else(|| {
        to.checked_sub_signed(chrono::Duration::days(7))
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    });
    if from >= to {
        return Err(ApiError::validation(vec![FieldError {
            field: "from".into(),
            message: "must be before `to`".into(),
        }]));
    }
    let grouping = q.group_by.unwrap_or(Grouping::Day);
    let by = match grouping {
        Grouping::Day => GroupBy::Day,
        Grouping::Agent => GroupBy::Agent,
        Grouping::Trunk => GroupBy::Trunk,
        Grouping::Campaign => GroupBy::Campaign,
        Grouping::Direction => GroupBy::Direction,
        Grouping::EndReason => GroupBy::EndReason,
    };
    let stats = match state
        .store
        .call_analytics(from, to, by, mode.livemode())
        .await
    {
        Ok(s) => s,
        Err(AnalyticsError::TooMany) => {
            return Err(ApiError::validation(vec![FieldError {
                field: "from".into(),
                message: AnalyticsError::TooMany.to_string(),
            }]));
        }
        Err(AnalyticsError::Store(e)) => return Err(e.into()),
    };
    Ok(Json(CallAnalytics {
        from,
        to,
        group_by: grouping,
        groups: stats.groups.into_iter().map(group).collect(),
        total: group(stats.total),
    }))
}
