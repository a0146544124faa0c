//! Shard start and stop: placement of shards on cores, the start-up check, control over channels
//! whose sends wake the shard's loop, and the wait for every shard to end.
//!
//! Guarantee: no shard starts before the config validated and the live check (table columns against
//! the subject's latest writer schema) passed; a second stop request is a kill; once a stop began
//! (a request, a failed shard, or `--drain`'s shards deciding to leave), [`Running::supervise`]
//! returns within `shards.shutdown_deadline_ms` + [`STOP_GRACE`], the shards ended or not.
//! Precondition: memlock for glommio's io_memory (root, or about 3 × io_memory_bytes per shard).

pub mod shard;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use glommio::{LocalExecutorBuilder, Placement};
use prometheus::Registry;
use thiserror::Error;

use crate::codec::CodecError;
use crate::config::{Config, ConfigError};
use crate::kafka::KafkaError;
use crate::metrics::ShardMetrics;
use crate::pipeline::BuildError;
use crate::retry::Retryable;
use crate::sink::StartError;

/// Errors of a run: start-up (config, services, placement) and the reasons a running shard stops.
#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// A file named by the Kafka client settings cannot be read (start-up check).
    #[error(transparent)]
    KafkaFile(#[from] crate::kafka::MissingFile),
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The database session or a table is not usable.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The processor chain could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// `shards.cores` is unset and no online core was found.
    #[error("no online cores found; set shards.cores")]
    NoCores,
    /// A shard's tokio runtime (the driver's bridge) could not be built.
    #[error("shard {shard}: cannot start its tokio bridge: {source}")]
    Bridge {
        shard: usize,
        source: std::io::Error,
    },
    /// A shard's executor did not start (memlock, placement).
    #[error("shard {shard} on core {core}: cannot start its executor: {message}")]
    Executor {
        shard: usize,
        core: usize,
        message: String,
    },
    /// A shard thread ended without a result (it panicked).
    #[error("a shard thread ended abnormally: {0}")]
    ShardThread(String),
    /// A second stop request: the shards exit at once, uncommitted records are replayed.
    #[error("killed by a second stop request; uncommitted records will be replayed")]
    Killed,
    /// A stop was not over [`STOP_GRACE`] after the shutdown deadline: a shard is held in the final
    /// commit or in leaving the group (an unreachable broker or coordinator). [`Running::supervise`]
    /// returns without waiting for it (the binary then exits 1); what it did not commit is replayed
    /// by the partitions' next owner. The [`Control::Kill`] sent to it is read only once librdkafka
    /// lets its thread go: a library caller that goes on keeps that thread and its group member.
    #[error(
        "the shards were still stopping {} ms after the stop began (the shutdown deadline + {} s: \
         an unreachable broker holds the final commit or the group's leave): returned without \
         waiting for them; what they did not commit will be replayed",
        .waited.as_millis(),
        .grace.as_secs()
    )]
    StopOverran { waited: Duration, grace: Duration },
    /// A record cannot be processed and there is no dead-letter topic: the shard stops uncommitted.
    #[error(
        "shard {shard}: record {topic}/{partition}@{offset} cannot be processed ({class}: {message}) \
         and no kafka.dead_letter_topic is configured"
    )]
    Record {
        shard: usize,
        topic: String,
        partition: i32,
        offset: i64,
        class: &'static str,
        message: String,
    },
    /// An error about the table, the session or the credentials, not a record: every record would
    /// fail the same way, so the shard stops uncommitted instead of dead-lettering them all.
    #[error("shard {shard}: {class} error about the table or the session, not the record: {message}; stopped without committing")]
    Systemic {
        shard: usize,
        class: &'static str,
        message: String,
    },
    /// A dead letter could not be delivered (refused even truncated, or the topic refuses us).
    #[error("shard {shard}: the dead letter of {topic}/{partition}@{offset} cannot be delivered: {source}")]
    DeadLetter {
        shard: usize,
        topic: String,
        partition: i32,
        offset: i64,
        source: Box<KafkaError>,
    },
    /// librdkafka reported a fatal error (a fenced `group.instance.id`, an idempotence violation): the
    /// client is unusable, so the shard stops and the process exits non-zero.
    #[error("shard {shard}: fatal Kafka client error: {message}")]
    KafkaFatal { shard: usize, message: String },
    /// The live check: a configured topic does not exist.
    #[error("kafka topic '{topic}' does not exist at {brokers}")]
    NoTopic { topic: String, brokers: String },
    /// The live check: the subject has no registered schema.
    #[error("subject '{subject}' has no schema in the registry: register one (shardline produce does) or set schema.subject")]
    NoSubject { subject: String },
}

impl RunError {
    /// Whether starting again later can succeed without an operator changing anything.
    pub fn is_retryable(&self) -> bool {
        match self {
            RunError::Kafka(e) => e.is_retryable(),
            RunError::Codec(e) => e.is_retryable(),
            RunError::Start(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// How long a stop may run past `shards.shutdown_deadline_ms` for what follows the in-flight work:
/// the final synchronous commit, the dead letters' flush and leaving the group. Each takes
/// milliseconds with the broker up; with it down librdkafka waits for the coordinator until the
/// session times out (the commit), then again (the leave): measured 21 s for a 10 s deadline. A
/// supervisor (systemd's `TimeoutStopSec`, 30 s in `tuning/shardline.service`) should allow the
/// deadline plus this.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Where one shard runs.
#[derive(Debug, Clone, Copy)]
pub struct ShardSpec {
    pub index: usize,
    pub core: usize,
}

/// Control messages to a shard; never on the message path.
#[derive(Debug, Clone, Copy)]
pub enum Control {
    /// Stop fetching, finish in-flight work within the deadline, commit, exit.
    Stop,
    /// Exit now; uncommitted records are replayed by the next owner.
    Kill,
}

/// A shard's control channel: what [`control_channel`] makes.
///
/// Guarantee: a send wakes the shard's loop, which takes control in its `select` (and, under a
/// backlog, at every yield), so a stop is read at once however long the loop's idle tick is. The
/// loop looks for control on every event: that look is one atomic load while none is queued.
pub fn control_channel() -> (ControlSender, ControlReceiver) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let shared = Arc::new(ControlShared::default());
    (
        ControlSender {
            tx,
            shared: shared.clone(),
        },
        ControlReceiver { rx, shared },
    )
}

/// What both ends of a control channel share.
#[derive(Default)]
struct ControlShared {
    /// The shard's loop, registered before it waits.
    waker: futures::task::AtomicWaker,
    /// Set after a send: the loop's look at the channel is this load while nothing is queued.
    queued: std::sync::atomic::AtomicBool,
}

/// The supervisor's end of a shard's control channel (any thread).
#[derive(Clone)]
pub struct ControlSender {
    tx: Sender<Control>,
    shared: Arc<ControlShared>,
}

impl ControlSender {
    /// Queues `c` and wakes the shard's loop; false once the shard is gone (then nobody is woken).
    pub fn send(&self, c: Control) -> bool {
        if self.tx.send(c).is_err() {
            return false;
        }
        self.shared.queued.store(true, Ordering::Release);
        self.shared.waker.wake();
        true
    }
}

/// The shard's end of its control channel.
pub struct ControlReceiver {
    rx: Receiver<Control>,
    shared: Arc<ControlShared>,
}

impl ControlReceiver {
    /// The next control message, if one is queued.
    pub fn try_recv(&self) -> Option<Control> {
        // Cleared before the read: a send racing with it sets the flag again after its message is
        // in the channel, so no message is left behind an unset flag.
        if !self.shared.queued.load(Ordering::Acquire)
            || !self.shared.queued.swap(false, Ordering::AcqRel)
        {
            return None;
        }
        let c = self.rx.try_recv().ok();
        if !self.rx.is_empty() {
            self.shared.queued.store(true, Ordering::Release);
        }
        c
    }

    /// The next control message; registers the loop's waker while none is queued.
    pub fn poll_recv(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Control> {
        if let Some(c) = self.try_recv() {
            return std::task::Poll::Ready(c);
        }
        self.shared.waker.register(cx.waker());
        // A send between the first look and the registration woke no one: look again.
        match self.try_recv() {
            Some(c) => std::task::Poll::Ready(c),
            None => std::task::Poll::Pending,
        }
    }
}

impl Drop for ControlReceiver {
    /// Drops the loop's waker on the shard's thread: left in the channel, it would outlive its
    /// executor, and glommio hands a waker dropped or woken on another thread back to the executor
    /// it came from, which is gone then.
    fn drop(&mut self) {
        drop(self.shared.waker.take());
    }
}

/// Switches of a run that are not configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Replace the database write with a no-op (benchmark: decode and map only).
    pub null_sink: bool,
    /// Exit once every assigned partition is at its end and nothing is in flight.
    pub drain: bool,
    /// How long the drained state must hold before a shard exits (lets late group members join);
    /// at least two of the loop's 100 ms ticks, whatever is asked (each shard re-checks its own
    /// state on its tick).
    pub drain_idle_ms: u64,
}

/// Where a shard's executor runs: held to its core, or anywhere (see [`crate::config::Affinity`]).
fn executor_placement(affinity: crate::config::Affinity, core: usize) -> Placement {
    match affinity {
        crate::config::Affinity::Pinned => Placement::Fixed(core),
        crate::config::Affinity::None => Placement::Unbound,
    }
}

/// The shard placement from config: `shards.cores` or every online core.
pub fn placement(config: &Config) -> Result<Vec<ShardSpec>, RunError> {
    let online: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    let cores = match &config.shards.cores {
        Some(c) => c.clone(),
        None => online.clone(),
    };
    if cores.is_empty() {
        return Err(RunError::NoCores);
    }
    if let Some(bad) = cores.iter().find(|c| !online.contains(c)) {
        return Err(RunError::Config(ConfigError::Invalid(format!(
            "shards.cores lists core {bad}, which is not online here (online: {online:?})"
        ))));
    }
    Ok(cores
        .iter()
        .enumerate()
        .map(|(index, &core)| ShardSpec { index, core })
        .collect())
}

/// One message per SIGINT or SIGTERM, for [`Running::supervise`] (first: graceful stop; second: exit).
pub fn stop_requests_on_signals() -> std::io::Result<Receiver<()>> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    std::thread::Builder::new()
        .name("shardline-signals".into())
        .spawn(move || {
            for _ in signals.forever() {
                if tx.send(()).is_err() {
                    break;
                }
            }
        })?;
    Ok(rx)
}

/// A running set of shards.
pub struct Running {
    handles: Vec<ShardHandle>,
    controls: Vec<ControlSender>,
    /// When [`Running::stop`] first asked the shards to stop: [`Running::supervise`]'s bound counts
    /// from there.
    stopped_at: std::cell::Cell<Option<Instant>>,
    /// How long after a stop began (a request, a failed shard, a drain's decision to leave)
    /// [`Running::supervise`] waits for the shards: the shutdown deadline plus [`STOP_GRACE`].
    stop_bound: Duration,
    /// Told when drain mode's shards decide to leave ([`Leave`]): the bound counts from then.
    leaving: Receiver<()>,
    pub registries: Vec<Registry>,
    pub specs: Vec<ShardSpec>,
}

/// What the shards of one process share for control: the start barrier (how many joined), the
/// drained flags of `--drain` and the decision to leave, and the factory of custom steps. Never
/// touched per message.
pub struct Siblings {
    pub joined: Arc<std::sync::atomic::AtomicUsize>,
    pub drained: Arc<Vec<std::sync::atomic::AtomicBool>>,
    /// Set by the first shard that finds every sibling drained for the idle window: the others stop
    /// on their next tick. Deciding each on its own, a tick apart, the first to leave the group
    /// would rebalance a sibling that has not decided yet, and that sibling would then wait to
    /// rejoin and reach its ends again.
    pub leave: Leave,
    pub custom: Option<ProcessorFactory>,
}

/// Drain mode's decision to leave ([`Siblings::leave`]): a flag the shards read on their tick, and
/// a message to [`Running::supervise`], whose stop bound counts from it as from a stop request (the
/// final commits and the group's leave follow, which an unreachable broker would hold).
#[derive(Clone)]
pub struct Leave {
    raised: Arc<std::sync::atomic::AtomicBool>,
    tell: Sender<()>,
}

impl Leave {
    /// A flag down, and where its raising is told.
    pub fn new() -> (Leave, Receiver<()>) {
        let (tell, told) = crossbeam_channel::bounded(1);
        let leave = Leave {
            raised: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            tell,
        };
        (leave, told)
    }

    pub fn is_raised(&self) -> bool {
        self.raised.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Raises the flag; only the first raise tells the supervisor.
    pub fn raise(&self) {
        if !self.raised.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let _ = self.tell.try_send(());
        }
    }
}

/// Makes a shard's custom processor steps (called once per shard, on the shard's thread).
pub type ProcessorFactory =
    Arc<dyn Fn(usize) -> Vec<Box<dyn crate::pipeline::Processor>> + Send + Sync>;

/// Starts one shard per placement entry. Call `check::check_live` first.
pub fn start(config: Arc<Config>, opts: RunOptions) -> Result<Running, RunError> {
    start_with(config, opts, None)
}

/// As [`start`], with custom processor steps from `custom` in every shard's chain.
pub fn start_with(
    config: Arc<Config>,
    opts: RunOptions,
    custom: Option<ProcessorFactory>,
) -> Result<Running, RunError> {
    let specs = placement(&config)?;
    if config.shards.bridge_cores.is_some() {
        tracing::warn!(
            "shards.bridge_cores is ignored: the scylla driver runs on each shard's own thread"
        );
    }
    let mut handles = Vec::new();
    let mut controls = Vec::new();
    let mut registries = Vec::new();
    let joined = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let drained: Arc<Vec<std::sync::atomic::AtomicBool>> = Arc::new(
        specs
            .iter()
            .map(|_| std::sync::atomic::AtomicBool::new(false))
            .collect(),
    );
    let (leave, leaving) = Leave::new();
    for spec in &specs {
        let joined = joined.clone();
        let drained = drained.clone();
        let leave = leave.clone();
        let custom = custom.clone();
        let (tx, rx) = control_channel();
        let metrics = ShardMetrics::new(spec.index);
        registries.push(metrics.registry.clone());
        let cfg = config.clone();
        let spec = *spec;
        let h = LocalExecutorBuilder::new(executor_placement(config.shards.affinity, spec.core))
            .name(&format!("shard{}", spec.index))
            .io_memory(config.shards.io_memory_bytes)
            // glommio's preempt timer stays at its default (100 ms). A 1 ms timer starved shards on a
            // shared core: when the kernel runs another thread for longer than the timer, glommio
            // finds it expired before running any task, re-arms it and goes round again (measured:
            // `faults::second_process_joins_then_first_leaves` hung a shard under two busy loops).
            .spawn(move || async move {
                let r = shard::run(
                    cfg,
                    spec,
                    Siblings {
                        joined,
                        drained,
                        leave,
                        custom,
                    },
                    metrics,
                    rx,
                    opts,
                )
                .await;
                if let Err(e) = &r {
                    tracing::error!(shard = spec.index, error = %e, "shard failed");
                }
                r
            })
            .map_err(|e| RunError::Executor {
                shard: spec.index,
                core: spec.core,
                message: e.to_string(),
            })?;
        handles.push(h);
        controls.push(tx);
    }
    Ok(Running {
        handles,
        controls,
        stop_bound: config.shards.shutdown_deadline + STOP_GRACE,
        stopped_at: std::cell::Cell::new(None),
        leaving,
        registries,
        specs,
    })
}

impl Running {
    /// Asks every shard to stop gracefully (a later [`Running::supervise`] bounds the wait from now).
    pub fn stop(&self) {
        let mut began = self.stopped_at.get();
        stop_all(&self.controls, &mut began);
        self.stopped_at.set(began);
    }

    /// Waits for every shard, however long they take (no stop bound, no leave message: see
    /// [`Running::supervise`]); the first error wins.
    pub fn wait(self) -> Result<(), RunError> {
        let (ended, n) = join_each(self.handles)?;
        ended.iter().take(n).fold(Ok(()), Result::and)
    }

    /// Waits until every shard ended or `stop_requested` asks for a stop; a second request kills.
    /// The first shard to end with an error stops its siblings gracefully (their done work
    /// committed), so the process ends with that error instead of running on without the shard:
    /// in drain mode the siblings would otherwise wait for ever for its drained flag, and
    /// otherwise a supervisor would never see the failure to restart the process.
    /// Once a stop began (a request, a failed shard stopping its siblings, or `--drain`'s shards
    /// deciding to leave), the shards have the shutdown deadline plus [`STOP_GRACE`]: a shard still
    /// held after that (librdkafka's final commit or leave, waiting for an unreachable coordinator)
    /// is told to exit and left behind, and the result is [`RunError::StopOverran`] (a shard's own
    /// error first, if one failed). Whether the held shard had committed everything is not known
    /// for sure (lost partitions, abandoned records), so an overrun is always an error.
    pub fn supervise(self, stop_requests: &Receiver<()>) -> Result<(), RunError> {
        let Running {
            handles,
            controls,
            stop_bound,
            stopped_at,
            mut leaving,
            ..
        } = self;
        let (ended, mut left) = join_each(handles)?;
        let mut first = Ok(());
        let mut requests = 0;
        let mut stop_began: Option<Instant> = stopped_at.get();
        // A dropped sender (a library caller's) asks nothing: its channel would be ready for ever,
        // a stop then at once a kill.
        let mut stop_requests = stop_requests.clone();
        while left > 0 {
            let wait = stop_began.map_or(Duration::from_secs(3600), |t| {
                stop_bound.saturating_sub(t.elapsed())
            });
            crossbeam_channel::select! {
                recv(ended) -> r => {
                    left -= 1;
                    let r = r.unwrap_or_else(|_| Err(RunError::ShardThread("a join thread vanished".into())));
                    if let (Err(e), true) = (&r, first.is_ok()) {
                        tracing::error!(error = %e, "a shard failed: stopping the others");
                        stop_all(&controls, &mut stop_began);
                    }
                    if first.is_ok() { first = r; }
                }
                recv(leaving) -> r => {
                    // Told once; a gone sender (every shard's `Leave` dropped) tells nothing.
                    leaving = crossbeam_channel::never();
                    if r.is_ok() {
                        tracing::info!("drained: the shards are leaving (bounded as a stop)");
                        stop_began.get_or_insert_with(Instant::now);
                    }
                }
                recv(stop_requests) -> r => {
                    if r.is_err() {
                        stop_requests = crossbeam_channel::never();
                        continue;
                    }
                    requests += 1;
                    if requests == 1 {
                        tracing::info!("stop requested: finishing in-flight work (send again to exit at once)");
                        stop_all(&controls, &mut stop_began);
                    } else {
                        tracing::warn!("second stop request: exiting now; uncommitted records will be replayed");
                        // Library users get their shards ended too (the binary exits anyway).
                        for c in &controls { c.send(Control::Kill); }
                        return Err(RunError::Killed);
                    }
                }
                default(wait) => {
                    if let Some(t) = stop_began.filter(|t| t.elapsed() >= stop_bound) {
                        let e = RunError::StopOverran { waited: t.elapsed(), grace: STOP_GRACE };
                        tracing::warn!(shards_left = left, error = %e, "stop overran");
                        for c in &controls { c.send(Control::Kill); }
                        return first.and(Err(e));
                    }
                }
            }
        }
        first
    }
}

/// Asks every shard to stop gracefully; the first stop starts the clock of [`Running::supervise`]'s
/// bound.
fn stop_all(controls: &[ControlSender], began: &mut Option<Instant>) {
    began.get_or_insert_with(Instant::now);
    for c in controls {
        c.send(Control::Stop);
    }
}

/// One thread per shard, blocked in its join: each result arrives as the shard ends, in whatever
/// order (joining in turn would see shard 1's failure only after shard 0 ended). Gives the
/// receiver and how many results will come.
fn join_each(
    handles: Vec<ShardHandle>,
) -> Result<(Receiver<Result<(), RunError>>, usize), RunError> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let n = handles.len();
    for (i, h) in handles.into_iter().enumerate() {
        let tx: Sender<Result<(), RunError>> = tx.clone();
        std::thread::Builder::new()
            .name(format!("shardline-join{i}"))
            .spawn(move || {
                let r = h
                    .join()
                    .map_err(|e| RunError::ShardThread(e.to_string()))
                    .and_then(|r| r);
                let _ = tx.send(r);
            })
            .map_err(|e| RunError::ShardThread(format!("cannot start a join thread: {e}")))?;
    }
    Ok((rx, n))
}

/// A shard's executor thread, ending with the shard's result.
type ShardHandle = glommio::ExecutorJoinHandle<Result<(), RunError>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// The kernel's view of where the calling thread may run (`Cpus_allowed_list`, e.g. "0-1").
    fn allowed_cpus() -> String {
        std::fs::read_to_string("/proc/thread-self/status")
            .expect("Linux: /proc/thread-self/status is readable")
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .map(|v| v.trim().to_string())
            .expect("the status lists Cpus_allowed_list")
    }

    #[test]
    fn a_pinned_shard_runs_on_its_core_only_and_an_unpinned_one_where_the_process_may() {
        use crate::config::Affinity;
        let core = core_affinity::get_core_ids()
            .and_then(|ids| ids.last().map(|c| c.id))
            .expect("at least one online core");
        let on = |affinity| {
            LocalExecutorBuilder::new(executor_placement(affinity, core))
                .spawn(|| async { allowed_cpus() })
                .expect("executor starts")
                .join()
                .expect("executor thread joins")
        };
        assert_eq!(on(Affinity::Pinned), core.to_string());
        // An unpinned shard may run wherever the thread that started it may.
        assert_eq!(on(Affinity::None), allowed_cpus());
        let all = core_affinity::get_core_ids().map_or(0, |ids| ids.len());
        if all > 1 {
            assert_ne!(on(Affinity::None), core.to_string(), "not held to one core");
        }
    }

    /// The loop may sleep a whole idle tick (or longer): a stop sent from the supervisor's thread
    /// must wake it, not wait to be polled.
    #[test]
    fn a_control_sent_from_another_thread_wakes_the_waiting_loop() {
        let (tx, rx) = control_channel();
        let got = LocalExecutorBuilder::default()
            .spawn(move || async move {
                let sender = std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(50));
                    tx.send(Control::Stop)
                });
                let t = Instant::now();
                let recv = std::future::poll_fn(|cx| rx.poll_recv(cx));
                // No timer of glommio's fires meanwhile except this one, far later.
                let give_up = glommio::timer::sleep(Duration::from_secs(10));
                let got =
                    match futures::future::select(std::pin::pin!(recv), std::pin::pin!(give_up))
                        .await
                    {
                        futures::future::Either::Left((c, _)) => Some(c),
                        futures::future::Either::Right(_) => None,
                    };
                let sent = sender.join().expect("sender thread joins");
                (got, sent, t.elapsed())
            })
            .expect("executor starts")
            .join()
            .expect("executor thread joins");
        let (got, sent, took) = got;
        assert!(sent, "the receiver was alive");
        assert!(
            matches!(got, Some(Control::Stop)),
            "woken with the stop, not by the 10 s timer"
        );
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    /// A [`Running`] of test shards, waited for at most `stop_bound` after a stop.
    fn test_running(
        handles: Vec<ShardHandle>,
        controls: Vec<ControlSender>,
        stop_bound: Duration,
    ) -> Running {
        Running {
            handles,
            controls,
            stop_bound,
            stopped_at: std::cell::Cell::new(None),
            leaving: crossbeam_channel::never(),
            registries: Vec::new(),
            specs: Vec::new(),
        }
    }

    // Fails on the old code: the supervisor joined the shards in turn and never told the others
    // that one had failed (in drain mode they waited for its drained flag for ever: here the test
    // gives up after 30 s), and a dropped stop sender made it stop then kill at once (Err(Killed)).
    #[test]
    fn a_failed_shard_stops_its_siblings_and_its_error_is_returned() {
        let mut handles = Vec::new();
        let mut controls = Vec::new();
        for i in 0..2 {
            let (tx, rx) = control_channel();
            let h = LocalExecutorBuilder::default()
                .name(&format!("test-shard{i}"))
                .spawn(move || async move {
                    if i == 1 {
                        // Shard 1 fails at once; its sibling runs until it is told to stop.
                        return Err(RunError::Systemic {
                            shard: 1,
                            class: "schema",
                            message: "the table is gone".into(),
                        });
                    }
                    match std::future::poll_fn(|cx| rx.poll_recv(cx)).await {
                        Control::Stop => Ok(()),
                        _ => Err(RunError::Killed),
                    }
                })
                .expect("executor starts");
            handles.push(h);
            controls.push(tx);
        }
        let running = test_running(handles, controls, Duration::from_secs(3600));
        // A caller that dropped its sender asks for nothing (it was a stop, then a kill at once).
        let (requests_tx, requests) = crossbeam_channel::unbounded::<()>();
        drop(requests_tx);
        let (done_tx, done) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let _ = done_tx.send(running.supervise(&requests));
        });
        let r = done
            .recv_timeout(Duration::from_secs(30))
            .expect("supervise returns: the failed shard stopped its sibling");
        assert!(
            matches!(r, Err(RunError::Systemic { shard: 1, .. })),
            "{r:?}"
        );
    }

    /// A [`Running`] of two shards bounded at 300 ms: shard 0 blocks its thread when told to stop
    /// (as librdkafka's synchronous commit does) until the returned sender is dropped; shard 1 fails
    /// at once when `sibling_fails`, or ends when told to stop.
    fn held_at_stop(sibling_fails: bool) -> (Running, crossbeam_channel::Sender<()>) {
        let (release_tx, release) = crossbeam_channel::bounded::<()>(1);
        let mut handles = Vec::new();
        let mut controls = Vec::new();
        for i in 0..2 {
            let (tx, rx) = control_channel();
            let release = release.clone();
            let h = LocalExecutorBuilder::default()
                .name(&format!("test-held{i}"))
                .spawn(move || async move {
                    if i == 1 && sibling_fails {
                        return Err(RunError::Systemic {
                            shard: 1,
                            class: "schema",
                            message: "the table is gone".into(),
                        });
                    }
                    let _ = std::future::poll_fn(|cx| rx.poll_recv(cx)).await;
                    if i == 0 {
                        let _ = release.recv_timeout(Duration::from_secs(60));
                    }
                    Ok(())
                })
                .expect("executor starts");
            handles.push(h);
            controls.push(tx);
        }
        let running = test_running(handles, controls, Duration::from_millis(300));
        (running, release_tx)
    }

    /// Runs `supervise` on its own thread after `before`; its result and how long it took.
    fn supervise_held(
        running: Running,
        before: impl FnOnce(&Running, &Sender<()>) + Send + 'static,
    ) -> (Result<(), RunError>, Duration) {
        let (requests_tx, requests) = crossbeam_channel::unbounded::<()>();
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let t = Instant::now();
        std::thread::spawn(move || {
            before(&running, &requests_tx);
            let _ = done_tx.send(running.supervise(&requests));
            drop(requests_tx);
        });
        let r = done
            .recv_timeout(Duration::from_secs(30))
            .expect("supervise returns while a shard is still held");
        (r, t.elapsed())
    }

    // Fails on the old code: the supervisor waited for the shards however long they took, and with
    // the broker down a shard's final commit and its group leave each wait for the coordinator until
    // the session times out (measured: 21 s after SIGTERM for a 10 s deadline).
    #[test]
    fn a_stop_held_past_its_bound_ends_the_wait_with_stop_overran() {
        // A stop request (SIGTERM), and a library caller's `Running::stop`.
        let by_request = |_: &Running, requests: &Sender<()>| {
            requests.send(()).expect("supervisor listens");
        };
        let by_stop = |running: &Running, _: &Sender<()>| running.stop();
        // The senders live until the end: a dropped one releases its shard.
        let ((first, _release_first), (second, _release_second)) =
            (held_at_stop(false), held_at_stop(false));
        for (how, (r, took)) in [
            ("request", supervise_held(first, by_request)),
            ("stop()", supervise_held(second, by_stop)),
        ] {
            assert!(
                matches!(r, Err(RunError::StopOverran { waited, .. }) if waited >= Duration::from_millis(300)),
                "{how}: {r:?}"
            );
            assert!(took >= Duration::from_millis(300), "{how}: {took:?}");
            assert!(took < Duration::from_secs(10), "{how}: {took:?}");
        }
    }

    #[test]
    fn a_failed_shard_whose_sibling_is_held_returns_its_own_error_within_the_bound() {
        let (running, _release) = held_at_stop(true);
        let (r, took) = supervise_held(running, |_, _| {});
        assert!(
            matches!(r, Err(RunError::Systemic { shard: 1, .. })),
            "{r:?}"
        );
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(10), "{took:?}");
    }

    /// A [`Running`] of one drain shard bounded at `bound`: it raises the leave, then blocks its
    /// thread (as librdkafka's final commit or group leave does with the broker gone) until the
    /// returned sender is dropped or sends.
    fn drain_shard(bound: Duration) -> (Running, crossbeam_channel::Sender<()>) {
        let (leave, leaving) = Leave::new();
        let (release_tx, release) = crossbeam_channel::bounded::<()>(1);
        let (tx, _rx) = control_channel();
        let h = LocalExecutorBuilder::default()
            .name("test-drain")
            .spawn(move || async move {
                leave.raise();
                let _ = release.recv_timeout(Duration::from_secs(60));
                Ok(())
            })
            .expect("executor starts");
        let mut running = test_running(vec![h], vec![tx], bound);
        running.leaving = leaving;
        (running, release_tx)
    }

    // Fails on the old code: in drain mode nothing started the bound (no stop was requested), so a
    // shard held in its final commit or leave (the broker gone at the end of a drain) held the
    // process until librdkafka gave up; here the helper gives up after 30 s.
    #[test]
    fn a_drain_held_after_its_shards_decided_to_leave_ends_with_stop_overran() {
        let (running, _release) = drain_shard(Duration::from_millis(300));
        let (r, took) = supervise_held(running, |_, _| {});
        assert!(
            matches!(r, Err(RunError::StopOverran { waited, .. }) if waited >= Duration::from_millis(300)),
            "{r:?}"
        );
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(10), "{took:?}");
    }

    // Fails if the leave message itself ended the wait (as an error or a kill): the shard, released
    // 100 ms after supervise began, is well within its 5 s bound.
    #[test]
    fn a_drain_that_ends_within_its_bound_is_not_an_overrun() {
        let (running, release) = drain_shard(Duration::from_secs(5));
        let (r, took) = supervise_held(running, move |_, _| {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                let _ = release.send(());
            });
        });
        assert!(r.is_ok(), "{r:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    // Fails when every raise sends: the second raise, after the first was taken, would be told again.
    #[test]
    fn only_the_first_raise_of_the_leave_is_told() {
        let (leave, leaving) = Leave::new();
        assert!(!leave.is_raised());
        leave.raise();
        assert!(leave.is_raised());
        assert!(leaving.try_recv().is_ok());
        leave.clone().raise();
        assert!(leaving.try_recv().is_err(), "told once");
    }

    #[test]
    fn a_queued_control_is_taken_without_waiting() {
        let (tx, rx) = control_channel();
        assert!(tx.send(Control::Kill));
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(matches!(
            rx.poll_recv(&mut cx),
            std::task::Poll::Ready(Control::Kill)
        ));
        assert!(rx.poll_recv(&mut cx).is_pending());
        drop(rx);
        assert!(!tx.send(Control::Stop), "a gone shard is reported");
    }
}
