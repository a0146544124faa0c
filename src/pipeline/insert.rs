//! The insert sink: binds a record into one table's prepared INSERT and writes it, retrying transient
//! errors through [`crate::retry`]. The primary `[table]` and every `[[processors]]` insert are this step.
//! With `scylla.batch_max_rows` over 1 the row joins its owner's batch ([`super::batch`]); with 1 it is
//! written on its own inside the record's future.
//!
//! Guarantee: `Passed` only once the database acknowledged the row; a refused value is a
//! [`StepError::Record`] (dead-letter), an error about the table or session a [`StepError::Systemic`]
//! (stop uncommitted), a stop during a backoff [`StepError::Stopped`]. The latency of each successful
//! request (a batch is one) goes to `shardline_write_seconds`, the same for every insert sink.
//! Precondition: none on the record: binding reads its values in place and shares their text and
//! bytes (reference counts on the payload), so the record is unchanged.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use futures::future::LocalBoxFuture;

use super::batch::{BatchLimits, BatchMetrics, Batcher};
use super::{Processor, Record, StepError, StepOutcome};
use crate::metrics::{events, ShardMetrics};
use crate::retry::{retry, RetryError, RetryPolicy, Retryable, Scope, Shutdown};
use crate::sink::rate::WriteRate;
use crate::sink::{Binder, BoundRow, DeleteBinder, RowWriter, WriteError};

/// What writing a table's rows needs, shared by the sink and its batcher.
pub(super) struct WriteCtx {
    pub(super) name: String,
    pub(super) writer: Rc<dyn RowWriter>,
    pub(super) metrics: ShardMetrics,
    pub(super) shutdown: Shutdown,
    /// The shard's write-rate cap, shared by its insert sinks.
    pub(super) rate: Option<Rc<WriteRate>>,
}

impl WriteCtx {
    /// One attempt: its tokens first (with a rate cap), then the request, timed from its start.
    async fn attempt(
        &self,
        rows: &Rc<Vec<BoundRow>>,
        started: &Cell<Option<Instant>>,
    ) -> Result<(), WriteError> {
        if let Some(rate) = &self.rate {
            if !rate.acquire(&self.shutdown, rows.len()).await {
                return Err(WriteError::Db {
                    scope: Scope::Transient,
                    class: "stopped",
                    message: "the shard stopped while the write waited for its rate token".into(),
                });
            }
        }
        started.set(Some(Instant::now()));
        self.writer.write(rows.clone()).await
    }

    /// Writes `rows` in one request, retrying transient errors until written or stopped; observes
    /// the successful attempt's latency.
    pub(super) async fn write_retrying(
        &self,
        rows: &Rc<Vec<BoundRow>>,
    ) -> Result<(), RetryError<WriteError>> {
        let started = Cell::new(None);
        retry(
            &RetryPolicy::UNTIL_STOPPED,
            &self.shutdown,
            || self.attempt(rows, &started),
            |e, attempt, wait| events::write_retried(&self.metrics, e.class(), attempt, wait, e),
        )
        .await?;
        if let Some(t) = started.get() {
            self.metrics
                .write_seconds
                .observe(t.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// A write error as the chain sees it.
    pub(super) fn step_error(&self, e: RetryError<WriteError>) -> StepError {
        StepError::after_retry(&self.name, e, WriteError::scope)
    }
}

/// One table's writes of one statement (its INSERT, or its DELETE for tombstones): bound rows go
/// into the owner's batch, or out on their own with batching off.
struct Rows {
    write: Rc<WriteCtx>,
    /// None when batching is off (`batch_max_rows = 1`).
    batcher: Option<Rc<Batcher>>,
    /// Requests and rows per request when batching is off (the batcher keeps its own).
    singles: BatchMetrics,
}

impl Rows {
    fn new(write: WriteCtx, limits: BatchLimits) -> Rows {
        let singles = BatchMetrics::new(&write.metrics);
        let write = Rc::new(write);
        let batcher = (!limits.is_off()).then(|| Rc::new(Batcher::new(limits, write.clone())));
        Rows {
            write,
            batcher,
            singles,
        }
    }

    fn flush(&self) {
        if let Some(b) = &self.batcher {
            b.flush();
        }
    }

    /// Writes one bound row; `Ok` once the database acknowledged it.
    async fn write(&self, row: BoundRow, consumed: Instant) -> Result<(), StepError> {
        match &self.batcher {
            Some(b) => b.submit(row, consumed).await,
            None => {
                let queued = consumed.elapsed().as_secs_f64();
                self.write.metrics.stage_queue.observe(queued);
                let rows = Rc::new(vec![row]);
                let r = self.write.write_retrying(&rows).await;
                self.singles.ended(1, r.is_ok());
                r.map_err(|e| self.write.step_error(e))
            }
        }
    }
}

/// What a table does with tombstones (`on_tombstone`), resolved at start-up.
pub enum Tombstones {
    DeadLetter,
    Skip,
    /// Deletes through the table's DELETE, batched by owner like its inserts.
    Delete(DeleteBinder, Rc<dyn RowWriter>),
}

/// One table.
pub struct Insert {
    binder: Binder,
    rows: Rows,
    tombstones: Tombstones,
    deletes: Option<Rows>,
    /// Binds since one was last timed (see [`BIND_SAMPLE`]).
    binds: Cell<u32>,
}

/// One bind in this many is timed for `shardline_bind_seconds`: like decoding, a bind takes about
/// 0.1 µs, and timing every one (two clock reads) would cost a fifth of it.
const BIND_SAMPLE: u32 = 16;

impl Insert {
    pub(super) fn new(
        binder: Binder,
        write: WriteCtx,
        limits: BatchLimits,
        tombstones: Tombstones,
    ) -> Insert {
        let deletes = match &tombstones {
            Tombstones::Delete(_, writer) => Some(Rows::new(
                WriteCtx {
                    name: write.name.clone(),
                    writer: writer.clone(),
                    metrics: write.metrics.clone(),
                    shutdown: write.shutdown.clone(),
                    rate: write.rate.clone(),
                },
                limits,
            )),
            _ => None,
        };
        Insert {
            binder,
            rows: Rows::new(write, limits),
            tombstones,
            deletes,
            binds: Cell::new(0),
        }
    }

    /// Runs `bind`, timing one call in [`BIND_SAMPLE`] into `shardline_bind_seconds`.
    fn sampled<T>(&self, bind: impl FnOnce() -> T) -> T {
        let n = self.binds.get().wrapping_add(1);
        self.binds.set(n);
        if !n.is_multiple_of(BIND_SAMPLE) {
            return bind();
        }
        let started = Instant::now();
        let out = bind();
        let took = started.elapsed().as_secs_f64();
        self.rows.write.metrics.bind_seconds.observe(took);
        out
    }
}

impl Insert {
    /// The table's batcher; none with batching off (`batch_max_rows = 1`). Only with one can a
    /// record hand its row over without a future ([`super::Chain::direct`]).
    pub(super) fn batcher(&self) -> Option<&Rc<Batcher>> {
        self.rows.batcher.as_ref()
    }

    /// Binds `rec` into the table's row; a refused value is the record's error, as in
    /// [`Processor::process`].
    pub fn bind(&self, rec: &Record) -> Result<BoundRow, StepError> {
        self.sampled(|| self.binder.bind(&rec.values, rec.kafka_ts_ms, rec.offset))
            .map_err(|e| self.rows.write.step_error(RetryError::Permanent(e)))
    }

    /// [`Insert::bind`] and the row's size for its batch (see [`Binder::bind_sized`]).
    pub fn bind_sized(&self, rec: &Record) -> Result<(BoundRow, usize), StepError> {
        self.sampled(|| {
            self.binder
                .bind_sized(&rec.values, rec.kafka_ts_ms, rec.offset)
        })
        .map_err(|e| self.rows.write.step_error(RetryError::Permanent(e)))
    }
}

impl Processor for Insert {
    fn name(&self) -> &str {
        &self.rows.write.name
    }
    fn as_insert(&self) -> Option<&Insert> {
        Some(self)
    }
    fn is_sink(&self) -> bool {
        true
    }
    fn binder(&self) -> Option<&Binder> {
        Some(&self.binder)
    }
    fn flush(&self) {
        self.rows.flush();
        if let Some(d) = &self.deletes {
            d.flush();
        }
    }
    fn process<'a>(
        &'a self,
        rec: &'a mut Record,
    ) -> LocalBoxFuture<'a, Result<StepOutcome, StepError>> {
        Box::pin(async move {
            let row = self.bind(rec)?;
            self.rows.write(row, rec.consumed).await?;
            Ok(StepOutcome::Passed)
        })
    }
    fn tombstone<'a>(
        &'a self,
        rec: &'a mut Record,
    ) -> LocalBoxFuture<'a, Result<StepOutcome, StepError>> {
        Box::pin(async move {
            let (binder, deletes) = match (&self.tombstones, &self.deletes) {
                (Tombstones::Skip, _) => return Ok(StepOutcome::Dropped),
                (Tombstones::Delete(binder, _), Some(deletes)) => (binder, deletes),
                (Tombstones::DeadLetter | Tombstones::Delete(..), _) => {
                    return Err(StepError::record(
                        "tombstone",
                        format!(
                            "step {}: the record is a tombstone (null value) and the table's \
                             on_tombstone is \"dead_letter\"",
                            self.name()
                        ),
                    ))
                }
            };
            let row = binder
                .bind(&rec.values, rec.kafka_ts_ms, rec.offset)
                .map_err(|e| deletes.write.step_error(RetryError::Permanent(e)))?;
            deletes.write(row, rec.consumed).await?;
            Ok(StepOutcome::Passed)
        })
    }
}
