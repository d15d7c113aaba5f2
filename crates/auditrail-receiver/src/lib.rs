//! OTLP log receivers: OTLP/gRPC (tonic) and OTLP/HTTP (axum, protobuf and
//! JSON).
//!
//! Both transports decode and bound the request, then hand it to [`Ingest`],
//! which redacts it (`auditrail_redact`), maps records to audit events,
//! appends them to the spool and answers
//! only after the spool's fsync. A record that cannot be accepted is named in
//! `partial_success`; a request that cannot be read at all is refused with a
//! message that says why, and changes nothing.

mod auth;
mod body;
mod compression;
mod first_bytes;
mod grpc;
mod http;
mod ingest;
mod listener;
mod rate;
mod server;
mod status;
mod tombstone;

pub use auth::{WriteRefused, Writers};
pub use grpc::{grpc_routes, serve_grpc};
pub use http::{http_router, serve_http};
pub use ingest::{Ingest, IngestError, ReceiverConfig, Transport};
pub use listener::ListenerSettings;
pub use rate::{Rate, RateLimits, RateRefused};
pub use server::{serve_router, ServerSettings};
