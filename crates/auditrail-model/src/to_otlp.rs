//! Events back to OTLP, for forwarding to another OTLP endpoint (the `otlp`
//! sink): a Collector, a vendor, or another auditrail.
//!
//! The inverse of [`crate::map_request`] as far as the event allows:
//! attributes, resource attributes and the scope name come back from their
//! canonical JSON, so a downstream auditrail maps the forwarded record to
//! the same attributes text, body, ids, times and trace context. The event
//! id travels as `log.record.uid` (added when the record did not carry one),
//! so a downstream auditrail deduplicates resends. What JSON cannot tell
//! apart comes back as its JSON spelling: bytes as their base64 string, a
//! double with an integral value as an int, and a non-string body as its
//! canonical JSON text (which the downstream stores as the same body).

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value::Value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;

use crate::id::RECORD_UID_ATTRIBUTE;
use crate::AuditEvent;

/// One request holding `events`, grouped by resource and scope (in the
/// order each group first appears).
pub fn events_to_request(events: &[AuditEvent]) -> ExportLogsServiceRequest {
    // Resources by their attributes text, each parsed once; events of one
    // batch share a handful of them, so a linear search is the cheap one.
    let mut resources: Vec<(&str, ResourceLogs)> = Vec::new();
    for event in events {
        let text = event.resource_attributes.as_str();
        let at = match resources.iter().position(|(seen, _)| *seen == text) {
            Some(at) => at,
            None => {
                resources.push((
                    text,
                    ResourceLogs {
                        resource: Some(Resource {
                            attributes: json_to_key_values(text),
                            ..Default::default()
                        }),
                        scope_logs: Vec::new(),
                        schema_url: String::new(),
                    },
                ));
                resources.len() - 1
            }
        };
        let scopes = &mut resources[at].1.scope_logs;
        let in_scope = |s: &ScopeLogs| s.scope.as_ref().is_some_and(|s| s.name == event.scope_name);
        let at = match scopes.iter().position(in_scope) {
            Some(at) => at,
            None => {
                scopes.push(ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: event.scope_name.clone(),
                        ..Default::default()
                    }),
                    log_records: Vec::new(),
                    schema_url: String::new(),
                });
                scopes.len() - 1
            }
        };
        scopes[at].log_records.push(event_to_record(event));
    }
    ExportLogsServiceRequest {
        resource_logs: resources.into_iter().map(|(_, logs)| logs).collect(),
    }
}

/// One event as an OTLP log record.
pub fn event_to_record(event: &AuditEvent) -> LogRecord {
    let mut attributes = json_to_key_values(&event.attributes);
    if !attributes.iter().any(|kv| kv.key == RECORD_UID_ATTRIBUTE) {
        attributes.push(key_value(
            RECORD_UID_ATTRIBUTE.to_owned(),
            string_value(event.event_id.clone()),
        ));
    }
    LogRecord {
        time_unix_nano: event.time_unix_nano,
        observed_time_unix_nano: event.observed_time_unix_nano,
        severity_number: event.severity_number,
        severity_text: event.severity_text.clone(),
        body: (!event.body.is_empty()).then(|| string_value(event.body.clone())),
        attributes,
        dropped_attributes_count: 0,
        flags: event.trace_flags,
        trace_id: hex::decode(&event.trace_id).unwrap_or_default(),
        span_id: hex::decode(&event.span_id).unwrap_or_default(),
        event_name: event.event_name.clone(),
    }
}

/// Key-value pairs from a canonical JSON object (anything else: none).
pub fn json_to_key_values(text: &str) -> Vec<KeyValue> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(map)) => map
            .into_iter()
            .map(|(key, value)| key_value(key, json_to_any_value(value)))
            .collect(),
        _ => Vec::new(),
    }
}

fn key_value(key: String, value: AnyValue) -> KeyValue {
    KeyValue {
        key,
        value: Some(value),
        ..Default::default()
    }
}

fn string_value(s: String) -> AnyValue {
    AnyValue {
        value: Some(Value::StringValue(s)),
    }
}

fn json_to_any_value(value: serde_json::Value) -> AnyValue {
    use serde_json::Value as Json;
    let value = match value {
        Json::Null => None,
        Json::Bool(b) => Some(Value::BoolValue(b)),
        Json::Number(n) => Some(match n.as_i64() {
            Some(i) => Value::IntValue(i),
            None => Value::DoubleValue(n.as_f64().unwrap_or(f64::NAN)),
        }),
        Json::String(s) => Some(Value::StringValue(s)),
        Json::Array(items) => Some(Value::ArrayValue(ArrayValue {
            values: items.into_iter().map(json_to_any_value).collect(),
        })),
        Json::Object(map) => Some(Value::KvlistValue(KeyValueList {
            values: map
                .into_iter()
                .map(|(key, value)| key_value(key, json_to_any_value(value)))
                .collect(),
        })),
    };
    AnyValue { value }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{map_request, ReceiveContext, MAX_EVENT_BYTES};
    use proptest::prelude::*;

    fn mapped_back(events: &[AuditEvent]) -> Vec<AuditEvent> {
        let ctx = ReceiveContext {
            tenant: "default".into(),
            received_time_unix_nano: 99,
            max_event_bytes: MAX_EVENT_BYTES,
            max_clock_skew_nanos: 0,
        };
        let mapped = map_request(&events_to_request(events), &ctx);
        assert!(mapped.rejected.is_empty(), "{:?}", mapped.rejected);
        mapped.events
    }

    fn event(i: u64) -> AuditEvent {
        AuditEvent {
            event_id: format!("e-{i}"),
            time_unix_nano: 1_700_000_000_000_000_000 + i,
            observed_time_unix_nano: 1_700_000_000_000_000_100,
            service_name: "imagegen-ui".into(),
            event_name: "image.generate".into(),
            severity_number: 9,
            severity_text: "INFO".into(),
            actor_id: "user-1".into(),
            outcome: crate::Outcome::Success,
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            span_id: "b7ad6b7169203331".into(),
            trace_flags: 1,
            body: "a banana in a spacesuit".into(),
            attributes: format!(
                r#"{{"audit.outcome":"success","log.record.uid":"e-{i}","n":{i},"ratio":0.5,"tags":["a",true,null],"user.id":"user-1"}}"#
            ),
            resource_attributes: r#"{"host.name":"h1","service.name":"imagegen-ui"}"#.into(),
            scope_name: "audit".into(),
            ..AuditEvent::default()
        }
    }

    /// What a downstream auditrail must see as the same event.
    fn same_event(a: &AuditEvent, b: &AuditEvent) {
        assert_eq!(a.event_id, b.event_id);
        assert_eq!(a.time_unix_nano, b.time_unix_nano);
        assert_eq!(a.observed_time_unix_nano, b.observed_time_unix_nano);
        assert_eq!(a.service_name, b.service_name);
        assert_eq!(a.event_name, b.event_name);
        assert_eq!(
            (a.severity_number, &a.severity_text),
            (b.severity_number, &b.severity_text)
        );
        assert_eq!((&a.actor_id, a.outcome), (&b.actor_id, b.outcome));
        assert_eq!(
            (&a.trace_id, &a.span_id, a.trace_flags),
            (&b.trace_id, &b.span_id, b.trace_flags)
        );
        assert_eq!(a.body, b.body);
        assert_eq!(a.attributes, b.attributes);
        assert_eq!(a.resource_attributes, b.resource_attributes);
        assert_eq!(a.scope_name, b.scope_name);
    }

    #[test]
    fn a_forwarded_event_maps_back_to_the_same_event() {
        let events: Vec<_> = (0..3).map(event).collect();
        let back = mapped_back(&events);
        assert_eq!(back.len(), 3);
        for (a, b) in events.iter().zip(&back) {
            same_event(a, b);
        }
    }

    #[test]
    fn the_event_id_travels_as_the_record_uid() {
        let mut e = event(1);
        e.event_id = "content-derived-id".into();
        e.attributes = r#"{"user.id":"u"}"#.into();
        let back = mapped_back(&[e]);
        assert_eq!(back[0].event_id, "content-derived-id");
    }

    #[test]
    fn events_are_grouped_by_resource_and_scope() {
        let mut other = event(2);
        other.scope_name = "other".into();
        let mut elsewhere = event(3);
        elsewhere.resource_attributes = r#"{"service.name":"api"}"#.into();
        elsewhere.service_name = "api".into();
        let request = events_to_request(&[event(1), other, elsewhere, event(4)]);
        assert_eq!(request.resource_logs.len(), 2);
        assert_eq!(request.resource_logs[0].scope_logs.len(), 2);
        assert_eq!(request.resource_logs[0].scope_logs[0].log_records.len(), 2);
    }

    proptest! {
        #[test]
        fn any_body_and_string_attribute_round_trip(
            body in any::<String>(),
            value in any::<String>(),
        ) {
            let mut e = event(5);
            e.body = body;
            e.attributes =
                crate::anyvalue::key_values_to_json(&[key_value("prompt".into(), string_value(value))]);
            e.event_id = "p-1".into();
            let back = mapped_back(std::slice::from_ref(&e));
            prop_assert_eq!(&back[0].body, &e.body);
            // The uid was added: the rest is what was sent.
            let attrs: serde_json::Value = serde_json::from_str(&back[0].attributes).unwrap();
            let sent: serde_json::Value = serde_json::from_str(&e.attributes).unwrap();
            prop_assert_eq!(&attrs["prompt"], &sent["prompt"]);
            prop_assert_eq!(back[0].event_id.as_str(), "p-1");
        }
    }
}
