//! The live check, run by `shardline check` and before any shard starts: the topics exist, the
//! subject's latest writer schema has every mapped field, the table has every mapped column, and
//! every field's Avro type converts to its column's CQL type.
//!
//! Guarantee: errors name the field, the column and both types. Precondition: the services answer;
//! this is the only place start-up talks to all three.

use std::time::Duration;

use apache_avro::Schema;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::codec::{CodecError, Plan, RegistryClient, SchemaResolver};
use crate::config::Config;
use crate::kafka::{consumer_config, KafkaError};
use crate::runtime::bridge::TokioBridge;
use crate::runtime::RunError;
use crate::sink::{self, mapping, Binder, SinkError};

/// What the check found, for the operator.
#[derive(Debug)]
pub struct CheckReport {
    pub partitions: Vec<(String, usize)>,
    pub schema_id: Option<u32>,
    pub columns: Vec<String>,
}

/// The writer schema checked against the table: the subject's latest version, or the schema file.
pub fn reference_schema(config: &Config) -> Result<(Option<u32>, String), RunError> {
    match (&config.schema.registry_url, &config.schema.schema_file) {
        (Some(url), _) => {
            let r = RegistryClient::new(
                url,
                Duration::from_millis(config.schema.registry_timeout_ms),
            );
            let subject = config.subject();
            let (id, json) = r.latest(&subject).map_err(|e| match e {
                CodecError::UnknownSchema(_) => RunError::Runtime(format!(
                    "subject '{subject}' has no schema in the registry at {url}: register one (shardline produce does) or set schema.subject"
                )),
                other => RunError::Codec(other),
            })?;
            Ok((Some(id), json))
        }
        (None, Some(file)) => std::fs::read_to_string(file)
            .map(|j| (None, j))
            .map_err(|e| RunError::Runtime(format!("schema.schema_file {file}: {e}"))),
        (None, None) => Err(RunError::Runtime("no schema source".into())),
    }
}

/// Runs every live check.
pub fn check_live(config: &Config) -> Result<CheckReport, RunError> {
    // Topics.
    let consumer: BaseConsumer = consumer_config(&config.kafka, "shardline-check")
        .create()
        .map_err(KafkaError::from)?;
    let mut partitions = Vec::new();
    for t in &config.kafka.topics {
        let md = consumer
            .fetch_metadata(Some(t), Duration::from_secs(10))
            .map_err(KafkaError::from)?;
        let n = md
            .topics()
            .iter()
            .find(|m| m.name() == t && m.error().is_none())
            .map(|m| m.partitions().len())
            .unwrap_or(0);
        if n == 0 {
            return Err(RunError::Runtime(format!(
                "kafka topic '{t}' does not exist at {}",
                config.kafka.brokers
            )));
        }
        partitions.push((t.clone(), n));
    }
    // Schema and fields.
    let (schema_id, json) = reference_schema(config)?;
    let schema = Schema::parse_str(&json).map_err(|e| {
        RunError::Codec(CodecError::Resolution(format!(
            "writer schema does not parse: {e}"
        )))
    })?;
    let fields = config.needed_fields();
    let plan = Plan::compile(&schema, &fields)?;
    // Table and types.
    let bridge = TokioBridge::start("shardline-check".into(), None)
        .map_err(|e| RunError::Runtime(format!("tokio bridge: {e}")))?;
    let types = bridge.handle().block_on(async {
        let session = sink::connect(config).await?;
        sink::table_columns(&session, &config.table.keyspace, &config.table.table).await
    })?;
    let all = config.all_fields();
    let binder = Binder::new(config, &all, &types)?;
    mapping::check(&decoded_only(&binder.columns, fields.len()), plan.kinds())?;
    check_special(config, &fields, plan.kinds())?;
    let mut columns: Vec<String> = binder
        .columns
        .iter()
        .map(|c| format!("{} <- {} ({})", c.column, c.field, c.ty))
        .collect();
    // The insert processors' tables: the same checks, table by table.
    for p in &config.processors {
        if let crate::config::ProcessorConfig::Insert { name, table } = p {
            let types = bridge.handle().block_on(async {
                let session = sink::connect(config).await?;
                sink::table_columns(&session, &table.keyspace, &table.table).await
            })?;
            let b = Binder::for_table(table, &all, &types)?;
            mapping::check(&decoded_only(&b.columns, fields.len()), plan.kinds())?;
            columns.extend(
                b.columns
                    .iter()
                    .map(|c| format!("[{name}] {} <- {} ({})", c.column, c.field, c.ty)),
            );
        }
    }
    Ok(CheckReport {
        partitions,
        schema_id,
        columns,
    })
}

/// The columns fed by decoded fields: enriched ones (lookups) are type-checked per record instead.
fn decoded_only(columns: &[mapping::ColumnMap], decoded: usize) -> Vec<mapping::ColumnMap> {
    columns
        .iter()
        .filter(|c| c.slot < decoded)
        .cloned()
        .collect()
}

/// TTL and timestamp fields must have usable kinds.
fn check_special(
    config: &Config,
    fields: &[String],
    kinds: &[crate::codec::Kind],
) -> Result<(), SinkError> {
    use crate::codec::Kind;
    let kind_of = |f: &str| {
        fields
            .iter()
            .position(|x| x == f)
            .and_then(|i| kinds.get(i))
    };
    if let Some(f) = &config.table.ttl_field {
        if !matches!(kind_of(f), Some(Kind::Int | Kind::Long)) {
            return Err(SinkError::Schema(format!(
                "table.ttl_field '{f}' must be an Avro int or long"
            )));
        }
    }
    if let Some(f) = &config.table.timestamp_field {
        if !matches!(
            kind_of(f),
            Some(Kind::Long | Kind::TimestampMillis | Kind::TimestampMicros)
        ) {
            return Err(SinkError::Schema(format!(
                "table.timestamp_field '{f}' must be a long (µs) or a timestamp-millis/micros"
            )));
        }
    }
    Ok(())
}
