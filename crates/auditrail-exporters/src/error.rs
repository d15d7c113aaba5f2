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
    /// dead-lettered; the batch waits, and is sent again once
    /// [`Exporter::prepare`](crate::Exporter::prepare) passes again. At
    /// start-up this is a fatal error.
    Misconfigured,
    /// Something in the batch cannot be stored (a value the table cannot
    /// hold, say). The batch is split to find the record(s) to blame.
    Permanent,
    /// The destination answered for each record on its own (an
    /// Elasticsearch `_bulk` response): [`ExportError::records`] says which
    /// were stored, which are to be sent again and which it refused. The
    /// refused ones are dead-lettered, the others sent again after a
    /// backoff; no split is needed, since the destination named them.
    Partial,
}

/// What the destination said of one record of a batch, in a
/// [`ErrorClass::Partial`] answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// Stored: it counts as delivered.
    Stored,
    /// Not stored this time, for a reason that passes (HTTP 429 or 5xx for
    /// this item): it is sent again.
    Retry,
    /// Refused for what it holds (a mapping or parse error): it goes to the
    /// dead letters with this reason.
    Rejected(String),
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
    /// For [`ErrorClass::Partial`], one outcome per record of the batch,
    /// in the batch's order; empty otherwise.
    pub records: Vec<RecordOutcome>,
}

impl ExportError {
    pub fn retryable(kind: &'static str, message: impl Into<String>) -> Self {
        ExportError {
            class: ErrorClass::Retryable,
            kind,
            message: message.into(),
            retry_after: None,
            records: Vec::new(),
        }
    }

    pub fn misconfigured(kind: &'static str, message: impl Into<String>) -> Self {
        ExportError {
            class: ErrorClass::Misconfigured,
            kind,
            message: message.into(),
            retry_after: None,
            records: Vec::new(),
        }
    }

    pub fn permanent(kind: &'static str, message: impl Into<String>) -> Self {
        ExportError {
            class: ErrorClass::Permanent,
            kind,
            message: message.into(),
            retry_after: None,
            records: Vec::new(),
        }
    }

    /// The destination answered for each record of the batch on its own,
    /// and not every one was stored. `records` holds one outcome per event
    /// sent, in order; `kind` labels the failures (`items`, `throttled`...).
    pub fn partial(
        kind: &'static str,
        message: impl Into<String>,
        records: Vec<RecordOutcome>,
    ) -> Self {
        ExportError {
            class: ErrorClass::Partial,
            kind,
            message: message.into(),
            retry_after: None,
            records,
        }
    }

    /// This error with the destination's own hint of when to try again.
    pub fn with_retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }
}
