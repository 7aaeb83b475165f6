//! Jittered exponential backoff: the one retry policy of every loop that
//! retries (Consul and Docker requests, blocking queries, supervised processes).

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with "equal jitter": the n-th delay (from 0) is
/// uniform in `[c / 2, c]` where `c = min(base * 2^n, max)`, so delays grow
/// but never collapse to nothing. Call [`Backoff::reset`] after a success.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self { base, max, attempt: 0 }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(16));
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = exp.min(self.max);
        let floor = ceiling / 2;
        let span = u64::try_from(ceiling.saturating_sub(floor).as_micros()).unwrap_or(u64::MAX);
        floor + Duration::from_micros(if span == 0 { 0 } else { rand::rng().random_range(0..=span) })
    }

    /// Sleeps for [`Backoff::next_delay`].
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many delays were handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_within_jitter_bounds_and_stop_at_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        for n in 0..10u32 {
            let d = b.next_delay();
            let ceiling = (Duration::from_millis(100) * 2u32.pow(n)).min(Duration::from_secs(1));
            assert!(d >= ceiling / 2 && d <= ceiling, "attempt {n}: {d:?} outside [{:?}, {ceiling:?}]", ceiling / 2);
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
