//! The canonical fields as column sources, shared by the table sinks: the
//! canonical column names, a value for each, and the mapping of a legacy
//! column to a field or an attribute.

use auditrail_model::AuditEvent;
use time::OffsetDateTime;

/// One canonical field of [`AuditEvent`], plus `time`: the event time as a
/// readable UTC date-time (the `_unix_nano` fields keep the exact value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Node,
    Seq,
    EventId,
    Time,
    TimeUnixNano,
    ObservedTimeUnixNano,
    ReceivedTimeUnixNano,
    Tenant,
    ServiceName,
    EventName,
    SeverityNumber,
    SeverityText,
    ActorId,
    ActorName,
    ClientAddress,
    Outcome,
    Target,
    TraceId,
    SpanId,
    TraceFlags,
    Body,
    Attributes,
    ResourceAttributes,
    ScopeName,
    PrevHash,
    Hash,
}

/// A field's value, borrowed from the event where it can be.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// An attribute the event does not have.
    Null,
    Str(&'a str),
    Owned(String),
    U64(u64),
    I64(i64),
    /// A canonical JSON object (sorted keys).
    Json(&'a str),
    /// Nanoseconds since the Unix epoch, for a date-time column.
    Time(u64),
}

impl Field {
    /// Every field, in the order of the canonical table's columns.
    pub const ALL: [Field; 26] = [
        Field::Node,
        Field::Seq,
        Field::EventId,
        Field::Time,
        Field::TimeUnixNano,
        Field::ObservedTimeUnixNano,
        Field::ReceivedTimeUnixNano,
        Field::Tenant,
        Field::ServiceName,
        Field::EventName,
        Field::SeverityNumber,
        Field::SeverityText,
        Field::ActorId,
        Field::ActorName,
        Field::ClientAddress,
        Field::Outcome,
        Field::Target,
        Field::TraceId,
        Field::SpanId,
        Field::TraceFlags,
        Field::Body,
        Field::Attributes,
        Field::ResourceAttributes,
        Field::ScopeName,
        Field::PrevHash,
        Field::Hash,
    ];

    /// The column name: the canonical field name.
    pub fn name(self) -> &'static str {
        match self {
            Field::Node => "node",
            Field::Seq => "seq",
            Field::EventId => "event_id",
            Field::Time => "time",
            Field::TimeUnixNano => "time_unix_nano",
            Field::ObservedTimeUnixNano => "observed_time_unix_nano",
            Field::ReceivedTimeUnixNano => "received_time_unix_nano",
            Field::Tenant => "tenant",
            Field::ServiceName => "service_name",
            Field::EventName => "event_name",
            Field::SeverityNumber => "severity_number",
            Field::SeverityText => "severity_text",
            Field::ActorId => "actor_id",
            Field::ActorName => "actor_name",
            Field::ClientAddress => "client_address",
            Field::Outcome => "outcome",
            Field::Target => "target",
            Field::TraceId => "trace_id",
            Field::SpanId => "span_id",
            Field::TraceFlags => "trace_flags",
            Field::Body => "body",
            Field::Attributes => "attributes",
            Field::ResourceAttributes => "resource_attributes",
            Field::ScopeName => "scope_name",
            Field::PrevHash => "prev_hash",
            Field::Hash => "hash",
        }
    }

    pub fn from_name(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name() == name)
    }

    pub fn value(self, e: &AuditEvent) -> Value<'_> {
        match self {
            Field::Node => Value::Str(&e.node),
            Field::Seq => Value::U64(e.seq),
            Field::EventId => Value::Str(&e.event_id),
            Field::Time => Value::Time(e.time_unix_nano),
            Field::TimeUnixNano => Value::U64(e.time_unix_nano),
            Field::ObservedTimeUnixNano => Value::U64(e.observed_time_unix_nano),
            Field::ReceivedTimeUnixNano => Value::U64(e.received_time_unix_nano),
            Field::Tenant => Value::Str(&e.tenant),
            Field::ServiceName => Value::Str(&e.service_name),
            Field::EventName => Value::Str(&e.event_name),
            Field::SeverityNumber => Value::I64(i64::from(e.severity_number)),
            Field::SeverityText => Value::Str(&e.severity_text),
            Field::ActorId => Value::Str(&e.actor_id),
            Field::ActorName => Value::Str(&e.actor_name),
            Field::ClientAddress => Value::Str(&e.client_address),
            Field::Outcome => Value::Str(e.outcome.as_str()),
            Field::Target => Value::Str(&e.target),
            Field::TraceId => Value::Str(&e.trace_id),
            Field::SpanId => Value::Str(&e.span_id),
            Field::TraceFlags => Value::U64(u64::from(e.trace_flags)),
            Field::Body => Value::Str(&e.body),
            Field::Attributes => Value::Json(&e.attributes),
            Field::ResourceAttributes => Value::Json(&e.resource_attributes),
            Field::ScopeName => Value::Str(&e.scope_name),
            Field::PrevHash => Value::Owned(hex::encode(e.prev_hash)),
            Field::Hash => Value::Owned(hex::encode(e.hash)),
        }
    }
}

impl Field {
    /// The fields an event is read back from (every one but `time`, which
    /// only repeats `time_unix_nano` for people).
    pub fn stored() -> impl Iterator<Item = Field> {
        Field::ALL.into_iter().filter(|f| *f != Field::Time)
    }

    /// Sets this field of `event` from its stored text (a column read back
    /// as text, a JSON line's value as text).
    pub fn set(self, event: &mut AuditEvent, text: String) -> Result<(), String> {
        let number = |t: &str| {
            t.trim()
                .parse::<u64>()
                .map_err(|_| format!("`{}` is not a number: {t:?}", self.name()))
        };
        let hash = |t: &str| -> Result<auditrail_model::Hash, String> {
            hex::decode(t.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| format!("`{}` is not a hex SHA-256: {t:?}", self.name()))
        };
        match self {
            Field::Node => event.node = text,
            Field::Seq => event.seq = number(&text)?,
            Field::EventId => event.event_id = text,
            Field::Time => {}
            Field::TimeUnixNano => event.time_unix_nano = number(&text)?,
            Field::ObservedTimeUnixNano => event.observed_time_unix_nano = number(&text)?,
            Field::ReceivedTimeUnixNano => event.received_time_unix_nano = number(&text)?,
            Field::Tenant => event.tenant = text,
            Field::ServiceName => event.service_name = text,
            Field::EventName => event.event_name = text,
            Field::SeverityNumber => {
                event.severity_number = text
                    .trim()
                    .parse()
                    .map_err(|_| format!("`severity_number` is not a number: {text:?}"))?
            }
            Field::SeverityText => event.severity_text = text,
            Field::ActorId => event.actor_id = text,
            Field::ActorName => event.actor_name = text,
            Field::ClientAddress => event.client_address = text,
            Field::Outcome => {
                event.outcome = auditrail_model::Outcome::parse(&text).ok_or_else(|| {
                    format!("`outcome` is not success, failure or unknown: {text:?}")
                })?
            }
            Field::Target => event.target = text,
            Field::TraceId => event.trace_id = text,
            Field::SpanId => event.span_id = text,
            Field::TraceFlags => {
                event.trace_flags = u32::try_from(number(&text)?)
                    .map_err(|_| format!("`trace_flags` is out of range: {text:?}"))?
            }
            Field::Body => event.body = text,
            Field::Attributes => event.attributes = text,
            Field::ResourceAttributes => event.resource_attributes = text,
            Field::ScopeName => event.scope_name = text,
            Field::PrevHash => event.prev_hash = hash(&text)?,
            Field::Hash => event.hash = hash(&text)?,
        }
        Ok(())
    }
}

/// Where a mapped (legacy) column takes its value from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Field(Field),
    /// `attributes.<key>`: a record attribute.
    Attribute(String),
    /// `resource_attributes.<key>`: a resource attribute.
    ResourceAttribute(String),
}

impl Source {
    /// Parses `actor_name`, `attributes.device.name` or
    /// `resource_attributes.host.name`.
    pub fn parse(text: &str) -> Result<Source, String> {
        if let Some(key) = text.strip_prefix("attributes.") {
            return Ok(Source::Attribute(key.to_owned()));
        }
        if let Some(key) = text.strip_prefix("resource_attributes.") {
            return Ok(Source::ResourceAttribute(key.to_owned()));
        }
        Field::from_name(text).map(Source::Field).ok_or_else(|| {
            format!(
                "{text:?} is neither a canonical field ({}) nor `attributes.<key>` / `resource_attributes.<key>`",
                Field::ALL.map(Field::name).join(", ")
            )
        })
    }

    /// The value for `e`. An absent attribute is [`Value::Null`]; a
    /// non-string attribute is its JSON text.
    pub fn value<'a>(&self, e: &'a AuditEvent) -> Value<'a> {
        let (json, key) = match self {
            Source::Field(field) => return field.value(e),
            Source::Attribute(key) => (&e.attributes, key),
            Source::ResourceAttribute(key) => (&e.resource_attributes, key),
        };
        let value = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(json)
            .ok()
            .and_then(|mut map| map.remove(key));
        match value {
            None | Some(serde_json::Value::Null) => Value::Null,
            Some(serde_json::Value::String(s)) => Value::Owned(s),
            Some(other) => Value::Owned(other.to_string()),
        }
    }
}

/// `unix_nano` as a UTC date-time; times past year 9999 clamp to its end.
pub fn utc(unix_nano: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_nano))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_fields_and_attribute_keys() {
        assert_eq!(
            Source::parse("actor_name").unwrap(),
            Source::Field(Field::ActorName)
        );
        assert_eq!(
            Source::parse("attributes.device.name").unwrap(),
            Source::Attribute("device.name".into())
        );
        let error = Source::parse("user").unwrap_err();
        assert!(error.contains("canonical field"), "{error}");
    }

    #[test]
    fn attribute_values_are_strings_or_json() {
        let event = AuditEvent {
            attributes: r#"{"duration_ms":1200,"model":"nano-banana","ok":true}"#.into(),
            ..AuditEvent::default()
        };
        let value = |key: &str| Source::Attribute(key.into()).value(&event);
        assert_eq!(value("model"), Value::Owned("nano-banana".into()));
        assert_eq!(value("duration_ms"), Value::Owned("1200".into()));
        assert_eq!(value("absent"), Value::Null);
        assert_eq!(Field::Time.value(&event), Value::Time(0));
        assert_eq!(Field::ALL.len(), 26);
        assert!(Field::ALL
            .iter()
            .all(|f| Field::from_name(f.name()) == Some(*f)));
    }
}
