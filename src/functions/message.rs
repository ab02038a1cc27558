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

use mlua::{Either, Function, Lua, Table, Value, Variadic};

use super::json::{to_lua, MAX_EXACT_INTEGER};
use super::{Args, Input};
use crate::model::change::{Change, Op, RelationInfo};
use crate::postgres::pgoutput::{format_commit_time, ColumnKind, ReplicaIdentity, Tuple};
use crate::postgres::types::{write_json, TypeKind};

/// Relations with more columns than this take the general path: a Lua
/// function has at most 255 registers.
const MAX_WRAPPED_COLUMNS: usize = 200;

/// Builds messages, keeping per relation what it can reuse.
pub struct MessageBuilder {
    database: Arc<str>,
    /// Column names as Lua strings, by relation (a new description of a
    /// relation is a new `Arc`).
    columns: HashMap<usize, (Arc<RelationInfo>, Vec<mlua::String>)>,
    /// Per relation and function: a Lua function that builds the record and
    /// metadata from the row's values and calls the user's function, so a
    /// call crosses into Lua once (see `wrapper_code`).
    wrappers: HashMap<String, HashMap<usize, Wrapper>>,
    /// The metadata every change of one transaction, table and sink shares.
    /// With the sink it was made for: compared, not copied, per change.
    base: Option<(BaseKey, Option<String>, Table)>,
    scratch: Vec<u8>,
    /// Values converted to text (timestamps, ...), for the call's arguments.
    arena: Vec<u8>,
    /// Arguments whose text is in `arena`: (argument, start, end).
    in_arena: Vec<(usize, usize, usize)>,
}

/// Which transaction and relation a metadata base belongs to.
#[derive(PartialEq, Eq)]
struct BaseKey {
    lsn: u64,
    time: i64,
    rel: usize,
    annotations: Option<usize>,
}

/// The relation a wrapper was made for (kept alive, so the pointer stays
/// its own) and the wrapper.
type Wrapper = (Option<Arc<RelationInfo>>, Function);

/// A change on its way into a function: the message is built while calling.
pub struct ChangeInput<'a> {
    pub builder: &'a mut MessageBuilder,
    pub lua: &'a Lua,
    pub change: &'a Change,
    pub sink: Option<&'a str>,
}

/// One column's argument of a wrapper: text (or nil), a number or a boolean,
/// pushed onto Lua's stack without a registry reference.
type Arg<'a> = Either<Option<&'a str>, Either<f64, bool>>;

/// The arguments of a wrapper: action, metadata base, commit_idx, changes,
/// the values that are Lua tables, then one value per column. (For
/// relations too wide to wrap: action, record, unused, changes, metadata.)
type Wrapped<'a> = (&'a str, Value, u32, Value, Value, Variadic<Arg<'a>>);

/// The wrapper of relations too wide for one with a parameter per column.
const GENERAL_WRAPPER: &str = "local fn = ...
return function(action, record, _, changes, metadata) return fn(action, record, changes, metadata) end";

impl<'a> Input for ChangeInput<'a> {
    type Ready = Wrapped<'a>;
    const CALLS_FROM_LUA: bool = true;

    fn prepare(self, name: &str, function: &Function) -> mlua::Result<(Function, Wrapped<'a>)> {
        let ChangeInput {
            builder,
            lua,
            change,
            sink,
        } = self;
        if change.rel.columns.len() > MAX_WRAPPED_COLUMNS {
            let wrapper = builder.wrapper(lua, None, name, function)?;
            let (_, record, changes, metadata) = builder.args(lua, change, sink)?;
            return Ok((
                wrapper,
                (
                    action_name(change.op),
                    record,
                    0,
                    changes,
                    metadata,
                    Variadic::new(),
                ),
            ));
        }
        let wrapper = builder.wrapper(lua, Some(&change.rel), name, function)?;
        let args = builder.wrapped(lua, change, sink)?;
        Ok((wrapper, args))
    }
}

impl MessageBuilder {
    pub fn new(database: &str) -> MessageBuilder {
        MessageBuilder {
            database: Arc::from(database),
            columns: HashMap::new(),
            wrappers: HashMap::new(),
            base: None,
            scratch: Vec::new(),
            arena: Vec::new(),
            in_arena: Vec::new(),
        }
    }

    /// The wrapper of `function` for `rel` (or the general one), compiled
    /// the first time.
    fn wrapper(
        &mut self,
        lua: &Lua,
        rel: Option<&Arc<RelationInfo>>,
        name: &str,
        function: &Function,
    ) -> mlua::Result<Function> {
        // By function name, then relation (by pointer, 0 for the general
        // wrapper): looking one up allocates nothing.
        let at = rel.map_or(0, |r| Arc::as_ptr(r) as usize);
        if let Some((known, wrapper)) = self.wrappers.get(name).and_then(|w| w.get(&at)) {
            if rel.is_none_or(|r| known.as_ref().is_some_and(|k| Arc::ptr_eq(k, r))) {
                return Ok(wrapper.clone());
            }
        }
        let code = match rel {
            Some(rel) => wrapper_code(rel),
            None => GENERAL_WRAPPER.to_owned(),
        };
        let make: Function = lua.load(code).set_name("=sluice message").into_function()?;
        let wrapper: Function = make.call(function.clone())?;
        self.wrappers
            .entry(name.to_owned())
            .or_default()
            .insert(at, (rel.cloned(), wrapper.clone()));
        Ok(wrapper)
    }

    /// The wrapper's arguments for `change`.
    fn wrapped<'a>(
        &'a mut self,
        lua: &Lua,
        change: &'a Change,
        sink: Option<&str>,
    ) -> mlua::Result<Wrapped<'a>> {
        let base = self.base(lua, change, sink)?;
        let row = match change.op {
            Op::Delete => change.old.as_ref(),
            _ => change.new.as_ref(),
        };
        let fallback = match change.op {
            Op::Delete => None,
            _ => change.old.as_ref(),
        };
        self.arena.clear();
        self.in_arena.clear();
        let mut values: Vec<Arg<'a>> = Vec::with_capacity(change.rel.columns.len());
        let mut extra: Option<Table> = None;
        let nil = Either::Left(None);
        for (i, column) in change.rel.columns.iter().enumerate() {
            let Some(row) = row else {
                values.push(nil);
                continue;
            };
            let tuple = match row.kind(i) {
                ColumnKind::Unchanged => match fallback {
                    Some(old) if matches!(old.kind(i), ColumnKind::Text) => old,
                    _ => {
                        values.push(nil);
                        continue;
                    }
                },
                _ => row,
            };
            let Some(text) = tuple.value(i) else {
                values.push(nil);
                continue;
            };
            let textual = tuple.kind(i) == ColumnKind::Text;
            let number = match &column.kind {
                kind @ (TypeKind::Integer | TypeKind::Float | TypeKind::Numeric) if textual => {
                    lua_number(kind, text)
                }
                _ => None,
            };
            let arg = match (&column.kind, number) {
                (_, Some(n)) => Either::Right(Either::Left(n)),
                (TypeKind::Json | TypeKind::Array { .. }, _) if textual => {
                    let value = self.value(lua, &column.kind, tuple, i)?;
                    let table = match &extra {
                        Some(t) => t.clone(),
                        None => {
                            let t = lua.create_table()?;
                            extra = Some(t.clone());
                            t
                        }
                    };
                    table.raw_set(i + 1, value)?;
                    nil
                }
                (TypeKind::Bool, _) if textual => Either::Right(Either::Right(text == b"t")),
                (kind, _) if textual && needs_text(kind) => {
                    self.scratch.clear();
                    write_json(kind, text, &mut self.scratch);
                    let start = self.arena.len();
                    let plain = self.scratch.len() >= 2
                        && self.scratch[0] == b'"'
                        && !self.scratch.contains(&b'\\');
                    if plain {
                        // Timestamps and the like: no escapes to undo.
                        let end = self.scratch.len() - 1;
                        self.arena.extend_from_slice(&self.scratch[1..end]);
                    } else {
                        match serde_json::from_slice::<String>(&self.scratch) {
                            Ok(s) => self.arena.extend_from_slice(s.as_bytes()),
                            Err(_) => self
                                .arena
                                .extend_from_slice(String::from_utf8_lossy(text).as_bytes()),
                        }
                    }
                    self.in_arena.push((i, start, self.arena.len()));
                    nil
                }
                // Text, numbers a double cannot hold, binary values.
                _ => match std::str::from_utf8(text) {
                    Ok(text) => Either::Left(Some(text)),
                    Err(_) => {
                        let start = self.arena.len();
                        self.arena
                            .extend_from_slice(String::from_utf8_lossy(text).as_bytes());
                        self.in_arena.push((i, start, self.arena.len()));
                        nil
                    }
                },
            };
            values.push(arg);
        }
        let changes = self.changes(lua, change)?;
        let arena = &self.arena;
        for &(i, start, end) in &self.in_arena {
            values[i] = Either::Left(std::str::from_utf8(&arena[start..end]).ok());
        }
        Ok((
            action_name(change.op),
            Value::Table(base),
            change.seq,
            changes,
            extra.map(Value::Table).unwrap_or(Value::Nil),
            Variadic::from(values),
        ))
    }

    /// The metadata of `change` that its transaction, table and sink share.
    fn base(&mut self, lua: &Lua, change: &Change, sink: Option<&str>) -> mlua::Result<Table> {
        let key = BaseKey {
            lsn: change.commit_lsn.0,
            time: change.commit_time,
            rel: Arc::as_ptr(&change.rel) as usize,
            annotations: change
                .annotations
                .as_ref()
                .map(|a| Arc::as_ptr(a) as *const u8 as usize),
        };
        if let Some((known, known_sink, base)) = &self.base {
            if *known == key && known_sink.as_deref() == sink {
                return Ok(base.clone());
            }
        }
        let base = self.metadata(lua, change, sink)?;
        base.raw_set(
            "key_prefix",
            format!("{:016X}-", change.commit_lsn.0).as_str(),
        )?;
        self.base = Some((key, sink.map(str::to_owned), base.clone()));
        Ok(base)
    }

    /// The arguments of a call for `change`, on its way to `sink`, as
    /// tables built one field at a time (see `ChangeInput` for the fast way).
    pub fn args(&mut self, lua: &Lua, change: &Change, sink: Option<&str>) -> mlua::Result<Args> {
        let action = action_name(change.op);
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
        let changes = self.changes(lua, change)?;
        let metadata = self.metadata(lua, change, sink)?;
        let key = format!("{:016X}-{}", change.commit_lsn.0, change.seq);
        metadata.raw_set("commit_idx", change.seq)?;
        metadata.raw_set("idempotency_key", key.as_str())?;
        Ok((
            Value::String(lua.create_string(action)?),
            Value::Table(record),
            changes,
            Value::Table(metadata),
        ))
    }

    /// The old values of the columns an update changed, when the WAL
    /// carries the old row.
    fn changes(&mut self, lua: &Lua, change: &Change) -> mlua::Result<Value> {
        let (Op::Update, Some(old), Some(new)) =
            (change.op, change.old.as_ref(), change.new.as_ref())
        else {
            return Ok(Value::Nil);
        };
        if change.rel.replica_identity != ReplicaIdentity::Full {
            return Ok(Value::Nil);
        }
        let names = self.names(lua, &change.rel)?;
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
        Ok(Value::Table(changed))
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
            TypeKind::Integer | TypeKind::Float | TypeKind::Numeric => {
                match lua_number(kind, text) {
                    Some(n) => Value::Number(n),
                    None => Value::String(lua.create_string(text)?),
                }
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

    /// The metadata of `change` but `commit_idx` and `idempotency_key`.
    fn metadata(&self, lua: &Lua, change: &Change, sink: Option<&str>) -> mlua::Result<Table> {
        let metadata = lua.create_table_with_capacity(0, 10)?;
        metadata.raw_set("table_schema", change.rel.name.schema.as_str())?;
        metadata.raw_set("table_name", change.rel.name.table.as_str())?;
        metadata.raw_set(
            "commit_timestamp",
            format_commit_time(change.commit_time).as_str(),
        )?;
        metadata.raw_set("commit_lsn", change.commit_lsn.to_string().as_str())?;
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

fn action_name(op: Op) -> &'static str {
    match op {
        Op::Insert => "insert",
        Op::Update => "update",
        Op::Delete => "delete",
        Op::Read => "read",
        Op::Truncate => "truncate",
    }
}

/// A number column's value as a Lua number, unless a double cannot hold it:
/// an integer beyond 2^53 (a whole numeric too, unless written with a
/// fraction or exponent), NaN and the infinities stay text.
fn lua_number(kind: &TypeKind, text: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(text).ok()?;
    let n = match kind {
        TypeKind::Integer => text.parse::<i64>().ok()? as f64,
        _ => text.parse::<f64>().ok()?,
    };
    let whole = matches!(kind, TypeKind::Integer) || !text.contains(['.', 'e', 'E']);
    (n.is_finite() && (!whole || n.abs() <= MAX_EXACT_INTEGER)).then_some(n)
}

/// Whether a column's text must be rewritten before Lua takes it as a
/// string (timestamps to RFC 3339, bytea to base64, ...).
fn needs_text(kind: &TypeKind) -> bool {
    !matches!(
        kind,
        TypeKind::Bool | TypeKind::Integer | TypeKind::Float | TypeKind::Numeric | TypeKind::Text
    )
}

/// The Lua source of a wrapper for `rel`: called with the user's function,
/// it returns a function of (action, base, commit_idx, changes, extra, one
/// value per column) that builds the record and the metadata in Lua and
/// calls the user's function with them. Numbers and booleans arrive as
/// such (an integer beyond 2^53 as text), json and arrays ready in `extra`,
/// the rest as text.
fn wrapper_code(rel: &RelationInfo) -> String {
    use std::fmt::Write;
    let mut code = String::from(
        r#"local fn = ...
return function(action, base, idx, changes, extra"#,
    );
    for i in 0..rel.columns.len() {
        let _ = write!(code, ", v{i}");
    }
    code.push_str(")\n");
    for (i, column) in rel.columns.iter().enumerate() {
        if matches!(column.kind, TypeKind::Json | TypeKind::Array { .. }) {
            let _ = writeln!(code, "  v{i} = extra and extra[{}]", i + 1);
        }
    }
    code.push_str("  local record = {\n");
    for (i, column) in rel.columns.iter().enumerate() {
        if is_lua_name(&column.name) {
            let _ = writeln!(code, "    {} = v{i},", column.name);
        } else {
            let _ = writeln!(code, "    [{}] = v{i},", lua_quote(&column.name));
        }
    }
    code.push_str(
        r#"  }
  local metadata = {
    table_schema = base.table_schema,
    table_name = base.table_name,
    commit_timestamp = base.commit_timestamp,
    commit_lsn = base.commit_lsn,
    commit_idx = idx,
    idempotency_key = base.key_prefix .. idx,
    database_name = base.database_name,
    sink = base.sink,
    transaction_annotations = base.transaction_annotations,
  }
  return fn(action, record, changes, metadata)
end
"#,
    );
    code
}

/// Whether `text` can name a field in a table constructor (`name = v`).
fn is_lua_name(text: &str) -> bool {
    const KEYWORDS: [&str; 22] = [
        "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "if", "in",
        "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while",
        "continue",
    ];
    let mut bytes = text.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !KEYWORDS.contains(&text)
}

/// `text` as a Lua string literal.
fn lua_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for byte in text.bytes() {
        match byte {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b' '..=b'~' => out.push(byte as char),
            other => out.push_str(&format!("\\{other:03}")),
        }
    }
    out.push('"');
    out
}
