//! One run: sluice started on a configuration the harness writes, the load
//! put on, and every committed write waited for at the index.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::engine::{self, Engine};
use crate::process::{self, Sluice};
use crate::report::{BackfillFigures, DirectFigures, DrainFigures, Percentiles, Report};
use crate::stages;
use crate::tracker::Tracker;
use crate::workload::{self, Load, Scenario, Tables};
use crate::{connect, embedded, endpoint, toml_string, Args, Target};

/// The slot `pg_recvlogical` reads the backlog from.
pub fn raw_slot(schema: &str) -> String {
    format!("{schema}_raw")
}

/// How long a backfill may take before the run gives up on it.
const BACKFILL_TIMEOUT: Duration = Duration::from_secs(30 * 60);

pub async fn measure(
    args: &Args,
    binary: &Path,
    url: &str,
    bin_dir: Option<&Path>,
    admin: &Client,
    tables: &Tables,
) -> anyhow::Result<Report> {
    let engine = match (args.sink.engine(), &args.engine_url) {
        (Some(kind), Some(url)) => Some(Arc::new(Engine::new(
            kind,
            url,
            args.engine_api_key_env.clone(),
        )?)),
        _ => None,
    };
    // The engine's indexes, table by table, named after the schema.
    let indexes: Vec<String> = tables
        .names
        .iter()
        .map(|name| format!("{}_{name}", tables.schema))
        .collect();
    let at = Far {
        engine: engine.clone(),
        indexes: indexes.clone(),
    };
    let outcome = measure_at(args, binary, url, bin_dir, admin, tables, at).await;
    // Whatever happened, the engine is left as it was.
    if let Some(engine) = engine {
        for index in indexes.iter().chain([&direct_index(&tables.schema)]) {
            engine.drop_index(index).await;
        }
    }
    outcome
}

/// A real engine the run writes into, and its indexes table by table.
struct Far {
    engine: Option<Arc<Engine>>,
    indexes: Vec<String>,
}

/// The index the direct load goes into.
fn direct_index(schema: &str) -> String {
    format!("{schema}_direct")
}

async fn measure_at(
    args: &Args,
    binary: &Path,
    url: &str,
    bin_dir: Option<&Path>,
    admin: &Client,
    tables: &Tables,
    far: Far,
) -> anyhow::Result<Report> {
    let Far { engine, indexes } = far;
    let scenario = args.scenario;
    let schema = tables.schema.as_str();
    let keys = if scenario.loads_rows() {
        args.keys.max(1)
    } else {
        0
    };
    let row_bytes = args
        .row_bytes
        .unwrap_or_else(|| scenario.default_row_bytes());
    let rows_per_txn = args
        .rows_per_txn
        .unwrap_or_else(|| scenario.default_rows_per_txn());
    let body = workload::body(row_bytes, args.seed);
    workload::load_rows(admin, tables, keys, &body).await?;
    let tracker = Arc::new(Tracker::new());
    std::fs::create_dir_all(&args.out)?;
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    let watching = Arc::new(AtomicBool::new(false));
    let mut index_watches = Vec::new();
    let mut sink = match (args.sink, &engine) {
        (Target::Bulk, _) => {
            let address = endpoint::serve(tracker.clone()).await?;
            format!("name = \"bulk\"\ntype = \"elasticsearch\"\nurl = \"http://{address}\"")
        }
        (Target::Embedded, _) => {
            for name in &tables.names {
                let index = sluice::sink::embedded::index_dir(&data_dir, name);
                let (tracker, stop) = (tracker.clone(), watching.clone());
                index_watches.push(std::thread::spawn(move || {
                    embedded::watch(index, tracker, stop)
                }));
            }
            "name = \"search\"\ntype = \"embedded\"".to_owned()
        }
        (_, Some(engine)) => engine.sink_config(),
        (_, None) => anyhow::bail!("--sink {} needs --engine-url", args.sink.name()),
    };
    for option in &args.sink_options {
        sink.push('\n');
        sink.push_str(option);
    }
    let table_entries: String = tables
        .qualified()
        .zip(&indexes)
        .map(|(table, index)| {
            let index = match engine {
                Some(_) => format!("index = {}\n", toml_string(index)),
                None => String::new(),
            };
            format!("[[tables]]\nname = {}\n{index}\n", toml_string(&table))
        })
        .collect();
    // sluice's metrics, for the breakdown by stage.
    let metrics = {
        let free = std::net::TcpListener::bind("127.0.0.1:0")?;
        free.local_addr()?.to_string()
    };
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\ndatabase_url = {url}\nslot = \"{schema}\"\npublication = \"{schema}\"\n\n\
             [pipeline]\ndata_dir = {data}\nmetrics_listen = \"{metrics}\"\n\n\
             [backfill]\n{backfill}\n\n\
             [api]\nlisten = \"127.0.0.1:0\"\n\n\
             {table_entries}\
             [[sinks]]\n{sink}\n",
            url = toml_string(url),
            data = toml_string(&data_dir.to_string_lossy()),
            backfill = args.backfill_options.join("\n"),
        ),
    )?;
    let log = args.out.join("sluice.log");
    let _ = std::fs::remove_file(&log);
    let mut sluice = Sluice::start(binary, &config, &log)?;
    wait_streaming(admin, schema, &mut sluice).await?;
    if scenario != Scenario::Backfill {
        let at = engine
            .as_deref()
            .map(|e| (e, indexes[tables.of(0)].as_str()));
        wait_loaded(admin, tables, &tracker, keys, &mut sluice, at, &data_dir).await?;
    }
    let engine_watch = engine.clone().map(|engine| {
        let of = tables.clone();
        tokio::spawn(engine.watch(
            indexes.clone(),
            move |id| of.of(id),
            tracker.clone(),
            watching.clone(),
        ))
    });
    let mut clients = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        clients.push(connect(url).await?);
    }
    let load = Load {
        scenario,
        rate: args.rate,
        duration: Duration::from_secs_f64(args.duration),
        rows_per_txn,
        keys,
        seed: args.seed,
        paced: scenario != Scenario::Backlog,
        deletes: !args.sink.searched(),
    };

    let mut backfill = None;
    let mut drain = None;
    let (kept, watched, cpu, wall) = if scenario == Scenario::Backlog {
        anyhow::ensure!(
            sluice.stop()?.success(),
            "sluice did not stop cleanly before the backlog; see {}",
            log.display()
        );
        let raw = raw_slot(schema);
        admin
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&raw],
            )
            .await?;
        tracker.restart_clock();
        let kept = workload::run(load, tables.clone(), body, clients, tracker.clone()).await?;
        let end: String = admin
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?
            .get(0);
        println!(
            "backlog of {} changes committed; pg_recvlogical reading it ...",
            kept.changes
        );
        let program = process::pg_program("pg_recvlogical", bin_dir);
        let raw_seconds = read_raw(
            &program,
            url,
            &raw,
            schema,
            &end,
            &args.out.join("pg_recvlogical.log"),
        )
        .await?;
        admin
            .execute("SELECT pg_drop_replication_slot($1)", &[&raw])
            .await?;
        println!("sluice draining it from a standing start ...");
        sluice = Sluice::start(binary, &config, &log)?;
        let started = Instant::now();
        let watcher = Watcher::start(url, schema, sluice.pid()).await?;
        wait_delivered(&tracker, &mut sluice, args.drain_timeout).await?;
        let sluice_seconds = started.elapsed().as_secs_f64();
        let cpu = process::cpu_time(sluice.pid()).unwrap_or_default();
        drain = Some(DrainFigures::new(kept.changes, raw_seconds, sluice_seconds));
        (kept, watcher.finish().await?, cpu, started.elapsed())
    } else {
        let watcher = Watcher::start(url, schema, sluice.pid()).await?;
        let cpu_before = process::cpu_time(sluice.pid()).unwrap_or_default();
        let started = Instant::now();
        tracker.restart_clock();
        let running = tokio::spawn(workload::run(
            load,
            tables.clone(),
            body,
            clients,
            tracker.clone(),
        ));
        if scenario == Scenario::Backfill {
            backfill = Some(wait_backfill(&data_dir, &mut sluice).await?);
        }
        let kept = running.await??;
        wait_delivered(&tracker, &mut sluice, args.drain_timeout).await?;
        let cpu = process::cpu_time(sluice.pid()).unwrap_or_default() - cpu_before;
        (kept, watcher.finish().await?, cpu, started.elapsed())
    };
    watching.store(true, Ordering::Relaxed);
    for index_watch in index_watches {
        index_watch
            .join()
            .map_err(|_| anyhow::anyhow!("the index watcher panicked"))??;
    }
    if let Some(watch) = engine_watch {
        watch.await??;
    }
    let stages = stages::read(&metrics).await.unwrap_or_else(|e| {
        eprintln!("could not read sluice's metrics for the breakdown by stage: {e}");
        Vec::new()
    });
    let status = sluice.stop()?;
    anyhow::ensure!(status.success(), "sluice exited with {status} on SIGTERM");
    let direct_load = match (&engine, &backfill) {
        (Some(engine), Some(backfill)) if args.sink == Target::Meilisearch => {
            let docs = documents(admin, tables).await?;
            println!(
                "loading the same {} documents straight into Meilisearch ...",
                docs.len()
            );
            let seconds = engine.direct_load(&direct_index(schema), &docs).await?;
            Some(DirectFigures::new(
                docs.len() as u64,
                engine::DIRECT_TASK_DOCS,
                seconds,
                backfill,
            ))
        }
        _ => None,
    };
    let (latency, windows) = tracker.take();
    let (max_lag, peak_rss) = watched;
    Ok(Report {
        scenario,
        sink: match (args.sink, &args.engine_url) {
            (Target::Bulk, _) => "bulk endpoint (answers at once)".to_owned(),
            (Target::Embedded, _) => "embedded index (found by a search)".to_owned(),
            (engine, url) => format!(
                "{} at {} (found by a search by id)",
                engine.name(),
                url.as_deref().unwrap_or_default()
            ),
        },
        target_rate: args.rate,
        rows_per_txn,
        row_bytes,
        connections: args.connections,
        tables: tables.names.len(),
        duration_s: args.duration,
        achieved_rate: kept.changes as f64 / kept.seconds.max(1e-9),
        schedule: kept,
        latency_ms: Percentiles::of(&latency),
        not_arrived: tracker.outstanding(),
        max_replication_lag_bytes: max_lag,
        sluice_peak_rss_mb: peak_rss as f64 / (1024.0 * 1024.0),
        sluice_cpu_percent: 100.0 * cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9),
        backfill,
        drain,
        direct_load,
        stages,
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

/// Waits until the rows loaded before the run and one more, committed after
/// sluice streams, reached the index: then the run starts. In an engine
/// (`at`, with the index of row 0), the initial backfill completed and a
/// search finds row 0.
async fn wait_loaded(
    admin: &Client,
    tables: &Tables,
    tracker: &Tracker,
    keys: i64,
    sluice: &mut Sluice,
    at: Option<(&Engine, &str)>,
    data_dir: &Path,
) -> anyhow::Result<()> {
    // Row 0 carries no write of the run.
    let table = format!("{}.{}", tables.schema, tables.names[tables.of(0)]);
    admin
        .execute(
            &format!("INSERT INTO {table} (id, seq, body) VALUES (0, 0, '')"),
            &[],
        )
        .await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    if let Some((engine, index)) = at {
        if keys > 0 {
            wait_backfill(data_dir, sluice).await?;
        }
        while !engine.has(index, 0, 0).await? {
            sluice.check_running()?;
            anyhow::ensure!(
                Instant::now() < deadline,
                "row 0, written after the rows loaded before the run, was not found in {index} within 5 minutes; sluice's log ends:\n{}",
                sluice.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        return Ok(());
    }
    let ready = keys as u64 + 1;
    while tracker.untracked() < ready {
        sluice.check_running()?;
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of the {ready} rows loaded before the run reached the index within 5 minutes; sluice's log ends:\n{}",
            tracker.untracked(),
            sluice.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Waits until every committed write arrived, or `timeout` seconds passed.
async fn wait_delivered(
    tracker: &Tracker,
    sluice: &mut Sluice,
    timeout: f64,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs_f64(timeout);
    while tracker.outstanding() > 0 && Instant::now() < deadline {
        sluice.check_running()?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Follows the initial backfill through sluice's API until it completed.
async fn wait_backfill(data_dir: &Path, sluice: &mut Sluice) -> anyhow::Result<BackfillFigures> {
    #[derive(serde::Deserialize)]
    struct View {
        state: String,
        #[serde(default)]
        initial: bool,
        #[serde(default)]
        reason: Option<String>,
        rows_done: u64,
        created_at_ms: u64,
        #[serde(default)]
        finished_at_ms: Option<u64>,
    }
    let deadline = Instant::now() + BACKFILL_TIMEOUT;
    let address_file = data_dir.join("api.addr");
    let http = reqwest::Client::new();
    loop {
        sluice.check_running()?;
        anyhow::ensure!(
            Instant::now() < deadline,
            "the initial backfill did not complete within {} minutes",
            BACKFILL_TIMEOUT.as_secs() / 60
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Ok(address) = std::fs::read_to_string(&address_file) else {
            continue;
        };
        let url = format!("http://{}/api/backfills", address.trim());
        let Ok(answer) = http.get(&url).send().await else {
            continue;
        };
        let views: Vec<View> = answer.error_for_status()?.json().await?;
        let Some(view) = views.into_iter().find(|v| v.initial) else {
            continue;
        };
        match view.state.as_str() {
            "completed" => {
                let finished = view.finished_at_ms.unwrap_or(view.created_at_ms);
                return Ok(BackfillFigures::new(
                    view.rows_done,
                    finished.saturating_sub(view.created_at_ms) as f64 / 1000.0,
                ));
            }
            "failed" | "cancelled" => anyhow::bail!(
                "the initial backfill {}: {}",
                view.state,
                view.reason.unwrap_or_default()
            ),
            _ => {}
        }
    }
}

/// Reads the slot `slot` up to `end` with `pg_recvlogical`: the seconds it
/// took.
async fn read_raw(
    program: &Path,
    url: &str,
    slot: &str,
    publication: &str,
    end: &str,
    log: &Path,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let output = tokio::process::Command::new(program)
        .args(["-d", url, "--slot", slot, "--start", "--endpos", end])
        .args(["-o", "proto_version=1", "-o"])
        .arg(format!("publication_names={publication}"))
        .args(["--plugin=pgoutput", "-f", "/dev/null", "--no-loop"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .status()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot run {} (install Postgres's client programs): {e}",
                program.display()
            )
        })?;
    anyhow::ensure!(
        output.success(),
        "pg_recvlogical failed ({output}): see {}",
        log.display()
    );
    Ok(started.elapsed().as_secs_f64())
}

/// Samples the slot's unconfirmed WAL and sluice's memory until finished.
struct Watcher {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<anyhow::Result<(i64, u64)>>,
}

impl Watcher {
    async fn start(url: &str, slot: &str, pid: u32) -> anyhow::Result<Watcher> {
        let client = connect(url).await?;
        let lag = client
            .prepare(
                "SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::int8
                 FROM pg_replication_slots WHERE slot_name = $1",
            )
            .await?;
        let stop = Arc::new(AtomicBool::new(false));
        let (slot, stopped) = (slot.to_owned(), stop.clone());
        let task = tokio::spawn(async move {
            let (mut max_lag, mut peak_rss) = (0i64, 0u64);
            while !stopped.load(Ordering::Relaxed) {
                if let Some(row) = client.query_opt(&lag, &[&slot]).await? {
                    max_lag = max_lag.max(row.get(0));
                }
                peak_rss = peak_rss.max(process::rss_bytes(pid).unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok((max_lag, peak_rss))
        });
        Ok(Watcher { stop, task })
    }

    /// The most unconfirmed WAL in bytes, and the peak RSS in bytes.
    async fn finish(self) -> anyhow::Result<(i64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await?
    }
}

/// Every row of `tables` as the JSON document sluice makes of it.
async fn documents(admin: &Client, tables: &Tables) -> anyhow::Result<Vec<String>> {
    let mut docs = Vec::new();
    for table in tables.qualified() {
        let rows = admin
            .query(&format!("SELECT row_to_json(t)::text FROM {table} t"), &[])
            .await?;
        docs.extend(rows.iter().map(|row| row.get::<_, String>(0)));
    }
    Ok(docs)
}
