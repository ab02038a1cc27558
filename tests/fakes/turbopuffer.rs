//! A fake Turbopuffer in the test process.
//!
//! It serves the part of the v2 API sluice uses, as turbopuffer's reference
//! documents it: `POST /v2/namespaces/:namespace` with `upsert_rows`,
//! `patch_rows` (patches of missing rows are ignored), `deletes`,
//! `delete_by_filter` (`Eq`/`NotEq`/`In`/`Gte`/`Lt`, `And`/`Or`),
//! `distance_metric` and `schema`, and `DELETE /v2/namespaces/:namespace`.
//! Ids are unsigned integers, strings of at most 64 bytes, or UUIDs (when
//! the schema says `"id": "uuid"`), one kind per namespace. A request is
//! checked whole before anything is applied, then applied at once:
//! `delete_by_filter` first, then `upsert_rows`, `patch_rows` and `deletes`
//! (an order of parts the fake picks; a client must not depend on it, and
//! `repeated_ids` counts the requests that would). Errors answer
//! `{"status":"error","error":"…"}`.
//!
//! Injected failures, drawn from a seeded `StdRng`: 429 (with `Retry-After`
//! when asked), 500, dropped connections (before or after applying), a poison
//! predicate that refuses a request with a permanent 400, and a dead mode in
//! which everything answers 503.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use tokio::task::JoinHandle;

/// Decides whether a write request (namespace, body) is refused with a 400.
pub type Poison = Arc<dyn Fn(&str, &Value) -> bool + Send + Sync>;

/// How the fake behaves.
#[derive(Clone, Default)]
pub struct FakeOptions {
    /// The API key every request must carry as `Authorization: Bearer …`;
    /// `None` lets anyone in.
    pub api_key: Option<String>,
    /// Seed of the generator that draws the injected failures.
    pub seed: u64,
    pub faults: Faults,
}

/// Injected failures; probabilities per request, in `0.0..=1.0`.
#[derive(Clone, Default)]
pub struct Faults {
    /// 429 "rate limited", nothing applied.
    pub rate_limited_429: f64,
    /// With 429s: the `Retry-After` header, in seconds.
    pub retry_after_secs: Option<u64>,
    /// 500 "internal error", nothing applied.
    pub server_error_500: f64,
    /// The connection closes without an answer, nothing applied.
    pub dropped: f64,
    /// The request is applied, then the connection closes without an answer.
    pub dropped_after_apply: f64,
    /// Waited before answering every request.
    pub delay: Duration,
    /// Write requests for which this holds fail with a permanent 400.
    pub poison: Option<Poison>,
    /// Every request answers 503.
    pub dead: bool,
}

impl Faults {
    /// A poison refusing any write request with an upserted or patched row
    /// whose attribute `field` is `true`.
    pub fn poison_field(field: &str) -> Poison {
        let field = field.to_owned();
        Arc::new(move |_, body| {
            ["upsert_rows", "patch_rows"].iter().any(|part| {
                body[*part].as_array().is_some_and(|rows| {
                    rows.iter()
                        .any(|row| row[field.as_str()] == Value::Bool(true))
                })
            })
        })
    }
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When it arrived.
    pub at: std::time::Instant,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON (`Null` when empty or not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// A row's id (integers in decimal) and attributes.
type Row = (String, Map<String, Value>);

/// The kind of ids a namespace holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdKind {
    U64,
    Uuid,
    String,
}

#[derive(Default)]
struct Namespace {
    kind: Option<IdKind>,
    /// Rows by id (numbers in decimal), attributes without `id`.
    rows: BTreeMap<String, Map<String, Value>>,
}

struct Shared {
    options: FakeOptions,
    faults: Mutex<Faults>,
    rng: Mutex<StdRng>,
    namespaces: Mutex<BTreeMap<String, Namespace>>,
    log: Mutex<Vec<RecordedRequest>>,
    /// Ids named more than once in one request.
    repeated_ids: AtomicU64,
    /// Requests in their `delay` now, and the most there were at once.
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running fake on `127.0.0.1`; dropping it stops the server.
pub struct FakeTurbopuffer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl FakeTurbopuffer {
    pub async fn start(options: FakeOptions) -> FakeTurbopuffer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("a bound address");
        let shared = Arc::new(Shared {
            faults: Mutex::new(options.faults.clone()),
            rng: Mutex::new(StdRng::seed_from_u64(options.seed)),
            namespaces: Mutex::new(BTreeMap::new()),
            log: Mutex::new(Vec::new()),
            repeated_ids: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            options,
        });
        let app = Router::new()
            .route("/v2/namespaces/{namespace}", post(write).delete(delete))
            .route("/v2/namespaces/{namespace}/query", post(query))
            .route("/v1/namespaces", get(list_namespaces))
            // Turbopuffer takes write requests up to 256 MB (axum's default
            // would refuse them past 2 MB).
            .layer(axum::extract::DefaultBodyLimit::max(256 * 1024 * 1024))
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeTurbopuffer {
            addr,
            shared,
            server,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The rows of a namespace by id (integers in decimal), attributes only.
    pub fn rows(&self, namespace: &str) -> BTreeMap<String, Value> {
        lock(&self.shared.namespaces)
            .get(namespace)
            .map(|ns| {
                ns.rows
                    .iter()
                    .map(|(id, row)| (id.clone(), Value::Object(row.clone())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Stores a row of an existing namespace as if a write had (`id` in
    /// decimal for integer ids).
    pub fn insert_row(&self, namespace: &str, id: &str, attributes: Value) {
        let Value::Object(attributes) = attributes else {
            panic!("attributes are an object")
        };
        let mut namespaces = lock(&self.shared.namespaces);
        let ns = namespaces
            .get_mut(namespace)
            .expect("an existing namespace");
        ns.rows.insert(id.to_owned(), attributes);
    }

    /// The kind of ids a namespace holds, if it exists and has rows.
    pub fn id_kind(&self, namespace: &str) -> Option<IdKind> {
        lock(&self.shared.namespaces).get(namespace)?.kind
    }

    pub fn namespaces(&self) -> Vec<String> {
        lock(&self.shared.namespaces).keys().cloned().collect()
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.log).clone()
    }

    /// How often one request named the same id more than once (in one part or
    /// across `upsert_rows`, `patch_rows` and `deletes`): such a request
    /// depends on the API's order of parts, not the order of writes.
    pub fn repeated_ids(&self) -> u64 {
        self.shared.repeated_ids.load(Ordering::Relaxed)
    }

    /// The most requests that were in their `delay` at once.
    pub fn max_in_flight(&self) -> u64 {
        self.shared.max_in_flight.load(Ordering::Relaxed)
    }

    pub fn update_faults(&self, change: impl FnOnce(&mut Faults)) {
        change(&mut lock(&self.shared.faults));
    }
}

impl Drop for FakeTurbopuffer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"status": "error", "error": message})),
    )
        .into_response()
}

/// A 200 whose body fails: the client sees the connection close unanswered.
fn dropped() -> Response {
    let stream = futures_util::stream::once(async {
        Err::<Bytes, _>(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "dropped by the fake",
        ))
    });
    Response::new(Body::from_stream(stream))
}

/// What the injected faults make of a request before it is handled.
enum Fault {
    None,
    Answer(Response),
    DropAfterApply,
}

async fn common(
    shared: &Shared,
    method: Method,
    path: String,
    headers: &HeaderMap,
    body: &Bytes,
) -> Fault {
    lock(&shared.log).push(RecordedRequest {
        method,
        path,
        headers: headers.clone(),
        body: body.clone(),
        at: std::time::Instant::now(),
    });
    let faults = lock(&shared.faults).clone();
    if !faults.delay.is_zero() {
        let now = shared.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::Relaxed);
        tokio::time::sleep(faults.delay).await;
        shared.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
    if let Some(key) = &shared.options.api_key {
        let expected = format!("Bearer {key}");
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
            return Fault::Answer(error(
                StatusCode::UNAUTHORIZED,
                "missing or invalid API key",
            ));
        }
    }
    if faults.dead {
        return Fault::Answer(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "service unavailable",
        ));
    }
    let draw: f64 = lock(&shared.rng).random();
    let mut edge = faults.rate_limited_429;
    if draw < edge {
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate limited: too many concurrent writes to this namespace, retry with backoff",
        );
        if let Some(secs) = faults.retry_after_secs {
            response.headers_mut().insert(
                "retry-after",
                secs.to_string().parse().expect("a header value"),
            );
        }
        return Fault::Answer(response);
    }
    edge += faults.server_error_500;
    if draw < edge {
        return Fault::Answer(error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"));
    }
    edge += faults.dropped;
    if draw < edge {
        return Fault::Answer(dropped());
    }
    edge += faults.dropped_after_apply;
    if draw < edge {
        return Fault::DropAfterApply;
    }
    Fault::None
}

/// `GET /v1/namespaces`: the namespaces, first page (`page_size`, default
/// 1000), as `{"namespaces": [{"id": …}], "next_cursor": …}`.
async fn list_namespaces(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let fault = common(
        &shared,
        Method::GET,
        "/v1/namespaces".into(),
        &headers,
        &Bytes::new(),
    )
    .await;
    if let Fault::Answer(response) = fault {
        return response;
    }
    let size = params
        .get("page_size")
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(1000);
    let names: Vec<String> = lock(&shared.namespaces).keys().cloned().collect();
    let page: Vec<Value> = names
        .iter()
        .take(size)
        .map(|id| json!({"id": id}))
        .collect();
    let next = (names.len() > size).then(|| names[size - 1].clone());
    (
        StatusCode::OK,
        Json(json!({"namespaces": page, "next_cursor": next})),
    )
        .into_response()
}

async fn delete(
    State(shared): State<Arc<Shared>>,
    Path(namespace): Path<String>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/v2/namespaces/{namespace}");
    let fault = common(&shared, Method::DELETE, path, &headers, &Bytes::new()).await;
    if let Fault::Answer(response) = fault {
        return response;
    }
    let existed = lock(&shared.namespaces).remove(&namespace).is_some();
    match (existed, fault) {
        (_, Fault::DropAfterApply) => dropped(),
        (true, _) => axum::Json(json!({"status": "ok"})).into_response(),
        (false, _) => error(
            StatusCode::NOT_FOUND,
            &format!("namespace '{namespace}' was not found"),
        ),
    }
}

/// `POST /v2/namespaces/:namespace/query` ranked by id (`["id", "asc"]`),
/// optionally filtered by `["id", "Gt", …]` or `["id", "In", […]]`, with
/// every attribute (`include_attributes: true`) and at most 1,200 rows.
async fn query(
    State(shared): State<Arc<Shared>>,
    Path(namespace): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v2/namespaces/{namespace}/query");
    match common(&shared, Method::POST, path, &headers, &body).await {
        Fault::Answer(response) => return response,
        // A query changes nothing: its answer is lost all the same.
        Fault::DropAfterApply => return dropped(),
        Fault::None => {}
    }
    let bad = |message: &str| error(StatusCode::BAD_REQUEST, message);
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return bad("invalid JSON body");
    };
    if request["rank_by"] != json!(["id", "asc"]) {
        return bad("this fake ranks only by [\"id\", \"asc\"]");
    }
    let Some(top_k) = request["top_k"].as_u64().filter(|k| (1..=1200).contains(k)) else {
        return bad("top_k must be between 1 and 1200");
    };
    if request["include_attributes"] != json!(true) {
        return bad("this fake returns rows only with include_attributes: true");
    }
    let namespaces = lock(&shared.namespaces);
    let Some(ns) = namespaces.get(&namespace) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("namespace '{namespace}' was not found"),
        );
    };
    let numeric = ns.kind == Some(IdKind::U64);
    let key = |id: &str| -> (u64, String) {
        match numeric {
            true => (id.parse().unwrap_or(u64::MAX), String::new()),
            false => (0, id.to_owned()),
        }
    };
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    let filter = &request["filters"];
    let mut rows: Vec<(&String, &Map<String, Value>)> = ns.rows.iter().collect();
    match filter {
        Value::Null => {}
        Value::Array(f) if f.len() == 3 && f[0] == "id" && f[1] == "Gt" => {
            let after = key(&text(&f[2]));
            rows.retain(|(id, _)| key(id) > after);
        }
        Value::Array(f) if f.len() == 3 && f[0] == "id" && f[1] == "In" && f[2].is_array() => {
            let wanted: std::collections::HashSet<String> =
                f[2].as_array().unwrap().iter().map(text).collect();
            rows.retain(|(id, _)| wanted.contains(*id));
        }
        _ => return bad("this fake filters only by id (Gt or In)"),
    }
    rows.sort_by_key(|(id, _)| key(id));
    let rows: Vec<Value> = rows
        .into_iter()
        .take(top_k as usize)
        .map(|(id, attributes)| {
            let mut row = Map::new();
            let id = match numeric {
                true => json!(id.parse::<u64>().unwrap_or_default()),
                false => json!(id),
            };
            row.insert("id".into(), id);
            row.extend(attributes.iter().map(|(k, v)| (k.clone(), v.clone())));
            Value::Object(row)
        })
        .collect();
    axum::Json(json!({ "rows": rows, "billing": { "billable_logical_bytes_queried": 0 } }))
        .into_response()
}

async fn write(
    State(shared): State<Arc<Shared>>,
    Path(namespace): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v2/namespaces/{namespace}");
    let fault = common(&shared, Method::POST, path, &headers, &body).await;
    if let Fault::Answer(response) = fault {
        return response;
    }
    let valid_name = (1..=128).contains(&namespace.len())
        && namespace
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid_name {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid namespace name, must match [A-Za-z0-9-_.]{1,128}",
        );
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(value @ Value::Object(_)) => value,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "the request body is not a JSON object",
            )
        }
    };
    if let Some(poison) = &lock(&shared.faults).poison {
        if poison(&namespace, &request) {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid value for attribute: refused by the test's poison predicate",
            );
        }
    }
    let counts = {
        let mut namespaces = lock(&shared.namespaces);
        let ns = namespaces.entry(namespace.clone()).or_default();
        match apply(ns, &request, &shared.repeated_ids) {
            Ok(counts) => counts,
            Err(message) => {
                if ns.rows.is_empty() && ns.kind.is_none() {
                    namespaces.remove(&namespace);
                }
                return error(StatusCode::BAD_REQUEST, &message);
            }
        }
    };
    if let Fault::DropAfterApply = fault {
        return dropped();
    }
    let (upserted, patched, deleted) = counts;
    axum::Json(json!({
        "rows_affected": upserted + patched + deleted,
        "rows_upserted": upserted,
        "rows_patched": patched,
        "rows_deleted": deleted,
        "billing": {"billable_logical_bytes_written": body.len()},
    }))
    .into_response()
}

/// Checks a write request whole, then applies it; returns the rows upserted,
/// patched and deleted.
fn apply(
    ns: &mut Namespace,
    request: &Value,
    repeated: &AtomicU64,
) -> Result<(u64, u64, u64), String> {
    const KNOWN: [&str; 6] = [
        "upsert_rows",
        "patch_rows",
        "deletes",
        "delete_by_filter",
        "distance_metric",
        "schema",
    ];
    let object = request.as_object().expect("checked");
    if let Some(unknown) = object.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(format!("unknown field `{unknown}`"));
    }
    if let Some(metric) = object.get("distance_metric") {
        if !matches!(
            metric.as_str(),
            Some("cosine_distance" | "euclidean_squared")
        ) {
            return Err(format!("invalid distance_metric {metric}"));
        }
    }
    let uuid_schema =
        request["schema"]["id"] == "uuid" || request["schema"]["id"]["type"] == "uuid";
    let mut kind = ns.kind;
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut id_of = |id: &Value| -> Result<String, String> {
        let (this, key) = match id {
            Value::Number(n) => match n.as_u64() {
                Some(n) => (IdKind::U64, n.to_string()),
                None => {
                    return Err(format!(
                        "invalid id {n}: ids are unsigned 64-bit integers, UUIDs or strings"
                    ))
                }
            },
            Value::String(s) if uuid_schema || kind == Some(IdKind::Uuid) => {
                if !is_uuid(s) {
                    return Err(format!("invalid id \"{s}\": not a UUID"));
                }
                (IdKind::Uuid, s.to_ascii_lowercase())
            }
            Value::String(s) if s.len() > 64 => {
                return Err(format!("id \"{s}\" is longer than 64 bytes"))
            }
            Value::String(s) => (IdKind::String, s.clone()),
            other => return Err(format!("invalid id {other}")),
        };
        match kind {
            Some(k) if k != this => {
                return Err(format!(
                    "id type mismatch: the namespace holds {k:?} ids, got {id}"
                ))
            }
            _ => kind = Some(this),
        }
        *seen.entry(key.clone()).or_default() += 1;
        Ok(key)
    };
    let rows = |part: &str| -> Result<Vec<&Map<String, Value>>, String> {
        match request.get(part) {
            None => Ok(Vec::new()),
            Some(Value::Array(rows)) => rows
                .iter()
                .map(|row| {
                    row.as_object()
                        .ok_or_else(|| format!("{part}: a row is not an object"))
                })
                .collect(),
            Some(_) => Err(format!("{part} must be an array")),
        }
    };
    let mut checked = |rows: Vec<&Map<String, Value>>| -> Result<Vec<Row>, String> {
        rows.into_iter()
            .map(|row| {
                let id = row.get("id").ok_or("a row has no id")?;
                let mut attributes = row.clone();
                attributes.remove("id");
                Ok((id_of(id)?, attributes))
            })
            .collect()
    };
    let upserts = checked(rows("upsert_rows")?)?;
    let patches = checked(rows("patch_rows")?)?;
    let deletes = match request.get("deletes") {
        None => Vec::new(),
        Some(Value::Array(ids)) => ids.iter().map(&mut id_of).collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err("deletes must be an array".into()),
    };
    let filter = request.get("delete_by_filter");
    if let Some(filter) = filter {
        matches(filter, "", &Map::new())?;
    }
    let repeats = seen.values().filter(|n| **n > 1).count() as u64;
    repeated.fetch_add(repeats, Ordering::Relaxed);
    // Everything checked: apply, in the API's order.
    ns.kind = kind;
    let mut deleted = 0;
    if let Some(filter) = filter {
        let before = ns.rows.len();
        ns.rows
            .retain(|id, row| !matches(filter, id, row).unwrap_or(false));
        deleted += (before - ns.rows.len()) as u64;
    }
    let upserted = upserts.len() as u64;
    for (id, row) in upserts {
        ns.rows.insert(id, row);
    }
    let mut patched = 0;
    for (id, patch) in patches {
        if let Some(row) = ns.rows.get_mut(&id) {
            row.extend(patch);
            patched += 1;
        }
    }
    for id in deletes {
        deleted += ns.rows.remove(&id).is_some() as u64;
    }
    Ok((upserted, patched, deleted))
}

/// Evaluates a filter on a row (`id` names the row id).
fn matches(filter: &Value, id: &str, row: &Map<String, Value>) -> Result<bool, String> {
    let parts = filter
        .as_array()
        .ok_or_else(|| format!("invalid filter {filter}"))?;
    match parts.as_slice() {
        [Value::String(op), Value::Array(subs)] if op == "And" || op == "Or" => {
            let mut results = subs.iter().map(|f| matches(f, id, row));
            if op == "And" {
                results.try_fold(true, |all, r| Ok(all & r?))
            } else {
                results.try_fold(false, |any, r| Ok(any | r?))
            }
        }
        [Value::String(attr), Value::String(op), value] => {
            let own = if attr == "id" {
                id.parse::<u64>()
                    .map(Value::from)
                    .unwrap_or_else(|_| Value::from(id))
            } else {
                row.get(attr).cloned().unwrap_or(Value::Null)
            };
            let cmp = || compare(&own, value);
            Ok(match op.as_str() {
                "Eq" => own == *value,
                "NotEq" => own != *value,
                "In" => value.as_array().is_some_and(|vs| vs.contains(&own)),
                "Gte" => cmp().is_some_and(|o| o.is_ge()),
                "Lt" => cmp().is_some_and(|o| o.is_lt()),
                other => return Err(format!("unsupported filter operator {other}")),
            })
        }
        _ => Err(format!("invalid filter {filter}")),
    }
}

fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => a.as_f64()?.partial_cmp(&b.as_f64()?),
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

fn is_uuid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}
