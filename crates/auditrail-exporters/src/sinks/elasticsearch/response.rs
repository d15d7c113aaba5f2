//! What a cluster's answer to `_bulk` means for the delivery loop.
//!
//! **The request as a whole** (the HTTP status):
//!
//! * 200: the items say what happened, each on its own (below);
//! * 429 and 5xx: nothing was taken; retried, no sooner than `Retry-After`;
//! * 401, 403: the credentials are wrong or lack a privilege, and 404 a
//!   wrong `url` (a path prefix): the sink is misconfigured, nothing is
//!   dead-lettered, the batch waits;
//! * 413 (over `http.max_content_length`) and other 4xx: permanent; the
//!   loop splits the batch, and a single event still refused is
//!   dead-lettered.
//!
//! **Each item** of a 200 (`items[i]` answers the `i`-th action; `errors`
//! is true when any failed):
//!
//! * 200, 201: stored;
//! * 409 `version_conflict_engine_exception`: a `create` whose `_id` is
//!   there already: a resend of a stored event, so stored;
//! * 429 (`es_rejected_execution_exception`, a full write queue, or a
//!   `cluster_block_exception` while the disk is past its flood stage) and
//!   5xx (a shard unavailable): sent again after a backoff, alone;
//! * 400 (`mapper_parsing_exception`, `document_parsing_exception`,
//!   `illegal_argument_exception`, `strict_dynamic_mapping_exception`...):
//!   the document itself is refused; it goes to the dead letters with the
//!   error type and reason;
//! * 401, 403, 404 (`index_not_found_exception` where indices are not
//!   auto-created) and a missing ingest pipeline: not the document's
//!   fault, so sent again (the sink shows failing with the reason) rather
//!   than dead-lettered.
//!
//! Vector's `elasticsearch` sink by default takes a 200 whose items hold
//! errors as delivered, and the Collector's `elasticsearchexporter`
//! retries only 429 and drops the rest: here nothing is taken as stored
//! that the cluster did not store, and nothing refused goes unrecorded.

use std::time::Duration;

use serde::Deserialize;

pub use crate::http::transport;
pub use crate::http::truncated;
use crate::{ErrorClass, ExportError, RecordOutcome};

/// The error for a `_bulk` request answered with a non-200 `status`.
pub fn classify_status(status: u16, retry_after: Option<Duration>, body: &str) -> ExportError {
    let message = format!("HTTP {status}: {}", truncated(body.trim()));
    let error = match status {
        429 => ExportError::retryable("throttled", message),
        408 => ExportError::retryable("timeout", message),
        500..=599 => ExportError::retryable("server", message),
        401 => ExportError::misconfigured(
            "auth",
            format!("{message} (check username and password_env, or api_key_env)"),
        ),
        403 => ExportError::misconfigured(
            "auth",
            format!("{message} (the credentials lack a privilege on the target: create_doc, and auto_configure or create_index)"),
        ),
        404 | 405 => ExportError::misconfigured("url", message),
        400..=499 => ExportError::permanent("data", message),
        _ => ExportError::retryable("server", message),
    };
    match retry_after {
        Some(wait) if error.class == ErrorClass::Retryable => error.with_retry_after(wait),
        _ => error,
    }
}

/// A `_bulk` response body. Only what the sink reads; with
/// `filter_path=errors,items.*.status,items.*.error` the cluster sends
/// only that, and a full body reads the same.
#[derive(Debug, Deserialize)]
struct BulkResponse {
    #[serde(default)]
    errors: bool,
    #[serde(default)]
    items: Vec<std::collections::HashMap<String, Item>>,
}

#[derive(Debug, Deserialize)]
struct Item {
    status: Option<u16>,
    error: Option<ItemError>,
}

#[derive(Debug, Deserialize)]
struct ItemError {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    caused_by: Option<Box<ItemError>>,
}

impl ItemError {
    /// `type: reason; caused by type: reason ...`
    fn describe(&self) -> String {
        let mut out = self.kind.clone();
        if let Some(reason) = &self.reason {
            out.push_str(": ");
            out.push_str(reason);
        }
        let mut cause = self.caused_by.as_deref();
        while let Some(c) = cause {
            out.push_str("; caused by ");
            out.push_str(&c.kind);
            if let Some(reason) = &c.reason {
                out.push_str(": ");
                out.push_str(reason);
            }
            cause = c.caused_by.as_deref();
        }
        out
    }
}

/// What one item's answer was, before it becomes a [`RecordOutcome`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemResult {
    Stored,
    /// 409 on `create`: it was there already.
    AlreadyStored,
    /// Sent again; the status and error say why.
    Retry(u16, String),
    /// The document is refused for what it holds.
    Rejected(u16, String),
}

impl ItemResult {
    /// The label of `auditrail_elasticsearch_items_total{result}`.
    pub fn label(&self) -> &'static str {
        match self {
            ItemResult::Stored => "stored",
            ItemResult::AlreadyStored => "already_stored",
            ItemResult::Retry(429, _) => "throttled",
            ItemResult::Retry(..) => "retry",
            ItemResult::Rejected(..) => "rejected",
        }
    }

    fn outcome(&self) -> RecordOutcome {
        match self {
            ItemResult::Stored | ItemResult::AlreadyStored => RecordOutcome::Stored,
            ItemResult::Retry(..) => RecordOutcome::Retry,
            ItemResult::Rejected(status, reason) => {
                RecordOutcome::Rejected(format!("HTTP {status} {reason}"))
            }
        }
    }
}

/// One item's status and error, read on its own.
fn item_result(item: &Item) -> ItemResult {
    let status = item.status.unwrap_or(0);
    let described = || {
        item.error
            .as_ref()
            .map_or_else(|| "no error given".to_owned(), ItemError::describe)
    };
    let kind = item.error.as_ref().map_or("", |e| e.kind.as_str());
    match status {
        200..=299 if item.error.is_none() => ItemResult::Stored,
        409 if kind == "version_conflict_engine_exception" => ItemResult::AlreadyStored,
        // A missing ingest pipeline names no fault of the document: every
        // event would be dead-lettered for a config mistake.
        400 if kind == "illegal_argument_exception"
            && item
                .error
                .as_ref()
                .and_then(|e| e.reason.as_deref())
                .is_some_and(|r| r.contains("pipeline with id")) =>
        {
            ItemResult::Retry(status, described())
        }
        400 | 413 | 422 => ItemResult::Rejected(status, described()),
        _ => ItemResult::Retry(status, described()),
    }
}

/// The results of a 200 answer to a `_bulk` of `sent` actions, one per
/// action in order. `Err` when the body does not answer for them (not
/// JSON, a proxy's page, fewer items): then nothing is known, and the
/// whole batch is sent again.
pub fn read_items(body: &[u8], sent: usize) -> Result<Vec<ItemResult>, ExportError> {
    let response: BulkResponse = serde_json::from_slice(body).map_err(|e| {
        ExportError::retryable(
            "server",
            format!(
                "the _bulk answer is not a bulk response ({e}): {}",
                truncated(String::from_utf8_lossy(body).trim())
            ),
        )
    })?;
    if !response.errors && response.items.is_empty() {
        // errors:false, and items filtered away or not sent: all stored.
        return Ok(vec![ItemResult::Stored; sent]);
    }
    if response.items.len() != sent {
        return Err(ExportError::retryable(
            "server",
            format!(
                "the _bulk answer has {} items for {sent} actions; the batch is sent again",
                response.items.len()
            ),
        ));
    }
    Ok(response
        .items
        .iter()
        .map(|item| match item.values().next() {
            Some(item) => item_result(item),
            None => ItemResult::Retry(0, "an empty item".into()),
        })
        .collect())
}

/// `Ok` when every item is stored; else the [`ErrorClass::Partial`] error
/// that tells the delivery loop which to dead-letter and which to send
/// again, its message counting each kind and naming the first reason of
/// each.
pub fn outcome(results: &[ItemResult]) -> Result<(), ExportError> {
    let mut retry = 0;
    let mut throttled = 0;
    let mut rejected = 0;
    let mut first_retry = None;
    let mut first_rejected = None;
    for result in results {
        match result {
            ItemResult::Stored | ItemResult::AlreadyStored => {}
            ItemResult::Retry(status, reason) => {
                retry += 1;
                throttled += usize::from(*status == 429);
                first_retry.get_or_insert_with(|| format!("HTTP {status} {reason}"));
            }
            ItemResult::Rejected(status, reason) => {
                rejected += 1;
                first_rejected.get_or_insert_with(|| format!("HTTP {status} {reason}"));
            }
        }
    }
    if retry == 0 && rejected == 0 {
        return Ok(());
    }
    let stored = results.len() - retry - rejected;
    let mut message = format!(
        "_bulk: {stored} of {} stored, {retry} to send again, {rejected} refused",
        results.len()
    );
    if let Some(first) = first_retry {
        message.push_str(&format!("; sent again: {}", truncated(&first)));
    }
    if let Some(first) = first_rejected {
        message.push_str(&format!("; refused: {}", truncated(&first)));
    }
    // The kind is what metrics and /readyz show: why the batch is not
    // through yet.
    let kind = if throttled > 0 {
        "throttled"
    } else if retry > 0 {
        "server"
    } else {
        "data"
    };
    Err(ExportError::partial(
        kind,
        message,
        results.iter().map(ItemResult::outcome).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_of_the_whole_request() {
        let hint = Some(Duration::from_secs(2));
        for (status, class, kind) in [
            (429, ErrorClass::Retryable, "throttled"),
            (503, ErrorClass::Retryable, "server"),
            (502, ErrorClass::Retryable, "server"),
            (401, ErrorClass::Misconfigured, "auth"),
            (403, ErrorClass::Misconfigured, "auth"),
            (404, ErrorClass::Misconfigured, "url"),
            (413, ErrorClass::Permanent, "data"),
            (400, ErrorClass::Permanent, "data"),
        ] {
            let error = classify_status(status, hint, "{}");
            assert_eq!((error.class, error.kind), (class, kind), "{status}");
            let hinted = class == ErrorClass::Retryable;
            assert_eq!(error.retry_after, hint.filter(|_| hinted), "{status}");
        }
    }

    /// A mixed answer as Elasticsearch 8 writes it (the docs-bulk example
    /// shape: one object per item, keyed by the action).
    const MIXED: &str = r#"{"took":3,"errors":true,"items":[
      {"create":{"_index":"audit-2026.05.04","_id":"n:1","_version":1,"result":"created","status":201}},
      {"create":{"_index":"audit-2026.05.04","_id":"n:2","status":429,"error":{"type":"es_rejected_execution_exception","reason":"rejected execution of coordinating operation"}}},
      {"create":{"_index":"audit-2026.05.04","_id":"n:3","status":400,"error":{"type":"document_parsing_exception","reason":"[1:300] failed to parse field [auditrail.attributes.mood] of type [long] in document with id 'n:3'","caused_by":{"type":"illegal_argument_exception","reason":"For input string: \"calm\""}}}},
      {"create":{"_index":"audit-2026.05.04","_id":"n:4","status":409,"error":{"type":"version_conflict_engine_exception","reason":"[n:4]: version conflict, document already exists (current version [1])"}}},
      {"create":{"_index":"audit-2026.05.04","_id":"n:5","status":503,"error":{"type":"unavailable_shards_exception","reason":"primary shard is not active"}}},
      {"create":{"_index":"audit-2026.05.04","_id":"n:6","status":404,"error":{"type":"index_not_found_exception","reason":"no such index [audit-2026.05.04]"}}},
      {"create":{"_index":"audit-2026.05.04","_id":"n:7","status":400,"error":{"type":"illegal_argument_exception","reason":"pipeline with id [geo] does not exist"}}}
    ]}"#;

    #[test]
    fn each_item_is_read_on_its_own() {
        let results = read_items(MIXED.as_bytes(), 7).unwrap();
        let labels: Vec<&str> = results.iter().map(ItemResult::label).collect();
        assert_eq!(
            labels,
            [
                "stored",
                "throttled",
                "rejected",
                "already_stored",
                "retry",
                "retry",
                "retry"
            ]
        );
        let error = outcome(&results).unwrap_err();
        assert_eq!(error.class, ErrorClass::Partial);
        assert_eq!(error.kind, "throttled");
        assert_eq!(error.records.len(), 7);
        assert_eq!(error.records[0], RecordOutcome::Stored);
        assert_eq!(error.records[1], RecordOutcome::Retry);
        assert_eq!(error.records[3], RecordOutcome::Stored);
        let RecordOutcome::Rejected(reason) = &error.records[2] else {
            panic!("{:?}", error.records[2]);
        };
        assert!(
            reason.starts_with("HTTP 400 document_parsing_exception: [1:300] failed to parse field [auditrail.attributes.mood]")
                && reason.ends_with("caused by illegal_argument_exception: For input string: \"calm\""),
            "{reason}"
        );
        assert!(
            error
                .message
                .starts_with("_bulk: 2 of 7 stored, 4 to send again, 1 refused"),
            "{}",
            error.message
        );
    }

    #[test]
    fn errors_false_is_all_stored_even_when_items_are_filtered_away() {
        assert_eq!(
            read_items(br#"{"errors":false}"#, 3).unwrap(),
            vec![ItemResult::Stored; 3]
        );
        let full = r#"{"took":1,"errors":false,"items":[{"create":{"status":201}},{"create":{"status":201}}]}"#;
        assert!(outcome(&read_items(full.as_bytes(), 2).unwrap()).is_ok());
    }

    #[test]
    fn only_refusals_is_a_data_error_and_nothing_is_retried() {
        let body = r#"{"errors":true,"items":[{"create":{"status":201}},{"create":{"status":400,"error":{"type":"mapper_parsing_exception","reason":"object mapping for [auditrail.attributes.x] tried to parse field [x] as object, but found a concrete value"}}}]}"#;
        let error = outcome(&read_items(body.as_bytes(), 2).unwrap()).unwrap_err();
        assert_eq!((error.class, error.kind), (ErrorClass::Partial, "data"));
        assert!(!error.records.contains(&RecordOutcome::Retry));
    }

    #[test]
    fn an_answer_that_does_not_fit_is_a_retry_of_everything() {
        let body = r#"{"errors":true,"items":[{"create":{"status":201}}]}"#;
        let error = read_items(body.as_bytes(), 2).unwrap_err();
        assert_eq!(error.class, ErrorClass::Retryable);
        assert!(error.message.contains("1 items for 2 actions"), "{error}");
        let error = read_items(b"<html>bad gateway</html>", 2).unwrap_err();
        assert_eq!(error.class, ErrorClass::Retryable);
        // A 201 with an error is not a success.
        let odd = r#"{"errors":true,"items":[{"create":{"status":201,"error":{"type":"x"}}}]}"#;
        assert_eq!(read_items(odd.as_bytes(), 1).unwrap()[0].label(), "retry");
    }
}
