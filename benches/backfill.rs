//! Backfill benchmark: the `sluice` binary backfilling a table while live
//! changes stream, against `COPY … TO STDOUT` of the same table.
//!
//! ```text
//! cargo bench --bench backfill                        # 1,000,000 rows; null and embedded sinks
//! cargo bench --bench backfill -- --rows 200000 --skip-embedded
//! ```
//!
//! A throwaway Postgres gets `public.bench` with the rows. `COPY public.bench
//! TO STDOUT` is timed first. Then, per sink, `sluice run` starts with
//! backfills off; a writer updates random rows at `--live-rate` single-row
//! transactions per second throughout. After a few seconds of live changes
//! alone, a backfill of the table is started through the management API and
//! timed from the request until the API reports it completed. The latency
//! of each live change is the time from its commit until the sink's
//! committed position (`GET /api/sinks/{sink}`, polled every 2 ms) passed
//! the WAL position read right after it; it is reported before and during
//! the backfill. Dirty pages are written back before each run (`sync`),
//! so that the load's do not land in a run.

use std::fs::{self, File};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use sluice::local_pg::LocalPostgres;
use tokio_postgres::Client;

mod common;
use common::{parse_lsn, proc_status_kb, tail, Guard, CREATE_TABLE, INSERT_ROWS};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const DATABASE: &str = "bench";
const USAGE: &str = "usage: cargo bench --bench backfill -- [--rows N] [--live-rate N] [--skip-null] [--skip-embedded]
  --rows N        rows in the table (default 1000000)
  --live-rate N   live single-row updates per second during the runs (default 200)
  --skip-null     skip the run into the null sink
  --skip-embedded skip the run into the embedded (tantivy) sink
  --backfill K=V  a [backfill] setting for sluice (repeatable), e.g. max_chunk_rows=5000
  --pipeline K=V  a [pipeline] setting for sluice (repeatable), e.g. max_bytes_in_flight=67108864
  --sink K=V      a setting of the benchmarked sink (repeatable), e.g. commit_interval_ms=100
                  (without it, the sink's defaults)";

/// Live changes alone before the backfill starts, for the baseline latency.
const WARM_UP: Duration = Duration::from_secs(5);

struct Options {
    rows: u64,
    live_rate: u64,
    skip_null: bool,
    skip_embedded: bool,
    /// `[backfill]` settings, as TOML lines.
    backfill: Vec<String>,
    /// `[pipeline]` settings, as TOML lines.
    pipeline: Vec<String>,
    /// Settings of the benchmarked sink, as TOML lines.
    sink: Vec<String>,
}

impl Options {
    fn parse() -> Result<Options> {
        let mut options = Options {
            rows: 1_000_000,
            live_rate: 200,
            skip_null: false,
            skip_embedded: false,
            backfill: Vec::new(),
            pipeline: Vec::new(),
            sink: Vec::new(),
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut number = |name: &str| common::number_arg(&mut args, name, USAGE);
            match arg.as_str() {
                "--rows" => options.rows = number("--rows")?,
                "--live-rate" => options.live_rate = number("--live-rate")?,
                "--skip-null" => options.skip_null = true,
                "--skip-embedded" => options.skip_embedded = true,
                "--backfill" => options.backfill.push(setting(args.next(), "--backfill")?),
                "--pipeline" => options.pipeline.push(setting(args.next(), "--pipeline")?),
                "--sink" => options.sink.push(setting(args.next(), "--sink")?),
                "--bench" => {}
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument `{other}`\n{USAGE}").into()),
            }
        }
        if options.rows == 0 || options.live_rate == 0 {
            return Err("--rows and --live-rate must be at least 1".into());
        }
        Ok(options)
    }
}

/// `KEY=VALUE` from the command line as a TOML line.
fn setting(arg: Option<String>, flag: &str) -> Result<String> {
    let arg = arg.ok_or(format!("{flag} needs KEY=VALUE\n{USAGE}"))?;
    let (key, value) = arg
        .split_once('=')
        .ok_or(format!("{flag} `{arg}` is not KEY=VALUE\n{USAGE}"))?;
    Ok(format!("{} = {}", key.trim(), value.trim()))
}

/// What one run measured.
struct Run {
    seconds: f64,
    rows: u64,
    before: Histogram<u64>,
    during: Histogram<u64>,
    peak_rss_kb: u64,
}

fn main() {
    common::exit_on_error(
        "backfill",
        Options::parse().and_then(|options| run(&options)),
    );
}

fn run(options: &Options) -> Result<()> {
    let (cluster, runtime) = common::postgres_and_runtime()?;
    runtime.block_on(bench(&cluster, options))
}

async fn bench(cluster: &LocalPostgres, options: &Options) -> Result<()> {
    cluster.create_database(DATABASE).await?;
    let url = cluster.url(DATABASE);
    let client = cluster.connect(DATABASE).await?;
    client.batch_execute(CREATE_TABLE).await?;
    let started = Instant::now();
    let mut first = 1;
    while first <= options.rows {
        let last = (first + 99_999).min(options.rows);
        client
            .execute(INSERT_ROWS, &[&(first as i64), &(last as i64)])
            .await?;
        first = last + 1;
    }
    client.batch_execute("ANALYZE public.bench").await?;
    client.batch_execute("CHECKPOINT").await?;
    write_back_dirty_pages();
    eprintln!(
        "loaded {} rows in {:.1} s",
        options.rows,
        started.elapsed().as_secs_f64()
    );

    // The fastest of three: the target is a share of COPY at its best.
    let mut copy_seconds = f64::MAX;
    let mut copy_bytes = 0;
    for _ in 0..3 {
        let (seconds, bytes) = time_copy(&client).await?;
        copy_seconds = copy_seconds.min(seconds);
        copy_bytes = bytes;
    }
    let copy_rate = options.rows as f64 / copy_seconds;
    eprintln!("COPY: {copy_rate:.0} rows/s");

    let work = tempfile::Builder::new()
        .prefix("sluice-backfill-")
        .tempdir()?;
    let create_us = file_creation_micros(work.path())?;
    let mut runs = Vec::new();
    for (kind, skip) in [
        ("null", options.skip_null),
        ("embedded", options.skip_embedded),
    ] {
        if skip {
            continue;
        }
        write_back_dirty_pages();
        eprintln!("sluice ({kind} sink) backfilling while live changes stream ...");
        let run = run_sluice(cluster, &url, kind, &work.path().join(kind), options).await?;
        runs.push((kind, run));
    }

    println!(
        "\n=== sluice backfill: {} rows, {:.0} bytes/row, {} live updates/s ===",
        options.rows,
        copy_bytes as f64 / options.rows as f64,
        options.live_rate
    );
    println!(
        "COPY public.bench TO STDOUT (fastest of 3): {copy_seconds:.2} s, {copy_rate:.0} rows/s"
    );
    // The index creates and deletes hundreds of files a second. On ext4
    // without a journal, creating one gets slower for minutes after many
    // deletions nearby (a previous run's teardown), from about 30 µs to 1 ms:
    // compare runs only at a like cost.
    println!("file creation in the data directory before the runs: {create_us:.0} µs per file");
    println!(
        "run                  seconds       rows/s  of COPY   peak RSS   live p50/p99/max before (ms)   during (ms)"
    );
    for (kind, run) in &runs {
        let rate = run.rows as f64 / run.seconds;
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "backfill ({kind:<8})  {:8.2} {rate:12.0} {:7.1} % {:7.1} MB   {:6.1} /{:6.1} /{:6.1} ({:>5})   {:6.1} /{:6.1} /{:6.1} ({:>5})",
            run.seconds,
            100.0 * rate / copy_rate,
            run.peak_rss_kb as f64 / 1024.0,
            ms(&run.before, 0.5),
            ms(&run.before, 0.99),
            run.before.max() as f64 / 1000.0,
            run.before.len(),
            ms(&run.during, 0.5),
            ms(&run.during, 0.99),
            run.during.max() as f64 / 1000.0,
            run.during.len(),
        );
    }
    Ok(())
}

/// Writes every dirty page to the disk before a run. The throwaway server
/// runs with `fsync = off`, so the load leaves hundreds of megabytes in the
/// page cache; the kernel wrote them back 30 s later, in the middle of a
/// run, where every fsync of the index waited behind them.
fn write_back_dirty_pages() {
    // SAFETY: a plain syscall without arguments.
    unsafe { libc::sync() };
}

/// The mean time to create (and then delete) an empty file in `dir`.
fn file_creation_micros(dir: &Path) -> Result<f64> {
    const FILES: usize = 200;
    let probe = dir.join("probe");
    fs::create_dir(&probe)?;
    let started = Instant::now();
    for i in 0..FILES {
        File::create(probe.join(i.to_string()))?;
    }
    let micros = started.elapsed().as_secs_f64() * 1e6 / FILES as f64;
    fs::remove_dir_all(&probe)?;
    Ok(micros)
}

/// Seconds and bytes of `COPY public.bench TO STDOUT`, read to the end.
async fn time_copy(client: &Client) -> Result<(f64, u64)> {
    use futures_util::StreamExt;
    let started = Instant::now();
    let stream = client.copy_out("COPY public.bench TO STDOUT").await?;
    futures_util::pin_mut!(stream);
    let mut bytes = 0u64;
    while let Some(piece) = stream.next().await {
        bytes += piece?.len() as u64;
    }
    Ok((started.elapsed().as_secs_f64(), bytes))
}

/// Live changes waiting to be seen committed: (WAL position after the
/// commit, when it committed).
type Pending = Arc<Mutex<Vec<(u64, Instant)>>>;

async fn run_sluice(
    cluster: &LocalPostgres,
    url: &str,
    kind: &str,
    dir: &Path,
    options: &Options,
) -> Result<Run> {
    fs::create_dir_all(dir)?;
    let slot = format!("bench_{kind}");
    let config = dir.join("sluice.toml");
    let quote = |s: &str| toml::Value::from(s).to_string();
    let sink = options.sink.clone();
    let text = format!(
        "[source]\ndatabase_url = {}\nslot = \"{slot}\"\npublication = \"{slot}\"\nstatus_interval_ms = 1000\n\n\
         [pipeline]\ndata_dir = {}\n{}\n\n[backfill]\ninitial = false\n{}\n\n[api]\nlisten = \"127.0.0.1:0\"\n\n\
         [[tables]]\nname = \"public.bench\"\n\n[[sinks]]\nname = \"{kind}\"\ntype = \"{kind}\"\n{}\n",
        quote(url),
        quote(&dir.join("data").to_string_lossy()),
        options.pipeline.join("\n"),
        options.backfill.join("\n"),
        sink.join("\n"),
    );
    fs::write(&config, text)?;
    let log = dir.join("sluice.log");
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config"])
        .arg(&config)
        .stdout(File::create(dir.join("sluice.stdout"))?)
        .stderr(File::create(&log)?)
        .spawn()
        .map_err(|e| format!("cannot run sluice: {e}"))?;
    let mut child = Guard(child);
    let pid = child.0.id();
    let address = dir.join("data").join("api.addr");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !address.exists() {
        if child.0.try_wait()?.is_some() || Instant::now() > deadline {
            return Err(format!("sluice did not start:\n{}", tail(&log)).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let api = format!("http://{}", fs::read_to_string(&address)?.trim());
    let http = reqwest::Client::new();
    // Streaming: the API says so once the pipeline started.
    loop {
        let health: serde_json::Value = http
            .get(format!("{api}/api/health"))
            .send()
            .await?
            .json()
            .await?;
        if health["pipeline"] == "streaming" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let pending: Pending = Arc::default();
    let writer = tokio::spawn(live_changes(
        cluster.connect(DATABASE).await?,
        options.rows,
        options.live_rate,
        pending.clone(),
        stop.clone(),
    ));
    let backfilling = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(watch_latency(
        http.clone(),
        format!("{api}/api/sinks/{kind}"),
        pending,
        backfilling.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(WARM_UP).await;

    let started = Instant::now();
    backfilling.store(true, Ordering::Relaxed);
    let answer = http
        .post(format!("{api}/api/sinks/{kind}/backfills"))
        .json(&serde_json::json!({"table": "public.bench"}))
        .send()
        .await?;
    if answer.status() != 201 {
        return Err(format!("starting the backfill: {}", answer.text().await?).into());
    }
    let mut peak_rss_kb = 0;
    let rows = loop {
        let b: serde_json::Value = http
            .get(format!("{api}/api/backfills/1"))
            .send()
            .await?
            .json()
            .await?;
        peak_rss_kb = peak_rss_kb.max(proc_status_kb(pid, "VmRSS:").unwrap_or(0));
        match b["state"].as_str() {
            Some("completed") => break b["rows_done"].as_u64().unwrap_or_default(),
            Some("running") => {}
            other => {
                return Err(format!("the backfill ended {other:?}: {b}\n{}", tail(&log)).into())
            }
        }
        if child.0.try_wait()?.is_some() {
            return Err(format!("sluice exited:\n{}", tail(&log)).into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    peak_rss_kb = peak_rss_kb.max(proc_status_kb(pid, "VmHWM:").unwrap_or(0));
    stop.store(true, Ordering::Relaxed);
    writer.await??;
    let (before, during) = watcher.await??;
    if rows != options.rows {
        return Err(format!("the backfill wrote {rows} rows, not {}", options.rows).into());
    }
    if kind == "embedded" {
        let count = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("search")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--index", "bench", "--count", "*"])
            .output()?;
        let indexed: u64 = String::from_utf8_lossy(&count.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        if indexed != options.rows {
            return Err(
                format!("the index holds {indexed} documents, not {}", options.rows).into(),
            );
        }
    }
    // SAFETY: plain syscall; the child is not reaped yet, so the pid is ours.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.0.try_wait()? {
            if !status.success() {
                return Err(
                    format!("sluice exited with {status} on SIGTERM:\n{}", tail(&log)).into(),
                );
            }
            break;
        }
        if Instant::now() > deadline {
            return Err("sluice did not stop on SIGTERM".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Run {
        seconds,
        rows,
        before,
        during,
        peak_rss_kb,
    })
}

/// Updates random rows, one per transaction, `rate` times a second, and
/// notes the WAL position after each commit.
async fn live_changes(
    client: Client,
    rows: u64,
    rate: u64,
    pending: Pending,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let update = client
        .prepare("UPDATE public.bench SET price = price + 1, updated_at = now() WHERE id = $1")
        .await?;
    let position = client
        .prepare("SELECT (pg_current_wal_lsn() - '0/0')::int8")
        .await?;
    let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        interval.tick().await;
        n += 1;
        // A spread of ids, ahead of and behind the backfill's cursor.
        let id = (n.wrapping_mul(2_654_435_761) % rows + 1) as i64;
        client.execute(&update, &[&id]).await?;
        let committed = Instant::now();
        let lsn: i64 = client.query_one(&position, &[]).await?.get(0);
        pending.lock().unwrap().push((lsn as u64, committed));
    }
    Ok(())
}

/// Polls the sink's committed position and records each live change's
/// latency, before and during the backfill (microseconds).
async fn watch_latency(
    http: reqwest::Client,
    url: String,
    pending: Pending,
    backfilling: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Result<(Histogram<u64>, Histogram<u64>)> {
    let mut before = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut during = before.clone();
    while !stop.load(Ordering::Relaxed) {
        let sink: serde_json::Value = http.get(&url).send().await?.json().await?;
        let seen = Instant::now();
        let committed = sink["committed_lsn"]
            .as_str()
            .and_then(parse_lsn)
            .unwrap_or(0);
        let histogram = if backfilling.load(Ordering::Relaxed) {
            &mut during
        } else {
            &mut before
        };
        pending.lock().unwrap().retain(|(lsn, at)| {
            if *lsn <= committed {
                histogram.saturating_record(seen.duration_since(*at).as_micros() as u64);
                false
            } else {
                true
            }
        });
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok((before, during))
}
