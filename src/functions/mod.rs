//! Functions users write: filters, transforms and routes, in Lua (run by
//! Luau, sandboxed), with the shape other CDC tools use:
//!
//! - `filter(action, record, changes, metadata) -> boolean`
//! - `transform(action, record, changes, metadata) -> document`
//! - `route(action, record, changes, metadata) -> index | {index, action}`
//!
//! `action` is `insert`, `update`, `delete` or `read` (a row a backfill read);
//! `record` the row (for deletes, the key or the old row); `changes` the old
//! values of the columns an update changed, when the table's replica
//! identity gives them (nil otherwise); `metadata` where the change comes
//! from (see `message`).

pub mod apply;
pub mod json;
pub mod lua;
pub mod message;
pub mod routes;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::model::change::RouteAction;
use crate::model::problem::ConfigProblem;

pub use lua::{Args, CompileError, Failure, FunctionError, Input, Limits, Runtime};

/// Default time budget of one call.
pub const DEFAULT_TIMEOUT_MS: u64 = 100;
/// Default memory cap of one runtime.
pub const DEFAULT_MEMORY_MB: usize = 64;

/// What a function decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FunctionKind {
    Filter,
    Transform,
    Route,
}

impl FunctionKind {
    /// The global the function's code defines.
    pub fn entry_point(self) -> &'static str {
        match self {
            FunctionKind::Filter => "filter",
            FunctionKind::Transform => "transform",
            FunctionKind::Route => "route",
        }
    }
}

impl fmt::Display for FunctionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.entry_point())
    }
}

/// Where a route sends a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteDecision {
    pub index: String,
    /// `None`: as the change says (deletes remove, the rest write).
    pub action: Option<RouteAction>,
}

/// `[functions.NAME]`: one function.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionConfig {
    /// `filter`, `transform` or `route`.
    pub kind: FunctionKind,
    /// The Lua code, inline. Exclusive with `file`.
    #[serde(default)]
    pub code: Option<String>,
    /// A Lua file, relative to the configuration file. Exclusive with `code`.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// The longest one call may run, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

impl FunctionConfig {
    pub fn validate(&self, name: &str, problems: &mut Vec<ConfigProblem>) {
        let field = format!("functions.{name}");
        match (&self.code, &self.file) {
            (Some(_), Some(_)) => problems.push(ConfigProblem {
                field,
                message: "set `code` or `file`, not both".to_owned(),
            }),
            (None, None) => problems.push(ConfigProblem {
                field,
                message: "needs `code` (Lua inline) or `file` (a Lua file)".to_owned(),
            }),
            _ => {}
        }
        if !(1..=60_000).contains(&self.timeout_ms) {
            problems.push(ConfigProblem {
                field: format!("functions.{name}.timeout_ms"),
                message: "must be between 1 and 60000".to_owned(),
            });
        }
    }

    /// The code and the name errors give for it (the file's path as written
    /// in the configuration, or `NAME.lua` for inline code).
    pub fn source(&self, name: &str, config_dir: &Path) -> Result<(String, String), String> {
        match (&self.code, &self.file) {
            (Some(code), _) => Ok((code.clone(), format!("{name}.lua"))),
            (None, Some(file)) => {
                let path = config_dir.join(file);
                let code = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                Ok((code, file.display().to_string()))
            }
            (None, None) => Err("needs `code` or `file`".to_owned()),
        }
    }
}

/// The functions of a table, by name.
#[derive(Debug, Clone, Default)]
pub struct TableFunctions {
    pub filter: Option<String>,
    pub transform: Option<String>,
    pub route: Option<String>,
}

/// Everything the shards need to run functions: each compiles its own runtime.
#[derive(Debug, Clone)]
pub struct FunctionPlan {
    pub configs: BTreeMap<String, FunctionConfig>,
    pub base_dir: PathBuf,
    pub memory_bytes: usize,
    /// Parked calls at which the pipeline pauses (`pipeline.function_max_parked`).
    pub max_parked: usize,
    /// By table (`schema.table`); tables without functions are absent.
    pub tables: HashMap<String, TableFunctions>,
    /// For `metadata.database_name`.
    pub database: String,
    /// Sink names, in the order of the sinks, for `metadata.sink`.
    pub sinks: Vec<String>,
    /// Where failed calls are kept (see `FAILED_STORE`).
    pub data_dir: PathBuf,
    /// The indexes route functions sent each table's documents to.
    pub routes: std::sync::Arc<routes::RouteRecord>,
}

/// The name under which calls that failed are kept in the failed-message
/// store (`sluice failed list --sink @functions`): not a valid sink name, so
/// it is never a sink's.
pub const FAILED_STORE: &str = "@functions";

/// Compiles every function into a new runtime. Every function that does
/// not compile is reported, each with its file and line.
pub fn compile(
    functions: &BTreeMap<String, FunctionConfig>,
    config_dir: &Path,
    memory_bytes: usize,
) -> Result<Runtime, Vec<CompileError>> {
    let limits = Limits { memory_bytes };
    let mut runtime = Runtime::new(limits).map_err(|e| {
        vec![CompileError {
            function: String::new(),
            message: format!("cannot start a Lua runtime: {e}"),
        }]
    })?;
    let mut errors = Vec::new();
    for (name, function) in functions {
        let loaded = function
            .source(name, config_dir)
            .map_err(|message| CompileError {
                function: name.clone(),
                message,
            })
            .and_then(|(code, source)| {
                let timeout = Duration::from_millis(function.timeout_ms);
                runtime.load(name, function.kind, &code, &source, timeout)
            });
        if let Err(e) = loaded {
            errors.push(e);
        }
    }
    if errors.is_empty() {
        Ok(runtime)
    } else {
        Err(errors)
    }
}

/// The arguments of a call from a message written as JSON (`sluice fn test`,
/// benchmarks): `{"action": "update", "record": {...}, "changes": {...},
/// "metadata": {...}}`; `changes` and `metadata` may be left out.
pub fn json_args(lua: &mlua::Lua, message: &serde_json::Value) -> Result<Args, String> {
    let object = message
        .as_object()
        .ok_or("the message is not a JSON object")?;
    let action = match object.get("action").and_then(|a| a.as_str()) {
        Some(a @ ("insert" | "update" | "delete" | "read")) => a,
        Some(other) => {
            return Err(format!(
                "`action` is {other:?}; it is insert, update, delete or read"
            ))
        }
        None => return Err("the message has no `action` (insert, update, delete or read)".into()),
    };
    let part = |key: &str, required: bool| -> Result<mlua::Value, String> {
        match object.get(key) {
            Some(value @ serde_json::Value::Object(_)) => {
                json::to_lua(lua, value).map_err(|e| e.to_string())
            }
            Some(serde_json::Value::Null) | None if !required => Ok(mlua::Value::Nil),
            _ => Err(format!("`{key}` is not a JSON object")),
        }
    };
    let record = part("record", true)?;
    let changes = part("changes", false)?;
    let metadata = match part("metadata", false)? {
        mlua::Value::Nil => mlua::Value::Table(lua.create_table().map_err(|e| e.to_string())?),
        value => value,
    };
    let action = lua.create_string(action).map_err(|e| e.to_string())?;
    Ok((mlua::Value::String(action), record, changes, metadata))
}

#[cfg(test)]
mod tests;
