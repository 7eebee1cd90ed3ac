//! Singleton tasks: a Redis lock with an owner and an expiry, so that a task
//! (the MES publisher) runs on one replica at a time and moves to another
//! replica when its owner dies.
//!
//! The lock is `SET key owner NX PX ttl`, renewed by its owner every third of
//! the ttl with a compare-and-set script; an owner that cannot renew in time
//! stops the task before the lock can expire, so two owners never overlap by
//! more than the clock skew of one renewal period.

use crate::redis::scripts::{LOCK_RELEASE, LOCK_RENEW};
use crate::runtime::Shutdown;
use crate::redis::RedisConnection;
use std::future::Future;
use std::time::Duration;
use tracing::{info, warn};

/// A lock held by at most one owner.
#[derive(Clone)]
pub(crate) struct SingletonLock {
    conn: RedisConnection,
    key: String,
    owner: String,
    ttl: Duration,
}

impl std::fmt::Debug for SingletonLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingletonLock")
            .field("key", &self.key)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl SingletonLock {
    /// A lock at `key` for `owner` (an instance id), expiring `ttl` after the
    /// last renewal.
    pub(crate) fn new(
        conn: RedisConnection,
        key: impl Into<String>,
        owner: impl Into<String>,
        ttl: Duration,
    ) -> Self {
        SingletonLock {
            conn,
            key: key.into(),
            owner: owner.into(),
            ttl,
        }
    }

    /// Takes the lock if it is free or already ours (then extends it).
    ///
    /// # Errors
    /// Redis is unavailable.
    pub(crate) async fn try_acquire(&self) -> redis::RedisResult<bool> {
        let mut c = self.conn.clone();
        let r: i64 = LOCK_RENEW
            .key(&self.key)
            .arg(&self.owner)
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(&mut c)
            .await?;
        Ok(r == 1)
    }

    /// Gives the lock up if we hold it.
    ///
    /// # Errors
    /// Redis is unavailable (the lock then expires by itself).
    pub(crate) async fn release(&self) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        LOCK_RELEASE
            .key(&self.key)
            .arg(&self.owner)
            .invoke_async::<i64>(&mut c)
            .await
            .map(|_| ())
    }

    /// Runs `task` whenever this instance holds the lock, until shutdown:
    /// waits for the lock, starts the task, renews the lock while it runs,
    /// and cancels the task when the lock is lost (then waits for it again).
    /// A task that returns ends the loop.
    pub(crate) async fn run<F, Fut>(self, mut shutdown: Shutdown, mut task: F)
    where
        F: FnMut(Shutdown) -> Fut,
        Fut: Future<Output = ()>,
    {
        let period = self.ttl / 3;
        loop {
            if shutdown.is_shutting_down() {
                return;
            }
            match self.try_acquire().await {
                Ok(true) => {}
                Ok(false) => {
                    tokio::select! {
                        _ = tokio::time::sleep(period) => continue,
                        _ = shutdown.wait() => return,
                    }
                }
                Err(e) => {
                    warn!(lock = %self.key, error = %e, "singleton lock: redis unavailable");
                    tokio::select! {
                        _ = tokio::time::sleep(period) => continue,
                        _ = shutdown.wait() => return,
                    }
                }
            }
            info!(lock = %self.key, owner = %self.owner, "singleton lock acquired; starting task");
            let fut = task(shutdown.clone());
            tokio::pin!(fut);
            let mut tick = tokio::time::interval(period);
            tick.tick().await;
            let finished = loop {
                tokio::select! {
                    _ = &mut fut => break true,
                    _ = tick.tick() => {
                        match self.try_acquire().await {
                            Ok(true) => {}
                            Ok(false) => {
                                warn!(lock = %self.key, "singleton lock lost to another instance; stopping task");
                                break false;
                            }
                            Err(e) => {
                                // We cannot prove we still own it: stop before
                                // it can expire and another owner starts.
                                warn!(lock = %self.key, error = %e, "singleton lock not renewable; stopping task");
                                break false;
                            }
                        }
                    }
                }
            };
            if finished || shutdown.is_shutting_down() {
                let _ = self.release().await;
                return;
            }
        }
    }
}
