//! One trace per job, across replicas.
//!
//! When the SFC engine starts a job it records a short *job span*, a child
//! of the MES command that made the job startable, and keeps its W3C
//! `traceparent` in the execution state (`Execution::trace`, written in the
//! same compare-and-swap as the rest of the state: no extra Redis command).
//! Whichever replica later advances the job reads it back with the state
//! and records, as children of the job span:
//!
//! - a span per step activation, recorded when the step is left (its
//!   start and end are the activation's entry and exit times, so it does
//!   not matter which replica entered it), with one event per action
//!   result of that activation;
//! - a span per dispatch (the equipment command, `send <type>`, kind
//!   producer), current while the command is sent so that its
//!   `traceparent` goes out with the command;
//! - a span per change from the MES (pause, resume, stop, abort), linked
//!   to the MES command's own span;
//! - a span when the job's execution ends, with an error status when it
//!   failed.

use super::propagation::{parse_traceparent, traceparent};
use crate::envelope::CloudEvent;
use crate::sfc::exec::{Effect, Execution, Input, Status};
use crate::sfc::recipe::Recipe;
use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanKind, Status as OtelStatus, TraceContextExt, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing_opentelemetry::OpenTelemetrySpanExt;

tokio::task_local! {
    /// The `traceparent` of the MES command whose job change is being
    /// applied, for the link from the job's trace.
    static CHANGE: Option<String>;
    /// The trace of the job the engine works on in this task, once its
    /// execution state was read: what its status events carry.
    static JOB: std::cell::RefCell<Option<SpanContext>>;
}

/// Longest action result (JSON text) kept in a span event; longer ones are
/// cut, so a large result cannot bloat the export.
const RESULT_CHARS: usize = 1024;

/// A job's trace context (what `Execution::trace` holds).
#[derive(Debug, Clone)]
pub(crate) struct JobTrace(SpanContext);

impl JobTrace {
    /// The job trace a stored `traceparent` names (`None` when traces are
    /// off or it is not valid).
    pub(crate) fn of(traceparent: Option<&str>) -> Option<JobTrace> {
        if !super::active() {
            return None;
        }
        parse_traceparent(traceparent?).map(JobTrace)
    }

    fn context(&self) -> Context {
        Context::new().with_remote_span_context(self.0.clone())
    }
}

fn tracer() -> opentelemetry::global::BoxedTracer {
    opentelemetry::global::tracer(super::otel::SCOPE)
}

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn job_attributes(scope: &str, job: &str) -> Vec<KeyValue> {
    vec![
        KeyValue::new("microdcs.scope", scope.to_owned()),
        KeyValue::new("microdcs.job.id", job.to_owned()),
    ]
}

/// Runs `f` (applying a job change from the MES) with `trace`, the MES
/// command's `traceparent`, as the change to link from the job's trace.
pub(crate) async fn with_change<F: Future>(trace: Option<String>, f: F) -> F::Output {
    if !super::active() {
        return f.await;
    }
    CHANGE.scope(trace, f).await
}

/// Records the job span of a job whose execution starts now, a child of
/// `parent` (the `traceparent` kept with the job by the command that made
/// it startable) or a new trace; returns its `traceparent` to keep with
/// the execution. `None` when traces are off.
pub(crate) fn job_started(scope: &str, job: &str, parent: Option<&str>) -> Option<String> {
    if !super::active() {
        return None;
    }
    let parent_cx = parent
        .and_then(parse_traceparent)
        .map_or_else(Context::new, |sc| {
            Context::new().with_remote_span_context(sc)
        });
    let t = tracer();
    let mut span = t
        .span_builder("sfc job")
        .with_kind(SpanKind::Internal)
        .with_attributes(job_attributes(scope, job))
        .start_with_context(&t, &parent_cx);
    let sc = span.span_context().clone();
    span.end();
    sc.is_valid().then(|| traceparent(&sc))
}

/// Records what one committed evolution of a job did: the steps it left,
/// the change from the MES it applied, its end. `before` is the state it
/// started from; `after` the state written (carrying the job's trace).
pub(crate) fn evolved(
    before: Option<&Execution>,
    after: &Execution,
    input: Option<&Input>,
    effects: &[Effect],
    recipe: &Recipe,
) {
    let Some(job) = JobTrace::of(after.trace()) else {
        return;
    };
    let t = tracer();
    let cx = job.context();
    let (scope, id) = (after.scope(), after.job());
    let change = match input {
        Some(Input::Pause) => Some("paused"),
        Some(Input::Resume) => Some("resumed"),
        Some(Input::Stop) => Some("stopped"),
        Some(Input::Abort) => Some("aborted"),
        _ => None,
    };
    if let Some(change) = change {
        let mut links = Vec::new();
        if let Some(sc) = CHANGE
            .try_with(|c| c.as_deref().and_then(parse_traceparent))
            .ok()
            .flatten()
        {
            links.push(Link::new(
                sc,
                vec![KeyValue::new("microdcs.link", "mes-command")],
                0,
            ));
        }
        let mut attrs = job_attributes(scope, id);
        attrs.push(KeyValue::new("microdcs.job.change", change));
        t.span_builder(format!("sfc job {change}"))
            .with_attributes(attrs)
            .with_links(links)
            .start_with_context(&t, &cx)
            .end();
    }
    let mut left = Vec::new();
    for e in effects {
        if let Effect::StepLeft { step, activation } = e {
            left.push((step.as_str(), *activation));
        }
    }
    let ended = after.is_finished() && before.is_none_or(|b| !b.is_finished());
    if ended {
        // Steps still active when the job ends end with it.
        for (step, run) in after.active_steps() {
            if !left.iter().any(|(s, a)| s == step && *a == run.activation) {
                left.push((step.as_str(), run.activation));
            }
        }
    }
    for (step, activation) in left {
        step_span(&t, &cx, after, recipe, step, activation);
    }
    if ended {
        let end = after.ended_ms().unwrap_or(after.started_ms());
        let (status, outcome) = match after.status() {
            Status::Completed => (OtelStatus::Ok, "completed"),
            Status::Failed(r) => (OtelStatus::error(format!("sfc.failed: {r}")), "failed"),
            Status::Stopped => (OtelStatus::Unset, "stopped"),
            Status::Aborted => (OtelStatus::Unset, "aborted"),
            Status::Running => (OtelStatus::Unset, "running"),
        };
        let mut attrs = job_attributes(scope, id);
        attrs.push(KeyValue::new("microdcs.job.outcome", outcome));
        if matches!(after.status(), Status::Failed(_)) {
            attrs.push(KeyValue::new("error.type", "sfc.failed"));
        }
        let mut span = t
            .span_builder("sfc job ended")
            .with_start_time(at(end))
            .with_attributes(attrs)
            .start_with_context(&t, &cx);
        span.set_status(status);
        span.end_with_timestamp(at(end));
    }
}

/// The span of one step activation, from its entry to its exit, with an
/// event per action result of the activation.
fn step_span(
    t: &opentelemetry::global::BoxedTracer,
    cx: &Context,
    e: &Execution,
    recipe: &Recipe,
    step: &str,
    activation: u32,
) {
    let record = e
        .history
        .iter()
        .rev()
        .find(|r| r.step == step && r.activation == activation);
    let entered = record.map_or(e.started_ms(), |r| r.entered_ms);
    let left = record
        .and_then(|r| r.left_ms)
        .or(e.ended_ms())
        .unwrap_or(entered);
    let mut attrs = job_attributes(e.scope(), e.job());
    attrs.push(KeyValue::new("microdcs.sfc.step", step.to_owned()));
    attrs.push(KeyValue::new(
        "microdcs.sfc.step.activation",
        i64::from(activation),
    ));
    let mut span = t
        .span_builder(format!("sfc step {step}"))
        .with_start_time(at(entered))
        .with_attributes(attrs)
        .start_with_context(t, cx);
    let mut failed = None;
    for a in recipe.actions.iter().filter(|a| a.step == step) {
        let Some(run) = e.action_run(&a.name).filter(|r| r.activation == activation) else {
            continue;
        };
        let mut ev = vec![
            KeyValue::new("microdcs.sfc.action", a.name.clone()),
            KeyValue::new("microdcs.sfc.action.state", run.state.name()),
            KeyValue::new("microdcs.sfc.action.attempts", i64::from(run.attempt)),
        ];
        if let Some(r) = e.results().get(&a.name) {
            let mut text = r.to_string();
            if text.len() > RESULT_CHARS {
                let mut cut = RESULT_CHARS;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
            }
            ev.push(KeyValue::new("microdcs.sfc.action.result", text));
        }
        if run.state == crate::sfc::exec::ActionState::Failed {
            failed = Some(a.name.clone());
        }
        span.add_event("sfc action result", ev);
    }
    if let Some(action) = failed {
        span.set_attribute(KeyValue::new("error.type", "sfc.action_failed"));
        span.set_status(OtelStatus::error(format!("action {action} failed")));
    }
    span.end_with_timestamp(at(left.max(entered)));
}

/// The span of sending one equipment command of a job (`job` is its
/// trace). The command is sent inside it, so it carries the span's
/// `traceparent`. A disabled span when traces are off.
pub(crate) fn dispatch_span(
    job: Option<&str>,
    scope: &str,
    job_id: &str,
    action: &str,
    type_id: &str,
    command_id: &str,
    attempt: u32,
) -> tracing::Span {
    if !super::active() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "dispatch",
        otel.name = format!("send {type_id}"),
        otel.kind = "producer",
        job = job_id,
        scope,
        action,
        command_id,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    if let Some(j) = JobTrace::of(job) {
        let _ = span.set_parent(j.context());
    }
    span.set_attribute("messaging.system", "mqtt");
    span.set_attribute("messaging.operation.type", "send");
    span.set_attribute("messaging.operation.name", "send");
    span.set_attribute("messaging.message.id", command_id.to_owned());
    span.set_attribute("cloudevents.event_id", command_id.to_owned());
    span.set_attribute("cloudevents.event_type", type_id.to_owned());
    span.set_attribute("microdcs.sfc.action", action.to_owned());
    span.set_attribute("microdcs.sfc.action.attempt", i64::from(attempt));
    super::record_ids(&span);
    span
}

/// Puts the job's trace context (`job`, its `traceparent`) into an event
/// the engine sends for the job outside any message (progress events), if
/// the event carries none yet.
pub(crate) fn inject_job(event: &mut CloudEvent, job: Option<&str>) {
    if event.traceparent.is_some() {
        return;
    }
    if let Some(j) = JobTrace::of(job) {
        super::propagation::inject(event, &j.context());
    }
}

/// The target of [`job_log_span`]: its spans carry log fields only and are
/// never exported (the OpenTelemetry layer turns this target off).
pub(super) const JOB_LOG_TARGET: &str = "microdcs_job_log";

/// A span for the log lines of the engine's work on job `job` of `scope`
/// (a job change or work item), so that they carry the job's `trace_id`
/// and `span_id` once [`record_job_ids`] knows them. Not exported.
fn job_log_span(scope: &str, job: &str) -> tracing::Span {
    tracing::info_span!(
        target: "microdcs_job_log",
        "job",
        scope,
        job,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    )
}

/// Inside [`in_job`]: keeps the job's trace (`job`, its `traceparent`) for
/// the task's events and records its ids in the current span's `trace_id`
/// and `span_id` fields.
pub(crate) fn record_job_ids(job: Option<&str>) {
    let Some(j) = JobTrace::of(job) else { return };
    // Only in the engine's own work on the job (`in_job`): a message span
    // (an equipment answer applied to the job) keeps its own ids.
    if JOB
        .try_with(|c| *c.borrow_mut() = Some(j.0.clone()))
        .is_err()
    {
        return;
    }
    let span = tracing::Span::current();
    span.record("trace_id", tracing::field::display(j.0.trace_id()));
    span.record("span_id", tracing::field::display(j.0.span_id()));
}

/// Runs `f`, the engine's work on job `job` of `scope`, in a log-only span
/// (see [`job_log_span`]) and with room for the job's trace, which events
/// sent outside any span then carry ([`job_context`]). Just `f` when
/// traces are off.
pub(crate) async fn in_job<F: Future>(scope: &str, job: &str, f: F) -> F::Output {
    if !super::active() {
        return f.await;
    }
    let span = job_log_span(scope, job);
    JOB.scope(
        std::cell::RefCell::new(None),
        tracing::Instrument::instrument(f, span),
    )
    .await
}

/// The trace of the job this task works on, if known (see [`in_job`]).
pub(super) fn job_context() -> Option<Context> {
    JOB.try_with(|c| c.borrow().clone())
        .ok()
        .flatten()
        .map(|sc| Context::new().with_remote_span_context(sc))
}
