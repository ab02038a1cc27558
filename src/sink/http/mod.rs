//! What every HTTP sink (Elasticsearch, Typesense, Meilisearch, Turbopuffer)
//! shares: the defaults and checks of its batching, timeout, retry and
//! parking settings, and a client that authenticates requests, reads answers
//! the same way and waits between retries.
//!
//! Each sink keeps its own config struct (with its own doc comments and
//! `deny_unknown_fields`) and lends the shared settings as [`HttpSettings`].

mod client;
mod settings;

pub use client::{body_text, Answer, Answers, HttpClient, SendError};
pub use settings::*;

/// A name (an index, a collection) as one URL path segment or query value:
/// everything but unreserved characters percent-encoded.
pub fn path_segment(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
