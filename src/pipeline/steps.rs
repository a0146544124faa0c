//! The built-in steps: filter, lookup (prepared SELECT, per-shard cache, miss policy, optional
//! speculative execution), insert (one more table) and produce (re-encode, frame, send, await the ack).
//!
//! Guarantee: retryable database and broker errors are retried with backoff inside the step; what
//! comes out as a [`StepError`] is permanent for that record.
//! Precondition: built inside the shard (the producer's async hooks are glommio's; tokio resources are
//! created inside the bridge).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::LocalBoxFuture;
use rdkafka::producer::{FutureProducer, FutureRecord};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::policies::speculative_execution::SimpleSpeculativeExecutionPolicy;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlTimestamp, CqlValue};

use super::{Outcome, Processor, Record, StepError};
use crate::codec::{frame, Plan, RegistryClient, Value};
use crate::config::{Config, ProcessorConfig};
use crate::kafka::{producer_config, GlommioRuntime};
use crate::metrics::{events, ShardMetrics};
use crate::runtime::bridge::InTokio;
use crate::runtime::RunError;
use crate::sink::{Binder, ScyllaWriter, SinkError};

fn text(v: &Value) -> Option<String> {
    Some(match v {
        Value::Str(s) | Value::Enum(s) | Value::Uuid(s) => s.clone(),
        Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => i.to_string(),
        Value::Long(l)
        | Value::TimestampMillis(l)
        | Value::TimestampMicros(l)
        | Value::TimeMicros(l) => l.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Double(d) => d.to_string(),
        Value::Float(f) => f.to_string(),
        _ => return None,
    })
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => Some(f64::from(*i)),
        Value::Long(l)
        | Value::TimestampMillis(l)
        | Value::TimestampMicros(l)
        | Value::TimeMicros(l) => Some(*l as f64),
        Value::Double(d) => Some(*d),
        Value::Float(f) => Some(f64::from(*f)),
        _ => None,
    }
}

fn toml_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn toml_value(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::Str(s.clone()),
        toml::Value::Integer(i) => Value::Long(*i),
        toml::Value::Float(f) => Value::Double(*f),
        toml::Value::Boolean(b) => Value::Bool(*b),
        other => Value::Str(other.to_string()),
    }
}

/// Keep or drop by a predicate on one field.
pub struct Filter {
    name: String,
    slot: usize,
    equals: Option<String>,
    one_of: Option<Vec<String>>,
    present: Option<bool>,
    bounds: [Option<f64>; 4],
    keep: bool,
}

impl Filter {
    fn matches(&self, v: &Value) -> bool {
        let present = !matches!(v, Value::Null);
        if self.present.is_some_and(|p| p != present) {
            return false;
        }
        if let Some(e) = &self.equals {
            if text(v).as_deref() != Some(e.as_str()) {
                return false;
            }
        }
        if let Some(set) = &self.one_of {
            if !text(v).is_some_and(|t| set.contains(&t)) {
                return false;
            }
        }
        let [gt, ge, lt, le] = self.bounds;
        if gt.is_some() || ge.is_some() || lt.is_some() || le.is_some() {
            let Some(n) = number(v) else { return false };
            if gt.is_some_and(|b| n <= b)
                || ge.is_some_and(|b| n < b)
                || lt.is_some_and(|b| n >= b)
                || le.is_some_and(|b| n > b)
            {
                return false;
            }
        }
        true
    }
}

impl Processor for Filter {
    fn name(&self) -> &str {
        &self.name
    }
    fn process<'a>(
        &'a self,
        rec: &'a mut Record,
    ) -> LocalBoxFuture<'a, Result<Outcome, StepError>> {
        let m = rec.values.get(self.slot).is_some_and(|v| self.matches(v));
        let out = if m == self.keep {
            Outcome::Passed
        } else {
            Outcome::Dropped
        };
        Box::pin(std::future::ready(Ok(out)))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Miss {
    Drop,
    Default,
    DeadLetter,
}

struct Cached {
    at: Instant,
    row: Option<Vec<Value>>,
}

/// A prepared SELECT by key, merged into the record.
pub struct Lookup {
    name: String,
    session: Arc<Session>,
    handle: tokio::runtime::Handle,
    stmt: PreparedStatement,
    key_slots: Vec<usize>,
    /// (index in the SELECT's columns, record slot)
    outputs: Vec<(usize, usize)>,
    cache: RefCell<HashMap<String, Cached>>,
    cache_entries: usize,
    cache_ttl: Duration,
    on_miss: Miss,
    defaults: Vec<(usize, Value)>,
    cache_hits: prometheus::IntCounter,
    cache_misses: prometheus::IntCounter,
    metrics: ShardMetrics,
}

fn to_cql(v: &Value) -> Option<CqlValue> {
    Some(match v {
        Value::Str(s) | Value::Enum(s) | Value::Uuid(s) => CqlValue::Text(s.clone()),
        Value::Int(i) => CqlValue::Int(*i),
        Value::Long(l) => CqlValue::BigInt(*l),
        Value::TimestampMillis(ms) => CqlValue::Timestamp(CqlTimestamp(*ms)),
        Value::Bool(b) => CqlValue::Boolean(*b),
        Value::Double(d) => CqlValue::Double(*d),
        _ => return None,
    })
}

fn from_cql(v: CqlValue) -> Value {
    match v {
        CqlValue::Text(s) | CqlValue::Ascii(s) => Value::Str(s),
        CqlValue::Int(i) => Value::Int(i),
        CqlValue::BigInt(l) => Value::Long(l),
        CqlValue::SmallInt(i) => Value::Int(i32::from(i)),
        CqlValue::TinyInt(i) => Value::Int(i32::from(i)),
        CqlValue::Boolean(b) => Value::Bool(b),
        CqlValue::Double(d) => Value::Double(d),
        CqlValue::Float(f) => Value::Float(f),
        CqlValue::Timestamp(t) => Value::TimestampMillis(t.0),
        CqlValue::Uuid(u) => Value::Uuid(u.to_string()),
        CqlValue::Timeuuid(u) => Value::Uuid(u.to_string()),
        CqlValue::Inet(a) => Value::Str(a.to_string()),
        CqlValue::Blob(b) => Value::Bytes(b),
        CqlValue::List(l) | CqlValue::Set(l) => Value::Array(l.into_iter().map(from_cql).collect()),
        CqlValue::Map(m) => Value::Map(
            m.into_iter()
                .map(|(k, v)| {
                    (
                        crate::pipeline::steps::text(&from_cql(k)).unwrap_or_default(),
                        from_cql(v),
                    )
                })
                .collect(),
        ),
        other => Value::Str(format!("{other:?}")),
    }
}

impl Lookup {
    async fn query(&self, key: Vec<CqlValue>) -> Result<Option<Vec<Value>>, SinkError> {
        let mut attempt = 0u32;
        loop {
            let (session, stmt, key) = (self.session.clone(), self.stmt.clone(), key.clone());
            let r = InTokio::new(self.handle.clone(), async move {
                let res = session
                    .execute_unpaged(&stmt, key)
                    .await
                    .map_err(SinkError::from_execution)?;
                let rows = res
                    .into_rows_result()
                    .map_err(|e| SinkError::Schema(format!("lookup result: {e}")))?;
                let first = rows
                    .maybe_first_row::<scylla::value::Row>()
                    .map_err(|e| SinkError::Schema(format!("lookup row: {e}")))?;
                Ok::<_, SinkError>(first.map(|r| r.columns))
            })
            .await;
            match r {
                Ok(Some(cols)) => {
                    let mut cols: Vec<Option<CqlValue>> = cols;
                    let vals = self
                        .outputs
                        .iter()
                        .map(|(i, _)| {
                            cols.get_mut(*i)
                                .and_then(Option::take)
                                .map(from_cql)
                                .unwrap_or(Value::Null)
                        })
                        .collect();
                    return Ok(Some(vals));
                }
                Ok(None) => return Ok(None),
                Err(e) if e.is_retryable() => {
                    attempt += 1;
                    let wait = crate::runtime::shard::backoff(attempt);
                    events::write_retried(
                        &self.metrics,
                        e.class(),
                        attempt,
                        wait.as_millis() as u64,
                        &e,
                    );
                    glommio::timer::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Processor for Lookup {
    fn name(&self) -> &str {
        &self.name
    }
    fn process<'a>(
        &'a self,
        rec: &'a mut Record,
    ) -> LocalBoxFuture<'a, Result<Outcome, StepError>> {
        Box::pin(async move {
            let mut key = Vec::with_capacity(self.key_slots.len());
            for s in &self.key_slots {
                match rec.values.get(*s).and_then(to_cql) {
                    Some(k) => key.push(k),
                    None => {
                        return Err(StepError {
                            class: "lookup_key",
                            message: format!(
                                "step {}: key field is null or not a scalar",
                                self.name
                            ),
                        })
                    }
                }
            }
            let cache_key = format!("{key:?}");
            let cached = if self.cache_entries > 0 {
                self.cache
                    .borrow()
                    .get(&cache_key)
                    .filter(|c| c.at.elapsed() < self.cache_ttl)
                    .map(|c| c.row.clone())
            } else {
                None
            };
            let found = match cached {
                Some(row) => {
                    self.cache_hits.inc();
                    row
                }
                None => {
                    self.cache_misses.inc();
                    let row = self.query(key).await.map_err(|e| StepError {
                        class: e.class(),
                        message: format!("step {}: {e}", self.name),
                    })?;
                    if self.cache_entries > 0 {
                        let mut c = self.cache.borrow_mut();
                        if c.len() >= self.cache_entries {
                            // Bounded: drop expired entries, or any one entry if none expired.
                            let ttl = self.cache_ttl;
                            c.retain(|_, v| v.at.elapsed() < ttl);
                            if c.len() >= self.cache_entries {
                                if let Some(k) = c.keys().next().cloned() {
                                    c.remove(&k);
                                }
                            }
                        }
                        c.insert(
                            cache_key,
                            Cached {
                                at: Instant::now(),
                                row: row.clone(),
                            },
                        );
                    }
                    row
                }
            };
            match found {
                Some(vals) => {
                    for ((_, slot), v) in self.outputs.iter().zip(vals) {
                        if let Some(cell) = rec.values.get_mut(*slot) {
                            *cell = v;
                        }
                    }
                    Ok(Outcome::Passed)
                }
                None => match self.on_miss {
                    Miss::Drop => Ok(Outcome::Dropped),
                    Miss::DeadLetter => Err(StepError {
                        class: "lookup_miss",
                        message: format!(
                            "step {}: no row for key {cache_key_short}",
                            self.name,
                            cache_key_short = rec
                                .key
                                .as_deref()
                                .map(String::from_utf8_lossy)
                                .unwrap_or_default()
                        ),
                    }),
                    Miss::Default => {
                        for (slot, v) in &self.defaults {
                            if let Some(cell) = rec.values.get_mut(*slot) {
                                *cell = v.clone();
                            }
                        }
                        Ok(Outcome::Missed)
                    }
                },
            }
        })
    }
}

/// One more table.
pub struct Insert {
    name: String,
    binder: Binder,
    writer: ScyllaWriter,
    metrics: ShardMetrics,
}

impl Processor for Insert {
    fn name(&self) -> &str {
        &self.name
    }
    fn is_sink(&self) -> bool {
        true
    }
    fn process<'a>(
        &'a self,
        rec: &'a mut Record,
    ) -> LocalBoxFuture<'a, Result<Outcome, StepError>> {
        Box::pin(async move {
            let fail = |e: SinkError| StepError {
                class: e.class(),
                message: format!("step {}: {e}", self.name),
            };
            let values = Rc::new(
                self.binder
                    .bind_cloned(&rec.values, rec.kafka_ts_ms)
                    .map_err(fail)?,
            );
            crate::runtime::shard::write_retrying(&self.writer, values, &self.metrics)
                .await
                .map(|_| Outcome::Passed)
                .map_err(fail)
        })
    }
}

/// Re-encode and produce to an output topic.
pub struct Produce {
    name: String,
    topic: String,
    plan: Plan,
    /// Record slot of each output schema field (None: the field stays null).
    slots: Vec<Option<usize>>,
    schema_id: u32,
    key_slot: Option<usize>,
    producer: FutureProducer<rdkafka::client::DefaultClientContext, GlommioRuntime>,
    metrics: ShardMetrics,
}

impl Processor for Produce {
    fn name(&self) -> &str {
        &self.name
    }
    fn is_sink(&self) -> bool {
        true
    }
    fn process<'a>(
        &'a self,
        rec: &'a mut Record,
    ) -> LocalBoxFuture<'a, Result<Outcome, StepError>> {
        Box::pin(async move {
            let null = Value::Null;
            let values: Vec<&Value> = self
                .slots
                .iter()
                .map(|s| s.and_then(|i| rec.values.get(i)).unwrap_or(&null))
                .collect();
            let mut datum = Vec::with_capacity(256);
            self.plan
                .encode(&values, &mut datum)
                .map_err(|e| StepError {
                    class: "produce_encode",
                    message: format!("step {}: {e}", self.name),
                })?;
            let mut payload = Vec::with_capacity(datum.len() + frame::HEADER_LEN);
            frame::frame_into(self.schema_id, &datum, &mut payload);
            let key: Option<Vec<u8>> = match self.key_slot {
                Some(i) => rec.values.get(i).and_then(text).map(String::into_bytes),
                None => rec.key.clone(),
            };
            let mut attempt = 0u32;
            loop {
                let mut r: FutureRecord<'_, [u8], [u8]> =
                    FutureRecord::to(&self.topic).payload(payload.as_slice());
                if let Some(k) = &key {
                    r = r.key(k.as_slice());
                }
                match self.producer.send(r, Duration::from_secs(30)).await {
                    Ok(_) => return Ok(Outcome::Passed),
                    Err((e, _)) => {
                        attempt += 1;
                        let wait = crate::runtime::shard::backoff(attempt);
                        events::write_retried(
                            &self.metrics,
                            "produce",
                            attempt,
                            wait.as_millis() as u64,
                            &e,
                        );
                        glommio::timer::sleep(wait).await;
                    }
                }
            }
        })
    }
}

/// Builds the built-in steps of `config.processors`, then the primary `[table]` insert as the last sink.
pub async fn build(
    config: &Config,
    fields: &Rc<[String]>,
    primary: ScyllaWriter,
    primary_binder: Binder,
    metrics: &ShardMetrics,
    client_id: &str,
) -> Result<Vec<Box<dyn Processor>>, RunError> {
    let slot = |f: &str| fields.iter().position(|x| x == f);
    let need = |f: &str, step: &str| {
        slot(f).ok_or_else(|| {
            RunError::Runtime(format!(
                "processors.{step}: field '{f}' is not known to the pipeline"
            ))
        })
    };
    let mut steps: Vec<Box<dyn Processor>> = Vec::new();
    for p in &config.processors {
        match p {
            ProcessorConfig::Filter {
                name,
                field,
                equals,
                one_of,
                present,
                gt,
                ge,
                lt,
                le,
                keep,
            } => {
                steps.push(Box::new(Filter {
                    name: name.clone(),
                    slot: need(field, name)?,
                    equals: equals.as_ref().map(toml_text),
                    one_of: one_of.as_ref().map(|v| v.iter().map(toml_text).collect()),
                    present: *present,
                    bounds: [*gt, *ge, *lt, *le],
                    keep: *keep,
                }));
            }
            ProcessorConfig::Lookup {
                name,
                query,
                key_fields,
                columns,
                cache_entries,
                cache_ttl_ms,
                on_miss,
                defaults,
                timeout_ms,
                speculative_delay_ms,
            } => {
                let session = primary.session().clone();
                let q = query.clone();
                let mut stmt = InTokio::new(primary.handle().clone(), async move {
                    session.prepare(q.as_str()).await
                })
                .await
                .map_err(|e| {
                    RunError::Runtime(format!("processors.{name}: cannot prepare `{query}`: {e}"))
                })?;
                stmt.set_request_timeout(Some(Duration::from_millis(*timeout_ms)));
                stmt.set_is_idempotent(true);
                if let Some(delay) = speculative_delay_ms {
                    let profile = ExecutionProfile::builder()
                        .consistency(
                            crate::sink::parse_consistency(&config.scylla.consistency)
                                .unwrap_or_default(),
                        )
                        .request_timeout(Some(Duration::from_millis(*timeout_ms)))
                        .speculative_execution_policy(Some(Arc::new(
                            SimpleSpeculativeExecutionPolicy {
                                max_retry_count: 2,
                                retry_interval: Duration::from_millis(*delay),
                            },
                        )))
                        .build();
                    stmt.set_execution_profile_handle(Some(profile.into_handle()));
                }
                let guard = stmt.get_current_result_set_col_specs();
                let specs = guard.get();
                let mut outputs = Vec::new();
                for (column, field) in columns {
                    let (i, _) = specs.get_by_name(column).ok_or_else(|| {
                        RunError::Runtime(format!(
                            "processors.{name}: the query selects no column '{column}'"
                        ))
                    })?;
                    outputs.push((i, need(field, name)?));
                }
                let mut defs = Vec::new();
                for (field, v) in defaults {
                    defs.push((need(field, name)?, toml_value(v)));
                }
                steps.push(Box::new(Lookup {
                    name: name.clone(),
                    session: primary.session().clone(),
                    handle: primary.handle().clone(),
                    stmt,
                    key_slots: key_fields
                        .iter()
                        .map(|f| need(f, name))
                        .collect::<Result<_, _>>()?,
                    outputs,
                    cache: RefCell::new(HashMap::new()),
                    cache_entries: *cache_entries,
                    cache_ttl: Duration::from_millis(*cache_ttl_ms),
                    on_miss: match on_miss.as_str() {
                        "drop" => Miss::Drop,
                        "dead_letter" => Miss::DeadLetter,
                        _ => Miss::Default,
                    },
                    defaults: defs,
                    cache_hits: metrics.lookup_cache.with_label_values(&[
                        metrics.shard.as_str(),
                        name,
                        "hit",
                    ]),
                    cache_misses: metrics.lookup_cache.with_label_values(&[
                        metrics.shard.as_str(),
                        name,
                        "miss",
                    ]),
                    metrics: metrics.clone(),
                }));
            }
            ProcessorConfig::Insert { name, table } => {
                let (writer, binder) = primary.for_table(table, fields).await?;
                steps.push(Box::new(Insert {
                    name: name.clone(),
                    binder,
                    writer,
                    metrics: metrics.clone(),
                }));
            }
            ProcessorConfig::Produce {
                name,
                topic,
                schema,
                subject,
                key_field,
            } => {
                let parsed = apache_avro::Schema::parse_str(schema).map_err(|e| {
                    RunError::Runtime(format!("processors.{name}.schema does not parse: {e}"))
                })?;
                let (plan, names) = Plan::for_encoding(&parsed)?;
                let url = config.schema.registry_url.as_ref().ok_or_else(|| {
                    RunError::Runtime(format!(
                        "processors.{name}: produce needs schema.registry_url"
                    ))
                })?;
                let reg = RegistryClient::new(
                    url,
                    Duration::from_millis(config.schema.registry_timeout_ms),
                );
                let subject = subject.clone().unwrap_or_else(|| format!("{topic}-value"));
                let schema_id = reg.register(&subject, schema)?;
                let mut pc = producer_config(&config.kafka, client_id);
                pc.set("acks", "all");
                steps.push(Box::new(Produce {
                    name: name.clone(),
                    topic: topic.clone(),
                    plan,
                    slots: names.iter().map(|n| slot(n)).collect(),
                    schema_id,
                    key_slot: match key_field {
                        Some(k) => Some(need(k, name)?),
                        None => None,
                    },
                    producer: pc.create().map_err(crate::kafka::KafkaError::from)?,
                    metrics: metrics.clone(),
                }));
            }
        }
    }
    steps.push(Box::new(Insert {
        name: format!("{}.{}", config.table.keyspace, config.table.table),
        binder: primary_binder,
        writer: primary,
        metrics: metrics.clone(),
    }));
    Ok(steps)
}
