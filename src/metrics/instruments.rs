//! The runtime's OpenTelemetry instruments and what their observable
//! gauges read (transport connection state, the Redis probe, the Redis
//! sample of [`sampler`](super::sampler)).

use super::{lock, sampler};
use crate::error::ErrorKind;
use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::KeyValue;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// The label of a CloudEvent type no processor handles (the `type` label
/// is bounded to the types the processors register).
pub const OTHER_TYPE: &str = "other";

static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();

/// Creates the instruments on `meter` (once).
pub(super) fn init(meter: &Meter) {
    INSTRUMENTS.get_or_init(|| Instruments::new(meter));
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
    dead_letters_unstored: Counter<u64>,
    errors: Counter<u64>,
    duration: Histogram<f64>,
    replies: Counter<u64>,
    mqtt_reconnects: Counter<u64>,
    redis_losses: Counter<u64>,
    steps_entered: Counter<u64>,
    step_duration: Histogram<f64>,
    retained: Counter<u64>,
    webhook_deliveries: Counter<u64>,
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
        "Job changes not yet in a published state index (counted up to 100)",
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
            webhook_deliveries: meter
                .u64_counter("microdcs.webhook.deliveries")
                .with_unit("{request}")
                .with_description(
                    "Webhook delivery attempts by outcome: delivered, failed_attempt (retried), dead_lettered (given up)",
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
            dead_letters_unstored: meter
                .u64_counter("microdcs.dead_letters.unstored")
                .with_unit("{message}")
                .with_description(
                    "Dead letters that could not be kept in Redis (the dead-letter topic got them)",
                )
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

    pub(crate) fn dead_letter_unstored(&self, processor: Option<&str>) {
        self.dead_letters_unstored.add(
            1,
            &[kv(
                "microdcs.processor",
                processor.unwrap_or(crate::dlq::NO_PROCESSOR),
            )],
        );
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

    /// Counts one webhook delivery outcome (`delivered`,
    /// `failed_attempt`, `dead_lettered`).
    #[cfg_attr(not(feature = "cloudevents"), allow(dead_code))]
    pub(crate) fn webhook_delivery(&self, outcome: &'static str) {
        self.webhook_deliveries
            .add(1, &[kv("microdcs.webhook.outcome", outcome)]);
    }

    pub(crate) fn mqtt_reconnect(&self, transport: &str) {
        self.mqtt_reconnects
            .add(1, &[kv("microdcs.transport", transport)]);
    }
}
