//! The Meilisearch sink against a fake server that answers like Meilisearch:
//! asynchronous tasks, tasks that stay enqueued, failed tasks, rate limits
//! and dropped connections.

mod fakes;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fakes::meilisearch::{FakeMeilisearch, FakeOptions, Faults};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use sluice::lsn::Lsn;
use sluice::model::write::{WriteAction, WriteOp};
use sluice::sink::failed::{self, WAITING_BEHIND};
use sluice::sink::meilisearch::{MeilisearchConfig, MeilisearchSink};
use sluice::sink::Sink;

fn config(url: &str) -> MeilisearchConfig {
    let mut config = MeilisearchConfig::new("meili", url);
    config.batch_max_docs = 50;
    config.max_retries = 60;
    config.retry_initial_backoff_ms = 2;
    config.retry_max_backoff_ms = 20;
    config.task_poll_initial_ms = 2;
    config.task_poll_max_ms = 20;
    config.task_timeout_ms = 30_000;
    config.request_timeout_ms = 5_000;
    config
}

fn op(index: &str, id: &str, lsn: u64, action: WriteAction) -> WriteOp {
    WriteOp {
        index: Arc::from(index),
        table: Arc::from(format!("public.{index}").as_str()),
        id: id.into(),
        lsn: Lsn(lsn),
        action,
        routing: None,
    }
}

fn upsert(id: &str, lsn: u64, doc: Value) -> WriteOp {
    op(
        "items",
        id,
        lsn,
        WriteAction::Upsert {
            doc: doc.to_string().into_bytes(),
            partial: false,
            fresh: false,
        },
    )
}

fn partial(id: &str, lsn: u64, doc: Value) -> WriteOp {
    op(
        "items",
        id,
        lsn,
        WriteAction::Upsert {
            doc: doc.to_string().into_bytes(),
            partial: true,
            fresh: false,
        },
    )
}

fn delete(id: &str, lsn: u64) -> WriteOp {
    op("items", id, lsn, WriteAction::Delete)
}

fn truncate(lsn: u64) -> WriteOp {
    op(
        "items",
        "",
        lsn,
        WriteAction::Truncate {
            barrier: lsn,
            scoped: false,
        },
    )
}

/// The documents Meilisearch should hold after `ops` (the id as a string
/// in the primary key field; partial rows merged).
fn apply(model: &mut BTreeMap<String, Value>, ops: &[WriteOp]) {
    for op in ops {
        match &op.action {
            WriteAction::Upsert { doc, partial, .. } => {
                let mut doc: Map<String, Value> = serde_json::from_slice(doc).unwrap();
                doc.insert("id".into(), Value::String(op.id.clone()));
                match model.get_mut(&op.id) {
                    Some(Value::Object(existing)) if *partial => existing.extend(doc),
                    _ => {
                        model.insert(op.id.clone(), Value::Object(doc));
                    }
                }
            }
            WriteAction::Delete => {
                model.remove(&op.id);
            }
            WriteAction::Truncate { .. } => model.clear(),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_writes_survive_random_failures() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("seed {seed} (writes and faults)");
    let meili = FakeMeilisearch::start(FakeOptions {
        seed,
        processing_delay: Duration::from_micros(300),
        faults: Faults {
            request_429: 0.05,
            request_503: 0.03,
            dropped_before: 0.03,
            dropped_after: 0.03,
            task_internal_error: 0.05,
            poll_503: 0.05,
            dead: false,
        },
        ..FakeOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut sink = MeilisearchSink::new(&config(&meili.url()), dir.path()).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = BTreeMap::new();
    let mut lsn = 0;
    let mut written = 0;
    while written < 10_000 {
        let mut ops = Vec::new();
        for _ in 0..rng.random_range(1..200) {
            lsn += 1;
            let id = format!("k{}", rng.random_range(0..400));
            let roll = rng.random_range(0..1000);
            ops.push(match roll {
                0..=2 => truncate(lsn),
                3..=599 => upsert(
                    &id,
                    lsn,
                    json!({"id": 1, "name": format!("n{lsn}"), "price": lsn % 97, "tags": ["a", lsn.to_string()]}),
                ),
                600..=799 => partial(&id, lsn, json!({"name": format!("p{lsn}")})),
                _ => delete(&id, lsn),
            });
        }
        written += ops.len();
        apply(&mut model, &ops);
        sink.write(&ops).await.unwrap();
        if rng.random_bool(0.3) {
            sink.commit(Lsn(lsn)).await.unwrap();
        }
    }
    sink.commit(Lsn(lsn)).await.unwrap();
    let documents = meili.documents("items");
    if documents != model {
        let differ: Vec<_> = model
            .iter()
            .filter(|(k, v)| documents.get(*k) != Some(*v))
            .take(5)
            .map(|(k, v)| format!("{k}: expected {v}, got {:?}", documents.get(k)))
            .collect();
        let extra: Vec<_> = documents
            .keys()
            .filter(|k| !model.contains_key(*k))
            .take(5)
            .collect();
        panic!(
            "seed {seed}: {} documents, {} expected; differ {differ:#?}; extra {extra:?}",
            documents.len(),
            model.len()
        );
    }
    assert!(failed::list(dir.path(), "meili").unwrap().is_empty());
    let tasks = meili.tasks();
    println!(
        "{} tasks, {} failed, {} write requests",
        tasks.len(),
        tasks.iter().filter(|t| t.status == "failed").count(),
        meili.write_requests().len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn enqueued_tasks_are_waited_for_not_resent() {
    let meili = FakeMeilisearch::start(FakeOptions {
        processing_delay: Duration::from_millis(150),
        ..FakeOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&meili.url());
    config.batch_max_docs = 2;
    let mut sink = MeilisearchSink::new(&config, dir.path()).unwrap();
    let ops: Vec<WriteOp> = (1..=10)
        .map(|i| upsert(&i.to_string(), i, json!({"n": i})))
        .collect();
    let start = Instant::now();
    sink.write(&ops).await.unwrap();
    sink.commit(Lsn(10)).await.unwrap();
    // Five tasks, in batches one after the other: those enqueued while the
    // first is processed merge into one.
    let batches = meili.batches() as u32;
    assert!((2..5).contains(&batches), "{batches} batches");
    assert!(start.elapsed() >= Duration::from_millis(150) * batches);
    let tasks = meili.tasks();
    assert_eq!(tasks.len(), 5);
    assert!(tasks.iter().all(|t| t.status == "succeeded"), "{tasks:?}");
    let writes = meili.write_requests();
    assert_eq!(writes.len(), 5, "no write is sent twice");
    let polls = meili
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/tasks/"))
        .count();
    assert!(
        polls > 5,
        "tasks were looked at while enqueued or processing: {polls}"
    );
    assert_eq!(meili.documents("items").len(), 10);
    assert_eq!(meili.primary_key("items").as_deref(), Some("id"));
    for request in &writes {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/indexes/items/documents");
        assert_eq!(request.query.as_deref(), Some("primaryKey=id"));
        assert_eq!(request.header("content-type"), Some("application/json"));
    }
    assert_eq!(
        writes[0].json(),
        json!([{"n": 1, "id": "1"}, {"n": 2, "id": "2"}])
    );

    // A task slower than task_timeout_ms: an error, and still no resend.
    meili.set_processing_delay(Duration::from_millis(1500));
    let mut config = config.clone();
    config.task_timeout_ms = 300;
    let mut slow = MeilisearchSink::new(&config, dir.path()).unwrap();
    slow.write(&[upsert("11", 11, json!({}))]).await.unwrap();
    let error = slow.commit(Lsn(11)).await.unwrap_err();
    assert!(error.to_string().contains("still"), "{error}");
    assert_eq!(meili.write_requests().len(), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_tasks_park_their_bad_documents_and_the_rest_goes_on() {
    let meili = FakeMeilisearch::start(FakeOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut sink = MeilisearchSink::new(&config(&meili.url()), dir.path()).unwrap();
    let mut ops: Vec<WriteOp> = (1..=10)
        .map(|i| {
            let geo = if i == 5 {
                json!("nowhere")
            } else {
                json!({"lat": 1.0, "lng": 2.0})
            };
            upsert(&i.to_string(), i, json!({"n": i, "_geo": geo}))
        })
        .collect();
    ops.push(upsert("1|2", 11, json!({"n": 12})));
    ops.push(upsert("é", 12, json!({"n": 12})));
    sink.write(&ops).await.unwrap();
    sink.commit(Lsn(12)).await.unwrap();
    let documents = meili.documents("items");
    assert_eq!(documents.len(), 9, "{documents:?}");
    assert!(!documents.contains_key("5"));
    let failed_task = meili
        .tasks()
        .into_iter()
        .find(|t| t.status == "failed")
        .expect("a failed task");
    assert_eq!(failed_task.error_code(), Some("invalid_document_geo_field"));

    let parked = failed::list(dir.path(), "meili").unwrap();
    let ids: Vec<&str> = parked.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["1|2", "é", "5"]);
    assert!(
        parked[0].error.contains("pipeline.key_separator = \"-\""),
        "{}",
        parked[0].error
    );
    assert!(
        parked[2].error.contains("invalid_document_geo_field"),
        "{}",
        parked[2].error
    );
    assert_eq!(parked[2].action, "upsert");

    // Later writes go on; those to the parked document wait behind it.
    sink.write(&[
        upsert("5", 20, json!({"n": 20})),
        upsert("20", 21, json!({"n": 21})),
    ])
    .await
    .unwrap();
    sink.commit(Lsn(21)).await.unwrap();
    assert!(meili.documents("items").contains_key("20"));
    assert!(!meili.documents("items").contains_key("5"));
    let parked = failed::list(dir.path(), "meili").unwrap();
    assert_eq!(parked.len(), 4);
    assert_eq!(parked[3].error, WAITING_BEHIND);
}

#[tokio::test(flavor = "multi_thread")]
async fn deletes_are_batched_and_partial_rows_keep_absent_fields() {
    std::env::set_var("SLUICE_TEST_MEILI_KEY", "s3cret");
    let meili = FakeMeilisearch::start(FakeOptions {
        api_key: Some("s3cret".into()),
        ..FakeOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&meili.url());
    config.batch_max_docs = 1000;
    config.api_key_env = Some("SLUICE_TEST_MEILI_KEY".into());
    let mut sink = MeilisearchSink::new(&config, dir.path()).unwrap();
    let ops: Vec<WriteOp> = (1..=100)
        .map(|i| upsert(&i.to_string(), i, json!({"n": i, "body": "long"})))
        .collect();
    sink.write(&ops).await.unwrap();
    sink.commit(Lsn(100)).await.unwrap();
    assert_eq!(meili.documents("items").len(), 100);

    let before = meili.write_requests().len();
    let mut ops: Vec<WriteOp> = (1..=60).map(|i| delete(&i.to_string(), 200 + i)).collect();
    ops.push(partial("70", 300, json!({"n": 700})));
    sink.write(&ops).await.unwrap();
    sink.commit(Lsn(300)).await.unwrap();
    let writes = &meili.write_requests()[before..];
    let deletes: Vec<_> = writes
        .iter()
        .filter(|r| r.path.ends_with("/delete-batch"))
        .collect();
    assert_eq!(deletes.len(), 1, "one delete-batch request for 60 deletes");
    assert_eq!(deletes[0].json().as_array().unwrap().len(), 60);
    assert_eq!(deletes[0].json()[0], json!("1"));
    let update = writes.iter().find(|r| r.method == "PUT").expect("a PUT");
    assert_eq!(update.json(), json!([{"n": 700, "id": "70"}]));
    assert!(writes
        .iter()
        .all(|r| r.header("authorization") == Some("Bearer s3cret")));
    let documents = meili.documents("items");
    assert_eq!(documents.len(), 40);
    assert_eq!(
        documents["70"],
        json!({"id": "70", "n": 700, "body": "long"})
    );

    // A truncate empties the index after the writes before it.
    sink.write(&[
        upsert("500", 500, json!({})),
        truncate(501),
        upsert("502", 502, json!({})),
    ])
    .await
    .unwrap();
    sink.commit(Lsn(502)).await.unwrap();
    assert_eq!(meili.documents("items").keys().collect::<Vec<_>>(), ["502"]);
    assert!(meili
        .write_requests()
        .iter()
        .any(|r| r.method == "DELETE" && r.path == "/indexes/items/documents"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_key_is_an_error_with_a_hint() {
    std::env::set_var("SLUICE_TEST_MEILI_WRONG_KEY", "nope");
    let meili = FakeMeilisearch::start(FakeOptions {
        api_key: Some("right".into()),
        ..FakeOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&meili.url());
    config.api_key_env = Some("SLUICE_TEST_MEILI_WRONG_KEY".into());
    let mut sink = MeilisearchSink::new(&config, dir.path()).unwrap();
    sink.write(&[upsert("1", 1, json!({}))]).await.unwrap();
    let error = sink.commit(Lsn(1)).await.unwrap_err();
    assert!(error.to_string().contains("api_key_env"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_instance_is_waited_out_without_parking() {
    let meili = FakeMeilisearch::start(FakeOptions {
        faults: Faults {
            dead: true,
            ..Faults::default()
        },
        ..FakeOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&meili.url());
    config.max_retries = 1;
    config.retry_max_backoff_ms = 20;
    let mut sink = MeilisearchSink::new(&config, dir.path()).unwrap();
    let pending = tokio::spawn(async move {
        sink.write(&[upsert("1", 1, json!({}))]).await.unwrap();
        sink.commit(Lsn(1)).await.unwrap();
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !pending.is_finished(),
        "the commit gave up on a dead instance"
    );
    assert!(
        meili.write_requests().len() > 3,
        "the write is tried again and again, beyond its retry budget"
    );
    assert!(
        failed::list(dir.path(), "meili").unwrap().is_empty(),
        "nothing parked"
    );

    // Back to life: the write goes through, and nothing was parked.
    meili.update_faults(|f| f.dead = false);
    tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("the write lands once the instance is back")
        .unwrap();
    assert_eq!(meili.documents("items").len(), 1);
    assert!(failed::list(dir.path(), "meili").unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn another_primary_key_is_an_error_not_parked_writes() {
    let meili = FakeMeilisearch::start(FakeOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&meili.url());
    config.primary_key = "sku".into();
    let mut sink = MeilisearchSink::new(&config, dir.path()).unwrap();
    sink.write(&[upsert("a", 1, json!({}))]).await.unwrap();
    sink.commit(Lsn(1)).await.unwrap();
    assert_eq!(meili.documents("items")["a"], json!({"sku": "a"}));

    config.primary_key = "id".into();
    let mut sink = MeilisearchSink::new(&config, dir.path()).unwrap();
    sink.write(&[upsert("b", 2, json!({})), upsert("c", 3, json!({}))])
        .await
        .unwrap();
    let error = sink.commit(Lsn(3)).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("index_primary_key_already_exists"),
        "{error}"
    );
    assert!(error.hint_text().unwrap().contains("primary_key"));
    assert!(failed::list(dir.path(), "meili").unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_whose_retries_run_out_are_parked_and_the_stream_goes_on() {
    let meili = FakeMeilisearch::start(FakeOptions {
        faults: Faults {
            task_internal_error: 1.0,
            ..Faults::default()
        },
        ..FakeOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&meili.url());
    config.max_retries = 2;
    let mut sink = MeilisearchSink::new(&config, dir.path()).unwrap();
    // Every task fails with an internal error.
    sink.write(&[upsert("1", 1, json!({})), upsert("2", 2, json!({}))])
        .await
        .unwrap();
    sink.commit(Lsn(2)).await.unwrap();
    let parked = failed::list(dir.path(), "meili").unwrap();
    assert_eq!(parked.len(), 2, "{parked:?}");
    assert!(
        parked[0].error.contains("failed 3 times") && parked[0].error.contains("internal"),
        "{}",
        parked[0].error
    );

    // No answer at all: the request is dropped before it is enqueued.
    meili.set_faults(Faults {
        dropped_before: 1.0,
        ..Faults::default()
    });
    sink.write(&[upsert("3", 3, json!({}))]).await.unwrap();
    sink.commit(Lsn(3)).await.unwrap();
    let parked = failed::list(dir.path(), "meili").unwrap();
    assert_eq!(parked.len(), 3);
    assert!(
        parked[2].error.contains("sending failed 3 times"),
        "{}",
        parked[2].error
    );

    // The stream goes on once Meilisearch is well.
    meili.set_faults(Faults::default());
    sink.write(&[upsert("4", 4, json!({}))]).await.unwrap();
    sink.commit(Lsn(4)).await.unwrap();
    assert_eq!(meili.documents("items").keys().collect::<Vec<_>>(), ["4"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_payload_over_the_limit_is_split_and_the_document_it_refuses_is_parked() {
    let meili = FakeMeilisearch::start(FakeOptions {
        max_payload_bytes: Some(4096),
        ..FakeOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&meili.url());
    config.batch_max_bytes = 1 << 20;
    let mut sink = MeilisearchSink::new(&config, dir.path()).unwrap();
    let mut ops: Vec<WriteOp> = (1..=30)
        .map(|i| upsert(&i.to_string(), i, json!({"text": "x".repeat(100)})))
        .collect();
    ops.push(upsert("big", 31, json!({"text": "y".repeat(10_000)})));
    sink.write(&ops).await.unwrap();
    sink.commit(Lsn(31)).await.unwrap();
    let documents = meili.documents("items");
    assert_eq!(documents.len(), 30);
    let parked = failed::list(dir.path(), "meili").unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].id, "big");
    assert!(
        parked[0].error.contains("payload_too_large"),
        "{}",
        parked[0].error
    );
    assert!(parked[0].document.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_confirmed_later_lets_the_next_writes_go_while_meilisearch_works() {
    let meili = FakeMeilisearch::start(FakeOptions {
        processing_delay: Duration::from_millis(300),
        ..FakeOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut sink = MeilisearchSink::new(&config(&meili.url()), dir.path()).unwrap();
    let start = Instant::now();
    sink.write(&[upsert("1", 1, json!({"n": 1}))])
        .await
        .unwrap();
    assert!(sink.commit_later(Lsn(1)).await.unwrap());
    // The next writes go while the first task is processed ...
    sink.write(&[
        upsert("2", 2, json!({"n": 2})),
        upsert("3", 3, json!({"n": 3})),
    ])
    .await
    .unwrap();
    assert!(sink.commit_later(Lsn(3)).await.unwrap());
    assert!(
        start.elapsed() < Duration::from_millis(300),
        "a commit waited for its task"
    );
    let now = sink.confirmed().await.unwrap();
    assert_eq!(now.commits, 0, "nothing is processed yet");
    assert!(now.look_again.is_some());
    // ... and are confirmed, in order, once their tasks succeeded.
    let mut confirmed = now;
    while confirmed.commits < 2 {
        assert!(start.elapsed() < Duration::from_secs(5), "{confirmed:?}");
        tokio::time::sleep(confirmed.look_again.unwrap()).await;
        confirmed = sink.confirmed().await.unwrap();
    }
    assert_eq!(confirmed.look_again, None);
    assert_eq!(meili.documents("items").len(), 3);
    assert_eq!(
        meili.batches(),
        2,
        "the second commit's task waited for the first's batch"
    );
}
