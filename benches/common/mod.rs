//! What the process-driving benchmarks share: a child process killed when
//! the benchmark fails, its memory, and its log's last lines.

#![allow(dead_code)]

use std::fs;
use std::path::Path;
use std::process::Child;

use sluice::local_pg::{LocalPostgres, LocalPostgresError, LocalPostgresOptions};

/// A child process that is killed if the benchmark fails while it runs.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A `kB` field of `/proc/PID/status`, such as `VmRSS:` or `VmHWM:`.
pub fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// The last lines of a log file, for error messages.
pub fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_else(|e| format!("({}: {e})", log.display()));
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "--- {} (last lines) ---\n{}",
        log.display(),
        lines[lines.len().saturating_sub(30)..].join("\n")
    )
}

/// The number after flag `name` on the command line (`_` allowed as a
/// thousands separator), or an error that shows `usage`.
pub fn number_arg(
    args: &mut impl Iterator<Item = String>,
    name: &str,
    usage: &str,
) -> Result<u64, String> {
    let value = args
        .next()
        .ok_or(format!("{name} needs a value\n{usage}"))?;
    value
        .replace('_', "")
        .parse()
        .map_err(|_| format!("{name}: `{value}` is not a number\n{usage}"))
}

/// A throwaway Postgres for a benchmark: commits flushed at once, as on a
/// production server (the walsender sends only flushed WAL; the throwaway
/// server's default would hold it up to `wal_writer_delay`, 200 ms), and
/// room for the WAL of large loads.
pub fn bench_postgres() -> Result<LocalPostgres, LocalPostgresError> {
    LocalPostgres::start(LocalPostgresOptions {
        extra_settings: [
            ("max_wal_size", "4GB"),
            ("checkpoint_timeout", "30min"),
            ("synchronous_commit", "on"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .to_vec(),
        ..Default::default()
    })
}

/// Parses a WAL position `X/Y` into a number.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// The benchmarks' table.
pub const CREATE_TABLE: &str = "
CREATE TABLE public.bench (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    description text NOT NULL,
    price numeric(10, 2) NOT NULL,
    active boolean NOT NULL,
    updated_at timestamptz NOT NULL
)";

/// Rows `$1` to `$2` of the benchmarks' table, about 220 bytes each
/// (`pg_column_size(t.*)`).
pub const INSERT_ROWS: &str = "
INSERT INTO public.bench
SELECT i,
       'Stainless steel kettle, 1.7 l, model ' || i,
       'Fast-boil electric kettle with a concealed element, limescale filter, '
           || '360 degree base and auto shut-off. Production batch ' || (i % 1000),
       round((5 + (i % 10000) * 0.01)::numeric, 2),
       i % 3 <> 0,
       timestamptz '2024-05-01 10:20:30.123456+00' + i * interval '1 second'
FROM generate_series($1::int8, $2::int8) AS i";

/// A throwaway Postgres (`bench_postgres`) and a runtime of one worker
/// thread to drive a benchmark against it.
pub fn postgres_and_runtime(
) -> Result<(LocalPostgres, tokio::runtime::Runtime), Box<dyn std::error::Error + Send + Sync>> {
    eprintln!("starting a throwaway Postgres ...");
    let cluster = bench_postgres()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    Ok((cluster, runtime))
}

/// Ends the benchmark `name` with exit code 1 when it failed.
pub fn exit_on_error<E: std::fmt::Debug>(name: &str, result: Result<(), E>) {
    if let Err(error) = result {
        eprintln!("\n{name} benchmark FAILED: {error:?}");
        std::process::exit(1);
    }
}
