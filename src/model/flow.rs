//! Flow control: a budget of WAL bytes in flight across the whole pipeline.
//!
//! The reader takes credits for the bytes it reads before it forwards them; the
//! credits travel with the batches (shared by the pieces a batch is split into)
//! and return to the budget when the last piece is dropped, after its write. When
//! the budget is spent the reader stops reading the socket and Postgres keeps the WAL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Credits are counted in units of this many bytes.
const UNIT: u64 = 1024;

/// The budget.
#[derive(Debug, Clone)]
pub struct FlowControl {
    semaphore: Arc<Semaphore>,
    total_units: u32,
}

/// Credits for some bytes in flight; returned on drop.
#[derive(Debug)]
pub struct Credit {
    _permit: OwnedSemaphorePermit,
    bytes: u64,
}

impl Credit {
    /// The bytes these credits stand for.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Returns the credits beyond `bytes` to the budget (the reader takes a
    /// whole batch's worth before reading and keeps what it read).
    pub fn shrink_to(mut self, bytes: u64) -> Credit {
        let keep = bytes.div_ceil(UNIT).max(1) as usize;
        let have = self._permit.num_permits();
        if keep < have {
            drop(self._permit.split(have - keep));
        }
        let released = self.bytes.saturating_sub(bytes);
        metrics::gauge!("sluice_bytes_in_flight").decrement(released as f64);
        self.bytes = self.bytes.min(bytes);
        self
    }
}

impl Drop for Credit {
    fn drop(&mut self) {
        metrics::gauge!("sluice_bytes_in_flight").decrement(self.bytes as f64);
    }
}

impl FlowControl {
    pub fn new(max_bytes: u64) -> FlowControl {
        let units = (max_bytes / UNIT).clamp(1, u32::MAX as u64 / 2) as u32;
        FlowControl {
            semaphore: Arc::new(Semaphore::new(units as usize)),
            total_units: units,
        }
    }

    /// The bytes the budget allows.
    pub fn max_bytes(&self) -> u64 {
        self.total_units as u64 * UNIT
    }

    /// The bytes currently in flight.
    pub fn in_flight(&self) -> u64 {
        (self.total_units as u64 - self.semaphore.available_permits() as u64) * UNIT
    }

    /// Waits for credits for `bytes` (capped at the whole budget) and returns
    /// them with the time spent waiting.
    pub async fn acquire(&self, bytes: u64) -> (Credit, Duration) {
        let units = bytes.div_ceil(UNIT).clamp(1, self.total_units as u64) as u32;
        let start = Instant::now();
        let permit = self
            .semaphore
            .clone()
            .acquire_many_owned(units)
            .await
            .expect("the flow-control semaphore is never closed");
        let waited = start.elapsed();
        metrics::gauge!("sluice_bytes_in_flight").increment(bytes as f64);
        (
            Credit {
                _permit: permit,
                bytes,
            },
            waited,
        )
    }

    /// Like `acquire`, but gives up after `timeout`.
    pub async fn acquire_timeout(
        &self,
        bytes: u64,
        timeout: Duration,
    ) -> Option<(Credit, Duration)> {
        tokio::time::timeout(timeout, self.acquire(bytes))
            .await
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn credits_return_when_dropped() {
        let flow = FlowControl::new(10 * UNIT);
        let (a, _) = flow.acquire(6 * UNIT).await;
        assert_eq!(flow.in_flight(), 6 * UNIT);
        assert!(flow
            .acquire_timeout(6 * UNIT, Duration::from_millis(20))
            .await
            .is_none());
        let a = a.shrink_to(5 * UNIT);
        assert_eq!(flow.in_flight(), 5 * UNIT);
        let shared = Arc::new(a);
        let piece = shared.clone();
        drop(shared);
        assert_eq!(flow.in_flight(), 5 * UNIT);
        drop(piece);
        assert_eq!(flow.in_flight(), 0);
        assert!(flow
            .acquire_timeout(6 * UNIT, Duration::from_millis(20))
            .await
            .is_some());
    }

    #[tokio::test]
    async fn oversized_requests_are_capped_at_the_budget() {
        let flow = FlowControl::new(4 * UNIT);
        let (_c, _) = flow.acquire(100 * UNIT).await;
        assert_eq!(flow.in_flight(), 4 * UNIT);
    }
}
