//! The gauges that are facts in Redis (jobs by state, timers, engine work,
//! publisher lag), read every [`SAMPLE_INTERVAL`] by one background task
//! and kept here for the observable instruments, whose callbacks cannot
//! wait on Redis. Every count is a cardinality or a stream summary: a few
//! pipelined commands per scope, never a scan.
//!
//! Each replica samples the same shared facts: aggregate them with `max`,
//! not `sum`.

use super::lock;
use crate::jobs::MainState;
use crate::redis::{Keys, RedisConnection};
use crate::runtime::Shutdown;
use redis::AsyncCommands as _;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tracing::debug;

/// How often Redis is sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// At most this many unpublished changes are counted (the lag gauge
/// saturates there; its age keeps growing).
pub const LAG_COUNT_CAP: usize = 100;

/// The last sample, per scope.
#[derive(Debug, Default, Clone)]
pub(crate) struct Sample {
    /// (scope, main state name, jobs).
    pub(crate) jobs: Vec<(String, &'static str, u64)>,
    /// (scope, timers pending).
    pub(crate) timers: Vec<(String, u64)>,
    /// (scope, work items pending: read and not acknowledged, or not read
    /// yet, by the engine's consumer group).
    pub(crate) work_pending: Vec<(String, u64)>,
    /// (scope, age in seconds of the oldest pending work item).
    pub(crate) work_age: Vec<(String, f64)>,
    /// (scope, changes not yet published, capped at [`LAG_COUNT_CAP`]).
    pub(crate) publisher_lag: Vec<(String, u64)>,
    /// (scope, age in seconds of the oldest change not yet published).
    pub(crate) publisher_age: Vec<(String, f64)>,
}

pub(crate) static SAMPLE: Mutex<Option<Sample>> = Mutex::new(None);

/// Samples Redis every [`SAMPLE_INTERVAL`] until shutdown. A failed sample
/// keeps the previous one (Redis readiness says Redis is gone).
pub(crate) async fn run(mut conn: RedisConnection, prefix: String, mut sd: Shutdown) {
    let keys = Keys::new(prefix);
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = sd.wait() => return,
        }
        match tokio::time::timeout(SAMPLE_INTERVAL, sample(&mut conn, &keys)).await {
            Ok(Ok(s)) => *lock(&SAMPLE) = Some(s),
            Ok(Err(e)) => debug!(error = %e, "metrics: cannot sample Redis"),
            Err(_) => debug!("metrics: sampling Redis timed out"),
        }
    }
}

async fn sample(conn: &mut RedisConnection, keys: &Keys) -> redis::RedisResult<Sample> {
    let scopes: Vec<String> = conn.smembers(keys.scopes()).await?;
    let mut s = Sample::default();
    let now = crate::runtime::clock::now_ms();
    for scope in scopes {
        // Every state key a job can be indexed under: `m` and `m.1`..`m.3`.
        let mut pipe = redis::pipe();
        for m in MainState::ALL {
            let n = m.number();
            for k in [
                n.to_string(),
                format!("{n}.1"),
                format!("{n}.2"),
                format!("{n}.3"),
            ] {
                pipe.scard(keys.by_state(&scope, &k));
            }
        }
        pipe.zcard(keys.timers(&scope));
        pipe.get(keys.pub_cursor(&scope));
        let (counts, timers, cursor): (Vec<u64>, u64, Option<String>) = {
            let mut v: Vec<redis::Value> = pipe.query_async(conn).await?;
            let cursor: Option<String> =
                redis::from_redis_value(v.pop().unwrap_or(redis::Value::Nil))?;
            let timers: u64 = redis::from_redis_value(v.pop().unwrap_or(redis::Value::Int(0)))?;
            let counts = v
                .into_iter()
                .map(redis::from_redis_value)
                .collect::<Result<Vec<u64>, _>>()?;
            (counts, timers, cursor)
        };
        for (m, c) in MainState::ALL.iter().zip(counts.chunks(4)) {
            s.jobs.push((scope.clone(), m.name(), c.iter().sum()));
        }
        s.timers.push((scope.clone(), timers));
        let (pending, oldest) = work(conn, keys, &scope).await;
        s.work_pending.push((scope.clone(), pending));
        s.work_age
            .push((scope.clone(), age(now, oldest.as_deref())));
        // No cursor: no publisher ever ran for this scope; nothing lags.
        if let Some(cursor) = cursor {
            let after: Vec<(String, HashMap<String, redis::Value>)> = redis::cmd("XRANGE")
                .arg(keys.changes(&scope))
                .arg(format!("({cursor}"))
                .arg("+")
                .arg("COUNT")
                .arg(LAG_COUNT_CAP)
                .query_async(conn)
                .await
                .unwrap_or_default();
            s.publisher_lag.push((scope.clone(), after.len() as u64));
            s.publisher_age.push((
                scope.clone(),
                age(now, after.first().map(|(id, _)| id.as_str())),
            ));
        }
    }
    Ok(s)
}

/// The engine's pending work items on `scope` and the id of the oldest: a
/// stream or group that does not exist yet has none.
async fn work(conn: &mut RedisConnection, keys: &Keys, scope: &str) -> (u64, Option<String>) {
    let stream = keys.work(scope);
    let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&stream)
        .query_async(conn)
        .await
        .unwrap_or_default();
    let Some(g) = groups.into_iter().find(|g| {
        g.get("name")
            .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
            .as_deref()
            == Some(crate::sfc::engine::GROUP)
    }) else {
        return (0, None);
    };
    let int = |k: &str| {
        g.get(k)
            .and_then(|v| redis::from_redis_value::<u64>(v.clone()).ok())
            .unwrap_or(0)
    };
    let pending = int("pending") + int("lag");
    let mut oldest: Option<String> = None;
    if int("pending") > 0 {
        // XPENDING summary: [count, smallest id, greatest id, consumers].
        let summary: redis::Value = redis::cmd("XPENDING")
            .arg(&stream)
            .arg(crate::sfc::engine::GROUP)
            .query_async(conn)
            .await
            .unwrap_or(redis::Value::Nil);
        if let redis::Value::Array(v) = summary {
            oldest = v
                .get(1)
                .and_then(|x| redis::from_redis_value::<String>(x.clone()).ok());
        }
    }
    if oldest.is_none() && int("lag") > 0 {
        let last = g
            .get("last-delivered-id")
            .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
            .unwrap_or_else(|| "0-0".into());
        let next: Vec<(String, HashMap<String, redis::Value>)> = redis::cmd("XRANGE")
            .arg(&stream)
            .arg(format!("({last}"))
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(conn)
            .await
            .unwrap_or_default();
        oldest = next.into_iter().next().map(|(id, _)| id);
    }
    (pending, oldest)
}

/// Seconds from a stream id's time to `now_ms` (0 without an id).
fn age(now_ms: u64, id: Option<&str>) -> f64 {
    id.and_then(|id| id.split('-').next())
        .and_then(|ms| ms.parse::<u64>().ok())
        .map_or(0.0, |ms| now_ms.saturating_sub(ms) as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::age;

    #[test]
    fn age_of_a_stream_id_is_seconds_since_its_time() {
        assert_eq!(age(10_500, Some("9000-3")), 1.5);
        assert_eq!(age(10_500, None), 0.0);
        assert_eq!(age(1_000, Some("2000-0")), 0.0, "a clock behind is no age");
        assert_eq!(age(1_000, Some("garbage")), 0.0);
    }
}
