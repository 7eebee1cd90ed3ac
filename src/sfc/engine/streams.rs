//! The engine's consumer session on every scope's change and work streams
//! (consumer group [`GROUP`]): read, take over what dead replicas left
//! pending, move due timers into the work streams (`timers_due.lua`),
//! hand each entry to its handler and acknowledge it once its effect is
//! committed. The handlers are `lifecycle` (changes) and `work`; failures
//! go through `retry`.

use super::retry::Failure;
use super::work::WorkItem;
use super::{now_ms, Engine, EngineError, GROUP};
use crate::redis::scripts::TIMERS_DUE;
use crate::redis::Redis;
use crate::sfc::resync::Marks;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamReadOptions, StreamReadReply,
};
use redis::AsyncCommands;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;
use tracing::{debug, warn};

/// A stream entry read: (stream key, entry id, fields).
type StreamEntry = (String, String, HashMap<String, redis::Value>);

/// The job a stream entry is about (change entries carry it as a field,
/// work items inside their JSON), for grouping a batch by job.
fn entry_job(map: &HashMap<String, redis::Value>) -> String {
    let field = |k: &str| match map.get(k) {
        Some(redis::Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    };
    if let Some(job) = field("job") {
        return job;
    }
    field("item")
        .and_then(|i| serde_json::from_str::<Value>(&i).ok())
        .and_then(|v| v["job"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

impl Engine {
    /// One session: a blocking connection of its own, until Redis fails.
    pub(super) async fn session(&self, marks: &mut Marks) -> Result<(), EngineError> {
        let mut blocking = Redis::blocking_connection(&self.inner.client).await?;
        // Deadlines are judged by Redis's clock (see `clock`): never decide
        // one before the offset to it is known.
        crate::runtime::clock::sync(&mut blocking).await?;
        let mut known: BTreeSet<String> = BTreeSet::new();
        let mut last_claim = std::time::Instant::now();
        loop {
            let mut fresh = BTreeSet::new();
            for scope in self.inner.jobs.store().scopes().await? {
                if !known.contains(&scope) {
                    for (_, stream) in self.streams(&scope) {
                        let r: redis::RedisResult<()> = redis::cmd("XGROUP")
                            .arg("CREATE")
                            .arg(stream)
                            .arg(GROUP)
                            .arg("0")
                            .arg("MKSTREAM")
                            .query_async(&mut self.conn())
                            .await;
                        if let Err(e) = r {
                            if e.code() != Some("BUSYGROUP") {
                                return Err(e.into());
                            }
                        }
                    }
                    fresh.insert(scope.clone());
                    known.insert(scope);
                }
            }
            // Changes trimmed before the group read them (see `resync`):
            // new scopes before their first read, all of them periodically.
            if !fresh.is_empty() {
                self.check_change_gaps(&fresh, marks).await?;
            }
            if known.is_empty() {
                tokio::time::sleep(self.inner.settings.poll).await;
                continue;
            }
            let next_timer = self.move_due_timers(&known).await?;
            if last_claim.elapsed() >= self.inner.settings.claim_idle / 2 {
                self.check_change_gaps(&known, marks).await?;
                self.reclaim(&known).await?;
                last_claim = std::time::Instant::now();
            }
            let block = next_timer
                .map_or(self.inner.settings.poll, |due| {
                    Duration::from_millis(due.saturating_sub(now_ms()))
                        .min(self.inner.settings.poll)
                })
                .max(Duration::from_millis(1));
            let mut keys = Vec::new();
            for s in &known {
                keys.extend(self.streams(s).map(|(_, key)| key));
            }
            let ids: Vec<&str> = keys.iter().map(|_| ">").collect();
            let opts = StreamReadOptions::default()
                .group(GROUP, &self.inner.consumer)
                .count(self.inner.settings.batch)
                .block(block.as_millis() as usize);
            let reply: Option<StreamReadReply> = blocking.xread_options(&keys, &ids, &opts).await?;
            if let Some(reply) = reply {
                let entries = reply
                    .keys
                    .into_iter()
                    .flat_map(|sk| {
                        sk.ids
                            .into_iter()
                            .map(move |e| (sk.key.clone(), e.id, e.map))
                    })
                    .collect();
                self.handle_batch(&known, entries).await?;
            }
        }
    }

    /// Handles a batch of entries: the entries of one job in order, the
    /// jobs concurrently (they only meet in Redis, through their own
    /// compare-and-swap), so one slow job does not hold the others up.
    async fn handle_batch(
        &self,
        scopes: &BTreeSet<String>,
        entries: Vec<StreamEntry>,
    ) -> Result<(), EngineError> {
        let mut by_job: BTreeMap<String, Vec<StreamEntry>> = BTreeMap::new();
        for (stream, id, map) in entries {
            by_job
                .entry(entry_job(&map))
                .or_default()
                .push((stream, id, map));
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (_, group) in by_job {
            let this = self.clone();
            let scopes = scopes.clone();
            tasks.spawn(async move {
                for (stream, id, map) in group {
                    this.handle_entry(&scopes, &stream, &id, &map).await?;
                }
                Ok::<(), EngineError>(())
            });
        }
        let mut first_error = None;
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    first_error.get_or_insert(EngineError::Task(e.to_string()));
                }
            }
        }
        // A failed entry stays pending and is taken over later.
        first_error.map_or(Ok(()), Err)
    }

    /// Handles one stream entry and acknowledges it; an entry whose effect
    /// failed stays pending and is retried (by us or, after `claim_idle`,
    /// another replica), up to `max_attempts` (see `retry`).
    async fn handle_entry(
        &self,
        scopes: &BTreeSet<String>,
        stream: &str,
        id: &str,
        map: &HashMap<String, redis::Value>,
    ) -> Result<(), EngineError> {
        let Some(scope) = scopes
            .iter()
            .find(|s| self.streams(s).iter().any(|(_, key)| stream == key))
        else {
            return Ok(());
        };
        let field = |k: &str| match map.get(k) {
            Some(redis::Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        };
        let is_work = stream == self.keys().work(scope);
        let result: Result<(), Failure> = if !is_work {
            match (field("job"), field("state")) {
                (Some(job), Some(state)) => Ok(self.on_change(scope, &job, &state).await?),
                _ => Ok(()),
            }
        } else {
            match field("item").map(|i| serde_json::from_str::<WorkItem>(&i)) {
                Some(Ok(item)) => self.on_work(scope, id, item).await,
                Some(Err(e)) => {
                    warn!(scope, entry = id, error = %e, "unreadable work item dropped");
                    Ok(())
                }
                None => Ok(()),
            }
        };
        match result {
            Ok(()) => {
                let mut c = self.conn();
                let mut pipe = redis::pipe();
                pipe.xack(stream, GROUP, &[id]).ignore();
                if is_work {
                    // Work items are ours alone: drop them once done. The
                    // change stream is shared with the publisher and capped
                    // by the job store instead.
                    pipe.cmd("XDEL").arg(stream).arg(id).ignore();
                }
                pipe.del(self.failures_key(scope, is_work, id)).ignore();
                let _: () = pipe.query_async(&mut c).await?;
                Ok(())
            }
            Err(f) => self.on_failure(scope, stream, id, map, f).await,
        }
    }

    /// Moves due timers into the work streams; returns the next due time.
    async fn move_due_timers(&self, scopes: &BTreeSet<String>) -> Result<Option<u64>, EngineError> {
        let now = now_ms();
        let mut next: Option<u64> = None;
        let mut c = self.conn();
        for s in scopes {
            let _: i64 = TIMERS_DUE
                .key(self.keys().timers(s))
                .key(self.keys().work(s))
                .arg(now)
                .arg(500)
                .invoke_async(&mut c)
                .await?;
            let first: Vec<(String, f64)> =
                c.zrange_withscores(self.keys().timers(s), 0, 0).await?;
            if let Some((_, due)) = first.first() {
                let due = *due as u64;
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        }
        Ok(next)
    }

    /// Takes over entries another consumer left pending too long.
    async fn reclaim(&self, scopes: &BTreeSet<String>) -> Result<(), EngineError> {
        let mut c = self.conn();
        let idle = self.inner.settings.claim_idle.as_millis() as usize;
        for s in scopes {
            for (stream, key) in self.streams(s) {
                let reply: StreamAutoClaimReply = c
                    .xautoclaim_options(
                        &key,
                        GROUP,
                        &self.inner.consumer,
                        idle,
                        "0-0",
                        StreamAutoClaimOptions::default().count(self.inner.settings.batch),
                    )
                    .await?;
                if !reply.claimed.is_empty() {
                    debug!(scope = %s, stream, entries = reply.claimed.len(), "taking over pending entries");
                }
                if stream == "changes" && !reply.deleted_ids.is_empty() {
                    self.on_trimmed_pending(s, &reply.deleted_ids).await?;
                }
                let entries = reply
                    .claimed
                    .into_iter()
                    .map(|e| (key.clone(), e.id, e.map))
                    .collect();
                self.handle_batch(scopes, entries).await?;
            }
        }
        Ok(())
    }

    /// The two streams of a scope the engine consumes, named (for logs)
    /// and keyed.
    fn streams(&self, scope: &str) -> [(&'static str, String); 2] {
        [
            ("changes", self.keys().changes(scope)),
            ("work", self.keys().work(scope)),
        ]
    }
}
