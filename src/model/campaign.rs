//! A campaign as the API answers it and the `campaign.*` webhooks carry
//! it: its status, schedule document and retry policy, and the outcome of
//! an attempt. `campaign` gives them their behaviour (compiling a schedule,
//! applying a policy).

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::labels;
use crate::media::amd::AmdMode;

/// Where a campaign stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CampaignStatus {
    Draft,
    Running,
    Paused,
    Completed,
    Canceled,
}

labels!(CampaignStatus, "campaign status" {
    Draft => "draft",
    Running => "running",
    Paused => "paused",
    Completed => "completed",
    Canceled => "canceled",
});

/// How a campaign attempt ended, as the call layer reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The callee answered and the call ran its course.
    Answered,
    Busy,
    NoAnswer,
    /// The call could not be placed or was refused (network, 4xx/5xx).
    Failed,
    /// The callee asked not to be called again (phrase or DTMF digit).
    OptedOut,
}

labels!(AttemptOutcome, "attempt outcome" {
    Answered => "answered",
    Busy => "busy",
    NoAnswer => "no_answer",
    Failed => "failed",
    OptedOut => "opted_out",
});

/// A day of the week in a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Day {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

/// When a campaign may call, in each contact's local time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// First local date calls are allowed.
    #[schema(value_type = Option<String>, format = Date, example = "2026-07-01")]
    pub start_date: Option<NaiveDate>,
    /// Last local date calls are allowed (inclusive).
    #[schema(value_type = Option<String>, format = Date, example = "2026-07-31")]
    pub end_date: Option<NaiveDate>,
    /// Allowed weekdays (default every day).
    #[serde(default = "all_days")]
    pub weekdays: Vec<Day>,
    /// Local time the window opens, `HH:MM` (default `09:00`).
    #[serde(default = "nine")]
    #[schema(example = "09:00")]
    pub start_time: String,
    /// Local time the window closes, `HH:MM`, exclusive (default `20:00`).
    #[serde(default = "twenty")]
    #[schema(example = "20:00")]
    pub end_time: String,
    /// IANA zone for contacts whose zone is neither given nor derivable from
    /// the number (default `UTC`).
    #[serde(default = "utc")]
    #[schema(example = "America/New_York")]
    pub timezone: String,
}

fn all_days() -> Vec<Day> {
    vec![
        Day::Mon,
        Day::Tue,
        Day::Wed,
        Day::Thu,
        Day::Fri,
        Day::Sat,
        Day::Sun,
    ]
}
fn nine() -> String {
    "09:00".into()
}
fn twenty() -> String {
    "20:00".into()
}
fn utc() -> String {
    "UTC".into()
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            start_date: None,
            end_date: None,
            weekdays: all_days(),
            start_time: nine(),
            end_time: twenty(),
            timezone: utc(),
        }
    }
}

/// Retries earned by one outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryRule {
    /// How many times a contact is tried again after this outcome (0 to 20).
    #[schema(minimum = 0, maximum = 20)]
    pub retries: u32,
    /// Seconds to wait before each retry: from `[campaigns]
    /// min_retry_delay_seconds` (60 by default) to 30 days.
    #[schema(minimum = 0, maximum = 2592000)]
    pub delay_seconds: u32,
}

/// What the campaign does after each outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    pub busy: RetryRule,
    pub no_answer: RetryRule,
    pub failed: RetryRule,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            busy: RetryRule {
                retries: 2,
                delay_seconds: 600,
            },
            no_answer: RetryRule {
                retries: 2,
                delay_seconds: 3600,
            },
            failed: RetryRule {
                retries: 1,
                delay_seconds: 900,
            },
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Campaign {
    #[schema(example = "cmp_01jdw8q1m7k3x9b5n4c2v6t8r0")]
    pub id: String,
    pub name: String,
    pub agent_id: String,
    /// E.164 caller id.
    pub caller_number: String,
    /// Trunks tried in order.
    pub trunk_ids: Vec<String>,
    pub status: CampaignStatus,
    pub schedule: Schedule,
    pub max_concurrent_calls: i64,
    pub calls_per_second: f64,
    pub retry_policy: RetryPolicy,
    pub max_attempts: i64,
    /// The DTMF key (`0`-`9`, `*`, `#`) that opts the callee out: the
    /// number goes on the do-not-call list and the call ends. `null`: none.
    #[schema(example = "9")]
    pub opt_out_digit: Option<String>,
    /// Answering-machine detection on the campaign's calls.
    pub amd: AmdMode,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Asked for the agent of each attempt (a signed POST of the call's
    /// context, as a number's agent webhook); `null`: the campaign's agent.
    pub agent_webhook_url: Option<String>,
    /// `whsec_...`, signing the agent webhook's requests: only in the
    /// answer that set or changed `agent_webhook_url`, never shown again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_webhook_secret: Option<String>,
    /// `false` for a campaign made with a test key: its calls run on the
    /// simulated carrier.
    pub livemode: bool,
    /// Recording of the campaign's calls: over the From number's and the
    /// agent's settings, field by field.
    pub recording: Option<super::RecordingSettings>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::assert_serde_matches;

    #[test]
    fn serde_and_sql_spell_the_labels_alike() {
        assert_serde_matches(CampaignStatus::ALL, CampaignStatus::as_str);
        assert_serde_matches(AttemptOutcome::ALL, AttemptOutcome::as_str);
        assert_eq!("paused".parse(), Ok(CampaignStatus::Paused));
        assert!("maybe".parse::<AttemptOutcome>().is_err());
    }
}
