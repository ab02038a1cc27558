//! Postgres → sluice → each search engine (its fake), under random failures:
//! the engine ends equal to the table.

mod common;
mod fakes;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use common::{wait_until, Sluice, TestDb};
use serde_json::Value;

fn seed() -> u64 {
    common::seed("fault")
}

/// Settings every engine's sink gets in these tests: quick retries, small batches.
const FAST: &str = "flush_interval_ms = 100\nmax_retries = 60\nretry_initial_backoff_ms = 5\nretry_max_backoff_ms = 50\n";

/// Streams a mixed workload into the sink `sinks` describes and waits until
/// `engine()` equals the table's rows as `shape` turns them into documents.
async fn run_workload<E, F>(
    hint: &str,
    sinks: String,
    sink_name: &str,
    engine: E,
    shape: fn(String, Value) -> (String, Value),
    tamper: Option<&(dyn Fn() + Sync)>,
) where
    E: Fn() -> F,
    F: Future<Output = BTreeMap<String, Value>>,
{
    let db = TestDb::new(hint).await;
    db.exec(
        "CREATE TABLE products (id bigint PRIMARY KEY, name text NOT NULL, price numeric(12, 2), body text);
         ALTER TABLE products ALTER COLUMN body SET STORAGE EXTERNAL;",
    )
    .await;
    let config = db.config_with_sinks(
        "[[tables]]\nname = \"products\"\n\n[api]\nlisten = \"127.0.0.1:0\"",
        "shards = 3",
        &sinks,
    );
    let mut sluice = Sluice::run_config_with_env(&config, &[("SLUICE_TEST_ENGINE_KEY", "secret")]);
    db.wait_streaming(&mut sluice).await;
    let expected = || async {
        db.rows("products", "id")
            .await
            .into_iter()
            .map(|(id, row)| shape(id, row))
            .collect()
    };

    db.exec("INSERT INTO products SELECT i, 'p' || i, i * 0.5, repeat(md5(i::text), 10) FROM generate_series(1, 8000) i")
        .await;
    db.exec("UPDATE products SET price = price + 1 WHERE id % 2 = 0")
        .await;
    // Only small columns change: the TOASTed body is 'unchanged' in the WAL.
    db.exec("UPDATE products SET body = repeat('x', 30000) WHERE id <= 20")
        .await;
    db.exec("UPDATE products SET name = name || '!' WHERE id <= 40")
        .await;
    db.exec("DELETE FROM products WHERE id % 7 = 0").await;
    db.exec("UPDATE products SET id = id + 100000 WHERE id BETWEEN 100 AND 150")
        .await;
    sluice.assert_running();
    let equal = wait_until(Duration::from_secs(90), || async {
        engine().await == expected().await
    })
    .await;
    if !equal {
        let (docs, rows) = (engine().await, expected().await);
        panic!(
            "{hint}: {}; log:\n{}",
            common::difference(&docs, &rows),
            tail(&sluice.log_text())
        );
    }

    db.exec("TRUNCATE products").await;
    db.exec("INSERT INTO products (id, name) SELECT i, 'after' FROM generate_series(1, 50) i")
        .await;
    let equal = wait_until(Duration::from_secs(60), || async {
        engine().await == expected().await
    })
    .await;
    assert!(equal, "{hint}: not equal after a truncate");
    if let Some(tamper) = tamper {
        verify_and_repair(hint, &config, &sluice, tamper).await;
        assert!(
            engine().await == expected().await,
            "{hint}: not equal after the repair"
        );
    }
    let parked = sluice::sink::failed::list(&db.data_dir(), sink_name).unwrap();
    assert!(parked.is_empty(), "nothing should be parked: {parked:?}");
    assert!(sluice.stop().success());
}

/// `sluice verify` finds the engine equal to the table; after `tamper`
/// (document 1 changed, document 999999 made up) it finds both, and
/// `--repair` mends them.
async fn verify_and_repair(
    hint: &str,
    config: &std::path::Path,
    sluice: &Sluice,
    tamper: &(dyn Fn() + Sync),
) {
    let config = config.to_str().unwrap();
    let (code, out, err) = common::cli(&["verify", "--config", config]).await;
    assert_eq!(
        code,
        0,
        "{hint}: {out}\n{err}\nlog:\n{}",
        tail(&sluice.log_text())
    );
    tamper();
    let (code, out, err) = common::cli(&["verify", "--config", config, "--json"]).await;
    assert_eq!(code, 1, "{hint}: {out}\n{err}");
    let found: Value = serde_json::from_str(&out).unwrap();
    let table = &found["tables"][0];
    assert_eq!(
        table["stale"]["examples"],
        serde_json::json!(["1"]),
        "{hint}: {found:#}"
    );
    assert_eq!(
        table["extra"]["examples"],
        serde_json::json!(["999999"]),
        "{hint}: {found:#}"
    );
    assert_eq!(table["missing"]["count"], 0, "{hint}: {found:#}");
    let (code, out, err) = common::cli(&["verify", "--config", config, "--repair"]).await;
    assert_eq!(
        code,
        0,
        "{hint}: {out}\n{err}\nlog:\n{}",
        tail(&sluice.log_text())
    );
    assert!(out.contains("2 sent through the pipeline"), "{hint}: {out}");
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The row with its key as a string `field` (engines that want string ids).
fn with_string_id(field: &'static str) -> fn(String, Value) -> (String, Value) {
    match field {
        "id" => |id, mut row| {
            row["id"] = Value::String(id.clone());
            (id, row)
        },
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn typesense() {
    use fakes::typesense::{FakeOptions, FakeTypesense, Faults};
    let ts = FakeTypesense::start(FakeOptions {
        api_key: Some("secret".into()),
        seed: seed(),
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
        ..FakeOptions::default()
    })
    .await;
    let sinks = format!(
        "[[sinks]]\nname = \"typesense\"\ntype = \"typesense\"\nurl = \"{}\"\napi_key_env = \"SLUICE_TEST_ENGINE_KEY\"\n\
         batch_max_docs = 300\nschema = {{ fields = [{{ name = \".*\", type = \"auto\" }}] }}\n{FAST}",
        ts.url()
    );
    run_workload(
        "ts",
        sinks,
        "typesense",
        || async { ts.documents("products") },
        with_string_id("id"),
        Some(&|| {
            ts.insert_document(
                "products",
                serde_json::json!({"id": "1", "name": "tampered"}),
            );
            ts.insert_document(
                "products",
                serde_json::json!({"id": "999999", "name": "ghost"}),
            );
        }),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn elasticsearch() {
    use fakes::elasticsearch::{FakeElasticsearch, FakeOptions, Faults};
    let es = FakeElasticsearch::start(FakeOptions {
        required_auth: Some("ApiKey secret".into()),
        seed: seed(),
        record_requests: false,
        faults: Faults {
            item_rejected_429: 0.05,
            request_rejected_429: 0.05,
            request_unavailable_503: 0.03,
            request_dropped: 0.03,
            ..Faults::default()
        },
        ..FakeOptions::default()
    })
    .await;
    let sinks = format!(
        "[[sinks]]\nname = \"es\"\ntype = \"elasticsearch\"\nurl = \"{}\"\napi_key_env = \"SLUICE_TEST_ENGINE_KEY\"\n\
         batch_max_docs = 300\n{FAST}",
        es.url()
    );
    run_workload(
        "es",
        sinks,
        "es",
        || async { es.documents("products") },
        |id, row| (id, row),
        Some(&|| {
            es.insert_document(
                "products",
                "1",
                serde_json::json!({"id": 1, "name": "tampered"}),
                1,
            );
            es.insert_document(
                "products",
                "999999",
                serde_json::json!({"name": "ghost"}),
                1,
            );
        }),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn meilisearch() {
    use fakes::meilisearch::{FakeMeilisearch, FakeOptions, Faults};
    let ms = FakeMeilisearch::start(FakeOptions {
        api_key: Some("secret".into()),
        seed: seed(),
        processing_delay: Duration::from_millis(2),
        faults: Faults {
            request_429: 0.05,
            request_503: 0.03,
            dropped_before: 0.03,
            task_internal_error: 0.03,
            poll_503: 0.03,
            ..Faults::default()
        },
        ..FakeOptions::default()
    })
    .await;
    let sinks = format!(
        "[[sinks]]\nname = \"meili\"\ntype = \"meilisearch\"\nurl = \"{}\"\napi_key_env = \"SLUICE_TEST_ENGINE_KEY\"\n\
         batch_max_docs = 300\ntask_poll_max_ms = 20\n{FAST}",
        ms.url()
    );
    run_workload(
        "ms",
        sinks,
        "meili",
        || async { ms.documents("products") },
        with_string_id("id"),
        Some(&|| {
            ms.insert_document(
                "products",
                serde_json::json!({"id": "1", "name": "tampered"}),
            );
            ms.insert_document(
                "products",
                serde_json::json!({"id": "999999", "name": "ghost"}),
            );
        }),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn turbopuffer() {
    use fakes::turbopuffer::{FakeOptions, FakeTurbopuffer, Faults};
    let tp = FakeTurbopuffer::start(FakeOptions {
        api_key: Some("secret".into()),
        seed: seed(),
        faults: Faults {
            rate_limited_429: 0.05,
            server_error_500: 0.03,
            dropped: 0.03,
            dropped_after_apply: 0.03,
            ..Faults::default()
        },
    })
    .await;
    let sinks = format!(
        "[[sinks]]\nname = \"tpuf\"\ntype = \"turbopuffer\"\nurl = \"{}\"\napi_key_env = \"SLUICE_TEST_ENGINE_KEY\"\n\
         batch_max_rows = 300\n{FAST}",
        tp.url()
    );
    // Rows are keyed by id; the row's own `id` column is the attribute `row_id`.
    let shape: fn(String, Value) -> (String, Value) = |id, mut row| {
        let key = row.as_object_mut().unwrap().remove("id").unwrap();
        row["row_id"] = key;
        (id, row)
    };
    run_workload(
        "tp",
        sinks,
        "tpuf",
        || async { tp.rows("products") },
        shape,
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn check_asks_every_engine_for_its_credentials_without_writing() {
    use fakes::{elasticsearch, meilisearch, turbopuffer, typesense};
    let es = elasticsearch::FakeElasticsearch::start(elasticsearch::FakeOptions {
        required_auth: Some("ApiKey secret".into()),
        ..elasticsearch::FakeOptions::default()
    })
    .await;
    let ts = typesense::FakeTypesense::start(typesense::FakeOptions {
        api_key: Some("secret".into()),
        record_requests: true,
        ..typesense::FakeOptions::default()
    })
    .await;
    let ms = meilisearch::FakeMeilisearch::start(meilisearch::FakeOptions {
        api_key: Some("secret".into()),
        ..meilisearch::FakeOptions::default()
    })
    .await;
    let tp = turbopuffer::FakeTurbopuffer::start(turbopuffer::FakeOptions {
        api_key: Some("secret".into()),
        ..turbopuffer::FakeOptions::default()
    })
    .await;
    let db = TestDb::new("check_sinks").await;
    db.exec("CREATE TABLE products (id bigint PRIMARY KEY, name text)")
        .await;
    let key = "api_key_env = \"SLUICE_TEST_ENGINE_KEY\"";
    let sinks = |es_url: &str| {
        format!(
            "[[sinks]]\nname = \"es\"\ntype = \"elasticsearch\"\nurl = \"{es_url}\"\n{key}\n\
             [[sinks]]\nname = \"ts\"\ntype = \"typesense\"\nurl = \"{}\"\n{key}\n\
             [[sinks]]\nname = \"ms\"\ntype = \"meilisearch\"\nurl = \"{}\"\n{key}\n\
             [[sinks]]\nname = \"tp\"\ntype = \"turbopuffer\"\nurl = \"{}\"\n{key}\n",
            ts.url(),
            ms.url(),
            tp.url()
        )
    };
    let check = |config: std::path::PathBuf, key: &'static str| {
        let out = common::sluice_command()
            .args(["check", "--config", config.to_str().unwrap()])
            .env("SLUICE_TEST_ENGINE_KEY", key)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let config = db.config_with_sinks("[[tables]]\nname = \"products\"", "", &sinks(&es.url()));

    let (code, text) = check(config.clone(), "secret");
    assert_eq!(code, 0, "{text}");
    let (code, text) = check(config.clone(), "wrong");
    assert_eq!(code, 2, "{text}");
    for sink in [
        "sinks[0] (es,",
        "sinks[1] (ts,",
        "sinks[2] (ms,",
        "sinks[3] (tp,",
    ] {
        assert!(
            text.lines()
                .any(|l| l.contains(sink) && l.contains("refuses the credentials")),
            "{sink}: {text}"
        );
    }
    // An engine that does not answer is not ready.
    let dead = db.config_with_sinks(
        "[[tables]]\nname = \"products\"",
        "",
        &sinks("http://127.0.0.1:1"),
    );
    let (code, text) = check(dead, "secret");
    assert_eq!(code, 3, "{text}");
    assert!(
        text.contains("sinks[0] (es, elasticsearch) does not answer"),
        "{text}"
    );

    // Nothing was written anywhere.
    assert!(
        es.requests().iter().all(|r| r.method == "GET"),
        "{:?}",
        es.requests()
    );
    assert!(ts.requests().iter().all(|r| r.method == "GET"));
    assert!(ms.write_requests().is_empty());
    assert!(tp.requests().iter().all(|r| r.method == "GET"));
    assert!(!db.slot_exists().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncate_of_a_table_sharing_an_index_removes_only_its_documents() {
    use fakes::{elasticsearch, meilisearch, turbopuffer, typesense};
    let es = elasticsearch::FakeElasticsearch::start(elasticsearch::FakeOptions::default()).await;
    let ts = typesense::FakeTypesense::start(typesense::FakeOptions::default()).await;
    let ms = meilisearch::FakeMeilisearch::start(meilisearch::FakeOptions::default()).await;
    let tp = turbopuffer::FakeTurbopuffer::start(turbopuffer::FakeOptions {
        api_key: Some("secret".into()),
        ..turbopuffer::FakeOptions::default()
    })
    .await;
    let db = TestDb::new("shared_index").await;
    db.exec(
        "CREATE SCHEMA a; CREATE SCHEMA b;
         CREATE TABLE a.items (id bigint PRIMARY KEY, name text);
         CREATE TABLE b.items (id bigint PRIMARY KEY, name text);
         INSERT INTO a.items SELECT i, 'a' || i FROM generate_series(1, 20) i;
         INSERT INTO b.items SELECT i, 'b' || i FROM generate_series(101, 130) i;",
    )
    .await;
    let sinks = format!(
        "[[sinks]]\nname = \"embedded\"\ntype = \"embedded\"\n\
         [[sinks]]\nname = \"es\"\ntype = \"elasticsearch\"\nurl = \"{}\"\n\
         [[sinks]]\nname = \"ts\"\ntype = \"typesense\"\nurl = \"{}\"\nschema = {{ fields = [{{ name = \".*\", type = \"auto\" }}] }}\n\
         [[sinks]]\nname = \"ms\"\ntype = \"meilisearch\"\nurl = \"{}\"\n\
         [[sinks]]\nname = \"tp\"\ntype = \"turbopuffer\"\nurl = \"{}\"\napi_key_env = \"SLUICE_TEST_ENGINE_KEY\"\n",
        es.url(),
        ts.url(),
        ms.url(),
        tp.url()
    );
    let tables = "[[tables]]\nname = \"a.items\"\n[[tables]]\nname = \"b.items\"\n";

    // Two tables in one index is refused unless each says so.
    let refused = db.config_with_sinks(tables, "", &sinks);
    let (code, _, err) = common::run_to_end(&["check", "--config", refused.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("tables[0].index: tables a.items, b.items all write to index `items`")
            && err.contains("shared_index = true"),
        "{err}"
    );

    let shared = tables.replace("\"\n", "\"\nshared_index = true\n");
    let config = db.config_with_sinks(&shared, "", &sinks);
    let mut sluice = Sluice::run_config_with_env(&config, &[("SLUICE_TEST_ENGINE_KEY", "secret")]);
    db.wait_streaming(&mut sluice).await;
    let counts = || {
        [
            common::documents(&db.data_dir(), "items", "id").len(),
            es.documents("items").len(),
            ts.documents("items").len(),
            ms.documents("items").len(),
            tp.rows("items").len(),
        ]
    };
    let all = wait_until(Duration::from_secs(60), || async { counts() == [50; 5] }).await;
    assert!(all, "{:?}; log:\n{}", counts(), tail(&sluice.log_text()));
    let doc = &es.documents("items")["1"];
    assert_eq!(doc["sluice_table"], "a.items", "{doc}");

    db.exec("TRUNCATE a.items").await;
    let only_b = wait_until(Duration::from_secs(60), || async { counts() == [30; 5] }).await;
    assert!(only_b, "{:?}; log:\n{}", counts(), tail(&sluice.log_text()));
    for docs in [
        es.documents("items"),
        ts.documents("items"),
        ms.documents("items"),
    ] {
        assert!(
            docs.values().all(|d| d["sluice_table"] == "b.items"),
            "{docs:?}"
        );
    }
    assert!(sluice.stop().success());
}

/// As with Elasticsearch (elasticsearch.rs), with the defaults the imports
/// into a Typesense node that charges per request grow while it works,
/// rather than going one change at a time.
#[tokio::test(flavor = "multi_thread")]
async fn typesense_imports_grow_while_the_node_works() {
    use fakes::typesense::{FakeOptions, FakeTypesense};
    let ts = FakeTypesense::start(FakeOptions {
        write_cost: fakes::cost::WriteCost {
            per_request: Duration::from_millis(25),
            per_document: Duration::from_micros(20),
            writers: 1,
        },
        ..FakeOptions::default()
    })
    .await;
    let db = TestDb::new("ts_grow").await;
    db.exec("CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL)")
        .await;
    let sinks = format!(
        "[[sinks]]\nname = \"typesense\"\ntype = \"typesense\"\nurl = \"{}\"\n\
         schema = {{ fields = [{{ name = \".*\", type = \"auto\" }}] }}\n",
        ts.url()
    );
    let config = db.config_with_sinks("[[tables]]\nname = \"items\"", "", &sinks);
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    // 5,000 single-row transactions committed while sluice is stopped: a
    // backlog it reads far faster than the node writes.
    assert!(sluice.stop().success());
    db.exec(
        "DO $$ BEGIN FOR i IN 1..5000 LOOP
             INSERT INTO items (id, name) VALUES (i, 'n' || i); COMMIT;
         END LOOP; END $$",
    )
    .await;
    let sluice = Sluice::run_config(&config);
    assert!(
        wait_until(Duration::from_secs(120), || async {
            ts.documents("items").len() == 5000
        })
        .await,
        "{} of 5000 documents",
        ts.documents("items").len()
    );
    let imports = ts
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/documents/import"))
        .count();
    println!("5,000 changes went in {imports} imports");
    assert!(
        imports <= 1000,
        "5,000 changes took {imports} imports: they did not gather while the node worked"
    );
    assert!(sluice.stop().success());
}
