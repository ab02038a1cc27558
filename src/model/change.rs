//! A decoded change and the relation it is of: what the stages pass on, from
//! the decoder to the shards.

use std::sync::Arc;

use crate::lsn::Lsn;
use crate::model::ident::TableName;
use crate::model::row::{Oid, ReplicaIdentity, Tuple, TypeKind};

/// A column of a relation as the decoder knows it.
#[derive(Debug, Clone)]
pub struct ColumnInfo {
    pub name: String,
    pub type_oid: Oid,
    pub kind: TypeKind,
    /// Part of the replica identity (the primary key by default).
    pub is_key: bool,
}

/// A relation (table) as last described by the stream. A new description
/// (after `ALTER TABLE`) is a new `Arc`, so stages can cache per pointer.
#[derive(Debug)]
pub struct RelationInfo {
    pub id: Oid,
    pub name: TableName,
    /// `schema.table`.
    pub qualified: Arc<str>,
    pub columns: Vec<ColumnInfo>,
    pub replica_identity: ReplicaIdentity,
}

impl RelationInfo {
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// The position of the column the table's setting `field` names; a
    /// configuration error when the table no longer has it (dropped or
    /// renamed since sluice started): going on would index what the setting
    /// meant to leave out, or rows it meant to filter.
    pub fn require_column(&self, field: &str, column: &str) -> crate::error::Result<usize> {
        self.column_index(column).ok_or_else(|| {
            let columns: Vec<&str> = self.columns.iter().map(|c| c.name.as_str()).collect();
            crate::error::Error::new(
                crate::error::ErrorKind::Config,
                format!(
                    "table {}: `{field}` names column `{column}`, which the table no longer has \
                     (its columns: {}); sluice stops rather than index what the setting meant \
                     to leave out",
                    self.qualified,
                    columns.join(", ")
                ),
            )
            .hint("fix the table's settings in the configuration for the table as it is now, then start sluice again")
        })
    }
}

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
    /// The row as a backfill read it.
    Read,
}

/// Which sinks a batch is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Scope {
    /// Every sink: the replication stream.
    #[default]
    All,
    /// One sink only: rows a backfill of that sink read. The sink commits as
    /// soon as it passed `commit_above`, so the backfill learns early that
    /// they are durable.
    Backfill { sink: usize, commit_above: Lsn },
}

impl Scope {
    /// Whether sink number `sink` gets the batch.
    pub fn includes(self, sink: usize) -> bool {
        match self {
            Scope::All => true,
            Scope::Backfill { sink: only, .. } => only == sink,
        }
    }
}

/// One decoded change.
#[derive(Debug, Clone)]
pub struct Change {
    pub op: Op,
    pub rel: Arc<RelationInfo>,
    /// The new row (insert, update).
    pub new: Option<Tuple>,
    /// The old key (replica identity default/index) or old row (full).
    pub old: Option<Tuple>,
    /// LSN of the commit of the change's transaction.
    pub commit_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 UTC.
    pub commit_time: i64,
    /// Position of the change within its transaction.
    pub seq: u32,
    /// The transaction's id as the stream gives it (32 bits), for reads of
    /// the table that must see the change (see `postgres::snapshot`).
    pub xid: u32,
    /// An update with unchanged TOAST columns while a backfill reads the
    /// table: the backfill may leave the row's document to this change, so
    /// the missing columns are read from the table (see the router).
    pub fill_unchanged: bool,
    /// A row a backfill of exact rows read, or found gone (a retry of
    /// parked function calls): the functions decide afresh where its
    /// document goes, and it leaves every other index it may be in.
    pub retry: bool,
    /// Annotations the application set on the change's transaction (a JSON
    /// object, see `ANNOTATIONS_PREFIX`), for functions' metadata.
    pub annotations: Option<Arc<str>>,
}

/// The prefix of the transactional message an application writes to annotate
/// the rest of its transaction: `SELECT pg_logical_emit_message(true,
/// 'sluice.annotations', '{"user": "ana"}')`. The changes after it in the
/// transaction carry the object to functions as `metadata.transaction_annotations`.
pub const ANNOTATIONS_PREFIX: &str = "sluice.annotations";

/// A change with the document it writes or removes, as the router found
/// it: the index, the id, and how the document is built (`shape`, the
/// pipeline's business; functions change the rest).
#[derive(Debug, Clone)]
pub struct Routed<S> {
    pub change: Change,
    pub action: RouteAction,
    pub index: Arc<str>,
    pub shape: S,
    pub id: String,
    /// The document's routing value, when its table has one.
    pub routing: Option<Box<str>>,
    /// The first change to this document in its batch is an insert.
    pub fresh: bool,
}

/// Whether a routed change writes or removes its document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteAction {
    Upsert,
    Delete,
}

/// Relations and rows for unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::model::row::{ColumnKind, ColumnValue};

    /// Stands for an unchanged TOAST value in `tuple`.
    pub const UNCHANGED: &str = "<unchanged>";

    /// `public.<table>` with these (name, type OID) columns; `id` is the key.
    pub fn relation(table: &str, columns: &[(&str, u32)]) -> RelationInfo {
        RelationInfo {
            id: 1,
            name: TableName {
                schema: "public".into(),
                table: table.into(),
            },
            qualified: Arc::from(format!("public.{table}")),
            columns: columns
                .iter()
                .map(|&(name, oid)| ColumnInfo {
                    name: name.into(),
                    type_oid: oid,
                    kind: TypeKind::builtin_or_text(oid),
                    is_key: name == "id",
                })
                .collect(),
            replica_identity: ReplicaIdentity::Default,
        }
    }

    /// A row of values as text: NULL as `None`, `UNCHANGED` for an unchanged
    /// TOAST value.
    pub fn tuple(values: &[Option<&str>]) -> Tuple {
        let mut data = Vec::new();
        let columns = values
            .iter()
            .map(|value| {
                let (kind, text) = match *value {
                    Some(UNCHANGED) => (ColumnKind::Unchanged, ""),
                    Some(text) => (ColumnKind::Text, text),
                    None => (ColumnKind::Null, ""),
                };
                let column = ColumnValue {
                    kind,
                    start: data.len() as u32,
                    len: text.len() as u32,
                };
                data.extend_from_slice(text.as_bytes());
                column
            })
            .collect();
        Tuple {
            data: data.into(),
            columns,
        }
    }
}
