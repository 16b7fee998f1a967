//! How often and how patiently to retry: exponential backoff with full jitter,
//! a server's `Retry-After` honoured, and the idempotency keys that make
//! retrying a write safe.

use std::time::Duration;

use rand::Rng;

/// Attempts per logical call by default (the first try included).
const ATTEMPTS_DEFAULT: u32 = 5;
/// Ceiling of the first backoff by default; each later one doubles it.
const BASE_DELAY_DEFAULT: Duration = Duration::from_millis(100);
/// No single wait is longer than this by default, whatever the server asks.
const MAX_DELAY_DEFAULT: Duration = Duration::from_secs(5);

/// When and how long to wait before trying a call again.
///
/// The wait after failed attempt `n` (1-based) is drawn uniformly from
/// `[0, min(max_delay, base_delay · 2^(n-1))]` ("full jitter", so that clients that
/// failed together do not retry together). When the server answered 408, 429
/// or 503 with `Retry-After`, the wait is that (at most `max_delay`) plus the
/// jittered delay, so clients told the same wait still spread out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per logical call, the first included; 1 means "never retry".
    pub max_attempts: u32,
    /// Ceiling of the wait after the first failed attempt.
    pub base_delay: Duration,
    /// Ceiling of any single wait.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts, 100 ms base, 5 s cap: the numbers of the seed's backoff example.
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: ATTEMPTS_DEFAULT,
            base_delay: BASE_DELAY_DEFAULT,
            max_delay: MAX_DELAY_DEFAULT,
        }
    }
}

impl RetryPolicy {
    /// A policy of `max_attempts` attempts (at least 1) with the given delays.
    pub fn new(max_attempts: u32, base_delay: Duration, max_delay: Duration) -> RetryPolicy {
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            base_delay,
            max_delay,
        }
    }

    /// One attempt, never retried.
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The number of attempts, never less than 1.
    pub fn attempts(&self) -> u32 {
        self.max_attempts.max(1)
    }

    /// The upper bound of the jittered wait after failed attempt `failed_attempt`
    /// (1-based): `min(max_delay, base_delay · 2^(failed_attempt-1))`.
    pub fn ceiling(&self, failed_attempt: u32) -> Duration {
        let doublings = failed_attempt.saturating_sub(1);
        let factor = 1u32.checked_shl(doublings).unwrap_or(u32::MAX);
        self.base_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// The wait after failed attempt `failed_attempt`, drawing the jitter from `rng`.
    /// `retry_after` is the server's `Retry-After`, if it sent one.
    pub fn delay_with<R: Rng + ?Sized>(
        &self,
        failed_attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut R,
    ) -> Duration {
        let ceiling = self.ceiling(failed_attempt);
        let ceiling_nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        let jittered = Duration::from_nanos(rng.random_range(0..=ceiling_nanos));
        // The server's wait, capped, and the jitter after it: as a floor
        // under the jitter, every client told `Retry-After: 1` came back
        // after exactly one second, together.
        match retry_after {
            Some(asked) => asked.min(self.max_delay) + jittered,
            None => jittered,
        }
    }

    /// The wait after failed attempt `failed_attempt`, with thread-local randomness.
    pub fn delay(&self, failed_attempt: u32, retry_after: Option<Duration>) -> Duration {
        self.delay_with(failed_attempt, retry_after, &mut rand::rng())
    }
}

/// Whether an HTTP status asks the client to come back later: 429 `overloaded`,
/// 503 (`index_building`, `index_dropping`, `timeout`, or a proxy's; not
/// Truce's `unavailable`, which lasts until a restart: `transport::lasts`),
/// and 408 `request_timeout` (the body stopped arriving on the way: sent
/// again, under the same idempotency key).
pub(crate) fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 503)
}

/// Parses a `Retry-After` value given in seconds (integer or decimal). The
/// HTTP-date form is not used by Truce and yields `None`, as does anything
/// negative or unreadable.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let seconds = value.parse::<f64>().ok()?;
    Duration::try_from_secs_f64(seconds).ok()
}

/// A fresh idempotency key: 128 random bits as 32 lowercase hex characters.
/// One is drawn per logical call and reused by all of its attempts.
pub(crate) fn new_idempotency_key() -> String {
    format!("{:032x}", rand::rng().random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn policy() -> RetryPolicy {
        RetryPolicy::new(10, Duration::from_millis(100), Duration::from_secs(2))
    }

    #[test]
    fn ceiling_doubles_from_the_base_and_stops_at_the_cap() {
        let p = policy();
        assert_eq!(p.ceiling(1), Duration::from_millis(100));
        assert_eq!(p.ceiling(2), Duration::from_millis(200));
        assert_eq!(p.ceiling(3), Duration::from_millis(400));
        assert_eq!(p.ceiling(5), Duration::from_millis(1600));
        assert_eq!(p.ceiling(6), Duration::from_secs(2));
        // Huge attempt numbers neither overflow nor panic.
        assert_eq!(p.ceiling(40), Duration::from_secs(2));
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(2));
        // Attempt 0 is treated as the first.
        assert_eq!(p.ceiling(0), Duration::from_millis(100));
    }

    #[test]
    fn full_jitter_stays_within_zero_and_the_ceiling_and_spreads() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 1..=8 {
            let ceiling = p.ceiling(attempt);
            let draws: Vec<Duration> = (0..500).map(|_| p.delay_with(attempt, None, &mut rng)).collect();
            assert!(
                draws.iter().all(|d| *d <= ceiling),
                "attempt {attempt}: a draw above {ceiling:?}"
            );
            // Full jitter: draws cover the low and the high part of the range.
            assert!(
                draws.iter().any(|d| *d < ceiling / 4),
                "attempt {attempt}: nothing low"
            );
            assert!(
                draws.iter().any(|d| *d > ceiling * 3 / 4),
                "attempt {attempt}: nothing high"
            );
        }
    }

    #[test]
    fn zero_base_delay_never_waits() {
        let p = RetryPolicy::new(3, Duration::ZERO, Duration::ZERO);
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(p.delay_with(1, None, &mut rng), Duration::ZERO);
        assert_eq!(
            p.delay_with(2, Some(Duration::from_secs(3)), &mut rng),
            Duration::ZERO
        );
    }

    #[test]
    fn retry_after_comes_first_and_the_jitter_after_it() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(3);
        let mut told_one_second = std::collections::BTreeSet::new();
        for _ in 0..200 {
            // Retry-After, then the jitter of attempt 1 (≤ 100 ms): clients
            // told the same wait do not all come back at once.
            let d = p.delay_with(1, Some(Duration::from_secs(1)), &mut rng);
            assert!(
                d >= Duration::from_secs(1) && d <= Duration::from_millis(1100),
                "{d:?}"
            );
            told_one_second.insert(d);
            let d = p.delay_with(4, Some(Duration::from_millis(300)), &mut rng);
            assert!(
                d >= Duration::from_millis(300) && d <= Duration::from_millis(1100),
                "{d:?}"
            );
            // Larger than max_delay: capped, the jitter after it.
            let d = p.delay_with(1, Some(Duration::from_secs(60)), &mut rng);
            assert!(
                d >= Duration::from_secs(2) && d <= Duration::from_millis(2100),
                "{d:?}"
            );
        }
        assert!(told_one_second.len() > 150, "{}", told_one_second.len());
    }

    #[test]
    fn retry_after_parses_seconds_and_rejects_the_rest() {
        assert_eq!(parse_retry_after("1"), Some(Duration::from_secs(1)));
        assert_eq!(parse_retry_after(" 30 "), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("0.25"), Some(Duration::from_millis(250)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("NaN"), None);
        assert_eq!(parse_retry_after(""), None);
    }

    #[test]
    fn only_429_and_503_ask_for_a_retry() {
        assert!(is_retryable_status(429));
        assert!(is_retryable_status(503));
        for status in [200, 201, 304, 400, 404, 409, 422, 428, 500, 502] {
            assert!(!is_retryable_status(status), "{status}");
        }
    }

    #[test]
    fn policies_have_at_least_one_attempt() {
        assert_eq!(RetryPolicy::new(0, Duration::ZERO, Duration::ZERO).attempts(), 1);
        assert_eq!(RetryPolicy::none().attempts(), 1);
        let hand_made = RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::default()
        };
        assert_eq!(hand_made.attempts(), 1);
    }

    #[test]
    fn idempotency_keys_are_32_hex_chars_and_distinct() {
        let a = new_idempotency_key();
        let b = new_idempotency_key();
        assert_eq!(a.len(), 32);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
    }
}
