//! What an HTTP Event Collector answer means for the delivery loop.
//!
//! HEC answers with an HTTP status and a JSON body `{"text": ..., "code":
//! N}` (plus `ackId` on success with indexer acknowledgement, and
//! `invalid-event-number` when it refused an event of a batch). The code
//! is more precise than the status, so it decides first; the table is
//! Splunk's "Possible error codes" (Troubleshoot HTTP Event Collector,
//! <https://docs.splunk.com/Documentation/Splunk/latest/Data/TroubleshootHTTPEventCollector>):
//!
//! | code | status | text | class |
//! |---|---|---|---|
//! | 1 | 403 | Token disabled | misconfigured (`auth`) |
//! | 2 | 401 | Token is required | misconfigured (`auth`) |
//! | 3 | 401 | Invalid authorization | misconfigured (`auth`) |
//! | 4 | 403 | Invalid token | misconfigured (`auth`) |
//! | 5 | 400 | No data | permanent (`data`) |
//! | 6 | 400 | Invalid data format | permanent (`data`): the loop splits the batch to the event to blame |
//! | 7 | 400 | Incorrect index | misconfigured (`index`) |
//! | 8 | 500 | Internal server error | retryable (`server`) |
//! | 9 | 503 | Server is busy | retryable (`busy`), no sooner than `Retry-After` |
//! | 10 | 400 | Data channel is missing | misconfigured (`channel`) |
//! | 11 | 400 | Invalid data channel | misconfigured (`channel`) |
//! | 12 | 400 | Event field is required | permanent (`data`) |
//! | 13 | 400 | Event field cannot be blank | permanent (`data`) |
//! | 14 | 400 | ACK is disabled | misconfigured (`acks`) |
//! | 15 | 400 | Error in handling indexed fields | permanent (`data`) |
//! | 16 | 400 | Query string authorization is not enabled | misconfigured (`auth`) |
//!
//! Without a code (a proxy's answer, say) the status decides, as for the
//! webhook sink: 429, 408 and 5xx are retried, 401/403 and 404/405 are
//! misconfigured, any other 4xx (413 too large, ...) is permanent.

use std::time::Duration;

use serde::Deserialize;

pub use crate::http::transport;
use crate::http::truncated;
use crate::{ErrorClass, ExportError};

/// The JSON body of a HEC answer; every field is optional, since a proxy
/// in between may answer with anything.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
pub struct HecAnswer {
    pub text: Option<String>,
    pub code: Option<i64>,
    #[serde(rename = "ackId")]
    pub ack_id: Option<u64>,
    #[serde(rename = "invalid-event-number")]
    pub invalid_event_number: Option<i64>,
}

impl HecAnswer {
    /// The answer in `body`, or an empty one when it is not HEC's JSON.
    pub fn parse(body: &str) -> HecAnswer {
        serde_json::from_str(body).unwrap_or_default()
    }
}

/// The error for a non-2xx answer of the event endpoint.
pub fn classify(status: u16, retry_after: Option<Duration>, body: &str) -> ExportError {
    let answer = HecAnswer::parse(body);
    let said = describe(status, &answer, body);
    let error = match answer.code {
        Some(9) => ExportError::retryable("busy", said),
        Some(8) => ExportError::retryable("server", said),
        Some(1..=4) | Some(16) => ExportError::misconfigured(
            "auth",
            format!("{said} (check the HEC token that token_env names: it must exist and be enabled)"),
        ),
        Some(7) => ExportError::misconfigured(
            "index",
            format!("{said} (the token may not write to that index: add it to the token's allowed indexes, or change `index`)"),
        ),
        Some(10) | Some(11) => ExportError::misconfigured(
            "channel",
            format!("{said} (auditrail sends X-Splunk-Request-Channel with every request: does a proxy in between drop it?)"),
        ),
        Some(14) => ExportError::misconfigured("acks", format!("{said} ({ACKS_DISABLED_HINT})")),
        Some(5 | 6 | 12 | 13 | 15) => ExportError::permanent("data", said),
        _ => by_status(status, said),
    };
    match retry_after {
        Some(wait) if error.class == ErrorClass::Retryable => error.with_retry_after(wait),
        _ => error,
    }
}

/// The error for a non-2xx answer of the ack endpoint. Nothing in the
/// query is to blame for a refusal (it holds only ack ids auditrail was
/// given), so what would be a record's fault is the sink's setup here.
pub fn classify_ack(status: u16, retry_after: Option<Duration>, body: &str) -> ExportError {
    let error = classify(status, retry_after, body);
    if error.class == ErrorClass::Permanent {
        return ExportError::misconfigured(
            "acks",
            format!("the ack endpoint refused the query: {}", error.message),
        );
    }
    error
}

/// What to do when HEC says acknowledgement is off for the token.
pub const ACKS_DISABLED_HINT: &str =
    "indexer acknowledgement is off for this HEC token: turn it on for the token, \
or set acknowledgements = false in this sink to count an event as delivered on HEC's 200 OK \
(at-least-once, and an event lost inside Splunk after the 200 goes unnoticed)";

fn by_status(status: u16, said: String) -> ExportError {
    match status {
        429 => ExportError::retryable("throttled", said),
        503 => ExportError::retryable("busy", said),
        408 => ExportError::retryable("timeout", said),
        500..=599 => ExportError::retryable("server", said),
        401 | 403 | 407 => ExportError::misconfigured("auth", said),
        404 | 405 => ExportError::misconfigured(
            "url",
            format!("{said} (is `url` the HEC base, e.g. http://splunk:8088?)"),
        ),
        400..=499 => ExportError::permanent("data", said),
        // 1xx or 3xx that reqwest did not follow: not a confirmation.
        _ => ExportError::retryable("server", said),
    }
}

/// `HEC HTTP 400 code 6: Invalid data format (invalid-event-number 3)`,
/// or the status with (the start of) the body when it is not HEC's JSON.
fn describe(status: u16, answer: &HecAnswer, body: &str) -> String {
    match (answer.code, &answer.text) {
        (Some(code), text) => {
            let mut said = format!(
                "HEC HTTP {status} code {code}: {}",
                text.as_deref().unwrap_or("")
            );
            if let Some(n) = answer.invalid_event_number {
                said.push_str(&format!(" (invalid-event-number {n})"));
            }
            said
        }
        (None, _) => format!("HEC HTTP {status}: {}", truncated(body.trim())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hec(status: u16, code: i64, text: &str) -> ExportError {
        classify(
            status,
            Some(Duration::from_secs(3)),
            &format!(r#"{{"text":"{text}","code":{code}}}"#),
        )
    }

    #[test]
    fn every_documented_code_maps_to_what_the_loop_does() {
        use ErrorClass::*;
        for (status, code, text, class, kind) in [
            (403, 1, "Token disabled", Misconfigured, "auth"),
            (401, 2, "Token is required", Misconfigured, "auth"),
            (401, 3, "Invalid authorization", Misconfigured, "auth"),
            (403, 4, "Invalid token", Misconfigured, "auth"),
            (400, 5, "No data", Permanent, "data"),
            (400, 6, "Invalid data format", Permanent, "data"),
            (400, 7, "Incorrect index", Misconfigured, "index"),
            (500, 8, "Internal server error", Retryable, "server"),
            (503, 9, "Server is busy", Retryable, "busy"),
            (400, 10, "Data channel is missing", Misconfigured, "channel"),
            (400, 11, "Invalid data channel", Misconfigured, "channel"),
            (400, 12, "Event field is required", Permanent, "data"),
            (400, 13, "Event field cannot be blank", Permanent, "data"),
            (400, 14, "ACK is disabled", Misconfigured, "acks"),
            (
                400,
                15,
                "Error in handling indexed fields",
                Permanent,
                "data",
            ),
            (
                400,
                16,
                "Query string authorization is not enabled",
                Misconfigured,
                "auth",
            ),
        ] {
            let error = hec(status, code, text);
            assert_eq!((error.class, error.kind), (class, kind), "code {code}");
            assert!(error.message.contains(text), "{error}");
            let hinted = class == Retryable;
            assert_eq!(
                error.retry_after.is_some(),
                hinted,
                "Retry-After only where the batch is retried: code {code}"
            );
        }
    }

    #[test]
    fn without_a_code_the_status_decides() {
        use ErrorClass::*;
        for (status, class, kind) in [
            (503, Retryable, "busy"),
            (502, Retryable, "server"),
            (429, Retryable, "throttled"),
            (408, Retryable, "timeout"),
            (401, Misconfigured, "auth"),
            (404, Misconfigured, "url"),
            (413, Permanent, "data"),
            (302, Retryable, "server"),
        ] {
            let error = classify(status, None, "<html>proxy says no</html>");
            assert_eq!((error.class, error.kind), (class, kind), "{status}");
            assert!(error.message.contains("proxy says no"), "{error}");
        }
    }

    #[test]
    fn an_invalid_event_is_named_and_acks_disabled_says_what_to_do() {
        let error = classify(
            400,
            None,
            r#"{"text":"Invalid data format","code":6,"invalid-event-number":3}"#,
        );
        assert_eq!(
            error.message,
            "HEC HTTP 400 code 6: Invalid data format (invalid-event-number 3)"
        );
        let error = hec(400, 14, "ACK is disabled");
        assert!(
            error.message.contains("acknowledgements = false"),
            "{error}"
        );
    }

    #[test]
    fn the_ack_endpoint_never_blames_a_record() {
        let error = classify_ack(400, None, r#"{"text":"Invalid data format","code":6}"#);
        assert_eq!(
            (error.class, error.kind),
            (ErrorClass::Misconfigured, "acks")
        );
        let busy = classify_ack(503, None, r#"{"text":"Server is busy","code":9}"#);
        assert_eq!(busy.class, ErrorClass::Retryable);
    }

    #[test]
    fn answers_parse_whatever_the_body() {
        assert_eq!(
            HecAnswer::parse(r#"{"text":"Success","code":0,"ackId":7}"#).ack_id,
            Some(7)
        );
        assert_eq!(HecAnswer::parse("not json"), HecAnswer::default());
        assert_eq!(HecAnswer::parse(""), HecAnswer::default());
    }
}
