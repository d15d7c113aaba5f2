//! What an OTLP receiver's answer means for delivery, per the OTLP spec
//! (`otlp.md`, "Failures" and "Partial success"):
//!
//! * gRPC: `UNAVAILABLE`, `CANCELLED`, `DEADLINE_EXCEEDED`, `ABORTED`,
//!   `OUT_OF_RANGE` and `DATA_LOSS` are retryable; `RESOURCE_EXHAUSTED` only
//!   with a `RetryInfo` (the server can recover), otherwise the request is
//!   too large for it and the loop splits it; auth and unknown-service codes
//!   mean the config is wrong; every other code is permanent.
//! * HTTP: 429, 502, 503 and 504 are retryable, not sooner than a
//!   `Retry-After` says; 401, 403 and 404 mean the config is wrong;
//!   every other status is permanent.
//! * A success whose `partial_success` rejects records is permanent: the
//!   spec forbids retrying what was rejected, so the loop narrows the batch
//!   down until the rejected records are dead-lettered alone (the accepted
//!   ones are sent again on the way, which a downstream auditrail
//!   deduplicates by `log.record.uid`).

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use tonic::Code;
use tonic_types::StatusExt;

use std::time::SystemTime;

use crate::retry::parse_retry_after;
use crate::ExportError;

pub(super) fn grpc_error(status: &tonic::Status) -> ExportError {
    let message = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        Code::Unavailable
        | Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::DataLoss => ExportError::retryable("server", message),
        Code::ResourceExhausted if status.get_details_retry_info().is_some() => {
            ExportError::retryable("backpressure", message)
        }
        Code::Unauthenticated | Code::PermissionDenied => {
            ExportError::misconfigured("auth", message)
        }
        Code::Unimplemented => ExportError::misconfigured(
            "endpoint",
            format!(
                "{message} (is this an OTLP logs endpoint? use protocol = \"http\" for port 4318)"
            ),
        ),
        _ => ExportError::permanent("data", message),
    }
}

/// The first bytes of an error body, for the message.
fn body_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub(super) fn http_error(status: u16, retry_after: Option<&str>, body: &[u8]) -> ExportError {
    let mut message = format!("HTTP {status}: {}", body_text(body));
    if let Some(hint) = retry_after {
        message.push_str(&format!(" (Retry-After: {hint})"));
    }
    match status {
        429 | 502 | 503 | 504 => {
            let error = ExportError::retryable("server", message);
            match retry_after.and_then(|v| parse_retry_after(v, SystemTime::now())) {
                Some(wait) => error.with_retry_after(wait),
                None => error,
            }
        }
        401 | 403 => ExportError::misconfigured("auth", message),
        404 => ExportError::misconfigured("endpoint", message),
        _ => ExportError::permanent("data", message),
    }
}

pub(super) fn partial_success(
    response: &ExportLogsServiceResponse,
    sent: usize,
) -> Result<(), ExportError> {
    match &response.partial_success {
        Some(partial) if partial.rejected_log_records > 0 => Err(ExportError::permanent(
            "rejected",
            format!(
                "the receiver rejected {} of {sent} records: {}",
                partial.rejected_log_records, partial.error_message
            ),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorClass;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsPartialSuccess;
    use tonic_types::ErrorDetails;

    #[test]
    fn grpc_codes_follow_the_spec() {
        let class = |status: tonic::Status| grpc_error(&status).class;
        assert_eq!(
            class(tonic::Status::unavailable("x")),
            ErrorClass::Retryable
        );
        assert_eq!(
            class(tonic::Status::deadline_exceeded("x")),
            ErrorClass::Retryable
        );
        assert_eq!(
            class(tonic::Status::resource_exhausted("too big")),
            ErrorClass::Permanent
        );
        let busy = tonic::Status::with_error_details(
            Code::ResourceExhausted,
            "busy",
            ErrorDetails::with_retry_info(Some(std::time::Duration::from_secs(1))),
        );
        assert_eq!(class(busy), ErrorClass::Retryable);
        assert_eq!(
            class(tonic::Status::unauthenticated("x")),
            ErrorClass::Misconfigured
        );
        assert_eq!(
            class(tonic::Status::invalid_argument("x")),
            ErrorClass::Permanent
        );
    }

    #[test]
    fn http_statuses_follow_the_spec() {
        let class = |s| http_error(s, None, b"").class;
        for s in [429, 502, 503, 504] {
            assert_eq!(class(s), ErrorClass::Retryable, "{s}");
        }
        for s in [400, 413, 500] {
            assert_eq!(class(s), ErrorClass::Permanent, "{s}");
        }
        assert_eq!(class(401), ErrorClass::Misconfigured);
        let busy = http_error(503, Some("7"), b"down\nfor now");
        assert!(busy.message.contains("down for now (Retry-After: 7)"));
        assert_eq!(busy.retry_after, Some(std::time::Duration::from_secs(7)));
    }

    #[test]
    fn rejected_records_are_a_permanent_error() {
        let ok = ExportLogsServiceResponse::default();
        assert!(partial_success(&ok, 3).is_ok());
        let none_rejected = ExportLogsServiceResponse {
            partial_success: Some(ExportLogsPartialSuccess {
                rejected_log_records: 0,
                error_message: "a warning".into(),
            }),
        };
        assert!(partial_success(&none_rejected, 3).is_ok());
        let rejected = ExportLogsServiceResponse {
            partial_success: Some(ExportLogsPartialSuccess {
                rejected_log_records: 1,
                error_message: "event_too_large".into(),
            }),
        };
        let e = partial_success(&rejected, 3).unwrap_err();
        assert_eq!(e.class, ErrorClass::Permanent);
        assert!(e
            .message
            .contains("rejected 1 of 3 records: event_too_large"));
    }
}
