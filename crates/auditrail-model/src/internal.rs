//! Events auditrail writes about itself: alerts, silences, tombstones for
//! what it could not keep, and what operators did.
//!
//! They are built as OTLP log records and mapped by the same code as any
//! received record ([`AuditEvent::from_otlp`]), so they have the canonical
//! fields, attributes text and event ids of every other event, and the
//! spool chains, proves and delivers them like the rest. Their service is
//! [`SERVICE_NAME`] and their names start with `auditrail.`.

use opentelemetry_proto::tonic::common::v1::{
    any_value::Value, AnyValue, ArrayValue, InstrumentationScope, KeyValue,
};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::resource::v1::Resource;
use sha2::{Digest, Sha256};

use crate::id::RECORD_UID_ATTRIBUTE;
use crate::otlp::{ReceiveContext, MAX_EVENT_BYTES};
use crate::{AuditEvent, Outcome};

/// The `service.name` of every event auditrail writes about itself.
pub const SERVICE_NAME: &str = "auditrail";

/// The tenant of events that concern the node rather than one tenant
/// (silences, operator actions): only the operator reads them.
pub const INTERNAL_TENANT: &str = "auditrail";

/// The prefix of every internal event's name.
pub const EVENT_PREFIX: &str = "auditrail.";

/// An event rule firing (`auditrail.alert`).
pub const ALERT: &str = "auditrail.alert";
/// A declared service over its allowed silence (`auditrail.silence`).
pub const SILENCE: &str = "auditrail.silence";
/// A silent service sending again.
pub const SILENCE_RECOVERED: &str = "auditrail.silence.recovered";
/// Records refused, values truncated, events dead-lettered or replayed.
pub const TOMBSTONE: &str = "auditrail.tombstone";

/// A value of an internal event's attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Text(String),
    Int(i64),
    Texts(Vec<String>),
    Ints(Vec<i64>),
}

impl From<&str> for AttrValue {
    fn from(v: &str) -> Self {
        AttrValue::Text(v.to_owned())
    }
}
impl From<String> for AttrValue {
    fn from(v: String) -> Self {
        AttrValue::Text(v)
    }
}
impl From<u64> for AttrValue {
    fn from(v: u64) -> Self {
        AttrValue::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        AttrValue::Int(v)
    }
}
impl From<usize> for AttrValue {
    fn from(v: usize) -> Self {
        AttrValue::from(v as u64)
    }
}
impl From<Vec<String>> for AttrValue {
    fn from(v: Vec<String>) -> Self {
        AttrValue::Texts(v)
    }
}
impl From<Vec<u64>> for AttrValue {
    fn from(v: Vec<u64>) -> Self {
        AttrValue::Ints(
            v.into_iter()
                .map(|n| i64::try_from(n).unwrap_or(i64::MAX))
                .collect(),
        )
    }
}

impl AttrValue {
    fn into_any(self) -> AnyValue {
        let value = match self {
            AttrValue::Text(s) => Value::StringValue(s),
            AttrValue::Int(n) => Value::IntValue(n),
            AttrValue::Texts(v) => Value::ArrayValue(ArrayValue {
                values: v
                    .into_iter()
                    .map(|s| AnyValue {
                        value: Some(Value::StringValue(s)),
                    })
                    .collect(),
            }),
            AttrValue::Ints(v) => Value::ArrayValue(ArrayValue {
                values: v
                    .into_iter()
                    .map(|n| AnyValue {
                        value: Some(Value::IntValue(n)),
                    })
                    .collect(),
            }),
        };
        AnyValue { value: Some(value) }
    }
}

/// Builds one internal event.
///
/// ```
/// use auditrail_model::internal::{InternalEvent, TOMBSTONE};
/// let event = InternalEvent::new(TOMBSTONE, "acme")
///     .attr("auditrail.tombstone.kind", "rejected")
///     .attr("auditrail.count", 3u64)
///     .build(1_700_000_000_000_000_000);
/// assert_eq!(event.service_name, "auditrail");
/// assert_eq!(event.tenant, "acme");
/// ```
#[derive(Debug, Clone)]
pub struct InternalEvent {
    name: String,
    tenant: String,
    record: LogRecord,
    id: Option<String>,
}

impl InternalEvent {
    /// An event named `name` (one of this module's constants, or another
    /// `auditrail.` name) stored as `tenant`'s.
    pub fn new(name: &str, tenant: &str) -> InternalEvent {
        InternalEvent {
            name: name.to_owned(),
            tenant: tenant.to_owned(),
            record: LogRecord {
                event_name: name.to_owned(),
                severity_number: 9, // INFO
                severity_text: "INFO".into(),
                ..LogRecord::default()
            },
            id: None,
        }
    }

    /// Adds an attribute (canonical names such as `user.id`,
    /// `client.address`, `audit.target` fill the canonical fields).
    pub fn attr(mut self, key: &str, value: impl Into<AttrValue>) -> Self {
        self.record.attributes.push(KeyValue {
            key: key.to_owned(),
            value: Some(value.into().into_any()),
            ..KeyValue::default()
        });
        self
    }

    /// Who acted, as `user.id`.
    pub fn actor(self, subject: &str) -> Self {
        self.attr("user.id", subject)
    }

    /// `audit.outcome`.
    pub fn outcome(self, outcome: Outcome) -> Self {
        self.attr("audit.outcome", outcome.as_str())
    }

    /// WARN instead of INFO: something an operator must look at.
    pub fn warning(mut self) -> Self {
        self.record.severity_number = 13;
        self.record.severity_text = "WARN".into();
        self
    }

    pub fn body(mut self, text: impl Into<String>) -> Self {
        self.record.body = Some(AnyValue {
            value: Some(Value::StringValue(text.into())),
        });
        self
    }

    /// When it happened, if not when it is built.
    pub fn time(mut self, unix_nano: u64) -> Self {
        self.record.time_unix_nano = unix_nano;
        self
    }

    /// Makes the event id a function of `parts` (and the name): the same
    /// happening written twice, say after a restart replays what it had
    /// already seen, is then stored once, by the spool's dedup. Without it
    /// the id is the record's content hash, as for any record without a
    /// `log.record.uid`.
    pub fn id_from(mut self, parts: &[&str]) -> Self {
        let mut hasher = Sha256::new();
        for part in std::iter::once(self.name.as_str()).chain(parts.iter().copied()) {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        self.id = Some(format!(
            "auditrail-{}",
            hex::encode(&hasher.finalize()[..16])
        ));
        self
    }

    /// The event, received at `now_unix_nano`; not yet chained (the spool
    /// gives it its seq and hashes). Its id starts with `auditrail-`: from
    /// [`InternalEvent::id_from`], else from its content and time.
    pub fn build(mut self, now_unix_nano: u64) -> AuditEvent {
        if self.record.time_unix_nano == 0 {
            self.record.time_unix_nano = now_unix_nano;
        }
        if self.id.is_none() {
            let content = format!(
                "{}|{}|{:?}|{:?}",
                self.tenant, now_unix_nano, self.record.attributes, self.record.body
            );
            self = self.id_from(&[&content]);
        }
        if let Some(id) = self.id.take() {
            self = self.attr(RECORD_UID_ATTRIBUTE, id);
        }
        let resource = Resource {
            attributes: vec![KeyValue {
                key: "service.name".into(),
                value: Some(AttrValue::from(SERVICE_NAME).into_any()),
                ..KeyValue::default()
            }],
            ..Resource::default()
        };
        let scope = InstrumentationScope {
            name: SERVICE_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..InstrumentationScope::default()
        };
        let ctx = ReceiveContext {
            tenant: self.tenant,
            received_time_unix_nano: now_unix_nano,
            max_event_bytes: MAX_EVENT_BYTES,
            // Written by this node's own clock: never skewed.
            max_clock_skew_nanos: 0,
        };
        AuditEvent::from_otlp(Some(&resource), Some(&scope), &self.record, &ctx)
            .expect("an internal event is a valid record")
    }
}

/// Whether `event` is one auditrail wrote about itself.
pub fn is_internal(event: &AuditEvent) -> bool {
    event.service_name == SERVICE_NAME && event.event_name.starts_with(EVENT_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_events_have_the_canonical_fields() {
        let event = InternalEvent::new("auditrail.query", INTERNAL_TENANT)
            .actor("token ops#1")
            .attr("client.address", "127.0.0.1")
            .attr("auditrail.count", 3u64)
            .attr("auditrail.ids", vec!["a".to_string(), "b".to_string()])
            .outcome(Outcome::Success)
            .build(42);
        assert_eq!(event.event_name, "auditrail.query");
        assert_eq!(event.actor_id, "token ops#1");
        assert_eq!(event.client_address, "127.0.0.1");
        assert_eq!(event.outcome, Outcome::Success);
        assert_eq!(event.time_unix_nano, 42);
        assert_eq!(event.received_time_unix_nano, 42);
        assert!(event.attributes.contains(r#""auditrail.count":3"#));
        assert!(event.attributes.contains(r#""auditrail.ids":["a","b"]"#));
        assert!(is_internal(&event));
        assert!(
            event.event_id.starts_with("auditrail-"),
            "{}",
            event.event_id
        );
    }

    #[test]
    fn ids_from_parts_are_stable_and_distinct() {
        let a = InternalEvent::new(ALERT, "t").id_from(&["r", "k"]).build(1);
        let again = InternalEvent::new(ALERT, "t").id_from(&["r", "k"]).build(2);
        let other = InternalEvent::new(ALERT, "t").id_from(&["rk"]).build(1);
        assert_eq!(a.event_id, again.event_id);
        assert_ne!(a.event_id, other.event_id, "parts are framed");
        assert!(a.event_id.starts_with("auditrail-"));
    }
}
