//! Test harness: a throwaway Postgres per test binary, a database per test,
//! and the sluice binary run as a user runs it.

#![allow(dead_code)]

pub mod disk;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice::local_pg::LocalPostgres;

/// A database of its own for one test, with its own slot name.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub client: tokio_postgres::Client,
    pub dir: tempfile::TempDir,
}

impl TestDb {
    /// A fresh database named after the test.
    pub async fn new(hint: &str) -> TestDb {
        TestDb::in_cluster(cluster(), hint).await
    }

    /// A fresh database in a cluster of the test's own (for settings that
    /// would disturb the other tests of the binary).
    pub async fn in_cluster(cluster: &LocalPostgres, hint: &str) -> TestDb {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{hint}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        cluster
            .create_database(&name)
            .await
            .expect("creating the test database");
        let client = cluster
            .connect(&name)
            .await
            .expect("connecting to the test database");
        client.batch_execute("SET timezone = 'UTC'").await.unwrap();
        TestDb {
            url: cluster.url(&name),
            name,
            client,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Writes a config file streaming `tables` (TOML `[[tables]]` entries) into
    /// the embedded sink, with this database's own slot.
    pub fn config(&self, tables: &str, extra_pipeline: &str) -> PathBuf {
        let embedded =
            "[[sinks]]\nname = \"embedded\"\ntype = \"embedded\"\ncommit_interval_ms = 100\n";
        self.config_with_sinks(tables, extra_pipeline, embedded)
    }

    /// Like `config`, with the given `[[sinks]]` entries.
    pub fn config_with_sinks(&self, tables: &str, extra_pipeline: &str, sinks: &str) -> PathBuf {
        let path = self.dir.path().join("sluice.toml");
        let text = format!(
            r#"
[source]
database_url = "{url}"
slot = "{slot}"
publication = "{slot}"
status_interval_ms = 200

[pipeline]
data_dir = "{data}"
{extra_pipeline}

{tables}

{sinks}
"#,
            url = self.url,
            slot = self.name,
            data = self.data_dir().display(),
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    pub async fn exec(&self, sql: &str) {
        self.client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    /// The table's rows as JSON objects by id (Postgres' own `to_jsonb`).
    pub async fn rows(&self, table: &str, id: &str) -> BTreeMap<String, Value> {
        self.json_rows(&format!(
            "SELECT ({id})::text, to_jsonb(t)::text FROM {table} t"
        ))
        .await
    }

    /// The rows of `sql`, a query of (id as text, a JSON value as text), by id.
    pub async fn json_rows(&self, sql: &str) -> BTreeMap<String, Value> {
        self.client
            .query(sql, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| {
                let json: String = r.get(1);
                (r.get::<_, String>(0), serde_json::from_str(&json).unwrap())
            })
            .collect()
    }

    pub async fn slot_exists(&self) -> bool {
        self.client
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.name],
            )
            .await
            .unwrap()
            .is_some()
    }

    /// Waits until sluice streams from this database's slot (changes made
    /// before the slot exists are not streamed: that is what backfills are for).
    pub async fn wait_streaming(&self, sluice: &mut Sluice) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            sluice.assert_running();
            let active = self
                .client
                // A slot is also active while it is being created: wait for the walsender.
                .query_opt(
                    "SELECT 1 FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid \
                     WHERE s.slot_name = $1",
                    &[&self.name],
                )
                .await
                .unwrap()
                .is_some();
            if active {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "sluice did not start streaming; log:\n{}",
            sluice.log_text()
        );
    }

    /// The server's current WAL insert position as a number: past every
    /// committed change, even with synchronous_commit off.
    pub async fn current_wal_lsn(&self) -> u64 {
        let row = self
            .client
            .query_one("SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint", &[])
            .await
            .unwrap();
        row.get::<_, i64>(0) as u64
    }

    /// Waits up to 30 s until `sink` has exactly `count` parked writes.
    pub async fn wait_parked(&self, sink: &str, count: usize) -> bool {
        wait_until(Duration::from_secs(30), || async {
            sluice::sink::failed::list(&self.data_dir(), sink)
                .unwrap()
                .len()
                == count
        })
        .await
    }

    /// The slot's confirmed flush position as a number.
    pub async fn confirmed_flush(&self) -> u64 {
        let row = self
            .client
            .query_one(
                "SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.name],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0) as u64
    }
}

/// The shared throwaway cluster of this test binary.
pub fn cluster() -> &'static LocalPostgres {
    match LocalPostgres::shared() {
        Ok(cluster) => cluster,
        Err(e) => panic!("cannot start the test Postgres: {e}"),
    }
}

/// The documents of an embedded index by id (`key` is the id field).
pub fn documents(data_dir: &Path, index: &str, key: &str) -> BTreeMap<String, Value> {
    let Ok(found) = sluice::sink::embedded::search::search(data_dir, index, "*", 10_000_000) else {
        return BTreeMap::new();
    };
    found
        .documents
        .iter()
        .map(|d| {
            let v: Value = serde_json::from_str(d).unwrap();
            let id = match &v[key] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (id, v)
        })
        .collect()
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Waits until the index equals the table, and asserts it.
pub async fn assert_index_equals_table(db: &TestDb, table: &str, index: &str, id: &str) {
    let caught_up = wait_until(Duration::from_secs(60), || async {
        documents(&db.data_dir(), index, id) == db.rows(table, id).await
    })
    .await;
    if !caught_up {
        let docs = documents(&db.data_dir(), index, id);
        let rows = db.rows(table, id).await;
        panic!(
            "index {index} != table {table}: {}",
            difference(&docs, &rows)
        );
    }
}

/// What tells documents and rows apart, briefly: counts, missing and extra
/// ids, and the fields that differ (documents can be long).
pub fn difference(docs: &BTreeMap<String, Value>, rows: &BTreeMap<String, Value>) -> String {
    let missing: Vec<_> = rows
        .keys()
        .filter(|k| !docs.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = docs
        .keys()
        .filter(|k| !rows.contains_key(*k))
        .take(5)
        .collect();
    let short = |x: &Value| {
        let text = x.to_string();
        if text.len() > 80 {
            format!("{}…({} chars)", &text[..40], text.len())
        } else {
            text
        }
    };
    let differ: Vec<_> = rows
        .iter()
        .filter(|(k, v)| docs.get(*k).is_some_and(|d| d != *v))
        .take(3)
        .map(|(k, v)| {
            let fields: Vec<String> = v
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(f, x)| docs[k].get(*f) != Some(*x))
                .map(|(f, x)| {
                    format!(
                        "{f}: row {} doc {}",
                        short(x),
                        docs[k].get(f).map(short).unwrap_or_default()
                    )
                })
                .collect();
            format!("{k}: {}", fields.join("; "))
        })
        .collect();
    format!(
        "{} docs, {} rows; missing {missing:?}; extra {extra:?}; differ {differ:#?}",
        docs.len(),
        rows.len()
    )
}

/// The sluice binary as a child process.
pub struct Sluice {
    pub child: Child,
    pub log: PathBuf,
}

pub fn sluice_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command.env("RUST_LOG", "info,sluice=debug");
    command
}

impl Sluice {
    pub fn start(args: &[&str], log: &Path) -> Sluice {
        Sluice::start_with_env(args, log, &[])
    }

    /// Like `start`, with extra environment variables (secrets).
    pub fn start_with_env(args: &[&str], log: &Path, env: &[(&str, &str)]) -> Sluice {
        let file = std::fs::File::create(log).unwrap();
        let child = sluice_command()
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("starting sluice");
        Sluice {
            child,
            log: log.to_owned(),
        }
    }

    pub fn run_config(config: &Path) -> Sluice {
        Sluice::run_config_with_env(config, &[])
    }

    /// `sluice run --config` with extra environment variables (secrets).
    pub fn run_config_with_env(config: &Path, env: &[(&str, &str)]) -> Sluice {
        let log = config.with_extension(format!("log.{}", rand_suffix()));
        Sluice::start_with_env(&["run", "--config", config.to_str().unwrap()], &log, env)
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("sluice did not stop on SIGTERM; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until sluice exits by itself, at most `timeout`; its status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                panic!("sluice did not exit; log:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("sluice exited early ({status}); log:\n{}", self.log_text());
        }
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        // Never leave a sluice behind a failed test.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_suffix() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// `run_to_end` off the async runtime, for a command such as `status`
/// beside a running sluice.
pub async fn cli(args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_to_end(&args)
    })
    .await
    .unwrap()
}

/// Runs sluice to completion and returns (exit code, stdout, stderr).
pub fn run_to_end(args: &[&str]) -> (i32, String, String) {
    let out = sluice_command()
        .args(args)
        .output()
        .expect("running sluice");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The seed of a randomized test: `SLUICE_SEED`, else the clock; printed
/// with `what` it draws, so a failing run can be replayed.
pub fn seed(what: &str) -> u64 {
    let seed = std::env::var("SLUICE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("{what} seed {seed} (replay with SLUICE_SEED={seed})");
    seed
}

/// A TCP port of the loopback that nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
