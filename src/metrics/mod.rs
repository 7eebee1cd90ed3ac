//! What the runtime measures, in two layers.
//!
//! - [`Metrics`]: plain atomic counters per transport, always on, read with
//!   [`Metrics::snapshot`] (the app logs them when it stops).
//! - The OpenTelemetry instruments (`instruments`): one meter provider per
//!   process (`provider`), built by [`install`] when the HTTP server
//!   (Prometheus reader, rendered by `/metrics`) or OTLP export is on. The
//!   transport, the SFC engine and
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

mod instruments;
mod provider;
pub(crate) mod sampler;

pub use instruments::OTHER_TYPE;
pub(crate) use instruments::{
    instruments, redis_probed, watch_transport, ConnectionState, Instruments,
};
pub use provider::{install, installed, shutdown, Installed, MetricsError};
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
        dead_letters_unstored,
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
    /// Dead letters that could not be kept in Redis (`crate::dlq`; the
    /// dead-letter topic still got them).
    pub dead_letters_unstored: u64,
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
    /// A message `ty` handled by `processor` in `seconds` since it arrived:
    /// counted here and in the OpenTelemetry instruments (when installed).
    pub(crate) fn record_processed(&self, processor: &str, ty: &str, seconds: f64) {
        self.processed();
        if let Some(i) = instruments() {
            i.processed(processor, ty, seconds);
        }
    }

    /// A duplicate answered without processing, counted as
    /// [`record_processed`](Self::record_processed) counts.
    pub(crate) fn record_duplicate(&self, processor: &str, ty: &str, seconds: f64) {
        self.duplicates();
        if let Some(i) = instruments() {
            i.duplicate(processor, ty, seconds);
        }
    }

    /// A failure of `kind` while `processor` handled `ty`, counted here
    /// and in the instruments.
    pub(crate) fn record_error(&self, processor: &str, ty: &str, kind: ErrorKind) {
        self.error(kind);
        if let Some(i) = instruments() {
            i.error(Some(processor), ty, kind);
        }
    }

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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
