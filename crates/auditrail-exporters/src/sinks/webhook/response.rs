//! What a receiver's answer means for the delivery loop.
//!
//! * 2xx: delivered.
//! * 408, 429 and 5xx: retryable, no sooner than `Retry-After` says.
//! * 401, 403, 404, 405, 407: the sink is set up wrongly (a wrong secret or
//!   token, a wrong URL). No record is to blame, so nothing is
//!   dead-lettered: the batch waits and the sink shows as failing.
//! * Any other 4xx (400, 413, 422, ...): the receiver refuses what it was
//!   sent; the loop splits the batch until the record(s) to blame stand
//!   alone and dead-letters them.
//!
//! Connection errors and timeouts are retryable.

use std::time::Duration;

pub use crate::http::transport;
use crate::http::truncated;
use crate::ExportError;

/// The error for a non-2xx `status` with `body`, carrying the receiver's
/// `Retry-After` for the statuses that are retried.
pub fn classify(status: u16, retry_after: Option<Duration>, body: &str) -> ExportError {
    let message = format!("HTTP {status}: {}", truncated(body.trim()));
    let error = match status {
        429 => ExportError::retryable("throttled", message),
        408 => ExportError::retryable("timeout", message),
        500..=599 => ExportError::retryable("server", message),
        401 | 403 | 407 => ExportError::misconfigured("auth", message),
        404 | 405 => ExportError::misconfigured("url", message),
        400..=499 => ExportError::permanent("data", message),
        // 1xx or 3xx that reqwest did not follow: not a confirmation.
        _ => ExportError::retryable("server", message),
    };
    match retry_after {
        Some(wait) if error.class == crate::ErrorClass::Retryable => error.with_retry_after(wait),
        _ => error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorClass;

    #[test]
    fn statuses_map_to_what_the_loop_does() {
        let hint = Some(Duration::from_secs(3));
        for (status, class, kind) in [
            (429, ErrorClass::Retryable, "throttled"),
            (503, ErrorClass::Retryable, "server"),
            (500, ErrorClass::Retryable, "server"),
            (408, ErrorClass::Retryable, "timeout"),
            (400, ErrorClass::Permanent, "data"),
            (413, ErrorClass::Permanent, "data"),
            (422, ErrorClass::Permanent, "data"),
            (401, ErrorClass::Misconfigured, "auth"),
            (403, ErrorClass::Misconfigured, "auth"),
            (404, ErrorClass::Misconfigured, "url"),
            (302, ErrorClass::Retryable, "server"),
        ] {
            let error = classify(status, hint, "refused");
            assert_eq!((error.class, error.kind), (class, kind), "{status}");
            let hinted = class == ErrorClass::Retryable;
            assert_eq!(error.retry_after, hint.filter(|_| hinted), "{status}");
        }
    }

    #[test]
    fn the_refusal_body_is_in_the_message_truncated() {
        let error = classify(400, None, "line 3: poison event\n");
        assert_eq!(error.message, "HTTP 400: line 3: poison event");
        let long = "é".repeat(1000);
        let error = classify(400, None, &long);
        assert!(error.message.len() < 600, "{}", error.message.len());
        assert!(
            error.message.ends_with("... (2000 bytes)"),
            "{}",
            error.message
        );
    }
}
