use std::time::{Duration, Instant};

use super::*;

const TIMEOUT: Duration = Duration::from_millis(50);

fn runtime_with(kind: FunctionKind, code: &str) -> Runtime {
    let mut runtime = Runtime::new(Limits {
        memory_bytes: 16 * 1024 * 1024,
    })
    .unwrap();
    runtime.load("f", kind, code, "f.lua", TIMEOUT).unwrap();
    runtime
}

fn message(runtime: &Runtime) -> Args {
    let message = serde_json::json!({
        "action": "update",
        "record": {"id": 7, "name": "Lamp", "price": 12.5, "active": true, "tags": ["a", "b"]},
        "changes": {"price": 10},
        "metadata": {"table_schema": "public", "table_name": "products"}
    });
    json_args(runtime.lua(), &message).unwrap()
}

fn transform(code: &str) -> Result<serde_json::Value, FunctionError> {
    let runtime = runtime_with(FunctionKind::Transform, code);
    let args = message(&runtime);
    runtime
        .transform("f", args)
        .map(|doc| serde_json::from_slice(&doc).unwrap())
}

#[test]
fn a_transform_sees_the_message_and_returns_the_document() {
    let doc = transform(
        r#"
        function transform(action, record, changes, metadata)
          return {
            id = record.id,
            title = string.upper(record.name),
            price = record.price,
            was = changes.price,
            tags = record.tags,
            where_from = metadata.table_schema .. "." .. metadata.table_name,
            action = action,
          }
        end"#,
    )
    .unwrap();
    assert_eq!(
        doc,
        serde_json::json!({
            "id": 7, "title": "LAMP", "price": 12.5, "was": 10, "tags": ["a", "b"],
            "where_from": "public.products", "action": "update"
        })
    );
}

#[test]
fn a_transform_that_returns_no_document_fails_with_its_shape() {
    let error = transform("function transform() return 42 end").unwrap_err();
    assert_eq!(error.failure, Failure::Shape);
    assert!(error.message.contains("the number 42"), "{error}");
    let error = transform("function transform() return {1, 2} end").unwrap_err();
    assert!(error.message.contains("a list"), "{error}");
    let error = transform("function transform() return {f = print} end").unwrap_err();
    assert!(error.message.contains("function"), "{error}");
}

#[test]
fn an_error_names_the_file_and_line() {
    let error =
        transform("function transform(a, record)\n  return record.missing.field\nend").unwrap_err();
    assert_eq!(error.failure, Failure::Raised);
    assert!(error.message.starts_with("f.lua:2:"), "{error}");
    let error = transform("function transform()\n  error('no price')\nend").unwrap_err();
    assert!(error.message.contains("f.lua:2: no price"), "{error}");
}

#[test]
fn filters_return_booleans() {
    let runtime = runtime_with(
        FunctionKind::Filter,
        "function filter(action, record) return record.active and record.price > 10 end",
    );
    assert!(runtime.filter("f", message(&runtime)).unwrap());
    let runtime = runtime_with(FunctionKind::Filter, "function filter() return nil end");
    let error = runtime.filter("f", message(&runtime)).unwrap_err();
    assert_eq!(error.failure, Failure::Shape);
    assert!(error.message.contains("returned nil"), "{error}");
}

#[test]
fn routes_name_an_index_and_maybe_an_action() {
    let runtime = runtime_with(
        FunctionKind::Route,
        r#"function route(action, record) return "products_" .. record.tags[1] end"#,
    );
    assert_eq!(
        runtime.route("f", message(&runtime)).unwrap(),
        RouteDecision {
            index: "products_a".into(),
            action: None
        }
    );
    let runtime = runtime_with(
        FunctionKind::Route,
        r#"function route(action, record)
             if not record.active then return {index = "products", action = "delete"} end
             return {index = "products", action = "index"}
           end"#,
    );
    assert_eq!(
        runtime.route("f", message(&runtime)).unwrap().action,
        Some(RouteAction::Upsert)
    );
    let runtime = runtime_with(
        FunctionKind::Route,
        r#"function route() return {index = "p", action = "remove"} end"#,
    );
    let error = runtime.route("f", message(&runtime)).unwrap_err();
    assert!(error.message.contains("\"index\" or \"delete\""), "{error}");
}

#[test]
fn a_function_that_loops_forever_is_stopped_and_the_runtime_goes_on() {
    let mut runtime = runtime_with(
        FunctionKind::Filter,
        "function filter() while true do end end",
    );
    runtime
        .load(
            "ok",
            FunctionKind::Filter,
            "function filter() return true end",
            "ok.lua",
            TIMEOUT,
        )
        .unwrap();
    let started = Instant::now();
    let error = runtime.filter("f", message(&runtime)).unwrap_err();
    assert_eq!(error.failure, Failure::Timeout, "{error}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(runtime.filter("ok", message(&runtime)).unwrap());
}

#[test]
fn a_function_that_allocates_without_bound_fails_and_the_runtime_goes_on() {
    let mut runtime = runtime_with(
        FunctionKind::Transform,
        r#"function transform()
             local t = {}
             local s = "x"
             for i = 1, 1e9 do t[i] = s .. i end
           end"#,
    );
    runtime
        .load(
            "ok",
            FunctionKind::Transform,
            "function transform(a, record) return {id = record.id} end",
            "ok.lua",
            Duration::from_secs(5),
        )
        .unwrap();
    let error = runtime.transform("f", message(&runtime)).unwrap_err();
    assert!(
        matches!(error.failure, Failure::Memory | Failure::Timeout),
        "{error:?}"
    );
    assert_eq!(
        runtime.transform("ok", message(&runtime)).unwrap(),
        br#"{"id":7}"#
    );
}

#[test]
fn the_sandbox_holds() {
    for (escape, what) in [
        ("return os.execute('true')", "execute"),
        ("return io.open('/etc/passwd')", "io"),
        ("return require('os')", "require"),
        ("return load('return 1')()", "load"),
        ("return loadstring('return 1')()", "loadstring"),
        ("return debug.getinfo(1)", "debug"),
        ("return getfenv(1)", "getfenv"),
        ("string.upper = nil; return true", "string"),
        ("_G.x = 1; return true", "_G"),
    ] {
        let runtime = runtime_with(
            FunctionKind::Filter,
            &format!("function filter() {escape} end"),
        );
        let error = runtime.filter("f", message(&runtime)).unwrap_err();
        assert_eq!(error.failure, Failure::Raised, "{what}: {error}");
    }
    // A global a function sets stays its own.
    let mut runtime = runtime_with(
        FunctionKind::Filter,
        "seen = 0\nfunction filter() seen = seen + 1; return seen == 1 end",
    );
    runtime
        .load(
            "other",
            FunctionKind::Filter,
            "function filter() return seen == nil end",
            "other.lua",
            TIMEOUT,
        )
        .unwrap();
    assert!(runtime.filter("f", message(&runtime)).unwrap());
    assert!(runtime.filter("other", message(&runtime)).unwrap());
}

#[test]
fn compile_errors_give_the_file_and_line() {
    let mut runtime = Runtime::new(Limits {
        memory_bytes: 16 * 1024 * 1024,
    })
    .unwrap();
    let error = runtime
        .load(
            "broken",
            FunctionKind::Transform,
            "function transform(a, r)\n  return {x = }\nend",
            "functions/broken.lua",
            TIMEOUT,
        )
        .unwrap_err();
    assert!(
        error.message.starts_with("functions/broken.lua:2:"),
        "{error}"
    );
    let error = runtime
        .load(
            "misnamed",
            FunctionKind::Filter,
            "function transform() end",
            "m.lua",
            TIMEOUT,
        )
        .unwrap_err();
    assert!(error.message.contains("no function `filter`"), "{error}");
}

#[test]
fn messages_written_as_json_are_checked() {
    let runtime = runtime_with(FunctionKind::Filter, "function filter() return true end");
    let lua = runtime.lua();
    let error = json_args(lua, &serde_json::json!({"action": "upsert", "record": {}}))
        .err()
        .unwrap();
    assert!(error.contains("insert, update, delete or read"), "{error}");
    let error = json_args(lua, &serde_json::json!({"action": "insert"}))
        .err()
        .unwrap();
    assert!(error.contains("`record`"), "{error}");
}
