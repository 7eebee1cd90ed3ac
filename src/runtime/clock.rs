//! One clock for decisions that span replicas: Redis's.
//!
//! Timer deadlines, `elapsed`, the `D`/`L` qualifiers, the age of kept early
//! events and job retention are written by one replica and judged by
//! another. Judged against each replica's own wall clock, a replica whose
//! clock is a minute ahead fires every other replica's timeouts a minute
//! early (and one behind loses them for a minute). So every such decision
//! reads [`now_ms`]: the local clock corrected by its measured offset to
//! the Redis server's `TIME`, which all replicas share. The offset is
//! measured at start and then every [`SYNC_EVERY`] (one `TIME` round trip,
//! halved to cancel the network delay), so a step costs no extra Redis
//! command. Until the first measurement the offset is zero.

use chrono::{DateTime, Utc};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often the offset to Redis's clock is measured again.
pub(crate) const SYNC_EVERY: Duration = Duration::from_secs(15);

/// Redis time minus local time, in milliseconds.
static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

fn local_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch on the shared (Redis) clock.
pub(crate) fn now_ms() -> u64 {
    u64::try_from(local_ms().saturating_add(OFFSET_MS.load(Ordering::Relaxed))).unwrap_or(0)
}

/// The shared clock as a timestamp.
pub(crate) fn now() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(now_ms() as i64).unwrap_or_else(Utc::now)
}

/// Measures the offset to Redis's clock with one `TIME` and uses it from now
/// on; returns it.
///
/// # Errors
/// Redis is unreachable or answered something that is not a time.
pub(crate) async fn sync<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
) -> redis::RedisResult<i64> {
    let before = local_ms();
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(conn).await?;
    let after = local_ms();
    let redis_ms = secs.saturating_mul(1000).saturating_add(micros / 1000);
    // Redis read its clock somewhere between `before` and `after`.
    let offset = redis_ms - (before + (after - before) / 2);
    let previous = OFFSET_MS.swap(offset, Ordering::Relaxed);
    if (offset - previous).abs() > 1000 {
        tracing::info!(
            offset_ms = offset,
            "local clock differs from the Redis clock; decisions use the Redis clock"
        );
    }
    Ok(offset)
}

/// Measures again every [`SYNC_EVERY`] until `shutdown` resolves; a failed
/// measurement keeps the last offset.
pub(crate) async fn keep_in_sync<C, F>(mut conn: C, shutdown: F)
where
    C: redis::aio::ConnectionLike + Send,
    F: std::future::Future<Output = ()>,
{
    tokio::pin!(shutdown);
    loop {
        if let Err(e) = sync(&mut conn).await {
            tracing::debug!(error = %e, "cannot read the Redis clock; keeping the last offset");
        }
        tokio::select! {
            _ = tokio::time::sleep(SYNC_EVERY) => {}
            _ = &mut shutdown => return,
        }
    }
}
