//! The Turbopuffer sink driven directly (write/commit) against a fake server
//! that answers like the v2 API, rate limits and failures included.

mod fakes;

use std::collections::BTreeMap;
use std::sync::{Arc, Once};
use std::time::Duration;

use fakes::turbopuffer::{FakeOptions, FakeTurbopuffer, Faults, IdKind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use sluice::lsn::Lsn;
use sluice::model::write::{WriteAction, WriteOp};
use sluice::sink::failed;
use sluice::sink::turbopuffer::{IdType, TurbopufferConfig, TurbopufferSink};
use sluice::sink::Sink;

const KEY_ENV: &str = "SLUICE_TEST_TURBOPUFFER_KEY";
const WRONG_KEY_ENV: &str = "SLUICE_TEST_TURBOPUFFER_WRONG_KEY";
const KEY: &str = "tpuf_test_secret";

fn set_keys() {
    static KEYS: Once = Once::new();
    KEYS.call_once(|| {
        std::env::set_var(KEY_ENV, KEY);
        std::env::set_var(WRONG_KEY_ENV, "tpuf_wrong");
    });
}

fn config(fake: &FakeTurbopuffer) -> TurbopufferConfig {
    set_keys();
    let mut config = TurbopufferConfig::new("tp", &fake.url());
    config.api_key_env = KEY_ENV.into();
    config.max_retries = 60;
    config.retry_initial_backoff_ms = 1;
    config.retry_max_backoff_ms = 20;
    config.request_timeout_ms = 5000;
    config
}

fn op(index: &str, id: &str, lsn: u64, action: WriteAction) -> WriteOp {
    WriteOp {
        index: Arc::from(index),
        table: Arc::from("public.items"),
        id: id.into(),
        lsn: Lsn(lsn),
        action,
        routing: None,
    }
}

fn upsert(doc: &Value, partial: bool) -> WriteAction {
    WriteAction::Upsert {
        doc: serde_json::to_vec(doc).unwrap(),
        partial,
        fresh: false,
    }
}

/// The expected rows of each namespace, applying writes as the API does.
#[derive(Default)]
struct Model(BTreeMap<String, BTreeMap<String, Value>>);

impl Model {
    fn apply(&mut self, op: &WriteOp) {
        let rows = self.0.entry(op.index.to_string()).or_default();
        match &op.action {
            WriteAction::Upsert { doc, partial, .. } => {
                let mut doc: Map<String, Value> = serde_json::from_slice(doc).unwrap();
                if let Some(id) = doc.remove("id") {
                    doc.insert("row_id".into(), id);
                }
                match (partial, rows.get_mut(&op.id)) {
                    (false, _) => {
                        rows.insert(op.id.clone(), Value::Object(doc));
                    }
                    (true, Some(Value::Object(row))) => row.extend(doc),
                    (true, _) => {}
                }
            }
            WriteAction::Delete => {
                rows.remove(&op.id);
            }
            WriteAction::Truncate { .. } => rows.clear(),
        }
    }

    fn rows(&self, namespace: &str) -> BTreeMap<String, Value> {
        self.0.get(namespace).cloned().unwrap_or_default()
    }
}

fn seed() -> u64 {
    let seed = std::env::var("SLUICE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    println!("seed {seed} (replay with SLUICE_TEST_SEED={seed})");
    seed
}

/// A random write to one of `keys` documents of `namespaces`.
fn random_op(rng: &mut StdRng, namespaces: &[&str], keys: u64, lsn: u64) -> WriteOp {
    let ns = namespaces[rng.random_range(0..namespaces.len())];
    let n = rng.random_range(0..keys);
    let id = n.to_string();
    let roll: f64 = rng.random();
    let action = if roll < 0.002 {
        WriteAction::Truncate {
            barrier: lsn,
            scoped: false,
        }
    } else if roll < 0.45 {
        let mut doc =
            json!({"id": n, "name": format!("n{}", rng.random::<u16>()), "v": rng.random::<u32>()});
        if rng.random_bool(0.3) {
            doc["note"] = Value::Null;
        }
        upsert(&doc, false)
    } else if roll < 0.75 {
        upsert(
            &json!({"v": rng.random::<u32>(), "body": format!("b{lsn}")}),
            true,
        )
    } else {
        WriteAction::Delete
    };
    op(ns, &id, lsn, action)
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_writes_survive_random_failures() {
    let seed = seed();
    let fake = FakeTurbopuffer::start(FakeOptions {
        seed,
        api_key: Some(KEY.into()),
        faults: Faults {
            rate_limited_429: 0.05,
            server_error_500: 0.05,
            dropped: 0.03,
            dropped_after_apply: 0.03,
            delay: Duration::from_micros(500),
            ..Faults::default()
        },
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&fake);
    config.batch_max_rows = 150;
    config.batch_max_bytes = 16 * 1024;
    config.concurrency = 4;
    let mut sink = TurbopufferSink::new(&config, dir.path()).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = Model::default();
    let namespaces = ["items", "other.items"];
    let mut lsn = 100;
    let mut written = 0;
    while written < 10_000 {
        let n = rng.random_range(1..300).min(10_000 - written);
        let ops: Vec<WriteOp> = (0..n)
            .map(|_| {
                lsn += 1;
                random_op(&mut rng, &namespaces, 400, lsn)
            })
            .collect();
        ops.iter().for_each(|op| model.apply(op));
        sink.write(&ops).await.unwrap();
        written += n;
        if rng.random_bool(0.3) {
            sink.commit(Lsn(lsn)).await.unwrap();
        }
    }
    sink.commit(Lsn(lsn)).await.unwrap();
    for ns in namespaces {
        let (got, want) = (fake.rows(ns), model.rows(ns));
        let differ: Vec<_> = want
            .keys()
            .chain(got.keys())
            .filter(|k| got.get(*k) != want.get(*k))
            .take(5)
            .map(|k| format!("{k}: got {:?} want {:?}", got.get(k), want.get(k)))
            .collect();
        assert!(
            differ.is_empty(),
            "{ns}: {} rows, {} expected; {differ:#?}",
            got.len(),
            want.len()
        );
    }
    assert_eq!(fake.repeated_ids(), 0, "a request named one id twice");
    assert!(failed::list(dir.path(), "tp").unwrap().is_empty());
    assert!(fake.max_in_flight() > 1, "requests never overlapped");
    let requests = fake.requests();
    assert!(requests.len() > 100, "{} requests", requests.len());
    assert!(
        requests.iter().any(|r| r.method == "DELETE"),
        "no truncate was sent"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_are_retried_with_backoff_without_loss_or_duplicates() {
    let fake = FakeTurbopuffer::start(FakeOptions {
        seed: seed(),
        faults: Faults {
            rate_limited_429: 0.6,
            ..Faults::default()
        },
        ..FakeOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&fake);
    config.batch_max_rows = 100;
    let mut sink = TurbopufferSink::new(&config, dir.path()).unwrap();
    let ops: Vec<WriteOp> = (0..2000u64)
        .map(|n| {
            op(
                "items",
                &n.to_string(),
                n + 1,
                upsert(&json!({"n": n}), false),
            )
        })
        .collect();
    sink.write(&ops).await.unwrap();
    sink.commit(Lsn(2001)).await.unwrap();
    let rows = fake.rows("items");
    assert_eq!(rows.len(), 2000);
    assert!((0..2000u64).all(|n| rows[&n.to_string()] == json!({"n": n})));
    // Each row is sent until one request carrying it is accepted: 20 accepted
    // requests of 100 distinct rows, the rest refused with 429.
    let requests = fake.requests();
    let mut sent: BTreeMap<String, usize> = BTreeMap::new();
    for request in &requests {
        for row in request.json()["upsert_rows"].as_array().unwrap() {
            *sent
                .entry(row["id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    assert_eq!(sent.len(), 2000);
    assert!(
        requests.len() > 20,
        "no 429 was drawn in {} requests",
        requests.len()
    );
    assert!(failed::list(dir.path(), "tp").unwrap().is_empty());

    // Retry-After is honoured although the backoff is capped at 20 ms.
    fake.update_faults(|f| {
        f.rate_limited_429 = 1.0;
        f.retry_after_secs = Some(1);
    });
    let before = fake.requests().len();
    sink.write(&[op("items", "x", 3000, upsert(&json!({"n": "x"}), false))])
        .await
        .unwrap();
    let commit = tokio::spawn(async move {
        sink.commit(Lsn(3000)).await.unwrap();
    });
    while fake.requests().len() == before {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    fake.update_faults(|f| f.rate_limited_429 = 0.0);
    commit.await.unwrap();
    let requests = fake.requests();
    let waited = requests[before + 1].at - requests[before].at;
    assert!(
        waited >= Duration::from_millis(990),
        "retried after {waited:?}"
    );
    assert_eq!(fake.rows("items")["x"], json!({"n": "x"}));
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_writes_are_parked_and_later_writes_go_on() {
    let fake = FakeTurbopuffer::start(FakeOptions {
        faults: Faults {
            poison: Some(Faults::poison_field("poison")),
            ..Faults::default()
        },
        ..FakeOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut sink = TurbopufferSink::new(&config(&fake), dir.path()).unwrap();
    let ops: Vec<WriteOp> = (0..200u64)
        .map(|n| {
            let doc = json!({"n": n, "poison": n == 7 || n == 150});
            op("items", &n.to_string(), n + 1, upsert(&doc, false))
        })
        .collect();
    sink.write(&ops).await.unwrap();
    sink.commit(Lsn(200)).await.unwrap();
    let parked = failed::list(dir.path(), "tp").unwrap();
    let ids: Vec<&str> = parked.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["7", "150"], "{parked:#?}");
    for message in &parked {
        assert!(message.error.contains("400"), "{}", message.error);
        assert!(
            message.error.contains("poison predicate"),
            "{}",
            message.error
        );
        assert_eq!(message.action, "upsert");
        assert_eq!(message.index, "items");
        assert!(message
            .document
            .as_deref()
            .unwrap()
            .contains("\"poison\":true"));
    }
    assert_eq!(fake.rows("items").len(), 198);

    // Later writes go on; the parked document's wait behind its parked write.
    sink.write(&[
        op(
            "items",
            "7",
            300,
            upsert(&json!({"n": 7, "poison": false}), false),
        ),
        op(
            "items",
            "200",
            301,
            upsert(&json!({"n": 200, "poison": false}), false),
        ),
    ])
    .await
    .unwrap();
    sink.commit(Lsn(301)).await.unwrap();
    let rows = fake.rows("items");
    assert!(rows.contains_key("200") && !rows.contains_key("7"));
    let parked = failed::list(dir.path(), "tp").unwrap();
    assert_eq!(parked.len(), 3);
    assert_eq!(parked[2].error, failed::WAITING_BEHIND);

    // A later write whose batch waited for the request carrying the earlier
    // one parks behind it when that one was refused.
    let mut two_rows = config(&fake);
    two_rows.batch_max_rows = 2;
    let dir = tempfile::tempdir().unwrap();
    let mut sink = TurbopufferSink::new(&two_rows, dir.path()).unwrap();
    let ops: Vec<WriteOp> = [("7", true), ("8", false), ("7", false), ("9", false)]
        .into_iter()
        .zip(310..)
        .map(|((id, poison), lsn)| {
            let doc = json!({"n": id, "poison": poison});
            op("behind", id, lsn, upsert(&doc, false))
        })
        .collect();
    sink.write(&ops).await.unwrap();
    sink.commit(Lsn(313)).await.unwrap();
    let rows = fake.rows("behind");
    assert_eq!(rows.keys().collect::<Vec<_>>(), ["8", "9"]);
    let parked = failed::list(dir.path(), "tp").unwrap();
    let parked: Vec<(&str, &str)> = parked
        .iter()
        .map(|m| (m.id.as_str(), m.lsn.as_str()))
        .collect();
    assert_eq!(parked, [("7", "0/136"), ("7", "0/138")]);
    assert_eq!(
        failed::list(dir.path(), "tp").unwrap()[1].error,
        failed::WAITING_BEHIND
    );

    // A dead service (503 to everything) is waited out, however long it
    // takes: nothing is parked, and the write lands once it is back.
    fake.update_faults(|f| f.dead = true);
    let mut config = config(&fake);
    config.max_retries = 2;
    let dir = tempfile::tempdir().unwrap();
    let mut sink = TurbopufferSink::new(&config, dir.path()).unwrap();
    let pending = tokio::spawn(async move {
        sink.write(&[op("items", "500", 400, WriteAction::Delete)])
            .await
            .unwrap();
        sink.commit(Lsn(400)).await.unwrap();
        sink
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !pending.is_finished(),
        "the write gave up on a dead service"
    );
    assert!(failed::list(dir.path(), "tp").unwrap().is_empty());
    fake.update_faults(|f| f.dead = false);
    let mut sink = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("the write lands once the service is back")
        .unwrap();
    assert!(failed::list(dir.path(), "tp").unwrap().is_empty());

    // Dropped connections are retried like any network trouble.
    fake.update_faults(|f| {
        f.dead = false;
        f.dropped = 1.0;
    });
    sink.write(&[op("items", "501", 401, WriteAction::Delete)])
        .await
        .unwrap();
    sink.commit(Lsn(401)).await.unwrap();
    let parked = failed::list(dir.path(), "tp").unwrap();
    assert_eq!(parked.len(), 1);
    assert!(
        parked[0].error.contains("dropped by the fake") || parked[0].error.contains("failed"),
        "{}",
        parked[0].error
    );
    assert_eq!(parked[0].attempts, 3);

    // So are timeouts.
    fake.update_faults(|f| {
        f.dropped = 0.0;
        f.delay = Duration::from_millis(300);
    });
    let mut config = self::config(&fake);
    config.max_retries = 1;
    config.request_timeout_ms = 50;
    let mut sink = TurbopufferSink::new(&config, dir.path()).unwrap();
    sink.write(&[op("items", "502", 402, WriteAction::Delete)])
        .await
        .unwrap();
    sink.commit(Lsn(402)).await.unwrap();
    let parked = failed::list(dir.path(), "tp").unwrap();
    assert_eq!(parked.len(), 2);
    assert!(parked[1].error.contains("timed out"), "{}", parked[1].error);
    assert_eq!(parked[1].attempts, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_key_and_typed_ids() {
    let fake = FakeTurbopuffer::start(FakeOptions {
        api_key: Some(KEY.into()),
        ..FakeOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();

    // A wrong key is an error of the sink, not parked writes.
    let mut wrong = config(&fake);
    wrong.api_key_env = WRONG_KEY_ENV.into();
    let mut sink = TurbopufferSink::new(&wrong, dir.path()).unwrap();
    sink.write(&[op("strings", "a", 1, upsert(&json!({}), false))])
        .await
        .unwrap();
    let error = sink.commit(Lsn(1)).await.unwrap_err();
    assert!(error.to_string().contains("401"), "{error}");
    assert!(failed::list(dir.path(), "tp").unwrap().is_empty());

    // Strings (default): ids as they are; a document's own `id` is renamed.
    let mut sink = TurbopufferSink::new(&config(&fake), dir.path()).unwrap();
    sink.write(&[
        op(
            "strings",
            "a-1",
            2,
            upsert(&json!({"id": 1, "name": "a"}), false),
        ),
        op("strings", "b", 3, upsert(&json!({"id": 2}), false)),
        op("strings", "b", 4, WriteAction::Delete),
    ])
    .await
    .unwrap();
    sink.commit(Lsn(4)).await.unwrap();
    assert_eq!(
        fake.rows("strings"),
        BTreeMap::from([("a-1".to_owned(), json!({"row_id": 1, "name": "a"}))])
    );
    assert_eq!(fake.id_kind("strings"), Some(IdKind::String));
    let requests = fake.requests();
    let last = requests.last().unwrap();
    assert_eq!(
        last.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(last.header("content-type"), Some("application/json"));
    assert_eq!(last.path, "/v2/namespaces/strings");
    assert_eq!(
        last.json(),
        json!({"upsert_rows": [{"id": "a-1", "row_id": 1, "name": "a"}], "deletes": ["b"]})
    );

    // u64: numeric ids; a non-numeric id is parked with the reason.
    let mut config = config(&fake);
    config.id_type = IdType::U64;
    config.id_attribute = String::new();
    let mut sink = TurbopufferSink::new(&config, dir.path()).unwrap();
    sink.write(&[
        op(
            "numbers",
            "18446744073709551615",
            5,
            upsert(&json!({"id": 9, "x": 1}), false),
        ),
        op("numbers", "abc", 6, upsert(&json!({"x": 2}), false)),
        op("numbers", "7", 7, upsert(&json!({"x": 3}), false)),
        op("numbers", "7", 8, upsert(&json!({"y": 4}), true)),
    ])
    .await
    .unwrap();
    sink.commit(Lsn(8)).await.unwrap();
    assert_eq!(
        fake.rows("numbers"),
        BTreeMap::from([
            ("18446744073709551615".to_owned(), json!({"x": 1})),
            ("7".to_owned(), json!({"x": 3, "y": 4})),
        ])
    );
    assert_eq!(fake.id_kind("numbers"), Some(IdKind::U64));
    let body = fake.requests().last().unwrap().json();
    assert!(body["upsert_rows"][0]["id"].is_u64(), "{body}");
    let parked = failed::list(dir.path(), "tp").unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].id, "abc");
    assert!(
        parked[0].error.contains("unsigned 64-bit"),
        "{}",
        parked[0].error
    );

    // uuid: the schema declares the id type.
    let mut config = self::config(&fake);
    config.id_type = IdType::Uuid;
    let mut sink = TurbopufferSink::new(&config, dir.path()).unwrap();
    let id = "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11";
    sink.write(&[op("uuids", id, 9, upsert(&json!({"x": 1}), false))])
        .await
        .unwrap();
    sink.commit(Lsn(9)).await.unwrap();
    assert_eq!(fake.id_kind("uuids"), Some(IdKind::Uuid));
    assert_eq!(fake.rows("uuids").len(), 1);
    assert_eq!(
        fake.requests().last().unwrap().json()["schema"],
        json!({"id": "uuid"})
    );
}
