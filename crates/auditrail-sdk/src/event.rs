//! The typed event builder.

use std::borrow::Cow;
use std::time::SystemTime;

use opentelemetry::logs::{AnyValue, LogRecord as _, Severity};
use opentelemetry::trace::SpanContext;
use opentelemetry::{Context, Key};
use opentelemetry_sdk::logs::SdkLogRecord;

use crate::{attributes, context, Auditor, DurableError};

/// What came of the action an event records: auditrail's `outcome` field
/// (attribute `audit.outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Success,
    Failure,
    Unknown,
}

impl Outcome {
    /// The attribute value auditrail reads: `success`, `failure`, `unknown`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Unknown => "unknown",
        }
    }
}

/// One audit event being described, then sent with [`Event::emit`] or
/// [`Event::emit_durable`].
///
/// Made by [`Auditor::event`] (or [`crate::event`] with the global
/// auditor). The event's time, its `log.record.uid` and its trace context
/// are fixed when it is made, so sending the same `Event` again (after an
/// [`emit_durable`](Event::emit_durable) error) is a retry auditrail
/// stores once.
#[derive(Debug, Clone)]
#[must_use = "an event is only recorded by emit() or emit_durable()"]
pub struct Event {
    auditor: Option<Auditor>,
    name: Cow<'static, str>,
    uid: String,
    time: SystemTime,
    severity: Severity,
    body: Option<AnyValue>,
    attributes: Vec<(Key, AnyValue)>,
    span: Option<SpanContext>,
}

impl Event {
    pub(crate) fn new(auditor: Option<Auditor>, name: Cow<'static, str>) -> Event {
        Event {
            auditor,
            name,
            uid: uuid::Uuid::now_v7().simple().to_string(),
            time: SystemTime::now(),
            severity: Severity::Info,
            body: None,
            attributes: Vec::new(),
            span: context::current_span(),
        }
    }

    /// Who acted: `user.id` and `user.name` (auditrail's `actor_id` and
    /// `actor_name`).
    pub fn actor(self, id: impl Into<String>, name: impl Into<String>) -> Event {
        self.attr(attributes::USER_ID, id.into())
            .attr(attributes::USER_NAME, name.into())
    }

    /// Who acted, by id alone: `user.id` (auditrail's `actor_id`).
    pub fn actor_id(self, id: impl Into<String>) -> Event {
        self.attr(attributes::USER_ID, id.into())
    }

    /// Where the request came from: `client.address` (auditrail's
    /// `client_address`), an IP address or host name without the port.
    pub fn client(self, address: impl Into<String>) -> Event {
        self.attr(attributes::CLIENT_ADDRESS, address.into())
    }

    /// What came of the action: `audit.outcome` (auditrail's `outcome`;
    /// `unknown` when not set).
    pub fn outcome(self, outcome: Outcome) -> Event {
        self.attr(attributes::OUTCOME, outcome.as_str())
    }

    /// What was acted on (a file, a dataset, a model config): `audit.target`
    /// (auditrail's `target`, which `auditrail query --target` searches).
    pub fn target(self, target: impl Into<String>) -> Event {
        self.attr(attributes::TARGET, target.into())
    }

    /// Any other attribute, e.g. `gen_ai.request.model`. Setting a key twice
    /// keeps the last value; auditrail keeps every attribute in the event's
    /// `attributes`.
    pub fn attr(mut self, key: impl Into<Key>, value: impl Into<AnyValue>) -> Event {
        let (key, value) = (key.into(), value.into());
        if key.as_str() == attributes::RECORD_UID {
            // One uid per record: the attribute is written from `uid`.
            self.uid = match value {
                AnyValue::String(uid) => uid.to_string(),
                AnyValue::Int(n) => n.to_string(),
                other => format!("{other:?}"),
            };
            return self;
        }
        match self.attributes.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.attributes.push((key, value)),
        }
        self
    }

    /// The event's body (e.g. the prompt): auditrail's `body`, searched by
    /// `query --text`. Strings are stored as they are, other values as JSON.
    pub fn body(mut self, body: impl Into<AnyValue>) -> Event {
        self.body = Some(body.into());
        self
    }

    /// The severity (default `Info`).
    pub fn severity(mut self, severity: Severity) -> Event {
        self.severity = severity;
        self
    }

    /// When the action happened (default: when the event was made).
    pub fn time(mut self, time: SystemTime) -> Event {
        self.time = time;
        self
    }

    /// The event's own id, `log.record.uid` (auditrail's `event_id`; 1 to 128
    /// printable ASCII bytes). By default a fresh UUIDv7 (32 hex digits); set
    /// one derived from the action (e.g. a request id) so that a resend of
    /// the same action, even from another process, is stored once.
    pub fn uid(mut self, uid: impl Into<String>) -> Event {
        self.uid = uid.into();
        self
    }

    /// Records the event in the span of `cx` instead of the current one.
    pub fn context(mut self, cx: &Context) -> Event {
        self.span = context::of_context(cx);
        self
    }

    /// The event's `log.record.uid`, which auditrail stores as `event_id`.
    pub fn event_uid(&self) -> &str {
        &self.uid
    }

    /// The span the event is recorded in, if any.
    pub fn span_context(&self) -> Option<&SpanContext> {
        self.span.as_ref()
    }

    /// Queues the event on the batched path (OpenTelemetry's batch log
    /// processor) and returns at once. It is lost if auditrail stays
    /// unreachable past the exporter's retries, or if the queue is full:
    /// see the crate docs, *When auditrail is down*. Without an auditor (the
    /// global one not set), the event is dropped with a warning.
    pub fn emit(self) {
        match &self.auditor {
            Some(auditor) => auditor.emit_batched(&self),
            None => tracing::warn!(
                event = %self.name,
                "audit event dropped: no auditrail_sdk::Auditor is set (set_global)"
            ),
        }
    }

    /// Sends the event on its own and waits for auditrail's answer: `Ok`
    /// only once auditrail has written it durably (auditrail answers after
    /// fsync), an error otherwise, so that the caller can refuse an action
    /// it cannot audit. Takes at most the auditor's durable timeout.
    ///
    /// After an error the event may still have been stored (a timeout, a
    /// lost answer); sending the same `Event` again is then safe, as its
    /// `log.record.uid` makes auditrail keep it once.
    pub async fn emit_durable(&self) -> Result<(), DurableError> {
        match &self.auditor {
            Some(auditor) => auditor.export_durable(self).await,
            None => Err(DurableError::NoAuditor),
        }
    }

    /// Writes the event into `record`, an SDK log record of the auditor's
    /// logger: the same record for both paths.
    pub(crate) fn fill(&self, record: &mut SdkLogRecord) {
        match &self.name {
            // The SDK takes only static event names; any other goes in the
            // `event.name` attribute, which auditrail reads when the record's
            // event_name is empty.
            Cow::Borrowed(name) => record.set_event_name(name),
            Cow::Owned(name) => record.add_attribute(attributes::EVENT_NAME, name.clone()),
        }
        record.set_timestamp(self.time);
        record.set_observed_timestamp(SystemTime::now());
        record.set_severity_number(self.severity);
        record.set_severity_text(self.severity.name());
        if let Some(body) = &self.body {
            record.set_body(body.clone());
        }
        record.add_attributes(self.attributes.iter().cloned());
        record.add_attribute(attributes::RECORD_UID, self.uid.clone());
        if let Some(span) = &self.span {
            record.set_trace_context(span.trace_id(), span.span_id(), Some(span.trace_flags()));
        }
    }
}
