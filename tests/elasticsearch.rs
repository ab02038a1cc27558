//! The Elasticsearch sink against a fake server that answers like
//! Elasticsearch, partial failures included.

mod common;
mod fakes;

use std::time::Duration;

use common::{wait_until, Sluice, TestDb};
use fakes::elasticsearch::{FakeElasticsearch, FakeOptions, Faults};
use serde_json::Value;

const PRODUCTS: &str = "
CREATE TABLE products (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    price numeric(12, 2),
    tags text[],
    poison boolean NOT NULL DEFAULT false,
    body text
);
ALTER TABLE products ALTER COLUMN body SET STORAGE EXTERNAL;";

fn sink(url: &str, extra: &str) -> String {
    format!(
        "[[sinks]]\nname = \"search\"\ntype = \"elasticsearch\"\nurl = \"{url}\"\nflush_interval_ms = 100\nbatch_max_docs = 300\n\
         max_retries = 60\nretry_initial_backoff_ms = 5\nretry_max_backoff_ms = 50\nrequest_timeout_ms = 5000\n{extra}"
    )
}

/// A database of its own with the products table.
async fn products_db(hint: &str) -> TestDb {
    let db = TestDb::new(hint).await;
    db.exec(PRODUCTS).await;
    db
}

/// A config streaming the products table into `sinks`.
fn products_config(db: &TestDb, pipeline: &str, sinks: &str) -> std::path::PathBuf {
    db.config_with_sinks("[[tables]]\nname = \"products\"", pipeline, sinks)
}

/// Waits until the fake holds exactly the table's rows.
async fn assert_engine_equals_table(db: &TestDb, es: &FakeElasticsearch, table: &str, index: &str) {
    let equal = wait_until(Duration::from_secs(90), || async {
        es.documents(index) == db.rows(table, "id").await
    })
    .await;
    if !equal {
        let rows = db.rows(table, "id").await;
        panic!(
            "{index}: {}",
            common::difference(&es.documents(index), &rows)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_changes_survive_random_failures() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("fault seed {seed}");
    let es = FakeElasticsearch::start(FakeOptions {
        seed,
        record_requests: false,
        faults: Faults {
            item_rejected_429: 0.05,
            item_unavailable_503: 0.02,
            request_rejected_429: 0.05,
            request_bad_gateway_502: 0.03,
            request_unavailable_503: 0.03,
            request_dropped: 0.03,
            ..Faults::default()
        },
        ..FakeOptions::default()
    })
    .await;
    let db = products_db("es_faults").await;
    let config = products_config(&db, "shards = 3", &sink(&es.url(), ""));
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;

    db.exec(
        "INSERT INTO products (id, name, price, tags, body)
         SELECT i, 'p' || i, i * 0.5, ARRAY['a', 't' || (i % 5)], repeat(md5(i::text), 10) FROM generate_series(1, 6000) i",
    )
    .await;
    db.exec("UPDATE products SET price = price + 1 WHERE id % 2 = 0")
        .await;
    // Only a small column changes: the TOASTed body is 'unchanged' in the WAL.
    db.exec("UPDATE products SET body = repeat('x', 30000) WHERE id <= 20")
        .await;
    db.exec("UPDATE products SET name = name || '!' WHERE id <= 40")
        .await;
    db.exec("DELETE FROM products WHERE id % 7 = 0").await;
    db.exec("UPDATE products SET id = id + 100000 WHERE id BETWEEN 100 AND 150")
        .await;
    db.exec(
        "INSERT INTO products (id, name, price, tags) SELECT i, 'q' || i, 1, '{}' FROM generate_series(6001, 7000) i",
    )
    .await;
    sluice.assert_running();
    assert_engine_equals_table(&db, &es, "products", "products").await;

    db.exec("TRUNCATE products").await;
    db.exec("INSERT INTO products (id, name) SELECT i, 'after' FROM generate_series(1, 50) i")
        .await;
    assert_engine_equals_table(&db, &es, "products", "products").await;
    let failed = sluice::sink::failed::list(&db.data_dir(), "search").unwrap();
    assert!(failed.is_empty(), "nothing should be parked: {failed:?}");
    assert!(sluice.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_write_never_overwrites_a_newer_one() {
    let es = FakeElasticsearch::start(FakeOptions::default()).await;
    let db = products_db("es_stale").await;
    // The index already holds a newer version of row 1 than anything sluice will send.
    let newer = serde_json::json!({"id": 1, "name": "from the future"});
    es.insert_document("products", "1", newer.clone(), u64::MAX / 4);
    let config = products_config(&db, "", &sink(&es.url(), ""));
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    db.exec("INSERT INTO products (id, name) VALUES (1, 'old'), (2, 'two')")
        .await;
    db.exec("UPDATE products SET name = 'still old' WHERE id = 1")
        .await;
    assert!(
        wait_until(Duration::from_secs(30), || async {
            es.document("products", "2").is_some()
        })
        .await
    );
    // Replays after a crash resend older versions of row 2: they must not win either.
    db.exec("UPDATE products SET name = 'newest' WHERE id = 2")
        .await;
    assert!(
        wait_until(Duration::from_secs(30), || async {
            es.document("products", "2")
                .is_some_and(|d| d["name"] == "newest")
        })
        .await
    );
    sluice.kill();
    let sluice = Sluice::run_config(&config);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(es.document("products", "1"), Some(newer));
    assert_eq!(es.document("products", "2").unwrap()["name"], "newest");
    assert!(sluice.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn permanently_failing_documents_are_parked_and_the_rest_flows() {
    let es = FakeElasticsearch::start(FakeOptions {
        faults: Faults {
            poison_field: Some("poison".into()),
            ..Faults::default()
        },
        ..FakeOptions::default()
    })
    .await;
    let db = products_db("es_poison").await;
    // Without the initial backfill: racing the inserts, it could write (and
    // park) a poison row a second time, and this test counts parked writes.
    let config = db.config_with_sinks(
        "[[tables]]\nname = \"products\"\n\n[backfill]\ninitial = false\n[api]\nlisten = \"127.0.0.1:0\"",
        "",
        &sink(&es.url(), ""),
    );
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    db.exec("INSERT INTO products (id, name, poison) SELECT i, 'p' || i, i % 50 = 0 FROM generate_series(1, 500) i")
        .await;
    let healthy = wait_until(Duration::from_secs(30), || async {
        es.doc_count("products") == 490
    })
    .await;
    assert!(healthy, "{} documents", es.doc_count("products"));
    // Parked before the position is confirmed; maybe after the others are visible.
    let parked = db.wait_parked("search", 10).await;
    assert!(parked, "the poison documents were not parked");
    let failed = sluice::sink::failed::list(&db.data_dir(), "search").unwrap();
    let mut ids: Vec<i64> = failed.iter().map(|m| m.id.parse().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, (1..=10).map(|i| i * 50).collect::<Vec<_>>());
    assert!(
        failed[0].error.contains("mapper_parsing_exception"),
        "{}",
        failed[0].error
    );
    let doc: Value = serde_json::from_str(failed[0].document.as_deref().unwrap()).unwrap();
    assert_eq!(doc["poison"], true);

    // A later write to a parked document waits behind it, even if it would succeed.
    db.exec("UPDATE products SET name = 'fixed', poison = false WHERE id = 50")
        .await;
    let waiting = db.wait_parked("search", 11).await;
    assert!(
        waiting,
        "the later write was not parked behind the failed one"
    );
    assert!(es.document("products", "50").is_none());

    // The operator fixes the mapping and retries everything, in order,
    // through the running pipeline's writer.
    es.update_faults(|f| f.poison_field = None);
    let keys: Vec<String> = sluice::sink::failed::list(&db.data_dir(), "search")
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    let data_dir = db.data_dir();
    let (code, out, err) =
        common::run_to_end(&["failed", "list", "--data-dir", data_dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 11, "{out}");
    let (code, out, err) = common::run_to_end(&[
        "failed",
        "retry",
        "--config",
        config.to_str().unwrap(),
        "--sink",
        "search",
        "--all",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("queued 11 parked write(s)"), "{out}");
    let retried = wait_until(Duration::from_secs(30), || async {
        es.doc_count("products") == 500
            && sluice::sink::failed::list(&db.data_dir(), "search")
                .unwrap()
                .is_empty()
    })
    .await;
    assert!(retried, "log:\n{}", sluice.log_text());
    assert_eq!(es.document("products", "50").unwrap()["name"], "fixed");
    assert!(!keys.is_empty());

    // Discarding drops a parked write for good.
    es.update_faults(|f| f.poison_field = Some("poison".into()));
    db.exec("INSERT INTO products (id, name, poison) VALUES (1000, 'bad', true)")
        .await;
    let parked = db.wait_parked("search", 1).await;
    assert!(parked);
    let key = sluice::sink::failed::list(&db.data_dir(), "search").unwrap()[0]
        .key
        .clone();
    let (code, out, err) = common::run_to_end(&[
        "failed",
        "discard",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--sink",
        "search",
        "--key",
        &key,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("discarded 1"), "{out}");
    assert!(sluice::sink::failed::list(&db.data_dir(), "search")
        .unwrap()
        .is_empty());

    // With sluice stopped, a retry sends the writes itself.
    db.exec("INSERT INTO products (id, name, poison) VALUES (1001, 'bad', true)")
        .await;
    assert!(db.wait_parked("search", 1).await);
    assert!(sluice.stop().success());
    es.update_faults(|f| f.poison_field = None);
    let (code, out, err) = common::run_to_end(&[
        "failed",
        "retry",
        "--config",
        config.to_str().unwrap(),
        "--sink",
        "search",
        "--all",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("retried 1 of 1 parked write(s)"), "{out}");
    assert!(es.document("products", "1001").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn api_key_gzip_and_index_creation() {
    let es = FakeElasticsearch::start(FakeOptions {
        required_auth: Some("ApiKey c2x1aWNlOnNlY3JldA==".into()),
        ..FakeOptions::default()
    })
    .await;
    let db = products_db("es_auth").await;
    let extra = "api_key_env = \"SLUICE_TEST_ES_KEY\"\ngzip = true\ncreate_index = { settings = { number_of_shards = 2 }, mappings = { properties = { name = { type = \"text\" } } } }\n";
    let config = products_config(&db, "", &sink(&es.url(), extra));
    let mut sluice =
        Sluice::run_config_with_env(&config, &[("SLUICE_TEST_ES_KEY", "c2x1aWNlOnNlY3JldA==")]);
    db.wait_streaming(&mut sluice).await;
    db.exec("INSERT INTO products (id, name) SELECT i, 'p' || i FROM generate_series(1, 20) i")
        .await;
    assert!(
        wait_until(Duration::from_secs(30), || async {
            es.doc_count("products") == 20
        })
        .await
    );
    let definition = es.index_definition("products").unwrap();
    assert_eq!(definition["settings"]["number_of_shards"], 2);
    assert_eq!(definition["mappings"]["properties"]["name"]["type"], "text");
    let bulk = es
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("_bulk"))
        .expect("a bulk request");
    assert_eq!(bulk.header("content-encoding"), Some("gzip"));
    assert_eq!(bulk.header("content-type"), Some("application/x-ndjson"));
    let lines = bulk.json_lines();
    assert_eq!(lines[0]["index"]["version_type"], "external_gte");
    assert!(
        !sluice.log_text().contains("c2x1aWNlOnNlY3JldA=="),
        "the key was logged"
    );
    assert!(sluice.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_documents_are_parked_and_the_stream_goes_on() {
    // A cluster that takes request bodies up to 1 MB.
    let es = FakeElasticsearch::start(FakeOptions {
        max_body_bytes: 1024 * 1024,
        ..FakeOptions::default()
    })
    .await;
    let db = products_db("es_refused").await;
    let config = products_config(&db, "", &sink(&es.url(), ""));
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    // One transaction, so the 2 MB row shares a bulk request with small ones:
    // the cluster refuses the whole request with 413.
    db.exec(
        "BEGIN;
         INSERT INTO products (id, name) SELECT i, 'p' || i FROM generate_series(1, 200) i;
         INSERT INTO products (id, name, body) VALUES (1000, 'big', repeat(md5('x'), 65536));
         INSERT INTO products (id, name) SELECT i, 'p' || i FROM generate_series(201, 250) i;
         COMMIT",
    )
    .await;
    // 150 MB: over the default max_document_bytes, parked before it is sent.
    db.exec(
        "INSERT INTO products (id, name, body) VALUES (2000, 'huge', repeat(md5('y'), 4915200))",
    )
    .await;
    db.exec("INSERT INTO products (id, name) SELECT i, 'p' || i FROM generate_series(251, 300) i")
        .await;
    let after = db.current_wal_lsn().await;
    let flowed = wait_until(Duration::from_secs(90), || async {
        es.doc_count("products") == 300
    })
    .await;
    assert!(
        flowed,
        "{} documents:\n{}",
        es.doc_count("products"),
        sluice.log_text()
    );
    let advanced = wait_until(Duration::from_secs(30), || async {
        db.confirmed_flush().await >= after
    })
    .await;
    assert!(advanced, "the slot stayed behind the refused documents");
    sluice.assert_running();

    let mut failed = sluice::sink::failed::list(&db.data_dir(), "search").unwrap();
    failed.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        failed.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        ["1000", "2000"],
        "{failed:?}"
    );
    assert!(
        failed[0].error.contains("413") && failed[0].error.contains("content_too_long"),
        "{}",
        failed[0].error
    );
    assert!(failed[0].document.is_some(), "the refused document is kept");
    assert!(
        failed[1].error.contains("max_document_bytes"),
        "{}",
        failed[1].error
    );
    assert!(
        failed[1].document.is_none(),
        "a 150 MB document is not kept"
    );
    assert!(sluice.log_text().contains("sending it in halves"));
    assert!(sluice.stop().success());
}

/// A dead Elasticsearch (503 to everything) and a database whose products
/// stream to it and to an embedded index, with a small in-flight budget: the
/// dead sink's share of it is spent within the first rows.
async fn dead_elasticsearch_next_to_embedded(
    hint: &str,
) -> (FakeElasticsearch, TestDb, std::path::PathBuf) {
    let es = FakeElasticsearch::start(FakeOptions {
        faults: Faults {
            dead: true,
            ..Faults::default()
        },
        ..FakeOptions::default()
    })
    .await;
    let db = TestDb::new(hint).await;
    db.exec(PRODUCTS).await;
    let sinks = format!(
        "[[sinks]]\nname = \"embedded\"\ntype = \"embedded\"\ncommit_interval_ms = 100\n\n{}",
        sink(&es.url(), "")
    );
    let config = products_config(
        &db,
        "shards = 3\nmax_bytes_in_flight = 1048576\nbatch_max_bytes = 65536",
        &sinks,
    );
    (es, db, config)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_sink_does_not_hold_back_the_others() {
    let (es, db, config) = dead_elasticsearch_next_to_embedded("es_dead_sink").await;
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    db.exec(
        "INSERT INTO products (id, name, price, tags, body)
         SELECT i, 'p' || i, i * 0.5, ARRAY['a'], repeat(md5(i::text), 4) FROM generate_series(1, 20000) i",
    )
    .await;
    let after_first_insert = db.current_wal_lsn().await;
    db.exec("UPDATE products SET price = price + 1 WHERE id % 2 = 0")
        .await;
    db.exec("DELETE FROM products WHERE id % 7 = 0").await;
    db.exec("UPDATE products SET id = id + 100000 WHERE id BETWEEN 100 AND 150")
        .await;
    // The embedded index follows the table while Elasticsearch is down.
    common::assert_index_equals_table(&db, "products", "products", "id").await;
    assert!(es.documents("products").is_empty());
    let log = sluice.log_text();
    assert!(
        log.contains("spooling its writes to disk"),
        "the dead sink was not spooled:\n{log}"
    );
    // The slot keeps what the dead sink has not written.
    let confirmed = db.confirmed_flush().await;
    assert!(
        confirmed < after_first_insert,
        "the slot confirmed {confirmed}, past the changes up to {after_first_insert} the dead sink lacks:\n{}",
        sluice.log_text()
    );

    // Back to life: it catches up from its spool, then follows live changes.
    es.update_faults(|f| f.dead = false);
    db.exec("UPDATE products SET name = name || '!' WHERE id <= 500")
        .await;
    assert_engine_equals_table(&db, &es, "products", "products").await;
    common::assert_index_equals_table(&db, "products", "products", "id").await;
    assert!(sluice
        .log_text()
        .contains("the sink caught up with its spool"));
    let failed = sluice::sink::failed::list(&db.data_dir(), "search").unwrap();
    assert!(failed.is_empty(), "nothing should be parked: {failed:?}");
    assert!(sluice.stop().success());
    let spool = db.data_dir().join("spool").join("search");
    let left = std::fs::read_dir(&spool).map_or(0, |d| d.count());
    assert_eq!(left, 0, "the spool is emptied");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sink_spooled_at_a_crash_catches_up_from_the_slot() {
    let (es, db, config) = dead_elasticsearch_next_to_embedded("es_dead_crash").await;
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    db.exec(
        "INSERT INTO products (id, name, price, tags) SELECT i, 'p' || i, i, ARRAY['a'] FROM generate_series(1, 10000) i",
    )
    .await;
    common::assert_index_equals_table(&db, "products", "products", "id").await;
    // The spool dies with the process; the slot still holds every change.
    sluice.kill();
    es.update_faults(|f| f.dead = false);
    db.exec("DELETE FROM products WHERE id % 3 = 0").await;
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    assert_engine_equals_table(&db, &es, "products", "products").await;
    common::assert_index_equals_table(&db, "products", "products", "id").await;
    assert!(sluice.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn documents_are_routed_by_a_key_column() {
    let es = FakeElasticsearch::start(FakeOptions::default()).await;
    let db = TestDb::new("es_routing").await;
    db.exec(
        "CREATE TABLE orders (tenant text, id bigint, note text, PRIMARY KEY (tenant, id));
         CREATE TABLE notes (id bigint PRIMARY KEY, tenant text)",
    )
    .await;

    // Only a key column can route: a delete carries nothing else.
    let bad = db.config_with_sinks(
        "[[tables]]\nname = \"notes\"\nrouting = \"tenant\"",
        "",
        &sink(&es.url(), ""),
    );
    let (code, out, err) = common::run_to_end(&["check", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        out.contains("the routing column `tenant` of table public.notes is not in its key (id)"),
        "{out}{err}"
    );
    std::fs::write(
        &bad,
        std::fs::read_to_string(&bad).unwrap().replace(
            "routing = \"tenant\"",
            "key = [\"id\"]\nrouting = \"tenant\"",
        ),
    )
    .unwrap();
    let (code, _, err) = common::run_to_end(&["check", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("tables[0].routing"), "{err}");

    let config = db.config_with_sinks(
        "[[tables]]\nname = \"orders\"\nrouting = \"tenant\"\n\n[api]\nlisten = \"127.0.0.1:0\"",
        "",
        &sink(&es.url(), ""),
    );
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    db.exec("INSERT INTO orders SELECT 't' || (i % 3), i, 'n' FROM generate_series(1, 30) i")
        .await;
    db.exec("UPDATE orders SET note = 'changed' WHERE id <= 10")
        .await;
    db.exec("UPDATE orders SET tenant = 'moved' WHERE id = 11")
        .await;
    db.exec("DELETE FROM orders WHERE id > 25").await;
    let id = "tenant || '|' || id";
    let equal = wait_until(Duration::from_secs(60), || async {
        es.documents("orders") == db.rows("orders", id).await
    })
    .await;
    assert!(
        equal,
        "{}",
        common::difference(&es.documents("orders"), &db.rows("orders", id).await)
    );

    // Every action line names the tenant of its document as its routing.
    let (mut actions, mut deletes) = (0, 0);
    for request in es.requests().iter().filter(|r| r.path.ends_with("_bulk")) {
        for line in String::from_utf8_lossy(&request.body).lines() {
            let line: Value = serde_json::from_str(line).unwrap();
            let Some(meta) = ["index", "delete", "update"]
                .iter()
                .find_map(|action| line.get(*action))
            else {
                continue;
            };
            let id = meta["_id"].as_str().unwrap();
            let tenant = id.split('|').next().unwrap();
            assert_eq!(meta["routing"], tenant, "{line}");
            actions += 1;
            deletes += line.get("delete").is_some() as usize;
        }
    }
    // Changes to one document within a batch are collapsed: at least one
    // action per document, and the deletes of the moved and deleted rows.
    assert!(
        actions >= 31 && deletes >= 6,
        "{actions} actions, {deletes} deletes"
    );

    // verify looks a document up by id with its routing, as the cluster
    // finds it only on its tenant's shard: a changed one is stale, not
    // missing, and the repair mends it.
    es.insert_document(
        "orders",
        "t1|4",
        serde_json::json!({ "tenant": "t1", "id": 4, "note": "tampered" }),
        1,
    );
    let config = config.to_str().unwrap();
    let (code, out, err) = common::cli(&["verify", "--config", config, "--json"]).await;
    assert_eq!(code, 1, "{out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let table = &report["tables"][0];
    assert_eq!(
        table["stale"]["examples"],
        serde_json::json!(["t1|4"]),
        "{out}"
    );
    assert_eq!(table["missing"]["count"], 0, "{out}");
    let (code, out, err) = common::cli(&["verify", "--config", config, "--repair"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(es.documents("orders"), db.rows("orders", id).await);
    assert!(sluice.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_created_again_is_emptied_once_the_cluster_answers_again() {
    let es = FakeElasticsearch::start(FakeOptions::default()).await;
    let db = products_db("es_recreated").await;
    db.exec("INSERT INTO products (id, name) SELECT i, 'old' || i FROM generate_series(1, 100) i")
        .await;
    let config = products_config(&db, "", &sink(&es.url(), ""));
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    assert_engine_equals_table(&db, &es, "products", "products").await;
    assert!(sluice.stop().success());

    db.exec(&format!("DROP TABLE products; {PRODUCTS}")).await;
    db.exec("INSERT INTO products (id, name) SELECT i, 'new' || i FROM generate_series(1, 10) i")
        .await;
    // The cluster is down when sluice sets the new table up: it waits, and
    // empties the old documents once the cluster answers.
    es.update_faults(|f| f.dead = true);
    let mut sluice = Sluice::run_config(&config);
    let waiting = wait_until(Duration::from_secs(30), || async {
        sluice
            .log_text()
            .contains("the engine is unavailable, waiting")
    })
    .await;
    assert!(waiting, "{}", sluice.log_text());
    sluice.assert_running();
    es.update_faults(|f| f.dead = false);
    db.wait_streaming(&mut sluice).await;
    assert_engine_equals_table(&db, &es, "products", "products").await;
    assert!(sluice.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_beside_an_engine_that_stopped_answering_exits_within_the_drain_timeout() {
    let es = FakeElasticsearch::start(FakeOptions::default()).await;
    let db = products_db("es_drain_timeout").await;
    db.exec("INSERT INTO products (id, name) SELECT i, 'p' || i FROM generate_series(1, 100) i")
        .await;
    let config = products_config(&db, "drain_timeout_ms = 2000", &sink(&es.url(), ""));
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    assert_engine_equals_table(&db, &es, "products", "products").await;

    // The cluster black-holes requests: a write is in flight, unanswered.
    es.update_faults(|f| {
        f.dead = true;
        f.hang_when_dead = true;
    });
    db.exec("UPDATE products SET name = 'late' WHERE id <= 10")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = std::time::Instant::now();
    let log = sluice.log.clone();
    let status = sluice.stop();
    let took = asked.elapsed();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        took < Duration::from_secs(6),
        "stopping took {took:?}, pipeline.drain_timeout_ms is 2000; log:\n{text}"
    );
    assert!(status.success(), "{status:?}; log:\n{text}");
    assert!(
        text.contains("did not drain within pipeline.drain_timeout_ms"),
        "{text}"
    );

    // What was not acknowledged is read again at the next start.
    es.update_faults(|f| f.dead = false);
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    assert_engine_equals_table(&db, &es, "products", "products").await;
    assert!(sluice.stop().success());
}

/// With the defaults nothing waits on a timer: a change goes as soon as a
/// request slot is free, and while a cluster that charges per request is
/// busy, the changes behind it gather into larger requests (up to
/// `batch_max_docs`).
#[tokio::test(flavor = "multi_thread")]
async fn requests_grow_while_a_cluster_that_charges_per_request_works() {
    let es = FakeElasticsearch::start(FakeOptions {
        record_requests: false,
        write_cost: fakes::cost::WriteCost {
            per_request: Duration::from_millis(25),
            per_document: Duration::from_micros(20),
            writers: 1,
        },
        ..FakeOptions::default()
    })
    .await;
    let db = products_db("es_grow").await;
    let sink = format!(
        "[[sinks]]\nname = \"search\"\ntype = \"elasticsearch\"\nurl = \"{}\"\n",
        es.url()
    );
    let config = products_config(&db, "", &sink);
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    db.exec("INSERT INTO products (id, name) VALUES (0, 'first')")
        .await;
    assert!(
        wait_until(Duration::from_secs(30), || async {
            es.doc_count("products") == 1
        })
        .await
    );
    // 5,000 transactions of one row each, committed while sluice is
    // stopped: a backlog it reads far faster than the cluster writes.
    assert!(sluice.stop().success());
    db.exec(
        "DO $$ BEGIN FOR i IN 1..5000 LOOP
             INSERT INTO products (id, name) VALUES (i, 'p' || i); COMMIT;
         END LOOP; END $$",
    )
    .await;
    let before = es.bulk_requests_count();
    let sluice = Sluice::run_config(&config);
    assert!(
        wait_until(Duration::from_secs(120), || async {
            es.doc_count("products") == 5001
        })
        .await,
        "{} of 5001 documents",
        es.doc_count("products")
    );
    let requests = es.bulk_requests_count() - before;
    println!("5,000 changes went in {requests} bulk requests");
    assert!(
        requests <= 1000,
        "5,000 changes took {requests} bulk requests: they did not gather while the cluster worked"
    );
    assert!(sluice.stop().success());
}

/// A truncate read again after a crash (another sink held the slot back) is
/// not applied a second time: the documents written after it would go, and
/// their replays, versioned no higher than the deletes' tombstones, would be
/// refused as stale.
#[tokio::test(flavor = "multi_thread")]
async fn a_truncate_read_again_after_a_crash_keeps_the_rows_written_after_it() {
    let es = FakeElasticsearch::start(FakeOptions::default()).await;
    let held = FakeElasticsearch::start(FakeOptions {
        faults: Faults {
            dead: true,
            ..Faults::default()
        },
        ..FakeOptions::default()
    })
    .await;
    let db = products_db("es_truncate_replay").await;
    let sinks = format!(
        "{}\n{}",
        sink(&es.url(), ""),
        sink(&held.url(), "").replace("name = \"search\"", "name = \"held\"")
    );
    let config = products_config(&db, "shards = 3", &sinks);
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    db.exec(
        "INSERT INTO products (id, name) SELECT i, 'old ' || i FROM generate_series(1, 1000) i",
    )
    .await;
    // A reload: emptied and filled in one transaction, then changed.
    db.exec(
        "BEGIN; TRUNCATE products; \
         INSERT INTO products (id, name) SELECT i, 'new ' || i FROM generate_series(1, 600) i; COMMIT",
    )
    .await;
    db.exec("UPDATE products SET name = 'changed' WHERE id % 5 = 0")
        .await;
    db.exec("INSERT INTO products (id, name) VALUES (5000, 'after')")
        .await;
    assert_engine_equals_table(&db, &es, "products", "products").await;
    let truncated_at = db.current_wal_lsn().await;
    assert!(db.confirmed_flush().await < truncated_at);

    // The slot still holds the truncate: it is read again at the restart.
    sluice.kill();
    held.update_faults(|f| f.dead = false);
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    assert_engine_equals_table(&db, &held, "products", "products").await;
    assert_engine_equals_table(&db, &es, "products", "products").await;
    // Later truncates still apply.
    db.exec("TRUNCATE products").await;
    db.exec("INSERT INTO products (id, name) VALUES (7, 'seven')")
        .await;
    assert_engine_equals_table(&db, &es, "products", "products").await;
    assert!(sluice.stop().success());
}

/// A row updated without its TOASTed column: the partial document is merged
/// into the stored one and written whole, with its version, so a copy the
/// cluster applies late (a request that timed out, or one of a process
/// killed meanwhile) cannot bring back a document deleted since.
#[tokio::test(flavor = "multi_thread")]
async fn partial_documents_are_merged_and_written_with_their_version() {
    let es = FakeElasticsearch::start(FakeOptions::default()).await;
    let db = products_db("es_partial").await;
    let config = products_config(&db, "shards = 3", &sink(&es.url(), ""));
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    db.exec(
        "INSERT INTO products (id, name, body) SELECT i, 'p' || i, repeat(md5(i::text), 400) FROM generate_series(1, 30) i",
    )
    .await;
    assert_engine_equals_table(&db, &es, "products", "products").await;
    // The body is 'unchanged' in the WAL: only the name arrives.
    db.exec("UPDATE products SET name = 'renamed ' || id WHERE id <= 10")
        .await;
    assert_engine_equals_table(&db, &es, "products", "products").await;

    let mut late = None;
    for request in es.requests().iter().filter(|r| r.path.ends_with("_bulk")) {
        let text = String::from_utf8_lossy(&request.body).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.windows(2) {
            let action: Value = serde_json::from_str(pair[0]).unwrap();
            assert!(action.get("update").is_none(), "unversioned: {action}");
            let Some(meta) = action.get("index").or(action.get("delete")) else {
                continue;
            };
            assert_eq!(meta["version_type"], "external_gte", "{action}");
            if meta["_id"] == "3" && pair[1].contains("renamed 3") {
                late = Some(format!("{}\n{}\n", pair[0], pair[1]));
            }
        }
    }
    let late = late.expect("the merged document of row 3 was written whole");
    assert!(
        es.requests().iter().any(|r| r.path.ends_with("_mget")),
        "the stored documents are read to merge into"
    );

    // The row goes; then the merged write arrives once more, late.
    db.exec("DELETE FROM products WHERE id = 3").await;
    assert_engine_equals_table(&db, &es, "products", "products").await;
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/_bulk", es.url()))
        .header("content-type", "application/x-ndjson")
        .body(late)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["items"][0]["index"]["status"], 409, "{answer}");
    assert_engine_equals_table(&db, &es, "products", "products").await;
    assert!(sluice.stop().success());
}
