//! Structured logging and OpenTelemetry traces.
//!
//! Logging is always on ([`init_logging`]). Traces are on only when the
//! configuration says so (`[telemetry] enabled`,
//! `APP_PROCESSING_OTEL_INSTRUMENTATION_ENABLED`): then [`init`] installs an
//! OTLP tracer provider, configured by the standard `OTEL_*` environment,
//! and a `tracing-opentelemetry` layer, so the `tracing` spans the station
//! opens (one per message, one per job step and dispatch) are exported.
//! When traces are off there is no OpenTelemetry layer and every hook in
//! this module returns after one relaxed atomic load.
//!
//! # Layout
//!
//! - this module: the subscriber (log format, filters, the optional layer);
//! - `otel`: the tracer provider and its shutdown;
//! - `propagation`: W3C trace context in CloudEvent attributes, message
//!   spans and their attributes (messaging semantic conventions);
//! - `job`: one trace per job (the trace context kept in the execution
//!   state, step and dispatch spans).

mod job;
mod otel;
mod propagation;

pub(crate) use job::{
    dispatch_span, evolved, in_job, inject_job, job_started, record_job_ids, with_change,
};
pub use otel::{TraceError, Tracing};
pub(crate) use propagation::{
    current_traceparent, inject_current, message_span_started, record_ids, span_failed,
};

use std::ffi::OsStr;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Whether an OpenTelemetry layer is installed in this process.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Whether traces are recorded in this process: the hooks of the message
/// path and the SFC engine do nothing when this is `false`.
pub fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines, coloured when written to a terminal.
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

/// Installs the global subscriber, writing to standard output. `filter` uses
/// `RUST_LOG` syntax. Calling it twice is harmless (the second call does
/// nothing). No traces: see [`init`].
///
/// Text lines are coloured only when standard output is a terminal and
/// `NO_COLOR` is unset or empty (<https://no-color.org>): logs redirected to
/// a file or a pipe carry no escape codes.
pub fn init_logging(format: LogFormat, filter: &str) {
    install(format, filter, None);
}

/// Installs the global subscriber as [`init_logging`] does and, when
/// `traces` is true, an OTLP tracer provider with its
/// `tracing-opentelemetry` layer. The exporter is configured by the
/// standard environment: `OTEL_EXPORTER_OTLP_ENDPOINT` (or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; default `http://localhost:4318`,
/// OTLP over HTTP with protobuf), `OTEL_SERVICE_NAME`,
/// `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and
/// `OTEL_TRACES_SAMPLER_ARG`, `OTEL_BSP_*` for the batch processor.
///
/// Keep the returned [`Tracing`] and call [`Tracing::shutdown`] before the
/// process exits, so buffered spans are sent.
///
/// # Errors
/// The exporter cannot be built (for example an invalid endpoint URL).
/// Logging is installed anyway, without traces.
pub fn init(format: LogFormat, filter: &str, traces: bool) -> Result<Tracing, TraceError> {
    if !traces {
        install(format, filter, None);
        return Ok(Tracing::off());
    }
    match otel::provider() {
        Ok(provider) => {
            let tracing = Tracing::on(provider);
            install(format, filter, Some(tracing.tracer()));
            Ok(tracing)
        }
        Err(e) => {
            install(format, filter, None);
            Err(e)
        }
    }
}

/// Installs the process-wide subscriber with the in-memory exporter of the
/// tests, and returns the exporter to read finished spans from. Logs go to
/// the test's output (captured) at `filter`.
#[cfg(feature = "testkit")]
pub fn init_for_tests(filter: &str) -> (Tracing, opentelemetry_sdk::trace::InMemorySpanExporter) {
    let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
    let provider = otel::with_exporter(exporter.clone());
    let tracing = Tracing::on(provider);
    install(LogFormat::Json, filter, Some(tracing.tracer()));
    (tracing, exporter)
}

fn install(format: LogFormat, filter: &str, tracer: Option<opentelemetry_sdk::trace::Tracer>) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = colour(
        std::io::stdout().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    // Logs and traces are filtered apart: `[log] level = "warn"` must not
    // turn the station's info-level spans off for traces, and the
    // exporter's own HTTP client must never be traced (it would trace its
    // own exports).
    let (json, text) = match format {
        LogFormat::Json => (
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_target(false)
                    .with_filter(filter),
            ),
            None,
        ),
        LogFormat::Text => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_ansi(ansi)
                    .with_filter(filter),
            ),
        ),
    };
    let active = tracer.is_some();
    let otel = tracer.map(|t| {
        tracing_opentelemetry::layer().with_tracer(t).with_filter(
            Targets::new()
                .with_target("microdcs", LevelFilter::INFO)
                .with_target(job::JOB_LOG_TARGET, LevelFilter::OFF),
        )
    });
    let installed = tracing_subscriber::registry()
        .with(otel)
        .with(json)
        .with(text)
        .try_init()
        .is_ok();
    if installed && active {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        ACTIVE.store(true, Ordering::Relaxed);
    }
}

/// Whether to colour output: only on a terminal, and not when `NO_COLOR`
/// holds a non-empty value.
fn colour(is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    is_terminal && no_color.is_none_or(OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use super::colour;
    use std::ffi::OsStr;

    #[test]
    fn logs_are_coloured_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))));
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None));
        assert!(!colour(false, Some(OsStr::new(""))));
    }
}
