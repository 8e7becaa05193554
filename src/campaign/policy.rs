//! Retry policy: given how an attempt ended and what came before, whether the
//! contact is tried again and when, or is done.
//!
//! Each retryable outcome (busy, no answer, failed) has its own rule: how
//! many retries that outcome earns and how long to wait before each. A
//! campaign-wide `max_attempts` caps the total whatever the outcomes. The
//! next attempt time is a floor: the dialer still waits for the contact's
//! calling window.

use chrono::{DateTime, Duration, Utc};

use crate::model::campaign::{AttemptOutcome, RetryPolicy, RetryRule};

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
    pub fn rule(&self, outcome: AttemptOutcome) -> Option<RetryRule> {
        match outcome {
            AttemptOutcome::Busy => Some(self.busy),
            AttemptOutcome::NoAnswer => Some(self.no_answer),
            AttemptOutcome::Failed => Some(self.failed),
            AttemptOutcome::Answered | AttemptOutcome::OptedOut => None,
        }
    }

    /// Decides after an attempt ending in `outcome` at `ended_at`.
    /// `same_outcome` counts the contact's attempts that ended this way,
    /// this one included; `attempts` counts all of them.
    pub fn next(
        &self,
        outcome: AttemptOutcome,
        same_outcome: u32,
        attempts: u32,
        max_attempts: u32,
        ended_at: DateTime<Utc>,
    ) -> Next {
        match outcome {
            AttemptOutcome::Answered => Next::Done(Final::Completed),
            AttemptOutcome::OptedOut => Next::Done(Final::OptedOut),
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
            p.next(AttemptOutcome::Answered, 1, 1, 5, t0()),
            Next::Done(Final::Completed)
        );
        assert_eq!(
            p.next(AttemptOutcome::OptedOut, 1, 1, 5, t0()),
            Next::Done(Final::OptedOut)
        );
    }

    #[test]
    fn each_outcome_has_its_retries_and_spacing() {
        let p = RetryPolicy::default();
        // busy: 2 retries, 10 minutes apart.
        assert_eq!(
            p.next(AttemptOutcome::Busy, 1, 1, 10, t0()),
            Next::Retry(t0() + Duration::seconds(600))
        );
        assert_eq!(
            p.next(AttemptOutcome::Busy, 2, 2, 10, t0()),
            Next::Retry(t0() + Duration::seconds(600))
        );
        assert_eq!(
            p.next(AttemptOutcome::Busy, 3, 3, 10, t0()),
            Next::Done(Final::Exhausted)
        );
        // no answer after two busies still has its own two retries.
        assert_eq!(
            p.next(AttemptOutcome::NoAnswer, 1, 3, 10, t0()),
            Next::Retry(t0() + Duration::seconds(3600))
        );
        // failed: one retry.
        assert_eq!(
            p.next(AttemptOutcome::Failed, 2, 2, 10, t0()),
            Next::Done(Final::Exhausted)
        );
    }

    #[test]
    fn max_attempts_caps_everything() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.next(AttemptOutcome::Busy, 1, 3, 3, t0()),
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
            none.next(AttemptOutcome::Busy, 1, 1, 5, t0()),
            Next::Done(Final::Exhausted)
        );
    }
}
