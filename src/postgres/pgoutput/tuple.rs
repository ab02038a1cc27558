//! TupleData: a row as a slice of the payload plus one `(kind, start, len)`
//! entry per column, and its parsing.

use bytes::Bytes;

use super::error::{Byte, DecodeError};
use super::reader::Reader;

/// How one column of a [`Tuple`] is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// `'n'`: SQL NULL.
    Null,
    /// `'u'`: an unchanged TOASTed value whose content was not sent. It must
    /// never overwrite the indexed value.
    Unchanged,
    /// `'t'`: the value in the type's text output format.
    Text,
    /// `'b'`: the value in the type's binary format (only with `binary true`).
    Binary,
}

/// One column of a [`Tuple`]: its kind and its byte range in [`Tuple::data`]
/// (`start..start + len`; empty for `Null` and `Unchanged`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnValue {
    pub kind: ColumnKind,
    pub start: u32,
    pub len: u32,
}

/// A row as sent by pgoutput (TupleData): a slice of the received payload plus
/// the position of each column value in it.
#[derive(Debug, Clone)]
pub struct Tuple {
    pub data: Bytes,
    pub columns: Vec<ColumnValue>,
}

impl Tuple {
    /// Number of columns.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// Kind of column `i`; `Null` when `i` is out of range.
    pub fn kind(&self, i: usize) -> ColumnKind {
        self.columns.get(i).map_or(ColumnKind::Null, |c| c.kind)
    }

    /// The bytes of column `i` when it is `Text` or `Binary`.
    pub fn value(&self, i: usize) -> Option<&[u8]> {
        let range = self.range(i)?;
        self.data.get(range)
    }

    /// Like [`Tuple::value`], as a zero-copy [`Bytes`] handle.
    pub fn value_bytes(&self, i: usize) -> Option<Bytes> {
        let range = self.range(i)?;
        (range.end <= self.data.len()).then(|| self.data.slice(range))
    }

    fn range(&self, i: usize) -> Option<std::ops::Range<usize>> {
        let c = self.columns.get(i)?;
        match c.kind {
            ColumnKind::Text | ColumnKind::Binary => {
                let start = c.start as usize;
                Some(start..start + c.len as usize)
            }
            ColumnKind::Null | ColumnKind::Unchanged => None,
        }
    }
}

/// Old values of an updated or deleted row.
#[derive(Debug, Clone)]
pub enum OldTuple {
    /// `'K'`: the replica identity key columns only (others are `Null`).
    Key(Tuple),
    /// `'O'`: the whole old row (replica identity full).
    Full(Tuple),
}

impl OldTuple {
    pub fn tuple(&self) -> &Tuple {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

impl Reader<'_> {
    /// TupleData: Int16 column count, then per column a kind byte and, for
    /// text and binary values, an Int32 length and the bytes.
    pub(super) fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let offset = self.pos;
        let count = usize::from(self.u16("tuple column count")?);
        self.check_count(offset, "tuple column count", count, 1)?;
        let base = self.pos;
        let mut columns = Vec::with_capacity(count);
        for _ in 0..count {
            let offset = self.pos;
            let kind = match self.u8("tuple column kind")? {
                b'n' => ColumnKind::Null,
                b'u' => ColumnKind::Unchanged,
                b't' => ColumnKind::Text,
                b'b' => ColumnKind::Binary,
                found => {
                    return Err(DecodeError::BadColumnKind {
                        tag: self.tag,
                        offset,
                        found: Byte(found),
                    })
                }
            };
            let mut len = 0;
            if matches!(kind, ColumnKind::Text | ColumnKind::Binary) {
                let offset = self.pos;
                let raw = self.i32("column value length")?;
                len = self.check_length(offset, "column value length", raw)?;
            }
            // The whole payload is below 4 GiB (checked in `decode`), so
            // relative offsets and lengths fit in u32.
            columns.push(ColumnValue {
                kind,
                start: (self.pos - base) as u32,
                len: len as u32,
            });
            self.pos += len;
        }
        Ok(Tuple {
            data: self.buf.slice(base..self.pos),
            columns,
        })
    }
}
