//! The SDK's records read by auditrail's own OTLP mapping: each builder
//! method lands in the canonical field it promises.

use std::time::{Duration, SystemTime};

use auditrail_model::otlp::{map_request, ReceiveContext};
use auditrail_model::AuditEvent;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};

use crate::{Auditor, Event, Outcome, Severity};

fn auditor() -> Auditor {
    Auditor::builder()
        .service_name("imagegen-ui")
        .resource_attribute(KeyValue::new("deployment.environment.name", "test"))
        .build()
        .expect("an auditor")
}

/// `event` as auditrail maps it.
fn mapped(auditor: &Auditor, event: &Event) -> AuditEvent {
    let request = auditor.request_for(event);
    let ctx = ReceiveContext {
        tenant: "acme".into(),
        received_time_unix_nano: 1,
        max_event_bytes: 1 << 20,
        max_clock_skew_nanos: 0,
    };
    let mut mapped = map_request(&request, &ctx);
    assert!(mapped.rejected.is_empty(), "{:?}", mapped.rejected);
    assert_eq!(mapped.events.len(), 1);
    mapped.events.remove(0)
}

fn span(trace: u128, span: u64) -> SpanContext {
    SpanContext::new(
        TraceId::from(trace),
        SpanId::from(span),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn every_builder_method_fills_its_canonical_field() {
    let auditor = auditor();
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let cx = Context::new().with_remote_span_context(span(0xabc, 0xdef));
    let _attached = cx.attach();
    let event = auditor
        .event("image.generate")
        .actor("u-42", "Alice")
        .client("198.51.100.4")
        .outcome(Outcome::Failure)
        .target("outputs/cat.png")
        .attr("gen_ai.request.model", "sdxl")
        .attr("image.count", 2_i64)
        .attr("image.count", 3_i64)
        .severity(Severity::Warn)
        .time(at)
        .body("a cat as a judge");
    let e = mapped(&auditor, &event);
    assert_eq!(e.event_name, "image.generate");
    assert_eq!(e.actor_id, "u-42");
    assert_eq!(e.actor_name, "Alice");
    assert_eq!(e.client_address, "198.51.100.4");
    assert_eq!(e.outcome, auditrail_model::Outcome::Failure);
    assert_eq!(e.target, "outputs/cat.png");
    assert_eq!(e.body, "a cat as a judge");
    assert_eq!(e.severity_number, Severity::Warn as i32);
    assert_eq!(e.severity_text, "WARN");
    assert_eq!(e.time_unix_nano, 1_700_000_000_000_000_000);
    assert_eq!(e.service_name, "imagegen-ui");
    assert_eq!(e.scope_name, crate::SCOPE_NAME);
    assert_eq!(e.trace_id, format!("{:032x}", 0xabc));
    assert_eq!(e.span_id, format!("{:016x}", 0xdef));
    assert_eq!(e.trace_flags, 1);
    // The uid is the event id, a UUIDv7 in hex.
    assert_eq!(e.event_id, event.event_uid());
    assert_eq!(e.event_id.len(), 32, "{}", e.event_id);
    assert!(e.attributes.contains(r#""gen_ai.request.model":"sdxl""#));
    // A key set twice keeps the last value, once.
    assert!(
        e.attributes.contains(r#""image.count":3"#),
        "{}",
        e.attributes
    );
    assert!(!e.attributes.contains(r#""image.count":2"#));
    assert!(e
        .resource_attributes
        .contains(r#""deployment.environment.name":"test""#));
}

#[tokio::test(flavor = "multi_thread")]
async fn uids_are_unique_and_settable_and_names_need_not_be_static() {
    let auditor = auditor();
    let first = auditor.event("a");
    let second = auditor.event("a");
    assert_ne!(first.event_uid(), second.event_uid());

    let name = format!("{}.delete", "dataset");
    let event = auditor
        .event(name)
        .uid("request-7")
        .outcome(Outcome::Success);
    let e = mapped(&auditor, &event);
    assert_eq!(e.event_name, "dataset.delete");
    assert_eq!(e.event_id, "request-7");
    assert_eq!(e.outcome, auditrail_model::Outcome::Success);
    // Without a span, no trace context.
    assert_eq!(e.trace_id, "");

    // The uid attribute set by hand is the uid, not a second attribute.
    let e = mapped(&auditor, &auditor.event("b").attr("log.record.uid", "x-1"));
    assert_eq!(e.event_id, "x-1");
    assert_eq!(e.attributes.matches("log.record.uid").count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_explicit_context_wins_over_the_current_one() {
    let auditor = auditor();
    let _current = Context::new().with_remote_span_context(span(1, 1)).attach();
    let other = Context::new().with_remote_span_context(span(2, 2));
    let e = mapped(&auditor, &auditor.event("a").context(&other));
    assert_eq!(e.trace_id, format!("{:032x}", 2));
}

#[test]
fn building_outside_a_runtime_is_an_error_not_a_panic() {
    let err = Auditor::builder().build().unwrap_err();
    assert!(err.to_string().contains("Tokio runtime"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_endpoints_and_tokens_are_errors_naming_the_problem() {
    let err = Auditor::builder()
        .endpoint("127.0.0.1:4317")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("http:// or https://"), "{err}");
    let err = Auditor::builder().token("line\nbreak").build().unwrap_err();
    assert!(err.to_string().contains("bearer token"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_global_auditor_emit_durable_fails_closed() {
    let err = crate::event("a").emit_durable().await.unwrap_err();
    assert!(matches!(err, crate::DurableError::NoAuditor), "{err}");
}
