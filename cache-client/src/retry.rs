//! Retries as gRPC A6 defines them: only `UNAVAILABLE` (the server did not process the call), at most 5
//! attempts, full-jitter exponential backoff, and a token bucket per client that stops retrying while most
//! calls fail, so an outage does not become a retry storm. The call's deadline spans every attempt.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::error::Error;

/// Most attempts a call may make (gRPC A6 caps `maxAttempts` at 5).
pub const MAX_ATTEMPTS_LIMIT: u32 = 5;

/// How the client retries calls that failed with `UNAVAILABLE`.
///
/// The defaults: 3 attempts, backoff `random(0, min(50 ms × 2^(n-1), 500 ms))`, throttled by
/// [`RetryThrottling::default`] (10 tokens, ratio 0.1).
///
/// ```
/// use std::time::Duration;
/// use cache_client::RetryPolicy;
///
/// let policy = RetryPolicy {
///     max_attempts: 4,
///     initial_backoff: Duration::from_millis(20),
///     ..RetryPolicy::default()
/// };
/// assert_eq!(policy.max_backoff, Duration::from_millis(500));
/// assert_eq!(RetryPolicy::disabled().max_attempts, 1);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts per call, the first included: 1 (no retry) to 5. Default 3.
    pub max_attempts: u32,
    /// Upper bound of the first retry's random delay. Default 50 ms.
    pub initial_backoff: Duration,
    /// Upper bound of any retry's random delay. Default 500 ms.
    pub max_backoff: Duration,
    /// Growth of the delay bound per retry (at least 1.0). Default 2.0.
    pub backoff_multiplier: f64,
    /// The retry budget shared by every call of one client (and its clones); `None` retries every
    /// `UNAVAILABLE` up to `max_attempts`. Default [`RetryThrottling::default`].
    pub throttling: Option<RetryThrottling>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            backoff_multiplier: 2.0,
            throttling: Some(RetryThrottling::default()),
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn disabled() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        let invalid = |setting, reason: &str| {
            Err(Error::InvalidConfig {
                setting,
                reason: reason.to_owned(),
            })
        };
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&self.max_attempts) {
            return invalid("retry.max_attempts", "must be between 1 and 5");
        }
        if self.initial_backoff > self.max_backoff {
            return invalid("retry.initial_backoff", "must not exceed max_backoff");
        }
        if !(self.backoff_multiplier >= 1.0 && self.backoff_multiplier.is_finite()) {
            return invalid("retry.backoff_multiplier", "must be a finite number >= 1.0");
        }
        if let Some(t) = &self.throttling {
            if !(1..=1000).contains(&t.max_tokens) {
                return invalid("retry.throttling.max_tokens", "must be between 1 and 1000");
            }
            if !(t.token_ratio > 0.0 && t.token_ratio <= t.max_tokens as f64) {
                return invalid(
                    "retry.throttling.token_ratio",
                    "must be positive and at most max_tokens",
                );
            }
        }
        Ok(())
    }

    /// The random delay before retry number `retry` (1 for the first retry).
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
        let exponent = retry.saturating_sub(1).min(64) as i32;
        let bound = self
            .initial_backoff
            .mul_f64(self.backoff_multiplier.powi(exponent).min(1e9))
            .min(self.max_backoff);
        bound.mul_f64(rand::random::<f64>())
    }
}

/// gRPC A6 retry throttling: every failed attempt takes a token, every success gives back `token_ratio`, and
/// retries stop while the bucket holds half of `max_tokens` or less.
///
/// With the defaults (10 tokens, ratio 0.1), a client whose calls all fail makes at most 4 retries in all
/// (after failures that leave 9, 8, 7 and 6 tokens) until successes refill the bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryThrottling {
    /// Size of the bucket (1 to 1000). Default 10.
    pub max_tokens: u32,
    /// Tokens a successful call gives back. Default 0.1.
    pub token_ratio: f64,
}

impl Default for RetryThrottling {
    fn default() -> Self {
        Self {
            max_tokens: 10,
            token_ratio: 0.1,
        }
    }
}

/// The token bucket of [`RetryThrottling`], in thousandths of a token (A6 specifies three decimals).
#[derive(Debug)]
pub(crate) struct RetryBudget {
    milli_tokens: AtomicU32,
    max_milli: u32,
    ratio_milli: u32,
}

impl RetryBudget {
    pub(crate) fn new(throttling: RetryThrottling) -> Self {
        let max_milli = throttling.max_tokens * 1000;
        Self {
            milli_tokens: AtomicU32::new(max_milli),
            max_milli,
            ratio_milli: ((throttling.token_ratio * 1000.0).round() as u32).max(1),
        }
    }

    /// Records a failed attempt (one that could have been retried).
    pub(crate) fn on_failure(&self) {
        let _ = self
            .milli_tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_sub(1000))
            });
    }

    /// Records a successful call.
    pub(crate) fn on_success(&self) {
        let _ = self
            .milli_tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some((t + self.ratio_milli).min(self.max_milli))
            });
    }

    /// Whether a retry may be made now.
    pub(crate) fn allows_retry(&self) -> bool {
        self.milli_tokens.load(Ordering::Acquire) > self.max_milli / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_is_valid_and_limits_are_enforced() {
        RetryPolicy::default().validate().unwrap();
        RetryPolicy::disabled().validate().unwrap();
        for bad in [0, 6] {
            let policy = RetryPolicy {
                max_attempts: bad,
                ..RetryPolicy::default()
            };
            assert!(matches!(
                policy.validate(),
                Err(Error::InvalidConfig {
                    setting: "retry.max_attempts",
                    ..
                })
            ));
        }
        let inverted = RetryPolicy {
            initial_backoff: Duration::from_secs(2),
            ..RetryPolicy::default()
        };
        assert!(inverted.validate().is_err());
    }

    #[test]
    fn backoff_is_jittered_below_an_exponential_bound() {
        let policy = RetryPolicy::default();
        for _ in 0..1000 {
            assert!(policy.backoff(1) <= Duration::from_millis(50));
            assert!(policy.backoff(2) <= Duration::from_millis(100));
            assert!(policy.backoff(3) <= Duration::from_millis(200));
            assert!(policy.backoff(30) <= Duration::from_millis(500));
        }
        let spread: Vec<_> = (0..100).map(|_| policy.backoff(4)).collect();
        assert!(
            spread.iter().any(|d| *d != spread[0]),
            "backoff is randomized"
        );
    }

    #[test]
    fn budget_stops_retries_after_half_the_tokens_and_refills_on_success() {
        let budget = RetryBudget::new(RetryThrottling::default());
        let mut retries = 0;
        for _ in 0..100 {
            budget.on_failure();
            if budget.allows_retry() {
                retries += 1;
            }
        }
        assert_eq!(
            retries, 4,
            "10 tokens, threshold 5: failures 1..4 leave 9..6 tokens"
        );
        assert!(!budget.allows_retry());
        // Each success gives 0.1 back: from 0 tokens, 51 successes lift the bucket above 5.
        for _ in 0..50 {
            budget.on_success();
        }
        assert!(!budget.allows_retry());
        budget.on_success();
        assert!(budget.allows_retry());
    }
}
