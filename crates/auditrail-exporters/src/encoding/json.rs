//! `format = "json"`: the canonical event as one JSON object.
//!
//! Every canonical field under its own name (the names `query --format
//! json` and the SQL columns use), with two differences from the SQL
//! columns: `attributes` and `resource_attributes` are JSON objects, not
//! JSON text in a string, so `jq '.attributes["user.id"]'` works; and the
//! hashes are lower-case hex. `node`, `seq`, `prev_hash` and `hash` are
//! kept, so a set of lines can be checked against the chain later.
//!
//! The line is written with [`super::line_safe`]: serde_json escapes the
//! C0 controls in strings, the formatter also DEL, C1, U+2028/U+2029 and
//! the bidi controls (in the attribute objects too, which are the model's
//! canonical, compact JSON), so an encoded event never holds a raw line
//! break, terminal escape or bidi control: one event is always one line,
//! and it shows as what it holds.

use auditrail_model::{AuditEvent, Outcome};
use serde::Serialize;
use serde_json::value::RawValue;

/// An event as the `json` encoding writes it, borrowed from the event.
#[derive(Debug, Serialize)]
pub struct EventJson<'a> {
    pub node: &'a str,
    pub seq: u64,
    pub event_id: &'a str,
    pub time_unix_nano: u64,
    pub observed_time_unix_nano: u64,
    pub received_time_unix_nano: u64,
    pub tenant: &'a str,
    pub service_name: &'a str,
    pub event_name: &'a str,
    pub severity_number: i32,
    pub severity_text: &'a str,
    pub actor_id: &'a str,
    pub actor_name: &'a str,
    pub client_address: &'a str,
    pub outcome: Outcome,
    pub target: &'a str,
    pub trace_id: &'a str,
    pub span_id: &'a str,
    pub trace_flags: u32,
    pub body: &'a str,
    pub attributes: JsonObject<'a>,
    pub resource_attributes: JsonObject<'a>,
    pub scope_name: &'a str,
    pub prev_hash: String,
    pub hash: String,
}

/// Canonical JSON object text, written as the object it is; text that is
/// not JSON (never stored by the spool, but not trusted either) is written
/// as a string, so the line stays valid JSON.
#[derive(Debug)]
pub struct JsonObject<'a>(pub(crate) &'a str);

impl Serialize for JsonObject<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match serde_json::from_str::<&RawValue>(self.0) {
            // Canonical JSON is compact; RawValue keeps it as it is.
            Ok(raw) if !self.0.contains(['\n', '\r']) => raw.serialize(s),
            _ if self.0.is_empty() => s.serialize_str(""),
            _ => s.serialize_str(self.0),
        }
    }
}

impl<'a> EventJson<'a> {
    pub fn of(event: &'a AuditEvent) -> Self {
        EventJson {
            node: &event.node,
            seq: event.seq,
            event_id: &event.event_id,
            time_unix_nano: event.time_unix_nano,
            observed_time_unix_nano: event.observed_time_unix_nano,
            received_time_unix_nano: event.received_time_unix_nano,
            tenant: &event.tenant,
            service_name: &event.service_name,
            event_name: &event.event_name,
            severity_number: event.severity_number,
            severity_text: &event.severity_text,
            actor_id: &event.actor_id,
            actor_name: &event.actor_name,
            client_address: &event.client_address,
            outcome: event.outcome,
            target: &event.target,
            trace_id: &event.trace_id,
            span_id: &event.span_id,
            trace_flags: event.trace_flags,
            body: &event.body,
            attributes: JsonObject(&event.attributes),
            resource_attributes: JsonObject(&event.resource_attributes),
            scope_name: &event.scope_name,
            prev_hash: hex::encode(event.prev_hash),
            hash: hex::encode(event.hash),
        }
    }
}

/// Appends `event` as one JSON line (without the newline) to `out`.
pub fn write_event_json(event: &AuditEvent, out: &mut Vec<u8>) {
    super::line_safe::write(out, &EventJson::of(event))
        .expect("serializing into a Vec cannot fail");
}

/// `event` as one JSON line (without the newline).
pub fn event_json(event: &AuditEvent) -> String {
    let mut out = Vec::new();
    write_event_json(event, &mut out);
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::line_safe::must_escape;
    use crate::encoding::line_safe::tests::{attributes_holding, text};
    use proptest::prelude::*;

    fn event() -> AuditEvent {
        AuditEvent {
            node: "n1".into(),
            seq: 7,
            event_id: "e-7".into(),
            actor_id: "user-1".into(),
            outcome: Outcome::Success,
            body: "generate a cat\nwith \"quotes\"".into(),
            attributes: r#"{"gen_ai.request.model":"m","user.id":"user-1"}"#.into(),
            resource_attributes: r#"{"service.name":"svc"}"#.into(),
            hash: [0xab; 32],
            ..AuditEvent::default()
        }
    }

    #[test]
    fn attributes_are_objects_and_hashes_hex() {
        let line = event_json(&event());
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["attributes"]["user.id"], "user-1");
        assert_eq!(value["resource_attributes"]["service.name"], "svc");
        assert_eq!(value["hash"], "ab".repeat(32));
        assert_eq!(value["outcome"], "success");
        assert_eq!(value["seq"], 7);
        assert_eq!(value["body"], "generate a cat\nwith \"quotes\"");
    }

    #[test]
    fn attribute_text_that_is_not_json_stays_a_string() {
        let mut e = event();
        e.attributes = "not json\n{".into();
        let value: serde_json::Value = serde_json::from_str(&event_json(&e)).unwrap();
        assert_eq!(value["attributes"], "not json\n{");
    }

    proptest! {
        #[test]
        fn any_event_is_one_line_of_json_that_reads_back(
            body in text(),
            actor in text(),
            attribute in text(),
            attributes in any::<String>(),
            json_attributes in any::<bool>(),
        ) {
            let attributes = if json_attributes { attributes_holding(&attribute) } else { attributes };
            let e = AuditEvent { body, actor_id: actor, attributes, ..event() };
            let line = event_json(&e);
            prop_assert!(!line.chars().any(must_escape), "{line:?}");
            let value: serde_json::Value = serde_json::from_str(&line).unwrap();
            prop_assert_eq!(value["body"].as_str(), Some(e.body.as_str()));
            prop_assert_eq!(value["actor_id"].as_str(), Some(e.actor_id.as_str()));
            if json_attributes {
                prop_assert_eq!(&value["attributes"]["k"], &serde_json::Value::from(attribute.clone()));
                prop_assert_eq!(&value["attributes"]["nested"][&attribute][0], &serde_json::Value::from(attribute));
            } else {
                // Text that is not JSON (or holds a raw line break) is a string.
                let want = serde_json::from_str::<serde_json::Value>(&e.attributes)
                    .ok()
                    .filter(|_| !e.attributes.contains(['\n', '\r']))
                    .unwrap_or_else(|| e.attributes.clone().into());
                prop_assert_eq!(&value["attributes"], &want);
            }
        }
    }
}
