//! The tokio bridge: the scylla driver only runs on tokio, shards run on glommio. Each shard owns a
//! tokio current-thread runtime **on its own thread**, driven by the shard: no helper thread, so a
//! request and its response cost no cross-thread wake-up and no context switch (on this project's
//! 2-core box those cost more than the driver itself; see `cargo bench --bench e2e -- driver`).
//!
//! How it is driven. The driver's futures are polled by the shard's glommio tasks inside [`InTokio`],
//! which enters the runtime's context on every poll (the driver finds its reactor and timers there)
//! and counts them in flight. The runtime itself (the driver's connection tasks, its sockets and
//! timers) runs only inside [`TokioBridge::pump`] and [`TokioBridge::wait`], which [`drive`] calls
//! from a glommio task of the shard: a pump after the other tasks had their turn (it sends what they
//! queued and reads what came back). When requests are in flight and two whole turns of the
//! executor passed with nothing happening (the shard's loop said it is idle,
//! [`BridgeHandle::set_idle`], and no request started and no bridge waker fired since), the task
//! blocks the thread in tokio's poller until a response arrives, a Kafka message wakes the loop (its
//! waker is [`BridgeHandle::waker`]), or [`WAIT_MAX`] passes; then it sleeps on a glommio timer, so
//! that glommio's reactor runs before its next turn: that is where glommio fires its timers and
//! takes wake-ups from other threads (librdkafka's, for the consumer stream), so while the loop is
//! idle they are late by about [`WAIT_MAX`] at most. While the loop is busy (a backlog) the reactor
//! runs at glommio's preempt timer; the loop does its tick's work itself then. With nothing in
//! flight the task sleeps in glommio and pumps every [`IDLE_PUMP`], which keeps the driver's
//! keep-alives and topology refreshes going. [`Driver::stop`] ends the task, so the runtime goes
//! with the shard.
//!
//! Precondition: create tokio resources (the Session, sockets, timers) inside [`TokioBridge::block_on`]
//! or an [`InTokio`] future, never outside one (there is no runtime context there and tokio panics);
//! never call [`TokioBridge::pump`], [`TokioBridge::wait`] or [`TokioBridge::block_on`] from inside an
//! [`InTokio`] poll.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures::task::AtomicWaker;
use pin_project_lite::pin_project;
use tokio::runtime::{Handle, Runtime};

/// The longest the shard's thread blocks in tokio's poller while requests are in flight; glommio
/// timers (retry backoffs, the loop's tick) and foreign wake-ups are at most this late meanwhile
/// (give or take tokio's timer resolution, 1 ms).
pub const WAIT_MAX: Duration = Duration::from_millis(1);
/// How often the runtime is pumped when nothing is in flight (driver keep-alives, every 30 s by
/// default, and topology refreshes, every 60 s: a second late is nothing to them). Each pump is a
/// wake-up of an idle shard (~0.2 ms of CPU on a shared box), so not more often than the idle
/// loop's own tick. A request that starts wakes the driver at once, whatever this is.
pub const IDLE_PUMP: Duration = Duration::from_secs(1);

/// What the bridge's wakers, futures and driver task share. Atomics: a waker may be called from any
/// thread (librdkafka's, for the consumer stream).
#[derive(Default)]
struct Link {
    /// Driver futures in flight (polled at least once, not finished).
    in_flight: AtomicUsize,
    /// Set by every bridge waker; consumed by [`TokioBridge::wait`].
    woken: AtomicBool,
    /// The waiter inside [`TokioBridge::wait`].
    waiter: AtomicWaker,
    /// The [`drive`] task, woken when the first request of a quiet spell starts.
    driver: AtomicWaker,
    /// The shard's loop has nothing to do until something is woken.
    idle: AtomicBool,
    /// Bumped by every sign of activity (a bridge waker, a request starting, the loop being
    /// polled): [`drive`] blocks in tokio only after a whole executor turn left it unchanged.
    activity: AtomicU64,
    /// Set by [`Driver::stop`] (or its drop): [`drive`] returns.
    closed: AtomicBool,
}

impl Link {
    fn notify(&self) {
        self.bump();
        self.woken.store(true, Ordering::Release);
        self.waiter.wake();
    }

    fn bump(&self) {
        self.activity.fetch_add(1, Ordering::AcqRel);
    }

    fn activity(&self) -> u64 {
        self.activity.load(Ordering::Acquire)
    }
}

/// A cheap handle to the bridge for futures and wakers (clones share it).
#[derive(Clone)]
pub struct BridgeHandle {
    handle: Handle,
    link: Arc<Link>,
}

impl BridgeHandle {
    /// Wraps a driver future to be polled by a glommio task.
    pub fn wrap<F: Future>(&self, fut: F) -> InTokio<F> {
        InTokio::new(self.clone(), fut)
    }

    /// A waker that wakes `inner` and also ends a [`TokioBridge::wait`]: the shard's loop polls its
    /// consumer stream with it, so a Kafka message is not left waiting while the thread is in tokio.
    pub fn waker(&self, inner: &Waker) -> Waker {
        let w = self.loop_waker();
        w.linked.inner.register(inner);
        w.waker
    }

    /// A [`LoopWaker`]: [`BridgeHandle::waker`] built once and re-pointed on every poll.
    pub fn loop_waker(&self) -> LoopWaker {
        let linked = Arc::new(LinkedWaker {
            inner: AtomicWaker::new(),
            link: self.link.clone(),
        });
        LoopWaker {
            waker: Waker::from(linked.clone()),
            linked,
        }
    }

    /// The shard's loop says whether it has nothing to do (then the driver task may block in tokio,
    /// once the tasks the loop just woke or spawned had their turn).
    pub fn set_idle(&self, idle: bool) {
        self.link.bump();
        self.link.idle.store(idle, Ordering::Release);
    }

    pub fn tokio(&self) -> &Handle {
        &self.handle
    }
}

/// The loop's linked waker, allocated once.
pub struct LoopWaker {
    linked: Arc<LinkedWaker>,
    waker: Waker,
}

impl LoopWaker {
    /// The linked waker, now waking `inner`.
    pub fn for_task(&self, inner: &Waker) -> &Waker {
        self.linked.inner.register(inner);
        &self.waker
    }
}

/// Wakes a glommio task and ends the bridge's wait.
struct LinkedWaker {
    inner: AtomicWaker,
    link: Arc<Link>,
}

impl Wake for LinkedWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.inner.wake();
        self.link.notify();
    }
}

/// Counts a driver future in flight from its first poll to its end (or drop).
struct InFlight(Arc<Link>);

impl InFlight {
    fn start(link: &Arc<Link>) -> InFlight {
        link.bump();
        if link.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            link.driver.wake();
        }
        InFlight(link.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project! {
    /// A driver future polled by a glommio shard with the bridge's tokio context entered.
    pub struct InTokio<F> {
        bridge: BridgeHandle,
        waker: Option<Arc<LinkedWaker>>,
        counted: Option<InFlight>,
        #[pin]
        fut: F,
    }
}

impl<F> InTokio<F> {
    pub fn new(bridge: BridgeHandle, fut: F) -> Self {
        InTokio {
            bridge,
            waker: None,
            counted: None,
            fut,
        }
    }
}

impl<F: Future> Future for InTokio<F> {
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let link = &this.bridge.link;
        if link.closed.load(Ordering::Acquire) {
            // The driver stopped and the runtime is going or gone: polling the driver's future
            // could touch a tokio timer of a runtime that shuts down (tokio panics then). Nothing
            // would ever complete it anyway; its task is dropped with the shard.
            return Poll::Pending;
        }
        if this.counted.is_none() {
            *this.counted = Some(InFlight::start(link));
        }
        // The driver wakes this future from inside the runtime's turn: the wake must also end the
        // bridge's wait, so that the task it wakes runs at once.
        let linked = this.waker.get_or_insert_with(|| {
            Arc::new(LinkedWaker {
                inner: AtomicWaker::new(),
                link: link.clone(),
            })
        });
        linked.inner.register(cx.waker());
        let waker = Waker::from(linked.clone());
        let _entered = this.bridge.handle.enter();
        let r = this.fut.poll(&mut Context::from_waker(&waker));
        if r.is_ready() {
            *this.counted = None;
        }
        r
    }
}

/// A shard's tokio runtime, on the shard's own thread.
pub struct TokioBridge {
    rt: Runtime,
    handle: BridgeHandle,
}

impl TokioBridge {
    /// A current-thread runtime owned by the calling thread.
    pub fn new() -> std::io::Result<TokioBridge> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = BridgeHandle {
            handle: rt.handle().clone(),
            link: Arc::default(),
        };
        Ok(TokioBridge { rt, handle })
    }

    pub fn handle(&self) -> &BridgeHandle {
        &self.handle
    }

    /// Runs `fut` to completion on this thread (start-up: connect, prepare). Blocks.
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        self.rt.block_on(fut)
    }

    /// Runs the runtime's ready tasks and polls its sockets and timers without blocking: queued
    /// requests go out, arrived responses wake their futures.
    pub fn pump(&self) {
        self.rt.block_on(async {
            // Each yield lets the scheduler run its ready tasks and poll the driver once.
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
        });
    }

    /// Driver futures in flight.
    pub fn in_flight(&self) -> usize {
        self.handle.link.in_flight.load(Ordering::Acquire)
    }

    /// Blocks in the runtime until a bridge waker fires (a response woke its future, a message woke
    /// the loop) or `max` passes.
    pub fn wait(&self, max: Duration) {
        let link = self.handle.link.clone();
        self.rt.block_on(async move {
            let woken = std::future::poll_fn(|cx| {
                if link.woken.swap(false, Ordering::AcqRel) {
                    return Poll::Ready(());
                }
                link.waiter.register(cx.waker());
                if link.woken.swap(false, Ordering::AcqRel) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            });
            let _ = tokio::time::timeout(max, woken).await;
        });
    }
}

/// Yields to the other tasks of the executor once: every task runnable now runs before this one
/// continues.
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// Waits until a request starts or the bridge closes (the driver waker) or `max` passes, in glommio.
async fn until_busy_or(link: &Arc<Link>, max: Duration) {
    let busy = std::future::poll_fn(|cx| {
        link.driver.register(cx.waker());
        if link.in_flight.load(Ordering::Acquire) > 0 || link.closed.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    });
    futures::future::select(
        std::pin::pin!(busy),
        std::pin::pin!(glommio::timer::sleep(max)),
    )
    .await;
}

/// Drives the bridge from a glommio task of the shard until [`Driver::stop`]. See the module docs.
async fn drive(bridge: std::rc::Rc<TokioBridge>) {
    let link = bridge.handle.link.clone();
    while !link.closed.load(Ordering::Acquire) {
        bridge.pump();
        if bridge.in_flight() == 0 {
            until_busy_or(&link, IDLE_PUMP).await;
            continue;
        }
        // Two executor turns with no sign of activity: a task spawned during the first (a batch
        // sent by a linger timer) has had its turn and started its request by the second. No pump
        // in between: a turn that started a request is not quiet and the loop pumps at its top, and
        // the wait below runs the runtime's ready tasks (the request's write) before it blocks.
        // Each pump costs two polls of tokio's driver (an epoll_wait each). A turn with activity
        // ends the check at once: what it started is pumped now, not after another turn.
        let mut quiet = true;
        for _ in 0..2 {
            let before = link.activity();
            yield_once().await;
            if link.activity() != before {
                quiet = false;
                break;
            }
        }
        if quiet
            && link.idle.load(Ordering::Acquire)
            && bridge.in_flight() > 0
            && !link.closed.load(Ordering::Acquire)
        {
            bridge.wait(WAIT_MAX);
            // Not a plain yield: glommio reaches its reactor (timers, wake-ups from other threads)
            // only once no task is runnable, and this task would always be.
            glommio::timer::sleep(Duration::from_micros(1)).await;
        }
    }
}

/// The shard's task driving its bridge; [`Driver::stop`] ends it (dropping the guard asks it to end).
pub struct Driver {
    link: Arc<Link>,
    task: Option<glommio::task::JoinHandle<()>>,
}

impl Driver {
    /// Spawns [`drive`] on the current glommio executor.
    pub fn start(bridge: std::rc::Rc<TokioBridge>) -> Driver {
        let link = bridge.handle.link.clone();
        let task = glommio::spawn_local(drive(bridge)).detach();
        Driver {
            link,
            task: Some(task),
        }
    }

    fn close(&self) {
        self.link.closed.store(true, Ordering::Release);
        self.link.driver.wake();
    }

    /// Ends the driver task and waits for it: the runtime is dropped with the last bridge handle.
    pub async fn stop(mut self) {
        self.close();
        if let Some(t) = self.task.take() {
            t.await;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    /// Runs `f` on a fresh glommio executor with a bridge whose driver runs (the loop idle), stops
    /// the driver, and returns `f`'s result with the bridge's remaining owners.
    fn on_bridge<T, F, Fut>(f: F) -> (T, usize)
    where
        T: Send + 'static,
        F: FnOnce(Rc<TokioBridge>) -> Fut + Send + 'static,
        Fut: Future<Output = T>,
    {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async move {
                let bridge = Rc::new(TokioBridge::new().expect("runtime builds"));
                bridge.handle().set_idle(true);
                let driver = Driver::start(bridge.clone());
                let out = f(bridge.clone()).await;
                driver.stop().await;
                (out, Rc::strong_count(&bridge))
            })
            .expect("executor starts")
            .join()
            .expect("executor thread joins")
    }

    #[test]
    fn tokio_timers_and_sockets_work_when_polled_from_glommio() {
        let ((port, took, in_flight), owners) = on_bridge(|bridge| async move {
            let h = bridge.handle().clone();
            let t = std::time::Instant::now();
            let port = h
                .wrap(async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                    let addr = l.local_addr()?;
                    let (accepted, connected) =
                        tokio::join!(l.accept(), tokio::net::TcpStream::connect(addr));
                    accepted?;
                    connected?;
                    std::io::Result::Ok(addr.port())
                })
                .await;
            (port, t.elapsed(), bridge.in_flight())
        });
        assert_eq!(owners, 1, "the stopped driver task let go of the bridge");
        assert!(port.expect("tokio resources work inside InTokio") > 0);
        assert!(took >= Duration::from_millis(20), "{took:?}");
        assert!(took < Duration::from_secs(2), "driven promptly: {took:?}");
        assert_eq!(in_flight, 0, "the finished future is no longer counted");
    }

    /// While a request is in flight and the loop is idle, the driver blocks in tokio: a glommio
    /// timer and a wake-up from another thread must still be served within a few milliseconds, not
    /// at glommio's preempt timer (100 ms by default, kept here on purpose).
    #[test]
    fn glommio_timers_and_foreign_wakes_stay_prompt_while_a_request_is_in_flight() {
        let (out, _) = on_bridge(|bridge| async move {
            let h = bridge.handle().clone();
            // The request lasts until it is released after the measurements (a fixed 400 ms
            // ended under a loaded CI box before the ten measurements did), so every one of them
            // is taken while it is in flight; the 10 s cap only bounds a broken test.
            let (release, released) = tokio::sync::oneshot::channel::<()>();
            let slow = glommio::spawn_local(async move {
                h.wrap(async {
                    let _ = tokio::time::timeout(Duration::from_secs(10), released).await;
                })
                .await;
            })
            .detach();
            // Let the request start and the driver settle into its wait.
            glommio::timer::sleep(Duration::from_millis(20)).await;
            let mut timer_late = Vec::new();
            let mut wake_late = Vec::new();
            for _ in 0..5 {
                let t = std::time::Instant::now();
                glommio::timer::sleep(Duration::from_millis(5)).await;
                timer_late.push(t.elapsed().saturating_sub(Duration::from_millis(5)));
                let (tx, rx) = futures::channel::oneshot::channel::<std::time::Instant>();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(5));
                    let _ = tx.send(std::time::Instant::now());
                });
                if let Ok(sent) = rx.await {
                    wake_late.push(sent.elapsed());
                }
            }
            let in_flight = bridge.in_flight();
            let _ = release.send(());
            slow.await;
            (timer_late, wake_late, in_flight)
        });
        let (timer_late, wake_late, in_flight) = out;
        assert_eq!(
            (timer_late.len(), wake_late.len()),
            (5, 5),
            "every timer fired and every wake-up arrived"
        );
        // The median, generous: the bug this guards against made every one ~100 ms late, while on
        // a loaded 2-core CI box (other tests run beside this one) any single sleep or wake-up may
        // be descheduled for tens of ms. All ten are measured while the request is still in flight
        // (it is released only afterwards, and asserted below), so none of them escapes the bug.
        let median = |v: &[Duration]| {
            let mut v = v.to_vec();
            v.sort();
            v.get(v.len() / 2).copied().unwrap_or_default()
        };
        assert!(
            median(&timer_late) < Duration::from_millis(30),
            "timers late by {timer_late:?}"
        );
        assert!(
            median(&wake_late) < Duration::from_millis(30),
            "wake-ups late by {wake_late:?}"
        );
        assert_eq!(in_flight, 1, "measured while the request was in flight");
    }

    #[test]
    fn a_linked_waker_ends_the_wait_at_once() {
        let bridge = TokioBridge::new().expect("runtime builds");
        let w = bridge.handle().waker(futures::task::noop_waker_ref());
        let t = std::time::Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(30));
                w.wake_by_ref();
            });
            bridge.wait(Duration::from_secs(10));
        });
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
}
