//! Counters of what the runtime did, per transport.
//!
//! Kept as plain atomics so they cost nothing on the hot path; read them with
//! [`Metrics::snapshot`] (the app logs a snapshot at shutdown).

use crate::error::ErrorKind;
use std::collections::BTreeMap;
use std::sync::Mutex;

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
