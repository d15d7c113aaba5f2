//! The tombstone a request leaves when part of it was not kept as sent:
//! records rejected, or values cut by `max_body_bytes`. (What the
//! `metadata` capture level and `drop` rules remove is policy, the same for
//! every event, and each event says so itself: no tombstone.) Stored in the same append as the request's
//! events, so it is durable before the client hears of the request, and a
//! reader of the trail sees the loss where it happened.

use std::collections::BTreeMap;

use auditrail_model::internal::{InternalEvent, TOMBSTONE};
use auditrail_model::{AuditEvent, Outcome, RejectedRecord};
use auditrail_redact::Report;

/// Most records a tombstone names one by one; the counts cover the rest.
const NAMED: usize = 20;

/// The attribute the redactor sets on an event it cut.
const TRUNCATED_BYTES: &str = "\"audit.truncated_bytes\"";

/// The tombstone for one request, if anything of it was lost.
pub(crate) fn for_request(
    rejected: &[RejectedRecord],
    redaction: &Report,
    events: &[AuditEvent],
    transport: &str,
    tenant: &str,
    now_unix_nano: u64,
) -> Option<AuditEvent> {
    let cut = redaction.truncated_by_cap;
    if rejected.is_empty() && cut == 0 {
        return None;
    }
    let mut reasons: BTreeMap<&str, u64> = BTreeMap::new();
    for r in rejected {
        *reasons.entry(r.rejected.reason).or_default() += 1;
    }
    if redaction.truncated_by_cap > 0 {
        reasons.insert("max_body_bytes", redaction.truncated_by_cap);
    }
    let kinds: Vec<String> = [
        (!rejected.is_empty()).then_some("rejected"),
        (cut > 0).then_some("truncated"),
    ]
    .into_iter()
    .flatten()
    .map(str::to_owned)
    .collect();
    let truncated: Vec<String> = events
        .iter()
        .filter(|e| e.attributes.contains(TRUNCATED_BYTES))
        .take(MAX_IDS)
        .map(|e| e.event_id.clone())
        .collect();
    let body = format!(
        "{} log records rejected and {} values truncated ({} bytes) in one {} request",
        rejected.len(),
        cut,
        redaction.cut_bytes,
        transport
    );
    let mut event = InternalEvent::new(TOMBSTONE, tenant)
        .warning()
        .outcome(if rejected.is_empty() {
            Outcome::Success
        } else {
            Outcome::Failure
        })
        .attr("auditrail.tombstone.kind", kinds)
        .attr("auditrail.transport", transport)
        .attr("auditrail.rejected_records", rejected.len())
        .attr("auditrail.stored_records", events.len())
        .attr("auditrail.truncated_values", cut)
        .attr("auditrail.truncated_bytes", redaction.cut_bytes)
        .attr(
            "auditrail.reasons",
            reasons
                .iter()
                .map(|(reason, n)| format!("{reason}={n}"))
                .collect::<Vec<_>>(),
        )
        .body(body);
    if !rejected.is_empty() {
        event = event.attr(
            "auditrail.rejected",
            rejected
                .iter()
                .take(NAMED)
                .map(RejectedRecord::describe)
                .collect::<Vec<_>>(),
        );
    }
    if !truncated.is_empty() {
        event = event.attr("auditrail.truncated_event_ids", truncated);
    }
    Some(event.build(now_unix_nano))
}

/// Most event ids a tombstone lists.
pub(crate) const MAX_IDS: usize = 100;

#[cfg(test)]
mod tests {
    use super::*;
    use auditrail_model::Rejected;

    fn rejected(reason: &'static str) -> RejectedRecord {
        RejectedRecord {
            resource_index: 0,
            scope_index: 0,
            record_index: 3,
            rejected: Rejected {
                reason,
                message: format!("bad: {reason}"),
            },
        }
    }

    #[test]
    fn nothing_lost_leaves_no_tombstone() {
        assert!(for_request(&[], &Report::default(), &[], "grpc", "t", 1).is_none());
    }

    #[test]
    fn a_tombstone_counts_what_was_lost_and_why() {
        let report = Report {
            truncated_by_cap: 2,
            cut_bytes: 900,
            ..Report::default()
        };
        let lost = [
            rejected("invalid_trace_id"),
            rejected("invalid_trace_id"),
            rejected("event_too_large"),
        ];
        let t = for_request(&lost, &report, &[], "grpc", "acme", 7).unwrap();
        assert_eq!(t.event_name, TOMBSTONE);
        assert_eq!(t.tenant, "acme");
        assert_eq!(t.outcome, Outcome::Failure);
        let attrs: serde_json::Value = serde_json::from_str(&t.attributes).unwrap();
        assert_eq!(attrs["auditrail.rejected_records"], 3);
        assert_eq!(attrs["auditrail.truncated_values"], 2);
        assert_eq!(
            attrs["auditrail.reasons"],
            serde_json::json!([
                "event_too_large=1",
                "invalid_trace_id=2",
                "max_body_bytes=2"
            ])
        );
        assert_eq!(
            attrs["auditrail.tombstone.kind"],
            serde_json::json!(["rejected", "truncated"])
        );
        assert!(attrs["auditrail.rejected"][0]
            .as_str()
            .unwrap()
            .contains("log_records[3]: bad: invalid_trace_id"));
    }
}
