//! The life of one record after the shard loop handed it off ([`hand_off`]): straight into its
//! batch without a future when its route's chain is one batching insert sink ([`DirectRows`]);
//! otherwise, in its own future, wait for its schema if it was not at hand (first sight of the id,
//! registry down, id not registered yet) and run it through the chain. Either way, dead-letter it if
//! it cannot be processed, and report how it ended as a [`Completion`].
//!
//! Guarantee: a completion is `Written`, `Dropped` or `DeadLettered` only when that is final (written
//! and acknowledged, dropped on purpose, dead letter acknowledged); `Abandoned` (the shard is
//! stopping) and `Fatal` (stop the shard) leave the offset uncommitted. Log lines, metric labels and
//! dead-letter headers carry classes and positions, never values of the record.
//! Precondition: runs on its shard; every record handed off counts against the loop's in-flight
//! bound until it completes, in a future or parked in [`DirectRows`].

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use futures::future::{select, LocalBoxFuture};
use futures::FutureExt;
use prometheus::IntCounter;

use crate::codec::{CodecError, Decoder, RegistryClient, Row, Value};
use crate::kafka::dead_letter::{DeadLetter, DeadLetterProducer, SourceHeader};
use crate::kafka::partitions::PartitionKey;
use crate::metrics::{events, ShardMetrics};
use crate::pipeline::batch::RowDone;
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

/// What the loop's hand-off, every record future and the direct path of a shard share (one thread:
/// `Rc`).
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
    /// Records whose row went into its batch without a future ([`hand_off`]).
    pub direct: Rc<DirectRows>,
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
            Value::clear_all(&mut values);
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
    /// Every header of the Kafka record, for its dead letter; none when it has none (the usual
    /// case: no copy then), without a dead-letter topic, or with
    /// `kafka.dead_letter_source_headers = false` (not even read then).
    pub source_headers: Option<Rc<[SourceHeader]>>,
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

/// Records handed to their route's insert sink without a future ([`Chain::direct`]): each one's
/// origin is parked here under a token until its row's result comes back, then queues for the loop,
/// which completes it (or dead-letters it) as [`process`] would have.
///
/// Guarantee: every parked record ends exactly once, in the queue, unless the shard goes first
/// (then it stays uncommitted, as an unfinished future would).
#[derive(Default)]
pub(super) struct DirectRows {
    parked: RefCell<Vec<Option<Origin>>>,
    free: RefCell<Vec<usize>>,
    ended: RefCell<VecDeque<(Origin, Result<(), StepError>)>>,
    /// The loop's waker while it waits.
    waker: RefCell<Option<Waker>>,
    /// Rows ended so far: one in [`STEP_SAMPLE`] is timed as the step's time.
    ends: Cell<u32>,
}

/// One direct record in this many has its step time observed (the chain samples the same way).
const STEP_SAMPLE: u32 = 16;

impl DirectRows {
    /// Records parked or ended and not yet taken by the loop: they count against the in-flight bound.
    pub fn pending(&self) -> usize {
        self.parked.borrow().len() - self.free.borrow().len() + self.ended.borrow().len()
    }

    fn park(&self, origin: Origin) -> usize {
        let mut parked = self.parked.borrow_mut();
        // A freed token always names an empty slot (freed by `row_done`, which emptied it).
        if let Some(token) = self.free.borrow_mut().pop() {
            if let Some(slot @ None) = parked.get_mut(token) {
                *slot = Some(origin);
                return token;
            }
        }
        parked.push(Some(origin));
        parked.len() - 1
    }

    /// The next ended record, or `Pending` with the loop's waker kept for [`RowDone::row_done`].
    pub fn poll_ended(&self, cx: &Context<'_>) -> Poll<(Origin, Result<(), StepError>)> {
        if let Some(end) = self.ended.borrow_mut().pop_front() {
            return Poll::Ready(end);
        }
        let mut waker = self.waker.borrow_mut();
        if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// The next ended record, if any (no waker kept).
    pub fn pop_ended(&self) -> Option<(Origin, Result<(), StepError>)> {
        self.ended.borrow_mut().pop_front()
    }

    /// Whether this end is the one in [`STEP_SAMPLE`] to time.
    pub fn sampled(&self) -> bool {
        let n = self.ends.get().wrapping_add(1);
        self.ends.set(n);
        n.is_multiple_of(STEP_SAMPLE)
    }
}

impl RowDone for DirectRows {
    fn row_done(&self, token: usize, result: Result<(), StepError>) {
        let origin = self
            .parked
            .borrow_mut()
            .get_mut(token)
            .and_then(Option::take);
        // A token is parked once and ended once (the batcher hands each row one result).
        let Some(origin) = origin else {
            debug_assert!(false, "direct row {token} ended twice or was never parked");
            return;
        };
        self.free.borrow_mut().push(token);
        self.ended.borrow_mut().push_back((origin, result));
        let waker = self.waker.borrow_mut().take();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Hands a record over. A decoded record of a route whose whole chain is one batching insert sink
/// (and whose key needs no decoding) is bound here and its row goes into its batch, the record
/// parked in [`DirectRows`]: no future. Any other record, or one that fails on the way, gets the
/// future that processes it (or dead-letters it).
pub(super) fn hand_off(
    ctx: &Rc<RecordContext>,
    origin: Origin,
    start: Start,
) -> Option<LocalBoxFuture<'static, Completion>> {
    let route = ctx.route(origin.topic);
    let direct = route
        .filter(|r| r.key_decoder.is_none())
        .and_then(|r| r.chain.direct());
    let (route, direct, values) = match (route, direct, start) {
        (Some(route), Some(direct), Start::Decoded(values)) => (route, direct, values),
        (_, _, start) => return Some(process(ctx.clone(), origin, start).boxed_local()),
    };
    let mut rec = match ctx.record(route, values, &[], &origin) {
        Ok(rec) => rec,
        Err(e) => {
            let message = e.to_string();
            return Some(dead_letter(ctx.clone(), origin, "metadata", message).boxed_local());
        }
    };
    let bound = direct.bind(&rec);
    ctx.give_back(std::mem::take(&mut rec.values));
    match bound {
        Ok(row) => {
            let consumed = origin.consumed;
            let token = ctx.direct.park(origin);
            direct.submit(row, consumed, token, ctx.direct.clone());
            None
        }
        Err(e) => match ending(ctx.shard, origin, Err(e)) {
            Ending::Now(c) => Some(std::future::ready(c).boxed_local()),
            Ending::DeadLetter(origin, class, message) => {
                Some(dead_letter(ctx.clone(), origin, class, message).boxed_local())
            }
        },
    }
}

/// How a chain's result ends a record: now, or once its dead letter is delivered.
pub(super) enum Ending {
    Now(Completion),
    DeadLetter(Origin, &'static str, String),
}

/// The one mapping of a chain's result (`Ok(false)`: dropped on purpose) to the record's end.
pub(super) fn ending(shard: usize, origin: Origin, result: Result<bool, StepError>) -> Ending {
    Ending::Now(match result {
        Ok(true) => origin.done(RecordOutcome::Written),
        Ok(false) => origin.done(RecordOutcome::Dropped),
        Err(StepError::Record { class, message }) => {
            return Ending::DeadLetter(origin, class, message)
        }
        Err(StepError::Systemic { class, message }) => {
            let e = RunError::Systemic {
                shard,
                class,
                message,
            };
            origin.done(RecordOutcome::Fatal(e))
        }
        Err(StepError::Stopped) => origin.done(RecordOutcome::Abandoned),
    })
}

/// A record the chain refused, dead-lettered (stage `process`) as its own future.
pub(super) async fn dead_letter(
    ctx: Rc<RecordContext>,
    origin: Origin,
    class: &'static str,
    message: String,
) -> Completion {
    fail(&ctx, origin, "process", class, message).await
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
    match ending(ctx.shard, origin, result) {
        Ending::Now(c) => c,
        Ending::DeadLetter(origin, class, message) => {
            Box::pin(fail(&ctx, origin, "process", class, message)).await
        }
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
        source_headers: origin.source_headers.clone().unwrap_or_else(|| Rc::new([])),
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
