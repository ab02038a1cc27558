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
        use std::io::Write;
        let _ = write!(out, "{n:?}");
    }
    Ok(())
}

fn write_table(table: &Table, out: &mut Vec<u8>, depth: usize) -> Result<(), String> {
    if depth >= MAX_DEPTH {
        return Err(format!(
            "tables nested more than {MAX_DEPTH} deep (does a table hold itself?)"
        ));
    }
    let len = table.raw_len();
    let pairs = table.pairs::<Value, Value>().count();
    if len > 0 && pairs == len {
        out.push(b'[');
        for i in 1..=len {
            if i > 1 {
                out.push(b',');
            }
            let item: Value = table.raw_get(i).map_err(|e| e.to_string())?;
            write(&item, out, depth + 1)?;
        }
        out.push(b']');
        return Ok(());
    }
    out.push(b'{');
    let mut first = true;
    for pair in table.pairs::<Value, Value>() {
        let (key, item) = pair.map_err(|e| e.to_string())?;
        if !first {
            out.push(b',');
        }
        first = false;
        match &key {
            Value::String(s) => {
                let bytes = s.as_bytes();
                if std::str::from_utf8(&bytes).is_err() {
                    return Err("a key that is not UTF-8".to_owned());
                }
                write_json_string(&bytes, out);
            }
            Value::Integer(_) | Value::Number(_) => {
                let mut text = Vec::new();
                write(&key, &mut text, depth + 1)?;
                write_json_string(&text, out);
            }
            other => return Err(format!("a {} as a key", other.type_name())),
        }
        out.push(b':');
        write(&item, out, depth + 1)?;
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
