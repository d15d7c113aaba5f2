//! How a sink says what went wrong, so the delivery loop can decide between
//! waiting, splitting the batch, and dead-lettering.

use std::time::Duration;

/// What kind of failure an [`ExportError`] is, which decides what the
/// delivery loop does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Transient (connection lost, timeout, deadlock, HTTP 5xx or 429): the
    /// same batch is sent again after a backoff.
    Retryable,
    /// The sink itself is set up wrongly (bad password, missing database or
    /// table, no permission). No record is to blame, so nothing is
    /// dead-lettered; the batch waits and is retried. At start-up this is a
    /// fatal error.
    Misconfigured,
    /// Something in the batch cannot be stored (a value the table cannot
    /// hold, say). The batch is split to find the record(s) to blame.
    Permanent,
}

/// A failed export or prepare.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct ExportError {
    pub class: ErrorClass,
    /// A short, stable label for metrics: `connection`, `timeout`,
    /// `deadlock`, `auth`, `schema`, `data`, `server`, ...
    pub kind: &'static str,
    pub message: String,
    /// The destination asked not to be tried again before this much time
    /// has passed (HTTP `Retry-After`): the delivery loop waits at least
    /// this long, however short its own backoff is at that point.
    pub retry_after: Option<Duration>,
}

impl ExportError {
    pub fn retryable(kind: &'static str, message: impl Into<String>) -> Self {
        ExportError {
            class: ErrorClass::Retryable,
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn misconfigured(kind: &'static str, message: impl Into<String>) -> Self {
        ExportError {
            class: ErrorClass::Misconfigured,
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn permanent(kind: &'static str, message: impl Into<String>) -> Self {
        ExportError {
            class: ErrorClass::Permanent,
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    /// This error with the destination's own hint of when to try again.
    pub fn with_retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }
}
