//! Job persistence on plain Redis 7 (no modules).
//!
//! Key schema (`P` = the configured key prefix, `S` = the scope; `{S}` is a
//! Redis Cluster hash tag, so every key one script touches lives in the same
//! slot; the keys are spelled out in `crate::redis::Keys`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:scopes` | set | every scope that ever had a job or configuration |
//! | `P:{S}:job:{id}` | hash | `v` version, `order` JobOrder JSON, `state` state key, `resp` JobResponse JSON, `cause` last command, `updated` ms |
//! | `P:{S}:live` | set | ids of live jobs (not EndState): acceptance limit, state index |
//! | `P:{S}:st:{state}` | set | ids per state key (`2.2` = AllowedToStart/Ready): queries by state |
//! | `P:{S}:ended` | zset | EndState ids scored by the time they may be purged |
//! | `P:{S}:changes` | stream | one entry per applied change (`job`, `state`, `v`, `kind`) for the publisher and the SFC engine, capped at about [`JobStore::with_stream_len`] entries |
//! | `P:{S}:cfg:{kind}` | set | known equipment, material classes/definitions, personnel, physical assets |
//! | `P:{S}:cfg:workmaster` | hash | work master id → extended work master JSON |
//! | `P:{S}:cfg:limit` | string | max downloadable job orders (absent: the default) |
//! | `P:{S}:lease:{id}` | zset | dispatch leases of a job: command being sent → expiry (ms, server time) |
//! | `P:{S}:audit:{id}` | stream | the job's audit trail ([`super::audit`]), removed with the job |
//!
//! Every change to a job goes through `job_apply.lua`, a compare-and-swap on the
//! job's version that writes the document, the indexes and the change entry
//! in one step: concurrent commands for one job from several replicas are
//! serialised, none is lost and none is applied to a stale state.

use super::audit::{AuditEntry, AuditEvent};
use super::state::{JobState, MainState, StateError};
use crate::redis::scripts::{AUDIT_APPEND, JOB_APPLY, JOB_LEASES_LIVE, JOB_PURGE};
use crate::redis::Keys;
use crate::redis::RedisConnection;
use redis::AsyncCommands;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::time::Duration;

/// How long a dispatch lease lives at most: the time an executor has to
/// hand one command to its transport while the job is fenced against
/// leaving Running unnoticed (see [`JobStore::await_dispatches`]). A
/// replica that dies holding one delays the status event of its job's next
/// transition out of Running by at most this long.
pub const DISPATCH_LEASE: Duration = Duration::from_secs(5);

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis is unreachable or failed: try again later.
    #[error("redis unavailable: {0}")]
    Unavailable(#[from] redis::RedisError),
    /// A stored value cannot be read back (written by something else, or an
    /// incompatible version).
    #[error("stored job '{job}' in scope '{scope}' is unreadable: {reason}")]
    Corrupt {
        /// Scope.
        scope: String,
        /// Job id.
        job: String,
        /// What is wrong.
        reason: String,
    },
}

impl From<StoreError> for crate::HandlerError {
    fn from(e: StoreError) -> Self {
        use crate::ErrorKind;
        match e {
            StoreError::Unavailable(e) => e.into(),
            e @ StoreError::Corrupt { .. } => {
                crate::HandlerError::terminal(ErrorKind::InternalLogicError, e.to_string())
            }
        }
    }
}

/// A job as stored.
#[derive(Debug, Clone)]
pub struct StoredJob {
    /// The job order id.
    pub id: String,
    /// Version, incremented by every change (the compare-and-swap token).
    pub version: u64,
    /// The job order, exactly as last stored (JSON).
    pub order: Box<RawValue>,
    /// Its state.
    pub state: JobState,
    /// The job response, once one exists (JSON).
    pub response: Option<Box<RawValue>>,
    /// `source` and `id` of the command that made the last change.
    pub cause: Option<String>,
    /// The W3C `traceparent` of the handling of the latest command that
    /// changed the job while traces were on (the parent of the job's
    /// trace in the SFC engine).
    pub trace: Option<String>,
}

/// A change to write with [`JobStore::apply`].
#[derive(Debug, Clone)]
pub struct Change<'a> {
    /// The job order id.
    pub id: &'a str,
    /// The version read (0 for a new job).
    pub expected_version: u64,
    /// The state before (ignored for a new job).
    pub from: JobState,
    /// The state after.
    pub to: JobState,
    /// A new job order document, or `None` to keep the stored one.
    pub order: Option<&'a RawValue>,
    /// A new job response, or `None` to keep the stored one.
    pub response: Option<&'a RawValue>,
    /// The causing command (`source` and `id`), for idempotent replays.
    pub cause: &'a str,
    /// For a new job: the live-job limit of the scope (0: none).
    pub limit: u64,
    /// What happened (`store`, `update`, `transition`, `response`), for the
    /// change stream.
    pub kind: &'a str,
    /// The entry appended to the job's audit trail with the change, if
    /// any (only when the change is written).
    pub audit: Option<&'a AuditEvent>,
}

/// The answer of [`JobStore::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Written; the job's new version.
    Ok(u64),
    /// The job changed since it was read (its version now), or, for a new
    /// job, it already exists.
    Conflict(u64),
    /// A new job was refused: the scope has this many live jobs.
    Limit(u64),
}

/// Station configuration kinds held as sets of ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// `EquipmentRequirements[].ID`.
    Equipment,
    /// `MaterialRequirements[].MaterialClassID`.
    MaterialClass,
    /// `MaterialRequirements[].MaterialDefinitionID`.
    MaterialDefinition,
    /// `PersonnelRequirements[].ID`.
    Personnel,
    /// `PhysicalAssetRequirements[].ID`.
    PhysicalAsset,
    /// `WorkMasterID[].ID` (the work masters themselves are in a hash).
    WorkMaster,
}

impl ResourceKind {
    /// All kinds.
    pub const ALL: [ResourceKind; 6] = [
        ResourceKind::Equipment,
        ResourceKind::MaterialClass,
        ResourceKind::MaterialDefinition,
        ResourceKind::Personnel,
        ResourceKind::PhysicalAsset,
        ResourceKind::WorkMaster,
    ];

    /// The key segment (also the `config.*` type segment).
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Equipment => "equipment",
            ResourceKind::MaterialClass => "materialclass",
            ResourceKind::MaterialDefinition => "materialdefinition",
            ResourceKind::Personnel => "personnel",
            ResourceKind::PhysicalAsset => "physicalasset",
            ResourceKind::WorkMaster => "workmaster",
        }
    }
}

/// The Redis job store. Cheap to clone.
#[derive(Clone)]
pub struct JobStore {
    conn: RedisConnection,
    keys: Keys,
    retention: Duration,
    stream_len: u64,
}

impl std::fmt::Debug for JobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobStore")
            .field("prefix", &self.keys.prefix())
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

/// The shared clock (Redis's): deadlines and ages span replicas.
fn now_ms() -> u64 {
    crate::runtime::clock::now_ms()
}

impl JobStore {
    /// A store under `prefix`, keeping EndState jobs for `retention`.
    pub fn new(conn: RedisConnection, prefix: impl Into<String>, retention: Duration) -> Self {
        JobStore {
            conn,
            keys: Keys::new(prefix),
            retention,
            stream_len: 10_000,
        }
    }

    /// Caps each scope's change stream at about `len` entries (`XADD MAXLEN
    /// ~`, default 10 000; at least 1). Readers that fall further behind
    /// (a publisher that was down, an engine with a backlog) notice it with
    /// [`JobStore::change_stream_info`] and resynchronise in full.
    #[must_use]
    pub fn with_stream_len(mut self, len: u64) -> Self {
        self.stream_len = len.max(1);
        self
    }

    /// Where a scope's change stream stands (`XINFO STREAM`); `None` if it
    /// does not exist yet.
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn change_stream_info(&self, scope: &str) -> Result<Option<StreamInfo>, StoreError> {
        stream_info(&mut self.conn.clone(), &self.keys.changes(scope)).await
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        self.keys.prefix()
    }

    /// The key schema under this store's prefix (shared by the components
    /// that keep their state beside the jobs: the SFC engine, the
    /// publisher).
    pub(crate) fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The connection (for components that share it, like the publisher).
    pub fn connection(&self) -> RedisConnection {
        self.conn.clone()
    }

    /// Records that `scope` exists (idempotent; outside the scope's hash
    /// slot, so not part of the atomic scripts).
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn register_scope(&self, scope: &str) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let _: i64 = c.sadd(self.keys.scopes(), scope).await?;
        Ok(())
    }

    /// Every scope known.
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn scopes(&self) -> Result<Vec<String>, StoreError> {
        let mut c = self.conn.clone();
        let mut s: Vec<String> = c.smembers(self.keys.scopes()).await?;
        s.sort();
        Ok(s)
    }

    /// Reads one job.
    ///
    /// # Errors
    /// Redis is unavailable, or the stored job is unreadable.
    pub async fn get(&self, scope: &str, id: &str) -> Result<Option<StoredJob>, StoreError> {
        let mut c = self.conn.clone();
        let h: HashMap<String, String> = c.hgetall(self.keys.job(scope, id)).await?;
        if h.is_empty() {
            return Ok(None);
        }
        parse_job(scope, id, h).map(Some)
    }

    /// Writes a change atomically if the job is still at
    /// `change.expected_version`.
    ///
    /// # Errors
    /// Redis is unavailable or answered unexpectedly.
    pub async fn apply(&self, scope: &str, change: &Change<'_>) -> Result<Applied, StoreError> {
        let mut c = self.conn.clone();
        let (tag, n): (String, u64) = JOB_APPLY
            .key(self.keys.job(scope, change.id))
            .key(self.keys.live(scope))
            .key(self.keys.by_state(scope, &change.from.key()))
            .key(self.keys.by_state(scope, &change.to.key()))
            .key(self.keys.ended(scope))
            .key(self.keys.changes(scope))
            .key(self.keys.state_index(scope))
            .key(self.keys.audit(scope, change.id))
            .arg(change.expected_version)
            .arg(change.order.map_or("", RawValue::get))
            .arg(change.to.key())
            .arg(if change.to.main.is_live() { "1" } else { "0" })
            .arg(change.response.map_or("", RawValue::get))
            .arg(change.cause)
            .arg(now_ms())
            .arg(self.retention.as_millis() as u64)
            .arg(change.limit)
            .arg(self.stream_len)
            .arg(change.id)
            .arg(change.kind)
            .arg(serde_json::to_string(&change.to.to_wire()).unwrap_or_else(|_| "[]".into()))
            .arg(if change.from.main.is_live() { "1" } else { "0" })
            // The span of the command's handling (empty with traces off).
            .arg(crate::telemetry::current_traceparent().unwrap_or_default())
            .arg(change.audit.map_or_else(String::new, audit_json))
            .invoke_async(&mut c)
            .await?;
        Ok(match tag.as_str() {
            "OK" => Applied::Ok(n),
            "LIMIT" => Applied::Limit(n),
            _ => Applied::Conflict(n),
        })
    }

    /// Appends `event` to the audit trail of job `id` if the job exists
    /// (a refused command; applied changes are recorded by
    /// [`JobStore::apply`] itself). Returns whether it was appended.
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn append_audit(
        &self,
        scope: &str,
        id: &str,
        event: &AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut c = self.conn.clone();
        let n: u64 = AUDIT_APPEND
            .key(self.keys.job(scope, id))
            .key(self.keys.audit(scope, id))
            .arg(audit_json(event))
            .invoke_async(&mut c)
            .await?;
        Ok(n == 1)
    }

    /// The audit trail of job `id` in `scope`, oldest first
    /// (`XRANGE P:{S}:audit:{id} - +`); empty if the job has none (never
    /// existed, or was purged with its trail).
    ///
    /// # Errors
    /// Redis is unavailable, or an entry is unreadable
    /// ([`StoreError::Corrupt`] names it).
    pub async fn audit(&self, scope: &str, id: &str) -> Result<Vec<AuditEntry>, StoreError> {
        let mut c = self.conn.clone();
        let reply: redis::streams::StreamRangeReply =
            c.xrange_all(self.keys.audit(scope, id)).await?;
        reply
            .ids
            .iter()
            .map(|e| {
                let fields: HashMap<String, String> = e
                    .map
                    .iter()
                    .filter_map(|(k, v)| {
                        redis::from_redis_value::<String>(v.clone())
                            .ok()
                            .map(|v| (k.clone(), v))
                    })
                    .collect();
                super::audit::parse_entry(&e.id, &fields).map_err(|reason| StoreError::Corrupt {
                    scope: scope.to_owned(),
                    job: id.to_owned(),
                    reason,
                })
            })
            .collect()
    }

    /// Waits until job `id` has no unexpired dispatch lease, i.e. until
    /// every command an executor decided to send while the job was Running
    /// has been handed to its transport. Call it after a transition out of
    /// Running and before publishing its status event: the job is no
    /// longer Running, so no new lease can be taken, and whatever is
    /// waited for is bounded by [`DISPATCH_LEASE`]. Returns `false` if
    /// leases were still live after `DISPATCH_LEASE` (clocks or a stalled
    /// Redis; the caller goes on).
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn await_dispatches(&self, scope: &str, id: &str) -> Result<bool, StoreError> {
        let key = self.keys.dispatch_leases(scope, id);
        let deadline = tokio::time::Instant::now() + DISPATCH_LEASE + Duration::from_millis(500);
        let mut pause = Duration::from_millis(1);
        loop {
            let mut c = self.conn.clone();
            let live: u64 = JOB_LEASES_LIVE.key(&key).invoke_async(&mut c).await?;
            if live == 0 {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            // A send takes milliseconds: poll fast, then back off.
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// The ids of the scope's jobs in `state`.
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn ids_in_state(
        &self,
        scope: &str,
        state: JobState,
    ) -> Result<Vec<String>, StoreError> {
        let mut c = self.conn.clone();
        let mut ids: Vec<String> = c.smembers(self.keys.by_state(scope, &state.key())).await?;
        ids.sort();
        Ok(ids)
    }

    /// The ids of the scope's live jobs.
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn live_ids(&self, scope: &str) -> Result<Vec<String>, StoreError> {
        let mut c = self.conn.clone();
        let mut ids: Vec<String> = c.smembers(self.keys.live(scope)).await?;
        ids.sort();
        Ok(ids)
    }

    /// Reads many jobs in one round trip (missing ones are skipped).
    ///
    /// # Errors
    /// Redis is unavailable, or a stored job is unreadable.
    pub async fn get_many(
        &self,
        scope: &str,
        ids: &[String],
    ) -> Result<Vec<StoredJob>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hgetall(self.keys.job(scope, id));
        }
        let mut c = self.conn.clone();
        let hs: Vec<HashMap<String, String>> = pipe.query_async(&mut c).await?;
        ids.iter()
            .zip(hs)
            .filter(|(_, h)| !h.is_empty())
            .map(|(id, h)| parse_job(scope, id, h))
            .collect()
    }

    /// Removes EndState jobs of `scope` whose retention has passed, at most
    /// `batch` per call; returns how many were removed.
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn purge_expired(&self, scope: &str, batch: u32) -> Result<u64, StoreError> {
        let mut c = self.conn.clone();
        let n: u64 = JOB_PURGE
            .key(self.keys.ended(scope))
            .key(self.keys.changes(scope))
            .arg(now_ms())
            .arg(batch)
            .arg(self.keys.scope_prefix(scope))
            .arg(self.stream_len)
            .invoke_async(&mut c)
            .await?;
        Ok(n)
    }

    // --- station configuration --------------------------------------------

    /// Adds (`present`) or removes a resource id of the scope.
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn set_resource(
        &self,
        scope: &str,
        kind: ResourceKind,
        id: &str,
        present: bool,
    ) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let key = self.keys.resources(scope, kind.as_str());
        let _: i64 = if present {
            c.sadd(key, id).await?
        } else {
            c.srem(key, id).await?
        };
        Ok(())
    }

    /// Which of `ids` are unknown in the scope, per kind; one round trip.
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn unknown_resources(
        &self,
        scope: &str,
        wanted: &[(ResourceKind, String)],
    ) -> Result<Vec<(ResourceKind, String)>, StoreError> {
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (kind, id) in wanted {
            match kind {
                ResourceKind::WorkMaster => pipe.hexists(self.keys.work_masters(scope), id),
                k => pipe.sismember(self.keys.resources(scope, k.as_str()), id),
            };
        }
        let mut c = self.conn.clone();
        let found: Vec<bool> = pipe.query_async(&mut c).await?;
        Ok(wanted
            .iter()
            .zip(found)
            .filter(|(_, f)| !f)
            .map(|(w, _)| w.clone())
            .collect())
    }

    /// Stores (`Some`) or deletes a work master.
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn set_work_master(
        &self,
        scope: &str,
        id: &str,
        doc: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let key = self.keys.work_masters(scope);
        let _: i64 = match doc {
            Some(d) => c.hset(key, id, d).await?,
            None => c.hdel(key, id).await?,
        };
        Ok(())
    }

    /// A stored work master (the extended work master JSON).
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn work_master(&self, scope: &str, id: &str) -> Result<Option<String>, StoreError> {
        let mut c = self.conn.clone();
        Ok(c.hget(self.keys.work_masters(scope), id).await?)
    }

    /// Sets (`Some`) or clears the scope's live-job limit.
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn set_limit(&self, scope: &str, limit: Option<u64>) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let key = self.keys.job_limit(scope);
        match limit {
            Some(n) => c.set::<_, _, ()>(key, n).await?,
            None => c.del::<_, ()>(key).await?,
        }
        Ok(())
    }

    /// The scope's configuration in one round trip: the ids of every
    /// [`ResourceKind`] but work masters (`P:{S}:cfg:{kind}` sets, each
    /// sorted), the stored work masters (`P:{S}:cfg:workmaster`: id →
    /// extended work master JSON, by id) and the live-job limit
    /// (`P:{S}:cfg:limit`, `None`: not set). What the OPC UA face shows
    /// as `EquipmentID`, …, `WorkMaster` and `MaxDownloadableJobOrders`.
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn configuration(&self, scope: &str) -> Result<ScopeConfiguration, StoreError> {
        let kinds = [
            ResourceKind::Equipment,
            ResourceKind::MaterialClass,
            ResourceKind::MaterialDefinition,
            ResourceKind::Personnel,
            ResourceKind::PhysicalAsset,
        ];
        let mut pipe = redis::pipe();
        for k in kinds {
            pipe.smembers(self.keys.resources(scope, k.as_str()));
        }
        pipe.hgetall(self.keys.work_masters(scope))
            .get(self.keys.job_limit(scope));
        let mut c = self.conn.clone();
        type Reply = (
            Vec<String>,
            Vec<String>,
            Vec<String>,
            Vec<String>,
            Vec<String>,
            std::collections::BTreeMap<String, String>,
            Option<u64>,
        );
        let (eq, mc, md, pe, pa, masters, limit): Reply = pipe.query_async(&mut c).await?;
        let resources = kinds
            .into_iter()
            .zip([eq, mc, md, pe, pa])
            .map(|(k, mut ids)| {
                ids.sort();
                (k, ids)
            })
            .collect();
        Ok(ScopeConfiguration {
            resources,
            work_masters: masters.into_iter().collect(),
            limit,
        })
    }

    /// The scope's live-job limit, if one was set.
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn limit(&self, scope: &str) -> Result<Option<u64>, StoreError> {
        let mut c = self.conn.clone();
        Ok(c.get(self.keys.job_limit(scope)).await?)
    }
}

/// A scope's station configuration, read by [`JobStore::configuration`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeConfiguration {
    /// Ids per kind (every kind but [`ResourceKind::WorkMaster`]), sorted.
    pub resources: Vec<(ResourceKind, Vec<String>)>,
    /// Work master id → its extended work master JSON, sorted by id.
    pub work_masters: Vec<(String, String)>,
    /// The scope's live-job limit, if one was set.
    pub limit: Option<u64>,
}

impl ScopeConfiguration {
    /// The ids of `kind` (empty for [`ResourceKind::WorkMaster`]: see
    /// `work_masters`).
    pub fn ids(&self, kind: ResourceKind) -> &[String] {
        self.resources
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(&[], |(_, ids)| ids.as_slice())
    }
}

/// The stored form of an audit entry (JSON; a serialisation of these
/// plain types cannot fail, the fallback keeps this free of panics).
pub(crate) fn audit_json(event: &AuditEvent) -> String {
    serde_json::to_string(event).unwrap_or_else(|_| r#"{"kind":"unknown"}"#.to_owned())
}

/// Where a stream stands: what a reader needs to know whether the cap
/// removed entries it had not read yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamInfo {
    /// Entries in the stream now.
    pub length: u64,
    /// Entries ever added (`entries-added`, Redis 7).
    pub added: u64,
    /// The id of the first entry still there.
    pub first: Option<String>,
    /// The id of the last entry ever added (`last-generated-id`).
    pub last_generated: String,
}

impl StreamInfo {
    /// Entries the cap removed over the stream's life (change streams are
    /// only ever trimmed, never `XDEL`ed).
    pub fn trimmed(&self) -> u64 {
        self.added.saturating_sub(self.length)
    }

    /// Whether a reader whose last read entry is `cursor` (`0`: none yet)
    /// may have lost entries to the cap: something was trimmed and the
    /// reader is behind the first entry left. (If the trim happened to cut
    /// exactly after `cursor`, nothing was lost and this still says yes: a
    /// reader that far behind resynchronises, which is harmless.)
    pub fn lost_after(&self, cursor: &str) -> bool {
        self.trimmed() > 0
            && self
                .first
                .as_deref()
                .is_some_and(|f| cmp_stream_ids(cursor, f) == std::cmp::Ordering::Less)
    }
}

/// Orders stream ids (`ms-seq`, or `ms`, `0`) numerically; unreadable parts
/// count as 0.
pub fn cmp_stream_ids(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(id: &str) -> (u64, u64) {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
    }
    parts(a).cmp(&parts(b))
}

/// `XINFO STREAM key`, `None` if the stream does not exist.
///
/// # Errors
/// Redis is unavailable.
pub async fn stream_info(
    c: &mut (impl redis::aio::ConnectionLike + Send),
    key: &str,
) -> Result<Option<StreamInfo>, StoreError> {
    let raw: redis::Value = match redis::cmd("XINFO")
        .arg("STREAM")
        .arg(key)
        .query_async(c)
        .await
    {
        Ok(v) => v,
        Err(e) if e.to_string().contains("no such key") => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let pairs: Vec<(redis::Value, redis::Value)> = match raw {
        redis::Value::Map(m) => m,
        redis::Value::Array(a) => {
            let mut it = a.into_iter();
            let mut out = Vec::new();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                out.push((k, v));
            }
            out
        }
        _ => Vec::new(),
    };
    let text = |v: &redis::Value| redis::from_redis_value::<String>(v.clone()).ok();
    let mut info = StreamInfo::default();
    for (k, v) in &pairs {
        match text(k).as_deref() {
            Some("length") => info.length = redis::from_redis_value(v.clone()).unwrap_or(0),
            Some("entries-added") => info.added = redis::from_redis_value(v.clone()).unwrap_or(0),
            Some("last-generated-id") => info.last_generated = text(v).unwrap_or_default(),
            Some("first-entry") => {
                // [id, [field, value, …]] or nil on an empty stream.
                if let redis::Value::Array(e) = v {
                    info.first = e.first().and_then(text);
                }
            }
            _ => {}
        }
    }
    if info.added == 0 {
        // A server without `entries-added` (before 7.0): only the length
        // is known, and a trimmed stream cannot be told from a full one.
        info.added = info.length;
    }
    Ok(Some(info))
}

fn parse_job(
    scope: &str,
    id: &str,
    mut h: HashMap<String, String>,
) -> Result<StoredJob, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        scope: scope.to_owned(),
        job: id.to_owned(),
        reason,
    };
    let version = h
        .get("v")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| corrupt("no version".into()))?;
    let state = h
        .get("state")
        .ok_or_else(|| corrupt("no state".into()))
        .and_then(|k| parse_state_key(k).map_err(|e| corrupt(e.to_string())))?;
    let raw = |s: String, what: &str| {
        RawValue::from_string(s).map_err(|e| corrupt(format!("{what}: {e}")))
    };
    let order = raw(
        h.remove("order")
            .ok_or_else(|| corrupt("no job order".into()))?,
        "job order",
    )?;
    let response = h
        .remove("resp")
        .map(|r| raw(r, "job response"))
        .transpose()?;
    Ok(StoredJob {
        id: id.to_owned(),
        version,
        order,
        state,
        response,
        cause: h.remove("cause"),
        trace: h.remove("trace"),
    })
}

/// Reads a [`JobState::key`] back.
///
/// # Errors
/// Not a key that `JobState::key` produces.
pub fn parse_state_key(k: &str) -> Result<JobState, StateError> {
    let (main, sub) = match k.split_once('.') {
        Some((m, s)) => (m, Some(s)),
        None => (k, None),
    };
    let num = |s: &str| {
        s.parse::<u32>()
            .map_err(|_| StateError::UnknownNumber(u32::MAX))
    };
    let main_n = num(main)?;
    let main = MainState::from_number(main_n).ok_or(StateError::UnknownNumber(main_n))?;
    let sub = match sub {
        None => None,
        Some(s) => {
            let n = num(s)?;
            Some(
                main.substates()
                    .iter()
                    .copied()
                    .find(|x| x.number() == n)
                    .ok_or(StateError::UnknownSubstate {
                        main: main.name(),
                        number: n,
                    })?,
            )
        }
    };
    Ok(JobState::new(main, sub))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_keys_round_trip() {
        for main in MainState::ALL {
            let mut all = vec![JobState::new(main, None)];
            all.extend(
                main.substates()
                    .iter()
                    .map(|s| JobState::new(main, Some(*s))),
            );
            for s in all {
                assert_eq!(parse_state_key(&s.key()).unwrap(), s);
            }
        }
        assert!(parse_state_key("9").is_err());
        assert!(parse_state_key("3.1").is_err());
        assert!(parse_state_key("x").is_err());
    }

    #[test]
    fn a_reader_behind_the_first_entry_of_a_trimmed_stream_lost_entries() {
        use std::cmp::Ordering;
        assert_eq!(cmp_stream_ids("0", "1-0"), Ordering::Less);
        assert_eq!(cmp_stream_ids("10-2", "9-7"), Ordering::Greater);
        assert_eq!(cmp_stream_ids("10-2", "10-10"), Ordering::Less);
        let mut info = StreamInfo {
            length: 20,
            added: 20,
            first: Some("100-0".into()),
            last_generated: "200-0".into(),
        };
        // Nothing trimmed: a fresh reader (cursor 0) lost nothing.
        assert!(!info.lost_after("0"));
        info.added = 150;
        assert!(info.lost_after("0"));
        assert!(info.lost_after("99-5"));
        assert!(!info.lost_after("100-0"));
        assert!(!info.lost_after("150-0"));
    }
}
