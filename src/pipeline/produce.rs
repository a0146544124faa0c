//! The produce sink: re-encodes the record with a registered schema, frames it (Confluent wire format)
//! and produces it to an output topic, keyed by a field or by the source key.
//!
//! Guarantee: `Passed` only once the broker acknowledged the record (acks=all); transient broker errors
//! are retried through [`crate::retry`]; a record the broker can never take (too large) is a
//! [`StepError::Record`]; authorization or configuration errors are [`StepError::Systemic`].
//! Precondition: the producer was created inside the shard (its async hooks are glommio's).

use std::time::Duration;

use futures::future::LocalBoxFuture;
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::filter::text;
use super::{Processor, Record, StepError, StepOutcome};
use crate::codec::{frame, Plan, Value};
use crate::kafka::{GlommioRuntime, KafkaError};
use crate::metrics::{events, ShardMetrics};
use crate::retry::{retry, RetryPolicy, Shutdown};

/// Re-encode and produce to an output topic.
pub struct Produce {
    pub(super) name: String,
    pub(super) topic: String,
    pub(super) plan: Plan,
    /// Record slot of each output schema field (None: the field stays null).
    pub(super) slots: Vec<Option<usize>>,
    pub(super) schema_id: u32,
    pub(super) key_slot: Option<usize>,
    pub(super) producer: FutureProducer<rdkafka::client::DefaultClientContext, GlommioRuntime>,
    pub(super) metrics: ShardMetrics,
    pub(super) shutdown: Shutdown,
}

impl Produce {
    fn encode(&self, rec: &Record) -> Result<Vec<u8>, StepError> {
        let null = Value::Null;
        let values: Vec<&Value> = self
            .slots
            .iter()
            .map(|s| s.and_then(|i| rec.values.get(i)).unwrap_or(&null))
            .collect();
        let mut datum = Vec::with_capacity(256);
        self.plan
            .encode(&values, &mut datum)
            .map_err(|e| StepError::record("produce_encode", format!("step {}: {e}", self.name)))?;
        let mut payload = Vec::with_capacity(datum.len() + frame::HEADER_LEN);
        frame::frame_into(self.schema_id, &datum, &mut payload);
        Ok(payload)
    }

    async fn send(&self, key: Option<&[u8]>, payload: &[u8]) -> Result<(), KafkaError> {
        let mut r: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).payload(payload);
        if let Some(k) = key {
            r = r.key(k);
        }
        self.producer
            .send(r, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| KafkaError::Produce(e))
    }
}

impl Processor for Produce {
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
            let payload = self.encode(rec)?;
            let key: Option<Vec<u8>> = match self.key_slot {
                Some(i) => rec.values.get(i).and_then(text).map(String::into_bytes),
                None => rec.key.as_deref().map(<[u8]>::to_vec),
            };
            retry(
                &RetryPolicy::UNTIL_STOPPED,
                &self.shutdown,
                || self.send(key.as_deref(), &payload),
                |e, attempt, wait| {
                    events::write_retried(&self.metrics, "produce", attempt, wait, e)
                },
            )
            .await
            .map(|_| StepOutcome::Passed)
            .map_err(|e| StepError::after_retry(&self.name, e, KafkaError::scope))
        })
    }
}
