//! Retry timing for registrations: exponential backoff with jitter that
//! honours Retry-After (RFC 3261 §20.33), and the refresh point of a
//! granted binding. Plain functions of their inputs, no clocks.

use std::time::Duration;

/// How registration retries after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait after the first failure.
    pub initial: Duration,
    /// Upper bound of the exponential wait (not of a Retry-After).
    pub max: Duration,
    /// Give up on one REGISTER transaction after this long (RFC 3261 timer
    /// F is 32 s; a trunk that does not answer in a few seconds is down).
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(5),
            max: Duration::from_secs(300),
            request_timeout: Duration::from_secs(32),
        }
    }
}

impl RetryPolicy {
    /// Wait before attempt `failures + 1`, after `failures` (>= 1) failures
    /// in a row. `jitter` is a uniform sample in `[0, 1)`: the exponential
    /// wait is spread over ±20 % so that trunks do not retry in lockstep;
    /// a Retry-After is waited at least, plus up to 10 %.
    pub fn delay(&self, failures: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        let jitter = jitter.clamp(0.0, 1.0);
        if let Some(retry_after) = retry_after {
            return retry_after.mul_f64(1.0 + 0.1 * jitter);
        }
        let exponent = failures.saturating_sub(1).min(20);
        let base = self.initial.saturating_mul(1u32 << exponent).min(self.max);
        base.mul_f64(0.8 + 0.4 * jitter)
    }
}

/// When to refresh a binding granted for `granted`: half-way for short
/// bindings, at most five minutes before expiry for long ones, never sooner
/// than one second.
pub fn refresh_after(granted: Duration) -> Duration {
    let margin = (granted / 2).min(Duration::from_secs(300));
    granted.saturating_sub(margin).max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(60),
            request_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn backoff_grows_even_with_worst_case_jitter() {
        let p = policy();
        for failures in 1..5 {
            let high = p.delay(failures, None, 0.999);
            let low_next = p.delay(failures + 1, None, 0.0);
            assert!(low_next > high, "{failures}: {low_next:?} <= {high:?}");
        }
    }

    #[test]
    fn backoff_is_capped() {
        let p = policy();
        assert!(p.delay(30, None, 0.999) <= Duration::from_secs(72));
        assert!(p.delay(u32::MAX, None, 0.0) >= Duration::from_secs(48));
    }

    #[test]
    fn retry_after_wins_over_backoff_and_cap() {
        let p = policy();
        let d = p.delay(1, Some(Duration::from_secs(600)), 0.5);
        assert!(d >= Duration::from_secs(600) && d <= Duration::from_secs(660));
    }

    #[test]
    fn refresh_well_before_expiry() {
        assert_eq!(
            refresh_after(Duration::from_secs(3600)),
            Duration::from_secs(3300)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(60)),
            Duration::from_secs(30)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(1)),
            Duration::from_secs(1)
        );
    }
}
