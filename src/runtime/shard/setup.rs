//! Builds everything a shard owns before its loop starts: the tokio bridge and Scylla session, the
//! decoder, the processor chain, the partition book, the consumer (subscribed) and the dead-letter
//! producer.
//!
//! Guarantee: nothing is consumed before every resource exists; a failure here is a start-up error of
//! this shard (the process exits), never a per-record error.
//! Precondition: runs on the shard's own thread, so librdkafka's threads inherit its affinity (its
//! core when `shards.affinity` is `pinned`; the process's cores when it is `none`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

use rdkafka::consumer::{Consumer, StreamConsumer};

use super::record::{RecordContext, RouteCtx, Stages};
use crate::codec::{self, reader, Decoder, Kind, Reader, RegistryClient, SchemaCheck};
use crate::config::{Config, ConfigError, Route};
use crate::kafka::context::ShardContext;
use crate::kafka::dead_letter::DeadLetterProducer;
use crate::kafka::partitions::PartitionBook;
use crate::kafka::{consumer_config, GlommioRuntime, KafkaError};
use crate::metrics::ShardMetrics;
use crate::pipeline::build::BuildInputs;
use crate::pipeline::meta::MetaSlots;
use crate::pipeline::{self, Chain, Processor};
use crate::retry::Shutdown;
use crate::runtime::{RunError, RunOptions, ShardSpec, Siblings};
use crate::sink::bridge::{Driver, TokioBridge};
use crate::sink::rate::WriteRate;
use crate::sink::ScyllaWriter;

pub(super) type ShardConsumer = StreamConsumer<ShardContext, GlommioRuntime>;

/// What the consumer context shares with the loop: written in rebalance callbacks, read by the loop
/// when the epoch changed.
pub(super) struct RebalanceSignals {
    pub epoch: Arc<AtomicU64>,
    pub assignment: crate::kafka::context::SharedAssignment,
    /// The start barrier holds the assigned partitions paused.
    pub held: Arc<AtomicBool>,
}

/// A shard's resources, built by [`setup`].
pub(super) struct ShardResources {
    pub book: PartitionBook,
    pub signals: RebalanceSignals,
    pub records: Rc<RecordContext>,
    pub shutdown: Shutdown,
    pub metrics: ShardMetrics,
    pub client_id: String,
    /// The driver's runtime, driven by a task of this shard (see [`crate::sink::bridge`]).
    pub bridge: Rc<TokioBridge>,
    /// That task; taken and stopped when the loop has finished (dropping it also ends the task).
    pub driver: Option<Driver>,
}

/// Builds a shard's resources (see the module docs).
pub(super) async fn setup(
    config: &Config,
    spec: ShardSpec,
    siblings: &Siblings,
    metrics: ShardMetrics,
    opts: RunOptions,
) -> Result<(ShardConsumer, ShardResources), RunError> {
    let bridge = Rc::new(TokioBridge::new().map_err(|source| RunError::Bridge {
        shard: spec.index,
        source,
    })?);
    // Nothing else runs on this shard until its loop starts: the driver task may block in tokio.
    bridge.handle().set_idle(true);
    let driver = Driver::start(bridge.clone());
    let client_id = format!("shardline-{}-shard{}", std::process::id(), spec.index);
    let shutdown = Shutdown::new();
    let topics = config.all_topics();
    let shared = RouteInputs {
        config,
        topics: &topics,
        metrics: &metrics,
        client_id: &client_id,
        shutdown: &shutdown,
        null_sink: opts.null_sink,
        // One write-rate cap per shard, shared by every insert sink of every route.
        rate: config
            .scylla
            .max_writes_per_s
            .map(|r| Rc::new(WriteRate::new(r, std::time::Instant::now()))),
    };
    let mut routes = Vec::new();
    let mut primary: Option<ScyllaWriter> = None;
    for route in config.routes() {
        // Custom (Rust) steps join the primary route only.
        let custom: Vec<Box<dyn Processor>> = match primary {
            None => siblings
                .custom
                .as_ref()
                .map(|f| f(spec.index))
                .unwrap_or_default(),
            Some(_) => Vec::new(),
        };
        let fields = record_fields(&route, &custom);
        let (writer, binder) = match &primary {
            None => ScyllaWriter::connect(config, &fields, bridge.handle()).await?,
            Some(p) => p.for_table(route.table, &fields).await?,
        };
        primary.get_or_insert_with(|| writer.clone());
        let ctx = route_ctx(&shared, route, fields, writer, binder, custom).await?;
        tracing::info!(shard = spec.index, route = route.name, steps = ?ctx.chain.step_names(), "processor chain");
        routes.push(ctx);
    }
    let book = partition_book(config, &metrics);
    let (consumer, signals) = consumer(config, spec, siblings, &metrics, &book, &client_id, opts)?;
    let dead_letters = config
        .kafka
        .dead_letter_topic
        .as_ref()
        .map(|t| DeadLetterProducer::new(&config.kafka, &client_id, t.clone()));
    let topic_route = config
        .routes()
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.topics.iter().map(move |_| i))
        .collect();
    let records = Rc::new(RecordContext {
        routes,
        topic_route,
        dead_letters,
        stages: Stages::per_topic(&metrics, &topics),
        metrics: metrics.clone(),
        topics,
        shard: spec.index,
        shutdown: shutdown.clone(),
        spare: RefCell::new(Vec::new()),
        direct: Rc::default(),
    });
    let resources = ShardResources {
        book,
        signals,
        records,
        shutdown,
        metrics,
        client_id,
        bridge,
        driver: Some(driver),
    };
    Ok((consumer, resources))
}

/// What every route of a shard shares.
struct RouteInputs<'a> {
    config: &'a Config,
    /// Every topic of the shard, by topic index (for `kafka.topic` columns).
    topics: &'a [String],
    metrics: &'a ShardMetrics,
    client_id: &'a str,
    shutdown: &'a Shutdown,
    null_sink: bool,
    rate: Option<Rc<WriteRate>>,
}

/// One route's chain, decoder and record slots.
async fn route_ctx(
    shared: &RouteInputs<'_>,
    route: Route<'_>,
    fields: Rc<[String]>,
    writer: ScyllaWriter,
    binder: crate::sink::Binder,
    custom: Vec<Box<dyn Processor>>,
) -> Result<RouteCtx, RunError> {
    let config = shared.config;
    let meta = MetaSlots::new(&fields, shared.topics, config.kafka.key_format)
        .map_err(|e| RunError::Config(ConfigError::Invalid(e.to_string())))?;
    let chain = pipeline::build(BuildInputs {
        config,
        route,
        fields: &fields,
        primary: writer,
        primary_binder: binder,
        metrics: shared.metrics,
        client_id: shared.client_id,
        shutdown: shared.shutdown,
        null_sink: shared.null_sink,
        custom,
        rate: shared.rate.clone(),
    })
    .await?;
    let decoder = decoder(config, route, &chain)?;
    // An Avro key whose fields are mapped: its own decoder, schemas from the same registry.
    let key_decoder = match meta.key_fields() {
        [] => None,
        keys => Some(Rc::new(RefCell::new(
            Decoder::framed(RegistryClient::from_config(&config.schema)?, keys.to_vec())
                .with_unknown_grace(config.schema.unknown_schema_grace),
        ))),
    };
    Ok(RouteCtx {
        chain: Rc::new(chain),
        decoder: Rc::new(RefCell::new(decoder)),
        fields,
        meta,
        key_decoder,
    })
}

/// A route's decoder. With a registry, writer schemas resolve against the route subject's latest
/// schema (the reader the start-up check accepted: defaults of fields a writer lacks) and each new
/// one is checked against every table of the route's chain when its id is first seen.
fn decoder(
    config: &Config,
    route: Route<'_>,
    chain: &Chain,
) -> Result<Decoder<RegistryClient>, RunError> {
    let fields = route.decoded_fields();
    let decoder = codec::decoder_for(config, fields.clone())?;
    if config.schema.registry_url.is_none() {
        return Ok(decoder);
    }
    let (_, reader_json) = crate::check::reference_schema_of(config, &route)?;
    let binders = chain.binders();
    let check: SchemaCheck = Arc::new(move |kinds: &[Kind], missing: &[bool]| {
        binders
            .iter()
            .try_for_each(|b| b.check_schema(kinds, missing))
    });
    Ok(decoder.with_reader(Reader {
        defaults: Some(reader::defaults(&reader_json, &fields)),
        aliases: reader::aliases(&reader_json, &fields),
        check: Some(check),
    }))
}

/// A route's record slots: decoded and enriched fields, then the outputs of custom steps.
fn record_fields(route: &Route<'_>, custom: &[Box<dyn Processor>]) -> Rc<[String]> {
    let mut all = route.all_fields();
    for o in custom.iter().flat_map(|p| p.outputs()) {
        if !all.contains(&o) {
            all.push(o);
        }
    }
    all.into()
}

fn partition_book(config: &Config, metrics: &ShardMetrics) -> PartitionBook {
    let m = metrics.clone();
    PartitionBook::new(
        config.all_topics(),
        config.kafka.max_pending_per_partition,
        Box::new(move |topic, partition| {
            m.partition_messages.with_label_values(&[
                m.shard.as_str(),
                topic,
                partition.to_string().as_str(),
            ])
        }),
    )
}

/// The shard's consumer, subscribed, with its context wired to the partition book's pause flag.
fn consumer(
    config: &Config,
    spec: ShardSpec,
    siblings: &Siblings,
    metrics: &ShardMetrics,
    book: &PartitionBook,
    client_id: &str,
    opts: RunOptions,
) -> Result<(ShardConsumer, RebalanceSignals), RunError> {
    let signals = RebalanceSignals {
        epoch: Arc::new(AtomicU64::new(0)),
        assignment: Arc::new(Mutex::new(None)),
        held: Arc::new(AtomicBool::new(false)),
    };
    let ctx = ShardContext {
        shard: spec.index,
        core: spec.core,
        metrics: metrics.clone(),
        epoch: signals.epoch.clone(),
        assignment: signals.assignment.clone(),
        joined: siblings.joined.clone(),
        shards: siblings.drained.len(),
        first_assign: AtomicBool::new(false),
        held: signals.held.clone(),
        budget_paused: book.budget_flag(),
        fatal: Arc::new(AtomicBool::new(false)),
        message_lag: Mutex::new(HashMap::new()),
        fetch_view: opts.drain.then(|| Mutex::new(HashMap::new())),
    };
    let mut cc = consumer_config(&config.kafka, client_id);
    if opts.drain {
        cc.set("enable.partition.eof", "true");
    }
    if opts.null_sink {
        // A benchmark run must not move the group's offsets past records it did not write.
        cc.set("enable.auto.commit", "false");
    }
    let consumer: ShardConsumer = cc.create_with_context(ctx).map_err(KafkaError::from)?;
    let all = config.all_topics();
    let topics: Vec<&str> = all.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(KafkaError::from)?;
    Ok((consumer, signals))
}
