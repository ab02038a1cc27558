//! What a write costs an engine's node, for the fakes that model it: a fixed
//! part per request (for Elasticsearch: parsing, routing and the translog
//! fsync that ends every bulk request by default; for Typesense: the import
//! request's parse and its write to the Raft log) and a part per document
//! (indexing it), run on the engine's write threads, so that a request
//! waits for a free one. With no cost (the default) a write is applied and
//! answered at once.
//!
//! This is what makes the size of requests matter in the tests: many small
//! requests pay the fixed part many times, and the writers are the
//! backpressure that lets sluice's batches grow.

use std::time::Duration;

use tokio::sync::Semaphore;

/// The cost of one write request.
#[derive(Clone, Copy, Debug, Default)]
pub struct WriteCost {
    pub per_request: Duration,
    pub per_document: Duration,
    /// Requests the node works on at once (at least 1).
    pub writers: usize,
}

/// The node's write threads.
#[derive(Debug)]
pub struct Writers {
    cost: WriteCost,
    threads: Semaphore,
}

impl Writers {
    pub fn new(cost: WriteCost) -> Writers {
        Writers {
            cost,
            threads: Semaphore::new(cost.writers.max(1)),
        }
    }

    /// Waits for a write thread and holds it for what a request of
    /// `documents` costs.
    pub async fn charge(&self, documents: usize) {
        let cost = self.cost.per_request + self.cost.per_document * documents as u32;
        if cost.is_zero() {
            return;
        }
        let _thread = self
            .threads
            .acquire()
            .await
            .expect("the semaphore stays open");
        tokio::time::sleep(cost).await;
    }
}
