//! Configuration: the TOML file, its defaults, environment overrides and one `validate()`.
//!
//! Guarantee: a [`Config`] returned by [`Config::load`] has passed [`Config::validate`], so every shard
//! starts from the same checked values; unknown keys are rejected (`deny_unknown_fields`), so a typo
//! fails loudly instead of silently falling back to a default. Closed sets of values are enums and
//! durations are [`Duration`]s, checked while parsing; the file still spells durations in milliseconds
//! (the `*_ms` keys).
//! Precondition: none; this module does no I/O beyond reading the file and the environment. Checks
//! against live services (topic exists, table columns) live in `shardline check` (the `check` module).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
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
    /// More topics with their own table and processors, consumed by the same shards (see
    /// [`RouteConfig`]). Default: none (the primary route only).
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
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
    /// Whether a dead letter carries its source record's headers, as Kafka Connect's dead-letter
    /// queue does (they are copied when the record is consumed: it may fail long after). Reading
    /// them costs about 0.17 µs of CPU per record even when a record has none: librdkafka
    /// allocates and frees a parse buffer per record to read a header count of 0. `false` when the
    /// producers send no headers or the dead letters need none: a dead letter then carries
    /// shardline's own headers only. Headers mapped to columns are read either way. Default `true`.
    #[serde(default = "default_true")]
    pub dead_letter_source_headers: bool,
    /// How often stored offsets are committed (`auto.commit.interval.ms`). Key `commit_interval_ms`,
    /// in milliseconds. Default 1000 ms.
    #[serde(
        rename = "commit_interval_ms",
        default = "default_commit_interval",
        deserialize_with = "millis"
    )]
    pub commit_interval: Duration,
    /// `auto.offset.reset` for a group without committed offsets: `earliest` or `latest`.
    /// Default `earliest`.
    #[serde(default, deserialize_with = "de_offset_reset")]
    pub offset_reset: OffsetReset,
    /// `session.timeout.ms`. Key `session_timeout_ms`, in milliseconds. Default 10000 ms.
    #[serde(
        rename = "session_timeout_ms",
        default = "default_session_timeout",
        deserialize_with = "millis"
    )]
    pub session_timeout: Duration,
    /// The most records one partition's offset tracker may hold (done ones waiting behind an unfinished
    /// record included) before that partition is paused; it resumes at half. Bounds memory when one
    /// record retries for a long time. Default 100000.
    #[serde(default = "default_max_pending_per_partition")]
    pub max_pending_per_partition: usize,
    /// How the record key is read for `kafka.key` columns (and a tombstone's delete): `string`
    /// (UTF-8, the default; a key that is not is a record error) or `bytes`. Default `string`.
    #[serde(default, deserialize_with = "de_key_format")]
    pub key_format: KeyFormat,
    /// Extra librdkafka properties, passed through verbatim to consumer and producer
    /// (for example `security.protocol`, `sasl.mechanism`, `fetch.min.bytes`).
    /// `sasl.password` may be given as `SHARDLINE_KAFKA_SASL_PASSWORD` instead. The consumers'
    /// `statistics.interval.ms` (default 5000) sets how often the lag gauges update and drain mode
    /// sees the fetchers; 1 to 9999 (drain mode's fallback needs statistics fresher than its 10 s
    /// reports). Default: empty.
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
}

fn default_max_pending_per_partition() -> usize {
    100_000
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
            .field(
                "dead_letter_source_headers",
                &self.dead_letter_source_headers,
            )
            .field("commit_interval", &self.commit_interval)
            .field("offset_reset", &self.offset_reset)
            .field("session_timeout", &self.session_timeout)
            .field("max_pending_per_partition", &self.max_pending_per_partition)
            .field("key_format", &self.key_format)
            .field("librdkafka", &redacted)
            .finish()
    }
}

/// Where writer schemas come from. Its `Debug` redacts the registry password and token.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaConfig {
    /// Confluent-compatible registry base URL (Apicurio: `http://host:8081/apis/ccompat/v7`).
    /// Records must then be in the Confluent wire format. Env override: `SHARDLINE_REGISTRY_URL`.
    /// Default: none. Exactly one of `registry_url` and `schema_file` must be set.
    #[serde(default)]
    pub registry_url: Option<String>,
    /// Raw Avro instead: every record is a bare datum written with this schema (a `.avsc` file).
    /// Default: none.
    #[serde(default)]
    pub schema_file: Option<String>,
    /// Subject whose latest version is checked against the table at start-up.
    /// Default `<first topic>-value` (TopicNameStrategy).
    #[serde(default)]
    pub subject: Option<String>,
    /// Registry request timeout. Key `registry_timeout_ms`, in milliseconds. Default 5000 ms.
    #[serde(
        rename = "registry_timeout_ms",
        default = "default_registry_timeout",
        deserialize_with = "millis"
    )]
    pub registry_timeout: Duration,
    /// How long a schema id the registry answers 404 for is asked again (with backoff) before its
    /// records are dead-lettered as `unknown_schema`: a registry that restarts or replicates late
    /// answers 404 for a moment. Key `unknown_schema_grace_ms`, in milliseconds. Default 30000 ms.
    #[serde(
        rename = "unknown_schema_grace_ms",
        default = "default_unknown_schema_grace",
        deserialize_with = "millis"
    )]
    pub unknown_schema_grace: Duration,
    /// The CA (PEM) that signs an `https://` registry's certificate; without it the system's trust
    /// store is used. Default: none.
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    /// A client certificate (PEM) for a registry that asks for one (mutual TLS); goes with
    /// `tls_key_file`. Default: none.
    #[serde(default)]
    pub tls_cert_file: Option<String>,
    /// The client certificate's private key (PKCS#8 PEM). Default: none.
    #[serde(default)]
    pub tls_key_file: Option<String>,
    /// HTTP basic-auth user (Confluent Cloud: the API key); its password comes from
    /// `SHARDLINE_REGISTRY_PASSWORD` only. Default: none.
    #[serde(default)]
    pub username: Option<String>,
    /// The basic-auth password. Not a file key: filled by [`Config::apply_env`] from
    /// `SHARDLINE_REGISTRY_PASSWORD`. Never printed by `Debug`.
    #[serde(skip)]
    pub password: Option<String>,
    /// A bearer token (OAuth), sent as `Authorization: Bearer`. Not a file key: filled from
    /// `SHARDLINE_REGISTRY_TOKEN`. Exclusive with `username`. Never printed by `Debug`.
    #[serde(skip)]
    pub bearer_token: Option<String>,
}

impl std::fmt::Debug for SchemaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("SchemaConfig")
            .field("registry_url", &self.registry_url.as_ref().map(|_| "<set>"))
            .field("schema_file", &self.schema_file)
            .field("subject", &self.subject)
            .field("registry_timeout", &self.registry_timeout)
            .field("unknown_schema_grace", &self.unknown_schema_grace)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("username", &self.username)
            .field("password", &redacted(&self.password))
            .field("bearer_token", &redacted(&self.bearer_token))
            .finish()
    }
}

fn default_unknown_schema_grace() -> Duration {
    Duration::from_secs(30)
}

/// Where writer schemas come from, as chosen by `[schema]` (the one place that chooses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaSource<'a> {
    /// Confluent wire format; schemas by id from this registry.
    Registry(&'a str),
    /// Raw Avro datums written with the schema in this file.
    File(&'a str),
}

impl SchemaConfig {
    /// The configured source; None only for a config that `validate()` refuses.
    pub fn source(&self) -> Option<SchemaSource<'_>> {
        match (&self.registry_url, &self.schema_file) {
            (Some(url), _) => Some(SchemaSource::Registry(url)),
            (None, Some(file)) => Some(SchemaSource::File(file)),
            (None, None) => None,
        }
    }
}

/// Without a `[schema]` section (the registry URL may come from the environment): the documented
/// defaults, the registry timeout included.
impl Default for SchemaConfig {
    fn default() -> Self {
        SchemaConfig {
            registry_url: None,
            schema_file: None,
            subject: None,
            registry_timeout: default_registry_timeout(),
            unknown_schema_grace: default_unknown_schema_grace(),
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            username: None,
            password: None,
            bearer_token: None,
        }
    }
}

/// The CQL cluster. Its `Debug` redacts the password.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScyllaConfig {
    /// Contact points `host:port`. Env override: `SHARDLINE_SCYLLA_NODES` (comma-separated).
    pub nodes: Vec<String>,
    /// Username; the password comes from `SHARDLINE_SCYLLA_PASSWORD` only, never from the file.
    /// Default: none (no authentication).
    #[serde(default)]
    pub username: Option<String>,
    /// Password for `username`. Not a file key (a `password` key is refused as unknown): filled by
    /// [`Config::apply_env`] from `SHARDLINE_SCYLLA_PASSWORD`. Default: none. Never printed by `Debug`.
    #[serde(skip)]
    pub password: Option<String>,
    /// Consistency of writes (and lookups): `one`, `local_one`, `quorum`, `local_quorum`, `all`...,
    /// in lower or upper case. Default `local_quorum`.
    #[serde(default, deserialize_with = "de_consistency")]
    pub consistency: Consistency,
    /// Per-request timeout. Key `request_timeout_ms`, in milliseconds. Default 5000 ms.
    #[serde(
        rename = "request_timeout_ms",
        default = "default_request_timeout",
        deserialize_with = "millis"
    )]
    pub request_timeout: Duration,
    /// Prefer replicas of this datacenter (token-aware either way). Default: none.
    #[serde(default)]
    pub local_datacenter: Option<String>,
    /// Writes in flight per shard: the shard's memory bound and the database's concurrency. Default 256.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight_per_shard: usize,
    /// A cap on each shard's database writes per second, counted in rows (a token bucket with one
    /// second of burst; a batch takes a token per row and never holds more rows than the cap), so
    /// catching up after an outage does not hit the database with the whole backlog at once. Size it
    /// with `shardline plan` (the database's share of the target rate per shard, plus headroom).
    /// Default: none (bounded by `max_in_flight_per_shard` only).
    #[serde(default)]
    pub max_writes_per_s: Option<u32>,
    /// Rows per `UNLOGGED` batch, at most. A shard groups its rows by the replica that owns their
    /// partition and sends a group when it is full, when the shard has no more ready records, or after
    /// `batch_linger_us`; so at low rates a batch is one row (a plain INSERT). 1 turns batching off.
    /// Default 10: Cassandra warns about (and the driver logs) every unlogged batch over more than
    /// `unlogged_batch_across_partitions_warn_threshold` (10) partitions. At most 256
    /// ([`MAX_BATCH_ROWS`]): a batch's rows are applied by one coordinator, so beyond a few dozen rows
    /// a larger batch saves no round trips worth having and only lengthens that node's work (and
    /// each writer keeps one batch statement per size, n²/2 statement handles in all).
    #[serde(default = "default_batch_max_rows")]
    pub batch_max_rows: usize,
    /// Bytes of values per batch, at most (estimated; a single larger row still goes alone).
    /// Default 4096: under Cassandra's `batch_size_warn_threshold` of 5 KiB (and far under ScyllaDB's
    /// `batch_size_warn_threshold_in_kb`, 128 KiB by default, `db/config.cc`; its
    /// `batch_size_fail_threshold_in_kb` is 1024). Where a database's threshold was lowered, stay
    /// under it.
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// How long a group may wait for more rows, in microseconds (key `batch_linger_us`). Default 0:
    /// a group goes out as soon as the shard has nothing more to bind, so batching adds no latency.
    #[serde(rename = "batch_linger_us", default, deserialize_with = "micros")]
    pub batch_linger: Duration,
    /// TLS to the database: a PEM CA bundle to verify the nodes with. Default: none (plain TCP).
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    /// Client certificate (PEM) for mutual TLS; goes with `tls_key_file`. Default: none.
    #[serde(default)]
    pub tls_cert_file: Option<String>,
    /// The client certificate's private key (PEM); goes with `tls_cert_file`. Default: none.
    #[serde(default)]
    pub tls_key_file: Option<String>,
}

impl std::fmt::Debug for ScyllaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaConfig")
            .field("nodes", &self.nodes)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("consistency", &self.consistency)
            .field("request_timeout", &self.request_timeout)
            .field("local_datacenter", &self.local_datacenter)
            .field("max_in_flight_per_shard", &self.max_in_flight_per_shard)
            .field("max_writes_per_s", &self.max_writes_per_s)
            .field("batch_max_rows", &self.batch_max_rows)
            .field("batch_max_bytes", &self.batch_max_bytes)
            .field("batch_linger", &self.batch_linger)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .finish()
    }
}

/// Consistency level of the writes and lookups (`scylla.consistency`). The file spells it in snake
/// case (`local_quorum`) or upper case (`LOCAL_QUORUM`), as the driver's documentation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// `any`: write-only; any node, a hint included, acknowledges.
    #[serde(alias = "ANY")]
    Any,
    /// `one`: one replica.
    #[serde(alias = "ONE")]
    One,
    /// `two`: two replicas.
    #[serde(alias = "TWO")]
    Two,
    /// `three`: three replicas.
    #[serde(alias = "THREE")]
    Three,
    /// `quorum`: a majority of all replicas, across datacenters.
    #[serde(alias = "QUORUM")]
    Quorum,
    /// `all`: every replica.
    #[serde(alias = "ALL")]
    All,
    /// `local_quorum`: a majority of the replicas in the coordinator's datacenter. The default.
    #[default]
    #[serde(alias = "LOCAL_QUORUM")]
    LocalQuorum,
    /// `each_quorum`: write-only; a majority in every datacenter.
    #[serde(alias = "EACH_QUORUM")]
    EachQuorum,
    /// `local_one`: one replica in the coordinator's datacenter.
    #[serde(alias = "LOCAL_ONE")]
    LocalOne,
}

impl Consistency {
    /// The driver's value for this level.
    pub fn to_driver(self) -> scylla::statement::Consistency {
        use scylla::statement::Consistency as Driver;
        match self {
            Consistency::Any => Driver::Any,
            Consistency::One => Driver::One,
            Consistency::Two => Driver::Two,
            Consistency::Three => Driver::Three,
            Consistency::Quorum => Driver::Quorum,
            Consistency::All => Driver::All,
            Consistency::LocalQuorum => Driver::LocalQuorum,
            Consistency::EachQuorum => Driver::EachQuorum,
            Consistency::LocalOne => Driver::LocalOne,
        }
    }
}

/// Where a consumer group without committed offsets starts (`kafka.offset_reset`, librdkafka's
/// `auto.offset.reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OffsetReset {
    /// `earliest`: the oldest retained record of each partition. The default.
    #[default]
    Earliest,
    /// `latest`: only records produced after the group joined.
    Latest,
}

impl OffsetReset {
    /// The librdkafka value of `auto.offset.reset`.
    pub fn as_str(&self) -> &'static str {
        match self {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
        }
    }
}

/// Where and how rows are written: the primary `[table]`, or an insert step's `table`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// Keyspace of the table. Required, non-empty.
    pub keyspace: String,
    /// Table name. Required, non-empty.
    pub table: String,
    /// Column name → record field name. Required, at least one. Checked against the live table at
    /// start-up.
    pub columns: BTreeMap<String, String>,
    /// Fixed TTL in seconds; 0 means no TTL. At most 630720000 (20 years, [`MAX_TTL_SECONDS`]: the
    /// database refuses more). Default 0. Exclusive with `ttl_field`, whose values over the limit
    /// are record errors (dead-lettered).
    #[serde(default)]
    pub ttl_seconds: u32,
    /// Take the TTL (seconds, int or long) from this record field instead. Default: none.
    #[serde(default)]
    pub ttl_field: Option<String>,
    /// Write timestamp: `kafka` (the record timestamp in µs, the default: a replay rewrites identical
    /// cells), `field` (from `timestamp_field`, a timestamp-millis/micros or long µs), `fixed` (the
    /// constant `timestamp_fixed_us`), or `now`. Resolved by [`TableConfig::write_timestamp`].
    #[serde(default, deserialize_with = "de_timestamp_source")]
    pub timestamp_source: TimestampSource,
    /// The field for `timestamp_source = "field"`. Default: none.
    #[serde(default)]
    pub timestamp_field: Option<String>,
    /// The write timestamp in µs for `timestamp_source = "fixed"`. Default: none.
    #[serde(default)]
    pub timestamp_fixed_us: Option<i64>,
    /// What a null field does: `unset` (the default: the column is not written, no tombstone) or
    /// `null` (writes a CQL null, which is a tombstone and overwrites an earlier value).
    #[serde(default, deserialize_with = "de_null_values")]
    pub null_values: NullValues,
    /// What a tombstone does to this table: `dead_letter` (the default), `skip` or `delete`. With
    /// `delete`, every primary-key column must be mapped from Kafka metadata (`kafka.key`, …), as a
    /// tombstone has no value fields; checked at start-up.
    #[serde(default, deserialize_with = "de_on_tombstone")]
    pub on_tombstone: OnTombstone,
    /// Consistency of this table's writes (and deletes), like `scylla.consistency`. Default: none
    /// (`scylla.consistency`).
    #[serde(default, deserialize_with = "de_opt_consistency")]
    pub consistency: Option<Consistency>,
}

/// The `timestamp_source` key of a table: where its write timestamp comes from. Its sibling keys
/// (`timestamp_field`, `timestamp_fixed_us`) complete it; [`TableConfig::write_timestamp`] checks
/// the combination and gives the resolved [`WriteTimestamp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestampSource {
    /// `kafka`: the Kafka record's timestamp, in µs. The default: a replay rewrites identical cells.
    #[default]
    Kafka,
    /// `field`: the record field named by `timestamp_field` (timestamp-millis/micros or long µs).
    Field,
    /// `fixed`: the constant `timestamp_fixed_us`.
    Fixed,
    /// `now`: the writer's clock at bind time.
    Now,
}

/// How the Kafka record key is read (`kafka.key_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyFormat {
    /// `string`: UTF-8 text. The default.
    #[default]
    String,
    /// `bytes`: the key's bytes as they are (for a `blob` column).
    Bytes,
    /// `avro`: Confluent-framed Avro, its schemas from the registry (the route's `<topic>-key`
    /// subject is checked at start-up); map its fields as `kafka.key.<field>` (paths too).
    Avro,
}

/// What a tombstone (a record whose value is null, as compacted topics carry) does to a table
/// (`on_tombstone`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTombstone {
    /// `dead_letter`: the record goes to the dead-letter topic (class `tombstone`). The default: a
    /// tombstone on a topic that is not meant to carry them is a producer's mistake to look at.
    #[default]
    DeadLetter,
    /// `skip`: nothing is written; the offset is committed.
    Skip,
    /// `delete`: the row whose primary key the record's key and metadata give is deleted, with the
    /// write timestamp of the table's rule, so an older insert replayed later does not bring it back.
    Delete,
}

/// What a null record field writes (`null_values`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NullValues {
    /// `unset`: the column is not written (no tombstone; an earlier value stays). The default.
    #[default]
    Unset,
    /// `null`: a CQL null is written, which is a tombstone and overwrites an earlier value.
    Null,
}

/// Where the write timestamp comes from, resolved and checked by [`TableConfig::write_timestamp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteTimestamp {
    /// The Kafka record's timestamp, in µs.
    Kafka,
    /// This record field's value.
    Field(String),
    /// A constant write timestamp in µs.
    Fixed(i64),
    /// The writer's clock.
    Now,
}

impl TableConfig {
    /// The checked write-timestamp source. Messages name the keys of the primary `[table]`;
    /// [`TableConfig::validate`] names the table's own keys.
    pub fn write_timestamp(&self) -> Result<WriteTimestamp, ConfigError> {
        self.write_timestamp_at("table")
    }

    /// [`TableConfig::write_timestamp`] with messages naming `key` (`table`, `processors.<name>.table`).
    fn write_timestamp_at(&self, key: &str) -> Result<WriteTimestamp, ConfigError> {
        use TimestampSource as S;
        let bad = |m: String| Err(ConfigError::Invalid(m));
        match (
            self.timestamp_source,
            &self.timestamp_field,
            self.timestamp_fixed_us,
        ) {
            (S::Kafka, None, None) => Ok(WriteTimestamp::Kafka),
            (S::Now, None, None) => Ok(WriteTimestamp::Now),
            (S::Fixed, None, Some(us)) => Ok(WriteTimestamp::Fixed(us)),
            (S::Field, Some(f), None) => Ok(WriteTimestamp::Field(f.clone())),
            (S::Fixed, _, None) | (S::Kafka | S::Field | S::Now, _, Some(_)) => bad(format!(
                "{key}.timestamp_fixed_us goes with {key}.timestamp_source = \"fixed\", and only with it"
            )),
            (S::Field, None, None) => bad(format!(
                "{key}.timestamp_source = \"field\" needs {key}.timestamp_field"
            )),
            (S::Kafka | S::Now | S::Fixed, Some(_), _) => bad(format!(
                "{key}.timestamp_field is only used with {key}.timestamp_source = \"field\""
            )),
        }
    }

    /// Every check of one table that needs no service; `key` names it in messages (`table` for the
    /// primary `[table]`, `processors.<name>.table` for an insert step's).
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.keyspace.is_empty() || self.table.is_empty() {
            return bad(format!("{key}.keyspace and {key}.table must be set"));
        }
        if self.columns.is_empty() {
            return bad(format!(
                "{key}.columns must map at least one column to a field"
            ));
        }
        if self.ttl_seconds > 0 && self.ttl_field.is_some() {
            return bad(format!(
                "{key}.ttl_seconds and {key}.ttl_field are exclusive; keep one"
            ));
        }
        if self.ttl_seconds > MAX_TTL_SECONDS {
            return bad(format!(
                "{key}.ttl_seconds {} is larger than the database allows (at most {MAX_TTL_SECONDS}, \
                 20 years); it would refuse every write",
                self.ttl_seconds
            ));
        }
        let ts = self.write_timestamp_at(key)?;
        // Only Kafka timestamps order a delete against the inserts of its key: a field is absent
        // from a tombstone, `now` would let an older insert replayed later bring the row back, and
        // `fixed` gives the delete every later insert's timestamp (a delete wins a tie for ever).
        if self.on_tombstone == OnTombstone::Delete && ts != WriteTimestamp::Kafka {
            return bad(format!(
                "{key}.on_tombstone = \"delete\" needs {key}.timestamp_source = \"kafka\" (the \
                 default): only Kafka timestamps order a delete against the inserts of its key"
            ));
        }
        for field in self.columns.values() {
            crate::pipeline::meta::Meta::parse(field)
                .map_err(|e| ConfigError::Invalid(format!("{key}.columns: {e}")))?;
        }
        Ok(())
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
        /// Equal to this value (compared as text: enums by symbol, numbers in decimal). Default: none.
        #[serde(default)]
        equals: Option<toml::Value>,
        /// One of these values (as text); key `in`. Default: none.
        #[serde(default, rename = "in")]
        one_of: Option<Vec<toml::Value>>,
        /// Present (not null) when true; absent when false. Default: none.
        #[serde(default)]
        present: Option<bool>,
        /// Greater than this number. Default: none.
        #[serde(default)]
        gt: Option<f64>,
        /// Greater than or equal to this number. Default: none.
        #[serde(default)]
        ge: Option<f64>,
        /// Less than this number. Default: none.
        #[serde(default)]
        lt: Option<f64>,
        /// Less than or equal to this number. Default: none.
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
        /// How long a cached answer (or a cached miss) is trusted. Key `cache_ttl_ms`, in
        /// milliseconds. Default 60000 ms.
        #[serde(
            rename = "cache_ttl_ms",
            default = "default_cache_ttl",
            deserialize_with = "millis"
        )]
        cache_ttl: Duration,
        /// `drop` the record, fill `defaults`, or `dead_letter` it. Default `default`.
        #[serde(default, deserialize_with = "de_on_miss")]
        on_miss: MissPolicy,
        /// Field → value used on a miss with `on_miss = "default"` (missing ones stay null).
        /// Default: none.
        #[serde(default)]
        defaults: BTreeMap<String, toml::Value>,
        /// Per-request timeout. Key `timeout_ms`, in milliseconds, at least 1. Default 1000 ms.
        #[serde(
            rename = "timeout_ms",
            default = "default_step_timeout",
            deserialize_with = "millis"
        )]
        timeout: Duration,
        /// Speculative execution: send the SELECT to another replica after this delay. Key
        /// `speculative_delay_ms`, in milliseconds. Default: none (off).
        #[serde(
            rename = "speculative_delay_ms",
            default,
            deserialize_with = "opt_millis"
        )]
        speculative_delay: Option<Duration>,
        /// Consistency of this lookup's SELECT, like `scylla.consistency` (a lookup may read at
        /// `local_one` while writes stay at `local_quorum`). Default: none (`scylla.consistency`).
        #[serde(default, deserialize_with = "de_opt_consistency")]
        consistency: Option<Consistency>,
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

/// What a lookup does when the key has no row (`on_miss`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissPolicy {
    /// `drop`: the record goes no further down the chain, as if a filter had dropped it.
    Drop,
    /// `default`: the lookup's fields take the step's `defaults` (missing ones stay null). The default.
    #[default]
    Default,
    /// `dead_letter`: the record fails the step and takes the dead-letter path
    /// (`kafka.dead_letter_topic`).
    DeadLetter,
}

fn default_true() -> bool {
    true
}
fn default_cache_entries() -> usize {
    10_000
}
fn default_cache_ttl() -> Duration {
    Duration::from_millis(60_000)
}
fn default_step_timeout() -> Duration {
    Duration::from_millis(1000)
}

/// Placement: which cores run shards.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardsConfig {
    /// Cores that each run one shard (with `affinity = "none"`, the list only sets how many shards
    /// there are, and names them in logs and metrics). Default: every online core.
    #[serde(default)]
    pub cores: Option<Vec<usize>>,
    /// Ignored: the scylla driver's runtime now runs on the shard's own thread (there is no bridge
    /// thread to place). Accepted so that existing files still load; `shardline run` warns when set.
    #[serde(default)]
    pub bridge_cores: Option<Vec<usize>>,
    /// Whether each shard's thread is held to its core (`pinned`, the default) or may run on any
    /// core the kernel picks (`none`). See [`Affinity`].
    #[serde(default)]
    pub affinity: Affinity,
    /// glommio io_uring buffer memory per shard. Default 2 MiB (shards do no file I/O).
    #[serde(default = "default_io_memory_bytes")]
    pub io_memory_bytes: usize,
    /// How long a graceful stop waits for in-flight writes before committing what is done. Key
    /// `shutdown_deadline_ms`, in milliseconds. Default 10000 ms. The whole stop (the final commit,
    /// the dead letters' flush, leaving the group; in `--drain`, from the shards' decision to leave)
    /// is over by this plus
    /// [`crate::runtime::STOP_GRACE`] (5 s), or the process exits 1 without waiting for the shard,
    /// what it did not commit replayed: give a supervisor's stop timeout at least that.
    #[serde(
        rename = "shutdown_deadline_ms",
        default = "default_shutdown_deadline",
        deserialize_with = "millis"
    )]
    pub shutdown_deadline: Duration,
}

impl Default for ShardsConfig {
    fn default() -> Self {
        ShardsConfig {
            cores: None,
            bridge_cores: None,
            affinity: Affinity::default(),
            io_memory_bytes: default_io_memory_bytes(),
            shutdown_deadline: default_shutdown_deadline(),
        }
    }
}

/// Where a shard's thread may run (key `shards.affinity`). Either way a shard is one executor with
/// its own consumer, schema cache, session and metrics, and `shards.cores` says how many there are:
/// nothing is shared on the per-message path. Only the kernel's freedom to move the thread differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Affinity {
    /// `pinned`: each shard's thread runs only on its core of `shards.cores`. The default, for cores
    /// given to shardline alone (bare metal, the database and the broker on other cores or hosts):
    /// a shard keeps its core's caches and is never migrated.
    #[default]
    Pinned,
    /// `none`: the kernel may run a shard's thread, and the librdkafka threads its consumer starts,
    /// on any core the process may use (its CPU mask: `taskset`, a cgroup `cpuset`). For a host
    /// whose cores shardline shares with busy processes (the database or the broker on the same
    /// cores, a laptop, a container with a CPU quota): a pinned shard whose core another thread
    /// holds waits for it even while another core is idle. Seastar's `--thread-affinity 0` (part of
    /// its `--overprovisioned`) is the same choice. What it changed on the bench box (2 cores
    /// shared with Kafka and Cassandra): the README's performance section.
    None,
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

fn default_commit_interval() -> Duration {
    Duration::from_millis(1000)
}
fn default_session_timeout() -> Duration {
    Duration::from_millis(10_000)
}
fn default_registry_timeout() -> Duration {
    Duration::from_millis(5000)
}
fn default_request_timeout() -> Duration {
    Duration::from_millis(5000)
}
/// A listed topic must be a Kafka topic name (ASCII letters, digits, `.`, `_`, `-`; at most 249):
/// librdkafka takes a name that starts with `^` as a pattern, and a shard, which files messages by
/// their topic's exact name (and, with one topic, files them all under it), must never meet a topic
/// it does not list. Patterns go in `routes.topic_regex`, resolved to names at start-up.
fn check_topic_name(field: &str, name: &str) -> Result<(), ConfigError> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > 249 || !name.chars().all(legal) {
        return Err(ConfigError::Invalid(format!(
            "{field}: '{name}' is not a Kafka topic name (letters, digits, '.', '_' and '-', at \
             most 249); a pattern goes in routes.topic_regex"
        )));
    }
    Ok(())
}

/// The longest TTL the database accepts, in seconds: 20 years, in Cassandra (`Attributes.MAX_TTL`)
/// and ScyllaDB alike. Both refuse a larger one only when the write runs (the TTL is a bound
/// marker), with an error about the statement, not the record: so it is checked here, at start.
pub const MAX_TTL_SECONDS: u32 = 630_720_000;

fn default_max_in_flight() -> usize {
    256
}
/// The most rows `scylla.batch_max_rows` allows (see the field).
pub const MAX_BATCH_ROWS: usize = 256;

fn default_batch_max_rows() -> usize {
    10
}
fn default_batch_max_bytes() -> usize {
    4096
}
fn default_io_memory_bytes() -> usize {
    2 << 20
}
fn default_shutdown_deadline() -> Duration {
    Duration::from_millis(10_000)
}
fn default_metrics_listen() -> String {
    "127.0.0.1:9898".into()
}

/// Reads a `*_ms` key: a whole number of milliseconds.
fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_millis)
}

/// Reads a `*_us` key: a whole number of microseconds.
fn micros<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_micros)
}

/// [`millis`] for an optional key (absent: `None`).
fn opt_millis<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Option::<u64>::deserialize(d).map(|ms| ms.map(Duration::from_millis))
}

/// Reads a config enum and names `key` in the error. Inside `[[processors]]` serde reads the step
/// as a whole before its fields, so toml's own message would point at the step, not at the key.
fn keyed<'de, D: Deserializer<'de>, T: Deserialize<'de>>(key: &str, d: D) -> Result<T, D::Error> {
    T::deserialize(d)
        .map_err(|e| serde::de::Error::custom(format!("{key}: {}", e.to_string().trim_end())))
}
fn de_consistency<'de, D: Deserializer<'de>>(d: D) -> Result<Consistency, D::Error> {
    keyed("scylla.consistency", d)
}
fn de_opt_consistency<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Consistency>, D::Error> {
    keyed("consistency", d)
}
fn de_offset_reset<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetReset, D::Error> {
    keyed("kafka.offset_reset", d)
}
fn de_timestamp_source<'de, D: Deserializer<'de>>(d: D) -> Result<TimestampSource, D::Error> {
    keyed("timestamp_source", d)
}
fn de_null_values<'de, D: Deserializer<'de>>(d: D) -> Result<NullValues, D::Error> {
    keyed("null_values", d)
}
fn de_on_miss<'de, D: Deserializer<'de>>(d: D) -> Result<MissPolicy, D::Error> {
    keyed("on_miss", d)
}
fn de_key_format<'de, D: Deserializer<'de>>(d: D) -> Result<KeyFormat, D::Error> {
    keyed("key_format", d)
}
fn de_on_tombstone<'de, D: Deserializer<'de>>(d: D) -> Result<OnTombstone, D::Error> {
    keyed("on_tombstone", d)
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
    /// `SHARDLINE_SCYLLA_PASSWORD` is the only source of `scylla.password`.
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
        if let Some(p) = get("SHARDLINE_REGISTRY_PASSWORD") {
            self.schema.password = Some(p);
        }
        if let Some(t) = get("SHARDLINE_REGISTRY_TOKEN") {
            self.schema.bearer_token = Some(t);
        }
        if let Some(n) = get("SHARDLINE_SCYLLA_NODES") {
            self.scylla.nodes = n.split(',').map(|s| s.trim().to_string()).collect();
        }
        if let Some(p) = get("SHARDLINE_SCYLLA_PASSWORD") {
            self.scylla.password = Some(p);
        }
    }

    /// Every check that needs no service. Each message names the key to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        // The order below decides which error a config with several faults reports first.
        self.validate_kafka()?;
        self.validate_schema()?;
        self.validate_scylla()?;
        self.table.validate("table")?;
        self.validate_shard_cores()?;
        self.validate_processors(&self.processors)?;
        self.validate_routes()?;
        for route in self.routes() {
            crate::pipeline::meta::kinds(&route.needed_fields(), self.kafka.key_format, &[])
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        if self.kafka.key_format == KeyFormat::Avro && self.schema.registry_url.is_none() {
            return bad(
                "kafka.key_format = \"avro\" reads key schemas from the registry: set schema.registry_url"
                    .into(),
            );
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

    fn validate_kafka(&self) -> Result<(), ConfigError> {
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
        for t in &self.kafka.topics {
            check_topic_name("kafka.topics", t)?;
        }
        if let Some(dlq) = &self.kafka.dead_letter_topic {
            if self.kafka.topics.contains(dlq) {
                return bad(format!(
                    "kafka.dead_letter_topic '{dlq}' is also a source topic: dead letters would loop"
                ));
            }
        }
        if self.kafka.commit_interval.is_zero() {
            return bad("kafka.commit_interval_ms must be > 0".into());
        }
        if self
            .kafka
            .librdkafka
            .get("statistics.interval.ms")
            .is_some_and(|v| {
                v.trim()
                    .parse::<u64>()
                    .map_or(true, |ms| ms == 0 || ms >= 10_000)
            })
        {
            return bad(
                "kafka.librdkafka.\"statistics.interval.ms\" must be a whole number of ms from 1 to \
                 9999: the lag gauges read the statistics, and drain mode's fallback needs them fresher \
                 than its 10 s reports"
                    .into(),
            );
        }
        for key in self.kafka.librdkafka.keys() {
            if OWNED_RDKAFKA_KEYS.contains(&key.as_str()) {
                return bad(format!(
                    "kafka.librdkafka.\"{key}\" is set by shardline itself (at-least-once offset handling, eager \
                     assignment); remove it from the passthrough map"
                ));
            }
        }
        Ok(())
    }

    fn validate_schema(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let s = &self.schema;
        if s.tls_cert_file.is_some() != s.tls_key_file.is_some() {
            return bad(
                "schema.tls_cert_file and schema.tls_key_file go together: set both or neither"
                    .into(),
            );
        }
        let tls = s.tls_ca_file.is_some() || s.tls_cert_file.is_some();
        if tls
            && !s
                .registry_url
                .as_deref()
                .is_some_and(|u| u.starts_with("https://"))
        {
            return bad("schema.tls_* files need an https:// schema.registry_url".into());
        }
        let credentials = s.username.is_some() || s.bearer_token.is_some();
        if credentials
            && !s
                .registry_url
                .as_deref()
                .is_some_and(|u| u.starts_with("https://"))
        {
            return bad(
                "schema: registry credentials go over https:// only (schema.registry_url)".into(),
            );
        }
        // A header value must be visible ASCII; anything else would fail in the HTTP client, whose
        // error quotes the header, secret included.
        if s.bearer_token
            .as_deref()
            .is_some_and(|t| t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()))
        {
            return bad(
                "SHARDLINE_REGISTRY_TOKEN must be visible ASCII without spaces or line breaks"
                    .into(),
            );
        }
        match (&s.username, &s.password, &s.bearer_token) {
            (Some(_), None, _) => {
                return bad(
                    "schema.username needs its password in SHARDLINE_REGISTRY_PASSWORD".into(),
                )
            }
            (None, Some(_), _) => {
                return bad("SHARDLINE_REGISTRY_PASSWORD is set but schema.username is not".into())
            }
            (Some(_), Some(_), Some(_)) => {
                return bad("schema: basic auth (schema.username) and a bearer token \
                     (SHARDLINE_REGISTRY_TOKEN) are exclusive; keep one"
                    .into())
            }
            _ => {}
        }
        match (&self.schema.registry_url, &self.schema.schema_file) {
            (None, None) => bad(
                "schema: set registry_url (Confluent wire format) or schema_file (raw Avro)".into(),
            ),
            (Some(_), Some(_)) => {
                bad("schema: registry_url and schema_file are exclusive; keep one".into())
            }
            _ => Ok(()),
        }
    }

    fn validate_scylla(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.scylla.nodes.is_empty() {
            return bad("scylla.nodes must list at least one host:port".into());
        }
        if self.scylla.request_timeout.is_zero() {
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
        if self.scylla.batch_max_rows == 0 {
            return bad("scylla.batch_max_rows must be at least 1 (1: no batching)".into());
        }
        if self.scylla.batch_max_rows > MAX_BATCH_ROWS {
            return bad(format!(
                "scylla.batch_max_rows must be at most {MAX_BATCH_ROWS} (larger batches only add \
                 coordinator work: see the field's documentation)"
            ));
        }
        if self.scylla.max_writes_per_s == Some(0) {
            return bad(
                "scylla.max_writes_per_s must be at least 1 (or left out for no cap)".into(),
            );
        }
        Ok(())
    }

    fn validate_shard_cores(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
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
        Ok(())
    }

    /// `[[routes]]`: unique names, topics of their own, each table and chain checked like the
    /// primary route's.
    fn validate_routes(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !self.routes.is_empty() && self.schema.registry_url.is_none() {
            return bad(
                "routes read each route's subject from the registry: set schema.registry_url \
                 (schema.schema_file is one schema for one route)"
                    .into(),
            );
        }
        let mut names = std::collections::HashSet::from(["primary".to_string()]);
        let mut topics: std::collections::HashSet<&String> = self.kafka.topics.iter().collect();
        for r in &self.routes {
            let n = &r.name;
            if n.is_empty() || !names.insert(n.clone()) {
                return bad(format!(
                    "routes: every route needs a unique, non-empty name other than 'primary' ('{n}')"
                ));
            }
            match (&r.topic_regex, r.topics.is_empty()) {
                (Some(_), false) => {
                    return bad(format!(
                        "routes.{n}: topics and topic_regex are exclusive; keep one"
                    ))
                }
                (Some(re), true) => {
                    regex_lite::Regex::new(re).map_err(|e| {
                        ConfigError::Invalid(format!("routes.{n}.topic_regex does not parse: {e}"))
                    })?;
                    // Its topics are resolved at start-up; nothing more to check here.
                    r.table.validate(&format!("routes.{n}.table"))?;
                    self.validate_processors(&r.processors)?;
                    continue;
                }
                (None, _) => {}
            }
            if r.topics.is_empty() || r.topics.iter().any(|t| t.trim().is_empty()) {
                return bad(format!(
                    "routes.{n}.topics must list at least one non-empty topic (or set topic_regex)"
                ));
            }
            for t in &r.topics {
                check_topic_name(&format!("routes.{n}.topics"), t)?;
            }
            for t in &r.topics {
                if !topics.insert(t) {
                    return bad(format!(
                        "routes.{n}.topics: topic '{t}' belongs to another route already"
                    ));
                }
                if self.kafka.dead_letter_topic.as_ref() == Some(t) {
                    return bad(format!(
                        "routes.{n}.topics: '{t}' is the dead-letter topic: dead letters would loop"
                    ));
                }
            }
            r.table.validate(&format!("routes.{n}.table"))?;
            self.validate_processors(&r.processors)?;
        }
        Ok(())
    }

    /// Checks the pipeline as a whole (names, step order), then each step on its own.
    fn validate_processors(&self, processors: &[ProcessorConfig]) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let mut seen_sink = false;
        let mut names = std::collections::HashSet::new();
        for p in processors {
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
            self.validate_processor_step(n, p)?;
        }
        read_before_set(processors)
    }

    fn validate_processor_step(&self, n: &str, p: &ProcessorConfig) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        match p {
            ProcessorConfig::Lookup {
                key_fields,
                query,
                columns,
                timeout,
                ..
            } => {
                if timeout.is_zero() {
                    // The driver would time every lookup out at once, and lookups retry until stopped.
                    return bad(format!("processors.{n}.timeout_ms must be at least 1"));
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
                table.validate(&format!("processors.{n}.table"))?;
            }
            ProcessorConfig::Produce { topic, .. } => {
                if self.all_topics().contains(topic) {
                    return bad(format!(
                        "processors.{n}.topic '{topic}' is a source topic: records would loop"
                    ));
                }
            }
            ProcessorConfig::Filter { .. } => {}
        }
        Ok(())
    }

    /// Every route: the primary one (`kafka.topics`, `[schema]`'s subject, `[table]`,
    /// `[[processors]]`), then each `[[routes]]` entry, in file order.
    pub fn routes(&self) -> Vec<Route<'_>> {
        let mut out = vec![self.primary()];
        out.extend(self.routes.iter().map(|r| Route {
            name: &r.name,
            topics: &r.topics,
            subject: r.subject.as_deref(),
            table: &r.table,
            processors: &r.processors,
            custom_fields: &[],
        }));
        out
    }

    /// Fills the topics of every `[[routes]]` entry with a `topic_regex` from `existing` (the
    /// broker's topics): those the expression matches whole, sorted, except topics of other routes,
    /// the dead-letter topic and internal ones (`__…`). A route whose expression matches none is an
    /// error: it would consume nothing, silently.
    pub fn resolve_topic_regexes(&mut self, existing: &[String]) -> Result<(), ConfigError> {
        // Validation could not check these against the topics a regex matches: a produce step's
        // output taken as a source would loop its records.
        let produced = self.routes().into_iter().flat_map(|r| {
            r.processors.iter().filter_map(|p| match p {
                ProcessorConfig::Produce { topic, .. } => Some(topic.clone()),
                _ => None,
            })
        });
        let listed: Vec<String> = self
            .all_topics()
            .into_iter()
            .chain(self.kafka.dead_letter_topic.clone())
            .chain(produced)
            .collect();
        let mut taken: Vec<String> = Vec::new();
        for r in self.routes.iter_mut() {
            let Some(re) = &r.topic_regex else {
                continue;
            };
            let whole = regex_lite::Regex::new(&format!("^(?:{re})$")).map_err(|e| {
                ConfigError::Invalid(format!("routes.{}.topic_regex does not parse: {e}", r.name))
            })?;
            let mut topics: Vec<String> = existing
                .iter()
                .filter(|t| whole.is_match(t) && !t.starts_with("__"))
                .filter(|t| !listed.contains(t) && !taken.contains(t))
                .cloned()
                .collect();
            topics.sort();
            if topics.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "routes.{}.topic_regex '{re}' matches no topic of the cluster",
                    r.name
                )));
            }
            taken.extend(topics.iter().cloned());
            r.topics = topics;
        }
        Ok(())
    }

    /// The primary route (see [`Config::routes`]).
    pub fn primary(&self) -> Route<'_> {
        Route {
            name: "primary",
            topics: &self.kafka.topics,
            subject: self.schema.subject.as_deref(),
            table: &self.table,
            processors: &self.processors,
            custom_fields: &self.custom_fields,
        }
    }

    /// Every topic consumed, the primary route's first, each once.
    pub fn all_topics(&self) -> Vec<String> {
        self.routes()
            .iter()
            .flat_map(|r| r.topics.iter().cloned())
            .collect()
    }

    /// The primary route's subject checked at start-up.
    pub fn subject(&self) -> String {
        self.primary().subject()
    }

    /// The primary route's [`Route::needed_fields`].
    pub fn needed_fields(&self) -> Vec<String> {
        self.primary().needed_fields()
    }

    /// The primary route's [`Route::decoded_fields`].
    pub fn decoded_fields(&self) -> Vec<String> {
        self.primary().decoded_fields()
    }

    /// The primary route's [`Route::enriched_fields`].
    pub fn enriched_fields(&self) -> Vec<String> {
        self.primary().enriched_fields()
    }

    /// The primary route's [`Route::all_fields`].
    pub fn all_fields(&self) -> Vec<String> {
        self.primary().all_fields()
    }
}

/// A record field has one slot: a field a lookup adds is that lookup's output, even when the Avro
/// value has a field of the same name (it is not decoded). So a filter or a lookup key that reads
/// it at or before the lookup that sets it would read a null on every record: a filter would drop
/// or keep them all, a lookup fail them all. Refused. (Custom steps run after the built-in ones:
/// their fields are set after every filter and lookup.)
fn read_before_set(processors: &[ProcessorConfig]) -> Result<(), ConfigError> {
    let set_before = |i: usize, f: &str| {
        processors[..i].iter().any(|p| {
            matches!(p, ProcessorConfig::Lookup { columns, .. } if columns.values().any(|c| c == f))
        })
    };
    for (i, p) in processors.iter().enumerate() {
        // A field an earlier lookup set is there to read, whatever a later one does with it.
        let reads: Vec<&String> = match p {
            ProcessorConfig::Filter { field, .. } => vec![field],
            ProcessorConfig::Lookup { key_fields, .. } => key_fields.iter().collect(),
            _ => continue,
        }
        .into_iter()
        .filter(|f| !set_before(i, f))
        .collect();
        for later in &processors[i..] {
            let ProcessorConfig::Lookup { name, columns, .. } = later else {
                continue;
            };
            if let Some(f) = reads.iter().find(|f| columns.values().any(|c| c == **f)) {
                return Err(ConfigError::Invalid(format!(
                    "processors.{}: reads field '{f}', which lookup '{name}' sets at or after this \
                     step (so it is null here); read it after the lookup, or name the lookup's \
                     column something else",
                    p.name()
                )));
            }
        }
    }
    Ok(())
}

/// `[[routes]]`: more topics consumed by the same shards, each group of topics with its own
/// subject, table mapping and processor chain (the primary route is `kafka.topics` with `[table]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A unique name (logs, errors). Required.
    pub name: String,
    /// Topics of this route; none may belong to another route. Exclusive with `topic_regex`; one of
    /// them is required.
    #[serde(default)]
    pub topics: Vec<String>,
    /// A regular expression every topic of this route matches whole (`nav-.*`), resolved once at
    /// start-up against the broker's topics ([`Config::resolve_topic_regexes`]): topics created
    /// later are taken at the next start. Topics of other routes, the dead-letter topic and internal
    /// topics (`__…`) are left out. Default: none.
    #[serde(default)]
    pub topic_regex: Option<String>,
    /// Subject whose latest version is the route's reader schema. Default `<first topic>-value`.
    #[serde(default)]
    pub subject: Option<String>,
    /// The route's table, with the same keys and checks as `[table]`. Required.
    pub table: TableConfig,
    /// The route's processor chain; its `table` is the last sink. Default: none.
    #[serde(default)]
    pub processors: Vec<ProcessorConfig>,
}

/// One route as the pipeline sees it: topics, subject, table, processors.
#[derive(Debug, Clone, Copy)]
pub struct Route<'a> {
    pub name: &'a str,
    pub topics: &'a [String],
    subject: Option<&'a str>,
    pub table: &'a TableConfig,
    pub processors: &'a [ProcessorConfig],
    /// Fields custom (Rust) steps add: the primary route's only.
    pub custom_fields: &'a [String],
}

impl Route<'_> {
    /// The subject checked at start-up: the configured one, else `<first topic>-value`.
    pub fn subject(&self) -> String {
        self.subject.map(str::to_string).unwrap_or_else(|| {
            format!(
                "{}-value",
                self.topics.first().map(String::as_str).unwrap_or("")
            )
        })
    }

    /// The subject of the route's Avro keys (`kafka.key_format = "avro"`): `<first topic>-key`.
    pub fn key_subject(&self) -> String {
        format!(
            "{}-key",
            self.topics.first().map(String::as_str).unwrap_or("")
        )
    }

    /// Record fields read from the Kafka record, in slot order: the table's mapped, TTL and
    /// timestamp fields, then what the processors read (filter fields, lookup keys, insert and
    /// produce fields), except the fields lookups add; the fields decoded from Avro come first, then
    /// the Kafka metadata fields (`kafka.*`, see [`crate::pipeline::meta`]).
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
        table_fields(self.table, &mut push);
        for p in self.processors {
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
        // Decoded fields first, then the Kafka metadata fields: the decoder fills a prefix of the
        // slots.
        let (mut decoded, meta): (Vec<String>, Vec<String>) = fields
            .into_iter()
            .partition(|f| !crate::pipeline::meta::is_meta(f));
        decoded.extend(meta);
        decoded
    }

    /// The fields decoded from the Avro value, in slot order: [`Route::needed_fields`] without the
    /// Kafka metadata fields (which follow them).
    pub fn decoded_fields(&self) -> Vec<String> {
        self.needed_fields()
            .into_iter()
            .filter(|f| !crate::pipeline::meta::is_meta(f))
            .collect()
    }

    /// Fields the lookups (and custom steps) add to the record, in chain order.
    pub fn enriched_fields(&self) -> Vec<String> {
        let mut out: Vec<String> = self.custom_fields.to_vec();
        for p in self.processors {
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
pub(crate) mod tests {
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
    fn a_topic_that_is_no_kafka_name_is_refused() {
        for bad in ["^nav.*", "a b", "nav/1"] {
            let text = MINIMAL.replacen("[\"navigation\"]", &format!("[\"{bad}\"]"), 1);
            let c = Config::parse(&text).expect("parses");
            let e = c.validate().expect_err(bad).to_string();
            assert!(
                e.contains("not a Kafka topic name") && e.contains("topic_regex"),
                "{e}"
            );
        }
        let ok = MINIMAL.replacen("[\"navigation\"]", "[\"nav.events_v-2\"]", 1);
        Config::parse(&ok)
            .expect("parses")
            .validate()
            .expect("a legal name");
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = Config::parse(MINIMAL).expect("minimal config parses");
        c.validate().expect("minimal config is valid");
        assert_eq!(c.kafka.commit_interval, Duration::from_millis(1000));
        assert_eq!(c.kafka.offset_reset, OffsetReset::Earliest);
        assert_eq!(c.kafka.session_timeout, Duration::from_millis(10_000));
        assert_eq!(c.schema.registry_timeout, Duration::from_millis(5000));
        assert_eq!(c.scylla.consistency, Consistency::LocalQuorum);
        assert_eq!(c.scylla.request_timeout, Duration::from_millis(5000));
        assert_eq!(c.scylla.password, None);
        assert_eq!(c.scylla.max_in_flight_per_shard, 256);
        assert_eq!(c.table.null_values, NullValues::Unset);
        assert_eq!(c.table.timestamp_source, TimestampSource::Kafka);
        assert_eq!(
            c.table.write_timestamp().expect("valid"),
            WriteTimestamp::Kafka
        );
        assert_eq!(c.shards.shutdown_deadline, Duration::from_millis(10_000));
        assert_eq!(c.metrics.listen, "127.0.0.1:9898");
        assert_eq!(c.shards.io_memory_bytes, 2 << 20);
        assert_eq!(c.shards.affinity, Affinity::Pinned);
        assert_eq!(c.subject(), "navigation-value");
    }

    #[test]
    fn shard_affinity_is_pinned_or_none_and_nothing_else() {
        let with = |v: &str| format!("{MINIMAL}\n[shards]\naffinity = {v}\n");
        let c = Config::parse(&with("\"none\"")).expect("parses");
        assert_eq!(c.shards.affinity, Affinity::None);
        let c = Config::parse(&with("\"pinned\"")).expect("parses");
        assert_eq!(c.shards.affinity, Affinity::Pinned);
        let e = Config::parse(&with("\"loose\""))
            .expect_err("an unknown affinity is refused")
            .to_string();
        assert!(e.contains("loose") && e.contains("pinned"), "{e}");
    }

    #[test]
    fn a_missing_schema_section_keeps_the_documented_registry_timeout() {
        let text = MINIMAL.replace(
            "[schema]\nregistry_url = \"http://127.0.0.1:8081/apis/ccompat/v7\"\n",
            "",
        );
        assert!(!text.contains("[schema]"), "the test edit applied");
        let mut c = Config::parse(&text).expect("parses");
        assert_eq!(c.schema.registry_timeout, Duration::from_millis(5000));
        c.apply_env(|k| (k == "SHARDLINE_REGISTRY_URL").then(|| "http://r:8081".to_string()));
        c.validate()
            .expect("the registry URL came from the environment");
    }

    #[test]
    fn lookup_steps_get_documented_defaults() {
        let text = format!(
            "{MINIMAL}\n[[processors]]\nkind = \"lookup\"\nname = \"seg\"\n\
             query = \"SELECT s FROM ks.u WHERE uid = ?\"\nkey_fields = [\"uid\"]\n\
             columns = {{ s = \"segment\" }}\n"
        );
        let c = Config::parse(&text).expect("parses");
        c.validate().expect("valid");
        match &c.processors[..] {
            [ProcessorConfig::Lookup {
                cache_entries,
                cache_ttl,
                on_miss,
                timeout,
                speculative_delay,
                ..
            }] => {
                assert_eq!(*cache_entries, 10_000);
                assert_eq!(*cache_ttl, Duration::from_millis(60_000));
                assert_eq!(*on_miss, MissPolicy::Default);
                assert_eq!(*timeout, Duration::from_millis(1000));
                assert_eq!(*speculative_delay, None);
            }
            other => panic!("expected one lookup step, got {other:?}"),
        }
    }

    #[test]
    fn durations_are_read_in_milliseconds() {
        let latency = Config::parse(include_str!("../../tuning/latency.toml")).expect("parses");
        assert_eq!(latency.kafka.commit_interval, Duration::from_millis(500));
        assert_eq!(latency.scylla.request_timeout, Duration::from_secs(2));
        assert_eq!(latency.shards.shutdown_deadline, Duration::from_secs(5));
        let text = MINIMAL
            .replace(
                "group_id = \"g\"",
                "group_id = \"g\"\nsession_timeout_ms = 45000",
            )
            .replace("[schema]\n", "[schema]\nregistry_timeout_ms = 250\n");
        let c = Config::parse(&text).expect("parses");
        assert_eq!(c.kafka.session_timeout, Duration::from_secs(45));
        assert_eq!(c.schema.registry_timeout, Duration::from_millis(250));

        let enrichment =
            Config::parse(include_str!("../../tuning/enrichment.toml")).expect("parses");
        match enrichment.processors.first() {
            Some(ProcessorConfig::Lookup {
                cache_ttl,
                timeout,
                speculative_delay,
                on_miss,
                ..
            }) => {
                assert_eq!(*cache_ttl, Duration::from_secs(60));
                assert_eq!(*timeout, Duration::from_secs(1));
                assert_eq!(*speculative_delay, Some(Duration::from_millis(20)));
                assert_eq!(*on_miss, MissPolicy::Default);
            }
            other => panic!("expected the lookup step first, got {other:?}"),
        }

        // Still milliseconds, still checked: zero and negative values are refused.
        let zero = MINIMAL.replace(
            "nodes = [\"127.0.0.1:9042\"]",
            "nodes = [\"127.0.0.1:9042\"]\nrequest_timeout_ms = 0",
        );
        assert!(invalid(&zero).contains("scylla.request_timeout_ms"));
        let negative = MINIMAL.replace(
            "group_id = \"g\"",
            "group_id = \"g\"\ncommit_interval_ms = -1",
        );
        assert!(parse_error(&negative).contains("commit_interval_ms"));
        // The Rust field name is not a file key.
        let renamed = MINIMAL.replace("group_id = \"g\"", "group_id = \"g\"\ncommit_interval = 5");
        assert!(parse_error(&renamed).contains("commit_interval"));
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

    fn parse_error(text: &str) -> String {
        match Config::parse(text) {
            Err(ConfigError::Parse { message, .. }) => message,
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn batch_rows_must_be_between_1_and_256() {
        let with = |n: &str| {
            MINIMAL.replace(
                "nodes = [\"127.0.0.1:9042\"]",
                &format!("nodes = [\"127.0.0.1:9042\"]\nbatch_max_rows = {n}"),
            )
        };
        assert!(invalid(&with("0")).contains("batch_max_rows must be at least 1"));
        assert!(invalid(&with("257")).contains("batch_max_rows must be at most 256"));
        let top = Config::parse(&with("256")).expect("parses");
        top.validate().expect("256 rows per batch is allowed");
        assert_eq!(top.scylla.batch_max_rows, 256);
    }

    #[test]
    fn each_enum_refuses_a_bad_value_naming_the_key() {
        let offset = MINIMAL.replace(
            "group_id = \"g\"",
            "group_id = \"g\"\noffset_reset = \"newest\"",
        );
        let consistency = MINIMAL.replace(
            "nodes = [\"127.0.0.1:9042\"]",
            "nodes = [\"127.0.0.1:9042\"]\nconsistency = \"lots\"",
        );
        let nulls = format!("{MINIMAL}null_values = \"zero\"\n");
        let source = format!("{MINIMAL}timestamp_source = \"clock\"\n");
        let enrichment = include_str!("../../tuning/enrichment.toml");
        let miss = enrichment.replace("on_miss = \"default\"", "on_miss = \"ignore\"");
        // Inside [[processors]] toml's own message points at the step; ours names the key.
        let step_nulls = enrichment.replace(
            "table = { keyspace = \"shardline\", table = \"visits_by_uid\",",
            "table = { keyspace = \"shardline\", table = \"visits_by_uid\", null_values = \"zero\",",
        );
        let step_source = enrichment.replace(
            "table = { keyspace = \"shardline\", table = \"visits_by_uid\",",
            "table = { keyspace = \"shardline\", table = \"visits_by_uid\", timestamp_source = \"clock\",",
        );
        for (text, key, value) in [
            (offset.as_str(), "offset_reset", "newest"),
            (consistency.as_str(), "consistency", "lots"),
            (nulls.as_str(), "null_values", "zero"),
            (source.as_str(), "timestamp_source", "clock"),
            (miss.as_str(), "on_miss", "ignore"),
            (step_nulls.as_str(), "null_values", "zero"),
            (step_source.as_str(), "timestamp_source", "clock"),
        ] {
            assert!(
                text.contains(&format!("\"{value}\"")),
                "the test edit of {key} applied"
            );
            let m = parse_error(text);
            assert!(m.contains(key) && m.contains(value), "{key}: {m}");
        }
    }

    #[test]
    fn consistency_is_accepted_in_snake_and_upper_case() {
        for (spelling, level, driver) in [
            (
                "local_quorum",
                Consistency::LocalQuorum,
                scylla::statement::Consistency::LocalQuorum,
            ),
            (
                "LOCAL_QUORUM",
                Consistency::LocalQuorum,
                scylla::statement::Consistency::LocalQuorum,
            ),
            (
                "LOCAL_ONE",
                Consistency::LocalOne,
                scylla::statement::Consistency::LocalOne,
            ),
            ("one", Consistency::One, scylla::statement::Consistency::One),
            (
                "EACH_QUORUM",
                Consistency::EachQuorum,
                scylla::statement::Consistency::EachQuorum,
            ),
            ("any", Consistency::Any, scylla::statement::Consistency::Any),
        ] {
            let text = MINIMAL.replace(
                "nodes = [\"127.0.0.1:9042\"]",
                &format!("nodes = [\"127.0.0.1:9042\"]\nconsistency = \"{spelling}\""),
            );
            let c = Config::parse(&text).unwrap_or_else(|e| panic!("{spelling}: {e}"));
            assert_eq!(c.scylla.consistency, level, "{spelling}");
            assert_eq!(c.scylla.consistency.to_driver(), driver, "{spelling}");
        }
    }

    #[test]
    fn the_other_enums_parse_their_values() {
        let text = format!(
            "{MINIMAL}null_values = \"null\"\ntimestamp_source = \"fixed\"\ntimestamp_fixed_us = 7\n"
        )
        .replace(
            "group_id = \"g\"",
            "group_id = \"g\"\noffset_reset = \"latest\"",
        );
        let c = Config::parse(&text).expect("parses");
        c.validate().expect("valid");
        assert_eq!(c.kafka.offset_reset, OffsetReset::Latest);
        assert_eq!(c.kafka.offset_reset.as_str(), "latest");
        assert_eq!(OffsetReset::Earliest.as_str(), "earliest");
        assert_eq!(c.table.null_values, NullValues::Null);
        assert_eq!(c.table.timestamp_source, TimestampSource::Fixed);
        assert_eq!(
            c.table.write_timestamp().expect("valid"),
            WriteTimestamp::Fixed(7)
        );
        let now = Config::parse(&format!("{MINIMAL}timestamp_source = \"now\"\n")).expect("parses");
        assert_eq!(
            now.table.write_timestamp().expect("valid"),
            WriteTimestamp::Now
        );
        let field = Config::parse(&format!(
            "{MINIMAL}timestamp_source = \"field\"\ntimestamp_field = \"ts\"\n"
        ))
        .expect("parses");
        assert_eq!(
            field.table.write_timestamp().expect("valid"),
            WriteTimestamp::Field("ts".into())
        );
        for (policy, want) in [
            ("drop", MissPolicy::Drop),
            ("default", MissPolicy::Default),
            ("dead_letter", MissPolicy::DeadLetter),
        ] {
            let text = include_str!("../../tuning/enrichment.toml")
                .replace("on_miss = \"default\"", &format!("on_miss = \"{policy}\""));
            let c = Config::parse(&text).unwrap_or_else(|e| panic!("{policy}: {e}"));
            assert!(
                matches!(c.processors.first(), Some(ProcessorConfig::Lookup { on_miss, .. }) if *on_miss == want),
                "{policy}"
            );
        }
    }

    #[test]
    fn dead_letters_carry_source_headers_unless_told_not_to() {
        let default = Config::parse(MINIMAL).expect("the minimal config parses");
        assert!(default.kafka.dead_letter_source_headers);
        let off = Config::parse(&MINIMAL.replace(
            "dead_letter_topic = \"navigation.dlq\"",
            "dead_letter_topic = \"navigation.dlq\"\ndead_letter_source_headers = false",
        ))
        .expect("a bool parses");
        assert!(!off.kafka.dead_letter_source_headers);
        assert!(Config::parse(&MINIMAL.replace(
            "dead_letter_topic = \"navigation.dlq\"",
            "dead_letter_topic = \"navigation.dlq\"\ndead_letter_source_headers = \"no\"",
        ))
        .is_err());
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
            "nodes = []\nconsistency = \"QUORUM\""
        ))
        .contains("scylla.nodes"));
        assert!(
            invalid(&format!("{MINIMAL}ttl_seconds = 5\nttl_field = \"t\"\n"))
                .contains("exclusive")
        );
        assert!(invalid(&format!("{MINIMAL}timestamp_source = \"field\"\n"))
            .contains("table.timestamp_field"));
        assert!(invalid(&format!("{MINIMAL}timestamp_source = \"fixed\"\n"))
            .contains("table.timestamp_fixed_us"));
        assert!(invalid(&format!(
            "{MINIMAL}timestamp_source = \"fixed\"\ntimestamp_fixed_us = 1\ntimestamp_field = \"ts\"\n"
        ))
        .contains("table.timestamp_field is only used"));
        assert!(
            invalid(&format!("{MINIMAL}ttl_seconds = 3000000000\n")).contains("table.ttl_seconds")
        );
        assert!(
            invalid(&MINIMAL.replace("keyspace = \"ks\"", "keyspace = \"\""))
                .contains("table.keyspace")
        );
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
    fn statistics_interval_may_be_longer_but_not_off() {
        let with = |v: &str| {
            MINIMAL.replace(
                "dead_letter_topic = \"navigation.dlq\"",
                &format!("dead_letter_topic = \"navigation.dlq\"\n[kafka.librdkafka]\n\"statistics.interval.ms\" = \"{v}\""),
            )
        };
        let c = Config::parse(&with("5000")).expect("parses");
        c.validate().expect("a longer interval is valid");
        let consumer = crate::kafka::consumer_config(&c.kafka, "t");
        assert_eq!(
            consumer.get("statistics.interval.ms"),
            Some("5000"),
            "not overwritten"
        );
        let producer = crate::kafka::producer_config(&c.kafka, "t");
        assert_eq!(
            producer.get("statistics.interval.ms"),
            None,
            "consumers only"
        );
        for off in ["0", "soon", "10000"] {
            assert!(
                invalid(&with(off)).contains("statistics.interval.ms"),
                "{off}"
            );
        }
        let default =
            crate::kafka::consumer_config(&Config::parse(MINIMAL).expect("parses").kafka, "t");
        assert_eq!(default.get("statistics.interval.ms"), Some("5000"));
    }

    #[test]
    fn env_overrides_brokers_nodes_and_secrets() {
        let mut c = Config::parse(MINIMAL).expect("parses");
        c.apply_env(|k| match k {
            "SHARDLINE_KAFKA_BROKERS" => Some("k1:9092,k2:9092".into()),
            "SHARDLINE_SCYLLA_NODES" => Some("s1:9042, s2:9042".into()),
            "SHARDLINE_KAFKA_SASL_PASSWORD" => Some("hunter2".into()),
            "SHARDLINE_SCYLLA_PASSWORD" => Some("correct-horse".into()),
            _ => None,
        });
        assert_eq!(c.kafka.brokers, "k1:9092,k2:9092");
        assert_eq!(c.scylla.nodes, vec!["s1:9042", "s2:9042"]);
        assert_eq!(
            c.kafka.librdkafka.get("sasl.password").map(String::as_str),
            Some("hunter2")
        );
        assert_eq!(c.scylla.password.as_deref(), Some("correct-horse"));
    }

    #[test]
    fn the_scylla_password_is_not_a_file_key() {
        let text = MINIMAL.replace(
            "nodes = [\"127.0.0.1:9042\"]",
            "nodes = [\"127.0.0.1:9042\"]\nusername = \"u\"\npassword = \"in-the-file\"",
        );
        assert!(parse_error(&text).contains("password"));
    }

    #[test]
    fn routes_have_topics_of_their_own_and_their_own_fields() {
        let route = |name: &str, topic: &str| {
            format!(
                "\n[[routes]]\nname = \"{name}\"\ntopics = [\"{topic}\"]\n[routes.table]\n\
                 keyspace = \"ks\"\ntable = \"kv\"\nconsistency = \"local_one\"\n\
                 [routes.table.columns]\nk = \"kafka.key\"\nv = \"value\"\n"
            )
        };
        let c = Config::parse(&format!("{MINIMAL}{}", route("kv", "kv-topic"))).expect("parses");
        c.validate().expect("valid");
        assert_eq!(c.all_topics(), vec!["navigation", "kv-topic"]);
        let routes = c.routes();
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[1].name, "kv");
        assert_eq!(routes[1].subject(), "kv-topic-value");
        assert_eq!(routes[1].needed_fields(), vec!["value", "kafka.key"]);
        assert_eq!(routes[1].decoded_fields(), vec!["value"]);
        assert_eq!(routes[1].table.consistency, Some(Consistency::LocalOne));
        assert_eq!(c.table.consistency, None);
        let refused = |extra: String, part: &str| {
            let c = Config::parse(&format!("{MINIMAL}{extra}")).expect("parses");
            let e = c.validate().expect_err(part).to_string();
            assert!(e.contains(part), "{e} lacks {part}");
        };
        refused(
            route("kv", "navigation"),
            "'navigation' belongs to another route",
        );
        refused(
            format!("{}{}", route("kv", "a"), route("kv", "b")),
            "unique, non-empty name",
        );
        refused(route("primary", "a"), "other than 'primary'");
        refused(route("kv", "navigation.dlq"), "dead-letter topic");
        refused(
            route("kv", "a").replace("\"kafka.key\"", "\"kafka.bogus\""),
            "'kafka.bogus' is not a Kafka metadata field",
        );
    }

    #[test]
    fn a_topic_regex_takes_the_matching_topics_not_listed_elsewhere() {
        let route = |name: &str, re: &str| {
            format!(
                "\n[[routes]]\nname = \"{name}\"\ntopic_regex = \"{re}\"\n[routes.table]\n\
                 keyspace = \"ks\"\ntable = \"kv\"\n[routes.table.columns]\nk = \"kafka.key\"\n"
            )
        };
        let text = format!(
            "{MINIMAL}{}{}",
            route("orders", "orders-.*"),
            route("rest", ".*")
        );
        let mut c = Config::parse(&text).expect("parses");
        c.validate().expect("valid");
        let existing: Vec<String> = [
            "navigation",
            "navigation.dlq",
            "orders-eu",
            "orders-us",
            "xorders-eu",
            "__consumer_offsets",
            "audit",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        c.resolve_topic_regexes(&existing).expect("resolves");
        // Matched whole (not `xorders-eu`), sorted; the catch-all takes what is left, not the
        // primary route's topic, the dead-letter topic or internal ones.
        assert_eq!(c.routes[0].topics, vec!["orders-eu", "orders-us"]);
        assert_eq!(c.routes[1].topics, vec!["audit", "xorders-eu"]);
        let mut none =
            Config::parse(&format!("{MINIMAL}{}", route("orders", "nothing-.*"))).expect("parses");
        let e = none.resolve_topic_regexes(&existing).expect_err("no match");
        assert!(e.to_string().contains("matches no topic"), "{e}");
        let both = format!("{MINIMAL}{}", route("x", "a.*"))
            .replace("topic_regex", "topics = [\"a\"]\ntopic_regex");
        let e = Config::parse(&both)
            .expect("parses")
            .validate()
            .expect_err("exclusive");
        assert!(e.to_string().contains("exclusive"), "{e}");
        let bad = format!("{MINIMAL}{}", route("x", "(unclosed"));
        let e = Config::parse(&bad)
            .expect("parses")
            .validate()
            .expect_err("bad regex");
        assert!(e.to_string().contains("does not parse"), "{e}");
    }

    // Fails on the old code: both were accepted, and the filter read a null on every record (the
    // name was the lookup's output slot, not decoded), the lookup failed every record.
    #[test]
    fn a_field_read_before_the_lookup_that_sets_it_is_refused() {
        let lookup = |name: &str, key: &str, out: &str| {
            format!(
                "\n[[processors]]\nkind = \"lookup\"\nname = \"{name}\"\n\
                 query = \"SELECT s FROM ks.u WHERE k = ?\"\nkey_fields = [\"{key}\"]\n\
                 columns = {{ s = \"{out}\" }}\n"
            )
        };
        let filter = |field: &str| {
            format!(
                "\n[[processors]]\nkind = \"filter\"\nname = \"f\"\nfield = \"{field}\"\n\
                 equals = \"eu\"\n"
            )
        };
        let m = invalid(&format!(
            "{MINIMAL}{}{}",
            filter("region"),
            lookup("geo", "uid", "region")
        ));
        assert!(
            m.contains("processors.f") && m.contains("'region'") && m.contains("geo"),
            "{m}"
        );
        let m = invalid(&format!("{MINIMAL}{}", lookup("self", "seg", "seg")));
        assert!(m.contains("processors.self"), "{m}");
        // After the lookup that sets it, the field is there to read.
        Config::parse(&format!(
            "{MINIMAL}{}{}",
            lookup("geo", "uid", "region"),
            filter("region")
        ))
        .expect("parses")
        .validate()
        .expect("read after it is set");
        // Even if a later lookup sets it again (a fallback).
        Config::parse(&format!(
            "{MINIMAL}{}{}{}",
            lookup("geo", "uid", "region"),
            filter("region"),
            lookup("fallback", "url", "region")
        ))
        .expect("parses")
        .validate()
        .expect("set before, set again after");
    }

    // Fails on the old code: regexes were resolved after validation, which could not see the
    // topics they would match, so a produce step's output topic became a source of its own route.
    #[test]
    fn a_topic_regex_never_takes_a_topic_a_produce_step_writes() {
        let text = format!(
            "{MINIMAL}\n[[processors]]\nkind = \"produce\"\nname = \"out\"\ntopic = \"nav-enriched\"\n\
             schema = '{{\"type\":\"record\",\"name\":\"O\",\"fields\":[{{\"name\":\"uid\",\"type\":\"string\"}}]}}'\n\
             \n[[routes]]\nname = \"nav\"\ntopic_regex = \"nav-.*\"\n[routes.table]\n\
             keyspace = \"ks\"\ntable = \"kv\"\n[routes.table.columns]\nk = \"kafka.key\"\n"
        );
        let mut c = Config::parse(&text).expect("parses");
        c.validate().expect("valid");
        let existing: Vec<String> = ["navigation", "nav-a", "nav-enriched"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        c.resolve_topic_regexes(&existing).expect("resolves");
        assert_eq!(c.routes[0].topics, vec!["nav-a"]);
    }

    // Fails on the old code: both were accepted, and every write or lookup then failed at run time.
    #[test]
    fn a_ttl_beyond_the_database_limit_and_a_zero_lookup_timeout_are_refused() {
        let ttl = |n: u64| {
            MINIMAL.replace(
                "keyspace = \"ks\"",
                &format!("keyspace = \"ks\"\nttl_seconds = {n}"),
            )
        };
        Config::parse(&ttl(MAX_TTL_SECONDS as u64))
            .expect("parses")
            .validate()
            .expect("20 years is the limit, included");
        let m = invalid(&ttl(MAX_TTL_SECONDS as u64 + 1));
        assert!(
            m.contains("table.ttl_seconds") && m.contains("630720000"),
            "{m}"
        );
        let text = format!(
            "{MINIMAL}\n[[processors]]\nkind = \"lookup\"\nname = \"seg\"\n\
             query = \"SELECT s FROM ks.u WHERE uid = ?\"\nkey_fields = [\"uid\"]\n\
             columns = {{ s = \"segment\" }}\ntimeout_ms = 0\n"
        );
        let m = invalid(&text);
        assert!(m.contains("processors.seg.timeout_ms"), "{m}");
    }

    // Fails on the old code: the registry had no TLS or credential settings at all.
    #[test]
    fn registry_credentials_come_from_the_environment_only_and_are_checked_together() {
        let with = |schema_extra: &str| {
            MINIMAL.replace("[schema]\n", &format!("[schema]\n{schema_extra}\n"))
        };
        // Secrets are not file keys.
        for key in ["password = \"p\"", "bearer_token = \"t\""] {
            assert!(parse_error(&with(key)).contains(key.split(' ').next().unwrap_or("")));
        }
        let https = "registry_url = \"https://r:8081\"";
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let checked = |text: String, pairs: &'static [(&'static str, &'static str)]| {
            let mut c = Config::parse(&text.replace(
                "registry_url = \"http://127.0.0.1:8081/apis/ccompat/v7\"\n",
                "",
            ))
            .expect("parses");
            c.apply_env(env(pairs));
            c.validate().map(|_| c).map_err(|e| e.to_string())
        };
        let user = format!("{https}\nusername = \"u\"");
        let ok = checked(with(&user), &[("SHARDLINE_REGISTRY_PASSWORD", "pw-61d0")])
            .expect("basic auth with its password from the environment");
        assert_eq!(ok.schema.password.as_deref(), Some("pw-61d0"));
        let shown = format!("{:?}", ok.schema);
        assert!(
            !shown.contains("pw-61d0") && shown.contains("<redacted>"),
            "{shown}"
        );
        let e = checked(with(&user), &[]).expect_err("no password");
        assert!(e.contains("SHARDLINE_REGISTRY_PASSWORD"), "{e}");
        let e =
            checked(with(https), &[("SHARDLINE_REGISTRY_PASSWORD", "pw")]).expect_err("no user");
        assert!(e.contains("schema.username"), "{e}");
        const BOTH: &[(&str, &str)] = &[
            ("SHARDLINE_REGISTRY_PASSWORD", "pw"),
            ("SHARDLINE_REGISTRY_TOKEN", "tk"),
        ];
        let e = checked(with(&user), BOTH).expect_err("two credentials");
        assert!(e.contains("exclusive"), "{e}");
        let token =
            checked(with(https), &[("SHARDLINE_REGISTRY_TOKEN", "tk-93")]).expect("a token");
        assert!(!format!("{:?}", token.schema).contains("tk-93"));
        let e = checked(with(&format!("{https}\ntls_cert_file = \"c\"")), &[]).expect_err("no key");
        assert!(e.contains("tls_key_file"), "{e}");
        let e = checked(with(https), &[("SHARDLINE_REGISTRY_TOKEN", "tk-93\n")])
            .expect_err("a line break in a token");
        assert!(e.contains("visible ASCII") && !e.contains("tk-93"), "{e}");
        let http_user = "registry_url = \"http://r:8081\"\nusername = \"u\"";
        let e = checked(with(http_user), &[("SHARDLINE_REGISTRY_PASSWORD", "pw")])
            .expect_err("credentials over plain HTTP");
        assert!(e.contains("https://"), "{e}");
        let plain = "registry_url = \"http://r:8081\"\ntls_ca_file = \"ca\"";
        let e = checked(with(plain), &[]).expect_err("TLS files on plain HTTP");
        assert!(e.contains("https://"), "{e}");
    }

    #[test]
    fn debug_output_redacts_the_secrets() {
        let mut c = Config::parse(&MINIMAL.replace(
            "nodes = [\"127.0.0.1:9042\"]",
            "nodes = [\"127.0.0.1:9042\"]\nusername = \"writer\"",
        ))
        .expect("parses");
        c.apply_env(|k| match k {
            "SHARDLINE_SCYLLA_PASSWORD" => Some("correct-horse".into()),
            "SHARDLINE_KAFKA_SASL_PASSWORD" => Some("hunter2".into()),
            _ => None,
        });
        for shown in [
            format!("{c:?}"),
            format!("{:?}", c.scylla),
            format!("{c:#?}"),
        ] {
            assert!(!shown.contains("correct-horse"), "{shown}");
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
            assert!(
                shown.contains("writer"),
                "the username is not a secret: {shown}"
            );
        }
        let anonymous = Config::parse(MINIMAL).expect("parses");
        assert!(format!("{:?}", anonymous.scylla).contains("password: None"));
    }

    #[test]
    fn shipped_profiles_parse_and_validate() {
        for (name, text) in [
            ("navigation", include_str!("../../tuning/navigation.toml")),
            ("latency", include_str!("../../tuning/latency.toml")),
            ("throughput", include_str!("../../tuning/throughput.toml")),
            ("enrichment", include_str!("../../tuning/enrichment.toml")),
            // secured.toml validates with its secrets: see the test below.
        ] {
            let c = Config::parse(text).unwrap_or_else(|e| panic!("tuning/{name}.toml: {e}"));
            c.validate()
                .unwrap_or_else(|e| panic!("tuning/{name}.toml: {e}"));
        }
        let latency = Config::parse(include_str!("../../tuning/latency.toml")).expect("parses");
        let throughput =
            Config::parse(include_str!("../../tuning/throughput.toml")).expect("parses");
        assert!(latency.scylla.max_in_flight_per_shard < throughput.scylla.max_in_flight_per_shard);
        assert_eq!(latency.shards.cores, Some(vec![1, 2, 3]));
    }

    #[test]
    fn the_secured_profile_takes_its_passwords_from_the_shipped_environment_file_only() {
        let text = include_str!("../../tuning/secured.toml");
        let mut c = Config::parse(text).expect("parses");
        assert_eq!(c.scylla.password, None, "no password in the file");
        assert!(!c.kafka.librdkafka.contains_key("sasl.password"));
        // The variables tuning/secrets.env sets, read the way apply_env reads the environment.
        let env: std::collections::HashMap<String, String> =
            include_str!("../../tuning/secrets.env")
                .lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        c.apply_env(|k| env.get(k).cloned());
        c.validate().expect("valid with its secrets");
        assert_eq!(c.scylla.password.as_deref(), Some("change-me"));
        assert_eq!(
            c.kafka.librdkafka.get("sasl.password").map(String::as_str),
            Some("change-me")
        );
        assert_eq!(c.kafka.librdkafka["security.protocol"], "SASL_SSL");
        assert!(c.scylla.tls_ca_file.is_some() && c.scylla.tls_cert_file.is_some());
        assert_eq!(c.schema.password.as_deref(), Some("change-me"));
        assert!(c.schema.tls_ca_file.is_some() && c.schema.tls_cert_file.is_some());
        let shown = format!("{c:?}");
        assert!(!shown.contains("change-me"), "Debug redacts every password");
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
        assert!(parse_error(&bad_miss).contains("on_miss"));
        let bad_q = base.replace("WHERE uid = ?", "WHERE uid = ? AND x = ?");
        assert!(invalid(&bad_q).contains("one '?' per key field"));
    }

    #[test]
    fn insert_step_tables_get_every_table_check() {
        let base = include_str!("../../tuning/enrichment.toml");
        let visits =
            "table = { keyspace = \"shardline\", table = \"visits_by_uid\", ttl_seconds = 2592000,";
        assert!(
            base.contains(visits),
            "the enrichment profile still has the visits step"
        );
        let both_ttls = base.replace(
            visits,
            "table = { keyspace = \"shardline\", table = \"visits_by_uid\", ttl_seconds = 2592000, ttl_field = \"ttl\",",
        );
        let m = invalid(&both_ttls);
        assert!(
            m.contains("processors.visits.table.ttl_seconds") && m.contains("exclusive"),
            "{m}"
        );
        let no_keyspace = base.replace(
            visits,
            "table = { keyspace = \"\", table = \"visits_by_uid\",",
        );
        assert!(invalid(&no_keyspace).contains("processors.visits.table.keyspace"));
        let huge_ttl = base.replace(
            visits,
            "table = { keyspace = \"shardline\", table = \"visits_by_uid\", ttl_seconds = 3000000000,",
        );
        assert!(invalid(&huge_ttl).contains("processors.visits.table.ttl_seconds"));
        let lone_field = base.replace(
            visits,
            "table = { keyspace = \"shardline\", table = \"visits_by_uid\", ttl_seconds = 2592000, timestamp_source = \"field\",",
        );
        assert!(invalid(&lone_field).contains("processors.visits.table.timestamp_field"));
    }

    #[test]
    fn needed_fields_are_deduplicated_in_slot_order() {
        let text = format!("{MINIMAL}timestamp_source = \"field\"\ntimestamp_field = \"ts\"\n");
        let c = Config::parse(&text).expect("parses");
        assert_eq!(c.needed_fields(), vec!["uid", "url", "ts"]);
    }
}
