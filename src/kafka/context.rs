//! The consumer context of one shard: rebalance bookkeeping, commit results, consumer lag and fatal
//! client errors.
//!
//! Guarantee: every assignment change bumps [`ShardContext::epoch`] before the shard sees any record
//! of the new assignment, so the shard drops stale per-partition state; librdkafka then commits the
//! stored (done) offsets before the partitions go away. A fatal client error (see [`is_fatal`]) sets
//! [`ShardContext::fatal`] and `shardline_shard_failed` and is logged once; stopping the shard is the
//! loop's job (it reads the flag).
//! Precondition: callbacks run on the thread that polls the consumer, which is the shard's own thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, TopicPartitionList};

use crate::metrics::{events, ShardMetrics};

/// Locks one of the context's shared values even if a thread panicked while holding it. Each write
/// leaves the value valid (an assignment is written whole, a map entry whole; a statistics refresh
/// cut short keeps some older figures, which the next one replaces), and skipping the write instead
/// (as `if let Ok(..)` would) leaves a stale assignment or view that the shard then acts on.
/// Defensive: the callbacks and their readers all run on the shard's thread.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub struct ShardContext {
    pub shard: usize,
    pub core: usize,
    pub metrics: ShardMetrics,
    /// Bumped on every revoke and assign.
    pub epoch: Arc<AtomicU64>,
    /// The current assignment, `None` from a revoke until the next assign (out of the group: a
    /// lost session, a rebalance under way): read by the shard only when the epoch changed.
    pub assignment: SharedAssignment,
    /// The start barrier of this process: how many of its shards have had a first assignment.
    /// Until all have, assigned partitions are held paused, so the first shard to join does not start
    /// on partitions that the group hands to a sibling moments later.
    pub joined: Arc<AtomicUsize>,
    pub shards: usize,
    pub first_assign: AtomicBool,
    /// True while this shard's partitions are held paused by the start barrier.
    pub held: Arc<AtomicBool>,
    /// True while back-pressure (the spent in-flight budget) pauses this shard: newly assigned
    /// partitions stay paused, or a rebalance would pull the backlog into memory.
    pub budget_paused: Arc<AtomicBool>,
    /// Set once librdkafka reports a fatal error (see [`is_fatal`]): the client is unusable, so the
    /// shard must stop with an error and the process exit non-zero. Never cleared.
    pub fatal: Arc<AtomicBool>,
    /// The message lag per assigned partition from librdkafka's last statistics, for the shard's
    /// lag in time (a gauge cannot be read without creating it).
    pub message_lag: Mutex<HashMap<(String, i32), i64>>,
    /// Where librdkafka's fetcher stands per partition, from its last statistics: read only when
    /// a drain waits longer than it should, to say why (see [`FetchView`]). `None` outside drain
    /// mode, where nothing reads it: the statistics callback then keeps no copy.
    pub fetch_view: Option<Mutex<HashMap<(String, i32), FetchView>>>,
}

/// The assignment the rebalance callbacks share with the shard's loop: `None` while out of the group.
pub type SharedAssignment = Arc<Mutex<Option<Vec<(String, i32)>>>>;

/// One partition as librdkafka's statistics last described it (`fetch_state`, offsets, queue).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchView {
    /// `none`, `stopping`, `stopped`, `offset-query`, `offset-wait` or `active`.
    pub state: String,
    /// The next offset the fetcher asks the broker for.
    pub next_offset: i64,
    /// The offset after the last message the application (the shard) took from the queue.
    pub app_offset: i64,
    /// The partition's high watermark as of the last fetch response (-1 before one).
    pub hi_offset: i64,
    /// Messages fetched and waiting in librdkafka's queue for the shard.
    pub queued: i64,
    /// Microseconds since the partition's leader last sent this client anything (-1: never, or
    /// no leader known): how fresh `hi_offset` is.
    pub leader_rx_idle_us: i64,
}

/// How recent the leader's last response must be for [`FetchView::caught_up`]: a fetcher at its end
/// long-polls, and the broker answers every `fetch.wait.max.ms` (librdkafka's default 500 ms).
pub const FRESH_RX_US: i64 = 2_000_000;

/// True for the errors after which librdkafka's client is unusable: the generic `_FATAL` code
/// (details in `consumer.client().fatal_error()`), a consume error flagged fatal, and a fenced
/// static member (`group.instance.id` taken over by another consumer), which librdkafka raises as
/// fatal.
pub fn is_fatal(error: &KafkaError) -> bool {
    matches!(error, KafkaError::MessageConsumptionFatal(_))
        || matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::Fatal | RDKafkaErrorCode::FencedInstanceId)
        )
}

impl ShardContext {
    /// If `error` is fatal, marks the shard failed ([`ShardContext::fatal`], the failed gauge, one
    /// error log) and returns true; otherwise does nothing and returns false. For both paths that
    /// deliver client errors: [`ClientContext::error`] and the consumer stream's `Err` items. With a
    /// group consumer librdkafka queues errors, fatal ones included, on the consumer queue, so they
    /// mostly arrive as stream items: the shard loop must pass those through here too.
    pub fn fail_if_fatal(&self, error: &KafkaError, reason: &str) -> bool {
        if !is_fatal(error) {
            return false;
        }
        if !self.fatal.swap(true, Ordering::SeqCst) {
            events::shard_failed(
                &self.metrics,
                &format_args!("fatal Kafka client error: {error}: {reason}"),
            );
        }
        true
    }
}

fn parts(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl ClientContext for ShardContext {
    fn error(&self, error: KafkaError, reason: &str) {
        // End-of-partition is an event shardline asks for (drain mode), not an error.
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            return;
        }
        if self.fail_if_fatal(&error, reason) {
            return;
        }
        tracing::error!(shard = self.shard, %error, reason, "librdkafka error");
    }

    fn stats(&self, stats: Statistics) {
        let mut lags = lock(&self.message_lag);
        let mut views = self.fetch_view.as_ref().map(lock);
        if let Some(v) = views.as_mut() {
            v.clear();
        }
        // How long since each broker last sent this client anything (µs; -1: never): a fetcher at
        // its end gets a fetch response every `fetch.wait.max.ms`, so a recent one says its high
        // watermark is fresh.
        let rx_idle = |leader: i32| {
            stats
                .brokers
                .values()
                .find(|b| b.nodeid == leader)
                .map_or(-1, |b| b.rxidle)
        };
        for (topic, t) in &stats.topics {
            for (p, part) in &t.partitions {
                if *p >= 0 && part.fetch_state != "none" {
                    if let Some(v) = views.as_mut() {
                        let view = FetchView::of(part, rx_idle(part.leader));
                        v.insert((topic.clone(), *p), view);
                    }
                }
                // -1 is the internal UA partition and partitions this client does not consume.
                if *p < 0 || part.consumer_lag < 0 {
                    continue;
                }
                self.metrics
                    .lag
                    .with_label_values(&[
                        self.metrics.shard.as_str(),
                        topic.as_str(),
                        p.to_string().as_str(),
                    ])
                    .set(part.consumer_lag);
                lags.insert((topic.clone(), *p), part.consumer_lag);
            }
        }
    }
}

impl FetchView {
    /// The fetcher is at the partition's end and holds nothing for the shard: fetching, its next
    /// fetch at (or past) the high watermark of its last response, its queue empty. What an
    /// end-of-partition event says, read from statistics instead: drain's fallback for an end
    /// whose event never came (librdkafka emits one end per offset, so a partition revoked and
    /// reassigned at the same end offset may not get a second).
    /// The watermark must be fresh (the leader answered within [`FRESH_RX_US`]): during a leader
    /// outage it is the last one seen, and records may have been appended since. Under
    /// `read_committed` with a transaction open the fetcher stops at the last stable offset, below
    /// the high watermark: never caught up, so the drain waits (for the event), as it should.
    pub fn caught_up(&self) -> bool {
        self.state == "active"
            && self.queued == 0
            && self.hi_offset >= 0
            && self.next_offset >= self.hi_offset
            && (0..FRESH_RX_US).contains(&self.leader_rx_idle_us)
    }

    fn of(part: &rdkafka::statistics::Partition, leader_rx_idle_us: i64) -> FetchView {
        FetchView {
            state: part.fetch_state.clone(),
            next_offset: part.next_offset,
            app_offset: part.app_offset,
            hi_offset: part.hi_offset,
            queued: part.fetchq_cnt,
            leader_rx_idle_us,
        }
    }
}

impl ConsumerContext for ShardContext {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Written before the epoch moves, as on assign: the loop reads it when the epoch changed.
            *lock(&self.assignment) = None;
            self.epoch.fetch_add(1, Ordering::SeqCst);
            self.metrics.lag.reset();
            self.metrics.lag_seconds.reset();
            lock(&self.message_lag).clear();
            // A view of the old assignment must not speak for the new one (drain's fallback).
            if let Some(v) = self.fetch_view.as_ref() {
                lock(v).clear();
            }
            events::partitions_revoked(&self.metrics, &parts(tpl));
        }
    }

    fn post_rebalance(&self, c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                if !self.first_assign.swap(true, Ordering::SeqCst) {
                    self.joined.fetch_add(1, Ordering::SeqCst);
                }
                let hold = self.joined.load(Ordering::SeqCst) < self.shards;
                let pause = hold || self.budget_paused.load(Ordering::SeqCst);
                let r = if pause { c.pause(tpl) } else { c.resume(tpl) };
                if let Err(e) = r {
                    tracing::warn!(shard = self.shard, error = %e, "start barrier pause/resume failed");
                }
                self.held.store(hold, Ordering::SeqCst);
                let p = parts(tpl);
                events::partitions_assigned(&self.metrics, self.core, &p);
                *lock(&self.assignment) = Some(p);
                self.epoch.fetch_add(1, Ordering::SeqCst);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => {
                tracing::error!(shard = self.shard, error = %e, "rebalance error")
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) => events::committed(&self.metrics, true, None),
            // "No offset to commit" is librdkafka's timer finding nothing new: not an error.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => events::committed(&self.metrics, false, Some(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> ShardContext {
        ShardContext {
            shard: 0,
            core: 0,
            metrics: ShardMetrics::new(0),
            epoch: Arc::default(),
            assignment: Arc::default(),
            joined: Arc::default(),
            shards: 1,
            first_assign: AtomicBool::new(false),
            held: Arc::default(),
            budget_paused: Arc::default(),
            fatal: Arc::default(),
            message_lag: Mutex::default(),
            fetch_view: Some(Mutex::default()),
        }
    }

    fn statistics(parts: &[(i32, &str, i64, i64)]) -> Statistics {
        let mut topic = rdkafka::statistics::Topic {
            topic: "t".into(),
            ..Default::default()
        };
        for &(p, state, app_offset, lag) in parts {
            topic.partitions.insert(
                p,
                rdkafka::statistics::Partition {
                    partition: p,
                    fetch_state: state.into(),
                    next_offset: app_offset,
                    app_offset,
                    hi_offset: 40,
                    fetchq_cnt: 3,
                    consumer_lag: lag,
                    leader: 1,
                    ..Default::default()
                },
            );
        }
        let mut stats = Statistics::default();
        stats.topics.insert("t".into(), topic);
        // The group coordinator's connection (-1) heard from recently, the leader less so.
        for (name, nodeid, rxidle) in [("GroupCoordinator", -1, 1_000), ("b:9092/1", 1, 300_000)] {
            let broker = rdkafka::statistics::Broker {
                name: name.into(),
                nodeid,
                rxidle,
                ..Default::default()
            };
            stats.brokers.insert(name.into(), broker);
        }
        stats
    }

    #[test]
    fn statistics_keep_where_each_consumed_partition_fetches_and_only_the_latest() {
        let ctx = context();
        // Partition 0 is fetched; -1 is librdkafka's internal one, 1 one this client does not consume.
        ctx.stats(statistics(&[
            (0, "active", 37, 3),
            (-1, "active", -1, -1),
            (1, "none", -1, -1),
        ]));
        let view = |p: i32| {
            ctx.fetch_view
                .as_ref()?
                .lock()
                .ok()?
                .get(&("t".to_string(), p))
                .cloned()
        };
        assert_eq!(
            view(0),
            Some(FetchView {
                state: "active".into(),
                next_offset: 37,
                app_offset: 37,
                hi_offset: 40,
                queued: 3,
                leader_rx_idle_us: 300_000,
            })
        );
        assert_eq!((view(-1), view(1)), (None, None));
        // A later report without the partition (revoked) forgets it.
        ctx.stats(statistics(&[(1, "offset-query", -1001, -1)]));
        assert_eq!(view(0), None);
        assert_eq!(view(1).map(|v| v.state), Some("offset-query".to_string()));
    }

    #[test]
    fn statistics_still_land_after_a_thread_panicked_holding_the_maps() {
        let ctx = context();
        // Poison both maps: a panic while a lock is held (the maps keep their last whole value).
        std::thread::scope(|s| {
            let _ = s
                .spawn(|| {
                    let _l = ctx.message_lag.lock();
                    let _v = ctx.fetch_view.as_ref().map(|v| v.lock());
                    panic!("poison the statistics maps");
                })
                .join();
        });
        assert!(ctx.message_lag.is_poisoned());
        assert!(ctx.fetch_view.as_ref().is_some_and(|v| v.is_poisoned()));
        ctx.stats(statistics(&[(0, "active", 37, 3)]));
        // Skipped writes would leave drain's fallback and the lag gauge on stale figures.
        let views = lock(
            ctx.fetch_view
                .as_ref()
                .expect("the test context keeps a view"),
        );
        assert_eq!(
            views.get(&("t".to_string(), 0)).map(|v| v.next_offset),
            Some(37)
        );
        assert_eq!(lock(&ctx.message_lag).get(&("t".to_string(), 0)), Some(&3));
    }

    #[test]
    fn a_fetcher_is_caught_up_only_fetching_at_the_high_watermark_with_nothing_queued() {
        let at_end = FetchView {
            state: "active".into(),
            next_offset: 40,
            app_offset: 40,
            hi_offset: 40,
            queued: 0,
            leader_rx_idle_us: 300_000,
        };
        assert!(at_end.caught_up());
        // Reassigned at its committed end: the shard took nothing yet, the fetcher is at the end.
        assert!(FetchView {
            app_offset: -1001,
            ..at_end.clone()
        }
        .caught_up());
        let not = [
            FetchView {
                queued: 2,
                ..at_end.clone()
            },
            FetchView {
                next_offset: 39,
                ..at_end.clone()
            },
            FetchView {
                hi_offset: -1,
                next_offset: -1001,
                ..at_end.clone()
            },
            FetchView {
                state: "offset-query".into(),
                ..at_end.clone()
            },
            FetchView {
                state: "stopped".into(),
                ..at_end.clone()
            },
            // A leader silent for 5 s (an outage): its last watermark may be stale.
            FetchView {
                leader_rx_idle_us: 5_000_000,
                ..at_end.clone()
            },
            // No leader known, or never heard from.
            FetchView {
                leader_rx_idle_us: -1,
                ..at_end.clone()
            },
        ];
        for v in not {
            assert!(!v.caught_up(), "{v:?}");
        }
    }

    #[test]
    fn a_revoke_forgets_the_fetch_view_of_the_old_assignment() {
        let ctx = context();
        ctx.stats(statistics(&[(0, "active", 40, 0)]));
        let views = |ctx: &ShardContext| {
            ctx.fetch_view
                .as_ref()
                .map(|v| v.lock().map(|v| v.len()).unwrap_or(99))
        };
        assert_eq!(views(&ctx), Some(1));
        let consumer: BaseConsumer<ShardContext> = rdkafka::ClientConfig::new()
            .set("group.id", "g")
            .create_with_context(context())
            .expect("a consumer needs no broker to be created");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("t", 0);
        ctx.pre_rebalance(&consumer, &Rebalance::Revoke(&tpl));
        assert_eq!(views(&ctx), Some(0));
    }

    #[test]
    fn fatal_and_fenced_errors_are_fatal_and_others_are_not() {
        assert!(is_fatal(&KafkaError::Global(RDKafkaErrorCode::Fatal)));
        assert!(is_fatal(&KafkaError::Global(
            RDKafkaErrorCode::FencedInstanceId
        )));
        assert!(is_fatal(&KafkaError::MessageConsumptionFatal(
            RDKafkaErrorCode::Fatal
        )));
        assert!(is_fatal(&KafkaError::MessageConsumption(
            RDKafkaErrorCode::FencedInstanceId
        )));
        assert!(!is_fatal(&KafkaError::Global(
            RDKafkaErrorCode::AllBrokersDown
        )));
        assert!(!is_fatal(&KafkaError::MessageConsumption(
            RDKafkaErrorCode::AllBrokersDown
        )));
        assert!(!is_fatal(&KafkaError::PartitionEOF(0)));
    }

    #[test]
    fn a_fatal_client_error_marks_the_shard_failed_and_a_transient_one_does_not() {
        let ctx = context();
        ctx.error(
            KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "all brokers down",
        );
        assert!(!ctx.fatal.load(Ordering::SeqCst));
        assert_eq!(ctx.metrics.failed.get(), 0);
        ctx.error(KafkaError::Global(RDKafkaErrorCode::Fatal), "fenced");
        assert!(ctx.fatal.load(Ordering::SeqCst));
        assert_eq!(ctx.metrics.failed.get(), 1);
        // The stream path reports the same condition again: still failed, still one flag.
        assert!(ctx.fail_if_fatal(
            &KafkaError::MessageConsumptionFatal(RDKafkaErrorCode::Fatal),
            ""
        ));
        assert_eq!(ctx.metrics.failed.get(), 1);
    }
}
