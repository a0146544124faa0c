//! Kafka metadata as record fields: `kafka.topic`, `kafka.partition`, `kafka.offset`,
//! `kafka.timestamp`, `kafka.key` and `kafka.header.<name>` can be mapped to columns like any
//! decoded field, and are type-checked at start-up with the kinds given here.
//!
//! Guarantee: a metadata slot holds exactly what the Kafka record carried: the key and header
//! values are ranges of one copy of their bytes, text only when it is UTF-8 (otherwise the record
//! fails with [`MetaError::NotUtf8`], naming the field, never the value); an absent key, header or
//! timestamp is null. Avro field names hold no dot, so no decoded field can be taken for one of
//! these. Precondition: the record's slots put decoded fields first and these after them (see
//! [`crate::config::Config::needed_fields`]).

use std::rc::Rc;

use thiserror::Error;

use crate::codec::{Blob, Kind, Text, Value};
use crate::config::KeyFormat;

/// What every metadata field name starts with.
pub const PREFIX: &str = "kafka.";

/// Whether `field` names Kafka metadata rather than a field of the Avro value.
pub fn is_meta(field: &str) -> bool {
    field.starts_with(PREFIX)
}

/// One metadata field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Meta {
    Topic,
    Partition,
    Offset,
    /// The record's timestamp (create or log-append time), in milliseconds.
    Timestamp,
    /// The whole key, read as `kafka.key_format` says (`string` or `bytes`).
    Key,
    /// A field of an Avro key (`kafka.key_format = "avro"`): `kafka.key.<field>`, paths too.
    KeyField(String),
    /// The value of the last header of this name.
    Header(String),
}

/// Why a metadata field cannot be read (start-up) or filled (per record). No value of a record.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MetaError {
    /// A `kafka.` name that is none of the metadata fields: a configuration error.
    #[error(
        "'{0}' is not a Kafka metadata field: use kafka.topic, kafka.partition, kafka.offset, \
         kafka.timestamp, kafka.key or kafka.header.<name>"
    )]
    Unknown(String),
    /// The key or a header is not UTF-8 where text is asked for: the record's error.
    #[error("{0} is not UTF-8 ({1})")]
    NotUtf8(&'static str, &'static str),
    /// `kafka.key.<field>` without an Avro key format, or `kafka.key` whole with it.
    #[error("{0}")]
    KeyFormat(String),
}

impl Meta {
    /// The metadata field `field` names; `Ok(None)` for a field of the Avro value.
    pub fn parse(field: &str) -> Result<Option<Meta>, MetaError> {
        let Some(name) = field.strip_prefix(PREFIX) else {
            return Ok(None);
        };
        Ok(Some(match name {
            "topic" => Meta::Topic,
            "partition" => Meta::Partition,
            "offset" => Meta::Offset,
            "timestamp" => Meta::Timestamp,
            "key" => Meta::Key,
            _ => match (name.strip_prefix("header."), name.strip_prefix("key.")) {
                (Some(h), _) if !h.is_empty() => Meta::Header(h.to_string()),
                (_, Some(k)) if !k.is_empty() => Meta::KeyField(k.to_string()),
                _ => return Err(MetaError::Unknown(field.to_string())),
            },
        }))
    }

    /// Whether this field can be read with key format `key`: only an Avro key has fields.
    pub fn fits(&self, key: KeyFormat, field: &str) -> Result<(), MetaError> {
        match (self, key) {
            (Meta::KeyField(_), KeyFormat::String | KeyFormat::Bytes) => {
                Err(MetaError::KeyFormat(format!(
                    "'{field}' names a field of the key, which needs kafka.key_format = \"avro\""
                )))
            }
            _ => Ok(()),
        }
    }

    /// The kind of the values this field holds, for the start-up type check. `key_kinds` are the
    /// kinds of the Avro key's fields, in [`key_fields`] order.
    pub fn kind(&self, key: KeyFormat, key_index: Option<usize>, key_kinds: &[Kind]) -> Kind {
        let nullable = |k: Kind| Kind::Nullable(Box::new(k));
        match self {
            Meta::Topic => Kind::Str,
            Meta::Partition => Kind::Int,
            Meta::Offset => Kind::Long,
            Meta::Timestamp => nullable(Kind::TimestampMillis),
            Meta::Key => match key {
                KeyFormat::String => nullable(Kind::Str),
                KeyFormat::Bytes => nullable(Kind::Bytes),
                // The decoded key as a whole: its schema's kind (a record for a UDT column).
                KeyFormat::Avro => match key_kinds.first() {
                    Some(k @ (Kind::Null | Kind::Nullable(_))) => k.clone(),
                    Some(k) => nullable(k.clone()),
                    None => Kind::Opaque,
                },
            },
            // A record without a key has none of its fields: null.
            Meta::KeyField(_) => match key_index.and_then(|i| key_kinds.get(i)) {
                Some(k @ (Kind::Null | Kind::Nullable(_))) => k.clone(),
                Some(k) => nullable(k.clone()),
                None => Kind::Opaque,
            },
            Meta::Header(_) => nullable(Kind::Str),
        }
    }
}

/// What a route's Avro key decoder reads: [`crate::codec::avro::WHOLE`] when `kafka.key` is mapped
/// (the key as a whole, any schema), else the key's fields `fields` map (`kafka.key.<field>`,
/// without the prefix), each once, in order of first use. Empty unless the key format is Avro.
pub fn key_fields(fields: &[String], key: KeyFormat) -> Vec<String> {
    if key != KeyFormat::Avro {
        return Vec::new();
    }
    if fields
        .iter()
        .any(|f| matches!(Meta::parse(f), Ok(Some(Meta::Key))))
    {
        return vec![crate::codec::avro::WHOLE.to_string()];
    }
    let mut out: Vec<String> = Vec::new();
    for f in fields {
        if let Ok(Some(Meta::KeyField(k))) = Meta::parse(f) {
            if !out.contains(&k) {
                out.push(k);
            }
        }
    }
    out
}

/// The kinds of `fields`' metadata fields, in their order (for the fields after the decoded ones).
/// `key_kinds`: the kinds of the Avro key's [`key_fields`] (empty without an Avro key).
pub fn kinds(
    fields: &[String],
    key: KeyFormat,
    key_kinds: &[Kind],
) -> Result<Vec<Kind>, MetaError> {
    let keys = key_fields(fields, key);
    let whole = fields
        .iter()
        .any(|f| matches!(Meta::parse(f), Ok(Some(Meta::Key))));
    if whole
        && fields
            .iter()
            .any(|f| matches!(Meta::parse(f), Ok(Some(Meta::KeyField(_)))))
    {
        return Err(MetaError::KeyFormat(
            "map an Avro key whole (kafka.key) or by its fields (kafka.key.<field>), not both"
                .into(),
        ));
    }
    let mut out = Vec::new();
    for f in fields {
        if let Some(m) = Meta::parse(f)? {
            m.fits(key, f)?;
            let index = match &m {
                Meta::KeyField(k) => keys.iter().position(|x| x == k),
                _ => None,
            };
            out.push(m.kind(key, index, key_kinds));
        }
    }
    Ok(out)
}

/// Where one record's metadata comes from.
pub struct Source<'a> {
    /// Index into the configured topics.
    pub topic: usize,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<&'a Rc<[u8]>>,
    /// The decoded fields of an Avro key, in [`MetaSlots::key_fields`] order (empty otherwise).
    pub key_fields: &'a [Value],
    /// The value of each header [`MetaSlots::headers`] names, in that order.
    pub headers: &'a [Option<Rc<[u8]>>],
}

/// A shard's metadata slots, resolved once: which slot gets what.
#[derive(Debug, Clone, Default)]
pub struct MetaSlots {
    slots: Vec<(usize, Meta)>,
    /// The header names to capture per record, in [`Source::headers`] order.
    headers: Vec<String>,
    /// The Avro key's fields, in [`Source::key_fields`] order.
    key_fields: Vec<String>,
    /// The topic names as values (cloned per record: a reference count, no copy).
    topics: Vec<Text>,
    key: KeyFormat,
}

impl MetaSlots {
    /// The metadata slots of a record whose fields are `fields`.
    pub fn new(fields: &[String], topics: &[String], key: KeyFormat) -> Result<Self, MetaError> {
        let mut slots = Vec::new();
        let mut headers = Vec::new();
        for (i, f) in fields.iter().enumerate() {
            if let Some(m) = Meta::parse(f)? {
                m.fits(key, f)?;
                if let Meta::Header(h) = &m {
                    if !headers.contains(h) {
                        headers.push(h.clone());
                    }
                }
                slots.push((i, m));
            }
        }
        Ok(MetaSlots {
            slots,
            headers,
            key_fields: key_fields(fields, key),
            topics: topics.iter().map(|t| Text::from(t.as_str())).collect(),
            key,
        })
    }

    /// The header names a record's [`Source::headers`] must carry (empty: capture none).
    pub fn headers(&self) -> &[String] {
        &self.headers
    }

    /// The Avro key fields a record's [`Source::key_fields`] must carry (empty: none mapped).
    pub fn key_fields(&self) -> &[String] {
        &self.key_fields
    }

    /// Fills the metadata slots of `values` from `src`.
    pub fn fill(&self, values: &mut [Value], src: &Source<'_>) -> Result<(), MetaError> {
        for (slot, meta) in &self.slots {
            let v = match meta {
                Meta::Topic => self
                    .topics
                    .get(src.topic)
                    .map_or(Value::Null, |t| Value::Str(t.clone())),
                Meta::Partition => Value::Int(src.partition),
                Meta::Offset => Value::Long(src.offset),
                Meta::Timestamp => src.timestamp_ms.map_or(Value::Null, Value::TimestampMillis),
                Meta::Key => match (src.key, self.key) {
                    (None, _) => Value::Null,
                    // Decoded by the route's key decoder, as a whole (see `key_fields`).
                    (Some(_), KeyFormat::Avro) => {
                        src.key_fields.first().cloned().unwrap_or(Value::Null)
                    }
                    (Some(k), fmt) => bytes_as(k, fmt == KeyFormat::String, KEY_NOT_UTF8)?,
                },
                Meta::KeyField(k) => {
                    let i = self.key_fields.iter().position(|x| x == k);
                    i.and_then(|i| src.key_fields.get(i))
                        .cloned()
                        .unwrap_or(Value::Null)
                }
                Meta::Header(name) => {
                    let i = self.headers.iter().position(|h| h == name);
                    match i.and_then(|i| src.headers.get(i)).and_then(Option::as_ref) {
                        None => Value::Null,
                        Some(h) => bytes_as(h, true, HEADER_NOT_UTF8)?,
                    }
                }
            };
            if let Some(cell) = values.get_mut(*slot) {
                *cell = v;
            }
        }
        Ok(())
    }
}

/// What a non-UTF-8 key or header value is, and what to do about it.
const KEY_NOT_UTF8: (&str, &str) = (
    "kafka.key",
    "kafka.key_format = \"string\" reads it as text; for binary keys set \"bytes\" and map a blob column",
);
const HEADER_NOT_UTF8: (&str, &str) = ("a kafka.header value", "headers are read as text");

/// `b` as text (checked UTF-8) or bytes, sharing its buffer.
fn bytes_as(
    b: &Rc<[u8]>,
    text: bool,
    what: (&'static str, &'static str),
) -> Result<Value, MetaError> {
    if text {
        Text::in_payload(b, 0, b.len())
            .map(Value::Str)
            .ok_or(MetaError::NotUtf8(what.0, what.1))
    } else {
        Ok(Blob::in_payload(b, 0, b.len()).map_or(Value::Null, Value::Bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_metadata_field_parses_and_anything_else_under_kafka_is_refused() {
        assert_eq!(Meta::parse("url"), Ok(None));
        assert_eq!(Meta::parse("geo.lat"), Ok(None));
        assert_eq!(Meta::parse("kafka.offset"), Ok(Some(Meta::Offset)));
        assert_eq!(
            Meta::parse("kafka.header.trace-id"),
            Ok(Some(Meta::Header("trace-id".into())))
        );
        assert_eq!(
            Meta::parse("kafka.key.geo.id"),
            Ok(Some(Meta::KeyField("geo.id".into())))
        );
        for bad in ["kafka.", "kafka.keys", "kafka.header.", "kafka.key."] {
            let e = Meta::parse(bad).expect_err(bad);
            assert!(e.to_string().contains(&format!("'{bad}'")), "{e}");
        }
    }

    #[test]
    fn metadata_slots_hold_what_the_record_carried() {
        let names = fields(&[
            "url",
            "kafka.topic",
            "kafka.partition",
            "kafka.offset",
            "kafka.timestamp",
            "kafka.key",
            "kafka.header.trace",
            "kafka.header.absent",
        ]);
        let slots = MetaSlots::new(&names, &["a".into(), "nav".into()], KeyFormat::String)
            .expect("known fields");
        assert_eq!(slots.headers(), ["trace", "absent"]);
        let key: Rc<[u8]> = Rc::from(&b"user-7"[..]);
        let trace: Rc<[u8]> = Rc::from(&b"t1"[..]);
        let headers = [Some(trace), None];
        let mut values = vec![Value::Str("keep".into()); names.len()];
        let src = Source {
            topic: 1,
            partition: 3,
            offset: 42,
            timestamp_ms: Some(1_700_000_000_000),
            key: Some(&key),
            key_fields: &[],
            headers: &headers,
        };
        slots.fill(&mut values, &src).expect("fills");
        assert_eq!(
            values,
            vec![
                Value::Str("keep".into()),
                Value::Str("nav".into()),
                Value::Int(3),
                Value::Long(42),
                Value::TimestampMillis(1_700_000_000_000),
                Value::Str("user-7".into()),
                Value::Str("t1".into()),
                Value::Null,
            ]
        );
        // Bytes keys stay bytes; a key that is not UTF-8 fails only as text, naming the field.
        let raw: Rc<[u8]> = Rc::from(&[0xff, 0][..]);
        let src = Source {
            key: Some(&raw),
            timestamp_ms: None,
            ..src
        };
        let e = slots.fill(&mut values, &src).expect_err("not UTF-8");
        assert_eq!(e, MetaError::NotUtf8(KEY_NOT_UTF8.0, KEY_NOT_UTF8.1));
        let bytes = MetaSlots::new(
            &fields(&["kafka.key", "kafka.timestamp"]),
            &[],
            KeyFormat::Bytes,
        )
        .expect("known fields");
        let mut two = vec![Value::Null, Value::Int(0)];
        bytes.fill(&mut two, &src).expect("bytes need no UTF-8");
        assert_eq!(
            two,
            vec![Value::Bytes(Blob::from(&[0xff, 0][..])), Value::Null]
        );
    }

    #[test]
    fn metadata_kinds_follow_the_key_format() {
        let names = fields(&["url", "kafka.key", "kafka.partition"]);
        assert_eq!(
            kinds(&names, KeyFormat::Bytes, &[]),
            Ok(vec![Kind::Nullable(Box::new(Kind::Bytes)), Kind::Int])
        );
        assert_eq!(
            kinds(&names, KeyFormat::String, &[]),
            Ok(vec![Kind::Nullable(Box::new(Kind::Str)), Kind::Int])
        );
    }

    #[test]
    fn avro_key_fields_take_the_key_schemas_kinds_and_the_decoded_key_values() {
        let names = fields(&[
            "url",
            "kafka.key.tenant",
            "kafka.key.id",
            "kafka.key.tenant",
        ]);
        assert_eq!(key_fields(&names, KeyFormat::Avro), ["tenant", "id"]);
        assert!(key_fields(&names, KeyFormat::String).is_empty());
        assert_eq!(
            kinds(
                &names,
                KeyFormat::Avro,
                &[Kind::Str, Kind::Nullable(Box::new(Kind::Int))]
            ),
            Ok(vec![
                Kind::Nullable(Box::new(Kind::Str)),
                Kind::Nullable(Box::new(Kind::Int)),
                Kind::Nullable(Box::new(Kind::Str)),
            ])
        );
        // Fields of a key need an Avro key; an Avro key is mapped by its fields.
        let e = kinds(&names, KeyFormat::String, &[]).expect_err("not Avro");
        assert!(e.to_string().contains("kafka.key_format = \"avro\""), "{e}");
        // A primitive Avro key, mapped whole.
        let whole = fields(&["kafka.key"]);
        assert_eq!(
            key_fields(&whole, KeyFormat::Avro),
            [crate::codec::avro::WHOLE]
        );
        assert_eq!(
            kinds(&whole, KeyFormat::Avro, &[Kind::Long]),
            Ok(vec![Kind::Nullable(Box::new(Kind::Long))])
        );
        let e = kinds(
            &fields(&["kafka.key", "kafka.key.id"]),
            KeyFormat::Avro,
            &[],
        )
        .expect_err("both");
        assert!(e.to_string().contains("not both"), "{e}");
        let slots = MetaSlots::new(&names, &[], KeyFormat::Avro).expect("fields of an Avro key");
        let mut values = vec![Value::Null; 4];
        let decoded = [Value::Str("acme".into()), Value::Int(2)];
        let src = Source {
            topic: 0,
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            key: None,
            key_fields: &decoded,
            headers: &[],
        };
        slots.fill(&mut values, &src).expect("fills");
        assert_eq!(
            values,
            vec![
                Value::Null,
                Value::Str("acme".into()),
                Value::Int(2),
                Value::Str("acme".into()),
            ]
        );
    }
}
