//! Per-stage counters: exported as Prometheus metrics and readable as a
//! serializable snapshot (tests, status output).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Counters of one stage.
#[derive(Debug)]
pub struct StageStats {
    stage: &'static str,
    batches: AtomicU64,
    changes_in: AtomicU64,
    changes_out: AtomicU64,
    dropped: AtomicU64,
    errors: AtomicU64,
    blocked_nanos: AtomicU64,
    last_warn: std::sync::Mutex<Option<Instant>>,
}

/// A point-in-time copy of a stage's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct StageSnapshot {
    pub batches: u64,
    pub changes_in: u64,
    pub changes_out: u64,
    pub dropped: u64,
    pub errors: u64,
    pub blocked_ms: u64,
}

/// Microseconds from 1970-01-01 to 2000-01-01, where Postgres's timestamps
/// count from.
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Seconds since a change committed, from its commit time as Postgres gives
/// it (microseconds since 2000-01-01 on the server's clock); `None` when it
/// is not known (0: a backfill's row, a write read back from the spool).
/// A server clock ahead of this one counts as no time.
pub fn since_commit(commit_time: i64) -> Option<f64> {
    if commit_time <= 0 {
        return None;
    }
    Some((postgres_now() - commit_time).max(0) as f64 / 1e6)
}

/// Now, as Postgres counts time: microseconds since 2000-01-01 UTC.
pub fn postgres_now() -> i64 {
    let unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    unix - POSTGRES_EPOCH_MICROS
}

/// A Postgres time (microseconds since 2000-01-01) as Unix seconds.
pub fn unix_seconds(postgres_micros: i64) -> f64 {
    (postgres_micros + POSTGRES_EPOCH_MICROS) as f64 / 1e6
}

/// The upper bounds of the buckets of every `_seconds` histogram: from a
/// tenth of a millisecond (a change's way through one stage) to a minute.
pub const SECONDS_BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Warnings about bad records are logged at most this often per stage.
const WARN_EVERY: Duration = Duration::from_secs(5);

impl StageStats {
    pub fn new(stage: &'static str) -> Arc<StageStats> {
        Arc::new(StageStats {
            stage,
            batches: AtomicU64::new(0),
            changes_in: AtomicU64::new(0),
            changes_out: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            blocked_nanos: AtomicU64::new(0),
            last_warn: std::sync::Mutex::new(None),
        })
    }

    pub fn stage(&self) -> &'static str {
        self.stage
    }

    /// Counts a batch through the stage.
    pub fn batch(&self, changes_in: usize, changes_out: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.changes_in
            .fetch_add(changes_in as u64, Ordering::Relaxed);
        self.changes_out
            .fetch_add(changes_out as u64, Ordering::Relaxed);
        metrics::counter!("sluice_stage_changes_total", "stage" => self.stage, "direction" => "in")
            .increment(changes_in as u64);
        metrics::counter!("sluice_stage_changes_total", "stage" => self.stage, "direction" => "out").increment(changes_out as u64);
    }

    /// Notes how long ago the oldest change of a batch leaving this stage
    /// committed (`commit_time` as [`since_commit`] takes it): the stages'
    /// histograms side by side say where a change's time goes.
    pub fn left(&self, commit_time: i64) {
        if let Some(age) = since_commit(commit_time) {
            metrics::histogram!("sluice_change_age_seconds", "stage" => self.stage).record(age);
        }
    }

    /// Counts changes filtered out on purpose.
    pub fn dropped(&self, n: usize) {
        self.dropped.fetch_add(n as u64, Ordering::Relaxed);
        metrics::counter!("sluice_stage_dropped_total", "stage" => self.stage).increment(n as u64);
    }

    /// Time spent waiting on the next stage or on flow control.
    pub fn blocked(&self, d: Duration) {
        self.blocked_nanos
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
        metrics::counter!("sluice_backpressure_microseconds_total", "stage" => self.stage)
            .increment(d.as_micros() as u64);
    }

    /// Counts a bad record and logs it, at most once per `WARN_EVERY`.
    pub fn bad_record(&self, what: impl std::fmt::Display) {
        let total = self.errors.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::counter!("sluice_stage_errors_total", "stage" => self.stage).increment(1);
        let mut last = self.last_warn.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(
                stage = self.stage,
                errors_total = total,
                "skipped a bad record: {what}"
            );
        }
    }

    pub fn snapshot(&self) -> StageSnapshot {
        StageSnapshot {
            batches: self.batches.load(Ordering::Relaxed),
            changes_in: self.changes_in.load(Ordering::Relaxed),
            changes_out: self.changes_out.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            blocked_ms: self.blocked_nanos.load(Ordering::Relaxed) / 1_000_000,
        }
    }
}
