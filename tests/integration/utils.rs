// Helpers used only by the fault tests are dead code without the `fault-tests` feature.
#![cfg_attr(not(feature = "fault-tests"), allow(dead_code))]
//! Shared helpers: unique names, topics, keyspaces, producing, running the binary, reading back.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::TryStreamExt;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::value::{CqlTimestamp, CqlValue};
use shardline::codec::RegistryClient;
use shardline::loadgen::{self, navigation, ProduceSpec, ProduceSummary};

pub const BROKERS: &str = "127.0.0.1:9092";
pub const REGISTRY: &str = "http://127.0.0.1:8081/apis/ccompat/v7";
pub const CQL: &str = "127.0.0.1:9042";
pub const BASE_TS_MS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A name no other test (or earlier run) uses: lowercase, CQL- and Kafka-safe.
pub fn unique(prefix: &str) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() % 100_000_000)
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{t}_{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread tokio runtime builds")
}

pub fn create_topic(topic: &str, partitions: i32) -> Result<()> {
    tokio().block_on(shardline::kafka::admin::create_topic(
        BROKERS, topic, partitions,
    ))?;
    Ok(())
}

pub async fn session() -> Result<Session> {
    Ok(SessionBuilder::new().known_node(CQL).build().await?)
}

pub const TABLE_CQL: &str = "CREATE TABLE IF NOT EXISTS {ks}.navigation_events (uid text, event_id text, url text, \
     referer text, user_agent text, ts timestamp, ip inet, country text, event_type text, duration_ms int, \
     tags frozen<list<text>>, PRIMARY KEY ((uid), event_id))";

/// A fresh keyspace with the navigation table.
pub async fn create_keyspace(s: &Session, ks: &str) -> Result<()> {
    s.query_unpaged(
        format!("CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {{'class':'SimpleStrategy','replication_factor':1}}"),
        &[],
    )
    .await?;
    s.query_unpaged(TABLE_CQL.replace("{ks}", ks), &[]).await?;
    Ok(())
}

/// Registers the navigation schema for `topic` and produces `count` events.
pub fn produce(topic: &str, count: u64, seed: u64, poison_every: u64) -> Result<ProduceSummary> {
    produce_at(topic, count, seed, poison_every, 0)
}

/// As `produce`, at `rate` msg/s (0: as fast as possible).
pub fn produce_at(
    topic: &str,
    count: u64,
    seed: u64,
    poison_every: u64,
    rate: u64,
) -> Result<ProduceSummary> {
    produce_full(topic, count, seed, poison_every, rate, 20_000)
}

/// As `produce`, with `uids` distinct users.
pub fn produce_full(
    topic: &str,
    count: u64,
    seed: u64,
    poison_every: u64,
    rate: u64,
    uids: u64,
) -> Result<ProduceSummary> {
    let reg = RegistryClient::new(REGISTRY, Duration::from_secs(10));
    let schema_id = reg.register(&format!("{topic}-value"), navigation::SCHEMA)?;
    let alt_schema_id =
        Some(reg.register(&format!("{topic}-iplong"), navigation::SCHEMA_IP_AS_LONG)?);
    let spec = ProduceSpec {
        brokers: BROKERS.into(),
        topic: topic.into(),
        schema_id,
        count: Some(count),
        duration: None,
        rate,
        seed,
        base_ts_ms: BASE_TS_MS,
        uids,
        poison_every,
        alt_schema_id,
        progress: false,
        warmup: Duration::ZERO,
    };
    let s = loadgen::produce(&spec, &BTreeMap::new())?;
    if s.acked != count {
        bail!("only {} of {count} records acknowledged", s.acked);
    }
    Ok(s)
}

/// The config of a test pipeline, written to a temp file.
pub fn write_config(
    dir: &Path,
    topic: &str,
    group: &str,
    ks: &str,
    extra_table: &str,
    columns: &str,
) -> Result<PathBuf> {
    let table = format!("table = \"navigation_events\"\nttl_seconds = 2592000\n{extra_table}\n\n[table.columns]\n{columns}");
    let p = dir.join(format!("{group}.toml"));
    std::fs::write(&p, config_text(topic, group, ks, 512, &table, ""))?;
    Ok(p)
}

/// A test pipeline's config: `table` is the body of `[table]` after its keyspace, `processors` any
/// `[[processors]]` entries. Metrics on a free port, two shards, a 20 s shutdown deadline.
pub fn config_text(
    topic: &str,
    group: &str,
    ks: &str,
    in_flight: usize,
    table: &str,
    processors: &str,
) -> String {
    format!(
        r#"
[kafka]
brokers = "{BROKERS}"
group_id = "{group}"
topics = ["{topic}"]
dead_letter_topic = "{topic}.dlq"
commit_interval_ms = 500

[schema]
registry_url = "{REGISTRY}"
unknown_schema_grace_ms = 2000

[scylla]
nodes = ["{CQL}"]
consistency = "one"
max_in_flight_per_shard = {in_flight}

[table]
keyspace = "{ks}"
{table}

[shards]
cores = [0, 1]
shutdown_deadline_ms = 20000

[metrics]
listen = "127.0.0.1:0"

{processors}
"#
    )
}

pub const ALL_COLUMNS: &str = r#"uid = "uid"
event_id = "event_id"
url = "url"
referer = "referer"
user_agent = "user_agent"
ts = "ts"
ip = "ip"
country = "country"
event_type = "event_type"
duration_ms = "duration_ms"
tags = "tags""#;

pub fn temp_dir(name: &str) -> Result<PathBuf> {
    let d = std::env::temp_dir().join(unique(name));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// Output of one `shardline run`.
pub struct RunOutput {
    pub ok: bool,
    pub stderr: String,
    pub summary: Option<serde_json::Value>,
}

/// Runs `shardline run --drain` to completion (or `timeout`).
pub fn run_drain(config: &Path, timeout: Duration, extra: &[&str]) -> Result<RunOutput> {
    run_drain_env(config, timeout, extra, &[])
}

/// [`run_drain`] with extra environment variables (the secrets of the security tests).
pub fn run_drain_env(
    config: &Path,
    timeout: Duration,
    extra: &[&str],
    env: &[(&str, String)],
) -> Result<RunOutput> {
    let summary = config.with_extension("summary.json");
    let _ = std::fs::remove_file(&summary);
    let log = config.with_extension(format!("log{}", SEQ.fetch_add(1, Ordering::SeqCst)));
    let logf = std::fs::File::create(&log)?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardline"))
        .args(["run", "--config"])
        .arg(config)
        .args(["--drain", "--drain-idle-ms", "2000", "--summary"])
        .arg(&summary)
        .args(extra)
        .env("RUST_LOG", "info,scylla=warn,rdkafka=warn")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logf)
        .spawn()?;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "shardline run did not finish within {timeout:?}; log: {}",
                tail(&log)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    let summary = std::fs::read_to_string(&summary)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok());
    Ok(RunOutput {
        ok: status.success(),
        stderr,
        summary,
    })
}

/// A run's log for a failure message: its first lines (start-up, assignments) and its last ones (a
/// stalled drain's reports of what it waits for).
pub fn tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    let (head, rest) = lines.split_at(lines.len().min(15));
    let last = &rest[rest.len().saturating_sub(40)..];
    let skipped = rest.len() - last.len();
    let gap = if skipped > 0 {
        format!("\n[... {skipped} lines ...]\n")
    } else {
        "\n".to_string()
    };
    format!("{}{gap}{}", head.join("\n"), last.join("\n"))
}

fn group_consumer(group: &str) -> Result<BaseConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?)
}

/// Committed offset of every partition of `topic` for `group` (-1 when none).
pub fn committed(group: &str, topic: &str, partitions: i32) -> Result<Vec<i64>> {
    let c = group_consumer(group)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10))?;
    let mut out = vec![-1; partitions as usize];
    for e in got.elements() {
        if let (Offset::Offset(o), Some(slot)) = (e.offset(), out.get_mut(e.partition() as usize)) {
            *slot = o;
        }
    }
    Ok(out)
}

/// High watermark of every partition.
pub fn end_offsets(topic: &str, partitions: i32) -> Result<Vec<i64>> {
    let c = group_consumer("shardline-test-watermarks")?;
    (0..partitions)
        .map(|p| Ok(c.fetch_watermarks(topic, p, Duration::from_secs(10))?.1))
        .collect()
}

/// For polling: whether the group's committed offsets reached the topic's end. A query that fails
/// (a broker just restarted, or one in a GC pause, may answer nothing for seconds) counts as "not
/// yet", so the caller's deadline decides, not the first slow answer.
pub fn caught_up(group: &str, topic: &str, partitions: i32) -> bool {
    let at_end =
        committed(group, topic, partitions).and_then(|c| Ok(c == end_offsets(topic, partitions)?));
    at_end.unwrap_or_else(|e| {
        eprintln!("offsets not read this time: {e}");
        false
    })
}

/// Sets the group's committed offsets back to the start (the group must have no live member).
pub fn reset_group(group: &str, topic: &str, partitions: i32) -> Result<()> {
    let c = group_consumer(group)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Offset(0))?;
    }
    c.assign(&tpl)?;
    c.commit(&tpl, CommitMode::Sync)
        .context("committing offset 0")?;
    Ok(())
}

/// One row of the navigation table, with the write time of `url`.
#[derive(Debug, Clone, PartialEq)]
pub struct NavRow {
    pub uid: String,
    pub event_id: String,
    pub url: Option<String>,
    pub referer: Option<String>,
    pub user_agent: Option<String>,
    pub ts_ms: Option<i64>,
    pub ip: Option<String>,
    pub country: Option<String>,
    pub event_type: Option<String>,
    pub duration_ms: Option<i32>,
    pub tags: Option<Vec<String>>,
    pub writetime_us: Option<i64>,
}

pub async fn read_rows(s: &Session, ks: &str) -> Result<HashMap<String, NavRow>> {
    let q = format!(
        "SELECT uid, event_id, url, referer, user_agent, ts, ip, country, event_type, duration_ms, tags, WRITETIME(url) \
         FROM {ks}.navigation_events"
    );
    let mut out = HashMap::new();
    for c in rows(s, &q).await? {
        let text = |i: usize| match c.get(i) {
            Some(Some(CqlValue::Text(s))) => Some(s.clone()),
            Some(Some(CqlValue::Inet(a))) => Some(a.to_string()),
            _ => None,
        };
        let row = NavRow {
            uid: text(0).unwrap_or_default(),
            event_id: text(1).unwrap_or_default(),
            url: text(2),
            referer: text(3),
            user_agent: text(4),
            ts_ms: match c.get(5) {
                Some(Some(CqlValue::Timestamp(CqlTimestamp(ms)))) => Some(*ms),
                _ => None,
            },
            ip: text(6),
            country: text(7),
            event_type: text(8),
            duration_ms: match c.get(9) {
                Some(Some(CqlValue::Int(i))) => Some(*i),
                _ => None,
            },
            tags: match c.get(10) {
                Some(Some(CqlValue::List(l))) => Some(
                    l.iter()
                        .filter_map(|v| match v {
                            CqlValue::Text(s) => Some(s.clone()),
                            _ => None,
                        })
                        .collect(),
                ),
                _ => None,
            },
            writetime_us: match c.get(11) {
                Some(Some(CqlValue::BigInt(w))) => Some(*w),
                _ => None,
            },
        };
        out.insert(row.event_id.clone(), row);
    }
    Ok(out)
}

/// Asserts that a row holds exactly what event `i` of the run carried.
pub fn assert_row_matches(row: &NavRow, seed: u64) {
    let i = navigation::index_of(&row.event_id).expect("event ids carry their index");
    let e = navigation::event(seed, i, BASE_TS_MS, 20_000);
    assert_eq!(row.uid, e.uid, "uid of {}", row.event_id);
    assert_eq!(row.url.as_deref(), Some(e.url.as_str()));
    assert_eq!(row.referer, e.referer);
    assert_eq!(row.user_agent.as_deref(), Some(e.user_agent.as_str()));
    assert_eq!(row.ts_ms, Some(e.ts_ms));
    assert_eq!(row.ip.as_deref(), Some(e.ip.as_str()));
    assert_eq!(row.country, e.country);
    assert_eq!(
        row.event_type.as_deref(),
        Some(navigation::EVENT_TYPES[e.event_type])
    );
    assert_eq!(row.duration_ms, Some(e.duration_ms));
    // CQL stores an empty list as null.
    let tags = row.tags.clone().unwrap_or_default();
    assert_eq!(tags, e.tags);
}

/// A `shardline run` in the background, with its log in a file.
pub struct Proc {
    pub child: std::process::Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(config: &Path, extra: &[&str]) -> Result<Proc> {
        Proc::spawn_env(config, extra, &[])
    }

    /// [`Proc::spawn`] with extra environment variables.
    pub fn spawn_env(config: &Path, extra: &[&str], env: &[(&str, String)]) -> Result<Proc> {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let log = config.with_extension(format!("bg{n}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_shardline"))
            .args(["run", "--config"])
            .arg(config)
            .args(extra)
            .env("RUST_LOG", "info,scylla=warn,rdkafka=warn")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        Ok(Proc { child, log })
    }

    pub fn signal(&self, sig: &str) -> Result<()> {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()?
            .success();
        if !ok {
            bail!("kill {sig} failed");
        }
        Ok(())
    }

    /// Waits up to `timeout` for exit; `None` if still running.
    pub fn wait_for(&mut self, timeout: Duration) -> Result<Option<std::process::ExitStatus>> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(Some(s));
            }
            if start.elapsed() > timeout {
                return Ok(None);
            }
            // Fine-grained: exit times are measured with it.
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port for a metrics endpoint the test scrapes.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// GET http://127.0.0.1:port/metrics, or an empty string.
pub fn scrape(port: u16) -> String {
    ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
        .timeout(Duration::from_secs(3))
        .call()
        .ok()
        .and_then(|r| r.into_string().ok())
        .unwrap_or_default()
}

/// Sum of a metric's samples whose line contains every `needle`.
pub fn metric_sum(text: &str, name: &str, needles: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until `cond` holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> Result<bool>) -> Result<bool> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond()? {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(false)
}

/// scripts/services.sh with the given arguments.
pub fn services(args: &[&str]) -> Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services.sh");
    let out = Command::new("bash").arg(script).args(args).output()?;
    if !out.status.success() {
        bail!(
            "services.sh {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `SELECT COUNT(*)` of the navigation table (works whatever columns it still has).
pub fn count_rows(ks: &str) -> Result<i64> {
    tokio().block_on(async {
        let s = session().await?;
        let (n,): (i64,) = s
            .query_unpaged(format!("SELECT COUNT(*) FROM {ks}.navigation_events"), &[])
            .await?
            .into_rows_result()?
            .single_row()?;
        Ok(n)
    })
}

pub fn row_count(ks: &str) -> Result<usize> {
    tokio().block_on(async { Ok(read_rows(&session().await?, ks).await?.len()) })
}

/// Config text with a fixed metrics port.
pub fn with_metrics_port(config: &Path, port: u16) -> Result<()> {
    let text = std::fs::read_to_string(config)?.replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    std::fs::write(config, text)?;
    Ok(())
}

/// A test pipeline: a fresh topic (and its dead-letter topic), keyspace, group and config with a fixed
/// metrics port.
pub struct Pipeline {
    pub topic: String,
    pub ks: String,
    pub group: String,
    pub config: PathBuf,
    pub port: u16,
}

/// A [`Pipeline`] writing every navigation field to its column.
pub fn pipeline(name: &str, partitions: i32) -> Result<Pipeline> {
    pipeline_with(name, partitions, "", ALL_COLUMNS)
}

/// Creates the topics, keyspace and config of a [`Pipeline`] with the navigation mapping `columns`.
pub fn pipeline_with(
    name: &str,
    partitions: i32,
    extra_table: &str,
    columns: &str,
) -> Result<Pipeline> {
    let topic = unique(name);
    let ks = unique(name);
    let group = unique("grp");
    let dir = temp_dir(name)?;
    create_topic(&topic, partitions)?;
    create_topic(&format!("{topic}.dlq"), 1)?;
    tokio().block_on(async { create_keyspace(&session().await?, &ks).await })?;
    let config = write_config(&dir, &topic, &group, &ks, extra_table, columns)?;
    let port = free_port()?;
    with_metrics_port(&config, port)?;
    Ok(Pipeline {
        topic,
        ks,
        group,
        config,
        port,
    })
}

/// Records written so far by the process serving metrics on `port` (0 if it does not answer).
pub fn written(port: u16) -> f64 {
    metric_sum(
        &scrape(port),
        "shardline_messages_total",
        &["stage=\"written\""],
    )
}

/// Waits until the process on `port` wrote at least `n` records.
pub fn wait_written(port: u16, n: f64, timeout: Duration) -> Result<bool> {
    wait_until(timeout, || Ok(written(port) >= n))
}

/// Runs `shardline run --drain` and fails with its log unless it exits 0.
pub fn drain_ok(config: &Path, timeout: Duration, extra: &[&str]) -> Result<RunOutput> {
    let out = run_drain(config, timeout, extra)?;
    if !out.ok {
        bail!("run failed:\n{}", out.stderr);
    }
    Ok(out)
}

/// One dead letter: its headers, key and value.
pub struct Letter {
    pub headers: HashMap<String, String>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// Every record of `topic`'s dead-letter topic (partition 0), read from the beginning.
pub fn dead_letters(topic: &str) -> Result<Vec<Letter>> {
    use rdkafka::message::{Headers, Message};
    let dlq = format!("{topic}.dlq");
    let end = end_offsets(&dlq, 1)?.first().copied().unwrap_or(0);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("group.id", unique("dlqreader"))
        .set("enable.auto.commit", "false")
        .set("fetch.message.max.bytes", "2000000")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&dlq, 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let mut out = Vec::new();
    let start = Instant::now();
    while (out.len() as i64) < end && start.elapsed() < Duration::from_secs(60) {
        let Some(m) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = m?;
        let mut headers = HashMap::new();
        if let Some(h) = m.headers() {
            for x in h.iter() {
                let v = x.value.map(String::from_utf8_lossy).unwrap_or_default();
                headers.insert(x.key.to_string(), v.into_owned());
            }
        }
        out.push(Letter {
            headers,
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
        });
    }
    Ok(out)
}

/// Produces navigation events as given (partition, Kafka timestamp ms, event), registered under the
/// topic's value subject, and waits for every acknowledgement.
pub fn produce_events(
    topic: &str,
    events: &[(i32, i64, navigation::NavigationEvent)],
) -> Result<()> {
    let reg = RegistryClient::new(REGISTRY, Duration::from_secs(10));
    let schema_id = reg.register(&format!("{topic}-value"), navigation::SCHEMA)?;
    produce_framed(topic, schema_id, events)
}

/// Counts the deliveries the broker refused, so that a producer's flush proves every record landed.
#[derive(Default)]
pub struct DeliveryCount {
    failed: AtomicU32,
}

impl rdkafka::ClientContext for DeliveryCount {}

impl rdkafka::producer::ProducerContext for DeliveryCount {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        if r.is_err() {
            self.failed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A producer to `BROKERS` (acks=all, plus `extra` settings) whose deliveries [`flush_checked`]
/// proves.
pub fn checked_producer(
    extra: &[(&str, &str)],
) -> Result<rdkafka::producer::BaseProducer<DeliveryCount>> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", BROKERS).set("acks", "all");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    Ok(c.create_with_context(DeliveryCount::default())?)
}

/// Waits for every queued record of `producer`; an error if the broker refused any of them.
pub fn flush_checked(producer: &rdkafka::producer::BaseProducer<DeliveryCount>) -> Result<()> {
    use rdkafka::producer::Producer;
    producer.flush(Duration::from_secs(30))?;
    let failed = producer.context().failed.load(Ordering::SeqCst);
    if failed > 0 {
        bail!("{failed} deliveries refused by the broker");
    }
    Ok(())
}

/// Produces navigation events framed with `schema_id` (any schema whose binary encoding is the
/// navigation one), and waits for every acknowledgement: a refused delivery fails the helper.
pub fn produce_framed(
    topic: &str,
    schema_id: u32,
    events: &[(i32, i64, navigation::NavigationEvent)],
) -> Result<()> {
    use rdkafka::producer::BaseRecord;
    let producer = checked_producer(&[])?;
    for (partition, ts_ms, ev) in events {
        let mut datum = Vec::new();
        ev.encode(&mut datum);
        let mut payload = Vec::new();
        shardline::codec::frame::frame_into(schema_id, &datum, &mut payload);
        let rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
            .partition(*partition)
            .timestamp(*ts_ms)
            .key(ev.uid.as_bytes())
            .payload(payload.as_slice());
        if let Err((e, _)) = producer.send(rec) {
            bail!("produce: {e}");
        }
    }
    flush_checked(&producer)
        .with_context(|| format!("producing {} events to {topic}", events.len()))
}

/// Resident memory of a process in KiB (Linux /proc).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS line")
}

/// All rows of a query, as column vectors.
pub async fn rows(
    s: &scylla::client::session::Session,
    q: &str,
) -> Result<Vec<Vec<Option<CqlValue>>>> {
    let mut st = scylla::statement::Statement::new(q);
    st.set_page_size(5000);
    st.set_request_timeout(Some(Duration::from_secs(30)));
    let mut it = s
        .query_iter(st, &[])
        .await?
        .rows_stream::<scylla::value::Row>()?;
    let mut out = Vec::new();
    while let Some(r) = it.try_next().await? {
        out.push(r.columns);
    }
    Ok(out)
}
