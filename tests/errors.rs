//! Bad configuration, bad flags and unprepared tables: a clear error, a
//! non-zero exit, and neither slot nor index is touched.

mod common;

use common::{run_to_end, TestDb};

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
