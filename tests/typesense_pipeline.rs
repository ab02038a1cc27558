//! Postgres → sluice → Typesense (the fake), under random failures.

mod common;
mod fakes;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{wait_until, Sluice, TestDb};
use fakes::typesense::{FakeOptions, FakeTypesense, Faults};
use serde_json::Value;

/// The table's rows as Typesense holds them: `id` is a string.
async fn expected(db: &TestDb) -> BTreeMap<String, Value> {
    db.rows("products", "id")
        .await
        .into_iter()
        .map(|(id, mut row)| {
            row["id"] = Value::String(id.clone());
            (id, row)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_changes_reach_typesense_under_random_failures() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("fault seed {seed}");
    let ts = FakeTypesense::start(FakeOptions {
        api_key: Some("secret".into()),
        seed,
        record_requests: false,
        faults: Faults {
            line_rejected_429: 0.05,
            line_unavailable_503: 0.02,
            request_rejected_429: 0.05,
            request_unavailable_503: 0.03,
            request_dropped: 0.03,
            dropped_after_apply: true,
            ..Faults::default()
        },
    })
    .await;
    let db = TestDb::new("ts_pipeline").await;
    db.exec(
        "CREATE TABLE products (id bigint PRIMARY KEY, name text NOT NULL, price numeric(12, 2), body text);
         ALTER TABLE products ALTER COLUMN body SET STORAGE EXTERNAL;",
    )
    .await;
    let sinks = format!(
        "[[sinks]]\nname = \"typesense\"\ntype = \"typesense\"\nurl = \"{}\"\napi_key_env = \"SLUICE_TEST_TS_KEY\"\n\
         flush_interval_ms = 100\nbatch_max_docs = 300\nmax_retries = 60\nretry_initial_backoff_ms = 5\nretry_max_backoff_ms = 50\n\
         schema = {{ fields = [{{ name = \".*\", type = \"auto\" }}] }}\n",
        ts.url()
    );
    let config = db.config_with_sinks("[[tables]]\nname = \"products\"", "shards = 3", &sinks);
    let log = db.dir.path().join("ts.log");
    let mut command = common::sluice_command();
    command
        .args(["run", "--config", config.to_str().unwrap()])
        .env("SLUICE_TEST_TS_KEY", "secret")
        .stderr(std::fs::File::create(&log).unwrap());
    let mut sluice = Sluice {
        child: command.spawn().unwrap(),
        log,
    };
    db.wait_streaming(&mut sluice).await;

    db.exec(
        "INSERT INTO products SELECT i, 'p' || i, i * 0.5, repeat(md5(i::text), 10) FROM generate_series(1, 8000) i",
    )
    .await;
    db.exec("UPDATE products SET price = price + 1 WHERE id % 2 = 0")
        .await;
    db.exec("UPDATE products SET body = repeat('x', 30000) WHERE id <= 20")
        .await;
    db.exec("UPDATE products SET name = name || '!' WHERE id <= 40")
        .await;
    db.exec("DELETE FROM products WHERE id % 7 = 0").await;
    db.exec("UPDATE products SET id = id + 100000 WHERE id BETWEEN 100 AND 150")
        .await;
    sluice.assert_running();
    let equal = wait_until(Duration::from_secs(90), || async {
        ts.documents("products") == expected(&db).await
    })
    .await;
    assert!(equal, "typesense != table; log:\n{}", sluice.log_text());

    db.exec("TRUNCATE products").await;
    db.exec("INSERT INTO products (id, name) SELECT i, 'after' FROM generate_series(1, 50) i")
        .await;
    let equal = wait_until(Duration::from_secs(60), || async {
        ts.documents("products") == expected(&db).await
    })
    .await;
    assert!(
        equal,
        "after truncate: {} documents",
        ts.documents("products").len()
    );
    assert!(sluice::sink::failed::list(&db.data_dir(), "typesense")
        .unwrap()
        .is_empty());
    assert!(sluice.stop().success());
}
