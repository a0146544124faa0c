//! The shard's event loop: one `select` over control, ended direct rows, completions, messages and
//! the tick, each handed to one small handler; under a backlog control is also read at every yield.
//!
//! Guarantee: decoding stays in this loop (schema resolution once per id; a record whose schema the
//! registry did not serve waits in its own future, so other partitions keep flowing); a quiet shard
//! (nothing happened since its last tick, nothing in flight) ticks every [`IDLE_TICK`] instead of
//! [`TICK`] and is back at [`TICK`] from its next event (a rebalance is one), so an idle process
//! wakes a few times a second instead of ten or more (each wake-up costs ~0.2 ms of CPU on a shared
//! box); under a
//! backlog the loop yields its task queue at least every [`YIELD_EVERY`] (doing the tick's work,
//! sending open batches and reading control), and glommio's reactor fires timers (retry backoffs)
//! at its preempt timer; a stop ends every backoff at once (the shard's
//! [`Shutdown`](crate::retry::Shutdown)), finishes in-flight work within
//! `shards.shutdown_deadline_ms`, then stores and commits the done prefix.
//! Precondition: [`super::setup`] built the resources; the executor is the shard's own.

use std::future::poll_fn;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::LocalBoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use rdkafka::consumer::stream_consumer::MessageStream;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::drain::{DrainStep, DrainWatch};
use super::record::{self, Completion, Ending, Origin, RecordContext, RecordOutcome, Start};
use super::setup::{ShardConsumer, ShardResources};
use crate::clock::unix_seconds;
use crate::codec::{CodecError, Row};
use crate::config::Config;
use crate::kafka::context::{lock, FetchView, ShardContext};
use crate::kafka::dead_letter::SourceHeader;
use crate::kafka::partitions::PartitionControl;
use crate::metrics::events;
use crate::pipeline::StepError;
use crate::retry::Retryable;
use crate::runtime::{Control, ControlReceiver, RunError, RunOptions, ShardSpec, Siblings};
use crate::sink::bridge::{BridgeHandle, LoopWaker};

/// How often the loop does its timed work when no event wakes it.
const TICK: Duration = Duration::from_millis(100);
/// The tick of a quiet shard ([`TickPace`]): nothing happened since the last tick, nothing is in
/// flight, held, paused or stopping, so the tick's work (store offsets, pause, the barrier, drain)
/// has nothing to do; control, rebalances and every other event still wake the loop at once. What
/// a quiet tick still does: the lag gauge (every [`LAG_EVERY`] either way) and the client's fatal
/// flag (an error callback's: seen up to this much later; fatal errors on the stream are events).
const IDLE_TICK: Duration = LAG_EVERY;
/// The time every shard must stay drained before they leave: `--drain-idle-ms`, but at least two
/// [`TICK`]s. A shard raises its drained flag on its tick and lowers it at its next message or
/// rebalance (`lower_drained_flag`); over two ticks every sibling has also re-checked its own state
/// on a tick (its in-flight work done, its book at its ends), which a shorter window (0 included)
/// would leave to chance.
fn drain_window(drain_idle_ms: u64) -> Duration {
    Duration::from_millis(drain_idle_ms).max(2 * TICK)
}
/// How often the lag in seconds is published: each second, from the book's timestamps (which move
/// with the clock) and the message lag of librdkafka's last statistics (every 5 s by default).
const LAG_EVERY: Duration = Duration::from_secs(1);
/// The longest the loop runs without yielding to the reactor (timers, I/O) and reading control.
const YIELD_EVERY: Duration = Duration::from_millis(1);
/// How many events pass between two looks at the clock for [`YIELD_EVERY`] (a few µs of work).
const YIELD_CHECK_EVERY: u32 = 16;
/// Stored offsets lag the truth by at most this much (librdkafka commits them on its timer).
const STORE_EVERY: Duration = Duration::from_millis(2);
/// How long the in-flight bound must hold before the shard pauses its partitions.
const PAUSE_AFTER: Duration = Duration::from_secs(1);
/// The start barrier gives up on siblings that never join after this long.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(30);
/// Drain mode: how often a shard not yet at its end says what it waits for (a drain that stalls
/// leaves evidence: librdkafka's fetch state, offsets and queue per partition, the book's view).
const DRAIN_REPORT_EVERY: Duration = Duration::from_secs(10);

type InFlight = FuturesUnordered<LocalBoxFuture<'static, Completion>>;

enum Event<'a> {
    Completion(Completion),
    /// A record handed over without a future ([`record::hand_off`]) whose row ended.
    Direct(Origin, Result<(), StepError>),
    Message(BorrowedMessage<'a>),
    Eof(i32),
    ConsumerError(rdkafka::error::KafkaError),
    Tick,
    Control(Control),
    /// The group's assignment changed and no message came with it (the stream handled the
    /// rebalance inside its poll): the loop syncs its book after every event anyway.
    Assignment,
}

/// The tick's period: [`TICK`], or [`IDLE_TICK`] once a whole tick passed without an event while
/// the shard was quiet; back at [`TICK`] from the next event. One home for the rule.
#[derive(Debug)]
struct TickPace {
    every: Duration,
    /// An event other than the tick came since the last tick.
    busy: bool,
}

impl TickPace {
    /// Starts busy, so the first tick comes after [`TICK`]: start-up work (the start barrier, the
    /// first assignment) is due then.
    fn new() -> TickPace {
        TickPace {
            every: TICK,
            busy: true,
        }
    }

    /// An event other than the tick: the period to re-arm the tick with, when a quiet spell ends.
    fn on_event(&mut self) -> Option<Duration> {
        self.busy = true;
        if self.every == TICK {
            return None;
        }
        self.every = TICK;
        Some(TICK)
    }

    /// The tick fired: the next one's period. `quiet`: nothing in flight, held, paused or stopping.
    fn on_tick(&mut self, quiet: bool) -> Duration {
        let busy = std::mem::take(&mut self.busy);
        self.every = if quiet && !busy { IDLE_TICK } else { TICK };
        self.every
    }
}

/// When the loop yields under a backlog: at least [`YIELD_EVERY`] after the last yield, looking at
/// the clock once per [`YIELD_CHECK_EVERY`] events (a clock read is ~1% of a record's CPU).
#[derive(Debug)]
struct YieldPace {
    last_yield: Instant,
    since_check: u32,
}

impl YieldPace {
    fn new(now: Instant) -> YieldPace {
        YieldPace {
            last_yield: now,
            since_check: 0,
        }
    }

    /// One event passed: whether to yield now. `clock` is read only on every
    /// [`YIELD_CHECK_EVERY`]th event.
    fn due(&mut self, clock: impl FnOnce() -> Instant) -> bool {
        self.since_check += 1;
        if self.since_check < YIELD_CHECK_EVERY {
            return false;
        }
        // Counted afresh whatever the clock says: before, the count was reset only by a yield, so
        // after the 16th event every event read the clock until 1 ms had passed (97% of them).
        self.since_check = 0;
        clock().saturating_duration_since(self.last_yield) >= YIELD_EVERY
    }

    fn yielded(&mut self, now: Instant) {
        self.last_yield = now;
        self.since_check = 0;
    }
}

/// The consumer as the partition book sees it; `null_sink` runs store nothing.
struct Kafka<'a> {
    consumer: &'a ShardConsumer,
    null_sink: bool,
}

impl PartitionControl for Kafka<'_> {
    fn pause(&self, parts: &[(String, i32)]) {
        if let Err(e) = self.consumer.pause(&tpl(parts)) {
            tracing::warn!(error = %e, "pause failed");
        }
    }
    fn resume(&self, parts: &[(String, i32)]) {
        if let Err(e) = self.consumer.resume(&tpl(parts)) {
            tracing::warn!(error = %e, "resume failed");
        }
    }
    fn store(&self, offsets: &[(String, i32, i64)]) {
        // A null-sink run writes nothing, so it must not move the group's offsets.
        if self.null_sink {
            return;
        }
        // Fails only for partitions revoked meanwhile: their records will be replayed by the new owner.
        if let Err(e) = self.consumer.store_offsets(&offsets_tpl(offsets)) {
            tracing::debug!(error = %e, "store_offsets after revoke");
        }
    }
}

fn tpl(parts: &[(String, i32)]) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for (t, p) in parts {
        list.add_partition(t, *p);
    }
    list
}

fn offsets_tpl(offsets: &[(String, i32, i64)]) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for (t, p, o) in offsets {
        let _ = list.add_partition_offset(t, *p, Offset::Offset(*o));
    }
    list
}

/// The loop's state besides its resources.
pub(super) struct ShardLoop {
    res: ShardResources,
    spec: ShardSpec,
    siblings: Siblings,
    control: ControlReceiver,
    opts: RunOptions,
    max_in_flight: usize,
    shutdown_deadline: Duration,
    inflight: InFlight,
    row: Row,
    started_at: Instant,
    full_since: Option<Instant>,
    stopping: Option<Instant>,
    fatal: Option<RunError>,
    killed: bool,
    idle_since: Option<Instant>,
    /// Drain mode: when the shard last said what its drain waits for.
    drain_reported: Instant,
    /// Drain mode: what the last report saw of each partition not at its end (see [`DrainWatch`]).
    drain_watch: DrainWatch,
    last_store: Instant,
    yield_pace: YieldPace,
    last_tick: Instant,
    pace: TickPace,
    /// When `shardline_consumer_lag_seconds` was last published.
    lag_published: Instant,
    /// When the latest record finished, if not yet published to the last-done gauge (published on
    /// the tick and at the end: a wall-clock read per record costs more than the gauge is worth).
    last_done_at: Option<Instant>,
    /// Wall time from the per-record `Instant`s (Kafka timestamps are wall-clock ms); re-anchored
    /// on every tick.
    wall: crate::clock::WallAnchor,
    /// Records since decode was last timed: one in [`DECODE_SAMPLE`] is (a clock read per record
    /// for a ~0.15 µs decode cost more than the timing is worth; the histogram is a sample).
    decodes: u32,
    /// Whether each record's headers are copied for its dead letter: there is a dead-letter topic
    /// and `kafka.dead_letter_source_headers` is on.
    copy_source_headers: bool,
}

/// One decode in this many is timed for `shardline_decode_seconds`.
const DECODE_SAMPLE: u32 = 16;

impl ShardLoop {
    pub(super) fn new(
        config: &Config,
        spec: ShardSpec,
        siblings: Siblings,
        res: ShardResources,
        control: ControlReceiver,
        opts: RunOptions,
    ) -> ShardLoop {
        tracing::info!(shard = spec.index, core = spec.core, affinity = ?config.shards.affinity, client_id = %res.client_id, "shard started");
        let now = Instant::now();
        let copy_source_headers =
            res.records.dead_letters.is_some() && config.kafka.dead_letter_source_headers;
        ShardLoop {
            res,
            spec,
            siblings,
            control,
            opts,
            max_in_flight: config.scylla.max_in_flight_per_shard,
            shutdown_deadline: config.shards.shutdown_deadline,
            inflight: FuturesUnordered::new(),
            row: Row::default(),
            started_at: now,
            full_since: None,
            stopping: None,
            fatal: None,
            killed: false,
            idle_since: None,
            drain_reported: now,
            drain_watch: DrainWatch::default(),
            last_store: now,
            yield_pace: YieldPace::new(now),
            last_tick: now,
            pace: TickPace::new(),
            lag_published: now,
            last_done_at: None,
            wall: crate::clock::WallAnchor::now(),
            decodes: 0,
            copy_source_headers,
        }
    }

    /// Runs until stopped, drained, killed or failed; then commits what is done.
    pub(super) async fn run(mut self, consumer: ShardConsumer) -> Result<(), RunError> {
        let kafka = Kafka {
            consumer: &consumer,
            null_sink: self.opts.null_sink,
        };
        let mut stream = consumer.stream();
        let stream_waker = self.res.bridge.handle().loop_waker();
        let mut tick = glommio::timer::Timer::new(TICK);
        while !self.finished() {
            let fetching = self.fetching();
            let waits = Waits {
                records: &self.res.records,
                bridge: self.res.bridge.handle(),
                stream_waker: &stream_waker,
                control: &self.control,
                assigned: &self.res.signals.epoch,
                synced: self.res.book.epoch(),
            };
            let ev = next_event(&mut self.inflight, &mut stream, &mut tick, fetching, waits).await;
            self.sync_assignment(&kafka);
            if matches!(ev, Event::Tick) {
                let quiet = self.quiet();
                tick = glommio::timer::Timer::new(self.pace.on_tick(quiet));
            } else if let Some(every) = self.pace.on_event() {
                // Out of a quiet spell: the tick's work is due at its usual pace again, and the
                // wall-clock anchor may be a quiet tick old.
                self.wall = crate::clock::WallAnchor::now();
                tick = glommio::timer::Timer::new(every);
            }
            match ev {
                Event::Completion(c) => self.on_completion(c, &kafka, Instant::now()),
                Event::Direct(origin, result) => self.on_direct(origin, result, &kafka),
                Event::Message(m) => self.on_message(&m, &kafka),
                Event::Eof(p) => self.on_eof(p, &consumer),
                Event::ConsumerError(e) => self.on_consumer_error(&e, &kafka),
                Event::Tick => self.on_tick(&kafka),
                Event::Control(c) => self.on_control(c),
                Event::Assignment => {}
            }
            if self.yield_pace.due(Instant::now) {
                // Under a backlog no event is ever Pending, so the timer never gets polled: the tick's
                // work runs here when it is due, and the task queue yields so that the other tasks
                // (batch writes, the bridge's driver) get their turn. glommio's reactor (timers such
                // as retry backoffs) runs at its preempt timer meanwhile.
                if self.last_tick.elapsed() >= TICK {
                    self.on_tick(&kafka);
                }
                self.read_control();
                // Under a backlog the loop never waits, so open batches go out here at the latest.
                self.res.records.flush();
                glommio::executor().yield_task_queue_now().await;
                self.yield_pace.yielded(Instant::now());
            }
        }
        drop(stream);
        let driver = self.res.driver.take();
        let r = self.finish(&kafka);
        // After the loop and its chain are gone: the driver's runtime goes with the shard.
        if let Some(d) = driver {
            d.stop().await;
        }
        r
    }

    /// Whether to take messages: not while stopping or failed, and not at the in-flight bound unless
    /// the partitions are paused (then the stream is polled only to serve rebalances).
    fn fetching(&self) -> bool {
        self.stopping.is_none()
            && (self.in_flight() < self.max_in_flight || self.res.book.is_budget_paused())
    }

    /// Records begun and not yet completed: futures and direct records alike.
    fn in_flight(&self) -> usize {
        self.inflight.len() + self.res.records.direct.pending()
    }

    fn finished(&self) -> bool {
        if self.killed {
            return true;
        }
        let Some(since) = self.stopping else {
            return false;
        };
        if self.in_flight() == 0 {
            return true;
        }
        let late = since.elapsed() >= self.shutdown_deadline;
        if late {
            tracing::warn!(shard = self.spec.index, in_flight = self.in_flight(),
                "shutdown deadline passed: unfinished records stay uncommitted and will be replayed");
        }
        late
    }

    /// A rebalance happened since the last event: the book starts over from the new assignment.
    fn sync_assignment(&mut self, kafka: &Kafka<'_>) {
        let signals = &self.res.signals;
        let epoch = signals.epoch.load(Ordering::SeqCst);
        if epoch == self.res.book.epoch() {
            return;
        }
        let assignment = lock(&signals.assignment).clone();
        let held = signals.held.load(Ordering::SeqCst);
        match assignment {
            Some(a) => self.res.book.on_assignment(epoch, &a, held, kafka),
            None => self.res.book.on_revoke(epoch, kafka),
        }
        self.lower_drained_flag();
        self.idle_since = None;
    }

    fn on_message(&mut self, msg: &BorrowedMessage<'_>, kafka: &Kafka<'_>) {
        self.idle_since = None;
        self.lower_drained_flag();
        let book = &self.res.book;
        let Some(topic) = book.only_topic().or_else(|| book.topic_index(msg.topic())) else {
            return;
        };
        let (partition, offset) = (msg.partition(), msg.offset());
        let now = Instant::now();
        let kafka_ts_ms = msg.timestamp().to_millis();
        if !self
            .res
            .book
            .begin((topic, partition), offset, kafka_ts_ms, now, kafka)
        {
            return;
        }
        let metrics = &self.res.metrics;
        if metrics.first_record_time.get() == 0.0 {
            metrics.first_record_time.set(unix_seconds());
        }
        let stage = self.res.records.stage(topic);
        if let Some(s) = stage {
            s.consumed.inc();
        }
        if let Some(ts) = kafka_ts_ms {
            let fetch_ms = self.wall.ms_at(now).saturating_sub(ts);
            metrics.stage_fetch.observe(fetch_ms.max(0) as f64 / 1000.0);
        }
        let start = match msg.payload() {
            // A tombstone: nothing to decode; the table's `on_tombstone` decides.
            None => (Start::Tombstone, None),
            Some(bytes) => self.decode(bytes, topic),
        };
        let origin = Origin {
            epoch: self.res.book.epoch(),
            topic,
            partition,
            offset,
            kafka_ts_ms,
            consumed: now,
            key: msg.key().map(Rc::from),
            value: start.1,
            headers: self.headers_of(msg, topic),
            // Only a dead letter reads them: without a dead-letter topic a record error stops the
            // shard, so nothing is copied; nor when the config says dead letters go without them
            // (librdkafka's read costs an allocation per record, headers or not).
            source_headers: self
                .copy_source_headers
                .then(|| msg.headers())
                .flatten()
                .map(source_headers),
        };
        if let Some(fut) = record::hand_off(&self.res.records, origin, start.0) {
            self.inflight.push(fut);
        }
        let in_flight = self.in_flight();
        self.res.metrics.in_flight.set(in_flight as i64);
        if in_flight >= self.max_in_flight {
            self.full_since.get_or_insert(now);
        }
    }

    /// Direct records' rows ended (a batch's rows end together): the first, and every other one
    /// already queued, at one reading of the clock.
    fn on_direct(&mut self, origin: Origin, result: Result<(), StepError>, kafka: &Kafka<'_>) {
        let now = Instant::now();
        let mut next = Some((origin, result));
        while let Some((origin, result)) = next {
            self.end_direct(origin, result, kafka, now);
            next = self.res.records.direct.pop_ended();
        }
    }

    /// One direct record's row ended: counted as its step's outcome, then completed, or
    /// dead-lettered in a future of its own, exactly as its chain's future would have done.
    fn end_direct(
        &mut self,
        origin: Origin,
        result: Result<(), StepError>,
        kafka: &Kafka<'_>,
        now: Instant,
    ) {
        let records = &self.res.records;
        if let Some(direct) = records.route(origin.topic).and_then(|r| r.chain.direct()) {
            let took = records
                .direct
                .sampled()
                .then(|| now.saturating_duration_since(origin.consumed));
            direct.ended(result.is_ok(), took);
        }
        match record::ending(records.shard, origin, result.map(|()| true)) {
            Ending::Now(c) => self.on_completion(c, kafka, now),
            Ending::DeadLetter(origin, class, message) => {
                let letter = record::dead_letter(records.clone(), origin, class, message);
                self.inflight.push(letter.boxed_local());
            }
        }
    }

    /// Decodes a record's value right here in the loop, into the shard's row; gives how the record
    /// starts and the payload's one copy.
    fn decode(&mut self, bytes: &[u8], topic: usize) -> (Start, Option<Rc<[u8]>>) {
        let metrics = &self.res.metrics;
        let stage = self.res.records.stage(topic);
        // The record's one copy of its payload: decoded strings point into it, a dead letter sends it.
        let payload: Rc<[u8]> = Rc::from(bytes);
        self.decodes = self.decodes.wrapping_add(1);
        // The decode alone, on the sampled records only.
        let timed = self
            .decodes
            .is_multiple_of(DECODE_SAMPLE)
            .then(Instant::now);
        let decoded = match self.res.records.route(topic) {
            Some(route) => route.decoder.borrow_mut().decode(&payload, &mut self.row),
            None => Err(CodecError::Resolution("the topic has no route".into())),
        };
        let start = match decoded {
            Ok(_) => {
                if let Some(t) = timed {
                    metrics.decode_seconds.observe(t.elapsed().as_secs_f64());
                }
                if let Some(s) = stage {
                    s.decoded.inc();
                }
                let spare = self.res.records.take_spare();
                Start::Decoded(std::mem::replace(&mut self.row.values, spare))
            }
            Err(e) if e.is_retryable() => Start::AwaitSchema,
            Err(e) => Start::Failed {
                class: e.class(),
                message: e.to_string(),
            },
        };
        (start, Some(payload))
    }

    /// The values of the headers mapped to columns, copied once; nothing when none is mapped.
    fn headers_of(&self, msg: &BorrowedMessage<'_>, topic: usize) -> Vec<Option<Rc<[u8]>>> {
        let Some(route) = self.res.records.route(topic) else {
            return Vec::new();
        };
        let wanted = route.meta.headers();
        if wanted.is_empty() {
            return Vec::new();
        }
        let Some(headers) = msg.headers() else {
            return vec![None; wanted.len()];
        };
        wanted
            .iter()
            .map(|name| {
                // The last header of a name wins, as in Kafka Streams' `lastHeader`.
                headers
                    .iter()
                    .filter(|h| h.key == name)
                    .last()
                    .and_then(|h| h.value.map(Rc::from))
            })
            .collect()
    }

    /// A record is done (`now`: the loop's clock reading for it).
    fn on_completion(&mut self, c: Completion, kafka: &Kafka<'_>, now: Instant) {
        let in_flight = self.in_flight();
        let metrics = &self.res.metrics;
        metrics.in_flight.set(in_flight as i64);
        self.last_done_at = Some(now);
        let stage = self.res.records.stage(c.key.0);
        match c.outcome {
            RecordOutcome::Written => {
                if let Some(ts) = c.kafka_ts_ms {
                    let e2e_ms = self.wall.ms_at(now).saturating_sub(ts);
                    metrics
                        .end_to_end_seconds
                        .observe(e2e_ms.max(0) as f64 / 1000.0);
                }
                stage.map(|s| s.written.inc())
            }
            RecordOutcome::Dropped => stage.map(|s| s.dropped.inc()),
            RecordOutcome::DeadLettered => stage.map(|s| s.dead_lettered.inc()),
            RecordOutcome::Abandoned => return,
            RecordOutcome::Fatal(e) => {
                tracing::error!(shard = self.spec.index, error = %e, "stopping the shard uncommitted");
                self.fatal.get_or_insert(e);
                self.begin_stop();
                return;
            }
        };
        self.res.book.done(c.epoch, c.key, c.offset, kafka);
        // Stored offsets are what librdkafka commits on its timer and before a revoke: keep them within
        // a few ms of the truth so a rebalance replays little, without an FFI call per record.
        if now.saturating_duration_since(self.last_store) >= STORE_EVERY {
            self.res.book.store(kafka);
            self.last_store = now;
        }
        if in_flight < self.max_in_flight {
            self.full_since = None;
        }
        if self.res.book.is_budget_paused() && in_flight <= self.max_in_flight / 2 {
            self.res.book.set_budget_paused(false, kafka);
            events::paused(&self.res.metrics, false, in_flight);
        }
    }

    fn on_consumer_error(&mut self, err: &rdkafka::error::KafkaError, kafka: &Kafka<'_>) {
        if kafka
            .consumer
            .context()
            .fail_if_fatal(err, "consumer stream")
        {
            self.fail_fatally(err.to_string());
            return;
        }
        // Broker and transport errors are retried inside librdkafka; they are only reported here.
        tracing::warn!(shard = self.spec.index, error = %err, "consumer error");
        let m = &self.res.metrics;
        m.errors
            .with_label_values(&[m.shard.as_str(), "", "consume", "kafka"])
            .inc();
    }

    fn on_tick(&mut self, kafka: &Kafka<'_>) {
        self.last_tick = Instant::now();
        self.wall = crate::clock::WallAnchor::now();
        self.publish_last_done();
        self.release_barrier(kafka);
        self.res.book.store(kafka);
        if !self.res.book.is_budget_paused()
            && self.full_since.is_some_and(|t| t.elapsed() >= PAUSE_AFTER)
        {
            self.res.book.set_budget_paused(true, kafka);
            events::paused(&self.res.metrics, true, self.in_flight());
        }
        if self.fatal.is_none() && kafka.consumer.context().fatal.load(Ordering::SeqCst) {
            let reason = kafka
                .consumer
                .client()
                .fatal_error()
                .map(|(code, reason)| format!("{code:?}: {reason}"))
                .unwrap_or_else(|| "reported by the client".into());
            self.fail_fatally(reason);
        }
        let now = Instant::now();
        let m = &self.res.metrics;
        m.oldest_pending_seconds
            .set(self.res.book.oldest_pending_age(now).as_secs_f64());
        // Half a tick of slack: a quiet tick is LAG_EVERY long and may fire a hair early against
        // this clock read, which would skip a whole second.
        if now.saturating_duration_since(self.lag_published) + TICK / 2 >= LAG_EVERY {
            self.lag_published = now;
            self.publish_lag_seconds(kafka);
        }
        if self.opts.drain {
            self.check_drained(now, kafka);
        }
    }

    /// Sets `shardline_consumer_lag_seconds` of each assigned partition from the book and the
    /// message lag librdkafka's statistics last reported.
    fn publish_lag_seconds(&self, kafka: &Kafka<'_>) {
        let m = &self.res.metrics;
        let shard = m.shard.as_str();
        let now_ms = self.wall.ms_at(Instant::now());
        let messages = lock(&kafka.consumer.context().message_lag);
        // Read under the lock, no copy: the statistics callback waits at most this long.
        let lags = self.res.book.lag_seconds(now_ms, |topic, p| {
            messages.get(&(topic.to_string(), p)).copied()
        });
        drop(messages);
        for (topic, p, seconds) in lags {
            m.lag_seconds
                .with_label_values(&[shard, topic, p.to_string().as_str()])
                .set(seconds);
        }
    }

    /// Releases the start barrier once every shard of this process has joined (or after
    /// [`BARRIER_TIMEOUT`], should a sibling never come up).
    fn release_barrier(&mut self, kafka: &Kafka<'_>) {
        let held = &self.res.signals.held;
        let joined = self.siblings.joined.load(Ordering::SeqCst);
        if held.load(Ordering::SeqCst)
            && (joined >= self.siblings.drained.len()
                || self.started_at.elapsed() > BARRIER_TIMEOUT)
        {
            held.store(false, Ordering::SeqCst);
            self.res.book.release_hold(kafka);
        }
    }

    /// Sets the last-done gauge to the wall-clock time of the latest finished record.
    fn publish_last_done(&mut self) {
        if let Some(at) = self.last_done_at.take() {
            let ago = at.elapsed().as_secs_f64();
            self.res.metrics.last_done_time.set(unix_seconds() - ago);
        }
    }

    /// A fatal client error (seen on the stream or in the client's error callback): stop uncommitted.
    fn fail_fatally(&mut self, message: String) {
        if self.fatal.is_none() {
            self.fatal = Some(RunError::KafkaFatal {
                shard: self.spec.index,
                message,
            });
        }
        self.begin_stop();
    }

    /// Whether the tick's work can wait an [`IDLE_TICK`] ([`TickPace`] adds: no event since the
    /// last tick). Not quiet: records in flight, partitions held (the start barrier) or paused, a
    /// stop under way, or drain mode (its exit is timed by ticks).
    fn quiet(&self) -> bool {
        self.in_flight() == 0
            && self.stopping.is_none()
            && !self.opts.drain
            && self.full_since.is_none()
            && !self.res.book.is_budget_paused()
            && !self.res.signals.held.load(Ordering::SeqCst)
    }

    fn read_control(&mut self) {
        if let Some(c) = self.control.try_recv() {
            self.on_control(c);
        }
    }

    fn on_control(&mut self, c: Control) {
        match c {
            Control::Stop => self.begin_stop(),
            Control::Kill => {
                tracing::warn!(
                    shard = self.spec.index,
                    "killed: uncommitted records will be replayed"
                );
                self.killed = true;
                self.res.shutdown.stop();
            }
        }
    }

    /// No more fetches; every backoff ends now; in-flight work finishes within the deadline.
    fn begin_stop(&mut self) {
        if self.stopping.is_none() {
            tracing::info!(
                shard = self.spec.index,
                in_flight = self.in_flight(),
                "stopping: no more fetches, finishing in-flight work"
            );
            self.stopping = Some(Instant::now());
            self.res.shutdown.stop();
        }
    }

    /// Drain mode: a partition reached its end. Logged with the consumer's position, once per end, so
    /// that a drain which consumed less than expected says where each partition stood.
    fn on_eof(&mut self, partition: i32, consumer: &ShardConsumer) {
        let ended = self.res.book.mark_eof_partition(partition);
        if ended.is_empty() {
            return;
        }
        let positions = consumer.position().ok();
        for (topic, consumed) in ended {
            let position = positions
                .as_ref()
                .and_then(|tpl| tpl.find_partition(&topic, partition).map(|e| e.offset()));
            tracing::info!(
                shard = self.spec.index,
                topic,
                partition,
                consumed,
                position = ?position,
                "partition at its end"
            );
        }
    }

    /// Drain mode: the shards of one process leave together, once every assigned partition of every
    /// shard is at its end and nothing is in flight (a shard leaving early would rebalance its
    /// siblings mid-work).
    fn check_drained(&mut self, now: Instant, kafka: &Kafka<'_>) {
        if self.stopping.is_some() {
            return;
        }
        if self.siblings.leave.is_raised() {
            tracing::info!(
                shard = self.spec.index,
                "drained: a sibling found every shard at its end"
            );
            self.begin_stop();
            return;
        }
        let mine = self.res.book.all_at_eof() && self.in_flight() == 0;
        if !mine && now.saturating_duration_since(self.drain_reported) >= DRAIN_REPORT_EVERY {
            self.drain_reported = now;
            self.report_drain_wait(kafka);
        }
        let drained = &self.siblings.drained;
        if let Some(flag) = drained.get(self.spec.index) {
            flag.store(mine, Ordering::SeqCst);
        }
        if !(mine && drained.iter().all(|d| d.load(Ordering::SeqCst))) {
            self.idle_since = None;
            return;
        }
        let since = *self.idle_since.get_or_insert(now);
        if since.elapsed() >= drain_window(self.opts.drain_idle_ms) {
            tracing::info!(
                shard = self.spec.index,
                "drained: every assigned partition of every shard at its end"
            );
            self.siblings.leave.raise();
            self.begin_stop();
        }
    }

    /// Work arrived (a message, a new assignment): siblings must not take this shard as drained on
    /// the flag of its last tick. Only a raised flag is written (only this shard writes it), so a
    /// message costs a plain load of a line its siblings write once a tick at most.
    fn lower_drained_flag(&self) {
        if let Some(flag) = self.siblings.drained.get(self.spec.index) {
            if flag.load(Ordering::Relaxed) {
                flag.store(false, Ordering::SeqCst);
            }
        }
    }

    /// Drain mode, not at its end for [`DRAIN_REPORT_EVERY`]: one line per partition not at its end
    /// (the book's view beside librdkafka's last statistics of it) and one for work in flight; a
    /// quiet partition is resumed again, and taken as at its end once [`DrainWatch`] says so.
    fn report_drain_wait(&mut self, kafka: &Kafka<'_>) {
        let views = kafka.consumer.context().fetch_view.as_ref().map(lock);
        let book = &self.res.book;
        let parts: Vec<_> = book
            .not_at_eof()
            .into_iter()
            .map(|(topic, partition, consumed, paused)| {
                let key = (topic.to_string(), partition);
                let view = views.as_ref().and_then(|v| v.get(&key)).cloned();
                (key, consumed, paused, view)
            })
            .collect();
        drop(views);
        let steps = self.drain_watch.report(
            book.epoch(),
            parts.iter().map(|((t, p), consumed, paused, view)| {
                (t.as_str(), *p, *consumed, *paused, view.as_ref())
            }),
        );
        let mut resume = Vec::new();
        for ((key, consumed, paused, view), step) in parts.into_iter().zip(steps) {
            let (topic, partition) = (key.0.as_str(), key.1);
            match step {
                DrainStep::End => self.end_without_event(topic, partition, consumed, view),
                DrainStep::Wait | DrainStep::Resume => {
                    tracing::info!(
                        shard = self.spec.index,
                        topic,
                        partition,
                        consumed,
                        paused,
                        held = self.res.book.is_held(),
                        fetcher = ?view,
                        resumed = step == DrainStep::Resume,
                        "drain waits for the partition's end"
                    );
                    if step == DrainStep::Resume {
                        resume.push(key);
                    }
                }
            }
        }
        if !resume.is_empty() {
            // Idempotent: it undoes an application pause the book does not know of (see
            // `DrainStep::Resume`); a partition not paused by the application is left as it is.
            PartitionControl::resume(kafka, &resume);
        }
        if !self.res.book.in_group() {
            tracing::info!(
                shard = self.spec.index,
                "drain waits for the group to assign this shard its partitions again"
            );
        }
        if self.in_flight() > 0 {
            tracing::info!(
                shard = self.spec.index,
                in_flight = self.in_flight(),
                budget_paused = self.res.book.is_budget_paused(),
                "drain waits for records in flight"
            );
        }
    }
    /// Drain mode: a partition [`DrainWatch`] found quiet, resumed and caught up is at its end
    /// although librdkafka sent no end-of-partition event. Without this such a drain would wait
    /// for ever.
    fn end_without_event(
        &mut self,
        topic: &str,
        partition: i32,
        consumed: u64,
        view: Option<FetchView>,
    ) {
        if self.res.book.mark_eof_of(topic, partition) {
            tracing::info!(
                shard = self.spec.index,
                topic,
                partition,
                consumed,
                fetcher = ?view,
                "partition at its end by the fetcher's statistics (no end-of-partition event came)"
            );
        }
    }

    /// Stores and synchronously commits the done prefix, flushes dead letters.
    fn finish(mut self, kafka: &Kafka<'_>) -> Result<(), RunError> {
        self.publish_last_done();
        if self.killed {
            return Err(RunError::Killed);
        }
        self.res.book.store(kafka);
        let offsets = self.res.book.committable();
        if !offsets.is_empty() && !self.opts.null_sink {
            match kafka
                .consumer
                .commit(&offsets_tpl(&offsets), CommitMode::Sync)
            {
                Ok(()) => events::committed(&self.res.metrics, true, None),
                Err(e) => events::committed(&self.res.metrics, false, Some(&e)),
            }
        }
        if let Some(d) = &self.res.records.dead_letters {
            // Acked dead letters are already done; this only hands over what is queued, within what
            // is left of the shutdown deadline (at least a moment, so a clean stop flushes).
            let left = self
                .stopping
                .map(|s| self.shutdown_deadline.saturating_sub(s.elapsed()))
                .unwrap_or(self.shutdown_deadline);
            d.flush(left.max(Duration::from_millis(100)));
        }
        self.close_dead_letters_in_background();
        tracing::info!(shard = self.spec.index, "shard stopped");
        match self.fatal.take() {
            Some(e) => {
                events::shard_failed(&self.res.metrics, &e);
                Err(e)
            }
            None => Ok(()),
        }
    }
}

impl ShardLoop {
    /// Destroying a librdkafka producer joins its threads (about 100 ms, measured): with everything
    /// flushed and acknowledged there is nothing left to wait for, so it happens on a helper thread
    /// while the consumer closes and leaves the group on this one.
    fn close_dead_letters_in_background(&mut self) {
        self.inflight.clear();
        let Some(ctx) = Rc::get_mut(&mut self.res.records) else {
            return;
        };
        if let Some(producer) = ctx.dead_letters.take() {
            let spawned = std::thread::Builder::new()
                .name("dlq-close".into())
                .spawn(move || drop(producer));
            if let Err(e) = spawned {
                tracing::debug!(error = %e, "closing the dead-letter producer inline");
            }
        }
    }
}

/// What the loop tells, and is woken by, while it waits.
struct Waits<'a> {
    records: &'a RecordContext,
    bridge: &'a BridgeHandle,
    /// The consumer stream's waker: it also ends the bridge's wait in tokio (see [`crate::sink::bridge`]).
    stream_waker: &'a LoopWaker,
    control: &'a ControlReceiver,
    /// The assignment epoch the consumer's rebalance callback last set, and the one the book has.
    assigned: &'a std::sync::atomic::AtomicU64,
    synced: u64,
}

/// Every header of a consumed record, copied for its dead letter (a record without headers, the
/// usual case, copies nothing: see the caller).
fn source_headers(headers: &rdkafka::message::BorrowedHeaders) -> Rc<[SourceHeader]> {
    use rdkafka::message::Headers;
    headers
        .iter()
        .map(|h| (Box::from(h.key), h.value.map(Box::from)))
        .collect()
}

/// Control first, then ended direct rows and completions (they free budget), then messages while
/// `fetching`, then a rebalance the stream handled, then the tick. Before the
/// loop waits, the chain sends what it holds back (open batches): there is nothing more to bind now;
/// and the bridge learns that the loop is idle, so its driver task may block in tokio meanwhile.
async fn next_event<'c>(
    inflight: &mut InFlight,
    stream: &mut MessageStream<'c, ShardContext>,
    tick: &mut glommio::timer::Timer,
    fetching: bool,
    waits: Waits<'_>,
) -> Event<'c> {
    poll_fn(|cx| {
        waits.bridge.set_idle(false);
        if let Some(c) = waits.control.try_recv() {
            return Poll::Ready(Event::Control(c));
        }
        if let Poll::Ready((origin, result)) = waits.records.direct.poll_ended(cx) {
            return Poll::Ready(Event::Direct(origin, result));
        }
        if let Poll::Ready(Some(c)) = inflight.poll_next_unpin(cx) {
            return Poll::Ready(Event::Completion(c));
        }
        if fetching {
            let mut linked = Context::from_waker(waits.stream_waker.for_task(cx.waker()));
            match stream.poll_next_unpin(&mut linked) {
                Poll::Ready(Some(Ok(m))) => return Poll::Ready(Event::Message(m)),
                Poll::Ready(Some(Err(rdkafka::error::KafkaError::PartitionEOF(p)))) => {
                    return Poll::Ready(Event::Eof(p))
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Event::ConsumerError(e)),
                Poll::Ready(None) | Poll::Pending => {}
            }
        }
        if waits.assigned.load(Ordering::SeqCst) != waits.synced {
            return Poll::Ready(Event::Assignment);
        }
        if tick.poll_unpin(cx).is_ready() {
            return Poll::Ready(Event::Tick);
        }
        // Registered only now, before waiting: on the busy path the look above is one load.
        if let Poll::Ready(c) = waits.control.poll_recv(cx) {
            return Poll::Ready(Event::Control(c));
        }
        waits.records.flush();
        waits.bridge.set_idle(true);
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drain_window_outlasts_two_ticks_of_every_sibling() {
        assert_eq!(drain_window(0), 2 * TICK);
        assert_eq!(drain_window(150), 2 * TICK);
        assert_eq!(drain_window(3_000), Duration::from_secs(3));
    }

    #[test]
    fn the_yield_check_reads_the_clock_once_per_sixteen_events() {
        let start = Instant::now();
        let mut pace = YieldPace::new(start);
        let reads = std::cell::Cell::new(0u32);
        // A busy loop within one millisecond of its last yield: never due, and 10 clock reads for
        // 160 events (the old rule read it on 145 of them).
        let soon = || {
            reads.set(reads.get() + 1);
            start + YIELD_EVERY / 2
        };
        assert!((0..160).all(|_| !pace.due(soon)));
        assert_eq!(reads.get(), 10);
        // Once the millisecond passed, due at the next check (at most 16 events later), not before.
        let later = || start + YIELD_EVERY;
        let due_at = (1..=16).find(|_| pace.due(later));
        assert_eq!(due_at, Some(16));
        pace.yielded(start + YIELD_EVERY);
        assert!(
            (0..32).all(|_| !pace.due(later)),
            "a yield starts a new millisecond"
        );
    }

    #[test]
    fn the_tick_slows_only_after_a_whole_quiet_tick_and_speeds_up_at_the_next_event() {
        let mut pace = TickPace::new();
        // Start-up: busy, so the first tick re-arms at the usual pace even when quiet.
        assert_eq!(pace.on_tick(true), TICK);
        // A whole tick with no event, quiet: slow down.
        assert_eq!(pace.on_tick(true), IDLE_TICK);
        assert_eq!(pace.on_tick(true), IDLE_TICK);
        // The next event ends the quiet spell: re-arm once, not on every event.
        assert_eq!(pace.on_event(), Some(TICK));
        assert_eq!(pace.on_event(), None);
        // The tick after events stays at the usual pace.
        assert_eq!(pace.on_tick(true), TICK);
        // No event but not quiet (records in flight, held, paused, stopping): the usual pace.
        assert_eq!(pace.on_tick(false), TICK);
        assert_eq!(pace.on_tick(false), TICK);
        assert_eq!(pace.on_event(), None, "already at the usual pace");
    }
}
