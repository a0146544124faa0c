//! The processor chain: filters and lookups that change or drop a record, in order, then the sinks
//! (inserts into several tables, a re-encoded produce to Kafka) concurrently.
//!
//! Guarantee: a record counts as done only when every sink of its chain succeeded (inserts written,
//! produces acknowledged) or the chain dropped it on purpose; a permanent failure of any step sends the
//! record to the dead-letter topic. Retryable failures are retried inside the step, never skipped.
//! Precondition: runs on its shard; per-shard state (lookup caches) needs no lock.

pub mod steps;

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
    pub key: Option<Vec<u8>>,
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
pub enum Outcome {
    /// Go on to the next step.
    Passed,
    /// A lookup found nothing and filled defaults: go on.
    Missed,
    /// Stop here: the record is done, nothing more is written.
    Dropped,
}

/// A permanent step failure: the record goes to the dead-letter topic with this class.
#[derive(Debug, Clone)]
pub struct StepError {
    pub class: &'static str,
    pub message: String,
}

/// A step of the chain. The built-ins implement it; a Rust user adds their own (see
/// `examples/custom_processor.rs`) and hands it to [`crate::runtime::start_with`].
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
    ) -> LocalBoxFuture<'a, Result<Outcome, StepError>>;
}

/// A shard's chain.
pub struct Chain {
    steps: Vec<Step>,
}

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
            .collect();
        Chain { steps }
    }

    pub fn step_names(&self) -> Vec<String> {
        self.steps
            .iter()
            .map(|s| s.processor.name().to_string())
            .collect()
    }

    async fn timed(&self, step: &Step, rec: &mut Record) -> Result<Outcome, StepError> {
        let t = Instant::now();
        let r = step.processor.process(rec).await;
        step.seconds.observe(t.elapsed().as_secs_f64());
        let i = match &r {
            Ok(Outcome::Passed) => 0,
            Ok(Outcome::Missed) => 1,
            Ok(Outcome::Dropped) => 2,
            Err(_) => 3,
        };
        if let Some(c) = step.outcomes.get(i) {
            c.inc();
        }
        r
    }

    /// Runs a record through the chain. `Ok(false)`: dropped on purpose.
    pub async fn run(&self, mut rec: Record) -> Result<bool, StepError> {
        let split = self
            .steps
            .iter()
            .position(|s| s.processor.is_sink())
            .unwrap_or(self.steps.len());
        let (changing, sinks) = self.steps.split_at(split);
        for step in changing {
            if self.timed(step, &mut rec).await? == Outcome::Dropped {
                return Ok(false);
            }
        }
        // Sinks read only: each gets its own copy and they run concurrently.
        let mut copies: Vec<Record> = (1..sinks.len()).map(|_| rec.clone()).collect();
        copies.push(rec);
        let results = join_all(
            sinks
                .iter()
                .zip(copies.iter_mut())
                .map(|(s, r)| self.timed(s, r)),
        )
        .await;
        for r in results {
            r?;
        }
        Ok(true)
    }
}
