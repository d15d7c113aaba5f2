//! `google.rpc.Status`, the error body OTLP/HTTP uses.
//!
//! OTLP/HTTP answers a failed request with this message, encoded like the
//! request (protobuf or JSON). opentelemetry-proto does not ship it and its
//! shape is three fields, so it is declared here rather than pulling in a
//! whole googleapis crate.

use serde::Serialize;

#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub(crate) struct Status {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// gRPC status codes used in HTTP error bodies (the OTLP/HTTP spec asks for
/// the code that gRPC would have given).
pub(crate) mod code {
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const UNIMPLEMENTED: i32 = 12;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}
