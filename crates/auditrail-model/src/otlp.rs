//! OTLP log records to [`AuditEvent`]s.

use prost::Message;

use opentelemetry_proto::tonic::{
    collector::logs::v1::ExportLogsServiceRequest,
    common::v1::{any_value::Value, AnyValue, InstrumentationScope, KeyValue},
    logs::v1::LogRecord,
    resource::v1::Resource,
};

use crate::anyvalue::{any_value_to_json, key_values_to_json};
use crate::event::{AuditEvent, Outcome};
use crate::id::{check_record_uid, ContentIds, RECORD_UID_ATTRIBUTE};

/// What the receiver knows about a request that the record does not say.
#[derive(Debug, Clone)]
pub struct ReceiveContext {
    /// The tenant the request's credentials belong to.
    pub tenant: String,
    /// The receiver's clock when the request arrived.
    pub received_time_unix_nano: u64,
    /// The largest event accepted, as [`AuditEvent::canonical_len`]; a record
    /// whose event would be larger is rejected (`event_too_large`). Capped at
    /// [`MAX_EVENT_BYTES`] whatever is asked.
    pub max_event_bytes: usize,
    /// An event whose time is further than this from the receive time, in
    /// the past or the future, carries [`CLOCK_SKEW_ATTRIBUTE`]; 0: never.
    pub max_clock_skew_nanos: u64,
}

/// The attribute auditrail sets on an event whose time is further from its
/// receive time than `max_clock_skew`: the event time minus the receive
/// time, in nanoseconds (negative: the sender's clock is behind). It
/// replaces any attribute of that name the sender set.
pub const CLOCK_SKEW_ATTRIBUTE: &str = "audit.clock_skew_ns";

/// The event time minus the receive time, when it is further apart than
/// `max` (0: never).
pub fn clock_skew(time_unix_nano: u64, received_unix_nano: u64, max: u64) -> Option<i64> {
    let skew = i128::from(time_unix_nano) - i128::from(received_unix_nano);
    (max > 0 && skew.unsigned_abs() > u128::from(max))
        .then(|| i64::try_from(skew).unwrap_or(if skew < 0 { i64::MIN } else { i64::MAX }))
}

/// The hard ceiling on one event's canonical bytes: far below the 4 GiB a
/// canonical field's u32 length can frame, so no mapped event can make
/// [`AuditEvent::canonical_bytes`] fail.
pub const MAX_EVENT_BYTES: usize = 1 << 30;

/// What mapping a request will cost, computed from the decoded request
/// before any event is built (prost's `encoded_len` walks the message
/// without allocating).
///
/// Every event carries its own copy of its resource's and scope's
/// attributes, so a request with one large resource and many tiny records
/// expands far past its own size. `expanded_bytes` counts each record with
/// its resource and scope, as protobuf: the receiver compares it with the
/// request's size to refuse such requests before they cost anything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCost {
    /// Log records in the request.
    pub records: usize,
    /// The sum over records of (resource + scope + record) encoded lengths.
    pub expanded_bytes: u64,
    /// The request's own encoded length.
    pub request_bytes: u64,
}

impl RequestCost {
    pub fn of(request: &ExportLogsServiceRequest) -> RequestCost {
        let mut cost = RequestCost {
            request_bytes: request.encoded_len() as u64,
            ..RequestCost::default()
        };
        for resource_logs in &request.resource_logs {
            let resource = resource_logs
                .resource
                .as_ref()
                .map_or(0, Message::encoded_len) as u64;
            for scope_logs in &resource_logs.scope_logs {
                let scope = scope_logs.scope.as_ref().map_or(0, Message::encoded_len) as u64;
                cost.records += scope_logs.log_records.len();
                for record in &scope_logs.log_records {
                    cost.expanded_bytes = cost
                        .expanded_bytes
                        .saturating_add(resource + scope + record.encoded_len() as u64);
                }
            }
        }
        cost
    }

    /// `expanded_bytes / request_bytes` (an empty request expands by 0).
    pub fn expansion(&self) -> f64 {
        if self.request_bytes == 0 {
            0.0
        } else {
            self.expanded_bytes as f64 / self.request_bytes as f64
        }
    }
}

/// Why one record was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Rejected {
    /// A short, stable label for metrics (`rejected_events_total{reason}`).
    pub reason: &'static str,
    /// What was wrong, for the sender.
    pub message: String,
}

impl Rejected {
    fn new(reason: &'static str, message: impl Into<String>) -> Rejected {
        Rejected {
            reason,
            message: message.into(),
        }
    }
}

/// A rejected record and where it stood in the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRecord {
    pub resource_index: usize,
    pub scope_index: usize,
    pub record_index: usize,
    pub rejected: Rejected,
}

impl RejectedRecord {
    /// "resource_logs[0].scope_logs[1].log_records[2]: reason", for responses.
    pub fn describe(&self) -> String {
        format!(
            "resource_logs[{}].scope_logs[{}].log_records[{}]: {}",
            self.resource_index, self.scope_index, self.record_index, self.rejected.message
        )
    }
}

/// The rejected records a `partial_success` message names, in the form
/// [`RejectedRecord::describe`] writes them (joined with `"; "`, maybe
/// after a prefix and before a `"; and N more"`): `(resource_index,
/// scope_index, record_index, message)` each. A client that sent the
/// request finds its records by these indexes.
pub fn described_rejections(text: &str) -> Vec<(usize, usize, usize, String)> {
    const ANCHOR: &str = "resource_logs[";
    /// `N]<after>` at the start of `s`: N and the rest.
    fn index<'a>(s: &'a str, after: &str) -> Option<(usize, &'a str)> {
        let end = s.find(']')?;
        let n = s[..end].parse().ok()?;
        Some((n, s[end + 1..].strip_prefix(after)?))
    }
    let starts: Vec<usize> = text.match_indices(ANCHOR).map(|(at, _)| at).collect();
    let mut found = Vec::new();
    for (i, &start) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(text.len());
        let part = &text[start + ANCHOR.len()..end];
        let Some((resource, rest)) = index(part, ".scope_logs[") else {
            continue;
        };
        let Some((scope, rest)) = index(rest, ".log_records[") else {
            continue;
        };
        let Some((record, message)) = index(rest, ": ") else {
            continue;
        };
        let message = message.strip_suffix("; ").unwrap_or(message);
        let message = match message.rfind("; and ") {
            Some(at) if message[at + 6..].ends_with(" more") => &message[..at],
            _ => message,
        };
        found.push((resource, scope, record, message.to_owned()));
    }
    found
}

/// The outcome of mapping one export request.
#[derive(Debug, Default)]
pub struct MappedRequest {
    pub events: Vec<AuditEvent>,
    pub rejected: Vec<RejectedRecord>,
}

/// Maps every record of a request; a bad record never spoils the others.
pub fn map_request(request: &ExportLogsServiceRequest, ctx: &ReceiveContext) -> MappedRequest {
    let mut mapped = MappedRequest::default();
    for (resource_index, resource_logs) in request.resource_logs.iter().enumerate() {
        let resource = ResourceView::new(resource_logs.resource.as_ref());
        for (scope_index, scope_logs) in resource_logs.scope_logs.iter().enumerate() {
            let scope = ScopeView::new(&resource, scope_logs.scope.as_ref());
            for (record_index, record) in scope_logs.log_records.iter().enumerate() {
                match map_record(&resource, &scope, record, ctx).and_then(|e| check_size(e, ctx)) {
                    Ok(event) => mapped.events.push(event),
                    Err(rejected) => mapped.rejected.push(RejectedRecord {
                        resource_index,
                        scope_index,
                        record_index,
                        rejected,
                    }),
                }
            }
        }
    }
    mapped
}

impl AuditEvent {
    /// Maps a single record. [`map_request`] does the same for a whole request
    /// while preparing each resource and scope only once.
    pub fn from_otlp(
        resource: Option<&Resource>,
        scope: Option<&InstrumentationScope>,
        record: &LogRecord,
        ctx: &ReceiveContext,
    ) -> Result<AuditEvent, Rejected> {
        let resource_view = ResourceView::new(resource);
        let scope_view = ScopeView::new(&resource_view, scope);
        map_record(&resource_view, &scope_view, record, ctx).and_then(|e| check_size(e, ctx))
    }
}

/// Refuses an event over `max_event_bytes` (and always over
/// [`MAX_EVENT_BYTES`]): one huge record must not spoil its request, and no
/// field may outgrow what canonical bytes can frame.
fn check_size(event: AuditEvent, ctx: &ReceiveContext) -> Result<AuditEvent, Rejected> {
    let limit = ctx.max_event_bytes.min(MAX_EVENT_BYTES);
    let len = event.canonical_len();
    if len > limit {
        return Err(Rejected::new(
            "event_too_large",
            format!(
                "the event would be {len} bytes (with its resource and scope attributes), \
                 over max_event_bytes ({limit} bytes)"
            ),
        ));
    }
    Ok(event)
}

struct ResourceView<'a> {
    resource: Option<&'a Resource>,
    attributes: String,
    service_name: String,
}

impl<'a> ResourceView<'a> {
    fn new(resource: Option<&'a Resource>) -> Self {
        let attrs: &[KeyValue] = resource.map(|r| r.attributes.as_slice()).unwrap_or(&[]);
        ResourceView {
            resource,
            attributes: key_values_to_json(attrs),
            service_name: attribute_text(attrs, "service.name").unwrap_or_default(),
        }
    }
}

struct ScopeView {
    name: String,
    ids: ContentIds,
}

impl ScopeView {
    fn new(resource: &ResourceView<'_>, scope: Option<&InstrumentationScope>) -> Self {
        ScopeView {
            name: scope.map(|s| s.name.clone()).unwrap_or_default(),
            ids: ContentIds::new(resource.resource, scope),
        }
    }
}

fn map_record(
    resource: &ResourceView<'_>,
    scope: &ScopeView,
    record: &LogRecord,
    ctx: &ReceiveContext,
) -> Result<AuditEvent, Rejected> {
    let attrs = record.attributes.as_slice();
    let trace_id = id_hex(&record.trace_id, 16, "trace_id", "invalid_trace_id")?;
    let span_id = id_hex(&record.span_id, 8, "span_id", "invalid_span_id")?;
    let event_id = match attribute_text(attrs, RECORD_UID_ATTRIBUTE) {
        Some(uid) => {
            check_record_uid(&uid).map_err(|m| Rejected::new("invalid_record_uid", m))?;
            uid
        }
        None => scope.ids.record_id(record),
    };
    let outcome = match attribute_text(attrs, "audit.outcome") {
        None => Outcome::Unknown,
        Some(text) => Outcome::parse(&text).ok_or_else(|| {
            Rejected::new(
                "invalid_outcome",
                format!("audit.outcome must be success, failure or unknown, got {text:?}"),
            )
        })?,
    };
    let time_unix_nano = [record.time_unix_nano, record.observed_time_unix_nano]
        .into_iter()
        .find(|&t| t != 0)
        .unwrap_or(ctx.received_time_unix_nano);
    let event_name = if record.event_name.is_empty() {
        attribute_text(attrs, "event.name").unwrap_or_default()
    } else {
        record.event_name.clone()
    };
    let skew = clock_skew(
        time_unix_nano,
        ctx.received_time_unix_nano,
        ctx.max_clock_skew_nanos,
    );
    let attributes = match skew {
        None => key_values_to_json(attrs),
        Some(skew) => {
            // Flagged on the event itself, so every store shows it.
            let mut flagged: Vec<KeyValue> = attrs
                .iter()
                .filter(|kv| kv.key != CLOCK_SKEW_ATTRIBUTE)
                .cloned()
                .collect();
            flagged.push(KeyValue {
                key: CLOCK_SKEW_ATTRIBUTE.into(),
                value: Some(AnyValue {
                    value: Some(Value::IntValue(skew)),
                }),
                ..Default::default()
            });
            key_values_to_json(&flagged)
        }
    };
    let body = match record.body.as_ref().and_then(|b| b.value.as_ref()) {
        None => String::new(),
        Some(Value::StringValue(s)) => s.clone(),
        Some(_) => any_value_to_json(record.body.as_ref().expect("checked above")),
    };
    Ok(AuditEvent {
        node: String::new(),
        seq: 0,
        event_id,
        time_unix_nano,
        observed_time_unix_nano: record.observed_time_unix_nano,
        received_time_unix_nano: ctx.received_time_unix_nano,
        tenant: ctx.tenant.clone(),
        service_name: resource.service_name.clone(),
        event_name,
        severity_number: record.severity_number,
        severity_text: record.severity_text.clone(),
        actor_id: first_attribute(attrs, &["user.id", "enduser.id"]),
        actor_name: attribute_text(attrs, "user.name").unwrap_or_default(),
        client_address: first_attribute(attrs, &["client.address", "source.address"]),
        outcome,
        target: attribute_text(attrs, "audit.target").unwrap_or_default(),
        trace_id,
        span_id,
        trace_flags: record.flags & 0xff,
        body,
        attributes,
        resource_attributes: resource.attributes.clone(),
        scope_name: scope.name.clone(),
        prev_hash: [0; 32],
        hash: [0; 32],
    })
}

/// An id as lower-case hex. Absent and all-zero ids mean "no trace" in OTLP;
/// any other length is an error the sender should hear about.
fn id_hex(bytes: &[u8], len: usize, field: &str, reason: &'static str) -> Result<String, Rejected> {
    if bytes.is_empty() || (bytes.len() == len && bytes.iter().all(|&b| b == 0)) {
        return Ok(String::new());
    }
    if bytes.len() != len {
        return Err(Rejected::new(
            reason,
            format!("{field} must be {len} bytes, got {}", bytes.len()),
        ));
    }
    Ok(hex::encode(bytes))
}

fn first_attribute(attrs: &[KeyValue], keys: &[&str]) -> String {
    keys.iter()
        .find_map(|key| attribute_text(attrs, key))
        .unwrap_or_default()
}

/// An attribute as text: strings as they are, other values as canonical JSON.
/// Of duplicate keys the last wins, as in the attributes JSON.
fn attribute_text(attrs: &[KeyValue], key: &str) -> Option<String> {
    let value = attrs
        .iter()
        .rev()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?;
    match value.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        _ => Some(any_value_to_json(value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::{
        common::v1::AnyValue,
        logs::v1::{ResourceLogs, ScopeLogs},
    };

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            key_strindex: 0,
            value: Some(AnyValue {
                value: Some(Value::StringValue(value.into())),
            }),
        }
    }

    fn ctx() -> ReceiveContext {
        ReceiveContext {
            tenant: "default".into(),
            received_time_unix_nano: 999,
            max_event_bytes: 1 << 20,
            max_clock_skew_nanos: 0,
        }
    }

    fn request(records: Vec<LogRecord>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", "imagegen"), kv("host.name", "h1")],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "audit".into(),
                        ..Default::default()
                    }),
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn described_rejections_are_found_again() {
        let rejected = |record_index, message: &str| RejectedRecord {
            resource_index: 1,
            scope_index: 0,
            record_index,
            rejected: Rejected::new("x", message),
        };
        let text = format!(
            "2 log records rejected: {}; {}; and 3 more",
            rejected(
                4,
                "audit.outcome must be success, failure or unknown, got \"ok; fine\""
            )
            .describe(),
            rejected(17, "trace_id must be 16 bytes, got 3").describe()
        );
        assert_eq!(
            described_rejections(&text),
            vec![
                (
                    1,
                    0,
                    4,
                    "audit.outcome must be success, failure or unknown, got \"ok; fine\"".into()
                ),
                (1, 0, 17, "trace_id must be 16 bytes, got 3".into()),
            ]
        );
        assert!(described_rejections("1 log records rejected: garbled").is_empty());
    }

    #[test]
    fn maps_canonical_fields() {
        let record = LogRecord {
            time_unix_nano: 0,
            observed_time_unix_nano: 42,
            severity_number: 9,
            severity_text: "INFO".into(),
            event_name: String::new(),
            body: Some(AnyValue {
                value: Some(Value::StringValue("generated a city at night".into())),
            }),
            attributes: vec![
                kv("event.name", "image.generate"),
                kv("enduser.id", "alice"),
                kv("user.name", "Alice A."),
                kv("source.address", "10.1.2.3"),
                kv("audit.outcome", "success"),
                kv("audit.target", "model/sdxl"),
            ],
            trace_id: vec![0xab; 16],
            span_id: vec![0xcd; 8],
            flags: 0x101,
            ..Default::default()
        };
        let mapped = map_request(&request(vec![record]), &ctx());
        assert!(mapped.rejected.is_empty());
        let e = &mapped.events[0];
        assert_eq!(e.time_unix_nano, 42);
        assert_eq!(e.received_time_unix_nano, 999);
        assert_eq!(e.service_name, "imagegen");
        assert_eq!(e.event_name, "image.generate");
        assert_eq!(e.actor_id, "alice");
        assert_eq!(e.actor_name, "Alice A.");
        assert_eq!(e.client_address, "10.1.2.3");
        assert_eq!(e.outcome, Outcome::Success);
        assert_eq!(e.target, "model/sdxl");
        assert_eq!(e.trace_id, "ab".repeat(16));
        assert_eq!(e.span_id, "cd".repeat(8));
        assert_eq!(e.trace_flags, 1);
        assert_eq!(e.scope_name, "audit");
        assert_eq!(e.body, "generated a city at night");
        assert_eq!(e.tenant, "default");
        assert_eq!(e.event_id.len(), 32);
        assert!(e.attributes.contains(r#""enduser.id":"alice""#));
        assert_eq!(
            e.resource_attributes,
            r#"{"host.name":"h1","service.name":"imagegen"}"#
        );
    }

    #[test]
    fn a_time_far_from_the_receive_time_is_flagged_and_the_senders_flag_replaced() {
        const MINUTE: u64 = 60_000_000_000;
        let received = 100 * MINUTE;
        let ctx = ReceiveContext {
            received_time_unix_nano: received,
            max_clock_skew_nanos: 5 * MINUTE,
            ..ctx()
        };
        let at = |time: u64| LogRecord {
            time_unix_nano: time,
            // A sender's own flag never stands.
            attributes: vec![kv(CLOCK_SKEW_ATTRIBUTE, "forged"), kv("user.id", "a")],
            ..Default::default()
        };
        let mapped = map_request(
            &request(vec![
                at(received - 5 * MINUTE),
                at(received - 6 * MINUTE),
                at(received + 7 * MINUTE),
            ]),
            &ctx,
        );
        let attrs: Vec<&str> = mapped
            .events
            .iter()
            .map(|e| e.attributes.as_str())
            .collect();
        // Exactly five minutes off: not flagged (the sender's attribute is
        // then only an attribute).
        assert_eq!(
            attrs[0],
            r#"{"audit.clock_skew_ns":"forged","user.id":"a"}"#
        );
        assert_eq!(
            attrs[1],
            format!(r#"{{"audit.clock_skew_ns":-{},"user.id":"a"}}"#, 6 * MINUTE)
        );
        assert_eq!(
            attrs[2],
            format!(r#"{{"audit.clock_skew_ns":{},"user.id":"a"}}"#, 7 * MINUTE)
        );
        // Off: nothing flagged.
        let off = map_request(
            &request(vec![at(0)]),
            &ReceiveContext {
                max_clock_skew_nanos: 0,
                ..ctx
            },
        );
        assert!(off.events[0].attributes.contains("forged"));
        assert_eq!(clock_skew(0, u64::MAX, 1), Some(i64::MIN));
    }

    #[test]
    fn precedence_rules() {
        let record = LogRecord {
            time_unix_nano: 7,
            observed_time_unix_nano: 8,
            event_name: "user.login".into(),
            attributes: vec![
                kv("event.name", "ignored"),
                kv("user.id", "bob"),
                kv("enduser.id", "ignored"),
                kv("client.address", "1.1.1.1"),
                kv("source.address", "2.2.2.2"),
            ],
            ..Default::default()
        };
        let e = AuditEvent::from_otlp(None, None, &record, &ctx()).unwrap();
        assert_eq!(e.time_unix_nano, 7);
        assert_eq!(e.event_name, "user.login");
        assert_eq!(e.actor_id, "bob");
        assert_eq!(e.client_address, "1.1.1.1");
        assert_eq!(e.outcome, Outcome::Unknown);
        assert_eq!(e.trace_id, "");

        let no_times = LogRecord::default();
        let e = AuditEvent::from_otlp(None, None, &no_times, &ctx()).unwrap();
        assert_eq!(e.time_unix_nano, 999, "falls back to receive time");
    }

    #[test]
    fn uid_becomes_event_id_and_retries_keep_their_id() {
        let with_uid = LogRecord {
            attributes: vec![kv("log.record.uid", "evt-1")],
            ..Default::default()
        };
        let plain = LogRecord {
            time_unix_nano: 1,
            ..Default::default()
        };
        let first = map_request(&request(vec![with_uid.clone(), plain.clone()]), &ctx());
        let retry = map_request(&request(vec![with_uid, plain]), &ctx());
        assert_eq!(first.events[0].event_id, "evt-1");
        assert_eq!(first.events[1].event_id, retry.events[1].event_id);
    }

    #[test]
    fn bad_records_are_rejected_alone() {
        let records = vec![
            LogRecord {
                trace_id: vec![1; 15],
                ..Default::default()
            },
            LogRecord::default(),
            LogRecord {
                span_id: vec![1; 9],
                ..Default::default()
            },
            LogRecord {
                attributes: vec![kv("audit.outcome", "maybe")],
                ..Default::default()
            },
            LogRecord {
                attributes: vec![kv("log.record.uid", "")],
                ..Default::default()
            },
            LogRecord {
                trace_id: vec![0; 16],
                ..Default::default()
            },
        ];
        let mapped = map_request(&request(records), &ctx());
        assert_eq!(mapped.events.len(), 2);
        let reasons: Vec<_> = mapped.rejected.iter().map(|r| r.rejected.reason).collect();
        assert_eq!(
            reasons,
            [
                "invalid_trace_id",
                "invalid_span_id",
                "invalid_outcome",
                "invalid_record_uid"
            ]
        );
        assert_eq!(
            mapped.rejected[0].describe(),
            "resource_logs[0].scope_logs[0].log_records[0]: trace_id must be 16 bytes, got 15"
        );
        assert_eq!(mapped.events[1].trace_id, "", "all-zero id means no trace");
    }

    #[test]
    fn cost_counts_each_record_with_its_resource_and_scope() {
        let records = vec![LogRecord::default(); 3];
        let req = request(records);
        let cost = RequestCost::of(&req);
        let resource = req.resource_logs[0]
            .resource
            .as_ref()
            .unwrap()
            .encoded_len() as u64;
        let scope = req.resource_logs[0].scope_logs[0]
            .scope
            .as_ref()
            .unwrap()
            .encoded_len() as u64;
        assert_eq!(cost.records, 3);
        assert_eq!(cost.expanded_bytes, 3 * (resource + scope));
        assert_eq!(cost.request_bytes, req.encoded_len() as u64);
        assert!(cost.expansion() > 1.0);
        assert_eq!(RequestCost::of(&Default::default()).expansion(), 0.0);
    }

    #[test]
    fn an_event_over_max_event_bytes_is_rejected_alone() {
        let big = LogRecord {
            body: Some(AnyValue {
                value: Some(Value::StringValue("x".repeat(2000))),
            }),
            ..Default::default()
        };
        let small = LogRecord::default();
        let limited = ReceiveContext {
            max_event_bytes: 1500,
            max_clock_skew_nanos: 0,
            ..ctx()
        };
        let mapped = map_request(&request(vec![small, big]), &limited);
        assert_eq!(mapped.events.len(), 1);
        assert_eq!(mapped.rejected.len(), 1);
        let rejected = &mapped.rejected[0];
        assert_eq!(rejected.record_index, 1);
        assert_eq!(rejected.rejected.reason, "event_too_large");
        assert!(
            rejected
                .rejected
                .message
                .contains("max_event_bytes (1500 bytes)"),
            "{}",
            rejected.rejected.message
        );
        let event = &mapped.events[0];
        assert_eq!(event.canonical_len(), event.canonical_bytes().len());
    }
}
