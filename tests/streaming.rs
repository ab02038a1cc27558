//! Changes stream into the embedded index and leave it equal to the table.

mod common;

use std::time::Duration;

use common::{assert_index_equals_table, documents, wait_until, Sluice, TestDb};
use serde_json::json;

const PRODUCTS: &str = "
CREATE TABLE products (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    price numeric(12, 2),
    tags text[],
    active boolean NOT NULL,
    attributes jsonb,
    updated_at timestamptz NOT NULL DEFAULT now()
)";

fn insert_products(from: i64, to: i64) -> String {
    format!(
        "INSERT INTO products (id, name, price, tags, active, attributes)
         SELECT i, 'product ' || i, (i % 1000) * 1.25, ARRAY['t' || (i % 7), 'all'], i % 3 = 0,
                jsonb_build_object('n', i, 'even', i % 2 = 0)
         FROM generate_series({from}, {to}) AS i"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn inserts_updates_deletes_and_truncate_over_10k_rows() {
    let db = TestDb::new("crud").await;
    db.exec(PRODUCTS).await;
    let config = db.config("[[tables]]\nname = \"public.products\"", "shards = 3");
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;

    // Several transactions, some large, some single-row.
    db.exec(&insert_products(1, 6000)).await;
    for i in 6001..=6100 {
        db.exec(&insert_products(i, i)).await;
    }
    db.exec(&insert_products(6101, 10_000)).await;
    db.exec(
        "UPDATE products SET price = price + 1, tags = tags || 'updated'::text WHERE id % 3 = 0",
    )
    .await;
    db.exec("UPDATE products SET name = name || ' v2' WHERE id % 5 = 0")
        .await;
    // Several changes to one key inside one transaction collapse to the last state.
    db.exec("BEGIN; UPDATE products SET name = 'a' WHERE id = 7; UPDATE products SET name = 'b' WHERE id = 7; DELETE FROM products WHERE id = 8; INSERT INTO products (id, name, active) VALUES (8, 'reborn', true); COMMIT").await;
    db.exec("DELETE FROM products WHERE id % 10 = 1").await;
    // A primary key change moves the document.
    db.exec("UPDATE products SET id = id + 100000 WHERE id BETWEEN 20 AND 29")
        .await;
    sluice.assert_running();
    assert_index_equals_table(&db, "products", "products", "id").await;
    assert_eq!(documents(&db.data_dir(), "products", "id").len(), 9000);

    db.exec("TRUNCATE products").await;
    assert!(
        wait_until(Duration::from_secs(30), || async {
            documents(&db.data_dir(), "products", "id").is_empty()
        })
        .await,
        "truncate did not empty the index"
    );
    db.exec(&insert_products(1, 100)).await;
    assert_index_equals_table(&db, "products", "products", "id").await;

    let status = sluice.stop();
    assert!(status.success(), "sluice exited with {status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_type_maps_to_the_expected_json() {
    let db = TestDb::new("types").await;
    db.exec(
        "CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE DOMAIN positive AS integer CHECK (VALUE > 0);
         CREATE TABLE typed (
            id int PRIMARY KEY,
            i2 smallint, i8 bigint, f4 real, f8 double precision, num numeric, b boolean,
            t text, vc varchar(10), ch char(3), u uuid, j json, jb jsonb,
            d date, tm time, ttz timetz, ts timestamp, tstz timestamptz, iv interval,
            ba bytea, ia int[], ta text[], na numeric[], m mood, p positive, inet_col inet
         )",
    )
    .await;
    let config = db.config("[[tables]]\nname = \"typed\"", "");
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    db.exec(
        r#"INSERT INTO typed VALUES
          (1, -32768, 9223372036854775807, 1.5, 'NaN', 123456789012345678901234567890.123456789, true,
           'he said "hi"\n', 'abc', 'ab', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2]}', '{"b": {"c": null}}',
           '2024-02-29', '13:14:15.5', '13:14:15+02', '2024-02-29 13:14:15.123456', '2024-02-29 13:14:15.123456+05:30', '1 year 2 months 3 days 04:05:06',
           '\x00ff10', '{1,NULL,3}', '{"a b","c,d",NULL,"NULL"}', '{1.5,NaN}', 'happy', 7, '10.0.0.1/8'),
          (2, NULL, NULL, '-Infinity', 'Infinity', 'NaN', false, '', NULL, NULL, NULL, NULL, 'null',
           'infinity', NULL, NULL, '-infinity', NULL, NULL, '', '{}', '{{"x"}}', NULL, NULL, NULL, NULL)"#,
    )
    .await;
    let ok = wait_until(Duration::from_secs(30), || async {
        documents(&db.data_dir(), "typed", "id").len() == 2
    })
    .await;
    assert!(ok, "documents did not arrive; log:\n{}", sluice.log_text());
    let docs = documents(&db.data_dir(), "typed", "id");
    let expected_1 = json!({
        "id": 1, "i2": -32768, "i8": 9223372036854775807_i64, "f4": 1.5, "f8": "NaN",
        "b": true, "t": "he said \"hi\"\\n", "vc": "abc", "ch": "ab ", "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "j": {"a": [1, 2]}, "jb": {"b": {"c": null}},
        "d": "2024-02-29", "tm": "13:14:15.5", "ttz": "13:14:15+02:00", "ts": "2024-02-29T13:14:15.123456",
        "tstz": "2024-02-29T07:44:15.123456+00:00", "iv": "P1Y2M3DT4H5M6S",
        "ba": "AP8Q", "ia": [1, null, 3], "ta": ["a b", "c,d", null, "NULL"], "na": [1.5, "NaN"],
        "m": "happy", "p": 7, "inet_col": "10.0.0.1/8"
    });
    let doc_1 = &docs["1"];
    for (field, want) in expected_1.as_object().unwrap() {
        assert_eq!(&doc_1[field], want, "field {field}");
    }
    // Numeric is lossless: compare the digits, not a float.
    let raw = serde_json::to_string(&doc_1["num"]).unwrap();
    assert_eq!(raw, "123456789012345678901234567890.123456789");
    let doc_2 = &docs["2"];
    let expected_2 = json!({
        "i2": null, "f4": "-Infinity", "f8": "Infinity", "num": "NaN", "b": false, "t": "", "jb": null,
        "d": "infinity", "ts": "-infinity", "ba": "", "ia": [], "ta": [["x"]], "m": null
    });
    for (field, want) in expected_2.as_object().unwrap() {
        assert_eq!(&doc_2[field], want, "field {field}");
    }
    assert!(sluice.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn unchanged_toasted_column_keeps_its_indexed_value() {
    let db = TestDb::new("toast").await;
    db.exec(
        "CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;",
    )
    .await;
    let config = db.config("[[tables]]\nname = \"docs\"", "");
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    // 20 kB, stored out of line without compression: a TOASTed value.
    db.exec("INSERT INTO docs SELECT i, 'first', repeat(md5(i::text), 625) FROM generate_series(1, 3) i").await;
    assert_index_equals_table(&db, "docs", "docs", "id").await;
    // Only the title changes: the WAL carries the body as 'unchanged'.
    db.exec("UPDATE docs SET title = 'second' WHERE id = 1")
        .await;
    // The same in one transaction right after an insert: merged in the shard.
    db.exec("BEGIN; INSERT INTO docs VALUES (4, 'new', repeat('x', 20000)); UPDATE docs SET title = 'newer' WHERE id = 4; COMMIT").await;
    // A key change: the new document has nothing to merge the unchanged body from.
    db.exec("UPDATE docs SET id = 100 WHERE id = 2").await;
    assert_index_equals_table(&db, "docs", "docs", "id").await;
    let docs = documents(&db.data_dir(), "docs", "id");
    assert_eq!(docs["100"]["body"].as_str().unwrap().len(), 20_000);
    assert_eq!(docs["1"]["title"], "second");
    assert_eq!(docs["1"]["body"].as_str().unwrap().len(), 20_000);
    assert!(sluice.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn composite_key_and_replica_identity_full() {
    let db = TestDb::new("keys").await;
    db.exec(
        "CREATE TABLE stock (warehouse text, sku int, qty int, PRIMARY KEY (warehouse, sku));
         CREATE TABLE events (id int PRIMARY KEY, kind text, payload text);
         ALTER TABLE events REPLICA IDENTITY FULL;
         ALTER TABLE events ALTER COLUMN payload SET STORAGE EXTERNAL;",
    )
    .await;
    let config = db.config(
        "[[tables]]\nname = \"stock\"\n[[tables]]\nname = \"events\"\nindex = \"all-events\"",
        "",
    );
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    db.exec("INSERT INTO stock SELECT 'w' || (i % 3), i, i * 10 FROM generate_series(1, 300) i")
        .await;
    db.exec("UPDATE stock SET qty = qty + 1 WHERE sku % 2 = 0")
        .await;
    db.exec("UPDATE stock SET warehouse = 'moved' WHERE sku % 7 = 0")
        .await;
    db.exec("DELETE FROM stock WHERE sku % 5 = 0").await;
    db.exec("INSERT INTO events SELECT i, 'k' || (i % 4), repeat(md5(i::text), 100) FROM generate_series(1, 200) i").await;
    db.exec("UPDATE events SET kind = 'changed' WHERE id % 2 = 0")
        .await;
    db.exec("DELETE FROM events WHERE id % 9 = 0").await;

    assert_index_equals_table(&db, "events", "all-events", "id").await;
    // Composite ids are the key values joined by '|'.
    let ok = wait_until(Duration::from_secs(30), || async {
        let docs = sluice::sink::embedded::search::search(&db.data_dir(), "stock", "*", 1_000_000)
            .unwrap();
        let rows: i64 = db
            .client
            .query_one("SELECT count(*) FROM stock", &[])
            .await
            .unwrap()
            .get(0);
        docs.total as i64 == rows
    })
    .await;
    assert!(ok, "stock index did not converge");
    let docs = documents(&db.data_dir(), "stock", "sku");
    let rows = db.rows("stock", "sku").await;
    assert_eq!(docs, rows);
    assert!(sluice.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn replica_identity_index_keys_documents_by_that_index() {
    let db = TestDb::new("identidx").await;
    db.exec(
        "CREATE TABLE parts (id int PRIMARY KEY, code text NOT NULL, qty int);
         CREATE UNIQUE INDEX parts_code ON parts (code);
         ALTER TABLE parts REPLICA IDENTITY USING INDEX parts_code;",
    )
    .await;
    let config = db.config("[[tables]]\nname = \"parts\"", "");
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    db.exec("INSERT INTO parts SELECT i, 'c' || i, i FROM generate_series(1, 200) i")
        .await;
    db.exec("UPDATE parts SET qty = 0 WHERE id % 2 = 0").await;
    db.exec("UPDATE parts SET code = code || 'x' WHERE id % 5 = 0")
        .await;
    db.exec("DELETE FROM parts WHERE id % 3 = 0").await;
    // Deletes carry only the identity columns: documents are keyed by `code`.
    assert_index_equals_table(&db, "parts", "parts", "code").await;
    assert!(sluice.stop().success());
}
