//! The Typesense sink, driven directly, against a fake server that answers
//! like Typesense: failed lines in 200 answers, refused and dropped requests.

mod fakes;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use fakes::typesense::{FakeOptions, FakeTypesense, Faults};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use sluice::lsn::Lsn;
use sluice::model::write::{WriteAction, WriteOp};
use sluice::sink::failed::{self, WAITING_BEHIND};
use sluice::sink::typesense::{TypesenseConfig, TypesenseSink};
use sluice::sink::Sink;

const COLLECTION: &str = "items";

/// A sink with quick retries and a generous retry budget.
fn config(url: &str) -> TypesenseConfig {
    let mut config = TypesenseConfig::new("search", url);
    config.batch_max_docs = 200;
    config.max_retries = 60;
    config.retry_initial_backoff_ms = 1;
    config.retry_max_backoff_ms = 20;
    config.request_timeout_ms = 5000;
    config
}

fn sink(config: &TypesenseConfig, data_dir: &Path) -> TypesenseSink {
    TypesenseSink::new(config, data_dir).expect("a sink")
}

fn op(id: &str, lsn: u64, action: WriteAction) -> WriteOp {
    WriteOp {
        index: Arc::from(COLLECTION),
        table: Arc::from("public.items"),
        id: id.to_owned(),
        lsn: Lsn(lsn),
        action,
        routing: None,
    }
}

fn upsert(id: &str, lsn: u64, doc: Value) -> WriteOp {
    let doc = serde_json::to_vec(&doc).unwrap();
    let action = WriteAction::Upsert {
        doc,
        partial: false,
        fresh: false,
    };
    op(id, lsn, action)
}

fn partial(id: &str, lsn: u64, doc: Value) -> WriteOp {
    let doc = serde_json::to_vec(&doc).unwrap();
    let action = WriteAction::Upsert {
        doc,
        partial: true,
        fresh: false,
    };
    op(id, lsn, action)
}

fn delete(id: &str, lsn: u64) -> WriteOp {
    op(id, lsn, WriteAction::Delete)
}

fn truncate(lsn: u64) -> WriteOp {
    op(
        "",
        lsn,
        WriteAction::Truncate {
            barrier: lsn,
            scoped: false,
        },
    )
}

/// Applies `op` to the expected state as Typesense would: upserts replace,
/// partial rows merge (or create), deletes remove, truncates empty; the id
/// is the op's id as a string.
fn apply(expected: &mut BTreeMap<String, Value>, op: &WriteOp) {
    match &op.action {
        WriteAction::Upsert { doc, partial, .. } => {
            let mut doc: Map<String, Value> = serde_json::from_slice(doc).unwrap();
            doc.insert("id".into(), Value::String(op.id.clone()));
            match expected.get_mut(&op.id) {
                Some(Value::Object(stored)) if *partial => stored.extend(doc),
                _ => {
                    expected.insert(op.id.clone(), Value::Object(doc));
                }
            }
        }
        WriteAction::Delete => {
            expected.remove(&op.id);
        }
        WriteAction::Truncate { .. } => expected.clear(),
    }
}

fn seed() -> u64 {
    match std::env::var("SLUICE_TEST_SEED") {
        Ok(seed) => seed.parse().expect("a numeric seed"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_writes_survive_random_failures() {
    let seed = seed();
    println!("seed {seed} (replay with SLUICE_TEST_SEED={seed})");
    let ts = FakeTypesense::start(FakeOptions {
        seed,
        record_requests: false,
        faults: Faults {
            line_rejected_429: 0.05,
            line_unavailable_503: 0.02,
            request_rejected_429: 0.05,
            request_unavailable_503: 0.03,
            request_dropped: 0.03,
            delay: std::time::Duration::from_micros(500),
            ..Faults::default()
        },
        ..FakeOptions::default()
    })
    .await;
    ts.create_collection(COLLECTION);
    let dir = tempfile::tempdir().unwrap();
    // Requests of disjoint documents overlap; writes to one document never do.
    let mut config = config(&ts.url());
    config.concurrency = 4;
    config.batch_max_docs = 50;
    let mut sink = sink(&config, dir.path());
    let mut rng = StdRng::seed_from_u64(seed);
    let mut expected = BTreeMap::new();
    let mut lsn = 0u64;
    let mut written = 0;
    while written < 10_000 {
        let size = rng.random_range(1..=300).min(10_000 - written);
        let mut ops = Vec::with_capacity(size);
        for _ in 0..size {
            lsn += 1;
            let id = rng.random_range(0..1500u32).to_string();
            let draw: f64 = rng.random();
            // Truncates, but none near the end: the final state stays large.
            let op = if draw < 0.0005 && written < 8000 {
                truncate(lsn)
            } else if draw < 0.55 {
                let doc = json!({ "id": id.parse::<u32>().unwrap(), "v": lsn, "name": format!("n{lsn}"), "body": "b".repeat(rng.random_range(0..50)) });
                upsert(&id, lsn, doc)
            } else if draw < 0.75 {
                // An unchanged TOASTed body: absent, it must keep its value.
                partial(
                    &id,
                    lsn,
                    json!({ "id": id.parse::<u32>().unwrap(), "v": lsn }),
                )
            } else {
                delete(&id, lsn)
            };
            apply(&mut expected, &op);
            ops.push(op);
        }
        written += size;
        // Sometimes several writes to one key in one call, in order.
        if rng.random_bool(0.1) {
            let id = rng.random_range(0..1500u32).to_string();
            for op in [
                upsert(&id, lsn + 1, json!({ "v": "first", "keep": true })),
                delete(&id, lsn + 2),
                upsert(&id, lsn + 3, json!({ "v": "second" })),
                partial(&id, lsn + 4, json!({ "w": "merged" })),
            ] {
                apply(&mut expected, &op);
                ops.push(op);
            }
            lsn += 4;
        }
        sink.write(&ops).await.unwrap();
        if rng.random_bool(0.3) {
            sink.commit(Lsn(lsn)).await.unwrap();
        }
    }
    sink.commit(Lsn(lsn)).await.unwrap();
    assert!(ts.injected_failures() > 100, "{}", ts.injected_failures());
    assert!(ts.max_in_flight() > 1, "requests never overlapped");
    assert!(expected.len() > 100, "{} documents", expected.len());
    let parked = failed::list(dir.path(), "search").unwrap();
    assert!(parked.is_empty(), "nothing should be parked: {parked:?}");
    let actual = ts.documents(COLLECTION);
    if actual != expected {
        let differ: Vec<_> = expected
            .iter()
            .filter(|(k, v)| actual.get(*k) != Some(*v))
            .take(5)
            .map(|(k, v)| format!("{k}: expected {v}, found {:?}", actual.get(k)))
            .collect();
        let extra: Vec<_> = actual
            .keys()
            .filter(|k| !expected.contains_key(*k))
            .take(5)
            .collect();
        panic!(
            "seed {seed}: {} documents, {} expected; differ {differ:#?}; extra {extra:?}",
            actual.len(),
            expected.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dropped_answers_after_applied_writes_change_nothing() {
    let seed = seed();
    println!("seed {seed}");
    let ts = FakeTypesense::start(FakeOptions {
        seed,
        faults: Faults {
            request_dropped: 0.3,
            dropped_after_apply: true,
            ..Faults::default()
        },
        ..FakeOptions::default()
    })
    .await;
    ts.create_collection(COLLECTION);
    let dir = tempfile::tempdir().unwrap();
    let mut sink = sink(&config(&ts.url()), dir.path());
    let mut expected = BTreeMap::new();
    let mut ops = Vec::new();
    for n in 0..300u64 {
        let id = (n % 40).to_string();
        let op = match n % 3 {
            0 => upsert(&id, n, json!({ "n": n, "body": "kept" })),
            1 => partial(&id, n, json!({ "n": n })),
            _ => delete(&id, n),
        };
        apply(&mut expected, &op);
        ops.push(op);
    }
    sink.write(&ops).await.unwrap();
    sink.commit(Lsn(300)).await.unwrap();
    assert_eq!(ts.documents(COLLECTION), expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn permanently_failing_lines_are_parked_and_the_rest_lands() {
    let ts = FakeTypesense::start(FakeOptions {
        faults: Faults {
            poison_field: Some("poison".into()),
            ..Faults::default()
        },
        ..FakeOptions::default()
    })
    .await;
    ts.create_collection(COLLECTION);
    let dir = tempfile::tempdir().unwrap();
    let mut sink = sink(&config(&ts.url()), dir.path());
    let ops: Vec<WriteOp> = (1..=200u64)
        .map(|n| upsert(&n.to_string(), n, json!({ "id": n, "poison": n % 50 == 0 })))
        .collect();
    sink.write(&ops).await.unwrap();
    sink.commit(Lsn(200)).await.unwrap();
    assert_eq!(ts.documents(COLLECTION).len(), 196);
    let parked = failed::list(dir.path(), "search").unwrap();
    let ids: Vec<&str> = parked.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["50", "100", "150", "200"]);
    assert_eq!(parked[0].action, "upsert");
    assert_eq!(parked[0].attempts, 1, "a permanent failure is not retried");
    assert!(
        parked[0].error.contains("Field `poison` must be a string."),
        "{}",
        parked[0].error
    );
    let doc: Value = serde_json::from_str(parked[0].document.as_deref().unwrap()).unwrap();
    assert_eq!(doc["poison"], true);
    assert_eq!(doc["id"], "50", "the id is sent as a string");

    // A later write to a parked document waits behind it; others flow on.
    let later = [
        upsert("50", 201, json!({ "poison": false })),
        upsert("7", 202, json!({ "n": 7 })),
    ];
    sink.write(&later).await.unwrap();
    sink.commit(Lsn(202)).await.unwrap();
    let parked = failed::list(dir.path(), "search").unwrap();
    assert_eq!(parked.len(), 5);
    assert_eq!(
        (parked[4].id.as_str(), parked[4].error.as_str()),
        ("50", WAITING_BEHIND)
    );
    assert_eq!(ts.document(COLLECTION, "50"), None);
    assert_eq!(
        ts.document(COLLECTION, "7"),
        Some(json!({ "id": "7", "n": 7 }))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_failing_past_their_retry_budget_are_parked() {
    let ts = FakeTypesense::start(FakeOptions {
        faults: Faults {
            line_unavailable_503: 1.0,
            ..Faults::default()
        },
        ..FakeOptions::default()
    })
    .await;
    ts.create_collection(COLLECTION);
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&ts.url());
    config.max_retries = 2;
    let mut sink = sink(&config, dir.path());
    sink.write(&[upsert("1", 1, json!({}))]).await.unwrap();
    sink.commit(Lsn(1)).await.unwrap();
    let parked = failed::list(dir.path(), "search").unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].attempts, 3);
    assert!(parked[0].error.contains("503"), "{}", parked[0].error);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_node_holds_writes_until_it_comes_back() {
    let ts = Arc::new(FakeTypesense::start(FakeOptions::default()).await);
    ts.create_collection(COLLECTION);
    ts.update_faults(|f| f.dead = true);
    let dir = tempfile::tempdir().unwrap();
    let mut sink = sink(&config(&ts.url()), dir.path());
    let revive = {
        let ts = ts.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            ts.update_faults(|f| f.dead = false);
        })
    };
    sink.write(&[upsert("1", 1, json!({ "n": 1 })), delete("2", 2)])
        .await
        .unwrap();
    sink.commit(Lsn(2)).await.unwrap();
    revive.await.unwrap();
    assert_eq!(
        ts.document(COLLECTION, "1"),
        Some(json!({ "id": "1", "n": 1 }))
    );
    assert!(failed::list(dir.path(), "search").unwrap().is_empty());
    assert!(ts.requests().len() > 2, "the dead node was asked again");
}

#[tokio::test(flavor = "multi_thread")]
async fn deletes_are_batched_and_writes_to_one_key_keep_their_order() {
    let ts = FakeTypesense::start(FakeOptions::default()).await;
    ts.create_collection(COLLECTION);
    for n in 0..500 {
        ts.insert_document(COLLECTION, json!({ "id": n.to_string() }));
    }
    ts.insert_document(COLLECTION, json!({ "id": "a,b`c" }));
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&ts.url());
    config.batch_max_docs = 1000;
    let mut sink = sink(&config, dir.path());
    let mut ops: Vec<WriteOp> = (0..500).map(|n| delete(&n.to_string(), 1)).collect();
    ops.push(delete("a,b`c", 1));
    sink.write(&ops).await.unwrap();
    sink.commit(Lsn(1)).await.unwrap();
    assert!(ts.documents(COLLECTION).is_empty());
    let requests = ts.requests();
    let by_filter: Vec<_> = requests
        .iter()
        .filter(|r| r.param("filter_by").is_some())
        .collect();
    assert_eq!(by_filter.len(), 1, "one request for 500 deletes");
    let filter = by_filter[0].param("filter_by").unwrap();
    assert!(filter.starts_with("id:[`0`,`1`,"), "{filter}");
    assert_eq!(by_filter[0].method, "DELETE");
    assert_eq!(by_filter[0].path, "/collections/items/documents");
    // The id no filter can name is deleted by its path.
    assert!(requests
        .iter()
        .any(|r| r.method == "DELETE" && r.path == "/collections/items/documents/a%2Cb%60c"));

    // Upsert, delete, upsert of one id in one call: applied in that order.
    ts.clear_requests();
    sink.write(&[
        upsert("9", 2, json!({ "v": 1, "old": true })),
        delete("9", 3),
        upsert("9", 4, json!({ "v": 2 })),
        partial("9", 5, json!({ "w": 3 })),
        upsert("10", 6, json!({ "v": 10 })),
    ])
    .await
    .unwrap();
    sink.commit(Lsn(6)).await.unwrap();
    assert_eq!(
        ts.document(COLLECTION, "9"),
        Some(json!({ "id": "9", "v": 2, "w": 3 }))
    );
    let sent: Vec<String> = ts
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.param("action").unwrap_or_default()))
        .collect();
    assert_eq!(
        sent,
        ["POST upsert", "DELETE ", "POST upsert", "POST emplace"]
    );
    let first = &ts.requests()[0];
    assert_eq!(
        first.body_text(),
        "{\"id\":\"9\",\"old\":true,\"v\":1}\n{\"id\":\"10\",\"v\":10}\n",
        "the second key rides along with the first write of the first"
    );

    // A truncate lands after the writes before it and before those after it.
    sink.write(&[
        upsert("11", 7, json!({})),
        truncate(8),
        upsert("12", 9, json!({})),
    ])
    .await
    .unwrap();
    sink.commit(Lsn(9)).await.unwrap();
    let ids: Vec<String> = ts.documents(COLLECTION).into_keys().collect();
    assert_eq!(ids, ["12"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn api_key_and_collection_creation_from_a_schema() {
    let ts = FakeTypesense::start(FakeOptions {
        api_key: Some("s3cret".into()),
        ..FakeOptions::default()
    })
    .await;
    std::env::set_var("SLUICE_TEST_TS_KEY", "s3cret");
    let mut config = config(&ts.url());
    config.api_key_env = Some("SLUICE_TEST_TS_KEY".into());
    config.schema = Some(
        toml::from_str(
            "fields = [{ name = \"name\", type = \"string\" }, { name = \".*\", type = \"auto\" }]\ndefault_sorting_field = \"\"",
        )
        .unwrap(),
    );
    let mut problems = Vec::new();
    config.validate("sinks[0]", &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    let dir = tempfile::tempdir().unwrap();
    let mut sink = sink(&config, dir.path());
    sink.write(&[upsert("1", 1, json!({ "name": "one" }))])
        .await
        .unwrap();
    sink.commit(Lsn(1)).await.unwrap();
    assert_eq!(
        ts.document(COLLECTION, "1"),
        Some(json!({ "id": "1", "name": "one" }))
    );
    let schema = ts.collection(COLLECTION).unwrap();
    assert_eq!(schema["name"], COLLECTION);
    assert_eq!(
        schema["fields"][0],
        json!({ "name": "name", "type": "string" })
    );
    let requests = ts.requests();
    assert_eq!(requests[0].path, "/collections");
    assert!(requests
        .iter()
        .all(|r| r.header("x-typesense-api-key") == Some("s3cret")));
    let import = &requests[1];
    assert_eq!(import.path, "/collections/items/documents/import");
    assert_eq!(import.param("action").as_deref(), Some("upsert"));

    // A second sink finds the collection there (409) and goes on.
    let mut again = TypesenseSink::new(&config, dir.path()).unwrap();
    again
        .write(&[upsert("2", 2, json!({ "name": "two" }))])
        .await
        .unwrap();
    again.commit(Lsn(2)).await.unwrap();
    assert_eq!(ts.documents(COLLECTION).len(), 2);

    // A wrong key is an error, not a parked write.
    std::env::set_var("SLUICE_TEST_TS_WRONG", "nope");
    config.api_key_env = Some("SLUICE_TEST_TS_WRONG".into());
    config.schema = None;
    let mut wrong = TypesenseSink::new(&config, dir.path()).unwrap();
    wrong.write(&[upsert("3", 3, json!({}))]).await.unwrap();
    let error = wrong.commit(Lsn(3)).await.unwrap_err();
    assert!(error.to_string().contains("401"), "{error}");
}
