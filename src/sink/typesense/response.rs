//! Answers: the per-line results of an import (HTTP 200 even when lines
//! fail), and error bodies, classified.

use serde::Deserialize;

use crate::sink::http::body_text;

/// What to do with one write after an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied (or, for a delete, nothing left to delete).
    Done,
    /// Try again later (429, 5xx, timeouts, dropped connections).
    Retry(String),
    /// Will not succeed by retrying (bad field type, bad JSON, …).
    Failed(String),
    /// The whole request was refused (too large, malformed): retrying it
    /// cannot succeed, smaller requests may.
    Refused(String),
}

#[derive(Debug, Deserialize)]
struct ImportLine {
    success: bool,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    code: Option<u16>,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    message: String,
}

/// The `message` of an error body, or the start of the body.
pub fn error_text(body: &[u8]) -> String {
    serde_json::from_slice::<ErrorBody>(body)
        .map(|e| e.message)
        .unwrap_or_else(|_| body_text(body))
}

/// Classifies a failure with an HTTP-like status code.
pub fn classify(code: u16, error: &str) -> Outcome {
    match code {
        200..=299 => Outcome::Done,
        408 | 429 | 500..=599 => Outcome::Retry(format!("{code}: {error}")),
        _ => Outcome::Failed(format!("{code}: {error}")),
    }
}

/// The outcomes of an import answer, one per line sent, in order.
pub fn parse_import(body: &[u8], lines: usize) -> Result<Vec<Outcome>, String> {
    let mut outcomes = Vec::with_capacity(lines);
    for line in body.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line: ImportLine = serde_json::from_slice(line)
            .map_err(|e| format!("an import answer line is not valid: {e}"))?;
        outcomes.push(if line.success {
            Outcome::Done
        } else {
            let error = line.error.unwrap_or_else(|| "import failed".into());
            // Lines without a code come from servers before 0.25: their line
            // errors are about the document.
            classify(line.code.unwrap_or(400), &error)
        });
    }
    if outcomes.len() != lines {
        return Err(format!(
            "the import answer has {} lines for {lines} sent",
            outcomes.len()
        ));
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_is_classified() {
        let body = br#"{"success":true}
{"success":false,"error":"Field `price` must be an int32.","code":400,"document":"{}"}
{"success":false,"error":"Not Ready or Lagging","code":503}
{"success":false,"error":"Rate limit exceeded or blocked","code":429}
{"success":false,"error":"Bad JSON."}
"#;
        let outcomes = parse_import(body, 5).unwrap();
        assert_eq!(outcomes[0], Outcome::Done);
        assert!(matches!(&outcomes[1], Outcome::Failed(e) if e.contains("must be an int32")));
        assert!(matches!(&outcomes[2], Outcome::Retry(e) if e.starts_with("503")));
        assert!(matches!(&outcomes[3], Outcome::Retry(_)));
        assert!(matches!(&outcomes[4], Outcome::Failed(e) if e.contains("Bad JSON")));
        assert!(parse_import(body, 4).is_err(), "the line count is checked");
        assert!(parse_import(b"<html>", 1).is_err());
    }

    #[test]
    fn error_bodies_give_their_message() {
        assert_eq!(
            error_text(br#"{"message": "Collection not found"}"#),
            "Collection not found"
        );
        assert_eq!(error_text(b"bad gateway"), "bad gateway");
    }
}
