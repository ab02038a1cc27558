//! Verify benchmark: `sluice verify` of a table against its embedded index.
//!
//! ```text
//! cargo bench --bench verify                  # 1,000,000 rows, 3 verifications
//! cargo bench --bench verify -- --rows 200000 --runs 5
//! ```
//!
//! A throwaway Postgres gets `public.bench` with the rows; `sluice run`
//! backfills them into an embedded index, and is then started again, so
//! its peak memory is the verifications' alone. Each verification is
//! started through the management API and timed from the request until it
//! reports it ended; it must find the index equal to its table. Reported:
//! rows/s of each, and the process's peak RSS (`VmHWM`) before the first
//! and after the last.

use std::fs::{self, File};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice::local_pg::LocalPostgres;

mod common;
use common::{proc_status_kb, tail, Guard, CREATE_TABLE, INSERT_ROWS};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const DATABASE: &str = "bench";
const USAGE: &str = "usage: cargo bench --bench verify -- [--rows N] [--runs N]
  --rows N  rows in the table (default 1000000)
  --runs N  verifications in a row (default 3)";

fn main() {
    common::exit_on_error("verify", options().and_then(|(rows, runs)| run(rows, runs)));
}

fn options() -> Result<(u64, u64)> {
    let (mut rows, mut runs) = (1_000_000, 3);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rows" => rows = common::number_arg(&mut args, "--rows", USAGE)?,
            "--runs" => runs = common::number_arg(&mut args, "--runs", USAGE)?,
            "--bench" => {}
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`\n{USAGE}").into()),
        }
    }
    if rows == 0 || runs == 0 {
        return Err("--rows and --runs must be at least 1".into());
    }
    Ok((rows, runs))
}

fn run(rows: u64, runs: u64) -> Result<()> {
    let (cluster, runtime) = common::postgres_and_runtime()?;
    runtime.block_on(bench(&cluster, rows, runs))
}

async fn bench(cluster: &LocalPostgres, rows: u64, runs: u64) -> Result<()> {
    cluster.create_database(DATABASE).await?;
    let client = cluster.connect(DATABASE).await?;
    client.batch_execute(CREATE_TABLE).await?;
    let mut first = 1;
    while first <= rows {
        let last = (first + 99_999).min(rows);
        client
            .execute(INSERT_ROWS, &[&(first as i64), &(last as i64)])
            .await?;
        first = last + 1;
    }
    client.batch_execute("ANALYZE public.bench").await?;
    eprintln!("loaded {rows} rows");

    let work = tempfile::Builder::new()
        .prefix("sluice-verify-")
        .tempdir()?;
    let config = work.path().join("sluice.toml");
    let quote = |s: &str| toml::Value::from(s).to_string();
    fs::write(
        &config,
        format!(
            "[source]\ndatabase_url = {}\nslot = \"bench\"\npublication = \"bench\"\n\n\
             [pipeline]\ndata_dir = {}\n\n[api]\nlisten = \"127.0.0.1:0\"\n\n\
             [[tables]]\nname = \"public.bench\"\n\n[[sinks]]\nname = \"embedded\"\ntype = \"embedded\"\n",
            quote(&cluster.url(DATABASE)),
            quote(&work.path().join("data").to_string_lossy()),
        ),
    )?;

    eprintln!("backfilling the embedded index ...");
    let (mut sluice, api) = start(work.path(), &config, "backfill").await?;
    let http = reqwest::Client::new();
    loop {
        let list: Value = http
            .get(format!("{api}/api/backfills"))
            .send()
            .await?
            .json()
            .await?;
        let all = list.as_array().cloned().unwrap_or_default();
        if !all.is_empty() && all.iter().all(|b| b["state"] == "completed") {
            break;
        }
        if all.iter().any(|b| b["state"] == "failed") {
            return Err(format!("the backfill failed: {list}").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop(&mut sluice)?;

    let (sluice, api) = start(work.path(), &config, "verify").await?;
    let pid = sluice.0.id();
    let before_kb = proc_status_kb(pid, "VmHWM:").unwrap_or_default();
    let mut rates = Vec::new();
    for n in 1..=runs {
        let started = Instant::now();
        let view: Value = http
            .post(format!("{api}/api/sinks/embedded/verify"))
            .json(&serde_json::json!({}))
            .send()
            .await?
            .json()
            .await?;
        let id = view["id"]
            .as_u64()
            .ok_or_else(|| format!("verify did not start: {view}"))?;
        let view = loop {
            let view: Value = http
                .get(format!("{api}/api/verifications/{id}"))
                .send()
                .await?
                .json()
                .await?;
            if view["state"] != "running" {
                break view;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let seconds = started.elapsed().as_secs_f64();
        let read = view["tables"][0]["rows"].as_u64().unwrap_or_default();
        if view["state"] != "equal" || read != rows {
            return Err(format!("verify {n} did not find the index equal:\n{view:#}").into());
        }
        let rate = rows as f64 / seconds;
        eprintln!("verify {n}: {seconds:.2} s, {rate:.0} rows/s");
        rates.push(rate);
    }
    let peak_kb = proc_status_kb(pid, "VmHWM:").unwrap_or_default();
    let (low, high) = rates
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    println!("\n=== sluice verify: {rows} rows, embedded index, {runs} run(s) ===");
    println!("rows/s: {low:.0} to {high:.0}");
    println!(
        "peak RSS: {:.1} MB before the first, {:.1} MB after the last",
        before_kb as f64 / 1024.0,
        peak_kb as f64 / 1024.0
    );
    Ok(())
}

/// Starts `sluice run` and waits until it streams; returns it and its API.
async fn start(dir: &Path, config: &Path, name: &str) -> Result<(Guard, String)> {
    let log = dir.join(format!("{name}.log"));
    let address = dir.join("data").join("api.addr");
    let _ = fs::remove_file(&address);
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config"])
        .arg(config)
        .stdout(File::create(dir.join(format!("{name}.stdout")))?)
        .stderr(File::create(&log)?)
        .spawn()
        .map_err(|e| format!("cannot run sluice: {e}"))?;
    let mut child = Guard(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !address.exists() {
        if child.0.try_wait()?.is_some() || Instant::now() > deadline {
            return Err(format!("sluice did not start:\n{}", tail(&log)).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let api = format!("http://{}", fs::read_to_string(&address)?.trim());
    let http = reqwest::Client::new();
    loop {
        let health: Value = http
            .get(format!("{api}/api/health"))
            .send()
            .await?
            .json()
            .await?;
        if health["pipeline"] == "streaming" {
            return Ok((child, api));
        }
        if child.0.try_wait()?.is_some() {
            return Err(format!("sluice exited:\n{}", tail(&log)).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stops sluice as an operator does (SIGTERM) and waits for it.
fn stop(sluice: &mut Guard) -> Result<()> {
    // SAFETY: a signal to our own child process.
    unsafe { libc::kill(sluice.0.id() as i32, libc::SIGTERM) };
    sluice.0.wait()?;
    Ok(())
}
