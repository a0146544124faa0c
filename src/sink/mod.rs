//! The row sink: one Scylla session per shard, the INSERT prepared once, the field → column mapping
//! checked against the live table, and the binding of a decoded row into statement values.
//!
//! Guarantee: [`Binder::bind`] turns a decoded row into exactly the values of
//! `INSERT ... USING TTL ? AND TIMESTAMP ?`, with the write timestamp taken from the Kafka record by
//! default, so a replay writes identical cells. Write errors are classified: retryable (timeouts,
//! unavailable, overloaded, lost connections) or permanent (invalid values), see [`SinkError`].
//! Precondition: [`ScyllaWriter::connect`] runs inside the shard's tokio bridge.

pub mod mapping;

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures::future::LocalBoxFuture;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::Consistency;
use scylla::value::{CqlValue, MaybeUnset};
use thiserror::Error;

use crate::codec::{Row, Value};
use crate::config::{Config, TimestampSource};
use crate::runtime::bridge::TokioBridge;
pub use mapping::{ColumnMap, CqlType};

/// Errors of the sink boundary.
#[derive(Debug, Error)]
pub enum SinkError {
    /// A record's value does not fit its column: permanent for that record.
    #[error("column '{column}': {reason}")]
    Mapping {
        column: String,
        reason: &'static str,
    },
    /// A write the database refused or did not answer.
    #[error("write failed ({class}): {message}")]
    Write {
        retryable: bool,
        class: &'static str,
        message: String,
    },
    /// Start-up: the table or mapping does not match the config.
    #[error("{0}")]
    Schema(String),
    /// Start-up: no session could be built.
    #[error("cannot connect to {nodes}: {message}")]
    Connect { nodes: String, message: String },
}

impl SinkError {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            SinkError::Write {
                retryable: true,
                ..
            } | SinkError::Connect { .. }
        )
    }

    /// The error class for dead-letter headers and metric labels.
    pub fn class(&self) -> &'static str {
        match self {
            SinkError::Mapping { .. } => "mapping",
            SinkError::Write { class, .. } => class,
            SinkError::Schema(_) => "schema",
            SinkError::Connect { .. } => "connect",
        }
    }

    pub(crate) fn from_execution(e: ExecutionError) -> SinkError {
        let (retryable, class) = match &e {
            ExecutionError::RequestTimeout(_) => (true, "timeout"),
            ExecutionError::ConnectionPoolError(_) | ExecutionError::EmptyPlan => {
                (true, "unavailable")
            }
            ExecutionError::LastAttemptError(a) => match a {
                RequestAttemptError::DbError(db, _) => match db {
                    DbError::WriteTimeout { .. } | DbError::ReadTimeout { .. } => (true, "timeout"),
                    DbError::Unavailable { .. } | DbError::IsBootstrapping => (true, "unavailable"),
                    DbError::Overloaded | DbError::RateLimitReached { .. } => (true, "overloaded"),
                    DbError::WriteFailure { .. }
                    | DbError::ServerError
                    | DbError::TruncateError => (true, "server"),
                    _ => (false, "invalid"),
                },
                RequestAttemptError::BrokenConnectionError(_)
                | RequestAttemptError::UnableToAllocStreamId => (true, "connection"),
                RequestAttemptError::SerializationError(_)
                | RequestAttemptError::CqlRequestSerialization(_) => (false, "invalid"),
                _ => (true, "connection"),
            },
            _ => (false, "invalid"),
        };
        SinkError::Write {
            retryable,
            class,
            message: e.to_string(),
        }
    }
}

/// Parses a consistency name from config.
pub fn parse_consistency(s: &str) -> Option<Consistency> {
    Some(match s.to_ascii_lowercase().as_str() {
        "any" => Consistency::Any,
        "one" => Consistency::One,
        "two" => Consistency::Two,
        "three" => Consistency::Three,
        "quorum" => Consistency::Quorum,
        "all" => Consistency::All,
        "local_quorum" => Consistency::LocalQuorum,
        "each_quorum" => Consistency::EachQuorum,
        "local_one" => Consistency::LocalOne,
        _ => return None,
    })
}

/// Statement values for one row: the mapped columns, then TTL, then write timestamp (µs).
/// `Unset` leaves a column untouched (no tombstone); `Set(None)` writes a CQL null (a tombstone).
pub type BoundRow = Vec<MaybeUnset<Option<CqlValue>>>;

/// The I/O seam for writes, so unit tests and the null-sink benchmark can stand in for Scylla.
pub trait RowWriter {
    fn write(&self, values: Rc<BoundRow>) -> LocalBoxFuture<'static, Result<(), SinkError>>;
}

/// Writes nothing: the benchmark's null sink (decode and map only).
pub struct NullWriter;

impl RowWriter for NullWriter {
    fn write(&self, _values: Rc<BoundRow>) -> LocalBoxFuture<'static, Result<(), SinkError>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Where the TTL comes from.
#[derive(Debug, Clone)]
enum Ttl {
    Fixed(i32),
    Slot(usize),
}

/// Where the write timestamp comes from.
#[derive(Debug, Clone)]
enum Ts {
    Kafka,
    Slot(usize),
    Fixed(i64),
    Now,
}

/// Turns decoded rows into statement values. Built once per shard.
#[derive(Debug, Clone)]
pub struct Binder {
    pub columns: Vec<ColumnMap>,
    ttl: Ttl,
    ts: Ts,
    /// Null fields write CQL nulls (tombstones) instead of leaving the column unset.
    write_nulls: bool,
}

impl Binder {
    /// `fields` is the decoder's slot order (`Config::needed_fields`); `types` the live column types.
    pub fn new(
        config: &Config,
        fields: &[String],
        types: &std::collections::HashMap<String, CqlType>,
    ) -> Result<Binder, SinkError> {
        Binder::for_table(&config.table, fields, types)
    }

    /// The binder of any table config (the primary `[table]` or an insert processor's).
    pub fn for_table(
        table: &crate::config::TableConfig,
        fields: &[String],
        types: &std::collections::HashMap<String, CqlType>,
    ) -> Result<Binder, SinkError> {
        let slot_of = |f: &str| fields.iter().position(|x| x == f);
        let mut columns = Vec::with_capacity(table.columns.len());
        for (column, field) in &table.columns {
            let ty = types.get(column).cloned().ok_or_else(|| {
                SinkError::Schema(format!(
                    "column '{column}' (mapped from field '{field}') does not exist in table {}.{}",
                    table.keyspace, table.table
                ))
            })?;
            let slot = slot_of(field)
                .ok_or_else(|| SinkError::Schema(format!("field '{field}' is not decoded")))?;
            columns.push(ColumnMap {
                column: column.clone(),
                field: field.clone(),
                slot,
                ty,
            });
        }
        let ttl = match &table.ttl_field {
            Some(f) => Ttl::Slot(
                slot_of(f)
                    .ok_or_else(|| SinkError::Schema(format!("ttl field '{f}' is not decoded")))?,
            ),
            None => Ttl::Fixed(i32::try_from(table.ttl_seconds).map_err(|_| {
                SinkError::Schema("table.ttl_seconds is larger than CQL allows".into())
            })?),
        };
        let ts = match table
            .timestamp_source()
            .map_err(|e| SinkError::Schema(e.to_string()))?
        {
            TimestampSource::Kafka => Ts::Kafka,
            TimestampSource::Now => Ts::Now,
            TimestampSource::Fixed(us) => Ts::Fixed(us),
            TimestampSource::Field(f) => Ts::Slot(slot_of(&f).ok_or_else(|| {
                SinkError::Schema(format!("timestamp field '{f}' is not decoded"))
            })?),
        };
        Ok(Binder {
            columns,
            ttl,
            ts,
            write_nulls: table.null_values == "null",
        })
    }

    /// The prepared statement text.
    pub fn insert_cql(&self, keyspace: &str, table: &str) -> String {
        let cols: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("\"{}\"", c.column))
            .collect();
        let marks = vec!["?"; self.columns.len()].join(", ");
        format!(
            "INSERT INTO \"{keyspace}\".\"{table}\" ({}) VALUES ({marks}) USING TTL ? AND TIMESTAMP ?",
            cols.join(", ")
        )
    }

    /// Binds a row that other steps still read (its values are cloned, not taken).
    pub fn bind_cloned(
        &self,
        values: &[Value],
        kafka_ts_ms: Option<i64>,
    ) -> Result<BoundRow, SinkError> {
        let mut row = Row {
            values: self
                .columns
                .iter()
                .map(|c| c.slot)
                .chain(self.special_slots())
                .fold(vec![Value::Null; values.len()], |mut acc, slot| {
                    if let (Some(dst), Some(src)) = (acc.get_mut(slot), values.get(slot)) {
                        *dst = src.clone();
                    }
                    acc
                }),
        };
        self.bind(&mut row, kafka_ts_ms)
    }

    fn special_slots(&self) -> impl Iterator<Item = usize> {
        let ttl = match self.ttl {
            Ttl::Slot(i) => Some(i),
            Ttl::Fixed(_) => None,
        };
        let ts = match self.ts {
            Ts::Slot(i) => Some(i),
            _ => None,
        };
        ttl.into_iter().chain(ts)
    }

    /// Binds one decoded row; `kafka_ts_ms` is the record timestamp (None if the record has none).
    /// The mapped values are moved out of the row.
    pub fn bind(&self, row: &mut Row, kafka_ts_ms: Option<i64>) -> Result<BoundRow, SinkError> {
        // TTL and timestamp first: a field may be both a column and the timestamp, and binding the
        // columns moves their values out of the row.
        let ttl = match self.ttl {
            Ttl::Fixed(s) => s,
            Ttl::Slot(i) => match row.values.get(i) {
                Some(Value::Int(s)) => *s,
                Some(Value::Long(s)) => {
                    i32::try_from(*s).map_err(|_| mapping_err("ttl", "ttl out of range"))?
                }
                Some(Value::Null) | None => 0,
                _ => return Err(mapping_err("ttl", "ttl field is not an int or long")),
            },
        };
        if ttl < 0 {
            return Err(mapping_err("ttl", "negative ttl"));
        }
        let ts_us = match self.ts {
            Ts::Kafka => kafka_ts_ms
                .map(|ms| ms.saturating_mul(1000))
                .ok_or_else(|| mapping_err("timestamp", "record has no Kafka timestamp"))?,
            Ts::Now => now_us(),
            Ts::Fixed(us) => us,
            Ts::Slot(i) => match row.values.get(i) {
                Some(Value::TimestampMillis(ms)) => ms.saturating_mul(1000),
                Some(Value::TimestampMicros(us)) | Some(Value::Long(us)) => *us,
                _ => {
                    return Err(mapping_err(
                        "timestamp",
                        "timestamp field is not a timestamp or long",
                    ))
                }
            },
        };
        let mut out = Vec::with_capacity(self.columns.len() + 2);
        for c in &self.columns {
            let v = row
                .values
                .get_mut(c.slot)
                .map(|v| std::mem::replace(v, Value::Null))
                .unwrap_or(Value::Null);
            let v = mapping::convert(v, &c.ty).map_err(|reason| SinkError::Mapping {
                column: c.column.clone(),
                reason,
            })?;
            out.push(match v {
                None if !self.write_nulls => MaybeUnset::Unset,
                v => MaybeUnset::Set(v),
            });
        }
        out.push(MaybeUnset::Set(Some(CqlValue::Int(ttl))));
        out.push(MaybeUnset::Set(Some(CqlValue::BigInt(ts_us))));
        Ok(out)
    }
}

fn mapping_err(column: &str, reason: &'static str) -> SinkError {
    SinkError::Mapping {
        column: column.to_string(),
        reason,
    }
}

/// Microseconds since the epoch.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// A shard's Scylla connection and its prepared INSERT.
pub struct ScyllaWriter {
    session: Arc<Session>,
    insert: PreparedStatement,
    handle: tokio::runtime::Handle,
}

impl ScyllaWriter {
    /// Another writer on the same session (the insert processors' tables).
    pub async fn for_table(
        &self,
        table: &crate::config::TableConfig,
        fields: &[String],
    ) -> Result<(ScyllaWriter, Binder), SinkError> {
        let session = self.session.clone();
        let (binder, insert) =
            crate::runtime::bridge::InTokio::new(self.handle.clone(), async move {
                let types = table_columns(&session, &table.keyspace, &table.table).await?;
                let binder = Binder::for_table(table, fields, &types)?;
                let cql = binder.insert_cql(&table.keyspace, &table.table);
                let insert = session
                    .prepare(cql.as_str())
                    .await
                    .map_err(|e| SinkError::Schema(format!("cannot prepare `{cql}`: {e}")))?;
                Ok::<_, SinkError>((binder, insert))
            })
            .await?;
        Ok((
            ScyllaWriter {
                session: self.session.clone(),
                insert,
                handle: self.handle.clone(),
            },
            binder,
        ))
    }

    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

/// Builds a session from config. Runs inside the bridge.
pub async fn connect(config: &Config) -> Result<Session, SinkError> {
    let s = &config.scylla;
    let mut policy = DefaultPolicy::builder().token_aware(true);
    if let Some(dc) = &s.local_datacenter {
        policy = policy.prefer_datacenter(dc.clone());
    }
    let consistency = parse_consistency(&s.consistency)
        .ok_or_else(|| SinkError::Schema(format!("bad consistency {}", s.consistency)))?;
    let profile = ExecutionProfile::builder()
        .consistency(consistency)
        .request_timeout(Some(Duration::from_millis(s.request_timeout_ms)))
        .load_balancing_policy(policy.build())
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(&s.nodes)
        .default_execution_profile_handle(profile.into_handle());
    if let Some(ca) = &s.tls_ca_file {
        builder = builder.tls_context(Some(tls_context(
            ca,
            s.tls_cert_file.as_deref(),
            s.tls_key_file.as_deref(),
        )?));
    }
    if let Some(user) = &s.username {
        let password = std::env::var("SHARDLINE_SCYLLA_PASSWORD").unwrap_or_default();
        builder = builder.user(user.clone(), password);
    }
    builder.build().await.map_err(|e| SinkError::Connect {
        nodes: s.nodes.join(","),
        message: e.to_string(),
    })
}

/// An OpenSSL context that verifies the nodes against `ca` and, with both given, presents a client cert.
fn tls_context(
    ca: &str,
    cert: Option<&str>,
    key: Option<&str>,
) -> Result<openssl::ssl::SslContext, SinkError> {
    use openssl::ssl::{SslContextBuilder, SslFiletype, SslMethod, SslVerifyMode};
    let err = |what: &str, e: openssl::error::ErrorStack| SinkError::Connect {
        nodes: String::new(),
        message: format!("TLS {what}: {e}"),
    };
    let mut b = SslContextBuilder::new(SslMethod::tls()).map_err(|e| err("context", e))?;
    b.set_ca_file(ca)
        .map_err(|e| err(&format!("CA file {ca}"), e))?;
    b.set_verify(SslVerifyMode::PEER);
    if let (Some(c), Some(k)) = (cert, key) {
        b.set_certificate_file(c, SslFiletype::PEM)
            .map_err(|e| err(&format!("certificate {c}"), e))?;
        b.set_private_key_file(k, SslFiletype::PEM)
            .map_err(|e| err(&format!("key {k}"), e))?;
    }
    Ok(b.build())
}

/// The live column types of a table. Empty if the table does not exist.
pub async fn table_columns(
    session: &Session,
    keyspace: &str,
    table: &str,
) -> Result<std::collections::HashMap<String, CqlType>, SinkError> {
    let res = session
        .query_unpaged(
            "SELECT column_name, type FROM system_schema.columns WHERE keyspace_name = ? AND table_name = ?",
            (keyspace, table),
        )
        .await
        .map_err(SinkError::from_execution)?;
    let rows = res
        .into_rows_result()
        .map_err(|e| SinkError::Schema(format!("system_schema.columns: {e}")))?;
    let mut out = std::collections::HashMap::new();
    for r in rows
        .rows::<(String, String)>()
        .map_err(|e| SinkError::Schema(format!("system_schema.columns: {e}")))?
    {
        let (name, ty) = r.map_err(|e| SinkError::Schema(format!("system_schema.columns: {e}")))?;
        // A non-frozen list appends cells keyed by a fresh timeuuid on every write, so a replay with the
        // same write timestamp duplicates its elements (measured in the replay test). Frozen lists and
        // sets are single cells or idempotent.
        if ty.starts_with("list<") {
            tracing::warn!(
                column = %name, r#type = %ty,
                "non-frozen list column: replays duplicate its elements; use frozen<list<..>> or set<..> for idempotent writes"
            );
        }
        out.insert(name, CqlType::parse(&ty));
    }
    if out.is_empty() {
        return Err(SinkError::Schema(format!(
            "table {keyspace}.{table} does not exist"
        )));
    }
    Ok(out)
}

impl ScyllaWriter {
    /// Connects, reads the table's columns, builds the binder, prepares the INSERT. Runs on the shard;
    /// everything tokio happens inside the bridge.
    pub async fn connect(
        config: &Config,
        fields: &[String],
        bridge: &TokioBridge,
    ) -> Result<(ScyllaWriter, Binder), SinkError> {
        let handle = bridge.handle().clone();
        let (session, binder, insert) = bridge
            .wrap(async {
                let session = connect(config).await?;
                let types =
                    table_columns(&session, &config.table.keyspace, &config.table.table).await?;
                let binder = Binder::new(config, fields, &types)?;
                let cql = binder.insert_cql(&config.table.keyspace, &config.table.table);
                let insert = session
                    .prepare(cql.as_str())
                    .await
                    .map_err(|e| SinkError::Schema(format!("cannot prepare `{cql}`: {e}")))?;
                Ok::<_, SinkError>((session, binder, insert))
            })
            .await?;
        Ok((
            ScyllaWriter {
                session: Arc::new(session),
                insert,
                handle,
            },
            binder,
        ))
    }
}

impl RowWriter for ScyllaWriter {
    fn write(&self, values: Rc<BoundRow>) -> LocalBoxFuture<'static, Result<(), SinkError>> {
        let session = self.session.clone();
        let insert = self.insert.clone();
        let fut = async move {
            session
                .execute_unpaged(&insert, &*values)
                .await
                .map(|_| ())
                .map_err(SinkError::from_execution)
        };
        Box::pin(crate::runtime::bridge::InTokio::new(
            self.handle.clone(),
            fut,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(extra: &str) -> Config {
        let text = format!(
            r#"
[kafka]
brokers = "b:9092"
group_id = "g"
topics = ["t"]
[schema]
registry_url = "http://r"
[scylla]
nodes = ["n:9042"]
[table]
keyspace = "ks"
table = "tb"
columns = {{ a = "fa", b = "fb" }}
{extra}
"#
        );
        Config::parse(&text).expect("test config parses")
    }

    fn types() -> HashMap<String, CqlType> {
        [
            ("a".to_string(), CqlType::Text),
            ("b".to_string(), CqlType::BigInt),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn binds_columns_ttl_and_kafka_timestamp_in_micros() {
        let c = config("ttl_seconds = 60");
        let fields = c.needed_fields();
        let b = Binder::new(&c, &fields, &types()).expect("binder");
        assert_eq!(
            b.insert_cql("ks", "tb"),
            "INSERT INTO \"ks\".\"tb\" (\"a\", \"b\") VALUES (?, ?) USING TTL ? AND TIMESTAMP ?"
        );
        let mut row = Row {
            values: vec![Value::Str("x".into()), Value::Int(5)],
        };
        let bound = b.bind(&mut row, Some(1_700_000_000_123)).expect("binds");
        let expect = [
            CqlValue::Text("x".into()),
            CqlValue::BigInt(5),
            CqlValue::Int(60),
            CqlValue::BigInt(1_700_000_000_123_000),
        ];
        assert_eq!(bound.len(), expect.len());
        for (b, e) in bound.iter().zip(expect) {
            assert!(
                matches!(b, MaybeUnset::Set(Some(v)) if *v == e),
                "{b:?} != {e:?}"
            );
        }
    }

    #[test]
    fn timestamp_from_field_and_missing_column() {
        let c = config("timestamp_source = \"field\"\ntimestamp_field = \"ts\"");
        let fields = c.needed_fields();
        let b = Binder::new(&c, &fields, &types()).expect("binder");
        let mut row = Row {
            values: vec![Value::Null, Value::Long(1), Value::TimestampMillis(2)],
        };
        let bound = b.bind(&mut row, None).expect("binds");
        assert!(matches!(
            bound.last(),
            Some(MaybeUnset::Set(Some(CqlValue::BigInt(2000))))
        ));
        assert!(
            matches!(bound.first(), Some(MaybeUnset::Unset)),
            "null leaves the column unset"
        );
        let c2 = config(
            "timestamp_source = \"field\"\ntimestamp_field = \"ts\"\nnull_values = \"null\"",
        );
        let b2 = Binder::new(&c2, &fields, &types()).expect("binder");
        let mut row = Row {
            values: vec![Value::Null, Value::Long(1), Value::TimestampMillis(2)],
        };
        assert!(matches!(
            b2.bind(&mut row, None).expect("binds").first(),
            Some(MaybeUnset::Set(None))
        ));

        let mut t = types();
        t.remove("b");
        let err = Binder::new(&c, &fields, &t).expect_err("column b is missing");
        assert!(
            err.to_string().contains("column 'b'") && err.to_string().contains("'fb'"),
            "{err}"
        );
    }

    #[test]
    fn fixed_write_timestamp_from_config() {
        let c = config("timestamp_source = \"fixed\"\ntimestamp_fixed_us = 1234567");
        c.validate().expect("valid");
        let b = Binder::new(&c, &c.needed_fields(), &types()).expect("binder");
        let mut row = Row {
            values: vec![Value::Str("x".into()), Value::Int(5)],
        };
        let bound = b.bind(&mut row, Some(99)).expect("binds");
        assert!(matches!(
            bound.last(),
            Some(MaybeUnset::Set(Some(CqlValue::BigInt(1_234_567))))
        ));
        let err = config("timestamp_source = \"fixed\"")
            .validate()
            .expect_err("no constant given");
        assert!(err.to_string().contains("timestamp_fixed_us"), "{err}");
    }

    #[test]
    fn a_field_can_be_both_a_column_and_the_write_timestamp() {
        // Regression: binding moved the column's value out before the timestamp was read from it.
        let c = config("timestamp_source = \"field\"\ntimestamp_field = \"fb\"");
        let fields = c.needed_fields();
        let mut t = types();
        t.insert("b".into(), CqlType::Timestamp);
        let b = Binder::new(&c, &fields, &t).expect("binder");
        let mut row = Row {
            values: vec![Value::Str("x".into()), Value::TimestampMillis(7)],
        };
        let bound = b.bind(&mut row, None).expect("binds");
        assert!(matches!(
            bound.get(1),
            Some(MaybeUnset::Set(Some(CqlValue::Timestamp(_))))
        ));
        assert!(matches!(
            bound.last(),
            Some(MaybeUnset::Set(Some(CqlValue::BigInt(7000))))
        ));
    }

    #[test]
    fn tls_context_reports_a_missing_ca_file() {
        let e = tls_context("/nonexistent/ca.pem", None, None).expect_err("no such CA file");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn value_that_does_not_fit_is_a_permanent_mapping_error() {
        let c = config("");
        let fields = c.needed_fields();
        let b = Binder::new(&c, &fields, &types()).expect("binder");
        let mut row = Row {
            values: vec![Value::Int(1), Value::Int(5)],
        };
        let err = b.bind(&mut row, Some(0)).expect_err("int into text");
        assert_eq!((err.class(), err.is_retryable()), ("mapping", false));
    }
}
