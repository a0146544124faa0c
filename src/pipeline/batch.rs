//! The insert sink's adaptive batching: the rows a shard binds for one table are grouped by the
//! replica that owns their partition ([`RowWriter::owner`]), and each group goes out as one
//! `UNLOGGED` batch of the table's prepared INSERT.
//!
//! A group is sent when it reaches `scylla.batch_max_rows` or `scylla.batch_max_bytes`, when the
//! shard has no more ready records to bind (the loop calls [`Batcher::flush`] before it waits, and at
//! every yield under a backlog), or, with `scylla.batch_linger_us`, once its first row has waited
//! that long. So at low rates a group is one row sent at once (the single INSERT of an unbatched
//! write: no added latency), and under load groups fill by themselves. The in-flight bound stays in
//! records: a batch holds records that already count against it.
//!
//! Guarantee: each record learns the outcome of its own row, and only then is it done: through its
//! [`RowTicket`] when it waits in a future, through [`RowDone`] when it waits in none. A retryable
//! error retries the whole batch with the shard's backoff (same rows, same write timestamps: the
//! retry is idempotent); a record-scoped permanent error (an invalid value, a batch too large) splits
//! the batch into single-row writes, so only the refused record is dead-lettered and the others are
//! written; a systemic error or a stop reaches every row of the batch. Two rows of one key in one
//! batch keep their Kafka order through their write timestamps (Kafka ms × 1000 + offset mod 1000).
//! Precondition: one batcher per insert sink per shard, used on the shard's thread inside its glommio
//! executor (batches are written by tasks spawned there).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures::future::join_all;
use prometheus::{Histogram, IntCounter};

use super::insert::WriteCtx;
use super::StepError;
use crate::retry::{RetryError, Scope};
use crate::sink::{approx_row_bytes, BoundRow, Owner};

/// When a group is full, and how long it may wait for more rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_rows: usize,
    pub max_bytes: usize,
    pub linger: Duration,
}

impl BatchLimits {
    /// The rows a group's lists reserve: most groups stay small at moderate rates, so not the
    /// largest size.
    fn reserved_rows(&self) -> usize {
        self.max_rows.min(16)
    }

    /// From `[scylla]`. A batch never holds more rows than the write-rate cap allows in a second
    /// (its burst), so that the cap holds in rows for batches too.
    pub fn from_config(s: &crate::config::ScyllaConfig) -> BatchLimits {
        let cap = s.max_writes_per_s.map_or(usize::MAX, |r| r as usize);
        BatchLimits {
            max_rows: s.batch_max_rows.min(cap).max(1),
            max_bytes: s.batch_max_bytes,
            linger: s.batch_linger,
        }
    }

    /// `batch_max_rows = 1`: every row is written on its own, inside its record's future.
    pub fn is_off(&self) -> bool {
        self.max_rows <= 1
    }
}

/// The batch outcome metrics, resolved once.
#[derive(Clone)]
pub(super) struct BatchMetrics {
    rows: Histogram,
    written: IntCounter,
    split: IntCounter,
    failed: IntCounter,
}

impl BatchMetrics {
    pub(super) fn new(m: &crate::metrics::ShardMetrics) -> BatchMetrics {
        let outcome = |o: &str| m.batches.with_label_values(&[m.shard.as_str(), o]);
        BatchMetrics {
            rows: m.batch_rows.clone(),
            written: outcome("written"),
            split: outcome("split"),
            failed: outcome("failed"),
        }
    }

    /// One request of `rows` rows ended: written, or failed for all of them.
    pub(super) fn ended(&self, rows: usize, ok: bool) {
        if ok {
            self.rows.observe(rows as f64);
            self.written.inc();
        } else {
            self.failed.inc();
        }
    }
}

/// One table's open groups and how to write them.
pub(super) struct Batcher {
    limits: BatchLimits,
    write: Rc<WriteCtx>,
    metrics: BatchMetrics,
    open: RefCell<Vec<Group>>,
}

/// Rows of one owner waiting to be sent.
struct Group {
    owner: Owner,
    rows: Vec<BoundRow>,
    /// When each row's record was consumed: the `queue` stage ends when the group is sent.
    consumed: Vec<Instant>,
    bytes: usize,
    /// When the group opened, for `batch_linger_us` (not read, so not taken, without a linger).
    opened: Option<Instant>,
    /// Read by the rows' [`RowTicket`]s (records that wait in a future).
    outcome: Rc<Outcome>,
    /// Rows whose record has no future (see [`RowDone`]): row index, token, who hears the result.
    direct: Vec<(usize, usize, Rc<dyn RowDone>)>,
}

impl Group {
    fn new(owner: Owner, limits: &BatchLimits) -> Group {
        let size = limits.reserved_rows();
        Group {
            owner,
            rows: Vec::with_capacity(size),
            consumed: Vec::with_capacity(size),
            bytes: 0,
            opened: (!limits.linger.is_zero()).then(Instant::now),
            outcome: Rc::default(),
            // Reserved by the first direct row: the future path's groups never hold one.
            direct: Vec::new(),
        }
    }
}

/// Hands every row of a sent group its result: direct rows to their listener, the others (when
/// there are any) to their tickets.
fn hand_out(
    outcome: Rc<Outcome>,
    direct: Vec<(usize, usize, Rc<dyn RowDone>)>,
    mut results: Vec<Result<(), StepError>>,
) {
    let tickets = direct.len() < results.len();
    for (i, token, to) in direct {
        if let Some(r) = results.get_mut(i) {
            to.row_done(token, std::mem::replace(r, Ok(())));
        }
    }
    if tickets {
        outcome.complete(results);
    }
}

/// Hears the result of a row whose record waits in no future: the shard's direct path for a route
/// whose whole chain is one batching insert sink (see [`super::Chain::direct`]), which saves a
/// future, its allocation and its wake-ups per record. Called once per row, on the shard's thread,
/// when the row is written or has failed for good (after the batch's retries and split), from the
/// batch's task (which glommio may start inside the submit call that filled the batch).
pub trait RowDone {
    fn row_done(&self, token: usize, result: Result<(), StepError>);
}

/// The per-row results of one batch, read by the records waiting on it.
#[derive(Default)]
struct Outcome {
    state: RefCell<OutcomeState>,
}

#[derive(Default)]
struct OutcomeState {
    /// Filled once, when the batch is over; each record takes its own.
    results: Vec<Option<Result<(), StepError>>>,
    wakers: Vec<Option<Waker>>,
}

impl Outcome {
    fn complete(&self, results: Vec<Result<(), StepError>>) {
        let wakers = {
            let mut st = self.state.borrow_mut();
            st.results = results.into_iter().map(Some).collect();
            std::mem::take(&mut st.wakers)
        };
        for w in wakers.into_iter().flatten() {
            w.wake();
        }
    }
}

/// A record's wait for its row's result.
pub(super) struct RowTicket {
    outcome: Rc<Outcome>,
    index: usize,
}

impl Future for RowTicket {
    type Output = Result<(), StepError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.outcome.state.borrow_mut();
        if let Some(r) = st.results.get_mut(self.index).and_then(Option::take) {
            return Poll::Ready(r);
        }
        if st.wakers.len() <= self.index {
            st.wakers.resize(self.index + 1, None);
        }
        if let Some(w) = st.wakers.get_mut(self.index) {
            match w {
                Some(old) if old.will_wake(cx.waker()) => {}
                _ => *w = Some(cx.waker().clone()),
            }
        }
        Poll::Pending
    }
}

impl Batcher {
    pub(super) fn new(limits: BatchLimits, write: Rc<WriteCtx>) -> Batcher {
        let metrics = BatchMetrics::new(&write.metrics);
        Batcher {
            limits,
            write,
            metrics,
            open: RefCell::new(Vec::new()),
        }
    }

    /// Adds a bound row (of a record consumed at `consumed`) to its owner's group (sending the group
    /// when full) and returns the wait for its result.
    pub(super) fn submit(self: &Rc<Self>, row: BoundRow, consumed: Instant) -> RowTicket {
        let bytes = approx_row_bytes(&row);
        let (outcome, index) = self.add(row, bytes, consumed, None);
        RowTicket { outcome, index }
    }

    /// [`Batcher::submit`] for a record that waits in no future: `to` hears the row's result under
    /// `token`. `bytes`: the row's [`approx_row_bytes`], which the binder counted as it bound it.
    pub(super) fn submit_direct(
        self: &Rc<Self>,
        row: BoundRow,
        bytes: usize,
        consumed: Instant,
        token: usize,
        to: Rc<dyn RowDone>,
    ) {
        self.add(row, bytes, consumed, Some((token, to)));
    }

    /// Adds a row of `bytes` to its owner's group, sending the group when full; gives the group's
    /// outcome and the row's index in it.
    fn add(
        self: &Rc<Self>,
        row: BoundRow,
        bytes: usize,
        consumed: Instant,
        direct: Option<(usize, Rc<dyn RowDone>)>,
    ) -> (Rc<Outcome>, usize) {
        let owner = self.write.writer.owner(&row);
        // Groups to send and lingers to arm wait until the borrow of the open groups ends: glommio
        // runs a spawned task at once, inside the spawn, and a linger task may flush right there.
        // At most two: the group the byte limit closed, and the group this row filled.
        let mut full: [Option<Group>; 2] = [None, None];
        let mut opened = 0;
        let (outcome, index) = {
            let mut open = self.open.borrow_mut();
            let i = match open.iter().position(|g| g.owner == owner) {
                Some(i) => i,
                None => {
                    opened += 1;
                    open.push(Group::new(owner, &self.limits));
                    open.len() - 1
                }
            };
            // A row that would take its group past the byte limit sends the group first.
            if open[i].bytes + bytes > self.limits.max_bytes && !open[i].rows.is_empty() {
                opened += 1;
                let fresh = Group::new(owner, &self.limits);
                full[0] = Some(std::mem::replace(&mut open[i], fresh));
            }
            let g = &mut open[i];
            g.rows.push(row);
            g.consumed.push(consumed);
            g.bytes += bytes;
            let index = g.rows.len() - 1;
            if let Some((token, to)) = direct {
                if g.direct.capacity() == 0 {
                    g.direct.reserve(self.limits.reserved_rows());
                }
                g.direct.push((index, token, to));
            }
            let outcome = g.outcome.clone();
            if g.rows.len() >= self.limits.max_rows || g.bytes >= self.limits.max_bytes {
                full[1] = Some(open.swap_remove(i));
            }
            (outcome, index)
        };
        for _ in 0..opened {
            self.arm_linger();
        }
        for g in full.into_iter().flatten() {
            self.send(g);
        }
        (outcome, index)
    }

    /// Sends every open group (with a linger, only those that waited long enough, unless the shard
    /// is stopping). The shard calls this when it has no more ready records to bind.
    pub(super) fn flush(self: &Rc<Self>) {
        let linger = if self.write.shutdown.is_stopped() {
            Duration::ZERO
        } else {
            self.limits.linger
        };
        let due: Vec<Group> = {
            let mut open = self.open.borrow_mut();
            if open.is_empty() {
                return;
            }
            if linger.is_zero() {
                std::mem::take(&mut *open)
            } else {
                let (due, young) = std::mem::take(&mut *open)
                    .into_iter()
                    .partition(|g| g.opened.is_none_or(|t| t.elapsed() >= linger));
                *open = young;
                due
            }
        };
        // Sent after the borrow ends: see `add`.
        for g in due {
            self.send(g);
        }
    }

    /// With a linger, a new group is sent at the latest `linger` later even if the shard stays busy.
    fn arm_linger(self: &Rc<Self>) {
        if self.limits.linger.is_zero() {
            return;
        }
        let me = self.clone();
        let linger = self.limits.linger;
        glommio::spawn_local(async move {
            // Woken early by a stop, it sends everything (flush ignores the linger then): the rows'
            // records are waiting for their outcome.
            me.write.shutdown.sleep(linger).await;
            me.flush();
        })
        .detach();
    }

    fn send(self: &Rc<Self>, g: Group) {
        let now = Instant::now();
        for c in &g.consumed {
            let queued = now.saturating_duration_since(*c).as_secs_f64();
            self.write.metrics.stage_queue.observe(queued);
        }
        let me = self.clone();
        let Group {
            rows,
            outcome,
            direct,
            ..
        } = g;
        glommio::spawn_local(async move {
            let results = me.write_group(rows).await;
            hand_out(outcome, direct, results);
        })
        .detach();
    }

    /// Writes one group and says what happened to each of its rows.
    async fn write_group(&self, rows: Vec<BoundRow>) -> Vec<Result<(), StepError>> {
        let n = rows.len();
        let rows = Rc::new(rows);
        let m = &self.metrics;
        match self.write.write_retrying(&rows).await {
            Ok(()) => {
                m.ended(n, true);
                vec![Ok(()); n]
            }
            Err(RetryError::Permanent(e)) if n > 1 && e.scope() == Scope::Record => {
                m.split.inc();
                self.write_singly(rows).await
            }
            Err(e) => {
                m.ended(n, false);
                vec![Err(self.write.step_error(e)); n]
            }
        }
    }

    /// After a refused batch: each row on its own, concurrently, so only the bad one fails.
    async fn write_singly(&self, rows: Rc<Vec<BoundRow>>) -> Vec<Result<(), StepError>> {
        // The batch's write future is gone, so the rows are ours again (cloned should that ever
        // change: correctness does not depend on it).
        let rows = Rc::try_unwrap(rows).unwrap_or_else(|shared| (*shared).clone());
        let writes = rows.into_iter().map(|row| async move {
            let one = Rc::new(vec![row]);
            let r = self.write.write_retrying(&one).await;
            self.metrics.ended(1, r.is_ok());
            match r {
                Ok(()) => Ok(()),
                Err(e) => Err(self.write.step_error(e)),
            }
        });
        join_all(writes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ShardMetrics;
    use crate::retry::Shutdown;
    use crate::sink::Cell as Bound;
    use crate::sink::{RowWriter, WriteError};
    use futures::future::LocalBoxFuture;
    use scylla::value::{CqlValue, MaybeUnset};
    use std::cell::Cell;

    /// Records every request; refuses a batch holding a row whose first value is `poison`, and the
    /// poison row itself; owner = the row's second value.
    #[derive(Default)]
    struct FakeWriter {
        requests: RefCell<Vec<Vec<i32>>>,
        poison: Option<i32>,
        /// Fail this many requests with a timeout first.
        timeouts: Cell<u32>,
    }

    fn key(row: &BoundRow) -> i32 {
        match row.first() {
            Some(MaybeUnset::Set(Some(Bound::Cql(CqlValue::Int(k))))) => *k,
            _ => -1,
        }
    }

    impl RowWriter for FakeWriter {
        fn write(
            &self,
            rows: Rc<Vec<BoundRow>>,
        ) -> LocalBoxFuture<'static, Result<(), WriteError>> {
            let keys: Vec<i32> = rows.iter().map(key).collect();
            self.requests.borrow_mut().push(keys.clone());
            let r = if self.timeouts.get() > 0 {
                self.timeouts.set(self.timeouts.get() - 1);
                Err(WriteError::Db {
                    scope: Scope::Transient,
                    class: "timeout",
                    message: "timed out".into(),
                })
            } else if self.poison.is_some_and(|p| keys.contains(&p)) {
                Err(WriteError::Db {
                    scope: Scope::Record,
                    class: "invalid",
                    message: "refused".into(),
                })
            } else {
                Ok(())
            };
            Box::pin(std::future::ready(r))
        }
        fn owner(&self, row: &BoundRow) -> Owner {
            match row.get(1) {
                Some(MaybeUnset::Set(Some(Bound::Cql(CqlValue::Int(o))))) => {
                    Owner::new(uuid::Uuid::from_u128(*o as u128), None)
                }
                _ => Owner::ANY,
            }
        }
    }

    fn row(k: i32, owner: i32) -> BoundRow {
        vec![
            MaybeUnset::Set(Some(Bound::Cql(CqlValue::Int(k)))),
            MaybeUnset::Set(Some(Bound::Cql(CqlValue::Int(owner)))),
        ]
    }

    fn batcher(writer: Rc<FakeWriter>, limits: BatchLimits) -> Rc<Batcher> {
        let metrics = ShardMetrics::new(0);
        Rc::new(Batcher::new(
            limits,
            Rc::new(WriteCtx {
                name: "t".into(),
                writer,
                metrics,
                shutdown: Shutdown::default(),
                rate: None,
            }),
        ))
    }

    const LIMITS: BatchLimits = BatchLimits {
        max_rows: 4,
        max_bytes: 1 << 20,
        linger: Duration::ZERO,
    };

    /// `fut`'s output, or a panic saying `what` if it takes longer than `limit`.
    async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
        let give_up = glommio::timer::sleep(limit);
        match futures::future::select(std::pin::pin!(fut), std::pin::pin!(give_up)).await {
            futures::future::Either::Left((out, _)) => out,
            futures::future::Either::Right(_) => panic!("{what}"),
        }
    }

    /// Runs `f`'s future on a fresh glommio executor (built there: it holds `Rc`s).
    fn run<T, Fut>(f: impl FnOnce() -> Fut + Send + 'static) -> T
    where
        T: Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        glommio::LocalExecutorBuilder::default()
            .spawn(f)
            .expect("executor starts")
            .join()
            .expect("executor joins")
    }

    #[test]
    fn a_batch_holds_no_more_rows_than_the_write_rate_cap() {
        let with = |extra: &str| {
            let text = crate::config::tests::MINIMAL.replace(
                "nodes = [\"127.0.0.1:9042\"]",
                &format!("nodes = [\"127.0.0.1:9042\"]\n{extra}"),
            );
            let c = crate::config::Config::parse(&text).expect("parses");
            BatchLimits::from_config(&c.scylla).max_rows
        };
        assert_eq!(with("batch_max_rows = 50"), 50);
        assert_eq!(with("batch_max_rows = 50\nmax_writes_per_s = 8"), 8);
        assert_eq!(with("batch_max_rows = 5\nmax_writes_per_s = 8"), 5);
    }

    #[test]
    fn rows_are_grouped_by_owner_and_full_groups_go_at_once() {
        let (requests, results) = run(move || {
            let w = Rc::new(FakeWriter::default());
            async move {
                let b = batcher(w.clone(), LIMITS);
                // Owner 1 gets 5 rows (a full batch of 4, then 1), owner 2 gets 2.
                let tickets: Vec<RowTicket> =
                    [(1, 1), (2, 2), (3, 1), (4, 1), (5, 2), (6, 1), (7, 1)]
                        .into_iter()
                        .map(|(k, o)| b.submit(row(k, o), Instant::now()))
                        .collect();
                b.flush();
                let results = join_all(tickets).await;
                (w.requests.borrow().clone(), results)
            }
        });
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let mut requests = requests;
        requests.sort();
        assert_eq!(requests, vec![vec![1, 3, 4, 6], vec![2, 5], vec![7]]);
    }

    #[test]
    fn each_row_is_queued_from_its_consumption_until_its_batch_is_sent() {
        let (count, sum) = run(move || {
            let w = Rc::new(FakeWriter::default());
            async move {
                let b = batcher(w.clone(), LIMITS);
                let early = Instant::now() - Duration::from_millis(50);
                let mut tickets: Vec<RowTicket> =
                    (1..=3).map(|k| b.submit(row(k, 1), early)).collect();
                tickets.push(b.submit(row(4, 2), Instant::now()));
                b.flush();
                join_all(tickets).await;
                let q = &b.write.metrics.stage_queue;
                (q.get_sample_count(), q.get_sample_sum())
            }
        });
        assert_eq!(count, 4, "one observation per row, at its batch's send");
        assert!(
            // The upper bound leaves room for a stalled test thread; the count and the lower
            // bound catch a missing or misplaced observation.
            (0.15..5.0).contains(&sum),
            "three rows queued 50 ms, one ~0: {sum}"
        );
    }

    #[test]
    fn a_lone_row_is_sent_on_flush_as_a_single_write() {
        let (before, after) = run(move || {
            let w = Rc::new(FakeWriter::default());
            async move {
                let b = batcher(w.clone(), LIMITS);
                let t = b.submit(row(1, 1), Instant::now());
                glommio::yield_if_needed().await;
                let before = w.requests.borrow().len();
                b.flush();
                t.await.expect("written");
                (before, w.requests.borrow().clone())
            }
        });
        assert_eq!(
            before, 0,
            "nothing goes out before the group is full or flushed"
        );
        assert_eq!(after, vec![vec![1]]);
    }

    /// Rows 1..=4 of one owner (a full batch) through `writer`: its requests and each row's result.
    fn four_rows_of_one_owner(
        writer: impl FnOnce() -> FakeWriter + Send + 'static,
    ) -> (Vec<Vec<i32>>, Vec<Result<(), StepError>>) {
        run(move || {
            let w = Rc::new(writer());
            async move {
                let b = batcher(w.clone(), LIMITS);
                let tickets: Vec<RowTicket> = (1..=4)
                    .map(|k| b.submit(row(k, 1), Instant::now()))
                    .collect();
                let results = join_all(tickets).await;
                (w.requests.borrow().clone(), results)
            }
        })
    }

    #[test]
    fn a_poison_row_splits_its_batch_and_fails_alone() {
        let (requests, results) = four_rows_of_one_owner(|| FakeWriter {
            poison: Some(3),
            ..FakeWriter::default()
        });
        assert_eq!(requests.first(), Some(&vec![1, 2, 3, 4]));
        assert_eq!(
            requests.len(),
            5,
            "the batch, then one write per row: {requests:?}"
        );
        for (k, r) in (1..=4).zip(&results) {
            match (k, r) {
                (3, Err(StepError::Record { class, .. })) => assert_eq!(*class, "invalid"),
                (3, other) => panic!("row 3 should be refused: {other:?}"),
                (_, r) => assert!(r.is_ok(), "row {k}: {r:?}"),
            }
        }
    }

    /// Records each result it hears, with its token.
    #[derive(Default)]
    struct Heard(RefCell<Vec<(usize, Result<(), StepError>)>>);

    impl RowDone for Heard {
        fn row_done(&self, token: usize, result: Result<(), StepError>) {
            self.0.borrow_mut().push((token, result));
        }
    }

    /// Rows of records without a future share a batch with a row whose record waits in one: each
    /// hears its own result once, and a poison row among them fails alone after the split.
    #[test]
    fn direct_rows_hear_their_own_result_beside_a_ticket_and_a_poison_fails_alone() {
        let (heard, ticket, requests) = run(move || {
            let w = Rc::new(FakeWriter {
                poison: Some(3),
                ..FakeWriter::default()
            });
            async move {
                let b = batcher(w.clone(), LIMITS);
                let heard = Rc::new(Heard::default());
                // One group of four (full, so it goes at once): rows 1, 3 and 4 direct.
                b.submit_direct(
                    row(1, 1),
                    approx_row_bytes(&row(1, 1)),
                    Instant::now(),
                    10,
                    heard.clone(),
                );
                let t = b.submit(row(2, 1), Instant::now());
                b.submit_direct(
                    row(3, 1),
                    approx_row_bytes(&row(3, 1)),
                    Instant::now(),
                    30,
                    heard.clone(),
                );
                b.submit_direct(
                    row(4, 1),
                    approx_row_bytes(&row(4, 1)),
                    Instant::now(),
                    40,
                    heard.clone(),
                );
                let limit = Duration::from_secs(5);
                let ticket = within(limit, "the ticket never ended", t).await;
                let all_heard = async {
                    while heard.0.borrow().len() < 3 {
                        glommio::timer::sleep(Duration::from_millis(1)).await;
                    }
                };
                within(limit, "a direct row never ended", all_heard).await;
                let mut got = heard.0.take();
                got.sort_by_key(|(token, _)| *token);
                (got, ticket, w.requests.borrow().clone())
            }
        });
        assert_eq!(requests.first(), Some(&vec![1, 2, 3, 4]));
        assert_eq!(requests.len(), 5, "the batch, then each row: {requests:?}");
        assert!(ticket.is_ok(), "the ticket row was written: {ticket:?}");
        let tokens: Vec<usize> = heard.iter().map(|(t, _)| *t).collect();
        assert_eq!(tokens, vec![10, 30, 40], "each direct row heard once");
        for (token, r) in &heard {
            match (token, r) {
                (30, Err(StepError::Record { class, .. })) => assert_eq!(*class, "invalid"),
                (30, other) => panic!("the poison row should be refused: {other:?}"),
                (_, r) => assert!(r.is_ok(), "token {token}: {r:?}"),
            }
        }
    }

    #[test]
    fn a_timeout_retries_the_whole_batch() {
        let (requests, results) = four_rows_of_one_owner(|| FakeWriter {
            timeouts: Cell::new(2),
            ..FakeWriter::default()
        });
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(requests, vec![vec![1, 2, 3, 4]; 3]);
    }

    #[test]
    fn the_byte_limit_closes_a_group_before_it_overflows() {
        let one = approx_row_bytes(&row(1, 1));
        let limits = BatchLimits {
            max_rows: 100,
            max_bytes: one * 2 + one / 2,
            linger: Duration::ZERO,
        };
        let requests = run(move || {
            let w = Rc::new(FakeWriter::default());
            async move {
                let b = batcher(w.clone(), limits);
                let tickets: Vec<RowTicket> = (1..=5)
                    .map(|k| b.submit(row(k, 1), Instant::now()))
                    .collect();
                b.flush();
                join_all(tickets).await;
                w.requests.borrow().clone()
            }
        });
        assert_eq!(requests, vec![vec![1, 2], vec![3, 4], vec![5]]);
    }

    /// glommio runs a spawned task at once, inside the spawn: a linger task spawned while the shard
    /// stops finds its sleep over and flushes right there. Fails on the old code, which spawned it
    /// (and sent full groups) while holding the open groups' borrow: a `BorrowMutError` panic.
    #[test]
    fn a_row_added_while_the_shard_stops_goes_out_even_with_a_linger() {
        let limits = BatchLimits {
            linger: Duration::from_millis(50),
            ..LIMITS
        };
        let requests = run(move || {
            let w = Rc::new(FakeWriter::default());
            async move {
                let shutdown = Shutdown::default();
                let b = Rc::new(Batcher::new(
                    limits,
                    Rc::new(WriteCtx {
                        name: "t".into(),
                        writer: w.clone(),
                        metrics: ShardMetrics::new(0),
                        shutdown: shutdown.clone(),
                        rate: None,
                    }),
                ));
                shutdown.stop();
                let t = b.submit(row(1, 1), Instant::now());
                let limit = Duration::from_secs(2);
                let r = within(limit, "the row never went out", t).await;
                assert!(r.is_ok(), "{r:?}");
                w.requests.borrow().clone()
            }
        });
        assert_eq!(requests, vec![vec![1]]);
    }

    #[test]
    fn a_linger_sends_a_group_that_no_flush_reached() {
        let limits = BatchLimits {
            // Long enough that no stall between the submit and the flush makes the row old enough
            // to go on the flush (5 ms did, on a loaded box).
            linger: Duration::from_millis(500),
            ..LIMITS
        };
        let (early, requests) = run(move || {
            let w = Rc::new(FakeWriter::default());
            async move {
                let b = batcher(w.clone(), limits);
                let t = b.submit(row(1, 1), Instant::now());
                // Too young to go on a flush.
                b.flush();
                glommio::yield_if_needed().await;
                let early = w.requests.borrow().len();
                within(Duration::from_secs(10), "the linger never sent the row", t)
                    .await
                    .expect("written after the linger");
                (early, w.requests.borrow().clone())
            }
        });
        assert_eq!(early, 0);
        assert_eq!(requests, vec![vec![1]]);
    }

    /// The group that replaces one closed by the byte limit has a linger of its own: with no flush,
    /// its row still goes out.
    #[test]
    fn a_group_opened_by_the_byte_limit_lingers_too() {
        let one = approx_row_bytes(&row(1, 1));
        let limits = BatchLimits {
            max_rows: 100,
            max_bytes: one * 2 + one / 2,
            linger: Duration::from_millis(5),
        };
        let requests = run(move || {
            let w = Rc::new(FakeWriter::default());
            async move {
                let b = batcher(w.clone(), limits);
                let mut tickets: Vec<RowTicket> = (1..=2)
                    .map(|k| b.submit(row(k, 1), Instant::now()))
                    .collect();
                // The first group's linger fires before the replacement is old enough.
                glommio::timer::sleep(Duration::from_millis(3)).await;
                tickets.push(b.submit(row(3, 1), Instant::now()));
                let limit = Duration::from_secs(2);
                within(
                    limit,
                    "the replacement group never went out",
                    join_all(tickets),
                )
                .await;
                w.requests.borrow().clone()
            }
        });
        assert_eq!(requests, vec![vec![1, 2], vec![3]]);
    }

    /// A stop sends lingering groups at once: their records wait for an outcome.
    #[test]
    fn a_stop_sends_lingering_groups_at_once() {
        let limits = BatchLimits {
            linger: Duration::from_secs(30),
            ..LIMITS
        };
        let (requests, took) = run(move || {
            let w = Rc::new(FakeWriter::default());
            async move {
                let b = batcher(w.clone(), limits);
                let t = b.submit(row(1, 1), Instant::now());
                b.flush();
                let start = Instant::now();
                b.write.shutdown.stop();
                within(
                    Duration::from_secs(5),
                    "the lingering row never went out",
                    t,
                )
                .await
                .expect("written on the stop");
                (w.requests.borrow().clone(), start.elapsed())
            }
        });
        assert_eq!(requests, vec![vec![1]]);
        assert!(
            took < Duration::from_secs(5),
            "not after the linger: {took:?}"
        );
    }
}
