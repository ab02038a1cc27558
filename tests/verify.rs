//! `sluice verify`: an index equal to its table is reported equal, even
//! while the table changes; differences made behind sluice's back are
//! found, with their ids, and `--repair` mends them through the pipeline.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{cli, wait_until, Sluice, TestDb};
use serde_json::Value;

const ITEMS: &str = "
CREATE TABLE items (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    price numeric(10,2) NOT NULL,
    seen timestamptz NOT NULL DEFAULT '2024-05-01 10:00:00+02',
    tags jsonb
)";

const TABLES: &str = "[[tables]]\nname = \"public.items\"\n\n[api]\nlisten = \"127.0.0.1:0\"\n";

fn insert(from: i64, to: i64) -> String {
    format!(
        "INSERT INTO items (id, name, price, tags)
         SELECT i, 'item ' || i, i * 1.5, jsonb_build_object('n', i, 'odd', i % 2 = 1)
         FROM generate_series({from}, {to}) AS i"
    )
}

/// Runs `sluice verify` with `args` against the pipeline of `config`.
async fn verify(config: &Path, args: &[&str]) -> (i32, String, String) {
    let config = config.to_str().unwrap();
    let mut all = vec!["verify", "--config", config];
    all.extend_from_slice(args);
    cli(&all).await
}

/// The JSON report of a verify.
async fn report(config: &Path, args: &[&str]) -> (i32, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, out, err) = verify(config, &all).await;
    let value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    (code, value)
}

async fn caught_up(db: &TestDb, sluice: &mut Sluice, rows: usize) {
    db.wait_streaming(sluice).await;
    let data = db.data_dir();
    let ok = wait_until(Duration::from_secs(60), || async {
        common::documents(&data, "items", "id").len() == rows
    })
    .await;
    assert!(ok, "the index did not fill; log:\n{}", sluice.log_text());
}

/// Changes the embedded index `items` the way only a fault could: with
/// sluice stopped, one document deleted, one made up, one changed.
fn tamper(data_dir: &Path) {
    use tantivy::schema::Value as _;
    let index = tantivy::Index::open_in_dir(data_dir.join("indexes").join("items")).unwrap();
    let schema = index.schema();
    let id = schema.get_field("_id").unwrap();
    let source = schema.get_field("_source").unwrap();
    let payload = index.load_metas().unwrap().payload;
    let searcher = index.reader().unwrap().searcher();
    let seven = searcher
        .search(
            &tantivy::query::TermQuery::new(
                tantivy::Term::from_field_text(id, "7"),
                tantivy::schema::IndexRecordOption::Basic,
            ),
            &tantivy::collector::TopDocs::with_limit(1),
        )
        .unwrap();
    let stored: tantivy::TantivyDocument = searcher.doc(seven[0].1).unwrap();
    let text = stored
        .get_first(source)
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    let changed = text.replace("\"item 7\"", "\"item seven\"");
    assert_ne!(text, changed);
    let mut writer: tantivy::IndexWriter = index.writer(50_000_000).unwrap();
    for gone in ["5", "7"] {
        writer.delete_term(tantivy::Term::from_field_text(id, gone));
    }
    let mut made_up = tantivy::TantivyDocument::default();
    made_up.add_text(id, "1000001");
    made_up.add_text(source, r#"{"id":1000001,"name":"ghost"}"#);
    writer.add_document(made_up).unwrap();
    // An id no row of an integer key can have.
    let mut foreign = tantivy::TantivyDocument::default();
    foreign.add_text(id, "ghost");
    foreign.add_text(source, r#"{"id":"ghost","name":"not a row"}"#);
    writer.add_document(foreign).unwrap();
    let mut seventh = tantivy::TantivyDocument::default();
    seventh.add_text(id, "7");
    seventh.add_text(source, &changed);
    writer.add_document(seventh).unwrap();
    let mut prepared = writer.prepare_commit().unwrap();
    if let Some(payload) = payload {
        prepared.set_payload(&payload);
    }
    prepared.commit().unwrap();
    writer.wait_merging_threads().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn differences_are_found_and_repaired_through_the_pipeline() {
    let db = TestDb::new("verify_repair").await;
    db.exec(ITEMS).await;
    db.exec(&insert(1, 3000)).await;
    let config = db.config(TABLES, "");
    let mut sluice = Sluice::run_config(&config);
    caught_up(&db, &mut sluice, 3000).await;

    let (code, out, err) = verify(&config, &[]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("every index equals its table"), "{out}");
    assert!(out.contains("3000 rows, 3000 documents"), "{out}");

    assert!(sluice.stop().success());
    tamper(&db.data_dir());
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;

    let (code, found) = report(&config, &[]).await;
    assert_eq!(code, 1, "{found:#}");
    let table = &found["tables"][0];
    assert_eq!(
        table["missing"]["examples"],
        serde_json::json!(["5"]),
        "{found:#}"
    );
    assert_eq!(
        table["extra"]["examples"],
        serde_json::json!(["1000001", "ghost"]),
        "{found:#}"
    );
    assert_eq!(
        table["stale"]["examples"],
        serde_json::json!(["7"]),
        "{found:#}"
    );
    assert_eq!(table["rows"], 3000);
    assert_eq!(table["documents"], 3001);

    // Only the rows a condition picks: the made-up document is not looked for.
    let (code, picked) = report(&config, &["--table", "public.items", "--where", "id < 6"]).await;
    assert_eq!(code, 1, "{picked:#}");
    let table = &picked["tables"][0];
    assert_eq!(table["rows"], 5);
    assert_eq!(table["missing"]["count"], 1);
    assert_eq!(table["stale"]["count"], 0);
    assert!(table["extra"].is_null(), "{picked:#}");

    let (code, out, err) = verify(&config, &["--repair"]).await;
    assert_eq!(code, 0, "a repair that worked ends equal:\n{out}\n{err}");
    assert!(out.contains("4 sent through the pipeline"), "{out}");
    assert!(out.contains("0 still different"), "{out}");

    let (code, out, err) = verify(&config, &[]).await;
    assert_eq!(code, 0, "{out}\n{err}\nlog:\n{}", sluice.log_text());
    let docs = common::documents(&db.data_dir(), "items", "id");
    assert_eq!(docs["7"]["name"], "item 7");
    assert!(docs.contains_key("5") && !docs.contains_key("1000001"));
    assert!(
        !docs.contains_key("ghost"),
        "a document no row can have is deleted too"
    );
    sluice.assert_running();
}

#[tokio::test(flavor = "multi_thread")]
async fn live_changes_during_a_verify_are_not_differences() {
    let db = TestDb::new("verify_live").await;
    db.exec(ITEMS).await;
    db.exec(&insert(1, 20_000)).await;
    let config = db.config(TABLES, "");
    let mut sluice = Sluice::run_config(&config);
    caught_up(&db, &mut sluice, 20_000).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let url = db.url.clone();
        tokio::spawn(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            let mut n: i64 = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let sql = format!(
                    "UPDATE items SET name = 'renamed {n}' WHERE id IN ({}, {});
                     DELETE FROM items WHERE id = {};
                     INSERT INTO items (id, name, price) VALUES ({}, 'new', 1);",
                    n % 20_000 + 1,
                    (n * 7) % 20_000 + 1,
                    (n * 13) % 20_000 + 1,
                    100_000 + n
                );
                client.batch_execute(&sql).await.unwrap();
            }
            n
        })
    };
    let (code, found) = report(&config, &[]).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let changes = writer.await.unwrap();
    assert!(
        changes > 10,
        "the table changed during the verify ({changes} rounds)"
    );
    assert_eq!(code, 0, "live changes were reported:\n{found:#}");
    let table = &found["tables"][0];
    assert_eq!(table["missing"]["count"], 0);
    assert_eq!(table["extra"]["count"], 0);
    assert_eq!(table["stale"]["count"], 0);
    sluice.assert_running();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_verify_that_cannot_work_says_why() {
    let db = TestDb::new("verify_refused").await;
    db.exec(ITEMS).await;
    let config = db.config(TABLES, "");
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    let (code, _, err) = verify(&config, &["--sink", "nope"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no sink named `nope`"), "{err}");
    let (code, _, err) = verify(&config, &["--table", "public.other"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not streamed"), "{err}");
    let (code, _, err) = verify(&config, &["--where", "no_such_column > 1"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no_such_column"), "{err}");
    // An empty table and an index never written are equal.
    let (code, out, err) = verify(&config, &[]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let log = sluice.log_text();
    assert!(log.contains("verify ended"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "a log written to a file has no colour codes:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tables_whose_documents_functions_make_are_skipped() {
    let db = TestDb::new("verify_functions").await;
    db.exec(ITEMS).await;
    db.exec("CREATE TABLE notes (id int PRIMARY KEY, body text); ALTER TABLE notes REPLICA IDENTITY FULL")
        .await;
    db.exec(&insert(1, 10)).await;
    let tables = "[[tables]]\nname = \"public.items\"\n\n[[tables]]\nname = \"public.notes\"\nfilter = \"all\"\n\n\
                  [functions.all]\nkind = \"filter\"\ncode = 'function filter(action, record) return true end'\n\n\
                  [api]\nlisten = \"127.0.0.1:0\"\n";
    let config = db.config(tables, "");
    let mut sluice = Sluice::run_config(&config);
    caught_up(&db, &mut sluice, 10).await;
    let (code, out, err) = verify(&config, &[]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("public.items -> index items: 10 rows, 10 documents"),
        "{out}"
    );
    assert!(out.contains("public.notes: not verified"), "{out}");
    let (code, _, err) = verify(&config, &["--table", "public.notes"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("made by its functions"), "{err}");
}
