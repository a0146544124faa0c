//! A compiled Avro binary decoder: the writer schema is resolved once per schema id into a [`Plan`],
//! and each message is then read straight into the slots of a [`Row`] that the pipeline needs.
//!
//! Why not `apache_avro::from_avro_datum`: it rebuilds the resolved schema on every call. Here schema
//! resolution (which writer field fills which reader slot, which fields are skipped) happens once, in
//! [`Plan::compile`], and per-message work is only varint and length reads.
//!
//! Guarantee: no input bytes make [`Plan::decode`] panic, loop without consuming input, recurse without
//! bound, or allocate more than a small multiple of the input length; every malformed datum is a
//! [`CodecError`]. Array and map items are what could break the last promise, because a null (or a
//! record of nulls) takes no bytes: so every item, whatever its size, and every field of a nested
//! record is charged one unit of a per-datum budget of the datum's length plus `ITEM_ALLOWANCE`,
//! across all blocks of all arrays and maps of the datum, read or skipped. Precondition: the writer schema parsed (apache-avro checks
//! names and references).

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use apache_avro::schema::{InnerDecimalSchema, Schema, UuidSchema};

use super::reader::Fill;
use super::shared::{Blob, Text};
use super::CodecError;

/// Deepest nesting of records/arrays/maps/unions a datum may have: recursive schemas cannot make the
/// decoder overflow its stack.
pub const MAX_DEPTH: usize = 64;
/// Array and map items a datum may hold beyond one per input byte. An item that takes no bytes (a
/// null, a record of nulls, a zero-size fixed) is not bounded by the input length, and a cap per block
/// is not a cap per datum (blocks repeat): so each datum gets one budget of `len + ITEM_ALLOWANCE`
/// items in all, which keeps decode time and allocation linear in the input while a small datum can
/// still carry a few zero-byte items.
const ITEM_ALLOWANCE: u64 = 1024;
/// What a nested record of `fields` fields is charged to the item budget: one unit less than its
/// fields, since the record (an array item, or a field of its parent) is already counted once. So a
/// record whose fields all take bytes costs no more units than its bytes (a tree of records has one
/// leaf more than its records' fields minus one, summed), and a record of nulls costs its fields.
fn record_charge(fields: usize) -> usize {
    fields.saturating_sub(1)
}

/// The field name that reads the whole datum, whatever its schema (a record, or a primitive such as
/// an Avro `string` key), into one slot: given alone to [`Plan::compile`].
pub const WHOLE: &str = "";

/// Kinds a start-up check expands for one field at most (see `Compiler::kind`).
const KIND_BUDGET: usize = 10_000;

/// A decoded value. Logical types keep their meaning so the CQL mapping can be exact. Text and bytes
/// are ranges of the record's payload (see [`super::shared`]): a value keeps that payload alive, and is
/// not `Send` (it stays on its shard; convert it, e.g. to a `CqlValue`, to hand it to another thread).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    /// Bytes, fixed and decimal: a range of the payload (see [`super::shared`]).
    Bytes(Blob),
    /// A string: a range of the payload.
    Str(Text),
    /// An enum symbol (its name, shared with the plan).
    Enum(Text),
    /// Days since the epoch.
    Date(i32),
    TimeMillis(i32),
    TimeMicros(i64),
    TimestampMillis(i64),
    TimestampMicros(i64),
    /// Nanoseconds since the epoch (`timestamp-nanos`, `local-timestamp-nanos`): its own variant, so
    /// the CQL mapping scales it instead of taking it for milliseconds.
    TimestampNanos(i64),
    Uuid(Text),
    /// A `decimal` (bytes or fixed): the unscaled value in big-endian two's complement, a range of
    /// the payload, and the schema's scale (digits right of the point).
    Decimal(Blob, i32),
    /// An Avro `duration` (fixed 12): months, days and milliseconds, each unsigned.
    Duration {
        months: u32,
        days: u32,
        millis: u32,
    },
    Array(Vec<Value>),
    Map(Vec<(Text, Value)>),
    /// A nested record, its fields in writer order.
    Record(Vec<(String, Value)>),
}

impl Value {
    /// Nothing on the heap and no reference counted: dropping it frees nothing. Exhaustive, so a
    /// variant added later must say which it is.
    #[inline]
    pub fn owns_nothing(&self) -> bool {
        match self {
            Value::Null
            | Value::Bool(_)
            | Value::Int(_)
            | Value::Long(_)
            | Value::Float(_)
            | Value::Double(_)
            | Value::Date(_)
            | Value::TimeMillis(_)
            | Value::TimeMicros(_)
            | Value::TimestampMillis(_)
            | Value::TimestampMicros(_)
            | Value::TimestampNanos(_)
            | Value::Duration { .. } => true,
            Value::Bytes(_)
            | Value::Str(_)
            | Value::Enum(_)
            | Value::Uuid(_)
            | Value::Decimal(..)
            | Value::Array(_)
            | Value::Map(_)
            | Value::Record(_) => false,
        }
    }

    /// Lets go of this value, through the drop glue only if it owns something: the decoder fills
    /// rows of nulls, and `Value`'s drop glue (an out-of-line call and a jump table) cost about 26
    /// instructions per slot under callgrind, a null included.
    #[inline]
    fn release(self) {
        if self.owns_nothing() {
            std::mem::forget(self);
        }
    }

    /// Puts this value in `slot`, releasing the one it replaces (see [`Value::release`]).
    #[inline]
    pub fn replace(self, slot: &mut Value) {
        std::mem::replace(slot, self).release();
    }

    /// Empties `values` (keeping the vector), releasing each (see [`Value::release`]).
    #[inline]
    pub fn clear_all(values: &mut Vec<Value>) {
        values.drain(..).for_each(Value::release);
    }
}

/// The shape of a value, known from the schema before any datum: what start-up type checks use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Null,
    Bool,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    Str,
    Enum,
    Fixed,
    Date,
    TimeMillis,
    TimeMicros,
    TimestampMillis,
    TimestampMicros,
    TimestampNanos,
    Uuid,
    /// `decimal` with the schema's precision and scale.
    Decimal {
        precision: usize,
        scale: usize,
    },
    Duration,
    Array(Box<Kind>),
    Map(Box<Kind>),
    /// A record: its fields' names and kinds, in writer order.
    Record(Vec<(String, Kind)>),
    /// A record that refers back to itself, or nests past what a check expands: written nowhere.
    Opaque,
    /// `["null", T]` in either order.
    Nullable(Box<Kind>),
    /// Any other union: its branches in writer order (`null` included where it is one).
    Union(Vec<Kind>),
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kind::Array(k) => write!(f, "array<{k}>"),
            Kind::Map(k) => write!(f, "map<{k}>"),
            Kind::Nullable(k) => write!(f, "[null, {k}]"),
            Kind::Null => f.write_str("null"),
            Kind::Bool => f.write_str("boolean"),
            Kind::Int => f.write_str("int"),
            Kind::Long => f.write_str("long"),
            Kind::Float => f.write_str("float"),
            Kind::Double => f.write_str("double"),
            Kind::Bytes => f.write_str("bytes"),
            Kind::Str => f.write_str("string"),
            Kind::Enum => f.write_str("enum"),
            Kind::Fixed => f.write_str("fixed"),
            Kind::Date => f.write_str("date"),
            Kind::TimeMillis => f.write_str("time-millis"),
            Kind::TimeMicros => f.write_str("time-micros"),
            Kind::TimestampMillis => f.write_str("timestamp-millis"),
            Kind::TimestampMicros => f.write_str("timestamp-micros"),
            Kind::TimestampNanos => f.write_str("timestamp-nanos"),
            Kind::Uuid => f.write_str("uuid"),
            Kind::Decimal { precision, scale } => write!(f, "decimal({precision}, {scale})"),
            Kind::Duration => f.write_str("duration"),
            Kind::Record(fields) => {
                f.write_str("record{")?;
                for (i, (name, kind)) in fields.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    write!(f, "{sep}{name}: {kind}")?;
                }
                f.write_str("}")
            }
            Kind::Opaque => f.write_str("record (recursive)"),
            Kind::Union(branches) => {
                f.write_str("union[")?;
                for (i, kind) in branches.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    write!(f, "{sep}{kind}")?;
                }
                f.write_str("]")
            }
        }
    }
}

impl Kind {
    /// Whether values of this kind can be encoded into an output field of kind `output` (a
    /// produce step's schema), as [`Plan::encode`] writes them. Per value, a null into a field
    /// that takes none, an enum symbol the output lacks or a fixed of another size still fails
    /// that record; what this refuses would fail every record.
    pub fn writes_into(&self, output: &Kind) -> bool {
        use Kind as K;
        match (self, output) {
            (K::Null, o) => o.takes_null(),
            (K::Nullable(k), o) => k.writes_into(o),
            // A general union goes where one of its branches goes (as for columns).
            (K::Union(bs), o) => bs
                .iter()
                .any(|b| !matches!(b, K::Null) && b.writes_into(o)),
            (i, K::Nullable(o)) => i.writes_into(o),
            (i, K::Union(bs)) => bs.iter().any(|b| i.writes_into(b)),
            (K::Int, K::Int | K::Long)
            | (K::Long, K::Long)
            | (K::Float, K::Float | K::Double)
            | (K::Double, K::Double)
            | (K::Bool, K::Bool)
            | (K::Bytes | K::Fixed, K::Bytes | K::Fixed)
            | (K::Str, K::Str | K::Uuid | K::Enum)
            | (K::Enum, K::Enum | K::Str)
            | (K::Uuid, K::Uuid | K::Str)
            | (K::Date, K::Date)
            | (K::TimeMillis, K::TimeMillis)
            | (K::TimeMicros, K::TimeMicros)
            | (K::TimestampMillis, K::TimestampMillis)
            | (K::TimestampMicros, K::TimestampMicros)
            | (K::TimestampNanos, K::TimestampNanos)
            | (K::Decimal { .. }, K::Decimal { .. })
            | (K::Duration, K::Duration)
            // Field by field, per record: a record's nesting is not checked here.
            | (K::Record(_) | K::Opaque, K::Record(_) | K::Opaque) => true,
            (K::Array(i), K::Array(o)) | (K::Map(i), K::Map(o)) => i.writes_into(o),
            _ => false,
        }
    }

    fn takes_null(&self) -> bool {
        match self {
            Kind::Null | Kind::Nullable(_) => true,
            Kind::Union(bs) => bs.iter().any(Kind::takes_null),
            _ => false,
        }
    }
}

/// One node of the compiled schema. Children are indices into [`Plan::nodes`], so recursive named
/// types compile to a finite graph.
#[derive(Debug, Clone)]
enum Node {
    Null,
    Bool,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    Str,
    Fixed(usize),
    /// Symbols shared by every value decoded with this plan (`Arc`: plans cross from the fetch thread).
    Enum(Vec<Arc<str>>),
    Date,
    TimeMillis,
    TimeMicros,
    TimestampMillis,
    TimestampMicros,
    TimestampNanos,
    UuidStr,
    /// `decimal` over bytes (`size: None`) or a fixed of `size` bytes.
    Decimal {
        precision: usize,
        scale: i32,
        size: Option<usize>,
    },
    /// Avro `duration`: a fixed of 12 bytes.
    Duration,
    Array(usize),
    Map(usize),
    Union(Vec<usize>),
    Record(Vec<(String, usize)>),
    /// A named type referenced before its definition finished compiling (recursion).
    Pending,
}

/// What to do with one top-level writer field.
#[derive(Debug, Clone, Copy)]
/// `u32`s, not `usize`s: the decoder reads every step of every record, and the narrow step keeps the
/// list in fewer cache lines (measured: `cargo bench --bench avro_decode`).
struct Step {
    node: u32,
    /// The reader slot it fills, or `None` to skip it (unless `nested` reads it).
    slot: Option<u32>,
    /// Index into [`Plan::nested`]: the field paths below this field that fill slots (`geo.lat`).
    nested: Option<u32>,
}

/// A nested field read into a slot: the field indices from a top-level field's value down to it.
#[derive(Debug, Clone)]
struct Path {
    at: Vec<usize>,
    slot: usize,
}

/// A writer schema resolved against the fields the pipeline reads.
#[derive(Debug, Clone)]
pub struct Plan {
    nodes: Vec<Node>,
    steps: Vec<Step>,
    nested: Vec<Vec<Path>>,
    slots: usize,
    kinds: Vec<Kind>,
    /// Slots of fields the writer lacks, and what they hold in every record (see [`super::reader`]).
    fills: Vec<(usize, Fill)>,
    /// Per slot: the writer lacks the field and the reader gives no default (null in every record).
    missing: Vec<bool>,
}

impl Plan {
    /// A writer-side plan: every top-level field of `schema`, in schema order, for [`Plan::encode`].
    pub fn for_encoding(schema: &Schema) -> Result<(Plan, Vec<String>), CodecError> {
        let names: Vec<String> = match schema {
            Schema::Record(r) => r.fields.iter().map(|f| f.name.clone()).collect(),
            _ => {
                return Err(CodecError::Resolution(
                    "the output schema is not a record".into(),
                ))
            }
        };
        let plan = Plan::compile(schema, &names)?;
        Ok((plan, names))
    }

    /// Appends the Avro encoding of one record: `values[i]` is the value of top-level field `i`.
    pub fn encode(&self, values: &[&Value], out: &mut Vec<u8>) -> Result<(), CodecError> {
        for (i, step) in self.steps.iter().enumerate() {
            let v = values
                .get(step.slot.map_or(i, |s| s as usize))
                .copied()
                .unwrap_or(&Value::Null);
            self.write(step.node as usize, v, out, 1)?;
        }
        Ok(())
    }

    fn accepts(&self, node: usize, v: &Value) -> bool {
        matches!(
            (self.nodes.get(node), v),
            (Some(Node::Null), Value::Null)
                | (Some(Node::Bool), Value::Bool(_))
                | (Some(Node::Int), Value::Int(_))
                | (Some(Node::Long), Value::Long(_) | Value::Int(_))
                | (Some(Node::Float), Value::Float(_))
                | (Some(Node::Double), Value::Double(_) | Value::Float(_))
                | (Some(Node::Bytes | Node::Fixed(_)), Value::Bytes(_))
                | (Some(Node::Decimal { .. }), Value::Decimal(..))
                | (Some(Node::Duration), Value::Duration { .. })
                | (
                    Some(Node::Str),
                    Value::Str(_) | Value::Enum(_) | Value::Uuid(_)
                )
                | (Some(Node::UuidStr), Value::Uuid(_) | Value::Str(_))
                | (Some(Node::Enum(_)), Value::Enum(_) | Value::Str(_))
                | (Some(Node::Date), Value::Date(_))
                | (Some(Node::TimeMillis), Value::TimeMillis(_))
                | (Some(Node::TimeMicros), Value::TimeMicros(_))
                | (Some(Node::TimestampMillis), Value::TimestampMillis(_))
                | (Some(Node::TimestampMicros), Value::TimestampMicros(_))
                | (Some(Node::TimestampNanos), Value::TimestampNanos(_))
                | (Some(Node::Array(_)), Value::Array(_))
                | (Some(Node::Map(_)), Value::Map(_))
                | (Some(Node::Record(_)), Value::Record(_))
        )
    }

    fn write(
        &self,
        node: usize,
        v: &Value,
        out: &mut Vec<u8>,
        depth: usize,
    ) -> Result<(), CodecError> {
        if depth > MAX_DEPTH {
            return Err(CodecError::TooDeep);
        }
        // The message names the value's variant only: the value itself is record data.
        let mismatch = || {
            let variant = format!("{v:?}");
            let variant = variant
                .split(['(', ' ', '{'])
                .next()
                .unwrap_or("value")
                .to_string();
            CodecError::Resolution(format!("a {variant} value does not fit the output schema"))
        };
        match (self.node(node)?, v) {
            (Node::Null, Value::Null) => {}
            (Node::Bool, Value::Bool(b)) => out.push(u8::from(*b)),
            (Node::Int, Value::Int(i))
            | (Node::Date, Value::Date(i))
            | (Node::TimeMillis, Value::TimeMillis(i)) => write_long(out, i64::from(*i)),
            (Node::Long, Value::Long(l))
            | (Node::TimeMicros, Value::TimeMicros(l))
            | (Node::TimestampMillis, Value::TimestampMillis(l))
            | (Node::TimestampMicros, Value::TimestampMicros(l))
            | (Node::TimestampNanos, Value::TimestampNanos(l)) => write_long(out, *l),
            (Node::Long, Value::Int(i)) => write_long(out, i64::from(*i)),
            (Node::Float, Value::Float(f)) => out.extend_from_slice(&f.to_le_bytes()),
            (Node::Double, Value::Double(d)) => out.extend_from_slice(&d.to_le_bytes()),
            (Node::Double, Value::Float(f)) => out.extend_from_slice(&f64::from(*f).to_le_bytes()),
            (Node::Bytes, Value::Bytes(b)) => {
                write_long(out, b.len() as i64);
                out.extend_from_slice(b.as_bytes());
            }
            (Node::Fixed(n), Value::Bytes(b)) if b.len() == *n => {
                out.extend_from_slice(b.as_bytes())
            }
            (Node::Decimal { .. } | Node::Duration, _) => {
                if !write_logical(self.node(node)?, v, out) {
                    return Err(mismatch());
                }
            }
            (Node::Str | Node::UuidStr, Value::Str(s) | Value::Enum(s) | Value::Uuid(s)) => {
                write_long(out, s.len() as i64);
                out.extend_from_slice(s.as_bytes());
            }
            (Node::Enum(symbols), Value::Enum(s) | Value::Str(s)) => {
                let i = symbols
                    .iter()
                    .position(|x| s == x.as_ref())
                    .ok_or_else(mismatch)?;
                write_long(out, i as i64);
            }
            (Node::Array(item), Value::Array(items)) => {
                if !items.is_empty() {
                    write_long(out, items.len() as i64);
                    for x in items {
                        self.write(*item, x, out, depth + 1)?;
                    }
                }
                write_long(out, 0);
            }
            (Node::Map(val), Value::Map(entries)) => {
                if !entries.is_empty() {
                    write_long(out, entries.len() as i64);
                    for (k, x) in entries {
                        write_long(out, k.len() as i64);
                        out.extend_from_slice(k.as_bytes());
                        self.write(*val, x, out, depth + 1)?;
                    }
                }
                write_long(out, 0);
            }
            (Node::Union(branches), v) => {
                let (i, b) = branches
                    .iter()
                    .enumerate()
                    .find(|(_, b)| self.accepts(**b, v))
                    .ok_or_else(mismatch)?;
                write_long(out, i as i64);
                self.write(*b, v, out, depth + 1)?;
            }
            (Node::Record(fields), Value::Record(values)) => {
                for (name, f) in fields {
                    let x = values
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, x)| x)
                        .unwrap_or(&Value::Null);
                    self.write(*f, x, out, depth + 1)?;
                }
            }
            _ => return Err(mismatch()),
        }
        Ok(())
    }
}

/// Appends a decimal or a duration of node `n`; false if `v` does not fit it. A decimal is written
/// with the output schema's scale: a value of another scale would change its meaning, so it does not
/// fit.
fn write_logical(n: &Node, v: &Value, out: &mut Vec<u8>) -> bool {
    match (n, v) {
        (Node::Decimal { scale, size, .. }, Value::Decimal(b, s)) if s == scale => match size {
            None => {
                write_long(out, b.len() as i64);
                out.extend_from_slice(b.as_bytes());
            }
            Some(n) if b.len() == *n => out.extend_from_slice(b.as_bytes()),
            Some(_) => return false,
        },
        (
            Node::Duration,
            Value::Duration {
                months,
                days,
                millis,
            },
        ) => {
            for part in [months, days, millis] {
                out.extend_from_slice(&part.to_le_bytes());
            }
        }
        _ => return false,
    }
    true
}

// Decimals and durations are read out of line: inline, they grew `Plan::read` and slowed every
// other field (measured: `cargo bench --bench message_path`, +4% with them inline).
#[cold]
#[inline(never)]
fn read_decimal(r: &mut Reader<'_>, scale: i32, size: Option<usize>) -> Result<Value, CodecError> {
    let n = match size {
        Some(n) => n,
        None => r.len()?,
    };
    Ok(Value::Decimal(r.blob(n)?, scale))
}

#[cold]
#[inline(never)]
fn read_duration(r: &mut Reader<'_>) -> Result<Value, CodecError> {
    let [m0, m1, m2, m3, d0, d1, d2, d3, s0, s1, s2, s3] = r.fixed::<12>()?;
    Ok(Value::Duration {
        months: u32::from_le_bytes([m0, m1, m2, m3]),
        days: u32::from_le_bytes([d0, d1, d2, d3]),
        millis: u32::from_le_bytes([s0, s1, s2, s3]),
    })
}

/// A node, slot or path-list index as a step holds it.
fn index32(i: usize) -> Result<u32, CodecError> {
    u32::try_from(i).map_err(|_| CodecError::Resolution("the schema is too large".into()))
}

/// Appends an Avro `long` (zig-zag varint): the one varint writer of the crate (the encoder here and
/// the load generator).
pub fn write_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// One decoded record: a value per reader slot, in the order given to [`Plan::compile`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    pub values: Vec<Value>,
}

impl Plan {
    /// Resolves `writer` (a record schema) against `fields`, the record fields the pipeline reads.
    /// A field is a top-level field's name or a path below one (`geo.lat`: Avro names hold no dot),
    /// through records and nullable records; a path that meets a null reads as null. A field absent
    /// from the writer schema is a [`CodecError::Resolution`].
    pub fn compile(writer: &Schema, fields: &[String]) -> Result<Plan, CodecError> {
        Plan::resolve(writer, fields, None, &[])
    }

    /// [`Plan::compile`] for a writer schema that may be older or newer than the reader: a field
    /// the writer lacks holds `defaults[slot]` (the reader schema's default) in every record, or
    /// null where there is none (see [`Plan::missing`]), instead of failing the schema. As the Avro
    /// spec resolves, a field the writer lacks under its own name is read from the writer's field
    /// named by one of the reader field's `aliases[slot]` (its top-level name; paths below it too).
    pub fn compile_with(
        writer: &Schema,
        fields: &[String],
        defaults: &[Option<Fill>],
        aliases: &[Vec<String>],
    ) -> Result<Plan, CodecError> {
        Plan::resolve(writer, fields, Some(defaults), aliases)
    }

    fn resolve(
        writer: &Schema,
        fields: &[String],
        defaults: Option<&[Option<Fill>]>,
        aliases: &[Vec<String>],
    ) -> Result<Plan, CodecError> {
        let mut c = Compiler {
            nodes: Vec::new(),
            named: HashMap::new(),
        };
        let root = c.node(writer, 0)?;
        if let [whole] = fields {
            if whole == WHOLE {
                return c.whole(root);
            }
        }
        let Some(Node::Record(top)) = c.nodes.get(root).cloned() else {
            return Err(CodecError::Resolution(
                "the writer schema is not a record".into(),
            ));
        };
        let schema_name = || writer.name().map(|n| n.fullname(None)).unwrap_or_default();
        let mut steps = Vec::with_capacity(top.len());
        let mut nested: Vec<Vec<Path>> = Vec::new();
        let mut kinds = vec![Kind::Null; fields.len()];
        let mut found = vec![false; fields.len()];
        // A reader field matches the writer's field of its own name, or else one of its aliases.
        // Not a writer field that a reader field claims by its own name, nor, under a name the
        // writer has, one of its aliases.
        let heads: Vec<&str> = fields.iter().filter_map(|f| f.split('.').next()).collect();
        let matches = |s: usize, head: &str, name: &str| {
            head == name
                || (!top.iter().any(|(n, _)| n == head)
                    && !heads.contains(&name)
                    && aliases.get(s).is_some_and(|a| a.iter().any(|x| x == name)))
        };
        for (name, node) in &top {
            let mut step = Step {
                node: index32(*node)?,
                slot: None,
                nested: None,
            };
            let mut paths = Vec::new();
            for (s, field) in fields.iter().enumerate() {
                let mut parts = field.split('.');
                if !parts.next().is_some_and(|head| matches(s, head, name)) {
                    continue;
                }
                let below: Vec<&str> = parts.collect();
                if below.is_empty() && step.slot.is_some() {
                    // Two reader fields alias one writer field: the first has it, this one is
                    // missing (its default), never a slot that silently reads nothing.
                    continue;
                }
                found[s] = true;
                if below.is_empty() {
                    step.slot = Some(index32(s)?);
                    kinds[s] = c.kind_of(*node);
                    continue;
                }
                let (at, leaf, nullable) = match c.path(*node, name, &below) {
                    Ok(found) => found,
                    // Resolving against a reader: a path the writer lacks is a missing field.
                    Err(_) if defaults.is_some() => {
                        found[s] = false;
                        continue;
                    }
                    Err(missing) => {
                        return Err(CodecError::Resolution(format!(
                            "field '{field}' is not in writer schema {}: {missing}",
                            schema_name()
                        )))
                    }
                };
                let kind = c.kind_of(leaf);
                kinds[s] = match kind {
                    k @ (Kind::Null | Kind::Nullable(_)) => k,
                    k if nullable => Kind::Nullable(Box::new(k)),
                    k => k,
                };
                paths.push(Path { at, slot: s });
            }
            if !paths.is_empty() {
                step.nested = Some(index32(nested.len())?);
                nested.push(paths);
            }
            steps.push(step);
        }
        let mut fills = Vec::new();
        let mut missing = vec![false; fields.len()];
        for (slot, _) in found.iter().enumerate().filter(|(_, f)| !**f) {
            let Some(defaults) = defaults else {
                return Err(CodecError::Resolution(format!(
                    "field '{}' is not in writer schema {}",
                    fields.get(slot).map(String::as_str).unwrap_or("?"),
                    schema_name()
                )));
            };
            let fill = defaults.get(slot).cloned().flatten();
            missing[slot] = fill.is_none();
            let fill = fill.unwrap_or(Fill::Null);
            kinds[slot] = fill.kind();
            fills.push((slot, fill));
        }
        Ok(Plan {
            nodes: c.nodes,
            steps,
            nested,
            slots: fields.len(),
            kinds,
            fills,
            missing,
        })
    }

    /// The shape of each reader slot, for start-up type checks.
    pub fn kinds(&self) -> &[Kind] {
        &self.kinds
    }

    /// Per slot: the writer schema lacks the field and the reader gives it no default, so it is
    /// null in every record (only with [`Plan::compile_with`]).
    pub fn missing(&self) -> &[bool] {
        &self.missing
    }

    /// Decodes the datum `payload[start..]` into `row` (its values are replaced; the vector is
    /// reused). Strings and bytes point into `payload`: no string or byte value is copied or
    /// allocated (see [`super::shared`]); arrays, maps and nested records still allocate their
    /// vectors. A payload of 4 GiB or more is a [`CodecError::BadLength`] (ranges are `u32`).
    pub fn decode(
        &self,
        payload: &Rc<[u8]>,
        start: usize,
        row: &mut Row,
    ) -> Result<(), CodecError> {
        if u32::try_from(payload.len()).is_err() {
            return Err(CodecError::BadLength(
                i64::try_from(payload.len()).unwrap_or(i64::MAX),
            ));
        }
        let Some(datum_len) = payload.len().checked_sub(start) else {
            return Err(CodecError::Truncated);
        };
        let mut r = Reader {
            payload,
            buf: payload,
            pos: start,
            // The datum's own length (not the frame's), so the budget is the same framed or raw.
            items_left: (datum_len as u64).saturating_add(ITEM_ALLOWANCE),
        };
        // Every slot is some step's or a fill's, so each is overwritten: no clearing first.
        if row.values.len() != self.slots {
            Value::clear_all(&mut row.values);
            row.values.resize_with(self.slots, || Value::Null);
        }
        let read = self.read_steps(&mut r, row);
        if read.is_err() {
            // Later slots still hold the previous record's values: never leave a half-decoded row.
            row.values.clear();
        }
        read
    }

    fn read_steps(&self, r: &mut Reader<'_>, row: &mut Row) -> Result<(), CodecError> {
        for step in &self.steps {
            let node = step.node as usize;
            match step.slot.and_then(|slot| row.values.get_mut(slot as usize)) {
                Some(cell) => {
                    self.read(node, r, 1, cell)?;
                    if let Some(n) = step.nested {
                        // Mapped whole and by path: rare, so the copy stays simple.
                        let top = cell.clone();
                        self.extract(n as usize, &top, row);
                    }
                }
                None => match step.nested {
                    Some(n) => {
                        let mut top = Value::Null;
                        self.read(node, r, 1, &mut top)?;
                        self.extract(n as usize, &top, row);
                    }
                    None => self.skip(node, r, 1)?,
                },
            }
        }
        if r.pos != r.buf.len() {
            return Err(CodecError::TrailingBytes(r.buf.len() - r.pos));
        }
        for (slot, fill) in &self.fills {
            if let Some(cell) = row.values.get_mut(*slot) {
                *cell = fill.value();
            }
        }
        Ok(())
    }

    /// Fills the slots of the paths below one top-level field from its decoded value `top`. A path
    /// through a null (a nullable record that is null) reads as null.
    fn extract(&self, nested: usize, top: &Value, row: &mut Row) {
        let Some(paths) = self.nested.get(nested) else {
            return;
        };
        for p in paths {
            let mut v = Some(top);
            for i in &p.at {
                v = match v {
                    Some(Value::Record(fields)) => fields.get(*i).map(|(_, x)| x),
                    _ => None,
                };
            }
            if let Some(slot) = row.values.get_mut(p.slot) {
                *slot = v.cloned().unwrap_or(Value::Null);
            }
        }
    }

    /// [`Plan::decode`] of a datum that is not in a shared payload yet: copies it into one (tests,
    /// the fuzz target, checks off the hot path).
    pub fn decode_copy(&self, datum: &[u8], row: &mut Row) -> Result<(), CodecError> {
        self.decode(&Rc::from(datum), 0, row)
    }

    fn node(&self, i: usize) -> Result<&Node, CodecError> {
        self.nodes
            .get(i)
            .ok_or_else(|| CodecError::Resolution("dangling schema reference".into()))
    }

    /// Reads one value of `node` into `out`. In place rather than returned: a returned `Value` went
    /// through the stack and was copied into its slot, and those copies were the decoder's hottest
    /// instructions (perf: store-forwarding stalls on the reloaded enum).
    fn read(
        &self,
        node: usize,
        r: &mut Reader<'_>,
        depth: usize,
        out: &mut Value,
    ) -> Result<(), CodecError> {
        if depth > MAX_DEPTH {
            return Err(CodecError::TooDeep);
        }
        let value = match self.node(node)? {
            Node::Null => Value::Null,
            Node::Bool => Value::Bool(r.bool()?),
            Node::Int => Value::Int(r.int()?),
            Node::Long => Value::Long(r.long()?),
            Node::Float => Value::Float(f32::from_le_bytes(r.fixed::<4>()?)),
            Node::Double => Value::Double(f64::from_le_bytes(r.fixed::<8>()?)),
            Node::Bytes => {
                let n = r.len()?;
                Value::Bytes(r.blob(n)?)
            }
            Node::Str => Value::Str(r.text()?),
            Node::UuidStr => Value::Uuid(r.text()?),
            Node::Fixed(n) => Value::Bytes(r.blob(*n)?),
            Node::Decimal { scale, size, .. } => read_decimal(r, *scale, *size)?,
            Node::Duration => read_duration(r)?,
            Node::Enum(symbols) => {
                let i = r.long()?;
                let s = usize::try_from(i)
                    .ok()
                    .and_then(|i| symbols.get(i))
                    .ok_or(CodecError::BadIndex(i))?;
                Value::Enum(Text::symbol(s))
            }
            Node::Date => Value::Date(r.int()?),
            Node::TimeMillis => Value::TimeMillis(r.int()?),
            Node::TimeMicros => Value::TimeMicros(r.long()?),
            Node::TimestampMillis => Value::TimestampMillis(r.long()?),
            Node::TimestampMicros => Value::TimestampMicros(r.long()?),
            Node::TimestampNanos => Value::TimestampNanos(r.long()?),
            Node::Array(item) => {
                let item = *item;
                let mut items = Vec::new();
                while let Some(n) = r.block()? {
                    items.reserve(n.min(r.remaining()));
                    for _ in 0..n {
                        items.push(Value::Null);
                        if let Some(last) = items.last_mut() {
                            self.read(item, r, depth + 1, last)?;
                        }
                    }
                }
                Value::Array(items)
            }
            Node::Map(val) => {
                let val = *val;
                let mut entries = Vec::new();
                while let Some(n) = r.block()? {
                    entries.reserve(n.min(r.remaining()));
                    for _ in 0..n {
                        entries.push((r.text()?, Value::Null));
                        if let Some((_, last)) = entries.last_mut() {
                            self.read(val, r, depth + 1, last)?;
                        }
                    }
                }
                Value::Map(entries)
            }
            Node::Union(branches) => {
                let i = r.long()?;
                let b = usize::try_from(i)
                    .ok()
                    .and_then(|i| branches.get(i))
                    .ok_or(CodecError::BadIndex(i))?;
                return self.read(*b, r, depth + 1, out);
            }
            Node::Record(fields) => {
                // Each field is a value built, whatever its size (a record of nulls takes no bytes).
                r.charge(record_charge(fields.len()))?;
                let mut values = Vec::with_capacity(fields.len());
                for (name, f) in fields {
                    values.push((name.clone(), Value::Null));
                    if let Some((_, last)) = values.last_mut() {
                        self.read(*f, r, depth + 1, last)?;
                    }
                }
                Value::Record(values)
            }
            Node::Pending => return Err(CodecError::Resolution("unresolved named type".into())),
        };
        value.replace(out);
        Ok(())
    }

    fn skip(&self, node: usize, r: &mut Reader<'_>, depth: usize) -> Result<(), CodecError> {
        if depth > MAX_DEPTH {
            return Err(CodecError::TooDeep);
        }
        match self.node(node)? {
            Node::Null => {}
            Node::Bool => {
                r.take(1)?;
            }
            Node::Int
            | Node::Long
            | Node::Enum(_)
            | Node::Date
            | Node::TimeMillis
            | Node::TimeMicros
            | Node::TimestampMillis
            | Node::TimestampMicros
            | Node::TimestampNanos => {
                r.long()?;
            }
            Node::Float => {
                r.take(4)?;
            }
            Node::Double => {
                r.take(8)?;
            }
            Node::Bytes | Node::Str | Node::UuidStr => {
                r.bytes()?;
            }
            Node::Fixed(n) | Node::Decimal { size: Some(n), .. } => {
                r.take(*n)?;
            }
            Node::Decimal { size: None, .. } => {
                r.bytes()?;
            }
            Node::Duration => {
                r.take(12)?;
            }
            Node::Array(item) => {
                let item = *item;
                while let Some(n) = r.block()? {
                    for _ in 0..n {
                        self.skip(item, r, depth + 1)?;
                    }
                }
            }
            Node::Map(val) => {
                let val = *val;
                while let Some(n) = r.block()? {
                    for _ in 0..n {
                        r.bytes()?;
                        self.skip(val, r, depth + 1)?;
                    }
                }
            }
            Node::Union(branches) => {
                let i = r.long()?;
                let b = usize::try_from(i)
                    .ok()
                    .and_then(|i| branches.get(i))
                    .ok_or(CodecError::BadIndex(i))?;
                self.skip(*b, r, depth + 1)?;
            }
            Node::Record(fields) => {
                r.charge(record_charge(fields.len()))?;
                for (_, f) in fields {
                    self.skip(*f, r, depth + 1)?;
                }
            }
            Node::Pending => return Err(CodecError::Resolution("unresolved named type".into())),
        }
        Ok(())
    }
}

struct Compiler {
    nodes: Vec<Node>,
    named: HashMap<String, usize>,
}

impl Compiler {
    /// The plan that reads the whole datum of `root` into slot 0 (see [`WHOLE`]).
    fn whole(self, root: usize) -> Result<Plan, CodecError> {
        let kind = self.kind_of(root);
        Ok(Plan {
            steps: vec![Step {
                node: index32(root)?,
                slot: Some(0),
                nested: None,
            }],
            nodes: self.nodes,
            nested: Vec::new(),
            slots: 1,
            kinds: vec![kind],
            fills: Vec::new(),
            missing: vec![false],
        })
    }

    fn push(&mut self, n: Node) -> usize {
        self.nodes.push(n);
        self.nodes.len() - 1
    }

    fn node(&mut self, s: &Schema, depth: usize) -> Result<usize, CodecError> {
        if depth > MAX_DEPTH {
            return Err(CodecError::Resolution("schema nests too deeply".into()));
        }
        let n = match s {
            Schema::Null => Node::Null,
            Schema::Boolean => Node::Bool,
            Schema::Int => Node::Int,
            Schema::Long => Node::Long,
            Schema::Float => Node::Float,
            Schema::Double => Node::Double,
            Schema::Bytes | Schema::BigDecimal => Node::Bytes,
            Schema::String => Node::Str,
            Schema::Date => Node::Date,
            Schema::TimeMillis => Node::TimeMillis,
            Schema::TimeMicros => Node::TimeMicros,
            Schema::TimestampMillis | Schema::LocalTimestampMillis => Node::TimestampMillis,
            Schema::TimestampMicros | Schema::LocalTimestampMicros => Node::TimestampMicros,
            // Longs on the wire, but not milliseconds: a node of their own keeps the unit to the mapping.
            Schema::TimestampNanos | Schema::LocalTimestampNanos => Node::TimestampNanos,
            Schema::Uuid(UuidSchema::String) => Node::UuidStr,
            Schema::Uuid(UuidSchema::Bytes) => Node::Bytes,
            Schema::Uuid(UuidSchema::Fixed(f)) => {
                let i = self.push(Node::Fixed(f.size));
                self.named.insert(f.name.fullname(None), i);
                return Ok(i);
            }
            Schema::Duration(f) => {
                if f.size != 12 {
                    return Err(CodecError::Resolution(format!(
                        "duration {} is a fixed of {} bytes, not 12",
                        f.name.fullname(None),
                        f.size
                    )));
                }
                let i = self.push(Node::Duration);
                self.named.insert(f.name.fullname(None), i);
                return Ok(i);
            }
            Schema::Decimal(d) => {
                let scale = i32::try_from(d.scale).map_err(|_| {
                    CodecError::Resolution(format!("decimal scale {} is too large", d.scale))
                })?;
                let size = match &d.inner {
                    InnerDecimalSchema::Bytes => None,
                    InnerDecimalSchema::Fixed(f) => Some(f.size),
                };
                let i = self.push(Node::Decimal {
                    precision: d.precision,
                    scale,
                    size,
                });
                if let InnerDecimalSchema::Fixed(f) = &d.inner {
                    self.named.insert(f.name.fullname(None), i);
                }
                return Ok(i);
            }
            Schema::Fixed(f) => {
                let i = self.push(Node::Fixed(f.size));
                self.named.insert(f.name.fullname(None), i);
                return Ok(i);
            }
            Schema::Enum(e) => {
                let symbols = e.symbols.iter().map(|s| Arc::from(s.as_str())).collect();
                let i = self.push(Node::Enum(symbols));
                self.named.insert(e.name.fullname(None), i);
                return Ok(i);
            }
            Schema::Array(a) => {
                let item = self.node(&a.items, depth + 1)?;
                Node::Array(item)
            }
            Schema::Map(m) => {
                let v = self.node(&m.types, depth + 1)?;
                Node::Map(v)
            }
            Schema::Union(u) => {
                let mut b = Vec::with_capacity(u.variants().len());
                for v in u.variants() {
                    b.push(self.node(v, depth + 1)?);
                }
                Node::Union(b)
            }
            Schema::Record(rec) => {
                // Registered before its fields compile, so a field referring back to it resolves.
                let i = self.push(Node::Pending);
                self.named.insert(rec.name.fullname(None), i);
                let mut fields = Vec::with_capacity(rec.fields.len());
                for f in &rec.fields {
                    fields.push((f.name.clone(), self.node(&f.schema, depth + 1)?));
                }
                if let Some(slot) = self.nodes.get_mut(i) {
                    *slot = Node::Record(fields);
                }
                return Ok(i);
            }
            Schema::Ref { name } => {
                return self
                    .named
                    .get(&name.fullname(None))
                    .copied()
                    .ok_or_else(|| {
                        CodecError::Resolution(format!(
                            "unknown named type {}",
                            name.fullname(None)
                        ))
                    })
            }
        };
        Ok(self.push(n))
    }

    /// Resolves the field names `below` a node: the field index at each level, the leaf node, and
    /// whether a nullable record (or a union holding a record) was passed on the way. `Err` says
    /// which name is missing.
    fn path<'n>(
        &self,
        mut node: usize,
        top: &'n str,
        below: &[&'n str],
    ) -> Result<(Vec<usize>, usize, bool), String> {
        let mut at = Vec::with_capacity(below.len());
        let mut nullable = false;
        let mut parent = top;
        for name in below {
            let record = self.record_in(node, &mut nullable).ok_or_else(|| {
                format!("'{parent}' is not a record, so it has no field '{name}'")
            })?;
            let Some(Node::Record(fields)) = self.nodes.get(record) else {
                return Err(format!("'{parent}' is not a record"));
            };
            let (i, (_, child)) = fields
                .iter()
                .enumerate()
                .find(|(_, (n, _))| n == name)
                .ok_or_else(|| format!("the record has no field '{name}'"))?;
            at.push(i);
            node = *child;
            parent = name;
        }
        Ok((at, node, nullable))
    }

    /// `node` if it is a record, or the one record branch of a union (which makes the path
    /// nullable: another branch reads as null).
    fn record_in(&self, node: usize, nullable: &mut bool) -> Option<usize> {
        match self.nodes.get(node)? {
            Node::Record(_) => Some(node),
            Node::Union(branches) => {
                let mut records = branches
                    .iter()
                    .filter(|b| matches!(self.nodes.get(**b), Some(Node::Record(_))));
                let one = *records.next()?;
                if records.next().is_some() {
                    return None;
                }
                *nullable = true;
                Some(one)
            }
            _ => None,
        }
    }

    /// The kind of `node`, expanded within [`KIND_BUDGET`].
    fn kind_of(&self, node: usize) -> Kind {
        let mut budget = KIND_BUDGET;
        self.kind(node, &mut Vec::new(), &mut budget)
    }

    /// The kind of `node`, for start-up checks. Records expand into their fields, except a record
    /// already being expanded (a recursive type) and anything past `budget` expanded kinds (a schema
    /// that reuses a wide named type at many places): those are [`Kind::Opaque`], which no column
    /// accepts.
    fn kind(&self, node: usize, open: &mut Vec<usize>, budget: &mut usize) -> Kind {
        if open.len() > MAX_DEPTH || *budget == 0 {
            return Kind::Opaque;
        }
        *budget -= 1;
        let mut sub = |i: usize, open: &mut Vec<usize>| self.kind(i, open, budget);
        match self.nodes.get(node) {
            None | Some(Node::Pending) => Kind::Opaque,
            Some(Node::Record(fields)) => {
                if open.contains(&node) {
                    return Kind::Opaque;
                }
                open.push(node);
                let kinds = fields
                    .iter()
                    .map(|(name, f)| (name.clone(), sub(*f, open)))
                    .collect();
                open.pop();
                Kind::Record(kinds)
            }
            Some(Node::Null) => Kind::Null,
            Some(Node::Bool) => Kind::Bool,
            Some(Node::Int) => Kind::Int,
            Some(Node::Long) => Kind::Long,
            Some(Node::Float) => Kind::Float,
            Some(Node::Double) => Kind::Double,
            Some(Node::Bytes) => Kind::Bytes,
            Some(Node::Str) => Kind::Str,
            Some(Node::Fixed(_)) => Kind::Fixed,
            Some(Node::Enum(_)) => Kind::Enum,
            Some(Node::Date) => Kind::Date,
            Some(Node::TimeMillis) => Kind::TimeMillis,
            Some(Node::TimeMicros) => Kind::TimeMicros,
            Some(Node::TimestampMillis) => Kind::TimestampMillis,
            Some(Node::TimestampMicros) => Kind::TimestampMicros,
            Some(Node::TimestampNanos) => Kind::TimestampNanos,
            Some(Node::UuidStr) => Kind::Uuid,
            Some(Node::Decimal {
                precision, scale, ..
            }) => Kind::Decimal {
                precision: *precision,
                scale: usize::try_from(*scale).unwrap_or(0),
            },
            Some(Node::Duration) => Kind::Duration,
            Some(Node::Array(i)) => Kind::Array(Box::new(sub(*i, open))),
            Some(Node::Map(i)) => Kind::Map(Box::new(sub(*i, open))),
            Some(Node::Union(b)) => {
                let non_null: Vec<usize> = b
                    .iter()
                    .copied()
                    .filter(|i| !matches!(self.nodes.get(*i), Some(Node::Null)))
                    .collect();
                match (b.len(), non_null.as_slice()) {
                    (2, [one]) => Kind::Nullable(Box::new(sub(*one, open))),
                    _ => Kind::Union(b.iter().map(|i| sub(*i, open)).collect()),
                }
            }
        }
    }
}

/// A cursor over one datum. Every read is bounds-checked.
struct Reader<'a> {
    /// The buffer strings and bytes are ranges of.
    payload: &'a Rc<[u8]>,
    buf: &'a [u8],
    pos: usize,
    /// Array and map items the datum may still claim, whatever their size: see `ITEM_ALLOWANCE`.
    items_left: u64,
}

impl<'a> Reader<'a> {
    #[inline]
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self.pos.checked_add(n).ok_or(CodecError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(CodecError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    #[inline]
    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        self.take(N)?.try_into().map_err(|_| CodecError::Truncated)
    }

    /// A zig-zag varint of at most 10 bytes.
    #[inline]
    fn long(&mut self) -> Result<i64, CodecError> {
        let mut v: u64 = 0;
        let mut shift = 0u32;
        loop {
            let b = *self.buf.get(self.pos).ok_or(CodecError::Truncated)?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 63 {
                return Err(CodecError::BadVarint);
            }
        }
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    #[inline]
    fn int(&mut self) -> Result<i32, CodecError> {
        let v = self.long()?;
        i32::try_from(v).map_err(|_| CodecError::BadVarint)
    }

    #[inline]
    fn bool(&mut self) -> Result<bool, CodecError> {
        match self.take(1)?.first() {
            Some(0) => Ok(false),
            Some(1) => Ok(true),
            Some(b) => Err(CodecError::BadBool(*b)),
            None => Err(CodecError::Truncated),
        }
    }

    #[inline]
    fn bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let n = self.long()?;
        let n = usize::try_from(n).map_err(|_| CodecError::BadLength(n))?;
        self.take(n)
    }

    /// A length prefix.
    #[inline]
    fn len(&mut self) -> Result<usize, CodecError> {
        let n = self.long()?;
        usize::try_from(n).map_err(|_| CodecError::BadLength(n))
    }

    /// The next `n` bytes, as a range of the payload.
    #[inline]
    fn blob(&mut self, n: usize) -> Result<Blob, CodecError> {
        let b = Blob::in_payload(self.payload, self.pos, n).ok_or(CodecError::Truncated)?;
        self.pos += n;
        Ok(b)
    }

    /// A length-prefixed UTF-8 string, as a range of the payload.
    #[inline]
    fn text(&mut self) -> Result<Text, CodecError> {
        let n = self.len()?;
        let end = self.pos.checked_add(n).ok_or(CodecError::Truncated)?;
        if end > self.buf.len() {
            return Err(CodecError::Truncated);
        }
        let t = Text::in_payload(self.payload, self.pos, n).ok_or(CodecError::BadUtf8)?;
        self.pos = end;
        Ok(t)
    }

    /// Charges `n` values (a nested record's fields) to the datum's item budget: an array of wide
    /// records of nulls is as many values as fields times items, not items alone.
    fn charge(&mut self, n: usize) -> Result<(), CodecError> {
        let n = n as u64;
        match self.items_left.checked_sub(n) {
            Some(left) => {
                self.items_left = left;
                Ok(())
            }
            None => Err(CodecError::BadLength(i64::try_from(n).unwrap_or(i64::MAX))),
        }
    }

    /// The item count of the next array/map block, `None` at the end marker. A negative count is
    /// followed by the block's byte size, which is read and ignored.
    ///
    /// The whole count is charged to the datum's item budget before any item is read, zero-byte items
    /// included: a count beyond what is left of the budget is a [`CodecError::BadLength`], so all
    /// blocks of all arrays and maps of one datum together hold at most `len + ITEM_ALLOWANCE` items.
    fn block(&mut self) -> Result<Option<usize>, CodecError> {
        let n = self.long()?;
        if n == 0 {
            return Ok(None);
        }
        let count = if n < 0 {
            self.long()?;
            n.unsigned_abs()
        } else {
            n as u64
        };
        let Some(left) = self.items_left.checked_sub(count) else {
            return Err(CodecError::BadLength(n));
        };
        self.items_left = left;
        usize::try_from(count)
            .map(Some)
            .map_err(|_| CodecError::BadLength(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Value as AvroValue;

    #[test]
    fn replacing_and_clearing_values_release_what_they_own_and_only_that() {
        let payload: std::rc::Rc<[u8]> = std::rc::Rc::from(&b"abcdef"[..]);
        let text = |at| Value::Str(Text::in_payload(&payload, at, 2).expect("in range"));
        let mut slot = Value::Null;
        text(0).replace(&mut slot);
        assert_eq!(
            std::rc::Rc::strong_count(&payload),
            2,
            "the slot holds one reference"
        );
        Value::Long(7).replace(&mut slot);
        assert_eq!(
            std::rc::Rc::strong_count(&payload),
            1,
            "the replaced text was dropped"
        );
        assert_eq!(slot, Value::Long(7));
        let mut values = vec![
            text(0),
            Value::Null,
            Value::Array(vec![text(2), Value::Int(1)]),
            Value::Duration {
                months: 1,
                days: 2,
                millis: 3,
            },
            text(4),
        ];
        assert_eq!(std::rc::Rc::strong_count(&payload), 4);
        let capacity = values.capacity();
        Value::clear_all(&mut values);
        assert!(values.is_empty());
        assert_eq!(
            values.capacity(),
            capacity,
            "the vector is kept for the next row"
        );
        assert_eq!(
            std::rc::Rc::strong_count(&payload),
            1,
            "every text released"
        );
        assert!(Value::Null.owns_nothing() && !text(0).owns_nothing());
        assert!(
            !Value::Array(Vec::new()).owns_nothing(),
            "an array owns its vector"
        );
    }

    const SCHEMA: &str = r#"{"type":"record","name":"ev","namespace":"t","fields":[
        {"name":"id","type":"string"},
        {"name":"skipme","type":{"type":"map","values":{"type":"array","items":"long"}}},
        {"name":"n","type":["null","int"]},
        {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
        {"name":"kind","type":{"type":"enum","name":"K","symbols":["A","B"]}},
        {"name":"tags","type":{"type":"array","items":"string"}},
        {"name":"f","type":"double"},
        {"name":"ok","type":"boolean"}
    ]}"#;

    // apache-avro's own encoder is the reference the decoder is checked against (deprecated, still exact).
    #[allow(deprecated)]
    fn encode(schema: &Schema, v: AvroValue) -> Vec<u8> {
        apache_avro::to_avro_datum(schema, v).expect("test value matches its schema")
    }

    fn sample(schema: &Schema) -> Vec<u8> {
        encode(
            schema,
            AvroValue::Record(vec![
                ("id".into(), AvroValue::String("e1".into())),
                (
                    "skipme".into(),
                    AvroValue::Map(
                        [(
                            "k".to_string(),
                            AvroValue::Array(vec![AvroValue::Long(-5), AvroValue::Long(1 << 40)]),
                        )]
                        .into_iter()
                        .collect(),
                    ),
                ),
                (
                    "n".into(),
                    AvroValue::Union(1, Box::new(AvroValue::Int(-42))),
                ),
                ("ts".into(), AvroValue::TimestampMillis(1_700_000_000_123)),
                ("kind".into(), AvroValue::Enum(1, "B".into())),
                (
                    "tags".into(),
                    AvroValue::Array(vec![
                        AvroValue::String("x".into()),
                        AvroValue::String("yz".into()),
                    ]),
                ),
                ("f".into(), AvroValue::Double(2.5)),
                ("ok".into(), AvroValue::Boolean(true)),
            ]),
        )
    }

    #[test]
    fn decodes_needed_fields_in_slot_order_and_skips_the_rest() {
        let schema = Schema::parse_str(SCHEMA).expect("test schema parses");
        let fields: Vec<String> = ["ok", "tags", "kind", "ts", "n", "id", "f"]
            .map(String::from)
            .to_vec();
        let plan = Plan::compile(&schema, &fields).expect("compiles");
        let mut row = Row::default();
        plan.decode_copy(&sample(&schema), &mut row)
            .expect("decodes");
        assert_eq!(
            row.values,
            vec![
                Value::Bool(true),
                Value::Array(vec![Value::Str("x".into()), Value::Str("yz".into())]),
                Value::Enum("B".into()),
                Value::TimestampMillis(1_700_000_000_123),
                Value::Int(-42),
                Value::Str("e1".into()),
                Value::Double(2.5),
            ]
        );
        assert_eq!(plan.kinds()[4], Kind::Nullable(Box::new(Kind::Int)));
        assert_eq!(plan.kinds()[4].to_string(), "[null, int]");
        assert_eq!(plan.kinds()[3].to_string(), "timestamp-millis");
    }

    #[test]
    fn a_datum_after_a_header_decodes_into_ranges_of_the_payload() {
        let schema = Schema::parse_str(SCHEMA).expect("test schema parses");
        let plan =
            Plan::compile(&schema, &["id".to_string(), "tags".to_string()]).expect("compiles");
        let mut framed = vec![0, 0, 0, 0, 7];
        framed.extend(sample(&schema));
        let payload: Rc<[u8]> = Rc::from(framed.as_slice());
        let mut row = Row::default();
        plan.decode(&payload, 5, &mut row)
            .expect("decodes after the header");
        let Some(Value::Str(id)) = row.values.first() else {
            panic!("id is a string: {:?}", row.values);
        };
        assert_eq!(id, "e1");
        // "e1" follows the header and its length byte: the value is those payload bytes, not a copy.
        assert_eq!(id.as_bytes().as_ptr(), payload[6..].as_ptr());
        assert_eq!(plan.decode(&payload, 6, &mut row).map_err(|_| ()), Err(()));
        assert_eq!(
            plan.decode(&payload, payload.len() + 1, &mut row),
            Err(CodecError::Truncated)
        );
    }

    #[test]
    fn encode_then_decode_round_trips() {
        let schema = Schema::parse_str(SCHEMA).expect("test schema parses");
        let (plan, names) = Plan::for_encoding(&schema).expect("compiles");
        let values = [
            Value::Str("e1".into()),
            Value::Map(vec![("k".into(), Value::Array(vec![Value::Long(-5)]))]),
            Value::Int(-42),
            Value::TimestampMillis(1_700_000_000_123),
            Value::Str("B".into()),
            Value::Array(vec![Value::Str("x".into())]),
            Value::Double(2.5),
            Value::Bool(true),
        ];
        let refs: Vec<&Value> = values.iter().collect();
        let mut out = Vec::new();
        plan.encode(&refs, &mut out).expect("encodes");
        let reader = Plan::compile(&schema, &names).expect("compiles");
        let mut row = Row::default();
        reader
            .decode_copy(&out, &mut row)
            .expect("decodes what was encoded");
        assert_eq!(row.values[4], Value::Enum("B".into()));
        assert_eq!(row.values[2], Value::Int(-42));
        assert_eq!(row.values[5], values[5]);
        let bad = [&Value::Bool(true)];
        assert!(plan.encode(&bad, &mut out).is_err());
    }

    #[test]
    fn missing_field_is_a_resolution_error() {
        let schema = Schema::parse_str(SCHEMA).expect("test schema parses");
        match Plan::compile(&schema, &["nope".to_string()]) {
            Err(CodecError::Resolution(m)) => assert!(m.contains("'nope'"), "{m}"),
            other => panic!("expected a resolution error, got {other:?}"),
        }
    }

    #[test]
    fn every_truncation_and_trailing_byte_is_an_error() {
        let schema = Schema::parse_str(SCHEMA).expect("test schema parses");
        let plan =
            Plan::compile(&schema, &["id".to_string(), "tags".to_string()]).expect("compiles");
        let bytes = sample(&schema);
        let mut row = Row::default();
        for cut in 0..bytes.len() {
            // A full row first: a failed decode must not leave its values behind in later slots.
            plan.decode_copy(&bytes, &mut row)
                .expect("whole datum decodes");
            assert_eq!(row.values.len(), 2);
            assert!(
                plan.decode_copy(&bytes[..cut], &mut row).is_err(),
                "prefix of {cut} bytes decoded"
            );
            assert!(row.values.is_empty(), "prefix of {cut}: half a row left");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            plan.decode_copy(&longer, &mut row),
            Err(CodecError::TrailingBytes(1))
        );
    }

    const NULL_ARRAY: &str = r#"{"type":"record","name":"N","fields":[{"name":"a","type":{"type":"array","items":"null"}}]}"#;
    const NULL_RECORD_ARRAY: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":{"type":"array","items":
        {"type":"record","name":"E","fields":[{"name":"x","type":"null"},{"name":"y","type":"null"}]}}}]}"#;
    const NESTED_NULL_ARRAY: &str = r#"{"type":"record","name":"M","fields":[{"name":"a","type":{"type":"array","items":
        {"type":"array","items":"null"}}}]}"#;
    const NULL_MAP: &str = r#"{"type":"record","name":"P","fields":[{"name":"m","type":{"type":"map","values":"null"}}]}"#;

    /// A plan reading `fields` of `schema` (none: every field is skipped).
    fn plan_for(schema: &str, fields: &[&str]) -> Plan {
        let schema = Schema::parse_str(schema).expect("test schema parses");
        let fields: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
        Plan::compile(&schema, &fields).expect("test plan compiles")
    }

    /// Array blocks of zero-byte items with these counts, then the end marker. A negative count gets
    /// the byte size that must follow it (0: it is ignored).
    fn blocks(counts: &[i64]) -> Vec<u8> {
        let mut d = Vec::new();
        for c in counts {
            write_long(&mut d, *c);
            if *c < 0 {
                write_long(&mut d, 0);
            }
        }
        write_long(&mut d, 0);
        d
    }

    // Fails on the old decoder: each block of 2^16 nulls was under its per-block cap, so the datum
    // decoded to a million values (and 64 blocks in 193 bytes to 128 MiB of them).
    #[test]
    fn array_of_nulls_is_capped_per_datum_not_per_block() {
        let mut row = Row::default();
        let bomb = blocks(&[1 << 16; 16]);
        assert_eq!(bomb.len(), 49);
        for plan in [plan_for(NULL_ARRAY, &["a"]), plan_for(NULL_ARRAY, &[])] {
            assert!(matches!(
                plan.decode_copy(&bomb, &mut row),
                Err(CodecError::BadLength(_))
            ));
            // One block of 2^40, several of 2^31 - 1, a negative (sized) 2^40: refused before any item.
            for counts in [
                &[1i64 << 40][..],
                &[(1i64 << 31) - 1; 4][..],
                &[-(1i64 << 40)][..],
            ] {
                assert!(matches!(
                    plan.decode_copy(&blocks(counts), &mut row),
                    Err(CodecError::BadLength(_))
                ));
            }
        }
    }

    // Fails on the old decoder: a record of nulls was not seen as zero-sized, so each block could
    // claim as many records as bytes remained; 2,000 one-byte headers gave 124,047 records.
    #[test]
    fn records_of_nulls_are_charged_though_they_take_no_bytes() {
        let mut row = Row::default();
        let n = 2000i64;
        let counts: Vec<i64> = (0..n).map(|i| (n - i).min(63)).collect();
        let bomb = blocks(&counts);
        assert_eq!(bomb.len(), 2001);
        for plan in [
            plan_for(NULL_RECORD_ARRAY, &["a"]),
            plan_for(NULL_RECORD_ARRAY, &[]),
        ] {
            assert!(matches!(
                plan.decode_copy(&bomb, &mut row),
                Err(CodecError::BadLength(_))
            ));
        }
        let plan = plan_for(NULL_RECORD_ARRAY, &["a"]);
        plan.decode_copy(&blocks(&[2]), &mut row)
            .expect("a few records of nulls decode");
        let rec = Value::Record(vec![("x".into(), Value::Null), ("y".into(), Value::Null)]);
        assert_eq!(row.values, vec![Value::Array(vec![rec.clone(), rec])]);
    }

    // Fails on the old decoder: the budget counted array items, not the values built for them, so
    // three bytes made a thousand records of a thousand fields (a million values, ~80 MB).
    #[test]
    fn the_fields_of_records_in_an_array_share_the_datum_budget() {
        let wide = |n: usize| {
            let fields: Vec<String> = (0..n)
                .map(|i| format!(r#"{{"name":"f{i}","type":"null"}}"#))
                .collect();
            format!(
                r#"{{"type":"record","name":"W","fields":[{{"name":"r","type":{{"type":"array","items":
                {{"type":"record","name":"E","fields":[{}]}}}}}}]}}"#,
                fields.join(",")
            )
        };
        let schema = wide(1000);
        let bomb = blocks(&[1000]);
        assert_eq!(bomb.len(), 3);
        let mut row = Row::default();
        for plan in [plan_for(&schema, &["r"]), plan_for(&schema, &[])] {
            assert!(matches!(
                plan.decode_copy(&bomb, &mut row),
                Err(CodecError::BadLength(_))
            ));
        }
        // Records whose fields take bytes cost no more than their bytes: 1,100 points of two
        // small ints (2,203 bytes) decode (charged per field, they were refused).
        let points = r#"{"type":"record","name":"S","fields":[{"name":"pts","type":{"type":"array","items":
            {"type":"record","name":"P","fields":[{"name":"x","type":"int"},{"name":"y","type":"int"}]}}}]}"#;
        let mut d = Vec::new();
        write_long(&mut d, 1100);
        for i in 0..1100 {
            write_long(&mut d, i % 50);
            write_long(&mut d, 7);
        }
        write_long(&mut d, 0);
        plan_for(points, &["pts"])
            .decode_copy(&d, &mut row)
            .expect("a long array of small records decodes");
        // Within the budget (2 items of 100 fields in 3 bytes), such records still decode.
        let plan = plan_for(&wide(100), &["r"]);
        plan.decode_copy(&blocks(&[2]), &mut row)
            .expect("two wide records of nulls decode");
        assert!(
            matches!(&row.values[..], [Value::Array(items)] if items.len() == 2),
            "{:?}",
            row.values.len()
        );
    }

    // Fails on the old decoder: each inner array was capped on its own, so ten inner arrays of 2^16
    // nulls (42 bytes) decoded, and ten of 1,000 did too.
    #[test]
    fn nested_arrays_share_the_datum_budget() {
        let mut row = Row::default();
        for inner in [1i64 << 16, 1000] {
            let mut d = Vec::new();
            write_long(&mut d, 10);
            for _ in 0..10 {
                d.extend_from_slice(&blocks(&[inner]));
            }
            write_long(&mut d, 0);
            for plan in [
                plan_for(NESTED_NULL_ARRAY, &["a"]),
                plan_for(NESTED_NULL_ARRAY, &[]),
            ] {
                assert!(
                    matches!(
                        plan.decode_copy(&d, &mut row),
                        Err(CodecError::BadLength(_))
                    ),
                    "ten inner arrays of {inner} nulls in {} bytes",
                    d.len()
                );
            }
        }
    }

    // Regression guard (passes on the old decoder too): map entries take at least their key length.
    #[test]
    fn map_of_nulls_is_bounded_by_the_input() {
        let mut row = Row::default();
        for plan in [plan_for(NULL_MAP, &["m"]), plan_for(NULL_MAP, &[])] {
            for counts in [
                &[(1i64 << 31) - 1][..],
                &[1i64 << 40][..],
                &[-(1i64 << 40)][..],
            ] {
                assert!(matches!(
                    plan.decode_copy(&blocks(counts), &mut row),
                    Err(CodecError::BadLength(_))
                ));
            }
        }
        let plan = plan_for(NULL_MAP, &["m"]);
        plan.decode_copy(&[4, 2, b'a', 2, b'b', 0], &mut row)
            .expect("a small map of nulls decodes");
        assert_eq!(
            row.values,
            vec![Value::Map(vec![
                ("a".into(), Value::Null),
                ("b".into(), Value::Null)
            ])]
        );
    }

    // Fails on the old decoder in its second half: 1,028 nulls in 3 bytes were under the 2^16 cap.
    #[test]
    fn zero_byte_items_up_to_the_budget_decode_and_one_more_does_not() {
        let plan = plan_for(NULL_ARRAY, &["a"]);
        let mut row = Row::default();
        // Three bytes (two-byte count, end marker): a budget of 3 + ITEM_ALLOWANCE items.
        let fits = ITEM_ALLOWANCE + 3;
        let d = blocks(&[i64::try_from(fits).expect("small count")]);
        assert_eq!(d.len(), 3);
        plan.decode_copy(&d, &mut row)
            .expect("a datum at its budget decodes");
        assert!(
            matches!(&row.values[..], [Value::Array(items)] if items.len() as u64 == fits),
            "{} values",
            row.values.len()
        );
        let d = blocks(&[i64::try_from(fits + 1).expect("small count")]);
        assert_eq!(d.len(), 3);
        assert!(matches!(
            plan.decode_copy(&d, &mut row),
            Err(CodecError::BadLength(_))
        ));
        // After a header the budget is the datum's, not the payload's: the header buys no items.
        let mut framed = vec![0, 0, 0, 0, 7];
        framed.extend(&d);
        assert!(matches!(
            plan.decode(&Rc::from(framed.as_slice()), 5, &mut row),
            Err(CodecError::BadLength(_))
        ));
    }

    // Fails on the old decoder: timestamp-nanos compiled to a plain long (kind `long`), which the
    // CQL mapping then wrote as milliseconds.
    #[test]
    fn nanosecond_timestamps_keep_their_unit() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"T","fields":[
                {"name":"n","type":{"type":"long","logicalType":"timestamp-nanos"}},
                {"name":"l","type":{"type":"long","logicalType":"local-timestamp-nanos"}},
                {"name":"s","type":{"type":"long","logicalType":"timestamp-nanos"}}]}"#,
        )
        .expect("nanos schema parses");
        let datum = encode(
            &schema,
            AvroValue::Record(vec![
                (
                    "n".into(),
                    AvroValue::TimestampNanos(1_700_000_000_123_456_789),
                ),
                ("l".into(), AvroValue::LocalTimestampNanos(-1)),
                ("s".into(), AvroValue::TimestampNanos(5)),
            ]),
        );
        let plan = Plan::compile(&schema, &["n".to_string(), "l".to_string()]).expect("compiles");
        assert_eq!(plan.kinds(), &[Kind::TimestampNanos, Kind::TimestampNanos]);
        assert_eq!(plan.kinds()[0].to_string(), "timestamp-nanos");
        let mut row = Row::default();
        plan.decode_copy(&datum, &mut row).expect("decodes");
        assert_eq!(
            row.values,
            vec![
                Value::TimestampNanos(1_700_000_000_123_456_789),
                Value::TimestampNanos(-1)
            ]
        );
        let (writer, _) = Plan::for_encoding(&schema).expect("compiles for encoding");
        let values = [
            Value::TimestampNanos(1_700_000_000_123_456_789),
            Value::TimestampNanos(-1),
            Value::TimestampNanos(5),
        ];
        let refs: Vec<&Value> = values.iter().collect();
        let mut out = Vec::new();
        writer.encode(&refs, &mut out).expect("encodes");
        assert_eq!(out, datum);
    }

    #[test]
    fn hostile_counts_and_recursion_are_bounded() {
        let list = r#"{"type":"record","name":"L","fields":[{"name":"next","type":["null","L"]}]}"#;
        let schema = Schema::parse_str(list).expect("recursive schema parses");
        let plan = Plan::compile(&schema, &[]).expect("compiles");
        let mut row = Row::default();
        // 1000 levels of `next` (union index 1), then null: deeper than MAX_DEPTH.
        let mut deep = vec![2u8; 1000];
        deep.push(0);
        assert_eq!(plan.decode_copy(&deep, &mut row), Err(CodecError::TooDeep));
        let nulls = r#"{"type":"record","name":"N","fields":[{"name":"a","type":{"type":"array","items":"null"}}]}"#;
        let schema = Schema::parse_str(nulls).expect("parses");
        let plan = Plan::compile(&schema, &["a".to_string()]).expect("compiles");
        // A block claiming 2^62 null items, encoded as a zig-zag varint.
        let huge = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0x00];
        assert!(matches!(
            plan.decode_copy(&huge, &mut row),
            Err(CodecError::BadLength(_))
        ));
        // Eleven continuation bytes: not a varint.
        assert_eq!(
            plan.decode_copy(&[0xff; 11], &mut row),
            Err(CodecError::BadVarint)
        );
    }

    const WIDE: &str = r#"{"type":"record","name":"order","namespace":"t","fields":[
        {"name":"id","type":"string"},
        {"name":"geo","type":["null",{"type":"record","name":"geo","fields":[
            {"name":"lat","type":"double"},
            {"name":"lon","type":["null","double"]}]}]},
        {"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":9,"scale":2}},
        {"name":"price","type":{"type":"fixed","name":"p8","size":8,"logicalType":"decimal","precision":18,"scale":0}},
        {"name":"wait","type":{"type":"fixed","name":"d12","size":12,"logicalType":"duration"}},
        {"name":"items","type":{"type":"array","items":{"type":"record","name":"item","fields":[
            {"name":"sku","type":"string"},{"name":"qty","type":"int"}]}}},
        {"name":"u","type":["null","string","long"]}
    ]}"#;

    fn wide_datum(schema: &Schema, geo: Option<(f64, Option<f64>)>, u: AvroValue) -> Vec<u8> {
        use apache_avro::{Days, Decimal, Duration, Millis, Months};
        let geo = match geo {
            None => AvroValue::Union(0, Box::new(AvroValue::Null)),
            Some((lat, lon)) => AvroValue::Union(
                1,
                Box::new(AvroValue::Record(vec![
                    ("lat".into(), AvroValue::Double(lat)),
                    (
                        "lon".into(),
                        match lon {
                            None => AvroValue::Union(0, Box::new(AvroValue::Null)),
                            Some(x) => AvroValue::Union(1, Box::new(AvroValue::Double(x))),
                        },
                    ),
                ])),
            ),
        };
        encode(
            schema,
            AvroValue::Record(vec![
                ("id".into(), AvroValue::String("o1".into())),
                ("geo".into(), geo),
                (
                    "amount".into(),
                    AvroValue::Decimal(Decimal::from(vec![0xfb, 0x1e])),
                ),
                (
                    "price".into(),
                    AvroValue::Decimal(Decimal::from(vec![0, 0, 0, 0, 0, 0, 0x04, 0xe2])),
                ),
                (
                    "wait".into(),
                    AvroValue::Duration(Duration::new(
                        Months::new(1),
                        Days::new(2),
                        Millis::new(3),
                    )),
                ),
                (
                    "items".into(),
                    AvroValue::Array(vec![AvroValue::Record(vec![
                        ("sku".into(), AvroValue::String("a".into())),
                        ("qty".into(), AvroValue::Int(2)),
                    ])]),
                ),
                ("u".into(), u),
            ]),
        )
    }

    // Fails on the old code: a nested path was "not in writer schema", a decimal lost its scale (it
    // decoded as bytes) and a duration was a plain fixed.
    #[test]
    fn nested_paths_decimals_durations_and_unions_decode_with_their_kinds() {
        let schema = Schema::parse_str(WIDE).expect("test schema parses");
        let plan = plan_for(
            WIDE,
            &[
                "geo.lat", "amount", "price", "wait", "items", "u", "geo.lon", "geo",
            ],
        );
        let kinds = plan.kinds();
        let geo = Kind::Record(vec![
            ("lat".into(), Kind::Double),
            ("lon".into(), Kind::Nullable(Box::new(Kind::Double))),
        ]);
        assert_eq!(
            kinds,
            &[
                Kind::Nullable(Box::new(Kind::Double)),
                Kind::Decimal {
                    precision: 9,
                    scale: 2
                },
                Kind::Decimal {
                    precision: 18,
                    scale: 0
                },
                Kind::Duration,
                Kind::Array(Box::new(Kind::Record(vec![
                    ("sku".into(), Kind::Str),
                    ("qty".into(), Kind::Int),
                ]))),
                Kind::Union(vec![Kind::Null, Kind::Str, Kind::Long]),
                Kind::Nullable(Box::new(Kind::Double)),
                Kind::Nullable(Box::new(geo)),
            ]
        );
        let mut row = Row::default();
        let datum = wide_datum(
            &schema,
            Some((1.5, None)),
            AvroValue::Union(2, Box::new(AvroValue::Long(9))),
        );
        plan.decode_copy(&datum, &mut row).expect("decodes");
        assert_eq!(row.values[0], Value::Double(1.5));
        assert_eq!(
            row.values[1],
            Value::Decimal(Blob::from(&[0xfb, 0x1e][..]), 2)
        );
        assert_eq!(
            row.values[2],
            Value::Decimal(Blob::from(&[0, 0, 0, 0, 0, 0, 0x04, 0xe2][..]), 0)
        );
        assert_eq!(
            row.values[3],
            Value::Duration {
                months: 1,
                days: 2,
                millis: 3
            }
        );
        assert_eq!(
            row.values[4],
            Value::Array(vec![Value::Record(vec![
                ("sku".into(), Value::Str("a".into())),
                ("qty".into(), Value::Int(2)),
            ])])
        );
        assert_eq!(row.values[5], Value::Long(9));
        assert_eq!(row.values[6], Value::Null);
        assert_eq!(
            row.values[7],
            Value::Record(vec![
                ("lat".into(), Value::Double(1.5)),
                ("lon".into(), Value::Null),
            ])
        );
        // A null record: every path below it reads as null.
        let datum = wide_datum(
            &schema,
            None,
            AvroValue::Union(1, Box::new(AvroValue::String("s".into()))),
        );
        plan.decode_copy(&datum, &mut row).expect("decodes");
        assert_eq!(row.values[0], Value::Null);
        assert_eq!(row.values[6], Value::Null);
        assert_eq!(row.values[5], Value::Str("s".into()));
        // The encoder writes what the decoder read (a produce step re-encodes decimals and durations).
        let (writer, names) = Plan::for_encoding(&schema).expect("compiles");
        let all = Plan::compile(&schema, &names).expect("compiles");
        let mut whole = Row::default();
        all.decode_copy(&datum, &mut whole).expect("decodes");
        let refs: Vec<&Value> = whole.values.iter().collect();
        let mut out = Vec::new();
        writer.encode(&refs, &mut out).expect("encodes");
        assert_eq!(out, datum);
    }

    #[test]
    fn against_a_reader_a_path_the_writer_lacks_is_null_and_missing() {
        let schema = Schema::parse_str(WIDE).expect("test schema parses");
        let fields = [
            "id".to_string(),
            "geo.alt".to_string(),
            "amount.x".to_string(),
        ];
        let plan =
            Plan::compile_with(&schema, &fields, &[None, None, None], &[]).expect("compiles");
        assert_eq!(plan.kinds()[1], Kind::Null);
        assert_eq!(plan.missing(), &[false, true, true]);
        let datum = wide_datum(
            &schema,
            Some((1.0, None)),
            AvroValue::Union(0, Box::new(AvroValue::Null)),
        );
        let mut row = Row::default();
        plan.decode_copy(&datum, &mut row).expect("decodes");
        assert_eq!(
            row.values,
            vec![Value::Str("o1".into()), Value::Null, Value::Null]
        );
    }

    // Fails on the old code: fields matched by exact name only, so a renamed field read null.
    #[test]
    fn a_field_the_writer_has_under_an_alias_is_read_from_it_and_its_own_name_wins() {
        let writer = Schema::parse_str(
            r#"{"type":"record","name":"w","fields":[{"name":"a","type":"long"},
            {"name":"where","type":{"type":"record","name":"G","fields":[{"name":"lat","type":"double"}]}},
            {"name":"c","type":"long"},{"name":"d","type":"long"}]}"#,
        )
        .expect("test schema parses");
        let datum = encode(
            &writer,
            AvroValue::Record(vec![
                ("a".into(), AvroValue::Long(42)),
                (
                    "where".into(),
                    AvroValue::Record(vec![("lat".into(), AvroValue::Double(1.5))]),
                ),
                ("c".into(), AvroValue::Long(3)),
                ("d".into(), AvroValue::Long(4)),
            ]),
        );
        let fields: Vec<String> = ["b", "geo.lat", "c"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let aliases = vec![
            vec!["a".to_string()],
            vec!["where".to_string()],
            // `c` is in the writer: its own field, not its alias `d`.
            vec!["d".to_string()],
        ];
        let plan =
            Plan::compile_with(&writer, &fields, &[None, None, None], &aliases).expect("compiles");
        assert_eq!(plan.missing(), &[false, false, false]);
        let mut row = Row::default();
        plan.decode_copy(&datum, &mut row).expect("decodes");
        assert_eq!(
            row.values,
            vec![Value::Long(42), Value::Double(1.5), Value::Long(3)]
        );
        // A writer field a reader field claims by its own name is no alias target, and two reader
        // fields aliasing one writer field: the first has it, the second is missing.
        let claims: Vec<String> = ["c", "other", "e", "f"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let claimed = vec![
            vec![],
            vec!["c".to_string()],
            vec!["a".to_string()],
            vec!["a".to_string()],
        ];
        let plan = Plan::compile_with(&writer, &claims, &[None, None, None, None], &claimed)
            .expect("compiles");
        assert_eq!(plan.missing(), &[false, true, false, true]);
        plan.decode_copy(&datum, &mut row).expect("decodes");
        assert_eq!(row.values[0], Value::Long(3));
        assert_eq!(row.values[2], Value::Long(42));
        // Without the aliases the renamed fields are missing.
        let plain =
            Plan::compile_with(&writer, &fields, &[None, None, None], &[]).expect("compiles");
        assert_eq!(plain.missing(), &[true, true, false]);
    }

    #[test]
    fn a_path_that_is_not_there_names_the_missing_part() {
        let schema = Schema::parse_str(WIDE).expect("test schema parses");
        for (field, part) in [
            ("geo.alt", "the record has no field 'alt'"),
            (
                "amount.x",
                "'amount' is not a record, so it has no field 'x'",
            ),
            ("geo.lat.x", "'lat' is not a record"),
            ("nope.x", "'nope.x'"),
        ] {
            match Plan::compile(&schema, &[field.to_string()]) {
                Err(CodecError::Resolution(m)) => {
                    assert!(m.contains(part), "{m} lacks {part}");
                    assert!(m.contains(&format!("'{field}'")), "{m}");
                }
                other => panic!("{field}: expected a resolution error, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_recursive_record_is_opaque_to_checks_and_still_decodes() {
        let tree = r#"{"type":"record","name":"node","fields":[
            {"name":"v","type":"int"},
            {"name":"next","type":["null","node"]}]}"#;
        let plan = plan_for(tree, &["next", "next.v"]);
        assert_eq!(
            plan.kinds()[0],
            Kind::Nullable(Box::new(Kind::Record(vec![
                ("v".into(), Kind::Int),
                ("next".into(), Kind::Nullable(Box::new(Kind::Opaque))),
            ])))
        );
        assert_eq!(plan.kinds()[1], Kind::Nullable(Box::new(Kind::Int)));
        let schema = Schema::parse_str(tree).expect("parses");
        let leaf = AvroValue::Record(vec![
            ("v".into(), AvroValue::Int(2)),
            (
                "next".into(),
                AvroValue::Union(0, Box::new(AvroValue::Null)),
            ),
        ]);
        let datum = encode(
            &schema,
            AvroValue::Record(vec![
                ("v".into(), AvroValue::Int(1)),
                ("next".into(), AvroValue::Union(1, Box::new(leaf))),
            ]),
        );
        let mut row = Row::default();
        plan.decode_copy(&datum, &mut row).expect("decodes");
        assert_eq!(row.values[1], Value::Int(2));
    }

    #[test]
    fn the_whole_datum_of_any_schema_reads_into_one_slot() {
        let key = Schema::parse_str(r#""string""#).expect("a primitive schema");
        let datum = encode(&key, AvroValue::String("user-7".into()));
        let plan = Plan::compile(&key, &[WHOLE.to_string()]).expect("compiles");
        assert_eq!(plan.kinds(), &[Kind::Str]);
        let mut row = Row::default();
        plan.decode_copy(&datum, &mut row).expect("decodes");
        assert_eq!(row.values, vec![Value::Str("user-7".into())]);
        // Trailing bytes are still an error.
        let mut longer = datum.clone();
        longer.push(0);
        assert!(plan.decode_copy(&longer, &mut row).is_err());
        // A record as a whole: one record value.
        let rec = plan_for(SCHEMA, &[WHOLE]);
        assert!(matches!(rec.kinds()[0], Kind::Record(_)));
        // Without WHOLE, a primitive writer is still refused.
        assert!(Plan::compile(&key, &["x".to_string()]).is_err());
    }
}
