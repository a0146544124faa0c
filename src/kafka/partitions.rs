//! The partition book of one shard: everything it knows per assigned partition (offset tracker,
//! end-of-partition, pause reasons) and what it must tell librdkafka about them (pause, resume,
//! stored offsets, the final commit).
//!
//! Guarantee: a partition is fetched only while none of its pause reasons holds: the start barrier
//! (`held`), the shard's spent in-flight budget (`budget`, shared with the consumer context so that a
//! rebalance never resumes what back-pressure paused), or its own tracker holding `max_pending` records
//! behind an unfinished one (`capped`). Stored offsets only ever name a contiguous done prefix.
//! Completions of an older assignment epoch change nothing (their partitions were revoked and the new
//! owner replays them). End-of-partition is tracked per (topic, partition).
//! Precondition: all calls come from the shard's own thread, in the order the shard sees events.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::IntCounter;

use super::tracker::PartitionTracker;

/// (index into the shard's topic list, partition).
pub type PartitionKey = (usize, i32);

/// Hashes a [`PartitionKey`] with one multiply per word (FxHash's): the book is looked up twice per
/// record (consumed, done), where std's SipHash showed in the shard's profile. Its keys are a topic
/// index and a partition number the broker assigned, never a record's bytes, so a keyed hash's
/// collision resistance buys nothing here.
#[derive(Default)]
pub struct PartitionKeyHasher(u64);

impl Hasher for PartitionKeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    fn write_i32(&mut self, n: i32) {
        self.write_u64(u64::from(n as u32));
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A map by [`PartitionKey`] with [`PartitionKeyHasher`].
type PartitionMap<V> = HashMap<PartitionKey, V, BuildHasherDefault<PartitionKeyHasher>>;

/// Makes a partition's consumed-records counter from its topic and partition.
pub type CounterFor = Box<dyn Fn(&str, i32) -> IntCounter>;

/// What the book asks of the consumer; implemented by the shard's consumer and by test stand-ins.
pub trait PartitionControl {
    fn pause(&self, parts: &[(String, i32)]);
    fn resume(&self, parts: &[(String, i32)]);
    /// Stores next-offsets to commit (librdkafka commits them on its timer and before a revoke).
    fn store(&self, offsets: &[(String, i32, i64)]);
}

struct Part {
    tracker: PartitionTracker,
    consumed: IntCounter,
    /// Done offsets moved since the last store.
    dirty: bool,
    eof: bool,
    /// Paused because its tracker holds `max_pending` records.
    capped: bool,
    /// The Kafka timestamp (ms) of the last record consumed, for the lag in time.
    last_ts_ms: Option<i64>,
}

/// Per-partition state and pause decisions of one shard.
pub struct PartitionBook {
    topics: Vec<String>,
    epoch: u64,
    assigned: Vec<PartitionKey>,
    parts: PartitionMap<Part>,
    /// What librdkafka has paused, as far as the book has asked.
    paused: HashSet<PartitionKey>,
    held: bool,
    /// Between a revoke and the next assign the shard is out of the group (a lost session, a
    /// rebalance under way): its empty assignment is not "every partition at its end".
    in_group: bool,
    budget: Arc<AtomicBool>,
    max_pending: usize,
    counter_for: CounterFor,
}

impl PartitionBook {
    /// `max_pending`: the most records one partition's tracker may hold before the partition is paused
    /// (it resumes at half). `counter_for` makes a partition's consumed-records counter.
    pub fn new(topics: Vec<String>, max_pending: usize, counter_for: CounterFor) -> PartitionBook {
        PartitionBook {
            topics,
            epoch: 0,
            assigned: Vec::new(),
            parts: PartitionMap::default(),
            paused: HashSet::new(),
            held: false,
            in_group: false,
            budget: Arc::new(AtomicBool::new(false)),
            max_pending: max_pending.max(2),
            counter_for,
        }
    }

    /// The flag the consumer context reads on assign: true while back-pressure pauses the shard.
    pub fn budget_flag(&self) -> Arc<AtomicBool> {
        self.budget.clone()
    }

    pub fn topic_index(&self, name: &str) -> Option<usize> {
        self.topics.iter().position(|t| t == name)
    }

    /// The index of the shard's only topic, when it has one: every message its consumer returns
    /// is of that topic (it subscribes to these exact names), so the message's topic name, an FFI
    /// call and a UTF-8 check per record, need not be read.
    pub fn only_topic(&self) -> Option<usize> {
        (self.topics.len() == 1).then_some(0)
    }

    pub fn topic(&self, index: usize) -> &str {
        self.topics.get(index).map(String::as_str).unwrap_or("")
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn is_budget_paused(&self) -> bool {
        self.budget.load(Ordering::SeqCst)
    }

    /// A rebalance: forget every partition, take the new assignment. The context has already paused
    /// the new partitions if `held` or the budget flag was set; the book pauses them again (idempotent)
    /// so that its view and librdkafka's agree.
    pub fn on_assignment(
        &mut self,
        epoch: u64,
        assignment: &[(String, i32)],
        held: bool,
        ctrl: &dyn PartitionControl,
    ) {
        self.epoch = epoch;
        self.in_group = true;
        self.parts.clear();
        self.held = held;
        self.assigned = assignment
            .iter()
            .filter_map(|(t, p)| self.topic_index(t).map(|i| (i, *p)))
            .collect();
        self.paused.clear();
        if held || self.is_budget_paused() {
            ctrl.pause(&self.names(&self.assigned));
            self.paused = self.assigned.iter().copied().collect();
        }
    }

    /// A revoke with no assign yet: forget every partition (their records in flight complete into
    /// an epoch that is gone), and the shard is out of the group until the next assignment.
    pub fn on_revoke(&mut self, epoch: u64, ctrl: &dyn PartitionControl) {
        self.on_assignment(epoch, &[], false, ctrl);
        self.in_group = false;
    }

    /// Whether the group has assigned this shard its partitions (possibly none) since its last
    /// revoke.
    pub fn in_group(&self) -> bool {
        self.in_group
    }

    /// A record arrived. False: a replay of an offset already tracked (ignore the record).
    pub fn begin(
        &mut self,
        key: PartitionKey,
        offset: i64,
        ts_ms: Option<i64>,
        now: Instant,
        ctrl: &dyn PartitionControl,
    ) -> bool {
        if !self.assigned.contains(&key) {
            // A record of a partition this shard does not own (a stale fetch around a rebalance):
            // tracking it could store an offset for another owner's partition.
            tracing::debug!(
                topic = self.topic(key.0),
                partition = key.1,
                "record of an unassigned partition ignored"
            );
            return false;
        }
        let max_pending = self.max_pending;
        let part = self.part(key);
        part.eof = false;
        if !part.tracker.begin(offset, now) {
            return false;
        }
        part.consumed.inc();
        if ts_ms.is_some() {
            part.last_ts_ms = ts_ms;
        }
        if !part.capped && part.tracker.pending() >= max_pending {
            part.capped = true;
            self.apply(ctrl);
        }
        true
    }

    /// A record of `epoch` is done. Completions of an earlier epoch are ignored.
    pub fn done(
        &mut self,
        epoch: u64,
        key: PartitionKey,
        offset: i64,
        ctrl: &dyn PartitionControl,
    ) {
        if epoch != self.epoch {
            return;
        }
        let max_pending = self.max_pending;
        let Some(part) = self.parts.get_mut(&key) else {
            return;
        };
        if part.tracker.done(offset).is_some() {
            part.dirty = true;
        }
        if part.capped && part.tracker.pending() <= max_pending / 2 {
            part.capped = false;
            self.apply(ctrl);
        }
    }

    /// The consumer reported the end of a partition (drain mode). True if it was not at its end.
    pub fn mark_eof(&mut self, key: PartitionKey) -> bool {
        if !self.assigned.contains(&key) {
            return false;
        }
        !std::mem::replace(&mut self.part(key).eof, true)
    }

    /// Marks one topic's partition at its end (drain's fallback, see `FetchView::caught_up`). True
    /// if it was assigned and not at its end.
    pub fn mark_eof_of(&mut self, topic: &str, partition: i32) -> bool {
        self.topic_index(topic)
            .is_some_and(|t| self.mark_eof((t, partition)))
    }

    /// librdkafka's end-of-partition event names the partition number only: every assigned topic with
    /// that partition is marked, and a later record of one of them clears its mark again (`begin`), so
    /// drain waits for it; drain's idle window covers the gap between the two. Returns the topics
    /// newly at their end, with the records this shard has consumed from each.
    pub fn mark_eof_partition(&mut self, partition: i32) -> Vec<(String, u64)> {
        let keys: Vec<PartitionKey> = self
            .assigned
            .iter()
            .filter(|(_, p)| *p == partition)
            .copied()
            .collect();
        let mut ended = Vec::new();
        for k in keys {
            if self.mark_eof(k) {
                let consumed = self.parts.get(&k).map_or(0, |p| p.consumed.get());
                if let Some(t) = self.topics.get(k.0) {
                    ended.push((t.clone(), consumed));
                }
            }
        }
        ended
    }

    /// True when the shard is in the group (assigned, not revoked since) and every assigned
    /// partition is at its end. An empty assignment is at its end: the group gave this shard none.
    pub fn all_at_eof(&self) -> bool {
        self.in_group
            && self
                .assigned
                .iter()
                .all(|k| self.parts.get(k).is_some_and(|p| p.eof))
    }

    /// Drain mode: the assigned partitions not at their end, each with the records this shard has
    /// consumed from it and whether the book holds it paused (what a stalled drain waits for).
    pub fn not_at_eof(&self) -> Vec<(&str, i32, u64, bool)> {
        self.assigned
            .iter()
            .filter(|k| !self.parts.get(k).is_some_and(|p| p.eof))
            .map(|k| {
                let consumed = self.parts.get(k).map_or(0, |p| p.consumed.get());
                (self.topic(k.0), k.1, consumed, self.paused.contains(k))
            })
            .collect()
    }

    /// Back-pressure: pause (or resume) every assigned partition for the shard's in-flight budget.
    pub fn set_budget_paused(&mut self, paused: bool, ctrl: &dyn PartitionControl) {
        self.budget.store(paused, Ordering::SeqCst);
        self.apply(ctrl);
    }

    /// The start barrier is released: fetch what no other reason holds paused.
    pub fn release_hold(&mut self, ctrl: &dyn PartitionControl) {
        self.held = false;
        self.apply(ctrl);
    }

    pub fn is_held(&self) -> bool {
        self.held
    }

    /// Stores the done prefix of every partition that moved since the last store.
    pub fn store(&mut self, ctrl: &dyn PartitionControl) {
        let mut out = Vec::new();
        for ((t, p), part) in self.parts.iter_mut() {
            if !std::mem::take(&mut part.dirty) {
                continue;
            }
            if let (Some(topic), Some(next)) = (self.topics.get(*t), part.tracker.committable()) {
                out.push((topic.clone(), *p, next));
            }
        }
        if !out.is_empty() {
            ctrl.store(&out);
        }
    }

    /// Every partition's committable offset (the final synchronous commit at shutdown).
    pub fn committable(&self) -> Vec<(String, i32, i64)> {
        self.parts
            .iter()
            .filter_map(|((t, p), part)| {
                Some((
                    self.topics.get(*t)?.clone(),
                    *p,
                    part.tracker.committable()?,
                ))
            })
            .collect()
    }

    /// How long the oldest not-yet-committable record of any partition has waited.
    pub fn oldest_pending_age(&self, now: Instant) -> Duration {
        self.parts
            .values()
            .filter_map(|p| p.tracker.oldest_since())
            .min()
            .map(|at| now.saturating_duration_since(at))
            .unwrap_or_default()
    }

    /// The lag in time of each assigned partition, in seconds: 0 where `messages` (the partition's
    /// message lag, if known) says no record waits; else now minus the timestamp of the last record
    /// consumed, an upper bound of the true lag (the oldest waiting record came after it) by at most
    /// the gap between the two; unknown (left out) before the partition's first record.
    pub fn lag_seconds(
        &self,
        now_ms: i64,
        messages: impl Fn(&str, i32) -> Option<i64>,
    ) -> Vec<(&str, i32, f64)> {
        let mut out = Vec::with_capacity(self.assigned.len());
        for key in &self.assigned {
            let topic = self.topic(key.0);
            let last = self.parts.get(key).and_then(|p| p.last_ts_ms);
            // librdkafka reports -1 while it does not know (no committed offset yet): unknown, not 0.
            let seconds = match (messages(topic, key.1), last) {
                (Some(0), _) => 0.0,
                // Saturating: the timestamp is the producer's, any i64 (a bad one must not panic here).
                (_, Some(ts)) => now_ms.saturating_sub(ts).max(0) as f64 / 1000.0,
                (_, None) => continue,
            };
            out.push((topic, key.1, seconds));
        }
        out
    }

    /// Records the book holds across partitions (done ones behind an unfinished record included).
    pub fn pending(&self) -> usize {
        self.parts.values().map(|p| p.tracker.pending()).sum()
    }

    /// Partitions that are paused right now (any reason).
    pub fn paused_count(&self) -> usize {
        self.paused.len()
    }

    pub fn assigned_count(&self) -> usize {
        self.assigned.len()
    }

    fn part(&mut self, key: PartitionKey) -> &mut Part {
        let topic = self.topics.get(key.0).map(String::as_str).unwrap_or("");
        let counter_for = &self.counter_for;
        self.parts.entry(key).or_insert_with(|| Part {
            tracker: PartitionTracker::default(),
            consumed: counter_for(topic, key.1),
            dirty: false,
            eof: false,
            capped: false,
            last_ts_ms: None,
        })
    }

    fn names(&self, keys: &[PartitionKey]) -> Vec<(String, i32)> {
        keys.iter()
            .filter_map(|(t, p)| Some((self.topics.get(*t)?.clone(), *p)))
            .collect()
    }

    /// Brings librdkafka's pause state in line with every partition's reasons.
    fn apply(&mut self, ctrl: &dyn PartitionControl) {
        let all = self.held || self.is_budget_paused();
        let (mut pause, mut resume) = (Vec::new(), Vec::new());
        for key in &self.assigned {
            let want = all || self.parts.get(key).is_some_and(|p| p.capped);
            let has = self.paused.contains(key);
            if want && !has {
                pause.push(*key);
            } else if !want && has {
                resume.push(*key);
            }
        }
        if !pause.is_empty() {
            ctrl.pause(&self.names(&pause));
            self.paused.extend(pause);
        }
        if !resume.is_empty() {
            ctrl.resume(&self.names(&resume));
            for k in &resume {
                self.paused.remove(k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Records what the book asked librdkafka to do, and the pause state that results.
    #[derive(Default)]
    struct FakeConsumer {
        paused: RefCell<HashSet<(String, i32)>>,
        stored: RefCell<HashMap<(String, i32), i64>>,
    }

    impl PartitionControl for FakeConsumer {
        fn pause(&self, parts: &[(String, i32)]) {
            self.paused.borrow_mut().extend(parts.iter().cloned());
        }
        fn resume(&self, parts: &[(String, i32)]) {
            let mut p = self.paused.borrow_mut();
            for x in parts {
                p.remove(x);
            }
        }
        fn store(&self, offsets: &[(String, i32, i64)]) {
            for (t, p, o) in offsets {
                self.stored.borrow_mut().insert((t.clone(), *p), *o);
            }
        }
    }

    impl FakeConsumer {
        fn is_paused(&self, t: &str, p: i32) -> bool {
            self.paused.borrow().contains(&(t.to_string(), p))
        }
        /// What librdkafka's assign callback does (kafka::context): pause when held or budget-paused.
        fn assign(&self, book: &PartitionBook, parts: &[(String, i32)], held: bool) {
            self.paused.borrow_mut().clear();
            if held || book.budget_flag().load(Ordering::SeqCst) {
                self.pause(parts);
            }
        }
    }

    fn book(max_pending: usize) -> PartitionBook {
        PartitionBook::new(
            vec!["a".into(), "b".into()],
            max_pending,
            Box::new(|_, _| IntCounter::new("c", "consumed").expect("static counter")),
        )
    }

    fn tp(t: &str, p: i32) -> (String, i32) {
        (t.to_string(), p)
    }

    #[test]
    fn only_a_single_topic_is_taken_without_its_name() {
        assert_eq!(book(10).only_topic(), None, "two topics: read the name");
        let one = PartitionBook::new(
            vec!["a".into()],
            10,
            Box::new(|_, _| IntCounter::new("c", "consumed").expect("static counter")),
        );
        assert_eq!(one.only_topic(), Some(0));
        assert_eq!(one.topic_index("a"), Some(0));
    }

    #[test]
    fn partition_keys_hash_apart() {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let h = BuildHasherDefault::<PartitionKeyHasher>::default();
        let mut seen = HashSet::new();
        for t in 0..4usize {
            for p in 0..256 {
                assert!(seen.insert(h.hash_one((t, p))), "({t}, {p}) collides");
            }
        }
    }

    #[test]
    fn a_rebalance_under_back_pressure_keeps_every_partition_paused() {
        let kafka = FakeConsumer::default();
        let mut b = book(1000);
        let first = [tp("a", 0), tp("a", 1)];
        kafka.assign(&b, &first, false);
        b.on_assignment(1, &first, false, &kafka);
        assert!(!kafka.is_paused("a", 0));
        b.set_budget_paused(true, &kafka);
        assert!(kafka.is_paused("a", 0) && kafka.is_paused("a", 1));
        // A member joins: everything is revoked, then a new set is assigned while the database is down.
        let second = [tp("a", 1), tp("b", 0)];
        kafka.assign(&b, &second, false);
        b.on_assignment(3, &second, false, &kafka);
        assert!(
            kafka.is_paused("a", 1) && kafka.is_paused("b", 0),
            "back-pressure survives the rebalance"
        );
        b.set_budget_paused(false, &kafka);
        assert!(!kafka.is_paused("a", 1) && !kafka.is_paused("b", 0));
    }

    #[test]
    fn revoke_with_work_in_flight_ignores_late_completions() {
        let kafka = FakeConsumer::default();
        let mut b = book(1000);
        let now = Instant::now();
        b.on_assignment(1, &[tp("a", 0)], false, &kafka);
        for o in 10..15 {
            assert!(b.begin((0, 0), o, None, now, &kafka));
        }
        b.done(1, (0, 0), 10, &kafka);
        b.store(&kafka);
        assert_eq!(kafka.stored.borrow().get(&tp("a", 0)), Some(&11));
        // Revoked and assigned again: the old epoch's records are replayed by whoever owns them now.
        b.on_assignment(3, &[tp("a", 0)], false, &kafka);
        b.done(1, (0, 0), 11, &kafka);
        b.store(&kafka);
        assert_eq!(kafka.stored.borrow().get(&tp("a", 0)), Some(&11));
        assert!(
            b.committable().is_empty(),
            "no state survives the rebalance"
        );
        // The replay starts at the committed offset and is tracked afresh.
        assert!(b.begin((0, 0), 11, None, now, &kafka));
        b.done(3, (0, 0), 11, &kafka);
        assert_eq!(b.committable(), vec![(String::from("a"), 0, 12)]);
    }

    #[test]
    fn drain_needs_the_end_of_every_partition_of_every_topic() {
        let kafka = FakeConsumer::default();
        let mut b = book(1000);
        assert!(!b.all_at_eof(), "no assignment yet");
        b.on_assignment(1, &[tp("a", 0), tp("b", 0)], false, &kafka);
        b.mark_eof((0, 0));
        assert!(
            !b.all_at_eof(),
            "topic b's partition 0 is not a's partition 0"
        );
        b.mark_eof((1, 0));
        assert!(b.all_at_eof());
        assert!(b.not_at_eof().is_empty());
        b.begin((1, 0), 5, None, Instant::now(), &kafka);
        assert!(!b.all_at_eof(), "a new record means b/0 is not at its end");
        assert_eq!(
            b.not_at_eof(),
            vec![("b", 0, 1, false)],
            "what a drain waits for"
        );
        b.mark_eof((1, 7));
        assert!(
            !b.all_at_eof(),
            "an unassigned partition's end counts for nothing"
        );
        assert!(b.mark_eof_of("b", 0), "drain's fallback marks b/0 by name");
        assert!(!b.mark_eof_of("b", 0), "once per end");
        assert!(!b.mark_eof_of("c", 0), "not a topic of this shard");
        assert!(b.all_at_eof());
        // Revoked (a lost session): out of the group, so not at its end, though nothing is
        // assigned; the next assignment, even an empty one, is in the group again.
        b.on_revoke(9, &kafka);
        assert!(!b.all_at_eof() && !b.in_group() && b.not_at_eof().is_empty());
        b.on_assignment(10, &[], false, &kafka);
        assert!(b.all_at_eof(), "the group gave this shard no partition");
        // Held by the start barrier: a waiting partition says it is paused.
        b.on_assignment(2, &[tp("a", 0)], true, &kafka);
        assert_eq!(b.not_at_eof(), vec![("a", 0, 0, true)]);
    }

    #[test]
    fn a_stuck_record_caps_its_partition_and_ages() {
        let kafka = FakeConsumer::default();
        let mut b = book(4);
        let t0 = Instant::now();
        b.on_assignment(1, &[tp("a", 0), tp("a", 1)], false, &kafka);
        for o in 0..4 {
            b.begin((0, 0), o, None, t0, &kafka);
        }
        // Offset 0 is stuck; 1..3 are done behind it: the tracker still holds all four.
        for o in 1..4 {
            b.done(1, (0, 0), o, &kafka);
        }
        assert_eq!(b.pending(), 4);
        assert!(kafka.is_paused("a", 0), "capped at max_pending");
        assert!(!kafka.is_paused("a", 1), "other partitions keep flowing");
        assert!(b.oldest_pending_age(t0 + Duration::from_secs(7)) >= Duration::from_secs(7));
        b.done(1, (0, 0), 0, &kafka);
        assert!(!kafka.is_paused("a", 0), "resumed once the record is done");
        assert_eq!(b.pending(), 0);
        assert_eq!(b.oldest_pending_age(t0), Duration::ZERO);
        assert_eq!(b.committable(), vec![(String::from("a"), 0, 4)]);
    }

    #[test]
    fn the_start_barrier_and_back_pressure_release_independently() {
        let kafka = FakeConsumer::default();
        let mut b = book(1000);
        let parts = [tp("a", 0)];
        kafka.assign(&b, &parts, true);
        b.on_assignment(1, &parts, true, &kafka);
        b.set_budget_paused(true, &kafka);
        b.release_hold(&kafka);
        assert!(kafka.is_paused("a", 0), "still paused for the budget");
        b.set_budget_paused(false, &kafka);
        assert!(!kafka.is_paused("a", 0));
        assert_eq!(b.paused_count(), 0);
    }

    // Fails on the old code: there was no lag in time, only in messages.
    #[test]
    fn the_lag_in_seconds_is_zero_when_caught_up_and_counts_from_the_last_record_otherwise() {
        let kafka = FakeConsumer::default();
        let mut b = book(1000);
        let parts = [tp("a", 0), tp("a", 1), tp("b", 2)];
        b.on_assignment(1, &parts, false, &kafka);
        let now = Instant::now();
        assert!(b.begin((0, 0), 5, Some(1_000), now, &kafka));
        assert!(
            b.begin((0, 0), 6, None, now, &kafka),
            "no timestamp keeps the last one"
        );
        assert!(b.begin((0, 1), 9, Some(5_000), now, &kafka));
        let messages = |t: &str, p: i32| match (t, p) {
            ("a", 0) => Some(3),
            ("a", 1) => Some(0),
            _ => Some(5),
        };
        let lags = b.lag_seconds(11_000, messages);
        // b/2 has waiting records but none consumed yet: unknown, left out.
        assert_eq!(lags, vec![("a", 0, 10.0), ("a", 1, 0.0)]);
        // Unknown message lag (no statistics yet, or librdkafka's -1 before a first commit) counts
        // from the last record: never 0.
        for unknown in [None, Some(-1)] {
            assert_eq!(
                b.lag_seconds(6_000, |_, _| unknown),
                vec![("a", 0, 5.0), ("a", 1, 1.0)]
            );
        }
        // A new assignment forgets the old partitions' timestamps: only a caught-up one is known.
        b.on_assignment(2, &parts, false, &kafka);
        assert_eq!(b.lag_seconds(11_000, messages), vec![("a", 1, 0.0)]);
    }

    // Fails on the old code (overflow checks on, as in tests: "attempt to subtract with overflow"):
    // a producer may set any timestamp, i64::MIN included.
    #[test]
    fn a_producer_timestamp_at_the_ends_of_i64_does_not_panic() {
        let kafka = FakeConsumer::default();
        let mut b = book(1000);
        b.on_assignment(1, &[tp("a", 0), tp("a", 1)], false, &kafka);
        let now = Instant::now();
        assert!(b.begin((0, 0), 1, Some(i64::MIN), now, &kafka));
        assert!(b.begin((0, 1), 1, Some(i64::MAX), now, &kafka));
        let lags = b.lag_seconds(1_700_000_000_000, |_, _| Some(3));
        assert_eq!(lags.len(), 2);
        assert!(lags[0].2 > 1e15, "{lags:?}");
        assert_eq!(lags[1].2, 0.0);
    }
}
