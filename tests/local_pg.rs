use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use std::{env, fs, thread};

use sluice::local_pg::{
    LocalPostgres, LocalPostgresOptions, MD5_USER, NO_REPLICATION_USER, SCRAM_USER, TEST_PASSWORD,
};
use tokio_postgres::NoTls;

const CHILD_ENV: &str = "SCRATCH_LOCALPG_ORPHAN_CHILD";

/// Alive and not a zombie.
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .unwrap()
            .1
            .trim_start()
            .starts_with('Z')
    })
}

/// The postmaster and its children.
fn cluster_pids(postmaster: u32) -> Vec<u32> {
    let mut pids = vec![postmaster];
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .nth(1)
            .unwrap();
        if ppid == postmaster.to_string() {
            pids.push(pid);
        }
    }
    pids
}

fn wait_gone(pids: &[u32], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|&pid| alive(pid)).collect();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "processes still alive: {left:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn process_uid(pid: u32) -> u32 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

async fn query_one(client: &tokio_postgres::Client, sql: &str) -> String {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

async fn login(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_lifecycle() {
    // Called from inside a runtime on purpose.
    let pg = LocalPostgres::start(LocalPostgresOptions::default()).expect("start cluster");
    assert_eq!(pg.major_version(), 15);
    let expected_uid = if unsafe { libc::geteuid() } == 0 {
        fs::metadata(pg.data_dir())
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .unwrap()
    } else {
        unsafe { libc::geteuid() }
    };
    assert_eq!(process_uid(pg.pid()), expected_uid);
    if unsafe { libc::geteuid() } == 0 {
        assert_ne!(expected_uid, 0, "server must not run as root");
    }

    pg.create_database("alpha").await.unwrap();
    pg.create_database("beta").await.unwrap();
    let alpha = pg.connect("alpha").await.unwrap();
    assert_eq!(query_one(&alpha, "SHOW wal_level").await, "logical");
    assert_eq!(query_one(&alpha, "SHOW fsync").await, "off");
    assert_eq!(query_one(&alpha, "SHOW max_replication_slots").await, "32");
    let md5_hash = query_one(
        &alpha,
        &format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{MD5_USER}'"),
    )
    .await;
    assert!(md5_hash.starts_with("md5"), "{md5_hash}");
    let scram_hash = query_one(
        &alpha,
        &format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{SCRAM_USER}'"),
    )
    .await;
    assert!(scram_hash.starts_with("SCRAM-SHA-256$"), "{scram_hash}");
    alpha
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items VALUES (1)")
        .await
        .unwrap();

    for user in [MD5_USER, SCRAM_USER] {
        let client = login(&pg.url_as(user, Some(TEST_PASSWORD), "alpha"))
            .await
            .expect(user);
        assert_eq!(query_one(&client, "SELECT current_user::text").await, user);
        let count: i64 = client
            .query_one("SELECT count(*) FROM items", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(count, 1, "{user} reads tables");
        client
            .batch_execute("CREATE PUBLICATION p_test FOR TABLE items")
            .await
            .expect_err("not the owner");
        let wrong = login(&pg.url_as(user, Some("wrong"), "beta"))
            .await
            .expect_err("wrong password");
        let message = wrong
            .as_db_error()
            .map(|e| e.message().to_string())
            .unwrap_or_default();
        assert!(
            message.contains("password authentication failed"),
            "{wrong:?}"
        );
        let none = login(&pg.url_as(user, None, "beta")).await;
        assert!(none.is_err(), "{user} must need a password");
    }
    let norepl = login(&pg.url_as(NO_REPLICATION_USER, None, "beta"))
        .await
        .unwrap();
    let repl: bool = norepl
        .query_one(
            "SELECT rolreplication FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!repl);
    let slot = norepl
        .batch_execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
        .await;
    let message = slot
        .unwrap_err()
        .as_db_error()
        .unwrap()
        .message()
        .to_string();
    assert!(message.contains("replication"), "{message}");

    let tls = tokio::task::spawn_blocking(|| {
        LocalPostgres::start(LocalPostgresOptions {
            tls: true,
            ..Default::default()
        })
    })
    .await
    .unwrap()
    .expect("start TLS cluster");
    let client = tls.connect("postgres").await.unwrap();
    assert_eq!(query_one(&client, "SHOW ssl").await, "on");
    let certificate = tls.tls_certificate().expect("certificate").to_path_buf();
    // A real handshake, verifying the certificate and the host name.
    let handshake = Command::new("openssl")
        .args(["s_client", "-starttls", "postgres", "-connect"])
        .arg(format!("127.0.0.1:{}", tls.port()))
        .arg("-CAfile")
        .arg(&certificate)
        .args([
            "-verify_return_error",
            "-verify_hostname",
            "localhost",
            "-verify_ip",
            "127.0.0.1",
            "-brief",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let handshake_log = String::from_utf8_lossy(&handshake.stderr);
    assert!(
        handshake.status.success() && handshake_log.contains("Verification: OK"),
        "{handshake_log}"
    );

    let mut pids = cluster_pids(pg.pid());
    pids.extend(cluster_pids(tls.pid()));
    assert!(pids.len() > 4, "postmasters and their children: {pids:?}");
    let roots: Vec<PathBuf> = [&pg, &tls]
        .iter()
        .map(|c| c.data_dir().parent().unwrap().to_path_buf())
        .collect();
    drop((alpha, norepl, client));
    let dropping = Instant::now();
    drop(pg);
    drop(tls);
    eprintln!("dropped both clusters in {:?}", dropping.elapsed());
    wait_gone(&pids, Duration::from_millis(200));
    for root in roots {
        assert!(!root.exists(), "{} still exists", root.display());
    }
    assert!(!certificate.exists());
}

#[test]
fn bad_settings_are_rejected_before_anything_starts() {
    let options = LocalPostgresOptions {
        tls: false,
        extra_settings: vec![("port".into(), "1".into())],
    };
    let error = LocalPostgres::start(options).unwrap_err();
    assert!(error.to_string().contains("port"), "{error}");
}

#[test]
fn startup_failure_reports_the_log() {
    let options = LocalPostgresOptions {
        tls: false,
        extra_settings: vec![("shared_buffers".into(), "lots".into())],
    };
    let error = LocalPostgres::start(options).unwrap_err().to_string();
    assert!(
        error.contains("shared_buffers") && error.contains("server log"),
        "{error}"
    );
}

#[test]
fn shared_cluster_is_reused() {
    let first = LocalPostgres::shared().expect("shared cluster");
    let second = LocalPostgres::shared().expect("shared cluster");
    assert!(std::ptr::eq(first, second));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        first.create_database("shared_one").await.unwrap();
        let client = first.connect("shared_one").await.unwrap();
        assert_eq!(
            query_one(&client, "SELECT current_database()::text").await,
            "shared_one"
        );
    });
}

/// Run by `server_dies_with_its_sigkilled_owner` in a child process; a no-op otherwise.
#[test]
fn orphan_child() {
    if env::var_os(CHILD_ENV).is_none() {
        return;
    }
    // Started from a short-lived thread, as test harnesses do.
    let pg = thread::spawn(|| LocalPostgres::start(LocalPostgresOptions::default()).unwrap())
        .join()
        .unwrap();
    thread::sleep(Duration::from_millis(300));
    println!(
        "READY {} {} {}",
        pg.pid(),
        pg.port(),
        pg.data_dir().display()
    );
    std::io::stdout().flush().unwrap();
    loop {
        thread::sleep(Duration::from_secs(60));
    }
}

#[tokio::test]
async fn server_dies_with_its_sigkilled_owner() {
    let mut child = Command::new(env::current_exe().unwrap())
        .args(["orphan_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // libtest prints "test orphan_child ... " on the same line before the test's output.
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (sender, ready) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let line = stdout
            .lines()
            .map_while(Result::ok)
            .find_map(|line| line.split_once("READY ").map(|(_, r)| r.to_string()));
        let _ = sender.send(line);
    });
    let ready = ready.recv_timeout(Duration::from_secs(60));
    let Ok(Some(ready)) = ready else {
        child.kill().unwrap();
        panic!("child did not report READY: {ready:?}");
    };
    let mut fields = ready.split_whitespace();
    let pid: u32 = fields.next().unwrap().parse().unwrap();
    let port: u16 = fields.next().unwrap().parse().unwrap();
    let data_dir = Path::new(fields.next().unwrap()).to_path_buf();

    // The thread that called start() has exited; the server must still serve.
    let client = login(&format!("postgres://postgres@127.0.0.1:{port}/postgres"))
        .await
        .unwrap();
    assert_eq!(query_one(&client, "SELECT 'up'").await, "up");
    let pids = cluster_pids(pid);
    assert!(pids.len() > 2, "{pids:?}");

    child.kill().unwrap(); // SIGKILL: no destructor runs
    child.wait().unwrap();
    wait_gone(&pids, Duration::from_secs(5));

    // The directory is left behind; the next start removes it.
    let root = data_dir.parent().unwrap().to_path_buf();
    assert!(root.exists());
    let next =
        tokio::task::spawn_blocking(|| LocalPostgres::start(LocalPostgresOptions::default()))
            .await
            .unwrap()
            .unwrap();
    assert!(!root.exists(), "stale {} was not removed", root.display());
    drop(next);
}
