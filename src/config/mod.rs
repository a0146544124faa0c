//! Configuration: the TOML file, its defaults, environment overrides and one `validate()`.
//!
//! Guarantee: a [`Config`] returned by [`Config::load`] has passed [`Config::validate`], so every shard
//! starts from the same checked values; unknown keys are rejected (`deny_unknown_fields`), so a typo
//! fails loudly instead of silently falling back to a default.
//! Precondition: none; this module does no I/O beyond reading the file and the environment. Checks
//! against live services (topic exists, table columns) live in `shardline check` (`crate::check`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use thiserror::Error;

/// Errors of the config boundary. None is retryable: the operator has to change the file.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl ConfigError {
    /// Config errors never go away by retrying.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub schema: SchemaConfig,
    pub scylla: ScyllaConfig,
    /// Field → column mapping and write options of the single table.
    pub table: TableConfig,
    #[serde(default)]
    pub shards: ShardsConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The processor chain; `[table]` is always its last sink. Default: none (decode → insert).
    #[serde(default)]
    pub processors: Vec<ProcessorConfig>,
    /// Fields that custom (Rust) processor steps add to the record, so mappings may name them.
    /// Default: none.
    #[serde(default)]
    pub custom_fields: Vec<String>,
}

/// Kafka source and dead-letter sink. Its `Debug` redacts secret-looking passthrough values.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`. Env override: `SHARDLINE_KAFKA_BROKERS`.
    pub brokers: String,
    /// Consumer group shared by every shard of every shardline process of this pipeline.
    pub group_id: String,
    /// Topics to consume.
    pub topics: Vec<String>,
    /// Where records that cannot be processed go, before their offset is committed.
    /// Default: none, which makes an unprocessable record stop its shard (nothing is skipped silently).
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// How often stored offsets are committed (`auto.commit.interval.ms`). Default 1000.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// `auto.offset.reset` for a group without committed offsets. Default `earliest`.
    #[serde(default = "default_offset_reset")]
    pub offset_reset: String,
    /// `session.timeout.ms`. Default 10000.
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// Extra librdkafka properties, passed through verbatim to consumer and producer
    /// (for example `security.protocol`, `sasl.mechanism`, `fetch.min.bytes`).
    /// `sasl.password` may be given as `SHARDLINE_KAFKA_SASL_PASSWORD` instead.
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
}

/// Passthrough keys whose values are never printed.
fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password")
        || k.contains("secret")
        || k.ends_with(".key.pem")
        || k.contains("sasl.oauthbearer.config")
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted: BTreeMap<&str, &str> = self
            .librdkafka
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    if is_secret_key(k) {
                        "<redacted>"
                    } else {
                        v.as_str()
                    },
                )
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("topics", &self.topics)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("commit_interval_ms", &self.commit_interval_ms)
            .field("offset_reset", &self.offset_reset)
            .field("session_timeout_ms", &self.session_timeout_ms)
            .field("librdkafka", &redacted)
            .finish()
    }
}

/// Where writer schemas come from.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaConfig {
    /// Confluent-compatible registry base URL (Apicurio: `http://host:8081/apis/ccompat/v7`).
    /// Records must then be in the Confluent wire format. Env override: `SHARDLINE_REGISTRY_URL`.
    #[serde(default)]
    pub registry_url: Option<String>,
    /// Raw Avro instead: every record is a bare datum written with this schema (a `.avsc` file).
    #[serde(default)]
    pub schema_file: Option<String>,
    /// Subject whose latest version is checked against the table at start-up.
    /// Default `<first topic>-value` (TopicNameStrategy).
    #[serde(default)]
    pub subject: Option<String>,
    /// Registry request timeout. Default 5000.
    #[serde(default = "default_registry_timeout_ms")]
    pub registry_timeout_ms: u64,
}

/// The CQL cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScyllaConfig {
    /// Contact points `host:port`. Env override: `SHARDLINE_SCYLLA_NODES` (comma-separated).
    pub nodes: Vec<String>,
    /// Username; the password comes from `SHARDLINE_SCYLLA_PASSWORD` only, never from the file.
    #[serde(default)]
    pub username: Option<String>,
    /// Consistency of writes: `one`, `local_one`, `quorum`, `local_quorum`, `all`... Default `local_quorum`.
    #[serde(default = "default_consistency")]
    pub consistency: String,
    /// Per-request timeout. Default 5000.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Prefer replicas of this datacenter (token-aware either way). Default: none.
    #[serde(default)]
    pub local_datacenter: Option<String>,
    /// Writes in flight per shard: the shard's memory bound and the database's concurrency. Default 256.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight_per_shard: usize,
    /// TLS to the database: a PEM CA bundle to verify the nodes with. Default: none (plain TCP).
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    /// Client certificate and key (PEM) for mutual TLS. Default: none.
    #[serde(default)]
    pub tls_cert_file: Option<String>,
    #[serde(default)]
    pub tls_key_file: Option<String>,
}

/// Where and how rows are written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    pub keyspace: String,
    pub table: String,
    /// Column name → record field name. Checked against the live table at start-up.
    pub columns: BTreeMap<String, String>,
    /// Fixed TTL in seconds; 0 means no TTL. Default 0. Exclusive with `ttl_field`.
    #[serde(default)]
    pub ttl_seconds: u32,
    /// Take the TTL (seconds, int or long) from this record field instead.
    #[serde(default)]
    pub ttl_field: Option<String>,
    /// Write timestamp: `kafka` (the record timestamp in µs, the default: a replay rewrites identical
    /// cells), `field` (from `timestamp_field`, a timestamp-millis/micros or long µs), `fixed` (the
    /// constant `timestamp_fixed_us`), or `now`.
    #[serde(default = "default_timestamp_source")]
    pub timestamp_source: String,
    /// The field for `timestamp_source = "field"`.
    #[serde(default)]
    pub timestamp_field: Option<String>,
    /// The write timestamp in µs for `timestamp_source = "fixed"`.
    #[serde(default)]
    pub timestamp_fixed_us: Option<i64>,
    /// What a null field does: `unset` (the default: the column is not written, no tombstone) or
    /// `null` (writes a CQL null, which is a tombstone and overwrites an earlier value).
    #[serde(default = "default_null_values")]
    pub null_values: String,
}

impl TableConfig {
    /// The checked write-timestamp source.
    pub fn timestamp_source(&self) -> Result<TimestampSource, ConfigError> {
        if self.timestamp_fixed_us.is_some() != (self.timestamp_source == "fixed") {
            return Err(ConfigError::Invalid(
                "table.timestamp_fixed_us goes with table.timestamp_source = \"fixed\", and only with it".into(),
            ));
        }
        match (self.timestamp_source.as_str(), &self.timestamp_field) {
            ("fixed", None) => Ok(TimestampSource::Fixed(
                self.timestamp_fixed_us.unwrap_or_default(),
            )),
            ("kafka", None) => Ok(TimestampSource::Kafka),
            ("now", None) => Ok(TimestampSource::Now),
            ("field", Some(f)) => Ok(TimestampSource::Field(f.clone())),
            ("field", None) => Err(ConfigError::Invalid(
                "table.timestamp_source = \"field\" needs table.timestamp_field".into(),
            )),
            ("kafka" | "now" | "fixed", Some(_)) => Err(ConfigError::Invalid(
                "table.timestamp_field is only used with table.timestamp_source = \"field\"".into(),
            )),
            (other, _) => Err(ConfigError::Invalid(format!(
                "table.timestamp_source '{other}' is not one of kafka, field, fixed, now"
            ))),
        }
    }
}

/// One step of the processor chain (`[[processors]]`), in config order. Filters and lookups change or
/// drop the record and run in order; inserts and produces only read it and run concurrently, after them.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProcessorConfig {
    /// Keep (or, with `keep = false`, drop) records whose `field` matches every condition given.
    Filter {
        name: String,
        field: String,
        /// Equal to this value (compared as text: enums by symbol, numbers in decimal).
        #[serde(default)]
        equals: Option<toml::Value>,
        /// One of these values (as text).
        #[serde(default, rename = "in")]
        one_of: Option<Vec<toml::Value>>,
        /// Present (not null) when true; absent when false.
        #[serde(default)]
        present: Option<bool>,
        /// Numeric comparisons.
        #[serde(default)]
        gt: Option<f64>,
        #[serde(default)]
        ge: Option<f64>,
        #[serde(default)]
        lt: Option<f64>,
        #[serde(default)]
        le: Option<f64>,
        /// Keep matching records (default true); false drops them instead.
        #[serde(default = "default_true")]
        keep: bool,
    },
    /// A prepared SELECT by key; its columns are merged into the record under new names.
    Lookup {
        name: String,
        /// `SELECT a, b FROM ks.t WHERE k = ?` with one `?` per key field.
        query: String,
        key_fields: Vec<String>,
        /// Selected column → record field it fills.
        columns: BTreeMap<String, String>,
        /// Per-shard cache of lookups (entries); 0 disables it. Default 10000.
        #[serde(default = "default_cache_entries")]
        cache_entries: usize,
        /// How long a cached answer (or a cached miss) is trusted. Default 60000.
        #[serde(default = "default_cache_ttl_ms")]
        cache_ttl_ms: u64,
        /// `drop` the record, fill `defaults`, or `dead_letter` it. Default `default`.
        #[serde(default = "default_on_miss")]
        on_miss: String,
        /// Field → value used on a miss with `on_miss = "default"` (missing ones stay null).
        #[serde(default)]
        defaults: BTreeMap<String, toml::Value>,
        /// Per-request timeout. Default 1000.
        #[serde(default = "default_step_timeout_ms")]
        timeout_ms: u64,
        /// Speculative execution: send the SELECT to another replica after this delay. Default: off.
        #[serde(default)]
        speculative_delay_ms: Option<u64>,
    },
    /// One more table written from the record, with its own mapping, TTL and write timestamp.
    Insert { name: String, table: TableConfig },
    /// Re-encode the record with a registered schema, Confluent-framed, to an output topic. The input
    /// offset is committed only after the broker acknowledged it.
    Produce {
        name: String,
        topic: String,
        /// The output Avro schema (JSON text); its fields are read from the record by name.
        schema: String,
        /// Registry subject. Default `<topic>-value`.
        #[serde(default)]
        subject: Option<String>,
        /// Field whose value keys the output record. Default: the input record's key.
        #[serde(default)]
        key_field: Option<String>,
    },
}

impl ProcessorConfig {
    pub fn name(&self) -> &str {
        match self {
            ProcessorConfig::Filter { name, .. }
            | ProcessorConfig::Lookup { name, .. }
            | ProcessorConfig::Insert { name, .. }
            | ProcessorConfig::Produce { name, .. } => name,
        }
    }

    /// Whether the step only reads the record (a sink).
    pub fn is_sink(&self) -> bool {
        matches!(
            self,
            ProcessorConfig::Insert { .. } | ProcessorConfig::Produce { .. }
        )
    }
}

fn default_true() -> bool {
    true
}
fn default_cache_entries() -> usize {
    10_000
}
fn default_cache_ttl_ms() -> u64 {
    60_000
}
fn default_on_miss() -> String {
    "default".into()
}
fn default_step_timeout_ms() -> u64 {
    1000
}

/// Placement: which cores run shards.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardsConfig {
    /// Cores that each run one shard. Default: every online core.
    #[serde(default)]
    pub cores: Option<Vec<usize>>,
    /// Core for each shard's tokio bridge thread (same length as `cores`). Default: the shard's own core.
    #[serde(default)]
    pub bridge_cores: Option<Vec<usize>>,
    /// glommio io_uring buffer memory per shard. Default 2 MiB (shards do no file I/O).
    #[serde(default = "default_io_memory_bytes")]
    pub io_memory_bytes: usize,
    /// How long a graceful stop waits for in-flight writes before committing what is done. Default 10000.
    #[serde(default = "default_shutdown_deadline_ms")]
    pub shutdown_deadline_ms: u64,
}

impl Default for ShardsConfig {
    fn default() -> Self {
        ShardsConfig {
            cores: None,
            bridge_cores: None,
            io_memory_bytes: default_io_memory_bytes(),
            shutdown_deadline_ms: default_shutdown_deadline_ms(),
        }
    }
}

/// The `/metrics` endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Bind address. Default `127.0.0.1:9898`: loopback unless configured otherwise.
    #[serde(default = "default_metrics_listen")]
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: default_metrics_listen(),
        }
    }
}

fn default_commit_interval_ms() -> u64 {
    1000
}
fn default_offset_reset() -> String {
    "earliest".into()
}
fn default_session_timeout_ms() -> u64 {
    10_000
}
fn default_registry_timeout_ms() -> u64 {
    5000
}
fn default_consistency() -> String {
    "local_quorum".into()
}
fn default_request_timeout_ms() -> u64 {
    5000
}
fn default_max_in_flight() -> usize {
    256
}
fn default_timestamp_source() -> String {
    "kafka".into()
}
fn default_null_values() -> String {
    "unset".into()
}
fn default_io_memory_bytes() -> usize {
    2 << 20
}
fn default_shutdown_deadline_ms() -> u64 {
    10_000
}
fn default_metrics_listen() -> String {
    "127.0.0.1:9898".into()
}

/// Where the write timestamp comes from, as checked by `validate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimestampSource {
    Kafka,
    Field(String),
    /// A constant write timestamp in µs.
    Fixed(i64),
    Now,
}

/// Librdkafka keys that shardline owns: setting them through the passthrough map would break
/// the at-least-once contract.
const OWNED_RDKAFKA_KEYS: &[&str] = &[
    "enable.auto.offset.store",
    "enable.auto.commit",
    "group.id",
    "bootstrap.servers",
    "partition.assignment.strategy",
];

impl Config {
    /// Reads, applies environment overrides, and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })?;
        config.apply_env(|k| std::env::var(k).ok());
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text without validating (tests and `load`).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "<text>".into(),
            message: e.to_string(),
        })
    }

    /// Environment overrides for addresses and secrets; `get` is injected so tests need no env.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        if let Some(b) = get("SHARDLINE_KAFKA_BROKERS") {
            self.kafka.brokers = b;
        }
        if let Some(p) = get("SHARDLINE_KAFKA_SASL_PASSWORD") {
            self.kafka.librdkafka.insert("sasl.password".into(), p);
        }
        if let Some(u) = get("SHARDLINE_REGISTRY_URL") {
            self.schema.registry_url = Some(u);
        }
        if let Some(n) = get("SHARDLINE_SCYLLA_NODES") {
            self.scylla.nodes = n.split(',').map(|s| s.trim().to_string()).collect();
        }
    }

    /// Every check that needs no service. Each message names the key to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.kafka.brokers.trim().is_empty() {
            return bad("kafka.brokers is empty: give at least one host:port".into());
        }
        if self.kafka.group_id.trim().is_empty() {
            return bad("kafka.group_id is empty".into());
        }
        if self.kafka.topics.is_empty() || self.kafka.topics.iter().any(|t| t.trim().is_empty()) {
            return bad("kafka.topics must list at least one non-empty topic".into());
        }
        if let Some(dlq) = &self.kafka.dead_letter_topic {
            if self.kafka.topics.contains(dlq) {
                return bad(format!(
                    "kafka.dead_letter_topic '{dlq}' is also a source topic: dead letters would loop"
                ));
            }
        }
        if self.kafka.commit_interval_ms == 0 {
            return bad("kafka.commit_interval_ms must be > 0".into());
        }
        if !["earliest", "latest"].contains(&self.kafka.offset_reset.as_str()) {
            return bad(format!(
                "kafka.offset_reset must be 'earliest' or 'latest', not '{}'",
                self.kafka.offset_reset
            ));
        }
        for key in self.kafka.librdkafka.keys() {
            if OWNED_RDKAFKA_KEYS.contains(&key.as_str()) {
                return bad(format!(
                    "kafka.librdkafka.\"{key}\" is set by shardline itself (at-least-once offset handling, eager \
                     assignment); remove it from the passthrough map"
                ));
            }
        }
        match (&self.schema.registry_url, &self.schema.schema_file) {
            (None, None) => {
                return bad(
                    "schema: set registry_url (Confluent wire format) or schema_file (raw Avro)"
                        .into(),
                )
            }
            (Some(_), Some(_)) => {
                return bad("schema: registry_url and schema_file are exclusive; keep one".into())
            }
            _ => {}
        }
        if self.scylla.nodes.is_empty() {
            return bad("scylla.nodes must list at least one host:port".into());
        }
        if crate::sink::parse_consistency(&self.scylla.consistency).is_none() {
            return bad(format!(
                "scylla.consistency '{}' is not one of any, one, two, three, quorum, all, local_quorum, each_quorum, local_one",
                self.scylla.consistency
            ));
        }
        if self.scylla.request_timeout_ms == 0 {
            return bad("scylla.request_timeout_ms must be > 0".into());
        }
        if self.scylla.tls_cert_file.is_some() != self.scylla.tls_key_file.is_some() {
            return bad(
                "scylla.tls_cert_file and scylla.tls_key_file go together: set both or neither"
                    .into(),
            );
        }
        if self.scylla.tls_cert_file.is_some() && self.scylla.tls_ca_file.is_none() {
            return bad(
                "scylla.tls_cert_file needs scylla.tls_ca_file (TLS is on only with a CA)".into(),
            );
        }
        if self.scylla.max_in_flight_per_shard == 0 {
            return bad("scylla.max_in_flight_per_shard must be at least 1".into());
        }
        if self.table.keyspace.is_empty() || self.table.table.is_empty() {
            return bad("table.keyspace and table.table must be set".into());
        }
        if self.table.columns.is_empty() {
            return bad("table.columns must map at least one column to a field".into());
        }
        if self.table.ttl_seconds > 0 && self.table.ttl_field.is_some() {
            return bad("table.ttl_seconds and table.ttl_field are exclusive; keep one".into());
        }
        self.timestamp_source()?;
        if !["unset", "null"].contains(&self.table.null_values.as_str()) {
            return bad(format!(
                "table.null_values must be 'unset' or 'null', not '{}'",
                self.table.null_values
            ));
        }
        if let Some(cores) = &self.shards.cores {
            if cores.is_empty() {
                return bad(
                    "shards.cores is empty: list at least one core, or remove it to use every core"
                        .into(),
                );
            }
            let mut sorted = cores.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if sorted.len() != cores.len() {
                return bad("shards.cores lists a core twice: one shard per core".into());
            }
        }
        if let (Some(b), cores) = (&self.shards.bridge_cores, &self.shards.cores) {
            let n = cores.as_ref().map(Vec::len);
            if n != Some(b.len()) {
                return bad(
                    "shards.bridge_cores needs shards.cores, with one bridge core per shard core"
                        .into(),
                );
            }
        }
        let mut seen_sink = false;
        let mut names = std::collections::HashSet::new();
        for p in &self.processors {
            let n = p.name();
            if n.is_empty() || !names.insert(n.to_string()) {
                return bad(format!(
                    "processors: every step needs a unique, non-empty name ('{n}')"
                ));
            }
            if p.is_sink() {
                seen_sink = true;
            } else if seen_sink {
                return bad(format!(
                    "processors: '{n}' changes the record but comes after an insert or produce; put filters and lookups first"
                ));
            }
            match p {
                ProcessorConfig::Lookup {
                    on_miss,
                    key_fields,
                    query,
                    columns,
                    ..
                } => {
                    if !["drop", "default", "dead_letter"].contains(&on_miss.as_str()) {
                        return bad(format!("processors.{n}.on_miss must be drop, default or dead_letter, not '{on_miss}'"));
                    }
                    if key_fields.is_empty() || query.matches('?').count() != key_fields.len() {
                        return bad(format!(
                            "processors.{n}: the query needs one '?' per key field ({})",
                            key_fields.len()
                        ));
                    }
                    if columns.is_empty() {
                        return bad(format!(
                            "processors.{n}.columns must map at least one selected column"
                        ));
                    }
                }
                ProcessorConfig::Insert { table, .. } => {
                    table.timestamp_source()?;
                    if table.columns.is_empty() {
                        return bad(format!(
                            "processors.{n}.table.columns must map at least one column"
                        ));
                    }
                }
                ProcessorConfig::Produce { topic, .. } => {
                    if self.kafka.topics.contains(topic) {
                        return bad(format!(
                            "processors.{n}.topic '{topic}' is a source topic: records would loop"
                        ));
                    }
                }
                ProcessorConfig::Filter { .. } => {}
            }
        }
        if self.shards.io_memory_bytes < 64 * 1024 {
            return bad("shards.io_memory_bytes must be at least 65536".into());
        }
        if self.metrics.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad(format!(
                "metrics.listen '{}' is not an ip:port socket address",
                self.metrics.listen
            ));
        }
        Ok(())
    }

    /// The checked write-timestamp source of the primary table.
    pub fn timestamp_source(&self) -> Result<TimestampSource, ConfigError> {
        self.table.timestamp_source()
    }

    /// The subject checked at start-up.
    pub fn subject(&self) -> String {
        self.schema.subject.clone().unwrap_or_else(|| {
            format!(
                "{}-value",
                self.kafka.topics.first().map(String::as_str).unwrap_or("")
            )
        })
    }

    /// Record fields decoded from Avro, in slot order: the primary table's mapped, TTL and timestamp
    /// fields, then what the processors read (filter fields, lookup keys, insert and produce fields),
    /// except the fields lookups add.
    pub fn needed_fields(&self) -> Vec<String> {
        let enriched = self.enriched_fields();
        let mut fields: Vec<String> = Vec::new();
        let mut push = |f: &str| {
            if !fields.iter().any(|x| x == f) && !enriched.iter().any(|x| x == f) {
                fields.push(f.to_string());
            }
        };
        let table_fields = |t: &TableConfig, push: &mut dyn FnMut(&str)| {
            for f in t.columns.values() {
                push(f);
            }
            if let Some(f) = &t.ttl_field {
                push(f);
            }
            if let Some(f) = &t.timestamp_field {
                push(f);
            }
        };
        table_fields(&self.table, &mut push);
        for p in &self.processors {
            match p {
                ProcessorConfig::Filter { field, .. } => push(field),
                ProcessorConfig::Lookup { key_fields, .. } => {
                    key_fields.iter().for_each(|f| push(f))
                }
                ProcessorConfig::Insert { table, .. } => table_fields(table, &mut push),
                ProcessorConfig::Produce {
                    schema, key_field, ..
                } => {
                    for f in schema_field_names(schema) {
                        push(&f);
                    }
                    if let Some(k) = key_field {
                        push(k);
                    }
                }
            }
        }
        fields
    }

    /// Fields the lookups (and custom steps) add to the record, in chain order.
    pub fn enriched_fields(&self) -> Vec<String> {
        let mut out: Vec<String> = self.custom_fields.clone();
        for p in &self.processors {
            if let ProcessorConfig::Lookup { columns, .. } = p {
                for f in columns.values() {
                    if !out.contains(f) {
                        out.push(f.clone());
                    }
                }
            }
        }
        out
    }

    /// Every record slot: decoded fields, then enriched ones.
    pub fn all_fields(&self) -> Vec<String> {
        let mut f = self.needed_fields();
        f.extend(self.enriched_fields());
        f
    }
}

/// The top-level field names of a record schema's JSON (empty if it is not one).
pub fn schema_field_names(schema_json: &str) -> Vec<String> {
    serde_json::from_str::<serde_json::Value>(schema_json)
        .ok()
        .and_then(|v| {
            v.get("fields")?.as_array().map(|fs| {
                fs.iter()
                    .filter_map(|f| f.get("name")?.as_str().map(String::from))
                    .collect()
            })
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const MINIMAL: &str = r#"
[kafka]
brokers = "127.0.0.1:9092"
group_id = "g"
topics = ["navigation"]
dead_letter_topic = "navigation.dlq"

[schema]
registry_url = "http://127.0.0.1:8081/apis/ccompat/v7"

[scylla]
nodes = ["127.0.0.1:9042"]

[table]
keyspace = "ks"
table = "events"
columns = { uid = "uid", url = "url" }
"#;

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = Config::parse(MINIMAL).expect("minimal config parses");
        c.validate().expect("minimal config is valid");
        assert_eq!(c.kafka.commit_interval_ms, 1000);
        assert_eq!(c.scylla.consistency, "local_quorum");
        assert_eq!(c.scylla.max_in_flight_per_shard, 256);
        assert_eq!(c.metrics.listen, "127.0.0.1:9898");
        assert_eq!(c.shards.io_memory_bytes, 2 << 20);
        assert_eq!(c.timestamp_source().expect("valid"), TimestampSource::Kafka);
        assert_eq!(c.subject(), "navigation-value");
    }

    #[test]
    fn unknown_key_is_rejected() {
        let text = MINIMAL.replace("group_id = \"g\"", "group_id = \"g\"\ngroup_idd = \"x\"");
        match Config::parse(&text) {
            Err(ConfigError::Parse { message, .. }) => {
                assert!(message.contains("group_idd"), "{message}")
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    fn invalid(text: &str) -> String {
        let c = Config::parse(text).expect("parses");
        match c.validate() {
            Err(ConfigError::Invalid(m)) => m,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn validate_messages_name_the_key() {
        assert!(invalid(&MINIMAL.replace(
            "dead_letter_topic = \"navigation.dlq\"",
            "dead_letter_topic = \"navigation\""
        ))
        .contains("kafka.dead_letter_topic"));
        assert!(invalid(&MINIMAL.replace(
            "nodes = [\"127.0.0.1:9042\"]",
            "nodes = []\nconsistency = \"lots\""
        ))
        .contains("scylla.nodes"));
        assert!(
            invalid(&format!("{MINIMAL}ttl_seconds = 5\nttl_field = \"t\"\n"))
                .contains("exclusive")
        );
        assert!(invalid(&format!("{MINIMAL}timestamp_source = \"field\"\n"))
            .contains("timestamp_field"));
        assert!(invalid(&format!("{MINIMAL}[shards]\ncores = [0, 0]\n")).contains("twice"));
        assert!(
            invalid(&format!("{MINIMAL}[metrics]\nlisten = \"nowhere\"\n"))
                .contains("metrics.listen")
        );
    }

    #[test]
    fn passthrough_cannot_override_owned_keys() {
        let text = MINIMAL.replace(
            "dead_letter_topic = \"navigation.dlq\"",
            "dead_letter_topic = \"navigation.dlq\"\n[kafka.librdkafka]\n\"enable.auto.offset.store\" = \"true\"",
        );
        assert!(invalid(&text).contains("enable.auto.offset.store"));
    }

    #[test]
    fn env_overrides_brokers_nodes_and_secrets() {
        let mut c = Config::parse(MINIMAL).expect("parses");
        c.apply_env(|k| match k {
            "SHARDLINE_KAFKA_BROKERS" => Some("k1:9092,k2:9092".into()),
            "SHARDLINE_SCYLLA_NODES" => Some("s1:9042, s2:9042".into()),
            "SHARDLINE_KAFKA_SASL_PASSWORD" => Some("hunter2".into()),
            _ => None,
        });
        assert_eq!(c.kafka.brokers, "k1:9092,k2:9092");
        assert_eq!(c.scylla.nodes, vec!["s1:9042", "s2:9042"]);
        assert_eq!(
            c.kafka.librdkafka.get("sasl.password").map(String::as_str),
            Some("hunter2")
        );
    }

    #[test]
    fn shipped_profiles_parse_and_validate() {
        for (name, text) in [
            ("navigation", include_str!("../../tuning/navigation.toml")),
            ("latency", include_str!("../../tuning/latency.toml")),
            ("throughput", include_str!("../../tuning/throughput.toml")),
            ("enrichment", include_str!("../../tuning/enrichment.toml")),
        ] {
            let c = Config::parse(text).unwrap_or_else(|e| panic!("tuning/{name}.toml: {e}"));
            c.validate()
                .unwrap_or_else(|e| panic!("tuning/{name}.toml: {e}"));
        }
        let latency = Config::parse(include_str!("../../tuning/latency.toml")).expect("parses");
        let throughput =
            Config::parse(include_str!("../../tuning/throughput.toml")).expect("parses");
        assert!(latency.scylla.max_in_flight_per_shard < throughput.scylla.max_in_flight_per_shard);
        assert_eq!(latency.shards.bridge_cores, Some(vec![1, 2, 3]));
    }

    #[test]
    fn the_enrichment_pipeline_reads_and_adds_the_right_fields() {
        let c = Config::parse(include_str!("../../tuning/enrichment.toml")).expect("parses");
        c.validate().expect("valid");
        assert_eq!(c.enriched_fields(), vec!["user_segment"]);
        let decoded = c.needed_fields();
        assert!(
            !decoded.contains(&"user_segment".to_string()),
            "lookup outputs are not decoded"
        );
        for f in ["uid", "ts", "url", "event_id", "event_type"] {
            assert!(decoded.contains(&f.to_string()), "{f} is decoded");
        }
        assert_eq!(c.processors.len(), 3);
        assert!(c.processors[1].is_sink() && !c.processors[0].is_sink());
    }

    #[test]
    fn chain_order_and_lookup_options_are_checked() {
        let base = include_str!("../../tuning/enrichment.toml");
        let swapped = format!(
            "{base}\n[[processors]]\nkind = \"filter\"\nname = \"late\"\nfield = \"uid\"\npresent = true\n"
        );
        assert!(invalid(&swapped).contains("'late' changes the record but comes after"));
        let bad_miss = base.replace("on_miss = \"default\"", "on_miss = \"ignore\"");
        assert!(invalid(&bad_miss).contains("on_miss"));
        let bad_q = base.replace("WHERE uid = ?", "WHERE uid = ? AND x = ?");
        assert!(invalid(&bad_q).contains("one '?' per key field"));
    }

    #[test]
    fn needed_fields_are_deduplicated_in_slot_order() {
        let text = format!("{MINIMAL}timestamp_source = \"field\"\ntimestamp_field = \"ts\"\n");
        let c = Config::parse(&text).expect("parses");
        assert_eq!(c.needed_fields(), vec!["uid", "url", "ts"]);
    }
}
