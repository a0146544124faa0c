//! Field → column mapping: CQL types as the live table declares them, the start-up compatibility
//! check of Avro kinds against them, and the per-message conversion of decoded values.
//!
//! Guarantee: a mapping that passed [`check`] converts every value of the checked writer schema; a
//! value of another writer schema that does not fit is a [`SinkError::Mapping`] (dead-lettered),
//! never a panic. Conversions are exact: no silent truncation (a long that does not fit an int fails).

use std::net::IpAddr;

use scylla::value::{CqlDate, CqlTime, CqlTimestamp, CqlValue};

use super::SinkError;
use crate::codec::{Kind, Value};

/// A CQL column type, parsed from `system_schema.columns.type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CqlType {
    Ascii,
    Text,
    Int,
    BigInt,
    SmallInt,
    TinyInt,
    Float,
    Double,
    Boolean,
    Blob,
    Timestamp,
    Date,
    Time,
    Uuid,
    TimeUuid,
    Inet,
    List(Box<CqlType>),
    Set(Box<CqlType>),
    Map(Box<CqlType>, Box<CqlType>),
    /// Anything shardline does not write (counter, UDTs, tuples, vectors...).
    Other(String),
}

impl std::fmt::Display for CqlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CqlType::List(t) => write!(f, "list<{t}>"),
            CqlType::Set(t) => write!(f, "set<{t}>"),
            CqlType::Map(k, v) => write!(f, "map<{k}, {v}>"),
            CqlType::Other(s) => f.write_str(s),
            other => f.write_str(&format!("{other:?}").to_ascii_lowercase()),
        }
    }
}

impl CqlType {
    /// Parses the schema table's type text, e.g. `frozen<list<text>>`, `map<text, int>`.
    pub fn parse(s: &str) -> CqlType {
        let s = s.trim();
        if let Some(inner) = generic(s, "frozen") {
            return CqlType::parse(inner);
        }
        if let Some(inner) = generic(s, "list") {
            return CqlType::List(Box::new(CqlType::parse(inner)));
        }
        if let Some(inner) = generic(s, "set") {
            return CqlType::Set(Box::new(CqlType::parse(inner)));
        }
        if let Some(inner) = generic(s, "map") {
            if let Some((k, v)) = split_top_level_comma(inner) {
                return CqlType::Map(Box::new(CqlType::parse(k)), Box::new(CqlType::parse(v)));
            }
        }
        match s {
            "ascii" => CqlType::Ascii,
            "text" | "varchar" => CqlType::Text,
            "int" => CqlType::Int,
            "bigint" => CqlType::BigInt,
            "smallint" => CqlType::SmallInt,
            "tinyint" => CqlType::TinyInt,
            "float" => CqlType::Float,
            "double" => CqlType::Double,
            "boolean" => CqlType::Boolean,
            "blob" => CqlType::Blob,
            "timestamp" => CqlType::Timestamp,
            "date" => CqlType::Date,
            "time" => CqlType::Time,
            "uuid" => CqlType::Uuid,
            "timeuuid" => CqlType::TimeUuid,
            "inet" => CqlType::Inet,
            other => CqlType::Other(other.to_string()),
        }
    }
}

fn generic<'a>(s: &'a str, name: &str) -> Option<&'a str> {
    s.strip_prefix(name)?
        .trim_start()
        .strip_prefix('<')?
        .strip_suffix('>')
}

fn split_top_level_comma(s: &str) -> Option<(&str, &str)> {
    let mut depth = 0i32;
    for (i, c) in s.char_indices() {
        match c {
            '<' => depth += 1,
            '>' => depth -= 1,
            ',' if depth == 0 => return Some((s.get(..i)?, s.get(i + 1..)?)),
            _ => {}
        }
    }
    None
}

/// Whether every value of Avro `kind` converts to CQL `ty` (null converts to anything: it unsets).
pub fn compatible(kind: &Kind, ty: &CqlType) -> bool {
    use CqlType as C;
    match (kind, ty) {
        (Kind::Nullable(k), t) => compatible(k, t),
        (Kind::Null, _) => true,
        (Kind::Str | Kind::Enum, C::Text | C::Ascii | C::Inet | C::Uuid | C::TimeUuid) => true,
        (Kind::Uuid, C::Uuid | C::TimeUuid | C::Text) => true,
        (Kind::Bool, C::Boolean) => true,
        // Narrowing is checked per value: it fails on overflow, never truncates.
        (Kind::Int, C::Int | C::BigInt | C::SmallInt | C::TinyInt | C::Double) => true,
        (Kind::Long, C::BigInt | C::Int | C::SmallInt | C::TinyInt | C::Timestamp) => true,
        (Kind::Float, C::Float | C::Double) => true,
        (Kind::Double, C::Double) => true,
        (Kind::Bytes | Kind::Fixed, C::Blob) => true,
        (Kind::TimestampMillis | Kind::TimestampMicros, C::Timestamp | C::BigInt) => true,
        (Kind::Date, C::Date | C::Int) => true,
        (Kind::TimeMillis | Kind::TimeMicros, C::Time | C::BigInt) => true,
        (Kind::Array(k), C::List(t) | C::Set(t)) => {
            compatible(k, t) && !matches!(**k, Kind::Nullable(_))
        }
        (Kind::Map(v), C::Map(k, t)) => matches!(**k, C::Text | C::Ascii) && compatible(v, t),
        _ => false,
    }
}

fn narrow<T: TryFrom<i64>>(v: i64) -> Result<T, &'static str> {
    T::try_from(v).map_err(|_| "integer out of range for the column type")
}

/// Converts one decoded value for a column of type `ty`. `Null` becomes `None` (a CQL null).
pub fn convert(v: Value, ty: &CqlType) -> Result<Option<CqlValue>, &'static str> {
    use CqlType as C;
    Ok(Some(match (v, ty) {
        (Value::Null, _) => return Ok(None),
        (Value::Str(s) | Value::Enum(s) | Value::Uuid(s), C::Text) => CqlValue::Text(s),
        (Value::Str(s) | Value::Enum(s), C::Ascii) if s.is_ascii() => CqlValue::Ascii(s),
        (Value::Str(s) | Value::Uuid(s), C::Uuid) => {
            CqlValue::Uuid(s.parse().map_err(|_| "string is not a UUID")?)
        }
        (Value::Str(s) | Value::Uuid(s), C::TimeUuid) => {
            let u: uuid::Uuid = s.parse().map_err(|_| "string is not a UUID")?;
            CqlValue::Timeuuid(u.into())
        }
        (Value::Str(s), C::Inet) => CqlValue::Inet(
            s.parse::<IpAddr>()
                .map_err(|_| "string is not an IP address")?,
        ),
        (Value::Bool(b), C::Boolean) => CqlValue::Boolean(b),
        (Value::Int(i), C::Int) => CqlValue::Int(i),
        (Value::Int(i), C::BigInt) => CqlValue::BigInt(i64::from(i)),
        (Value::Int(i), C::SmallInt) => CqlValue::SmallInt(narrow(i64::from(i))?),
        (Value::Int(i), C::TinyInt) => CqlValue::TinyInt(narrow(i64::from(i))?),
        (Value::Int(i), C::Double) => CqlValue::Double(f64::from(i)),
        (Value::Long(l), C::BigInt) => CqlValue::BigInt(l),
        (Value::Long(l), C::Int) => CqlValue::Int(narrow(l)?),
        (Value::Long(l), C::SmallInt) => CqlValue::SmallInt(narrow(l)?),
        (Value::Long(l), C::TinyInt) => CqlValue::TinyInt(narrow(l)?),
        (Value::Long(l), C::Timestamp) => CqlValue::Timestamp(CqlTimestamp(l)),
        (Value::Float(f), C::Float) => CqlValue::Float(f),
        (Value::Float(f), C::Double) => CqlValue::Double(f64::from(f)),
        (Value::Double(d), C::Double) => CqlValue::Double(d),
        (Value::Bytes(b), C::Blob) => CqlValue::Blob(b),
        (Value::TimestampMillis(ms), C::Timestamp) => CqlValue::Timestamp(CqlTimestamp(ms)),
        (Value::TimestampMillis(ms), C::BigInt) => CqlValue::BigInt(ms),
        (Value::TimestampMicros(us), C::Timestamp) => {
            CqlValue::Timestamp(CqlTimestamp(us.div_euclid(1000)))
        }
        (Value::TimestampMicros(us), C::BigInt) => CqlValue::BigInt(us),
        // CQL dates count days from 2^31 = 1970-01-01.
        (Value::Date(d), C::Date) => CqlValue::Date(CqlDate((i64::from(d) + (1i64 << 31)) as u32)),
        (Value::Date(d), C::Int) => CqlValue::Int(d),
        (Value::TimeMillis(ms), C::Time) => CqlValue::Time(CqlTime(i64::from(ms) * 1_000_000)),
        (Value::TimeMicros(us), C::Time) => CqlValue::Time(CqlTime(us.saturating_mul(1000))),
        (Value::TimeMillis(ms), C::BigInt) => CqlValue::BigInt(i64::from(ms)),
        (Value::TimeMicros(us), C::BigInt) => CqlValue::BigInt(us),
        (Value::Array(items), C::List(t)) => CqlValue::List(convert_items(items, t)?),
        (Value::Array(items), C::Set(t)) => CqlValue::Set(convert_items(items, t)?),
        (Value::Map(entries), C::Map(k, t)) => {
            let mut out = Vec::with_capacity(entries.len());
            for (key, val) in entries {
                let k = convert(Value::Str(key), k)?.ok_or("null map key")?;
                let v = convert(val, t)?.ok_or("null map value")?;
                out.push((k, v));
            }
            CqlValue::Map(out)
        }
        _ => return Err("value type does not convert to the column type"),
    }))
}

fn convert_items(items: Vec<Value>, t: &CqlType) -> Result<Vec<CqlValue>, &'static str> {
    let mut out = Vec::with_capacity(items.len());
    for i in items {
        out.push(convert(i, t)?.ok_or("null inside a collection")?);
    }
    Ok(out)
}

/// A column's place in the statement and in the decoded row.
#[derive(Debug, Clone)]
pub struct ColumnMap {
    pub column: String,
    pub field: String,
    pub slot: usize,
    pub ty: CqlType,
}

/// Checks each mapped field's Avro kind against its live column. Errors name field, column and types.
pub fn check(columns: &[ColumnMap], kinds: &[Kind]) -> Result<(), SinkError> {
    for c in columns {
        let kind = kinds
            .get(c.slot)
            .ok_or_else(|| SinkError::Schema(format!("field '{}' has no decoded slot", c.field)))?;
        if !compatible(kind, &c.ty) {
            return Err(SinkError::Schema(format!(
                "field '{}' of Avro type {} cannot be written to column '{}' of CQL type {}",
                c.field, kind, c.column, c.ty
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nested_types() {
        assert_eq!(
            CqlType::parse("frozen<map<text, list<int>>>"),
            CqlType::Map(
                Box::new(CqlType::Text),
                Box::new(CqlType::List(Box::new(CqlType::Int)))
            )
        );
        assert_eq!(CqlType::parse("varchar"), CqlType::Text);
        assert_eq!(CqlType::parse("counter"), CqlType::Other("counter".into()));
        assert_eq!(CqlType::parse("set<inet>").to_string(), "set<inet>");
    }

    #[test]
    fn conversions_are_exact() {
        assert_eq!(
            convert(Value::Long(7), &CqlType::Int),
            Ok(Some(CqlValue::Int(7)))
        );
        assert!(convert(Value::Long(1 << 40), &CqlType::Int).is_err());
        assert_eq!(
            convert(Value::TimestampMillis(1500), &CqlType::Timestamp),
            Ok(Some(CqlValue::Timestamp(CqlTimestamp(1500))))
        );
        assert_eq!(convert(Value::Null, &CqlType::Int), Ok(None));
        assert_eq!(
            convert(Value::Str("10.0.0.1".into()), &CqlType::Inet),
            Ok(Some(CqlValue::Inet(
                "10.0.0.1".parse().expect("literal ip")
            )))
        );
        assert!(convert(Value::Str("nope".into()), &CqlType::Inet).is_err());
        assert_eq!(
            convert(
                Value::Array(vec![Value::Str("a".into())]),
                &CqlType::List(Box::new(CqlType::Text))
            ),
            Ok(Some(CqlValue::List(vec![CqlValue::Text("a".into())])))
        );
        assert_eq!(
            convert(Value::Date(0), &CqlType::Date),
            Ok(Some(CqlValue::Date(CqlDate(1 << 31))))
        );
    }

    #[test]
    fn check_names_field_column_and_both_types() {
        let cols = vec![ColumnMap {
            column: "duration".into(),
            field: "url".into(),
            slot: 0,
            ty: CqlType::Int,
        }];
        let err = check(&cols, &[Kind::Str]).expect_err("string into int");
        let msg = err.to_string();
        for part in ["'url'", "'duration'", "string", "int"] {
            assert!(msg.contains(part), "{msg} lacks {part}");
        }
        assert!(check(&cols, &[Kind::Nullable(Box::new(Kind::Int))]).is_ok());
    }
}
