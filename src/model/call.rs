//! A call as the API answers it and the `call.*` webhooks carry it, and
//! the labels of its status, direction and answering-machine verdict.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::labels;

/// Call statuses, named as Twilio and jambonz users know them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CallStatus {
    Queued,
    Ringing,
    InProgress,
    Completed,
    Busy,
    NoAnswer,
    Failed,
    Canceled,
}

labels!(CallStatus, "call status" {
    Queued => "queued",
    Ringing => "ringing",
    InProgress => "in-progress",
    Completed => "completed",
    Busy => "busy",
    NoAnswer => "no-answer",
    Failed => "failed",
    Canceled => "canceled",
});

/// What answered an outbound call, by answering-machine detection (the
/// detector's own verdict type).
pub use crate::media::amd::AnsweredBy;

labels!(AnsweredBy, "answered_by" {
    Human => "human",
    Machine => "machine",
    Unknown => "unknown",
});

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
    /// A browser call (`POST /v1/web-calls`), over WebRTC.
    Web,
}

labels!(Direction, "direction" {
    Inbound => "inbound",
    Outbound => "outbound",
    Web => "web",
});

#[derive(Debug, Serialize, ToSchema)]
pub struct Call {
    #[schema(example = "call_01jdw8q1m7k3x9b5n4c2v6t8r0")]
    pub id: String,
    pub direction: Direction,
    pub from: String,
    pub to: String,
    pub trunk_id: Option<String>,
    pub agent_id: Option<String>,
    pub status: CallStatus,
    pub sip_call_id: Option<String>,
    /// Final SIP status, when there was one.
    pub sip_code: Option<i64>,
    pub sip_reason: Option<String>,
    /// Why the call ended, for example `caller_hangup` or `max_duration`.
    pub end_reason: Option<String>,
    /// RFC 4733 digits received, in order.
    pub dtmf: String,
    /// `human`, `machine` or `unknown`: the verdict of answering-machine
    /// detection; `null` when it did not run.
    pub answered_by: Option<AnsweredBy>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub ringing_at: Option<DateTime<Utc>>,
    pub answered_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    /// Calls with a `voice` agent, once ended: a short summary of the
    /// conversation (the brain's, or the number of turns and the agent's
    /// last line). The transcript is at `/v1/calls/{id}/transcript`.
    pub summary: Option<String>,
    /// Calls whose agent defines an `analysis`, once analyzed after the
    /// end (`call.analyzed`): `status` (`completed` or `failed`), `source`
    /// (`script` or `llm`), the extracted `data`, `success` against the
    /// agent's criterion, the script's final `state`, and `error` when it
    /// failed. `null` before, and for other calls.
    #[schema(value_type = Option<Object>)]
    pub analysis: Option<serde_json::Value>,
    /// What is known about whom the call is for, as handed to its agent;
    /// `null` for calls recorded before contexts were.
    pub context: Option<super::CallContext>,
    /// Who chose the agent: `number` (or the request), `webhook` (the
    /// agent webhook answered), `fallback` (it failed: see
    /// `agent_source_error`).
    pub agent_source: Option<super::AgentSource>,
    /// Why the agent webhook was not followed, when it was not.
    pub agent_source_error: Option<String>,
    /// `false` for a test-mode call (placed with an `al_test_` key or by a
    /// test campaign): it ran on the simulated carrier, never on a trunk.
    pub livemode: bool,
    /// Outbound calls, in `GET /v1/calls/{id}`: each trunk the call was
    /// tried on or skipped, in order (trunk failover). Absent in lists and
    /// webhooks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<Vec<CallAttempt>>,
    /// In `GET /v1/calls/{id}` of a recorded call: its recording (state,
    /// duration, size, channels, and the `url` to fetch it). Absent in
    /// lists and webhooks, and when the call was not recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording: Option<super::Recording>,
}

/// One trunk an outbound call was tried on (or skipped) before it was
/// answered or ended: the same call (same id, one lifecycle of webhooks)
/// with a new SIP dialog per trunk.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CallAttempt {
    /// 1 for the first attempt.
    pub seq: i64,
    #[schema(example = "trk_carrier")]
    pub trunk_id: String,
    /// `answered`; `failed` (the trunk answered a final failure, or
    /// nothing: the call went on to the next trunk if it was one to fail
    /// over on); `skipped` (no INVITE: the trunk was down by its OPTIONS
    /// probe or registration, refused the destination, reached a daily
    /// cap or was full).
    pub outcome: String,
    /// The trunk's final SIP status (408 for no answer at all).
    pub sip_code: Option<i64>,
    /// The SIP Call-ID of this attempt's INVITE.
    pub sip_call_id: Option<String>,
    /// The reason phrase, or why the trunk was skipped.
    pub reason: Option<String>,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::assert_serde_matches;

    #[test]
    fn serde_and_sql_spell_the_labels_alike() {
        assert_serde_matches(CallStatus::ALL, CallStatus::as_str);
        assert_serde_matches(AnsweredBy::ALL, AnsweredBy::as_str);
        assert_serde_matches(Direction::ALL, Direction::as_str);
        assert_eq!("in-progress".parse(), Ok(CallStatus::InProgress));
        assert!("in_progress".parse::<CallStatus>().is_err());
    }
}
