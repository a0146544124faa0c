//! One retry policy for every wait in a shard: writes, lookups, dead letters, produces and schema
//! fetches all go through [`retry`].
//!
//! Guarantee: only errors whose [`Retryable::is_retryable`] says so are tried again; a permanent error
//! comes back at once. Every backoff is capped, jittered and ends as soon as the shard's [`Shutdown`]
//! fires, so a stop never waits for a sleeping retry. With `max_attempts`, the last retryable error is
//! returned as [`RetryError::Exhausted`] instead of trying for ever.
//! Precondition: runs inside a glommio executor (the backoff is a glommio timer).

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use futures::channel::oneshot;
use futures::future::{select, Either, FutureExt, Shared};

/// An error that knows whether trying the same operation again can succeed.
pub trait Retryable {
    /// True when the cause is outside the record (timeouts, outages, overload).
    fn is_retryable(&self) -> bool;
    /// A short, fixed class for metric labels and dead-letter headers (never a value of a record).
    fn class(&self) -> &'static str;
}

/// What an error is about, which decides what happens to the record that met it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Timeouts, outages, overload, lost connections: try again.
    Transient,
    /// This record was refused (its values, its size): dead-letter the record.
    Record,
    /// The table, the topic, the session or the credentials: every record would fail the same way,
    /// so the shard stops without committing instead of dead-lettering everything.
    Systemic,
}

/// How often and how long to wait between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first backoff; it doubles per attempt up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// None: retry a retryable error until it succeeds or the shard stops.
    pub max_attempts: Option<u32>,
}

impl RetryPolicy {
    /// Database writes and lookups, registry outages: 50 ms doubling to 5 s, no attempt cap (the data
    /// must not be skipped; back-pressure pauses the partitions meanwhile).
    pub const UNTIL_STOPPED: RetryPolicy = RetryPolicy {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_secs(5),
        max_attempts: None,
    };

    /// The backoff before attempt `attempt + 1` (1-based count of failures so far), with ±50% jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let base = self.initial_backoff.as_millis() as u64;
        let cap = self.max_backoff.as_millis() as u64;
        let ms = base
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(20))
            .min(cap);
        Duration::from_millis(ms / 2 + fastrand::u64(0..=ms))
    }
}

/// Why [`retry`] gave up.
#[derive(Debug, PartialEq, Eq)]
pub enum RetryError<E> {
    /// Not retryable: trying again cannot help.
    Permanent(E),
    /// Retryable, but `max_attempts` were spent.
    Exhausted(E),
    /// The shard is stopping; the operation did not succeed and must not count as done.
    Stopped(E),
}

impl<E> RetryError<E> {
    pub fn into_inner(self) -> E {
        match self {
            RetryError::Permanent(e) | RetryError::Exhausted(e) | RetryError::Stopped(e) => e,
        }
    }
}

/// Runs `op` until it succeeds, fails permanently, runs out of attempts or the shard stops.
/// `on_retry(error, attempt, backoff)` is called before each backoff (log and count it there).
pub async fn retry<T, E, Fut>(
    policy: &RetryPolicy,
    shutdown: &Shutdown,
    mut op: impl FnMut() -> Fut,
    mut on_retry: impl FnMut(&E, u32, Duration),
) -> Result<T, RetryError<E>>
where
    E: Retryable,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 0u32;
    loop {
        let err = match op().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if !err.is_retryable() {
            return Err(RetryError::Permanent(err));
        }
        attempt += 1;
        if policy.max_attempts.is_some_and(|max| attempt >= max) {
            return Err(RetryError::Exhausted(err));
        }
        if shutdown.is_stopped() {
            return Err(RetryError::Stopped(err));
        }
        let wait = policy.backoff(attempt);
        on_retry(&err, attempt, wait);
        if !shutdown.sleep(wait).await {
            return Err(RetryError::Stopped(err));
        }
    }
}

/// A shard's stop signal, passed into every wait so that a stop ends backoffs and schema waits.
/// Cheap to clone (one shard, one thread).
#[derive(Clone)]
pub struct Shutdown {
    fired: Shared<oneshot::Receiver<()>>,
    trigger: Rc<RefCell<Option<oneshot::Sender<()>>>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        let (tx, rx) = oneshot::channel();
        Shutdown {
            fired: rx.shared(),
            trigger: Rc::new(RefCell::new(Some(tx))),
        }
    }

    /// Fires the signal: every current and future wait ends. Idempotent.
    pub fn stop(&self) {
        if let Some(tx) = self.trigger.borrow_mut().take() {
            let _ = tx.send(());
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.trigger.borrow().is_none()
    }

    /// Resolves when the signal fires.
    pub async fn stopped(&self) {
        let _ = self.fired.clone().await;
    }

    /// Sleeps for `d`; false if the signal fired first.
    pub async fn sleep(&self, d: Duration) -> bool {
        if self.is_stopped() {
            return false;
        }
        let timer = std::pin::pin!(glommio::timer::sleep(d));
        let stop = std::pin::pin!(self.stopped());
        matches!(select(timer, stop).await, Either::Left(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::time::Instant;

    #[derive(Debug, PartialEq, Eq)]
    struct E(bool);
    impl Retryable for E {
        fn is_retryable(&self) -> bool {
            self.0
        }
        fn class(&self) -> &'static str {
            "test"
        }
    }

    const FAST: RetryPolicy = RetryPolicy {
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
        max_attempts: None,
    };

    fn on_executor<T: 'static>(f: impl Future<Output = T> + 'static) -> T {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .expect("executor starts")
            .run(f)
    }

    #[test]
    fn retryable_errors_are_retried_until_success() {
        let (n, retried) = on_executor(async {
            let calls = Cell::new(0u32);
            let mut retried = 0;
            let r = retry(
                &FAST,
                &Shutdown::new(),
                || {
                    calls.set(calls.get() + 1);
                    let c = calls.get();
                    async move {
                        if c < 4 {
                            Err(E(true))
                        } else {
                            Ok(c)
                        }
                    }
                },
                |_, _, _| retried += 1,
            )
            .await;
            (r, retried)
        });
        assert_eq!(n, Ok(4));
        assert_eq!(retried, 3);
    }

    #[test]
    fn permanent_errors_are_never_retried() {
        let (r, calls) = on_executor(async {
            let calls = Cell::new(0u32);
            let r: Result<(), _> = retry(
                &FAST,
                &Shutdown::new(),
                || {
                    calls.set(calls.get() + 1);
                    async { Err(E(false)) }
                },
                |_, _, _| {},
            )
            .await;
            (r, calls.get())
        });
        assert_eq!(r, Err(RetryError::Permanent(E(false))));
        assert_eq!(calls, 1);
    }

    #[test]
    fn attempts_are_capped_when_the_policy_says_so() {
        let r = on_executor(async {
            let p = RetryPolicy {
                max_attempts: Some(3),
                ..FAST
            };
            let calls = Rc::new(Cell::new(0u32));
            let c = calls.clone();
            let r: Result<(), _> = retry(
                &p,
                &Shutdown::new(),
                move || {
                    c.set(c.get() + 1);
                    async { Err(E(true)) }
                },
                |_, _, _| {},
            )
            .await;
            (r, calls.get())
        });
        assert_eq!(r, (Err(RetryError::Exhausted(E(true))), 3));
    }

    #[test]
    fn a_stop_ends_a_long_backoff_at_once() {
        let (r, waited) = on_executor(async {
            let shutdown = Shutdown::new();
            let s2 = shutdown.clone();
            glommio::spawn_local(async move {
                glommio::timer::sleep(Duration::from_millis(20)).await;
                s2.stop();
            })
            .detach();
            let slow = RetryPolicy {
                initial_backoff: Duration::from_secs(60),
                max_backoff: Duration::from_secs(60),
                max_attempts: None,
            };
            let t = Instant::now();
            let r: Result<(), _> =
                retry(&slow, &shutdown, || async { Err(E(true)) }, |_, _, _| {}).await;
            (r, t.elapsed())
        });
        assert_eq!(r, Err(RetryError::Stopped(E(true))));
        assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter() {
        let p = RetryPolicy::UNTIL_STOPPED;
        for _ in 0..100 {
            let first = p.backoff(1);
            assert!(first >= Duration::from_millis(25) && first <= Duration::from_millis(75));
            let late = p.backoff(30);
            assert!(late >= Duration::from_millis(2500) && late <= Duration::from_millis(7500));
        }
    }
}
