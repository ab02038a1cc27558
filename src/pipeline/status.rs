//! What the pipeline is doing now, for the management API: whether it
//! streams, how often it restarted, and the positions it reached.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};

use crate::lsn::Lsn;

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
}

impl PipelineStatus {
    pub fn new(sinks: usize) -> PipelineStatus {
        PipelineStatus {
            streaming: AtomicBool::new(false),
            restarts: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            committed: (0..sinks).map(|_| AtomicU64::new(0)).collect(),
            dropped: Mutex::new(Vec::new()),
        }
    }

    pub fn set_streaming(&self, streaming: bool) {
        self.streaming.store(streaming, Relaxed);
    }

    pub fn restarted(&self) {
        self.restarts.fetch_add(1, Relaxed);
    }

    pub fn committed(&self, sink: usize, upto: Lsn, confirmed: Lsn) {
        if let Some(position) = self.committed.get(sink) {
            position.fetch_max(upto.0, Relaxed);
        }
        self.confirmed.fetch_max(confirmed.0, Relaxed);
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
