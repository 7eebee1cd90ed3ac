//! Exactly-once effects per (`source`, `id`) on top of at-least-once MQTT.
//!
//! A message is *claimed* before its handler runs and marked *done* only
//! after the handler succeeded and its replies were queued. A failed attempt
//! releases the claim, so the message is never marked as seen without being
//! processed (MicroDCS marks before processing). Duplicates of a done
//! message are acknowledged without running the handler (MicroDCS never
//! acknowledges them, so the broker keeps resending), and answered with the
//! reply the first delivery got, kept with the done marker for the dedupe
//! window: an MES that re-sends because the first reply was lost gets its
//! answer (wire contract §1, Deduplication).
//!
//! The transport uses it as a layer around the handler call,
//! [`Dedupe::guard`]: claim, run while keeping the claim alive, commit or
//! release — answering [`Guarded::Duplicate`] or [`Guarded::Busy`] without
//! running the handler.

mod layer;

pub(crate) use layer::guarded;
pub(crate) use layer::{Delivery, Guarded};

use crate::redis::scripts::{DEDUPE_CLAIM, DEDUPE_EXTEND, DEDUPE_RELEASE};
use crate::redis::Keys;
use crate::redis::RedisConnection;
use std::time::Duration;

/// The reply a processed message got, kept to answer its duplicates.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct StoredReply {
    /// The reply's `id`.
    pub id: String,
    /// Its `dataschema`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataschema: Option<String>,
    /// Its `datacontenttype`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<String>,
    /// Its payload, standard base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claim {
    /// This delivery may process the message.
    Claimed,
    /// The message was processed before: acknowledge, skip, and answer with
    /// the stored reply if there is one.
    Duplicate(Option<StoredReply>),
    /// Another delivery of the same message is being processed: wait and ask again.
    Busy,
}

/// The Redis-backed dedupe store.
#[derive(Clone)]
pub(crate) struct Dedupe {
    conn: RedisConnection,
    keys: Keys,
    ttl: Duration,
    lease: Duration,
}

impl Dedupe {
    /// A store under `{prefix}:dedupe:`, remembering processed messages for
    /// `ttl` (the dedupe window) and blocking a crashed claimer's message for
    /// at most `lease`.
    pub(crate) fn new(
        conn: RedisConnection,
        prefix: &str,
        ttl: Duration,
        lease: Duration,
    ) -> Self {
        Dedupe {
            conn,
            keys: Keys::new(prefix),
            ttl,
            lease,
        }
    }

    /// The key of a message: `{prefix}:dedupe:{len(source)}:{source}:{id}`.
    /// The length prefix keeps `("a:b","c")` and `("a","b:c")` apart.
    pub(crate) fn key(&self, source: &str, id: &str) -> String {
        self.keys.dedupe(source, id)
    }

    /// Claims a message for the delivery identified by `token`.
    ///
    /// # Errors
    /// Redis is unreachable or answered unexpectedly.
    pub(crate) async fn claim(
        &self,
        source: &str,
        id: &str,
        token: &str,
    ) -> redis::RedisResult<Claim> {
        let mut c = self.conn.clone();
        let lease = self.lease.as_millis().max(1) as u64;
        let r: Vec<String> = DEDUPE_CLAIM
            .key(self.key(source, id))
            .arg(token)
            .arg(lease)
            .invoke_async(&mut c)
            .await?;
        Ok(match r.first().map(String::as_str) {
            Some("claimed") => Claim::Claimed,
            Some("duplicate") => Claim::Duplicate(
                // A stored reply that does not parse (written by another
                // version) still marks a duplicate; it just is not replayed.
                r.get(1)
                    .filter(|s| !s.is_empty())
                    .and_then(|s| serde_json::from_str(s).ok()),
            ),
            _ => Claim::Busy,
        })
    }

    /// Marks the message as processed for the dedupe window, keeping the
    /// reply it got (if any) to answer duplicates.
    ///
    /// # Errors
    /// Redis is unreachable.
    pub(crate) async fn commit(
        &self,
        source: &str,
        id: &str,
        reply: Option<&StoredReply>,
    ) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        let ttl = self.ttl.as_secs().max(1);
        let value = match reply.and_then(|r| serde_json::to_string(r).ok()) {
            Some(json) => format!("done:{json}"),
            None => "done".to_owned(),
        };
        redis::cmd("SET")
            .arg(self.key(source, id))
            .arg(value)
            .arg("EX")
            .arg(ttl)
            .query_async::<()>(&mut c)
            .await
    }

    /// The claim lease.
    pub(crate) fn lease(&self) -> Duration {
        self.lease
    }

    /// Extends this delivery's claim by one lease (called periodically while
    /// the handler runs).
    ///
    /// # Errors
    /// Redis is unreachable.
    pub(crate) async fn extend(
        &self,
        source: &str,
        id: &str,
        token: &str,
    ) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        let lease = self.lease.as_millis().max(1) as u64;
        DEDUPE_EXTEND
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
    pub(crate) async fn release(
        &self,
        source: &str,
        id: &str,
        token: &str,
    ) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        DEDUPE_RELEASE
            .key(self.key(source, id))
            .arg(token)
            .invoke_async::<i64>(&mut c)
            .await
            .map(|_| ())
    }
}
