//! Backfills: existing rows reach the index, consistently with live changes,
//! resumably, on request through the management API and the CLI.

mod common;

use std::time::Duration;

use common::{assert_index_equals_table, cli, documents, wait_until, Sluice, TestDb};
use serde_json::Value;

const ITEMS: &str = "
CREATE TABLE items (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    n integer NOT NULL,
    note text
)";

fn insert_items(from: i64, to: i64) -> String {
    format!(
        "INSERT INTO items (id, name, n, note)
         SELECT i, 'item ' || i, i % 97, CASE WHEN i % 5 = 0 THEN NULL ELSE E'tab\\there' END
         FROM generate_series({from}, {to}) AS i"
    )
}

/// The management API's address, once sluice wrote it.
async fn api_address(db: &TestDb, sluice: &mut Sluice) -> String {
    let file = db.data_dir().join("api.addr");
    for _ in 0..300 {
        if file.exists() {
            break;
        }
        sluice.assert_running();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(file.exists(), "no API address; log:\n{}", sluice.log_text());
    format!("http://{}", std::fs::read_to_string(&file).unwrap().trim())
}

const API: &str = "[api]\nlisten = \"127.0.0.1:0\"\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_new_sink_is_backfilled_from_the_rows_already_there() {
    let db = TestDb::new("initial").await;
    db.exec(ITEMS).await;
    db.exec(&insert_items(1, 20_000)).await;
    let tables = format!(
        "[[tables]]\nname = \"public.items\"\n\n{API}\n[backfill]\nmin_chunk_rows = 1000\n"
    );
    let config = db.config(&tables, "");
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    assert_index_equals_table(&db, "items", "items", "id").await;
    let api = api_address(&db, &mut sluice).await;
    let client = reqwest::Client::new();
    let done = wait_until(Duration::from_secs(30), || async {
        let list: Value = client
            .get(format!("{api}/api/backfills"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        list[0]["state"] == "completed"
    })
    .await;
    let list: Value = client
        .get(format!("{api}/api/backfills"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(done, "{list:#}");
    assert_eq!(list[0]["rows_done"], 20_000, "{list:#}");
    assert_eq!(list[0]["initial"], true);
    assert_eq!(list[0]["percent"], 100.0);
    assert_eq!(documents(&db.data_dir(), "items", "id").len(), 20_000);
    assert_eq!(sluice.stop().code(), Some(0));
}

/// Chunks far larger than `max_bytes_in_flight` still complete: their
/// credits come from a budget of their own, so the reader can always read
/// the high watermarks they wait for.
#[tokio::test(flavor = "multi_thread")]
async fn chunks_larger_than_the_in_flight_budget_do_not_stall() {
    let db = TestDb::new("big_chunks").await;
    db.exec("CREATE TABLE wide (id bigint PRIMARY KEY, body text NOT NULL)")
        .await;
    db.exec("INSERT INTO wide SELECT i, repeat(md5(i::text), 64) FROM generate_series(1, 6000) i")
        .await;
    // 2000 rows of 2 kB: 4 MB a chunk, four times the budget.
    let tables = format!(
        "[[tables]]\nname = \"public.wide\"\n\n{API}\n[backfill]\nmin_chunk_rows = 2000\nmax_chunk_rows = 2000\nchunks_in_flight = 2\n"
    );
    let config = db.config(
        &tables,
        "max_bytes_in_flight = 1048576\nbatch_max_bytes = 262144",
    );
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    let api = api_address(&db, &mut sluice).await;
    let b = wait_state(&api, 1, "completed", &mut sluice).await;
    assert_eq!(b["rows_done"], 6000, "{b:#}");
    // Live changes flow as well.
    db.exec("UPDATE wide SET body = 'changed' WHERE id <= 10")
        .await;
    assert_index_equals_table(&db, "wide", "wide", "id").await;
    assert_eq!(sluice.stop().code(), Some(0));
}

/// A table keyed by a replica identity index of two columns, in the other
/// order than the table's, is read page by page in the index's order to
/// its last row.
#[tokio::test(flavor = "multi_thread")]
async fn a_two_column_key_is_paged_in_its_own_order() {
    let db = TestDb::new("two_columns").await;
    db.exec(
        "CREATE TABLE accounts (tenant text NOT NULL, id int NOT NULL, code text NOT NULL, note text);
         CREATE UNIQUE INDEX accounts_key ON accounts (id, tenant);
         ALTER TABLE accounts REPLICA IDENTITY USING INDEX accounts_key;
         INSERT INTO accounts
         SELECT t, i, t || '/' || i, CASE WHEN i % 3 = 0 THEN NULL ELSE E'a\\b' END
         FROM unnest(ARRAY['b', 'a', 'c c']) AS t, generate_series(1, 3000) AS i",
    )
    .await;
    let tables = format!(
        "[[tables]]\nname = \"public.accounts\"\n\n{API}\n[backfill]\nmin_chunk_rows = 700\nmax_chunk_rows = 700\n"
    );
    let config = db.config(&tables, "");
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    let api = api_address(&db, &mut sluice).await;
    let b = wait_state(&api, 1, "completed", &mut sluice).await;
    assert_eq!(b["rows_done"], 9000, "{b:#}");
    assert_index_equals_table(&db, "accounts", "accounts", "code").await;
    assert_eq!(sluice.stop().code(), Some(0));
}

async fn get(api: &str, path: &str) -> Value {
    reqwest::get(format!("{api}{path}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// POSTs and returns the status and the JSON answer.
async fn post(api: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let request = reqwest::Client::new()
        .post(format!("{api}{path}"))
        .header("content-type", "application/json")
        .body(body.unwrap_or("{}").to_owned());
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Waits until backfill `id` reached `state`.
async fn wait_state(api: &str, id: u64, state: &str, sluice: &mut Sluice) -> Value {
    for _ in 0..1200 {
        let b = get(api, &format!("/api/backfills/{id}")).await;
        // A paused or cancelled backfill is still writing what it read
        // before while it is settling.
        if b["state"] == state && b["settling"] != true {
            return b;
        }
        sluice.assert_running();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "backfill {id} never became {state}: {:#}\nlog:\n{}",
        get(api, &format!("/api/backfills/{id}")).await,
        sluice.log_text()
    );
}

/// `sluice ARGS` to its end: (exit code, stdout, stderr).

#[tokio::test(flavor = "multi_thread")]
async fn a_condition_backfills_only_matching_rows_and_a_rebackfill_restores_a_lost_index() {
    let db = TestDb::new("incremental").await;
    db.exec(ITEMS).await;
    db.exec(&insert_items(1, 5000)).await;
    let tables =
        format!("[[tables]]\nname = \"public.items\"\n\n{API}\n[backfill]\ninitial = false\n");
    let config = db.config(&tables, "");
    let config_arg = config.to_str().unwrap();
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    api_address(&db, &mut sluice).await;
    db.exec("UPDATE items SET name = 'live' WHERE id = 3").await;
    assert!(
        wait_until(Duration::from_secs(30), || async {
            documents(&db.data_dir(), "items", "id").len() == 1
        })
        .await
    );

    // Only rows with n < 10 (and the row streamed meanwhile).
    let (code, out, err) = cli(&[
        "backfill",
        "start",
        "--config",
        config_arg,
        "--sink",
        "embedded",
        "--table",
        "public.items",
        "--where",
        "n < 10",
    ])
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("[completed]"), "{out}");
    let docs = documents(&db.data_dir(), "items", "id");
    let rows = db.rows("items", "id").await;
    let matching: std::collections::BTreeMap<_, _> = rows
        .iter()
        .filter(|(id, row)| row["n"].as_i64().unwrap() < 10 || *id == "3")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert!(matching.len() > 400 && matching.len() < 1000);
    let ok = wait_until(Duration::from_secs(10), || async {
        documents(&db.data_dir(), "items", "id") == matching
    })
    .await;
    assert!(ok, "{}", common::difference(&docs, &matching));

    // The index is lost while sluice is stopped; a full backfill restores it.
    assert_eq!(sluice.stop().code(), Some(0));
    std::fs::remove_dir_all(db.data_dir().join("indexes").join("items")).unwrap();
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    api_address(&db, &mut sluice).await;
    let (code, out, err) = cli(&[
        "backfill", "start", "--config", config_arg, "--sink", "embedded", "--table", "items",
    ])
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert_index_equals_table(&db, "items", "items", "id").await;

    let (code, out, _) = cli(&["backfill", "list", "--config", config_arg]).await;
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(
        out.contains("backfill 1 [completed] sink embedded: public.items where n < 10"),
        "{out}"
    );
    assert!(
        out.contains("backfill 2 [completed] sink embedded: public.items: 5000 row(s)"),
        "{out}"
    );
    let (code, out, _) = cli(&["status", "--config", config_arg]).await;
    assert_eq!(code, 0);
    assert!(out.contains("pipeline "), "{out}");
    assert!(
        out.contains("sink embedded (embedded): committed "),
        "{out}"
    );
    assert!(out.contains("no backfill running"), "{out}");
    assert_eq!(sluice.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_refuses_bad_requests_and_changes_nothing() {
    let db = TestDb::new("api").await;
    db.exec(ITEMS).await;
    db.exec("CREATE TABLE other (id int PRIMARY KEY)").await;
    db.exec(&insert_items(1, 30_000)).await;
    let tables = format!(
        "[[tables]]\nname = \"public.items\"\n\n{API}\n[backfill]\ninitial = false\nmin_chunk_rows = 100\nmax_chunk_rows = 100\n"
    );
    let config = db.config(&tables, "");
    let config_arg = config.to_str().unwrap();
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    let api = api_address(&db, &mut sluice).await;

    let health = get(&api, "/api/health").await;
    assert_eq!(health["status"], "ok");
    let pipelines = get(&api, "/api/pipelines").await;
    assert_eq!(pipelines[0]["slot"], db.name.as_str());
    assert_eq!(pipelines[0]["sinks"][0]["name"], "embedded");
    assert_eq!(pipelines[0]["tables"][0], "public.items");
    let sink = get(&api, "/api/sinks/embedded").await;
    assert_eq!(sink["type"], "embedded");

    let start = "/api/sinks/embedded/backfills";
    for (path, body, status, says) in [
        (
            "/api/sinks/nope/backfills",
            r#"{"table": "items"}"#,
            404,
            "no sink named `nope`",
        ),
        (start, r#"{"table": "public.other"}"#, 404, "not streamed"),
        (start, r#"{"table": "no such"}"#, 400, "not a table name"),
        (
            start,
            r#"{"table": "items", "where": "nope > 1"}"#,
            400,
            "column `nope`, which public.items does not have (its columns: id, ",
        ),
        (
            start,
            r#"{"table": "items", "where": "n >"}"#,
            400,
            "ends too early",
        ),
        (
            start,
            r#"{"table": "items", "where": "true); DROP TABLE items; --"}"#,
            400,
            "`;` is not allowed",
        ),
        // A condition is not a way to read other tables or call functions.
        (
            start,
            r#"{"table": "items", "where": "(select string_agg(name, ',') from items)::int > 0"}"#,
            400,
            "`:` is not allowed",
        ),
        (
            start,
            r#"{"table": "items", "where": "id in (select id from other)"}"#,
            400,
            "unexpected `select`",
        ),
        (
            start,
            r#"{"table": "items", "where": "pg_sleep(5) is null"}"#,
            400,
            "the only function a condition may call is now()",
        ),
        (start, r#"{"tables": "items"}"#, 400, "must be JSON"),
        (start, "not json", 400, "must be JSON"),
        ("/api/backfills/x/pause", "", 400, "not a backfill id"),
        ("/api/backfills/99/cancel", "", 404, "no backfill 99"),
    ] {
        let body = (!body.is_empty()).then_some(body);
        let (code, answer) = post(&api, path, body).await;
        assert_eq!(code, status, "{path} {body:?}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{path} {body:?}: {message}");
    }
    // A form a web page could post from a browser is refused.
    let form = reqwest::Client::new()
        .post(format!("{api}{start}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("table=items")
        .send()
        .await
        .unwrap();
    assert_eq!(form.status().as_u16(), 415);
    assert_eq!(get(&api, "/api/backfills").await, serde_json::json!([]));
    let (code, _) = post(&api, "/api/nowhere", None).await;
    assert_eq!(code, 404);

    // A backfill, paused at once: a second one of the table is refused.
    let (code, started) = post(&api, start, Some(r#"{"table": "items"}"#)).await;
    assert_eq!(code, 201, "{started}");
    let id = started["id"].as_u64().unwrap();
    let (code, paused) = post(&api, &format!("/api/backfills/{id}/pause"), None).await;
    assert_eq!(code, 200, "{paused}");
    let (code, refused) = post(&api, start, Some(r#"{"table": "items", "where": "n = 1"}"#)).await;
    assert_eq!(code, 409, "{refused}");
    assert!(refused["error"]["message"]
        .as_str()
        .unwrap()
        .contains("already reading"));
    let (code, _) = post(&api, &format!("/api/backfills/{id}/pause"), None).await;
    assert_eq!(code, 400, "pausing a paused backfill");
    let paused = wait_state(&api, id, "paused", &mut sluice).await;
    let done_when_paused = paused["rows_done"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let still = get(&api, &format!("/api/backfills/{id}")).await;
    assert_eq!(
        still["rows_done"].as_u64().unwrap(),
        done_when_paused,
        "a paused backfill moved"
    );
    assert!(done_when_paused < 30_000);

    // Resumed, it goes on from where it was; then it can be cancelled.
    let (code, out, err) = cli(&[
        "backfill",
        "resume",
        "--config",
        config_arg,
        &id.to_string(),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("[running]"), "{out}");
    let (code, out, err) = cli(&[
        "backfill",
        "cancel",
        "--config",
        config_arg,
        &id.to_string(),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("[cancelled]"), "{out}");
    let cancelled = get(&api, &format!("/api/backfills/{id}")).await;
    assert_eq!(cancelled["state"], "cancelled");
    let (code, _) = post(&api, &format!("/api/backfills/{id}/resume"), None).await;
    assert_eq!(code, 400, "resuming a cancelled backfill");

    // The CLI's errors name the problem and exit 2.
    let (code, _, err) = cli(&[
        "backfill", "start", "--config", config_arg, "--sink", "nope", "--table", "items",
    ])
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no sink named `nope`"), "{err}");
    let (code, _, err) = cli(&["backfill", "list", "--api", "127.0.0.1:1"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot reach the management API"), "{err}");

    // After a cancel the table is free again; this one runs to its end.
    let (code, out, err) = cli(&[
        "backfill",
        "start",
        "--config",
        config_arg,
        "--sink",
        "embedded",
        "--table",
        "items",
        "--where",
        "id <= 1000",
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("[completed]"), "{out}");
    assert!(out.contains("1000 row(s)"), "{out}");
    assert_eq!(sluice.stop().code(), Some(0));
}

/// Rows the table's scans returned so far (sequential and by index).
async fn rows_scanned(db: &TestDb) -> i64 {
    db.client
        .query_one(
            "SELECT (COALESCE(seq_tup_read, 0) + COALESCE(idx_tup_fetch, 0))::bigint FROM pg_stat_user_tables WHERE relname = 'items'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_backfill_resumes_from_its_cursor() {
    let db = TestDb::new("resume").await;
    db.exec(ITEMS).await;
    db.exec(&insert_items(1, 40_000)).await;
    db.exec("ANALYZE items").await;
    let tables = format!(
        "[[tables]]\nname = \"public.items\"\n\n{API}\n[backfill]\nmin_chunk_rows = 400\nmax_chunk_rows = 400\nchunks_in_flight = 2\n"
    );
    let config = db.config(&tables, "");
    db.client
        .execute("SELECT pg_stat_reset()", &[])
        .await
        .unwrap();
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    let api = api_address(&db, &mut sluice).await;
    // Killed part way.
    let mut done_before = 0;
    for _ in 0..600 {
        let b = get(&api, "/api/backfills/1").await;
        done_before = b["rows_done"].as_u64().unwrap_or_default();
        if done_before >= 8000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sluice.kill();
    assert!((8000..40_000).contains(&done_before), "{done_before}");
    let stored: Value =
        serde_json::from_slice(&std::fs::read(db.data_dir().join("backfills/1.json")).unwrap())
            .unwrap();
    let done_at_kill = stored["tables"][0]["rows_done"].as_u64().unwrap();
    assert_eq!(stored["state"], "running");
    assert!(done_at_kill >= done_before);
    assert_eq!(
        stored["tables"][0]["cursor"][0].as_str().unwrap(),
        done_at_kill.to_string(),
        "the cursor is the last key committed"
    );

    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    let api = api_address(&db, &mut sluice).await;
    let b = wait_state(&api, 1, "completed", &mut sluice).await;
    assert_eq!(b["rows_done"], 40_000, "{b:#}");
    assert_eq!(sluice.stop().code(), Some(0));
    // Rows read twice: at most the chunks in flight at the kill (two, of
    // 400 rows), and a few the planner reads to find the key's current end.
    // Counted before this test reads the table itself.
    let mut scanned = 0;
    for _ in 0..50 {
        scanned = rows_scanned(&db).await;
        if scanned >= 40_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        (40_000..=40_000 + 2 * 400 + 50).contains(&scanned),
        "{scanned} rows scanned for 40000"
    );
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    assert_index_equals_table(&db, "items", "items", "id").await;
    assert_eq!(sluice.stop().code(), Some(0));
}

mod fakes;

/// Random single-row changes, and now and then a transaction of several,
/// until `stop` is set. Returns how many statements ran.
async fn churn(
    db_name: String,
    seed: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> u64 {
    use rand::{Rng, SeedableRng};
    let client = common::cluster().connect(&db_name).await.unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut next_id = 200_000_i64;
    let mut statements = 0;
    let mut random_statement = |rng: &mut rand::rngs::StdRng| -> String {
        let id = rng.random_range(1..=100_000_i64);
        match rng.random_range(0..100) {
            0..=29 => format!("UPDATE items SET n = n + 1, name = name || '+' WHERE id = {id}"),
            30..=39 => {
                format!("UPDATE items SET body = repeat(md5(random()::text), 100) WHERE id = {id}")
            }
            // Leaves a TOASTed body unchanged in the WAL.
            40..=54 => format!("UPDATE items SET n = -n WHERE id = {id}"),
            55..=69 => format!("DELETE FROM items WHERE id = {id}"),
            70..=89 => {
                next_id += 1;
                format!("INSERT INTO items (id, name, n) VALUES ({next_id}, 'new', 1)")
            }
            _ => format!("UPDATE items SET id = id + 1000000 WHERE id = {id}"),
        }
    };
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let sql = if rng.random_bool(0.1) {
            let body: Vec<String> = (0..5).map(|_| random_statement(&mut rng)).collect();
            format!("BEGIN; {}; COMMIT", body.join("; "))
        } else {
            random_statement(&mut rng)
        };
        // A key change onto a taken key fails: that is fine.
        let _ = client.batch_execute(&sql).await;
        let _ = client.batch_execute("ROLLBACK").await;
        statements += 1;
    }
    statements
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_during_a_backfill_never_leave_a_stale_row_in_any_index() {
    use fakes::elasticsearch::{FakeElasticsearch, FakeOptions as EsOptions};
    use fakes::meilisearch::{FakeMeilisearch, FakeOptions as MsOptions};
    let seeds: Vec<u64> = match std::env::var("SLUICE_SEED") {
        Ok(seed) => vec![seed.parse().expect("SLUICE_SEED is a number")],
        Err(_) => {
            let base = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64;
            vec![base | 1, base.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1]
        }
    };
    for seed in seeds {
        println!("seed {seed} (replay with SLUICE_SEED={seed})");
        let db = TestDb::new("bfprop").await;
        db.exec(
            "CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL, n integer NOT NULL, body text);
             ALTER TABLE items ALTER COLUMN body SET STORAGE EXTERNAL;",
        )
        .await;
        db.exec(
            "INSERT INTO items SELECT i, 'item ' || i, i % 1000,
                    CASE WHEN i % 20 = 0 THEN repeat(md5(i::text), 100) END
             FROM generate_series(1, 100000) i",
        )
        .await;
        let es = FakeElasticsearch::start(EsOptions {
            record_requests: false,
            ..EsOptions::default()
        })
        .await;
        let ms = FakeMeilisearch::start(MsOptions {
            processing_delay: Duration::from_millis(1),
            ..MsOptions::default()
        })
        .await;
        let sinks = format!(
            "[[sinks]]\nname = \"embedded\"\ntype = \"embedded\"\ncommit_interval_ms = 100\n\n\
             [[sinks]]\nname = \"es\"\ntype = \"elasticsearch\"\nurl = \"{}\"\nflush_interval_ms = 100\n\n\
             [[sinks]]\nname = \"meili\"\ntype = \"meilisearch\"\nurl = \"{}\"\nflush_interval_ms = 100\ntask_poll_max_ms = 20\n",
            es.url(),
            ms.url()
        );
        let tables = format!(
            "[[tables]]\nname = \"public.items\"\n\n{API}\n[backfill]\nmin_chunk_rows = 500\nmax_chunk_rows = 5000\n"
        );
        let config = db.config_with_sinks(&tables, "shards = 3", &sinks);
        let mut sluice = Sluice::run_config(&config);
        db.wait_streaming(&mut sluice).await;
        let api = api_address(&db, &mut sluice).await;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = tokio::spawn(churn(db.name.clone(), seed, stop.clone()));
        for id in 1..=3 {
            let b = wait_state(&api, id, "completed", &mut sluice).await;
            assert!(b["rows_done"].as_u64().unwrap() > 90_000, "{b:#}");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let statements = writer.await.unwrap();
        println!("{statements} statements ran during the backfills");
        assert!(statements > 100, "too few concurrent changes: {statements}");

        let rows = || async { db.rows("items", "id").await };
        let string_ids = || async {
            db.rows("items", "id")
                .await
                .into_iter()
                .map(|(id, mut row)| {
                    row["id"] = Value::String(id.clone());
                    (id, row)
                })
                .collect()
        };
        let mut failures = Vec::new();
        for (name, equal) in [
            (
                "embedded",
                wait_until(Duration::from_secs(120), || async {
                    documents(&db.data_dir(), "items", "id") == rows().await
                })
                .await,
            ),
            (
                "es",
                wait_until(Duration::from_secs(60), || async {
                    es.documents("items") == rows().await
                })
                .await,
            ),
            (
                "meili",
                wait_until(Duration::from_secs(60), || async {
                    ms.documents("items") == string_ids().await
                })
                .await,
            ),
        ] {
            if !equal {
                let docs = match name {
                    "embedded" => documents(&db.data_dir(), "items", "id"),
                    "es" => es.documents("items"),
                    _ => ms.documents("items"),
                };
                let expected = if name == "meili" {
                    string_ids().await
                } else {
                    rows().await
                };
                failures.push(format!(
                    "seed {seed}: {name} != table: {}",
                    common::difference(&docs, &expected)
                ));
            }
        }
        if !failures.is_empty() {
            let log = sluice.log_text();
            let notable: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("bad record"))
                .take(40)
                .collect();
            panic!("{}\n{}", failures.join("\n"), notable.join("\n"));
        }
        assert_eq!(sluice.stop().code(), Some(0));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_token_every_request_needs_it_and_other_machines_need_a_token() {
    let db = TestDb::new("api_token").await;
    db.exec(ITEMS).await;
    db.exec(&insert_items(1, 100)).await;
    let tables = "[[tables]]\nname = \"public.items\"\n\n";

    // An address other machines can reach is refused without a token.
    let open = db.config(&format!("{tables}[api]\nlisten = \"0.0.0.0:0\"\n"), "");
    let (code, _, err) = cli(&["check", "--config", open.to_str().unwrap()]).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("api.listen") && err.contains("api.token_env"),
        "{err}"
    );

    let config = db.config(
        &format!(
            "{tables}[api]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"SLUICE_TEST_API_TOKEN\"\n"
        ),
        "",
    );
    let mut sluice =
        Sluice::run_config_with_env(&config, &[("SLUICE_TEST_API_TOKEN", "s3cret-token")]);
    db.wait_streaming(&mut sluice).await;
    let api = api_address(&db, &mut sluice).await;
    let client = reqwest::Client::new();
    for token in [None, Some("wrong"), Some("s3cret-token-but-longer")] {
        let mut request = client.get(format!("{api}/api/pipelines"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status().as_u16(), 401, "{token:?}");
        assert_eq!(answer.headers()["www-authenticate"], "Bearer");
    }
    let refused = client
        .post(format!("{api}/api/sinks/embedded/backfills"))
        .json(&serde_json::json!({"table": "items"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    let answer = client
        .get(format!("{api}/api/pipelines"))
        .bearer_auth("s3cret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);

    // The CLI sends the token from the variable the configuration names.
    let config_arg = config.to_str().unwrap();
    let with_token = common::sluice_command()
        .args(["status", "--config", config_arg])
        .env("SLUICE_TEST_API_TOKEN", "s3cret-token")
        .output()
        .unwrap();
    assert!(
        with_token.status.success(),
        "{}",
        String::from_utf8_lossy(&with_token.stderr)
    );
    let without = common::sluice_command()
        .args(["status", "--config", config_arg])
        .env_remove("SLUICE_TEST_API_TOKEN")
        .output()
        .unwrap();
    assert_eq!(without.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&without.stderr).contains("Authorization: Bearer"));
    assert_eq!(sluice.stop().code(), Some(0));
}

/// Meilisearch charges per batch of tasks: a backfill must keep it busy
/// with large tasks, enqueued while it works, so its auto-batcher merges
/// them; and live changes during it still arrive at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_into_meilisearch_goes_in_few_large_batches() {
    use fakes::meilisearch::{FakeMeilisearch, FakeOptions};
    let db = TestDb::new("bfmeili").await;
    db.exec(ITEMS).await;
    db.exec(&insert_items(1, 60_000)).await;
    // A batch costs 300 ms however many documents it holds.
    let ms = FakeMeilisearch::start(FakeOptions {
        processing_delay: Duration::from_millis(300),
        ..FakeOptions::default()
    })
    .await;
    let sinks = format!(
        "[[sinks]]\nname = \"meili\"\ntype = \"meilisearch\"\nurl = \"{}\"\n",
        ms.url()
    );
    let tables = format!("[[tables]]\nname = \"public.items\"\n\n{API}");
    let config = db.config_with_sinks(&tables, "", &sinks);
    let started = std::time::Instant::now();
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    let api = api_address(&db, &mut sluice).await;
    let backfill = wait_state(&api, 1, "completed", &mut sluice).await;
    let seconds = started.elapsed().as_secs_f64();
    let tasks = ms.tasks();
    let additions = tasks
        .iter()
        .filter(|t| t.kind == "documentAdditionOrUpdate")
        .count();
    println!(
        "60,000 rows in {seconds:.1} s: {additions} addition tasks in {} batches",
        ms.batches()
    );
    assert_eq!(backfill["rows_done"], 60_000, "{backfill:#}");
    // One batch per 1,000-document task would take 60 × 300 ms = 18 s.
    assert!(
        ms.batches() <= 12,
        "{} batches for 60,000 rows: the backfill did not let Meilisearch merge its tasks",
        ms.batches()
    );

    // A live change goes at once, not behind a timer or the backfill.
    db.exec("UPDATE items SET name = 'live' WHERE id = 7").await;
    let arrived = wait_until(Duration::from_secs(10), || async {
        ms.documents("items")
            .get("7")
            .is_some_and(|doc| doc["name"] == "live")
    })
    .await;
    assert!(arrived, "the live change did not arrive");
    let rows: std::collections::BTreeMap<String, Value> = db
        .rows("items", "id")
        .await
        .into_iter()
        .map(|(id, mut row)| {
            row["id"] = Value::String(id.clone());
            (id, row)
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(30), || async {
            ms.documents("items") == rows
        })
        .await,
        "the index differs from the table"
    );
    assert_eq!(sluice.stop().code(), Some(0));
}
