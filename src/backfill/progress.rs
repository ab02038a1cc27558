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

    /// Rows per second over the last seconds (0 until two samples exist).
    pub fn rate(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some((t0, r0)), Some((t1, r1))) if t1 > t0 => {
                (r1 - r0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    /// The time `rows_left` rows take at the current rate.
    pub fn eta(&self, rows_left: u64) -> Option<Duration> {
        let rate = self.rate();
        (rate > 0.0).then(|| Duration::from_secs_f64(rows_left as f64 / rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_follows_the_last_seconds() {
        let mut progress = Progress::default();
        let t0 = Instant::now();
        assert_eq!(progress.rate(), 0.0);
        assert_eq!(progress.eta(10), None);
        progress.record(t0, 0);
        progress.record(t0 + Duration::from_secs(1), 1000);
        assert_eq!(progress.rate(), 1000.0);
        assert_eq!(progress.eta(5000), Some(Duration::from_secs(5)));
        // Slower later: the old samples leave the window.
        for s in 2..30 {
            progress.record(t0 + Duration::from_secs(s), 1000 + (s - 1) * 100);
        }
        assert!(
            (progress.rate() - 100.0).abs() < 1e-9,
            "{}",
            progress.rate()
        );
    }
}
