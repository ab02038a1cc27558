//! TupleData: the parsing of a row into a slice of the payload plus one
//! `(kind, start, len)` entry per column (`model::row::Tuple`).

use super::error::{Byte, DecodeError};
use super::parser::Parser;
use crate::model::row::{ColumnKind, ColumnValue, Tuple};

impl Parser<'_> {
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
