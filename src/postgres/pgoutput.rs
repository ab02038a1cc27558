//! Decoder of pgoutput logical replication messages, protocol version 1.
//!
//! [`decode`] takes one XLogData payload and returns a [`Message`]. Tuples are
//! not copied: a [`Tuple`] holds a slice of the payload ([`Bytes::slice`]) and
//! one `(kind, start, len)` entry per column, so decoding an Insert costs one
//! small allocation (the column vector) and a reference count.
//!
//! The input comes from the network, so the decoder never panics: every read is
//! bounds-checked, a count or length larger than what is left is an error, and
//! a message must be consumed exactly (trailing bytes mean we misread it).
//!
//! Format reference: Postgres docs, "Logical Replication Message Formats".
//! Streaming (`streaming on`, protocol 2+) and two-phase messages are rejected
//! as [`DecodeError::Unsupported`]: the slot must be started with
//! `proto_version '1'` and without `streaming` or `two_phase`.

use std::fmt;

use bytes::Bytes;

use crate::lsn::Lsn;

/// A Postgres object identifier (relation or type id).
pub type Oid = u32;

/// Microseconds between the Unix epoch and the Postgres epoch (2000-01-01 UTC).
pub const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

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

/// One column of a [`Relation`], in tuple order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    pub name: String,
    pub type_oid: Oid,
    pub type_modifier: i32,
    /// Part of the replica identity key.
    pub is_key: bool,
}

/// Schema of a published table, sent before its first change in a session and
/// again after each change of its definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub id: Oid,
    /// As sent: the empty string stands for `pg_catalog`.
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<RelationColumn>,
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

/// One decoded pgoutput message.
#[derive(Debug, Clone)]
pub enum Message {
    /// `commit_time`: microseconds since 2000-01-01 UTC (see [`format_commit_time`]).
    Begin {
        final_lsn: Lsn,
        commit_time: i64,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: i64,
    },
    Origin {
        commit_lsn: Lsn,
        name: String,
    },
    Relation(Relation),
    /// A non-built-in type used by a published column.
    Type {
        id: Oid,
        namespace: String,
        name: String,
    },
    Insert {
        relation_id: Oid,
        new: Tuple,
    },
    Update {
        relation_id: Oid,
        old: Option<OldTuple>,
        new: Tuple,
    },
    Delete {
        relation_id: Oid,
        old: OldTuple,
    },
    Truncate {
        relation_ids: Vec<Oid>,
        cascade: bool,
        restart_identity: bool,
    },
    /// A logical decoding message (`pg_logical_emit_message`), sent only with
    /// the `messages true` option.
    Message {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    },
}

/// A message tag byte, shown with the message's name when known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag(pub u8);

impl Tag {
    /// The message name of a tag, for protocol version 1 and the unsupported
    /// later additions.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            b'B' => "Begin",
            b'C' => "Commit",
            b'O' => "Origin",
            b'R' => "Relation",
            b'Y' => "Type",
            b'I' => "Insert",
            b'U' => "Update",
            b'D' => "Delete",
            b'T' => "Truncate",
            b'M' => "Message",
            b'S' => "Stream Start",
            b'E' => "Stream Stop",
            b'c' => "Stream Commit",
            b'A' => "Stream Abort",
            b'b' => "Begin Prepare",
            b'P' => "Prepare",
            b'K' => "Commit Prepared",
            b'r' => "Rollback Prepared",
            b'p' => "Stream Prepare",
            _ => return None,
        })
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", Byte(self.0)),
            None => write!(f, "{}", Byte(self.0)),
        }
    }
}

/// A protocol byte, shown as `'x'` when printable, else as `0xNN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Byte(pub u8);

impl fmt::Display for Byte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}'", self.0 as char)
        } else {
            write!(f, "0x{:02x}", self.0)
        }
    }
}

/// A pgoutput payload that could not be decoded. Offsets count from the start
/// of the payload (the tag is byte 0).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty pgoutput message: no tag byte")]
    Empty,
    #[error(
        "pgoutput {tag} message truncated at byte {offset}: {what} needs {needed} bytes, {remaining} left"
    )]
    Truncated {
        tag: Tag,
        offset: usize,
        what: &'static str,
        needed: usize,
        remaining: usize,
    },
    #[error("pgoutput {tag} message: {what} at byte {offset} has no terminating NUL")]
    UnterminatedString {
        tag: Tag,
        offset: usize,
        what: &'static str,
    },
    #[error("pgoutput {tag} message: {what} at byte {offset} is not valid UTF-8")]
    InvalidUtf8 {
        tag: Tag,
        offset: usize,
        what: &'static str,
    },
    #[error("unknown pgoutput message tag {tag} at byte 0")]
    UnknownTag { tag: Tag },
    #[error(
        "pgoutput {tag} message: bad tuple column kind {found} at byte {offset} (expected 'n', 'u', 't' or 'b')"
    )]
    BadColumnKind {
        tag: Tag,
        offset: usize,
        found: Byte,
    },
    #[error("pgoutput {tag} message: expected {expected} at byte {offset}, found {found}")]
    UnexpectedByte {
        tag: Tag,
        offset: usize,
        expected: &'static str,
        found: Byte,
    },
    #[error(
        "pgoutput {tag} message: {what} at byte {offset} is {value}, more than the {remaining} bytes left can hold"
    )]
    BadLength {
        tag: Tag,
        offset: usize,
        what: &'static str,
        value: i64,
        remaining: usize,
    },
    #[error(
        "pgoutput {tag} message at byte 0: {what} are not supported; start replication with proto_version '1' and without streaming or two_phase"
    )]
    Unsupported { tag: Tag, what: &'static str },
    #[error("pgoutput {tag} message: {remaining} unexpected trailing bytes at byte {offset}")]
    TrailingBytes {
        tag: Tag,
        offset: usize,
        remaining: usize,
    },
    #[error("pgoutput message of {len} bytes is larger than the 4 GiB a tuple offset can address")]
    TooLarge { len: usize },
}

impl DecodeError {
    /// The message tag, when the payload had one.
    pub fn tag(&self) -> Option<Tag> {
        match self {
            DecodeError::Empty | DecodeError::TooLarge { .. } => None,
            DecodeError::Truncated { tag, .. }
            | DecodeError::UnterminatedString { tag, .. }
            | DecodeError::InvalidUtf8 { tag, .. }
            | DecodeError::UnknownTag { tag }
            | DecodeError::BadColumnKind { tag, .. }
            | DecodeError::UnexpectedByte { tag, .. }
            | DecodeError::BadLength { tag, .. }
            | DecodeError::Unsupported { tag, .. }
            | DecodeError::TrailingBytes { tag, .. } => Some(*tag),
        }
    }

    /// Byte offset in the payload where decoding failed.
    pub fn offset(&self) -> usize {
        match self {
            DecodeError::Empty
            | DecodeError::TooLarge { .. }
            | DecodeError::UnknownTag { .. }
            | DecodeError::Unsupported { .. } => 0,
            DecodeError::Truncated { offset, .. }
            | DecodeError::UnterminatedString { offset, .. }
            | DecodeError::InvalidUtf8 { offset, .. }
            | DecodeError::BadColumnKind { offset, .. }
            | DecodeError::UnexpectedByte { offset, .. }
            | DecodeError::BadLength { offset, .. }
            | DecodeError::TrailingBytes { offset, .. } => *offset,
        }
    }
}

/// Decode one pgoutput message (one XLogData payload). Tuples and message
/// contents are slices of `buf`, not copies.
pub fn decode(buf: &Bytes) -> Result<Message, DecodeError> {
    let Some(&tag) = buf.first() else {
        return Err(DecodeError::Empty);
    };
    if u32::try_from(buf.len()).is_err() {
        return Err(DecodeError::TooLarge { len: buf.len() });
    }
    let mut r = Reader {
        buf,
        pos: 1,
        tag: Tag(tag),
    };
    let message = match tag {
        b'B' => Message::Begin {
            final_lsn: Lsn(r.u64("final LSN")?),
            commit_time: r.i64("commit timestamp")?,
            xid: r.u32("xid")?,
        },
        b'C' => Message::Commit {
            flags: r.u8("flags")?,
            commit_lsn: Lsn(r.u64("commit LSN")?),
            end_lsn: Lsn(r.u64("end LSN")?),
            commit_time: r.i64("commit timestamp")?,
        },
        b'O' => Message::Origin {
            commit_lsn: Lsn(r.u64("origin commit LSN")?),
            name: r.string("origin name")?,
        },
        b'R' => Message::Relation(r.relation()?),
        b'Y' => Message::Type {
            id: r.u32("type id")?,
            namespace: r.string("type namespace")?,
            name: r.string("type name")?,
        },
        b'I' => {
            let relation_id = r.u32("relation id")?;
            r.marker(b'N', "'N' (new tuple)")?;
            Message::Insert {
                relation_id,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation_id = r.u32("relation id")?;
            let offset = r.pos;
            let old = match r.u8("tuple marker")? {
                b'N' => None,
                b'K' => Some(OldTuple::Key(r.tuple()?)),
                b'O' => Some(OldTuple::Full(r.tuple()?)),
                found => return Err(r.unexpected(offset, "'K', 'O' or 'N'", found)),
            };
            if old.is_some() {
                r.marker(b'N', "'N' (new tuple)")?;
            }
            Message::Update {
                relation_id,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation_id = r.u32("relation id")?;
            let offset = r.pos;
            let old = match r.u8("tuple marker")? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                found => return Err(r.unexpected(offset, "'K' or 'O'", found)),
            };
            Message::Delete { relation_id, old }
        }
        b'T' => {
            let offset = r.pos;
            let count = r.u32("relation count")?;
            let options = r.u8("options")?;
            r.check_count(offset, "relation count", count as usize, 4)?;
            let mut relation_ids = Vec::with_capacity(count as usize);
            for _ in 0..count {
                relation_ids.push(r.u32("relation id")?);
            }
            Message::Truncate {
                relation_ids,
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
            }
        }
        b'M' => {
            let transactional = r.u8("flags")? & 1 != 0;
            let lsn = Lsn(r.u64("message LSN")?);
            let prefix = r.string("message prefix")?;
            let offset = r.pos;
            let len = r.i32("content length")?;
            let len = r.check_length(offset, "content length", len)?;
            let start = r.pos;
            r.skip(len, "message content")?;
            Message::Message {
                transactional,
                lsn,
                prefix,
                content: buf.slice(start..r.pos),
            }
        }
        b'S' | b'E' | b'c' | b'A' => {
            return Err(DecodeError::Unsupported {
                tag: Tag(tag),
                what: "streamed transactions",
            })
        }
        b'b' | b'P' | b'K' | b'r' | b'p' => {
            return Err(DecodeError::Unsupported {
                tag: Tag(tag),
                what: "two-phase commit messages",
            })
        }
        _ => return Err(DecodeError::UnknownTag { tag: Tag(tag) }),
    };
    if r.pos != buf.len() {
        return Err(DecodeError::TrailingBytes {
            tag: Tag(tag),
            offset: r.pos,
            remaining: buf.len() - r.pos,
        });
    }
    Ok(message)
}

/// Bounds-checked big-endian reader over one message.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    tag: Tag,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        match self.buf.get(self.pos..self.pos + N) {
            Some(bytes) => {
                let mut out = [0; N];
                out.copy_from_slice(bytes);
                self.pos += N;
                Ok(out)
            }
            None => Err(self.truncated(what, N)),
        }
    }

    fn truncated(&self, what: &'static str, needed: usize) -> DecodeError {
        DecodeError::Truncated {
            tag: self.tag,
            offset: self.pos,
            what,
            needed,
            remaining: self.remaining(),
        }
    }

    fn unexpected(&self, offset: usize, expected: &'static str, found: u8) -> DecodeError {
        DecodeError::UnexpectedByte {
            tag: self.tag,
            offset,
            expected,
            found: Byte(found),
        }
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        match self.buf.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => Err(self.truncated(what, 1)),
        }
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        self.take(what).map(u16::from_be_bytes)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.take(what).map(u32::from_be_bytes)
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        self.take(what).map(i32::from_be_bytes)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        self.take(what).map(u64::from_be_bytes)
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        self.take(what).map(i64::from_be_bytes)
    }

    fn skip(&mut self, n: usize, what: &'static str) -> Result<(), DecodeError> {
        if n > self.remaining() {
            return Err(self.truncated(what, n));
        }
        self.pos += n;
        Ok(())
    }

    fn marker(&mut self, expected: u8, name: &'static str) -> Result<(), DecodeError> {
        let offset = self.pos;
        match self.u8("tuple marker")? {
            b if b == expected => Ok(()),
            found => Err(self.unexpected(offset, name, found)),
        }
    }

    /// A non-negative Int32 length that fits in what is left.
    fn check_length(
        &self,
        offset: usize,
        what: &'static str,
        len: i32,
    ) -> Result<usize, DecodeError> {
        match usize::try_from(len) {
            Ok(n) if n <= self.remaining() => Ok(n),
            _ => Err(DecodeError::BadLength {
                tag: self.tag,
                offset,
                what,
                value: len.into(),
                remaining: self.remaining(),
            }),
        }
    }

    /// A count of items of at least `min_size` bytes each that fits in what is left.
    fn check_count(
        &self,
        offset: usize,
        what: &'static str,
        count: usize,
        min_size: usize,
    ) -> Result<(), DecodeError> {
        if count.saturating_mul(min_size) > self.remaining() {
            return Err(DecodeError::BadLength {
                tag: self.tag,
                offset,
                what,
                value: count as i64,
                remaining: self.remaining(),
            });
        }
        Ok(())
    }

    /// A NUL-terminated UTF-8 string.
    fn str(&mut self, what: &'static str) -> Result<&str, DecodeError> {
        let offset = self.pos;
        let rest = &self.buf[offset..];
        let Some(nul) = memchr::memchr(0, rest) else {
            return Err(DecodeError::UnterminatedString {
                tag: self.tag,
                offset,
                what,
            });
        };
        self.pos += nul + 1;
        std::str::from_utf8(&rest[..nul]).map_err(|_| DecodeError::InvalidUtf8 {
            tag: self.tag,
            offset,
            what,
        })
    }

    fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        self.str(what).map(str::to_owned)
    }

    fn relation(&mut self) -> Result<Relation, DecodeError> {
        let id = self.u32("relation id")?;
        let namespace = self.string("relation namespace")?;
        let name = self.string("relation name")?;
        let offset = self.pos;
        let replica_identity = match self.u8("replica identity")? {
            b'd' => ReplicaIdentity::Default,
            b'n' => ReplicaIdentity::Nothing,
            b'f' => ReplicaIdentity::Full,
            b'i' => ReplicaIdentity::Index,
            found => return Err(self.unexpected(offset, "'d', 'n', 'f' or 'i'", found)),
        };
        let offset = self.pos;
        let count = usize::from(self.u16("column count")?);
        // flags, name NUL, type oid, type modifier
        self.check_count(offset, "column count", count, 10)?;
        let mut columns = Vec::with_capacity(count);
        for _ in 0..count {
            let flags = self.u8("column flags")?;
            columns.push(RelationColumn {
                name: self.string("column name")?,
                type_oid: self.u32("column type oid")?,
                type_modifier: self.i32("column type modifier")?,
                is_key: flags & 1 != 0,
            });
        }
        Ok(Relation {
            id,
            namespace,
            name,
            replica_identity,
            columns,
        })
    }

    /// TupleData: Int16 column count, then per column a kind byte and, for
    /// text and binary values, an Int32 length and the bytes.
    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
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

/// Postgres epoch (2000-01-01) microseconds to an RFC 3339 UTC string with
/// microsecond precision, e.g. `2024-05-01T10:20:30.123456Z`.
///
/// Postgres' `infinity` and `-infinity` (`i64::MAX`, `i64::MIN`) come out as
/// those words; years past 9999 get more digits, years before 1 a minus sign.
pub fn format_commit_time(micros: i64) -> String {
    match micros {
        i64::MAX => return "infinity".to_owned(),
        i64::MIN => return "-infinity".to_owned(),
        _ => {}
    }
    let unix_micros = i128::from(micros) + i128::from(POSTGRES_EPOCH_UNIX_MICROS);
    let secs = unix_micros.div_euclid(1_000_000);
    let frac = unix_micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let year = if year < 0 {
        format!("-{:04}", -year)
    } else {
        format!("{year:04}")
    };
    format!(
        "{year}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

/// Proleptic Gregorian date of a count of days since 1970-01-01
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i128) -> (i128, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i128::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test-side encoder of pgoutput messages.
    #[derive(Default)]
    struct Enc(Vec<u8>);

    impl Enc {
        fn tag(t: u8) -> Self {
            Enc(vec![t])
        }
        fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        fn u16(mut self, v: u16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i64(mut self, v: i64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn str(mut self, s: &str) -> Self {
            self.0.extend_from_slice(s.as_bytes());
            self.0.push(0);
            self
        }
        /// `None` = null, `Some(None)` = unchanged toast, `Some(Some(v))` = text.
        fn tuple(mut self, cols: &[Option<Option<&str>>]) -> Self {
            self = self.u16(cols.len() as u16);
            for c in cols {
                self = match c {
                    None => self.u8(b'n'),
                    Some(None) => self.u8(b'u'),
                    Some(Some(v)) => {
                        let mut e = self.u8(b't').i32(v.len() as i32);
                        e.0.extend_from_slice(v.as_bytes());
                        e
                    }
                };
            }
            self
        }
        fn bytes(self) -> Bytes {
            Bytes::from(self.0)
        }
    }

    fn samples() -> Vec<Bytes> {
        vec![
            Enc::tag(b'B')
                .u64(0x16B_3748)
                .i64(768_000_000_123_456)
                .u32(742)
                .bytes(),
            Enc::tag(b'C')
                .u8(0)
                .u64(0x16B_3748)
                .u64(0x16B_3780)
                .i64(1)
                .bytes(),
            Enc::tag(b'O').u64(7).str("origin_a").bytes(),
            Enc::tag(b'R')
                .u32(16_384)
                .str("public")
                .str("items")
                .u8(b'd')
                .u16(2)
                .u8(1)
                .str("id")
                .u32(20)
                .i32(-1)
                .u8(0)
                .str("name")
                .u32(1043)
                .i32(68)
                .bytes(),
            Enc::tag(b'Y').u32(70_000).str("public").str("mood").bytes(),
            Enc::tag(b'I')
                .u32(16_384)
                .u8(b'N')
                .tuple(&[Some(Some("42")), None, Some(None), Some(Some("héllo"))])
                .bytes(),
            Enc::tag(b'U')
                .u32(16_384)
                .u8(b'K')
                .tuple(&[Some(Some("41")), None])
                .u8(b'N')
                .tuple(&[Some(Some("42")), Some(Some("x"))])
                .bytes(),
            Enc::tag(b'U')
                .u32(16_384)
                .u8(b'N')
                .tuple(&[Some(Some("42")), Some(None)])
                .bytes(),
            Enc::tag(b'D')
                .u32(16_384)
                .u8(b'O')
                .tuple(&[Some(Some("42")), Some(Some(""))])
                .bytes(),
            Enc::tag(b'T').u32(2).u8(3).u32(1).u32(2).bytes(),
            Enc::tag(b'M')
                .u8(1)
                .u64(99)
                .str("sluice")
                .i32(5)
                .u8(b'h')
                .u8(b'e')
                .u8(b'l')
                .u8(b'l')
                .u8(b'o')
                .bytes(),
        ]
    }

    #[test]
    fn decodes_begin_and_commit() {
        let s = samples();
        match decode(&s[0]).unwrap() {
            Message::Begin {
                final_lsn,
                commit_time,
                xid,
            } => {
                assert_eq!(final_lsn, Lsn(0x16B_3748));
                assert_eq!(commit_time, 768_000_000_123_456);
                assert_eq!(xid, 742);
            }
            m => panic!("{m:?}"),
        }
        match decode(&s[1]).unwrap() {
            Message::Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_time,
            } => {
                assert_eq!(
                    (flags, commit_lsn, end_lsn),
                    (0, Lsn(0x16B_3748), Lsn(0x16B_3780))
                );
                assert_eq!(commit_time, 1);
            }
            m => panic!("{m:?}"),
        }
        match decode(&s[2]).unwrap() {
            Message::Origin { commit_lsn, name } => {
                assert_eq!((commit_lsn, name.as_str()), (Lsn(7), "origin_a"));
            }
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn decodes_relation_and_type() {
        let s = samples();
        let Message::Relation(rel) = decode(&s[3]).unwrap() else {
            panic!()
        };
        assert_eq!(
            rel,
            Relation {
                id: 16_384,
                namespace: "public".into(),
                name: "items".into(),
                replica_identity: ReplicaIdentity::Default,
                columns: vec![
                    RelationColumn {
                        name: "id".into(),
                        type_oid: 20,
                        type_modifier: -1,
                        is_key: true
                    },
                    RelationColumn {
                        name: "name".into(),
                        type_oid: 1043,
                        type_modifier: 68,
                        is_key: false
                    },
                ],
            }
        );
        match decode(&s[4]).unwrap() {
            Message::Type {
                id,
                namespace,
                name,
            } => assert_eq!(
                (id, namespace.as_str(), name.as_str()),
                (70_000, "public", "mood")
            ),
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn decodes_insert_zero_copy() {
        let s = samples();
        let Message::Insert { relation_id, new } = decode(&s[5]).unwrap() else {
            panic!()
        };
        assert_eq!(relation_id, 16_384);
        assert_eq!(new.len(), 4);
        assert!(!new.is_empty());
        assert_eq!(new.kind(0), ColumnKind::Text);
        assert_eq!(new.value(0), Some(&b"42"[..]));
        assert_eq!(new.kind(1), ColumnKind::Null);
        assert_eq!(new.value(1), None);
        assert_eq!(new.kind(2), ColumnKind::Unchanged);
        assert_eq!(new.value(2), None);
        assert_eq!(new.value(3), Some("héllo".as_bytes()));
        assert_eq!(new.value_bytes(3).unwrap(), "héllo".as_bytes());
        assert_eq!(new.kind(4), ColumnKind::Null);
        assert_eq!(new.value(4), None);
        // The tuple points into the payload.
        let payload = s[5].as_ptr_range();
        assert!(payload.contains(&new.data.as_ptr()));
    }

    #[test]
    fn decodes_update_delete_truncate_message() {
        let s = samples();
        match decode(&s[6]).unwrap() {
            Message::Update {
                relation_id: 16_384,
                old: Some(OldTuple::Key(old)),
                new,
            } => {
                assert_eq!(old.value(0), Some(&b"41"[..]));
                assert_eq!(old.kind(1), ColumnKind::Null);
                assert_eq!(new.value(1), Some(&b"x"[..]));
            }
            m => panic!("{m:?}"),
        }
        match decode(&s[7]).unwrap() {
            Message::Update { old: None, new, .. } => {
                assert_eq!(new.kind(1), ColumnKind::Unchanged)
            }
            m => panic!("{m:?}"),
        }
        match decode(&s[8]).unwrap() {
            Message::Delete {
                old: OldTuple::Full(old),
                ..
            } => {
                assert_eq!(old.value(1), Some(&b""[..]));
                assert_eq!(old.kind(1), ColumnKind::Text);
            }
            m => panic!("{m:?}"),
        }
        match decode(&s[9]).unwrap() {
            Message::Truncate {
                relation_ids,
                cascade,
                restart_identity,
            } => {
                assert_eq!(relation_ids, vec![1, 2]);
                assert!(cascade && restart_identity);
            }
            m => panic!("{m:?}"),
        }
        match decode(&s[10]).unwrap() {
            Message::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => {
                assert!(transactional);
                assert_eq!((lsn, prefix.as_str()), (Lsn(99), "sluice"));
                assert_eq!(&content[..], b"hello");
            }
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn errors_name_tag_and_offset() {
        let err = decode(&Bytes::new()).unwrap_err();
        assert!(matches!(err, DecodeError::Empty));

        let err = decode(&Bytes::from_static(b"Z")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown pgoutput message tag 'Z' at byte 0"
        );

        let err = decode(&Bytes::from_static(b"S\0\0\0\x01\x01")).unwrap_err();
        assert!(matches!(err, DecodeError::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("Stream Start ('S')"), "{err}");
        let err = decode(&Bytes::from_static(b"P")).unwrap_err();
        assert!(err.to_string().contains("two-phase"), "{err}");

        let err = decode(&Bytes::from_static(b"B\0\0\0")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pgoutput Begin ('B') message truncated at byte 1: final LSN needs 8 bytes, 3 left"
        );
        assert_eq!(err.tag(), Some(Tag(b'B')));

        // Bad column kind at byte 8 (tag, relid 4, 'N', count 2).
        let bad = Enc::tag(b'I').u32(1).u8(b'N').u16(1).u8(b'x').bytes();
        let err = decode(&bad).unwrap_err();
        assert!(
            matches!(err, DecodeError::BadColumnKind { offset: 8, .. }),
            "{err}"
        );
        assert_eq!(err.offset(), 8);

        // Value length larger than what is left.
        let bad = Enc::tag(b'I')
            .u32(1)
            .u8(b'N')
            .u16(1)
            .u8(b't')
            .i32(100)
            .u8(b'a');
        let err = decode(&bad.bytes()).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::BadLength {
                    offset: 9,
                    value: 100,
                    ..
                }
            ),
            "{err}"
        );
        let bad = Enc::tag(b'I').u32(1).u8(b'N').u16(1).u8(b't').i32(-1);
        assert!(matches!(
            decode(&bad.bytes()),
            Err(DecodeError::BadLength { value: -1, .. })
        ));

        // Column count larger than what is left.
        let bad = Enc::tag(b'I').u32(1).u8(b'N').u16(u16::MAX).u8(b'n');
        let err = decode(&bad.bytes()).unwrap_err();
        assert!(
            matches!(err, DecodeError::BadLength { offset: 6, .. }),
            "{err}"
        );
        let bad = Enc::tag(b'T').u32(u32::MAX).u8(0).u32(1);
        assert!(matches!(
            decode(&bad.bytes()),
            Err(DecodeError::BadLength { .. })
        ));

        // Wrong markers.
        let bad = Enc::tag(b'I').u32(1).u8(b'K').u16(0);
        let err = decode(&bad.bytes()).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::UnexpectedByte {
                    offset: 5,
                    found: Byte(b'K'),
                    ..
                }
            ),
            "{err}"
        );
        let bad = Enc::tag(b'D').u32(1).u8(b'N').u16(0);
        assert!(matches!(
            decode(&bad.bytes()),
            Err(DecodeError::UnexpectedByte { .. })
        ));
        let bad = Enc::tag(b'U').u32(1).u8(b'K').u16(0).u8(b'K').u16(0);
        assert!(matches!(
            decode(&bad.bytes()),
            Err(DecodeError::UnexpectedByte { offset: 8, .. })
        ));

        // Strings.
        let bad = Enc::tag(b'O').u64(1).u8(b'a');
        assert!(matches!(
            decode(&bad.bytes()),
            Err(DecodeError::UnterminatedString { offset: 9, .. })
        ));
        let bad = Enc::tag(b'O').u64(1).u8(0xff).u8(0);
        let err = decode(&bad.bytes()).unwrap_err();
        assert!(
            matches!(err, DecodeError::InvalidUtf8 { offset: 9, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("origin name"), "{err}");

        // Bad replica identity, trailing bytes.
        let bad = Enc::tag(b'R').u32(1).str("").str("t").u8(b'x').u16(0);
        assert!(matches!(
            decode(&bad.bytes()),
            Err(DecodeError::UnexpectedByte { offset: 8, .. })
        ));
        let bad = Enc::tag(b'I').u32(1).u8(b'N').u16(0).u8(0);
        let err = decode(&bad.bytes()).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::TrailingBytes {
                    offset: 8,
                    remaining: 1,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn every_strict_prefix_is_an_error() {
        for msg in samples() {
            decode(&msg).unwrap();
            for n in 0..msg.len() {
                assert!(decode(&msg.slice(..n)).is_err(), "prefix {n} of {msg:?}");
            }
        }
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
    }

    #[test]
    fn never_panics_on_random_or_mutated_input() {
        let seed = 0x5EED_1234_ABCD_0001;
        println!("seed {seed:#x}");
        let mut rng = XorShift(seed);
        let tags = b"BCORYIUDTMSEcAbPKrpZ";
        for _ in 0..20_000 {
            let len = (rng.next() % 48) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if let Some(first) = buf.first_mut() {
                *first = tags[(rng.next() % tags.len() as u64) as usize];
            }
            let _ = decode(&Bytes::from(buf));
        }
        let samples = samples();
        for _ in 0..50_000 {
            let base = &samples[(rng.next() % samples.len() as u64) as usize];
            let mut buf = base.to_vec();
            for _ in 0..1 + rng.next() % 3 {
                let i = (rng.next() % buf.len() as u64) as usize;
                buf[i] = match rng.next() % 4 {
                    0 => 0,
                    1 => 0xff,
                    _ => rng.next() as u8,
                };
            }
            if rng.next() % 4 == 0 {
                buf.truncate((rng.next() % buf.len() as u64) as usize);
            }
            if let Ok(Message::Insert { new, .. }) = decode(&Bytes::from(buf)) {
                for i in 0..new.len() + 1 {
                    let _ = (new.kind(i), new.value(i), new.value_bytes(i));
                }
            }
        }
    }

    #[test]
    fn formats_commit_time() {
        assert_eq!(format_commit_time(0), "2000-01-01T00:00:00.000000Z");
        // 2024-05-01T10:20:30.123456Z = Unix 1714558830.123456
        let micros = 1_714_558_830_123_456 - POSTGRES_EPOCH_UNIX_MICROS;
        assert_eq!(format_commit_time(micros), "2024-05-01T10:20:30.123456Z");
        assert_eq!(format_commit_time(-1), "1999-12-31T23:59:59.999999Z");
        assert_eq!(
            format_commit_time(-POSTGRES_EPOCH_UNIX_MICROS),
            "1970-01-01T00:00:00.000000Z"
        );
        // Leap day.
        let micros = 951_782_400_000_000 - POSTGRES_EPOCH_UNIX_MICROS;
        assert_eq!(format_commit_time(micros), "2000-02-29T00:00:00.000000Z");
        assert_eq!(format_commit_time(i64::MAX), "infinity");
        assert_eq!(format_commit_time(i64::MIN), "-infinity");
        assert_eq!(
            format_commit_time(i64::MAX - 1),
            "294277-01-09T04:00:54.775806Z"
        );
        assert_eq!(
            format_commit_time(i64::MIN + 1),
            "-290278-12-22T19:59:05.224193Z"
        );
    }
}
