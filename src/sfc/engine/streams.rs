//! The engine's consumer session on every scope's change and work streams
//! (consumer group [`GROUP`]): read, take over what dead replicas left
//! pending, move due timers into the work streams (`timers_due.lua`),
//! hand each entry to its handler and acknowledge it once its effect is
//! committed. The handlers are `lifecycle` (changes) and `work`; failures
//! go through `retry`.
//!
//! What a batch leaves to do in Redis once its entries are handled
//! (acknowledging them, dropping done work items and failure counters,
//! releasing dispatch leases) is collected in a [`Settle`] and sent as one
//! pipeline per scope: a batch of many entries costs a few commands, not a
//! few per entry.

use super::retry::Failure;
use super::work::WorkItem;
use super::{now_ms, Engine, EngineError, GROUP};
use crate::redis::scripts::TIMERS_DUE;
use crate::redis::{StreamRead, StreamReader};
use crate::sfc::fence::Lease;
use crate::sfc::resync::Marks;
use redis::streams::{StreamAutoClaimOptions, StreamAutoClaimReply};
use redis::AsyncCommands;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tracing::{debug, warn};

/// A stream entry read: (stream key, entry id, fields).
type StreamEntry = (String, String, HashMap<String, redis::Value>);

/// Whether an entry is a work item that never moves its job out of Running
/// (a dispatch or a progress event): the leases of the job's earlier
/// dispatches may wait for the end of the batch.
fn leaves_job_running(map: &HashMap<String, redis::Value>) -> bool {
    match map.get("item") {
        Some(redis::Value::BulkString(b)) => {
            b.starts_with(br#"{"kind":"dispatch""#)
                || b.starts_with(br#"{"kind":"progress""#)
                || b.starts_with(br#"{"kind":"steps""#)
        }
        _ => false,
    }
}

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

/// What handled entries leave to do in Redis, sent at the end of their
/// batch in one pipeline per scope.
#[derive(Debug, Default)]
pub(super) struct Settle {
    /// Per scope: stream key → entry ids to acknowledge.
    acks: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    /// Per scope: work stream key → done work items to delete.
    deletes: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    /// Per scope: failure counters of entries that may have failed before.
    counters: BTreeMap<String, Vec<String>>,
    /// Per scope: dispatch leases whose command is with the transport.
    leases: BTreeMap<String, Vec<Lease>>,
    /// The progress events being sent (the last of a chain, in order).
    progress: Option<tokio::task::JoinHandle<()>>,
}

impl Settle {
    /// Entry `id` of `stream` is done: acknowledge it (and delete it, if it
    /// is a work item; drop its failure counter `counter`, if it may have
    /// one).
    fn done(
        &mut self,
        scope: &str,
        stream: &str,
        id: &str,
        is_work: bool,
        counter: Option<String>,
    ) {
        let per = |m: &mut BTreeMap<String, BTreeMap<String, Vec<String>>>| {
            m.entry(scope.to_owned())
                .or_default()
                .entry(stream.to_owned())
                .or_default()
                .push(id.to_owned());
        };
        per(&mut self.acks);
        if is_work {
            per(&mut self.deletes);
        }
        if let Some(k) = counter {
            self.counters.entry(scope.to_owned()).or_default().push(k);
        }
    }

    /// A dispatch lease to release once the batch is settled.
    pub(super) fn release(&mut self, scope: &str, lease: Lease) {
        self.leases.entry(scope.to_owned()).or_default().push(lease);
    }

    /// Sends progress events after those already being sent, beside the
    /// handling of the job's next entries.
    pub(super) fn progress_after(
        &mut self,
        send: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let before = self.progress.take();
        self.progress = Some(tokio::spawn(async move {
            if let Some(b) = before {
                let _ = b.await;
            }
            send.await;
        }));
    }

    /// Waits until the progress events started so far were sent (or
    /// failed, which is only logged).
    async fn progress_sent(&mut self) {
        if let Some(p) = self.progress.take() {
            let _ = p.await;
        }
    }

    /// Releases the leases held so far at once: before a job's entry that
    /// may move the job out of Running, which waits for the job's leases
    /// (the fence) and must not wait for its own batch. A release that
    /// fails is logged: the lease expires by itself.
    async fn release_now(&mut self, engine: &Engine) {
        for (scope, leases) in std::mem::take(&mut self.leases) {
            let mut pipe = redis::pipe();
            for lease in &leases {
                lease.release_in(&mut pipe);
            }
            let r: redis::RedisResult<()> = pipe.query_async(&mut engine.conn()).await;
            if let Err(e) = r {
                warn!(scope, error = %e, "dispatch leases not released");
            }
        }
    }

    fn merge(&mut self, other: Settle) {
        fn deep(
            a: &mut BTreeMap<String, BTreeMap<String, Vec<String>>>,
            b: BTreeMap<String, BTreeMap<String, Vec<String>>>,
        ) {
            for (scope, streams) in b {
                let mine = a.entry(scope).or_default();
                for (stream, ids) in streams {
                    mine.entry(stream).or_default().extend(ids);
                }
            }
        }
        deep(&mut self.acks, other.acks);
        deep(&mut self.deletes, other.deletes);
        for (s, k) in other.counters {
            self.counters.entry(s).or_default().extend(k);
        }
        for (s, l) in other.leases {
            self.leases.entry(s).or_default().extend(l);
        }
    }

    /// Scopes with something to settle.
    fn scopes(&self) -> BTreeSet<&String> {
        self.acks
            .keys()
            .chain(self.deletes.keys())
            .chain(self.counters.keys())
            .chain(self.leases.keys())
            .collect()
    }

    /// One pipeline per scope (a scope's keys share one cluster slot).
    /// Leases are released even if an acknowledgement fails.
    async fn send(self, engine: &Engine) -> Result<(), EngineError> {
        let mut first_error = None;
        for scope in self.scopes() {
            let mut pipe = redis::pipe();
            for (stream, ids) in self.acks.get(scope).into_iter().flatten() {
                pipe.xack(stream, GROUP, ids).ignore();
            }
            for (stream, ids) in self.deletes.get(scope).into_iter().flatten() {
                pipe.cmd("XDEL").arg(stream).arg(ids).ignore();
            }
            if let Some(keys) = self.counters.get(scope) {
                pipe.del(keys).ignore();
            }
            for lease in self.leases.get(scope).into_iter().flatten() {
                lease.release_in(&mut pipe);
            }
            let r: redis::RedisResult<()> = pipe.query_async(&mut engine.conn()).await;
            if let Err(e) = r {
                first_error.get_or_insert(EngineError::from(e));
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Engine {
    /// One session: a blocking connection of its own, until Redis fails.
    pub(super) async fn session(&self, marks: &mut Marks) -> Result<(), EngineError> {
        let mut blocking = StreamReader::open(&self.inner.client).await?;
        // Deadlines are judged by Redis's clock (see `clock`): never decide
        // one before the offset to it is known.
        crate::runtime::clock::sync(&mut self.conn()).await?;
        let mut known: BTreeSet<String> = BTreeSet::new();
        let mut last_claim = std::time::Instant::now();
        let mut scopes_checked: Option<std::time::Instant> = None;
        let mut next_timer: Option<u64> = None;
        let mut timers_checked = std::time::Instant::now();
        let mut settling: Option<tokio::task::JoinHandle<Result<(), EngineError>>> = None;
        loop {
            self.went_round();
            let mut fresh = BTreeSet::new();
            // New scopes are looked for once per poll, not on every batch.
            let look = scopes_checked.is_none_or(|t| t.elapsed() >= self.inner.settings.poll);
            let scopes = if look {
                scopes_checked = Some(std::time::Instant::now());
                self.inner.jobs.store().scopes().await?
            } else {
                Vec::new()
            };
            for scope in scopes {
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
            // Due timers are moved when one can be due: one of ours is due,
            // the earliest one seen is due, or a poll interval passed (timers
            // other replicas set, whose hint we do not have).
            let now = now_ms();
            let hinted = self.inner.timer_hint.load(Ordering::Relaxed);
            if hinted <= now
                || next_timer.is_some_and(|d| d <= now)
                || timers_checked.elapsed() >= self.inner.settings.poll
                || !fresh.is_empty()
            {
                self.inner.timer_hint.store(u64::MAX, Ordering::Relaxed);
                next_timer = self.move_due_timers(&known).await?;
                timers_checked = std::time::Instant::now();
            }
            let next_timer_or_hint =
                match (next_timer, self.inner.timer_hint.load(Ordering::Relaxed)) {
                    (t, u64::MAX) => t,
                    (Some(t), h) => Some(t.min(h)),
                    (None, h) => Some(h),
                };
            if last_claim.elapsed() >= self.inner.settings.claim_idle / 2 {
                self.check_change_gaps(&known, marks).await?;
                self.reclaim(&known).await?;
                last_claim = std::time::Instant::now();
            }
            let block = next_timer_or_hint
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
            let opts = StreamRead::new(self.inner.settings.batch, block)
                .group(GROUP, &self.inner.consumer);
            let reply = blocking.read(&keys, &ids, &opts).await?;
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
                let (settle, handled) = self.handle_entries(&known, entries, true).await;
                // The settlement of a batch runs while the next one is read
                // (it is off the path from one step to the next); at most one
                // is in flight, and its failure ends the session like any
                // other Redis failure.
                if let Some(previous) = settling.take() {
                    previous
                        .await
                        .map_err(|e| EngineError::Task(e.to_string()))??;
                }
                let this = self.clone();
                settling = Some(tokio::spawn(async move { settle.send(&this).await }));
                handled?;
            }
        }
    }

    /// Handles a batch of entries: the entries of one job in order, the
    /// jobs concurrently (they only meet in Redis, through their own
    /// compare-and-swap), so one slow job does not hold the others up.
    /// `fresh`: the entries were read for the first time (`XREADGROUP >`),
    /// so none has failed before. The handled entries are settled together
    /// at the end.
    async fn handle_batch(
        &self,
        scopes: &BTreeSet<String>,
        entries: Vec<StreamEntry>,
        fresh: bool,
    ) -> Result<(), EngineError> {
        let (settle, handled) = self.handle_entries(scopes, entries, fresh).await;
        let settled = settle.send(self).await;
        // A failed entry stays pending and is taken over later.
        handled.and(settled)
    }

    /// [`Engine::handle_batch`] without the settlement: what the handled
    /// entries leave to do, and the first failure.
    async fn handle_entries(
        &self,
        scopes: &BTreeSet<String>,
        entries: Vec<StreamEntry>,
        fresh: bool,
    ) -> (Settle, Result<(), EngineError>) {
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
                let mut settle = Settle::default();
                for (stream, id, map) in group {
                    if !leaves_job_running(&map) {
                        // What may end the job comes after its progress
                        // events and after its commands' leases are gone.
                        settle.progress_sent().await;
                        settle.release_now(&this).await;
                    }
                    // Entries after a failed one of the same job stay
                    // pending (their order matters), the done ones are
                    // settled.
                    if let Err(e) = this
                        .handle_entry(&scopes, &stream, &id, &map, fresh, &mut settle)
                        .await
                    {
                        settle.progress_sent().await;
                        return (settle, Err(e));
                    }
                }
                settle.progress_sent().await;
                (settle, Ok(()))
            });
        }
        let mut first_error = None;
        let mut settle = Settle::default();
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok((s, r)) => {
                    settle.merge(s);
                    if let Err(e) = r {
                        first_error.get_or_insert(e);
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(EngineError::Task(e.to_string()));
                }
            }
        }
        (settle, first_error.map_or(Ok(()), Err))
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
        fresh: bool,
        settle: &mut Settle,
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
                // The MES command's trace context, linked from the job's.
                (Some(job), Some(state)) => Ok(crate::telemetry::in_job(
                    scope,
                    &job,
                    crate::telemetry::with_change(
                        field("trace"),
                        self.on_change(scope, &job, &state),
                    ),
                )
                .await?),
                _ => Ok(()),
            }
        } else {
            match field("item").map(|i| serde_json::from_str::<WorkItem>(&i)) {
                Some(Ok(item)) => {
                    // Log lines and events of the item carry the job's
                    // trace.
                    let job = item.job().to_owned();
                    crate::telemetry::in_job(scope, &job, self.on_work(scope, id, item, settle))
                        .await
                }
                Some(Err(e)) => {
                    warn!(scope, entry = id, error = %e, "unreadable work item dropped");
                    Ok(())
                }
                None => Ok(()),
            }
        };
        match result {
            Ok(()) => {
                // Work items are ours alone: dropped once done. The change
                // stream is shared with the publisher and capped by the job
                // store instead. An entry read for the first time has no
                // failure counter to drop.
                let counter = (!fresh).then(|| self.failures_key(scope, is_work, id));
                settle.done(scope, stream, id, is_work, counter);
                Ok(())
            }
            Err(f) => self.on_failure(scope, stream, id, map, f).await,
        }
    }

    /// Moves due timers into the work streams; returns the next due time
    /// (one script call per scope).
    async fn move_due_timers(&self, scopes: &BTreeSet<String>) -> Result<Option<u64>, EngineError> {
        let now = now_ms();
        let mut next: Option<u64> = None;
        let mut c = self.conn();
        for s in scopes {
            let (_moved, due): (i64, i64) = TIMERS_DUE
                .key(self.keys().timers(s))
                .key(self.keys().work(s))
                .arg(now)
                .arg(500)
                .invoke_async(&mut c)
                .await?;
            if let Ok(due) = u64::try_from(due) {
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
                self.handle_batch(scopes, entries, false).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(item: &WorkItem) -> HashMap<String, redis::Value> {
        let json = serde_json::to_string(item).unwrap();
        HashMap::from([(
            "item".to_owned(),
            redis::Value::BulkString(json.into_bytes()),
        )])
    }

    #[test]
    fn only_dispatch_and_progress_items_let_leases_wait_for_the_batch() {
        let dispatch = WorkItem::Dispatch {
            job: "j".into(),
            command_id: "s/j/a/1".into(),
            action: "a".into(),
            type_id: "t".into(),
            equipment: None,
            parameters: serde_json::Map::new(),
            attempt: 1,
            trace: None,
        };
        let progress = WorkItem::Progress {
            job: "j".into(),
            step: "s".into(),
            activation: 1,
            entered: true,
        };
        assert!(leaves_job_running(&entry(&dispatch)));
        assert!(leaves_job_running(&entry(&progress)));
        let steps = WorkItem::Steps {
            job: "j".into(),
            changes: Vec::new(),
            trace: None,
        };
        assert!(leaves_job_running(&entry(&steps)));
        assert!(!leaves_job_running(&entry(&WorkItem::Finished {
            job: "j".into()
        })));
        let timer = WorkItem::Timer {
            job: "j".into(),
            key: "k".into(),
        };
        assert!(!leaves_job_running(&entry(&timer)));
        // A change entry may move the job: leases go first.
        let change = HashMap::from([
            ("job".to_owned(), redis::Value::BulkString(b"j".to_vec())),
            ("state".to_owned(), redis::Value::BulkString(b"4".to_vec())),
        ]);
        assert!(!leaves_job_running(&change));
    }

    #[test]
    fn a_settled_batch_groups_its_work_by_scope() {
        let mut a = Settle::default();
        a.done("s1", "t:{s1}:work", "1-0", true, None);
        a.done(
            "s1",
            "t:{s1}:changes",
            "2-0",
            false,
            Some("t:{s1}:changefail:2-0".into()),
        );
        let mut b = Settle::default();
        b.done("s1", "t:{s1}:work", "1-1", true, None);
        b.done("s2", "t:{s2}:work", "3-0", true, None);
        a.merge(b);
        assert_eq!(a.scopes().len(), 2);
        assert_eq!(a.acks["s1"]["t:{s1}:work"], ["1-0", "1-1"]);
        assert_eq!(a.deletes["s1"]["t:{s1}:work"], ["1-0", "1-1"]);
        assert!(!a.deletes["s1"].contains_key("t:{s1}:changes"));
        assert_eq!(a.counters["s1"], ["t:{s1}:changefail:2-0"]);
        assert!(!a.counters.contains_key("s2"));
    }
}
