//! What a fake cluster is told at start: who may talk to it, what it records,
//! and which failures it injects.

use std::collections::BTreeSet;
use std::time::Duration;

use super::super::cost::WriteCost;

/// The engine the fake says it is (`GET /`, the product header).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Flavor {
    #[default]
    Elasticsearch,
    OpenSearch,
}

/// How a [`super::FakeElasticsearch`] behaves.
#[derive(Clone, Debug)]
pub struct FakeOptions {
    /// The exact `Authorization` header value every request must carry
    /// (`ApiKey …`, `Basic …`, `Bearer …`); `None` lets anyone in.
    pub required_auth: Option<String>,
    /// Seed of the generator that draws the injected failures.
    pub seed: u64,
    /// Keep a log of every request (see `requests()`). Off for benches, so a
    /// million documents do not stay in memory twice.
    pub record_requests: bool,
    /// Keep document sources. Off, only ids, versions and tombstones are kept
    /// and sources are not even parsed (unless `poison_field` needs them):
    /// `documents()` then shows every source as `null`.
    pub store_sources: bool,
    /// Answer as Elasticsearch 8 or OpenSearch 2.
    pub flavor: Flavor,
    /// A longer request body is refused with 413 `content_too_long_exception`
    /// (the cluster's `http.max_content_length`, 100 MB by default).
    pub max_body_bytes: usize,
    /// Failures to inject from the start; change them later with
    /// `set_faults` / `update_faults`.
    pub faults: Faults,
    /// What a bulk request costs the node (nothing by default).
    pub write_cost: WriteCost,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            required_auth: None,
            seed: 0,
            record_requests: true,
            store_sources: true,
            flavor: Flavor::Elasticsearch,
            max_body_bytes: 100 * 1024 * 1024,
            faults: Faults::default(),
            write_cost: WriteCost::default(),
        }
    }
}

impl FakeOptions {
    /// Accept everything at once and remember as little as possible: for
    /// throughput benches.
    pub fn bench() -> Self {
        FakeOptions {
            record_requests: false,
            store_sources: false,
            ..FakeOptions::default()
        }
    }
}

/// Injected failures. Probabilities are in `0.0..=1.0`, drawn from the seeded
/// generator. Request-level failures apply to `_bulk` requests only; `dead`,
/// `hang_when_dead` and `delay` apply to every request.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Per item: 429 `es_rejected_execution_exception`, item not applied.
    pub item_rejected_429: f64,
    /// Per item: 503 `unavailable_shards_exception`, item not applied.
    pub item_unavailable_503: f64,
    /// Per bulk request: the whole request answers 429
    /// `es_rejected_execution_exception`, nothing applied.
    pub request_rejected_429: f64,
    /// Per bulk request: a proxy's 502 with an HTML body, nothing applied.
    pub request_bad_gateway_502: f64,
    /// Per bulk request: 503 `cluster_block_exception`, nothing applied.
    pub request_unavailable_503: f64,
    /// Per bulk request: the connection is closed without an answer, nothing
    /// applied.
    pub request_dropped: f64,
    /// Waited before answering every request.
    pub delay: Duration,
    /// Documents with these ids always fail with 400 `mapper_parsing_exception`
    /// (index, create and update; deletes go through).
    pub poison_ids: BTreeSet<String>,
    /// Documents whose source has this top-level field set to `true` always
    /// fail like `poison_ids`.
    pub poison_field: Option<String>,
    /// Every request answers 503, as a cluster without a master does.
    pub dead: bool,
    /// With `dead`, requests hang instead (until the fake shuts down), as a
    /// black-holed host does: the client's timeout has to fire.
    pub hang_when_dead: bool,
}
