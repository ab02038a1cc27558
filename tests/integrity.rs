//! Ways an index could silently diverge from its table, stall the source or
//! lose data, each closed: the data directory, readers beside the writer,
//! the slot, sinks that refuse.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, name text, n int)";

#[tokio::test(flavor = "multi_thread")]
async fn a_second_sluice_on_one_data_directory_exits_at_once_with_code_2() {
    let db = TestDb::new("lock").await;
    db.exec(ITEMS).await;
    let config = db.config("[[tables]]\nname = \"items\"", "");
    let mut first = Sluice::run_config(&config);
    db.wait_streaming(&mut first).await;

    let started = Instant::now();
    let (code, _, stderr) = run_to_end(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("is in use by another sluice process")
            && stderr.contains(&format!("pid {}", first.child.id())),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // The first one is undisturbed.
    db.exec("INSERT INTO items VALUES (1, 'a', 1)").await;
    assert_index_equals_table(&db, "items", "items", "id").await;
    assert!(first.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn searches_beside_a_writer_that_commits_every_100_ms_never_fail() {
    let db = TestDb::new("readers").await;
    db.exec(ITEMS).await;
    db.exec("INSERT INTO items VALUES (0, 'first', 0)").await;
    let config = db.config("[[tables]]\nname = \"items\"", "");
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    assert_index_equals_table(&db, "items", "items", "id").await;

    // A steady stream of rows: sluice commits (and merges) every 100 ms
    // meanwhile.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let url = db.url.clone();
        tokio::spawn(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut next = 1;
            while !stop.load(Ordering::Relaxed) {
                client
                    .batch_execute(&format!(
                        "INSERT INTO items SELECT i, 'row ' || i, i FROM generate_series({next}, {}) i",
                        next + 99
                    ))
                    .await
                    .unwrap();
                next += 100;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let data_dir = db.data_dir();
    let started = Instant::now();
    let failures = tokio::task::spawn_blocking(move || {
        let mut failures = Vec::new();
        for _ in 0..2000 {
            if let Err(e) = sluice::sink::embedded::search::search(&data_dir, "items", "*", 1) {
                failures.push(e.to_string());
            }
        }
        failures
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    eprintln!("2000 searches took {:?}", started.elapsed());
    assert!(
        failures.is_empty(),
        "{} of 2000 searches failed, the first: {}",
        failures.len(),
        failures[0]
    );
    assert_index_equals_table(&db, "items", "items", "id").await;
    assert!(sluice.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn another_deployments_watermarks_leave_our_windows_alone() {
    let db = TestDb::new("foreign_marks").await;
    db.exec(ITEMS).await;
    db.exec("INSERT INTO items SELECT i, 'v0', 0 FROM generate_series(1, 40000) i")
        .await;
    let stop = Arc::new(AtomicBool::new(false));
    // Another deployment on this database: its backfills are numbered from
    // 1 too, and it ends, opens and closes windows all the time.
    let foreign = {
        let stop = stop.clone();
        let url = db.url.clone();
        tokio::spawn(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let table: u32 = client
                .query_one("SELECT 'items'::regclass::oid", &[])
                .await
                .unwrap()
                .get(0);
            let mut chunk = 0;
            while !stop.load(Ordering::Relaxed) {
                for (prefix, mark) in [
                    ("sluice.backfill", "start"),
                    ("sluice.backfill:other:00000000000000ff", "start"),
                    ("sluice.backfill", "high"),
                ] {
                    let content = format!(
                        r#"{{"backfill":1,"chunk":{chunk},"mark":"{mark}","table":{table},"key":["id"]}}"#
                    );
                    client
                        .execute(
                            "SELECT pg_logical_emit_message(true, $1, $2)",
                            &[&prefix, &content],
                        )
                        .await
                        .unwrap();
                }
                chunk = (chunk + 1) % 8;
            }
        })
    };
    // Rows change while the initial backfill reads them.
    let writer = {
        let stop = stop.clone();
        let url = db.url.clone();
        tokio::spawn(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut round = 1;
            while !stop.load(Ordering::Relaxed) {
                client
                    .batch_execute(&format!(
                        "UPDATE items SET n = {round}, name = 'v{round}' WHERE id % 997 = {}",
                        round % 997
                    ))
                    .await
                    .unwrap();
                round += 1;
            }
        })
    };
    let config = db.config(
        "[[tables]]\nname = \"items\"\n\n[backfill]\nmin_chunk_rows = 500\nmax_chunk_rows = 500\nchunk_select_ms = 1000",
        "",
    );
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    let done = wait_until(Duration::from_secs(90), || async {
        documents(&db.data_dir(), "items", "id").len() == 40000
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    foreign.await.unwrap();
    writer.await.unwrap();
    assert!(
        done,
        "the backfill did not finish; log:\n{}",
        sluice.log_text()
    );
    assert_index_equals_table(&db, "items", "items", "id").await;
    assert!(sluice.stop().success());
}

/// Runs sluice on `config` until it streams, writes `sql`, waits until the
/// index of `table` equals it, and stops sluice.
async fn stream_until_equal(db: &TestDb, config: &std::path::Path, table: &str, sql: &str) {
    let mut sluice = Sluice::run_config(config);
    db.wait_streaming(&mut sluice).await;
    if !sql.is_empty() {
        db.exec(sql).await;
    }
    assert_index_equals_table(db, table, table, "id").await;
    assert!(sluice.stop().success());
}

/// Creates `items` with `rows` rows, streams them into the embedded index
/// until it equals the table, and stops; returns the config.
async fn items_indexed(db: &TestDb, rows: u32) -> std::path::PathBuf {
    db.exec(ITEMS).await;
    db.exec(&format!(
        "INSERT INTO items SELECT i, 'v0', 0 FROM generate_series(1, {rows}) i"
    ))
    .await;
    let config = db.config("[[tables]]\nname = \"items\"", "");
    stream_until_equal(db, &config, "items", "").await;
    config
}

/// The config file with `line` added to its `[source]` section.
fn with_source_line(config: &std::path::Path, line: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    let text = text.replacen("[source]\n", &format!("[source]\n{line}\n"), 1);
    std::fs::write(config, text).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_slot_is_refused_with_exit_3_and_a_resync_makes_the_index_equal_again() {
    let db = TestDb::new("slot_lost").await;
    let config = items_indexed(&db, 300).await;

    // While sluice is stopped, rows change and the slot goes away: the
    // changes in between are in no slot.
    db.exec(
        "UPDATE items SET name = 'v1' WHERE id <= 100;
         DELETE FROM items WHERE id > 250;
         INSERT INTO items VALUES (1000, 'new', 1);",
    )
    .await;
    db.exec(&format!("SELECT pg_drop_replication_slot('{}')", db.name))
        .await;
    let (code, _, stderr) = run_to_end(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("no longer exists") && stderr.contains("on_slot_lost"),
        "{stderr}"
    );
    assert!(!db.slot_exists().await, "a slot was created silently");

    with_source_line(&config, "on_slot_lost = \"resync\"");
    stream_until_equal(&db, &config, "items", "UPDATE items SET n = 7 WHERE id = 1").await;
    // The new slot is recorded: the next start streams from it.
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    assert!(sluice.stop().success());
    assert!(!sluice_log_mentions_resync_twice(&config));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_created_anew_under_the_same_name_is_refused_with_exit_3() {
    let db = TestDb::new("slot_recreated").await;
    db.exec(ITEMS).await;
    let config = db.config("[[tables]]\nname = \"items\"", "");
    stream_until_equal(
        &db,
        &config,
        "items",
        "INSERT INTO items VALUES (1, 'a', 1)",
    )
    .await;

    // While sluice is stopped, a row changes and someone replaces the slot
    // with a new one of the same name: it lacks the change.
    db.exec("UPDATE items SET name = 'b' WHERE id = 1").await;
    db.exec(&format!("SELECT pg_drop_replication_slot('{}')", db.name))
        .await;
    db.exec(&format!(
        "SELECT pg_create_logical_replication_slot('{}', 'pgoutput')",
        db.name
    ))
    .await;
    let (code, _, stderr) = run_to_end(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("is not the one this data directory streamed from")
            && stderr.contains("on_slot_lost"),
        "{stderr}"
    );
    with_source_line(&config, "on_slot_lost = \"resync\"");
    stream_until_equal(&db, &config, "items", "").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_postgres_invalidated_is_refused_with_exit_3_and_resynced_on_request() {
    // max_slot_wal_keep_size would invalidate the other tests' slots too.
    let cluster = tokio::task::spawn_blocking(|| {
        sluice::local_pg::LocalPostgres::start(sluice::local_pg::LocalPostgresOptions {
            extra_settings: vec![("max_slot_wal_keep_size".into(), "16MB".into())],
            ..Default::default()
        })
    })
    .await
    .unwrap()
    .expect("a cluster of the test's own");
    let db = TestDb::in_cluster(&cluster, "slot_invalidated").await;
    let config = items_indexed(&db, 100).await;

    db.exec("UPDATE items SET name = 'v1' WHERE id <= 50").await;
    db.exec("CREATE TABLE ballast (x text)").await;
    let lost = wait_until(Duration::from_secs(60), || async {
        db.exec("INSERT INTO ballast SELECT md5(i::text) FROM generate_series(1, 200000) i")
            .await;
        db.exec("TRUNCATE ballast").await;
        db.exec("SELECT pg_switch_wal()").await;
        db.exec("CHECKPOINT").await;
        db.client
            .query_one(
                "SELECT wal_status = 'lost' FROM pg_replication_slots WHERE slot_name = $1",
                &[&db.name],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
    })
    .await;
    assert!(lost, "Postgres did not invalidate the slot");
    let (code, _, stderr) = run_to_end(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("invalidated by Postgres") && stderr.contains("on_slot_lost"),
        "{stderr}"
    );
    with_source_line(&config, "on_slot_lost = \"resync\"");
    stream_until_equal(&db, &config, "items", "").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_holding_more_wal_than_the_threshold_is_warned_about() {
    let db = TestDb::new("slot_retains").await;
    db.exec(ITEMS).await;
    let config = db.config("[[tables]]\nname = \"items\"", "");
    with_source_line(&config, "retained_wal_warn_bytes = 1");
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    let warned = wait_until(Duration::from_secs(20), || async {
        sluice
            .log_text()
            .contains("holds more WAL on the primary than source.retained_wal_warn_bytes")
    })
    .await;
    assert!(warned, "no warning:\n{}", sluice.log_text());
    assert!(sluice.stop().success());
}

/// Polls until a walsender other than `old` streams from the slot again;
/// returns how long that took and its pid.
async fn time_to_reattach(
    cluster: &sluice::local_pg::LocalPostgres,
    db: &str,
    old: Option<i32>,
) -> (Duration, i32) {
    let started = Instant::now();
    let client = cluster.connect(db).await.expect("Postgres is back");
    loop {
        let pid: Option<i32> = client
            .query_one(
                "SELECT max(active_pid) FROM pg_replication_slots WHERE slot_name = $1",
                &[&db],
            )
            .await
            .unwrap()
            .get(0);
        match pid {
            Some(pid) if Some(pid) != old => return (started.elapsed(), pid),
            _ if started.elapsed() > Duration::from_secs(60) => return (started.elapsed(), 0),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sluice_streams_again_within_2_s_of_postgres_coming_back_however_often_it_went() {
    let cluster = Arc::new(
        tokio::task::spawn_blocking(|| sluice::local_pg::LocalPostgres::start(Default::default()))
            .await
            .unwrap()
            .expect("a cluster of the test's own"),
    );
    let db = TestDb::in_cluster(&cluster, "reconnect").await;
    db.exec(ITEMS).await;
    let config = db.config("[[tables]]\nname = \"items\"", "");
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    let name = db.name.clone();
    let mut waits = Vec::new();
    for round in 0..3 {
        // Down long enough for several attempts to fail in a row.
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || c.restart(Duration::from_secs(4)))
            .await
            .unwrap()
            .expect("Postgres restarts");
        let (wait, mut pid) = time_to_reattach(&cluster, &name, None).await;
        waits.push(wait);
        // And the walsender cut while streaming, twice in a row.
        let client = cluster.connect(&name).await.unwrap();
        for _ in 0..2 {
            client
                .query("SELECT pg_terminate_backend($1)", &[&pid])
                .await
                .unwrap();
            let (wait, next) = time_to_reattach(&cluster, &name, Some(pid)).await;
            waits.push(wait);
            pid = next;
        }
        client
            .batch_execute(&format!("INSERT INTO items VALUES ({round}, 'r', {round})"))
            .await
            .unwrap();
    }
    eprintln!("reattached after {waits:?}");
    let slowest = waits.iter().max().unwrap();
    assert!(
        *slowest < Duration::from_secs(2),
        "reattaching took {waits:?}:\n{}",
        sluice.log_text()
    );
    let db = TestDb {
        client: cluster.connect(&name).await.unwrap(),
        ..db
    };
    assert_index_equals_table(&db, "items", "items", "id").await;
    assert!(sluice.stop().success());
}

/// Whether the logs beside `config` show more than one resync.
fn sluice_log_mentions_resync_twice(config: &std::path::Path) -> bool {
    let dir = config.parent().unwrap();
    let resyncs: usize = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".log."))
        .map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .matches("resyncing: a new slot")
                .count()
        })
        .sum();
    resyncs > 1
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_added_to_the_configuration_gets_its_initial_backfill() {
    let db = TestDb::new("added_table").await;
    db.exec(ITEMS).await;
    db.exec("CREATE TABLE other (id int PRIMARY KEY, label text)")
        .await;
    db.exec("INSERT INTO items VALUES (1, 'a', 1)").await;
    db.exec("INSERT INTO other SELECT i, 'x' || i FROM generate_series(1, 500) i")
        .await;
    let config = db.config("[[tables]]\nname = \"items\"", "");
    stream_until_equal(&db, &config, "items", "").await;

    let config = db.config(
        "[[tables]]\nname = \"items\"\n\n[[tables]]\nname = \"other\"",
        "",
    );
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    db.exec("UPDATE other SET label = 'y' WHERE id = 3").await;
    assert_index_equals_table(&db, "other", "other", "id").await;
    assert_index_equals_table(&db, "items", "items", "id").await;
    assert!(sluice.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_dropped_and_created_again_while_sluice_is_stopped_is_emptied_and_backfilled() {
    let db = TestDb::new("recreated_stopped").await;
    let config = items_indexed(&db, 300).await;

    // Changes of the old table still in the slot, then a new table of the
    // same name with other rows: none of the old ones may stay.
    db.exec("INSERT INTO items SELECT i, 'old', 0 FROM generate_series(2000, 2010) i")
        .await;
    db.exec(&format!("DROP TABLE items; {ITEMS}")).await;
    db.exec("INSERT INTO items SELECT i, 'new', 1 FROM generate_series(1, 50) i")
        .await;
    stream_until_equal(&db, &config, "items", "UPDATE items SET n = 2 WHERE id = 3").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_dropped_while_streaming_is_shown_and_backfilled_once_created_again() {
    let db = TestDb::new("recreated_live").await;
    db.exec(ITEMS).await;
    db.exec("INSERT INTO items SELECT i, 'old', 0 FROM generate_series(1, 300) i")
        .await;
    let config = db.config(
        "[[tables]]\nname = \"items\"\n\n[api]\nlisten = \"127.0.0.1:0\"\n",
        "",
    );
    let config_arg = config.to_str().unwrap().to_owned();
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    assert_index_equals_table(&db, "items", "items", "id").await;

    db.exec("DROP TABLE items").await;
    let status = || async { cli(&["status", "--config", &config_arg]).await.1 };
    let shown = wait_until(Duration::from_secs(20), || async {
        status().await.contains("dropped tables")
    })
    .await;
    assert!(shown, "status: {}\n{}", status().await, sluice.log_text());
    assert!(
        sluice.log_text().contains("a streamed table was dropped"),
        "{}",
        sluice.log_text()
    );

    // Created again, with other rows and no write after: set up again.
    db.exec(&format!(
        "{ITEMS}; INSERT INTO items SELECT i, 'new', 1 FROM generate_series(1, 40) i"
    ))
    .await;
    assert_index_equals_table(&db, "items", "items", "id").await;
    db.exec("INSERT INTO items VALUES (500, 'live', 5); DELETE FROM items WHERE id = 7")
        .await;
    assert_index_equals_table(&db, "items", "items", "id").await;
    let cleared = wait_until(Duration::from_secs(20), || async {
        !status().await.contains("dropped tables")
    })
    .await;
    assert!(cleared, "{}", status().await);
    assert!(sluice.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partitioned_table_streams_under_its_own_name_with_partitions_attached_later() {
    let db = TestDb::new("partitions").await;
    db.exec(
        "CREATE TABLE events (id int PRIMARY KEY, label text) PARTITION BY RANGE (id);
         CREATE TABLE events_a PARTITION OF events FOR VALUES FROM (0) TO (1000);
         CREATE TABLE events_b PARTITION OF events FOR VALUES FROM (1000) TO (2000);
         INSERT INTO events SELECT i, 'old' FROM generate_series(0, 1999) i;",
    )
    .await;
    let config = db.config("[[tables]]\nname = \"events\"", "");
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    assert_index_equals_table(&db, "events", "events", "id").await;
    db.exec(
        "CREATE TABLE events_c (id int PRIMARY KEY, label text);
         ALTER TABLE events ATTACH PARTITION events_c FOR VALUES FROM (2000) TO (3000);
         INSERT INTO events SELECT i, 'live' FROM generate_series(2000, 2499) i;
         UPDATE events SET label = 'moved' WHERE id = 10;
         UPDATE events SET id = 2600 + id WHERE id BETWEEN 20 AND 29;
         DELETE FROM events WHERE id BETWEEN 1900 AND 1949;",
    )
    .await;
    assert_index_equals_table(&db, "events", "events", "id").await;
    assert!(sluice.stop().success());
    // A second start finds the publication and the index as they should be.
    stream_until_equal(
        &db,
        &config,
        "events",
        "INSERT INTO events VALUES (2999, 'again')",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_dropped_while_streaming_stops_sluice_with_exit_3() {
    let db = TestDb::new("slot_dropped").await;
    db.exec(ITEMS).await;
    let config = db.config("[[tables]]\nname = \"items\"", "");
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    // Cut the walsender and drop the slot before sluice reconnects.
    let dropped = wait_until(Duration::from_secs(20), || async {
        let _ = db
            .client
            .batch_execute(&format!(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                 WHERE slot_name = '{0}' AND active_pid IS NOT NULL;
                 SELECT pg_drop_replication_slot('{0}');",
                db.name
            ))
            .await;
        !db.slot_exists().await
    })
    .await;
    assert!(dropped, "the slot could not be dropped");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = sluice.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "sluice kept running without its slot; log:\n{}",
            sluice.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.code(), Some(3), "{}", sluice.log_text());
    assert!(sluice.log_text().contains("restarting cannot fix this"));
    assert!(!db.slot_exists().await, "a slot was created silently");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_document_over_max_document_bytes_is_parked_and_the_rest_is_indexed() {
    let db = TestDb::new("embedded_too_large").await;
    db.exec(ITEMS).await;
    let sinks = "[[sinks]]\nname = \"embedded\"\ntype = \"embedded\"\ncommit_interval_ms = 100\nmax_document_bytes = 4096\n";
    let config = db.config_with_sinks("[[tables]]\nname = \"items\"", "", sinks);
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    db.exec("INSERT INTO items SELECT i, 'n' || i, i FROM generate_series(1, 100) i")
        .await;
    assert_index_equals_table(&db, "items", "items", "id").await;
    db.exec("UPDATE items SET name = repeat('z', 10000) WHERE id = 50")
        .await;
    let parked = db.wait_parked("embedded", 1).await;
    assert!(parked, "the large document was not parked");
    // A later write of the parked document waits behind it; others flow.
    db.exec("UPDATE items SET name = 'small again' WHERE id = 50")
        .await;
    db.exec("UPDATE items SET n = -1 WHERE id = 51").await;
    let after = db.current_wal_lsn().await;
    let advanced = wait_until(Duration::from_secs(60), || async {
        db.confirmed_flush().await >= after
    })
    .await;
    assert!(advanced, "the slot stayed behind:\n{}", sluice.log_text());
    sluice.assert_running();
    let docs = documents(&db.data_dir(), "items", "id");
    let failed = sluice::sink::failed::list(&db.data_dir(), "embedded").unwrap();
    assert_eq!(docs.len(), 100);
    assert_eq!(
        docs["50"]["name"],
        "n50",
        "the index keeps the last version it took; parked: {failed:?}\n{}",
        sluice.log_text()
    );
    assert_eq!(docs["51"]["n"], -1);
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(failed.iter().all(|m| m.id == "50"));
    assert!(
        failed[0].error.contains("max_document_bytes (4096)"),
        "{}",
        failed[0].error
    );
    assert_eq!(failed[1].error, sluice::sink::failed::WAITING_BEHIND);
    assert!(sluice.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncate_discards_the_writes_parked_before_it_so_a_retry_cannot_bring_them_back() {
    let db = TestDb::new("truncate_parked").await;
    db.exec(ITEMS).await;
    db.exec("CREATE TABLE other (id int PRIMARY KEY, name text)")
        .await;
    let sinks = "[[sinks]]\nname = \"embedded\"\ntype = \"embedded\"\nmax_document_bytes = 4096\n";
    let config = db.config_with_sinks(
        "[[tables]]\nname = \"items\"\n\n[[tables]]\nname = \"other\"",
        "",
        sinks,
    );
    db.exec("INSERT INTO items VALUES (100, 'seed', 0); INSERT INTO other VALUES (100, 'seed')")
        .await;
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    // The initial backfill read its rows: it cannot park the ones below twice.
    assert_index_equals_table(&db, "items", "items", "id").await;
    assert_index_equals_table(&db, "other", "other", "id").await;
    db.exec(
        "INSERT INTO items SELECT i, 'n' || i, i FROM generate_series(1, 20) i;
         INSERT INTO items VALUES (21, repeat('z', 10000), 0);
         INSERT INTO other VALUES (1, repeat('z', 10000));",
    )
    .await;
    assert!(db.wait_parked("embedded", 2).await, "{}", sluice.log_text());
    db.exec("TRUNCATE items").await;
    db.exec("INSERT INTO items VALUES (1, 'after', 1)").await;
    assert_index_equals_table(&db, "items", "items", "id").await;
    let gone = wait_until(Duration::from_secs(20), || async {
        sluice::sink::failed::list(&db.data_dir(), "embedded")
            .unwrap()
            .len()
            == 1
    })
    .await;
    let failed = sluice::sink::failed::list(&db.data_dir(), "embedded").unwrap();
    assert!(gone, "{failed:?}");
    assert_eq!(
        failed[0].table, "public.other",
        "only the other table's write stays"
    );
    assert!(sluice.stop().success());
}

/// The most anonymous memory sluice may hold in the test below: the
/// pipeline's budgets, the embedded index's indexing buffer and its pending
/// deletes (README, Operating it). It peaked at about 107 MB here; holding
/// each delete as tantivy's term query weight (1 kB each) in glibc's arenas
/// took it to 166 MB.
const MEMORY_BOUND_KB: u64 = 140 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn memory_stays_bounded_through_large_transactions_of_updates_and_deletes() {
    let db = TestDb::new("memory").await;
    db.exec(
        "CREATE TABLE wide (id int PRIMARY KEY, body text, n int);
         INSERT INTO wide SELECT i, repeat(md5(i::text), 8), 0 FROM generate_series(1, 40000) i",
    )
    .await;
    let config = db.config("[[tables]]\nname = \"wide\"", "");
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    let pid = sluice.child.id();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                let kb = status
                    .lines()
                    .find_map(|l| l.strip_prefix("RssAnon:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
                    .unwrap_or(0);
                peak.fetch_max(kb, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    for round in 1..=3 {
        db.exec(&format!(
            "UPDATE wide SET n = n + 1, body = body || '{round}';
             DELETE FROM wide WHERE id % 3 = {};
             INSERT INTO wide SELECT i, repeat(md5(i::text), 8), {round}
                 FROM generate_series(1, 40000) i ON CONFLICT DO NOTHING",
            round % 3
        ))
        .await;
        assert_index_equals_table(&db, "wide", "wide", "id").await;
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    sluice.assert_running();
    let peak = peak.load(Ordering::Relaxed);
    assert!(
        peak < MEMORY_BOUND_KB,
        "sluice held {} MB, more than {} MB",
        peak / 1024,
        MEMORY_BOUND_KB / 1024
    );
    eprintln!("peak anonymous memory: {} MB", peak / 1024);
    assert!(sluice.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn sluice_started_while_postgres_does_not_answer_waits_for_it() {
    let db = TestDb::new("late").await;
    db.exec(ITEMS).await;
    // A port nothing listens on yet, where Postgres will answer later.
    let port = {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        free.local_addr().unwrap().port()
    };
    let real = cluster().port();
    let config = db.config("[[tables]]\nname = \"items\"", "");
    let late = db.url.replace(&format!(":{real}/"), &format!(":{port}/"));
    assert_ne!(late, db.url);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&db.url, &late);
    std::fs::write(&config, text).unwrap();
    let mut sluice = Sluice::run_config(&config);
    tokio::time::sleep(Duration::from_secs(3)).await;
    sluice.assert_running();
    let log = sluice.log_text();
    assert!(log.contains("the source database does not answer"), "{log}");

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", real)).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    db.wait_streaming(&mut sluice).await;
    db.exec("INSERT INTO items VALUES (1, 'late', 1)").await;
    let data = db.data_dir();
    let arrived = wait_until(Duration::from_secs(30), || async {
        documents(&data, "items", "id").contains_key("1")
    })
    .await;
    assert!(arrived, "log:\n{}", sluice.log_text());
}

/// A start on a full disk (the data directory cannot be written) is waited
/// out: sluice says why it cannot stream, and streams once there is room.
#[tokio::test]
async fn sluice_started_on_a_full_disk_streams_once_there_is_room() {
    let db = TestDb::new("full_disk").await;
    db.exec(ITEMS).await;
    db.exec("INSERT INTO items VALUES (1, 'before', 1)").await;
    let Some(disk) = disk::SmallDisk::mount(&db.data_dir(), 8 << 20) else {
        println!("left out: mounting a tmpfs needs root");
        return;
    };
    let config = db.config("[[tables]]\nname = \"items\"", "");
    disk.fill();
    let mut sluice = Sluice::run_config(&config);
    let refused = wait_until(Duration::from_secs(20), || async {
        sluice.log_text().contains("cannot start streaming")
    })
    .await;
    let log = sluice.log_text();
    assert!(refused, "{log}");
    assert!(log.contains("No space left on device"), "{log}");
    sluice.assert_running();

    disk.free();
    db.wait_streaming(&mut sluice).await;
    db.exec("INSERT INTO items VALUES (2, 'after', 2)").await;
    let data = db.data_dir();
    let arrived = wait_until(Duration::from_secs(30), || async {
        let docs = documents(&data, "items", "id");
        docs.contains_key("1") && docs.contains_key("2")
    })
    .await;
    assert!(arrived, "log:\n{}", sluice.log_text());
    assert!(sluice.stop().success());
    drop(disk);
}
