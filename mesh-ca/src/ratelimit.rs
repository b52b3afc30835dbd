//! Per-identity token buckets: a looping client cannot monopolise the CA.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Above this many tracked identities, idle buckets (full again) are dropped.
const PRUNE_ABOVE: usize = 10_000;

/// A token bucket per key: `rate` tokens per second, at most `burst` saved.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// `rate` per second, `burst` at once.
    pub fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate: rate.max(0.0),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key` at `now`; `false` when the bucket is empty.
    pub fn try_acquire(&self, key: &str, now: Instant) -> bool {
        self.acquire(key, now).is_ok()
    }

    /// Takes one token for `key` at `now`, or says how long until the
    /// bucket holds one again (the retry hint of a refusal).
    pub fn acquire(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let Ok(mut b) = self.buckets.lock() else {
            return Ok(()); // a poisoned lock must not stop signing
        };
        if b.len() > PRUNE_ABOVE {
            let full_after = Duration::from_secs_f64(self.burst / self.rate.max(1e-9));
            b.retain(|_, (_, t)| now.saturating_duration_since(*t) < full_after);
        }
        let (tokens, last) = b.entry(key.to_string()).or_insert((self.burst, now));
        let elapsed = now.saturating_duration_since(*last).as_secs_f64();
        *tokens = (*tokens + elapsed * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            // A zero rate never refills: say "a minute" rather than forever.
            let wait = (1.0 - *tokens) / self.rate.max(1.0 / 60.0);
            Err(Duration::from_secs_f64(wait.min(60.0)))
        }
    }

    /// Tokens per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Tokens saved at most.
    pub fn burst(&self) -> u32 {
        self.burst as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate_per_key() {
        let l = RateLimiter::new(10.0, 20);
        let t0 = Instant::now();
        for i in 0..20 {
            assert!(l.try_acquire("a", t0), "burst {i}");
        }
        assert!(!l.try_acquire("a", t0));
        assert!(l.try_acquire("b", t0), "other identity has its own bucket");
        assert!(!l.try_acquire("a", t0 + Duration::from_millis(50)));
        assert!(l.try_acquire("a", t0 + Duration::from_millis(110)));
        assert!(!l.try_acquire("a", t0 + Duration::from_millis(120)));
        // Refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(60);
        let n = (0..100).filter(|_| l.try_acquire("a", later)).count();
        assert_eq!(n, 20);
    }

    #[test]
    fn a_refusal_says_when_a_token_is_back() {
        let l = RateLimiter::new(10.0, 1);
        let t0 = Instant::now();
        assert_eq!(l.acquire("a", t0), Ok(()));
        let wait = l.acquire("a", t0).unwrap_err();
        assert!(
            (Duration::from_millis(99)..=Duration::from_millis(101)).contains(&wait),
            "{wait:?}"
        );
        assert_eq!(l.acquire("a", t0 + wait + Duration::from_millis(1)), Ok(()));
        // No refill at all: a bounded hint, not infinity.
        let stuck = RateLimiter::new(0.0, 1);
        assert_eq!(stuck.acquire("a", t0), Ok(()));
        assert_eq!(stuck.acquire("a", t0), Err(Duration::from_secs(60)));
    }
}
