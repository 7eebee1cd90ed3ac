//! Graceful shutdown: one [`ShutdownHandle`] starts it, every background
//! task holds a [`Shutdown`] and finishes its work when it fires.

use std::sync::Arc;
use tokio::sync::watch;

/// A shutdown signal handed to background tasks. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// Resolves when the application is shutting down.
    pub async fn wait(&mut self) {
        let _ = self.rx.wait_for(|s| *s).await;
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        *self.rx.borrow()
    }
}

/// Triggers shutdown of a running [`App`](crate::App) (as SIGTERM would).
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for ShutdownHandle {
    fn default() -> Self {
        ShutdownHandle::new()
    }
}

impl ShutdownHandle {
    /// A handle whose shutdown has not begun.
    pub fn new() -> Self {
        ShutdownHandle {
            tx: Arc::new(watch::channel(false).0),
        }
    }

    /// Starts the graceful shutdown. Idempotent.
    pub fn shutdown(&self) {
        self.tx.send_replace(true);
    }

    /// A signal for one task, firing when [`ShutdownHandle::shutdown`] is
    /// called (or already fired if it was).
    pub fn signal(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_signal_taken_before_or_after_shutdown_fires() {
        let handle = ShutdownHandle::new();
        let mut before = handle.signal();
        assert!(!before.is_shutting_down());
        handle.shutdown();
        before.wait().await;
        let mut after = handle.signal();
        assert!(after.is_shutting_down());
        after.wait().await;
    }
}
