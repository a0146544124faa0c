//! The insert sink: binds a record into one table's prepared INSERT and writes it, retrying transient
//! errors through [`crate::retry`]. The primary `[table]` and every `[[processors]]` insert are this step.
//!
//! Guarantee: `Passed` only once the database acknowledged the row; a refused value is a
//! [`StepError::Record`] (dead-letter), an error about the table or session a [`StepError::Systemic`]
//! (stop uncommitted), a stop during a backoff [`StepError::Stopped`]. The latency of the successful
//! attempt goes to `shardline_write_seconds`, the same for every insert sink.
//! Precondition: the step owns its copy of the record (the chain gives each sink one): binding moves
//! the mapped values out of it.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use futures::future::LocalBoxFuture;

use super::{Processor, Record, StepError, StepOutcome};
use crate::metrics::{events, ShardMetrics};
use crate::retry::{retry, RetryError, RetryPolicy, Retryable, Scope, Shutdown};
use crate::sink::rate::WriteRate;
use crate::sink::{Binder, BoundRow, RowWriter, WriteError};

/// One table.
pub struct Insert {
    pub(super) name: String,
    pub(super) binder: Binder,
    pub(super) writer: Rc<dyn RowWriter>,
    pub(super) metrics: ShardMetrics,
    pub(super) shutdown: Shutdown,
    /// The shard's write-rate cap, shared by its insert sinks.
    pub(super) rate: Option<Rc<WriteRate>>,
}

/// A write error as the chain sees it.
pub(super) fn step_error(step: &str, e: RetryError<WriteError>) -> StepError {
    StepError::after_retry(step, e, WriteError::scope)
}

impl Insert {
    /// One write attempt: its token first (with a rate cap), then the write, timed from its start.
    async fn attempt(
        &self,
        values: &Rc<BoundRow>,
        started: &Cell<Option<Instant>>,
    ) -> Result<(), WriteError> {
        if let Some(rate) = &self.rate {
            if !rate.acquire(&self.shutdown).await {
                return Err(WriteError::Db {
                    scope: Scope::Transient,
                    class: "stopped",
                    message: "the shard stopped while the write waited for its rate token".into(),
                });
            }
        }
        started.set(Some(Instant::now()));
        self.writer.write(values.clone()).await
    }
}

impl Processor for Insert {
    fn name(&self) -> &str {
        &self.name
    }
    fn is_sink(&self) -> bool {
        true
    }
    fn process<'a>(
        &'a self,
        rec: &'a mut Record,
    ) -> LocalBoxFuture<'a, Result<StepOutcome, StepError>> {
        Box::pin(async move {
            let values = self
                .binder
                .bind(&mut rec.values, rec.kafka_ts_ms, rec.offset)
                .map_err(|e| step_error(&self.name, RetryError::Permanent(e)))?;
            let values = Rc::new(values);
            let started = Cell::new(None);
            retry(
                &RetryPolicy::UNTIL_STOPPED,
                &self.shutdown,
                || self.attempt(&values, &started),
                |e, attempt, wait| {
                    events::write_retried(&self.metrics, e.class(), attempt, wait, e)
                },
            )
            .await
            .map_err(|e| step_error(&self.name, e))?;
            if let Some(t) = started.get() {
                self.metrics
                    .write_seconds
                    .observe(t.elapsed().as_secs_f64());
            }
            Ok(StepOutcome::Passed)
        })
    }
}
