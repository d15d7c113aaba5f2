//! How an event becomes a HEC event: the JSON envelope that
//! `/services/collector/event` takes, one per event, concatenated in one
//! request body.
//!
//! ```json
//! {"time":1700000000.123,"host":"<node>","source":"auditrail","sourcetype":"auditrail","index":"audit",
//!  "event":{...the event in the sink's format...},
//!  "fields":{"event_id":"...","tenant":"...","trace_id":"...",...}}
//! ```
//!
//! `time` is the event's own time in epoch seconds with milliseconds (what
//! HEC's `time` key takes), `host` the auditrail node, `event` the event in
//! the sink's `format` (the canonical JSON by default), and `fields` the
//! indexed fields: the canonical fields an auditor searches by, as strings
//! (HEC takes only strings or arrays of them there), left out when empty.

use std::io::Write as _;

use auditrail_model::AuditEvent;
use serde::Serialize;

use crate::encoding::{line_safe, LineFormat};

/// Writes events as HEC event envelopes. What is the same for every event
/// (source, sourcetype, index) is serialized once.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// `,"source":...,"sourcetype":...[,"index":...]`, ready to copy.
    constant: Vec<u8>,
    format: LineFormat,
}

#[derive(Serialize)]
struct Constant<'a> {
    source: &'a str,
    sourcetype: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<&'a str>,
}

/// The indexed fields of an event (HEC's `fields`): searchable as
/// `trace_id::<id>` without reading the event.
#[derive(Serialize)]
struct IndexedFields<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    event_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    tenant: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    service_name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    event_name: &'a str,
    outcome: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    actor_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    trace_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    span_id: &'a str,
}

impl Envelope {
    /// `index` `None` leaves the choice to the token's default index.
    pub fn new(source: &str, sourcetype: &str, index: Option<&str>, format: LineFormat) -> Self {
        let mut constant = Vec::new();
        line_safe::write(
            &mut constant,
            &Constant {
                source,
                sourcetype,
                index,
            },
        )
        .expect("serializing strings cannot fail");
        // `{"source":...}` → `,"source":...`: spliced in after `host`.
        constant[0] = b',';
        constant.pop();
        Envelope { constant, format }
    }

    /// Appends `event` as one HEC event (and a newline, which HEC skips
    /// between events) to `out`.
    pub fn write(&self, event: &AuditEvent, out: &mut Vec<u8>) {
        let millis = event.time_unix_nano / 1_000_000;
        out.extend_from_slice(b"{\"time\":");
        write!(out, "{}.{:03}", millis / 1000, millis % 1000).expect("writing to a Vec");
        out.extend_from_slice(b",\"host\":");
        line_safe::write(out, &event.node).expect("writing to a Vec");
        out.extend_from_slice(&self.constant);
        out.extend_from_slice(b",\"event\":");
        self.format.write_line(event, out);
        // The line's newline: here the event is a value inside the envelope.
        out.pop();
        out.extend_from_slice(b",\"fields\":");
        let fields = IndexedFields {
            event_id: &event.event_id,
            tenant: &event.tenant,
            service_name: &event.service_name,
            event_name: &event.event_name,
            outcome: event.outcome.as_str(),
            actor_id: &event.actor_id,
            trace_id: &event.trace_id,
            span_id: &event.span_id,
        };
        line_safe::write(out, &fields).expect("writing to a Vec");
        out.extend_from_slice(b"}\n");
    }

    /// The request body for `events`.
    pub fn body(&self, events: &[AuditEvent]) -> Vec<u8> {
        let mut body = Vec::with_capacity(events.len() * 1536);
        for event in events {
            self.write(event, &mut body);
        }
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use auditrail_model::Outcome;
    use proptest::prelude::*;
    use serde_json::Value;

    fn event(seq: u64) -> AuditEvent {
        AuditEvent {
            node: "n1".into(),
            seq,
            event_id: format!("e-{seq}"),
            time_unix_nano: 1_700_000_000_123_456_789,
            tenant: "acme".into(),
            service_name: "imagegen-ui".into(),
            event_name: "image.generate".into(),
            actor_id: "user-1".into(),
            outcome: Outcome::Success,
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            span_id: "b7ad6b7169203331".into(),
            body: "a cat\nin \"space\"".into(),
            attributes: r#"{"user.id":"user-1"}"#.into(),
            resource_attributes: r#"{"service.name":"imagegen-ui"}"#.into(),
            ..AuditEvent::default()
        }
    }

    use crate::encoding::line_safe::must_escape;
    use crate::encoding::line_safe::tests::text;

    fn parse_all(body: &[u8]) -> Vec<Value> {
        serde_json::Deserializer::from_slice(body)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .expect("a stream of JSON objects")
    }

    #[test]
    fn an_event_in_its_envelope() {
        let envelope = Envelope::new("auditrail", "auditrail", Some("audit"), LineFormat::Json);
        let body = envelope.body(&[event(1), event(2)]);
        let events = parse_all(&body);
        assert_eq!(events.len(), 2);
        let first = &events[0];
        assert_eq!(first["time"].to_string(), "1700000000.123");
        assert_eq!(first["host"], "n1");
        assert_eq!(first["source"], "auditrail");
        assert_eq!(first["sourcetype"], "auditrail");
        assert_eq!(first["index"], "audit");
        assert_eq!(first["event"]["event_id"], "e-1");
        assert_eq!(first["event"]["seq"], 1);
        assert_eq!(first["event"]["body"], "a cat\nin \"space\"");
        assert_eq!(first["event"]["attributes"]["user.id"], "user-1");
        assert_eq!(
            first["fields"],
            serde_json::json!({
                "event_id": "e-1", "tenant": "acme", "service_name": "imagegen-ui",
                "event_name": "image.generate", "outcome": "success", "actor_id": "user-1",
                "trace_id": "0af7651916cd43dd8448eb211c80319c", "span_id": "b7ad6b7169203331",
            })
        );
        assert_eq!(events[1]["event"]["seq"], 2);
    }

    #[test]
    fn no_index_leaves_the_tokens_default_and_empty_fields_are_left_out() {
        let envelope = Envelope::new("s", "st", None, LineFormat::Json);
        let mut e = event(3);
        e.trace_id.clear();
        e.span_id.clear();
        e.time_unix_nano = 5_000_000; // 5 ms after the epoch
        let events = parse_all(&envelope.body(&[e]));
        assert!(events[0].get("index").is_none(), "{}", events[0]);
        assert!(events[0]["fields"].get("trace_id").is_none());
        assert_eq!(events[0]["time"].to_string(), "0.005");
    }

    proptest! {
        #[test]
        fn any_event_is_one_envelope_that_reads_back(
            body in text(),
            node in text(),
            source in text(),
            time in any::<u64>(),
        ) {
            let envelope = Envelope::new(&source, "st", Some("i"), LineFormat::Json);
            let e = AuditEvent { body, node, time_unix_nano: time, ..event(9) };
            let body = envelope.body(std::slice::from_ref(&e));
            // What Splunk keeps as the event's raw text shows as what it is.
            let text = std::str::from_utf8(&body).unwrap();
            prop_assert!(!text.trim_end_matches('\n').chars().any(must_escape), "{text:?}");
            let events = parse_all(&body);
            prop_assert_eq!(events.len(), 1);
            prop_assert_eq!(events[0]["event"]["body"].as_str(), Some(e.body.as_str()));
            prop_assert_eq!(events[0]["host"].as_str(), Some(e.node.as_str()));
            prop_assert_eq!(events[0]["source"].as_str(), Some(source.as_str()));
            let secs = events[0]["time"].as_f64().unwrap();
            prop_assert!((secs - (time / 1_000_000) as f64 / 1000.0).abs() < 1.0);
        }
    }
}
