//! What the pipeline is doing now, for the management API and the lag
//! metrics: whether it streams, how often it restarted, the positions it
//! reached, and how old the oldest change not yet in every sink is.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};

use crate::lsn::Lsn;

/// Read marks kept at most; beyond, every other one is let go (the oldest
/// stays), so a sink down for hours costs a bounded few kilobytes and the
/// lag keeps its start.
const MAX_MARKS: usize = 4096;

/// A batch of the stream as read: every change below `upto` is in it or
/// before it, and the oldest of its changes committed at `oldest`.
#[derive(Debug, Clone, Copy)]
struct Mark {
    upto: u64,
    oldest: i64,
}

#[derive(Debug)]
pub struct PipelineStatus {
    streaming: AtomicBool,
    restarts: AtomicU64,
    /// Every change below this is durable in every sink.
    confirmed: AtomicU64,
    /// Per sink (in configuration order): its committed position.
    committed: Vec<AtomicU64>,
    /// Configured tables the catalog no longer has (dropped while streaming).
    dropped: Mutex<Vec<String>>,
    /// Batches read and not yet in every sink, oldest first.
    marks: Mutex<VecDeque<Mark>>,
    /// The commit time of the newest change read (Postgres microseconds).
    last_commit: AtomicI64,
    /// The server's end of WAL, as its messages last said.
    server_wal_end: AtomicU64,
}

impl PipelineStatus {
    pub fn new(sinks: usize) -> PipelineStatus {
        PipelineStatus {
            streaming: AtomicBool::new(false),
            restarts: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            committed: (0..sinks).map(|_| AtomicU64::new(0)).collect(),
            dropped: Mutex::new(Vec::new()),
            marks: Mutex::new(VecDeque::new()),
            last_commit: AtomicI64::new(0),
            server_wal_end: AtomicU64::new(0),
        }
    }

    fn marks(&self) -> std::sync::MutexGuard<'_, VecDeque<Mark>> {
        self.marks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A batch read from the stream: changes below `upto`, committed from
    /// `oldest` to `newest` (Postgres microseconds; 0: not known).
    pub fn read(&self, upto: Lsn, oldest: i64, newest: i64) {
        self.last_commit.fetch_max(newest, Relaxed);
        if oldest <= 0 {
            return;
        }
        let mut marks = self.marks();
        if marks.len() >= MAX_MARKS {
            let mut i = 0;
            marks.retain(|_| {
                i += 1;
                i % 2 == 1
            });
        }
        marks.push_back(Mark {
            upto: upto.0,
            oldest,
        });
    }

    /// The server's end of WAL, from a message of the stream.
    pub fn server_at(&self, wal_end: Lsn) {
        self.server_wal_end.fetch_max(wal_end.0, Relaxed);
    }

    /// Bytes of WAL the server has that are not yet in every sink; `None`
    /// before the stream said where the server is.
    pub fn lag_bytes(&self) -> Option<u64> {
        let end = self.server_wal_end.load(Relaxed);
        (end > 0).then(|| end.saturating_sub(self.confirmed().0))
    }

    /// Seconds since the oldest change read and not yet below `position`
    /// committed, at `now` (Postgres microseconds); 0 when there is none.
    pub fn lag_seconds(&self, position: Lsn, now: i64) -> f64 {
        let marks = self.marks();
        let first = marks.partition_point(|m| m.upto <= position.0);
        marks
            .get(first)
            .map_or(0.0, |m| (now - m.oldest).max(0) as f64 / 1e6)
    }

    /// The commit time of the newest change read (Postgres microseconds; 0
    /// before the first).
    pub fn last_commit(&self) -> i64 {
        self.last_commit.load(Relaxed)
    }

    pub fn set_streaming(&self, streaming: bool) {
        self.streaming.store(streaming, Relaxed);
    }

    pub fn restarted(&self) {
        self.restarts.fetch_add(1, Relaxed);
        // Read again from the slot's position, in order.
        self.marks().clear();
    }

    pub fn committed(&self, sink: usize, upto: Lsn, confirmed: Lsn) {
        if let Some(position) = self.committed.get(sink) {
            position.fetch_max(upto.0, Relaxed);
        }
        self.confirmed.fetch_max(confirmed.0, Relaxed);
        let mut marks = self.marks();
        while marks.front().is_some_and(|m| m.upto <= confirmed.0) {
            marks.pop_front();
        }
    }

    pub fn is_streaming(&self) -> bool {
        self.streaming.load(Relaxed)
    }

    pub fn restarts(&self) -> u64 {
        self.restarts.load(Relaxed)
    }

    pub fn confirmed(&self) -> Lsn {
        Lsn(self.confirmed.load(Relaxed))
    }

    pub fn set_dropped(&self, tables: Vec<String>) {
        *self.dropped.lock().unwrap_or_else(PoisonError::into_inner) = tables;
    }

    pub fn dropped(&self) -> Vec<String> {
        self.dropped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn sink_committed(&self, sink: usize) -> Lsn {
        Lsn(self.committed.get(sink).map_or(0, |p| p.load(Relaxed)))
    }
}

/// How often the lag gauges are set.
pub const LAG_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Sets the lag gauges every [`LAG_EVERY`], for as long as it runs: the lag
/// grows while nothing is acknowledged, so it is not set on events only.
pub async fn report_lag(status: std::sync::Arc<PipelineStatus>, sinks: Vec<String>) {
    let mut every = tokio::time::interval(LAG_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let now = super::stats::postgres_now();
        if let Some(bytes) = status.lag_bytes() {
            metrics::gauge!("sluice_replication_lag_bytes").set(bytes as f64);
        }
        metrics::gauge!("sluice_replication_lag_seconds")
            .set(status.lag_seconds(status.confirmed(), now));
        for (i, sink) in sinks.iter().enumerate() {
            metrics::gauge!("sluice_sink_lag_seconds", "sink" => sink.clone())
                .set(status.lag_seconds(status.sink_committed(i), now));
        }
        let last = status.last_commit();
        if last > 0 {
            metrics::gauge!("sluice_last_change_timestamp_seconds")
                .set(super::stats::unix_seconds(last));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lag_is_the_age_of_the_oldest_change_not_in_every_sink() {
        let status = PipelineStatus::new(2);
        assert_eq!(status.lag_seconds(Lsn(0), 10_000_000), 0.0);
        assert_eq!(status.lag_bytes(), None);
        status.read(Lsn(100), 1_000_000, 2_000_000);
        status.read(Lsn(200), 3_000_000, 4_000_000);
        status.server_at(Lsn(250));
        assert_eq!(status.last_commit(), 4_000_000);
        // Nothing acknowledged: since the first batch's oldest change.
        assert_eq!(status.lag_seconds(status.confirmed(), 10_000_000), 9.0);
        assert_eq!(status.lag_bytes(), Some(250));
        // One sink has the first batch, the other has nothing.
        status.committed(0, Lsn(100), Lsn(0));
        assert_eq!(
            status.lag_seconds(status.sink_committed(0), 10_000_000),
            7.0
        );
        assert_eq!(
            status.lag_seconds(status.sink_committed(1), 10_000_000),
            9.0
        );
        // Both have everything: caught up.
        status.committed(1, Lsn(200), Lsn(200));
        assert_eq!(status.lag_seconds(status.confirmed(), 10_000_000), 0.0);
        assert_eq!(status.lag_bytes(), Some(50));
    }

    #[test]
    fn marks_stay_bounded_and_keep_the_oldest() {
        let status = PipelineStatus::new(1);
        for i in 1..=(3 * MAX_MARKS as u64) {
            status.read(Lsn(i), i as i64, i as i64);
        }
        assert!(status.marks().len() <= MAX_MARKS);
        assert_eq!(status.lag_seconds(Lsn(0), 1_000_001), 1.0);
    }
}
