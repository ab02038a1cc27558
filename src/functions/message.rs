//! The message a function sees, built from a change.
//!
//! - `action`: `insert`, `update`, `delete` or `read`.
//! - `record`: the row. For deletes, the old row (`REPLICA IDENTITY FULL`) or
//!   its key. Values as in documents, except that Luau numbers are doubles:
//!   an integer beyond 2^53 arrives as its text. An unchanged TOAST value
//!   that the change does not carry is absent.
//! - `changes`: for updates whose old row the WAL carries (`REPLICA IDENTITY
//!   FULL`), the old values of the columns that changed; nil otherwise.
//! - `metadata`: `table_schema`, `table_name`, `commit_timestamp` (RFC 3339),
//!   `commit_lsn`, `commit_idx` (the change's place in its transaction),
//!   `idempotency_key` (the same for a change read twice), `database_name`,
//!   `sink`, and `transaction_annotations` when the application set them.

use std::collections::HashMap;
use std::sync::Arc;

use mlua::{Lua, Table, Value};

use super::json::{number_to_lua, to_lua, MAX_EXACT_INTEGER};
use super::Args;
use crate::pipeline::change::{Change, Op, RelationInfo};
use crate::postgres::pgoutput::{format_commit_time, ColumnKind, ReplicaIdentity, Tuple};
use crate::postgres::types::{write_json, TypeKind};

/// Builds messages, keeping the Lua strings of column names per relation.
pub struct MessageBuilder {
    database: Arc<str>,
    /// Column names as Lua strings, by relation (a new description of a
    /// relation is a new `Arc`).
    columns: HashMap<usize, (Arc<RelationInfo>, Vec<mlua::String>)>,
    scratch: Vec<u8>,
}

impl MessageBuilder {
    pub fn new(database: &str) -> MessageBuilder {
        MessageBuilder {
            database: Arc::from(database),
            columns: HashMap::new(),
            scratch: Vec::new(),
        }
    }

    /// The arguments of a call for `change`, on its way to `sink`.
    pub fn args(&mut self, lua: &Lua, change: &Change, sink: Option<&str>) -> mlua::Result<Args> {
        let action = match change.op {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Read => "read",
            Op::Truncate => "truncate",
        };
        let names = self.names(lua, &change.rel)?;
        let row = match change.op {
            Op::Delete => change.old.as_ref(),
            _ => change.new.as_ref(),
        };
        let record = lua.create_table_with_capacity(0, names.len())?;
        if let Some(row) = row {
            let fallback = match change.op {
                Op::Delete => None,
                _ => change.old.as_ref(),
            };
            for (i, column) in change.rel.columns.iter().enumerate() {
                let (tuple, at) = match row.kind(i) {
                    ColumnKind::Unchanged => match fallback {
                        Some(old) if matches!(old.kind(i), ColumnKind::Text) => (old, i),
                        _ => continue,
                    },
                    _ => (row, i),
                };
                let value = self.value(lua, &column.kind, tuple, at)?;
                record.raw_set(names[i].clone(), value)?;
            }
        }
        let changes = match (change.op, change.old.as_ref(), change.new.as_ref()) {
            (Op::Update, Some(old), Some(new)) if is_full(&change.rel, old) => {
                let changed = lua.create_table()?;
                for (i, column) in change.rel.columns.iter().enumerate() {
                    let differs = match (new.kind(i), old.kind(i)) {
                        (ColumnKind::Unchanged, _) => false,
                        (a, b) if a != b => true,
                        _ => new.value(i) != old.value(i),
                    };
                    if differs {
                        let value = self.value(lua, &column.kind, old, i)?;
                        changed.raw_set(names[i].clone(), value)?;
                    }
                }
                Value::Table(changed)
            }
            _ => Value::Nil,
        };
        let metadata = self.metadata(lua, change, sink)?;
        Ok((
            Value::String(lua.create_string(action)?),
            Value::Table(record),
            changes,
            Value::Table(metadata),
        ))
    }

    fn names(&mut self, lua: &Lua, rel: &Arc<RelationInfo>) -> mlua::Result<Vec<mlua::String>> {
        let key = Arc::as_ptr(rel) as usize;
        if let Some((known, names)) = self.columns.get(&key) {
            if Arc::ptr_eq(known, rel) {
                return Ok(names.clone());
            }
        }
        let names = rel
            .columns
            .iter()
            .map(|c| lua.create_string(&c.name))
            .collect::<mlua::Result<Vec<_>>>()?;
        self.columns.insert(key, (rel.clone(), names.clone()));
        Ok(names)
    }

    /// Column `i` of `tuple` as a Lua value.
    fn value(
        &mut self,
        lua: &Lua,
        kind: &TypeKind,
        tuple: &Tuple,
        i: usize,
    ) -> mlua::Result<Value> {
        let Some(text) = tuple.value(i) else {
            return Ok(Value::Nil);
        };
        if tuple.kind(i) != ColumnKind::Text {
            return Ok(Value::String(lua.create_string(text)?));
        }
        Ok(match kind {
            TypeKind::Bool => Value::Boolean(text == b"t"),
            TypeKind::Text => Value::String(lua.create_string(text)?),
            TypeKind::Integer => {
                let s = std::str::from_utf8(text).unwrap_or_default();
                match s.parse::<i64>() {
                    Ok(v) if (v as f64).abs() <= MAX_EXACT_INTEGER => Value::Number(v as f64),
                    _ => Value::String(lua.create_string(text)?),
                }
            }
            TypeKind::Float | TypeKind::Numeric => {
                let s = std::str::from_utf8(text).unwrap_or_default();
                number_to_lua(lua, s.parse::<f64>().ok(), s)?
            }
            other => {
                self.scratch.clear();
                write_json(other, text, &mut self.scratch);
                let plain_string = self.scratch.len() >= 2
                    && self.scratch[0] == b'"'
                    && !self.scratch.contains(&b'\\');
                if plain_string {
                    let inner = &self.scratch[1..self.scratch.len() - 1];
                    Value::String(lua.create_string(inner)?)
                } else {
                    match serde_json::from_slice::<serde_json::Value>(&self.scratch) {
                        Ok(value) => to_lua(lua, &value)?,
                        Err(_) => Value::String(lua.create_string(text)?),
                    }
                }
            }
        })
    }

    fn metadata(&self, lua: &Lua, change: &Change, sink: Option<&str>) -> mlua::Result<Table> {
        let metadata = lua.create_table_with_capacity(0, 9)?;
        metadata.raw_set("table_schema", change.rel.name.schema.as_str())?;
        metadata.raw_set("table_name", change.rel.name.table.as_str())?;
        metadata.raw_set(
            "commit_timestamp",
            format_commit_time(change.commit_time).as_str(),
        )?;
        metadata.raw_set("commit_lsn", change.commit_lsn.to_string().as_str())?;
        metadata.raw_set("commit_idx", change.seq)?;
        metadata.raw_set(
            "idempotency_key",
            format!("{:016X}-{}", change.commit_lsn.0, change.seq).as_str(),
        )?;
        metadata.raw_set("database_name", &*self.database)?;
        if let Some(sink) = sink {
            metadata.raw_set("sink", sink)?;
        }
        if let Some(annotations) = &change.annotations {
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(annotations) {
                metadata.raw_set("transaction_annotations", to_lua(lua, &value)?)?;
            }
        }
        Ok(metadata)
    }
}

/// Whether `old` is a whole old row (`REPLICA IDENTITY FULL`), not a key.
fn is_full(rel: &RelationInfo, _old: &Tuple) -> bool {
    rel.replica_identity == ReplicaIdentity::Full
}
