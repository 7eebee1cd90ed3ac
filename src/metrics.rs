//! Counters of what the runtime did, per transport.
//!
//! Kept as plain atomics so they cost nothing on the hot path; read them with
//! [`Metrics::snapshot`] (the app logs a snapshot at shutdown).

use crate::error::ErrorKind;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Runtime counters.
#[derive(Debug, Default)]
pub struct Metrics {
    received: AtomicU64,
    processed: AtomicU64,
    duplicates: AtomicU64,
    dead_lettered: AtomicU64,
    replies: AtomicU64,
    retries: AtomicU64,
    reconnects: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
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

macro_rules! counter {
    ($($name:ident),*) => {
        impl Metrics {
            $(
                pub(crate) fn $name(&self) {
                    self.$name.fetch_add(1, Ordering::Relaxed);
                }
            )*
        }
    };
}

counter!(
    received,
    processed,
    duplicates,
    dead_lettered,
    replies,
    retries,
    reconnects
);

impl Metrics {
    pub(crate) fn error(&self, kind: ErrorKind) {
        let mut m = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(kind.as_str()).or_default() += 1;
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            received: l(&self.received),
            processed: l(&self.processed),
            duplicates: l(&self.duplicates),
            dead_lettered: l(&self.dead_lettered),
            replies: l(&self.replies),
            retries: l(&self.retries),
            reconnects: l(&self.reconnects),
            errors: self
                .errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}
