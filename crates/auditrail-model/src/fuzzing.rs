//! Properties that hold for any decoded request, checked by the fuzz targets
//! (`fuzz/`) and, on their committed seed corpus, by the unit tests.
//!
//! They panic when a property fails: that is how a fuzzer sees a finding.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;

use crate::{map_request, AuditEvent, ReceiveContext, RequestCost};

/// Costs and maps `request`, then checks that every record is accounted for
/// and that every event's canonical bytes have the promised length and read
/// back as the same event.
pub fn map_and_round_trip(request: &ExportLogsServiceRequest) {
    let cost = RequestCost::of(request);
    let ctx = ReceiveContext {
        tenant: "fuzz".into(),
        received_time_unix_nano: 1,
        max_event_bytes: 1 << 20,
        max_clock_skew_nanos: 0,
    };
    let mapped = map_request(request, &ctx);
    assert_eq!(
        mapped.events.len() + mapped.rejected.len(),
        cost.records,
        "every record is either an event or rejected"
    );
    for event in &mapped.events {
        let bytes = event.canonical_bytes();
        assert_eq!(bytes.len(), event.canonical_len());
        assert!(bytes.len() <= ctx.max_event_bytes);
        let back = AuditEvent::from_canonical_bytes(&bytes).expect("canonical bytes read back");
        assert_eq!(&back, event);
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use prost::Message;

    use super::*;

    /// Every committed seed input goes through the fuzz targets' checks.
    fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/corpus")
            .join(target);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| {
                let path = entry.unwrap().path();
                let bytes = std::fs::read(&path).unwrap();
                (path, bytes)
            })
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "no seed inputs in {}", dir.display());
        inputs
    }

    #[test]
    fn protobuf_seed_corpus() {
        for (path, bytes) in corpus("otlp_protobuf") {
            let _ = AuditEvent::from_canonical_bytes(&bytes);
            if let Ok(request) = ExportLogsServiceRequest::decode(bytes.as_slice()) {
                map_and_round_trip(&request);
            } else {
                eprintln!("{} does not decode (kept as a seed)", path.display());
            }
        }
    }

    #[test]
    fn json_seed_corpus() {
        for (path, bytes) in corpus("otlp_json") {
            match serde_json::from_slice::<ExportLogsServiceRequest>(&bytes) {
                Ok(request) => map_and_round_trip(&request),
                Err(e) => eprintln!("{}: {e} (kept as a seed)", path.display()),
            }
        }
    }
}
