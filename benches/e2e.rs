//! The end-to-end bench harness behind scripts/bench.sh (not a criterion bench): the comparison
//! points that are not shardline itself.
//!
//!   cargo bench --bench e2e -- raw   --topic T --count N
//!       the raw consume ceiling: one plain rdkafka consumer reading the topic, nothing else.
//!   cargo bench --bench e2e -- tokio --config FILE --count N [--threads K] [--skip S]
//!     (latencies of the first S records are not observed: the warm-up of a fixed-rate run)
//!       the same pipeline (decode, bind, INSERT, in-order offset tracking, at most max_in_flight
//!       writes) on a conventional tokio multi-threaded runtime: one consumer, a task per write.
//!   cargo bench --bench e2e -- driver --config FILE --count N [--batch K] [--bridge]
//!       the raw driver ceiling: the config's topic is read and bound into rows first (not timed),
//!       then the scylla driver alone inserts them into the same table on a current-thread tokio
//!       runtime, `max_in_flight_per_shard` requests in flight: single INSERTs (K = 1) or UNLOGGED
//!       batches of K consecutive rows (the one-node grouping of shardline's batches). With
//!       --bridge, the same requests go from a glommio executor through shardline's tokio bridge
//!       (the runtime driven by a glommio task, as in a shard): the bridge's cost, against direct.
//!
//! Prints one JSON line: messages, seconds (first record to last done), msg/s, end-to-end quantiles.
//! CPU per record is the harness's own (its process CPU over the timed part, from /proc/self/stat);
//! peak RSS and context switches are sampled from outside by scripts/bench.py.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use scylla::value::{CqlValue, MaybeUnset};
use shardline::codec::{Decoder, RegistryClient, Row};
use shardline::config::Config;
use shardline::kafka::tracker::PartitionTracker;
use shardline::metrics::{gather, histogram_buckets, quantile, ShardMetrics};
use shardline::sink::Cell;

// The allocator shardline's binary runs with, so the ceilings and the tokio baseline pay the same
// allocation costs as the shards they are compared with. With glibc's malloc, the driver through
// the bridge (on a glommio thread, so in a non-main arena that glibc grows and trims 4 KiB at a
// time) made 3.7 `mprotect` calls per request, against 0.3 driven directly.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A bound value in the driver's own (owned, `Send`) type.
fn owned(v: MaybeUnset<Option<Cell>>) -> MaybeUnset<Option<CqlValue>> {
    match v {
        MaybeUnset::Set(c) => MaybeUnset::Set(c.map(Cell::into_cql)),
        MaybeUnset::Unset => MaybeUnset::Unset,
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// This process's user+system CPU seconds (from /proc/self/stat).
fn self_cpu(tick: f64) -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / tick)
        })
        .unwrap_or(0.0)
}

fn clock_tick() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes --bench; criterion-style filters are ignored.
    let mode = args
        .iter()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_default();
    if mode.is_empty() {
        // `cargo test --all-targets` runs bench binaries without arguments: nothing to measure then.
        eprintln!(
            "usage: e2e raw --topic T --count N | e2e tokio --config FILE --count N [--threads K]"
        );
        return Ok(());
    }
    let count: u64 = arg(&args, "--count").context("--count")?.parse()?;
    match mode.as_str() {
        "raw" => raw(
            &arg(&args, "--topic").context("--topic")?,
            count,
            &arg(&args, "--brokers").unwrap_or("127.0.0.1:9092".into()),
        ),
        "driver" => {
            let batch: usize = arg(&args, "--batch").unwrap_or("1".into()).parse()?;
            let cfg = Config::load(std::path::Path::new(
                &arg(&args, "--config").context("--config")?,
            ))?;
            driver(
                cfg,
                count,
                batch.max(1),
                args.iter().any(|a| a == "--bridge"),
            )
        }
        "tokio" => {
            let threads: usize = arg(&args, "--threads").unwrap_or("2".into()).parse()?;
            let skip: u64 = arg(&args, "--skip").unwrap_or("0".into()).parse()?;
            let cfg = Config::load(std::path::Path::new(
                &arg(&args, "--config").context("--config")?,
            ))?;
            tokio_pipeline(cfg, count, threads, skip)
        }
        other => bail!("unknown mode '{other}': raw, driver or tokio"),
    }
}

fn raw(topic: &str, count: u64, brokers: &str) -> Result<()> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench-raw-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    c.subscribe(&[topic])?;
    let mut n = 0u64;
    let mut bytes = 0u64;
    let mut first: Option<Instant> = None;
    let tick = clock_tick();
    let mut cpu0 = 0.0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while n < count && Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m?;
            if first.is_none() {
                first = Some(Instant::now());
                cpu0 = self_cpu(tick);
            }
            bytes += m.payload().map(<[u8]>::len).unwrap_or(0) as u64;
            n += 1;
        }
    }
    let secs = first.map(|f| f.elapsed().as_secs_f64()).unwrap_or(0.0);
    println!(
        "{}",
        serde_json::json!({"mode": "raw", "messages": n, "seconds": secs, "msgs_per_s": n as f64 / secs.max(1e-9), "bytes": bytes,
            "cpu_us_per_msg": (self_cpu(tick) - cpu0) / (n.max(1) as f64) * 1e6})
    );
    Ok(())
}

/// Reads and binds `count` records of the config's topic (untimed).
fn bound_rows(
    cfg: &Config,
    binder: &shardline::sink::Binder,
    count: u64,
) -> Result<Vec<shardline::sink::BoundRow>> {
    let registry = cfg.schema.registry_url.clone().context("registry_url")?;
    let mut decoder = Decoder::framed(
        RegistryClient::new(&registry, Duration::from_secs(5)),
        cfg.needed_fields(),
    );
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cfg.kafka.brokers.as_str())
        .set("group.id", format!("bench-driver-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let topics: Vec<&str> = cfg.kafka.topics.iter().map(String::as_str).collect();
    c.subscribe(&topics)?;
    let mut rows = Vec::with_capacity(count as usize);
    let mut row = Row::default();
    let deadline = Instant::now() + Duration::from_secs(300);
    while (rows.len() as u64) < count && Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m?;
            decoder.decode_blocking(m.payload().unwrap_or_default(), &mut row)?;
            rows.push(binder.bind(&row.values, m.timestamp().to_millis(), m.offset())?);
        }
    }
    Ok(rows)
}

type Insert = shardline::sink::BoundRow;
type Written = std::result::Result<usize, scylla::errors::ExecutionError>;

/// The table's session, prepared INSERT and `count` bound rows of the config's topic.
async fn driver_setup(
    cfg: &Config,
    count: u64,
) -> Result<(
    Arc<scylla::client::session::Session>,
    scylla::statement::prepared::PreparedStatement,
    Vec<Insert>,
)> {
    let fields = cfg.needed_fields();
    let session = Arc::new(shardline::sink::connect(cfg).await?);
    let types =
        shardline::sink::table_columns(&session, &cfg.table.keyspace, &cfg.table.table).await?;
    let binder = shardline::sink::Binder::for_table(&cfg.table, &fields, &types)?;
    let insert = session
        .prepare(binder.insert_cql(&cfg.table.keyspace, &cfg.table.table))
        .await?;
    let rows = bound_rows(cfg, &binder, count)?;
    Ok((session, insert, rows))
}

/// Inserts `rows` in groups of `batch`, `in_flight` requests at a time. With `bridge`, each request
/// future is polled from a glommio task with that runtime's context entered, and the runtime is
/// driven on the same thread (shardline's way, `sink::bridge`); without, it runs on the current
/// tokio runtime.
async fn insert_all(
    session: &scylla::client::session::Session,
    insert: &scylla::statement::prepared::PreparedStatement,
    rows: &[Insert],
    batch: usize,
    in_flight: usize,
    bridge: Option<shardline::sink::bridge::BridgeHandle>,
) -> Result<usize> {
    use futures::future::LocalBoxFuture;
    use futures::stream::FuturesUnordered;
    use scylla::statement::batch::{Batch, BatchType};
    let batch_of = |n: usize| {
        let mut b = Batch::new(BatchType::Unlogged);
        for _ in 0..n {
            b.append_statement(insert.clone());
        }
        b
    };
    let full = batch_of(batch);
    let last = batch_of(rows.len() % batch);
    let mut pending: FuturesUnordered<LocalBoxFuture<'_, Written>> = FuturesUnordered::new();
    let mut next = rows.chunks(batch);
    let mut written = 0usize;
    loop {
        while pending.len() < in_flight {
            let Some(g) = next.next() else { break };
            let b = if g.len() == batch { &full } else { &last };
            let fut: LocalBoxFuture<'_, Written> = Box::pin(async move {
                let r = if g.len() == 1 {
                    session.execute_unpaged(insert, &g[0]).await
                } else {
                    session.batch(b, g).await
                };
                r.map(|_| g.len())
            });
            pending.push(match &bridge {
                Some(h) => Box::pin(h.wrap(fut)),
                None => fut,
            });
        }
        match pending.next().await {
            Some(r) => written += r?,
            None => break,
        }
    }
    Ok(written)
}

/// The raw driver ceiling, directly on a current-thread tokio runtime or (`bridge`) from a glommio
/// executor through shardline's tokio bridge.
fn driver(cfg: Config, count: u64, batch: usize, bridge: bool) -> Result<()> {
    let in_flight = cfg.scylla.max_in_flight_per_shard.div_ceil(batch).max(1);
    let tick = clock_tick();
    let (written, secs, cpu) = if bridge {
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                use shardline::sink::bridge::{Driver, TokioBridge};
                let b = std::rc::Rc::new(TokioBridge::new()?);
                let (session, insert, rows) = b.block_on(driver_setup(&cfg, count))?;
                let h = b.handle().clone();
                // Nothing else runs here: the driver task may block in tokio whenever it waits.
                h.set_idle(true);
                let driver = Driver::start(b.clone());
                let (t0, cpu0) = (Instant::now(), self_cpu(tick));
                let n = insert_all(&session, &insert, &rows, batch, in_flight, Some(h)).await?;
                let took = (n, t0.elapsed().as_secs_f64(), self_cpu(tick) - cpu0);
                driver.stop().await;
                anyhow::Ok(took)
            })
            .map_err(|e| anyhow::anyhow!("executor: {e}"))?
            .join()
            .map_err(|e| anyhow::anyhow!("executor: {e}"))??
    } else {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let (session, insert, rows) = driver_setup(&cfg, count).await?;
            let (t0, cpu0) = (Instant::now(), self_cpu(tick));
            let n = insert_all(&session, &insert, &rows, batch, in_flight, None).await?;
            anyhow::Ok((n, t0.elapsed().as_secs_f64(), self_cpu(tick) - cpu0))
        })?
    };
    println!(
        "{}",
        serde_json::json!({"mode": "driver", "batch": batch, "bridge": bridge, "messages": written, "seconds": secs,
            "msgs_per_s": written as f64 / secs.max(1e-9),
            "cpu_us_per_msg": cpu / (written.max(1) as f64) * 1e6})
    );
    Ok(())
}

fn tokio_pipeline(cfg: Config, count: u64, threads: usize, skip: u64) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let fields = cfg.needed_fields();
        let session = Arc::new(shardline::sink::connect(&cfg).await?);
        let types = shardline::sink::table_columns(&session, &cfg.table.keyspace, &cfg.table.table).await?;
        let binder = shardline::sink::Binder::for_table(&cfg.table, &fields, &types)?;
        let insert = session.prepare(binder.insert_cql(&cfg.table.keyspace, &cfg.table.table)).await?;
        let registry = cfg.schema.registry_url.clone().context("registry_url")?;
        let mut decoder = Decoder::framed(RegistryClient::new(&registry, Duration::from_secs(5)), fields);
        let consumer: StreamConsumer = shardline::kafka::consumer_config(&cfg.kafka, "bench-tokio").create()?;
        let topics: Vec<&str> = cfg.kafka.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        let metrics = ShardMetrics::new(0);
        let sem = Arc::new(tokio::sync::Semaphore::new(cfg.scylla.max_in_flight_per_shard));
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(i32, i64)>();
        let mut trackers: HashMap<i32, PartitionTracker> = HashMap::new();
        let mut stream = consumer.stream();
        let mut row = Row::default();
        let (mut received, mut done) = (0u64, 0u64);
        let mut first: Option<Instant> = None;
        let tick = clock_tick();
        let mut cpu0 = 0.0;
        let topic = cfg.kafka.topics.first().cloned().unwrap_or_default();
        while done < count {
            tokio::select! {
                Some((p, o)) = done_rx.recv() => {
                    done += 1;
                    if let Some(next) = trackers.get_mut(&p).and_then(|t| t.done(o)) {
                        let mut tpl = TopicPartitionList::new();
                        tpl.add_partition_offset(&topic, p, Offset::Offset(next))?;
                        let _ = consumer.store_offsets(&tpl);
                    }
                }
                permit = sem.clone().acquire_owned(), if received < count => {
                    let permit = permit?;
                    let Some(m) = stream.next().await else { break };
                    let m = m?;
                    if first.is_none() {
                        first = Some(Instant::now());
                        cpu0 = self_cpu(tick);
                    }
                    received += 1;
                    let observe = received > skip;
                    let consumed = Instant::now();
                    let (p, o) = (m.partition(), m.offset());
                    trackers.entry(p).or_default().begin(o, std::time::Instant::now());
                    let ts = m.timestamp().to_millis();
                    if let (Some(ms), true) = (ts, observe) {
                        let fetch = shardline::clock::now_us() / 1000 - ms;
                        metrics.stage_fetch.observe(fetch.max(0) as f64 / 1000.0);
                    }
                    decoder.decode_blocking(m.payload().unwrap_or_default(), &mut row)?;
                    let values = binder.bind(&row.values, ts, m.offset())?;
                    // Owned values, to cross threads: what a task-per-write design must hold.
                    let values: Vec<MaybeUnset<Option<CqlValue>>> =
                        values.into_iter().map(owned).collect();
                    let (s, ins, tx, m2) = (session.clone(), insert.clone(), done_tx.clone(), metrics.clone());
                    // The conventional design: a task per write on the multi-threaded runtime.
                    tokio::spawn(async move {
                        let t = Instant::now();
                        if observe {
                            // Consumed → write sent, as shardline's `queue` stage: here the wait
                            // for a worker to poll the new task.
                            m2.stage_queue.observe((t - consumed).as_secs_f64());
                        }
                        if s.execute_unpaged(&ins, &values).await.is_ok() && observe {
                            m2.write_seconds.observe(t.elapsed().as_secs_f64());
                            if let Some(ms) = ts {
                                let e2e = shardline::clock::now_us() / 1000 - ms;
                                m2.end_to_end_seconds.observe(e2e.max(0) as f64 / 1000.0);
                            }
                        }
                        drop(permit);
                        let _ = tx.send((p, o));
                    });
                }
            }
        }
        let secs = first.map(|f| f.elapsed().as_secs_f64()).unwrap_or(0.0);
        let fams = gather(std::slice::from_ref(&metrics.registry));
        let (b, n) = histogram_buckets(&fams, "shardline_end_to_end_seconds");
        let q = |x| quantile(&b, n, x).map(|s| s * 1000.0);
        let buckets: Vec<(f64, u64)> = b.iter().map(|&(le, c)| (le * 1000.0, c)).collect();
        // Per stage (`fetch`, `queue`) and the write, read as shardline's own report reads them.
        let summary = shardline::report::summarize(std::slice::from_ref(&metrics.registry), secs);
        println!(
            "{}",
            serde_json::json!({"mode": "tokio", "threads": threads, "messages": done, "seconds": secs,
                "msgs_per_s": done as f64 / secs.max(1e-9),
                "cpu_us_per_msg": (self_cpu(tick) - cpu0) / (done.max(1) as f64) * 1e6,
                "end_to_end": {"p50_ms": q(0.5), "p99_ms": q(0.99), "p999_ms": q(0.999)},
                "end_to_end_buckets": buckets,
                "stages": summary.stages, "write": summary.write})
        );
        anyhow::Ok(())
    })
}
