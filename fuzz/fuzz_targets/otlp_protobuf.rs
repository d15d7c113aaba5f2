//! OTLP/protobuf: decode, cost, map, and canonical bytes round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    // Stored bytes are input too (a damaged spool): never a panic.
    let _ = auditrail_model::AuditEvent::from_canonical_bytes(data);
    if let Ok(request) = ExportLogsServiceRequest::decode(data) {
        auditrail_model::fuzzing::map_and_round_trip(&request);
    }
});
