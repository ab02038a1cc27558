//! A Luau runtime holding the compiled functions, sandboxed and on a budget.
//!
//! - **Sandbox.** Luau has no `io`, no `os.execute`, no `load` of bytecode
//!   and no C modules. sluice also removes `require`, `debug`, `getfenv`,
//!   `setfenv` and `loadstring`, then turns on Luau's sandbox: libraries and
//!   globals are read-only, and each function's file runs in an environment
//!   of its own, so functions cannot change what other functions see.
//! - **Time.** A call that runs longer than its budget is stopped (Luau's
//!   interrupt is checked at every loop iteration and call).
//! - **Memory.** The runtime's allocations are capped; a call that needs more
//!   fails, and its garbage is collected.
//!
//! A failed call fails only its change (see `FunctionError`).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::{Function, Lua, LuaOptions, StdLib, Table, Value, VmState};

use super::json::write_table_fast;
use super::{FunctionKind, RouteDecision};
use crate::model::change::RouteAction;

/// Globals a function has no use for and could look past its sandbox with.
const REMOVED_GLOBALS: [&str; 5] = ["require", "debug", "getfenv", "setfenv", "loadstring"];

/// No deadline is set.
const NO_DEADLINE: u64 = u64::MAX;

/// Limits of one runtime.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The most memory the runtime may hold, functions' data included.
    pub memory_bytes: usize,
}

/// A function that does not compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    pub function: String,
    /// Lua's message, with the file and line (`only_active.lua:3: ...`).
    pub message: String,
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "function `{}`: {}", self.function, self.message)
    }
}

/// Why a call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The function raised an error.
    Raised,
    /// It returned something of the wrong shape.
    Shape,
    /// It ran past its time budget.
    Timeout,
    /// It needed more memory than the runtime may hold.
    Memory,
}

/// A call that failed: that change fails, the pipeline goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionError {
    pub function: String,
    pub failure: Failure,
    pub message: String,
}

impl fmt::Display for FunctionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "function `{}`: {}", self.function, self.message)
    }
}

impl std::error::Error for FunctionError {}

/// The arguments of a call: `action, record, changes, metadata`.
pub type Args = (Value, Value, Value, Value);

/// How a call gets its arguments: ready-made (`Args`), or built from a
/// change (see `message::ChangeInput`).
pub trait Input {
    type Ready: mlua::IntoLuaMulti;

    /// Whether `prepare` returns Lua code that calls the user's function:
    /// the memory cap is then armed by that call (see `Runtime::new`), not
    /// before the arguments are pushed.
    const CALLS_FROM_LUA: bool;

    /// What to call for `function` (loaded as `name`), and with what. Runs
    /// before the call's budget starts.
    fn prepare(self, name: &str, function: &Function) -> mlua::Result<(Function, Self::Ready)>;
}

impl Input for Args {
    type Ready = Args;
    const CALLS_FROM_LUA: bool = false;

    fn prepare(self, _name: &str, function: &Function) -> mlua::Result<(Function, Args)> {
        Ok((function.clone(), self))
    }
}

struct Compiled {
    kind: FunctionKind,
    function: Function,
    /// The longest one call may run.
    timeout: Duration,
}

/// One Luau state with every configured function compiled into it.
pub struct Runtime {
    lua: Lua,
    functions: HashMap<String, Compiled>,
    /// Nanoseconds after `epoch` at which the running call must stop.
    deadline: Arc<AtomicU64>,
    /// Set by the interrupt when it stopped a call.
    expired: Arc<AtomicBool>,
    /// Set while a call's memory cap waits to be armed by the interrupt.
    arming: Arc<AtomicBool>,
    epoch: Instant,
    limits: Limits,
}

impl Runtime {
    pub fn new(limits: Limits) -> mlua::Result<Runtime> {
        let lua = Lua::new_with(StdLib::ALL_SAFE, LuaOptions::default())?;
        let globals = lua.globals();
        for name in REMOVED_GLOBALS {
            globals.raw_set(name, Value::Nil)?;
        }
        // Luau compiles the functions to native code where the machine allows.
        lua.enable_jit(true);
        lua.sandbox(true)?;
        // Every call leaves a few small tables behind: let the heap grow to
        // four times the live data between collections (Luau's default is
        // two), which halves the collector's share of a call; the memory cap
        // still bounds it.
        lua.gc_inc(400, 0, 0);
        let deadline = Arc::new(AtomicU64::new(NO_DEADLINE));
        let expired = Arc::new(AtomicBool::new(false));
        let arming = Arc::new(AtomicBool::new(false));
        let epoch = Instant::now();
        {
            let deadline = deadline.clone();
            let expired = expired.clone();
            let arming = arming.clone();
            let checks = std::sync::atomic::AtomicU32::new(0);
            let limit = limits.memory_bytes;
            lua.set_interrupt(move |lua| {
                // The memory cap is armed here, at the first call the
                // running Lua code makes: a message wrapper's call of the
                // user's function, before any of its code runs (Luau checks
                // the interrupt at every call). While a cap is set, mlua
                // guards every value pushed and field set against
                // allocation failure, which would make building a message
                // several times slower.
                if arming.load(Ordering::Relaxed) {
                    arming.store(false, Ordering::Relaxed);
                    lua.set_memory_limit(limit)?;
                }
                // The clock is read at every 16th interrupt: interrupts come
                // at every call and loop iteration, so a runaway function
                // still meets its deadline within microseconds.
                if !checks.fetch_add(1, Ordering::Relaxed).is_multiple_of(16) {
                    return Ok(VmState::Continue);
                }
                let at = deadline.load(Ordering::Relaxed);
                if at != NO_DEADLINE && epoch.elapsed().as_nanos() as u64 > at {
                    expired.store(true, Ordering::Relaxed);
                    return Err(mlua::Error::runtime("ran past its time budget"));
                }
                Ok(VmState::Continue)
            });
        }
        Ok(Runtime {
            lua,
            functions: HashMap::new(),
            deadline,
            expired,
            arming,
            epoch,
            limits,
        })
    }

    pub fn lua(&self) -> &Lua {
        &self.lua
    }

    /// Compiles function `name` of `kind` from `code` (read from `source`,
    /// the name errors give for it) and keeps it; each call may run for
    /// `timeout`. The code runs once, in an environment of its own, and must
    /// define a global function named after its kind (`function
    /// transform(action, record, changes, metadata)`).
    pub fn load(
        &mut self,
        name: &str,
        kind: FunctionKind,
        code: &str,
        source: &str,
        timeout: Duration,
    ) -> Result<(), CompileError> {
        let error = |message: String| CompileError {
            function: name.to_owned(),
            message,
        };
        let env = self
            .environment()
            .map_err(|e| error(format!("cannot prepare its environment: {e}")))?;
        let chunk = self
            .lua
            .load(code)
            .set_name(format!("={source}"))
            .set_environment(env.clone())
            .into_function()
            .map_err(|e| error(message_of(&e)))?;
        self.start_budget(timeout);
        let _ = self.lua.set_memory_limit(self.limits.memory_bytes);
        let ran = chunk.call::<()>(());
        self.stop_budget();
        ran.map_err(|e| error(self.describe(&e, timeout).1))?;
        let entry = kind.entry_point();
        let function = match env.raw_get::<Value>(entry) {
            Ok(Value::Function(function)) => function,
            Ok(Value::Nil) => {
                return Err(error(format!(
                    "{source} defines no function `{entry}` (a {kind} function is `function {entry}(action, record, changes, metadata) ... end`)"
                )))
            }
            Ok(other) => {
                return Err(error(format!(
                    "`{entry}` in {source} is a {}, not a function",
                    other.type_name()
                )))
            }
            Err(e) => return Err(error(e.to_string())),
        };
        self.functions.insert(
            name.to_owned(),
            Compiled {
                kind,
                function,
                timeout,
            },
        );
        Ok(())
    }

    /// A table whose writes stay in it and whose reads fall through to the
    /// (read-only) globals.
    fn environment(&self) -> mlua::Result<Table> {
        let env = self.lua.create_table()?;
        let meta = self.lua.create_table()?;
        meta.raw_set("__index", self.lua.globals())?;
        env.set_metatable(Some(meta))?;
        Ok(env)
    }

    /// Runs transform `name`: the document it returns, as JSON.
    pub fn transform(&self, name: &str, args: impl Input) -> Result<Vec<u8>, FunctionError> {
        let value = self.call(name, FunctionKind::Transform, args)?;
        match &value {
            Value::Table(table) => {
                let mut out = Vec::with_capacity(256);
                write_table_fast(&self.lua, table, &mut out)
                    .map_err(|what| self.shape(name, format!("returned {what}")))?;
                if out.first() != Some(&b'{') {
                    return Err(self.shape(
                        name,
                        "returned a list; a transform returns the document, a table of fields"
                            .to_owned(),
                    ));
                }
                Ok(out)
            }
            other => Err(self.shape(
                name,
                format!(
                    "returned {}; a transform returns the document, a table of fields",
                    describe_value(other)
                ),
            )),
        }
    }

    /// Runs filter `name`: whether the change goes on.
    pub fn filter(&self, name: &str, args: impl Input) -> Result<bool, FunctionError> {
        match self.call(name, FunctionKind::Filter, args)? {
            Value::Boolean(keep) => Ok(keep),
            other => Err(self.shape(
                name,
                format!(
                    "returned {}; a filter returns true (keep the change) or false",
                    describe_value(&other)
                ),
            )),
        }
    }

    /// Runs route `name`: the index of the change, and whether it writes or
    /// removes its document. A route returns the index name, or a table
    /// `{index = "...", action = "index" | "delete"}`.
    pub fn route(&self, name: &str, args: impl Input) -> Result<RouteDecision, FunctionError> {
        let shape = |what: String| {
            self.shape(
                name,
                format!("returned {what}; a route returns an index name or {{index = \"name\", action = \"index\" | \"delete\"}}"),
            )
        };
        let index_of = |value: Value| -> Result<String, FunctionError> {
            match value {
                Value::String(s) => match s.to_str() {
                    Ok(text) if !text.is_empty() => Ok(text.to_owned()),
                    _ => Err(shape("an empty or non-UTF-8 index name".to_owned())),
                },
                other => Err(shape(format!(
                    "an index that is {}",
                    describe_value(&other)
                ))),
            }
        };
        match self.call(name, FunctionKind::Route, args)? {
            value @ Value::String(_) => Ok(RouteDecision {
                index: index_of(value)?,
                action: None,
            }),
            Value::Table(table) => {
                let index = index_of(table.raw_get("index").unwrap_or(Value::Nil))?;
                let action = match table.raw_get::<Value>("action").unwrap_or(Value::Nil) {
                    Value::Nil => None,
                    Value::String(s) if s.as_bytes().as_ref() == b"index" => {
                        Some(RouteAction::Upsert)
                    }
                    Value::String(s) if s.as_bytes().as_ref() == b"delete" => {
                        Some(RouteAction::Delete)
                    }
                    other => {
                        return Err(shape(format!(
                            "an action that is {} (it is \"index\" or \"delete\")",
                            describe_value(&other)
                        )))
                    }
                };
                Ok(RouteDecision { index, action })
            }
            other => Err(shape(describe_value(&other))),
        }
    }

    fn call<I: Input>(
        &self,
        name: &str,
        kind: FunctionKind,
        input: I,
    ) -> Result<Value, FunctionError> {
        let compiled = self.functions.get(name).ok_or_else(|| FunctionError {
            function: name.to_owned(),
            failure: Failure::Raised,
            message: "no such function is loaded".to_owned(),
        })?;
        if compiled.kind != kind {
            return Err(FunctionError {
                function: name.to_owned(),
                failure: Failure::Raised,
                message: format!("is a {} function, not a {kind} function", compiled.kind),
            });
        }
        let (function, args) =
            input
                .prepare(name, &compiled.function)
                .map_err(|e| FunctionError {
                    function: name.to_owned(),
                    failure: Failure::Raised,
                    message: format!("cannot build the message: {}", message_of(&e)),
                })?;
        self.start_budget(compiled.timeout);
        if I::CALLS_FROM_LUA {
            self.arming.store(true, Ordering::Relaxed);
        } else {
            let _ = self.lua.set_memory_limit(self.limits.memory_bytes);
        }
        let result = function.call::<Value>(args);
        self.stop_budget();
        result.map_err(|e| {
            let (failure, message) = self.describe(&e, compiled.timeout);
            if failure == Failure::Memory {
                // What the call left behind would fail the next one too.
                let _ = self.lua.gc_collect();
            }
            FunctionError {
                function: name.to_owned(),
                failure,
                message,
            }
        })
    }

    /// Starts the deadline of a call (its memory cap is armed apart, see
    /// `call`).
    fn start_budget(&self, timeout: Duration) {
        self.expired.store(false, Ordering::Relaxed);
        let at = (self.epoch.elapsed() + timeout).as_nanos() as u64;
        self.deadline.store(at, Ordering::Relaxed);
    }

    fn stop_budget(&self) {
        self.deadline.store(NO_DEADLINE, Ordering::Relaxed);
        self.arming.store(false, Ordering::Relaxed);
        let _ = self.lua.set_memory_limit(0);
        // Garbage counts against the cap: collect before it could fail a
        // call that needs little.
        if self.lua.used_memory() > self.limits.memory_bytes / 2 {
            let _ = self.lua.gc_collect();
        }
    }

    fn describe(&self, error: &mlua::Error, timeout: Duration) -> (Failure, String) {
        if self.expired.swap(false, Ordering::Relaxed) {
            return (
                Failure::Timeout,
                format!("ran past its time budget of {} ms", timeout.as_millis()),
            );
        }
        if is_memory(error) {
            return (
                Failure::Memory,
                format!(
                    "needed more than the {} MiB a runtime may hold",
                    self.limits.memory_bytes / (1024 * 1024)
                ),
            );
        }
        (Failure::Raised, message_of(error))
    }

    fn shape(&self, name: &str, message: String) -> FunctionError {
        FunctionError {
            function: name.to_owned(),
            failure: Failure::Shape,
            message,
        }
    }
}

fn is_memory(error: &mlua::Error) -> bool {
    match error {
        mlua::Error::MemoryError(_) => true,
        mlua::Error::CallbackError { cause, .. } => is_memory(cause),
        mlua::Error::WithContext { cause, .. } => is_memory(cause),
        _ => false,
    }
}

/// The message of a Lua error without mlua's wrapping or its traceback.
fn message_of(error: &mlua::Error) -> String {
    match error {
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        mlua::Error::RuntimeError(message) => message.clone(),
        mlua::Error::CallbackError { cause, .. } => message_of(cause),
        mlua::Error::WithContext { cause, .. } => message_of(cause),
        other => other.to_string(),
    }
    .lines()
    .next()
    .unwrap_or_default()
    .to_owned()
}

fn describe_value(value: &Value) -> String {
    match value {
        Value::Nil => "nil".to_owned(),
        Value::Boolean(b) => format!("the boolean {b}"),
        Value::String(s) => format!("the string {:?}", s.to_string_lossy()),
        Value::Integer(i) => format!("the number {i}"),
        Value::Number(n) => format!("the number {n}"),
        other => format!("a {}", other.type_name()),
    }
}
