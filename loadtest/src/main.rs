//! `sluice-loadtest`: puts a load on Postgres and measures, by itself, how
//! long each committed change takes to reach the index through sluice.
//!
//! The harness starts a throwaway Postgres (or uses `--database-url`, in a
//! schema of its own that it drops afterwards), serves an
//! Elasticsearch-compatible bulk endpoint that answers at once and notes
//! when each document arrives, runs `sluice run` between the two with
//! default settings, and writes transactions on a fixed schedule. The
//! latency of a change runs from the moment its COMMIT returned to the
//! client to the moment its document arrived at the endpoint.

mod embedded;
mod endpoint;
mod process;
mod report;
mod tracker;
mod workload;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio_postgres::{Client, NoTls};

use process::Sluice;
use report::{Percentiles, Report};
use tracker::Tracker;
use workload::{Load, Scenario};

#[derive(Parser, Debug)]
#[command(
    name = "sluice-loadtest",
    version,
    about = "Measures how long a committed change takes to reach the index through sluice, under a load you choose"
)]
struct Args {
    /// What the transactions do: `steady` inserts, `updates` of hot keys
    /// (Zipf), or `mixed` inserts, updates and deletes.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Where sluice writes: `bulk`, an Elasticsearch-compatible endpoint the
    /// harness serves, answering at once (latency to the document's
    /// arrival); or `embedded`, sluice's own index (latency until a search
    /// from another process finds the document; `steady` and `updates`).
    #[arg(long, value_enum, default_value_t = Target::Bulk)]
    sink: Target,
    /// Changes per second to commit.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds of load.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Rows each transaction changes.
    #[arg(long, default_value_t = 1)]
    rows_per_txn: usize,
    /// Bytes of text in each row.
    #[arg(long, default_value_t = 200)]
    row_bytes: usize,
    /// Database connections writing at once.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Rows loaded before the run, for `updates` and `mixed`.
    #[arg(long, default_value_t = 10_000)]
    keys: i64,
    /// The database to load (a schema of the harness's own is created and
    /// dropped; the role needs CREATE and REPLICATION). Default: a
    /// throwaway Postgres the harness starts.
    #[arg(long)]
    database_url: Option<String>,
    /// The sluice binary. Default: the one beside this program, then `sluice`
    /// on the PATH.
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// Where the JSON report and sluice's log go.
    #[arg(long, default_value = "loadtest-results")]
    out: PathBuf,
    /// Seconds to wait, after the load, for the last documents.
    #[arg(long, default_value_t = 60.0)]
    drain_timeout: f64,
    /// Seed of the random choices (keys, operations).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Where sluice writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Target {
    Bulk,
    Embedded,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("sluice-loadtest: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.rate > 0.0, "--rate must be above 0");
    anyhow::ensure!(args.duration > 0.0, "--duration must be above 0");
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(args.rows_per_txn > 0, "--rows-per-txn must be at least 1");
    anyhow::ensure!(
        !(args.sink == Target::Embedded && args.scenario == Scenario::Mixed),
        "--sink embedded measures when documents become searchable, which deletes are not: use steady or updates"
    );
    let binary = process::find_sluice(args.sluice.as_deref())?;
    // A throwaway Postgres lives as long as this value.
    let (url, _local) = match &args.database_url {
        Some(url) => (url.clone(), None),
        None => {
            // Commits wait for their WAL flush, as on a production server:
            // the walsender sends only flushed WAL.
            let options = sluice::local_pg::LocalPostgresOptions {
                extra_settings: vec![("synchronous_commit".into(), "on".into())],
                ..Default::default()
            };
            let local =
                tokio::task::spawn_blocking(|| sluice::local_pg::LocalPostgres::start(options))
                    .await?
                    .map_err(|e| anyhow::anyhow!("cannot start a throwaway Postgres: {e}"))?;
            (local.url("postgres"), Some(local))
        }
    };
    let admin = connect(&url).await?;
    let schema = format!(
        "sluice_loadtest_{}_{}",
        std::process::id(),
        rand::random::<u16>()
    );
    admin
        .batch_execute(&format!(
            "CREATE SCHEMA {schema}; {}",
            workload::create_table(&schema)
        ))
        .await?;
    let outcome = measure(&args, &binary, &url, &admin, &schema).await;
    // Whatever happened, the database is left as it was.
    let cleaned = admin
        .batch_execute(&format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
             WHERE slot_name = '{schema}' AND NOT active;
             DROP PUBLICATION IF EXISTS {schema};
             DROP SCHEMA {schema} CASCADE;"
        ))
        .await;
    let report = outcome?;
    cleaned.map_err(|e| anyhow::anyhow!("cleaning up schema {schema} failed: {e}"))?;
    report.print();
    let path = args.out.join(format!(
        "{}.json",
        serde_json::to_value(args.scenario)?
            .as_str()
            .unwrap_or("run")
    ));
    report.write(&path)?;
    println!("report: {}", path.display());
    Ok(())
}

async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to the database: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A TOML string.
fn toml_string(text: &str) -> String {
    serde_json::to_string(text).expect("strings serialize")
}

async fn measure(
    args: &Args,
    binary: &std::path::Path,
    url: &str,
    admin: &Client,
    schema: &str,
) -> anyhow::Result<Report> {
    let keys = if args.scenario.loads_rows() {
        args.keys.max(1)
    } else {
        0
    };
    workload::load_rows(admin, schema, keys, args.row_bytes).await?;
    let tracker = Arc::new(Tracker::new());
    std::fs::create_dir_all(&args.out)?;
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    let watching = Arc::new(AtomicBool::new(false));
    let (sink, index_watch) = match args.sink {
        Target::Bulk => {
            let address = endpoint::serve(tracker.clone()).await?;
            (
                format!("name = \"bulk\"\ntype = \"elasticsearch\"\nurl = \"http://{address}\""),
                None,
            )
        }
        Target::Embedded => {
            let index = sluice::sink::embedded::index_dir(&data_dir, "items");
            let (tracker, stop) = (tracker.clone(), watching.clone());
            (
                "name = \"search\"\ntype = \"embedded\"".to_owned(),
                Some(std::thread::spawn(move || {
                    embedded::watch(index, tracker, stop)
                })),
            )
        }
    };
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\ndatabase_url = {url}\nslot = \"{schema}\"\npublication = \"{schema}\"\n\n\
             [pipeline]\ndata_dir = {data}\n\n\
             [[tables]]\nname = \"{schema}.items\"\n\n\
             [[sinks]]\n{sink}\n",
            url = toml_string(url),
            data = toml_string(&data_dir.to_string_lossy()),
        ),
    )?;
    let mut sluice = Sluice::start(binary, &config, &args.out.join("sluice.log"))?;
    wait_streaming(admin, schema, &mut sluice).await?;
    // A row of no write of the run: once it arrived, with the rows loaded
    // before, the run starts.
    admin
        .execute(
            &format!("INSERT INTO {schema}.items (id, seq, body) VALUES (0, 0, '')"),
            &[],
        )
        .await?;
    let ready = keys as u64 + 1;
    let deadline = Instant::now() + Duration::from_secs(300);
    while tracker.untracked() < ready {
        sluice.check_running()?;
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of the {ready} rows loaded before the run reached the endpoint within 5 minutes; sluice's log ends:\n{}",
            tracker.untracked(),
            sluice.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(watch(
        connect(url).await?,
        schema.to_owned(),
        sluice.pid(),
        stop.clone(),
    ));
    let cpu_before = process::cpu_time(sluice.pid()).unwrap_or_default();
    let mut clients = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        clients.push(connect(url).await?);
    }
    let load = Load {
        scenario: args.scenario,
        rate: args.rate,
        duration: Duration::from_secs_f64(args.duration),
        rows_per_txn: args.rows_per_txn,
        row_bytes: args.row_bytes,
        keys,
        seed: args.seed,
    };
    let started = Instant::now();
    tracker.restart_clock();
    let kept = workload::run(load, schema, clients, tracker.clone()).await?;
    let deadline = Instant::now() + Duration::from_secs_f64(args.drain_timeout);
    while tracker.outstanding() > 0 && Instant::now() < deadline {
        sluice.check_running()?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let wall = started.elapsed();
    let cpu = process::cpu_time(sluice.pid()).unwrap_or_default() - cpu_before;
    stop.store(true, Ordering::Relaxed);
    let (max_lag, peak_rss) = watcher.await??;
    watching.store(true, Ordering::Relaxed);
    if let Some(index_watch) = index_watch {
        index_watch
            .join()
            .map_err(|_| anyhow::anyhow!("the index watcher panicked"))??;
    }
    let status = sluice.stop()?;
    anyhow::ensure!(status.success(), "sluice exited with {status} on SIGTERM");
    let (latency, windows) = tracker.take();
    Ok(Report {
        scenario: args.scenario,
        sink: match args.sink {
            Target::Bulk => "bulk endpoint (answers at once)",
            Target::Embedded => "embedded index (found by a search)",
        }
        .to_owned(),
        target_rate: args.rate,
        rows_per_txn: args.rows_per_txn,
        row_bytes: args.row_bytes,
        connections: args.connections,
        duration_s: args.duration,
        achieved_rate: kept.changes as f64 / kept.seconds.max(1e-9),
        schedule: kept,
        latency_ms: Percentiles::of(&latency),
        not_arrived: tracker.outstanding(),
        max_replication_lag_bytes: max_lag,
        sluice_peak_rss_mb: peak_rss as f64 / (1024.0 * 1024.0),
        sluice_cpu_percent: 100.0 * cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9),
        seconds: Report::seconds(windows),
    })
}

/// Waits until sluice streams from its slot.
async fn wait_streaming(admin: &Client, slot: &str, sluice: &mut Sluice) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        sluice.check_running()?;
        let active = admin
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await?
            .is_some_and(|row| row.get::<_, bool>(0));
        if active {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "sluice did not start streaming within a minute; its log ends:\n{}",
            sluice.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Samples the slot's unconfirmed WAL and sluice's memory until `stop`:
/// the most of each.
async fn watch(
    client: Client,
    slot: String,
    pid: u32,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(i64, u64)> {
    let lag = client
        .prepare(
            "SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::int8
             FROM pg_replication_slots WHERE slot_name = $1",
        )
        .await?;
    let (mut max_lag, mut peak_rss) = (0i64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        if let Some(row) = client.query_opt(&lag, &[&slot]).await? {
            max_lag = max_lag.max(row.get(0));
        }
        peak_rss = peak_rss.max(process::rss_bytes(pid).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((max_lag, peak_rss))
}
