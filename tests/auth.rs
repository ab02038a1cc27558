//! The replication connection authenticates with md5 and SCRAM-SHA-256 and
//! speaks TLS with libpq's sslmode semantics; `check` names missing privileges.

mod common;

use std::time::Duration;

use common::{cluster, run_to_end, TestDb};
use sluice::local_pg::{
    LocalPostgres, LocalPostgresOptions, MD5_USER, NO_REPLICATION_USER, SCRAM_USER, TEST_PASSWORD,
};
use sluice::postgres::conninfo::ConnInfo;
use sluice::postgres::replication::ReplicationConnection;

async fn identify(url: &str) -> Result<Vec<Vec<Option<String>>>, sluice::error::Error> {
    let info = ConnInfo::parse(url, None, None)?;
    let mut conn = ReplicationConnection::connect(&info).await?;
    let rows = conn.simple_query("IDENTIFY_SYSTEM").await?;
    conn.close().await;
    Ok(rows)
}

#[tokio::test(flavor = "multi_thread")]
async fn md5_and_scram_logins() {
    let db = TestDb::new("auth").await;
    for user in [MD5_USER, SCRAM_USER] {
        let url = cluster().url_as(user, Some(TEST_PASSWORD), &db.name) + "?sslmode=disable";
        let rows = identify(&url)
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        assert_eq!(rows.len(), 1, "IDENTIFY_SYSTEM returns one row");
        let wrong = cluster().url_as(user, Some("wrong"), &db.name) + "?sslmode=disable";
        let err = identify(&wrong).await.unwrap_err();
        assert!(err.to_string().contains("28P01"), "{user}: {err}");
        let none = cluster().url_as(user, None, &db.name) + "?sslmode=disable";
        let err = identify(&none).await.unwrap_err();
        assert!(err.to_string().contains("password"), "{user}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_modes() {
    let cluster = tokio::task::spawn_blocking(|| {
        LocalPostgres::start(LocalPostgresOptions {
            tls: true,
            ..Default::default()
        })
    })
    .await
    .unwrap()
    .unwrap();
    let cert = cluster
        .tls_certificate()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let base = cluster.url_as(SCRAM_USER, Some(TEST_PASSWORD), "postgres");
    for mode in ["require", "prefer"] {
        identify(&format!("{base}?sslmode={mode}"))
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
    }
    let full = format!("{base}?sslmode=verify-full&sslrootcert={cert}");
    identify(&full)
        .await
        .unwrap_or_else(|e| panic!("verify-full: {e}"));
    // Without the certificate's root the server cannot be verified.
    let err = identify(&format!("{base}?sslmode=verify-full"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("TLS handshake"), "{err}");
    // The SQL connection uses the same settings.
    let info = ConnInfo::parse(&full, None, None).unwrap();
    let client = info.connect_sql().await.unwrap();
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl);
}

#[tokio::test(flavor = "multi_thread")]
async fn check_names_a_missing_replication_privilege() {
    let db = TestDb::new("norepl").await;
    db.exec("CREATE TABLE fine (id int PRIMARY KEY)").await;
    let url = cluster().url_as(NO_REPLICATION_USER, None, &db.name);
    let (code, out, err) = run_to_end(&["check", "--database-url", &url, "--table", "public.fine"]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("may not use replication"), "{out}");
    assert!(out.contains("REPLICATION"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_that_refuses_the_connection_is_waited_for_and_a_refused_login_exits_2() {
    let db = TestDb::new("refused").await;
    db.exec("CREATE TABLE fine (id int PRIMARY KEY)").await;
    // Nothing listens on port 1.
    let nowhere = "postgres://sluice@127.0.0.1:1/app?sslmode=disable";
    let wrong = cluster().url_as(SCRAM_USER, Some("wrong"), &db.name) + "?sslmode=disable";
    let data_dir = db.data_dir();
    let data_dir = data_dir.to_str().unwrap();
    let args = |command: &'static str, url: &str| {
        let mut args = vec![command, "--database-url", url, "--table", "fine"];
        if command == "run" {
            args.extend(["--data-dir", data_dir]);
        }
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let run = |command: &'static str, url: &str| {
        let args = args(command, url);
        run_to_end(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // `check`: not ready.
    let (code, out, err) = run("check", nowhere);
    assert_eq!(code, 3, "check: {out}{err}");
    assert!(err.contains("cannot connect"), "{err}");
    // `run`: waits for the database, saying so, until stopped.
    let args = args("run", nowhere);
    let log = db.dir.path().join("nowhere.log");
    let mut sluice =
        common::Sluice::start(&args.iter().map(String::as_str).collect::<Vec<_>>(), &log);
    tokio::time::sleep(Duration::from_secs(2)).await;
    sluice.assert_running();
    let text = sluice.log_text();
    assert!(
        text.contains("the source database does not answer"),
        "{text}"
    );
    assert!(text.contains("cannot connect"), "{text}");
    assert!(sluice.stop().success());
    // A refused login does not get better by waiting: both exit 2.
    for command in ["check", "run"] {
        let (code, out, err) = run(command, &wrong);
        assert_eq!(code, 2, "{command}: {out}{err}");
        assert!(err.contains("28P01") || err.contains("password"), "{err}");
    }
}
