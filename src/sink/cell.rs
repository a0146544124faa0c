//! One bound value of an INSERT: the driver's own [`CqlValue`], or text, bytes and lists that still
//! point into the record's payload ([`crate::codec::shared`]) and are copied from there straight
//! into the request buffer when the driver serialises the statement.
//!
//! Why not `CqlValue` throughout: its text and blob own a `String`/`Vec`, so binding a decoded string
//! would allocate and copy it once more per column, only for the driver to copy it again into the
//! frame.
//!
//! Guarantee: a cell is type-checked against the prepared statement's column type when it is
//! serialised, as `CqlValue` is: text only into `text`/`varchar` (and `ascii` when it is ASCII), bytes
//! only into `blob`, lists into `list`/`set`; anything else is a serialisation error, never bytes
//! of the wrong type on the wire. Precondition: none beyond [`Text`]'s own (UTF-8 by construction).
//! A cell keeps its record's payload alive, and is not `Send`: it is serialised on its shard.

use scylla::cluster::metadata::{ColumnType, NativeType};
use scylla::serialize::value::SerializeValue;
use scylla::serialize::writers::{CellWriter, WrittenCellProof};
use scylla::serialize::SerializationError;
use scylla::value::CqlValue;
use thiserror::Error;

use crate::codec::{Blob, Text};

/// A value the insert sink binds to one column.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// Any value of the driver's own types (numbers, timestamps, UUIDs, maps, …).
    Cql(CqlValue),
    /// A string for a `text`, `varchar` or `ascii` column.
    Text(Text),
    /// Bytes for a `blob` column.
    Blob(Blob),
    /// The elements of a `list` or `set` column.
    List(Vec<Cell>),
}

/// Why a cell does not fit its column (no value in the message: values are record data).
#[derive(Debug, Error)]
pub enum CellError {
    #[error("a {cell} value does not fit a column of type {column:?}")]
    TypeMismatch {
        cell: &'static str,
        column: ColumnType<'static>,
    },
}

impl Cell {
    fn kind(&self) -> &'static str {
        match self {
            Cell::Cql(_) => "cql",
            Cell::Text(_) => "text",
            Cell::Blob(_) => "blob",
            Cell::List(_) => "list",
        }
    }

    /// The same value in the driver's own type (a copy of text and bytes): for the paths that need a
    /// `CqlValue` (a map's entries, tests).
    pub fn into_cql(self) -> CqlValue {
        match self {
            Cell::Cql(v) => v,
            Cell::Text(t) => CqlValue::Text(t.as_str().to_owned()),
            Cell::Blob(b) => CqlValue::Blob(b.as_bytes().to_vec()),
            Cell::List(items) => CqlValue::List(items.into_iter().map(Cell::into_cql).collect()),
        }
    }

    /// About how many bytes the value takes in a request (without its length prefix).
    pub fn approx_bytes(&self) -> usize {
        match self {
            Cell::Cql(v) => super::approx_value_bytes(v),
            Cell::Text(t) => t.len(),
            Cell::Blob(b) => b.len(),
            Cell::List(items) => 4 + items.iter().map(|i| 4 + i.approx_bytes()).sum::<usize>(),
        }
    }

    fn mismatch(&self, typ: &ColumnType) -> SerializationError {
        SerializationError::new(CellError::TypeMismatch {
            cell: self.kind(),
            column: typ.clone().into_owned(),
        })
    }
}

impl From<CqlValue> for Cell {
    fn from(v: CqlValue) -> Cell {
        Cell::Cql(v)
    }
}

impl SerializeValue for Cell {
    fn serialize<'b>(
        &self,
        typ: &ColumnType,
        writer: CellWriter<'b>,
    ) -> Result<WrittenCellProof<'b>, SerializationError> {
        let bytes = match (self, typ) {
            (Cell::Cql(v), _) => return v.serialize(typ, writer),
            (Cell::List(items), _) => return items.serialize(typ, writer),
            (Cell::Text(t), ColumnType::Native(NativeType::Text)) => t.as_bytes(),
            (Cell::Text(t), ColumnType::Native(NativeType::Ascii)) if t.is_ascii() => t.as_bytes(),
            (Cell::Blob(b), ColumnType::Native(NativeType::Blob)) => b.as_bytes(),
            _ => return Err(self.mismatch(typ)),
        };
        writer.set_value(bytes).map_err(SerializationError::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scylla::cluster::metadata::CollectionType;
    use std::rc::Rc;

    /// The bytes `v` serialises to for `typ`, or its error.
    fn wire(v: &impl SerializeValue, typ: &ColumnType) -> Result<Vec<u8>, SerializationError> {
        let mut buf = Vec::new();
        v.serialize(typ, CellWriter::new(&mut buf))?;
        Ok(buf)
    }

    const TEXT: ColumnType = ColumnType::Native(NativeType::Text);
    const ASCII: ColumnType = ColumnType::Native(NativeType::Ascii);
    const BLOB: ColumnType = ColumnType::Native(NativeType::Blob);
    const INT: ColumnType = ColumnType::Native(NativeType::Int);

    #[test]
    fn payload_text_and_bytes_serialise_as_the_drivers_own_values_do() {
        let payload: Rc<[u8]> = Rc::from(&b"..h\xc3\xa9llo"[..]);
        let t = Text::in_payload(&payload, 2, 6).expect("valid UTF-8");
        let b = Blob::in_payload(&payload, 0, 3).expect("in range");
        assert_eq!(
            wire(&Cell::Text(t.clone()), &TEXT).expect("text"),
            wire(&CqlValue::Text("héllo".into()), &TEXT).expect("text")
        );
        assert_eq!(
            wire(&Cell::Blob(b.clone()), &BLOB).expect("blob"),
            wire(&CqlValue::Blob(b"..h".to_vec()), &BLOB).expect("blob")
        );
        let list = ColumnType::Collection {
            frozen: false,
            typ: CollectionType::List(Box::new(TEXT)),
        };
        let items = Cell::List(vec![Cell::Text(t.clone()), Cell::Text("x".into())]);
        assert_eq!(
            wire(&items, &list).expect("list"),
            wire(
                &CqlValue::List(vec![
                    CqlValue::Text("héllo".into()),
                    CqlValue::Text("x".into())
                ]),
                &list
            )
            .expect("list")
        );
        assert_eq!(
            items.into_cql(),
            CqlValue::List(vec![
                CqlValue::Text("héllo".into()),
                CqlValue::Text("x".into())
            ])
        );
    }

    #[test]
    fn cells_of_the_wrong_type_are_refused_not_written() {
        assert!(wire(&Cell::Text("x".into()), &INT).is_err());
        assert!(wire(&Cell::Text("x".into()), &BLOB).is_err());
        assert!(wire(&Cell::Blob(Blob::from(&b"x"[..])), &TEXT).is_err());
        assert!(wire(&Cell::Text("é".into()), &ASCII).is_err(), "not ASCII");
        assert!(wire(&Cell::Text("e".into()), &ASCII).is_ok());
        let e = wire(&Cell::Text("secret".into()), &INT).expect_err("mismatch");
        assert!(!e.to_string().contains("secret"), "no value in errors: {e}");
    }
}
