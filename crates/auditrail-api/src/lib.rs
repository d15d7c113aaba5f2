//! auditrail's own gRPC API, `auditrail.v1.AuditService`
//! (`proto/auditrail/v1/audit.proto`): the messages, the client that tests
//! and programs use, and the server trait the `auditrail` binary
//! implements. Generated at build time from the .proto files (see
//! `build.rs`); docs/grpc.md describes the methods and their auth.

/// `package auditrail.v1`.
pub mod v1 {
    tonic::include_proto!("auditrail.v1");
}
