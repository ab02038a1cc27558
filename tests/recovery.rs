//! Crashes, restarts and idleness: nothing is lost, nothing goes backwards.

mod common;

use std::time::Duration;

use common::{assert_index_equals_table, wait_until, Sluice, TestDb};

const ACCOUNTS: &str = "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL, version int NOT NULL, note text)";

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_stream_then_restart_converges() {
    let db = TestDb::new("crash").await;
    db.exec(ACCOUNTS).await;
    let config = db.config("[[tables]]\nname = \"accounts\"", "shards = 4");
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;

    // A writer keeps inserting, updating and deleting while sluice is killed.
    let writer_url = db.url.clone();
    let writer = tokio::spawn(async move {
        let (client, conn) = tokio_postgres::connect(&writer_url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        for round in 0..60 {
            let base = round * 200;
            client
                .batch_execute(&format!(
                    "INSERT INTO accounts SELECT i, i * 10, 1, 'n' || i FROM generate_series({base}, {base} + 199) i;
                     UPDATE accounts SET balance = balance + 1, version = version + 1 WHERE id % 3 = {r};
                     DELETE FROM accounts WHERE id % 11 = {r} AND id < {base};",
                    r = round % 3
                ))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });

    tokio::time::sleep(Duration::from_millis(700)).await;
    sluice.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sluice = Sluice::run_config(&config);
    tokio::time::sleep(Duration::from_millis(500)).await;
    sluice.kill();
    let mut sluice = Sluice::run_config(&config);
    writer.await.unwrap();
    sluice.assert_running();
    assert_index_equals_table(&db, "accounts", "accounts", "id").await;
    assert!(sluice.stop().success());

    // The slot confirmed everything: a restart has nothing to redo and stays equal.
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    db.exec("UPDATE accounts SET version = version + 1 WHERE id < 50")
        .await;
    assert_index_equals_table(&db, "accounts", "accounts", "id").await;
    assert!(sluice.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_slot_confirmed_position_advances() {
    let db = TestDb::new("idle").await;
    db.exec(ACCOUNTS).await;
    db.exec("CREATE TABLE unrelated (id int)").await;
    let config = db.config("[[tables]]\nname = \"accounts\"", "");
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    let before = db.confirmed_flush().await;
    // WAL that is not ours: the slot must still move past it.
    db.exec("INSERT INTO unrelated SELECT generate_series(1, 1000)")
        .await;
    let current: i64 = db
        .client
        .query_one("SELECT (pg_current_wal_lsn() - '0/0')::bigint", &[])
        .await
        .unwrap()
        .get(0);
    let advanced = wait_until(Duration::from_secs(20), || async {
        db.confirmed_flush().await >= current as u64
    })
    .await;
    assert!(
        advanced,
        "confirmed_flush_lsn stayed at {before} (current WAL {current}); log:\n{}",
        sluice.log_text()
    );
    assert!(sluice.stop().success());
}
