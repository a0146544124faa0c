//! Builds a shard's [`Chain`] from `[[processors]]` and `[table]`: filters and lookups in config order,
//! then the custom (Rust) steps, then the sinks, the primary `[table]` insert last.
//!
//! Guarantee: every field a step names is resolved to a record slot here, once; an unknown field, a
//! query that does not prepare or a schema that does not parse is a [`BuildError`] and the shard does
//! not start. In null-sink mode (benchmarks) every insert writes nothing; everything else is real.
//! Precondition: runs inside the shard (producers get glommio hooks; the session lives in the bridge).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use scylla::client::execution_profile::ExecutionProfile;
use scylla::policies::speculative_execution::SimpleSpeculativeExecutionPolicy;
use thiserror::Error;

use super::batch::BatchLimits;
use super::filter::Filter;
use super::insert::{Insert, Tombstones, WriteCtx};
use super::lookup::Lookup;
use super::produce::Produce;
use super::{Chain, Processor};
use crate::codec::{CodecError, Plan, RegistryClient, Value};
use crate::config::{Config, OnTombstone, ProcessorConfig, Route, TableConfig};
use crate::kafka::{acked_producer, KafkaError};
use crate::metrics::ShardMetrics;
use crate::retry::Shutdown;
use crate::sink::bridge::InTokio;
use crate::sink::mapping::CqlType;
use crate::sink::rate::WriteRate;
use crate::sink::{Binder, NullWriter, RowWriter, ScyllaWriter, StartError};

/// Why a chain could not be built (start-up; never retried).
#[derive(Debug, Error)]
pub enum BuildError {
    /// A step names a field that is neither decoded, enriched nor declared by a custom step.
    #[error("processors.{step}: field '{field}' is not known to the pipeline")]
    UnknownField { step: String, field: String },
    /// A lookup's SELECT did not prepare.
    #[error("processors.{step}: cannot prepare `{query}`: {message}")]
    Prepare {
        step: String,
        query: String,
        message: String,
    },
    /// A lookup's SELECT has not one bind marker per key field.
    #[error("processors.{step}: the query has {markers} bind markers for {keys} key fields")]
    KeyMarkers {
        step: String,
        markers: usize,
        keys: usize,
    },
    /// A lookup's key column is of a type no value converts to as a lookup key (a tuple, a vector,
    /// a user type, a counter).
    #[error("processors.{step}: key field '{field}' is bound to a {column_type} column, which lookup keys do not support")]
    KeyType {
        step: String,
        field: String,
        column_type: String,
    },
    /// A lookup maps a column its SELECT does not return.
    #[error("processors.{step}: the query selects no column '{column}'")]
    NoColumn { step: String, column: String },
    /// A lookup maps a column of a type no record value holds exactly (time, varint, duration, a
    /// map whose keys are not text, a tuple, a vector, a user type): it would reach the record as
    /// something else.
    #[error("processors.{step}: column '{column}' is a {column_type}, which lookups do not read into a field")]
    OutputType {
        step: String,
        column: String,
        column_type: String,
    },
    /// A produce step's schema does not parse.
    #[error("processors.{step}.schema does not parse: {message}")]
    Schema { step: String, message: String },
    /// A produce step needs the registry to register its schema.
    #[error("processors.{step}: produce needs schema.registry_url")]
    NoRegistry { step: String },
    #[error(transparent)]
    Table(#[from] StartError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
}

/// What a shard hands to [`build`].
pub struct BuildInputs<'a> {
    pub config: &'a Config,
    /// The route whose chain this is: its processors and table.
    pub route: Route<'a>,
    /// The record's slot order: decoded, enriched, then custom fields.
    pub fields: &'a Rc<[String]>,
    /// The primary `[table]`'s writer (its session serves every table and lookup).
    pub primary: ScyllaWriter,
    pub primary_binder: Binder,
    pub metrics: &'a ShardMetrics,
    pub client_id: &'a str,
    pub shutdown: &'a Shutdown,
    /// Replace every insert's write with a no-op (benchmarks).
    pub null_sink: bool,
    /// Custom steps, run after the built-in filters and lookups, before the sinks.
    pub custom: Vec<Box<dyn Processor>>,
    /// The shard's write-rate cap (`scylla.max_writes_per_s`), shared by every insert sink.
    pub rate: Option<Rc<WriteRate>>,
}

struct Ctx<'a> {
    inputs: &'a BuildInputs<'a>,
}

impl Ctx<'_> {
    fn slot(&self, step: &str, field: &str) -> Result<usize, BuildError> {
        self.inputs
            .fields
            .iter()
            .position(|x| x == field)
            .ok_or_else(|| BuildError::UnknownField {
                step: step.into(),
                field: field.into(),
            })
    }
}

/// A table's writer as the chain uses it: the null sink's no-op in benchmarks.
fn row_writer(inputs: &BuildInputs<'_>, writer: ScyllaWriter) -> Rc<dyn RowWriter> {
    if inputs.null_sink {
        Rc::new(NullWriter)
    } else {
        Rc::new(writer)
    }
}

async fn insert_step(
    inputs: &BuildInputs<'_>,
    name: String,
    writer: ScyllaWriter,
    binder: Binder,
    table: &TableConfig,
) -> Result<Box<dyn Processor>, BuildError> {
    let tombstones = match table.on_tombstone {
        OnTombstone::DeadLetter => Tombstones::DeadLetter,
        OnTombstone::Skip => Tombstones::Skip,
        OnTombstone::Delete => {
            let (deleter, delete_binder) = writer.for_delete(table, &binder).await?;
            Tombstones::Delete(delete_binder, row_writer(inputs, deleter))
        }
    };
    let writer = row_writer(inputs, writer);
    let write = WriteCtx {
        name,
        writer,
        metrics: inputs.metrics.clone(),
        shutdown: inputs.shutdown.clone(),
        rate: inputs.rate.clone(),
    };
    let limits = BatchLimits::from_config(&inputs.config.scylla);
    Ok(Box::new(Insert::new(binder, write, limits, tombstones)))
}

/// Builds the chain. See the module docs for the order of steps.
pub async fn build(mut inputs: BuildInputs<'_>) -> Result<Chain, BuildError> {
    let custom = std::mem::take(&mut inputs.custom);
    let ctx = Ctx { inputs: &inputs };
    let mut changing: Vec<Box<dyn Processor>> = Vec::new();
    let mut sinks: Vec<Box<dyn Processor>> = Vec::new();
    for p in inputs.route.processors {
        match p {
            ProcessorConfig::Filter { .. } => changing.push(filter(&ctx, p)?),
            ProcessorConfig::Lookup { .. } => changing.push(lookup(&ctx, p).await?),
            ProcessorConfig::Insert { name, table } => {
                sinks.push(insert_table(&ctx, name, table).await?)
            }
            ProcessorConfig::Produce { .. } => sinks.push(produce(&ctx, p)?),
        }
    }
    let table = inputs.route.table;
    let name = format!("{}.{}", table.keyspace, table.table);
    let primary = insert_step(
        &inputs,
        name,
        inputs.primary.clone(),
        inputs.primary_binder.clone(),
        table,
    )
    .await?;
    changing.extend(custom);
    changing.extend(sinks);
    changing.push(primary);
    Ok(Chain::new(changing, inputs.metrics.clone()))
}

fn toml_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn toml_value(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::Str(s.as_str().into()),
        toml::Value::Integer(i) => Value::Long(*i),
        toml::Value::Float(f) => Value::Double(*f),
        toml::Value::Boolean(b) => Value::Bool(*b),
        other => Value::Str(other.to_string().into()),
    }
}

fn filter(ctx: &Ctx<'_>, p: &ProcessorConfig) -> Result<Box<dyn Processor>, BuildError> {
    let ProcessorConfig::Filter {
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
    } = p
    else {
        unreachable!("filter() is called for filter steps only")
    };
    Ok(Box::new(Filter {
        name: name.clone(),
        slot: ctx.slot(name, field)?,
        equals: equals.as_ref().map(toml_text),
        one_of: one_of.as_ref().map(|v| v.iter().map(toml_text).collect()),
        present: *present,
        bounds: [*gt, *ge, *lt, *le],
        keep: *keep,
    }))
}

async fn insert_table(
    ctx: &Ctx<'_>,
    name: &str,
    table: &TableConfig,
) -> Result<Box<dyn Processor>, BuildError> {
    let (writer, binder) = ctx
        .inputs
        .primary
        .for_table(table, ctx.inputs.fields)
        .await?;
    insert_step(ctx.inputs, name.to_string(), writer, binder, table).await
}

async fn lookup(ctx: &Ctx<'_>, p: &ProcessorConfig) -> Result<Box<dyn Processor>, BuildError> {
    let ProcessorConfig::Lookup {
        name,
        query,
        key_fields,
        columns,
        cache_entries,
        cache_ttl,
        on_miss,
        defaults,
        timeout,
        speculative_delay,
        consistency,
    } = p
    else {
        unreachable!("lookup() is called for lookup steps only")
    };
    let inputs = ctx.inputs;
    let session = inputs.primary.session().clone();
    let q = query.clone();
    let mut stmt = InTokio::new(inputs.primary.handle().clone(), async move {
        session.prepare(q.as_str()).await
    })
    .await
    .map_err(|e| BuildError::Prepare {
        step: name.clone(),
        query: query.clone(),
        message: e.to_string(),
    })?;
    stmt.set_request_timeout(Some(*timeout));
    stmt.set_is_idempotent(true);
    let consistency = consistency.unwrap_or(inputs.config.scylla.consistency);
    stmt.set_consistency(consistency.to_driver());
    if let Some(delay) = speculative_delay {
        let profile = ExecutionProfile::builder()
            .consistency(consistency.to_driver())
            .request_timeout(Some(*timeout))
            .speculative_execution_policy(Some(Arc::new(SimpleSpeculativeExecutionPolicy {
                max_retry_count: 2,
                retry_interval: *delay,
            })))
            .build();
        stmt.set_execution_profile_handle(Some(profile.into_handle()));
    }
    let mut outputs = Vec::new();
    {
        let guard = stmt.get_current_result_set_col_specs();
        let specs = guard.get();
        for (column, field) in columns {
            let (i, spec) = specs
                .get_by_name(column)
                .ok_or_else(|| BuildError::NoColumn {
                    step: name.clone(),
                    column: column.clone(),
                })?;
            if !super::lookup::readable(spec.typ()) {
                return Err(BuildError::OutputType {
                    step: name.clone(),
                    column: column.clone(),
                    column_type: CqlType::of_column(spec.typ()).to_string(),
                });
            }
            outputs.push((i, ctx.slot(name, field)?));
        }
    }
    let keys = key_types(&stmt, name, key_fields)?
        .into_iter()
        .zip(key_fields)
        .map(|(ty, f)| Ok((ctx.slot(name, f)?, ty)))
        .collect::<Result<Vec<_>, BuildError>>()?;
    let defaults = defaults
        .iter()
        .map(|(field, v)| Ok((ctx.slot(name, field)?, toml_value(v))))
        .collect::<Result<Vec<_>, BuildError>>()?;
    let m = inputs.metrics;
    let cache = |o: &str| {
        m.lookup_cache
            .with_label_values(&[m.shard.as_str(), name.as_str(), o])
    };
    Ok(Box::new(Lookup {
        name: name.clone(),
        session: inputs.primary.session().clone(),
        handle: inputs.primary.handle().clone(),
        stmt,
        keys,
        outputs,
        cache: RefCell::new(HashMap::new()),
        cache_entries: *cache_entries,
        cache_ttl: *cache_ttl,
        on_miss: *on_miss,
        defaults,
        cache_hits: cache("hit"),
        cache_misses: cache("miss"),
        metrics: m.clone(),
        shutdown: inputs.shutdown.clone(),
    }))
}

/// The types of a lookup's bind markers, one per key field: the driver checks a value's type
/// against its marker's, so a key is converted to it (see `lookup::key_value`). A count that does
/// not match, or a marker of a type no value converts to, would fail every record: refused here.
fn key_types(
    stmt: &scylla::statement::prepared::PreparedStatement,
    step: &str,
    key_fields: &[String],
) -> Result<Vec<CqlType>, BuildError> {
    let specs = stmt.get_variable_col_specs();
    if specs.len() != key_fields.len() {
        return Err(BuildError::KeyMarkers {
            step: step.into(),
            markers: specs.len(),
            keys: key_fields.len(),
        });
    }
    let types: Vec<CqlType> = specs
        .as_slice()
        .iter()
        .map(|c| CqlType::of_column(c.typ()))
        .collect();
    if let Some((ty, field)) = types
        .iter()
        .zip(key_fields)
        .find(|(t, _)| matches!(t, CqlType::Other(_)))
    {
        return Err(BuildError::KeyType {
            step: step.into(),
            field: field.clone(),
            column_type: ty.to_string(),
        });
    }
    Ok(types)
}

fn produce(ctx: &Ctx<'_>, p: &ProcessorConfig) -> Result<Box<dyn Processor>, BuildError> {
    let ProcessorConfig::Produce {
        name,
        topic,
        schema,
        subject,
        key_field,
    } = p
    else {
        unreachable!("produce() is called for produce steps only")
    };
    let inputs = ctx.inputs;
    let parsed = apache_avro::Schema::parse_str(schema).map_err(|e| BuildError::Schema {
        step: name.clone(),
        message: e.to_string(),
    })?;
    let (plan, names) = Plan::for_encoding(&parsed)?;
    if inputs.config.schema.registry_url.is_none() {
        return Err(BuildError::NoRegistry { step: name.clone() });
    }
    let reg = RegistryClient::from_config(&inputs.config.schema)?;
    let subject = subject.clone().unwrap_or_else(|| format!("{topic}-value"));
    let schema_id = reg.register(&subject, schema)?;
    let slots = names
        .iter()
        .map(|n| inputs.fields.iter().position(|x| x == n))
        .collect();
    Ok(Box::new(Produce {
        name: name.clone(),
        topic: topic.clone(),
        plan,
        slots,
        schema_id,
        key_slot: key_field.as_ref().map(|k| ctx.slot(name, k)).transpose()?,
        producer: acked_producer(&inputs.config.kafka, inputs.client_id)?,
        metrics: inputs.metrics.clone(),
        shutdown: inputs.shutdown.clone(),
    }))
}
