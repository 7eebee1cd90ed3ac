//! Waiting before trying again: exponential backoff and jitter, shared by
//! the long-running tasks (the SFC engine, the publisher) and the MQTT
//! session's reconnect policy.

use super::shutdown::Shutdown;
use rand::Rng;
use std::time::Duration;

/// Full jitter: a random delay between half of `d` and `d`.
pub(crate) fn jitter(d: Duration) -> Duration {
    let ms = d.as_millis().max(2) as u64;
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
}

/// Exponential backoff without I/O: `min` first, doubling up to `max`,
/// started over by [`Exponential::reset`].
#[derive(Debug, Clone)]
pub(crate) struct Exponential {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Exponential {
    /// Waits `min` first, doubling up to `max`.
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Exponential {
            min,
            max,
            next: min,
        }
    }

    /// The largest delay.
    pub(crate) fn max(&self) -> Duration {
        self.max
    }

    /// The next delay (before jitter); the one after it doubles.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// The next delay will be at least `at_least`.
    pub(crate) fn raise_to(&mut self, at_least: Duration) {
        self.next = self.next.max(at_least);
    }

    /// Starts over from `min`.
    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Backoff between the sessions of a long-running task (the publisher, the
/// SFC engine): after a failed session it waits, doubling up to a maximum;
/// a session that ran longer than the maximum starts over from the minimum.
#[derive(Debug)]
pub(crate) struct Backoff {
    delays: Exponential,
}

impl Backoff {
    /// Waits `min` after the first failure, doubling up to `max`.
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            delays: Exponential::new(min, max),
        }
    }

    /// The delay before the next session after one that failed after
    /// running `ran`.
    fn delay_after(&mut self, ran: Duration) -> Duration {
        if ran > self.delays.max() {
            self.delays.reset();
        }
        self.delays.next_delay()
    }

    /// Waits before the next session after one that failed after running
    /// `ran`; `false` when shutdown came first.
    pub(crate) async fn wait(&mut self, ran: Duration, shutdown: &mut Shutdown) -> bool {
        let delay = self.delay_after(ran);
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = shutdown.wait() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(1);

    #[test]
    fn delays_double_up_to_the_maximum() {
        let mut e = Exponential::new(MIN, MAX);
        let d: Vec<u128> = (0..6).map(|_| e.next_delay().as_millis()).collect();
        assert_eq!(d, [100, 200, 400, 800, 1000, 1000]);
        e.reset();
        assert_eq!(e.next_delay(), MIN);
        e.raise_to(Duration::from_secs(5));
        assert_eq!(e.next_delay(), Duration::from_secs(5));
        assert_eq!(e.next_delay(), MAX, "doubling is still capped");
    }

    #[test]
    fn a_task_session_that_ran_longer_than_the_maximum_starts_over() {
        let mut b = Backoff::new(MIN, MAX);
        assert_eq!(b.delay_after(Duration::ZERO), MIN);
        assert_eq!(b.delay_after(Duration::ZERO), MIN * 2);
        assert_eq!(b.delay_after(MAX * 2), MIN);
    }

    #[test]
    fn jitter_stays_between_half_and_all_of_the_delay() {
        for _ in 0..200 {
            let j = jitter(Duration::from_millis(1000));
            assert!(j >= Duration::from_millis(500) && j <= Duration::from_millis(1000));
        }
    }
}
