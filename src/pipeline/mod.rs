//! The processor chain: every decoded record goes through it. Filters and lookups change or drop a
//! record, in order; then the sinks (inserts into tables, a re-encoded produce to Kafka) run
//! concurrently. The insert-only configuration is a chain of one insert sink: there is no second path.
//!
//! Guarantee: a record counts as done only when every sink of its chain succeeded (inserts written,
//! produces acknowledged) or the chain dropped it on purpose. A [`StepError::Record`] sends the record
//! to the dead-letter topic; a [`StepError::Systemic`] stops the shard without committing it; a
//! [`StepError::Stopped`] leaves it uncommitted for the next owner. Retryable failures are retried
//! inside the step through [`crate::retry`], never skipped.
//! Precondition: runs on its shard; per-shard state (lookup caches) needs no lock.
//!
//! Layout: one file per built-in step ([`filter`], [`lookup`], [`insert`], [`produce`]) and [`build`],
//! which turns `[[processors]]` and `[table]` into a [`Chain`].

pub mod batch;
pub mod build;
pub mod filter;
pub mod insert;
pub mod lookup;
pub mod meta;
pub mod produce;

pub use build::{build, BuildError};

use std::rc::Rc;
use std::time::Instant;

use futures::future::{join_all, LocalBoxFuture};

use crate::codec::Value;
use prometheus::{Histogram, IntCounter};

use crate::metrics::ShardMetrics;

/// One record moving through the chain: a value per field slot.
#[derive(Debug, Clone)]
pub struct Record {
    pub fields: Rc<[String]>,
    pub values: Vec<Value>,
    pub kafka_ts_ms: Option<i64>,
    /// The record's Kafka offset (the default write timestamp orders ties by it).
    pub offset: i64,
    /// The Kafka key, shared with the record's origin (one copy per record).
    pub key: Option<Rc<[u8]>>,
    /// When the shard consumed it (the start of the `queue` stage, see [`crate::metrics`]).
    pub consumed: std::time::Instant,
}

impl Record {
    pub fn slot(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f == name)
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.slot(name).and_then(|i| self.values.get(i))
    }

    /// Sets a declared field (see [`Processor::outputs`]); false if the record has no such field.
    pub fn set(&mut self, name: &str, v: Value) -> bool {
        match self.slot(name).and_then(|i| self.values.get_mut(i)) {
            Some(cell) => {
                *cell = v;
                true
            }
            None => false,
        }
    }
}

/// What a step did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// Go on to the next step.
    Passed,
    /// A lookup found nothing and filled defaults: go on.
    Missed,
    /// Stop here: the record is done, nothing more is written.
    Dropped,
}

/// Why a step did not finish a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepError {
    /// Permanent for this record: it goes to the dead-letter topic with this class. The message names
    /// the step, fields and types, never a value of the record.
    Record {
        class: &'static str,
        message: String,
    },
    /// About the table, the session or the credentials, not the record: the shard stops without
    /// committing the record (dead-lettering would throw away every record that follows).
    Systemic {
        class: &'static str,
        message: String,
    },
    /// The shard is stopping while the step waited to retry: the record stays uncommitted.
    Stopped,
}

impl StepError {
    /// A permanent, record-level failure.
    pub fn record(class: &'static str, message: impl Into<String>) -> StepError {
        StepError::Record {
            class,
            message: message.into(),
        }
    }

    pub fn class(&self) -> &'static str {
        match self {
            StepError::Record { class, .. } | StepError::Systemic { class, .. } => class,
            StepError::Stopped => "stopped",
        }
    }

    /// How a step reports an operation that [`crate::retry::retry`] gave up on: a stop leaves the
    /// record uncommitted, a record-scoped error dead-letters it, anything else stops the shard.
    /// The one mapping of every step that retries (insert, lookup, produce).
    pub(crate) fn after_retry<E: crate::retry::Retryable + std::fmt::Display>(
        step: &str,
        e: crate::retry::RetryError<E>,
        scope: impl Fn(&E) -> crate::retry::Scope,
    ) -> StepError {
        use crate::retry::{RetryError, Scope};
        match e {
            RetryError::Stopped(_) => StepError::Stopped,
            RetryError::Permanent(e) | RetryError::Exhausted(e) => {
                let (class, message) = (e.class(), format!("step {step}: {e}"));
                match scope(&e) {
                    Scope::Record => StepError::Record { class, message },
                    Scope::Transient | Scope::Systemic => StepError::Systemic { class, message },
                }
            }
        }
    }
}

/// A step of the chain. The built-ins implement it; a Rust user adds their own (see
/// `examples/custom_processor.rs`) and hands it to `runtime::start_with`.
pub trait Processor {
    fn name(&self) -> &str;
    /// Fields this step adds to the record (slots are reserved for them at start).
    fn outputs(&self) -> Vec<String> {
        Vec::new()
    }
    /// Whether the step only reads the record (a sink); sinks run concurrently, after the others.
    fn is_sink(&self) -> bool {
        false
    }
    fn process<'a>(
        &'a self,
        record: &'a mut Record,
    ) -> LocalBoxFuture<'a, Result<StepOutcome, StepError>>;
    /// The table binding of an insert sink, for the check of each new writer schema against the
    /// tables (see [`crate::codec::reader`]). Default: none.
    fn binder(&self) -> Option<&crate::sink::Binder> {
        None
    }
    /// What the step does with a tombstone (a record whose value is null: only its Kafka metadata
    /// slots are filled). Default: nothing, the step lets it by (`Dropped` for this step). Only
    /// sinks are asked; filters and lookups never see a tombstone.
    fn tombstone<'a>(
        &'a self,
        _record: &'a mut Record,
    ) -> LocalBoxFuture<'a, Result<StepOutcome, StepError>> {
        Box::pin(std::future::ready(Ok(StepOutcome::Dropped)))
    }
    /// Sends what the step holds back for company (an insert's open batches). The shard calls it
    /// whenever it has no more ready records, so holding back never adds latency at low rates.
    fn flush(&self) {}
    /// The built-in insert sink (see [`Chain::direct`]); custom steps keep the default.
    #[doc(hidden)]
    fn as_insert(&self) -> Option<&insert::Insert> {
        None
    }
}

/// A shard's chain.
pub struct Chain {
    steps: Vec<Step>,
    /// Index of the first sink: steps before it change the record, steps from it on only read it.
    first_sink: usize,
    /// Records run so far: one in [`STEP_SAMPLE`] is timed per step (two clock reads per step per
    /// record cost more than a sampled histogram loses; outcomes are counted for every record).
    runs: std::cell::Cell<u32>,
}

/// One record in this many is timed for `shardline_step_seconds`.
const STEP_SAMPLE: u32 = 16;

/// A step with its metric handles, resolved once so the per-record path does no label lookups.
struct Step {
    processor: Box<dyn Processor>,
    seconds: Histogram,
    /// passed, missed, dropped, failed
    outcomes: [IntCounter; 4],
}

impl Chain {
    /// Orders the steps: the ones that change the record first (in their order), then the sinks.
    pub fn new(steps: Vec<Box<dyn Processor>>, metrics: ShardMetrics) -> Chain {
        let (mut first, sinks): (Vec<_>, Vec<_>) = steps.into_iter().partition(|s| !s.is_sink());
        first.extend(sinks);
        let shard = metrics.shard.as_str();
        let steps = first
            .into_iter()
            .map(|processor| {
                let name = processor.name().to_string();
                let outcome = |o: &str| {
                    metrics
                        .step_outcomes
                        .with_label_values(&[shard, name.as_str(), o])
                };
                Step {
                    seconds: metrics
                        .step_seconds
                        .with_label_values(&[shard, name.as_str()]),
                    outcomes: [
                        outcome("passed"),
                        outcome("missed"),
                        outcome("dropped"),
                        outcome("failed"),
                    ],
                    processor,
                }
            })
            .collect::<Vec<Step>>();
        let first_sink = steps
            .iter()
            .position(|s| s.processor.is_sink())
            .unwrap_or(steps.len());
        Chain {
            steps,
            first_sink,
            runs: std::cell::Cell::new(0),
        }
    }

    /// Sends every step's held-back work (see [`Processor::flush`]).
    pub fn flush(&self) {
        for s in &self.steps {
            s.processor.flush();
        }
    }

    /// The chain's one step when it is a batching insert sink: the shard then hands each record's
    /// row to it without a future per record ([`batch::RowDone`]). None for any other chain.
    pub fn direct(&self) -> Option<Direct<'_>> {
        let [step] = self.steps.as_slice() else {
            return None;
        };
        let insert = step.processor.as_insert()?;
        let batcher = insert.batcher()?;
        Some(Direct {
            insert,
            batcher,
            step,
        })
    }

    /// The table bindings of the chain's insert sinks.
    pub fn binders(&self) -> Vec<crate::sink::Binder> {
        self.steps
            .iter()
            .filter_map(|s| s.processor.binder().cloned())
            .collect()
    }

    pub fn step_names(&self) -> Vec<String> {
        self.steps
            .iter()
            .map(|s| s.processor.name().to_string())
            .collect()
    }

    async fn timed(
        &self,
        step: &Step,
        rec: &mut Record,
        sampled: bool,
    ) -> Result<StepOutcome, StepError> {
        let t = sampled.then(Instant::now);
        let r = step.processor.process(rec).await;
        if let Some(t) = t {
            step.seconds.observe(t.elapsed().as_secs_f64());
        }
        let i = match &r {
            Ok(StepOutcome::Passed) => 0,
            Ok(StepOutcome::Missed) => 1,
            Ok(StepOutcome::Dropped) => 2,
            Err(_) => 3,
        };
        if let Some(c) = step.outcomes.get(i) {
            c.inc();
        }
        r
    }

    /// Runs a tombstone through the sinks (see [`Processor::tombstone`]), concurrently. `Ok(true)`
    /// when a sink wrote (deleted) something, `Ok(false)` when every sink let it by.
    pub async fn run_tombstone(&self, rec: &mut Record) -> Result<bool, StepError> {
        let sinks = self.steps.get(self.first_sink..).unwrap_or_default();
        let mut copies: Vec<Record> = (1..sinks.len().max(1)).map(|_| rec.clone()).collect();
        let results = join_all(
            sinks
                .iter()
                .zip(copies.iter_mut().chain(std::iter::once(rec)))
                .map(|(s, r)| async move {
                    let out = s.processor.tombstone(r).await;
                    let i = match &out {
                        Ok(StepOutcome::Passed) => 0,
                        Ok(StepOutcome::Missed) => 1,
                        Ok(StepOutcome::Dropped) => 2,
                        Err(_) => 3,
                    };
                    if let Some(c) = s.outcomes.get(i) {
                        c.inc();
                    }
                    out
                }),
        )
        .await;
        let wrote = results.iter().any(|r| matches!(r, Ok(StepOutcome::Passed)));
        worst(results)?;
        Ok(wrote)
    }

    /// Runs a record through the chain. `Ok(false)`: dropped on purpose. The record stays the
    /// caller's, so its allocation can be reused for the next record.
    pub async fn run(&self, rec: &mut Record) -> Result<bool, StepError> {
        let n = self.runs.get().wrapping_add(1);
        self.runs.set(n);
        let sampled = n.is_multiple_of(STEP_SAMPLE);
        let (changing, sinks) = self.steps.split_at(self.first_sink);
        for step in changing {
            if self.timed(step, rec, sampled).await? == StepOutcome::Dropped {
                return Ok(false);
            }
        }
        if let [only] = sinks {
            // The common case (insert-only): the one sink takes the record, nothing is copied.
            self.timed(only, rec, sampled).await?;
            return Ok(true);
        }
        // Each sink gets its own copy (a custom sink may change its record; the built-in ones do
        // not) and they run concurrently; a copy shares the record's text and bytes (reference
        // counts), it copies no string.
        let mut copies: Vec<Record> = (1..sinks.len()).map(|_| rec.clone()).collect();
        let results = join_all(
            sinks
                .iter()
                .zip(copies.iter_mut().chain(std::iter::once(rec)))
                .map(|(s, r)| self.timed(s, r, sampled)),
        )
        .await;
        worst(results)?;
        Ok(true)
    }
}

/// A chain that is one batching insert sink, used without a future per record: the caller binds,
/// submits, and reports each row's end, which counts as the step's outcome like [`Chain::run`]'s.
pub struct Direct<'a> {
    insert: &'a insert::Insert,
    batcher: &'a Rc<batch::Batcher>,
    step: &'a Step,
}

impl Direct<'_> {
    /// Binds the record (the row and its size for the batch); a refused value counts as the
    /// step's failure.
    pub fn bind(&self, rec: &Record) -> Result<(crate::sink::BoundRow, usize), StepError> {
        let row = self.insert.bind_sized(rec);
        if row.is_err() {
            self.step.count(3);
        }
        row
    }

    /// Queues the row in its owner's batch; `to` hears its result under `token` once it is written
    /// or has failed for good, exactly as [`Processor::process`] would have returned it.
    pub fn submit(
        &self,
        (row, bytes): (crate::sink::BoundRow, usize),
        consumed: Instant,
        token: usize,
        to: Rc<dyn batch::RowDone>,
    ) {
        self.batcher.submit_direct(row, bytes, consumed, token, to);
    }

    /// A row's end as the step's outcome; `took`, when the caller timed this one (a sample), is
    /// the step's time.
    pub fn ended(&self, written: bool, took: Option<std::time::Duration>) {
        self.step.count(if written { 0 } else { 3 });
        if let Some(t) = took {
            self.step.seconds.observe(t.as_secs_f64());
        }
    }
}

impl Step {
    /// Counts one outcome: 0 passed, 1 missed, 2 dropped, 3 failed.
    fn count(&self, i: usize) {
        if let Some(c) = self.outcomes.get(i) {
            c.inc();
        }
    }
}

/// The error that decides a record's fate among its sinks' results: a systemic one (stop without
/// committing) before a stop (leave it uncommitted) before a record error (dead-letter). Reporting
/// the first in sink order instead would dead-letter a record whose other sink failed systemically,
/// committing it without its write.
fn worst(results: Vec<Result<StepOutcome, StepError>>) -> Result<(), StepError> {
    let rank = |e: &StepError| match e {
        StepError::Systemic { .. } => 0,
        StepError::Stopped => 1,
        StepError::Record { .. } => 2,
    };
    match results.into_iter().filter_map(Result::err).min_by_key(rank) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Fails on the old code: the first error in sink order won, so an insert step's record error
    // (a tombstone it dead-letters) hid the primary table's systemic one, and the record was
    // dead-lettered and committed without its write.
    #[test]
    fn a_systemic_error_of_any_sink_decides_over_a_record_error() {
        let record = || Err(StepError::record("tombstone", "dead-letter it"));
        let systemic = || {
            Err(StepError::Systemic {
                class: "unauthorized",
                message: "no grant".into(),
            })
        };
        let got = worst(vec![record(), Ok(StepOutcome::Passed), systemic()]);
        assert!(matches!(
            got,
            Err(StepError::Systemic {
                class: "unauthorized",
                ..
            })
        ));
        assert_eq!(
            worst(vec![record(), Err(StepError::Stopped)]),
            Err(StepError::Stopped)
        );
        assert_eq!(worst(vec![Ok(StepOutcome::Dropped)]), Ok(()));
    }
}
