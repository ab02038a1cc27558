//! Memory benchmark: the `sluice` binary's resident memory under a workload
//! that makes it hold the most, with default settings.
//!
//! ```text
//! cargo bench --bench memory                          # 200,000 rows, a 100 MB row; embedded and null sinks
//! cargo bench --bench memory -- --rows 100000 --big-mb 300 --skip-null
//! ```
//!
//! A throwaway Postgres gets `public.bench` with the rows; `sluice run`
//! (defaults, but for the API) backfills it, then goes through phases, each
//! waited out until the sink committed the server's WAL position: three
//! rounds of large transactions (update a third of the rows, delete a
//! seventh, insert a quarter more), two truncates each followed by a reload
//! of half the rows, a backfill through the API, a restart with an update of
//! every row made while sluice was stopped, and last one row of `--big-mb`
//! MB, inserted and then updated. sluice's anonymous resident memory
//! (`RssAnon`, what the heap holds from the system) is sampled every 10 ms;
//! the peak of each phase is printed with the process's `VmHWM`. For the
//! large row, the peak above the memory held before it, divided by the
//! row's size, says how many copies of the row sluice held at once. It runs
//! twice: with the default `max_document_bytes` (the row is parked before it
//! is sent) and with a limit above the row (it is written).

use std::fs::{self, File};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::local_pg::LocalPostgres;
use tokio_postgres::Client;

mod common;
use common::{parse_lsn, proc_status_kb, tail, Guard, CREATE_TABLE, INSERT_ROWS};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const DATABASE: &str = "bench";
const USAGE: &str =
    "usage: cargo bench --bench memory -- [--rows N] [--big-mb N] [--skip-null] [--skip-embedded]
  --rows N        rows in the table (default 200000)
  --big-mb N      the size of the large row in MB (default 100)
  --skip-null     skip the runs into the null sink
  --skip-embedded skip the runs into the embedded (tantivy) sink";

struct Options {
    rows: u64,
    big_mb: u64,
    skip_null: bool,
    skip_embedded: bool,
}

impl Options {
    fn parse() -> Result<Options> {
        let mut options = Options {
            rows: 200_000,
            big_mb: 100,
            skip_null: false,
            skip_embedded: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut number = |name: &str| common::number_arg(&mut args, name, USAGE);
            match arg.as_str() {
                "--rows" => options.rows = number("--rows")?,
                "--big-mb" => options.big_mb = number("--big-mb")?,
                "--skip-null" => options.skip_null = true,
                "--skip-embedded" => options.skip_embedded = true,
                "--bench" => {}
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument `{other}`\n{USAGE}").into()),
            }
        }
        if options.rows < 100 || options.big_mb == 0 || options.big_mb > 900 {
            return Err(format!("--rows must be at least 100, --big-mb 1 to 900\n{USAGE}").into());
        }
        Ok(options)
    }
}

fn main() {
    common::exit_on_error("memory", Options::parse().and_then(|options| run(&options)));
}

fn run(options: &Options) -> Result<()> {
    let (cluster, runtime) = common::postgres_and_runtime()?;
    runtime.block_on(bench(&cluster, options))
}

/// The peaks of one run, per phase.
struct Report {
    sink: &'static str,
    limit: &'static str,
    phases: Vec<(String, u64, u64)>,
    big_copies: f64,
}

async fn bench(cluster: &LocalPostgres, options: &Options) -> Result<()> {
    cluster.create_database(DATABASE).await?;
    let url = cluster.url(DATABASE);
    let client = cluster.connect(DATABASE).await?;
    let work = tempfile::Builder::new()
        .prefix("sluice-memory-")
        .tempdir()?;
    let mut reports = Vec::new();
    for (sink, skip) in [
        ("embedded", options.skip_embedded),
        ("null", options.skip_null),
    ] {
        if skip {
            continue;
        }
        let mut limits = vec![("default", String::new())];
        if sink == "embedded" {
            limits.push((
                "above the row",
                format!("max_document_bytes = {}", (options.big_mb * 3) << 20),
            ));
        }
        for (limit, setting) in limits {
            let dir = work.path().join(format!("{sink}-{}", reports.len()));
            eprintln!("sluice ({sink} sink, max_document_bytes {limit}) ...");
            let report = run_sluice(&client, &url, sink, &setting, &dir, options)
                .await
                .map(|(phases, big_copies)| Report {
                    sink,
                    limit,
                    phases,
                    big_copies,
                })?;
            reports.push(report);
        }
    }

    println!(
        "\n=== sluice memory: {} rows, a {} MB row, default settings ===",
        options.rows, options.big_mb
    );
    for report in &reports {
        let limit = match report.sink {
            "null" => String::new(),
            _ => format!(", max_document_bytes {}", report.limit),
        };
        println!(
            "{} sink{limit}: the large row took {:.2} copies of itself at its peak",
            report.sink, report.big_copies
        );
        println!("  phase                          peak RssAnon     VmHWM");
        for (phase, anon, hwm) in &report.phases {
            println!(
                "  {phase:<30} {:8.1} MB {:8.1} MB",
                *anon as f64 / 1024.0,
                *hwm as f64 / 1024.0
            );
        }
    }
    Ok(())
}

/// Samples a process's `RssAnon` until told to stop, keeping the peak.
struct Sampler {
    peak_kb: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let peak_kb = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peak_kb, stop) = (peak_kb.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(kb) = proc_status_kb(pid, "RssAnon:") {
                        peak_kb.fetch_max(kb, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Sampler {
            peak_kb,
            stop,
            thread: Some(thread),
        }
    }

    /// The peak since the last call.
    fn take_peak(&self) -> u64 {
        self.peak_kb.swap(0, Ordering::Relaxed)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A running `sluice run` and its API.
struct Running {
    child: Guard,
    pid: u32,
    api: String,
    http: reqwest::Client,
    log: std::path::PathBuf,
    sink: String,
}

impl Running {
    async fn start(config: &Path, dir: &Path, sink: &str) -> Result<Running> {
        let log = dir.join("sluice.log");
        let data = dir.join("data");
        let _ = fs::remove_file(data.join("api.addr"));
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["run", "--config"])
            .arg(config)
            .stdout(File::create(dir.join("sluice.stdout"))?)
            .stderr(File::options().create(true).append(true).open(&log)?)
            .spawn()
            .map_err(|e| format!("cannot run sluice: {e}"))?;
        let mut child = Guard(child);
        let pid = child.0.id();
        let address = data.join("api.addr");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !address.exists() {
            if child.0.try_wait()?.is_some() || Instant::now() > deadline {
                return Err(format!("sluice did not start:\n{}", tail(&log)).into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Running {
            child,
            pid,
            api: format!("http://{}", fs::read_to_string(&address)?.trim()),
            http: reqwest::Client::new(),
            log,
            sink: sink.to_owned(),
        })
    }

    /// Waits until the sink committed everything the server wrote so far
    /// and no backfill runs.
    async fn caught_up(&mut self, client: &Client) -> Result<()> {
        let row = client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?;
        let target = parse_lsn(row.get(0)).ok_or("bad WAL position")?;
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if self.child.0.try_wait()?.is_some() {
                return Err(format!("sluice exited:\n{}", tail(&self.log)).into());
            }
            let sink: serde_json::Value = self
                .http
                .get(format!("{}/api/sinks/{}", self.api, self.sink))
                .send()
                .await?
                .json()
                .await?;
            let committed = sink["committed_lsn"]
                .as_str()
                .and_then(parse_lsn)
                .unwrap_or(0);
            let backfills: serde_json::Value = self
                .http
                .get(format!("{}/api/backfills", self.api))
                .send()
                .await?
                .json()
                .await?;
            let running = backfills
                .as_array()
                .is_some_and(|all| all.iter().any(|b| b["state"] == "running"));
            if committed >= target && !running {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("sluice did not catch up:\n{}", tail(&self.log)).into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) -> Result<()> {
        // SAFETY: plain syscall; the child is not reaped yet, so the pid is ours.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.0.try_wait()? {
                if !status.success() {
                    return Err(format!(
                        "sluice exited with {status} on SIGTERM:\n{}",
                        tail(&self.log)
                    )
                    .into());
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("sluice did not stop:\n{}", tail(&self.log)).into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn run_sluice(
    client: &Client,
    url: &str,
    sink: &str,
    setting: &str,
    dir: &Path,
    options: &Options,
) -> Result<(Vec<(String, u64, u64)>, f64)> {
    fs::create_dir_all(dir)?;
    let rows = options.rows as i64;
    client
        .batch_execute("DROP TABLE IF EXISTS public.bench")
        .await?;
    client.batch_execute(CREATE_TABLE).await?;
    insert(client, 1, rows).await?;
    client.batch_execute("CHECKPOINT").await?;
    let slot = format!(
        "bench_memory_{}",
        dir.file_name().unwrap().to_string_lossy()
    )
    .replace('-', "_");
    let quote = |s: &str| toml::Value::from(s).to_string();
    let config = dir.join("sluice.toml");
    fs::write(
        &config,
        format!(
            "[source]\ndatabase_url = {}\nslot = \"{slot}\"\npublication = \"{slot}\"\n\n\
             [pipeline]\ndata_dir = {}\n\n[api]\nlisten = \"127.0.0.1:0\"\n\n\
             [[tables]]\nname = \"public.bench\"\n\n[[sinks]]\nname = \"{sink}\"\ntype = \"{sink}\"\n{setting}\n",
            quote(url),
            quote(&dir.join("data").to_string_lossy()),
        ),
    )?;

    let mut phases = Vec::new();
    let mut sluice = Running::start(&config, dir, sink).await?;
    let mut sampler = Sampler::start(sluice.pid);
    let mut done = |name: &str, sampler: &Sampler, pid: u32| {
        phases.push((
            name.to_owned(),
            sampler.take_peak(),
            proc_status_kb(pid, "VmHWM:").unwrap_or(0),
        ));
    };
    sluice.caught_up(client).await?;
    done("initial backfill", &sampler, sluice.pid);
    let mut next = rows + 1;
    for round in 1..=3 {
        client
            .batch_execute(&format!(
                "UPDATE public.bench SET price = price + 1, name = name || 'x' WHERE id % 3 = {}",
                round % 3
            ))
            .await?;
        client
            .batch_execute(&format!("DELETE FROM public.bench WHERE id % 7 = {round}"))
            .await?;
        insert(client, next, next + rows / 4 - 1).await?;
        next += rows / 4;
        sluice.caught_up(client).await?;
        done(
            &format!("large transactions, round {round}"),
            &sampler,
            sluice.pid,
        );
    }
    for round in 1..=2 {
        client.batch_execute("TRUNCATE public.bench").await?;
        insert(client, 1, rows / 2).await?;
        sluice.caught_up(client).await?;
        done(
            &format!("truncate and reload {round}"),
            &sampler,
            sluice.pid,
        );
    }
    let answer = sluice
        .http
        .post(format!("{}/api/sinks/{sink}/backfills", sluice.api))
        .json(&serde_json::json!({"table": "public.bench"}))
        .send()
        .await?;
    if !answer.status().is_success() {
        return Err(format!("starting a backfill: {}", answer.text().await?).into());
    }
    sluice.caught_up(client).await?;
    done("backfill through the API", &sampler, sluice.pid);
    drop(sampler);
    sluice.stop().await?;

    client
        .batch_execute("UPDATE public.bench SET price = price + 1")
        .await?;
    sluice = Running::start(&config, dir, sink).await?;
    sampler = Sampler::start(sluice.pid);
    sluice.caught_up(client).await?;
    done("restart with a backlog", &sampler, sluice.pid);

    // Let the allocator return what the restart's backlog left, then measure
    // the large row above what remains.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = proc_status_kb(sluice.pid, "RssAnon:").unwrap_or(0);
    sampler.take_peak();
    let mb = options.big_mb as i64;
    // Words, so that the embedded index has terms to index, not one long token.
    client
        .execute(
            "INSERT INTO public.bench VALUES ($1, 'large', repeat('lorem ipsum dolor sit amet ', ($2::int8 * 1048576 / 27)::int), 1, true, now())",
            &[&next, &mb],
        )
        .await?;
    sluice.caught_up(client).await?;
    client
        .execute(
            "UPDATE public.bench SET name = 'larger' WHERE id = $1",
            &[&next],
        )
        .await?;
    sluice.caught_up(client).await?;
    let peak = sampler.take_peak();
    let big_copies = peak.saturating_sub(before) as f64 / (options.big_mb * 1024) as f64;
    phases.push((
        format!("a {mb} MB row (from {:.0} MB)", before as f64 / 1024.0),
        peak,
        proc_status_kb(sluice.pid, "VmHWM:").unwrap_or(0),
    ));
    drop(sampler);
    sluice.stop().await?;
    client
        .batch_execute(&format!("SELECT pg_drop_replication_slot('{slot}')"))
        .await?;
    Ok((phases, big_copies))
}

async fn insert(client: &Client, first: i64, last: i64) -> Result<()> {
    let mut from = first;
    while from <= last {
        let to = (from + 99_999).min(last);
        client.execute(INSERT_ROWS, &[&from, &to]).await?;
        from = to + 1;
    }
    Ok(())
}
