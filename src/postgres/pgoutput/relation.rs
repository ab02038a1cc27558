//! Relation messages: a published table's schema and replica identity.

use super::error::DecodeError;
use super::parser::Parser;
use crate::model::row::{Oid, ReplicaIdentity};

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

impl Parser<'_> {
    pub(super) fn relation(&mut self) -> Result<Relation, DecodeError> {
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
}
