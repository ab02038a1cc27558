//! The fake Elasticsearch itself, over HTTP: the sink tests lean on it, so it
//! must answer as the Elasticsearch reference says a cluster answers.

mod fakes;

use std::io::Write;
use std::time::Duration;

use fakes::elasticsearch::{FakeElasticsearch, FakeOptions, Faults, Flavor};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// NDJSON: one line per value, newline-terminated.
fn ndjson(lines: &[Value]) -> String {
    lines.iter().map(|line| format!("{line}\n")).collect()
}

async fn bulk(es: &FakeElasticsearch, lines: &[Value]) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/_bulk", es.url()))
        .header("content-type", "application/x-ndjson")
        .body(ndjson(lines))
        .send()
        .await
        .expect("an answer");
    let status = response.status();
    (status, read_json(response).await)
}

async fn read_json(response: reqwest::Response) -> Value {
    let body = response.bytes().await.expect("a body");
    serde_json::from_slice(&body).expect("a JSON body")
}

fn with_json(request: reqwest::RequestBuilder, body: &Value) -> reqwest::RequestBuilder {
    request
        .header("content-type", "application/json")
        .body(body.to_string())
}

/// `{"index": {"_index": "items", "_id": id, "version": v, "version_type": t}}`.
fn versioned(action: &str, id: &str, version: u64, version_type: &str) -> Value {
    json!({ action: { "_index": "items", "_id": id, "version": version, "version_type": version_type } })
}

/// The `n`th item's (status, result or error type).
fn outcome(answer: &Value, n: usize) -> (u64, String) {
    let item = answer["items"][n]
        .as_object()
        .expect("an item")
        .values()
        .next()
        .expect("one action");
    let what = item["result"]
        .as_str()
        .or(item["error"]["type"].as_str())
        .expect("a result or an error");
    (item["status"].as_u64().expect("a status"), what.to_owned())
}

#[tokio::test]
async fn external_versions_reject_stale_writes_and_deletes_leave_tombstones() {
    let es = FakeElasticsearch::start(FakeOptions::default()).await;
    let (status, answer) = bulk(
        &es,
        &[
            versioned("index", "1", 5, "external"),
            json!({ "name": "five" }),
            versioned("index", "1", 3, "external"),
            json!({ "name": "three" }),
            versioned("index", "1", 5, "external"),
            json!({ "name": "five again" }),
            versioned("index", "1", 5, "external_gte"),
            json!({ "name": "five gte" }),
            versioned("index", "1", 4, "external_gte"),
            json!({ "name": "four gte" }),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["errors"], true);
    assert_eq!(outcome(&answer, 0), (201, "created".into()));
    assert_eq!(answer["items"][0]["index"]["_version"], 5);
    assert_eq!(
        outcome(&answer, 1),
        (409, "version_conflict_engine_exception".into())
    );
    assert_eq!(
        answer["items"][1]["index"]["error"]["reason"],
        "[1]: version conflict, current version [5] is higher or equal to the one provided [3]"
    );
    assert_eq!(
        outcome(&answer, 2),
        (409, "version_conflict_engine_exception".into())
    );
    assert_eq!(outcome(&answer, 3), (200, "updated".into()));
    assert_eq!(
        answer["items"][4]["index"]["error"]["reason"],
        "[1]: version conflict, current version [5] is higher than the one provided [4]"
    );
    assert_eq!(
        es.document("items", "1"),
        Some(json!({ "name": "five gte" }))
    );
    assert_eq!(es.version("items", "1"), Some(5));

    // A delete at 7 leaves a tombstone: older writes stay refused, newer ones land.
    let (_, answer) = bulk(
        &es,
        &[
            versioned("delete", "1", 7, "external_gte"),
            versioned("index", "1", 6, "external_gte"),
            json!({ "name": "six" }),
            versioned("delete", "2", 3, "external"),
        ],
    )
    .await;
    assert_eq!(outcome(&answer, 0), (200, "deleted".into()));
    assert_eq!(answer["items"][0]["delete"]["_version"], 7);
    assert_eq!(
        outcome(&answer, 1),
        (409, "version_conflict_engine_exception".into())
    );
    assert_eq!(
        outcome(&answer, 2),
        (404, "not_found".into()),
        "a delete of nothing is no error"
    );
    assert_eq!(es.document("items", "1"), None);
    assert_eq!(es.tombstone("items", "1"), Some(7));
    assert_eq!(es.tombstone("items", "2"), Some(3));

    let (_, answer) = bulk(
        &es,
        &[
            versioned("index", "2", 2, "external"),
            json!({ "name": "two" }),
            versioned("index", "1", 8, "external"),
            json!({ "name": "eight" }),
        ],
    )
    .await;
    assert_eq!(
        outcome(&answer, 0),
        (409, "version_conflict_engine_exception".into())
    );
    assert_eq!(outcome(&answer, 1), (201, "created".into()));
    assert_eq!(es.documents("items").len(), 1);
    assert_eq!(es.version("items", "1"), Some(8));
}

#[tokio::test]
async fn internal_versions_count_and_create_refuses_existing_documents() {
    let es = FakeElasticsearch::start(FakeOptions::default()).await;
    let index = json!({ "index": { "_index": "items", "_id": "1" } });
    let (_, answer) = bulk(
        &es,
        &[
            index.clone(),
            json!({ "n": 1 }),
            index.clone(),
            json!({ "n": 2 }),
            json!({ "create": { "_index": "items", "_id": "1" } }),
            json!({ "n": 3 }),
            json!({ "delete": { "_index": "items", "_id": "1" } }),
            index,
            json!({ "n": 4 }),
        ],
    )
    .await;
    assert_eq!(outcome(&answer, 1), (200, "updated".into()));
    assert_eq!(
        outcome(&answer, 2),
        (409, "version_conflict_engine_exception".into())
    );
    assert_eq!(
        answer["items"][2]["create"]["error"]["reason"],
        "[1]: version conflict, document already exists (current version [2])"
    );
    assert_eq!(answer["items"][3]["delete"]["_version"], 3);
    assert_eq!(outcome(&answer, 4), (201, "created".into()));
    assert_eq!(
        es.version("items", "1"),
        Some(4),
        "versions go on past the tombstone"
    );

    // A version without external versioning fails the whole request, as in 8.x.
    let (status, answer) = bulk(&es, &[versioned("index", "1", 9, "internal"), json!({})]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer["error"]["type"],
        "action_request_validation_exception"
    );
    assert!(answer["error"]["reason"]
        .as_str()
        .unwrap()
        .contains("internal versioning can not be used"));
}

#[tokio::test]
async fn updates_merge_upsert_and_refuse_versions() {
    let es = FakeElasticsearch::start(FakeOptions::default()).await;
    es.insert_document(
        "items",
        "1",
        json!({ "a": 1, "nested": { "x": 1, "y": 1 } }),
        10,
    );
    let update =
        |id: &str| json!({ "update": { "_index": "items", "_id": id, "retry_on_conflict": 3 } });
    let (_, answer) = bulk(
        &es,
        &[
            update("1"),
            json!({ "doc": { "b": 2, "nested": { "y": 2 } } }),
            update("1"),
            json!({ "doc": { "b": 2 } }),
            update("2"),
            json!({ "doc": { "c": 3 } }),
            update("3"),
            json!({ "doc": { "c": 3 }, "doc_as_upsert": true }),
        ],
    )
    .await;
    assert_eq!(outcome(&answer, 0), (200, "updated".into()));
    assert_eq!(outcome(&answer, 1), (200, "noop".into()));
    assert_eq!(
        outcome(&answer, 2),
        (404, "document_missing_exception".into())
    );
    assert_eq!(outcome(&answer, 3), (201, "created".into()));
    assert_eq!(
        es.document("items", "1"),
        Some(json!({ "a": 1, "b": 2, "nested": { "x": 1, "y": 2 } }))
    );
    assert_eq!(es.version("items", "1"), Some(11));
    assert_eq!(es.document("items", "2"), None);
    assert_eq!(es.document("items", "3"), Some(json!({ "c": 3 })));

    let (status, answer) = bulk(
        &es,
        &[
            versioned("update", "1", 20, "external"),
            json!({ "doc": {} }),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["error"]["type"], "illegal_argument_exception");
    assert!(answer["error"]["reason"]
        .as_str()
        .unwrap()
        .starts_with("Update requests do not support versioning"));
    assert_eq!(es.version("items", "1"), Some(11));
}

#[tokio::test]
async fn rejected_and_poison_items_fail_alone() {
    let faults = Faults {
        item_rejected_429: 0.3,
        poison_ids: ["7".to_owned()].into(),
        poison_field: Some("poison".into()),
        ..Faults::default()
    };
    let options = FakeOptions {
        seed: 42,
        faults,
        ..FakeOptions::default()
    };
    let mut lines = Vec::new();
    for id in 0..40 {
        lines.push(versioned("index", &id.to_string(), 1, "external"));
        lines.push(json!({ "id": id, "poison": id == 13 }));
    }
    let es = FakeElasticsearch::start(options.clone()).await;
    let (status, answer) = bulk(&es, &lines).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["errors"], true);
    let mut rejected = 0;
    for id in 0..40 {
        let (status, what) = outcome(&answer, id);
        let stored = es.document("items", &id.to_string());
        match status {
            201 => assert_eq!(stored, Some(json!({ "id": id, "poison": id == 13 }))),
            429 => {
                assert_eq!(what, "es_rejected_execution_exception");
                assert_eq!(stored, None, "a rejected item is not applied");
                rejected += 1;
            }
            400 => {
                assert_eq!(what, "mapper_parsing_exception");
                assert!(id == 7 || id == 13, "only poison fails for good: {id}");
                assert_eq!(stored, None);
            }
            other => panic!("unexpected status {other} for {id}"),
        }
    }
    assert!(
        (5..=20).contains(&rejected),
        "about 30% rejected: {rejected}"
    );

    // The same seed draws the same failures.
    let again = FakeElasticsearch::start(options).await;
    let (_, replay) = bulk(&again, &lines).await;
    assert_eq!(replay["items"], answer["items"]);

    // Without faults, a retry of everything lands; poison still fails.
    es.set_faults(Faults {
        poison_ids: ["7".to_owned()].into(),
        ..Faults::default()
    });
    let (_, answer) = bulk(&es, &lines).await;
    assert_eq!(es.documents("items").len(), 39);
    assert_eq!(
        outcome(&answer, 7),
        (400, "mapper_parsing_exception".into())
    );
}

#[tokio::test]
async fn gzip_bodies_are_decompressed_and_logged() {
    let es = FakeElasticsearch::start(FakeOptions::default()).await;
    let body = ndjson(&[
        versioned("index", "1", 1, "external_gte"),
        json!({ "zipped": true }),
    ]);
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(body.as_bytes()).unwrap();
    let response = reqwest::Client::new()
        .post(format!("{}/_bulk", es.url()))
        .header("content-type", "application/x-ndjson")
        .header("content-encoding", "gzip")
        .body(encoder.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-elastic-product"], "Elasticsearch");
    assert_eq!(es.document("items", "1"), Some(json!({ "zipped": true })));
    let requests = es.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].header("content-encoding"), Some("gzip"));
    assert_eq!(requests[0].body_text(), body);
    assert_eq!(requests[0].json_lines()[1], json!({ "zipped": true }));
    assert_eq!(es.bulk_requests_count(), 1);
}

#[tokio::test]
async fn bad_requests_fail_whole() {
    let es = FakeElasticsearch::start(FakeOptions::default()).await;
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{}/_bulk", es.url()))
        .header("content-type", "text/plain")
        .body(ndjson(&[
            json!({ "delete": { "_index": "items", "_id": "1" } }),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_ACCEPTABLE);

    let malformed = [
        "{\"index\":{\"_index\":\"items\"}}\n{\"a\":1}",
        "{\"index\":{\"_index\":\"items\"}\n{\"a\":1}\n",
        "{\"upsert\":{\"_index\":\"items\"}}\n{\"a\":1}\n",
        "{\"delete\":{\"_index\":\"items\"}}\n",
    ];
    for body in malformed {
        let response = client
            .post(format!("{}/_bulk", es.url()))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let answer = read_json(response).await;
        assert_eq!(answer["status"], 400);
        assert!(answer["error"]["type"].is_string(), "{answer}");
    }
    assert!(
        es.indexes().is_empty(),
        "nothing of a bad request is applied"
    );
}

#[tokio::test]
async fn auth_is_required_when_configured() {
    let options = FakeOptions {
        required_auth: Some("ApiKey abc".into()),
        ..FakeOptions::default()
    };
    let es = FakeElasticsearch::start(options).await;
    let client = reqwest::Client::new();
    let line = ndjson(&[versioned("index", "1", 1, "external"), json!({})]);
    for auth in [None, Some("ApiKey wrong"), Some("ApiKey abc")] {
        let mut request = client
            .post(format!("{}/_bulk", es.url()))
            .header("content-type", "application/x-ndjson")
            .body(line.clone());
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.unwrap();
        if auth == Some("ApiKey abc") {
            assert_eq!(response.status(), StatusCode::OK);
            continue;
        }
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers().contains_key("www-authenticate"));
        let answer = read_json(response).await;
        assert_eq!(answer["error"]["type"], "security_exception");
        assert_eq!(answer["status"], 401);
    }
    assert_eq!(es.documents("items").len(), 1);
    assert_eq!(es.bulk_requests_count(), 3);
}

#[tokio::test]
async fn indexes_are_created_checked_and_read() {
    let es = FakeElasticsearch::start(FakeOptions::default()).await;
    let client = reqwest::Client::new();
    let info = read_json(client.get(es.url()).send().await.unwrap()).await;
    assert!(info["version"]["number"]
        .as_str()
        .unwrap()
        .starts_with("8."));

    let url = format!("{}/items", es.url());
    assert_eq!(
        client.head(&url).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    let definition = json!({
        "settings": { "number_of_shards": 1 },
        "mappings": { "properties": { "name": { "type": "text" } } }
    });
    let created = with_json(client.put(&url), &definition)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::OK);
    let created = read_json(created).await;
    assert_eq!(
        created,
        json!({ "acknowledged": true, "shards_acknowledged": true, "index": "items" })
    );
    assert_eq!(
        client.head(&url).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(es.index_definition("items"), Some(definition.clone()));

    let again = with_json(client.put(&url), &definition)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);
    let again = read_json(again).await;
    assert_eq!(again["error"]["type"], "resource_already_exists_exception");

    es.insert_document("items", "1", json!({ "name": "one" }), 3);
    let found = client.get(format!("{url}/_doc/1")).send().await.unwrap();
    assert_eq!(found.status(), StatusCode::OK);
    let found = read_json(found).await;
    assert_eq!(
        (found["found"].clone(), found["_version"].clone()),
        (json!(true), json!(3))
    );
    assert_eq!(found["_source"], json!({ "name": "one" }));
    let missing = client.get(format!("{url}/_doc/2")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(read_json(missing).await["found"], false);

    // A truncate: refresh, then delete by query; tombstones stay behind.
    let refreshed = client.post(format!("{url}/_refresh")).send().await.unwrap();
    assert_eq!(refreshed.status(), StatusCode::OK);
    let query = json!({ "query": { "match_all": {} } });
    let deleted = with_json(
        client.post(format!(
            "{url}/_delete_by_query?conflicts=proceed&refresh=true"
        )),
        &query,
    );
    assert_eq!(read_json(deleted.send().await.unwrap()).await["deleted"], 1);
    assert_eq!(es.tombstone("items", "1"), Some(4));
}

#[tokio::test]
async fn whole_request_failures_apply_nothing() {
    let es = FakeElasticsearch::start(FakeOptions::default()).await;
    let lines = [versioned("index", "1", 1, "external"), json!({})];
    let none = Faults::default;
    let cases = [
        (
            Faults {
                request_rejected_429: 1.0,
                ..none()
            },
            429,
        ),
        (
            Faults {
                request_bad_gateway_502: 1.0,
                ..none()
            },
            502,
        ),
        (
            Faults {
                request_unavailable_503: 1.0,
                ..none()
            },
            503,
        ),
        (
            Faults {
                dead: true,
                ..none()
            },
            503,
        ),
    ];
    for (faults, expected) in cases {
        es.set_faults(faults);
        let response = reqwest::Client::new()
            .post(format!("{}/_bulk", es.url()))
            .header("content-type", "application/x-ndjson")
            .body(ndjson(&lines))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), expected);
    }
    assert!(es.documents("items").is_empty());
    assert_eq!(es.bulk_requests_count(), 4);
}

#[tokio::test]
async fn dropped_connections_surface_as_client_errors() {
    let faults = Faults {
        request_dropped: 1.0,
        ..Faults::default()
    };
    let es = FakeElasticsearch::start(FakeOptions {
        faults,
        ..FakeOptions::default()
    })
    .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let send = || {
        client
            .post(format!("{}/_bulk", es.url()))
            .header("content-type", "application/x-ndjson")
            .body(ndjson(&[versioned("index", "1", 1, "external"), json!({})]))
            .send()
    };
    let error = send().await.expect_err("no answer on a dropped connection");
    assert!(
        !error.is_timeout(),
        "the connection closes at once: {error}"
    );
    assert!(es.documents("items").is_empty());

    es.update_faults(|f| f.request_dropped = 0.0);
    assert_eq!(send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(es.documents("items").len(), 1);

    // A dead cluster that hangs: only the client's timeout ends the request.
    es.update_faults(|f| {
        f.dead = true;
        f.hang_when_dead = true;
    });
    let hung = client
        .get(es.url())
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(hung.expect_err("a hang").is_timeout());

    es.shutdown();
    assert!(send().await.is_err(), "a stopped fake answers nothing");
}

#[tokio::test]
async fn opensearch_flavor_unavailable_shards_and_revival() {
    let faults = Faults {
        item_unavailable_503: 1.0,
        ..Faults::default()
    };
    let options = FakeOptions {
        flavor: Flavor::OpenSearch,
        faults,
        ..FakeOptions::default()
    };
    let es = FakeElasticsearch::start(options).await;
    let client = reqwest::Client::new();
    let info = read_json(client.get(es.url()).send().await.unwrap()).await;
    assert_eq!(info["version"]["distribution"], "opensearch");

    let lines = [versioned("index", "1", 1, "external"), json!({})];
    let (status, answer) = bulk(&es, &lines).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        outcome(&answer, 0),
        (503, "unavailable_shards_exception".into())
    );
    assert!(es.document("items", "1").is_none());

    // A request held by a hanging cluster goes through once it comes back.
    es.set_faults(Faults {
        dead: true,
        hang_when_dead: true,
        ..Faults::default()
    });
    let held = tokio::spawn({
        let url = es.url();
        async move { reqwest::get(url).await.map(|r| r.status()) }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!held.is_finished());
    es.update_faults(|f| f.dead = false);
    assert_eq!(held.await.unwrap().unwrap(), StatusCode::OK);
}
