//! Exactly-once effects per (`source`, `id`) on top of at-least-once MQTT.
//!
//! A message is *claimed* before its handler runs and marked *done* only
//! after the handler succeeded and its replies were queued. A failed attempt
//! releases the claim, so the message is never marked as seen without being
//! processed (MicroDCS marks before processing). Duplicates of a done
//! message are acknowledged without running the handler (MicroDCS never
//! acknowledges them, so the broker keeps resending).

use redis::aio::ConnectionManager;
use redis::Script;
use std::sync::LazyLock;
use std::time::Duration;

static CLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("claim.lua")));
static EXTEND: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("extend.lua")));
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("release.lua")));

/// The answer to a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This delivery may process the message.
    Claimed,
    /// The message was processed before: acknowledge and skip.
    Duplicate,
    /// Another delivery of the same message is being processed: wait and ask again.
    Busy,
}

/// The Redis-backed dedupe store.
#[derive(Clone)]
pub struct Dedupe {
    conn: ConnectionManager,
    prefix: String,
    ttl: Duration,
    lease: Duration,
}

impl Dedupe {
    /// A store under `{prefix}:dedupe:`, remembering processed messages for
    /// `ttl` (the dedupe window) and blocking a crashed claimer's message for
    /// at most `lease`.
    pub fn new(conn: ConnectionManager, prefix: &str, ttl: Duration, lease: Duration) -> Self {
        Dedupe {
            conn,
            prefix: prefix.to_owned(),
            ttl,
            lease,
        }
    }

    /// The key of a message: `{prefix}:dedupe:{len(source)}:{source}:{id}`.
    /// The length prefix keeps `("a:b","c")` and `("a","b:c")` apart.
    pub fn key(&self, source: &str, id: &str) -> String {
        format!("{}:dedupe:{}:{source}:{id}", self.prefix, source.len())
    }

    /// Claims a message for the delivery identified by `token`.
    ///
    /// # Errors
    /// Redis is unreachable or answered unexpectedly.
    pub async fn claim(&self, source: &str, id: &str, token: &str) -> redis::RedisResult<Claim> {
        let mut c = self.conn.clone();
        let lease = self.lease.as_millis().max(1) as u64;
        let r: String = CLAIM
            .key(self.key(source, id))
            .arg(token)
            .arg(lease)
            .invoke_async(&mut c)
            .await?;
        Ok(match r.as_str() {
            "claimed" => Claim::Claimed,
            "duplicate" => Claim::Duplicate,
            _ => Claim::Busy,
        })
    }

    /// Marks the message as processed for the dedupe window.
    ///
    /// # Errors
    /// Redis is unreachable.
    pub async fn commit(&self, source: &str, id: &str) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        let ttl = self.ttl.as_secs().max(1);
        redis::cmd("SET")
            .arg(self.key(source, id))
            .arg("done")
            .arg("EX")
            .arg(ttl)
            .query_async::<()>(&mut c)
            .await
    }

    /// The claim lease.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Extends this delivery's claim by one lease (called periodically while
    /// the handler runs).
    ///
    /// # Errors
    /// Redis is unreachable.
    pub async fn extend(&self, source: &str, id: &str, token: &str) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        let lease = self.lease.as_millis().max(1) as u64;
        EXTEND
            .key(self.key(source, id))
            .arg(token)
            .arg(lease)
            .invoke_async::<i64>(&mut c)
            .await
            .map(|_| ())
    }

    /// Releases this delivery's claim after a failed attempt.
    ///
    /// # Errors
    /// Redis is unreachable (the claim then expires after the lease).
    pub async fn release(&self, source: &str, id: &str, token: &str) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        RELEASE
            .key(self.key(source, id))
            .arg(token)
            .invoke_async::<i64>(&mut c)
            .await
            .map(|_| ())
    }
}
