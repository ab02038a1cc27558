//! A fake Typesense server in the test process.
//!
//! It serves what sluice uses of the Typesense API, as its documentation
//! describes it: collection creation (`POST /collections`), `GET
//! /collections/{c}`, `documents/import` (JSONL, `action=create|upsert|update|
//! emplace`, one answer line per document and HTTP 200 even when lines fail),
//! delete by `filter_by=id:[…]` and `truncate=true`, single documents by id,
//! and `/health`. Every request must carry `X-TYPESENSE-API-KEY` when a key
//! is set. It injects the failures a real node produces: failed lines (429,
//! 503), whole requests refused (429, 503), dropped connections, documents
//! refused for good (poison), and a dead node.
//!
//! ```ignore
//! let ts = FakeTypesense::start(FakeOptions::default()).await;
//! // … point a sink at ts.url() …
//! assert_eq!(ts.documents("items").len(), 3);
//! ```

// The Elasticsearch fake's cuttable connections, shared as a file: its
// module is private to that fake, and the fakes are edited independently.
#[allow(clippy::duplicate_mod)]
#[path = "../elasticsearch/conn.rs"]
mod conn;
mod http;
mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::cost::{WriteCost, Writers};
use store::Store;

/// How a [`FakeTypesense`] behaves.
#[derive(Clone, Debug)]
pub struct FakeOptions {
    /// The API key every request must carry in `X-TYPESENSE-API-KEY`;
    /// `None` lets anyone in.
    pub api_key: Option<String>,
    /// Seed of the generator that draws the injected failures.
    pub seed: u64,
    /// Keep a log of every request (see `requests()`).
    pub record_requests: bool,
    /// Failures to inject from the start.
    pub faults: Faults,
    /// What an import costs the node (nothing by default).
    pub write_cost: WriteCost,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            api_key: None,
            seed: 0,
            record_requests: true,
            faults: Faults::default(),
            write_cost: WriteCost::default(),
        }
    }
}

/// Injected failures. Probabilities are in `0.0..=1.0`, drawn from the seeded
/// generator. Request-level failures apply to imports and deletes of
/// documents; `dead` to every request.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Per import line: `{"success":false,"code":429,…}`, not applied.
    pub line_rejected_429: f64,
    /// Per import line: `{"success":false,"code":503,…}`, not applied.
    pub line_unavailable_503: f64,
    /// Per request: 429 `Rate limit exceeded or blocked`, nothing applied.
    pub request_rejected_429: f64,
    /// Per request: 503 `Not Ready or Lagging`, nothing applied.
    pub request_unavailable_503: f64,
    /// Per request: the connection is closed without an answer; the request
    /// may or may not have been applied (`dropped_after_apply`).
    pub request_dropped: f64,
    /// Dropped requests are applied before the connection is cut (the
    /// answer is lost, not the write).
    pub dropped_after_apply: bool,
    /// Documents with these ids always fail with a 400 line error.
    pub poison_ids: BTreeSet<String>,
    /// Documents whose source has this top-level field set to `true` always
    /// fail with a 400 line error (a field of the wrong type).
    pub poison_field: Option<String>,
    /// Every request answers 503.
    pub dead: bool,
    /// Every request waits this long before it is handled.
    pub delay: std::time::Duration,
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
    /// A header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A query parameter, decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        let query = self.query.as_deref()?;
        reqwest::Url::parse(&format!("http://x/?{query}"))
            .ok()?
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What the handlers share with the test.
struct Shared {
    options: FakeOptions,
    store: Mutex<Store>,
    faults: Mutex<Faults>,
    rng: Mutex<StdRng>,
    log: Mutex<Vec<RecordedRequest>>,
    /// Requests being handled now, and the most there ever were at once.
    in_flight: std::sync::atomic::AtomicUsize,
    max_in_flight: std::sync::atomic::AtomicUsize,
    /// The node's write threads, charging `options.write_cost`.
    writers: Writers,
}

impl Shared {
    fn faults(&self) -> Faults {
        lock(&self.faults).clone()
    }
}

/// Locks, ignoring a panic of an earlier holder.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running fake node on `127.0.0.1`. Dropping it stops the server.
pub struct FakeTypesense {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<()>,
}

impl FakeTypesense {
    /// Binds `127.0.0.1:0` and serves on a task of the current runtime.
    pub async fn start(options: FakeOptions) -> FakeTypesense {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("a bound address");
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            faults: Mutex::new(options.faults.clone()),
            rng: Mutex::new(StdRng::seed_from_u64(options.seed)),
            log: Mutex::new(Vec::new()),
            in_flight: Default::default(),
            max_in_flight: Default::default(),
            writers: Writers::new(options.write_cost),
            options,
        });
        let listener = conn::CuttableListener {
            inner: listener,
            shutdown: shutdown_rx,
        };
        let app =
            http::router(shared.clone()).into_make_service_with_connect_info::<conn::ConnHandle>();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeTypesense {
            addr,
            shared,
            shutdown,
            server,
        }
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting connections and cuts the open ones.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        self.server.abort();
    }

    /// The documents of `collection` by id; empty if there is no such collection.
    pub fn documents(&self, collection: &str) -> BTreeMap<String, Value> {
        lock(&self.shared.store)
            .collections
            .get(collection)
            .map(|c| {
                c.documents
                    .iter()
                    .map(|(id, doc)| (id.clone(), Value::Object(doc.clone())))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn document(&self, collection: &str, id: &str) -> Option<Value> {
        let store = lock(&self.shared.store);
        let doc = store.collections.get(collection)?.documents.get(id)?;
        Some(Value::Object(doc.clone()))
    }

    /// The schema `collection` was created with, as `GET /collections/{c}`
    /// shows it (without `num_documents`).
    pub fn collection(&self, collection: &str) -> Option<Value> {
        let store = lock(&self.shared.store);
        Some(store.collections.get(collection)?.schema.clone())
    }

    /// The names of all collections, sorted.
    pub fn collections(&self) -> Vec<String> {
        lock(&self.shared.store)
            .collections
            .keys()
            .cloned()
            .collect()
    }

    /// Creates a collection accepting any field (`.*` of type `auto`).
    pub fn create_collection(&self, collection: &str) {
        let schema = serde_json::json!({
            "name": collection,
            "fields": [{ "name": ".*", "type": "auto" }],
        });
        lock(&self.shared.store).create(schema);
    }

    /// Stores a document as if it had been imported (the collection is
    /// created if needed).
    pub fn insert_document(&self, collection: &str, doc: Value) {
        self.create_collection(collection);
        let Value::Object(doc) = doc else {
            panic!("a document is an object")
        };
        let id = doc["id"].as_str().expect("a string id").to_owned();
        let mut store = lock(&self.shared.store);
        let stored = store.collections.get_mut(collection).expect("created");
        stored.documents.insert(id, doc);
    }

    /// How many failures were injected (failed lines, refused or dropped
    /// requests).
    pub fn injected_failures(&self) -> u64 {
        lock(&self.shared.store).injected
    }

    /// The most requests that were handled at once.
    pub fn max_in_flight(&self) -> usize {
        self.shared
            .max_in_flight
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every request received since the start or `clear_requests`.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.log).clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.log).clear();
    }

    pub fn faults(&self) -> Faults {
        self.shared.faults()
    }

    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.shared.faults) = faults;
    }

    /// Changes the injected failures in place, e.g. `|f| f.dead = false`.
    pub fn update_faults(&self, change: impl FnOnce(&mut Faults)) {
        change(&mut lock(&self.shared.faults));
    }
}

impl Drop for FakeTypesense {
    fn drop(&mut self) {
        self.shutdown();
    }
}
