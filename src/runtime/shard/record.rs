//! The life of one record after the shard loop handed it off: wait for its schema if it was not at
//! hand (first sight of the id, registry down, id not registered yet), run it through the chain,
//! dead-letter it if it cannot be processed, and report how it ended as a [`Completion`].
//!
//! Guarantee: a completion is `Written`, `Dropped` or `DeadLettered` only when that is final (written
//! and acknowledged, dropped on purpose, dead letter acknowledged); `Abandoned` (the shard is
//! stopping) and `Fatal` (stop the shard) leave the offset uncommitted. Log lines, metric labels and
//! dead-letter headers carry classes and positions, never values of the record.
//! Precondition: runs on its shard, inside the loop's bounded set of in-flight futures.

use std::cell::RefCell;
use std::pin::pin;
use std::rc::Rc;
use std::time::Instant;

use futures::future::select;
use prometheus::IntCounter;

use crate::codec::{CodecError, Decoder, RegistryClient, Row, Value};
use crate::kafka::dead_letter::{DeadLetter, DeadLetterProducer};
use crate::kafka::partitions::PartitionKey;
use crate::metrics::{events, ShardMetrics};
use crate::pipeline::meta::{MetaError, MetaSlots, Source};
use crate::pipeline::{Chain, Record, StepError};
use crate::retry::{retry, RetryError, RetryPolicy, Retryable, Shutdown};
use crate::runtime::RunError;

/// Per-topic stage counters, resolved once.
pub(super) struct Stages {
    pub consumed: IntCounter,
    pub decoded: IntCounter,
    pub written: IntCounter,
    pub dropped: IntCounter,
    pub dead_lettered: IntCounter,
}

impl Stages {
    pub fn per_topic(metrics: &ShardMetrics, topics: &[String]) -> Vec<Stages> {
        topics
            .iter()
            .map(|t| Stages {
                consumed: metrics.stage(t, "consumed"),
                decoded: metrics.stage(t, "decoded"),
                written: metrics.stage(t, "written"),
                dropped: metrics.stage(t, "dropped"),
                dead_lettered: metrics.stage(t, "dead_lettered"),
            })
            .collect()
    }
}

/// One route of the shard (see [`crate::config::Route`]): its chain, decoder and record slots.
pub(super) struct RouteCtx {
    pub chain: Rc<Chain>,
    /// Shared with record futures that wait for a schema (decoding otherwise stays in the loop).
    pub decoder: Rc<RefCell<Decoder<RegistryClient>>>,
    pub fields: Rc<[String]>,
    /// Which slots take the record's Kafka metadata (`kafka.*` fields).
    pub meta: MetaSlots,
    /// The decoder of an Avro key whose fields are mapped (`kafka.key.<field>`); none otherwise.
    pub key_decoder: Option<Rc<RefCell<Decoder<RegistryClient>>>>,
}

/// What every record future of a shard shares (one thread: `Rc`).
pub(super) struct RecordContext {
    /// The routes, the primary one first.
    pub routes: Vec<RouteCtx>,
    /// The route of each topic (by topic index).
    pub topic_route: Vec<usize>,
    pub dead_letters: Option<DeadLetterProducer>,
    pub stages: Vec<Stages>,
    pub metrics: ShardMetrics,
    pub topics: Vec<String>,
    pub shard: usize,
    pub shutdown: Shutdown,
    /// Value vectors of finished records, handed back to the loop so the next record decodes into
    /// an existing allocation (the old insert path reused its row; one path must not cost more).
    pub spare: RefCell<Vec<Vec<Value>>>,
}

/// How many spare value vectors a shard keeps (about its in-flight window's worth is never needed:
/// records finish in bursts of a few).
const SPARE_VECTORS: usize = 64;

impl RecordContext {
    fn topic(&self, index: usize) -> &str {
        self.topics.get(index).map(String::as_str).unwrap_or("")
    }

    pub fn stage(&self, topic: usize) -> Option<&Stages> {
        self.stages.get(topic)
    }

    /// The route a topic's records take.
    pub fn route(&self, topic: usize) -> Option<&RouteCtx> {
        self.routes.get(*self.topic_route.get(topic)?)
    }

    /// Sends what every route's chain holds back (see [`Chain::flush`]).
    pub fn flush(&self) {
        for r in &self.routes {
            r.chain.flush();
        }
    }

    /// An empty value vector for the next record, reused when one is spare.
    pub fn take_spare(&self) -> Vec<Value> {
        self.spare.borrow_mut().pop().unwrap_or_default()
    }

    fn give_back(&self, mut values: Vec<Value>) {
        let mut spare = self.spare.borrow_mut();
        if spare.len() < SPARE_VECTORS {
            values.clear();
            spare.push(values);
        }
    }

    /// A decoded row as a chain record: the Kafka metadata slots filled, slots for enriched and
    /// custom fields appended as nulls. Fails when a metadata field cannot be read as configured.
    pub fn record(
        &self,
        route: &RouteCtx,
        mut values: Vec<Value>,
        key_fields: &[Value],
        origin: &Origin,
    ) -> Result<Record, MetaError> {
        values.resize(route.fields.len(), Value::Null);
        route.meta.fill(
            &mut values,
            &Source {
                topic: origin.topic,
                partition: origin.partition,
                offset: origin.offset,
                timestamp_ms: origin.kafka_ts_ms,
                key: origin.key.as_ref(),
                key_fields,
                headers: &origin.headers,
            },
        )?;
        Ok(Record {
            fields: route.fields.clone(),
            values,
            kafka_ts_ms: origin.kafka_ts_ms,
            offset: origin.offset,
            key: origin.key.clone(),
            consumed: origin.consumed,
        })
    }
}

/// Where a record came from: what its completion reports and what a dead letter carries.
pub(super) struct Origin {
    pub epoch: u64,
    pub topic: usize,
    pub partition: i32,
    pub offset: i64,
    pub kafka_ts_ms: Option<i64>,
    /// When the shard consumed it.
    pub consumed: Instant,
    pub key: Option<Rc<[u8]>>,
    /// The payload; the record's decoded strings and bytes point into it (one copy per record).
    pub value: Option<Rc<[u8]>>,
    /// The values of the headers mapped to columns ([`MetaSlots::headers`]); empty when none is.
    pub headers: Vec<Option<Rc<[u8]>>>,
}

/// How a record ended.
pub(super) enum RecordOutcome {
    Written,
    /// A filter or a lookup miss dropped it on purpose: done, nothing written.
    Dropped,
    DeadLettered,
    /// The shard is stopping before the record was done: it stays uncommitted and is replayed.
    Abandoned,
    /// Cannot be processed and cannot be dead-lettered, or the table or session is broken: the shard
    /// stops without committing it.
    Fatal(RunError),
}

pub(super) struct Completion {
    pub epoch: u64,
    pub key: PartitionKey,
    pub offset: i64,
    /// For the end-to-end latency of a written record, observed by the loop with the clock it reads
    /// at completion anyway.
    pub kafka_ts_ms: Option<i64>,
    pub outcome: RecordOutcome,
}

impl Origin {
    fn done(&self, outcome: RecordOutcome) -> Completion {
        Completion {
            epoch: self.epoch,
            key: (self.topic, self.partition),
            offset: self.offset,
            kafka_ts_ms: self.kafka_ts_ms,
            outcome,
        }
    }
}

/// How far the loop got with a record.
pub(super) enum Start {
    /// Decoded in the loop.
    Decoded(Vec<Value>),
    /// Its schema id is not compiled yet (being fetched, registry down, not registered yet): wait
    /// for the decoder's fetch, then decode.
    AwaitSchema,
    /// A tombstone (the value is null): only its Kafka metadata is read, and each table's
    /// `on_tombstone` decides (delete, skip, dead-letter).
    Tombstone,
    /// Could not be decoded.
    Failed {
        class: &'static str,
        message: String,
    },
}

/// Processes one record to its completion.
pub(super) async fn process(ctx: Rc<RecordContext>, origin: Origin, start: Start) -> Completion {
    let Some(route) = ctx.route(origin.topic) else {
        // Every consumed topic has a route (setup maps them all); an unknown index is not a record's.
        return origin.done(RecordOutcome::Fatal(RunError::Systemic {
            shard: ctx.shard,
            class: "route",
            message: format!("topic index {} has no route", origin.topic),
        }));
    };
    let values = match start {
        Start::Decoded(v) => v,
        // The rare paths are boxed: inline, their state (a schema wait, a dead-letter delivery) would
        // size every record's future, and every record pays to allocate and move it.
        Start::AwaitSchema => match Box::pin(await_schema(&ctx, route, &origin)).await {
            Ok(v) => v,
            Err(RetryError::Stopped(_)) => return origin.done(RecordOutcome::Abandoned),
            Err(e) => {
                let e = e.into_inner();
                return Box::pin(fail(&ctx, origin, "decode", e.class(), e.to_string())).await;
            }
        },
        Start::Failed { class, message } => {
            return Box::pin(fail(&ctx, origin, "decode", class, message)).await
        }
        Start::Tombstone => Vec::new(),
    };
    let key_fields = match (&route.key_decoder, &origin.key) {
        (Some(decoder), Some(key)) => match decode_key(&ctx, decoder, key).await {
            Ok(v) => v,
            Err(RetryError::Stopped(_)) => return origin.done(RecordOutcome::Abandoned),
            Err(e) => {
                let e = e.into_inner();
                let message = format!("the Avro key: {e}");
                return Box::pin(fail(&ctx, origin, "decode", e.class(), message)).await;
            }
        },
        // No Avro key mapped, or a record without a key: its fields are null.
        _ => Vec::new(),
    };
    let tombstone = origin.value.is_none();
    let mut rec = match ctx.record(route, values, &key_fields, &origin) {
        Ok(rec) => rec,
        Err(e) => return Box::pin(fail(&ctx, origin, "process", "metadata", e.to_string())).await,
    };
    let result = if tombstone {
        route.chain.run_tombstone(&mut rec).await
    } else {
        route.chain.run(&mut rec).await
    };
    ctx.give_back(std::mem::take(&mut rec.values));
    match result {
        Ok(true) => origin.done(RecordOutcome::Written),
        Ok(false) => origin.done(RecordOutcome::Dropped),
        Err(StepError::Record { class, message }) => {
            Box::pin(fail(&ctx, origin, "process", class, message)).await
        }
        Err(StepError::Systemic { class, message }) => {
            let e = RunError::Systemic {
                shard: ctx.shard,
                class,
                message,
            };
            origin.done(RecordOutcome::Fatal(e))
        }
        Err(StepError::Stopped) => origin.done(RecordOutcome::Abandoned),
    }
}

/// Decodes an Avro key: at once when its schema is at hand (the usual case, no future is boxed),
/// else as [`await_decode`] does.
async fn decode_key(
    ctx: &RecordContext,
    decoder: &RefCell<Decoder<RegistryClient>>,
    key: &Rc<[u8]>,
) -> Result<Vec<Value>, RetryError<CodecError>> {
    let mut row = Row::default();
    let first = decoder.borrow_mut().decode(key, &mut row);
    match first {
        Ok(_) => Ok(row.values),
        Err(e) if e.is_retryable() => Box::pin(await_decode(ctx, decoder, key)).await,
        Err(e) => Err(RetryError::Permanent(e)),
    }
}

/// Decodes a record whose schema was not at hand when the loop met it: each attempt waits for the
/// decoder's fetch of the id (shared with every record of that id, run off the shard thread, without
/// holding the decoder), then decodes again. Retried with backoff while the fetch is pending, the
/// registry is down or does not know the id yet (within the decoder's grace); ends when the schema
/// comes, the answer is final (then the record is dead-lettered), or the shard stops.
async fn await_schema(
    ctx: &RecordContext,
    route: &RouteCtx,
    origin: &Origin,
) -> Result<Vec<Value>, RetryError<CodecError>> {
    // A null payload (a tombstone) decodes as empty bytes; only it needs a buffer of its own.
    let payload = &origin.value.clone().unwrap_or_else(|| Rc::from(&[][..]));
    let decoded = await_decode(ctx, &route.decoder, payload).await?;
    if let Some(s) = ctx.stage(origin.topic) {
        s.decoded.inc();
    }
    Ok(decoded)
}

/// [`await_schema`]'s retry loop for any of the route's decoders (the value's or the key's).
async fn await_decode(
    ctx: &RecordContext,
    decoder: &RefCell<Decoder<RegistryClient>>,
    payload: &Rc<[u8]>,
) -> Result<Vec<Value>, RetryError<CodecError>> {
    retry(
        &RetryPolicy::UNTIL_STOPPED,
        &ctx.shutdown,
        move || async move {
            // The borrow ends with this statement: the loop and other records decode meanwhile.
            let fetched = decoder.borrow_mut().schema_wait(payload);
            // A stop ends the wait; the retryable error that follows makes `retry` return Stopped.
            select(pin!(fetched), pin!(ctx.shutdown.stopped())).await;
            let mut row = Row::default();
            let r = decoder.borrow_mut().decode(payload, &mut row);
            r.map(|_| row.values)
        },
        |e, attempt, wait| events::write_retried(&ctx.metrics, e.class(), attempt, wait, e),
    )
    .await
}

/// A record that cannot be processed: counted, logged, then dead-lettered (or fatal without a topic).
async fn fail(
    ctx: &RecordContext,
    origin: Origin,
    stage: &'static str,
    class: &'static str,
    message: String,
) -> Completion {
    let topic = ctx.topic(origin.topic).to_string();
    events::record_failed(
        &ctx.metrics,
        &topic,
        origin.partition,
        origin.offset,
        stage,
        class,
        &message,
    );
    let Some(producer) = &ctx.dead_letters else {
        return origin.done(RecordOutcome::Fatal(RunError::Record {
            shard: ctx.shard,
            topic,
            partition: origin.partition,
            offset: origin.offset,
            class,
            message,
        }));
    };
    let letter = DeadLetter {
        key: origin.key.as_deref().map(<[u8]>::to_vec),
        value: origin.value.as_deref().map(<[u8]>::to_vec),
        class,
        message,
        topic: topic.clone(),
        partition: origin.partition,
        offset: origin.offset,
        shard: ctx.shard,
        truncated: None,
    };
    match producer.deliver(letter, &ctx.shutdown, &ctx.metrics).await {
        Ok(()) => origin.done(RecordOutcome::DeadLettered),
        Err(RetryError::Stopped(_)) => origin.done(RecordOutcome::Abandoned),
        Err(e) => origin.done(RecordOutcome::Fatal(RunError::DeadLetter {
            shard: ctx.shard,
            topic,
            partition: origin.partition,
            offset: origin.offset,
            source: Box::new(e.into_inner()),
        })),
    }
}
