//! Retry policy: given how an attempt ended and what came before, whether the
//! contact is tried again and when, or is done.
//!
//! Each retryable outcome (busy, no answer, failed) has its own rule: how
//! many retries that outcome earns and how long to wait before each. A
//! campaign-wide `max_attempts` caps the total whatever the outcomes. The
//! next attempt time is a floor: the dialer still waits for the contact's
//! calling window.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How an attempt ended, as the call layer reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The callee answered and the call ran its course.
    Answered,
    Busy,
    NoAnswer,
    /// The call could not be placed or was refused (network, 4xx/5xx).
    Failed,
    /// The callee asked not to be called again (phrase or DTMF digit).
    OptedOut,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Answered,
        Outcome::Busy,
        Outcome::NoAnswer,
        Outcome::Failed,
        Outcome::OptedOut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::Busy => "busy",
            Outcome::NoAnswer => "no_answer",
            Outcome::Failed => "failed",
            Outcome::OptedOut => "opted_out",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
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

/// What happens to a contact after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try again, not before this instant.
    Retry(DateTime<Utc>),
    /// The contact is done; the state it ends in.
    Done(Final),
}

/// The end states of a contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Final {
    /// Answered.
    Completed,
    /// Every attempt the policy allows was used without an answer.
    Exhausted,
    /// Opted out: the number is now on the do-not-call list.
    OptedOut,
}

impl RetryPolicy {
    pub fn rule(&self, outcome: Outcome) -> Option<RetryRule> {
        match outcome {
            Outcome::Busy => Some(self.busy),
            Outcome::NoAnswer => Some(self.no_answer),
            Outcome::Failed => Some(self.failed),
            Outcome::Answered | Outcome::OptedOut => None,
        }
    }

    /// Decides after an attempt ending in `outcome` at `ended_at`.
    /// `same_outcome` counts the contact's attempts that ended this way,
    /// this one included; `attempts` counts all of them.
    pub fn next(
        &self,
        outcome: Outcome,
        same_outcome: u32,
        attempts: u32,
        max_attempts: u32,
        ended_at: DateTime<Utc>,
    ) -> Next {
        match outcome {
            Outcome::Answered => Next::Done(Final::Completed),
            Outcome::OptedOut => Next::Done(Final::OptedOut),
            _ => match self.rule(outcome) {
                Some(rule) if same_outcome <= rule.retries && attempts < max_attempts => {
                    Next::Retry(ended_at + Duration::seconds(i64::from(rule.delay_seconds)))
                }
                _ => Next::Done(Final::Exhausted),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-06-10T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn answered_and_opted_out_are_final() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.next(Outcome::Answered, 1, 1, 5, t0()),
            Next::Done(Final::Completed)
        );
        assert_eq!(
            p.next(Outcome::OptedOut, 1, 1, 5, t0()),
            Next::Done(Final::OptedOut)
        );
    }

    #[test]
    fn each_outcome_has_its_retries_and_spacing() {
        let p = RetryPolicy::default();
        // busy: 2 retries, 10 minutes apart.
        assert_eq!(
            p.next(Outcome::Busy, 1, 1, 10, t0()),
            Next::Retry(t0() + Duration::seconds(600))
        );
        assert_eq!(
            p.next(Outcome::Busy, 2, 2, 10, t0()),
            Next::Retry(t0() + Duration::seconds(600))
        );
        assert_eq!(
            p.next(Outcome::Busy, 3, 3, 10, t0()),
            Next::Done(Final::Exhausted)
        );
        // no answer after two busies still has its own two retries.
        assert_eq!(
            p.next(Outcome::NoAnswer, 1, 3, 10, t0()),
            Next::Retry(t0() + Duration::seconds(3600))
        );
        // failed: one retry.
        assert_eq!(
            p.next(Outcome::Failed, 2, 2, 10, t0()),
            Next::Done(Final::Exhausted)
        );
    }

    #[test]
    fn max_attempts_caps_everything() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.next(Outcome::Busy, 1, 3, 3, t0()),
            Next::Done(Final::Exhausted)
        );
        let none = RetryPolicy {
            busy: RetryRule {
                retries: 0,
                delay_seconds: 60,
            },
            ..p
        };
        assert_eq!(
            none.next(Outcome::Busy, 1, 1, 5, t0()),
            Next::Done(Final::Exhausted)
        );
    }

    #[test]
    fn outcome_names_round_trip() {
        for o in Outcome::ALL {
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
        }
        assert_eq!(Outcome::parse("maybe"), None);
    }
}
