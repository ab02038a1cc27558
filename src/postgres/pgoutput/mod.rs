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
//!
//! Layout: the [`Message`] type and [`decode`] (here), the bounds-checked
//! byte parser (`parser.rs`), the parsing of TupleData into [`Tuple`] (`tuple.rs`), Relation
//! messages (`relation.rs`), [`DecodeError`] (`error.rs`) and commit times
//! (`commit_time.rs`).

mod commit_time;
mod error;
mod parser;
mod relation;
#[cfg(test)]
mod tests;
mod tuple;

use bytes::Bytes;

use crate::lsn::Lsn;

pub use self::commit_time::{format_commit_time, POSTGRES_EPOCH_UNIX_MICROS};
pub use self::error::{Byte, DecodeError, Tag};
use self::parser::Parser;
pub use self::relation::{Relation, RelationColumn};
pub use crate::model::row::{ColumnKind, ColumnValue, Oid, OldTuple, ReplicaIdentity, Tuple};

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

/// Decode one pgoutput message (one XLogData payload). Tuples and message
/// contents are slices of `buf`, not copies.
pub fn decode(buf: &Bytes) -> Result<Message, DecodeError> {
    let Some(&tag) = buf.first() else {
        return Err(DecodeError::Empty);
    };
    if u32::try_from(buf.len()).is_err() {
        return Err(DecodeError::TooLarge { len: buf.len() });
    }
    let mut r = Parser {
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
