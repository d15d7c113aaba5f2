//! Emit audit events to auditrail from a Rust service.
//!
//! An audit event is an OpenTelemetry log record with the attributes
//! auditrail maps to its canonical fields (who, from where, what was acted
//! on, what came of it), a `log.record.uid` that makes a resend a no-op, and
//! the trace context of the span the code is in. This crate builds such
//! records with a typed builder and sends them over OTLP/gRPC in two ways:
//!
//! * [`Event::emit`]: the normal, batched path (OpenTelemetry's batch log
//!   processor and OTLP exporter). It returns at once and never fails.
//! * [`Event::emit_durable`]: fails closed, the way Vault's audit devices do.
//!   It sends the one event on its own and returns `Ok` only once auditrail
//!   has written it to disk (auditrail answers an export only after fsync),
//!   and a typed [`DurableError`] otherwise, so a service can refuse an
//!   action it cannot audit.
//!
//! ```no_run
//! use auditrail_sdk::{Auditor, Outcome};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let auditor = Auditor::builder()
//!     .endpoint("http://127.0.0.1:4317")
//!     .token(std::env::var("AUDITRAIL_TOKEN")?)
//!     .service_name("imagegen-ui")
//!     .build()?;
//!
//! // Batched: for the record of what happened.
//! auditor
//!     .event("image.generate")
//!     .actor("u-42", "Alice")
//!     .client("198.51.100.4")
//!     .outcome(Outcome::Success)
//!     .target("outputs/2024-05-01/cat.png")
//!     .attr("gen_ai.request.model", "sdxl")
//!     .body("a cat as a judge")
//!     .emit();
//!
//! // Durable: before an action that must not happen unaudited.
//! auditor
//!     .event("image.delete")
//!     .actor_id("u-42")
//!     .target("outputs/2024-05-01/cat.png")
//!     .outcome(Outcome::Success)
//!     .emit_durable()
//!     .await?; // refuse the deletion on error
//!
//! auditor.shutdown().await?; // sends what the batched path still holds
//! # Ok(())
//! # }
//! ```
//!
//! With [`set_global`], `auditrail_sdk::event("…")` (e.g. `use auditrail_sdk
//! as audit; audit::event("image.generate")`) builds events for the global
//! auditor.
//!
//! # What ends up in auditrail
//!
//! | builder | OTLP | auditrail field |
//! |---|---|---|
//! | [`event(name)`](Auditor::event) | `LogRecord.event_name` (a non-static name: attribute `event.name`) | `event_name` |
//! | [`actor(id, name)`](Event::actor), [`actor_id`](Event::actor_id) | `user.id`, `user.name` | `actor_id`, `actor_name` |
//! | [`client(addr)`](Event::client) | `client.address` | `client_address` |
//! | [`outcome(o)`](Event::outcome) | `audit.outcome` | `outcome` |
//! | [`target(t)`](Event::target) | `audit.target` | `target` |
//! | [`attr(k, v)`](Event::attr) | attribute `k` | in `attributes` |
//! | [`body(b)`](Event::body) | body | `body` |
//! | [`uid(u)`](Event::uid), default a UUIDv7 | `log.record.uid` | `event_id` |
//! | [`time(t)`](Event::time), default now | `time_unix_nano` | `time_unix_nano` |
//! | the current span, or [`context(cx)`](Event::context) | `trace_id`, `span_id`, `flags` | `trace_id`, `span_id`, `trace_flags` |
//! | [`AuditorBuilder::service_name`] | resource `service.name` | `service_name` |
//! | [`AuditorBuilder::token`] | `authorization: Bearer …` | `tenant` (the token's) |
//!
//! The span is the active span of [`opentelemetry::Context::current`], else
//! the OpenTelemetry span of the current `tracing` span
//! (tracing-opentelemetry), taken when the event is made.
//!
//! # When auditrail is down
//!
//! * [`Event::emit`] puts the event in the batch processor's queue
//!   (default 2,048 events; `OTEL_BLRP_MAX_QUEUE_SIZE` or
//!   [`AuditorBuilder::batch_config`]). The batch thread exports every
//!   second or every 512 events; a failed export is retried (3 times, with
//!   backoff, within [`AuditorBuilder::export_timeout`]) and then **dropped**,
//!   and while auditrail stays away the queue fills and further events are
//!   **dropped** too. OpenTelemetry reports drops in its internal log (a
//!   warning at the first, a count at shutdown). Use `emit` for events whose
//!   loss in an outage is acceptable, or put an OTel Collector with a
//!   persistent queue in between.
//! * [`Event::emit_durable`] returns an error: [`DurableError::Unavailable`]
//!   at once when the connection is refused, [`DurableError::Timeout`] after
//!   [`AuditorBuilder::durable_timeout`] (default 5s) when auditrail does not
//!   answer (a hung host, a black-holed network). Nothing is queued or
//!   retried behind the caller's back: the caller decides (refuse the action
//!   with a 503, or retry the same event: its `log.record.uid` makes a stored
//!   duplicate impossible).
//!
//! An [`Auditor`] must be built inside a multi-threaded Tokio runtime: its
//! gRPC connections run on it, and the batch thread blocks on them.

mod auditor;
mod context;
mod error;
mod event;

use std::borrow::Cow;
use std::sync::RwLock;

pub use auditor::{
    Auditor, AuditorBuilder, DEFAULT_DURABLE_TIMEOUT, DEFAULT_ENDPOINT, DEFAULT_EXPORT_TIMEOUT,
    SCOPE_NAME,
};
pub use error::{BuildError, DurableError, FlushError};
pub use event::{Event, Outcome};
pub use opentelemetry::logs::{AnyValue, Severity};
pub use opentelemetry_sdk::logs::{BatchConfig, BatchConfigBuilder};
pub use tonic::Code;

/// The attribute names auditrail maps to its canonical fields (the design
/// card's table; `crates/auditrail-model/src/otlp.rs` reads them).
pub mod attributes {
    /// `actor_id` (auditrail also reads `enduser.id`).
    pub const USER_ID: &str = "user.id";
    /// `actor_name`.
    pub const USER_NAME: &str = "user.name";
    /// `client_address` (auditrail also reads `source.address`).
    pub const CLIENT_ADDRESS: &str = "client.address";
    /// `outcome`: `success`, `failure` or `unknown`.
    pub const OUTCOME: &str = "audit.outcome";
    /// `target`: what was acted on.
    pub const TARGET: &str = "audit.target";
    /// `event_id`: the sender's own id of the event.
    pub const RECORD_UID: &str = "log.record.uid";
    /// `event_name`, when the record's own event_name is empty.
    pub const EVENT_NAME: &str = "event.name";
}

static GLOBAL: RwLock<Option<Auditor>> = RwLock::new(None);

/// Makes `auditor` the one [`event`] uses; returns the one it replaces.
pub fn set_global(auditor: Auditor) -> Option<Auditor> {
    GLOBAL
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .replace(auditor)
}

/// A new event for the global auditor (see [`set_global`]). Without one,
/// [`Event::emit`] drops it with a warning and [`Event::emit_durable`]
/// fails with [`DurableError::NoAuditor`].
pub fn event(name: impl Into<Cow<'static, str>>) -> Event {
    let auditor = GLOBAL
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    Event::new(auditor, name.into())
}

#[cfg(test)]
mod tests;
