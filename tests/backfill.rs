//! Backfills: existing rows reach the index, consistently with live changes,
//! resumably, on request through the management API and the CLI.

mod common;

use std::time::Duration;

use common::{assert_index_equals_table, documents, wait_until, Sluice, TestDb};
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
