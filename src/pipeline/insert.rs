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
use crate::sink::{Binder, BoundRow, RowWriter, WriteError};

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

/// One table.
pub struct Insert {
    binder: Binder,
    write: Rc<WriteCtx>,
    /// None when batching is off (`batch_max_rows = 1`).
    batcher: Option<Rc<Batcher>>,
    /// Requests and rows per request when batching is off (the batcher keeps its own).
    singles: BatchMetrics,
}

impl Insert {
    pub(super) fn new(binder: Binder, write: WriteCtx, limits: BatchLimits) -> Insert {
        let singles = BatchMetrics::new(&write.metrics);
        let write = Rc::new(write);
        let batcher = (!limits.is_off()).then(|| Rc::new(Batcher::new(limits, write.clone())));
        Insert {
            binder,
            write,
            batcher,
            singles,
        }
    }
}

impl Processor for Insert {
    fn name(&self) -> &str {
        &self.write.name
    }
    fn is_sink(&self) -> bool {
        true
    }
    fn flush(&self) {
        if let Some(b) = &self.batcher {
            b.flush();
        }
    }
    fn process<'a>(
        &'a self,
        rec: &'a mut Record,
    ) -> LocalBoxFuture<'a, Result<StepOutcome, StepError>> {
        Box::pin(async move {
            let row = self
                .binder
                .bind(&rec.values, rec.kafka_ts_ms, rec.offset)
                .map_err(|e| self.write.step_error(RetryError::Permanent(e)))?;
            match &self.batcher {
                Some(b) => b.submit(row, rec.consumed).await?,
                None => {
                    let queued = rec.consumed.elapsed().as_secs_f64();
                    self.write.metrics.stage_queue.observe(queued);
                    let rows = Rc::new(vec![row]);
                    let r = self.write.write_retrying(&rows).await;
                    self.singles.ended(1, r.is_ok());
                    r.map_err(|e| self.write.step_error(e))?
                }
            }
            Ok(StepOutcome::Passed)
        })
    }
}
