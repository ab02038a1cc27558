//! Filters, transforms, routing, schema changes and reconnection.

mod common;

use std::time::Duration;

use common::{assert_index_equals_table, documents, wait_until, Sluice, TestDb};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn operations_transforms_templates_and_keys() {
    let db = TestDb::new("features").await;
    db.exec(
        "CREATE SCHEMA shop;
         CREATE TABLE shop.items (id int PRIMARY KEY, sku text UNIQUE NOT NULL, name text, secret text, descr text);
         CREATE TABLE shop.audit (id int PRIMARY KEY, what text);
         ALTER TABLE shop.items REPLICA IDENTITY FULL;",
    )
    .await;
    let tables = r#"
[[tables]]
name = "shop.items"
key = ["sku"]
transform = { drop = ["secret"], rename = { descr = "description" } }

[[tables]]
name = "shop.audit"
operations = ["insert", "update"]
transform = { keep = ["id"] }
"#;
    let config = db.config(tables, "index_template = \"{schema}_{table}\"");
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    db.exec(
        "INSERT INTO shop.items VALUES (1, 'A-1', 'one', 's1', 'first'), (2, 'B-2', 'two', 's2', 'second');
         INSERT INTO shop.audit SELECT i, 'w' FROM generate_series(1, 10) i;
         DELETE FROM shop.audit WHERE id <= 5;
         UPDATE shop.items SET name = 'uno' WHERE id = 1;
         DELETE FROM shop.items WHERE id = 2;",
    )
    .await;
    let ok = wait_until(Duration::from_secs(30), || async {
        documents(&db.data_dir(), "shop_audit", "id").len() == 10
            && documents(&db.data_dir(), "shop_items", "sku").len() == 1
    })
    .await;
    assert!(ok, "documents did not arrive; log:\n{}", sluice.log_text());
    // Deletes are not streamed for audit; only `id` is kept.
    let audit = documents(&db.data_dir(), "shop_audit", "id");
    assert_eq!(audit["3"], json!({"id": 3}));
    // Keyed by sku; `secret` dropped, `descr` renamed.
    let items = documents(&db.data_dir(), "shop_items", "sku");
    assert_eq!(
        items["A-1"],
        json!({"id": 1, "sku": "A-1", "name": "uno", "description": "first"})
    );
    let by_field = sluice::sink::embedded::search::search(
        &db.data_dir(),
        "shop_items",
        "description:first",
        10,
    )
    .unwrap();
    assert_eq!(by_field.total, 1);
    let free_text =
        sluice::sink::embedded::search::search(&db.data_dir(), "shop_items", "uno", 10).unwrap();
    assert_eq!(free_text.total, 1);
    assert!(sluice.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn schema_change_mid_stream_and_lost_connection() {
    let db = TestDb::new("schema").await;
    db.exec("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        .await;
    let config = db.config("[[tables]]\nname = \"notes\"", "");
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    db.exec("INSERT INTO notes SELECT i, 'b' || i FROM generate_series(1, 100) i")
        .await;
    db.exec("ALTER TABLE notes ADD COLUMN stars int DEFAULT 3, ALTER COLUMN body TYPE varchar(50)")
        .await;
    db.exec("INSERT INTO notes SELECT i, 'b' || i, i % 5 FROM generate_series(101, 200) i")
        .await;
    // A schema change writes no row changes: rows reach the index in their
    // new shape when they change.
    db.exec("UPDATE notes SET stars = 5 WHERE id <= 10").await;
    db.exec("UPDATE notes SET stars = 3 WHERE id > 10 AND id <= 100")
        .await;
    assert_index_equals_table(&db, "notes", "notes", "id").await;

    // The server drops the replication connection: sluice reconnects and goes on.
    db.exec("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = current_database()").await;
    db.exec("ALTER TABLE notes DROP COLUMN body").await;
    db.exec("INSERT INTO notes SELECT i, 1 FROM generate_series(201, 300) i")
        .await;
    db.exec("DELETE FROM notes WHERE id % 4 = 0").await;
    db.exec("UPDATE notes SET stars = stars + 1 WHERE id <= 200")
        .await;
    assert_index_equals_table(&db, "notes", "notes", "id").await;
    sluice.assert_running();
    assert!(
        sluice.log_text().contains("restarting"),
        "no restart logged"
    );
    assert!(sluice.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_metrics_are_served() {
    let db = TestDb::new("metrics").await;
    db.exec("CREATE TABLE m (id int PRIMARY KEY)").await;
    let port = common::free_port();
    // Exact counts below: no initial backfill to race the inserts.
    let config = db.config(
        "[[tables]]\nname = \"m\"\n\n[backfill]\ninitial = false",
        &format!("metrics_listen = \"127.0.0.1:{port}\""),
    );
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    db.exec("INSERT INTO m SELECT generate_series(1, 50)").await;
    assert!(
        wait_until(Duration::from_secs(30), || async {
            documents(&db.data_dir(), "m", "id").len() == 50
        })
        .await
    );
    let fetch = move || {
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            stream
                .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .unwrap();
            let mut body = String::new();
            stream.read_to_string(&mut body).unwrap();
            body
        })
    };
    let metrics = [
        "sluice_stage_changes_total{stage=\"decoder\",direction=\"out\"} 50",
        "sluice_sink_writes_total{sink=\"embedded\"} 50",
        "sluice_confirmed_lsn",
        "sluice_pipeline_up 1",
        // Durations are histograms, which Prometheus can take percentiles of.
        "sluice_change_age_seconds_bucket{stage=\"decoder\",le=\"0.001\"}",
        "sluice_change_age_seconds_bucket{stage=\"shard\",le=\"60\"}",
        "sluice_end_to_end_latency_seconds_bucket{sink=\"embedded\",le=\"+Inf\"}",
        "sluice_sink_commit_seconds_bucket{sink=\"embedded\",le=\"0.1\"}",
    ];
    // The confirmed position reaches Postgres (and its gauge) just after the
    // documents become searchable.
    let mut body = String::new();
    for _ in 0..100 {
        body = fetch().await.unwrap();
        if metrics.iter().all(|m| body.contains(m)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for metric in metrics {
        assert!(body.contains(metric), "{metric} missing in:\n{body}");
    }
    assert!(sluice.stop().success());
}
