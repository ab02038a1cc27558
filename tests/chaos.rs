//! The chaos suite: a random workload from several connections, with
//! backfills started at random, into the embedded index, an Elasticsearch
//! fake (versioned writes) and a Typesense fake (unversioned), while faults
//! hit every link, one at a time and together: sluice killed or stopped,
//! Postgres restarted, the walsender terminated, the network to Postgres and
//! to each engine cut, reset, half-open or slow (a proxy between them),
//! the engines answering 429/503 or not in time, the data directory's disk
//! full. Then the writes stop, sluice catches up, and `sluice verify` must
//! find every index equal to its table. Every run prints its seed and the
//! faults it injected.
//!
//! `cargo test --test chaos` runs a short version; the long one:
//!
//! ```text
//! SLUICE_CHAOS_CYCLES=50 cargo test --release --test chaos -- --ignored --nocapture
//! ```
//! (`SLUICE_SEED` replays a run.)

mod common;
mod fakes;
#[path = "chaos/proxy.rs"]
mod proxy;
#[path = "chaos/workload.rs"]
mod workload;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::disk::SmallDisk;
use common::{Sluice, TestDb};
use fakes::{elasticsearch, typesense};
use proxy::{Mode, Proxy};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use sluice::local_pg::LocalPostgres;

fn seed() -> u64 {
    common::seed("chaos")
}

#[derive(Debug, Clone, Copy)]
enum Link {
    Postgres,
    Elasticsearch,
    Typesense,
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillSluice,
    StopSluice,
    RestartPostgres,
    TerminateWalsender,
    Network(Link, Mode),
    /// The engine answers 429 (or 503) to everything.
    Refusing(Link, bool),
    /// The engine takes longer than the sink's request timeout.
    Stalled(Link),
    DiskFull,
}

/// Everything a run holds.
struct Chaos {
    seed: u64,
    rng: StdRng,
    cluster: Arc<LocalPostgres>,
    db: TestDb,
    config: PathBuf,
    sluice: Option<Sluice>,
    pg: Proxy,
    es: elasticsearch::FakeElasticsearch,
    es_proxy: Proxy,
    ts: typesense::FakeTypesense,
    ts_proxy: Proxy,
    /// The data directory's own small file system, when one could be mounted.
    disk: Option<SmallDisk>,
    log: Vec<String>,
    started: Instant,
}

/// Size of the data directory's tmpfs.
const DISK_BYTES: u64 = 512 * 1024 * 1024;

impl Chaos {
    async fn new(seed: u64) -> Chaos {
        let cluster = Arc::new(
            tokio::task::spawn_blocking(|| LocalPostgres::start(Default::default()))
                .await
                .unwrap()
                .expect("a cluster of the suite's own"),
        );
        let db = TestDb::in_cluster(&cluster, "chaos").await;
        db.exec(workload::TABLE).await;
        let pg = Proxy::start(format!("127.0.0.1:{}", cluster.port()).parse().unwrap()).await;
        let es = elasticsearch::FakeElasticsearch::start(elasticsearch::FakeOptions {
            seed,
            record_requests: false,
            ..Default::default()
        })
        .await;
        let es_proxy = Proxy::start(es.addr()).await;
        let ts = typesense::FakeTypesense::start(typesense::FakeOptions {
            seed,
            record_requests: false,
            ..Default::default()
        })
        .await;
        let ts_proxy = Proxy::start(ts.url().trim_start_matches("http://").parse().unwrap()).await;
        let disk = SmallDisk::mount(&db.data_dir(), DISK_BYTES);
        if disk.is_none() {
            println!("disk full: not injected (mounting a tmpfs needs root)");
        }
        let url = db.url.replace(
            &format!(":{}/", cluster.port()),
            &format!(":{}/", pg.addr.port()),
        );
        assert_ne!(url, db.url, "the source goes through the proxy");
        let engine = "request_timeout_ms = 2000\nmax_retries = 1000\nretry_initial_backoff_ms = 10\nretry_max_backoff_ms = 500\n";
        let text = format!(
            r#"
[source]
database_url = "{url}"
slot = "{slot}"
publication = "{slot}"
status_interval_ms = 500

[pipeline]
data_dir = "{data}"
shards = 3

[api]
listen = "127.0.0.1:0"

[[tables]]
name = "public.chaos"

[[sinks]]
name = "embedded"
type = "embedded"

[[sinks]]
name = "es"
type = "elasticsearch"
url = "http://{es}"
{engine}
[[sinks]]
name = "ts"
type = "typesense"
url = "http://{ts}"
schema = {{ fields = [{{ name = ".*", type = "auto" }}] }}
{engine}"#,
            slot = db.name,
            data = db.data_dir().display(),
            es = es_proxy.addr,
            ts = ts_proxy.addr,
        );
        let config = db.dir.path().join("chaos.toml");
        std::fs::write(&config, text).unwrap();
        let mut chaos = Chaos {
            seed,
            rng: StdRng::seed_from_u64(seed),
            cluster,
            db,
            config,
            sluice: None,
            pg,
            es,
            es_proxy,
            ts,
            ts_proxy,
            disk,
            log: Vec::new(),
            started: Instant::now(),
        };
        chaos.start_sluice();
        let mut sluice = chaos.sluice.take().unwrap();
        chaos.db.wait_streaming(&mut sluice).await;
        chaos.sluice = Some(sluice);
        chaos
    }

    fn note(&mut self, what: String) {
        let line = format!("{:7.1}s  {what}", self.started.elapsed().as_secs_f64());
        println!("{line}");
        self.log.push(line);
    }

    fn start_sluice(&mut self) {
        self.sluice = Some(Sluice::run_config(&self.config));
    }

    /// sluice must be running: it survives every fault here.
    fn assert_running(&mut self) {
        if let Some(sluice) = self.sluice.as_mut() {
            if let Some(status) = sluice.child.try_wait().unwrap() {
                panic!(
                    "sluice exited ({status}) during the chaos; faults:\n{}\nlog:\n{}",
                    self.log.join("\n"),
                    tail(&sluice.log_text(), 60)
                );
            }
        }
    }

    fn proxy(&self, link: Link) -> &Proxy {
        match link {
            Link::Postgres => &self.pg,
            Link::Elasticsearch => &self.es_proxy,
            Link::Typesense => &self.ts_proxy,
        }
    }

    fn draw(&mut self) -> Fault {
        let link = |rng: &mut StdRng| match rng.random_range(0..3) {
            0 => Link::Postgres,
            1 => Link::Elasticsearch,
            _ => Link::Typesense,
        };
        let engine = |rng: &mut StdRng| match rng.random_bool(0.5) {
            true => Link::Elasticsearch,
            false => Link::Typesense,
        };
        match self.rng.random_range(0..9) {
            0 => Fault::KillSluice,
            1 => Fault::StopSluice,
            2 => Fault::RestartPostgres,
            3 => Fault::TerminateWalsender,
            4 | 5 => {
                let mode = match self.rng.random_range(0..4) {
                    0 => Mode::Cut,
                    1 => Mode::Reset,
                    2 => Mode::HalfOpen,
                    _ => Mode::Slow(Duration::from_millis(self.rng.random_range(5..80))),
                };
                Fault::Network(link(&mut self.rng), mode)
            }
            6 => Fault::Refusing(engine(&mut self.rng), self.rng.random_bool(0.5)),
            7 => Fault::Stalled(engine(&mut self.rng)),
            _ if self.disk.is_some() => Fault::DiskFull,
            _ => Fault::KillSluice,
        }
    }

    /// Starts `fault`; what `end` undoes.
    async fn begin(&mut self, fault: Fault) {
        self.note(format!("fault: {fault:?}"));
        match fault {
            Fault::KillSluice => {
                self.sluice.take().unwrap().kill();
                self.start_sluice();
            }
            Fault::StopSluice => {
                // A SIGTERM before sluice set its handler up (it may have been
                // started a moment ago) ends it as any process; wait for its
                // first log lines.
                let started = Instant::now();
                while self.sluice.as_ref().unwrap().log_text().is_empty()
                    && started.elapsed() < Duration::from_secs(10)
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                let sluice = self.sluice.take().unwrap();
                let log = sluice.log_path().to_owned();
                let status = tokio::task::spawn_blocking(move || sluice.stop())
                    .await
                    .unwrap();
                assert!(
                    status.success(),
                    "sluice did not stop cleanly on SIGTERM ({status}); log:\n{}",
                    tail(&std::fs::read_to_string(log).unwrap_or_default(), 60)
                );
                self.start_sluice();
            }
            Fault::RestartPostgres => {
                let cluster = self.cluster.clone();
                tokio::task::spawn_blocking(move || cluster.restart(Duration::from_millis(500)))
                    .await
                    .unwrap()
                    .expect("Postgres starts again");
            }
            Fault::TerminateWalsender => {
                let sql = format!(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                     WHERE slot_name = '{}' AND active_pid IS NOT NULL",
                    self.db.name
                );
                // The test's own connection may be the one a restart broke.
                if let Ok(client) = self.cluster.connect(&self.db.name).await {
                    let _ = client.batch_execute(&sql).await;
                }
            }
            Fault::Network(link, mode) => self.proxy(link).set(mode),
            Fault::Refusing(link, too_many) => match link {
                Link::Elasticsearch => self.es.update_faults(|f| {
                    f.request_rejected_429 = if too_many { 1.0 } else { 0.0 };
                    f.request_unavailable_503 = if too_many { 0.0 } else { 1.0 };
                }),
                _ => self.ts.update_faults(|f| {
                    f.request_rejected_429 = if too_many { 1.0 } else { 0.0 };
                    f.request_unavailable_503 = if too_many { 0.0 } else { 1.0 };
                }),
            },
            Fault::Stalled(link) => {
                let delay = Duration::from_millis(2500);
                match link {
                    Link::Elasticsearch => self.es.update_faults(|f| f.delay = delay),
                    _ => self.ts.update_faults(|f| f.delay = delay),
                }
            }
            Fault::DiskFull => self.disk.as_ref().unwrap().fill(),
        }
    }

    fn end(&mut self, fault: Fault) {
        match fault {
            Fault::Network(link, _) => self.proxy(link).set(Mode::Pass),
            Fault::Refusing(Link::Elasticsearch, _) | Fault::Stalled(Link::Elasticsearch) => {
                self.es.update_faults(|f| *f = Default::default())
            }
            Fault::Refusing(_, _) | Fault::Stalled(_) => {
                self.ts.update_faults(|f| *f = Default::default())
            }
            Fault::DiskFull => self.disk.as_ref().unwrap().free(),
            _ => return,
        }
        self.note(format!("ended: {fault:?}"));
    }

    /// A backfill of the table into a random sink, through the API.
    async fn backfill(&mut self) {
        let sink = ["embedded", "es", "ts"][self.rng.random_range(0..3)];
        let Ok(address) = std::fs::read_to_string(self.db.data_dir().join("api.addr")) else {
            return;
        };
        let answer = reqwest::Client::new()
            .post(format!(
                "http://{}/api/sinks/{sink}/backfills",
                address.trim()
            ))
            .json(&serde_json::json!({ "table": "public.chaos" }))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        if let Ok(answer) = answer {
            let status = answer.status();
            self.note(format!("backfill into {sink}: {status}"));
        }
    }

    /// Waits until every sink committed what the source holds and no
    /// backfill runs.
    async fn settle(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            self.assert_running();
            // A connection of its own: a restart broke the test's.
            let target = match self.cluster.connect(&self.db.name).await {
                Ok(client) => match client
                    .query_one("SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint", &[])
                    .await
                {
                    Ok(row) => row.get::<_, i64>(0) as u64,
                    Err(_) => u64::MAX,
                },
                Err(_) => u64::MAX,
            };
            let state = self.api_state().await;
            if let Some((committed, backfilling)) = state {
                if committed >= target && !backfilling {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "sluice did not catch up: the least committed position and a backfill running {state:?}, \
                 the source at {target}; faults:\n{}\nlog:\n{}",
                self.log.join("\n"),
                tail(&self.sluice.as_ref().unwrap().log_text(), 60)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The least committed position over the sinks, and whether a backfill
    /// is active.
    async fn api_state(&self) -> Option<(u64, bool)> {
        let address = std::fs::read_to_string(self.db.data_dir().join("api.addr")).ok()?;
        let http = reqwest::Client::new();
        let sinks: Value = http
            .get(format!("http://{}/api/sinks", address.trim()))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let committed = sinks
            .as_array()?
            .iter()
            .map(|s| s["committed_lsn"].as_str().and_then(parse_lsn).unwrap_or(0))
            .min()?;
        let backfilling = sinks.as_array()?.iter().any(|s| {
            s["active_backfills"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
        });
        Some((committed, backfilling))
    }
}

fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Chaos {
    /// A failed run keeps every log sluice wrote (one a start, oldest
    /// first), with the faults, where the run's temporary directory does
    /// not take them away.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let kept = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("chaos-{}.log", self.seed));
        let mut logs: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(self.db.dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().contains(".log."))
            .filter_map(|entry| Some((entry.metadata().ok()?.modified().ok()?, entry.path())))
            .collect();
        logs.sort();
        let mut text = format!("faults:\n{}\n", self.log.join("\n"));
        for (_, log) in logs {
            text += &format!("\n==== {} ====\n", log.display());
            text += &std::fs::read_to_string(&log).unwrap_or_default();
        }
        if std::fs::write(&kept, text).is_ok() {
            eprintln!("sluice's logs of this run: {}", kept.display());
        }
    }
}

/// `cycles` of faults held about `fault_time` each, `connections` writers
/// changing about `rate` rows a second, and a backfill started in a cycle
/// with `backfills` odds.
async fn run(cycles: usize, fault_time: Duration, connections: usize, backfills: f64, rate: f64) {
    let seed = seed();
    let mut chaos = Chaos::new(seed).await;
    let url = chaos.db.url.clone();
    let writes = workload::Workload::start(&url, seed, connections, true, rate);
    let started = Instant::now();
    for cycle in 1..=cycles {
        chaos.note(format!("cycle {cycle} of {cycles}"));
        let mut faults = vec![chaos.draw()];
        if chaos.rng.random_bool(0.3) {
            faults.push(chaos.draw());
        }
        for &fault in &faults {
            chaos.begin(fault).await;
        }
        if chaos.rng.random_bool(backfills) {
            chaos.backfill().await;
        }
        let hold = fault_time.mul_f64(chaos.rng.random_range(0.5..1.5));
        let until = Instant::now() + hold;
        while Instant::now() < until {
            chaos.assert_running();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for &fault in &faults {
            chaos.end(fault);
        }
        // Some time without faults, for the pipeline to stream again.
        tokio::time::sleep(fault_time / 2).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let (changes, failed, truncates) = (
        writes.changes.load(Ordering::Relaxed),
        writes.failed.load(Ordering::Relaxed),
        writes.truncates.load(Ordering::Relaxed),
    );
    writes.finish().await;
    chaos.note(format!(
        "writes stopped: {changes} rows changed in {seconds:.0} s ({:.0}/s), {truncates} truncates, {failed} transactions failed",
        changes as f64 / seconds
    ));
    chaos.settle().await;
    chaos.note("caught up; verifying".into());
    let config = chaos.config.to_str().unwrap().to_owned();
    let (code, out, err) = common::cli(&["verify", "--config", &config, "--json"]).await;
    let reports: Vec<Value> = serde_json::Deserializer::from_str(&out)
        .into_iter::<Value>()
        .filter_map(Result::ok)
        .collect();
    let mut differences = Vec::new();
    for report in &reports {
        for table in report["tables"].as_array().into_iter().flatten() {
            let line = format!(
                "{}: {} rows, {} documents, missing {}, extra {}, stale {}",
                report["sink"],
                table["rows"],
                table["documents"],
                table["missing"]["count"],
                table["extra"]["count"],
                table["stale"]["count"]
            );
            chaos.note(line.clone());
            if code != 0 {
                differences.push(format!(
                    "{line}\n  {}",
                    serde_json::to_string(table).unwrap()
                ));
            }
        }
    }
    assert_eq!(
        code,
        0,
        "seed {seed}: the indexes differ from the table:\n{}\n{err}\nfaults:\n{}\nlog:\n{}",
        differences.join("\n"),
        chaos.log.join("\n"),
        tail(&chaos.sluice.as_ref().unwrap().log_text(), 80)
    );
    assert_eq!(reports.len(), 3, "a report per sink: {out}");
    chaos.assert_running();
    println!(
        "seed {seed}: every index equals its table after {cycles} cycles; faults:\n{}",
        chaos.log.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn indexes_equal_the_table_after_a_few_cycles_of_faults() {
    run(4, Duration::from_secs(3), 2, 0.5, 3000.0).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "long: SLUICE_CHAOS_CYCLES=50 cargo test --release --test chaos -- --ignored --nocapture"]
// SLUICE_CHAOS_RATE sets the rows changed a second (3,000 by default).
async fn indexes_equal_the_table_after_many_cycles_of_faults() {
    let cycles = std::env::var("SLUICE_CHAOS_CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(50);
    let rate = std::env::var("SLUICE_CHAOS_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3000.0);
    run(cycles, Duration::from_secs(8), 3, 1.0, rate).await;
}
