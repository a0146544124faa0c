//! Drain mode's fallback for a partition end that librdkafka never reports.
//!
//! Purpose: `shardline run --drain` exits once every assigned partition is at its end, and the end
//! is librdkafka's end-of-partition event. Should that event not come (it is sent once per end
//! offset; around a rebalance, or with a librdkafka pause the shard's book does not know of, a
//! partition may sit at its end without one), the drain would wait for ever. [`DrainWatch`] looks
//! at each partition not at its end once per drain report (every 10 s) and decides, from what the
//! previous report saw, whether to wait, resume it, or take it as at its end.
//!
//! Guarantee: a partition is taken as at its end only after a whole report without a record, a
//! resume, and another whole report without a record, with the fetcher's latest statistics saying
//! it fetches at a fresh high watermark with nothing queued ([`FetchView::caught_up`]). A record in
//! between, a new assignment or a pause by the book starts it over.
//!
//! Precondition: `consumed` counts only up within one assignment epoch (it is the partition's
//! cumulative consumed counter, 0 until its first record of the epoch).

use std::collections::HashMap;

use crate::kafka::context::FetchView;

/// What to do with one partition not at its end, at one drain report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DrainStep {
    /// Records came since the last report, or this is its first: only say what the drain waits for.
    Wait,
    /// Quiet for a whole report: resume it (idempotent in librdkafka: it undoes an application
    /// pause the book does not know of, and leaves an unpaused partition as it is). A partition that is not resumed first cannot be taken as
    /// at its end: a hidden pause leaves the fetcher "active" with an empty queue and a stale
    /// watermark, which would look caught up.
    Resume,
    /// Quiet since a resume, and caught up: at its end, without the event.
    End,
}

/// What the last drain report saw of each partition not at its end.
#[derive(Debug, Default)]
pub(super) struct DrainWatch {
    epoch: u64,
    /// Per partition: its consumed count at that report, and whether that report resumed it.
    seen: HashMap<(String, i32), (u64, bool)>,
}

impl DrainWatch {
    /// One report's decision for each partition in `parts` (topic, partition, consumed, paused by
    /// the book, librdkafka's view of it), in order; remembers them for the next report. A
    /// partition not in `parts` (at its end, or no longer assigned) is forgotten.
    pub(super) fn report<'a>(
        &mut self,
        epoch: u64,
        parts: impl IntoIterator<Item = (&'a str, i32, u64, bool, Option<&'a FetchView>)>,
    ) -> Vec<DrainStep> {
        let mut seen = HashMap::new();
        let mut steps = Vec::new();
        for (topic, partition, consumed, paused, view) in parts {
            let key = (topic.to_string(), partition);
            let before = (self.epoch == epoch)
                .then(|| self.seen.get(&key).copied())
                .flatten();
            let step = match before {
                Some((c, resumed)) if c == consumed && !paused => {
                    if resumed && view.is_some_and(FetchView::caught_up) {
                        DrainStep::End
                    } else {
                        DrainStep::Resume
                    }
                }
                _ => DrainStep::Wait,
            };
            seen.insert(key, (consumed, step == DrainStep::Resume));
            steps.push(step);
        }
        self.epoch = epoch;
        self.seen = seen;
        steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DrainStep::*;

    fn view(caught_up: bool) -> FetchView {
        FetchView {
            state: "active".into(),
            next_offset: if caught_up { 40 } else { 39 },
            app_offset: 40,
            hi_offset: 40,
            queued: 0,
            leader_rx_idle_us: 100_000,
        }
    }

    #[test]
    fn a_quiet_caught_up_partition_ends_only_after_a_resume_and_another_quiet_report() {
        let (mut w, at_end) = (DrainWatch::default(), view(true));
        let p = |consumed| [("t", 0, consumed, false, Some(&at_end))];
        assert_eq!(w.report(1, p(5)), vec![Wait], "first sight");
        assert_eq!(w.report(1, p(5)), vec![Resume], "quiet: resumed first");
        assert_eq!(w.report(1, p(5)), vec![End], "quiet since the resume");
    }

    #[test]
    fn a_record_a_new_assignment_or_the_books_pause_starts_it_over() {
        let (mut w, at_end) = (DrainWatch::default(), view(true));
        let p = |consumed, paused| [("t", 0, consumed, paused, Some(&at_end))];
        w.report(1, p(5, false));
        assert_eq!(w.report(1, p(5, false)), vec![Resume]);
        assert_eq!(w.report(1, p(6, false)), vec![Wait], "a record came");
        assert_eq!(w.report(1, p(6, false)), vec![Resume]);
        assert_eq!(w.report(2, p(6, false)), vec![Wait], "a rebalance");
        assert_eq!(w.report(2, p(6, true)), vec![Wait], "held by the book");
        assert_eq!(w.report(2, p(6, false)), vec![Resume]);
        assert_eq!(w.report(2, p(6, false)), vec![End]);
    }

    #[test]
    fn a_quiet_partition_not_caught_up_is_resumed_at_every_report_and_never_ended() {
        let (mut w, behind) = (DrainWatch::default(), view(false));
        w.report(1, [("t", 0, 5, false, Some(&behind))]);
        for _ in 0..3 {
            assert_eq!(
                w.report(1, [("t", 0, 5, false, Some(&behind))]),
                vec![Resume]
            );
        }
        // No statistics for it at all: the same.
        assert_eq!(w.report(1, [("t", 0, 5, false, None)]), vec![Resume]);
    }

    #[test]
    fn partitions_are_judged_each_on_its_own_and_a_partition_left_out_is_forgotten() {
        let (mut w, at_end) = (DrainWatch::default(), view(true));
        let both = |a, b| {
            [
                ("t", 0, a, false, Some(&at_end)),
                ("u", 0, b, false, Some(&at_end)),
            ]
        };
        w.report(1, both(1, 1));
        assert_eq!(w.report(1, both(1, 2)), vec![Resume, Wait]);
        assert_eq!(w.report(1, both(1, 2)), vec![End, Resume]);
        // t/0 is at its end now (left out of the next report), u/0 ends there.
        assert_eq!(w.report(1, [("u", 0, 2, false, Some(&at_end))]), vec![End]);
        // Should t/0 come back (a record, then no end), it starts over.
        assert_eq!(w.report(1, both(1, 2)), vec![Wait, Resume]);
    }
}
