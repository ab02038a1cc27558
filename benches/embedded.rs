//! The embedded (tantivy) sink alone: backfill-shaped rows written in 512-row
//! batches and committed on sluice's default interval, as the writer actor does.
//! Prints documents per second and commit times.
//!
//! ```text
//! cargo bench --bench embedded                       # 300,000 rows, commit every 50 ms (the default)
//! cargo bench --bench embedded -- --rows 1000000 --commit-ms 250
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use sluice::lsn::Lsn;
use sluice::model::write::{WriteAction, WriteOp};
use sluice::sink::embedded::EmbeddedSink;
use sluice::sink::Sink;

const USAGE: &str = "usage: cargo bench --bench embedded -- [--rows N] [--commit-ms N]
  --rows N       rows to write (default 300000)
  --commit-ms N  time between commits, as the writer's commit_interval_ms (default 50, sluice's)";

/// Rows per `write`, as the shards cut backfill chunks.
const BATCH: usize = 512;

/// A row of the backfill benchmark's table, as the encoder renders it.
fn op(i: u64) -> WriteOp {
    let doc = format!(
        r#"{{"id":{i},"name":"Stainless steel kettle, 1.7 l, model {i}","description":"Fast-boil electric kettle with a concealed element, limescale filter, 360 degree base and auto shut-off. Production batch {}","price":"{}.{:02}","active":{},"updated_at":"2024-05-{:02}T10:20:30.123456+00:00"}}"#,
        i % 1000,
        5 + (i % 10000) / 100,
        i % 100,
        !i.is_multiple_of(3),
        1 + i % 28,
    );
    WriteOp {
        index: Arc::from("bench"),
        table: Arc::from("public.bench"),
        id: i.to_string(),
        lsn: Lsn(0x1_0000_0000 + (i / 10_000) * 0x1000),
        action: WriteAction::Upsert {
            doc: doc.into_bytes(),
            partial: false,
            fresh: false,
        },
        routing: None,
    }
}

fn main() {
    let mut rows = 300_000u64;
    let mut commit_ms = sluice::sink::settings::DEFAULT_COMMIT_INTERVAL_MS;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number\n{USAGE}"))
        };
        match arg.as_str() {
            "--rows" => rows = value("--rows"),
            "--commit-ms" => commit_ms = value("--commit-ms"),
            "--bench" => {}
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => panic!("unknown argument {other}\n{USAGE}"),
        }
    }
    let ops: Vec<WriteOp> = (0..rows).map(op).collect();
    let dir = tempfile::tempdir().expect("temporary directory");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let mut sink = EmbeddedSink::open("bench", dir.path(), sluice::sink::http::DEFAULT_MAX_DOCUMENT_BYTES).expect("embedded sink");
        let mut commits = Histogram::<u64>::new(3).expect("histogram");
        let interval = Duration::from_millis(commit_ms);
        let start = Instant::now();
        let mut last_commit = Instant::now();
        for batch in ops.chunks(BATCH) {
            sink.write(batch).await.expect("write");
            if last_commit.elapsed() >= interval {
                let began = Instant::now();
                sink.commit(batch[batch.len() - 1].lsn).await.expect("commit");
                commits.record(began.elapsed().as_micros() as u64).unwrap();
                last_commit = Instant::now();
            }
        }
        let began = Instant::now();
        sink.commit(Lsn(u64::MAX >> 1)).await.expect("commit");
        commits.record(began.elapsed().as_micros() as u64).unwrap();
        let elapsed = start.elapsed();
        println!(
            "embedded sink: {rows} rows in {:.2} s = {:.0} rows/s; {} commits, ms p50 {:.1} p99 {:.1} max {:.1}",
            elapsed.as_secs_f64(),
            rows as f64 / elapsed.as_secs_f64(),
            commits.len(),
            commits.value_at_quantile(0.5) as f64 / 1000.0,
            commits.value_at_quantile(0.99) as f64 / 1000.0,
            commits.max() as f64 / 1000.0,
        );
    });
}
