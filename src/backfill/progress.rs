//! The rate of a running backfill, over its last seconds, and the time it
//! still needs at that rate.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How far back the rate looks.
const WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct Progress {
    /// (when, rows done then), oldest first.
    samples: VecDeque<(Instant, u64)>,
}

impl Progress {
    /// The progress of a runner that starts (or resumes) at `now` with
    /// `rows_done` rows done: its rate counts from there, not from before
    /// a pause or a restart.
    pub fn starting(now: Instant, rows_done: u64) -> Progress {
        Progress {
            samples: VecDeque::from([(now, rows_done)]),
        }
    }

    /// Notes that `rows_done` rows were done at `now`.
    pub fn record(&mut self, now: Instant, rows_done: u64) {
        self.samples.push_back((now, rows_done));
        while self
            .samples
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > WINDOW)
            && self.samples.len() > 2
        {
            self.samples.pop_front();
        }
    }

    /// Rows per second over the last seconds; `None` until a chunk was
    /// done since the start.
    pub fn rate(&self) -> Option<f64> {
        match (self.samples.front(), self.samples.back()) {
            (Some((t0, r0)), Some((t1, r1))) if t1 > t0 => {
                Some(r1.saturating_sub(*r0) as f64 / t1.duration_since(*t0).as_secs_f64())
            }
            _ => None,
        }
    }

    /// The time `rows_left` rows take at the current rate; `None` while
    /// the rate is not known, or nothing moves.
    pub fn eta(&self, rows_left: u64) -> Option<Duration> {
        let rate = self.rate()?;
        (rate > 0.0).then(|| Duration::from_secs_f64(rows_left as f64 / rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_follows_the_last_seconds() {
        let t0 = Instant::now();
        let mut progress = Progress::starting(t0, 0);
        assert_eq!(progress.rate(), None);
        assert_eq!(progress.eta(10), None);
        progress.record(t0 + Duration::from_secs(1), 1000);
        assert_eq!(progress.rate(), Some(1000.0));
        assert_eq!(progress.eta(5000), Some(Duration::from_secs(5)));
        // Slower later: the old samples leave the window.
        for s in 2..30 {
            progress.record(t0 + Duration::from_secs(s), 1000 + (s - 1) * 100);
        }
        let rate = progress.rate().unwrap();
        assert!((rate - 100.0).abs() < 1e-9, "{rate}");
    }

    #[test]
    fn a_resumed_backfill_counts_its_rate_from_the_resume() {
        // 50,000 rows done before a pause of an hour; resumed, 20,000 more
        // in two seconds: 10,000 a second, not 20,000 over an hour.
        let t0 = Instant::now();
        let resumed = t0 + Duration::from_secs(3600);
        let mut progress = Progress::starting(resumed, 50_000);
        progress.record(resumed + Duration::from_secs(2), 70_000);
        assert_eq!(progress.rate(), Some(10_000.0));
        assert_eq!(progress.eta(30_000), Some(Duration::from_secs(3)));
    }
}
