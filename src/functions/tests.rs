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

/// A change to a table of many types, as the decoder makes it.
fn typed_change(op: crate::model::change::Op) -> crate::model::change::Change {
    use std::sync::Arc;

    use crate::lsn::Lsn;
    use crate::model::change::testing::{relation, tuple};
    use crate::model::change::Change;
    use crate::postgres::pgoutput::ReplicaIdentity;

    let columns: [(&str, u32, Option<&str>); 13] = [
        ("id", 20, Some("12345678901234567")),
        ("small", 23, Some("-42")),
        ("name", 25, Some("caf\u{e9} \"quoted\"\nline")),
        ("price", 1700, Some("19.90")),
        ("huge", 1700, Some("123456789012345678901234")),
        ("active", 16, Some("f")),
        ("missing", 16, None),
        ("at", 1184, Some("2024-05-01 10:20:30+00")),
        ("attrs", 3802, Some(r#"{"a": [1, 2.5, "x"], "b": null}"#)),
        ("ratio", 701, Some("NaN")),
        ("far", 701, Some("1e+300")),
        // Names that are not Lua names: a keyword, and one with a space.
        ("end", 23, Some("5")),
        ("list price", 25, Some("on request")),
    ];
    let mut rel = relation("items", &columns.map(|(name, oid, _)| (name, oid)));
    rel.replica_identity = ReplicaIdentity::Full;
    let new: Vec<Option<&str>> = columns.iter().map(|c| c.2).collect();
    let mut old = new.clone();
    old[3] = Some("17.50");
    Change {
        op,
        rel: Arc::new(rel),
        new: Some(tuple(&new)),
        old: Some(tuple(&old)),
        commit_lsn: Lsn(0x1_0000_002A),
        commit_time: 0,
        seq: 7,
        xid: 0,
        fill_unchanged: false,
        retry: false,
        annotations: Some(std::sync::Arc::from(r#"{"user":"ana"}"#)),
    }
}

#[test]
fn the_fast_message_equals_the_general_one() {
    use crate::functions::message::{ChangeInput, MessageBuilder};
    use crate::model::change::Op;

    let runtime = runtime_with(
        FunctionKind::Transform,
        "function transform(action, record, changes, metadata)
           return {action = action, record = record, changes = changes, metadata = metadata}
         end",
    );
    for op in [Op::Insert, Op::Update, Op::Delete, Op::Read] {
        let change = typed_change(op);
        let mut builder = MessageBuilder::new("shop");
        let general = builder
            .args(runtime.lua(), &change, Some("search"))
            .unwrap();
        let general: serde_json::Value =
            serde_json::from_slice(&runtime.transform("f", general).unwrap()).unwrap();
        let fast = ChangeInput {
            builder: &mut builder,
            lua: runtime.lua(),
            change: &change,
            sink: Some("search"),
        };
        let fast: serde_json::Value =
            serde_json::from_slice(&runtime.transform("f", fast).unwrap()).unwrap();
        assert_eq!(fast, general, "{op:?}");
        let record = &fast["record"];
        assert_eq!(record["id"], "12345678901234567", "beyond 2^53: text");
        assert_eq!(record["small"], -42);
        assert_eq!(record["name"], "caf\u{e9} \"quoted\"\nline");
        // A delete's record is the old row.
        let price = if op == Op::Delete { 17.5 } else { 19.9 };
        assert_eq!(record["price"], price);
        assert_eq!(record["huge"], "123456789012345678901234");
        assert_eq!(record["active"], false);
        assert!(record.get("missing").is_none());
        assert_eq!(record["at"], "2024-05-01T10:20:30+00:00");
        assert_eq!(record["attrs"], serde_json::json!({"a": [1, 2.5, "x"]}));
        assert_eq!(record["ratio"], "NaN", "no JSON number: text");
        assert_eq!(record["far"], 1e300);
        assert_eq!(record["end"], 5);
        assert_eq!(record["list price"], "on request");
        let metadata = &fast["metadata"];
        assert_eq!(metadata["table_name"], "items");
        assert_eq!(metadata["commit_idx"], 7);
        assert_eq!(metadata["idempotency_key"], "000000010000002A-7");
        assert_eq!(metadata["sink"], "search");
        assert_eq!(metadata["database_name"], "shop");
        assert_eq!(metadata["transaction_annotations"]["user"], "ana");
        if op == Op::Update {
            assert_eq!(fast["changes"], serde_json::json!({"price": 17.5}));
        } else {
            assert!(fast.get("changes").is_none());
        }
    }
}

#[test]
fn the_memory_cap_holds_from_the_first_line_on_both_message_paths() {
    use crate::functions::message::{ChangeInput, MessageBuilder};
    use crate::model::change::Op;

    // One allocation of twice the cap, before any loop or call of the
    // function's own.
    let runtime = runtime_with(
        FunctionKind::Transform,
        r#"function transform(action, record)
             local s = string.rep("x", 32 * 1024 * 1024)
             return {n = #s}
           end"#,
    );
    let error = runtime.transform("f", message(&runtime)).unwrap_err();
    assert_eq!(error.failure, Failure::Memory, "{error:?}");
    let change = typed_change(Op::Insert);
    let mut builder = MessageBuilder::new("shop");
    for _ in 0..3 {
        let input = ChangeInput {
            builder: &mut builder,
            lua: runtime.lua(),
            change: &change,
            sink: None,
        };
        let error = runtime.transform("f", input).unwrap_err();
        assert_eq!(error.failure, Failure::Memory, "{error:?}");
    }
    // The cap is lifted between calls: building a message is not guarded.
    assert_eq!(runtime.lua().set_memory_limit(0).unwrap(), 0);
}

#[test]
fn garbage_of_earlier_calls_does_not_fail_later_ones() {
    // Each call leaves about 1 MiB behind; the runtime may hold 16 MiB.
    let runtime = runtime_with(
        FunctionKind::Transform,
        r#"function transform(action, record)
             local parts = {}
             for i = 1, 1000 do parts[i] = string.rep("x", 1000) .. i end
             return {id = record.id, n = #parts}
           end"#,
    );
    for _ in 0..100 {
        runtime.transform("f", message(&runtime)).unwrap();
    }
}
