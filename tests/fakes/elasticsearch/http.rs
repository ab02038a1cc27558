//! The REST endpoints, and the front door every request goes through first:
//! body decompression, the request log, a dead cluster, authentication and
//! the injected delay.

use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use rand::Rng;
use serde_json::{json, Value};

use super::conn::ConnHandle;
use super::errors::EsError;
use super::store::Slot;
use super::{bulk, lock, Faults, Flavor, RecordedRequest, Shared};

type AppState = State<Arc<Shared>>;

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/_bulk", post(bulk_all).put(bulk_all))
        .route("/{index}/_bulk", post(bulk_in).put(bulk_in))
        .route(
            "/{index}",
            put(create_index)
                .head(index_exists)
                .get(get_index)
                .delete(delete_index),
        )
        .route("/{index}/_doc/{id}", get(get_document))
        .route("/{index}/_search", post(search).get(search))
        .route("/_search", post(search_pit).get(search_pit))
        .route("/{index}/_pit", post(open_pit))
        .route("/_pit", axum::routing::delete(close_pit))
        .route("/{index}/_mget", post(mget).get(mget))
        .route("/{index}/_refresh", post(refresh).get(refresh))
        .route("/{index}/_delete_by_query", post(delete_by_query))
        .fallback(no_handler)
        // The front door holds bodies to the engine's own limit; axum's
        // default of 2 MB would refuse larger ones as the engine does not.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(shared.clone(), front_door))
        .with_state(shared)
}

/// What happens to every request before its endpoint sees it.
async fn front_door(State(shared): AppState, request: Request, next: Next) -> Response {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let (mut parts, body) = request.into_parts();
    if parts.uri.path().ends_with("/_bulk") {
        shared.bulk_requests.fetch_add(1, Ordering::Relaxed);
    }
    let Ok(mut body) = to_bytes(body, shared.options.max_body_bytes).await else {
        return EsError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "content_too_long_exception",
            "request body too large",
        )
        .into_response();
    };
    if parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"))
    {
        let gunzipped = tokio::task::spawn_blocking(move || gunzip(&body))
            .await
            .expect("gunzip");
        match gunzipped {
            Ok(plain) => body = plain,
            Err(e) => {
                return EsError::illegal_argument(format!("invalid gzip body: {e}")).into_response()
            }
        }
    }
    if shared.options.record_requests {
        lock(&shared.log).push(RecordedRequest {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts.headers.clone(),
            body: body.clone(),
        });
    }
    if shared.faults().dead && !hang_while_dead(&shared).await {
        return EsError::unavailable().into_response();
    }
    if let Some(expected) = &shared.options.required_auth {
        let given = parts.headers.get(header::AUTHORIZATION);
        if given.map(HeaderValue::as_bytes) != Some(expected.as_bytes()) {
            return unauthorized(parts.uri.path(), given.is_some());
        }
    }
    let delay = shared.faults().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    parts.headers.remove(header::CONTENT_ENCODING);
    let mut response = next.run(Request::from_parts(parts, Body::from(body))).await;
    if shared.options.flavor == Flavor::Elasticsearch {
        let product = HeaderValue::from_static("Elasticsearch");
        response.headers_mut().insert("x-elastic-product", product);
    }
    response
}

/// With `hang_when_dead`, holds a request while the cluster is dead (until
/// the fake shuts down); true if the cluster came back meanwhile.
async fn hang_while_dead(shared: &Shared) -> bool {
    while shared.faults().hang_when_dead && !*shared.shutdown.borrow() {
        if !shared.faults().dead {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

fn gunzip(body: &[u8]) -> std::io::Result<Bytes> {
    let mut plain = Vec::with_capacity(body.len() * 4);
    flate2::read::GzDecoder::new(body).read_to_end(&mut plain)?;
    Ok(plain.into())
}

fn unauthorized(path: &str, had_credentials: bool) -> Response {
    let reason = if had_credentials {
        "unable to authenticate with provided credentials and anonymous access is not allowed for this request"
            .to_owned()
    } else {
        format!("missing authentication credentials for REST request [{path}]")
    };
    let challenges = [
        r#"Basic realm="security", charset="UTF-8""#,
        "Bearer realm=\"security\"",
        "ApiKey",
    ];
    let error = EsError::new(StatusCode::UNAUTHORIZED, "security_exception", reason)
        .with("header", json!({ "WWW-Authenticate": challenges }));
    let mut response = error.into_response();
    for challenge in challenges {
        response.headers_mut().append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    response
}

async fn root(State(shared): AppState) -> Json<Value> {
    Json(match shared.options.flavor {
        Flavor::Elasticsearch => json!({
            "name": "fake-node-0",
            "cluster_name": "fake-cluster",
            "cluster_uuid": "fAkEcLuStEr0000000000A",
            "version": {
                "number": "8.15.0",
                "build_flavor": "default",
                "build_type": "docker",
                "build_snapshot": false,
                "lucene_version": "9.11.1",
                "minimum_wire_compatibility_version": "7.17.0",
                "minimum_index_compatibility_version": "7.0.0"
            },
            "tagline": "You Know, for Search"
        }),
        Flavor::OpenSearch => json!({
            "name": "fake-node-0",
            "cluster_name": "fake-cluster",
            "cluster_uuid": "fAkEcLuStEr0000000000A",
            "version": {
                "distribution": "opensearch",
                "number": "2.15.0",
                "build_type": "tar",
                "build_snapshot": false,
                "lucene_version": "9.10.0",
                "minimum_wire_compatibility_version": "7.10.0",
                "minimum_index_compatibility_version": "7.0.0"
            },
            "tagline": "The OpenSearch Project: https://opensearch.org/"
        }),
    })
}

async fn bulk_all(
    state: AppState,
    conn: ConnectInfo<ConnHandle>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    run_bulk(state, conn, None, headers, body).await
}

async fn bulk_in(
    state: AppState,
    conn: ConnectInfo<ConnHandle>,
    Path(index): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    run_bulk(state, conn, Some(index), headers, body).await
}

/// `_bulk`: content type, request-level faults, then every item in order.
async fn run_bulk(
    State(shared): AppState,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    path_index: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refusal) = check_content_type(&headers) {
        return refusal;
    }
    let faults = shared.faults();
    if let Some(failure) = request_failure(&shared, &faults, &conn) {
        return failure;
    }
    let applying = shared.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut store = lock(&applying.store);
        let mut rng = lock(&applying.rng);
        bulk::run(&mut store, &faults, &mut rng, path_index.as_deref(), &body)
    })
    .await
    .expect("the bulk task");
    match outcome {
        Ok((answer, items)) => {
            shared.writers.charge(items).await;
            ([(header::CONTENT_TYPE, "application/json")], answer).into_response()
        }
        Err(error) => error.into_response(),
    }
}

/// 406 unless the body is declared NDJSON (or JSON), as Elasticsearch checks.
fn check_content_type(headers: &HeaderMap) -> Option<Response> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()));
    let essence = given
        .as_deref()
        .and_then(|t| t.split(';').next())
        .map(str::trim);
    let accepted = [
        "application/x-ndjson",
        "application/json",
        "application/vnd.elasticsearch+x-ndjson",
    ];
    if essence.is_some_and(|e| accepted.iter().any(|a| a.eq_ignore_ascii_case(e))) {
        return None;
    }
    let error = match given {
        None => "Content-Type header is missing".to_owned(),
        Some(t) => format!("Content-Type header [{t}] is not supported"),
    };
    let body = Json(json!({ "error": error, "status": 406 }));
    Some((StatusCode::NOT_ACCEPTABLE, body).into_response())
}

/// The injected failure of a whole bulk request, if one is drawn.
fn request_failure(shared: &Shared, faults: &Faults, conn: &ConnHandle) -> Option<Response> {
    let failing = faults.request_dropped
        + faults.request_rejected_429
        + faults.request_bad_gateway_502
        + faults.request_unavailable_503;
    if failing <= 0.0 {
        return None;
    }
    let draw: f64 = lock(&shared.rng).random();
    let mut threshold = faults.request_dropped;
    if draw < threshold {
        conn.cut();
        // Never sent: the connection is cut first.
        return Some(StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    threshold += faults.request_rejected_429;
    if draw < threshold {
        return Some(EsError::rejected().into_response());
    }
    threshold += faults.request_bad_gateway_502;
    if draw < threshold {
        return Some(EsError::bad_gateway());
    }
    (draw < failing).then(|| EsError::unavailable().into_response())
}

async fn create_index(State(shared): AppState, Path(index): Path<String>, body: Bytes) -> Response {
    if let Err(error) = EsError::check_index_name(&index) {
        return error.into_response();
    }
    let definition = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(definition @ Value::Object(_)) => definition,
            Ok(_) => {
                return EsError::illegal_argument("request body must be an object").into_response()
            }
            Err(e) => return EsError::parse(e.line(), &e).into_response(),
        }
    };
    let mut store = lock(&shared.store);
    if !store.create_index(&index, definition) {
        let uuid = store.indexes[&index].uuid.clone();
        return EsError::new(
            StatusCode::BAD_REQUEST,
            "resource_already_exists_exception",
            format!("index [{index}/{uuid}] already exists"),
        )
        .with("index_uuid", uuid)
        .with("index", index)
        .into_response();
    }
    Json(json!({ "acknowledged": true, "shards_acknowledged": true, "index": index }))
        .into_response()
}

async fn index_exists(State(shared): AppState, Path(index): Path<String>) -> StatusCode {
    if lock(&shared.store).indexes.contains_key(&index) {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
}

async fn get_index(State(shared): AppState, Path(index): Path<String>) -> Response {
    let store = lock(&shared.store);
    let Some(stored) = store.indexes.get(&index) else {
        return EsError::index_not_found(&index).into_response();
    };
    let part = |name: &str| stored.definition.get(name).cloned().unwrap_or(json!({}));
    let about = json!({ "aliases": part("aliases"), "mappings": part("mappings"), "settings": part("settings") });
    Json(json!({ index: about })).into_response()
}

async fn delete_index(State(shared): AppState, Path(index): Path<String>) -> Response {
    if lock(&shared.store).indexes.remove(&index).is_none() {
        return EsError::index_not_found(&index).into_response();
    }
    Json(json!({ "acknowledged": true })).into_response()
}

async fn get_document(
    State(shared): AppState,
    Path((index, id)): Path<(String, String)>,
) -> Response {
    let store = lock(&shared.store);
    let Some(stored) = store.indexes.get(&index) else {
        return EsError::index_not_found(&index).into_response();
    };
    match stored.slots.get(&id) {
        Some(Slot::Live {
            version,
            seq_no,
            source,
        }) => Json(json!({
            "_index": index,
            "_id": id,
            "_version": version,
            "_seq_no": seq_no,
            "_primary_term": 1,
            "found": true,
            "_source": super::parse_source(source),
        }))
        .into_response(),
        _ => (
            StatusCode::NOT_FOUND,
            Json(json!({ "_index": index, "_id": id, "found": false })),
        )
            .into_response(),
    }
}

/// `{"query": {"ids": {"values": [...]}}, "size": n, "_source": [...]}`:
/// the documents of those ids, with the fields `_source` names (all of them
/// when it is absent or `true`). Searches see every write at once, as with
/// a refresh after each bulk request.
async fn search(State(shared): AppState, Path(index): Path<String>, body: Bytes) -> Response {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return EsError::new(StatusCode::BAD_REQUEST, "parse_exception", e.to_string())
                .into_response()
        }
    };
    let Some(ids) = request["query"]["ids"]["values"].as_array() else {
        return EsError::illegal_argument("this fake supports only an ids query").into_response();
    };
    let size = request.get("size").map_or(Some(10), Value::as_u64);
    let Some(size) = size.filter(|&n| n <= 10_000) else {
        return EsError::illegal_argument(
            "Result window is too large, from + size must be less than or equal to: [10000]",
        )
        .into_response();
    };
    let fields: Option<Vec<&str>> = match &request["_source"] {
        Value::Null | Value::Bool(true) => None,
        Value::Array(fields) => Some(fields.iter().filter_map(Value::as_str).collect()),
        _ => {
            return EsError::illegal_argument("this fake takes _source as a list of fields")
                .into_response()
        }
    };
    let started = Instant::now();
    let store = lock(&shared.store);
    let Some(stored) = store.indexes.get(&index) else {
        return EsError::index_not_found(&index).into_response();
    };
    let hits: Vec<Value> = ids
        .iter()
        .filter_map(|id| {
            let id = match id {
                Value::String(id) => id.clone(),
                other => other.to_string(),
            };
            match stored.slots.get(&id) {
                Some(Slot::Live { source, .. }) => Some((id, super::parse_source(source))),
                _ => None,
            }
        })
        .take(size as usize)
        .map(|(id, source)| {
            let source = match (&fields, source) {
                (Some(fields), Value::Object(all)) => Value::Object(
                    all.into_iter()
                        .filter(|(k, _)| fields.contains(&k.as_str()))
                        .collect(),
                ),
                (_, source) => source,
            };
            json!({ "_index": index, "_id": id, "_score": 1.0, "_source": source })
        })
        .collect();
    Json(json!({
        "took": started.elapsed().as_millis() as u64,
        "timed_out": false,
        "_shards": { "total": 1, "successful": 1, "skipped": 0, "failed": 0 },
        "hits": {
            "total": { "value": hits.len(), "relation": "eq" },
            "max_score": if hits.is_empty() { Value::Null } else { json!(1.0) },
            "hits": hits,
        }
    }))
    .into_response()
}

/// `POST /{index}/_pit?keep_alive=…`: a point in time of the index, its
/// live documents as they are now.
async fn open_pit(
    State(shared): AppState,
    Path(index): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    if !query.unwrap_or_default().contains("keep_alive=") {
        return EsError::new(
            StatusCode::BAD_REQUEST,
            "action_request_validation_exception",
            "Validation Failed: 1: [keep_alive] is not specified;",
        )
        .into_response();
    }
    let store = lock(&shared.store);
    let Some(stored) = store.indexes.get(&index) else {
        return EsError::index_not_found(&index).into_response();
    };
    let mut docs: Vec<(String, Box<str>)> = stored
        .slots
        .iter()
        .filter_map(|(id, slot)| match slot {
            Slot::Live { source, .. } => Some((id.clone(), source.clone())),
            Slot::Deleted { .. } => None,
        })
        .collect();
    docs.sort();
    let mut pits = lock(&shared.pits);
    let id = format!("pit-{}-{}", index, pits.len() + 1);
    pits.insert(id.clone(), docs);
    Json(json!({ "id": id, "_shards": { "total": 1, "successful": 1, "skipped": 0, "failed": 0 } }))
        .into_response()
}

/// `DELETE /_pit` with `{"id": …}`.
async fn close_pit(State(shared): AppState, body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(id) = request["id"].as_str() else {
        return EsError::illegal_argument("[id] is required").into_response();
    };
    let freed = lock(&shared.pits).remove(id).is_some();
    let status = if freed {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    (
        status,
        Json(json!({ "succeeded": freed, "num_freed": freed as u32 })),
    )
        .into_response()
}

/// `POST /_search` in a point in time, sorted by `_shard_doc` (here, a
/// document's place in the point in time), after `search_after`.
async fn search_pit(State(shared): AppState, body: Bytes) -> Response {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return EsError::new(StatusCode::BAD_REQUEST, "parse_exception", e.to_string())
                .into_response()
        }
    };
    let Some(pit) = request["pit"]["id"].as_str() else {
        return EsError::illegal_argument(
            "this fake searches without an index only in a point in time (pit.id)",
        )
        .into_response();
    };
    let sort_ok = match &request["sort"] {
        Value::Null => true,
        sort => *sort == json!([{ "_shard_doc": "asc" }]) || *sort == json!(["_shard_doc"]),
    };
    if !sort_ok {
        return EsError::illegal_argument(
            "this fake sorts a point in time only by _shard_doc ascending",
        )
        .into_response();
    }
    if request
        .get("query")
        .is_some_and(|q| *q != json!({ "match_all": {} }))
    {
        return EsError::illegal_argument("this fake reads a point in time only with match_all")
            .into_response();
    }
    let size = request.get("size").map_or(Some(10), Value::as_u64);
    let Some(size) = size.filter(|&n| n <= 10_000) else {
        return EsError::illegal_argument(
            "Result window is too large, from + size must be less than or equal to: [10000]",
        )
        .into_response();
    };
    let after = match &request["search_after"] {
        Value::Null => None,
        Value::Array(values) if values.len() == 1 && values[0].is_u64() => values[0].as_u64(),
        _ => {
            return EsError::illegal_argument(
                "search_after has 1 value(s) but sort has 1 (a _shard_doc is a number)",
            )
            .into_response()
        }
    };
    let pits = lock(&shared.pits);
    let Some(docs) = pits.get(pit) else {
        return EsError::new(
            StatusCode::NOT_FOUND,
            "search_context_missing_exception",
            format!("No search context found for id [{pit}]"),
        )
        .into_response();
    };
    let start = after.map_or(0, |n| n as usize + 1);
    let hits: Vec<Value> = docs
        .iter()
        .enumerate()
        .skip(start)
        .take(size as usize)
        .map(|(n, (id, source))| {
            json!({ "_id": id, "_score": null, "_source": super::parse_source(source), "sort": [n] })
        })
        .collect();
    Json(json!({
        "pit_id": pit,
        "took": 1,
        "timed_out": false,
        "_shards": { "total": 1, "successful": 1, "skipped": 0, "failed": 0 },
        "hits": {
            "total": { "value": docs.len(), "relation": "eq" },
            "max_score": null,
            "hits": hits,
        }
    }))
    .into_response()
}

/// `POST /{index}/_mget` with `{"ids": […]}` or `{"docs": [{"_id": …,
/// "routing": …}, …]}`: real time, each id found or not.
async fn mget(State(shared): AppState, Path(index): Path<String>, body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    // (id, routing) of each document asked for.
    let wanted: Option<Vec<(Value, Option<String>)>> = match request["docs"].as_array() {
        Some(docs) => Some(
            docs.iter()
                .map(|doc| {
                    (
                        doc["_id"].clone(),
                        doc["routing"].as_str().map(str::to_owned),
                    )
                })
                .collect(),
        ),
        None => request["ids"]
            .as_array()
            .map(|ids| ids.iter().map(|id| (id.clone(), None)).collect()),
    };
    let Some(wanted) = wanted.filter(|w| !w.is_empty() && w.iter().all(|(id, _)| !id.is_null()))
    else {
        return EsError::new(
            StatusCode::BAD_REQUEST,
            "action_request_validation_exception",
            "Validation Failed: 1: no documents to get;",
        )
        .into_response();
    };
    let store = lock(&shared.store);
    let Some(stored) = store.indexes.get(&index) else {
        return EsError::index_not_found(&index).into_response();
    };
    let docs: Vec<Value> = wanted
        .iter()
        .map(|(id, routing)| {
            let id = id.as_str().map_or_else(|| id.to_string(), str::to_owned);
            // Looked for on the shard the routing (or the id) points to.
            let elsewhere = stored.routing.get(&id) != routing.as_ref();
            match stored.slots.get(&id).filter(|_| !elsewhere) {
                Some(Slot::Live {
                    version, source, ..
                }) => json!({
                    "_index": index, "_id": id, "_version": version, "found": true,
                    "_source": super::parse_source(source),
                }),
                _ => json!({ "_index": index, "_id": id, "found": false }),
            }
        })
        .collect();
    Json(json!({ "docs": docs })).into_response()
}

async fn refresh(State(shared): AppState, Path(index): Path<String>) -> Response {
    if !lock(&shared.store).indexes.contains_key(&index) {
        return EsError::index_not_found(&index).into_response();
    }
    Json(json!({ "_shards": { "total": 2, "successful": 1, "failed": 0 } })).into_response()
}

/// `{"query": {"match_all": {}}}`, or a `bool` of `should` `term` queries
/// on one keyword value (a field, or a string field's `.keyword`) with
/// `minimum_should_match: 1`: what truncates need.
async fn delete_by_query(
    State(shared): AppState,
    Path(index): Path<String>,
    body: Bytes,
) -> Response {
    let query: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let terms = term_queries(&query);
    if query != json!({ "query": { "match_all": {} } }) && terms.is_none() {
        return EsError::illegal_argument(
            "this fake supports only match_all and a bool of should term queries",
        )
        .into_response();
    }
    let started = Instant::now();
    let mut store = lock(&shared.store);
    if terms.is_some() && !store.store_sources {
        return EsError::illegal_argument("term queries need store_sources").into_response();
    }
    let matches = |source: &str| match &terms {
        None => true,
        Some(terms) => {
            let doc: Value = serde_json::from_str(source).unwrap_or(Value::Null);
            terms.iter().any(|(field, value)| {
                let field = field.strip_suffix(".keyword").unwrap_or(field);
                doc.get(field) == Some(value)
            })
        }
    };
    let Some(deleted) = store.delete_where(&index, matches) else {
        return EsError::index_not_found(&index).into_response();
    };
    Json(json!({
        "took": started.elapsed().as_millis() as u64,
        "timed_out": false,
        "total": deleted,
        "deleted": deleted,
        "batches": u64::from(deleted > 0),
        "version_conflicts": 0,
        "noops": 0,
        "retries": { "bulk": 0, "search": 0 },
        "throttled_millis": 0,
        "requests_per_second": -1.0,
        "throttled_until_millis": 0,
        "failures": []
    }))
    .into_response()
}

/// The (field, value) pairs of `{"query":{"bool":{"should":[{"term":{f: v}}, …],
/// "minimum_should_match":1}}}`; `None` for any other query.
fn term_queries(query: &Value) -> Option<Vec<(String, Value)>> {
    let bool_query = query.get("query")?.get("bool")?.as_object()?;
    if bool_query.len() != 2 || bool_query.get("minimum_should_match") != Some(&json!(1)) {
        return None;
    }
    bool_query
        .get("should")?
        .as_array()?
        .iter()
        .map(|clause| {
            let term = clause.get("term")?.as_object()?;
            let (field, value) = term.iter().next().filter(|_| term.len() == 1)?;
            Some((field.clone(), value.clone()))
        })
        .collect()
}

async fn no_handler(request: Request) -> Response {
    let error = format!(
        "no handler found for uri [{}] and method [{}]",
        request.uri(),
        request.method()
    );
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": error, "status": 400 })),
    )
        .into_response()
}
