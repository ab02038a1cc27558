//! Elasticsearch's error bodies: the exception a request or a bulk item fails
//! with, shaped as the cluster shapes it.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

/// An exception as Elasticsearch reports it: a type, a reason and metadata.
#[derive(Clone, Debug)]
pub(super) struct EsError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub reason: String,
    pub extra: Map<String, Value>,
}

impl EsError {
    pub fn new(status: StatusCode, kind: &'static str, reason: impl Into<String>) -> Self {
        EsError {
            status,
            kind,
            reason: reason.into(),
            extra: Map::new(),
        }
    }

    /// Adds a metadata field (`index`, `index_uuid`, `shard`, `header`, …).
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    /// The `error` object of a failed bulk item.
    pub fn cause(&self) -> Value {
        let mut cause = Map::new();
        cause.insert("type".into(), self.kind.into());
        cause.insert("reason".into(), self.reason.clone().into());
        cause.extend(self.extra.clone());
        Value::Object(cause)
    }

    /// The body of a failed request.
    pub fn body(&self) -> Value {
        let mut error = self.cause();
        error["root_cause"] = json!([self.cause()]);
        json!({ "error": error, "status": self.status.as_u16() })
    }

    pub fn illegal_argument(reason: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "illegal_argument_exception",
            reason,
        )
    }

    /// Unparsable JSON, at `line` of the request body.
    pub fn parse(line: usize, error: &serde_json::Error) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "x_content_parse_exception",
            format!("[{line}:{}] {error}", error.column()),
        )
    }

    /// `ActionRequestValidationException`: every problem, numbered.
    pub fn validation(problems: &[String]) -> Self {
        let mut reason = String::from("Validation Failed: ");
        for (n, problem) in problems.iter().enumerate() {
            reason.push_str(&format!("{}: {problem};", n + 1));
        }
        Self::new(
            StatusCode::BAD_REQUEST,
            "action_request_validation_exception",
            reason,
        )
    }

    pub fn index_not_found(index: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "index_not_found_exception",
            format!("no such index [{index}]"),
        )
        .with("resource.type", "index_or_alias")
        .with("resource.id", index)
        .with("index_uuid", "_na_")
        .with("index", index)
    }

    /// `index` must be a valid index name, as Elasticsearch checks it.
    pub fn check_index_name(index: &str) -> Result<(), EsError> {
        let invalid = |why: &str| {
            Err(Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_index_name_exception",
                format!("Invalid index name [{index}], {why}"),
            )
            .with("index_uuid", "_na_")
            .with("index", index))
        };
        if index.is_empty() || index == "." || index == ".." {
            return invalid("must not be empty, '.' or '..'");
        }
        if index.chars().any(|c| c.is_uppercase()) {
            return invalid("must be lowercase");
        }
        if index.starts_with(['_', '-', '+']) {
            return invalid("must not start with '_', '-', or '+'");
        }
        if index.contains(['\\', '/', '*', '?', '"', '<', '>', '|', ' ', ',', '#', ':']) {
            return invalid(
                "must not contain the following characters [' ','\"','*',',','/','<','>','?','\\\\','|',':','#']",
            );
        }
        Ok(())
    }

    /// A proxy's answer in front of a sick cluster: not JSON at all.
    pub fn bad_gateway() -> Response {
        let html = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n\
                    <center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n";
        (
            StatusCode::BAD_GATEWAY,
            [(axum::http::header::CONTENT_TYPE, "text/html")],
            html,
        )
            .into_response()
    }

    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster_block_exception",
            "blocked by: [SERVICE_UNAVAILABLE/2/no master];",
        )
    }

    pub fn rejected() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "es_rejected_execution_exception",
            "rejected execution of coordinating operation [coordinating_and_primary_bytes=0, \
             replica_bytes=0, all_bytes=0, coordinating_operation_bytes=104857600, \
             max_coordinating_and_primary_bytes=107374182]",
        )
    }
}

impl IntoResponse for EsError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}
