//! One shard: a glommio executor pinned to one core that consumes, decodes, writes and commits the
//! partitions Kafka assigns to it, sharing nothing with other shards on the message path.
//!
//! Guarantee (at least once): a record's offset becomes committable only when it and every earlier
//! record of its partition is written, or dead-lettered and acknowledged. Retryable write errors are
//! retried with capped exponential backoff and jitter, never skipped; a record that can never be written
//! goes to the dead-letter topic, or, without one, stops the shard uncommitted.
//! Memory bound: at most `max_in_flight_per_shard` records in flight; at the bound the shard pauses its
//! partitions (librdkafka drops its prefetch and refetches on resume) instead of buffering.
//! Preconditions: runs inside a glommio `LocalExecutor`; the eager assignment protocol (set by
//! `kafka::consumer_config`).

use std::collections::HashMap;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures::future::LocalBoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use prometheus::IntCounter;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::bridge::TokioBridge;
use super::{Control, RunError, RunOptions, ShardSpec};
use crate::codec::{Decoder, RegistryClient, Row};
use crate::config::Config;
use crate::kafka::context::ShardContext;
use crate::kafka::dead_letter::{DeadLetter, DeadLetterProducer};
use crate::kafka::tracker::PartitionTracker;
use crate::kafka::{consumer_config, producer_config, GlommioRuntime, KafkaError};
use crate::metrics::{events, ShardMetrics};
use crate::pipeline::{steps, Chain, Processor, Record};
use crate::sink::{NullWriter, RowWriter, ScyllaWriter};

fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Backoff of retried writes: 50 ms doubling to 5 s, with ±50% jitter.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let base = 50u64.saturating_mul(1 << attempt.min(7)).min(5000);
    let jitter = fastrand::u64(0..=base);
    Duration::from_millis(base / 2 + jitter)
}

/// How a record ended.
enum Outcome {
    Written,
    /// A filter or a lookup miss dropped it on purpose: done, nothing written.
    Dropped,
    DeadLettered,
    /// Cannot be processed and cannot be dead-lettered: the shard stops without committing it.
    Fatal(String),
}

struct Completion {
    epoch: u64,
    topic: usize,
    partition: i32,
    offset: i64,
    outcome: Outcome,
}

/// Where a record came from: what its completion reports and what a dead letter carries.
struct Origin {
    epoch: u64,
    topic: usize,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
}

impl Origin {
    fn done(&self, outcome: Outcome) -> Completion {
        Completion {
            epoch: self.epoch,
            topic: self.topic,
            partition: self.partition,
            offset: self.offset,
            outcome,
        }
    }
}

struct PartitionState {
    tracker: PartitionTracker,
    consumed: IntCounter,
    dirty: bool,
}

struct Stages {
    consumed: IntCounter,
    decoded: IntCounter,
    written: IntCounter,
    dropped: IntCounter,
    dead_lettered: IntCounter,
}

/// What a decoded record turns into.
enum Bound {
    Row(crate::sink::BoundRow),
    Chain(Record, Rc<Chain>),
}

/// Everything a record's future needs, shared by the shard's futures (Rc: one thread).
struct Shared {
    spec: ShardSpec,
    metrics: ShardMetrics,
    writer: Rc<dyn RowWriter>,
    dead_letters: Option<DeadLetterProducer>,
    topics: Vec<String>,
}

/// Runs one shard to completion. Called inside the shard's executor.
pub async fn run(
    config: Arc<Config>,
    spec: ShardSpec,
    siblings: super::Siblings,
    metrics: ShardMetrics,
    control: crossbeam_channel::Receiver<Control>,
    opts: RunOptions,
) -> Result<(), RunError> {
    let super::Siblings {
        joined,
        drained,
        custom,
    } = siblings;
    let bridge = TokioBridge::start(format!("shard{}-tokio", spec.index), spec.bridge_core)
        .map_err(|e| RunError::Runtime(format!("shard {}: tokio bridge: {e}", spec.index)))?;
    let fields = config.needed_fields();
    let mut decoder = match (&config.schema.registry_url, &config.schema.schema_file) {
        (Some(url), _) => Decoder::framed(
            RegistryClient::new(
                url,
                Duration::from_millis(config.schema.registry_timeout_ms),
            ),
            fields.clone(),
        ),
        (None, Some(file)) => {
            let json = std::fs::read_to_string(file)
                .map_err(|e| RunError::Runtime(format!("schema.schema_file {file}: {e}")))?;
            Decoder::raw(&json, fields.clone())?
        }
        (None, None) => {
            return Err(RunError::Runtime(
                "no schema source (validate() should have caught this)".into(),
            ))
        }
    };
    // Custom steps first: their output fields get slots after the decoded and enriched ones.
    let custom: Vec<Box<dyn Processor>> = custom.map(|f| f(spec.index)).unwrap_or_default();
    let mut all_fields = config.all_fields();
    for p in &custom {
        for o in p.outputs() {
            if !all_fields.contains(&o) {
                all_fields.push(o);
            }
        }
    }
    let fields_rc: Rc<[String]> = all_fields.clone().into();
    let (scylla, binder) = ScyllaWriter::connect(&config, &all_fields, &bridge).await?;
    let client_id = format!("shardline-{}-shard{}", std::process::id(), spec.index);
    let (writer, chain): (Rc<dyn RowWriter>, Option<Rc<Chain>>) =
        if config.processors.is_empty() && custom.is_empty() {
            let w: Rc<dyn RowWriter> = if opts.null_sink {
                Rc::new(NullWriter)
            } else {
                Rc::new(scylla)
            };
            (w, None)
        } else {
            let mut built = steps::build(
                &config,
                &fields_rc,
                scylla,
                binder.clone(),
                &metrics,
                &client_id,
            )
            .await?;
            // Built-in filters and lookups, then the custom steps, then the sinks.
            let first_sink = built
                .iter()
                .position(|s| s.is_sink())
                .unwrap_or(built.len());
            let sinks = built.split_off(first_sink);
            built.extend(custom);
            built.extend(sinks);
            let chain = Chain::new(built, metrics.clone());
            tracing::info!(shard = spec.index, steps = ?chain.step_names(), "processor chain");
            (Rc::new(NullWriter), Some(Rc::new(chain)))
        };

    let epoch = Arc::new(AtomicU64::new(0));
    let assignment = Arc::new(Mutex::new(Vec::new()));
    let held = Arc::new(AtomicBool::new(false));
    let ctx = ShardContext {
        shard: spec.index,
        core: spec.core,
        metrics: metrics.clone(),
        epoch: epoch.clone(),
        assignment: assignment.clone(),
        joined: joined.clone(),
        shards: drained.len(),
        first_assign: AtomicBool::new(false),
        held: held.clone(),
    };
    let started_at = Instant::now();
    let mut cc = consumer_config(&config.kafka, &client_id);
    if opts.drain {
        cc.set("enable.partition.eof", "true");
    }
    // Created on the shard's pinned thread: librdkafka's threads inherit this core's affinity.
    let consumer: StreamConsumer<ShardContext, GlommioRuntime> =
        cc.create_with_context(ctx).map_err(KafkaError::from)?;
    let topics: Vec<&str> = config.kafka.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(KafkaError::from)?;
    let dead_letters = match &config.kafka.dead_letter_topic {
        Some(t) => Some(DeadLetterProducer::new(
            &producer_config(&config.kafka, &client_id),
            t.clone(),
        )?),
        None => None,
    };
    let shared = Rc::new(Shared {
        spec,
        metrics: metrics.clone(),
        writer,
        dead_letters,
        topics: config.kafka.topics.clone(),
    });
    let stages: Vec<Stages> = config
        .kafka
        .topics
        .iter()
        .map(|t| Stages {
            consumed: metrics.stage(t, "consumed"),
            decoded: metrics.stage(t, "decoded"),
            written: metrics.stage(t, "written"),
            dropped: metrics.stage(t, "dropped"),
            dead_lettered: metrics.stage(t, "dead_lettered"),
        })
        .collect();
    tracing::info!(
        shard = spec.index,
        core = spec.core,
        client_id,
        "shard started"
    );

    let max_in_flight = config.scylla.max_in_flight_per_shard;
    let resume_at = max_in_flight / 2;
    let mut inflight: FuturesUnordered<LocalBoxFuture<'static, Completion>> =
        FuturesUnordered::new();
    let mut parts: HashMap<(usize, i32), PartitionState> = HashMap::new();
    let mut current_epoch = 0u64;
    let mut assigned: Vec<(String, i32)> = Vec::new();
    let mut eof: HashMap<i32, bool> = HashMap::new();
    let mut paused = false;
    let mut stopping: Option<Instant> = None;
    let mut fatal: Option<String> = None;
    let mut idle_since: Option<Instant> = None;
    let mut row = Row::default();
    let mut last_store = Instant::now();
    let mut full_since: Option<Instant> = None;
    let mut stream = consumer.stream();
    let tick_every = Duration::from_millis(100);
    let mut tick = glommio::timer::Timer::new(tick_every);

    enum Event<M> {
        Done(Completion),
        Msg(M),
        Tick,
    }

    loop {
        // At the in-flight bound the shard stops taking records (librdkafka's bounded queue holds them);
        // if the bound holds for a second (a slow or absent database), it pauses its partitions so the
        // consumer keeps serving rebalances and the poll interval without buffering more.
        let full = inflight.len() >= max_in_flight;
        let fetching = stopping.is_none() && fatal.is_none() && (!full || paused);
        let ev = poll_fn(|cx| {
            if let Poll::Ready(Some(c)) = inflight.poll_next_unpin(cx) {
                return Poll::Ready(Event::Done(c));
            }
            if fetching {
                if let Poll::Ready(Some(m)) = stream.poll_next_unpin(cx) {
                    return Poll::Ready(Event::Msg(m));
                }
            }
            if tick.poll_unpin(cx).is_ready() {
                return Poll::Ready(Event::Tick);
            }
            Poll::Pending
        })
        .await;

        // A rebalance happened since the last event: drop per-partition state, start from committed offsets.
        let e = epoch.load(Ordering::SeqCst);
        if e != current_epoch {
            current_epoch = e;
            parts.clear();
            eof.clear();
            assigned = assignment.lock().map(|a| a.clone()).unwrap_or_default();
            idle_since = None;
        }

        match ev {
            Event::Done(c) => {
                shared.metrics.in_flight.set(inflight.len() as i64);
                shared.metrics.last_done_time.set(unix_seconds());
                match c.outcome {
                    Outcome::Written => {
                        if let Some(s) = stages.get(c.topic) {
                            s.written.inc();
                        }
                    }
                    Outcome::Dropped => {
                        if let Some(s) = stages.get(c.topic) {
                            s.dropped.inc();
                        }
                    }
                    Outcome::DeadLettered => {
                        if let Some(s) = stages.get(c.topic) {
                            s.dead_lettered.inc();
                        }
                    }
                    Outcome::Fatal(msg) => {
                        fatal.get_or_insert(msg);
                        continue;
                    }
                }
                if c.epoch == current_epoch {
                    if let Some(p) = parts.get_mut(&(c.topic, c.partition)) {
                        if p.tracker.done(c.offset).is_some() {
                            p.dirty = true;
                        }
                    }
                }
                // Stored offsets are what librdkafka commits on its timer and before a revoke: keep them
                // within a few ms of the truth so a rebalance replays little, without an FFI call per record.
                if last_store.elapsed() >= Duration::from_millis(2) {
                    store_offsets(&consumer, &shared.topics, &mut parts);
                    last_store = Instant::now();
                }
                if inflight.len() < max_in_flight {
                    full_since = None;
                }
                if paused && inflight.len() <= resume_at && !held.load(Ordering::SeqCst) {
                    set_paused(&consumer, &assigned, false, &shared.metrics, inflight.len());
                    paused = false;
                }
            }
            Event::Msg(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                eof.insert(p, true);
            }
            Event::Msg(Err(err)) => {
                // Broker and transport errors are retried inside librdkafka; they are only reported here.
                tracing::warn!(shard = spec.index, error = %err, "consumer error");
                shared
                    .metrics
                    .errors
                    .with_label_values(&[shared.metrics.shard.as_str(), "", "consume", "kafka"])
                    .inc();
            }
            Event::Msg(Ok(msg)) => {
                idle_since = None;
                let Some(topic) = shared.topics.iter().position(|t| t == msg.topic()) else {
                    continue;
                };
                let partition = msg.partition();
                let offset = msg.offset();
                eof.insert(partition, false);
                let state = parts
                    .entry((topic, partition))
                    .or_insert_with(|| PartitionState {
                        tracker: PartitionTracker::default(),
                        consumed: shared.metrics.partition_messages.with_label_values(&[
                            shared.metrics.shard.as_str(),
                            msg.topic(),
                            partition.to_string().as_str(),
                        ]),
                        dirty: false,
                    });
                if !state.tracker.begin(offset) {
                    continue;
                }
                state.consumed.inc();
                if shared.metrics.first_record_time.get() == 0.0 {
                    shared.metrics.first_record_time.set(unix_seconds());
                }
                let stage = stages.get(topic);
                if let Some(s) = stage {
                    s.consumed.inc();
                }
                let ts_ms = msg.timestamp().to_millis();
                let payload = msg.payload().unwrap_or_default();
                let started = Instant::now();
                // Registry outages are the one retryable decode error: wait, never dead-letter.
                let mut attempt = 0;
                let decoded = loop {
                    match decoder.decode(payload, &mut row) {
                        Err(e) if e.is_retryable() => {
                            attempt += 1;
                            events::record_failed(
                                &shared.metrics,
                                msg.topic(),
                                partition,
                                offset,
                                "decode",
                                e.class(),
                                &e,
                            );
                            glommio::timer::sleep(backoff(attempt)).await;
                        }
                        other => break other,
                    }
                };
                let key = msg.key().map(<[u8]>::to_vec);
                let value = msg.payload().map(<[u8]>::to_vec);
                let bound = match decoded {
                    Ok(_) => {
                        shared
                            .metrics
                            .decode_seconds
                            .observe(started.elapsed().as_secs_f64());
                        if let Some(s) = stage {
                            s.decoded.inc();
                        }
                        match &chain {
                            // The processor chain takes the whole record.
                            Some(chain) => {
                                row.values
                                    .resize(fields_rc.len(), crate::codec::Value::Null);
                                let rec = Record {
                                    fields: fields_rc.clone(),
                                    values: std::mem::take(&mut row.values),
                                    kafka_ts_ms: ts_ms,
                                    key: key.clone(),
                                };
                                Ok(Bound::Chain(rec, chain.clone()))
                            }
                            None => binder
                                .bind(&mut row, ts_ms)
                                .map(Bound::Row)
                                .map_err(|e| ("map", e.class(), e.to_string())),
                        }
                    }
                    Err(e) => Err(("decode", e.class(), e.to_string())),
                };
                let origin = Origin {
                    epoch: current_epoch,
                    topic,
                    partition,
                    offset,
                    key,
                    value,
                };
                let fut: LocalBoxFuture<'static, Completion> = match bound {
                    Ok(Bound::Chain(rec, chain)) => {
                        run_chain(shared.clone(), chain, rec, origin).boxed_local()
                    }
                    Ok(Bound::Row(values)) => {
                        write(shared.clone(), origin, ts_ms, values).boxed_local()
                    }
                    Err((stage, class, message)) => {
                        fail(shared.clone(), origin, stage, class, message).boxed_local()
                    }
                };
                inflight.push(fut);
                shared.metrics.in_flight.set(inflight.len() as i64);
                if inflight.len() >= max_in_flight {
                    full_since.get_or_insert_with(Instant::now);
                }
            }
            Event::Tick => {
                tick = glommio::timer::Timer::new(tick_every);
                // Release the start barrier once every shard of this process has joined (or after 30 s,
                // should a sibling never come up).
                if held.load(Ordering::SeqCst)
                    && (joined.load(Ordering::SeqCst) >= drained.len()
                        || started_at.elapsed() > Duration::from_secs(30))
                {
                    held.store(false, Ordering::SeqCst);
                    if !paused {
                        set_paused(&consumer, &assigned, false, &shared.metrics, inflight.len());
                    }
                }
                store_offsets(&consumer, &shared.topics, &mut parts);
                if !paused && full_since.is_some_and(|t| t.elapsed() >= Duration::from_secs(1)) {
                    set_paused(&consumer, &assigned, true, &shared.metrics, inflight.len());
                    paused = true;
                }
                match control.try_recv() {
                    Ok(Control::Stop) if stopping.is_none() => {
                        tracing::info!(
                            shard = spec.index,
                            in_flight = inflight.len(),
                            "stopping: no more fetches, finishing in-flight work"
                        );
                        stopping = Some(Instant::now());
                    }
                    Ok(Control::Kill) => return Err(RunError::Runtime("killed".into())),
                    _ => {}
                }
                if fatal.is_some() && inflight.is_empty() {
                    break;
                }
                if let Some(since) = stopping {
                    let deadline = Duration::from_millis(config.shards.shutdown_deadline_ms);
                    if inflight.is_empty() || since.elapsed() >= deadline {
                        if !inflight.is_empty() {
                            tracing::warn!(shard = spec.index, in_flight = inflight.len(), "shutdown deadline passed: unfinished records stay uncommitted and will be replayed");
                        }
                        break;
                    }
                }
                if opts.drain && stopping.is_none() {
                    let mine = current_epoch > 0
                        && inflight.is_empty()
                        && assigned
                            .iter()
                            .all(|(_, p)| eof.get(p).copied().unwrap_or(false));
                    if let Some(flag) = drained.get(spec.index) {
                        flag.store(mine, Ordering::SeqCst);
                    }
                    // Shards of one process leave together: a shard leaving early would rebalance its
                    // siblings mid-work.
                    if mine && drained.iter().all(|d| d.load(Ordering::SeqCst)) {
                        let since = *idle_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= Duration::from_millis(opts.drain_idle_ms) {
                            tracing::info!(
                                shard = spec.index,
                                "drained: every assigned partition of every shard at its end"
                            );
                            stopping = Some(Instant::now());
                        }
                    } else {
                        idle_since = None;
                    }
                }
            }
        }
    }

    drop(stream);
    store_offsets(&consumer, &shared.topics, &mut parts);
    let mut tpl = TopicPartitionList::new();
    for ((t, p), s) in &parts {
        if let (Some(topic), Some(next)) = (shared.topics.get(*t), s.tracker.committable()) {
            let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(next));
        }
    }
    if tpl.count() > 0 {
        match consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => events::committed(&shared.metrics, true, None),
            Err(e) => events::committed(&shared.metrics, false, Some(&e)),
        }
    }
    if let Some(d) = &shared.dead_letters {
        d.flush(Duration::from_secs(10));
    }
    drop(consumer);
    tracing::info!(shard = spec.index, "shard stopped");
    match fatal {
        Some(msg) => Err(RunError::Runtime(format!("shard {}: {msg}", spec.index))),
        None => Ok(()),
    }
}

fn set_paused(
    consumer: &StreamConsumer<ShardContext, GlommioRuntime>,
    assigned: &[(String, i32)],
    pause: bool,
    metrics: &ShardMetrics,
    in_flight: usize,
) {
    let mut tpl = TopicPartitionList::new();
    for (t, p) in assigned {
        tpl.add_partition(t, *p);
    }
    let r = if pause {
        consumer.pause(&tpl)
    } else {
        consumer.resume(&tpl)
    };
    if let Err(e) = r {
        tracing::warn!(shard = %metrics.shard, error = %e, pause, "pause/resume failed");
    }
    events::paused(metrics, pause, in_flight);
}

fn store_offsets(
    consumer: &StreamConsumer<ShardContext, GlommioRuntime>,
    topics: &[String],
    parts: &mut HashMap<(usize, i32), PartitionState>,
) {
    let mut tpl = TopicPartitionList::new();
    for ((t, p), s) in parts.iter_mut() {
        if !s.dirty {
            continue;
        }
        s.dirty = false;
        if let (Some(topic), Some(next)) = (topics.get(*t), s.tracker.committable()) {
            let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(next));
        }
    }
    if tpl.count() > 0 {
        // Fails only for partitions revoked meanwhile: their records will be replayed by the new owner.
        if let Err(e) = consumer.store_offsets(&tpl) {
            tracing::debug!(error = %e, "store_offsets after revoke");
        }
    }
}

async fn write(
    shared: Rc<Shared>,
    origin: Origin,
    ts_ms: Option<i64>,
    values: crate::sink::BoundRow,
) -> Completion {
    match write_retrying(shared.writer.as_ref(), Rc::new(values), &shared.metrics).await {
        Ok(latency) => {
            shared.metrics.write_seconds.observe(latency.as_secs_f64());
            observe_end_to_end(&shared.metrics, ts_ms);
            origin.done(Outcome::Written)
        }
        Err(e) => fail(shared, origin, "write", e.class(), e.to_string()).await,
    }
}

/// Kafka record timestamp → now, for a record that was written.
fn observe_end_to_end(metrics: &ShardMetrics, ts_ms: Option<i64>) {
    if let Some(ms) = ts_ms {
        let e2e_ms = crate::sink::now_us() / 1000 - ms;
        metrics
            .end_to_end_seconds
            .observe(e2e_ms.max(0) as f64 / 1000.0);
    }
}

/// Writes `values`, retrying retryable errors with backoff (never skipping them). Returns the latency
/// of the successful attempt, or the first permanent error.
pub(crate) async fn write_retrying(
    writer: &dyn RowWriter,
    values: Rc<crate::sink::BoundRow>,
    metrics: &ShardMetrics,
) -> Result<Duration, crate::sink::SinkError> {
    let mut attempt = 0u32;
    loop {
        let started = Instant::now();
        match writer.write(values.clone()).await {
            Ok(()) => return Ok(started.elapsed()),
            Err(e) if e.is_retryable() => {
                attempt += 1;
                let wait = backoff(attempt);
                events::write_retried(metrics, e.class(), attempt, wait.as_millis() as u64, &e);
                glommio::timer::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn run_chain(
    shared: Rc<Shared>,
    chain: Rc<Chain>,
    rec: Record,
    origin: Origin,
) -> Completion {
    let ts_ms = rec.kafka_ts_ms;
    match chain.run(rec).await {
        Ok(true) => {
            observe_end_to_end(&shared.metrics, ts_ms);
            origin.done(Outcome::Written)
        }
        Ok(false) => origin.done(Outcome::Dropped),
        Err(e) => fail(shared, origin, "process", e.class, e.message).await,
    }
}

/// A record that cannot be processed: counted, logged, then dead-lettered (or fatal without a topic).
async fn fail(
    shared: Rc<Shared>,
    origin: Origin,
    stage: &str,
    class: &'static str,
    message: String,
) -> Completion {
    let t = shared
        .topics
        .get(origin.topic)
        .map(String::as_str)
        .unwrap_or("");
    events::record_failed(
        &shared.metrics,
        t,
        origin.partition,
        origin.offset,
        stage,
        class,
        &message,
    );
    let outcome = match &shared.dead_letters {
        None => Outcome::Fatal(format!(
            "record {t}/{}@{} cannot be processed ({class}: {message}) and no kafka.dead_letter_topic is configured",
            origin.partition, origin.offset
        )),
        Some(p) => {
            let mut attempt = 0u32;
            loop {
                let d = DeadLetter {
                    key: origin.key.clone(),
                    value: origin.value.clone(),
                    class,
                    message: message.clone(),
                    topic: t.to_string(),
                    partition: origin.partition,
                    offset: origin.offset,
                    shard: shared.spec.index,
                };
                match p.send(d).await {
                    Ok(()) => break Outcome::DeadLettered,
                    Err(e) => {
                        attempt += 1;
                        events::write_retried(&shared.metrics, "dead_letter", attempt, 0, &e);
                        glommio::timer::sleep(backoff(attempt)).await;
                    }
                }
            }
        }
    };
    origin.done(outcome)
}
