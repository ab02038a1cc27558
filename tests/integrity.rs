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
