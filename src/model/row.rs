//! A row as the source sends it, and the types of its columns: the data a
//! change carries (see `change`). The source's parser fills them
//! (`postgres::pgoutput`), and maps type OIDs to kinds (`postgres::types`).

use bytes::Bytes;

/// A Postgres object identifier (relation or type id).
pub type Oid = u32;

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

    /// Whether a column is an unchanged TOASTed value whose content was not
    /// sent (an update that left it alone).
    pub fn has_unchanged(&self) -> bool {
        self.columns.iter().any(|c| c.kind == ColumnKind::Unchanged)
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

/// A relation's replica identity (`relreplident`): which old values Update and
/// Delete messages carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// `'d'`: the primary key.
    Default,
    /// `'n'`: nothing.
    Nothing,
    /// `'f'`: all columns.
    Full,
    /// `'i'`: the columns of a chosen unique index.
    Index,
}

/// How a column's text value becomes JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeKind {
    /// `t`/`f` → `true`/`false`.
    Bool,
    /// int2, int4, int8, oid, xid, cid, xid8 → number as is.
    Integer,
    /// float4, float8 → number; `NaN`, `Infinity`, `-Infinity` → strings.
    Float,
    /// numeric → number with every digit kept; `NaN`, `±Infinity` → strings.
    Numeric,
    /// Anything shown as its text: text, varchar, uuid, enums, inet, money …
    Text,
    /// json, jsonb → embedded JSON (whitespace removed).
    Json,
    Date,
    Time,
    /// `03:04:05+02` → `"03:04:05+02:00"`.
    TimeTz,
    /// `2024-01-02 03:04:05` → `"2024-01-02T03:04:05"`.
    Timestamp,
    /// `2024-01-02 03:04:05+00` → `"2024-01-02T03:04:05+00:00"` (RFC 3339).
    TimestampTz,
    /// ISO 8601 duration text, e.g. `"P1Y2M3DT4H5M6S"`.
    Interval,
    /// `\x0102ff` → base64 `"AQL/"`.
    Bytea,
    /// An array literal → JSON array (nested for several dimensions).
    Array {
        element: Box<TypeKind>,
        delimiter: u8,
    },
}

impl TypeKind {
    /// An array of `element` values separated by `delimiter` (`,` for every
    /// type but `box`, whose arrays use `;`).
    pub fn array_of(element: TypeKind, delimiter: u8) -> TypeKind {
        TypeKind::Array {
            element: Box::new(element),
            delimiter,
        }
    }
}
