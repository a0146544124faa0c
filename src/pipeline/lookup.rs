//! The lookup step: a prepared SELECT by key whose columns are merged into the record, with a bounded
//! per-shard cache, a miss policy and optional speculative execution.
//!
//! Guarantee: transient database errors are retried through [`crate::retry`] (a stop ends the wait);
//! a miss follows `on_miss`; errors never carry the record's key or values.
//! Precondition: built inside the shard; the driver's futures run through the tokio bridge.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::LocalBoxFuture;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;

use super::filter::text;
use super::{Processor, Record, StepError, StepOutcome};
use crate::codec::Value;
use crate::config::MissPolicy;
use crate::metrics::{events, ShardMetrics};
use crate::retry::{retry, RetryPolicy, Retryable, Scope, Shutdown};
use crate::sink::bridge::InTokio;
use crate::sink::mapping::{self, CqlType};
use crate::sink::WriteError;

pub(super) struct Cached {
    at: Instant,
    row: Option<Vec<Value>>,
}

/// A prepared SELECT by key, merged into the record.
pub struct Lookup {
    pub(super) name: String,
    pub(super) session: Arc<Session>,
    pub(super) handle: crate::sink::bridge::BridgeHandle,
    pub(super) stmt: PreparedStatement,
    /// Each key field's record slot and the type of its bind marker, which the key converts to
    /// as a column value would (a UUID string into a `uuid` key, an Avro int into a `bigint` one).
    pub(super) keys: Vec<(usize, CqlType)>,
    /// (index in the SELECT's columns, record slot)
    pub(super) outputs: Vec<(usize, usize)>,
    pub(super) cache: RefCell<HashMap<String, Cached>>,
    pub(super) cache_entries: usize,
    pub(super) cache_ttl: Duration,
    pub(super) on_miss: MissPolicy,
    pub(super) defaults: Vec<(usize, Value)>,
    pub(super) cache_hits: prometheus::IntCounter,
    pub(super) cache_misses: prometheus::IntCounter,
    pub(super) metrics: ShardMetrics,
    pub(super) shutdown: Shutdown,
}

/// A key field's value as its bind marker's type: converted exactly as a column value is (so a
/// value that does not fit its key is a record error, as a value that does not fit a column is);
/// a null key matches no row, so it is an error too. The message names no value.
fn key_value(v: &Value, ty: &CqlType) -> Result<CqlValue, &'static str> {
    match mapping::convert(v, ty)? {
        Some(cell) => Ok(mapping::cql_for(cell, ty)),
        None => Err("key field is null"),
    }
}

/// Whether [`from_cql`] reads a column of this type into a field exactly. Checked for every mapped
/// column when the step is built: a type it cannot read would reach the record as something else
/// (before this check, the driver's debug text: `Date(CqlDate(..))` written into a text column).
pub(super) fn readable(ct: &scylla::cluster::metadata::ColumnType<'_>) -> bool {
    use scylla::cluster::metadata::{ColumnType, NativeType};
    if matches!(ct, ColumnType::Native(NativeType::Counter)) {
        return true;
    }
    readable_type(&CqlType::of_column(ct))
}

fn readable_type(ty: &CqlType) -> bool {
    match ty {
        CqlType::Ascii
        | CqlType::Text
        | CqlType::Int
        | CqlType::BigInt
        | CqlType::SmallInt
        | CqlType::TinyInt
        | CqlType::Float
        | CqlType::Double
        | CqlType::Boolean
        | CqlType::Blob
        | CqlType::Timestamp
        | CqlType::Date
        | CqlType::Uuid
        | CqlType::TimeUuid
        | CqlType::Inet
        | CqlType::Decimal => true,
        CqlType::List(t) | CqlType::Set(t) => readable_type(t),
        // A record's map has text keys: any other key would be turned into text or lost.
        CqlType::Map(k, v) => matches!(**k, CqlType::Text | CqlType::Ascii) && readable_type(v),
        // time (ns; fields hold µs), varint (no field type), duration (signed; the Avro one is
        // not), user types, tuples, vectors.
        CqlType::Time
        | CqlType::Varint
        | CqlType::Duration
        | CqlType::Udt(_)
        | CqlType::Other(_) => false,
    }
}

/// A selected value as a field's value. Every type a built step maps is read exactly (see
/// [`readable`]); a value of any other type cannot reach here, and would be read as null.
fn from_cql(v: CqlValue) -> Value {
    match v {
        CqlValue::Text(s) | CqlValue::Ascii(s) => Value::Str(s.into()),
        CqlValue::Int(i) => Value::Int(i),
        CqlValue::BigInt(l) => Value::Long(l),
        CqlValue::SmallInt(i) => Value::Int(i32::from(i)),
        CqlValue::TinyInt(i) => Value::Int(i32::from(i)),
        CqlValue::Boolean(b) => Value::Bool(b),
        CqlValue::Double(d) => Value::Double(d),
        CqlValue::Float(f) => Value::Float(f),
        CqlValue::Timestamp(t) => Value::TimestampMillis(t.0),
        // Days with the epoch at 2^31, as CQL counts them: every one fits an i32 from the epoch.
        CqlValue::Date(d) => Value::Date((i64::from(d.0) - (1_i64 << 31)) as i32),
        CqlValue::Decimal(d) => {
            let (unscaled, scale) = d.as_signed_be_bytes_slice_and_exponent();
            Value::Decimal(unscaled.to_vec().into(), scale)
        }
        CqlValue::Counter(c) => Value::Long(c.0),
        CqlValue::Uuid(u) => Value::Uuid(u.to_string().into()),
        CqlValue::Timeuuid(u) => Value::Uuid(u.to_string().into()),
        CqlValue::Inet(a) => Value::Str(a.to_string().into()),
        CqlValue::Blob(b) => Value::Bytes(b.into()),
        CqlValue::List(l) | CqlValue::Set(l) => Value::Array(l.into_iter().map(from_cql).collect()),
        CqlValue::Map(m) => Value::Map(
            m.into_iter()
                .map(|(k, v)| (text(&from_cql(k)).unwrap_or_default().into(), from_cql(v)))
                .collect(),
        ),
        _ => Value::Null,
    }
}

impl Lookup {
    /// One SELECT by key: the first row's selected columns, or None.
    async fn select(
        &self,
        key: Vec<CqlValue>,
    ) -> Result<Option<Vec<Option<CqlValue>>>, WriteError> {
        let (session, stmt) = (self.session.clone(), self.stmt.clone());
        InTokio::new(self.handle.clone(), async move {
            let res = session
                .execute_unpaged(&stmt, key)
                .await
                .map_err(WriteError::from_execution)?;
            let systemic = |e: &dyn std::fmt::Display| WriteError::Db {
                scope: Scope::Systemic,
                class: "schema",
                message: format!("lookup result: {e}"),
            };
            let rows = res.into_rows_result().map_err(|e| systemic(&e))?;
            let first = rows
                .maybe_first_row::<scylla::value::Row>()
                .map_err(|e| systemic(&e))?;
            Ok(first.map(|r| r.columns))
        })
        .await
    }

    /// The looked-up values for the record slots of `outputs`, retrying transient errors.
    async fn query(&self, key: Vec<CqlValue>) -> Result<Option<Vec<Value>>, StepError> {
        let found = retry(
            &RetryPolicy::UNTIL_STOPPED,
            &self.shutdown,
            || self.select(key.clone()),
            |e, attempt, wait| events::write_retried(&self.metrics, e.class(), attempt, wait, e),
        )
        .await
        .map_err(|e| StepError::after_retry(&self.name, e, WriteError::scope))?;
        Ok(found.map(|mut cols| {
            self.outputs
                .iter()
                .map(|(i, _)| {
                    cols.get_mut(*i)
                        .and_then(Option::take)
                        .map(from_cql)
                        .unwrap_or(Value::Null)
                })
                .collect()
        }))
    }
}

impl Processor for Lookup {
    fn name(&self) -> &str {
        &self.name
    }
    fn process<'a>(
        &'a self,
        rec: &'a mut Record,
    ) -> LocalBoxFuture<'a, Result<StepOutcome, StepError>> {
        Box::pin(async move {
            let mut key = Vec::with_capacity(self.keys.len());
            for (slot, ty) in &self.keys {
                let v = rec.values.get(*slot).unwrap_or(&Value::Null);
                match key_value(v, ty) {
                    Ok(k) => key.push(k),
                    Err(reason) => {
                        return Err(StepError::record(
                            "lookup_key",
                            format!("step {}: {reason} (key column type {ty})", self.name),
                        ))
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
                    let row = self.query(key).await?;
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
                    Ok(StepOutcome::Passed)
                }
                None => match self.on_miss {
                    MissPolicy::Drop => Ok(StepOutcome::Dropped),
                    // The key is a value of the record: the message names the step only.
                    MissPolicy::DeadLetter => Err(StepError::record(
                        "lookup_miss",
                        format!("step {}: no row for the record's key", self.name),
                    )),
                    MissPolicy::Default => {
                        for (slot, v) in &self.defaults {
                            if let Some(cell) = rec.values.get_mut(*slot) {
                                *cell = v.clone();
                            }
                        }
                        Ok(StepOutcome::Missed)
                    }
                },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scylla::cluster::metadata::{CollectionType, ColumnType, NativeType};

    // Fails on the old code: a date, decimal or counter column reached the record as the driver's
    // debug text (`Date(CqlDate(..))`, written as is into a text column), and nothing refused a
    // column no field holds exactly.
    #[test]
    fn selected_values_are_read_exactly_and_unreadable_columns_are_refused() {
        use scylla::value::{Counter, CqlDate, CqlDecimal};
        // 2^31 is CQL's epoch day.
        assert_eq!(
            from_cql(CqlValue::Date(CqlDate((1 << 31) + 20_000))),
            Value::Date(20_000)
        );
        assert_eq!(
            from_cql(CqlValue::Date(CqlDate((1 << 31) - 1))),
            Value::Date(-1)
        );
        assert_eq!(from_cql(CqlValue::Date(CqlDate(0))), Value::Date(i32::MIN));
        let d = CqlDecimal::from_signed_be_bytes_slice_and_exponent(&[0x04, 0xd2], 2);
        assert_eq!(
            from_cql(CqlValue::Decimal(d)),
            Value::Decimal(vec![0x04, 0xd2].into(), 2),
            "12.34"
        );
        assert_eq!(from_cql(CqlValue::Counter(Counter(7))), Value::Long(7));
        let native = |n| ColumnType::Native(n);
        let coll = |typ| ColumnType::Collection { frozen: false, typ };
        for ok in [
            native(NativeType::Date),
            native(NativeType::Decimal),
            native(NativeType::Counter),
            native(NativeType::Text),
            coll(CollectionType::Map(
                Box::new(native(NativeType::Text)),
                Box::new(native(NativeType::Decimal)),
            )),
        ] {
            assert!(readable(&ok), "{ok:?}");
        }
        for refused in [
            native(NativeType::Time),
            native(NativeType::Varint),
            native(NativeType::Duration),
            coll(CollectionType::Map(
                Box::new(native(NativeType::Int)),
                Box::new(native(NativeType::Text)),
            )),
            coll(CollectionType::List(Box::new(native(NativeType::Time)))),
        ] {
            assert!(!readable(&refused), "{refused:?}");
        }
    }

    // Fails on the old code, which bound an int as a CQL int and a string as text whatever the
    // key column's type (the driver refused both for a bigint, uuid or inet key).
    #[test]
    fn a_key_is_converted_to_its_markers_type_and_a_bad_one_names_no_value() {
        let uuid = "123e4567-e89b-12d3-a456-426614174000";
        let ok = |v: Value, ty: CqlType| key_value(&v, &ty).expect("converts");
        assert_eq!(ok(Value::Int(5), CqlType::BigInt), CqlValue::BigInt(5));
        assert_eq!(ok(Value::Long(5), CqlType::Int), CqlValue::Int(5));
        assert!(
            matches!(ok(Value::Str(uuid.into()), CqlType::Uuid), CqlValue::Uuid(u) if u.to_string() == uuid)
        );
        assert!(
            matches!(ok(Value::Str("10.0.0.1".into()), CqlType::Inet), CqlValue::Inet(a) if a.to_string() == "10.0.0.1")
        );
        assert_eq!(
            ok(Value::Str("a".into()), CqlType::Ascii),
            CqlValue::Ascii("a".into())
        );
        assert_eq!(
            ok(Value::Str("a".into()), CqlType::Text),
            CqlValue::Text("a".into())
        );
        for (v, ty) in [
            (Value::Long(1 << 40), CqlType::Int),
            (Value::Str("not-an-address-9".into()), CqlType::Inet),
            (Value::Null, CqlType::Text),
            (Value::Bool(true), CqlType::Uuid),
        ] {
            let e = key_value(&v, &ty).expect_err("does not fit");
            assert!(
                !e.contains("1099511627776") && !e.contains("not-an-address-9"),
                "{e}"
            );
        }
    }

    #[test]
    fn marker_types_are_read_from_the_driver_and_what_is_not_written_is_other() {
        let native = |n| ColumnType::Native(n);
        assert_eq!(
            CqlType::of_column(&native(NativeType::BigInt)),
            CqlType::BigInt
        );
        assert_eq!(
            CqlType::of_column(&native(NativeType::Timeuuid)),
            CqlType::TimeUuid
        );
        let list = ColumnType::Collection {
            frozen: true,
            typ: CollectionType::List(Box::new(native(NativeType::Text))),
        };
        assert_eq!(
            CqlType::of_column(&list),
            CqlType::List(Box::new(CqlType::Text))
        );
        assert!(matches!(
            CqlType::of_column(&native(NativeType::Counter)),
            CqlType::Other(_)
        ));
        assert!(matches!(
            CqlType::of_column(&ColumnType::Tuple(vec![native(NativeType::Int)])),
            CqlType::Other(_)
        ));
    }
}
