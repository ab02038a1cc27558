//! Which writes are committed and not yet delivered, and the latency of each
//! from the moment its COMMIT returned to the client to the moment its
//! document arrived.
//!
//! Every write the workload makes carries a sequence number (`seq`, a column
//! of the table, so it is in the document). A document that arrives settles
//! its write and every write of its row noted before it: sluice may fold
//! several changes of one row into one write, and the newest one then stands
//! for the older. A delete settles every write of its row.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// A document that arrived.
#[derive(Debug, Clone, Copy)]
pub enum Arrival {
    /// An upsert of row `id` carrying the write `seq`.
    Write {
        id: i64,
        seq: i64,
    },
    Delete {
        id: i64,
    },
}

/// Latencies in microseconds, from 1 µs to an hour, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

pub struct Tracker {
    inner: Mutex<Inner>,
}

/// One second of the run (by commit time).
pub struct Window {
    pub committed: u64,
    pub latency: Histogram<u64>,
}

struct Inner {
    /// Where the windows count from.
    start: Instant,
    /// By row: its writes committed and not yet delivered, oldest first.
    pending: HashMap<i64, VecDeque<(i64, Instant)>>,
    pending_count: usize,
    /// By row: the newest write that arrived before its commit was noted.
    early: HashMap<i64, (i64, Instant)>,
    total: Histogram<u64>,
    windows: Vec<Window>,
    /// Documents that carry no write of the workload (rows loaded before).
    untracked: u64,
}

impl Tracker {
    pub fn new() -> Tracker {
        Tracker {
            inner: Mutex::new(Inner {
                start: Instant::now(),
                pending: HashMap::new(),
                pending_count: 0,
                early: HashMap::new(),
                total: histogram(),
                windows: Vec::new(),
                untracked: 0,
            }),
        }
    }

    /// Starts the clock of the run's windows now.
    pub fn restart_clock(&self) {
        self.lock().start = Instant::now();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes the writes `(row, seq)` whose COMMIT returned at `at`.
    pub fn committed(&self, writes: &[(i64, i64)], at: Instant) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let second = at.saturating_duration_since(inner.start).as_secs() as usize;
        let window = window(&mut inner.windows, second);
        window.committed += writes.len() as u64;
        for &(id, seq) in writes {
            if let Some(&(arrived_seq, arrived)) = inner.early.get(&id) {
                if arrived_seq >= seq {
                    let latency = arrived.saturating_duration_since(at);
                    record(&mut inner.total, &mut window.latency, latency);
                    continue;
                }
            }
            inner.pending.entry(id).or_default().push_back((seq, at));
            inner.pending_count += 1;
        }
    }

    /// Notes documents that arrived at `at`.
    pub fn arrived(&self, arrivals: &[Arrival], at: Instant) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        for arrival in arrivals {
            let (id, upto) = match *arrival {
                Arrival::Write { seq, .. } if seq <= 0 => {
                    inner.untracked += 1;
                    continue;
                }
                Arrival::Write { id, seq } => (id, seq),
                Arrival::Delete { id } => (id, i64::MAX),
            };
            // The write that arrived, and every write of the row noted
            // before it (they committed first: it supersedes them).
            let found = inner.pending.get_mut(&id).and_then(|writes| match upto {
                i64::MAX => Some((writes, usize::MAX)),
                seq => {
                    let at = writes.iter().position(|&(s, _)| s == seq)?;
                    Some((writes, at))
                }
            });
            let Some((writes, at_write)) = found else {
                // Before its commit was noted (a delete, as `i64::MAX`: it
                // settles every write of the row).
                let newest = inner.early.entry(id).or_insert((upto, at));
                if newest.0 < upto {
                    *newest = (upto, at);
                }
                continue;
            };
            for _ in 0..=at_write.min(writes.len().saturating_sub(1)) {
                let Some((_, committed)) = writes.pop_front() else {
                    break;
                };
                inner.pending_count -= 1;
                let second = committed.saturating_duration_since(inner.start).as_secs() as usize;
                let window = window(&mut inner.windows, second);
                record(
                    &mut inner.total,
                    &mut window.latency,
                    at.saturating_duration_since(committed),
                );
            }
            if writes.is_empty() {
                inner.pending.remove(&id);
            }
        }
    }

    /// Up to `limit` rows with writes committed and not delivered, each with
    /// the oldest of those writes: what a search by id looks for.
    pub fn waiting(&self, limit: usize) -> Vec<(i64, i64)> {
        let inner = self.lock();
        inner
            .pending
            .iter()
            .filter_map(|(&id, writes)| Some((id, writes.front()?.0)))
            .take(limit)
            .collect()
    }

    /// Writes committed and not delivered yet.
    pub fn outstanding(&self) -> usize {
        self.lock().pending_count
    }

    /// Documents that carried no write of the workload.
    pub fn untracked(&self) -> u64 {
        self.lock().untracked
    }

    /// The latencies so far, and the windows.
    pub fn take(&self) -> (Histogram<u64>, Vec<Window>) {
        let mut inner = self.lock();
        (inner.total.clone(), std::mem::take(&mut inner.windows))
    }
}

fn window(windows: &mut Vec<Window>, second: usize) -> &mut Window {
    while windows.len() <= second {
        windows.push(Window {
            committed: 0,
            latency: histogram(),
        });
    }
    &mut windows[second]
}

fn record(total: &mut Histogram<u64>, window: &mut Histogram<u64>, latency: Duration) {
    let micros = (latency.as_micros() as u64).clamp(1, 3_600_000_000);
    total.saturating_record(micros);
    window.saturating_record(micros);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_write_settles_the_older_ones_of_its_row() {
        let tracker = Tracker::new();
        let t0 = Instant::now();
        tracker.committed(&[(1, 1), (2, 2)], t0);
        tracker.committed(&[(1, 3)], t0 + Duration::from_millis(1));
        assert_eq!(tracker.outstanding(), 3);
        tracker.arrived(
            &[Arrival::Write { id: 1, seq: 3 }],
            t0 + Duration::from_millis(5),
        );
        assert_eq!(tracker.outstanding(), 1);
        tracker.arrived(&[Arrival::Delete { id: 2 }], t0 + Duration::from_millis(9));
        assert_eq!(tracker.outstanding(), 0);
        let (total, _) = tracker.take();
        assert_eq!(total.len(), 3);
        assert!(
            total.max() >= 8_900 && total.max() <= 9_100,
            "{}",
            total.max()
        );
    }

    #[test]
    fn a_write_settles_only_those_of_its_row_noted_before_it() {
        let tracker = Tracker::new();
        let t0 = Instant::now();
        // Two connections: 12 committed first, then 10 (the row's newest).
        tracker.committed(&[(1, 12)], t0);
        tracker.committed(&[(1, 10)], t0 + Duration::from_millis(1));
        tracker.arrived(
            &[Arrival::Write { id: 1, seq: 12 }],
            t0 + Duration::from_millis(2),
        );
        assert_eq!(tracker.outstanding(), 1);
        tracker.arrived(
            &[Arrival::Write { id: 1, seq: 10 }],
            t0 + Duration::from_millis(3),
        );
        assert_eq!(tracker.outstanding(), 0);
    }

    #[test]
    fn a_document_that_arrives_before_its_commit_is_noted_counts_as_instant() {
        let tracker = Tracker::new();
        let t0 = Instant::now();
        tracker.arrived(&[Arrival::Write { id: 7, seq: 4 }], t0);
        tracker.arrived(&[Arrival::Write { id: 8, seq: 0 }], t0);
        tracker.committed(&[(7, 4)], t0 + Duration::from_millis(1));
        assert_eq!(tracker.outstanding(), 0);
        tracker.arrived(&[Arrival::Delete { id: 9 }], t0);
        tracker.committed(&[(9, 5), (9, 6)], t0 + Duration::from_millis(1));
        assert_eq!(tracker.outstanding(), 0);
        assert_eq!(tracker.untracked(), 1);
        assert_eq!(tracker.take().0.max(), 1);
    }
}
