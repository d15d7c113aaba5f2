//! OTLP/JSON: decode (as the HTTP receiver does), cost, map, round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<ExportLogsServiceRequest>(data) {
        auditrail_model::fuzzing::map_and_round_trip(&request);
    }
});
