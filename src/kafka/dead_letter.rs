//! The dead-letter producer: a record that cannot be processed is produced, with its original key and
//! value, to the dead-letter topic, with headers that say why and where it came from.
//!
//! Guarantee: [`DeadLetterProducer::deliver`] resolves Ok only when the broker acknowledged the dead
//! letter (acks=all, idempotent producer); the shard marks the source offset done only then. Transient
//! errors are retried (a stop ends the wait); a dead letter the broker can never take (too large) is
//! sent once more with its key and value cut to [`TRUNCATED_KEEP`] bytes, without the source
//! record's headers, and with a
//! [`headers::TRUNCATED`] header giving the original sizes; if even that fails, or the topic refuses
//! the producer (authorization), the error comes back and the shard stops without committing.
//! The source record's own headers come first, as they were; shardline's headers after them carry
//! classes, positions and messages that name fields and types, never record values.
//! The librdkafka producer is created on the first dead letter: an idle producer's poll thread still
//! wakes up and spins briefly every 100 ms (about 7 ms of CPU per second per shard, measured with
//! `perf` at 2,000 msg/s), and most shards never dead-letter anything. A creation failure (a bad
//! producer setting) is systemic: the shard stops uncommitted.
//! Precondition: used inside the shard's glommio executor (the producer's runtime hooks are glommio's).

use std::cell::OnceCell;
use std::rc::Rc;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::{GlommioRuntime, KafkaError};
use crate::metrics::{events, ShardMetrics};
use crate::retry::{retry, RetryError, RetryPolicy, Scope, Shutdown};

/// Header names of a dead letter.
pub mod headers {
    pub const ERROR_CLASS: &str = "shardline.error.class";
    pub const ERROR_MESSAGE: &str = "shardline.error.message";
    pub const SOURCE_TOPIC: &str = "shardline.source.topic";
    pub const SOURCE_PARTITION: &str = "shardline.source.partition";
    pub const SOURCE_OFFSET: &str = "shardline.source.offset";
    pub const SHARD: &str = "shardline.shard";
    pub const TIME_MS: &str = "shardline.time_ms";
    /// Present when key and value were cut and the source headers left out:
    /// `key=<bytes>,value=<bytes>,headers=<count>` of the original.
    pub const TRUNCATED: &str = "shardline.truncated";
}

/// How many bytes of key and value a truncated dead letter keeps.
pub const TRUNCATED_KEEP: usize = 1024;

/// What a dead letter carries besides the original bytes.
pub struct DeadLetter {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub class: &'static str,
    pub message: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub shard: usize,
    /// Set by [`DeadLetter::truncated`].
    pub truncated: Option<String>,
    /// The source record's own headers, carried on ahead of shardline's (as Kafka Connect's dead
    /// letter queue does): they are the record's, like its key and value. Shared with the record
    /// they were copied for once, when it was consumed.
    pub source_headers: Rc<[SourceHeader]>,
}

/// One header of a consumed record: its name and value, as its dead letter carries them on.
pub type SourceHeader = (Box<str>, Option<Box<[u8]>>);

impl DeadLetter {
    /// The same dead letter with key and value cut to [`TRUNCATED_KEEP`] bytes and without the
    /// source record's headers (they alone may be what is too large), saying so in a header.
    pub fn truncated(mut self) -> DeadLetter {
        let len = |b: &Option<Vec<u8>>| b.as_ref().map_or(0, Vec::len);
        self.truncated = Some(format!(
            "key={},value={},headers={}",
            len(&self.key),
            len(&self.value),
            self.source_headers.len()
        ));
        self.source_headers = Rc::new([]);
        for part in [&mut self.key, &mut self.value].into_iter().flatten() {
            part.truncate(TRUNCATED_KEEP);
        }
        self
    }
}

type Producer = FutureProducer<rdkafka::client::DefaultClientContext, GlommioRuntime>;

pub struct DeadLetterProducer {
    /// Created by the first dead letter (see the module docs).
    producer: OnceCell<Producer>,
    config: crate::config::KafkaConfig,
    client_id: String,
    topic: String,
}

impl DeadLetterProducer {
    pub fn new(config: &crate::config::KafkaConfig, client_id: &str, topic: String) -> Self {
        DeadLetterProducer {
            producer: OnceCell::new(),
            config: config.clone(),
            client_id: client_id.to_owned(),
            topic,
        }
    }

    /// The producer, created now if no dead letter came before.
    fn producer(&self) -> Result<&Producer, KafkaError> {
        if let Some(p) = self.producer.get() {
            return Ok(p);
        }
        let p = super::acked_producer(&self.config, &self.client_id)?;
        Ok(self.producer.get_or_init(|| p))
    }

    /// Whether the producer exists (a dead letter was sent).
    #[cfg(test)]
    fn is_started(&self) -> bool {
        self.producer.get().is_some()
    }

    /// Delivers a dead letter: transient errors retried, a too-large one truncated once (see the
    /// module's guarantee). Err: it could not be delivered and the source record must stay uncommitted.
    pub async fn deliver(
        &self,
        d: DeadLetter,
        shutdown: &Shutdown,
        metrics: &ShardMetrics,
    ) -> Result<(), RetryError<KafkaError>> {
        let on_retry = |e: &KafkaError, attempt, wait| {
            events::write_retried(metrics, "dead_letter", attempt, wait, e)
        };
        let policy = RetryPolicy::UNTIL_STOPPED;
        match retry(&policy, shutdown, || self.send(&d), on_retry).await {
            Err(RetryError::Permanent(e)) if e.scope() == Scope::Record => {
                tracing::warn!(shard = d.shard, topic = %d.topic, partition = d.partition, offset = d.offset,
                    error = %e, "dead letter refused by the broker: sending it truncated");
                let cut = d.truncated();
                retry(&policy, shutdown, || self.send(&cut), on_retry).await
            }
            other => other,
        }
    }

    /// Produces one dead letter and waits for its acknowledgement.
    async fn send(&self, d: &DeadLetter) -> Result<(), KafkaError> {
        let partition = d.partition.to_string();
        let offset = d.offset.to_string();
        let shard = d.shard.to_string();
        let now = crate::clock::now_ms().to_string();
        let mut h = OwnedHeaders::new_with_capacity(d.source_headers.len() + 8);
        // A dead letter read back and failed again keeps its first error's headers under the
        // record's own: shardline's are set afresh below, once.
        for (key, value) in d
            .source_headers
            .iter()
            .filter(|(k, _)| !k.starts_with("shardline."))
        {
            h = h.insert(Header {
                key: key.as_ref(),
                value: value.as_deref(),
            });
        }
        let mut h = h
            .insert(Header {
                key: headers::ERROR_CLASS,
                value: Some(d.class),
            })
            .insert(Header {
                key: headers::ERROR_MESSAGE,
                value: Some(d.message.as_str()),
            })
            .insert(Header {
                key: headers::SOURCE_TOPIC,
                value: Some(d.topic.as_str()),
            })
            .insert(Header {
                key: headers::SOURCE_PARTITION,
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: headers::SOURCE_OFFSET,
                value: Some(offset.as_str()),
            })
            .insert(Header {
                key: headers::SHARD,
                value: Some(shard.as_str()),
            })
            .insert(Header {
                key: headers::TIME_MS,
                value: Some(now.as_str()),
            });
        if let Some(t) = &d.truncated {
            h = h.insert(Header {
                key: headers::TRUNCATED,
                value: Some(t.as_str()),
            });
        }
        let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(h);
        if let Some(k) = &d.key {
            rec = rec.key(k.as_slice());
        }
        if let Some(v) = &d.value {
            rec = rec.payload(v.as_slice());
        }
        self.producer()?
            .send(rec, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| KafkaError::Produce(e))
    }

    /// Waits for queued dead letters (shutdown); nothing to do if none was ever sent.
    pub fn flush(&self, timeout: Duration) {
        use rdkafka::producer::Producer;
        if let Some(p) = self.producer.get() {
            let _ = p.flush(timeout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_producer_is_created_by_the_first_dead_letter_only() {
        let started = glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let text = crate::config::tests::MINIMAL;
                let c = crate::config::Config::parse(text).expect("parses");
                let d = DeadLetterProducer::new(&c.kafka, "t", "t.dlq".into());
                let before = d.is_started();
                // Nothing queued: a flush of a producer that was never created returns at once.
                d.flush(Duration::from_secs(5));
                let created = d.producer().is_ok();
                (before, created, d.is_started())
            })
            .expect("executor starts")
            .join()
            .expect("executor joins");
        assert_eq!(started, (false, true, true));
    }

    #[test]
    fn a_truncated_dead_letter_keeps_its_headers_and_says_what_was_cut() {
        let d = DeadLetter {
            key: Some(vec![b'k'; 10]),
            value: Some(vec![b'v'; 1_048_000]),
            class: "corrupt_datum",
            message: "m".into(),
            topic: "t".into(),
            partition: 3,
            offset: 42,
            shard: 0,
            truncated: None,
            source_headers: Rc::new([
                ("trace".into(), Some(Box::from(&b"t1"[..]))),
                ("empty".into(), None),
            ]),
        }
        .truncated();
        assert_eq!(d.value.as_ref().map(Vec::len), Some(TRUNCATED_KEEP));
        assert_eq!(d.key.as_ref().map(Vec::len), Some(10));
        assert_eq!(
            d.truncated.as_deref(),
            Some("key=10,value=1048000,headers=2")
        );
        assert_eq!((d.partition, d.offset, d.class), (3, 42, "corrupt_datum"));
        assert!(
            d.source_headers.is_empty(),
            "they may be what was too large"
        );
    }
}
