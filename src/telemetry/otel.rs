//! The OTLP tracer provider: built from the standard `OTEL_*` environment,
//! flushed and shut down on exit.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};
use opentelemetry_sdk::Resource;

/// The instrumentation scope name of every span the station records.
pub(super) const SCOPE: &str = "microdcs";

/// Traces could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the OTLP span exporter (check OTEL_EXPORTER_OTLP_ENDPOINT): {0}")]
pub struct TraceError(String);

/// The installed tracer provider, if traces are on. Call
/// [`Tracing::shutdown`] before exiting so buffered spans are exported.
#[derive(Debug)]
#[must_use = "spans still buffered are lost unless shutdown() is called"]
pub struct Tracing {
    provider: Option<SdkTracerProvider>,
}

impl Tracing {
    pub(super) fn off() -> Self {
        Tracing { provider: None }
    }

    pub(super) fn on(provider: SdkTracerProvider) -> Self {
        opentelemetry::global::set_tracer_provider(provider.clone());
        Tracing {
            provider: Some(provider),
        }
    }

    /// Whether traces are recorded.
    pub fn is_on(&self) -> bool {
        self.provider.is_some()
    }

    pub(super) fn tracer(&self) -> Tracer {
        match &self.provider {
            Some(p) => p.tracer(SCOPE),
            None => SdkTracerProvider::builder().build().tracer(SCOPE),
        }
    }

    /// Exports every finished span now (tests read the exporter after it).
    pub fn flush(&self) {
        if let Some(p) = &self.provider {
            if let Err(e) = p.force_flush() {
                tracing::warn!(error = %e, "cannot flush spans");
            }
        }
    }

    /// Exports what is buffered and stops the exporter. The SDK's exporter
    /// blocks (its HTTP client is blocking), so this runs it on a blocking
    /// thread and waits for it; outside a Tokio runtime it blocks the
    /// caller. Nothing happens when traces are off.
    pub async fn shutdown(self) {
        let Some(p) = self.provider else { return };
        let done = match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::task::spawn_blocking(move || p.shutdown())
                .await
                .unwrap_or_else(|e| {
                    Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
                        e.to_string(),
                    ))
                }),
            Err(_) => p.shutdown(),
        };
        if let Err(e) = done {
            tracing::warn!(error = %e, "trace exporter did not shut down cleanly; spans may be lost");
        }
    }
}

/// The provider exporting over OTLP/HTTP (protobuf) with a batch processor.
pub(super) fn provider() -> Result<SdkTracerProvider, TraceError> {
    // With `tls` and `cloudevents`, reqwest (shared with the webhook sink)
    // is built with rustls and no provider: its client, even for http://,
    // needs the process-wide one.
    #[cfg(feature = "tls")]
    crate::tls::install_provider();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| TraceError(e.to_string()))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource())
        .build())
}

/// A provider exporting synchronously to `exporter` (tests).
#[cfg(feature = "testkit")]
pub(super) fn with_exporter(
    exporter: impl opentelemetry_sdk::trace::SpanExporter + 'static,
) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_simple_exporter(exporter)
        .with_resource(resource())
        .build()
}

/// `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` (read by the SDK's
/// default detectors); the service name defaults to `microdcs`.
fn resource() -> Resource {
    let named = std::env::var_os("OTEL_SERVICE_NAME").is_some_and(|v| !v.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    let b = Resource::builder();
    if named {
        b.build()
    } else {
        b.with_service_name("microdcs").build()
    }
}
