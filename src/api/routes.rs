//! The routes of the management API and their JSON.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{AppState, Guard};
use crate::backfill::{BackfillError, View};

pub fn router(state: AppState, guard: Guard) -> Router {
    Router::new()
        .route("/api/health", get(health))
        .route("/api/pipelines", get(pipelines))
        .route("/api/pipelines/{name}", get(pipeline))
        .route("/api/sinks", get(sinks))
        .route("/api/sinks/{sink}", get(sink))
        .route(
            "/api/sinks/{sink}/backfills",
            get(sink_backfills).post(start_backfill),
        )
        .route("/api/sinks/{sink}/failed/retry", post(retry_failed))
        .route("/api/sinks/{sink}/verify", post(start_verify))
        .route("/api/verifications", get(verifications))
        .route("/api/verifications/{id}", get(verification))
        .route("/api/backfills", get(backfills))
        .route("/api/backfills/{id}", get(backfill))
        .route("/api/backfills/{id}/pause", post(pause))
        .route("/api/backfills/{id}/resume", post(resume))
        .route("/api/backfills/{id}/cancel", post(cancel))
        .fallback(unknown_route)
        .layer(middleware::from_fn_with_state(guard, front_door))
        .with_state(state)
}

/// Checks every request before its route: the bearer token when one is
/// configured, and a JSON body on every request that changes something, so
/// a web page cannot post a form to the API from a browser on this machine.
async fn front_door(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    if let Some(token) = &guard.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same(given.trim().as_bytes(), token.as_bytes()) {
            let mut answer = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this API needs `Authorization: Bearer <token>`, the token in the environment variable api.token_env names",
            )
            .into_response();
            answer
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return answer;
        }
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid",
                "requests that change something need a JSON body with `Content-Type: application/json` (`{}` when there is nothing to say)",
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// Compares two secrets in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    let mut differ = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        differ |= usize::from(x ^ y);
    }
    differ == 0
}

/// An error answer: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<BackfillError> for ApiError {
    fn from(e: BackfillError) -> ApiError {
        let (status, code) = match &e {
            BackfillError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            BackfillError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
            BackfillError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            BackfillError::Database(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

type Answer<T> = Result<Json<T>, ApiError>;

#[derive(Serialize)]
struct Health {
    status: &'static str,
    pipeline: &'static str,
}

async fn health(State(state): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok",
        pipeline: pipeline_state(&state),
    })
}

fn pipeline_state(state: &AppState) -> &'static str {
    if state.plan.status.is_streaming() {
        "streaming"
    } else if state.plan.status.restarts() > 0 {
        "restarting"
    } else {
        "starting"
    }
}

#[derive(Serialize)]
struct PipelineView {
    name: String,
    slot: String,
    publication: String,
    state: &'static str,
    /// Every change below this position is in every sink; the slot is here.
    confirmed_lsn: String,
    /// WAL the server wrote that is not yet in every sink, as the stream
    /// last said; `None` before it said.
    lag_bytes: Option<u64>,
    /// Age of the oldest change read and not yet in every sink; 0 when
    /// caught up.
    lag_seconds: f64,
    restarts: u64,
    tables: Vec<String>,
    /// Configured tables dropped while streaming: their documents stay in
    /// the indexes until the table is created again (then it is backfilled).
    dropped_tables: Vec<String>,
    sinks: Vec<SinkView>,
    /// Calls of filter, route or transform functions that failed, parked
    /// with their input (`sluice failed list --sink @functions`).
    parked_function_calls: usize,
}

#[derive(Serialize)]
struct SinkView {
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    /// Every change below this position is durable in the sink.
    committed_lsn: String,
    /// Age of the oldest change read and not yet in this sink; 0 when
    /// caught up.
    lag_seconds: f64,
    /// Writes parked in the failed-message store.
    parked: usize,
    /// Running or paused backfills of the sink.
    active_backfills: Vec<u64>,
}

fn pipeline_view(state: &AppState) -> PipelineView {
    let plan = &state.plan;
    let mut tables: Vec<String> = plan.routes.keys().cloned().collect();
    tables.sort();
    PipelineView {
        name: plan.name.clone(),
        slot: plan.slot.clone(),
        publication: plan.publication.clone(),
        state: pipeline_state(state),
        confirmed_lsn: plan.status.confirmed().to_string(),
        lag_bytes: plan.status.lag_bytes(),
        lag_seconds: lag(plan.status.lag_seconds(plan.status.confirmed(), now())),
        restarts: plan.status.restarts(),
        tables,
        dropped_tables: plan.status.dropped(),
        sinks: (0..plan.sinks.len()).map(|i| sink_view(state, i)).collect(),
        parked_function_calls: crate::sink::failed::list(
            &plan.data_dir,
            crate::functions::FAILED_STORE,
        )
        .map(|m| m.len())
        .unwrap_or_default(),
    }
}

fn sink_view(state: &AppState, i: usize) -> SinkView {
    let plan = &state.plan;
    let sink = &plan.sinks[i];
    let parked = crate::sink::failed::list(&plan.data_dir, &sink.name)
        .map(|m| m.len())
        .unwrap_or_default();
    let active_backfills = state
        .backfills
        .list(Some(&sink.name))
        .iter()
        .filter(|v| v.backfill.state.is_active())
        .map(|v| v.backfill.id)
        .collect();
    SinkView {
        name: sink.name.clone(),
        kind: sink.kind.type_name(),
        committed_lsn: plan.status.sink_committed(i).to_string(),
        lag_seconds: lag(plan
            .status
            .lag_seconds(plan.status.sink_committed(i), now())),
        parked,
        active_backfills,
    }
}

fn now() -> i64 {
    crate::pipeline::stats::postgres_now()
}

/// A lag to the millisecond.
fn lag(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

async fn pipelines(State(state): State<AppState>) -> Json<Vec<PipelineView>> {
    Json(vec![pipeline_view(&state)])
}

async fn pipeline(State(state): State<AppState>, Path(name): Path<String>) -> Answer<PipelineView> {
    if name != state.plan.name {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "there is no pipeline named `{name}` (this one is `{}`)",
                state.plan.name
            ),
        ));
    }
    Ok(Json(pipeline_view(&state)))
}

async fn sinks(State(state): State<AppState>) -> Json<Vec<SinkView>> {
    Json(
        (0..state.plan.sinks.len())
            .map(|i| sink_view(&state, i))
            .collect(),
    )
}

fn sink_number(state: &AppState, name: &str) -> Result<usize, ApiError> {
    state
        .plan
        .sinks
        .iter()
        .position(|s| s.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = state.plan.sinks.iter().map(|s| s.name.as_str()).collect();
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "there is no sink named `{name}` (sinks: {})",
                    names.join(", ")
                ),
            )
        })
}

async fn sink(State(state): State<AppState>, Path(name): Path<String>) -> Answer<SinkView> {
    let i = sink_number(&state, &name)?;
    Ok(Json(sink_view(&state, i)))
}

async fn sink_backfills(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Answer<Vec<View>> {
    sink_number(&state, &name)?;
    Ok(Json(state.backfills.list(Some(&name))))
}

/// The body of `POST /api/sinks/{sink}/backfills`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBackfill {
    /// `schema.table` (a bare name means `public`).
    table: String,
    /// Only rows matching this condition over the table's columns.
    #[serde(default, rename = "where")]
    condition: Option<String>,
}

async fn start_backfill(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<StartBackfill>, JsonRejection>,
) -> Result<(StatusCode, Json<View>), ApiError> {
    let Json(body) = body.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("the body must be JSON such as {{\"table\": \"public.items\", \"where\": \"id > 10\"}}: {}", e.body_text()),
        )
    })?;
    let view = state
        .backfills
        .create(&name, &body.table, body.condition.as_deref())
        .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn start_verify(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<crate::verify::Request>, JsonRejection>,
) -> Result<(StatusCode, Json<crate::verify::View>), ApiError> {
    let Json(body) = body.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("the body must be JSON such as {{\"table\": \"public.items\", \"repair\": false}} or {{}}: {}", e.body_text()),
        )
    })?;
    let view = state.verifier.start(&name, body).await?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

async fn verifications(State(state): State<AppState>) -> Json<Vec<crate::verify::View>> {
    Json(state.verifier.list())
}

async fn verification(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Answer<crate::verify::View> {
    let id: u64 = id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("`{id}` is not a verification id (a number)"),
        )
    })?;
    state.verifier.get(id).map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "there is no verification {id} (only the last 100 are kept, until sluice restarts)"
            ),
        )
    })
}

/// The body of `POST /api/sinks/{sink}/failed/retry`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryFailed {
    /// Keys of parked messages (see `sluice failed list`).
    #[serde(default)]
    keys: Vec<String>,
    /// Every parked write of the sink.
    #[serde(default)]
    all: bool,
}

#[derive(Serialize)]
struct RetryQueued {
    /// Parked writes queued for the sink's writer (every parked write of
    /// each chosen document, oldest first).
    queued: usize,
}

/// Queues parked writes for a retry by the sink's writer, in order with its
/// other writes (see `sink::failed`).
async fn retry_failed(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<RetryFailed>, JsonRejection>,
) -> Result<(StatusCode, Json<RetryQueued>), ApiError> {
    if name != crate::functions::FAILED_STORE {
        sink_number(&state, &name)?;
    }
    let Json(body) = body.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!(
                "the body must be JSON such as {{\"keys\": [\"…\"]}} or {{\"all\": true}}: {}",
                e.body_text()
            ),
        )
    })?;
    if body.keys.is_empty() && !body.all {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            "name the messages to retry with `keys`, or say `\"all\": true`",
        ));
    }
    let keys: std::collections::HashSet<String> = body.keys.into_iter().collect();
    let all = body.all;
    if name == crate::functions::FAILED_STORE {
        let queued = retry_function_calls(&state, |m| all || keys.contains(&m.key)).await?;
        return Ok((StatusCode::ACCEPTED, Json(RetryQueued { queued })));
    }
    let queued = crate::sink::failed::queue_retry(&state.plan.data_dir, &name, |m| {
        all || keys.contains(&m.key)
    })
    .map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    })?;
    Ok((StatusCode::ACCEPTED, Json(RetryQueued { queued })))
}

/// Retries parked function calls by backfilling their rows into every
/// sink: the current functions run on each row as it is now, in order with
/// its live changes (a backfill's windows), and a call that fails again is
/// parked again; a row no longer in the table has its document deleted.
/// The calls of each chosen row, and the changes parked behind them, leave
/// the store once the backfills are started. Returns how many.
async fn retry_function_calls(
    state: &AppState,
    select: impl Fn(&crate::sink::failed::FailedMessage) -> bool,
) -> Result<usize, ApiError> {
    use crate::sink::failed;
    use std::collections::{BTreeMap, BTreeSet, HashSet};
    let unavailable = |e: crate::error::Error| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    };
    let store = crate::functions::FAILED_STORE;
    let parked = failed::list(&state.plan.data_dir, store).map_err(unavailable)?;
    let rows: HashSet<(String, String)> = parked
        .iter()
        .filter(|m| select(m))
        .map(|m| (m.index.clone(), m.id.clone()))
        .collect();
    let mut ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for m in parked
        .iter()
        .filter(|m| rows.contains(&(m.index.clone(), m.id.clone())))
    {
        ids.entry(m.table.clone()).or_default().insert(m.id.clone());
    }
    let requests = ids
        .iter()
        .map(|(table, ids)| Ok((table, exact_rows(state, table, ids)?)))
        .collect::<Result<Vec<_>, ApiError>>()?;
    // Out of the store first: the rows' backfilled changes must not wait
    // behind the calls they retry.
    let taken = failed::take(&state.plan.data_dir, store, |m| {
        rows.contains(&(m.index.clone(), m.id.clone()))
    })
    .map_err(unavailable)?;
    for (table, rows) in &requests {
        for sink in &state.plan.sinks {
            if let Err(e) = state
                .backfills
                .create_rows(&sink.name, table, rows.clone())
                .await
            {
                // Kept as they were, to be retried again.
                let mut back = failed::FailedStore::new(&state.plan.data_dir, store);
                for message in &taken {
                    back.park(message).map_err(unavailable)?;
                }
                return Err(e.into());
            }
        }
    }
    Ok(taken.len())
}

/// The rows of `table` with document `ids` (key values joined by
/// `pipeline.key_separator`), by key.
fn exact_rows(
    state: &AppState,
    table: &str,
    ids: &std::collections::BTreeSet<String>,
) -> Result<crate::backfill::ExactRows, ApiError> {
    let invalid = |message: String| ApiError::new(StatusCode::CONFLICT, "conflict", message);
    let key = state
        .plan
        .routes
        .get(table)
        .and_then(|route| route.key.clone())
        .ok_or_else(|| {
            invalid(format!(
                "table {table} is not streamed, or has no key: backfill its rows instead"
            ))
        })?;
    let separator = &state.plan.key_separator;
    let mut keys = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(values) = crate::pipeline::router::key_values(id, key.len(), separator) else {
            return Err(invalid(format!(
                "the document id {id:?} of table {table} does not split into its key ({}): backfill the row instead",
                key.join(", ")
            )));
        };
        keys.push(values);
    }
    Ok(crate::backfill::ExactRows {
        columns: key,
        keys,
        done: 0,
    })
}

async fn backfills(State(state): State<AppState>) -> Json<Vec<View>> {
    Json(state.backfills.list(None))
}

fn backfill_id(text: &str) -> Result<u64, ApiError> {
    text.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("`{text}` is not a backfill id (a number)"),
        )
    })
}

async fn backfill(State(state): State<AppState>, Path(id): Path<String>) -> Answer<View> {
    Ok(Json(state.backfills.get(backfill_id(&id)?)?))
}

async fn pause(State(state): State<AppState>, Path(id): Path<String>) -> Answer<View> {
    Ok(Json(state.backfills.pause(backfill_id(&id)?)?))
}

async fn resume(State(state): State<AppState>, Path(id): Path<String>) -> Answer<View> {
    Ok(Json(state.backfills.resume(backfill_id(&id)?)?))
}

async fn cancel(State(state): State<AppState>, Path(id): Path<String>) -> Answer<View> {
    Ok(Json(state.backfills.cancel(backfill_id(&id)?)?))
}

async fn unknown_route() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; see openapi.yaml for the API",
    )
}

#[cfg(test)]
mod tests {
    /// Every route the server has is described in `openapi.yaml`, and every
    /// path described there is served.
    #[test]
    fn openapi_describes_every_route() {
        let spec = include_str!("../../openapi.yaml");
        let source = include_str!("routes.rs");
        let served: std::collections::BTreeSet<&str> = source
            .lines()
            .filter_map(|l| l.trim().strip_prefix(".route(\""))
            .chain(
                source
                    .lines()
                    .map(str::trim)
                    .filter(|l| l.starts_with("\"/api/") && l.ends_with("\","))
                    .map(|l| &l[1..]),
            )
            .filter_map(|l| l.split('"').next())
            .collect();
        let described: std::collections::BTreeSet<&str> = spec
            .lines()
            .filter(|l| l.starts_with("  /api/"))
            .map(|l| l.trim().trim_end_matches(':'))
            .collect();
        assert_eq!(served, described);
        assert!(served.len() >= 11, "{served:?}");
    }
}
