//! The endpoints, and the front door every request goes through first: the
//! request log, a dead node and the API key.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::Rng;
use serde_json::{json, Map, Value};

use super::conn::ConnHandle;
use super::store::{filter_ids, Action};
use super::{lock, RecordedRequest, Shared};

type AppState = State<Arc<Shared>>;
type Params = Query<HashMap<String, String>>;

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/collections", post(create_collection))
        .route(
            "/collections/{c}",
            get(get_collection).delete(drop_collection),
        )
        .route("/collections/{c}/documents/import", post(import))
        .route("/collections/{c}/documents/export", get(export))
        .route(
            "/collections/{c}/documents",
            axum::routing::delete(delete_documents),
        )
        .route(
            "/collections/{c}/documents/{id}",
            get(get_document).delete(delete_document),
        )
        .fallback(|| async { message(StatusCode::NOT_FOUND, "Not Found") })
        // The front door holds bodies to the engine's own limit; axum's
        // default of 2 MB would refuse larger ones as the engine does not.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(shared.clone(), front_door))
        .with_state(shared)
}

/// Typesense's error body: `{"message": …}`.
fn message(status: StatusCode, text: &str) -> Response {
    (status, Json(json!({ "message": text }))).into_response()
}

fn not_found() -> Response {
    message(StatusCode::NOT_FOUND, "Collection not found")
}

async fn front_door(State(shared): AppState, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = to_bytes(body, 256 * 1024 * 1024).await else {
        return message(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large");
    };
    if shared.options.record_requests {
        lock(&shared.log).push(RecordedRequest {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts.headers.clone(),
            body: body.clone(),
        });
    }
    if shared.faults().dead {
        return message(StatusCode::SERVICE_UNAVAILABLE, "Not Ready or Lagging");
    }
    use std::sync::atomic::Ordering::Relaxed;
    let now = shared.in_flight.fetch_add(1, Relaxed) + 1;
    shared.max_in_flight.fetch_max(now, Relaxed);
    let delay = shared.faults().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let response = handle(&shared, parts, body, next).await;
    shared.in_flight.fetch_sub(1, Relaxed);
    response
}

async fn handle(
    shared: &Shared,
    parts: axum::http::request::Parts,
    body: Bytes,
    next: Next,
) -> Response {
    if let Some(key) = &shared.options.api_key {
        let given = parts.headers.get("x-typesense-api-key");
        if given.map(|v| v.as_bytes()) != Some(key.as_bytes()) {
            return message(
                StatusCode::UNAUTHORIZED,
                "Forbidden - a valid `x-typesense-api-key` header must be sent.",
            );
        }
    }
    next.run(Request::from_parts(parts, Body::from(body))).await
}

/// What an injected failure of a whole request does.
enum Fault {
    /// Answer this instead.
    Answer(Response),
    /// Cut the connection, before or after applying the request.
    Drop { apply: bool },
}

fn request_fault(shared: &Shared, conn: &ConnHandle) -> Option<Fault> {
    let faults = shared.faults();
    let draw: f64 = lock(&shared.rng).random();
    let failing =
        faults.request_dropped + faults.request_rejected_429 + faults.request_unavailable_503;
    if draw < failing {
        lock(&shared.store).injected += 1;
    }
    let mut threshold = faults.request_dropped;
    if draw < threshold {
        if !faults.dropped_after_apply {
            conn.cut();
        }
        return Some(Fault::Drop {
            apply: faults.dropped_after_apply,
        });
    }
    threshold += faults.request_rejected_429;
    if draw < threshold {
        let answer = message(
            StatusCode::TOO_MANY_REQUESTS,
            "Rate limit exceeded or blocked",
        );
        return Some(Fault::Answer(answer));
    }
    threshold += faults.request_unavailable_503;
    (draw < threshold).then(|| {
        Fault::Answer(message(
            StatusCode::SERVICE_UNAVAILABLE,
            "Not Ready or Lagging",
        ))
    })
}

/// Runs `apply` unless a fault is drawn; a dropped connection never answers.
fn with_faults(shared: &Shared, conn: &ConnHandle, apply: impl FnOnce() -> Response) -> Response {
    match request_fault(shared, conn) {
        None => apply(),
        Some(Fault::Answer(answer)) => answer,
        Some(Fault::Drop { apply: applied }) => {
            if applied {
                let _ = apply();
                conn.cut();
            }
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn health() -> Json<Value> {
    Json(json!({ "ok": true }))
}

async fn create_collection(State(shared): AppState, body: Bytes) -> Response {
    let Ok(mut schema @ Value::Object(_)) = serde_json::from_slice::<Value>(&body) else {
        return message(StatusCode::BAD_REQUEST, "Bad JSON.");
    };
    let Some(name) = schema["name"].as_str().map(str::to_owned) else {
        return message(StatusCode::BAD_REQUEST, "Parameter `name` is required.");
    };
    if !schema["fields"].is_array() {
        return message(StatusCode::BAD_REQUEST, "Parameter `fields` is required.");
    }
    if !lock(&shared.store).create(schema.clone()) {
        let text = format!("A collection with name `{name}` already exists.");
        return message(StatusCode::CONFLICT, &text);
    }
    schema["num_documents"] = json!(0);
    schema["created_at"] = json!(1_700_000_000);
    (StatusCode::CREATED, Json(schema)).into_response()
}

async fn get_collection(State(shared): AppState, Path(c): Path<String>) -> Response {
    let store = lock(&shared.store);
    let Some(collection) = store.collections.get(&c) else {
        return not_found();
    };
    let mut schema = collection.schema.clone();
    schema["num_documents"] = json!(collection.documents.len());
    Json(schema).into_response()
}

/// `DELETE /collections/{c}`: the collection and its documents go; the
/// answer is its schema, as Typesense gives it.
async fn drop_collection(State(shared): AppState, Path(c): Path<String>) -> Response {
    let Some(collection) = lock(&shared.store).collections.remove(&c) else {
        return not_found();
    };
    let mut schema = collection.schema;
    schema["num_documents"] = json!(collection.documents.len());
    Json(schema).into_response()
}

async fn import(
    State(shared): AppState,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    Path(c): Path<String>,
    Query(params): Params,
    body: Bytes,
) -> Response {
    let name = params.get("action").map_or("create", String::as_str);
    let Some(action) = Action::parse(name) else {
        return message(
            StatusCode::BAD_REQUEST,
            "Parameter `action` must be one of create, upsert, update, emplace.",
        );
    };
    if !lock(&shared.store).collections.contains_key(&c) {
        return not_found();
    }
    let body = String::from_utf8_lossy(&body).into_owned();
    let mut imported = 0;
    let answer = with_faults(&shared, &conn, || {
        let faults = shared.faults();
        let mut rng = lock(&shared.rng);
        let answers = lock(&shared.store).import(&c, action, &body, &faults, &mut rng);
        imported = answers.len();
        let text: Vec<String> = answers.iter().map(Value::to_string).collect();
        (
            [(header::CONTENT_TYPE, "application/json")],
            text.join("\n"),
        )
            .into_response()
    });
    shared.writers.charge(imported).await;
    answer
}

async fn delete_documents(
    State(shared): AppState,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    Path(c): Path<String>,
    Query(params): Params,
) -> Response {
    if !lock(&shared.store).collections.contains_key(&c) {
        return not_found();
    }
    let truncate = params.get("truncate").is_some_and(|t| t == "true");
    let by_field = params
        .get("filter_by")
        .and_then(|filter| super::store::filter_field(filter));
    if let Some((field, value)) = by_field.filter(|_| !truncate) {
        if !lock(&shared.store).collections[&c].has_field(&field) {
            return message(
                StatusCode::NOT_FOUND,
                &format!("Could not find a filter field named `{field}` in the schema."),
            );
        }
        return with_faults(&shared, &conn, || {
            let mut store = lock(&shared.store);
            let documents = &mut store.collections.get_mut(&c).expect("checked").documents;
            let before = documents.len();
            documents.retain(|_, doc| doc.get(&field) != Some(&Value::String(value.clone())));
            Json(json!({ "num_deleted": before - documents.len() })).into_response()
        });
    }
    let ids = match params.get("filter_by") {
        _ if truncate => None,
        Some(filter) => match filter_ids(filter) {
            Some(ids) => Some(ids),
            None => return message(StatusCode::BAD_REQUEST, "Could not parse the filter query."),
        },
        None => {
            return message(
                StatusCode::BAD_REQUEST,
                "Parameter `filter_by` must be provided.",
            )
        }
    };
    with_faults(&shared, &conn, || {
        let mut store = lock(&shared.store);
        let documents = &mut store.collections.get_mut(&c).expect("checked").documents;
        let deleted = match &ids {
            None => std::mem::take(documents).len(),
            Some(ids) => ids
                .iter()
                .filter(|id| documents.remove(*id).is_some())
                .count(),
        };
        Json(json!({ "num_deleted": deleted })).into_response()
    })
}

/// `GET documents/export`, every document as a line of JSONL, or those a
/// `filter_by=id:[…]` names, with only the fields `include_fields` lists.
async fn export(State(shared): AppState, Path(c): Path<String>, Query(params): Params) -> Response {
    let ids = match params.get("filter_by") {
        None => None,
        Some(filter) => match filter_ids(filter) {
            Some(ids) => Some(ids),
            None => return message(StatusCode::BAD_REQUEST, "Could not parse the filter query."),
        },
    };
    let fields: Option<Vec<&str>> = params
        .get("include_fields")
        .map(|f| f.split(',').map(str::trim).collect());
    let store = lock(&shared.store);
    let Some(collection) = store.collections.get(&c) else {
        return not_found();
    };
    let docs: Vec<&Map<String, Value>> = match ids {
        None => collection.documents.values().collect(),
        Some(ids) => ids
            .iter()
            .filter_map(|id| collection.documents.get(id))
            .collect(),
    };
    let lines: Vec<String> = docs
        .into_iter()
        .map(|doc| {
            let doc: Map<String, Value> = match &fields {
                Some(fields) => doc
                    .iter()
                    .filter(|(k, _)| fields.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                None => doc.clone(),
            };
            Value::Object(doc).to_string()
        })
        .collect();
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        lines.join("\n"),
    )
        .into_response()
}

async fn get_document(State(shared): AppState, Path((c, id)): Path<(String, String)>) -> Response {
    let store = lock(&shared.store);
    let Some(collection) = store.collections.get(&c) else {
        return not_found();
    };
    match collection.documents.get(&id) {
        Some(doc) => Json(Value::Object(doc.clone())).into_response(),
        None => message(
            StatusCode::NOT_FOUND,
            &format!("Could not find a document with id: {id}"),
        ),
    }
}

async fn delete_document(
    State(shared): AppState,
    Path((c, id)): Path<(String, String)>,
) -> Response {
    let mut store = lock(&shared.store);
    let Some(collection) = store.collections.get_mut(&c) else {
        return not_found();
    };
    match collection.documents.remove(&id) {
        Some(doc) => Json(Value::Object(doc)).into_response(),
        None => message(
            StatusCode::NOT_FOUND,
            &format!("Could not find a document with id: {id}"),
        ),
    }
}
