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
use crate::config::{Config, ConfigError, OnTombstone, Route, SchemaSource, TableConfig};
use crate::kafka::{consumer_config, start_up_error, KafkaError, LastError};
use crate::pipeline::meta;
use crate::runtime::RunError;
use crate::sink::bridge::TokioBridge;
use crate::sink::{self, mapping, Binder, StartError};

/// What the check found, for the operator.
#[derive(Debug)]
pub struct CheckReport {
    pub partitions: Vec<(String, usize)>,
    pub schema_id: Option<u32>,
    pub columns: Vec<String>,
}

/// The writer schema checked against the table: the subject's latest version, or the schema file.
pub fn reference_schema(config: &Config) -> Result<(Option<u32>, String), RunError> {
    reference_schema_of(config, &config.primary())
}

/// [`reference_schema`] of one route: its subject's latest version, or the schema file.
pub fn reference_schema_of(
    config: &Config,
    route: &Route<'_>,
) -> Result<(Option<u32>, String), RunError> {
    match config.schema.source() {
        Some(SchemaSource::Registry(_)) => {
            let r = RegistryClient::from_config(&config.schema)?;
            let subject = route.subject();
            let (id, json) = r.latest(&subject).map_err(|e| match e {
                CodecError::UnknownSchema(_) => RunError::NoSubject { subject },
                other => RunError::Codec(other),
            })?;
            Ok((Some(id), json))
        }
        Some(SchemaSource::File(file)) => Ok((None, crate::codec::schema_file(file)?)),
        None => Err(RunError::Codec(crate::codec::no_schema_source())),
    }
}

/// Runs every live check.
pub fn check_live(config: &Config) -> Result<CheckReport, RunError> {
    if let Some(r) = config.routes.iter().find(|r| r.topics.is_empty()) {
        // A topic_regex route whose topics were not resolved would consume nothing.
        return Err(RunError::Config(ConfigError::Invalid(format!(
            "routes.{}: its topic_regex is not resolved (Config::resolve_topic_regexes)",
            r.name
        ))));
    }
    // Topics.
    crate::kafka::check_client_files(&config.kafka)?;
    let consumer: BaseConsumer<LastError> = consumer_config(&config.kafka, "shardline-check")
        .create_with_context(LastError::default())
        .map_err(KafkaError::from)?;
    let mut partitions = Vec::new();
    for t in &config.all_topics() {
        let md = consumer
            .fetch_metadata(Some(t), Duration::from_secs(10))
            .map_err(|e| start_up_error(&consumer, &config.kafka.brokers, e))?;
        let n = md
            .topics()
            .iter()
            .find(|m| m.name() == t && m.error().is_none())
            .map(|m| m.partitions().len())
            .unwrap_or(0);
        if n == 0 {
            return Err(RunError::NoTopic {
                topic: t.clone(),
                brokers: config.kafka.brokers.clone(),
            });
        }
        partitions.push((t.clone(), n));
    }
    // Tables and types: one session for every route.
    let bridge = TokioBridge::new().map_err(|source| RunError::Bridge { shard: 0, source })?;
    let session = bridge.block_on(sink::connect(config))?;
    let live = Live {
        bridge: &bridge,
        session: &session,
    };
    let mut schema_id = None;
    let mut columns = Vec::new();
    for route in config.routes() {
        let (id, cols) = check_route(config, &route, &live)?;
        schema_id = schema_id.or(id);
        columns.extend(cols);
    }
    Ok(CheckReport {
        partitions,
        schema_id,
        columns,
    })
}

/// The kinds of the Avro key fields a route maps, from its key subject's latest schema (empty when
/// it maps none). A key field the schema lacks is refused here.
fn key_kinds(
    config: &Config,
    route: &Route<'_>,
    fields: &[String],
) -> Result<Vec<crate::codec::Kind>, RunError> {
    let keys = meta::key_fields(fields, config.kafka.key_format);
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let registry = RegistryClient::from_config(&config.schema)?;
    let subject = route.key_subject();
    let (_, json) = registry.latest(&subject).map_err(|e| match e {
        CodecError::UnknownSchema(_) => RunError::NoSubject { subject },
        other => RunError::Codec(other),
    })?;
    let schema = Schema::parse_str(&json).map_err(|e| {
        RunError::Codec(CodecError::Resolution(format!(
            "key schema does not parse: {e}"
        )))
    })?;
    Ok(Plan::compile(&schema, &keys)?.kinds().to_vec())
}

/// The database as the check reaches it.
struct Live<'a> {
    bridge: &'a TokioBridge,
    session: &'a scylla::client::session::Session,
}

impl Live<'_> {
    /// A table's binder over `fields`, built against its live columns and primary key, with the
    /// DELETE of its tombstones checked where it deletes.
    fn binder(&self, table: &TableConfig, fields: &[String]) -> Result<Binder, RunError> {
        let (ks, name) = (&table.keyspace, &table.table);
        let binder =
            self.bridge
                .block_on(sink::session::table_binder(self.session, table, fields))?;
        if table.on_tombstone == OnTombstone::Delete {
            binder.delete_binder(&format!("{ks}.{name}"), binder.keys())?;
        }
        Ok(binder)
    }
}

/// One route's checks: its subject's latest schema has every field it reads, and its tables take
/// them. Returns the schema id checked and the column lines of the report.
fn check_route(
    config: &Config,
    route: &Route<'_>,
    live: &Live<'_>,
) -> Result<(Option<u32>, Vec<String>), RunError> {
    let (schema_id, json) = reference_schema_of(config, route)?;
    let schema = Schema::parse_str(&json).map_err(|e| {
        RunError::Codec(CodecError::Resolution(format!(
            "writer schema does not parse: {e}"
        )))
    })?;
    let plan = Plan::compile(&schema, &route.decoded_fields())?;
    // The record's fields read from Kafka, decoded then metadata, and their kinds in that order.
    let fields = route.needed_fields();
    let mut kinds = plan.kinds().to_vec();
    let key_kinds = key_kinds(config, route, &fields)?;
    kinds.extend(
        meta::kinds(&fields, config.kafka.key_format, &key_kinds)
            .map_err(|e| RunError::Config(ConfigError::Invalid(e.to_string())))?,
    );
    let all = route.all_fields();
    let binder = live.binder(route.table, &all)?;
    mapping::check(&decoded_only(&binder.columns, fields.len()), &kinds)?;
    check_special(route.table, &fields, &kinds)?;
    // The primary route's lines keep their old shape; another route's name them.
    let prefix = if route.name == "primary" {
        String::new()
    } else {
        format!("({}) ", route.name)
    };
    let mut columns: Vec<String> = binder
        .columns
        .iter()
        .map(|c| format!("{prefix}{} <- {} ({})", c.column, c.field, c.ty))
        .collect();
    check_produce_steps(route, &fields, &kinds)?;
    // The insert processors' tables: the same checks, table by table.
    for p in route.processors {
        if let crate::config::ProcessorConfig::Insert { name, table } = p {
            let b = live.binder(table, &all)?;
            mapping::check(&decoded_only(&b.columns, fields.len()), &kinds)?;
            columns.extend(
                b.columns
                    .iter()
                    .map(|c| format!("{prefix}[{name}] {} <- {} ({})", c.column, c.field, c.ty)),
            );
        }
    }
    Ok((schema_id, columns))
}

/// Each produce step's output schema takes the fields it is fed (read from the Kafka record; an
/// enriched field's kind is known per record only): a misfit would fail every record, which would
/// then be dead-lettered and committed, so it is refused here. (Every output field is a record
/// field: the pipeline reads each by name, see `Route::needed_fields`.)
fn check_produce_steps(
    route: &Route<'_>,
    fields: &[String],
    kinds: &[crate::codec::Kind],
) -> Result<(), StartError> {
    use crate::codec::Kind;
    for p in route.processors {
        let crate::config::ProcessorConfig::Produce { name, schema, .. } = p else {
            continue;
        };
        let parsed = Schema::parse_str(schema).map_err(|e| {
            StartError::Schema(format!("processors.{name}.schema does not parse: {e}"))
        })?;
        let (plan, names) = Plan::for_encoding(&parsed)
            .map_err(|e| StartError::Schema(format!("processors.{name}: {e}")))?;
        for (field, out) in names.iter().zip(plan.kinds()) {
            let input = match fields.iter().position(|f| f == field) {
                Some(i) => kinds.get(i).cloned().unwrap_or(Kind::Null),
                // Enriched or custom: its kind is known per record only.
                None => continue,
            };
            if !input.writes_into(out) {
                return Err(StartError::Schema(format!(
                    "processors.{name}: field '{field}' ({input}) cannot be written to the output \
                     schema's {out}: every record would fail"
                )));
            }
        }
    }
    Ok(())
}

/// The columns fed by fields read from the Kafka record (decoded or metadata): enriched ones (lookups) are type-checked per record instead.
fn decoded_only(columns: &[mapping::ColumnMap], decoded: usize) -> Vec<mapping::ColumnMap> {
    columns
        .iter()
        .filter(|c| c.slot < decoded)
        .cloned()
        .collect()
}

/// TTL and timestamp fields must have usable kinds.
fn check_special(
    table: &TableConfig,
    fields: &[String],
    kinds: &[crate::codec::Kind],
) -> Result<(), StartError> {
    use crate::codec::Kind;
    let kind_of = |f: &str| {
        fields
            .iter()
            .position(|x| x == f)
            .and_then(|i| kinds.get(i))
    };
    if let Some(f) = &table.ttl_field {
        if !matches!(kind_of(f), Some(Kind::Int | Kind::Long)) {
            return Err(StartError::Schema(format!(
                "table.ttl_field '{f}' must be an Avro int or long"
            )));
        }
    }
    if let Some(f) = &table.timestamp_field {
        match kind_of(f) {
            Some(Kind::Long | Kind::TimestampMillis | Kind::TimestampMicros) => {}
            // The binder reads millis, micros or a plain long as µs; nanoseconds it would refuse on
            // every record (and, read as a long, they would be 1000 times too late): refuse them once.
            Some(Kind::TimestampNanos) => {
                return Err(StartError::Schema(format!(
                    "table.timestamp_field '{f}' is a timestamp-nanos: write timestamps are microseconds, \
                     use a timestamp-millis/micros or a long (µs)"
                )))
            }
            _ => {
                return Err(StartError::Schema(format!(
                    "table.timestamp_field '{f}' must be a long (µs) or a timestamp-millis/micros"
                )))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Kind;

    // Fails on the old code (it was not checked): a plain long into a timestamp-millis output
    // field failed every record, which was then dead-lettered and committed.
    #[test]
    fn a_produce_schema_that_cannot_take_its_fields_is_refused_at_start() {
        let with = |output: &str| {
            let text = format!(
                "{}\n[[processors]]\nkind = \"produce\"\nname = \"out\"\ntopic = \"o\"\n\
                 schema = '{{\"type\":\"record\",\"name\":\"O\",\"fields\":[{output}]}}'\n",
                crate::config::tests::MINIMAL
            );
            Config::parse(&text).expect("test config parses")
        };
        let check = |c: &Config, kinds: &[Kind]| {
            let route = c.primary();
            check_produce_steps(&route, &route.needed_fields(), kinds)
        };
        // MINIMAL reads uid and url; a produce step's fields are read too.
        let ts = r#"{"name":"uid","type":"string"},{"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}}"#;
        let c = with(ts);
        assert_eq!(c.needed_fields(), ["uid", "url", "ts"]);
        let e = check(&c, &[Kind::Str, Kind::Str, Kind::Long]).expect_err("long into timestamp");
        assert!(e.to_string().contains("'ts'"), "{e}");
        check(&c, &[Kind::Str, Kind::Str, Kind::TimestampMillis]).expect("the same type fits");
        check(
            &c,
            &[
                Kind::Str,
                Kind::Str,
                Kind::Nullable(Box::new(Kind::TimestampMillis)),
            ],
        )
        .expect("nulls fail per record only");
        let widening = r#"{"name":"url","type":"string"},{"name":"n","type":["null","long"]}"#;
        let c = with(widening);
        check(&c, &[Kind::Str, Kind::Str, Kind::Int]).expect("int widens to long");
        let e = check(&c, &[Kind::Str, Kind::Str, Kind::Double]).expect_err("double into long");
        assert!(e.to_string().contains("'n'"), "{e}");
    }

    #[test]
    fn output_kinds_take_what_the_encoder_writes() {
        let n = |k: Kind| Kind::Nullable(Box::new(k));
        for (input, output, fits) in [
            (Kind::Int, Kind::Long, true),
            (Kind::Long, Kind::Int, false),
            (Kind::Float, Kind::Double, true),
            (Kind::Double, Kind::Float, false),
            (Kind::Null, Kind::Long, false),
            (Kind::Null, n(Kind::Long), true),
            (n(Kind::Str), Kind::Str, true),
            (Kind::Str, Kind::Uuid, true),
            (Kind::Enum, Kind::Str, true),
            (Kind::Long, Kind::TimestampMillis, false),
            (
                Kind::Union(vec![Kind::Null, Kind::Str, Kind::Long]),
                Kind::Long,
                true,
            ),
            (Kind::Bool, Kind::Union(vec![Kind::Str, Kind::Bool]), true),
            (
                Kind::Array(Box::new(Kind::Int)),
                Kind::Array(Box::new(Kind::Long)),
                true,
            ),
            (
                Kind::Map(Box::new(Kind::Str)),
                Kind::Map(Box::new(Kind::Long)),
                false,
            ),
        ] {
            assert_eq!(input.writes_into(&output), fits, "{input} into {output}");
        }
    }

    // Fails on the old code: timestamp-nanos compiled to kind `long`, which this check accepted and
    // the binder then read as microseconds (1000 times too late).
    #[test]
    fn timestamp_field_refuses_nanoseconds_and_accepts_millis_micros_and_long() {
        let mut config = Config::parse(crate::config::tests::MINIMAL).expect("test config parses");
        config.table.timestamp_field = Some("t".into());
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"T","fields":[
                {"name":"t","type":{"type":"long","logicalType":"timestamp-nanos"}}]}"#,
        )
        .expect("nanos schema parses");
        let fields = ["t".to_string()];
        let plan = Plan::compile(&schema, &fields).expect("compiles");
        let msg = check_special(&config.table, &fields, plan.kinds())
            .expect_err("a nanosecond write timestamp is refused")
            .to_string();
        for part in ["'t'", "timestamp-nanos"] {
            assert!(msg.contains(part), "{msg} lacks {part}");
        }
        for ok in [Kind::Long, Kind::TimestampMillis, Kind::TimestampMicros] {
            check_special(&config.table, &fields, &[ok])
                .expect("a µs-convertible kind is accepted");
        }
        assert!(check_special(&config.table, &fields, &[Kind::Str]).is_err());
    }
}
