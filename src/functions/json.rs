//! Lua values to JSON and back.
//!
//! Documents leave a transform as Lua tables and are written as JSON by hand:
//! Luau numbers are doubles, so a whole number is written without a fraction
//! (`42`, not `42.0`), and a table is an array when its keys are exactly
//! `1..n`, an object otherwise (an empty table is `{}`).

use mlua::{Lua, Table, Value};

use crate::postgres::types::write_json_string;

/// Tables nested deeper than this are refused (a table holding itself would
/// otherwise never end).
const MAX_DEPTH: usize = 64;

/// The largest integer a double holds exactly: 2^53.
pub const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

/// Writes `value` as JSON into `out`; the error says what cannot be written.
pub fn write_value(value: &Value, out: &mut Vec<u8>) -> Result<(), String> {
    write(value, out, 0)
}

/// Writes `table` as JSON into `out`, like `write_value`, reading it on the
/// Lua stack directly: through mlua's safe API each field would cost two
/// registry references (a third of a transform's time).
pub fn write_table_fast(lua: &Lua, table: &Table, out: &mut Vec<u8>) -> Result<(), String> {
    let mut result = Ok(());
    // SAFETY: the closure runs in protected mode with the table at index 1;
    // it reads values and walks tables with `lua_rawiter`, which pushes
    // copies of each key and value, and leaves the stack as it found it
    // (`exec_raw` restores it in any case).
    let called = unsafe {
        lua.exec_raw::<()>(table, |state| {
            result = raw::write(state, 1, out, 0);
        })
    };
    called.map_err(|e| e.to_string())?;
    result
}

/// Reading Lua values straight off the stack. Every function here is
/// unsafe for one reason: `idx` must be a valid absolute stack index of a
/// state mlua has locked; their bodies are nothing but such FFI calls.
#[allow(unsafe_op_in_unsafe_fn)]
mod raw {
    use std::os::raw::c_int;

    use mlua::ffi;

    use super::{write_number, MAX_DEPTH};
    use crate::postgres::types::write_json_string;

    /// Writes the value at stack index `idx` (absolute).
    pub(super) unsafe fn write(
        state: *mut ffi::lua_State,
        idx: c_int,
        out: &mut Vec<u8>,
        depth: usize,
    ) -> Result<(), String> {
        match ffi::lua_type(state, idx) {
            ffi::LUA_TNIL => out.extend_from_slice(b"null"),
            ffi::LUA_TBOOLEAN => out.extend_from_slice(if ffi::lua_toboolean(state, idx) != 0 {
                b"true"
            } else {
                b"false"
            }),
            ffi::LUA_TNUMBER => write_number(ffi::lua_tonumber(state, idx), out)?,
            ffi::LUA_TSTRING => write_string(state, idx, out, "a string")?,
            ffi::LUA_TTABLE => write_table(state, idx, out, depth)?,
            other => {
                let name = std::ffi::CStr::from_ptr(ffi::lua_typename(state, other));
                return Err(format!(
                    "a {} (only tables, strings, numbers, booleans and nil become JSON)",
                    name.to_string_lossy()
                ));
            }
        }
        Ok(())
    }

    unsafe fn write_string(
        state: *mut ffi::lua_State,
        idx: c_int,
        out: &mut Vec<u8>,
        what: &str,
    ) -> Result<(), String> {
        let mut len = 0usize;
        let ptr = ffi::lua_tolstring(state, idx, &mut len);
        let bytes = std::slice::from_raw_parts(ptr as *const u8, len);
        // Bytes that are not UTF-8 are replaced (U+FFFD), as in documents
        // encoded from rows.
        let _ = what;
        write_json_string(bytes, out);
        Ok(())
    }

    /// The array position a key stands for, if it is a whole number >= 1.
    unsafe fn position(state: *mut ffi::lua_State, idx: c_int) -> Option<usize> {
        if ffi::lua_type(state, idx) != ffi::LUA_TNUMBER {
            return None;
        }
        let n = ffi::lua_tonumber(state, idx);
        (n >= 1.0 && n.fract() == 0.0 && n < 1e15).then_some(n as usize)
    }

    unsafe fn write_table(
        state: *mut ffi::lua_State,
        idx: c_int,
        out: &mut Vec<u8>,
        depth: usize,
    ) -> Result<(), String> {
        if depth >= MAX_DEPTH {
            return Err(format!(
                "tables nested more than {MAX_DEPTH} deep (does a table hold itself?)"
            ));
        }
        if ffi::lua_checkstack(state, 4) == 0 {
            return Err("tables nested too deep for the Lua stack".to_owned());
        }
        // Whether the keys are exactly 1..n: only when `t[1]` is set (its
        // length is then above 0), which spares documents a counting pass.
        let mut count = 0usize;
        let mut positions = ffi::lua_objlen(state, idx) > 0;
        let mut highest = 0usize;
        if positions {
            let mut at = 0;
            loop {
                at = ffi::lua_rawiter(state, idx, at);
                if at < 0 {
                    break;
                }
                count += 1;
                match position(state, -2) {
                    Some(p) => highest = highest.max(p),
                    None => positions = false,
                }
                ffi::lua_pop(state, 2);
            }
        }
        if count > 0 && positions && highest == count {
            out.push(b'[');
            for i in 1..=count {
                if i > 1 {
                    out.push(b',');
                }
                ffi::lua_rawgeti_(state, idx, i as c_int);
                let top = ffi::lua_gettop(state);
                let written = write(state, top, out, depth + 1);
                ffi::lua_pop(state, 1);
                written?;
            }
            out.push(b']');
            return Ok(());
        }
        out.push(b'{');
        let mut first = true;
        // `lua_rawiter` walks the table by slot; `lua_next` would look each
        // key up again to find its place.
        let mut at = 0;
        loop {
            at = ffi::lua_rawiter(state, idx, at);
            if at < 0 {
                break;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            let top = ffi::lua_gettop(state);
            let key = top - 1;
            let written = match ffi::lua_type(state, key) {
                ffi::LUA_TSTRING => write_string(state, key, out, "a key"),
                ffi::LUA_TNUMBER => {
                    let mut text = Vec::new();
                    write_number(ffi::lua_tonumber(state, key), &mut text)
                        .map(|()| write_json_string(&text, out))
                }
                other => {
                    let name = std::ffi::CStr::from_ptr(ffi::lua_typename(state, other));
                    Err(format!("a {} as a key", name.to_string_lossy()))
                }
            };
            let written = written.and_then(|()| {
                out.push(b':');
                write(state, top, out, depth + 1)
            });
            ffi::lua_pop(state, 2);
            written?;
        }
        out.push(b'}');
        Ok(())
    }
}

fn write(value: &Value, out: &mut Vec<u8>, depth: usize) -> Result<(), String> {
    match value {
        Value::Nil => out.extend_from_slice(b"null"),
        Value::Boolean(true) => out.extend_from_slice(b"true"),
        Value::Boolean(false) => out.extend_from_slice(b"false"),
        Value::Integer(i) => out.extend_from_slice(itoa::Buffer::new().format(*i).as_bytes()),
        Value::Number(n) => write_number(*n, out)?,
        Value::String(s) => {
            let bytes = s.as_bytes();
            if std::str::from_utf8(&bytes).is_err() {
                return Err("a string that is not UTF-8".to_owned());
            }
            write_json_string(&bytes, out);
        }
        Value::Table(table) => write_table(table, out, depth)?,
        other => {
            return Err(format!(
                "a {} (only tables, strings, numbers, booleans and nil become JSON)",
                other.type_name()
            ))
        }
    }
    Ok(())
}

fn write_number(n: f64, out: &mut Vec<u8>) -> Result<(), String> {
    if !n.is_finite() {
        return Err(format!("the number {n} (JSON has no NaN or infinity)"));
    }
    if n.fract() == 0.0 && n.abs() <= MAX_EXACT_INTEGER {
        out.extend_from_slice(itoa::Buffer::new().format(n as i64).as_bytes());
    } else {
        // The shortest text that reads back as the same double, with an
        // exponent for very large or small numbers (`1e300`).
        out.extend_from_slice(ryu::Buffer::new().format_finite(n).as_bytes());
    }
    Ok(())
}

fn write_table(table: &Table, out: &mut Vec<u8>, depth: usize) -> Result<(), String> {
    if depth >= MAX_DEPTH {
        return Err(format!(
            "tables nested more than {MAX_DEPTH} deep (does a table hold itself?)"
        ));
    }
    // One pass over the table (each step through mlua costs), then the
    // shape: an array when the keys are exactly 1..n.
    let mut pairs: Vec<(Value, Value)> = Vec::new();
    table
        .for_each(|key: Value, item: Value| {
            pairs.push((key, item));
            Ok(())
        })
        .map_err(|e| e.to_string())?;
    let position = |key: &Value| match key {
        Value::Integer(i) => usize::try_from(*i).ok(),
        Value::Number(n) if n.fract() == 0.0 && *n >= 1.0 => Some(*n as usize),
        _ => None,
    };
    let n = pairs.len();
    let is_array = n > 0
        && pairs
            .iter()
            .all(|(key, _)| position(key).is_some_and(|p| (1..=n).contains(&p)));
    if is_array {
        // Distinct keys in 1..=n: every position once.
        pairs.sort_by_key(|(key, _)| position(key));
        out.push(b'[');
        for (i, (_, item)) in pairs.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write(item, out, depth + 1)?;
        }
        out.push(b']');
        return Ok(());
    }
    out.push(b'{');
    for (i, (key, item)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match key {
            Value::String(s) => {
                let bytes = s.as_bytes();
                if std::str::from_utf8(&bytes).is_err() {
                    return Err("a key that is not UTF-8".to_owned());
                }
                write_json_string(&bytes, out);
            }
            Value::Integer(_) | Value::Number(_) => {
                let mut text = Vec::new();
                write(key, &mut text, depth + 1)?;
                write_json_string(&text, out);
            }
            other => return Err(format!("a {} as a key", other.type_name())),
        }
        out.push(b':');
        write(item, out, depth + 1)?;
    }
    out.push(b'}');
    Ok(())
}

/// A JSON value as a Lua value (objects and arrays as tables).
pub fn to_lua(lua: &Lua, value: &serde_json::Value) -> mlua::Result<Value> {
    Ok(match value {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Boolean(*b),
        serde_json::Value::Number(n) => number_to_lua(lua, n.as_f64(), &n.to_string())?,
        serde_json::Value::String(s) => Value::String(lua.create_string(s)?),
        serde_json::Value::Array(items) => {
            let table = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.iter().enumerate() {
                table.raw_set(i + 1, to_lua(lua, item)?)?;
            }
            Value::Table(table)
        }
        serde_json::Value::Object(map) => {
            let table = lua.create_table_with_capacity(0, map.len())?;
            for (key, item) in map {
                table.raw_set(key.as_str(), to_lua(lua, item)?)?;
            }
            Value::Table(table)
        }
    })
}

/// A number as Lua holds it: a double when the double is exact enough, its
/// text otherwise (an integer beyond 2^53 would silently change).
pub fn number_to_lua(lua: &Lua, value: Option<f64>, text: &str) -> mlua::Result<Value> {
    let integral = !text.contains(['.', 'e', 'E']);
    match value {
        Some(v) if v.is_finite() && (!integral || v.abs() <= MAX_EXACT_INTEGER) => {
            Ok(Value::Number(v))
        }
        _ => Ok(Value::String(lua.create_string(text)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(lua: &Lua, code: &str) -> Result<String, String> {
        let value: Value = lua.load(code).eval().unwrap();
        let mut out = Vec::new();
        write_value(&value, &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn tables_become_objects_or_arrays() {
        let lua = Lua::new();
        assert_eq!(json(&lua, "return {a = 1}").unwrap(), r#"{"a":1}"#);
        assert_eq!(
            json(&lua, "return {1, 2.5, 'x'}").unwrap(),
            r#"[1,2.5,"x"]"#
        );
        assert_eq!(json(&lua, "return {}").unwrap(), "{}");
        let parsed = |code: &str| -> serde_json::Value {
            serde_json::from_str(&json(&lua, code).unwrap()).unwrap()
        };
        assert_eq!(
            parsed("return {[1] = 'a', [3] = 'c'}"),
            serde_json::json!({"1": "a", "3": "c"})
        );
        assert_eq!(
            parsed("return {n = {true, false}, s = 'q\"'}"),
            serde_json::json!({"n": [true, false], "s": "q\""})
        );
        assert_eq!(json(&lua, "return 1e300").unwrap(), "1e300");
        assert_eq!(json(&lua, "return 0.1").unwrap(), "0.1");
    }

    #[test]
    fn what_json_cannot_hold_is_an_error() {
        let lua = Lua::new();
        assert!(json(&lua, "return 0/0").unwrap_err().contains("NaN"));
        assert!(json(&lua, "return {f = print}")
            .unwrap_err()
            .contains("function"));
        let cyclic = json(&lua, "local t = {}; t.t = t; return t").unwrap_err();
        assert!(cyclic.contains("nested"), "{cyclic}");
        assert!(json(&lua, "return {[true] = 1}")
            .unwrap_err()
            .contains("key"));
    }

    #[test]
    fn json_round_trips_through_lua() {
        let lua = Lua::new();
        let value: serde_json::Value = serde_json::from_str(
            r#"{"a":[1,2,{"b":null}],"big":12345678901234567890,"f":1.5,"s":"x"}"#,
        )
        .unwrap();
        let lua_value = to_lua(&lua, &value).unwrap();
        let mut out = Vec::new();
        write_value(&lua_value, &mut out).unwrap();
        let back: serde_json::Value = serde_json::from_slice(&out).unwrap();
        // The big integer arrives as its text, not as a rounded double.
        assert_eq!(back["big"], "12345678901234567890");
        assert_eq!(back["a"][0], 1);
        assert_eq!(back["f"], 1.5);
        assert_eq!(back["s"], "x");
    }
}
