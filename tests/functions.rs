//! Filter, transform and route functions on real streamed and backfilled
//! changes, and functions that fail.

mod common;

use std::time::Duration;

use common::{cli, documents, wait_until, Sluice, TestDb};
use serde_json::{json, Value};

const FUNCTIONS: &str = r#"
[[tables]]
name = "products"
filter = "no_drafts"
route = "by_tenant"
transform.function = "to_doc"

[functions.no_drafts]
kind = "filter"
code = 'function filter(action, record) return not string.find(record.name, "draft") end'

[functions.by_tenant]
kind = "route"
code = '''
function route(action, record, changes, metadata)
  local index = "products_" .. record.tenant
  if action == "delete" or not record.active then
    return {index = index, action = "delete"}
  end
  return index
end
'''

[functions.to_doc]
kind = "transform"
timeout_ms = 50
code = '''
function transform(action, record, changes, metadata)
  if record.name == "boom" then error("cannot index boom") end
  if record.name == "spin" then while true do end end
  if record.name == "hog" then
    local t = {}
    for i = 1, 1e9 do t[i] = string.rep("x", 1000) .. i end
  end
  local doc = {
    id = record.id,
    title = string.upper(record.name),
    cents = math.floor(record.price * 100 + 0.5),
    action = action,
    source = metadata.table_schema .. "." .. metadata.table_name,
    sink = metadata.sink,
    database = metadata.database_name,
  }
  if changes and changes.price then
    doc.old_cents = math.floor(changes.price * 100 + 0.5)
  end
  local annotations = metadata.transaction_annotations
  if annotations then doc.by = annotations.user end
  return doc
end
'''
"#;

fn failed(db: &TestDb) -> Vec<Value> {
    let path = db.data_dir().join("failed").join("@functions.jsonl");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn functions_filter_route_and_transform_streamed_and_backfilled_changes() {
    let db = TestDb::new("functions").await;
    db.exec(
        "CREATE TABLE products (id int PRIMARY KEY, name text NOT NULL, price numeric(10, 2),
                                active boolean NOT NULL, tenant text NOT NULL);
         ALTER TABLE products REPLICA IDENTITY FULL;
         INSERT INTO products VALUES (1, 'kettle', 20.5, true, 'acme'),
                                     (2, 'draft lamp', 5, true, 'acme'),
                                     (3, 'chair', 40, true, 'globex');",
    )
    .await;
    let config = db.config(FUNCTIONS, "function_memory_mb = 16");
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    // The backfill: the draft is filtered out, the rest routed by tenant.
    let backfilled = wait_until(Duration::from_secs(30), || async {
        documents(&db.data_dir(), "products_acme", "id").len() == 1
            && documents(&db.data_dir(), "products_globex", "id").len() == 1
    })
    .await;
    assert!(
        backfilled,
        "backfill did not arrive; log:\n{}",
        sluice.log_text()
    );
    let acme = documents(&db.data_dir(), "products_acme", "id");
    assert_eq!(
        acme["1"],
        json!({"id": 1, "title": "KETTLE", "cents": 2050, "action": "read",
               "source": "public.products", "sink": "embedded", "database": db.name,
               "sluice_table": "public.products"})
    );

    db.exec(
        "INSERT INTO products VALUES (4, 'boom', 1, true, 'acme'), (5, 'spin', 1, true, 'acme'),
                                     (6, 'hog', 1, true, 'acme');
         BEGIN;
         SELECT pg_logical_emit_message(true, 'sluice.annotations', '{\"user\": \"ana\"}');
         UPDATE products SET price = 25 WHERE id = 1;
         COMMIT;
         UPDATE products SET active = false WHERE id = 3;
         INSERT INTO products VALUES (7, 'stool', 10, true, 'globex'), (8, 'draft desk', 1, true, 'globex');",
    )
    .await;
    let streamed = wait_until(Duration::from_secs(30), || async {
        let acme = documents(&db.data_dir(), "products_acme", "id");
        let globex = documents(&db.data_dir(), "products_globex", "id");
        acme.get("1").is_some_and(|d| d["cents"] == 2500)
            && globex.keys().collect::<Vec<_>>() == ["7"]
            && failed(&db).len() == 3
    })
    .await;
    assert!(
        streamed,
        "changes did not arrive: acme {:?}, globex {:?}, failed {:?}; log:\n{}",
        documents(&db.data_dir(), "products_acme", "id"),
        documents(&db.data_dir(), "products_globex", "id"),
        failed(&db),
        sluice.log_text()
    );
    let acme = documents(&db.data_dir(), "products_acme", "id");
    assert_eq!(acme["1"]["old_cents"], 2050);
    assert_eq!(acme["1"]["by"], "ana");
    assert_eq!(acme["1"]["action"], "update");
    assert_eq!(acme.len(), 1, "{acme:?}");

    // Each failed call is kept with its error and the message it got.
    let failed = failed(&db);
    let by_id = |id: &str| failed.iter().find(|m| m["id"] == id).unwrap().clone();
    let boom = by_id("4");
    assert!(
        boom["error"]
            .as_str()
            .unwrap()
            .contains("cannot index boom"),
        "{boom}"
    );
    let input: Value = serde_json::from_str(boom["document"].as_str().unwrap()).unwrap();
    assert_eq!(input["action"], "insert");
    assert_eq!(input["record"]["name"], "boom");
    assert!(by_id("5")["error"]
        .as_str()
        .unwrap()
        .contains("time budget"));
    let hog = by_id("6")["error"].as_str().unwrap().to_owned();
    assert!(hog.contains("MiB") || hog.contains("time budget"), "{hog}");
    sluice.assert_running();
    assert!(sluice.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn where_predicates_hold_the_index_to_the_matching_rows() {
    let db = TestDb::new("where").await;
    db.exec(
        "CREATE TABLE items (id int PRIMARY KEY, price numeric(10, 2), active boolean, status text);
         INSERT INTO items SELECT i, i, i % 2 = 0, CASE WHEN i % 3 = 0 THEN 'gone' ELSE 'ok' END
           FROM generate_series(1, 40) i;",
    )
    .await;
    let tables = r#"
[[tables]]
name = "items"
where = ["active = true", "price > 10", "status in ('ok', 'new')"]
"#;
    let config = db.config(tables, "");
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    db.exec(
        "INSERT INTO items VALUES (100, 50, true, 'new'), (101, 50, false, 'new'), (102, 5, true, 'ok');
         UPDATE items SET active = false WHERE id = 20;   -- stops matching: removed
         UPDATE items SET active = true WHERE id = 25;    -- starts matching: added
         UPDATE items SET price = price + 1 WHERE id = 22; -- still matches
         DELETE FROM items WHERE id IN (14, 15);",
    )
    .await;
    let expected = || async {
        db.rows(
            "(SELECT * FROM items WHERE active AND price > 10 AND status IN ('ok', 'new'))",
            "id",
        )
        .await
    };
    let ok = wait_until(Duration::from_secs(30), || async {
        documents(&db.data_dir(), "items", "id") == expected().await
    })
    .await;
    assert!(
        ok,
        "index != matching rows: {}; log:\n{}",
        common::difference(&documents(&db.data_dir(), "items", "id"), &expected().await),
        sluice.log_text()
    );
    let docs = documents(&db.data_dir(), "items", "id");
    assert!(docs.contains_key("25") && docs.contains_key("100"));
    assert!(!docs.contains_key("20") && !docs.contains_key("101") && !docs.contains_key("102"));
    assert!(sluice.stop().success());
}

/// `transform.fields` and `transform.path` on backfilled and streamed rows:
/// the index ends equal to the same shapes made by SQL.
#[tokio::test(flavor = "multi_thread")]
async fn added_fields_and_paths_shape_the_documents() {
    let db = TestDb::new("shapes").await;
    db.exec(
        "CREATE TABLE items (id int PRIMARY KEY, name text, sku text, secret text);
         INSERT INTO items SELECT i, 'item ' || i, CASE WHEN i % 4 = 0 THEN NULL ELSE 'S' || i END, 'x'
           FROM generate_series(1, 30) i;
         CREATE TABLE events (id int PRIMARY KEY, payload jsonb);
         INSERT INTO events SELECT i, jsonb_build_object('product', jsonb_build_object('sku', 'E' || i, 'n', i), 'other', 1)
           FROM generate_series(1, 20) i;",
    )
    .await;
    let tables = r#"
[[tables]]
name = "items"
transform = { drop = ["secret"], fields = { kind = "product", label = "{name} ({sku})", rank = 1 } }

[[tables]]
name = "events"
transform = { path = "record.payload.product" }
"#;
    let config = db.config(tables, "");
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    db.exec(
        "INSERT INTO items VALUES (100, 'new \"one\"', 'N1', 'x'), (101, 'nameless', NULL, 'x');
         UPDATE items SET name = 'renamed' WHERE id = 5;
         UPDATE items SET sku = NULL WHERE id = 6;
         DELETE FROM items WHERE id IN (7, 8);
         INSERT INTO events VALUES (100, '{\"product\": {\"sku\": \"E100\", \"n\": 100}}');
         UPDATE events SET payload = jsonb_set(payload, '{product,n}', '-1') WHERE id = 3;
         DELETE FROM events WHERE id = 4;",
    )
    .await;
    let items = || async {
        db.rows(
            "(SELECT id, name, sku, 'product' AS kind,
                     name || ' (' || coalesce(sku, '') || ')' AS label, 1 AS rank FROM items)",
            "id",
        )
        .await
    };
    let events = || async {
        db.json_rows("SELECT payload->'product'->>'sku', (payload->'product')::text FROM events")
            .await
    };
    let ok = wait_until(Duration::from_secs(30), || async {
        documents(&db.data_dir(), "items", "id") == items().await
            && documents(&db.data_dir(), "events", "sku") == events().await
    })
    .await;
    assert!(
        ok,
        "items: {}; events: {}; log:\n{}",
        common::difference(&documents(&db.data_dir(), "items", "id"), &items().await),
        common::difference(&documents(&db.data_dir(), "events", "sku"), &events().await),
        sluice.log_text()
    );
    let docs = documents(&db.data_dir(), "items", "id");
    assert_eq!(docs["100"]["label"], json!("new \"one\" (N1)"));
    assert_eq!(docs["6"]["label"], json!("item 6 ()"));
    assert!(sluice.stop().success());
}

/// The README's filter and route, as written there.
const README_FUNCTIONS: &str = r#"
[[tables]]
name = "products"
filter = "only_active"
route = "by_tenant"

[functions.only_active]
kind = "filter"
code = 'function filter(action, record, changes, metadata) return record.active end'

[functions.by_tenant]
kind = "route"
code = '''
function route(action, record, changes, metadata)
  if not record.active then return {index = "products_" .. record.tenant, action = "delete"} end
  return "products_" .. record.tenant   -- or {index = ..., action = "index"}
end
'''
"#;

#[tokio::test(flavor = "multi_thread")]
async fn deletes_and_route_changes_leave_every_index_as_the_route_says() {
    let db = TestDb::new("route_moves").await;
    db.exec(
        "CREATE TABLE products (id int PRIMARY KEY, name text, active boolean NOT NULL, tenant text NOT NULL);
         INSERT INTO products SELECT i, 'p' || i, i % 5 <> 0, CASE WHEN i % 2 = 0 THEN 'a' ELSE 'b' END
         FROM generate_series(1, 40) i;",
    )
    .await;
    let config = db.config(README_FUNCTIONS, "");

    // Without the old rows, deletes could not be filtered or routed.
    let (code, out, err) = common::run_to_end(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        out.contains("has a filter and a route function but not REPLICA IDENTITY FULL")
            && out.contains("ALTER TABLE \"public\".\"products\" REPLICA IDENTITY FULL;"),
        "{out}"
    );
    db.exec("ALTER TABLE products REPLICA IDENTITY FULL").await;

    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    let expected = |rows: std::collections::BTreeMap<String, Value>, tenant: &str| {
        // Documents of a routed table carry their table.
        rows.into_iter()
            .filter(|(_, row)| row["active"] == true && row["tenant"] == tenant)
            .map(|(id, mut row)| {
                row["sluice_table"] = json!("public.products");
                (id, row)
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let equal = || async {
        let rows = db.rows("products", "id").await;
        ["a", "b"].iter().all(|tenant| {
            documents(&db.data_dir(), &format!("products_{tenant}"), "id")
                == expected(rows.clone(), tenant)
        })
    };
    assert!(
        wait_until(Duration::from_secs(30), equal).await,
        "backfill; log:\n{}",
        sluice.log_text()
    );

    db.exec(
        "DELETE FROM products WHERE id IN (2, 3);                     -- active rows
         DELETE FROM products WHERE id = 5;                           -- an inactive one
         UPDATE products SET active = false WHERE id IN (4, 7);       -- they leave
         UPDATE products SET active = true WHERE id = 10;             -- it arrives
         UPDATE products SET tenant = 'b' WHERE id IN (6, 8);         -- they move
         UPDATE products SET tenant = 'a', name = 'moved' WHERE id = 9;
         BEGIN; UPDATE products SET tenant = 'b' WHERE id = 12; UPDATE products SET tenant = 'a' WHERE id = 12; COMMIT;",
    )
    .await;
    let settled = wait_until(Duration::from_secs(30), equal).await;
    let rows = db.rows("products", "id").await;
    for tenant in ["a", "b"] {
        let docs = documents(&db.data_dir(), &format!("products_{tenant}"), "id");
        assert!(
            settled,
            "products_{tenant}: {}; log:\n{}",
            common::difference(&docs, &expected(rows.clone(), tenant)),
            sluice.log_text()
        );
    }
    assert!(failed(&db).is_empty(), "{:?}", failed(&db));

    // A truncate reaches every index the route wrote to.
    db.exec("TRUNCATE products").await;
    let emptied = wait_until(Duration::from_secs(30), || async {
        documents(&db.data_dir(), "products_a", "id").is_empty()
            && documents(&db.data_dir(), "products_b", "id").is_empty()
    })
    .await;
    assert!(emptied, "log:\n{}", sluice.log_text());
    assert!(sluice.stop().success());
}

const FAILING: &str = r#"
[[tables]]
name = "items"
transform.function = "to_doc"

[functions.to_doc]
kind = "transform"
code = '''
function transform(action, record)
  if string.find(record.name, "boom") then error("cannot index boom") end
  return {id = record.id, title = string.upper(record.name)}
end
'''

[api]
listen = "127.0.0.1:0"
"#;

/// Starts sluice on `config` and retries every parked function call.
async fn restart_and_retry_every_call(db: &TestDb, config: &std::path::Path) -> Sluice {
    let mut sluice = Sluice::run_config(config);
    db.wait_streaming(&mut sluice).await;
    let (code, out, err) = cli(&[
        "failed",
        "retry",
        "--config",
        config.to_str().unwrap(),
        "--sink",
        "@functions",
        "--all",
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    sluice
}

fn titles(db: &TestDb) -> Vec<(String, Value)> {
    documents(&db.data_dir(), "items", "id")
        .into_iter()
        .map(|(id, doc)| (id, doc["title"].clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_call_holds_back_its_rows_changes_pauses_past_the_maximum_and_is_retried_with_the_fixed_function(
) {
    let db = TestDb::new("functions_retry").await;
    db.exec(
        "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);
         INSERT INTO items VALUES (1, 'a'), (2, 'b');",
    )
    .await;
    let config = db.config(FAILING, "function_max_parked = 3");
    let config_arg = config.to_str().unwrap().to_owned();
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    assert!(wait_until(Duration::from_secs(30), || async { titles(&db).len() == 2 }).await);

    // A failed call, then a change of the same row that would pass: it
    // waits behind the call, so the row's changes stay in order.
    db.exec("INSERT INTO items VALUES (3, 'boom')").await;
    db.exec("UPDATE items SET name = 'c' WHERE id = 3").await;
    db.exec("INSERT INTO items VALUES (9, 'i')").await;
    let held = wait_until(Duration::from_secs(30), || async {
        failed(&db).len() == 2 && titles(&db).len() == 3
    })
    .await;
    assert!(
        held,
        "{:?} {:?}\n{}",
        failed(&db),
        titles(&db),
        sluice.log_text()
    );
    assert!(!titles(&db).iter().any(|(id, _)| id == "3"));
    assert_eq!(
        failed(&db)[1]["error"],
        sluice::sink::failed::WAITING_BEHIND
    );

    // The third parked call pauses the pipeline until one is discarded.
    db.exec("INSERT INTO items VALUES (4, 'boom')").await;
    assert!(wait_until(Duration::from_secs(30), || async { failed(&db).len() == 3 }).await);
    db.exec("INSERT INTO items VALUES (5, 'e')").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !titles(&db).iter().any(|(id, _)| id == "5"),
        "the pipeline went on past function_max_parked"
    );
    assert!(
        sluice.log_text().contains("too many parked"),
        "{}",
        sluice.log_text()
    );
    let key = failed(&db).iter().find(|m| m["id"] == "4").unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let (code, _, err) = cli(&[
        "failed",
        "discard",
        "--config",
        &config_arg,
        "--sink",
        "@functions",
        "--key",
        &key,
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let resumed = wait_until(Duration::from_secs(30), || async {
        titles(&db).iter().any(|(id, _)| id == "5")
    })
    .await;
    assert!(resumed, "{}", sluice.log_text());
    assert!(sluice.stop().success());

    // Fixed, the function runs again on the rows of the parked calls.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("string.find(record.name, \"boom\")", "false"),
    )
    .unwrap();
    let sluice = restart_and_retry_every_call(&db, &config).await;
    let retried = wait_until(Duration::from_secs(30), || async {
        titles(&db)
            .iter()
            .any(|(id, title)| id == "3" && title == "C")
            && failed(&db).is_empty()
    })
    .await;
    assert!(
        retried,
        "{:?} {:?}\n{}",
        titles(&db),
        failed(&db),
        sluice.log_text()
    );
    assert!(sluice.stop().success());
}

const FAILING_ROUTE: &str = r#"
[[tables]]
name = "things"
route = "by_tenant"

[functions.by_tenant]
kind = "route"
code = '''
function route(action, record)
  if record.name == "boom" then error("cannot route boom") end
  return "things_" .. record.tenant
end
'''

[api]
listen = "127.0.0.1:0"
"#;

/// The ids in each of the indexes `things_x` and `things_y`, with names.
fn things(db: &TestDb) -> [Vec<(String, Value)>; 2] {
    ["things_x", "things_y"].map(|index| {
        documents(&db.data_dir(), index, "id")
            .into_iter()
            .map(|(id, doc)| (id, doc["name"].clone()))
            .collect()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_call_of_a_row_deleted_or_moved_since_leaves_no_document_behind() {
    let db = TestDb::new("functions_retry_gone").await;
    db.exec(
        "CREATE TABLE things (id int PRIMARY KEY, name text NOT NULL, tenant text NOT NULL);
         ALTER TABLE things REPLICA IDENTITY FULL;
         INSERT INTO things VALUES (1, 'a', 'x'), (2, 'b', 'y'), (3, 'c', 'x'), (4, 'd', 'y');",
    )
    .await;
    let config = db.config(FAILING_ROUTE, "");
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    let ids =
        |db: &TestDb| things(db).map(|docs| docs.into_iter().map(|(id, _)| id).collect::<Vec<_>>());
    assert!(
        wait_until(Duration::from_secs(30), || async {
            ids(&db) == [vec!["1", "3"], vec!["2", "4"]]
        })
        .await,
        "{:?}\n{}",
        things(&db),
        sluice.log_text()
    );

    // The route fails on three rows; while their calls are parked, one row
    // is deleted and one moves to the other index (both wait behind).
    db.exec("UPDATE things SET name = 'boom' WHERE id IN (1, 2, 3)")
        .await;
    db.exec("DELETE FROM things WHERE id = 1").await;
    db.exec("UPDATE things SET tenant = 'y', name = 'moved' WHERE id = 3")
        .await;
    assert!(
        wait_until(Duration::from_secs(30), || async { failed(&db).len() == 5 }).await,
        "{:?}\n{}",
        failed(&db),
        sluice.log_text()
    );
    assert!(sluice.stop().success());

    // Fixed and retried: every index ends as the route says for the rows now.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("record.name == \"boom\"", "false")).unwrap();
    let sluice = restart_and_retry_every_call(&db, &config).await;
    let expected = [
        vec![],
        vec![
            ("2".to_owned(), json!("boom")),
            ("3".to_owned(), json!("moved")),
            ("4".to_owned(), json!("d")),
        ],
    ];
    let retried = wait_until(Duration::from_secs(30), || async {
        things(&db) == expected && failed(&db).is_empty()
    })
    .await;
    assert!(
        retried,
        "{:?} {:?}\n{}",
        things(&db),
        failed(&db),
        sluice.log_text()
    );
    assert!(sluice.stop().success());
}
