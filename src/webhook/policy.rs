//! What an attempt's result means and when to try again: each result is
//! classified once ([`classify`]: success, retry, or don't retry, with a
//! reason), and one [`Backoff`] policy turns a retry into the next attempt
//! time or a dead letter.
//!
//! Must not: do IO; these are plain functions of the result, the schedule
//! and the clock, tested without a network.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

use crate::config::WebhooksConfig;

/// What happened on the wire, as the worker saw it.
#[derive(Debug, Clone)]
pub enum Response {
    /// The endpoint answered with this status (and maybe `Retry-After`).
    Status {
        code: u16,
        retry_after: Option<Duration>,
    },
    /// No answer within the timeout.
    Timeout,
    /// Refused before sending: the address is not allowed.
    Blocked(String),
    /// Connection, TLS or protocol failure.
    Transport(String),
}

/// The classification of one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryVerdict {
    Success,
    /// Try again; `after` overrides the schedule (`Retry-After`).
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Never try this delivery again; `disable_endpoint` stops the endpoint
    /// too (410 Gone).
    DontRetry {
        reason: String,
        disable_endpoint: bool,
    },
}

impl DeliveryVerdict {
    /// The label stored with the attempt and used by metrics.
    pub fn label(&self) -> &'static str {
        match self {
            DeliveryVerdict::Success => "success",
            DeliveryVerdict::Retry { .. } => "retry",
            DeliveryVerdict::DontRetry { .. } => "fail",
        }
    }

    pub fn reason(&self) -> String {
        match self {
            DeliveryVerdict::Success => "2xx".into(),
            DeliveryVerdict::Retry { reason, .. } | DeliveryVerdict::DontRetry { reason, .. } => {
                reason.clone()
            }
        }
    }
}

/// Any 2xx is delivered; 410 Gone disables the endpoint; everything else is
/// retried, at the time `Retry-After` names on 429 and 503.
pub fn classify(r: &Response) -> DeliveryVerdict {
    match r {
        Response::Status { code, .. } if (200..300).contains(code) => DeliveryVerdict::Success,
        Response::Status { code: 410, .. } => DeliveryVerdict::DontRetry {
            reason: "http 410 gone: endpoint disabled".into(),
            disable_endpoint: true,
        },
        Response::Status {
            code: code @ (429 | 503),
            retry_after,
        } => DeliveryVerdict::Retry {
            reason: format!("http {code}"),
            after: *retry_after,
        },
        Response::Status { code, .. } => DeliveryVerdict::Retry {
            reason: format!("http {code}"),
            after: None,
        },
        Response::Timeout => DeliveryVerdict::Retry {
            reason: "timeout".into(),
            after: None,
        },
        Response::Blocked(why) => DeliveryVerdict::Retry {
            reason: format!("blocked: {why}"),
            after: None,
        },
        Response::Transport(why) => DeliveryVerdict::Retry {
            reason: format!("transport: {why}"),
            after: None,
        },
    }
}

/// Parses `Retry-After`: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// The one retry policy: the configured schedule, then its last delay
/// repeated until `retry_for` after the first attempt, each delay jittered.
#[derive(Debug, Clone)]
pub struct Backoff {
    schedule: Vec<Duration>,
    retry_for: Duration,
    jitter: f64,
    max_retry_after: Duration,
}

/// What follows a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    RetryAt(DateTime<Utc>),
    DeadLetter,
}

impl Backoff {
    pub fn new(c: &WebhooksConfig) -> Self {
        Self {
            schedule: c
                .retry_schedule_seconds
                .iter()
                .map(|s| Duration::from_secs(*s))
                .collect(),
            retry_for: Duration::from_secs(c.retry_for_seconds),
            jitter: c.jitter,
            max_retry_after: Duration::from_secs(c.max_retry_after_seconds),
        }
    }

    /// How long a run of attempts starting `now` may go on.
    pub fn retry_until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + chrono::Duration::from_std(self.retry_for).unwrap_or(chrono::Duration::MAX)
    }

    /// The next attempt after a retryable failure at `now`, the `step`-th of
    /// this run (0 for the first attempt). `retry_after` from the endpoint
    /// replaces the scheduled delay, capped.
    pub fn next(
        &self,
        step: usize,
        now: DateTime<Utc>,
        retry_until: DateTime<Utc>,
        retry_after: Option<Duration>,
    ) -> Next {
        let scheduled = match self.schedule.get(step) {
            Some(d) => *d,
            None => {
                let Some(last) = self.schedule.last() else {
                    return Next::DeadLetter;
                };
                *last
            }
        };
        let delay = match retry_after {
            Some(d) => d.min(self.max_retry_after),
            None => self.jittered(scheduled),
        };
        let at = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        // The listed schedule always runs to its end; repeats stop at the
        // deadline.
        if step >= self.schedule.len() && at > retry_until {
            Next::DeadLetter
        } else {
            Next::RetryAt(at)
        }
    }

    fn jittered(&self, d: Duration) -> Duration {
        if self.jitter <= 0.0 {
            return d;
        }
        let f = rand::rng().random_range(-self.jitter..=self.jitter);
        d.mul_f64((1.0 + f).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(schedule: &[u64], retry_for: u64, jitter: f64) -> Backoff {
        Backoff::new(&WebhooksConfig {
            retry_schedule_seconds: schedule.to_vec(),
            retry_for_seconds: retry_for,
            jitter,
            ..WebhooksConfig::default()
        })
    }

    fn status(code: u16) -> Response {
        Response::Status {
            code,
            retry_after: None,
        }
    }

    #[test]
    fn classifies_like_the_issue_says() {
        assert_eq!(classify(&status(200)), DeliveryVerdict::Success);
        assert_eq!(classify(&status(204)), DeliveryVerdict::Success);
        assert!(matches!(
            classify(&status(410)),
            DeliveryVerdict::DontRetry {
                disable_endpoint: true,
                ..
            }
        ));
        for code in [301, 400, 404, 500, 502] {
            assert!(matches!(
                classify(&status(code)),
                DeliveryVerdict::Retry { after: None, .. }
            ));
        }
        let r = Response::Status {
            code: 429,
            retry_after: Some(Duration::from_secs(7)),
        };
        assert_eq!(
            classify(&r),
            DeliveryVerdict::Retry {
                reason: "http 429".into(),
                after: Some(Duration::from_secs(7))
            }
        );
        assert!(matches!(
            classify(&Response::Timeout),
            DeliveryVerdict::Retry { .. }
        ));
    }

    #[test]
    fn the_default_schedule_then_hourly_until_a_day() {
        let p = policy(&[5, 30, 120, 600, 1800, 3600], 86_400, 0.0);
        let t0 = Utc::now();
        let until = p.retry_until(t0);
        let mut now = t0;
        let mut delays = Vec::new();
        for step in 0..100 {
            match p.next(step, now, until, None) {
                Next::RetryAt(at) => {
                    delays.push((at - now).num_seconds());
                    now = at;
                }
                Next::DeadLetter => break,
            }
        }
        assert_eq!(&delays[..6], &[5, 30, 120, 600, 1800, 3600]);
        assert!(delays[6..].iter().all(|d| *d == 3600));
        assert!(now <= until && until - now < chrono::Duration::hours(1));
        assert_eq!(delays.len(), 6 + 22);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let p = policy(&[100], 0, 0.2);
        let now = Utc::now();
        for _ in 0..200 {
            let Next::RetryAt(at) = p.next(0, now, now, None) else {
                panic!("dead-lettered inside the schedule");
            };
            let d = (at - now).num_milliseconds();
            assert!((80_000..=120_000).contains(&d), "{d}");
        }
    }

    #[test]
    fn retry_after_replaces_the_schedule_but_is_capped() {
        let p = policy(&[5], 0, 0.0);
        let now = Utc::now();
        assert_eq!(
            p.next(0, now, now, Some(Duration::from_secs(42))),
            Next::RetryAt(now + chrono::Duration::seconds(42))
        );
        assert_eq!(
            p.next(0, now, now, Some(Duration::from_secs(999_999))),
            Next::RetryAt(now + chrono::Duration::seconds(3600))
        );
    }

    #[test]
    fn past_the_schedule_and_the_deadline_is_a_dead_letter() {
        let p = policy(&[1, 2], 0, 0.0);
        let now = Utc::now();
        assert!(matches!(p.next(1, now, now, None), Next::RetryAt(_)));
        assert_eq!(p.next(2, now, now, None), Next::DeadLetter);
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:29:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
