//! Requests we sent and whose replies we await, keyed by Correlation Data.

use crate::envelope::CloudEvent;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::oneshot;

/// Outstanding requests. A reply whose Correlation Data is not here (the
/// requester timed out, or another instance sent it) is routed like any
/// other incoming event instead.
#[derive(Default)]
pub(crate) struct Pending {
    waiters: Mutex<HashMap<Bytes, oneshot::Sender<CloudEvent>>>,
}

impl Pending {
    pub(crate) fn register(&self, key: Bytes) -> oneshot::Receiver<CloudEvent> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(key, tx);
        rx
    }

    pub(crate) fn forget(&self, key: &Bytes) {
        self.lock().remove(key);
    }

    /// Hands `event` to its waiter; gives it back when nobody waits.
    pub(crate) fn complete(&self, key: &Bytes, event: CloudEvent) -> Option<CloudEvent> {
        let waiter = self.lock().remove(key);
        match waiter {
            Some(tx) => tx.send(event).err(),
            None => Some(event),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Bytes, oneshot::Sender<CloudEvent>>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (single insert/remove), so a poisoned lock is still usable.
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }
}
