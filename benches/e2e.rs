//! End-to-end benchmark: the `sluice` binary draining a replication backlog, as a user
//! runs it, against `pg_recvlogical` draining the same backlog as the baseline.
//!
//! ```text
//! cargo bench --bench e2e                                    # 1,000,000 rows, 10,000 per transaction
//! cargo bench --bench e2e -- --rows 100000 --skip-embedded
//! cargo bench --bench e2e -- --rows 1000000 --txn-rows 0 --only-rss   # one huge transaction
//! cargo bench --bench e2e -- --only-rss --skip-embedded --skip-elasticsearch --dead-sink
//! cargo bench --bench e2e -- --skip-embedded --skip-elasticsearch --lua-transform
//! ```
//!
//! A throwaway Postgres gets `public.bench`, a publication and one logical slot per
//! consumer, all before the backlog is loaded, so every consumer decodes the same WAL.
//! Each sluice run is timed from the spawn of `sluice run --config FILE` until the
//! slot's `confirmed_flush_lsn` reaches the WAL position recorded after the load, with
//! its peak RSS sampled from `/proc/PID/status`; it must then exit 0 on SIGTERM.
//!
//! `--dead-sink` adds two runs timed by the null sink's committed position (read
//! from the metrics endpoint, as the slot cannot move while a sink is down): the
//! null sink alone, and the null sink next to an Elasticsearch sink whose server
//! answers 503 to everything.
//!
//! `--lua-transform` adds a run into the null sink with a Lua transform
//! function making each document (`LUA_TRANSFORM`), against the run without.
//!
//! `--metrics` adds a run into the null sink with the metrics endpoint on and
//! scraped every second, as Prometheus does, against the run without.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sluice::local_pg::{LocalPostgres, LocalPostgresOptions};

#[path = "../tests/fakes/mod.rs"]
mod fakes;
use tokio_postgres::Client;

mod common;
use common::{proc_status_kb, tail, Guard, CREATE_TABLE, INSERT_ROWS};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const DATABASE: &str = "bench";
const PUBLICATION: &str = "bench";
const SLOT_RECV: &str = "bench_recvlogical";
const SLOT_NULL: &str = "bench_sluice_null";
const SLOT_EMBEDDED: &str = "bench_sluice_embedded";
const SLOT_ES: &str = "bench_sluice_elasticsearch";
const SLOT_ALONE: &str = "bench_sluice_alone";
const SLOT_DEAD: &str = "bench_sluice_dead";
const SLOT_LUA: &str = "bench_sluice_lua";
const SLOT_METRICS: &str = "bench_sluice_metrics";

/// The table's transform function for `--lua-transform`: a document of the
/// row's six columns, renamed and computed.
const LUA_TRANSFORM: &str = r#"transform.function = "to_doc"

[functions.to_doc]
kind = "transform"
code = '''
function transform(action, record, changes, metadata)
  return {
    id = record.id,
    title = record.name,
    description = record.description,
    price_cents = math.floor(record.price * 100 + 0.5),
    active = record.active,
    updated_at = record.updated_at,
    source = metadata.table_name,
  }
end
'''
"#;
/// How often the slot position (and the child's RSS) is polled.
const POLL: Duration = Duration::from_millis(20);
/// A consumer that has not drained the backlog by then is reported as stuck.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

const USAGE: &str =
    "usage: cargo bench --bench e2e -- [--rows N] [--txn-rows N] [--skip-embedded] [--only-rss]
  --rows N         changes in the backlog (default 1000000)
  --txn-rows N     rows per committed transaction (default 10000; 0 = one transaction)
  --skip-embedded  skip the run with the embedded (tantivy) sink
  --skip-elasticsearch  skip the run into a local Elasticsearch-compatible server that accepts instantly
  --only-rss       skip the pg_recvlogical baseline: only the sluice runs and their memory
  --dead-sink      also time the null sink alone and next to a dead Elasticsearch sink
  --lua-transform  also time the null sink with a Lua transform function making each document
  --metrics        also time the null sink with the metrics endpoint on and scraped every second";

struct Options {
    rows: u64,
    txn_rows: u64,
    skip_embedded: bool,
    skip_elasticsearch: bool,
    only_rss: bool,
    dead_sink: bool,
    lua_transform: bool,
    metrics: bool,
}

impl Options {
    fn parse() -> Result<Options> {
        let mut options = Options {
            rows: 1_000_000,
            txn_rows: 10_000,
            skip_embedded: false,
            skip_elasticsearch: false,
            only_rss: false,
            dead_sink: false,
            lua_transform: false,
            metrics: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut number = |name: &str| common::number_arg(&mut args, name, USAGE);
            match arg.as_str() {
                "--rows" => options.rows = number("--rows")?,
                "--txn-rows" => options.txn_rows = number("--txn-rows")?,
                "--skip-embedded" => options.skip_embedded = true,
                "--skip-elasticsearch" => options.skip_elasticsearch = true,
                "--only-rss" => options.only_rss = true,
                "--dead-sink" => options.dead_sink = true,
                "--lua-transform" => options.lua_transform = true,
                "--metrics" => options.metrics = true,
                "--bench" => {} // added by `cargo bench`
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument `{other}`\n{USAGE}").into()),
            }
        }
        if options.rows == 0 {
            return Err("--rows must be at least 1".into());
        }
        Ok(options)
    }
}

/// When a sluice run is done.
#[derive(Clone, Copy)]
enum Done<'a> {
    /// The slot confirmed the whole backlog.
    Slot,
    /// The sink of this name committed the whole backlog, as its
    /// `sluice_sink_committed_lsn` on the metrics endpoint says.
    Sink(&'a str),
    /// As `Slot`, with the metrics endpoint on and scraped every second.
    SlotScraped,
}

/// What one sluice run measured.
struct SluiceRun {
    /// From the spawn until the backlog was done (see [`Done`]).
    seconds: f64,
    /// From the spawn until the slot first moved (startup, first batch, first commit).
    first_confirm: Option<f64>,
    peak_rss_kb: u64,
}

fn main() {
    if let Err(error) = Options::parse().and_then(|options| run(&options)) {
        eprintln!("\ne2e benchmark FAILED: {error}");
        std::process::exit(1);
    }
}

fn run(options: &Options) -> Result<()> {
    eprintln!("starting a throwaway Postgres ...");
    let cluster = LocalPostgres::start(LocalPostgresOptions {
        extra_settings: [("max_wal_size", "4GB"), ("checkpoint_timeout", "30min")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .to_vec(),
        ..Default::default()
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(bench(&cluster, options))
}

async fn bench(cluster: &LocalPostgres, options: &Options) -> Result<()> {
    cluster.create_database(DATABASE).await?;
    let url = cluster.url(DATABASE);
    let client = cluster.connect(DATABASE).await?;
    let work = tempfile::Builder::new().prefix("sluice-e2e-").tempdir()?;

    // Schema, publication and every slot before the backlog: all decode the same WAL.
    client.batch_execute(CREATE_TABLE).await?;
    client
        .batch_execute("CREATE PUBLICATION bench FOR TABLE public.bench")
        .await?;
    let mut slots = vec![SLOT_NULL];
    if !options.only_rss {
        slots.push(SLOT_RECV);
    }
    if !options.skip_embedded {
        slots.push(SLOT_EMBEDDED);
    }
    if !options.skip_elasticsearch {
        slots.push(SLOT_ES);
    }
    if options.dead_sink {
        slots.extend([SLOT_ALONE, SLOT_DEAD]);
    }
    if options.lua_transform {
        slots.push(SLOT_LUA);
    }
    if options.metrics {
        slots.push(SLOT_METRICS);
    }
    client
        .query(
            "SELECT pg_create_logical_replication_slot(s, 'pgoutput') FROM unnest($1::text[]) s",
            &[&slots],
        )
        .await?;

    let (target, target_text) = load_backlog(&client, options).await?;
    let row_bytes: f64 = client
        .query_one("SELECT avg(pg_column_size(t.*))::float8 FROM bench t", &[])
        .await?
        .get(0);
    eprintln!("backlog: {} rows up to LSN {target_text}", options.rows);

    let recv = if options.only_rss {
        None
    } else {
        eprintln!("pg_recvlogical draining its slot ...");
        Some(run_recvlogical(cluster, &url, &target_text, work.path()).await?)
    };
    eprintln!("sluice (null sink) draining its slot ...");
    let null_dir = work.path().join("null");
    let null_sink = sink_toml("null", "");
    let null = run_sluice(
        &client,
        &url,
        SLOT_NULL,
        &null_sink,
        &null_dir,
        target,
        Done::Slot,
    )
    .await?;
    let embedded = if options.skip_embedded {
        None
    } else {
        eprintln!("sluice (embedded sink) draining its slot ...");
        let dir = work.path().join("embedded");
        let sinks = sink_toml("embedded", "");
        let run = run_sluice(
            &client,
            &url,
            SLOT_EMBEDDED,
            &sinks,
            &dir,
            target,
            Done::Slot,
        )
        .await?;
        let indexed = count_documents(&dir.join("data"))?;
        if indexed != options.rows {
            return Err(
                format!("the index holds {indexed} documents, not {}", options.rows).into(),
            );
        }
        Some(run)
    };

    let elasticsearch = if options.skip_elasticsearch {
        None
    } else {
        eprintln!(
            "sluice (elasticsearch sink, local server accepting instantly) draining its slot ..."
        );
        let es = fakes::elasticsearch::FakeElasticsearch::start(
            fakes::elasticsearch::FakeOptions::bench(),
        )
        .await;
        let dir = work.path().join("elasticsearch");
        let sinks = sink_toml("elasticsearch", &format!("url = \"{}\"\n", es.url()));
        let run = run_sluice(&client, &url, SLOT_ES, &sinks, &dir, target, Done::Slot).await?;
        let indexed = es.doc_count("bench") as u64;
        if indexed != options.rows {
            return Err(
                format!("the server holds {indexed} documents, not {}", options.rows).into(),
            );
        }
        Some(run)
    };

    let dead_sink = if options.dead_sink {
        eprintln!(
            "sluice (null sink alone, timed by its committed position) draining its slot ..."
        );
        let dir = work.path().join("alone");
        let done = Done::Sink("null");
        let alone = run_sluice(&client, &url, SLOT_ALONE, &null_sink, &dir, target, done).await?;
        eprintln!("sluice (null sink next to a dead elasticsearch sink) draining its slot ...");
        let mut options = fakes::elasticsearch::FakeOptions::bench();
        options.faults.dead = true;
        let es = fakes::elasticsearch::FakeElasticsearch::start(options).await;
        let dir = work.path().join("dead");
        let sinks = format!(
            "{null_sink}\n{}",
            sink_toml("elasticsearch", &format!("url = \"{}\"\n", es.url()))
        );
        let with_dead = run_sluice(&client, &url, SLOT_DEAD, &sinks, &dir, target, done).await?;
        Some((alone, with_dead))
    } else {
        None
    };

    let lua = if options.lua_transform {
        eprintln!("sluice (null sink, Lua transform) draining its slot ...");
        let dir = work.path().join("lua");
        // The configuration's `[[tables]]` entry comes right before the
        // sinks: the transform's first line lands in it.
        let sinks = format!("{LUA_TRANSFORM}\n{null_sink}");
        Some(run_sluice(&client, &url, SLOT_LUA, &sinks, &dir, target, Done::Slot).await?)
    } else {
        None
    };

    let scraped = if options.metrics {
        eprintln!("sluice (null sink, metrics on and scraped) draining its slot ...");
        let dir = work.path().join("metrics");
        let done = Done::SlotScraped;
        Some(run_sluice(&client, &url, SLOT_METRICS, &null_sink, &dir, target, done).await?)
    } else {
        None
    };

    let txn = match options.txn_rows {
        0 => "one transaction".to_string(),
        n => format!("transactions of {n}"),
    };
    let rows = options.rows;
    println!("\n=== sluice e2e: {rows} changes in {txn}, {row_bytes:.0} bytes/row ===");
    println!(
        "consumer                 seconds     changes/s    peak RSS   first confirm   after it"
    );
    let rate = |seconds: f64| options.rows as f64 / seconds;
    if let Some(seconds) = recv {
        println!(
            "{:<22} {seconds:9.2} {:>13.0}",
            "pg_recvlogical",
            rate(seconds)
        );
    }
    let report = |name: &str, run: &SluiceRun| {
        let (first, after) = match run.first_confirm {
            Some(first) => (
                format!("{first:.2} s"),
                format!("{:.2} s", run.seconds - first),
            ),
            None => ("-".into(), "-".into()),
        };
        let rss = run.peak_rss_kb as f64 / 1024.0;
        let rate = rate(run.seconds);
        println!(
            "{name:<22} {:9.2} {rate:>13.0} {rss:>8.1} MB {first:>15} {after:>10}",
            run.seconds
        );
    };
    report("sluice (null sink)", &null);
    if let Some(run) = &embedded {
        report("sluice (embedded sink)", run);
    }
    if let Some(run) = &elasticsearch {
        report("sluice (elasticsearch)", run);
        let ratio = 100.0 * null.seconds / run.seconds;
        println!("sluice elasticsearch / null sink: {ratio:.1} % of the changes/s");
    }
    if let Some((alone, with_dead)) = &dead_sink {
        report("null alone (by commit)", alone);
        report("null + dead sink", with_dead);
        let ratio = 100.0 * alone.seconds / with_dead.seconds;
        println!("null sink next to a dead sink / alone: {ratio:.1} % of the changes/s");
    }
    if let Some(run) = &lua {
        report("null + Lua transform", run);
        let ratio = 100.0 * null.seconds / run.seconds;
        println!("null sink with a Lua transform / without: {ratio:.1} % of the changes/s");
    }
    if let Some(run) = &scraped {
        report("null + metrics scraped", run);
        let ratio = 100.0 * null.seconds / run.seconds;
        println!("null sink with metrics scraped / without: {ratio:.1} % of the changes/s");
    }
    if let Some(seconds) = recv {
        let ratio = 100.0 * seconds / null.seconds;
        println!("sluice null sink / pg_recvlogical: {ratio:.1} % of the changes/s");
    }
    if embedded.is_some() {
        println!(
            "embedded index: {} documents (sluice search --count '*')",
            options.rows
        );
    }
    Ok(())
}

/// Inserts the rows in transactions of `txn_rows`; returns the WAL position after them.
async fn load_backlog(client: &Client, options: &Options) -> Result<(i64, String)> {
    let started = Instant::now();
    // Synchronous commits: the WAL position read below covers every commit record.
    client.batch_execute("SET synchronous_commit = on").await?;
    let chunk = Some(options.txn_rows)
        .filter(|&n| n > 0)
        .unwrap_or(options.rows);
    let mut first = 1;
    while first <= options.rows {
        let last = (first + chunk - 1).min(options.rows);
        client
            .execute(INSERT_ROWS, &[&(first as i64), &(last as i64)])
            .await?;
        first = last + 1;
    }
    let row = client
        .query_one(
            "SELECT (l - '0/0')::int8, l::text FROM pg_current_wal_lsn() AS l",
            &[],
        )
        .await?;
    // No checkpoint in the middle of a measurement.
    client.batch_execute("CHECKPOINT").await?;
    eprintln!("loaded in {:.1} s", started.elapsed().as_secs_f64());
    Ok((row.get(0), row.get(1)))
}

/// Seconds `pg_recvlogical` takes to stream its slot up to `target`.
async fn run_recvlogical(
    cluster: &LocalPostgres,
    url: &str,
    target: &str,
    work: &Path,
) -> Result<f64> {
    let installed = cluster.bin_dir().join("pg_recvlogical");
    let program = Some(installed).filter(|p| p.exists());
    let program = program.unwrap_or_else(|| PathBuf::from("pg_recvlogical")); // from PATH
    let log = work.join("pg_recvlogical.log");
    let started = Instant::now();
    let child = Command::new(&program)
        .args([
            "-d", url, "--slot", SLOT_RECV, "--start", "--endpos", target,
        ])
        .args(["-o", "proto_version=1", "-o"])
        .arg(format!("publication_names={PUBLICATION}"))
        .args(["--plugin=pgoutput", "-f", "/dev/null", "--no-loop"])
        .stdout(Stdio::null())
        .stderr(File::create(&log)?)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let mut child = Guard(child);
    let status = wait_with_timeout(&mut child.0, DRAIN_TIMEOUT).await?;
    let seconds = started.elapsed().as_secs_f64();
    match status {
        Some(status) if status.success() => Ok(seconds),
        Some(status) => Err(format!("pg_recvlogical failed ({status}):\n{}", tail(&log)).into()),
        None => Err(format!("pg_recvlogical still running after {DRAIN_TIMEOUT:?}").into()),
    }
}

/// Runs `sluice run` with one sink until its slot confirms `target`, then stops it.
/// A `[[sinks]]` entry of type `kind`, named after it.
fn sink_toml(kind: &str, settings: &str) -> String {
    format!("[[sinks]]\nname = \"{kind}\"\ntype = \"{kind}\"\n{settings}")
}

async fn run_sluice(
    client: &Client,
    url: &str,
    slot: &str,
    sinks: &str,
    dir: &Path,
    target: i64,
    done: Done<'_>,
) -> Result<SluiceRun> {
    fs::create_dir_all(dir)?;
    let config = dir.join("sluice.toml");
    let quote = |s: &str| toml::Value::from(s).to_string();
    let (url, data_dir) = (quote(url), quote(&dir.join("data").to_string_lossy()));
    let metrics_port = match done {
        Done::Slot => None,
        Done::Sink(_) | Done::SlotScraped => Some(
            std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port(),
        ),
    };
    let metrics_listen = metrics_port
        .map(|port| format!("metrics_listen = \"127.0.0.1:{port}\"\n"))
        .unwrap_or_default();
    let text = format!(
        "[source]\ndatabase_url = {url}\nslot = \"{slot}\"\npublication = \"{PUBLICATION}\"\n\n\
         [pipeline]\ndata_dir = {data_dir}\n{metrics_listen}\n[[tables]]\nname = \"public.bench\"\n\n{sinks}"
    );
    let http = reqwest::Client::new();
    let committed = |sink: &str, port: u16| {
        let request = http.get(format!("http://127.0.0.1:{port}/metrics"));
        let prefix = format!("sluice_sink_committed_lsn{{sink=\"{sink}\"}} ");
        async move {
            let Ok(response) = request.send().await else {
                return 0; // not listening yet
            };
            let text = response.text().await.unwrap_or_default();
            text.lines()
                .find_map(|line| line.strip_prefix(&prefix))
                .and_then(|value| value.trim().parse::<f64>().ok())
                .map_or(0, |value| value as i64)
        }
    };
    fs::write(&config, text)?;
    let log = dir.join("sluice.log");
    let confirmed = || async {
        let row = client
            .query_one(
                "SELECT (confirmed_flush_lsn - '0/0')::int8 FROM pg_replication_slots \
                 WHERE slot_name = $1",
                &[&slot],
            )
            .await?;
        Ok::<i64, tokio_postgres::Error>(row.get(0))
    };
    let initial = confirmed().await?;

    let started = Instant::now();
    // SLUICE_BENCH_WRAP runs sluice under a profiler, e.g. "heaptrack -o /tmp/ht".
    let mut command = match std::env::var("SLUICE_BENCH_WRAP") {
        Ok(wrap) if !wrap.trim().is_empty() => {
            let mut parts = wrap.split_whitespace();
            let mut command = Command::new(parts.next().unwrap_or_default());
            command.args(parts).arg(env!("CARGO_BIN_EXE_sluice"));
            command
        }
        _ => Command::new(env!("CARGO_BIN_EXE_sluice")),
    };
    let child = command
        .args(["run", "--config"])
        .arg(&config)
        .stdout(File::create(dir.join("sluice.stdout"))?)
        .stderr(File::create(&log)?)
        .spawn()
        .map_err(|e| format!("cannot run sluice: {e}"))?;
    let mut child = Guard(child);
    let pid = child.0.id();
    let mut first_confirm = None;
    let mut peak_rss_kb = 0;
    let mut scraped = Instant::now();
    loop {
        if let (Done::SlotScraped, Some(port)) = (done, metrics_port) {
            if scraped.elapsed() >= Duration::from_secs(1) {
                scraped = Instant::now();
                if let Ok(response) = http
                    .get(format!("http://127.0.0.1:{port}/metrics"))
                    .send()
                    .await
                {
                    let _ = response.bytes().await;
                }
            }
        }
        if let Some(status) = child.0.try_wait()? {
            return Err(format!("sluice ({slot}) exited early ({status}):\n{}", tail(&log)).into());
        }
        peak_rss_kb = peak_rss_kb.max(proc_status_kb(pid, "VmRSS:").unwrap_or(0));
        let lsn = match (done, metrics_port) {
            (Done::Sink(sink), Some(port)) => committed(sink, port).await,
            _ => confirmed().await?,
        };
        if lsn > initial && first_confirm.is_none() {
            first_confirm = Some(started.elapsed().as_secs_f64());
        }
        if lsn >= target {
            break;
        }
        if started.elapsed() > DRAIN_TIMEOUT {
            return Err(format!(
                "sluice ({slot}) did not confirm the backlog within {DRAIN_TIMEOUT:?}:\n{}",
                tail(&log)
            )
            .into());
        }
        tokio::time::sleep(POLL).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    peak_rss_kb = peak_rss_kb.max(proc_status_kb(pid, "VmHWM:").unwrap_or(0));

    // SAFETY: plain syscall; the child is not reaped yet, so the pid is still ours.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    // A dead sink holds the drain until the reader's drain timeout (30 s).
    let stop_timeout = match done {
        Done::Slot | Done::SlotScraped => STOP_TIMEOUT,
        Done::Sink(_) => STOP_TIMEOUT * 3,
    };
    let problem = match wait_with_timeout(&mut child.0, stop_timeout).await? {
        Some(status) if status.success() => None,
        // A profiler wrapper may not pass the signal's clean exit through.
        Some(_) if std::env::var_os("SLUICE_BENCH_WRAP").is_some() => None,
        Some(status) => Some(format!("exited with {status} on SIGTERM")),
        None => Some(format!("did not exit within {stop_timeout:?} of SIGTERM")),
    };
    if let Some(problem) = problem {
        return Err(format!("sluice ({slot}) {problem}:\n{}", tail(&log)).into());
    }
    Ok(SluiceRun {
        seconds,
        first_confirm,
        peak_rss_kb,
    })
}

/// `sluice search --count '*'` on the `bench` index.
fn count_documents(data_dir: &Path) -> Result<u64> {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("search")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--index", "bench", "--count", "*"])
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!("sluice search failed ({}):\n{stderr}", output.status).into());
    }
    Ok(stdout
        .trim()
        .parse()
        .map_err(|_| format!("sluice search --count printed `{}`", stdout.trim()))?)
}

/// `None` if the child is still running after `timeout`.
async fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(POLL).await;
    }
}
