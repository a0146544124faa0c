//! The per-shard write-rate cap (`scylla.max_writes_per_s`): a token bucket every insert sink of the
//! shard draws one token from per row of each write attempt (a batch of n rows takes n).
//!
//! Guarantee: over any window, a shard starts at most `rate × window + burst` writes (burst = one
//! second's worth); a write waits for its token on a glommio timer that the shard's stop ends.
//! Precondition: one bucket per shard, used on its own thread (no lock).

use std::cell::Cell;
use std::time::{Duration, Instant};

use crate::retry::Shutdown;

/// A token bucket.
pub struct WriteRate {
    per_s: f64,
    burst: f64,
    /// Tokens left and when they were counted.
    state: Cell<(f64, Instant)>,
}

impl WriteRate {
    pub fn new(per_s: u32, now: Instant) -> WriteRate {
        let per_s = f64::from(per_s.max(1));
        WriteRate {
            per_s,
            burst: per_s,
            state: Cell::new((per_s, now)),
        }
    }

    /// Takes a token at `now`, or says how long until one is there (nothing is taken then).
    pub fn try_take(&self, now: Instant) -> Result<(), Duration> {
        self.try_take_n(now, 1)
    }

    /// Takes `n` tokens at once, or says how long until they are there. A batch never holds more
    /// rows than the burst (`BatchLimits::from_config`); should one ever, it takes the whole bucket
    /// rather than wait for ever.
    pub fn try_take_n(&self, now: Instant, n: usize) -> Result<(), Duration> {
        let want = (n as f64).min(self.burst);
        let (tokens, at) = self.state.get();
        let refilled =
            (tokens + now.saturating_duration_since(at).as_secs_f64() * self.per_s).min(self.burst);
        if refilled >= want {
            self.state.set((refilled - want, now));
            Ok(())
        } else {
            self.state.set((refilled, now));
            Err(Duration::from_secs_f64((want - refilled) / self.per_s))
        }
    }

    /// Waits for `n` tokens (one per row); false if the shard stopped first.
    pub async fn acquire(&self, shutdown: &Shutdown, n: usize) -> bool {
        loop {
            match self.try_take_n(Instant::now(), n) {
                Ok(()) => return true,
                Err(wait) => {
                    if !shutdown.sleep(wait).await {
                        return false;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_bursts_one_second_then_paces_at_the_rate() {
        let t0 = Instant::now();
        let r = WriteRate::new(100, t0);
        for _ in 0..100 {
            assert_eq!(r.try_take(t0), Ok(()));
        }
        let wait = r.try_take(t0).expect_err("the burst is spent");
        assert!(
            wait <= Duration::from_millis(10) && wait > Duration::ZERO,
            "{wait:?}"
        );
        // One second later: exactly one second's worth again, never more than the burst.
        let t1 = t0 + Duration::from_secs(5);
        let taken = (0..1000).filter(|_| r.try_take(t1).is_ok()).count();
        assert_eq!(taken, 100);
        let t2 = t1 + Duration::from_millis(50);
        let taken = (0..1000).filter(|_| r.try_take(t2).is_ok()).count();
        assert_eq!(taken, 5, "50 ms at 100/s");
    }

    #[test]
    fn a_batch_takes_a_token_per_row() {
        let t0 = Instant::now();
        let r = WriteRate::new(100, t0);
        assert_eq!(r.try_take_n(t0, 60), Ok(()));
        let wait = r.try_take_n(t0, 60).expect_err("only 40 left");
        // 20 tokens short at 100/s: 200 ms.
        assert!(
            wait > Duration::from_millis(190) && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
        assert_eq!(r.try_take_n(t0, 40), Ok(()));
    }
}
