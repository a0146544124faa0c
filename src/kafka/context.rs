//! The consumer context of one shard: rebalance bookkeeping, commit results and consumer lag.
//!
//! Guarantee: every assignment change bumps [`ShardContext::epoch`] before the shard sees any record
//! of the new assignment, so the shard drops stale per-partition state; librdkafka then commits the
//! stored (done) offsets before the partitions go away.
//! Precondition: callbacks run on the thread that polls the consumer, which is the shard's own thread.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, TopicPartitionList};

use crate::metrics::{events, ShardMetrics};

pub struct ShardContext {
    pub shard: usize,
    pub core: usize,
    pub metrics: ShardMetrics,
    /// Bumped on every revoke and assign.
    pub epoch: Arc<AtomicU64>,
    /// The current assignment: read by the shard only when the epoch changed.
    pub assignment: Arc<Mutex<Vec<(String, i32)>>>,
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
}

fn parts(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl ClientContext for ShardContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        // End-of-partition is an event shardline asks for (drain mode), not an error.
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF) {
            return;
        }
        tracing::error!(shard = self.shard, %error, reason, "librdkafka error");
    }

    fn stats(&self, stats: Statistics) {
        for (topic, t) in &stats.topics {
            for (p, part) in &t.partitions {
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
            }
        }
    }
}

impl ConsumerContext for ShardContext {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.epoch.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut a) = self.assignment.lock() {
                a.clear();
            }
            self.metrics.lag.reset();
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
                if let Ok(mut a) = self.assignment.lock() {
                    *a = p;
                }
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
            Err(rdkafka::error::KafkaError::ConsumerCommit(
                rdkafka::types::RDKafkaErrorCode::NoOffset,
            )) => {}
            Err(e) => events::committed(&self.metrics, false, Some(&e)),
        }
    }
}
