//! Dedupe as a layer around a handler call, in the spirit of axum's
//! `middleware::from_fn`: the caller passes the work, the layer claims the
//! message before it, keeps the claim alive while it runs, and commits or
//! releases after it. The transport's inbound loop knows nothing of claims.

use super::{Claim, Dedupe, StoredReply};
use crate::error::HandlerError;
use std::future::Future;
use tracing::warn;

/// What a message's attempt came to once through the dedupe layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Guarded {
    /// The work ran and succeeded (and the message is marked done).
    Done,
    /// The message was processed before; the work did not run. Carries the
    /// reply its first delivery got, if it kept one.
    Duplicate(Option<StoredReply>),
    /// Another delivery of the same message is being processed right now;
    /// the work did not run. Wait and ask again.
    Busy,
}

/// The identity of one delivery of one message: its (`source`, `id`) and a
/// token unique to this delivery, which owns the claim.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Delivery<'a> {
    /// The message's `source`.
    pub source: &'a str,
    /// The message's `id`.
    pub id: &'a str,
    /// This delivery's claim token.
    pub token: &'a str,
}

impl Dedupe {
    /// Runs `work` at most once per (`source`, `id`) across deliveries and
    /// replicas: claims the message, runs `work` while extending the claim
    /// every third of a lease, then marks the message done with the reply
    /// `work` returned (kept to answer duplicates), or releases the claim
    /// when `work` failed, so a failed attempt is never taken for a
    /// processed message.
    ///
    /// # Errors
    /// The error of `work`, or a Redis failure while claiming or
    /// committing (retryable when Redis is unreachable).
    pub(crate) async fn guard<F, Fut>(
        &self,
        delivery: Delivery<'_>,
        work: F,
    ) -> Result<Guarded, HandlerError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<StoredReply>, HandlerError>>,
    {
        let Delivery { source, id, token } = delivery;
        match self.claim(source, id, token).await? {
            Claim::Claimed => {}
            Claim::Duplicate(stored) => return Ok(Guarded::Duplicate(stored)),
            Claim::Busy => return Ok(Guarded::Busy),
        }
        // Keep the claim alive while the work runs: a claim that expired
        // mid-way would let another delivery run the same message.
        let keepalive = async {
            let mut every = tokio::time::interval(self.lease() / 3);
            every.tick().await;
            loop {
                every.tick().await;
                if let Err(e) = self.extend(source, id, token).await {
                    warn!(error = %e, "cannot extend dedupe claim");
                }
            }
        };
        let result = tokio::select! {
            r = work() => r,
            _ = keepalive => unreachable!("keepalive never ends"),
        };
        match result {
            Ok(reply) => {
                self.commit(source, id, reply.as_ref()).await?;
                Ok(Guarded::Done)
            }
            Err(e) => {
                if let Err(re) = self.release(source, id, token).await {
                    warn!(error = %re, "cannot release dedupe claim; it expires after its lease");
                }
                Err(e)
            }
        }
    }
}

/// Runs `work` through `dedupe` when there is one, or straight when the
/// processor is idempotent by itself.
///
/// # Errors
/// As [`Dedupe::guard`].
pub(crate) async fn guarded<F, Fut>(
    dedupe: Option<&Dedupe>,
    delivery: Delivery<'_>,
    work: F,
) -> Result<Guarded, HandlerError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Option<StoredReply>, HandlerError>>,
{
    match dedupe {
        Some(d) => d.guard(delivery, work).await,
        None => work().await.map(|_| Guarded::Done),
    }
}
