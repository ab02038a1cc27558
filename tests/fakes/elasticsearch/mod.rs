//! A fake Elasticsearch / OpenSearch cluster in the test process.
//!
//! It serves the part of the REST API sluice uses, as the Elasticsearch
//! reference documents it: `_bulk` (NDJSON, gzip, per-item results, external
//! versions and tombstones), index creation and existence, document GET,
//! `_refresh`, match-all `_delete_by_query`, and `GET /`. Its state can be read
//! from the test without HTTP, and it injects the failures a real cluster
//! produces: rejected items and requests, a proxy's 502, dropped connections,
//! delays, permanently bad documents, and a dead cluster.
//!
//! ```ignore
//! let es = FakeElasticsearch::start(FakeOptions::default()).await;
//! // … point a sink at es.url() …
//! assert_eq!(es.version("items", "1"), Some(42));
//! ```

mod bulk;
mod conn;
mod errors;
mod http;
mod options;
mod store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use options::{FakeOptions, Faults, Flavor};

use super::cost::Writers;
use store::{Slot, Store};

/// A running fake cluster on `127.0.0.1`. Dropping it stops the server and
/// cuts every open connection.
pub struct FakeElasticsearch {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<()>,
}

/// One request as received, its body decompressed.
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

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body's NDJSON lines, parsed (for `_bulk` requests).
    pub fn json_lines(&self) -> Vec<Value> {
        self.body
            .split(|b| *b == b'\n')
            .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
            .map(|line| serde_json::from_slice(line).expect("a JSON line"))
            .collect()
    }
}

/// What the handlers share with the test.
struct Shared {
    options: FakeOptions,
    store: Mutex<Store>,
    faults: Mutex<Arc<Faults>>,
    rng: Mutex<StdRng>,
    log: Mutex<Vec<RecordedRequest>>,
    requests: AtomicU64,
    bulk_requests: AtomicU64,
    /// The node's write threads, charging `options.write_cost`.
    writers: Writers,
    /// Open points in time: by id, the index's live documents (id and
    /// source) when it was opened.
    pits: Mutex<std::collections::HashMap<String, PointInTime>>,
    shutdown: watch::Receiver<bool>,
}

/// The live documents of an index when a point in time was opened: each id
/// and its source, by id.
type PointInTime = Vec<(String, Box<str>)>;

impl Shared {
    fn faults(&self) -> Arc<Faults> {
        lock(&self.faults).clone()
    }
}

/// Locks, ignoring a panic of an earlier holder: the state stays readable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FakeElasticsearch {
    /// Binds `127.0.0.1:0` and serves on a task of the current tokio runtime,
    /// which must keep running (in a bench: a multi-thread runtime).
    pub async fn start(options: FakeOptions) -> FakeElasticsearch {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("a bound address");
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(options.store_sources)),
            faults: Mutex::new(Arc::new(options.faults.clone())),
            rng: Mutex::new(StdRng::seed_from_u64(options.seed)),
            log: Mutex::new(Vec::new()),
            requests: AtomicU64::new(0),
            bulk_requests: AtomicU64::new(0),
            writers: Writers::new(options.write_cost),
            pits: Mutex::default(),
            shutdown: shutdown_rx.clone(),
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
        FakeElasticsearch {
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

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections and cuts the open ones (hanging requests
    /// included). Dropping the fake does the same.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        self.server.abort();
    }

    /// The live documents of `index` by `_id` (sources are `null` when
    /// `store_sources` is off); empty if there is no such index.
    pub fn documents(&self, index: &str) -> BTreeMap<String, Value> {
        let store = lock(&self.shared.store);
        let Some(index) = store.indexes.get(index) else {
            return BTreeMap::new();
        };
        index
            .slots
            .iter()
            .filter_map(|(id, slot)| match slot {
                Slot::Live { source, .. } => Some((id.clone(), parse_source(source))),
                Slot::Deleted { .. } => None,
            })
            .collect()
    }

    /// A live document's source.
    pub fn document(&self, index: &str, id: &str) -> Option<Value> {
        match self.slot(index, id)? {
            Slot::Live { source, .. } => Some(parse_source(&source)),
            Slot::Deleted { .. } => None,
        }
    }

    /// A live document's `_version`.
    pub fn version(&self, index: &str, id: &str) -> Option<u64> {
        match self.slot(index, id)? {
            Slot::Live { version, .. } => Some(version),
            Slot::Deleted { .. } => None,
        }
    }

    /// The version of a deleted document's tombstone.
    pub fn tombstone(&self, index: &str, id: &str) -> Option<u64> {
        match self.slot(index, id)? {
            Slot::Deleted { version } => Some(version),
            Slot::Live { .. } => None,
        }
    }

    /// How many live documents `index` holds (cheap, for benches).
    pub fn doc_count(&self, index: &str) -> usize {
        let store = lock(&self.shared.store);
        store.indexes.get(index).map_or(0, |index| {
            index
                .slots
                .values()
                .filter(|s| matches!(s, Slot::Live { .. }))
                .count()
        })
    }

    pub fn index_exists(&self, index: &str) -> bool {
        lock(&self.shared.store).indexes.contains_key(index)
    }

    /// The names of all indexes, sorted.
    pub fn indexes(&self) -> Vec<String> {
        let mut names: Vec<String> = lock(&self.shared.store).indexes.keys().cloned().collect();
        names.sort();
        names
    }

    /// The body `index` was created with by `PUT /{index}` (`{}` when it had
    /// none or was created by a write).
    pub fn index_definition(&self, index: &str) -> Option<Value> {
        lock(&self.shared.store)
            .indexes
            .get(index)
            .map(|i| i.definition.clone())
    }

    /// Stores a document as if it had been written with `version`, for a test
    /// to start from.
    pub fn insert_document(&self, index: &str, id: &str, source: Value, version: u64) {
        let mut store = lock(&self.shared.store);
        store.create_index(index, serde_json::json!({}));
        let slot = Slot::Live {
            version,
            seq_no: 0,
            source: source.to_string().into(),
        };
        store
            .indexes
            .get_mut(index)
            .expect("created")
            .slots
            .insert(id.to_owned(), slot);
    }

    /// Every request received since the start or `clear_requests` (empty when
    /// `record_requests` is off).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.log).clone()
    }

    /// Requests received, recorded or not, whatever their answer.
    pub fn requests_count(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Requests to a `_bulk` endpoint, whatever their answer (401, injected
    /// failures and dropped connections included).
    pub fn bulk_requests_count(&self) -> u64 {
        self.shared.bulk_requests.load(Ordering::Relaxed)
    }

    /// Forgets the request log and resets both counters.
    pub fn clear_requests(&self) {
        lock(&self.shared.log).clear();
        self.shared.requests.store(0, Ordering::Relaxed);
        self.shared.bulk_requests.store(0, Ordering::Relaxed);
    }

    pub fn faults(&self) -> Faults {
        (*self.shared.faults()).clone()
    }

    /// Replaces the injected failures; requests already running keep theirs.
    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.shared.faults) = Arc::new(faults);
    }

    /// Changes the injected failures in place, e.g. `|f| f.dead = false`.
    pub fn update_faults(&self, change: impl FnOnce(&mut Faults)) {
        let mut faults = lock(&self.shared.faults);
        change(Arc::make_mut(&mut faults));
    }

    fn slot(&self, index: &str, id: &str) -> Option<Slot> {
        lock(&self.shared.store)
            .indexes
            .get(index)?
            .slots
            .get(id)
            .cloned()
    }
}

impl Drop for FakeElasticsearch {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn parse_source(source: &str) -> Value {
    serde_json::from_str(source).unwrap_or(Value::Null)
}
