//! A token bucket per (identity, program version), in exact integer arithmetic.
//!
//! The bucket holds at most `count` evaluations and refills `count` per window, continuously.
//! To stay exact with any count and window, the level is kept in *units* where one evaluation is
//! `window_ms` units: then the refill is exactly `count` units per millisecond and nothing is
//! ever rounded, so a bucket stored and reloaded after every request behaves exactly like one
//! kept in memory. Time is a millisecond count passed in by the caller, never read here.

use crate::PolicyError;

/// A policy's `rate_limit` per `rate_window_secs`, checked once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    count: u32,
    window_ms: u64,
}

impl RateLimit {
    pub fn new(count: u32, window_secs: u32) -> Result<RateLimit, PolicyError> {
        if count == 0 || window_secs == 0 {
            return Err(PolicyError::InvalidRateLimit { count, window_secs });
        }
        Ok(RateLimit {
            count,
            window_ms: u64::from(window_secs) * 1000,
        })
    }

    /// The units one evaluation takes.
    fn cost(&self) -> u128 {
        u128::from(self.window_ms)
    }

    fn capacity(&self) -> u128 {
        u128::from(self.count) * u128::from(self.window_ms)
    }
}

/// A bucket's state: its level in units (see the module docs) as of `updated_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    pub level: u128,
    pub updated_ms: u64,
}

impl TokenBucket {
    /// A bucket first seen at `now_ms`: full, so a new identity may burst up to the limit.
    pub fn full(limit: &RateLimit, now_ms: u64) -> TokenBucket {
        TokenBucket {
            level: limit.capacity(),
            updated_ms: now_ms,
        }
    }

    fn refill(&mut self, limit: &RateLimit, now_ms: u64) {
        // A clock that steps backwards refills nothing (and does not move `updated_ms` back,
        // which would refill the same interval twice).
        let elapsed = now_ms.saturating_sub(self.updated_ms);
        let added = u128::from(elapsed) * u128::from(limit.count);
        self.level = self.level.saturating_add(added).min(limit.capacity());
        self.updated_ms = self.updated_ms.max(now_ms);
    }

    /// Takes one evaluation's worth at `now_ms`, or refuses with the whole seconds to wait until
    /// one is available (rounded up, so retrying after exactly that long succeeds).
    pub fn take(&mut self, limit: &RateLimit, now_ms: u64) -> Result<(), PolicyError> {
        self.refill(limit, now_ms);
        if self.level >= limit.cost() {
            self.level -= limit.cost();
            return Ok(());
        }
        let deficit = limit.cost() - self.level;
        let wait_ms = deficit.div_ceil(u128::from(limit.count));
        let retry_after_secs = u64::try_from(wait_ms.div_ceil(1000)).unwrap_or(u64::MAX);
        Err(PolicyError::RateLimited { retry_after_secs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn retry_after(r: Result<(), PolicyError>) -> u64 {
        match r {
            Err(PolicyError::RateLimited { retry_after_secs }) => retry_after_secs,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn bursts_to_capacity_then_refills_continuously() {
        let limit = RateLimit::new(3, 60).unwrap();
        let mut b = TokenBucket::full(&limit, 0);
        for _ in 0..3 {
            b.take(&limit, 0).unwrap();
        }
        // One evaluation comes back every 20 s.
        assert_eq!(retry_after(b.take(&limit, 0)), 20);
        assert_eq!(retry_after(b.take(&limit, 19_999)), 1);
        b.take(&limit, 20_000).unwrap();
        assert_eq!(retry_after(b.take(&limit, 20_000)), 20);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let limit = RateLimit::new(10, 1).unwrap();
        let mut b = TokenBucket::full(&limit, 0);
        for _ in 0..10 {
            b.take(&limit, 0).unwrap();
        }
        // 100 ms per evaluation: the exact wait is 0.1 s, reported as 1.
        assert_eq!(retry_after(b.take(&limit, 0)), 1);
        b.take(&limit, 100).unwrap();
    }

    #[test]
    fn the_level_never_exceeds_capacity() {
        let limit = RateLimit::new(2, 1).unwrap();
        let mut b = TokenBucket::full(&limit, 0);
        b.take(&limit, 1_000_000).unwrap();
        b.take(&limit, 1_000_000).unwrap();
        assert!(b.take(&limit, 1_000_000).is_err());
    }

    #[test]
    fn a_clock_stepping_back_refills_nothing() {
        let limit = RateLimit::new(1, 10).unwrap();
        let mut b = TokenBucket::full(&limit, 50_000);
        b.take(&limit, 50_000).unwrap();
        assert_eq!(retry_after(b.take(&limit, 40_000)), 10);
        assert_eq!(b.updated_ms, 50_000);
        b.take(&limit, 60_000).unwrap();
    }

    #[test]
    fn zero_counts_and_windows_are_refused() {
        assert!(RateLimit::new(0, 60).is_err());
        assert!(RateLimit::new(5, 0).is_err());
    }

    #[test]
    fn the_largest_policy_does_not_overflow() {
        let limit = RateLimit::new(u32::MAX, u32::MAX).unwrap();
        let mut b = TokenBucket::full(&limit, u64::MAX - 1);
        b.take(&limit, u64::MAX).unwrap();
    }

    proptest! {
        /// Over any interval, a bucket admits at most its capacity plus the refill.
        #[test]
        fn never_admits_more_than_capacity_plus_refill(
            count in 1u32..20,
            window_secs in 1u32..120,
            gaps in proptest::collection::vec(0u64..5_000, 1..300),
        ) {
            let limit = RateLimit::new(count, window_secs).unwrap();
            let start = 1_000_000u64;
            let mut b = TokenBucket::full(&limit, start);
            let mut now = start;
            let mut admitted = 0u64;
            for gap in gaps {
                now += gap;
                if b.take(&limit, now).is_ok() {
                    admitted += 1;
                }
                let elapsed = u128::from(now - start);
                let refill = elapsed * u128::from(count) / (u128::from(window_secs) * 1000);
                prop_assert!(u128::from(admitted) <= u128::from(count) + refill);
            }
        }

        /// Retry-After is exact to the second: waiting that long admits, a second less does not.
        #[test]
        fn retry_after_is_the_exact_wait_rounded_up(
            count in 1u32..50,
            window_secs in 1u32..3_600,
            drained_at in 0u64..10_000,
            extra in 0u32..5,
        ) {
            let limit = RateLimit::new(count, window_secs).unwrap();
            let mut b = TokenBucket::full(&limit, 0);
            for _ in 0..count {
                b.take(&limit, drained_at).unwrap();
            }
            // A few refused attempts change nothing.
            for _ in 0..extra {
                prop_assert!(b.take(&limit, drained_at).is_err());
            }
            let secs = retry_after(b.take(&limit, drained_at));
            prop_assert!(secs >= 1);
            let mut early = b;
            prop_assert!(early.take(&limit, drained_at + (secs - 1) * 1000).is_err());
            prop_assert!(b.take(&limit, drained_at + secs * 1000).is_ok());
        }
    }
}
