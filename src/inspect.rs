//! Read-only queries over what a station keeps in Redis about its jobs:
//! what an operator would otherwise piece together with `redis-cli`
//! (`microdcs jobs list|show` is built on it). Nothing here writes.
//!
//! A job is its stored order, state and response ([`StoredJob`], the job
//! store's `P:{S}:job:{id}` hash) and, once the SFC engine runs it, its
//! execution state ([`Execution`], `P:{S}:exec:{id}`: active steps, action
//! runs and results, step history) with its pending timers (its members of
//! `P:{S}:timers`). See the key schema in DESIGN.md.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo(config: &microdcs::config::Config) -> Result<(), Box<dyn std::error::Error>> {
//! use microdcs::inspect::Inspector;
//! use microdcs::jobs::MainState;
//! let redis = microdcs::station::open_redis(config)?;
//! let inspector = Inspector::new(redis.conn, config.redis.key_prefix.clone());
//! for j in inspector.list(None, Some(MainState::Running)).await? {
//!     println!("{} {} {}", j.scope, j.job.id, j.job.state);
//! }
//! # Ok(()) }
//! ```

use crate::jobs::store::{StoreError, StoredJob};
use crate::jobs::{JobState, JobStore, MainState};
use crate::redis::RedisConnection;
use crate::sfc::exec::Execution;
use redis::AsyncCommands;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// Jobs read per round trip when listing.
const BATCH: usize = 200;

/// One job as listed.
#[derive(Debug, Clone)]
pub struct JobSummary {
    /// Its scope.
    pub scope: String,
    /// The stored job.
    pub job: StoredJob,
    /// When it last changed (ms since the Unix epoch, Redis clock), if
    /// recorded.
    pub updated_ms: Option<u64>,
}

/// One job with everything kept about it.
#[derive(Debug, Clone)]
pub struct JobDetail {
    /// Its scope.
    pub scope: String,
    /// The stored job: order, state, response, last cause.
    pub job: StoredJob,
    /// When it last changed (ms since the Unix epoch), if recorded.
    pub updated_ms: Option<u64>,
    /// Its SFC execution, if the engine started one.
    pub execution: Option<ExecutionDetail>,
}

/// A job's stored SFC execution.
#[derive(Debug, Clone)]
pub struct ExecutionDetail {
    /// The execution state's version (its compare-and-swap token).
    pub version: u64,
    /// The execution state: status, active steps, action runs, results,
    /// step history ([`Execution`]'s accessors).
    pub execution: Execution,
    /// Its timers still pending in Redis, soonest first.
    pub timers: Vec<PendingTimer>,
}

/// A timer of the SFC engine waiting to fire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingTimer {
    /// Its key (the text of a [`TimerKey`](crate::sfc::exec::TimerKey),
    /// e.g. `a/1/timeout:1/clamp`).
    pub key: String,
    /// When it is due (ms since the Unix epoch, Redis clock).
    pub due_ms: u64,
}

/// The read-only view of a station's jobs under one key prefix. Cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct Inspector {
    store: JobStore,
}

impl Inspector {
    /// Queries under `prefix` (`redis.key_prefix`) on `conn`.
    pub fn new(conn: RedisConnection, prefix: impl Into<String>) -> Self {
        // The retention only matters to writes; nothing here writes.
        Inspector {
            store: JobStore::new(conn, prefix, Duration::ZERO),
        }
    }

    /// Every scope known to the station, sorted.
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn scopes(&self) -> Result<Vec<String>, StoreError> {
        self.store.scopes().await
    }

    /// The jobs of `scope` (of every scope when `None`) whose main state is
    /// `state` (any state when `None`), by scope and id.
    ///
    /// # Errors
    /// Redis is unavailable, or a stored job is unreadable.
    pub async fn list(
        &self,
        scope: Option<&str>,
        state: Option<MainState>,
    ) -> Result<Vec<JobSummary>, StoreError> {
        let scopes = match scope {
            Some(s) => vec![s.to_owned()],
            None => self.scopes().await?,
        };
        let states: Vec<JobState> = match state {
            Some(m) => states_of(m),
            None => MainState::ALL.into_iter().flat_map(states_of).collect(),
        };
        let keys = self.store.keys().clone();
        let mut out = Vec::new();
        let mut c = self.store.connection();
        for scope in scopes {
            let mut pipe = redis::pipe();
            for s in &states {
                pipe.smembers(keys.by_state(&scope, &s.key()));
            }
            let sets: Vec<Vec<String>> = pipe.query_async(&mut c).await?;
            let ids: Vec<String> = sets
                .into_iter()
                .flatten()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            for chunk in ids.chunks(BATCH) {
                let jobs = self.store.get_many(&scope, chunk).await?;
                let updated = self.updated(&scope, &jobs).await?;
                for (job, updated_ms) in jobs.into_iter().zip(updated) {
                    // A job that changed state between the two reads is
                    // listed as it is now, or left out if it left `state`.
                    if state.is_some_and(|m| job.state.main != m) {
                        continue;
                    }
                    out.push(JobSummary {
                        scope: scope.clone(),
                        job,
                        updated_ms,
                    });
                }
            }
        }
        Ok(out)
    }

    /// The scopes that hold a job with id `id`, sorted.
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn scopes_of(&self, id: &str) -> Result<Vec<String>, StoreError> {
        let keys = self.store.keys();
        let mut c = self.store.connection();
        let mut out = Vec::new();
        // One command per scope: each scope's keys live in a slot of their
        // own on a Redis Cluster, where a pipeline must stay in one slot.
        for s in self.scopes().await? {
            let found: bool = c.exists(keys.job(&s, id)).await?;
            if found {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// Job `id` of `scope` with its execution and pending timers; `None` if
    /// there is no such job.
    ///
    /// # Errors
    /// Redis is unavailable, or the job or its execution is unreadable.
    pub async fn job(&self, scope: &str, id: &str) -> Result<Option<JobDetail>, StoreError> {
        let Some(job) = self.store.get(scope, id).await? else {
            return Ok(None);
        };
        let updated_ms = self
            .updated(scope, std::slice::from_ref(&job))
            .await?
            .pop()
            .flatten();
        let execution = self.execution(scope, id).await?;
        Ok(Some(JobDetail {
            scope: scope.to_owned(),
            job,
            updated_ms,
            execution,
        }))
    }

    /// The stored execution of job `id` with its pending timers.
    async fn execution(
        &self,
        scope: &str,
        id: &str,
    ) -> Result<Option<ExecutionDetail>, StoreError> {
        let keys = self.store.keys();
        let mut c = self.store.connection();
        let h: HashMap<String, String> = c.hgetall(keys.exec(scope, id)).await?;
        if h.is_empty() {
            return Ok(None);
        }
        let corrupt = |reason: String| StoreError::Corrupt {
            scope: scope.to_owned(),
            job: id.to_owned(),
            reason: format!("execution: {reason}"),
        };
        let version = h
            .get("v")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| corrupt("no version".into()))?;
        let execution: Execution = serde_json::from_str(h.get("doc").map_or("", String::as_str))
            .map_err(|e| corrupt(e.to_string()))?;
        // Timer members are `job` ␟ `key`; the id is matched literally.
        let pattern = format!("{}\u{1f}*", glob_escape(id));
        let mut timers = Vec::new();
        let mut iter: redis::AsyncIter<'_, (String, f64)> =
            c.zscan_match(keys.timers(scope), pattern).await?;
        while let Some(item) = iter.next_item().await {
            let (member, due) = item?;
            if let Some((_, key)) = member.split_once('\u{1f}') {
                timers.push(PendingTimer {
                    key: key.to_owned(),
                    due_ms: due as u64,
                });
            }
        }
        drop(iter);
        timers.sort_by(|a, b| a.due_ms.cmp(&b.due_ms).then_with(|| a.key.cmp(&b.key)));
        Ok(Some(ExecutionDetail {
            version,
            execution,
            timers,
        }))
    }

    /// The `updated` field of each of `jobs`, in order.
    async fn updated(
        &self,
        scope: &str,
        jobs: &[StoredJob],
    ) -> Result<Vec<Option<u64>>, StoreError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let keys = self.store.keys();
        let mut pipe = redis::pipe();
        for j in jobs {
            pipe.hget(keys.job(scope, &j.id), "updated");
        }
        let mut c = self.store.connection();
        let v: Vec<Option<String>> = pipe.query_async(&mut c).await?;
        Ok(v.into_iter()
            .map(|u| u.and_then(|u| u.parse().ok()))
            .collect())
    }
}

/// The states whose index sets hold the jobs of main state `m`: `m` alone
/// and `m` with each of its substates.
fn states_of(m: MainState) -> Vec<JobState> {
    std::iter::once(JobState::new(m, None))
        .chain(m.substates().iter().map(|s| JobState::new(m, Some(*s))))
        .collect()
}

/// `text` with the glob characters of `SCAN … MATCH` escaped.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::SubState;

    #[test]
    fn a_main_state_covers_its_substates() {
        let keys: Vec<String> = states_of(MainState::AllowedToStart)
            .into_iter()
            .map(JobState::key)
            .collect();
        assert_eq!(keys, ["2", "2.1", "2.2", "2.3"]);
        assert_eq!(
            states_of(MainState::Running),
            [JobState::new(MainState::Running, None)]
        );
        assert!(states_of(MainState::Ended)
            .contains(&JobState::new(MainState::Ended, Some(SubState::Completed))));
    }

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("PO*1?[a]\\"), "PO\\*1\\?\\[a\\]\\\\");
        assert_eq!(glob_escape("plain-id"), "plain-id");
    }
}
