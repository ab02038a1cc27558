//! Reads of the table that a streamed change triggers see that change.
//!
//! A commit reaches the WAL, and the replication stream, before its
//! transaction becomes visible to other sessions. This binary holds that
//! window open at will: with `synchronous_standby_names` naming a standby
//! that never connects, a session with `synchronous_commit = on` commits
//! locally, its commit is streamed, and it stays invisible until the wait
//! is cancelled. (A binary of its own: the setting is the whole cluster's.)

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_key_change_streamed_before_it_is_visible_keeps_its_unchanged_toast_column() {
    let db = TestDb::new("visibility").await;
    // Every session but the writer below commits without waiting.
    db.exec("SET synchronous_commit = local").await;
    db.exec(&format!(
        "ALTER DATABASE {} SET synchronous_commit = local",
        db.name
    ))
    .await;
    db.exec("ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
        .await;
    db.exec("SELECT pg_reload_conf()").await;
    db.exec(
        "CREATE TABLE items (id int PRIMARY KEY, body text, n int);
         ALTER TABLE items ALTER body SET STORAGE EXTERNAL;
         INSERT INTO items SELECT i, repeat(md5(i::text), 200), i FROM generate_series(1, 3) i;",
    )
    .await;
    let config = db.config("[[tables]]\nname = \"public.items\"\n", "");
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    assert_index_equals_table(&db, "items", "items", "id").await;

    // The key change commits locally and waits for the standby: streamed,
    // not yet visible. `body` is stored out of line and unchanged, so the
    // stream does not carry it.
    let writer = cluster().connect(&db.name).await.unwrap();
    let pid: i32 = writer
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    writer
        .batch_execute("SET synchronous_commit = on")
        .await
        .unwrap();
    let update = tokio::spawn(async move {
        writer
            .execute("UPDATE items SET id = 101 WHERE id = 1", &[])
            .await
    });
    let streamed = wait_until(Duration::from_secs(10), || async {
        let flushed = db
            .client
            .query_one(
                "SELECT count(*) FROM pg_stat_replication WHERE sent_lsn >= pg_current_wal_flush_lsn()",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        flushed > 0
    })
    .await;
    assert!(streamed, "the key change was not streamed");
    // Give sluice time to act on it while it is invisible.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !update.is_finished(),
        "the commit did not wait for the standby"
    );
    let doc = documents(&db.data_dir(), "items", "id").remove("101");
    assert!(
        doc.as_ref()
            .is_none_or(|d| d.get("body").is_some_and(|b| b.is_string())),
        "a document was written without its unchanged column: {doc:?}"
    );

    // The wait ends; the transaction becomes visible.
    db.exec(&format!("SELECT pg_cancel_backend({pid})")).await;
    assert_eq!(update.await.unwrap().unwrap(), 1);
    assert_index_equals_table(&db, "items", "items", "id").await;
    db.exec("ALTER SYSTEM RESET synchronous_standby_names")
        .await;
    db.exec("SELECT pg_reload_conf()").await;
    assert!(sluice.stop().success());
}
