//! What can go wrong, typed, so a service can decide what to do.

use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt;

/// Why an [`Auditor`](crate::Auditor) could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invalid auditrail endpoint {endpoint:?}: {message}")]
    InvalidEndpoint { endpoint: String, message: String },
    #[error("the bearer token cannot be sent as a gRPC header value: {0}")]
    InvalidToken(String),
    #[error("TLS setup for {endpoint}: {message}")]
    Tls { endpoint: String, message: String },
    #[error(
        "an Auditor must be built inside a Tokio runtime (its gRPC connections run on it): {0}"
    )]
    NoRuntime(String),
    #[error("building the OTLP log exporter: {0}")]
    Exporter(String),
}

/// Why [`Event::emit_durable`](crate::Event::emit_durable) could not confirm
/// that auditrail holds the event. The caller should treat every one of
/// them as "not audited" (and refuse the action, if it must be audited).
#[derive(Debug, Clone, thiserror::Error)]
pub enum DurableError {
    /// auditrail could not be reached (connection refused, reset, DNS,
    /// TLS), or it answered UNAVAILABLE (it cannot write durably right now:
    /// a failed fsync, a full disk).
    #[error("auditrail at {endpoint} is unavailable: {message}")]
    Unavailable { endpoint: String, message: String },
    /// No answer within the timeout. The event may still have been stored;
    /// sending the same event again is stored once.
    #[error("auditrail at {endpoint} did not confirm the event within {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    /// The bearer token is missing, wrong or revoked (UNAUTHENTICATED).
    #[error("auditrail refused the credentials: {message}")]
    Unauthenticated { message: String },
    /// The token is valid but may not write (PERMISSION_DENIED), e.g. a
    /// reader's token.
    #[error("auditrail does not let these credentials write: {message}")]
    PermissionDenied { message: String },
    /// auditrail refuses more for now (RESOURCE_EXHAUSTED): its disk quota
    /// or in-flight budget is reached, or the tenant's rate limit; retry
    /// after `retry_after` when it says. Without a retry hint the request
    /// can never fit (over `max_request_bytes`).
    #[error("auditrail is applying backpressure{}: {message}", retry_hint(*.retry_after))]
    Backpressure {
        message: String,
        retry_after: Option<Duration>,
    },
    /// auditrail refused this event (in `partial_success`, or as an invalid
    /// request): `reason` is its message, e.g. the event over
    /// `max_event_bytes`, an invalid `log.record.uid`. Sending it again will
    /// not help; nothing of it is stored.
    #[error("auditrail rejected the event: {reason}")]
    Rejected { reason: String },
    /// Any other gRPC error.
    #[error("auditrail answered {code:?}: {message}")]
    Failed { code: Code, message: String },
    /// [`crate::event`] was used before [`crate::set_global`].
    #[error("no auditrail_sdk::Auditor is set (auditrail_sdk::set_global)")]
    NoAuditor,
}

fn retry_hint(retry_after: Option<Duration>) -> String {
    retry_after
        .map(|after| format!(" (retry after {after:?})"))
        .unwrap_or_default()
}

impl DurableError {
    /// Whether sending the same event again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            DurableError::Unavailable { .. } | DurableError::Timeout { .. } => true,
            DurableError::Backpressure { retry_after, .. } => retry_after.is_some(),
            _ => false,
        }
    }

    /// The error for a gRPC status from auditrail (or from the channel).
    pub(crate) fn from_status(
        status: &tonic::Status,
        endpoint: &str,
        timeout: Duration,
    ) -> DurableError {
        let message = describe(status);
        if timed_out(status) {
            return DurableError::Timeout {
                endpoint: endpoint.to_owned(),
                timeout,
            };
        }
        match status.code() {
            Code::Unavailable => DurableError::Unavailable {
                endpoint: endpoint.to_owned(),
                message,
            },
            Code::DeadlineExceeded => DurableError::Timeout {
                endpoint: endpoint.to_owned(),
                timeout,
            },
            Code::Unauthenticated => DurableError::Unauthenticated { message },
            Code::PermissionDenied => DurableError::PermissionDenied { message },
            Code::ResourceExhausted => DurableError::Backpressure {
                message,
                retry_after: status
                    .get_details_retry_info()
                    .and_then(|info| info.retry_delay),
            },
            Code::InvalidArgument => DurableError::Rejected { reason: message },
            code => DurableError::Failed { code, message },
        }
    }
}

/// Whether tonic gave up on the call at its deadline (the `grpc-timeout`
/// the call carries), which races the SDK's own timer: CANCELLED with a
/// [`tonic::TimeoutExpired`] among its causes.
fn timed_out(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        if cause.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// A status's message and its causes: a transport error's message alone
/// ("tcp connect error") hides the reason ("Connection refused").
fn describe(status: &tonic::Status) -> String {
    let mut text = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Why a flush or a shutdown of the batched path failed.
#[derive(Debug, thiserror::Error)]
#[error("audit events could not be flushed: {0}")]
pub struct FlushError(pub String);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic::{Code, Status};
    use tonic_types::{ErrorDetails, StatusExt};

    use super::DurableError;

    fn mapped(status: Status) -> DurableError {
        DurableError::from_status(&status, "http://audit:4317", Duration::from_secs(5))
    }

    #[test]
    fn each_answer_is_its_own_error() {
        let e = mapped(Status::unavailable("fsync failed"));
        assert!(matches!(e, DurableError::Unavailable { .. }) && e.is_retryable());
        assert!(
            e.to_string()
                .contains("http://audit:4317 is unavailable: fsync failed"),
            "{e}"
        );
        let e = mapped(Status::deadline_exceeded("late"));
        assert!(matches!(e, DurableError::Timeout { .. }) && e.is_retryable());
        let e = mapped(Status::unauthenticated("no token"));
        assert!(matches!(e, DurableError::Unauthenticated { .. }) && !e.is_retryable());
        let e = mapped(Status::permission_denied("a reader"));
        assert!(matches!(e, DurableError::PermissionDenied { .. }));
        let e = mapped(Status::invalid_argument("malformed"));
        assert!(matches!(e, DurableError::Rejected { .. }) && !e.is_retryable());
        let e = mapped(Status::internal("bug"));
        assert!(matches!(
            e,
            DurableError::Failed {
                code: Code::Internal,
                ..
            }
        ));
    }

    #[test]
    fn backpressure_carries_the_retry_hint() {
        let hinted = Status::with_error_details(
            Code::ResourceExhausted,
            "over max_disk",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(5))),
        );
        let e = mapped(hinted);
        assert!(
            matches!(e, DurableError::Backpressure { retry_after: Some(after), .. } if after == Duration::from_secs(5)),
            "{e:?}"
        );
        assert!(e.is_retryable());
        assert!(e.to_string().contains("retry after 5s"), "{e}");
        // Without a hint: the request can never fit.
        let e = mapped(Status::resource_exhausted("over max_request_bytes"));
        assert!(!e.is_retryable(), "{e:?}");
    }

    #[test]
    fn tonic_giving_up_at_the_deadline_is_a_timeout() {
        let status = Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(status.code(), Code::Cancelled);
        assert!(matches!(mapped(status), DurableError::Timeout { .. }));
        // Other cancellations are not.
        let e = mapped(Status::cancelled("the server went away"));
        assert!(
            matches!(
                e,
                DurableError::Failed {
                    code: Code::Cancelled,
                    ..
                }
            ),
            "{e:?}"
        );
    }
}
