//! The process's one meter provider: its readers (Prometheus for
//! `/metrics`, OTLP/HTTP) and its resource.

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use std::sync::OnceLock;

/// Why the meter provider could not be built.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The Prometheus reader could not be created.
    #[error("prometheus exporter: {0}")]
    Prometheus(String),
    /// The OTLP metric exporter could not be created (e.g. an unusable
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`).
    #[error("otlp metric exporter: {0}")]
    Otlp(String),
}

/// The process's meter provider and, when asked for, the Prometheus
/// registry `/metrics` renders.
#[derive(Debug)]
pub struct Installed {
    provider: SdkMeterProvider,
    registry: Option<prometheus::Registry>,
}

impl Installed {
    /// The meter provider (to add instruments of your own).
    pub fn provider(&self) -> &SdkMeterProvider {
        &self.provider
    }

    /// Everything measured so far as Prometheus text exposition (format
    /// 0.0.4), or `None` when no Prometheus reader was installed.
    pub fn prometheus_text(&self) -> Option<String> {
        use prometheus::Encoder as _;
        let registry = self.registry.as_ref()?;
        let mut out = Vec::new();
        if let Err(e) = prometheus::TextEncoder::new().encode(&registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode the metrics as Prometheus text");
        }
        Some(String::from_utf8_lossy(&out).into_owned())
    }
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// Builds the process's one [`SdkMeterProvider`]: a Prometheus reader when
/// `prometheus` (the HTTP server's `/metrics`), an OTLP/HTTP periodic
/// reader when `otlp` (configured by the standard `OTEL_EXPORTER_OTLP_*`
/// and `OTEL_METRIC_EXPORT_INTERVAL` environment), and the instruments of
/// the runtime on it. With neither, nothing is installed and counting costs
/// one atomic load per message.
///
/// The first call that installs something wins; later calls return what
/// it installed (a process has one provider).
///
/// # Errors
/// An exporter cannot be created.
pub fn install(prometheus: bool, otlp: bool) -> Result<Option<&'static Installed>, MetricsError> {
    if let Some(i) = INSTALLED.get() {
        return Ok(Some(i));
    }
    if !prometheus && !otlp {
        return Ok(None);
    }
    let mut builder = SdkMeterProvider::builder().with_resource(resource());
    let mut registry = None;
    if prometheus {
        let r = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(r.clone())
            .without_target_info()
            .build()
            .map_err(|e| MetricsError::Prometheus(e.to_string()))?;
        builder = builder.with_reader(exporter);
        registry = Some(r);
    }
    if otlp {
        // HTTP/protobuf with the blocking client: the periodic reader
        // exports from a thread of its own, where the async client would
        // find no reactor. reqwest (rustls without a provider of its own
        // under `tls`) needs the process-wide one.
        #[cfg(feature = "tls")]
        crate::tls::install_provider();
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .build()
            .map_err(|e| MetricsError::Otlp(e.to_string()))?;
        builder = builder.with_periodic_exporter(exporter);
    }
    let provider = builder.build();
    let installed = INSTALLED.get_or_init(|| Installed { provider, registry });
    let meter = installed.provider.meter("microdcs");
    super::instruments::init(&meter);
    Ok(Some(installed))
}

/// The resource of the standard environment (`OTEL_SERVICE_NAME`,
/// `OTEL_RESOURCE_ATTRIBUTES`), named `microdcs` when it names no service.
fn resource() -> opentelemetry_sdk::Resource {
    let r = opentelemetry_sdk::Resource::builder().build();
    let named = r
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|v| !v.as_str().starts_with("unknown_service"));
    if named {
        r
    } else {
        opentelemetry_sdk::Resource::builder()
            .with_service_name("microdcs")
            .build()
    }
}

/// What [`install`] installed, if anything.
pub fn installed() -> Option<&'static Installed> {
    INSTALLED.get()
}

/// Flushes and stops the provider (the OTLP reader exports what is left).
/// Blocks: call it from `spawn_blocking` in async code.
pub fn shutdown() {
    if let Some(i) = INSTALLED.get() {
        if let Err(e) = i.provider.shutdown() {
            tracing::debug!(error = %e, "meter provider shutdown");
        }
    }
}
