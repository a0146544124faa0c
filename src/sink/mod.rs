//! The row sink: the field → column mapping checked against the live table, the binding of a decoded
//! record into statement values, and the writers (Scylla, or nothing for the null-sink benchmark).
//!
//! Guarantee: [`Binder::bind`] turns a decoded record into exactly the values of
//! `INSERT ... USING TTL ? AND TIMESTAMP ?`. The default write timestamp is the Kafka record timestamp
//! in µs plus `offset mod 1000`, and a replay writes identical cells. Two updates of one key in the same
//! millisecond keep their Kafka order under last-write-wins, unless their offsets straddle a multiple of
//! 1000 (offset 999 then 1000 in one millisecond: the earlier wins); a deterministic timestamp has only
//! 1000 µs per millisecond to spend. Write errors are scoped (see [`WriteError`]).
//! Precondition: everything tokio (the session, the driver's futures) runs through the shard's
//! [`bridge`].
//!
//! Layout: [`error`] (start-up and per-write errors), [`session`] (connect, TLS, table columns, prepared
//! statements, [`ScyllaWriter`]), [`bridge`] (the driver's tokio runtime on the shard's own thread),
//! [`mapping`] (CQL types and conversions), [`cell`] (bound values that still point into the
//! record's payload).

pub mod bridge;
pub mod cell;
pub mod error;
pub mod mapping;
pub mod rate;
pub mod session;

use std::rc::Rc;

use futures::future::LocalBoxFuture;
use scylla::value::{CqlValue, MaybeUnset};

use crate::codec::{Kind, Value};
use crate::config::{NullValues, TableConfig, WriteTimestamp};

/// [`crate::config::MAX_TTL_SECONDS`] as the CQL `int` a TTL is bound as (20 years fit it).
const MAX_TTL: i32 = crate::config::MAX_TTL_SECONDS as i32;
pub use cell::Cell;
pub use error::{Scope, StartError, WriteError};
pub use mapping::{ColumnMap, CqlType};
pub use session::{connect, table_columns, ScyllaWriter};

/// Statement values for one row: the mapped columns, then TTL, then write timestamp (µs).
/// `Unset` leaves a column untouched (no tombstone); `Set(None)` writes a CQL null (a tombstone).
pub type BoundRow = Vec<MaybeUnset<Option<Cell>>>;

/// The replica that owns a row's partition (its first replica: node and, on ScyllaDB, shard). Rows of
/// one owner can share a batch that the driver routes to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner {
    node: u128,
    /// The ScyllaDB shard; `u32::MAX` where the node has none (Cassandra) or it is unknown.
    shard: u32,
}

impl Owner {
    /// Every row at once: a one-node cluster, a writer that does not route, or a row whose token
    /// could not be computed (its write fails on its own merits).
    pub const ANY: Owner = Owner {
        node: 0,
        shard: u32::MAX,
    };

    pub fn new(node: uuid::Uuid, shard: Option<u32>) -> Owner {
        Owner {
            node: node.as_u128(),
            shard: shard.unwrap_or(u32::MAX),
        }
    }
}

/// The I/O seam for writes, so unit tests and the null-sink benchmark can stand in for Scylla.
pub trait RowWriter {
    /// Writes `rows`: one row as a single prepared INSERT, several as one `UNLOGGED` batch of that
    /// INSERT (each row keeps its own TTL and write timestamp). All or nothing as far as the caller
    /// knows: an error means no row may be assumed written.
    fn write(&self, rows: Rc<Vec<BoundRow>>) -> LocalBoxFuture<'static, Result<(), WriteError>>;

    /// Who owns `row`'s partition, to group rows into batches. Default: one group.
    fn owner(&self, _row: &BoundRow) -> Owner {
        Owner::ANY
    }
}

/// Writes nothing: the benchmark's null sink (decode and map only).
pub struct NullWriter;

impl RowWriter for NullWriter {
    fn write(&self, _rows: Rc<Vec<BoundRow>>) -> LocalBoxFuture<'static, Result<(), WriteError>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// A CQL quoted identifier: the name as written, case kept, an inner `"` doubled. The one quoting of
/// the INSERT and DELETE statements.
fn quoted(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// About how many bytes `row` takes in a request (values and their length prefixes), for
/// `scylla.batch_max_bytes`; exact enough to stay under the database's batch-size warning.
pub fn approx_row_bytes(row: &BoundRow) -> usize {
    row.iter()
        .map(|v| match v {
            MaybeUnset::Set(Some(v)) => 4 + v.approx_bytes(),
            _ => 4,
        })
        .sum()
}

pub(crate) fn approx_value_bytes(v: &CqlValue) -> usize {
    match v {
        CqlValue::Text(s) | CqlValue::Ascii(s) => s.len(),
        CqlValue::Blob(b) => b.len(),
        CqlValue::List(items) | CqlValue::Set(items) | CqlValue::Vector(items) => {
            4 + items
                .iter()
                .map(|i| 4 + approx_value_bytes(i))
                .sum::<usize>()
        }
        CqlValue::Map(pairs) => {
            4 + pairs
                .iter()
                .map(|(k, v)| 8 + approx_value_bytes(k) + approx_value_bytes(v))
                .sum::<usize>()
        }
        CqlValue::Tuple(items) => items
            .iter()
            .map(|i| 4 + i.as_ref().map_or(0, approx_value_bytes))
            .sum(),
        CqlValue::UserDefinedType { fields, .. } => fields
            .iter()
            .map(|(_, f)| 4 + f.as_ref().map_or(0, approx_value_bytes))
            .sum(),
        CqlValue::Boolean(_) | CqlValue::TinyInt(_) => 1,
        CqlValue::SmallInt(_) => 2,
        CqlValue::Int(_) | CqlValue::Float(_) | CqlValue::Date(_) => 4,
        CqlValue::Uuid(_) | CqlValue::Timeuuid(_) => 16,
        // bigint, double, timestamp, time, counter; varint, decimal, inet, duration are small too.
        _ => 8,
    }
}

/// The write timestamp of a record of the default (`kafka`) source: Kafka ms × 1000 plus the offset
/// modulo 1000, so later records of a partition win ties within a millisecond (except across a multiple
/// of 1000 offsets) and replays are identical.
pub fn kafka_write_timestamp_us(kafka_ts_ms: i64, offset: i64) -> i64 {
    kafka_ts_ms
        .saturating_mul(1000)
        .saturating_add(offset.rem_euclid(1000))
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
    /// The table's primary-key columns (partition key, then clustering), where known.
    keys: Vec<String>,
    ttl: Ttl,
    ts: Ts,
    /// Null fields write CQL nulls (tombstones) instead of leaving the column unset.
    write_nulls: bool,
}

impl Binder {
    /// The binder of a table config (the primary `[table]` or an insert processor's). `fields` is the
    /// record's slot order; `types` the live column types.
    pub fn for_table(
        table: &TableConfig,
        fields: &[String],
        types: &std::collections::HashMap<String, CqlType>,
    ) -> Result<Binder, StartError> {
        let slot_of = |f: &str| fields.iter().position(|x| x == f);
        let mut columns = Vec::with_capacity(table.columns.len());
        for (column, field) in &table.columns {
            let ty = types
                .get(column)
                .cloned()
                .ok_or_else(|| StartError::MissingColumn {
                    column: column.clone(),
                    field: field.clone(),
                    table: format!("{}.{}", table.keyspace, table.table),
                })?;
            let slot = slot_of(field).ok_or_else(|| StartError::FieldNotDecoded {
                role: "mapped",
                field: field.clone(),
            })?;
            columns.push(ColumnMap {
                column: column.clone(),
                field: field.clone(),
                slot,
                ty,
            });
        }
        let ttl = match &table.ttl_field {
            Some(f) => Ttl::Slot(slot_of(f).ok_or_else(|| StartError::FieldNotDecoded {
                role: "ttl",
                field: f.clone(),
            })?),
            None => Ttl::Fixed(
                i32::try_from(table.ttl_seconds)
                    .ok()
                    .filter(|t| *t <= MAX_TTL)
                    .ok_or_else(|| {
                        StartError::Schema("ttl_seconds is larger than the database allows".into())
                    })?,
            ),
        };
        let ts = match table
            .write_timestamp()
            .map_err(|e| StartError::Schema(e.to_string()))?
        {
            WriteTimestamp::Kafka => Ts::Kafka,
            WriteTimestamp::Now => Ts::Now,
            WriteTimestamp::Fixed(us) => Ts::Fixed(us),
            WriteTimestamp::Field(f) => {
                Ts::Slot(slot_of(&f).ok_or_else(|| StartError::FieldNotDecoded {
                    role: "timestamp",
                    field: f.clone(),
                })?)
            }
        };
        Ok(Binder {
            columns,
            keys: Vec::new(),
            ttl,
            ts,
            write_nulls: table.null_values == NullValues::Null,
        })
    }

    /// This binder with the table's primary-key columns (from `system_schema`).
    pub fn with_keys(mut self, keys: Vec<String>) -> Binder {
        self.keys = keys;
        self
    }

    /// The table's primary-key columns, as given to [`Binder::with_keys`].
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// Whether a writer schema fits this table: `kinds` are its decoded slots' kinds, `missing`
    /// the slots it lacks without a default (null in every record). Every mapped column must take
    /// its field's kind, and no primary-key column may be fed by a missing field (each record would
    /// fail). `Err` names field, column and types, never a value.
    pub fn check_schema(&self, kinds: &[Kind], missing: &[bool]) -> Result<(), String> {
        for c in self.columns.iter().filter(|c| c.slot < kinds.len()) {
            if missing.get(c.slot).copied().unwrap_or(false) && self.keys.contains(&c.column) {
                return Err(format!(
                    "primary-key column '{}' is fed by field '{}', which the writer schema lacks \
                     and the reader schema gives no default",
                    c.column, c.field
                ));
            }
            mapping::check(std::slice::from_ref(c), kinds).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The binder of the table's deletes: `key_columns` (its primary key, every one mapped from
    /// Kafka metadata) and this binder's write-timestamp rule.
    pub fn delete_binder(
        &self,
        table: &str,
        key_columns: &[String],
    ) -> Result<DeleteBinder, StartError> {
        let mut keys = Vec::with_capacity(key_columns.len());
        for k in key_columns {
            let refused = |source_of: String| StartError::KeyNotFromKafka {
                table: table.to_string(),
                column: k.clone(),
                source_of,
            };
            let c = self
                .columns
                .iter()
                .find(|c| &c.column == k)
                .ok_or_else(|| refused("not mapped".into()))?;
            if !crate::pipeline::meta::is_meta(&c.field) {
                return Err(refused(format!("mapped from field '{}'", c.field)));
            }
            keys.push(c.clone());
        }
        if matches!(self.ts, Ts::Slot(_)) {
            return Err(StartError::Schema(format!(
                "table {table} deletes on tombstones, but its write timestamp comes from a value field, which a tombstone lacks"
            )));
        }
        Ok(DeleteBinder {
            keys,
            ts: self.ts.clone(),
        })
    }

    /// The prepared statement text.
    pub fn insert_cql(&self, keyspace: &str, table: &str) -> String {
        let cols: Vec<String> = self.columns.iter().map(|c| quoted(&c.column)).collect();
        let marks = vec!["?"; self.columns.len()].join(", ");
        format!(
            "INSERT INTO {}.{} ({}) VALUES ({marks}) USING TTL ? AND TIMESTAMP ?",
            quoted(keyspace),
            quoted(table),
            cols.join(", ")
        )
    }

    /// Binds one decoded record's `values` (by slot); `kafka_ts_ms` is the record timestamp (None if
    /// the record has none) and `offset` its Kafka offset. The values stay in the record: text and
    /// bytes are shared with it (a reference count on the payload), nothing is copied.
    pub fn bind(
        &self,
        values: &[Value],
        kafka_ts_ms: Option<i64>,
        offset: i64,
    ) -> Result<BoundRow, WriteError> {
        self.bind_counting::<false>(values, kafka_ts_ms, offset)
            .map(|(row, _)| row)
    }

    /// [`Binder::bind`], and the row's [`approx_row_bytes`] counted cell by cell as it binds them
    /// (a batch needs the size of every row: one pass over the cells instead of two).
    pub fn bind_sized(
        &self,
        values: &[Value],
        kafka_ts_ms: Option<i64>,
        offset: i64,
    ) -> Result<(BoundRow, usize), WriteError> {
        self.bind_counting::<true>(values, kafka_ts_ms, offset)
    }

    /// Both binds: with `COUNT`, the size too (0 without: no caller wants it then).
    fn bind_counting<const COUNT: bool>(
        &self,
        values: &[Value],
        kafka_ts_ms: Option<i64>,
        offset: i64,
    ) -> Result<(BoundRow, usize), WriteError> {
        let ttl = match self.ttl {
            Ttl::Fixed(s) => s,
            Ttl::Slot(i) => match values.get(i) {
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
        // The database would refuse it with the value in its message (`requested (N)`), which then
        // reached the dead letter's headers and the logs: refused here, without the value.
        if ttl > MAX_TTL {
            return Err(mapping_err("ttl", "ttl above the database's 20-year limit"));
        }
        let ts_us = write_timestamp(&self.ts, values, kafka_ts_ms, offset)?;
        let mut out = Vec::with_capacity(self.columns.len() + 2);
        let mut bytes = 0;
        for c in &self.columns {
            let v = values.get(c.slot).unwrap_or(&Value::Null);
            // Converted in place, into the value's own slot of `out` (see `mapping::convert_into`).
            out.push(MaybeUnset::Set(None));
            let Some(MaybeUnset::Set(cell)) = out.last_mut() else {
                continue;
            };
            mapping::convert_into(v, &c.ty, cell).map_err(|reason| WriteError::Mapping {
                column: c.column.clone(),
                reason,
            })?;
            if COUNT {
                bytes += 4 + cell.as_ref().map_or(0, Cell::approx_bytes);
            }
            if cell.is_none() && !self.write_nulls {
                if let Some(last) = out.last_mut() {
                    *last = MaybeUnset::Unset;
                }
            }
        }
        let ttl = CqlValue::Int(ttl);
        let ts = CqlValue::BigInt(ts_us);
        if COUNT {
            bytes += 8 + approx_value_bytes(&ttl) + approx_value_bytes(&ts);
        }
        out.push(MaybeUnset::Set(Some(Cell::Cql(ttl))));
        out.push(MaybeUnset::Set(Some(Cell::Cql(ts))));
        Ok((out, bytes))
    }
}

/// Turns a tombstone into the values of `DELETE FROM .. USING TIMESTAMP ? WHERE <key> = ?..`: the
/// write timestamp of the table's rule (the one its inserts use, so an older insert replayed later
/// loses to the delete), then the primary-key columns. Built from the table's [`Binder`].
#[derive(Debug, Clone)]
pub struct DeleteBinder {
    keys: Vec<ColumnMap>,
    ts: Ts,
}

impl DeleteBinder {
    /// The prepared statement text.
    pub fn delete_cql(&self, keyspace: &str, table: &str) -> String {
        let wheres: Vec<String> = self
            .keys
            .iter()
            .map(|c| format!("{} = ?", quoted(&c.column)))
            .collect();
        format!(
            "DELETE FROM {}.{} USING TIMESTAMP ? WHERE {}",
            quoted(keyspace),
            quoted(table),
            wheres.join(" AND ")
        )
    }

    /// Binds one tombstone's `values` (its metadata slots filled). A null key value fails the
    /// record: without it there is no row to delete.
    pub fn bind(
        &self,
        values: &[Value],
        kafka_ts_ms: Option<i64>,
        offset: i64,
    ) -> Result<BoundRow, WriteError> {
        let ts_us = write_timestamp(&self.ts, values, kafka_ts_ms, offset)?;
        let mut out = Vec::with_capacity(self.keys.len() + 1);
        out.push(MaybeUnset::Set(Some(Cell::Cql(CqlValue::BigInt(ts_us)))));
        for c in &self.keys {
            let v = values.get(c.slot).unwrap_or(&Value::Null);
            let cell = mapping::convert(v, &c.ty).map_err(|reason| WriteError::Mapping {
                column: c.column.clone(),
                reason,
            })?;
            if cell.is_none() {
                return Err(WriteError::Mapping {
                    column: c.column.clone(),
                    reason: "a tombstone without a value for this primary-key column",
                });
            }
            out.push(MaybeUnset::Set(cell));
        }
        Ok(out)
    }
}

/// The write timestamp in µs of a record under rule `ts`.
fn write_timestamp(
    ts: &Ts,
    values: &[Value],
    kafka_ts_ms: Option<i64>,
    offset: i64,
) -> Result<i64, WriteError> {
    Ok(match ts {
        Ts::Kafka => kafka_ts_ms
            .map(|ms| kafka_write_timestamp_us(ms, offset))
            .ok_or_else(|| mapping_err("timestamp", "record has no Kafka timestamp"))?,
        Ts::Now => crate::clock::now_us(),
        Ts::Fixed(us) => *us,
        Ts::Slot(i) => match values.get(*i) {
            Some(Value::TimestampMillis(ms)) => ms.saturating_mul(1000),
            Some(Value::TimestampMicros(us)) | Some(Value::Long(us)) => *us,
            _ => {
                return Err(mapping_err(
                    "timestamp",
                    "timestamp field is not a timestamp or long",
                ))
            }
        },
    })
}

fn mapping_err(column: &str, reason: &'static str) -> WriteError {
    WriteError::Mapping {
        column: column.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::retry::Retryable;
    use std::collections::HashMap;

    /// A decoded record's values by slot.
    struct Vals {
        values: Vec<Value>,
    }

    fn config(extra: &str) -> Config {
        config_with(r#"{ a = "fa", b = "fb" }"#, extra)
    }

    /// A test config whose table maps `columns` (an inline TOML table), plus `extra` table keys.
    fn config_with(columns: &str, extra: &str) -> Config {
        Config::parse(&config_text(columns, extra)).expect("test config parses")
    }

    /// The text of [`config_with`]'s config.
    fn config_text(columns: &str, extra: &str) -> String {
        format!(
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
columns = {columns}
{extra}
"#
        )
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
        let b = Binder::for_table(&c.table, &fields, &types()).expect("binder");
        assert_eq!(
            b.insert_cql("ks", "tb"),
            "INSERT INTO \"ks\".\"tb\" (\"a\", \"b\") VALUES (?, ?) USING TTL ? AND TIMESTAMP ?"
        );
        let row = Vals {
            values: vec![Value::Str("x".into()), Value::Int(5)],
        };
        let bound = b
            .bind(&row.values, Some(1_700_000_000_123), 0)
            .expect("binds");
        let expect = [
            CqlValue::Text("x".into()),
            CqlValue::BigInt(5),
            CqlValue::Int(60),
            CqlValue::BigInt(1_700_000_000_123_000),
        ];
        assert_eq!(bound.len(), expect.len());
        for (b, e) in bound.iter().zip(expect) {
            assert!(
                matches!(b, MaybeUnset::Set(Some(v)) if v.clone().into_cql() == e),
                "{b:?} != {e:?}"
            );
        }
    }

    // Fails on the old code: the database refused such a TTL only at the write, with the value in
    // its message, and the message went to the dead letter's headers; a fixed one failed every write.
    #[test]
    fn a_ttl_beyond_20_years_is_refused_here_without_its_value() {
        let c = config("ttl_field = \"t\"");
        let fields = c.needed_fields();
        let b = Binder::for_table(&c.table, &fields, &types()).expect("binder");
        let with_ttl = |ttl: Value| vec![Value::Str("x".into()), Value::Int(5), ttl];
        b.bind(&with_ttl(Value::Int(MAX_TTL)), Some(1_700), 0)
            .expect("20 years is the limit, included");
        for over in [Value::Int(MAX_TTL + 1), Value::Long(630_720_001)] {
            let e = b
                .bind(&with_ttl(over), Some(1_700), 0)
                .expect_err("over the limit");
            assert!(matches!(e, WriteError::Mapping { .. }), "{e:?}");
            assert!(!e.to_string().contains("630720001"), "{e}");
        }
        let fixed = config("ttl_seconds = 630720001");
        assert!(Binder::for_table(&fixed.table, &fixed.needed_fields(), &types()).is_err());
    }

    #[test]
    fn bind_counts_the_size_a_batch_would_measure() {
        let c = config("");
        let fields = c.needed_fields();
        let b = Binder::for_table(&c.table, &fields, &types()).expect("binder");
        for values in [
            vec![Value::Str("some text".into()), Value::Int(5)],
            vec![Value::Null, Value::Long(7)],
        ] {
            let (row, bytes) = b.bind_sized(&values, Some(1_700), 0).expect("binds");
            assert_eq!(bytes, approx_row_bytes(&row), "{values:?}");
            let plain = b.bind(&values, Some(1_700), 0).expect("binds");
            assert_eq!(format!("{row:?}"), format!("{plain:?}"));
        }
    }

    #[test]
    fn timestamp_from_field_and_missing_column() {
        let c = config("timestamp_source = \"field\"\ntimestamp_field = \"ts\"");
        let fields = c.needed_fields();
        let b = Binder::for_table(&c.table, &fields, &types()).expect("binder");
        let row = Vals {
            values: vec![Value::Null, Value::Long(1), Value::TimestampMillis(2)],
        };
        let bound = b.bind(&row.values, None, 0).expect("binds");
        assert!(matches!(
            bound.last(),
            Some(MaybeUnset::Set(Some(Cell::Cql(CqlValue::BigInt(2000)))))
        ));
        assert!(
            matches!(bound.first(), Some(MaybeUnset::Unset)),
            "null leaves the column unset"
        );
        let c2 = config(
            "timestamp_source = \"field\"\ntimestamp_field = \"ts\"\nnull_values = \"null\"",
        );
        let b2 = Binder::for_table(&c2.table, &fields, &types()).expect("binder");
        let row = Vals {
            values: vec![Value::Null, Value::Long(1), Value::TimestampMillis(2)],
        };
        assert!(matches!(
            b2.bind(&row.values, None, 0).expect("binds").first(),
            Some(MaybeUnset::Set(None))
        ));

        let mut t = types();
        t.remove("b");
        let err = Binder::for_table(&c.table, &fields, &t).expect_err("column b is missing");
        assert!(
            err.to_string().contains("column 'b'") && err.to_string().contains("'fb'"),
            "{err}"
        );
    }

    #[test]
    fn fixed_write_timestamp_from_config() {
        let c = config("timestamp_source = \"fixed\"\ntimestamp_fixed_us = 1234567");
        c.validate().expect("valid");
        let b = Binder::for_table(&c.table, &c.needed_fields(), &types()).expect("binder");
        let row = Vals {
            values: vec![Value::Str("x".into()), Value::Int(5)],
        };
        let bound = b.bind(&row.values, Some(99), 0).expect("binds");
        assert!(matches!(
            bound.last(),
            Some(MaybeUnset::Set(Some(Cell::Cql(CqlValue::BigInt(
                1_234_567
            )))))
        ));
        let err = config("timestamp_source = \"fixed\"")
            .validate()
            .expect_err("no constant given");
        assert!(err.to_string().contains("timestamp_fixed_us"), "{err}");
    }

    #[test]
    fn a_field_can_be_both_a_column_and_the_write_timestamp() {
        // Regression (binding once moved the column's value out before the timestamp was read from
        // it): the column and the timestamp both get the field's value.
        let c = config("timestamp_source = \"field\"\ntimestamp_field = \"fb\"");
        let fields = c.needed_fields();
        let mut t = types();
        t.insert("b".into(), CqlType::Timestamp);
        let b = Binder::for_table(&c.table, &fields, &t).expect("binder");
        let row = Vals {
            values: vec![Value::Str("x".into()), Value::TimestampMillis(7)],
        };
        let bound = b.bind(&row.values, None, 0).expect("binds");
        assert!(matches!(
            bound.get(1),
            Some(MaybeUnset::Set(Some(Cell::Cql(CqlValue::Timestamp(_)))))
        ));
        assert!(matches!(
            bound.last(),
            Some(MaybeUnset::Set(Some(Cell::Cql(CqlValue::BigInt(7000)))))
        ));
    }

    #[test]
    fn value_that_does_not_fit_is_a_permanent_mapping_error() {
        let c = config("");
        let fields = c.needed_fields();
        let b = Binder::for_table(&c.table, &fields, &types()).expect("binder");
        let row = Vals {
            values: vec![Value::Int(1), Value::Int(5)],
        };
        let err = b.bind(&row.values, Some(0), 0).expect_err("int into text");
        assert_eq!((err.class(), err.is_retryable()), ("mapping", false));
    }

    #[test]
    fn kafka_write_timestamps_order_records_of_one_millisecond_by_offset() {
        // Regression: ms × 1000 gave two updates of one key in one millisecond the same timestamp, and
        // Cassandra then kept the larger value instead of the later record.
        let c = config("");
        let b = Binder::for_table(&c.table, &c.needed_fields(), &types()).expect("binder");
        let ts = |offset: i64| {
            let row = Vals {
                values: vec![Value::Str("x".into()), Value::Int(5)],
            };
            match b.bind(&row.values, Some(1_700_000_000_123), offset) {
                Ok(bound) => match bound.last() {
                    Some(MaybeUnset::Set(Some(Cell::Cql(CqlValue::BigInt(us))))) => *us,
                    other => panic!("no timestamp bound: {other:?}"),
                },
                Err(e) => panic!("binds: {e}"),
            }
        };
        assert!(ts(41) < ts(42), "a later offset writes a later timestamp");
        assert_eq!(ts(42), ts(42), "a replay writes the same timestamp");
        assert_eq!(ts(1042), 1_700_000_000_123_042);
        assert!(
            ts(999) > ts(1000),
            "the documented limit: the sub-ms part wraps every 1000 offsets"
        );
    }

    fn delete_config(extra: &str) -> Config {
        config_with(
            r#"{ a = "kafka.key", b = "fb", p = "kafka.partition" }"#,
            &format!("on_tombstone = \"delete\"\n{extra}"),
        )
    }

    fn delete_types() -> HashMap<String, CqlType> {
        let mut t = types();
        t.insert("p".into(), CqlType::Int);
        t
    }

    #[test]
    fn a_tombstone_binds_the_tables_write_timestamp_then_its_key_from_kafka_metadata() {
        let c = delete_config("");
        let fields = c.needed_fields();
        assert_eq!(fields, ["fb", "kafka.key", "kafka.partition"]);
        let insert = Binder::for_table(&c.table, &fields, &delete_types()).expect("binder");
        let keys = ["a".to_string(), "p".to_string()];
        let delete = insert
            .delete_binder("ks.tb", &keys)
            .expect("keys from Kafka");
        assert_eq!(
            delete.delete_cql("ks", "tb"),
            r#"DELETE FROM "ks"."tb" USING TIMESTAMP ? WHERE "a" = ? AND "p" = ?"#
        );
        let values = [Value::Null, Value::Str("user-7".into()), Value::Int(3)];
        let row = delete.bind(&values, Some(1_700), 1_234).expect("binds");
        let cql: Vec<Option<CqlValue>> = row
            .into_iter()
            .map(|v| match v {
                MaybeUnset::Set(c) => c.map(Cell::into_cql),
                MaybeUnset::Unset => None,
            })
            .collect();
        // The same write timestamp an insert of this record gets: ms × 1000 + offset mod 1000.
        assert_eq!(
            cql,
            vec![
                Some(CqlValue::BigInt(1_700_234)),
                Some(CqlValue::Text("user-7".into())),
                Some(CqlValue::Int(3)),
            ]
        );
        assert_eq!(
            insert
                .bind(&values, Some(1_700), 1_234)
                .expect("binds")
                .last()
                .cloned()
                .and_then(|v| match v {
                    MaybeUnset::Set(c) => c.map(Cell::into_cql),
                    MaybeUnset::Unset => None,
                }),
            Some(CqlValue::BigInt(1_700_234))
        );
        // A tombstone without a key has no row to delete: its record fails, naming the column.
        let e = delete
            .bind(&[Value::Null, Value::Null, Value::Int(3)], Some(1), 0)
            .expect_err("no key");
        assert!(
            matches!(e, WriteError::Mapping { ref column, .. } if column == "a"),
            "{e}"
        );
        assert_eq!(e.scope(), Scope::Record);
    }

    #[test]
    fn a_primary_key_column_not_mapped_from_kafka_refuses_deletes_at_start_up() {
        let c = delete_config("");
        let fields = c.needed_fields();
        let insert = Binder::for_table(&c.table, &fields, &delete_types()).expect("binder");
        for (keys, part) in [
            (
                vec!["a".to_string(), "b".to_string()],
                "'b' is mapped from field 'fb'",
            ),
            (vec!["a".to_string(), "z".to_string()], "'z' is not mapped"),
        ] {
            let msg = insert
                .delete_binder("ks.tb", &keys)
                .expect_err("refused")
                .to_string();
            assert!(msg.contains(part) && msg.contains("ks.tb"), "{msg}");
        }
        // A write timestamp read from the value cannot be a tombstone's: refused when parsed.
        let text = &config_text(
            r#"{ a = "kafka.key" }"#,
            "on_tombstone = \"delete\"\ntimestamp_source = \"field\"\ntimestamp_field = \"ts\"",
        );
        let refused = |t: &str| {
            Config::parse(t)
                .expect("parses")
                .validate()
                .expect_err("refused")
                .to_string()
        };
        let e = refused(text);
        assert!(
            e.contains("on_tombstone") && e.contains("timestamp_source"),
            "{e}"
        );
        // `now` and `fixed` cannot order a delete against its key's inserts either.
        for source in [
            "timestamp_source = \"now\"",
            "timestamp_source = \"fixed\"\ntimestamp_fixed_us = 5",
        ] {
            let t = text.replace(
                "timestamp_source = \"field\"\ntimestamp_field = \"ts\"",
                source,
            );
            let e = refused(&t);
            assert!(e.contains("\"kafka\""), "{source}: {e}");
        }
        let unknown = text
            .replace("timestamp_source = \"field\"\ntimestamp_field = \"ts\"", "")
            .replace("kafka.key", "kafka.kee");
        let e = refused(&unknown);
        assert!(
            e.contains("'kafka.kee' is not a Kafka metadata field"),
            "{e}"
        );
    }

    #[test]
    fn a_new_writer_schema_is_checked_against_the_table_and_its_key() {
        let c = config("");
        let fields = c.needed_fields();
        let b = Binder::for_table(&c.table, &fields, &types())
            .expect("binder")
            .with_keys(vec!["a".into()]);
        // fa -> a (text, the key), fb -> b (bigint).
        assert_eq!(
            b.check_schema(&[Kind::Str, Kind::Long], &[false, false]),
            Ok(())
        );
        // A regular column's field missing: null, fine; the key's: every record would fail.
        assert_eq!(
            b.check_schema(&[Kind::Str, Kind::Null], &[false, true]),
            Ok(())
        );
        let e = b
            .check_schema(&[Kind::Null, Kind::Long], &[true, false])
            .expect_err("the key's field is missing");
        assert!(
            e.contains("primary-key column 'a'") && e.contains("'fa'"),
            "{e}"
        );
        // A field that changed to a type its column cannot take.
        let e = b
            .check_schema(&[Kind::Str, Kind::Str], &[false, false])
            .expect_err("string into bigint");
        assert!(e.contains("'fb'") && e.contains("bigint"), "{e}");
    }
}
