//! A fake Meilisearch in the test process.
//!
//! It serves the document and task routes sluice uses, as the Meilisearch
//! API reference documents them: add or replace (`POST
//! /indexes/{uid}/documents?primaryKey=`), add or update (`PUT`), `delete-batch`,
//! delete all documents, and `GET /tasks/{uid}`. Writes answer 202 with a
//! summarized task; a worker processes the tasks one at a time in enqueue
//! order, each taking `processing_delay`, so tasks stay `enqueued` and
//! `processing` for a while. A task applies all of its documents or none:
//! an invalid id or `_geo` field fails it with the documented error object.
//!
//! Injected failures (seeded): whole requests answering 429 or 503, dropped
//! connections (before the task is enqueued, or after: the answer is lost),
//! tasks failing with an `internal` error, 503s on task look-ups, and `dead`.
//!
//! ```ignore
//! let meili = FakeMeilisearch::start(FakeOptions::default()).await;
//! // … point a sink at meili.url() …
//! assert_eq!(meili.documents("items").len(), 3);
//! ```

mod http;
mod store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub use store::Task;
use store::{error, Store};

/// How a [`FakeMeilisearch`] behaves.
#[derive(Clone, Debug, Default)]
pub struct FakeOptions {
    /// The API key every request must carry as `Authorization: Bearer …`
    /// (401 without a header, 403 with another key); `None` lets anyone in.
    pub api_key: Option<String>,
    /// Seed of the generator that draws the injected failures.
    pub seed: u64,
    /// How long each batch of tasks is `processing`: as Meilisearch's, the
    /// cost is per batch (tasks behind it stay `enqueued`). A batch is the
    /// next task and every enqueued task after it that Meilisearch's
    /// auto-batcher merges with it: the same index and kind (document
    /// additions of one method, or deletions by id).
    pub processing_delay: Duration,
    /// What each document of a batch adds to its processing time (its
    /// indexing; nothing by default).
    pub processing_per_document: Duration,
    /// Failures to inject from the start (see `set_faults`).
    pub faults: Faults,
    /// `--http-payload-size-limit` in bytes (Meilisearch's default, 100 MB,
    /// when `None`): a larger body is refused with `payload_too_large`.
    pub max_payload_bytes: Option<usize>,
}

/// Injected failures. Probabilities are in `0.0..=1.0`, drawn per request
/// (writes) or per task from the seeded generator.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// A write answers 429 `too_many_requests`; nothing enqueued.
    pub request_429: f64,
    /// A write answers a proxy's 503; nothing enqueued.
    pub request_503: f64,
    /// A write's connection is closed without an answer; nothing enqueued.
    pub dropped_before: f64,
    /// A write is enqueued, then its connection is closed: the client never
    /// learns the task.
    pub dropped_after: f64,
    /// A task fails with `internal` (nothing applied).
    pub task_internal_error: f64,
    /// `GET /tasks/{uid}` answers 503.
    pub poll_503: f64,
    /// Every request answers 503.
    pub dead: bool,
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body, parsed as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// Whether it writes documents (anything but a task look-up).
    pub fn is_write(&self) -> bool {
        self.path.starts_with("/indexes/") && self.method != Method::GET
    }
}

struct Shared {
    api_key: Option<String>,
    max_payload_bytes: usize,
    store: Mutex<Store>,
    faults: Mutex<Faults>,
    processing_delay: Mutex<Duration>,
    processing_per_document: Duration,
    rng: Mutex<StdRng>,
    log: Mutex<Vec<RecordedRequest>>,
    /// Wakes the worker when a task is enqueued.
    work: Notify,
}

impl Shared {
    fn faults(&self) -> Faults {
        lock(&self.faults).clone()
    }

    /// Draws an event of probability `p`.
    fn draw(&self, p: f64) -> bool {
        p > 0.0 && lock(&self.rng).random_bool(p.min(1.0))
    }
}

/// Locks, ignoring a panic of an earlier holder.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running fake on `127.0.0.1`; dropping it stops the server and the worker.
pub struct FakeMeilisearch {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
    worker: JoinHandle<()>,
}

impl FakeMeilisearch {
    /// Binds `127.0.0.1:0` and serves on tasks of the current tokio runtime.
    pub async fn start(options: FakeOptions) -> FakeMeilisearch {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("a bound address");
        let shared = Arc::new(Shared {
            api_key: options.api_key,
            max_payload_bytes: options.max_payload_bytes.unwrap_or(http::MAX_BODY),
            store: Mutex::new(Store::default()),
            faults: Mutex::new(options.faults),
            processing_delay: Mutex::new(options.processing_delay),
            processing_per_document: options.processing_per_document,
            rng: Mutex::new(StdRng::seed_from_u64(options.seed)),
            log: Mutex::new(Vec::new()),
            work: Notify::new(),
        });
        let app = http::router(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let worker = tokio::spawn(process_tasks(shared.clone()));
        FakeMeilisearch {
            addr,
            shared,
            server,
            worker,
        }
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The documents of `index` by id; empty if there is no such index.
    pub fn documents(&self, index: &str) -> BTreeMap<String, Value> {
        lock(&self.shared.store)
            .indexes
            .get(index)
            .map(|i| {
                i.docs
                    .iter()
                    .map(|(id, doc)| (id.clone(), Value::Object(doc.clone())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Stores a document of an existing index as if a task had written it
    /// (its id is its `id` field).
    pub fn insert_document(&self, index: &str, doc: Value) {
        let Value::Object(doc) = doc else {
            panic!("a document is an object")
        };
        let id = doc["id"].as_str().expect("a string id").to_owned();
        let mut store = lock(&self.shared.store);
        let stored = store.indexes.get_mut(index).expect("an existing index");
        stored.docs.insert(id, doc);
    }

    /// The primary key of `index`, if it exists and has one.
    pub fn primary_key(&self, index: &str) -> Option<String> {
        lock(&self.shared.store)
            .indexes
            .get(index)
            .and_then(|i| i.primary_key.clone())
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.log).clone()
    }

    /// The requests that write documents, in order.
    pub fn write_requests(&self) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.is_write())
            .collect()
    }

    /// Every task, by uid.
    pub fn tasks(&self) -> Vec<Task> {
        lock(&self.shared.store).tasks.clone()
    }

    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.shared.faults) = faults;
    }

    /// Changes the injected failures in place, e.g. `|f| f.dead = false`.
    pub fn update_faults(&self, change: impl FnOnce(&mut Faults)) {
        change(&mut lock(&self.shared.faults));
    }

    /// Batches of tasks processed so far.
    pub fn batches(&self) -> usize {
        lock(&self.shared.store).batches
    }

    pub fn set_processing_delay(&self, delay: Duration) {
        *lock(&self.shared.processing_delay) = delay;
    }
}

impl Drop for FakeMeilisearch {
    fn drop(&mut self) {
        self.server.abort();
        self.worker.abort();
    }
}

/// The task worker: one batch at a time, in enqueue order.
async fn process_tasks(shared: Arc<Shared>) {
    loop {
        let batch = {
            let mut store = lock(&shared.store);
            let batch = store.next_batch();
            for &uid in &batch {
                store.tasks[uid].status = "processing";
                store.tasks[uid].started_at = Some(store::now());
            }
            batch
        };
        if batch.is_empty() {
            shared.work.notified().await;
            continue;
        }
        let documents: usize = {
            let store = lock(&shared.store);
            batch.iter().map(|&uid| store.tasks[uid].documents()).sum()
        };
        let delay =
            *lock(&shared.processing_delay) + shared.processing_per_document * documents as u32;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut store = lock(&shared.store);
        store.batches += 1;
        for uid in batch {
            let forced = shared.draw(shared.faults().task_internal_error).then(|| {
                error(
                    "internal",
                    "internal",
                    "An internal error has occurred. `Corrupted task queue.`.",
                )
            });
            store.process(uid, forced);
            store.next += 1;
        }
    }
}
