//! What a run found: a table for people, a JSON file with every figure.

use std::path::Path;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::stages::StageAge;
use crate::tracker::Window;
use crate::workload::{Kept, Scenario};

/// Latency percentiles in milliseconds.
#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(histogram: &Histogram<u64>) -> Percentiles {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Percentiles {
            count: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.5)),
            p90: ms(histogram.value_at_quantile(0.9)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

/// One second of the run, by commit time.
#[derive(Debug, Serialize)]
pub struct Second {
    pub second: usize,
    pub committed: u64,
    pub latency_ms: Percentiles,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub sink: String,
    pub target_rate: f64,
    pub rows_per_txn: usize,
    pub row_bytes: usize,
    pub connections: usize,
    pub tables: usize,
    pub duration_s: f64,
    /// Changes committed per second over the run.
    pub achieved_rate: f64,
    pub schedule: Kept,
    /// From the COMMIT returning to the document arriving.
    pub latency_ms: Percentiles,
    /// Writes committed whose document never arrived (within the drain timeout).
    pub not_arrived: usize,
    /// The most WAL the slot had not confirmed, in bytes.
    pub max_replication_lag_bytes: i64,
    pub sluice_peak_rss_mb: f64,
    /// sluice's CPU time over the run, as a share of one core.
    pub sluice_cpu_percent: f64,
    /// `backfill`: the initial backfill that ran under the load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backfill: Option<BackfillFigures>,
    /// `backlog`: the drain from a standing start, beside `pg_recvlogical`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainFigures>,
    /// `backfill` into Meilisearch: the same documents loaded straight in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_load: Option<DirectFigures>,
    /// Where the time goes inside sluice, by its own metrics.
    pub stages: Vec<StageAge>,
    pub seconds: Vec<Second>,
}

/// The initial backfill of a `backfill` run.
#[derive(Debug, Serialize)]
pub struct BackfillFigures {
    pub rows: u64,
    pub seconds: f64,
    pub rows_per_second: f64,
}

impl BackfillFigures {
    pub fn new(rows: u64, seconds: f64) -> BackfillFigures {
        BackfillFigures {
            rows,
            seconds,
            rows_per_second: rows as f64 / seconds.max(1e-3),
        }
    }
}

/// A backlog drained by sluice (to the last document at the index, from
/// the moment it started) and read by `pg_recvlogical` (to the end of the
/// backlog, discarding what it reads).
#[derive(Debug, Serialize)]
pub struct DrainFigures {
    pub changes: u64,
    pub pg_recvlogical_seconds: f64,
    pub pg_recvlogical_changes_per_second: f64,
    pub sluice_seconds: f64,
    pub sluice_changes_per_second: f64,
    /// sluice's rate over `pg_recvlogical`'s.
    pub ratio: f64,
}

impl DrainFigures {
    pub fn new(changes: u64, raw_seconds: f64, sluice_seconds: f64) -> DrainFigures {
        let rate = |seconds: f64| changes as f64 / seconds.max(1e-3);
        DrainFigures {
            changes,
            pg_recvlogical_seconds: raw_seconds,
            pg_recvlogical_changes_per_second: rate(raw_seconds),
            sluice_seconds,
            sluice_changes_per_second: rate(sluice_seconds),
            ratio: rate(sluice_seconds) / rate(raw_seconds),
        }
    }
}

/// The documents of a `backfill` run loaded straight into the engine, in
/// large tasks all sent at once, beside sluice's backfill of them.
#[derive(Debug, Serialize)]
pub struct DirectFigures {
    pub documents: u64,
    pub documents_per_task: usize,
    pub seconds: f64,
    pub documents_per_second: f64,
    /// sluice's backfill rate over the direct load's.
    pub ratio: f64,
}

impl DirectFigures {
    pub fn new(
        documents: u64,
        documents_per_task: usize,
        seconds: f64,
        backfill: &BackfillFigures,
    ) -> DirectFigures {
        let rate = documents as f64 / seconds.max(1e-3);
        DirectFigures {
            documents,
            documents_per_task,
            seconds,
            documents_per_second: rate,
            ratio: backfill.rows_per_second / rate,
        }
    }
}

impl Report {
    pub fn seconds(windows: Vec<Window>) -> Vec<Second> {
        windows
            .into_iter()
            .enumerate()
            .map(|(second, w)| Second {
                second,
                committed: w.committed,
                latency_ms: Percentiles::of(&w.latency),
            })
            .collect()
    }

    pub fn print(&self) {
        let l = &self.latency_ms;
        println!(
            "scenario {:?} into {}: {:.0} changes/s asked, {:.0} achieved ({} rows a transaction, {} bytes a row, {} connections, {} tables, {:.0} s)",
            self.scenario,
            self.sink,
            self.target_rate,
            self.achieved_rate,
            self.rows_per_txn,
            self.row_bytes,
            self.connections,
            self.tables,
            self.duration_s
        );
        println!(
            "{:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>12} {:>10} {:>8}",
            "changes",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "max lag KB",
            "peak RSS",
            "CPU"
        );
        println!(
            "{:>10} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>12.0} {:>7.0} MB {:>7.0}%",
            l.count,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            self.max_replication_lag_bytes as f64 / 1024.0,
            self.sluice_peak_rss_mb,
            self.sluice_cpu_percent
        );
        if !self.stages.is_empty() {
            println!("time since the commit as batches leave each stage (sluice's metrics; the oldest change of each batch):");
            for s in &self.stages {
                println!(
                    "  {:<20} {:>8.2} ms p50 {:>8.2} ms p99  ({} batches)",
                    s.stage, s.p50_ms, s.p99_ms, s.batches
                );
            }
        }
        if let Some(b) = &self.backfill {
            println!(
                "initial backfill under the load: {} rows in {:.1} s, {:.0} rows/s",
                b.rows, b.seconds, b.rows_per_second
            );
        }
        if let Some(d) = &self.drain {
            println!(
                "backlog of {} changes: pg_recvlogical {:.2} s ({:.0}/s), sluice {:.2} s ({:.0}/s): {:.2}x",
                d.changes,
                d.pg_recvlogical_seconds,
                d.pg_recvlogical_changes_per_second,
                d.sluice_seconds,
                d.sluice_changes_per_second,
                d.ratio
            );
        }
        if let Some(d) = &self.direct_load {
            println!(
                "the same {} documents loaded straight in ({} a task, all sent at once): {:.2} s ({:.0}/s); sluice's backfill: {:.2}x",
                d.documents, d.documents_per_task, d.seconds, d.documents_per_second, d.ratio
            );
        }
        if self.schedule.max_behind_ms > 100.0 && self.drain.is_none() {
            println!(
                "the load fell behind its schedule by up to {:.0} ms: the database could not take the rate asked for",
                self.schedule.max_behind_ms
            );
        }
        if self.not_arrived > 0 {
            println!(
                "{} committed writes never arrived: see sluice's log",
                self.not_arrived
            );
        }
    }

    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }
}
