//! Bytes to rows: the Confluent wire frame, the schema registry, the per-shard schema cache and the
//! compiled Avro decoder.
//!
//! Guarantee: [`Decoder::decode`] never panics on any input; it returns a [`CodecError`] whose
//! [`CodecError::is_retryable`] says whether trying the same bytes again can succeed (only registry
//! outages are retryable: a malformed datum stays malformed).
//! Precondition: one [`Decoder`] per shard; it is not shared, so its cache needs no lock.

pub mod avro;
pub mod frame;
pub mod registry;

use std::collections::HashMap;
use std::rc::Rc;

use apache_avro::Schema;
use thiserror::Error;

use crate::config::Config;
pub use crate::retry::Retryable;

pub use avro::{Kind, Plan, Row, Value};
pub use registry::{RegistryClient, SchemaResolver};

/// Errors of the codec boundary. Hot-path variants carry no heap data.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum CodecError {
    #[error("payload is shorter than its framing or datum says")]
    Truncated,
    #[error("wire-format magic byte is {0}, expected 0")]
    BadMagic(u8),
    #[error("malformed varint")]
    BadVarint,
    #[error("invalid length or count {0}")]
    BadLength(i64),
    #[error("string is not UTF-8")]
    BadUtf8,
    #[error("boolean byte is {0}")]
    BadBool(u8),
    #[error("union or enum index {0} out of range")]
    BadIndex(i64),
    #[error("datum nests deeper than {}", avro::MAX_DEPTH)]
    TooDeep,
    #[error("{0} bytes left after the datum")]
    TrailingBytes(usize),
    #[error("schema id {0} is not in the registry")]
    UnknownSchema(u32),
    #[error("schema resolution failed: {0}")]
    Resolution(String),
    #[error("schema registry unavailable: {0}")]
    RegistryUnavailable(String),
}

impl Retryable for CodecError {
    /// Only a registry outage can heal; every other error is a property of the bytes or the schema.
    fn is_retryable(&self) -> bool {
        matches!(self, CodecError::RegistryUnavailable(_))
    }

    /// The error class used in dead-letter headers and metric labels.
    fn class(&self) -> &'static str {
        match self {
            CodecError::BadMagic(_) => "bad_magic",
            CodecError::Truncated
            | CodecError::BadVarint
            | CodecError::BadLength(_)
            | CodecError::BadUtf8
            | CodecError::BadBool(_)
            | CodecError::BadIndex(_)
            | CodecError::TooDeep
            | CodecError::TrailingBytes(_) => "corrupt_datum",
            CodecError::UnknownSchema(_) => "unknown_schema",
            CodecError::Resolution(_) => "schema_resolution",
            CodecError::RegistryUnavailable(_) => "registry_unavailable",
        }
    }
}

/// The decoder a config asks for: framed with the registry (`schema.registry_url`) or raw Avro with
/// the file's schema (`schema.schema_file`). The one place that chooses, for the shards and the check.
pub fn decoder_for(
    config: &Config,
    fields: Vec<String>,
) -> Result<Decoder<RegistryClient>, CodecError> {
    match (&config.schema.registry_url, &config.schema.schema_file) {
        (Some(url), _) => Ok(Decoder::framed(
            RegistryClient::new(url, config.schema.registry_timeout),
            fields,
        )),
        (None, Some(file)) => Decoder::raw(&schema_file(file)?, fields),
        (None, None) => Err(CodecError::Resolution(
            "no schema source: set schema.registry_url or schema.schema_file".into(),
        )),
    }
}

/// Reads `schema.schema_file`.
pub fn schema_file(path: &str) -> Result<String, CodecError> {
    std::fs::read_to_string(path)
        .map_err(|e| CodecError::Resolution(format!("schema.schema_file {path}: {e}")))
}

/// Where datums come from: framed with a registry id, or raw with one configured schema.
enum Mode<R> {
    Framed {
        resolver: R,
        /// Resolved plans, and permanent failures, by schema id. Never evicted: schema ids are few.
        cache: HashMap<u32, Result<Rc<Plan>, CodecError>>,
    },
    Raw(Rc<Plan>),
}

/// A shard's decoder: its own cache, its own resolver.
pub struct Decoder<R: SchemaResolver> {
    mode: Mode<R>,
    fields: Vec<String>,
}

impl<R: SchemaResolver> Decoder<R> {
    /// Confluent wire format; writer schemas fetched through `resolver` on first sight of an id.
    pub fn framed(resolver: R, fields: Vec<String>) -> Self {
        Decoder {
            mode: Mode::Framed {
                resolver,
                cache: HashMap::new(),
            },
            fields,
        }
    }

    /// Raw Avro datums, all written with `schema_json`.
    pub fn raw(schema_json: &str, fields: Vec<String>) -> Result<Self, CodecError> {
        let schema = Schema::parse_str(schema_json)
            .map_err(|e| CodecError::Resolution(format!("schema does not parse: {e}")))?;
        let plan = Plan::compile(&schema, &fields)?;
        Ok(Decoder {
            mode: Mode::Raw(Rc::new(plan)),
            fields,
        })
    }

    /// The fields each decoded row holds, by slot.
    pub fn fields(&self) -> &[String] {
        &self.fields
    }

    /// Decodes one Kafka payload into `row`. Returns the schema id (0 for raw Avro).
    pub fn decode(&mut self, payload: &[u8], row: &mut Row) -> Result<u32, CodecError> {
        match &mut self.mode {
            Mode::Raw(plan) => {
                plan.decode(payload, row)?;
                Ok(0)
            }
            Mode::Framed { resolver, cache } => {
                let (id, datum) = frame::split(payload)?;
                let plan = match cache.get(&id) {
                    Some(Ok(p)) => p.clone(),
                    Some(Err(e)) => return Err(e.clone()),
                    None => {
                        let resolved = resolve(resolver, id, &self.fields);
                        match resolved {
                            // An outage is not cached: the next message asks again.
                            Err(e) if e.is_retryable() => return Err(e),
                            other => {
                                let entry = other.map(Rc::new);
                                cache.insert(id, entry.clone());
                                entry?
                            }
                        }
                    }
                };
                plan.decode(datum, row)?;
                Ok(id)
            }
        }
    }
}

fn resolve<R: SchemaResolver>(
    resolver: &R,
    id: u32,
    fields: &[String],
) -> Result<Plan, CodecError> {
    let json = resolver.schema_by_id(id)?;
    let schema = Schema::parse_str(&json)
        .map_err(|e| CodecError::Resolution(format!("schema id {id} does not parse: {e}")))?;
    Plan::compile(&schema, fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    struct OneSchema {
        calls: Cell<u32>,
        down: Cell<bool>,
    }

    impl SchemaResolver for OneSchema {
        fn schema_by_id(&self, id: u32) -> Result<String, CodecError> {
            self.calls.set(self.calls.get() + 1);
            if self.down.get() {
                return Err(CodecError::RegistryUnavailable("connection refused".into()));
            }
            match id {
                7 => Ok(
                    r#"{"type":"record","name":"r","fields":[{"name":"a","type":"long"}]}"#.into(),
                ),
                _ => Err(CodecError::UnknownSchema(id)),
            }
        }
        fn latest(&self, _subject: &str) -> Result<(u32, String), CodecError> {
            Err(CodecError::UnknownSchema(0))
        }
    }

    #[test]
    fn raw_avro_mode_decodes_bare_datums_with_the_configured_schema() {
        let schema = r#"{"type":"record","name":"r","fields":[{"name":"a","type":"long"},{"name":"b","type":"string"}]}"#;
        let mut d = Decoder::<OneSchema>::raw(schema, vec!["b".into(), "a".into()])
            .expect("schema compiles");
        let mut row = Row::default();
        // a = 42 (zig-zag 0x54), b = "hi"
        assert_eq!(d.decode(&[0x54, 0x04, b'h', b'i'], &mut row), Ok(0));
        assert_eq!(row.values, vec![Value::Str("hi".into()), Value::Long(42)]);
        // A framed payload is not raw Avro: its bytes do not decode as this schema.
        assert!(d.decode(&[0, 0, 0, 0, 7, 0x54], &mut row).is_err());
        let err = Decoder::<OneSchema>::raw(schema, vec!["zz".into()])
            .err()
            .expect("zz is missing");
        assert_eq!(err.class(), "schema_resolution");
    }

    #[test]
    fn resolves_once_per_id_and_caches_permanent_failures_not_outages() {
        let r = OneSchema {
            calls: Cell::new(0),
            down: Cell::new(true),
        };
        let mut d = Decoder::framed(r, vec!["a".into()]);
        let mut row = Row::default();
        let msg = [0, 0, 0, 0, 7, 0x54];
        assert!(d
            .decode(&msg, &mut row)
            .expect_err("registry down")
            .is_retryable());
        if let Mode::Framed { resolver, .. } = &d.mode {
            resolver.down.set(false);
        }
        for _ in 0..3 {
            assert_eq!(d.decode(&msg, &mut row), Ok(7));
            assert_eq!(row.values, vec![Value::Long(42)]);
        }
        let unknown = [0, 0, 0, 0, 9, 0];
        for _ in 0..2 {
            let e = d.decode(&unknown, &mut row).expect_err("unknown id");
            assert_eq!((e.class(), e.is_retryable()), ("unknown_schema", false));
        }
        if let Mode::Framed { resolver, .. } = &d.mode {
            // 1 failed outage call + 1 for id 7 + 1 for id 9: later messages hit the cache.
            assert_eq!(resolver.calls.get(), 3);
        }
        assert_eq!(
            d.decode(&[1, 0, 0, 0, 7, 0], &mut row)
                .map_err(|e| e.class()),
            Err("bad_magic")
        );
    }
}
