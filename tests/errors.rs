//! Bad configuration, bad flags and unprepared tables: a clear error, a
//! non-zero exit, and neither slot nor index is touched.

mod common;

use std::time::Duration;

use common::{documents, run_to_end, Sluice, TestDb};

#[test]
fn bad_flags_are_usage_errors() {
    let (code, _, err) = run_to_end(&["run", "--tabel", "x"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--tabel"), "{err}");
    let (code, _, err) = run_to_end(&["run", "--database-url", "postgres://localhost/x"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--table"), "{err}");
    let (code, _, err) = run_to_end(&[
        "search",
        "--index",
        "nope",
        "--data-dir",
        "/nonexistent",
        "*",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("no index `nope`"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_config_files_name_every_problem() {
    let db = TestDb::new("badconf").await;
    let path = db.dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[source]\ndatabase_url = \"x\"\nslott = \"s\"\n[[tables]]\nname = \"t\"\n",
    )
    .unwrap();
    let (code, _, err) = run_to_end(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("slott"), "{err}");

    std::fs::write(
        &path,
        "[source]\ndatabase_url = \"x\"\nslot = \"Bad Slot\"\n[pipeline]\nshards = 0\n[[tables]]\nname = \"a.b.c\"\n",
    )
    .unwrap();
    let (code, _, err) = run_to_end(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    for field in ["source.slot", "pipeline.shards", "tables[0].name"] {
        assert!(err.contains(field), "{field} missing in {err}");
    }
    let (code, _, err) = run_to_end(&["run", "--config", "/nonexistent/sluice.toml"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/sluice.toml"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn table_without_key_and_unknown_table_change_nothing() {
    let db = TestDb::new("nokey").await;
    db.exec("CREATE TABLE logs (line text); CREATE TABLE fine (id int PRIMARY KEY)")
        .await;
    let config = db.config(
        "[[tables]]\nname = \"logs\"\n[[tables]]\nname = \"public.missing\"\n[[tables]]\nname = \"fine\"",
        "",
    );
    for command in ["check", "run"] {
        let (code, out, err) = run_to_end(&[command, "--config", config.to_str().unwrap()]);
        let text = format!("{out}{err}");
        assert_eq!(code, 3, "{command}: {text}");
        assert!(
            text.contains("table public.logs has no primary key"),
            "{text}"
        );
        assert!(
            text.contains("table public.missing does not exist"),
            "{text}"
        );
        assert!(text.contains("fix:"), "{text}");
    }
    assert!(!db.slot_exists().await, "a slot was created");
    let publication = db
        .client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&db.name],
        )
        .await
        .unwrap();
    assert!(publication.is_none(), "a publication was created");
    assert!(
        !db.data_dir().join("indexes").exists(),
        "an index was created"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_reports_a_ready_database() {
    let db = TestDb::new("ready").await;
    db.exec("CREATE TABLE fine (id int PRIMARY KEY)").await;
    let config = db.config("[[tables]]\nname = \"fine\"", "");
    let (code, out, err) = run_to_end(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok"), "{out}");
    assert!(!db.slot_exists().await, "check must not create the slot");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_in_use_is_reported_and_secrets_come_from_the_environment() {
    let db = TestDb::new("inuse").await;
    db.exec("CREATE TABLE fine (id int PRIMARY KEY)").await;
    // The URL comes from the environment; the file holds no secret.
    let path = db.dir.path().join("env.toml");
    std::fs::write(
        &path,
        format!(
            "[source]\ndatabase_url_env = \"SLUICE_TEST_URL\"\nslot = \"{0}\"\npublication = \"{0}\"\n[pipeline]\ndata_dir = \"{1}\"\n[[tables]]\nname = \"fine\"\n",
            db.name,
            db.data_dir().display()
        ),
    )
    .unwrap();
    let mut sluice = common::Sluice::run_config_with_env(&path, &[("SLUICE_TEST_URL", &db.url)]);
    db.wait_streaming(&mut sluice).await;

    let out = common::sluice_command()
        .args(["check", "--config", path.to_str().unwrap()])
        .env("SLUICE_TEST_URL", &db.url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains("is in use by another process"), "{text}");

    // Without the variable: a configuration error naming it.
    let (code, _, err) = run_to_end(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("SLUICE_TEST_URL"), "{err}");
    let log = sluice.log.clone();
    let status = sluice.stop();
    assert!(
        status.success(),
        "{status}: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_naming_columns_the_table_lacks_are_refused_all_at_once() {
    let db = TestDb::new("columns").await;
    db.exec("CREATE TABLE users (id int PRIMARY KEY, email text, ssn text, active bool)")
        .await;
    let config = db.config(
        r#"[[tables]]
name = "users"
where = ["activ = true"]
transform = { drop = ["snn"], rename = { mail = "e" }, fields = { label = "{email} {nmae}" } }
"#,
        "",
    );
    for command in ["check", "run"] {
        let (code, out, err) = run_to_end(&[command, "--config", config.to_str().unwrap()]);
        let text = format!("{out}{err}");
        assert_eq!(code, 2, "{command}: {text}");
        for expected in [
            "tables[0].where[0]: table public.users has no column `activ` (its columns: id, email, ssn, active)",
            "tables[0].transform.drop[0]: table public.users has no column `snn`",
            "tables[0].transform.rename.mail: table public.users has no column `mail`",
            "tables[0].transform.fields.label: table public.users has no column `nmae`",
        ] {
            assert!(text.contains(expected), "{command}: {expected}\n{text}");
        }
    }
    assert!(!db.slot_exists().await, "a slot was created");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_column_renamed_while_streaming_stops_sluice_instead_of_indexing_it() {
    let db = TestDb::new("renamed").await;
    db.exec("CREATE TABLE users (id int PRIMARY KEY, email text, ssn text, active bool)")
        .await;
    db.exec("INSERT INTO users VALUES (1, 'a@x', '111', true), (2, 'b@x', '222', false)")
        .await;
    let config = db.config(
        "[[tables]]\nname = \"users\"\nwhere = [\"active = true\"]\ntransform = { drop = [\"ssn\"] }\n",
        "",
    );
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    let indexed = common::wait_until(Duration::from_secs(30), || async {
        documents(&db.data_dir(), "users", "id").len() == 1
    })
    .await;
    assert!(indexed, "{}", sluice.log_text());

    // Renamed, the column `drop` names is gone: indexing the row would show it.
    db.exec("ALTER TABLE users RENAME COLUMN ssn TO social")
        .await;
    db.exec("INSERT INTO users VALUES (3, 'c@x', '333', true)")
        .await;
    let status = sluice.wait_exit(Duration::from_secs(30)).await;
    let log = sluice.log_text();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(
        log.contains("`transform.drop[0]` names column `ssn`, which the table no longer has"),
        "{log}"
    );
    let docs = documents(&db.data_dir(), "users", "id");
    assert!(
        docs.values()
            .all(|d| d.get("social").is_none() && d.get("ssn").is_none()),
        "{docs:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_directory_that_cannot_be_one_stops_sluice_with_code_2() {
    let db = TestDb::new("datadirfile").await;
    db.exec("CREATE TABLE items (id int PRIMARY KEY, name text)")
        .await;
    let config = db.config("[[tables]]\nname = \"items\"", "");
    for data_dir in [db.data_dir(), db.data_dir().join("below")] {
        // A file where the directory, or one on the way to it, should be.
        std::fs::write(db.data_dir(), "not a directory").unwrap();
        let text = std::fs::read_to_string(&config).unwrap();
        let text = text.replace(
            &format!("{:?}", db.data_dir().display().to_string()),
            &format!("{:?}", data_dir.display().to_string()),
        );
        let moved = config.with_file_name("moved.toml");
        std::fs::write(&moved, text).unwrap();
        let (code, _, err) = run_to_end(&["run", "--config", moved.to_str().unwrap()]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("pipeline.data_dir"), "{err}");
    }
}
