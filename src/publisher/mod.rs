//! The MES publisher: retained topics from which an MES that was offline
//! resynchronises (wire contract §4). One instance publishes (a
//! [`SingletonLock`](crate::singleton::SingletonLock)); it follows every
//! scope's change stream in Redis, so it sees the changes of all replicas.
//!
//! Per scope, for each batch of changes:
//!
//! 1. `{prefix}/{scope}/order/{id}` (the id percent-encoded for `%`, `/`,
//!    `+`, `#` and control characters, wire contract §8) = `{"JobOrder":…,"State":[…]}` for every
//!    changed job, a zero-byte retained message when it reached EndState or
//!    was purged; `{prefix}/{scope}/result/{id}` = the job response when the
//!    job is Ended or Aborted and has one (zero bytes on EndState).
//! 2. The scope's state index is marked changed. Its entries live in Redis
//!    (`P:{S}:index`), written by `job_apply.lua` with each job, so the
//!    publisher holds nothing per job ([`index`]).
//!
//! A changed index is published as `{prefix}/{scope}/state-index` at most
//! once per `state_index_interval` (default 50 ms; one more interval per
//! started thousand jobs listed, so a long history does not multiply the
//! bytes on the broker), always with the latest states, `seq` incremented
//! in Redis (`INCR`, so it survives restarts and never goes backwards).
//! The stream cursor is stored with it: a crash replays the changes since
//! (retained publishes are idempotent) and the restart republishes the
//! index, so the cost per change does not grow with the number of jobs in
//! the scope.
//!
//! A publisher that (re)starts first republishes every scope's index, then
//! continues after the stored cursors. New scopes are picked up on every
//! poll.
//!
//! Change streams are capped (`jobs.change_stream_max_len`). A publisher
//! whose cursor fell behind the first entry left (it was down while more
//! changes passed) cannot tell from the stream which jobs changed: it
//! resynchronises the scope in full, republishing every live job and
//! clearing the topics of jobs it had retained (`P:{S}:pub:retained`) that
//! ended or were purged meanwhile, and goes on from the stream's end.

use crate::envelope::{encode_level, escape_for_mqtt, CloudEvent, ContentType};
use crate::jobs::state::MainState;
use crate::jobs::store::{parse_state_key, JobStore, StoreError, StoredJob};
use crate::redis::scripts::INDEX_FILL;
use crate::redis::{StreamRead, StreamReader};
use crate::runtime::backoff::Backoff;
use crate::runtime::Shutdown;
use crate::transport::{Outgoing, Publisher};
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod index;
use index::Schedule;
use tracing::{debug, info, warn};

/// One retained message of a batch: topic, CloudEvent type, body (`None`
/// clears the topic), the job's trace.
type Retained<'a> = (String, &'a str, Option<Vec<u8>>, Option<&'a str>);

/// CloudEvent `type` of state-index messages.
pub(crate) const STATE_INDEX_TYPE: &str = "com.github.aschamberger.microdcs.mes.state-index.v1";
/// CloudEvent `type` of order messages.
pub(crate) const ORDER_TYPE: &str = "com.github.aschamberger.microdcs.mes.order.v1";
/// CloudEvent `type` of result messages.
pub(crate) const RESULT_TYPE: &str = "com.github.aschamberger.microdcs.mes.result.v1";

/// Publisher settings.
#[derive(Debug, Clone)]
pub(crate) struct PublisherSettings {
    /// Topic prefix (the `machinery-jobs` binding's prefix, e.g. `app/jobs`).
    pub prefix: String,
    /// Message Expiry Interval of every retained message.
    pub retained_ttl: Duration,
    /// CloudEvent `source`.
    pub source: String,
    /// Longest wait for new changes before the scope list is refreshed.
    pub poll: Duration,
    /// Changes read per scope and batch.
    pub batch: usize,
    /// Least time between two state-index publishes of a scope (stretched
    /// by one interval per started thousand jobs listed). Zero: after every
    /// batch.
    pub state_index_interval: Duration,
}

impl PublisherSettings {
    /// Defaults for `prefix`: 172800 s retained TTL, 1 s poll, batches of
    /// 500, a state index at most every 50 ms.
    pub(crate) fn new(prefix: impl Into<String>) -> Self {
        PublisherSettings {
            prefix: prefix.into(),
            retained_ttl: Duration::from_secs(172_800),
            source: "microdcs".into(),
            poll: Duration::from_secs(1),
            batch: 500,
            state_index_interval: Duration::from_millis(50),
        }
    }
}

/// Publisher failures (the loop logs them and retries).
#[derive(Debug, thiserror::Error)]
pub(crate) enum PublishError {
    /// Redis failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// MQTT failed.
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
}

#[derive(Serialize)]
struct OrderTopic<'a> {
    #[serde(rename = "JobOrder")]
    job_order: &'a RawValue,
    #[serde(rename = "State")]
    state: Vec<crate::jobs::state::StateEntry>,
}

/// What the publisher holds of one scope it follows (nothing per job).
struct Followed {
    /// The last change entry handled.
    cursor: String,
    /// The cursor as stored in Redis.
    stored_cursor: String,
    /// When its state index is due.
    index: Schedule,
}

/// The MES publisher.
pub(crate) struct MesPublisher {
    store: JobStore,
    out: Arc<dyn Publisher>,
    client: crate::redis::RedisClient,
    settings: PublisherSettings,
    scopes: BTreeMap<String, Followed>,
}

impl MesPublisher {
    /// A publisher reading `store`, publishing through `out`; `client` opens
    /// the dedicated connection for blocking stream reads (a blocking read
    /// would stall a shared multiplexed connection).
    pub(crate) fn new(
        store: JobStore,
        client: crate::redis::RedisClient,
        out: Arc<dyn Publisher>,
        settings: PublisherSettings,
    ) -> Self {
        MesPublisher {
            store,
            out,
            client,
            settings,
            scopes: BTreeMap::new(),
        }
    }

    /// The key schema (the job store's: the publisher keeps its cursors
    /// beside the jobs it follows).
    fn keys(&self) -> &crate::redis::Keys {
        self.store.keys()
    }

    /// Runs until shutdown: republishes every scope's index, then follows
    /// the change streams. Redis or broker failures are logged and retried
    /// with backoff; nothing is skipped (the cursor only moves after a
    /// batch was published).
    pub(crate) async fn run(mut self, mut shutdown: Shutdown) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            let started = std::time::Instant::now();
            let r = tokio::select! {
                r = self.session() => r,
                _ = shutdown.wait() => {
                    // Changes already handled but not yet in a published
                    // index are published now (a restart would anyway).
                    let flush = self.flush(None);
                    if tokio::time::timeout(Duration::from_secs(2), flush).await.is_err() {
                        warn!("MES publisher: the last state index was not published within 2 s");
                    }
                    return;
                }
            };
            if let Err(e) = r {
                warn!(error = %e, "MES publisher interrupted; reconnecting");
                if !backoff.wait(started.elapsed(), &mut shutdown).await {
                    return;
                }
            }
        }
    }

    /// One connected session: start-up republish, then the follow loop.
    async fn session(&mut self) -> Result<(), PublishError> {
        let mut blocking = StreamReader::open(&self.client).await?;
        self.scopes.clear();
        for scope in self.store.scopes().await? {
            self.adopt_scope(&scope).await?;
        }
        self.flush(None).await?;
        info!(
            scopes = self.scopes.len(),
            "MES publisher republished every state index"
        );
        let mut scopes_checked = Instant::now();
        loop {
            // New scopes are looked for once per poll, not on every batch.
            if scopes_checked.elapsed() >= self.settings.poll || self.scopes.is_empty() {
                for scope in self.store.scopes().await? {
                    if !self.scopes.contains_key(&scope) {
                        self.adopt_scope(&scope).await?;
                    }
                }
                scopes_checked = Instant::now();
            }
            self.flush(Some(Instant::now())).await?;
            if self.scopes.is_empty() {
                tokio::time::sleep(self.settings.poll).await;
                continue;
            }
            let keys: Vec<String> = self.scopes.keys().map(|s| self.keys().changes(s)).collect();
            let ids: Vec<&String> = self.scopes.values().map(|f| &f.cursor).collect();
            let opts = StreamRead::new(self.settings.batch, self.block_for(Instant::now()));
            let reply = blocking.read(&keys, &ids, &opts).await?;
            let Some(reply) = reply else { continue };
            for sk in reply.keys {
                let Some(scope) = self
                    .scopes
                    .keys()
                    .find(|s| self.keys().changes(s) == sk.key)
                    .cloned()
                else {
                    continue;
                };
                let before = self.scopes[&scope].cursor.clone();
                if let Some(last) = self.advance(&scope, &before, &sk.ids).await? {
                    if let Some(f) = self.scopes.get_mut(&scope) {
                        f.cursor = last;
                    }
                }
            }
        }
    }

    /// How long the next stream read may block: until the first changed
    /// index is due, at most the poll interval.
    fn block_for(&self, now: Instant) -> Duration {
        self.scopes
            .values()
            .filter_map(|f| f.index.due_at(now))
            .map(|t| t.saturating_duration_since(now))
            .min()
            .unwrap_or(self.settings.poll)
            .min(self.settings.poll)
    }

    /// Publishes every changed index that is due at `now` (`None`: every
    /// changed index), then stores its scope's cursor.
    async fn flush(&mut self, now: Option<Instant>) -> Result<(), PublishError> {
        let due: Vec<String> = self
            .scopes
            .iter()
            .filter(|(_, f)| now.map_or(f.index.is_changed(), |t| f.index.due(t)))
            .map(|(s, _)| s.clone())
            .collect();
        for scope in due {
            self.publish_index(&scope).await?;
            let key = self.keys().pub_cursor(&scope);
            let Some(f) = self.scopes.get_mut(&scope) else {
                continue;
            };
            if f.cursor != f.stored_cursor {
                let mut c = self.store.connection();
                let _: () = c.set(key, &f.cursor).await?;
                f.stored_cursor = f.cursor.clone();
            }
        }
        Ok(())
    }

    /// First sight of a scope in this session: read its index and the ids
    /// it has retained, catch up from its stored cursor; its index is then
    /// due at once.
    async fn adopt_scope(&mut self, scope: &str) -> Result<(), PublishError> {
        let mut c = self.store.connection();
        let cursor: String = c
            .get::<_, Option<String>>(self.keys().pub_cursor(scope))
            .await?
            .unwrap_or_else(|| "0".into());
        self.repair_index(scope).await?;
        self.scopes.insert(
            scope.to_owned(),
            Followed {
                cursor: cursor.clone(),
                stored_cursor: cursor.clone(),
                index: Schedule::due_now(),
            },
        );
        let mut cursor = cursor;
        loop {
            let opts = StreamReadOptions::default().count(self.settings.batch);
            let reply: Option<StreamReadReply> = c
                .xread_options(&[self.keys().changes(scope)], &[&cursor], &opts)
                .await?;
            let entries = reply
                .and_then(|r| r.keys.into_iter().next())
                .map(|k| k.ids)
                .unwrap_or_default();
            let Some(last) = self.advance(scope, &cursor, &entries).await? else {
                break;
            };
            cursor = last;
            if let Some(f) = self.scopes.get_mut(scope) {
                f.cursor = cursor.clone();
            }
        }
        Ok(())
    }

    /// Publishes the jobs of `entries`, read from the scope's change stream
    /// after `before`; returns the new cursor (`None`: nothing read).
    ///
    /// The stream is capped: if entries after `before` were trimmed before
    /// they were read (a publisher down while more changes than the cap
    /// passed), the batch cannot say which jobs changed, so the scope is
    /// resynchronised in full instead. The check looks at the stream *after*
    /// the read: an entry trimmed before it was read leaves the first entry
    /// behind `before` for good, so no interleaving with the writers hides
    /// a gap.
    async fn advance(
        &mut self,
        scope: &str,
        before: &str,
        entries: &[redis::streams::StreamId],
    ) -> Result<Option<String>, PublishError> {
        let Some(last) = entries.last().map(|e| e.id.clone()) else {
            return Ok(None);
        };
        if let Some(info) = self.store.change_stream_info(scope).await? {
            if info.lost_after(before) {
                return self.resync(scope, before, &info).await.map(Some);
            }
        }
        let changed: BTreeSet<String> = entries
            .iter()
            .filter_map(|e| match e.map.get("job") {
                Some(redis::Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            })
            .collect();
        self.publish_batch(scope, &changed.into_iter().collect::<Vec<_>>())
            .await?;
        Ok(Some(last))
    }

    /// Full resynchronisation of a scope after a gap in its change stream:
    /// every live job's topics are published again, and the topics of jobs
    /// this publisher retained that are gone or reached EndState meanwhile
    /// are cleared (`P:{S}:pub:retained` says which). Returns the cursor to
    /// go on from: the stream's last id as seen *before* the jobs were
    /// read, so every later change is still read and replayed (idempotent).
    async fn resync(
        &mut self,
        scope: &str,
        before: &str,
        info: &crate::jobs::store::StreamInfo,
    ) -> Result<String, PublishError> {
        warn!(
            scope = %escape_for_mqtt(scope),
            cursor = before,
            first_entry = info.first.as_deref().unwrap_or(""),
            trimmed_in_total = info.trimmed(),
            "change stream was trimmed past the publisher's cursor: changes were lost; republishing the scope in full"
        );
        let mut c = self.store.connection();
        let retained: Vec<String> = c.smembers(self.keys().pub_retained(scope)).await?;
        let mut ids: BTreeSet<String> = self.store.live_ids(scope).await?.into_iter().collect();
        ids.extend(retained);
        let ids: Vec<String> = ids.into_iter().collect();
        for chunk in ids.chunks(self.settings.batch.max(1)) {
            self.publish_batch(scope, chunk).await?;
        }
        self.repair_index(scope).await?;
        info!(scope = %escape_for_mqtt(scope), jobs = ids.len(), "scope resynchronised");
        Ok(info.last_generated.clone())
    }

    fn topic(&self, scope: &str, rest: &str) -> String {
        format!("{}/{scope}/{rest}", self.settings.prefix)
    }

    async fn retained(
        &self,
        topic: String,
        ty: &str,
        scope: &str,
        body: Option<Vec<u8>>,
        trace: Option<&str>,
    ) -> Result<(), PublishError> {
        let mut e = CloudEvent::new(ty, self.settings.source.clone());
        e.subject = Some(scope.to_owned());
        // The trace of the command that made the job's latest change (kept
        // with the job while traces are on).
        e.traceparent = trace.map(str::to_owned);
        e.expiryinterval = Some(self.settings.retained_ttl.as_secs().min(u32::MAX as u64) as u32);
        if let Some(b) = body {
            e.datacontenttype = Some(ContentType::Json.header().to_owned());
            e.data = Some(b.into());
        }
        let mut msg = Outgoing::new(topic, e);
        msg.retain = true;
        match self.out.publish(msg).await {
            // One topic that can never be published (a scope stored before
            // scopes were checked) must not stop every other scope: it is
            // skipped with a log line, the batch goes on.
            Err(e) if !e.is_retryable() => {
                warn!(scope = %escape_for_mqtt(scope), error = %e, "retained topic skipped: it can never be published");
                Ok(())
            }
            r => {
                if r.is_ok() {
                    if let Some(i) = crate::metrics::instruments() {
                        i.retained();
                    }
                }
                r.map_err(PublishError::from)
            }
        }
    }

    /// Publishes the order and result topics of the jobs `ids` of `scope`
    /// and takes their states into the scope's index.
    async fn publish_batch(&mut self, scope: &str, ids: &[String]) -> Result<(), PublishError> {
        let jobs = self.store.get_many(scope, ids).await?;
        let by_id: HashMap<&str, &StoredJob> = jobs.iter().map(|j| (j.id.as_str(), j)).collect();
        // Which order topics this publisher retains, so a resynchronisation
        // knows what to clear: added before the publish (a crash in between
        // leaves an id too many, whose clearing is harmless), removed after
        // the clear.
        let shown: Vec<&str> = jobs
            .iter()
            .filter(|j| j.state.main != MainState::EndState)
            .map(|j| j.id.as_str())
            .collect();
        let mut c = self.store.connection();
        if !shown.is_empty() {
            let _: i64 = c.sadd(self.keys().pub_retained(scope), &shown).await?;
        }
        // The batch's topics, then sent together: each waits for its PUBACK,
        // but not for the one before (a batch of 500 changes is not 500
        // broker round trips in a row). Each topic appears once per batch,
        // so nothing is reordered on a topic.
        let mut cleared: Vec<&str> = Vec::new();
        let mut messages: Vec<Retained<'_>> = Vec::new();
        for id in ids {
            // Ids are data, topic levels are addressing: `PO#4711` is
            // retained under `order/PO%234711` (wire contract §8).
            let level = encode_level(id);
            let order_topic = self.topic(scope, &format!("order/{level}"));
            let result_topic = self.topic(scope, &format!("result/{level}"));
            match by_id.get(id.as_str()) {
                Some(j) if j.state.main != MainState::EndState => {
                    let body = serde_json::to_vec(&OrderTopic {
                        job_order: &j.order,
                        state: j.state.to_wire(),
                    })
                    .unwrap_or_default();
                    let trace = j.trace.as_deref();
                    messages.push((order_topic, ORDER_TYPE, Some(body), trace));
                    if matches!(j.state.main, MainState::Ended | MainState::Aborted) {
                        if let Some(r) = &j.response {
                            messages.push((
                                result_topic,
                                RESULT_TYPE,
                                Some(r.get().as_bytes().to_vec()),
                                trace,
                            ));
                        }
                    }
                }
                _ => {
                    // EndState or purged: clear both retained topics.
                    messages.push((order_topic, ORDER_TYPE, None, None));
                    messages.push((result_topic, RESULT_TYPE, None, None));
                    cleared.push(id);
                }
            }
        }
        let sends = messages
            .into_iter()
            .map(|(topic, ty, body, trace)| self.retained(topic, ty, scope, body, trace));
        futures_util::future::try_join_all(sends).await?;
        if !cleared.is_empty() {
            let _: i64 = c.srem(self.keys().pub_retained(scope), &cleared).await?;
        }
        if let Some(f) = self.scopes.get_mut(scope) {
            f.index.changed();
        }
        debug!(scope, jobs = ids.len(), "published order/result topics");
        Ok(())
    }

    /// Publishes the scope's index as Redis holds it, with the next `seq`
    /// (one round trip: `HGETALL` of the entries and `INCR` of `seq`).
    async fn publish_index(&mut self, scope: &str) -> Result<(), PublishError> {
        let mut c = self.store.connection();
        let (entries, seq): (Vec<(String, String)>, u64) = redis::pipe()
            .hgetall(self.keys().state_index(scope))
            .incr(self.keys().pub_seq(scope), 1)
            .query_async(&mut c)
            .await?;
        let jobs = entries.len();
        let body = index::body(
            seq,
            scope,
            entries.iter().map(|(id, e)| (id.as_str(), e.as_str())),
        );
        drop(entries);
        let interval = self.settings.state_index_interval;
        if let Some(f) = self.scopes.get_mut(scope) {
            f.index.published(Instant::now(), interval, jobs);
        }
        self.retained(
            self.topic(scope, "state-index"),
            STATE_INDEX_TYPE,
            scope,
            Some(body),
            None,
        )
        .await?;
        debug!(scope, seq, jobs, "published state index");
        Ok(())
    }
}

impl MesPublisher {
    /// Makes the scope's stored state index agree with its live jobs where
    /// the two differ in number: data written by a version without the
    /// index, or changes an older replica made during an upgrade. Reads the
    /// live jobs in chunks; entries are written only for jobs still at the
    /// version read (`index_fill.lua`), so it never undoes a newer change.
    async fn repair_index(&self, scope: &str) -> Result<(), PublishError> {
        let keys = self.keys();
        let (index_key, live_key) = (keys.state_index(scope), keys.live(scope));
        let mut c = self.store.connection();
        let (listed, live): (usize, usize) = redis::pipe()
            .hlen(&index_key)
            .scard(&live_key)
            .query_async(&mut c)
            .await?;
        if listed == live {
            return Ok(());
        }
        info!(scope = %escape_for_mqtt(scope), listed, live, "state index repaired from the live jobs");
        let ids = self.store.live_ids(scope).await?;
        for chunk in ids.chunks(REPAIR_CHUNK) {
            let mut read = redis::pipe();
            for id in chunk {
                let k = keys.job(scope, id);
                read.hget(&k, "v").hget(&k, "state").hexists(&k, "resp");
            }
            let rows: Vec<(Option<String>, Option<String>, bool)> = {
                let flat: Vec<redis::Value> = read.query_async(&mut c).await?;
                flat.chunks_exact(3)
                    .map(|r| {
                        (
                            redis::from_redis_value::<Option<String>>(r[0].clone())
                                .ok()
                                .flatten(),
                            redis::from_redis_value::<Option<String>>(r[1].clone())
                                .ok()
                                .flatten(),
                            redis::from_redis_value::<bool>(r[2].clone()).unwrap_or(false),
                        )
                    })
                    .collect()
            };
            let mut fill = INDEX_FILL.prepare_invoke();
            fill.key(&index_key)
                .key(&live_key)
                .arg(keys.scope_prefix(scope));
            let mut triples = Vec::new();
            for (id, (v, state, has_result)) in chunk.iter().zip(rows) {
                let (Some(v), Some(state)) = (v, state) else {
                    continue;
                };
                let Ok(state) = parse_state_key(&state) else {
                    continue;
                };
                triples.push((id, v, index::entry(id, state, has_result)));
            }
            fill.arg(triples.len());
            for (id, v, entry) in &triples {
                fill.arg(id.as_str()).arg(v).arg(entry);
            }
            let _: i64 = fill.invoke_async(&mut c).await?;
        }
        let listed: Vec<String> = c.hkeys(&index_key).await?;
        let live: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let stale: Vec<&String> = listed
            .iter()
            .filter(|id| !live.contains(id.as_str()))
            .collect();
        for chunk in stale.chunks(REPAIR_CHUNK) {
            let mut fill = INDEX_FILL.prepare_invoke();
            fill.key(&index_key)
                .key(&live_key)
                .arg(keys.scope_prefix(scope))
                .arg(0);
            for id in chunk {
                fill.arg(id.as_str());
            }
            let _: i64 = fill.invoke_async(&mut c).await?;
        }
        Ok(())
    }
}

/// Jobs read per round trip when a state index is repaired.
const REPAIR_CHUNK: usize = 500;
