//! The trace context an event is recorded in.

use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry::Context;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The span the calling code is in: the active span of the current
/// OpenTelemetry [`Context`], else the OpenTelemetry span behind the current
/// `tracing` span (tracing-opentelemetry), else none.
///
/// The OpenTelemetry context comes first because it is always the innermost
/// one when tracing-opentelemetry activates contexts (its default): entering
/// a `tracing` span attaches that span's context, and an OpenTelemetry span
/// started inside it is attached on top. With activation turned off
/// (`with_context_activation(false)`), the current `tracing` span is the only
/// place the span is found, hence the fallback.
pub(crate) fn current_span() -> Option<SpanContext> {
    of_context(&Context::current()).or_else(|| of_context(&tracing::Span::current().context()))
}

/// The active span of `cx`, if it is a valid one.
pub(crate) fn of_context(cx: &Context) -> Option<SpanContext> {
    let span = cx.span();
    let span = span.span_context();
    span.is_valid().then(|| span.clone())
}
