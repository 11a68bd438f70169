//! Capped exponential backoff with jitter (sans-IO: the caller supplies the randomness).

use std::time::Duration;

/// Reconnect delays: `first`, doubling up to `max`, each reduced by up to half at random so
/// that many nodes losing one broker do not reconnect in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `first`, never above `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max: max.max(first),
            next: first,
        }
    }

    /// The next delay; `rand` in [0, 1) picks the jitter.
    pub fn next(&mut self, rand: f64) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(1.0 - 0.5 * rand.clamp(0.0, 1.0))
    }

    /// After a success: start over.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<u128> = (0..6).map(|_| b.next(0.0).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(
            b.next(0.999_999).as_millis(),
            500,
            "jitter takes off at most half"
        );
        b.reset();
        assert_eq!(b.next(0.5).as_millis(), 75);
    }
}
