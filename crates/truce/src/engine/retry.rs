//! Retries with exponential backoff and full jitter, for read-modify-write loops.

use std::time::Duration;

use rand::Rng;

/// How often and how patiently to retry a conflicting operation.
///
/// Attempt `n` (1-based) that conflicted sleeps a uniformly random time in
/// `[0, min(max_delay, base_delay × 2^(n-1))]` before attempt `n+1` ("full jitter":
/// contending writers spread out instead of colliding again in lockstep).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, including the first. At least 1.
    pub max_attempts: u32,
    /// The backoff ceiling after the first conflict.
    pub base_delay: Duration,
    /// No single sleep is longer than this.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 10 attempts, 1 ms doubling up to 100 ms: a hot document under 32 writers
    /// settles within the attempts, and a caller waits at most about half a second.
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(100),
        }
    }
}

impl RetryPolicy {
    /// The largest sleep after attempt `attempt` (1-based) failed.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1).min(31))
            .unwrap_or(u32::MAX);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// A random sleep in `[0, ceiling(attempt)]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt).as_nanos() as u64;
        Duration::from_nanos(rand::rng().random_range(0..=ceiling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_and_cap() {
        let p = RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(2),
            max_delay: Duration::from_millis(10),
        };
        let ms = |a| p.ceiling(a).as_millis();
        assert_eq!([ms(1), ms(2), ms(3), ms(4), ms(100)], [2, 4, 8, 10, 10]);
        for attempt in 1..40 {
            assert!(p.delay(attempt) <= p.ceiling(attempt));
        }
    }

    #[test]
    fn jitter_spreads() {
        let p = RetryPolicy::default();
        let samples: std::collections::HashSet<_> = (0..50).map(|_| p.delay(5)).collect();
        assert!(samples.len() > 10, "full jitter should rarely repeat");
    }
}
