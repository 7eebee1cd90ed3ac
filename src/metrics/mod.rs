//! What the runtime measures, in two layers.
//!
//! - [`Metrics`]: plain atomic counters per transport, always on, read with
//!   [`Metrics::snapshot`] (the app logs them when it stops).
//! - The OpenTelemetry instruments: one [`SdkMeterProvider`] per process,
//!   built by [`install`] when the HTTP server (Prometheus reader, rendered
//!   by `/metrics`) or OTLP export is on. The transport, the SFC engine and
//!   the publisher count into it where things happen (labels: processor,
//!   bounded CloudEvent type, error kind, transport, recipe step: never an
//!   id); what is a fact in Redis (jobs by state, engine work and timers,
//!   publisher lag) is sampled by `sampler` for observable gauges. When
//!   nothing is installed, each counting site is one atomic load.
//!
//! The instruments and their names are listed in README.md ("Observing a
//! station"); names follow the OpenTelemetry semantic conventions where one
//! exists (`messaging.client.consumed.messages`,
//! `messaging.process.duration` in seconds), `microdcs.*` otherwise.

use crate::error::ErrorKind;
use std::collections::BTreeMap;
use std::sync::Mutex;

pub(crate) mod sampler;
pub use sampler::{LAG_COUNT_CAP, SAMPLE_INTERVAL};

/// A struct of `AtomicU64` counters (and one other field, if given) whose
/// names are `u64` fields of the plain `$snapshot`: a method per counter
/// that counts one, and `load`, which copies them all into a `$snapshot`
/// (given the value of its other field).
macro_rules! counters {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident => $snapshot:ident {
            $($field:ident),* $(,)?
        }
        $(and $extra:ident: $ty:ty => $snapshot_ty:ty)?
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        $vis struct $name {
            $($field: std::sync::atomic::AtomicU64,)*
            $($extra: $ty,)?
        }

        impl $name {
            $(
                pub(crate) fn $field(&self) {
                    self.$field.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            )*

            fn load(&self $(, $extra: $snapshot_ty)?) -> $snapshot {
                $snapshot {
                    $($field: self.$field.load(std::sync::atomic::Ordering::Relaxed),)*
                    $($extra,)?
                }
            }
        }
    };
}
// The simulator keeps its counters the same way.
#[cfg(feature = "sim")]
pub(crate) use counters;

counters! {
    /// Runtime counters.
    pub struct Metrics => MetricsSnapshot {
        received,
        processed,
        duplicates,
        dead_lettered,
        replies,
        retries,
        reconnects,
    }
    and errors: Mutex<BTreeMap<&'static str, u64>> => BTreeMap<&'static str, u64>
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Messages received.
    pub received: u64,
    /// Messages whose handler succeeded.
    pub processed: u64,
    /// Duplicates acknowledged without processing.
    pub duplicates: u64,
    /// Messages sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Replies sent (success and error).
    pub replies: u64,
    /// Retries after retryable errors.
    pub retries: u64,
    /// Broker reconnects.
    pub reconnects: u64,
    /// Errors by wire error kind.
    pub errors: BTreeMap<&'static str, u64>,
}

impl Metrics {
    pub(crate) fn error(&self, kind: ErrorKind) {
        let mut m = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(kind.as_str()).or_default() += 1;
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        self.load(errors.clone())
    }
}

// ---------------------------------------------------------------------------
// OpenTelemetry instruments
// ---------------------------------------------------------------------------

use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

/// The label of a CloudEvent type no processor handles (the `type` label
/// is bounded to the types the processors register).
pub const OTHER_TYPE: &str = "other";

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
static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();

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
        // find no reactor.
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .build()
            .map_err(|e| MetricsError::Otlp(e.to_string()))?;
        builder = builder.with_periodic_exporter(exporter);
    }
    let provider = builder.build();
    let installed = INSTALLED.get_or_init(|| Installed { provider, registry });
    let meter = installed.provider.meter("microdcs");
    INSTRUMENTS.get_or_init(|| Instruments::new(&meter));
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

/// The runtime's instruments, once [`install`]ed.
pub(crate) fn instruments() -> Option<&'static Instruments> {
    INSTRUMENTS.get()
}

/// The runtime's instruments. Labels: `microdcs.processor` (processor
/// name), `cloudevents.event_type` (bounded: a type the processor handles,
/// else [`OTHER_TYPE`]), `error.type` (wire error kind),
/// `microdcs.transport` (transport name).
pub(crate) struct Instruments {
    consumed: Counter<u64>,
    processed: Counter<u64>,
    duplicates: Counter<u64>,
    dead_lettered: Counter<u64>,
    errors: Counter<u64>,
    duration: Histogram<f64>,
    replies: Counter<u64>,
    mqtt_reconnects: Counter<u64>,
    redis_losses: Counter<u64>,
    steps_entered: Counter<u64>,
    step_duration: Histogram<f64>,
    retained: Counter<u64>,
}

/// Transports whose connection state the `microdcs.mqtt.connected` gauge
/// reports, by name; and whether Redis answered its last probe (-1 not yet
/// probed, 0 no, 1 yes).
static TRANSPORTS: Mutex<Vec<WatchedTransport>> = Mutex::new(Vec::new());

/// A transport's name and the transport, while it lives.
type WatchedTransport = (Arc<str>, Weak<dyn ConnectionState>);
static REDIS_UP: AtomicI64 = AtomicI64::new(-1);

/// Something connected or not (an MQTT transport), for the gauge.
pub(crate) trait ConnectionState: Send + Sync {
    /// Connected to its broker now.
    fn is_connected(&self) -> bool;
}

/// Reports `t`'s connection state as `microdcs.mqtt.connected{transport}`
/// while it lives.
pub(crate) fn watch_transport(name: &str, t: Weak<dyn ConnectionState>) {
    let mut v = TRANSPORTS.lock().unwrap_or_else(|p| p.into_inner());
    v.retain(|(_, w)| w.strong_count() > 0);
    v.push((Arc::from(name), t));
}

/// Records the outcome of a Redis probe (and counts a loss when it turns
/// from up to down).
pub(crate) fn redis_probed(up: bool) {
    let before = REDIS_UP.swap(i64::from(up), Ordering::Relaxed);
    if before == 1 && !up {
        if let Some(i) = instruments() {
            i.redis_losses.add(1, &[]);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Registers an observable gauge over one field of the last Redis sample,
/// labelled by scope (and job state for `jobs`).
fn sampled_gauges(meter: &Meter) {
    fn scope(s: &str) -> KeyValue {
        KeyValue::new("microdcs.scope", s.to_owned())
    }
    meter
        .u64_observable_gauge("microdcs.jobs")
        .with_unit("{job}")
        .with_description("Job orders by scope and main state (from the state sets in Redis)")
        .with_callback(|o| {
            if let Some(s) = lock(&sampler::SAMPLE).as_ref() {
                for (sc, state, n) in &s.jobs {
                    o.observe(
                        *n,
                        &[scope(sc), KeyValue::new("microdcs.job.state", *state)],
                    );
                }
            }
        })
        .build();
    macro_rules! gauge {
        ($kind:ident, $name:literal, $unit:literal, $desc:literal, $field:ident) => {
            meter
                .$kind($name)
                .with_unit($unit)
                .with_description($desc)
                .with_callback(|o| {
                    if let Some(s) = lock(&sampler::SAMPLE).as_ref() {
                        for (sc, v) in &s.$field {
                            o.observe(*v, &[scope(sc)]);
                        }
                    }
                })
                .build();
        };
    }
    gauge!(
        u64_observable_gauge,
        "microdcs.sfc.timers.pending",
        "{timer}",
        "Engine timers not yet due or not yet moved to the work stream",
        timers
    );
    gauge!(
        u64_observable_gauge,
        "microdcs.sfc.work.pending",
        "{item}",
        "Engine work items not yet acknowledged (read or not yet read)",
        work_pending
    );
    gauge!(
        f64_observable_gauge,
        "microdcs.sfc.work.lag",
        "s",
        "Age of the oldest pending engine work item (0 when none)",
        work_age
    );
    gauge!(
        u64_observable_gauge,
        "microdcs.publisher.lag",
        "{change}",
        "Job changes not yet published to the MES (counted up to LAG_COUNT_CAP)",
        publisher_lag
    );
    gauge!(
        f64_observable_gauge,
        "microdcs.publisher.lag.age",
        "s",
        "Age of the oldest job change not yet published (0 when caught up)",
        publisher_age
    );
}

fn error_labels(processor: Option<&str>, ty: &str, kind: ErrorKind) -> [KeyValue; 3] {
    [
        kv("microdcs.processor", processor.unwrap_or("none")),
        kv("cloudevents.event_type", ty),
        KeyValue::new("error.type", kind.as_str()),
    ]
}

/// Label values seen so far, shared: a label costs a lookup and a
/// reference count, not an allocation, per message. Every value comes from
/// a bounded set (names of transports, processors, handled types, recipe
/// steps); the cap only guards against a set that is larger than thought.
static LABELS: std::sync::RwLock<BTreeMap<Box<str>, opentelemetry::StringValue>> =
    std::sync::RwLock::new(BTreeMap::new());
const LABELS_CAP: usize = 10_000;

fn kv(key: &'static str, value: &str) -> KeyValue {
    let known = LABELS
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(value)
        .cloned();
    let v = known.unwrap_or_else(|| {
        let v = opentelemetry::StringValue::from(Arc::<str>::from(value));
        let mut labels = LABELS.write().unwrap_or_else(|p| p.into_inner());
        if labels.len() < LABELS_CAP {
            labels.insert(value.into(), v.clone());
        }
        v
    });
    KeyValue::new(key, opentelemetry::Value::String(v))
}

impl Instruments {
    fn new(meter: &Meter) -> Self {
        meter
            .i64_observable_gauge("microdcs.mqtt.connected")
            .with_description("1 while the transport is connected to its MQTT broker, else 0")
            .with_callback(|o| {
                let v = TRANSPORTS.lock().unwrap_or_else(|p| p.into_inner());
                for (name, t) in v.iter() {
                    if let Some(t) = t.upgrade() {
                        o.observe(
                            i64::from(t.is_connected()),
                            &[KeyValue::new("microdcs.transport", name.to_string())],
                        );
                    }
                }
            })
            .build();
        meter
            .i64_observable_gauge("microdcs.redis.connected")
            .with_description("1 while Redis answers the readiness probe's PING, else 0")
            .with_callback(|o| {
                let v = REDIS_UP.load(Ordering::Relaxed);
                if v >= 0 {
                    o.observe(v, &[]);
                }
            })
            .build();
        sampled_gauges(meter);
        Instruments {
            steps_entered: meter
                .u64_counter("microdcs.sfc.steps.entered")
                .with_unit("{step}")
                .with_description("Recipe steps entered, by step name")
                .build(),
            step_duration: meter
                .f64_histogram("microdcs.sfc.step.duration")
                .with_unit("s")
                .with_description("How long a recipe step was active, by step name")
                .with_boundaries(vec![
                    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                    600.0, 1800.0, 3600.0,
                ])
                .build(),
            retained: meter
                .u64_counter("microdcs.publisher.retained")
                .with_unit("{message}")
                .with_description(
                    "Retained topics published to the MES (state index, orders, results)",
                )
                .build(),
            consumed: meter
                .u64_counter("messaging.client.consumed.messages")
                .with_unit("{message}")
                .with_description("MQTT messages received, before any check")
                .build(),
            processed: meter
                .u64_counter("microdcs.messages.processed")
                .with_unit("{message}")
                .with_description("Messages whose handler succeeded")
                .build(),
            duplicates: meter
                .u64_counter("microdcs.messages.duplicates")
                .with_unit("{message}")
                .with_description("Duplicates acknowledged without processing")
                .build(),
            dead_lettered: meter
                .u64_counter("microdcs.messages.dead_lettered")
                .with_unit("{message}")
                .with_description("Messages sent to the dead-letter topic")
                .build(),
            errors: meter
                .u64_counter("microdcs.messages.errors")
                .with_unit("{message}")
                .with_description(
                    "Failed handling attempts (first retryable failure, or rejection)",
                )
                .build(),
            duration: meter
                .f64_histogram("messaging.process.duration")
                .with_unit("s")
                .with_description(
                    "Time from receipt to the handler's outcome (processed or duplicate)",
                )
                .with_boundaries(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .build(),
            replies: meter
                .u64_counter("microdcs.replies")
                .with_unit("{message}")
                .with_description("Replies sent (success and error)")
                .build(),
            mqtt_reconnects: meter
                .u64_counter("microdcs.mqtt.reconnects")
                .with_unit("{connection}")
                .with_description("Reconnections to the MQTT broker after a loss")
                .build(),
            redis_losses: meter
                .u64_counter("microdcs.redis.connection_losses")
                .with_unit("{event}")
                .with_description("Times Redis stopped answering the readiness probe")
                .build(),
        }
    }

    pub(crate) fn consumed(&self, transport: &str) {
        self.consumed.add(
            1,
            &[
                KeyValue::new("messaging.system", "mqtt"),
                kv("microdcs.transport", transport),
            ],
        );
    }

    pub(crate) fn processed(&self, processor: &str, ty: &str, seconds: f64) {
        let labels = [
            kv("microdcs.processor", processor),
            kv("cloudevents.event_type", ty),
        ];
        self.processed.add(1, &labels);
        self.duration.record(seconds, &labels);
    }

    pub(crate) fn duplicate(&self, processor: &str, ty: &str, seconds: f64) {
        let labels = [
            kv("microdcs.processor", processor),
            kv("cloudevents.event_type", ty),
        ];
        self.duplicates.add(1, &labels);
        self.duration.record(seconds, &labels);
    }

    pub(crate) fn error(&self, processor: Option<&str>, ty: &str, kind: ErrorKind) {
        self.errors.add(1, &error_labels(processor, ty, kind));
    }

    pub(crate) fn dead_lettered(&self, processor: Option<&str>, ty: &str, kind: ErrorKind) {
        self.dead_lettered
            .add(1, &error_labels(processor, ty, kind));
    }

    pub(crate) fn reply(&self, transport: &str) {
        self.replies.add(1, &[kv("microdcs.transport", transport)]);
    }

    pub(crate) fn step_entered(&self, step: &str) {
        self.steps_entered.add(1, &[kv("microdcs.sfc.step", step)]);
    }

    pub(crate) fn step_left(&self, step: &str, seconds: f64) {
        self.step_duration
            .record(seconds, &[kv("microdcs.sfc.step", step)]);
    }

    pub(crate) fn retained(&self) {
        self.retained.add(1, &[]);
    }

    pub(crate) fn mqtt_reconnect(&self, transport: &str) {
        self.mqtt_reconnects
            .add(1, &[kv("microdcs.transport", transport)]);
    }
}
