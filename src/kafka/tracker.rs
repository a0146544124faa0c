//! In-order offset tracking per partition: the committable offset is one past the highest offset
//! below which every received record is done (written, or dead-lettered and acknowledged).
//!
//! Guarantee: [`PartitionTracker::done`] never moves the committable offset past a record that is not
//! done, whatever the completion order. Precondition: offsets are [`begin`](PartitionTracker::begin)-ed
//! in increasing order, as Kafka delivers one partition (gaps from compaction or transaction markers
//! are fine).

use std::collections::VecDeque;
use std::time::Instant;

#[derive(Debug, Default)]
pub struct PartitionTracker {
    /// Received, not yet committable records: (offset, done, received at), in offset order.
    pending: VecDeque<(i64, bool, Instant)>,
    /// Next offset to commit, once anything completed.
    committable: Option<i64>,
}

impl PartitionTracker {
    /// A record was received. Returns false (and ignores it) if it is not after the last one.
    pub fn begin(&mut self, offset: i64, now: Instant) -> bool {
        if let Some((last, _, _)) = self.pending.back() {
            if offset <= *last {
                return false;
            }
        } else if self.committable.is_some_and(|c| offset < c) {
            return false;
        }
        self.pending.push_back((offset, false, now));
        true
    }

    /// A record is done. Returns the new committable offset if it advanced.
    pub fn done(&mut self, offset: i64) -> Option<i64> {
        let idx = self
            .pending
            .binary_search_by_key(&offset, |(o, _, _)| *o)
            .ok()?;
        if let Some(e) = self.pending.get_mut(idx) {
            e.1 = true;
        }
        let before = self.committable;
        while let Some((o, true, _)) = self.pending.front().copied() {
            self.pending.pop_front();
            self.committable = Some(o + 1);
        }
        if self.committable != before {
            self.committable
        } else {
            None
        }
    }

    pub fn committable(&self) -> Option<i64> {
        self.committable
    }

    /// Records received and not yet done.
    pub fn in_flight(&self) -> usize {
        self.pending.iter().filter(|(_, d, _)| !d).count()
    }

    /// Records received and not yet committable (done ones behind an unfinished record count too):
    /// what the tracker holds in memory.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Since when the oldest not-yet-committable record has been waiting.
    pub fn oldest_since(&self) -> Option<Instant> {
        self.pending.front().map(|(_, _, at)| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_the_contiguous_done_prefix() {
        let mut t = PartitionTracker::default();
        let now = Instant::now();
        for o in [10, 11, 12, 15] {
            assert!(t.begin(o, now));
        }
        assert_eq!(t.done(12), None);
        assert_eq!(t.done(11), None);
        assert_eq!(t.committable(), None);
        assert_eq!(t.pending(), 4);
        assert_eq!(t.done(10), Some(13));
        assert_eq!(t.pending(), 1);
        assert_eq!(t.done(15), Some(16));
        assert_eq!(t.in_flight(), 0);
        assert_eq!(t.oldest_since(), None);
        assert!(!t.begin(15, now), "a replayed offset is not tracked twice");
        assert_eq!(t.done(99), None, "unknown offsets change nothing");
    }

    #[test]
    fn any_completion_order_never_overtakes_an_unfinished_record() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..200 {
            let mut t = PartitionTracker::default();
            let n = 50;
            let now = Instant::now();
            for o in 0..n {
                t.begin(o, now);
            }
            let mut order: Vec<i64> = (0..n).collect();
            rng.shuffle(&mut order);
            let mut done = vec![false; n as usize];
            for o in order {
                done[o as usize] = true;
                let expect = done.iter().position(|d| !d).unwrap_or(n as usize) as i64;
                let got = t.committable().unwrap_or(0);
                let after = t.done(o).unwrap_or(got);
                assert_eq!(after.max(got), expect.max(got));
                assert!(after <= expect);
            }
            assert_eq!(t.committable(), Some(n));
        }
    }
}
