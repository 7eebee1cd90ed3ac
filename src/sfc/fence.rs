//! The dispatch fence: commands follow the job's state.
//!
//! A dispatch work item is decided while a job is Running, but it is sent
//! later, maybe by another replica, maybe after the MES aborted or paused
//! the job. So the send itself asks Redis first, atomically
//! (`dispatch_lease.lua`):
//!
//! - the job is Running: a short *lease* is taken on the job
//!   (`P:{S}:lease:{job}`), the command is handed to the transport and the
//!   lease is released. The job manager, after a transition out of
//!   Running, waits for the job's leases to be gone before it publishes
//!   the status event ([`JobStore::await_dispatches`]), and no new lease
//!   can be taken once the state is not Running: so no command ever
//!   follows Aborted, Ended or Interrupted, whatever the interleaving of
//!   replicas and streams.
//! - the job is Interrupted: the item is *held* (`P:{S}:held:{job}`) and
//!   put back into the work stream when the job runs again
//!   (`dispatch_resume.lua`), so Pause delays a command but loses none.
//! - anything else (Ended, Aborted, gone): the dispatch is *recalled*, never
//!   sent.

use crate::jobs::store::{JobStore, DISPATCH_LEASE};
use crate::jobs::MainState;
use crate::redis::scripts::{RESUME_HELD, TAKE_DISPATCH_LEASE};
use redis::AsyncCommands;

/// What the fence decided about one dispatch.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// The job is Running: send, then [`release`] the lease.
    Leased(Lease),
    /// The job is Interrupted: kept until it is resumed.
    Held,
    /// The job is no longer running: do not send.
    Recalled,
}

/// A taken dispatch lease.
#[derive(Debug)]
pub(crate) struct Lease {
    key: String,
    member: String,
}

/// Asks whether the dispatch of `command_id` for `job` may be sent now;
/// `item` is the work item, kept if the job is Interrupted.
pub(crate) async fn take(
    store: &JobStore,
    scope: &str,
    job: &str,
    command_id: &str,
    item: &str,
) -> Result<Verdict, redis::RedisError> {
    let key = store.keys().dispatch_leases(scope, job);
    // Two replicas may send the same item at once (a reclaimed entry): each
    // holds a lease of its own, and releasing one keeps the other.
    let member = format!("{command_id}\u{1f}{}", uuid::Uuid::new_v4());
    let mut c = store.connection();
    let verdict: String = TAKE_DISPATCH_LEASE
        .key(store.keys().job(scope, job))
        .key(&key)
        .key(store.keys().held(scope, job))
        .arg(MainState::Running.number())
        .arg(MainState::Interrupted.number())
        .arg(&member)
        .arg(u64::try_from(DISPATCH_LEASE.as_millis()).unwrap_or(u64::MAX))
        .arg(item)
        .arg(crate::runtime::clock::now_ms())
        .invoke_async(&mut c)
        .await?;
    Ok(match verdict.as_str() {
        "LEASED" => Verdict::Leased(Lease { key, member }),
        "HELD" => Verdict::Held,
        _ => Verdict::Recalled,
    })
}

impl Lease {
    /// Adds the release of this lease to `pipe` (the engine releases the
    /// leases of a batch with its acknowledgements).
    pub(crate) fn release_in(&self, pipe: &mut redis::Pipeline) {
        pipe.zrem(&self.key, &self.member).ignore();
    }
}

/// Releases a lease once the command is with the transport (or was not
/// sent at all).
pub(crate) async fn release(store: &JobStore, lease: &Lease) -> Result<(), redis::RedisError> {
    let mut c = store.connection();
    let _: i64 = c.zrem(&lease.key, &lease.member).await?;
    Ok(())
}

/// Puts `job`'s held dispatches back into the scope's work stream
/// (`work_key`) if the job is Running; returns how many.
pub(crate) async fn resume_held(
    store: &JobStore,
    scope: &str,
    job: &str,
    work_key: &str,
) -> Result<u64, redis::RedisError> {
    let mut c = store.connection();
    RESUME_HELD
        .key(store.keys().job(scope, job))
        .key(store.keys().held(scope, job))
        .key(work_key)
        .arg(MainState::Running.number())
        .invoke_async(&mut c)
        .await
}

/// Drops `job`'s held dispatches: it ended or was aborted, they are never
/// sent.
pub(crate) async fn forget_held(
    store: &JobStore,
    scope: &str,
    job: &str,
) -> Result<(), redis::RedisError> {
    let mut c = store.connection();
    let _: i64 = c.del(store.keys().held(scope, job)).await?;
    Ok(())
}
