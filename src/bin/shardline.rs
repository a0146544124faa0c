//! The `shardline` command: parses arguments, sets up tracing, calls the library.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use shardline::codec::{RegistryClient, SchemaResolver};
use shardline::config::Config;
use shardline::loadgen::{self, navigation, ProduceSpec};
use shardline::runtime::{self, RunOptions};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "shardline",
    version,
    about = "Thread-per-core Kafka → Avro → ScyllaDB stream processor"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the processor: one shard per configured core.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Exit once every assigned partition is consumed to its end and written.
        #[arg(long)]
        drain: bool,
        /// With --drain: how long the drained state must last before exiting (at least 200 ms).
        #[arg(long, default_value_t = 3000)]
        drain_idle_ms: u64,
        /// Write nothing (decode and map only): the benchmark's null sink.
        #[arg(long)]
        null_sink: bool,
        /// Write the run summary as JSON to this file at exit.
        #[arg(long)]
        summary: Option<PathBuf>,
    },
    /// Check the config against the live services (topics, subject, table, column types) without consuming.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Produce navigation events (Confluent wire format, keyed by uid).
    Produce(ProduceArgs),
    /// Create a topic (idempotent).
    CreateTopic {
        #[arg(
            long,
            env = "SHARDLINE_KAFKA_BROKERS",
            default_value = "127.0.0.1:9092"
        )]
        brokers: String,
        #[arg(long)]
        topic: String,
        #[arg(long, default_value_t = 8)]
        partitions: i32,
        /// Stamp records with the broker's append time (`message.timestamp.type=LogAppendTime`):
        /// `produce` then reports send → append, and shardline's stages start at the append.
        #[arg(long)]
        log_append_time: bool,
    },
    /// Size a deployment from measured costs: shards, hosts, partitions, in-flight, fetch settings.
    Plan(PlanArgs),
    /// Run CQL statements (schema set-up in scripts; no cqlsh needed).
    Cql {
        #[arg(long, env = "SHARDLINE_SCYLLA_NODES", default_value = "127.0.0.1:9042")]
        nodes: String,
        statements: Vec<String>,
    },
}

// Structs for the subcommands with too many arguments for one handler's parameter list. They carry
// no doc comment: the variant's stays the subcommand's help.
#[derive(Args)]
struct ProduceArgs {
    #[arg(
        long,
        env = "SHARDLINE_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    brokers: String,
    #[arg(
        long,
        env = "SHARDLINE_REGISTRY_URL",
        default_value = "http://127.0.0.1:8081/apis/ccompat/v7"
    )]
    registry_url: String,
    #[arg(long)]
    topic: String,
    /// Subject to register the schema under. Default `<topic>-value`.
    #[arg(long)]
    subject: Option<String>,
    /// Records to send.
    #[arg(long)]
    count: Option<u64>,
    /// Or send for this many seconds.
    #[arg(long)]
    duration_s: Option<u64>,
    /// Target msg/s, steady; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Timestamp of event 0 (ms); events advance 1 ms every 10. Default: now.
    #[arg(long)]
    base_ts_ms: Option<i64>,
    /// Distinct users.
    #[arg(long, default_value_t = 100_000)]
    uids: u64,
    /// Make every n-th record a poison record, cycling through the error classes (dead-letter tests).
    #[arg(long, default_value_t = 0)]
    poison_every: u64,
    /// Also report send → append over the records sent this many seconds after the start only
    /// (`send_to_append_steady`): the steady state, without the first seconds' connections and
    /// group joins. Default 0: no steady figure.
    #[arg(long, default_value_t = 0)]
    warmup_s: u64,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct PlanArgs {
    /// A bench report (results/bench/report.json) to take the costs from.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Or explicit costs: shardline CPU µs per message on the full path.
    #[arg(long)]
    cpu_us_per_msg: Option<f64>,
    /// Database CPU µs per message written.
    #[arg(long)]
    db_us_per_msg: Option<f64>,
    /// Kafka broker CPU µs per message consumed.
    #[arg(long)]
    broker_us_per_msg: Option<f64>,
    /// The hosts' other CPU µs per message (kernel network work and the like, charged to no
    /// process: the machine's busy CPU less the processes').
    #[arg(long)]
    other_us_per_msg: Option<f64>,
    /// Mean write latency (ms) at a moderate load, not at saturation.
    #[arg(long)]
    write_mean_ms: Option<f64>,
    /// Average record size (bytes).
    #[arg(long)]
    msg_bytes: Option<f64>,
    /// Target throughput (msg/s).
    #[arg(long)]
    msgs_per_s: f64,
    #[arg(long, default_value_t = 8)]
    cores_per_host: u32,
    #[arg(long, default_value_t = 0.3)]
    headroom: f64,
    /// Partitions of the topic, if fixed.
    #[arg(long)]
    partitions: Option<u32>,
    /// The database and the broker share the hosts' cores with shardline (one box, as in the bench).
    #[arg(long)]
    colocated: bool,
    /// Plan this many shards (to predict a given layout's ceiling) instead of sizing from the rate.
    #[arg(long)]
    shards: Option<u32>,
    /// Print the plan as JSON instead of the explained table and config fragment.
    #[arg(long)]
    json: bool,
    /// Write the per-host config fragment here.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn cql_text(v: &scylla::value::CqlValue) -> String {
    use scylla::value::CqlValue as V;
    match v {
        V::Text(s) | V::Ascii(s) => s.clone(),
        V::BigInt(i) => i.to_string(),
        V::Int(i) => i.to_string(),
        other => format!("{other:?}"),
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,scylla=warn,rdkafka=warn")
            }),
        )
        .with_writer(std::io::stderr)
        // Plain text when logs go to a file: tests and operators grep them.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = real_main(Cli::parse()) {
        eprintln!("shardline: {e:#}");
        std::process::exit(1);
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Run {
            config,
            drain,
            drain_idle_ms,
            null_sink,
            summary,
        } => run(
            &config,
            RunOptions {
                null_sink,
                drain,
                drain_idle_ms,
            },
            summary,
        ),
        Cmd::Check { config } => check(&config),
        Cmd::Produce(args) => produce(args),
        Cmd::CreateTopic {
            brokers,
            topic,
            partitions,
            log_append_time,
        } => create_topic(&brokers, &topic, partitions, log_append_time),
        Cmd::Plan(args) => plan(args),
        Cmd::Cql { nodes, statements } => cql(&nodes, &statements),
    }
}

/// The config file, validated, with the topics of `[[routes]] topic_regex` entries resolved against
/// the cluster's (once, at start-up).
fn load(config: &Path) -> anyhow::Result<Config> {
    let mut cfg = Config::load(config)?;
    if cfg.routes.iter().any(|r| r.topic_regex.is_some()) {
        let topics = shardline::kafka::list_topics(&cfg.kafka).context("listing topics")?;
        cfg.resolve_topic_regexes(&topics)?;
    }
    Ok(cfg)
}

fn run(config: &Path, options: RunOptions, summary: Option<PathBuf>) -> anyhow::Result<()> {
    let cfg = load(config)?;
    let report = shardline::check::check_live(&cfg).context("start-up check")?;
    tracing::info!(partitions = ?report.partitions, schema_id = ?report.schema_id, "start-up check passed");
    let registries_addr: std::net::SocketAddr =
        cfg.metrics.listen.parse().context("metrics.listen")?;
    let started = Instant::now();
    let running = runtime::start(Arc::new(cfg), options)?;
    let registries = running.registries.clone();
    let bound = shardline::metrics::http::serve(registries_addr, registries.clone())
        .with_context(|| format!("binding metrics endpoint {registries_addr}"))?;
    tracing::info!(shards = running.specs.len(), metrics = %format!("http://{bound}/metrics"), "running");
    let stop_rx = runtime::stop_requests_on_signals()?;
    let result = running.supervise(&stop_rx);
    let s = shardline::report::summarize(&registries, started.elapsed().as_secs_f64());
    let json = serde_json::to_string_pretty(&s)?;
    if let Some(p) = summary {
        std::fs::write(&p, &json).with_context(|| format!("writing {}", p.display()))?;
    }
    tracing::info!(
        consumed = s.consumed,
        written = s.written,
        dead_lettered = s.dead_lettered,
        msgs_per_s = format!("{:.0}", s.msgs_per_s),
        rows_per_batch = format!("{:.1}", s.batches.mean_rows.unwrap_or(0.0)),
        "run ended"
    );
    result?;
    Ok(())
}

fn check(config: &Path) -> anyhow::Result<()> {
    let cfg = load(config)?;
    let r = shardline::check::check_live(&cfg)?;
    println!("config OK");
    for (t, n) in &r.partitions {
        println!("  topic {t}: {n} partitions");
    }
    if let Some(id) = r.schema_id {
        println!("  subject {}: latest schema id {id}", cfg.subject());
    }
    for c in &r.columns {
        println!("  column {c}");
    }
    Ok(())
}

fn produce(args: ProduceArgs) -> anyhow::Result<()> {
    let ProduceArgs {
        brokers,
        registry_url,
        topic,
        subject,
        count,
        duration_s,
        rate,
        seed,
        base_ts_ms,
        uids,
        poison_every,
        warmup_s,
        quiet,
    } = args;
    if count.is_none() && duration_s.is_none() {
        bail!("give --count or --duration-s");
    }
    let reg = RegistryClient::new(&registry_url, Duration::from_secs(10));
    let subject = subject.unwrap_or_else(|| format!("{topic}-value"));
    let schema_id = reg
        .register(&subject, navigation::SCHEMA)
        .context("registering the schema")?;
    // The registry must give back what we registered (catches a wrong base URL early).
    reg.schema_by_id(schema_id)
        .context("reading the schema back")?;
    let spec = ProduceSpec {
        brokers,
        topic,
        schema_id,
        count,
        duration: duration_s.map(Duration::from_secs),
        rate,
        seed,
        base_ts_ms: base_ts_ms.unwrap_or_else(|| shardline::clock::now_us() / 1000),
        uids,
        poison_every,
        alt_schema_id: if poison_every > 0 {
            Some(reg.register(&format!("{subject}-iplong"), navigation::SCHEMA_IP_AS_LONG)?)
        } else {
            None
        },
        progress: !quiet,
        warmup: Duration::from_secs(warmup_s),
    };
    let s = loadgen::produce(&spec, &Default::default())?;
    eprintln!(
        "sent {} ({} acked, {} failed, {} poison) in {:.1}s: {:.0} msg/s, {:.1} MiB",
        s.sent,
        s.acked,
        s.failed,
        s.poison,
        s.seconds,
        s.rate_per_s,
        s.bytes as f64 / (1 << 20) as f64
    );
    println!("{}", serde_json::to_string(&s)?);
    if s.failed > 0 {
        bail!("{} records were not acknowledged", s.failed);
    }
    Ok(())
}

fn create_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    log_append_time: bool,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let configs: &[(&str, &str)] = if log_append_time {
        &[("message.timestamp.type", "LogAppendTime")]
    } else {
        &[]
    };
    rt.block_on(shardline::kafka::admin::create_topic_with(
        brokers, topic, partitions, configs,
    ))?;
    println!("topic {topic} ready ({partitions} partitions)");
    Ok(())
}

fn plan(args: PlanArgs) -> anyhow::Result<()> {
    let PlanArgs {
        report,
        cpu_us_per_msg,
        db_us_per_msg,
        broker_us_per_msg,
        other_us_per_msg,
        write_mean_ms,
        msg_bytes,
        msgs_per_s,
        cores_per_host,
        headroom,
        partitions,
        colocated,
        shards,
        json,
        out,
    } = args;
    let from_report: Option<serde_json::Value> = match &report {
        Some(p) => Some(serde_json::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )?),
        None => None,
    };
    let pick = |explicit: Option<f64>, key: &str| -> anyhow::Result<f64> {
        explicit
            .or_else(|| from_report.as_ref().and_then(|r| r["costs"][key].as_f64()))
            .with_context(|| {
                format!(
                    "give --{} or a --report with costs.{key}",
                    key.replace('_', "-")
                )
            })
    };
    let optional = |explicit: Option<f64>, key: &str| {
        explicit.or_else(|| from_report.as_ref().and_then(|r| r["costs"][key].as_f64()))
    };
    let costs = shardline::plan::Costs {
        cpu_us_per_msg: pick(cpu_us_per_msg, "cpu_us_per_msg")?,
        db_us_per_msg: optional(db_us_per_msg, "db_us_per_msg"),
        broker_us_per_msg: optional(broker_us_per_msg, "broker_us_per_msg"),
        other_us_per_msg: optional(other_us_per_msg, "other_us_per_msg"),
        write_mean_ms: pick(write_mean_ms, "write_mean_ms")?,
        msg_bytes: pick(msg_bytes, "msg_bytes")?,
    };
    let target = shardline::plan::Target {
        msgs_per_s,
        cores_per_host,
        headroom,
        partitions,
        colocated,
        shards,
    };
    let plan = shardline::plan::plan(&costs, &target).map_err(anyhow::Error::msg)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(());
    }
    print!("{}", plan.explain(&costs, &target));
    let fragment = plan.config_fragment();
    match out {
        Some(p) => {
            std::fs::write(&p, &fragment).with_context(|| format!("writing {}", p.display()))?
        }
        None => print!("\n{fragment}"),
    }
    Ok(())
}

fn cql(nodes: &str, statements: &[String]) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let session = scylla::client::session_builder::SessionBuilder::new()
            .known_nodes(nodes.split(','))
            .build()
            .await?;
        for s in statements {
            let mut stmt = scylla::statement::Statement::new(s.as_str());
            stmt.set_request_timeout(Some(Duration::from_secs(120)));
            let res = session
                .query_unpaged(stmt, &[])
                .await
                .with_context(|| format!("executing {s}"))?;
            // SELECTs print their rows, one per line, columns separated by tabs.
            if let Ok(rows) = res.into_rows_result() {
                for row in rows.rows::<scylla::value::Row>()? {
                    let cols: Vec<String> = row?
                        .columns
                        .iter()
                        .map(|c| c.as_ref().map(cql_text).unwrap_or_else(|| "null".into()))
                        .collect();
                    println!("{}", cols.join("\t"));
                }
            }
        }
        anyhow::Ok(())
    })
}
