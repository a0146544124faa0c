//! The reader side of schema evolution: what a record gets for a mapped field its writer schema
//! lacks (the default the subject's latest schema gives the field, else null), and the check each
//! new writer schema must pass against the tables before its records are decoded.
//!
//! Guarantee: a writer schema that lacks a mapped field decodes, the field holding its reader
//! default (or null: unset or a CQL null per `null_values`), instead of dead-lettering every record
//! of the schema; a writer schema whose field changed to a type its column cannot take is refused
//! once, when its id is first seen, with [`super::CodecError::Incompatible`] (class
//! `schema_incompatible`) for each of its records. A field the writer has under a name the reader
//! lists among the field's aliases is read from it (a renamed field), as the Avro spec resolves.
//! Unlike the spec, an enum symbol the reader lacks is kept as the writer wrote it, not replaced by
//! the reader enum's default or refused: a sink writes symbols as text, and a symbol added by a
//! newer writer is data, not an error. Precondition: the reader schema is the one the start-up
//! check accepted (it has every mapped field).

use std::sync::Arc;

use apache_avro::Schema;

use super::{Kind, Text, Value};

/// A field's reader default, in a form that crosses from the fetch thread (no payload ranges).
#[derive(Debug, Clone, PartialEq)]
pub enum Fill {
    Null,
    Bool(bool),
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    Str(Arc<str>),
    Enum(Arc<str>),
    Date(i32),
    TimeMillis(i32),
    TimeMicros(i64),
    TimestampMillis(i64),
    TimestampMicros(i64),
    TimestampNanos(i64),
}

impl Fill {
    /// The value a record gets.
    pub fn value(&self) -> Value {
        match self {
            Fill::Null => Value::Null,
            Fill::Bool(b) => Value::Bool(*b),
            Fill::Int(i) => Value::Int(*i),
            Fill::Long(l) => Value::Long(*l),
            Fill::Float(f) => Value::Float(*f),
            Fill::Double(d) => Value::Double(*d),
            Fill::Str(s) => Value::Str(Text::symbol(s)),
            Fill::Enum(s) => Value::Enum(Text::symbol(s)),
            Fill::Date(d) => Value::Date(*d),
            Fill::TimeMillis(t) => Value::TimeMillis(*t),
            Fill::TimeMicros(t) => Value::TimeMicros(*t),
            Fill::TimestampMillis(t) => Value::TimestampMillis(*t),
            Fill::TimestampMicros(t) => Value::TimestampMicros(*t),
            Fill::TimestampNanos(t) => Value::TimestampNanos(*t),
        }
    }

    /// The kind of [`Fill::value`], for the per-schema check.
    pub fn kind(&self) -> Kind {
        match self {
            Fill::Null => Kind::Null,
            Fill::Bool(_) => Kind::Bool,
            Fill::Int(_) => Kind::Int,
            Fill::Long(_) => Kind::Long,
            Fill::Float(_) => Kind::Float,
            Fill::Double(_) => Kind::Double,
            Fill::Str(_) => Kind::Str,
            Fill::Enum(_) => Kind::Enum,
            Fill::Date(_) => Kind::Date,
            Fill::TimeMillis(_) => Kind::TimeMillis,
            Fill::TimeMicros(_) => Kind::TimeMicros,
            Fill::TimestampMillis(_) => Kind::TimestampMillis,
            Fill::TimestampMicros(_) => Kind::TimestampMicros,
            Fill::TimestampNanos(_) => Kind::TimestampNanos,
        }
    }

    /// The fill of a default given in JSON for a field of `schema` (a union's default is of its
    /// first branch). `None` where the default is absent or of a kind not filled in (bytes, fixed,
    /// decimal, arrays, maps, records): the field is then null.
    /// A named type used a second time is a reference: `named` gives its definition.
    pub fn of(
        schema: &Schema,
        default: &serde_json::Value,
        named: &dyn Fn(&apache_avro::schema::Name) -> Option<Schema>,
    ) -> Option<Fill> {
        use serde_json::Value as J;
        let int = || default.as_i64().and_then(|i| i32::try_from(i).ok());
        Some(match schema {
            Schema::Union(u) => return Fill::of(u.variants().first()?, default, named),
            // A definition is never itself a reference, so this recurses once.
            Schema::Ref { name } => return Fill::of(&named(name)?, default, &|_| None),
            Schema::Null if default.is_null() => Fill::Null,
            Schema::Boolean => Fill::Bool(default.as_bool()?),
            Schema::Int => Fill::Int(int()?),
            Schema::Date => Fill::Date(int()?),
            Schema::TimeMillis => Fill::TimeMillis(int()?),
            Schema::Long => Fill::Long(default.as_i64()?),
            Schema::TimeMicros => Fill::TimeMicros(default.as_i64()?),
            Schema::TimestampMillis | Schema::LocalTimestampMillis => {
                Fill::TimestampMillis(default.as_i64()?)
            }
            Schema::TimestampMicros | Schema::LocalTimestampMicros => {
                Fill::TimestampMicros(default.as_i64()?)
            }
            Schema::TimestampNanos | Schema::LocalTimestampNanos => {
                Fill::TimestampNanos(default.as_i64()?)
            }
            Schema::Float => Fill::Float(default.as_f64()? as f32),
            Schema::Double => Fill::Double(default.as_f64()?),
            Schema::String | Schema::Uuid(_) => match default {
                J::String(s) => Fill::Str(Arc::from(s.as_str())),
                _ => return None,
            },
            Schema::Enum(e) => match default {
                J::String(s) if e.symbols.contains(s) => Fill::Enum(Arc::from(s.as_str())),
                _ => return None,
            },
            _ => return None,
        })
    }
}

/// The reader defaults of `fields` (top-level names; a nested path has none) from the reader
/// schema's JSON: one entry per field, `None` where it has no usable default.
pub fn defaults(reader_json: &str, fields: &[String]) -> Vec<Option<Fill>> {
    let Ok(schema) = Schema::parse_str(reader_json) else {
        return vec![None; fields.len()];
    };
    let Schema::Record(r) = &schema else {
        return vec![None; fields.len()];
    };
    let resolved = apache_avro::schema::ResolvedSchema::try_from(&schema).ok();
    let named = |name: &apache_avro::schema::Name| {
        let names = resolved.as_ref()?.get_names();
        names.get(name).map(|s| (*s).clone())
    };
    fields
        .iter()
        .map(|f| {
            let field = r.fields.iter().find(|x| &x.name == f)?;
            Fill::of(&field.schema, field.default.as_ref()?, &named)
        })
        .collect()
}

/// The reader schema's aliases of each field's top-level name (`geo` for `geo.lat`): a writer
/// schema that lacks the name is read from its field of an alias (a renamed field), as the Avro
/// spec resolves. One entry per field, empty where it has none or the schema does not parse.
pub fn aliases(reader_json: &str, fields: &[String]) -> Vec<Vec<String>> {
    let Ok(Schema::Record(r)) = Schema::parse_str(reader_json) else {
        return vec![Vec::new(); fields.len()];
    };
    fields
        .iter()
        .map(|f| {
            let head = f.split('.').next().unwrap_or_default();
            r.fields
                .iter()
                .find(|x| x.name == head)
                .map(|x| x.aliases.clone())
                .unwrap_or_default()
        })
        .collect()
}

/// The check a new writer schema's plan must pass, given the kind of each slot and which slots its
/// writer lacks without a default (null in every record): `Err` says why the schema is refused.
/// Shared with the fetch thread, where plans are compiled.
pub type SchemaCheck = Arc<dyn Fn(&[Kind], &[bool]) -> Result<(), String> + Send + Sync>;

/// What a decoder resolves writer schemas against, beyond the field names.
#[derive(Clone, Default)]
pub struct Reader {
    /// Per decoded field, its reader default; `None`: no reader, a writer schema must have every
    /// field (as the start-up check requires of the reader itself).
    pub defaults: Option<Vec<Option<Fill>>>,
    /// Per decoded field, the reader schema's aliases of its top-level name (see [`aliases`]);
    /// empty: none.
    pub aliases: Vec<Vec<String>>,
    /// The tables' check of each new writer schema; none: every schema that has the fields passes.
    pub check: Option<SchemaCheck>,
}

#[cfg(test)]
mod tests {
    use super::*;

    // Fails on the old code: a second use of a named enum is a reference, which had no default,
    // and a renamed field (the reader's alias of the writer's name) read null.
    #[test]
    fn a_reused_named_type_keeps_its_default_and_aliases_are_read_per_field() {
        let reader = r#"{"type":"record","name":"r","fields":[
            {"name":"k1","type":{"type":"enum","name":"K","symbols":["A","B"]},"default":"B"},
            {"name":"k2","type":"K","default":"A"},
            {"name":"k3","type":["K","null"],"default":"B"},
            {"name":"b","type":"long","aliases":["a","old_a"],"default":0},
            {"name":"geo","type":{"type":"record","name":"G","fields":[{"name":"lat","type":"double"}]},"aliases":["where"]}
        ]}"#;
        let fields: Vec<String> = ["k1", "k2", "k3", "b", "geo.lat", "none"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            defaults(reader, &fields)[..3],
            [
                Some(Fill::Enum(Arc::from("B"))),
                Some(Fill::Enum(Arc::from("A"))),
                Some(Fill::Enum(Arc::from("B"))),
            ]
        );
        let none: Vec<String> = Vec::new();
        assert_eq!(
            aliases(reader, &fields),
            vec![
                none.clone(),
                none.clone(),
                none.clone(),
                vec!["a".to_string(), "old_a".to_string()],
                vec!["where".to_string()],
                none,
            ]
        );
    }

    #[test]
    fn defaults_come_from_the_reader_schema_and_unions_take_their_first_branch() {
        let reader = r#"{"type":"record","name":"r","fields":[
            {"name":"a","type":"string","default":"none"},
            {"name":"b","type":["null","string"],"default":null},
            {"name":"c","type":"int","default":7},
            {"name":"d","type":{"type":"long","logicalType":"timestamp-millis"},"default":1500},
            {"name":"e","type":{"type":"enum","name":"E","symbols":["X","Y"]},"default":"Y"},
            {"name":"f","type":"bytes","default":"\u00ff"},
            {"name":"g","type":"double"}
        ]}"#;
        let fields: Vec<String> = ["a", "b", "c", "d", "e", "f", "g", "geo.lat", "absent"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            defaults(reader, &fields),
            vec![
                Some(Fill::Str(Arc::from("none"))),
                Some(Fill::Null),
                Some(Fill::Int(7)),
                Some(Fill::TimestampMillis(1500)),
                Some(Fill::Enum(Arc::from("Y"))),
                None,
                None,
                None,
                None,
            ]
        );
        assert_eq!(
            Fill::Str(Arc::from("none")).value(),
            Value::Str("none".into())
        );
        assert_eq!(Fill::Int(7).kind(), Kind::Int);
        assert_eq!(defaults("not json", &fields), vec![None; fields.len()]);
    }
}
