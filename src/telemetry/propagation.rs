//! W3C trace context in CloudEvent attributes (`traceparent`,
//! `tracestate`), and the attributes of message spans after the
//! OpenTelemetry messaging semantic conventions.
//!
//! Every function returns at once when traces are off ([`super::active`]).

use crate::envelope::CloudEvent;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, Status, TraceContextExt};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::collections::HashMap;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The trace context an event carries, if it carries a valid one.
pub(crate) fn extract(event: &CloudEvent) -> Option<Context> {
    let traceparent = event.traceparent.as_deref().filter(|t| !t.is_empty())?;
    let mut carrier = HashMap::with_capacity(2);
    carrier.insert("traceparent".to_owned(), traceparent.to_owned());
    if let Some(ts) = event.tracestate.as_deref().filter(|t| !t.is_empty()) {
        carrier.insert("tracestate".to_owned(), ts.to_owned());
    }
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// Writes `cx` into the event's `traceparent` and `tracestate` (an empty
/// `tracestate` is left out). An invalid context changes nothing.
pub(crate) fn inject(event: &mut CloudEvent, cx: &Context) {
    if !cx.span().span_context().is_valid() {
        return;
    }
    let mut carrier: HashMap<String, String> = HashMap::with_capacity(2);
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    if let Some(tp) = carrier.remove("traceparent").filter(|v| !v.is_empty()) {
        event.traceparent = Some(tp);
        event.tracestate = carrier.remove("tracestate").filter(|v| !v.is_empty());
    }
}

/// Puts the current span's context into an outgoing event, replacing what
/// it carried (a reply carries the request's context until here; with
/// traces on it carries the handling span's, a child of the request's).
/// Nothing changes when traces are off or no span is current.
pub(crate) fn inject_current(event: &mut CloudEvent) {
    if !super::active() {
        return;
    }
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        inject(event, &cx);
    } else if let Some(job) = super::job::job_context() {
        // The engine's work on a job outside any span (its status events).
        inject(event, &job);
    }
}

/// The current span's context as a `traceparent` value, if traces are on
/// and a span is current.
pub(crate) fn current_traceparent() -> Option<String> {
    if !super::active() {
        return None;
    }
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| traceparent(&sc))
}

/// The `traceparent` text of a span context.
pub(crate) fn traceparent(sc: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

/// Records the span's OpenTelemetry ids in its `trace_id` and `span_id`
/// fields (declared empty when the span was created), so that every log
/// line inside it carries them.
pub(crate) fn record_ids(span: &tracing::Span) {
    if !super::active() {
        return;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        span.record("trace_id", tracing::field::display(sc.trace_id()));
        span.record("span_id", tracing::field::display(sc.span_id()));
    }
}

/// Makes `span` the span of processing `event` received on `topic`: its
/// parent is the event's trace context (if it has one), its name and
/// attributes follow the messaging semantic conventions, and its ids are
/// recorded for the logs. Call before the span is first entered.
pub(crate) fn message_span_started(span: &tracing::Span, topic: &str, event: &CloudEvent) {
    if !super::active() {
        return;
    }
    // Filled in only now: with traces off a message span costs no name.
    span.record("otel.name", format!("process {}", event.ty));
    span.record("otel.kind", "consumer");
    if let Some(parent) = extract(event) {
        let _ = span.set_parent(parent);
    }
    span.set_attribute("messaging.system", "mqtt");
    span.set_attribute("messaging.destination.name", topic.to_owned());
    span.set_attribute("messaging.operation.type", "process");
    span.set_attribute("messaging.operation.name", "process");
    span.set_attribute("messaging.message.id", event.id.clone());
    for (k, v) in cloudevent_attributes(event) {
        span.set_attribute(k, v);
    }
    record_ids(span);
}

/// `cloudevents.event_*` attributes of an event.
pub(crate) fn cloudevent_attributes(event: &CloudEvent) -> Vec<(&'static str, String)> {
    let mut out = vec![
        ("cloudevents.event_id", event.id.clone()),
        ("cloudevents.event_source", event.source.clone()),
        ("cloudevents.event_type", event.ty.clone()),
        ("cloudevents.event_spec_version", event.specversion.clone()),
    ];
    if let Some(s) = &event.subject {
        out.push(("cloudevents.event_subject", s.clone()));
    }
    out
}

/// Marks the current span failed with the error kind (`error.type`).
pub(crate) fn span_failed(kind: &str, message: &str) {
    if !super::active() {
        return;
    }
    let span = tracing::Span::current();
    span.set_attribute("error.type", kind.to_owned());
    span.set_status(Status::error(format!("{kind}: {message}")));
}

/// The span context a `traceparent` value names.
pub(crate) fn parse_traceparent(traceparent: &str) -> Option<SpanContext> {
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_through_an_event_without_empty_tracestate() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut e = CloudEvent::new("t", "s");
        e.traceparent = Some(tp.into());
        e.tracestate = Some(String::new());
        let cx = extract(&e).expect("valid context");
        let mut out = CloudEvent::new("t", "s");
        inject(&mut out, &cx);
        assert_eq!(out.traceparent.as_deref(), Some(tp));
        assert_eq!(out.tracestate, None);
    }

    #[test]
    fn a_span_context_prints_as_the_traceparent_it_was_read_from() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let sc = parse_traceparent(tp).expect("valid");
        assert_eq!(traceparent(&sc), tp);
        assert!(
            parse_traceparent("00-00000000000000000000000000000000-b7ad6b7169203331-01").is_none()
        );
    }

    #[test]
    fn with_traces_off_outgoing_events_keep_what_they_carry() {
        // No test of this binary installs traces.
        assert!(!crate::telemetry::active());
        let mut e = CloudEvent::new("t", "s");
        e.traceparent = Some("copied".into());
        inject_current(&mut e);
        assert_eq!(e.traceparent.as_deref(), Some("copied"));
        assert_eq!(current_traceparent(), None);
        let span = tracing::info_span!("x", trace_id = tracing::field::Empty);
        message_span_started(&span, "a/b", &e);
        assert!(crate::telemetry::job::JobTrace::of(Some(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        ))
        .is_none());
    }

    #[test]
    fn an_invalid_traceparent_is_no_parent() {
        let mut e = CloudEvent::new("t", "s");
        e.traceparent = Some("00-zz-yy-01".into());
        assert!(extract(&e).is_none());
        e.traceparent = Some(String::new());
        assert!(extract(&e).is_none());
    }
}
