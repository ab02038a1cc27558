//! Bulk responses: every item's outcome, classified.

use serde::Deserialize;

use super::request::BulkAction;

/// What to do with one item after a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied, or already superseded (409 on a versioned write, 404 on a delete).
    Done,
    /// Try again later (429, 5xx).
    Retry(String),
    /// Will not succeed by retrying (mapping errors, bad documents).
    Failed(String),
}

#[derive(Debug, Deserialize)]
struct BulkResponse {
    #[serde(default)]
    errors: bool,
    #[serde(default)]
    items: Vec<std::collections::HashMap<String, ItemResult>>,
}

#[derive(Debug, Deserialize)]
struct ItemResult {
    status: u16,
    #[serde(default)]
    error: Option<ItemError>,
}

#[derive(Debug, Deserialize)]
struct ItemError {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    reason: Option<String>,
}

/// Classifies one item's status.
pub fn classify(action: BulkAction, status: u16, error: &str) -> Outcome {
    match status {
        200..=299 => Outcome::Done,
        // The index holds a newer version: ours is stale, which is success.
        409 => Outcome::Done,
        404 if action == BulkAction::Delete => Outcome::Done,
        429 | 500..=599 => Outcome::Retry(format!("{status} {error}")),
        _ => Outcome::Failed(format!("{status} {error}")),
    }
}

/// A first look at a response: whether any item failed, and how many items
/// there are, without building them.
#[derive(Debug, Deserialize)]
struct Summary {
    #[serde(default)]
    errors: bool,
    #[serde(default)]
    items: ItemCount,
}

#[derive(Debug, Default)]
struct ItemCount(usize);

impl<'de> Deserialize<'de> for ItemCount {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Count;
        impl<'de> serde::de::Visitor<'de> for Count {
            type Value = ItemCount;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of bulk items")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ItemCount, A::Error> {
                let mut n = 0;
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(ItemCount(n))
            }
        }
        deserializer.deserialize_seq(Count)
    }
}

/// The outcomes of a bulk response, in item order.
pub fn parse(body: &[u8], actions: &[BulkAction]) -> Result<Vec<Outcome>, String> {
    // Most responses have no error: then only the count matters.
    let summary: Summary =
        serde_json::from_slice(body).map_err(|e| format!("the bulk response is not valid: {e}"))?;
    if !summary.errors && summary.items.0 == actions.len() && !actions.is_empty() {
        return Ok(vec![Outcome::Done; actions.len()]);
    }
    let response: BulkResponse =
        serde_json::from_slice(body).map_err(|e| format!("the bulk response is not valid: {e}"))?;
    if !response.errors && response.items.is_empty() && !actions.is_empty() {
        return Err("the bulk response has no items".into());
    }
    if response.items.len() != actions.len() {
        return Err(format!(
            "the bulk response has {} items for {} requested",
            response.items.len(),
            actions.len()
        ));
    }
    Ok(response
        .items
        .into_iter()
        .zip(actions)
        .map(|(item, action)| match item.into_values().next() {
            Some(result) => {
                let error = result
                    .error
                    .map(|e| format!("{}: {}", e.kind, e.reason.unwrap_or_default()))
                    .unwrap_or_default();
                classify(*action, result.status, &error)
            }
            None => Outcome::Retry("empty item in the bulk response".into()),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_results_are_classified() {
        let body = br#"{"took":3,"errors":true,"items":[
            {"index":{"_index":"i","_id":"1","status":201,"result":"created"}},
            {"index":{"_index":"i","_id":"2","status":409,"error":{"type":"version_conflict_engine_exception","reason":"newer"}}},
            {"index":{"_index":"i","_id":"3","status":429,"error":{"type":"es_rejected_execution_exception","reason":"queue full"}}},
            {"index":{"_index":"i","_id":"4","status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [price]"}}},
            {"delete":{"_index":"i","_id":"5","status":404,"result":"not_found"}},
            {"delete":{"_index":"i","_id":"6","status":409,"error":{"type":"version_conflict_engine_exception","reason":"newer"}}},
            {"index":{"_index":"i","_id":"7","status":503,"error":{"type":"unavailable_shards_exception","reason":"primary"}}}
        ]}"#;
        use BulkAction::*;
        let outcomes = parse(body, &[Index, Index, Index, Index, Delete, Delete, Index]).unwrap();
        assert_eq!(outcomes[0], Outcome::Done);
        assert_eq!(outcomes[1], Outcome::Done);
        assert!(
            matches!(&outcomes[2], Outcome::Retry(e) if e.contains("es_rejected_execution_exception"))
        );
        assert!(
            matches!(&outcomes[3], Outcome::Failed(e) if e.contains("failed to parse field [price]"))
        );
        assert_eq!(outcomes[4], Outcome::Done);
        assert_eq!(outcomes[5], Outcome::Done);
        assert!(matches!(&outcomes[6], Outcome::Retry(_)));
    }

    #[test]
    fn error_free_responses_take_the_fast_path() {
        let body = br#"{"took":3,"errors":false,"items":[
            {"index":{"_index":"i","_id":"1","status":201}},{"delete":{"_index":"i","_id":"2","status":200}}]}"#;
        let outcomes = parse(body, &[BulkAction::Index, BulkAction::Delete]).unwrap();
        assert_eq!(outcomes, [Outcome::Done, Outcome::Done]);
        assert!(
            parse(body, &[BulkAction::Index]).is_err(),
            "item count is checked"
        );
    }

    #[test]
    fn mismatched_responses_are_errors() {
        assert!(parse(b"not json", &[BulkAction::Index]).is_err());
        assert!(parse(br#"{"errors":false,"items":[]}"#, &[BulkAction::Index]).is_err());
    }
}
