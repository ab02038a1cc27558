//! The routes, and the front door every request goes through first: the
//! request log, a dead instance, and the API key.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use super::store::{error, not_found, TaskOp};
use super::{lock, RecordedRequest, Shared};

/// Meilisearch's default `--http-payload-size-limit`.
pub(super) const MAX_BODY: usize = 100 * 1024 * 1024;

type AppState = State<Arc<Shared>>;

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/health",
            get(|| async { Json(json!({"status": "available"})) }),
        )
        .route(
            "/indexes/{index}/documents",
            post(replace).put(update).delete(clear),
        )
        .route(
            "/indexes/{index}/documents/delete-batch",
            post(delete_batch),
        )
        .route("/indexes/{index}/documents/delete", post(delete_by_filter))
        .route("/indexes/{index}/documents/fetch", post(fetch))
        .route(
            "/indexes/{index}/settings/filterable-attributes",
            get(get_filterable).put(set_filterable),
        )
        .route("/tasks", get(list_tasks))
        .route("/tasks/{uid}", get(get_task))
        .fallback(|| async {
            answer(
                StatusCode::NOT_FOUND,
                error("not_found", "invalid_request", "Not found."),
            )
        })
        // The front door holds bodies to the engine's own limit; axum's
        // default of 2 MB would refuse larger ones as the engine does not.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(shared.clone(), front_door))
        .with_state(shared)
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

async fn front_door(State(shared): AppState, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let limit = shared.max_payload_bytes;
    let Ok(body) = to_bytes(body, limit).await else {
        return answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            error(
                "payload_too_large",
                "invalid_request",
                format!("The provided payload reached the size limit. The maximum accepted payload size is {limit} bytes."),
            ),
        );
    };
    lock(&shared.log).push(RecordedRequest {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    if shared.faults().dead {
        return (StatusCode::SERVICE_UNAVAILABLE, "503 Service Unavailable").into_response();
    }
    if let Some(key) = &shared.api_key {
        match parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
            None => {
                return answer(
                    StatusCode::UNAUTHORIZED,
                    error(
                        "missing_authorization_header",
                        "auth",
                        "The Authorization header is missing. It must use the bearer authorization method.",
                    ),
                )
            }
            Some(given) if given.strip_prefix("Bearer ") != Some(key.as_str()) => {
                return answer(
                    StatusCode::FORBIDDEN,
                    error("invalid_api_key", "auth", "The provided API key is invalid."),
                )
            }
            Some(_) => {}
        }
    }
    next.run(Request::from_parts(parts, Body::from(body))).await
}

/// An answer whose body fails: the connection closes before the client has it.
fn cut() -> Response {
    let failing = futures_util::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("connection dropped by the fake"))
    });
    (StatusCode::ACCEPTED, Body::from_stream(failing)).into_response()
}

/// Injected whole-request failures of a write, before it is looked at.
fn request_fault(shared: &Shared) -> Option<Response> {
    let faults = shared.faults();
    if shared.draw(faults.request_429) {
        return Some(answer(
            StatusCode::TOO_MANY_REQUESTS,
            error(
                "too_many_requests",
                "system",
                "Too many requests. Try again later.",
            ),
        ));
    }
    if shared.draw(faults.request_503) {
        return Some(
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "<html>503 Service Temporarily Unavailable</html>",
            )
                .into_response(),
        );
    }
    shared.draw(faults.dropped_before).then(cut)
}

/// The refusal of an invalid index uid.
fn check_index(index: &str) -> Option<Response> {
    let valid = !index.is_empty()
        && index.len() <= 400
        && index
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        return None;
    }
    Some(answer(
        StatusCode::BAD_REQUEST,
        error(
            "invalid_index_uid",
            "invalid_request",
            format!("`{index}` is not a valid index uid. Index uid can be an integer or a string containing only alphanumeric characters, hyphens (-) and underscores (_), and can not be more than 400 bytes."),
        ),
    ))
}

/// The refusal of a body that is not declared JSON.
fn check_json(headers: &HeaderMap) -> Option<Response> {
    match headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        Some(t) if t.starts_with("application/json") => None,
        None => Some(answer(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            error(
                "missing_content_type",
                "invalid_request",
                "A Content-Type header is missing. Accepted values for the Content-Type header are: `application/json`, `application/x-ndjson`, `text/csv`",
            ),
        )),
        Some(other) => Some(answer(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            error(
                "invalid_content_type",
                "invalid_request",
                format!("The Content-Type `{other}` is invalid. Accepted values for the Content-Type header are: `application/json`, `application/x-ndjson`, `text/csv`"),
            ),
        )),
    }
}

fn malformed(message: String) -> Response {
    answer(
        StatusCode::BAD_REQUEST,
        error("malformed_payload", "invalid_request", message),
    )
}

/// Enqueues a task and answers 202 with its summary (or drops the answer).
fn enqueue(shared: &Shared, index: &str, op: TaskOp) -> Response {
    let summary = lock(&shared.store).enqueue(index, op).summary();
    shared.work.notify_one();
    if shared.draw(shared.faults().dropped_after) {
        return cut();
    }
    answer(StatusCode::ACCEPTED, summary)
}

async fn add(
    shared: &Shared,
    index: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
    update: bool,
) -> Response {
    if let Some(fault) = request_fault(shared) {
        return fault;
    }
    if let Some(refused) = check_index(index).or_else(|| check_json(headers)) {
        return refused;
    }
    let docs: Vec<Map<String, Value>> = match serde_json::from_slice(body) {
        Ok(docs) => docs,
        Err(e) => return malformed(format!("The `json` payload provided is malformed. `{e}`.")),
    };
    let op = TaskOp::Add {
        docs,
        primary_key: query.get("primaryKey").cloned(),
        update,
    };
    enqueue(shared, index, op)
}

async fn replace(
    State(shared): AppState,
    Path(index): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    add(&shared, &index, &query, &headers, &body, false).await
}

async fn update(
    State(shared): AppState,
    Path(index): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    add(&shared, &index, &query, &headers, &body, true).await
}

async fn delete_batch(
    State(shared): AppState,
    Path(index): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(fault) = request_fault(&shared) {
        return fault;
    }
    if let Some(refused) = check_index(&index).or_else(|| check_json(&headers)) {
        return refused;
    }
    let ids: Vec<Value> = match serde_json::from_slice(&body) {
        Ok(ids) => ids,
        Err(e) => return malformed(format!("The `json` payload provided is malformed. `{e}`.")),
    };
    let mut strings = Vec::with_capacity(ids.len());
    for id in ids {
        match id {
            Value::String(s) => strings.push(s),
            Value::Number(n) if n.is_u64() || n.is_i64() => strings.push(n.to_string()),
            other => {
                return answer(
                    StatusCode::BAD_REQUEST,
                    error(
                        "bad_request",
                        "invalid_request",
                        format!(
                            "Invalid value type: expected a string or an integer, found `{other}`."
                        ),
                    ),
                )
            }
        }
    }
    enqueue(&shared, &index, TaskOp::DeleteIds(strings))
}

async fn clear(State(shared): AppState, Path(index): Path<String>) -> Response {
    if let Some(fault) = request_fault(&shared) {
        return fault;
    }
    if let Some(refused) = check_index(&index) {
        return refused;
    }
    enqueue(&shared, &index, TaskOp::Clear)
}

/// `POST documents/delete` with `{"filter": "field = \"value\""}` (the one
/// form this fake reads); the attribute must be filterable.
async fn delete_by_filter(
    State(shared): AppState,
    Path(index): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(fault) = request_fault(&shared) {
        return fault;
    }
    if let Some(refused) = check_index(&index).or_else(|| check_json(&headers)) {
        return refused;
    }
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let filter = parsed["filter"].as_str().unwrap_or_default();
    let Some((field, value)) = filter.split_once(" = ").and_then(|(f, v)| {
        Some((
            f.trim().to_owned(),
            serde_json::from_str::<String>(v.trim()).ok()?,
        ))
    }) else {
        return answer(
            StatusCode::BAD_REQUEST,
            error(
                "invalid_document_filter",
                "invalid_request",
                format!("this fake reads only `field = \"value\"` filters, not `{filter}`"),
            ),
        );
    };
    let filterable = lock(&shared.store)
        .indexes
        .get(&index)
        .map(|i| i.filterable.contains(&field));
    if filterable == Some(false) {
        return answer(
            StatusCode::BAD_REQUEST,
            error(
                "invalid_document_filter",
                "invalid_request",
                format!("Index `{index}`: Attribute `{field}` is not filterable."),
            ),
        );
    }
    enqueue(&shared, &index, TaskOp::DeleteWhere { field, value })
}

/// `POST documents/fetch` by `ids` (strings or integers), with `fields`,
/// `offset` and `limit` (20 unless given): the documents the processed
/// tasks left, in the order of their ids. A `filter` is refused.
async fn fetch(
    State(shared): AppState,
    Path(index): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = check_index(&index).or_else(|| check_json(&headers)) {
        return refused;
    }
    let request: Map<String, Value> = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return malformed(format!("The `json` payload provided is malformed. `{e}`.")),
    };
    let bad = |code: &str, message: &str| {
        answer(
            StatusCode::BAD_REQUEST,
            error(code, "invalid_request", message.to_owned()),
        )
    };
    if request.contains_key("filter") {
        return bad(
            "invalid_document_filter",
            "This fake fetches documents by ids only.",
        );
    }
    let number = |key: &str, default: u64| match request.get(key) {
        None => Some(default),
        Some(v) => v.as_u64(),
    };
    let (Some(offset), Some(limit)) = (number("offset", 0), number("limit", 20)) else {
        return bad(
            "invalid_document_limit",
            "Invalid value type at `.limit` or `.offset`: expected a positive integer.",
        );
    };
    let ids: Option<Vec<String>> = match request.get("ids") {
        None => None,
        Some(Value::Array(ids)) => {
            let ids: Option<Vec<String>> = ids
                .iter()
                .map(|id| match id {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
                    _ => None,
                })
                .collect();
            let Some(ids) = ids else {
                return bad(
                    "invalid_document_ids",
                    "Invalid value at `.ids`: an id must be an integer or a string.",
                );
            };
            Some(ids)
        }
        Some(_) => {
            return bad(
                "invalid_document_ids",
                "Invalid value type at `.ids`: expected an array.",
            )
        }
    };
    let fields: Option<Vec<String>> = request.get("fields").and_then(|f| {
        f.as_array().map(|f| {
            f.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
    });
    let store = lock(&shared.store);
    let Some(stored) = store.indexes.get(&index) else {
        return answer(StatusCode::NOT_FOUND, not_found(&index));
    };
    let matching: Vec<&Map<String, Value>> = match ids {
        None => stored.docs.values().collect(),
        Some(ids) => ids
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .iter()
            .filter_map(|id| stored.docs.get(id))
            .collect(),
    };
    let total = matching.len();
    let results: Vec<Value> = matching
        .into_iter()
        .skip(offset as usize)
        .take(limit as usize)
        .map(|doc| match &fields {
            Some(fields) if !fields.iter().any(|f| f == "*") => Value::Object(
                doc.iter()
                    .filter(|(k, _)| fields.contains(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            _ => Value::Object(doc.clone()),
        })
        .collect();
    answer(
        StatusCode::OK,
        json!({ "results": results, "offset": offset, "limit": limit, "total": total }),
    )
}

async fn get_filterable(State(shared): AppState, Path(index): Path<String>) -> Response {
    match lock(&shared.store).indexes.get(&index) {
        Some(i) => answer(StatusCode::OK, json!(i.filterable)),
        None => answer(StatusCode::NOT_FOUND, not_found(&index)),
    }
}

async fn set_filterable(
    State(shared): AppState,
    Path(index): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = check_index(&index).or_else(|| check_json(&headers)) {
        return refused;
    }
    match serde_json::from_slice::<Vec<String>>(&body) {
        Ok(attributes) => enqueue(&shared, &index, TaskOp::SetFilterable(attributes)),
        Err(e) => malformed(format!("The `json` payload provided is malformed. `{e}`.")),
    }
}

/// `GET /tasks?limit=N`: the newest tasks first, as Meilisearch pages them.
async fn list_tasks(
    State(shared): AppState,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let limit = params
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(20);
    let store = lock(&shared.store);
    let results: Vec<Value> = store
        .tasks
        .iter()
        .rev()
        .take(limit)
        .map(|t| t.view())
        .collect();
    let total = store.tasks.len();
    answer(
        StatusCode::OK,
        json!({"results": results, "total": total, "limit": limit, "from": total.checked_sub(1), "next": null}),
    )
}

async fn get_task(State(shared): AppState, Path(uid): Path<String>) -> Response {
    if shared.draw(shared.faults().poll_503) {
        return (StatusCode::SERVICE_UNAVAILABLE, "503 Service Unavailable").into_response();
    }
    let task = uid
        .parse::<usize>()
        .ok()
        .and_then(|uid| lock(&shared.store).tasks.get(uid).map(|t| t.view()));
    match task {
        Some(view) => answer(StatusCode::OK, view),
        None => answer(
            StatusCode::NOT_FOUND,
            error(
                "task_not_found",
                "invalid_request",
                format!("Task `{uid}` not found."),
            ),
        ),
    }
}
