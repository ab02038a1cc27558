//! An Elasticsearch-compatible bulk endpoint that answers at once and notes
//! when each document arrived: the far end of the latency the harness
//! measures, with nothing of an engine's own cost in it.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use crate::tracker::{Arrival, Tracker};

/// Serves the endpoint on a free local port until the process ends; its address.
pub async fn serve(tracker: Arc<Tracker>) -> anyhow::Result<SocketAddr> {
    let app = Router::new()
        .route("/", get(root))
        .route("/_bulk", post(bulk))
        .route("/{index}/_bulk", post(bulk))
        .route("/{index}/_refresh", post(ok))
        .route("/{index}/_delete_by_query", post(deleted_by_query))
        // As Elasticsearch's, up to 100 MB (axum's default stops at 2 MB).
        .layer(axum::extract::DefaultBodyLimit::max(100 * 1024 * 1024))
        .with_state(tracker);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("the bulk endpoint stopped: {e}");
        }
    });
    Ok(address)
}

async fn root() -> impl IntoResponse {
    json(
        StatusCode::OK,
        r#"{"name":"sluice-loadtest","version":{"number":"8.15.0"},"tagline":"You Know, for Search"}"#.to_owned(),
    )
}

async fn ok() -> impl IntoResponse {
    json(StatusCode::OK, r#"{"acknowledged":true}"#.to_owned())
}

async fn deleted_by_query() -> impl IntoResponse {
    json(StatusCode::OK, r#"{"deleted":0,"failures":[]}"#.to_owned())
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [("content-type", "application/json")], body).into_response()
}

/// The action line of a bulk item.
#[derive(Deserialize)]
struct Action {
    #[serde(default)]
    index: Option<Target>,
    #[serde(default)]
    create: Option<Target>,
    #[serde(default)]
    update: Option<Target>,
    #[serde(default)]
    delete: Option<Target>,
}

#[derive(Deserialize)]
struct Target {
    #[serde(rename = "_id")]
    id: String,
}

/// The field of a document that says which write made it.
#[derive(Deserialize)]
struct Written {
    seq: i64,
}

async fn bulk(State(tracker): State<Arc<Tracker>>, headers: HeaderMap, body: Bytes) -> Response {
    let arrived = std::time::Instant::now();
    let gzipped = headers
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let body = if gzipped {
        let mut text = Vec::new();
        if let Err(e) = flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut text) {
            return bad_request(&format!("the body is not gzip: {e}"));
        }
        Bytes::from(text)
    } else {
        body
    };
    let mut lines = body.split(|b| *b == b'\n').filter(|line| !line.is_empty());
    let mut items = String::with_capacity(64 * 16);
    let mut arrivals = Vec::new();
    while let Some(line) = lines.next() {
        let action: Action = match serde_json::from_slice(line) {
            Ok(action) => action,
            Err(e) => return bad_request(&format!("an action line is not JSON: {e}")),
        };
        let (name, target, has_source) = match action {
            Action { index: Some(t), .. } => ("index", t, true),
            Action {
                create: Some(t), ..
            } => ("create", t, true),
            Action {
                update: Some(t), ..
            } => ("update", t, true),
            Action {
                delete: Some(t), ..
            } => ("delete", t, false),
            _ => return bad_request("an action line names no action"),
        };
        let id: Option<i64> = target.id.parse().ok();
        if has_source {
            let Some(source) = lines.next() else {
                return bad_request("an action line has no document after it");
            };
            // A partial update wraps its document in `doc`.
            let written = serde_json::from_slice::<Written>(source).ok().or_else(|| {
                serde_json::from_slice::<serde_json::Value>(source)
                    .ok()
                    .and_then(|v| v.get("doc")?.get("seq")?.as_i64())
                    .map(|seq| Written { seq })
            });
            if let (Some(id), Some(Written { seq })) = (id, written) {
                arrivals.push(Arrival::Write { id, seq });
            }
        } else if let Some(id) = id {
            arrivals.push(Arrival::Delete { id });
        }
        if !items.is_empty() {
            items.push(',');
        }
        let status = if name == "delete" { 200 } else { 201 };
        items.push_str(&format!(r#"{{"{name}":{{"_id":"#));
        items.push_str(&serde_json::to_string(&target.id).unwrap_or_default());
        items.push_str(&format!(r#","status":{status}}}}}"#));
    }
    tracker.arrived(&arrivals, arrived);
    json(
        StatusCode::OK,
        format!(r#"{{"took":0,"errors":false,"items":[{items}]}}"#),
    )
}

fn bad_request(reason: &str) -> Response {
    let reason = serde_json::to_string(reason).unwrap_or_default();
    json(
        StatusCode::BAD_REQUEST,
        format!(
            r#"{{"error":{{"type":"illegal_argument_exception","reason":{reason}}},"status":400}}"#
        ),
    )
}
