//! The dead-letter producer: a record that cannot be processed is produced, with its original key and
//! value, to the dead-letter topic, with headers that say why and where it came from.
//!
//! Guarantee: the returned future resolves only when the broker acknowledged the dead letter (acks=all,
//! idempotent producer); the shard marks the source offset done only then.
//! Precondition: created inside the shard's glommio executor (its runtime hooks are glommio's).

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::{GlommioRuntime, KafkaError};

/// Header names of a dead letter.
pub mod headers {
    pub const ERROR_CLASS: &str = "shardline.error.class";
    pub const ERROR_MESSAGE: &str = "shardline.error.message";
    pub const SOURCE_TOPIC: &str = "shardline.source.topic";
    pub const SOURCE_PARTITION: &str = "shardline.source.partition";
    pub const SOURCE_OFFSET: &str = "shardline.source.offset";
    pub const SHARD: &str = "shardline.shard";
    pub const TIME_MS: &str = "shardline.time_ms";
}

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
}

#[derive(Clone)]
pub struct DeadLetterProducer {
    producer: FutureProducer<rdkafka::client::DefaultClientContext, GlommioRuntime>,
    topic: String,
}

impl DeadLetterProducer {
    pub fn new(config: &rdkafka::ClientConfig, topic: String) -> Result<Self, KafkaError> {
        let mut c = config.clone();
        c.set("acks", "all");
        Ok(DeadLetterProducer {
            producer: c.create()?,
            topic,
        })
    }

    /// Produces one dead letter and waits for its acknowledgement.
    pub async fn send(&self, d: DeadLetter) -> Result<(), KafkaError> {
        let partition = d.partition.to_string();
        let offset = d.offset.to_string();
        let shard = d.shard.to_string();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|t| t.as_millis())
            .unwrap_or(0)
            .to_string();
        let h = OwnedHeaders::new()
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
        let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(h);
        if let Some(k) = &d.key {
            rec = rec.key(k.as_slice());
        }
        if let Some(v) = &d.value {
            rec = rec.payload(v.as_slice());
        }
        self.producer
            .send(rec, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| KafkaError::DeadLetter(e.to_string()))
    }

    /// Waits for queued dead letters (shutdown).
    pub fn flush(&self, timeout: Duration) {
        use rdkafka::producer::Producer;
        let _ = self.producer.flush(timeout);
    }
}
