//! Values and events of the OPC UA face from the change streams (issue #13,
//! `docs/plan-opcua-face.md` §6): whichever face or replica changed a job,
//! every replica's server shows it.
//!
//! One task per replica, beside the server ([`Follower::run`]):
//!
//! - **Scopes**: the configured ones (`opcua.scopes`) and every scope in
//!   Redis (`P:scopes`), looked for every [`POLL`]; a scope first seen gets
//!   its `Objects/<scope>/JobManagement` instance while the server runs.
//! - **Jobs**: per scope, the position of its change stream
//!   (`P:{S}:changes`) is taken, the live jobs are loaded, then the stream
//!   is followed (`XREAD`, no consumer group: every replica reads every
//!   entry). Each batch of entries updates `JobOrderControl/JobOrderList`
//!   (`ISA95JobOrderAndStateDataType[]`: `{JobOrder, State[]}` of every
//!   live job, by id) and `CurrentState` (see below) in one
//!   `set_values` call, so monitored items get the change, and raises one
//!   `ISA95JobOrderStatusEventType` per entry (not for `purged` entries)
//!   on `JobOrderControl`, with the state of that entry and the job's
//!   order and response ([`crate::jobs::manager::status_event`], the MQTT
//!   MES's fields). A cursor the stream's cap passed by (`StreamInfo::lost_after`)
//!   means changes were missed: the scope is loaded again in full, with a
//!   warning, and the missed changes raise no events.
//! - **Configuration** (not in the change stream): `EquipmentID`,
//!   `MaterialClassID`, `MaterialDefinitionID`, `PersonnelID`,
//!   `PhysicalAssetID` (`String[]`, sorted), `WorkMaster`
//!   (`ISA95WorkMasterDataType[]`: `ID`, `Description`, `Parameters` of the
//!   stored work masters) and `MaxDownloadableJobOrders` (`UInt16`: the
//!   scope's limit, else `jobs.default_limit`; no limit (0) and limits
//!   above 65535 show as 65535) are read every [`POLL`] in one round trip
//!   and set only when they changed.
//!
//! `CurrentState` (with its `Id`): the receiver has one state machine in the
//! model, but a station has many jobs; it shows the state of the job
//! changed most recently (after a start or reload: the state of the
//! stream's last entry), its `Id` the matching state object of
//! `ISA95JobOrderReceiverObjectType` (null for states the type has no object
//! for). Per-job states are in `JobOrderList`.
//!
//! Redis down: the server keeps serving what it has; the task logs, waits
//! with backoff and starts a new session, going on from the cursors it had
//! (or reloading a scope whose stream no longer has them). Works on one
//! Redis and on a Redis Cluster (`StreamReader` reads each slot's streams
//! on a connection to that slot's master).

use super::event::{JobOrderStatusEvent, StatusFields};
use super::node_manager::{add_scope, Indices, JobsNodeManager};
use super::types::{JOB_ORDER, JOB_ORDER_AND_STATE, JOB_RESPONSE, STATE, WORK_MASTER};
use crate::jobs::manager::status_event;
use crate::jobs::store::{
    cmp_stream_ids, parse_state_key, JobStore, ResourceKind, ScopeConfiguration, StoreError,
    StoredJob, StreamInfo,
};
use crate::jobs::{JobState, MainState};
use crate::redis::{RedisClient, StreamRead, StreamReader};
use crate::runtime::backoff::Backoff;
use crate::runtime::Shutdown;
use chrono::{TimeZone, Utc};
use opcua::nodes::Event;
use opcua::server::node_manager::memory::InMemoryNodeManager;
use opcua::server::SubscriptionCache;
use opcua::types::{
    Array, DataValue, DateTime, LocalizedText, NodeId, Variant, VariantScalarTypeId,
};
use redis::streams::StreamId;
use serde_json::Value;
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// How often scopes and configuration are looked at, and the longest wait
/// for new changes.
pub(crate) const POLL: Duration = Duration::from_secs(2);

/// How long the follower waits for the server to build the structured
/// types before it shows values without them.
const TYPES_WAIT: Duration = Duration::from_secs(30);

/// Most change entries read per stream and read.
const BATCH: usize = 200;

/// The node manager as the server holds it.
pub(crate) type JobsManager = InMemoryNodeManager<JobsNodeManager>;

/// What stops a session (the loop logs it and starts a new one).
#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// The follower of one replica (see the module documentation).
pub(crate) struct Follower {
    pub(crate) store: JobStore,
    /// Opens the blocking stream reader's own connections.
    pub(crate) client: RedisClient,
    pub(crate) manager: Arc<JobsManager>,
    pub(crate) subscriptions: Arc<SubscriptionCache>,
    pub(crate) ns: Indices,
    /// `opcua.scopes`: followed even before Redis knows them.
    pub(crate) configured: Vec<String>,
    /// `jobs.default_limit` (0: none), for scopes without a limit.
    pub(crate) default_limit: u64,
}

/// The node ids of one scope's receiver and its variables.
#[derive(Debug, Clone)]
struct ScopeNodes {
    receiver: NodeId,
    job_order_list: NodeId,
    current_state: NodeId,
    current_state_id: NodeId,
    resources: [(ResourceKind, NodeId); 5],
    work_master: NodeId,
    max_downloadable: NodeId,
}

impl ScopeNodes {
    /// The ids `add_scope` gives the instance's nodes.
    fn new(station: u16, scope: &str) -> Self {
        let id = |rest: &str| {
            NodeId::new(
                station,
                format!("{scope}/JobManagement/JobOrderControl{rest}"),
            )
        };
        ScopeNodes {
            receiver: id(""),
            job_order_list: id("/JobOrderList"),
            current_state: id("/CurrentState"),
            current_state_id: id("/CurrentState/Id"),
            resources: [
                (ResourceKind::Equipment, id("/EquipmentID")),
                (ResourceKind::MaterialClass, id("/MaterialClassID")),
                (
                    ResourceKind::MaterialDefinition,
                    id("/MaterialDefinitionID"),
                ),
                (ResourceKind::Personnel, id("/PersonnelID")),
                (ResourceKind::PhysicalAsset, id("/PhysicalAssetID")),
            ],
            work_master: id("/WorkMaster"),
            max_downloadable: id("/MaxDownloadableJobOrders"),
        }
    }
}

/// One change entry, read.
#[derive(Debug, Clone, PartialEq)]
struct Change {
    /// The entry id.
    entry: String,
    job: String,
    /// `None` for a purge.
    state: Option<JobState>,
}

/// What the follower knows of one scope: pure bookkeeping, no I/O.
#[derive(Debug, Default)]
struct ScopeView {
    /// The last entry handled (`0-0`: none).
    cursor: String,
    /// The live jobs by id.
    jobs: BTreeMap<String, StoredJob>,
    /// The configuration last shown.
    config: Option<ScopeConfiguration>,
}

/// One event to raise: the job with the state of its change entry.
#[derive(Debug, Clone)]
struct Raised {
    entry: String,
    job: StoredJob,
}

impl ScopeView {
    /// Applies a batch of `changes` (after the cursor, in stream order)
    /// given the jobs as read after them (`fetched`, by id; a job missing
    /// there was purged meanwhile). Returns the events to raise and the
    /// state of the last change that raised one (`CurrentState`).
    fn apply(
        &mut self,
        changes: &[Change],
        mut fetched: HashMap<String, StoredJob>,
    ) -> (Vec<Raised>, Option<JobState>) {
        let mut raised = Vec::new();
        let mut current = None;
        for c in changes {
            if cmp_stream_ids(&c.entry, &self.cursor) != Ordering::Greater {
                continue;
            }
            self.cursor.clone_from(&c.entry);
            let Some(state) = c.state else {
                self.jobs.remove(&c.job);
                continue;
            };
            let Some(job) = fetched.get(&c.job) else {
                // Purged since: its order is gone, nothing to describe.
                self.jobs.remove(&c.job);
                continue;
            };
            let mut at_change = job.clone();
            at_change.state = state;
            raised.push(Raised {
                entry: c.entry.clone(),
                job: at_change,
            });
            current = Some(state);
        }
        for (id, job) in fetched.drain() {
            if job.state.main.is_live() {
                self.jobs.insert(id, job);
            } else {
                self.jobs.remove(&id);
            }
        }
        (raised, current)
    }
}

impl Follower {
    /// Runs until `shutdown`; never ends on a Redis failure (logged,
    /// retried with backoff).
    pub(crate) async fn run(self, mut shutdown: Shutdown) {
        // The structured types are built when the server initialises its
        // node managers; values shown before would lack their structures.
        let deadline = Instant::now() + TYPES_WAIT;
        while self.manager.inner().types().is_none() && Instant::now() < deadline {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = shutdown.wait() => return,
            }
        }
        if self.manager.inner().types().is_none() {
            warn!("OPC UA face: no structured types; JobOrderList, WorkMaster and the event's structures stay empty");
        }
        let mut scopes: BTreeMap<String, ScopeView> = BTreeMap::new();
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            let started = Instant::now();
            let r = tokio::select! {
                r = self.session(&mut scopes) => r,
                _ = shutdown.wait() => return,
            };
            if let Err(e) = r {
                warn!(error = %e, "OPC UA face: following the job changes was interrupted; the server keeps its last values and retries");
                if !backoff.wait(started.elapsed(), &mut shutdown).await {
                    return;
                }
            }
        }
    }

    /// One connected session: check the cursors kept from an earlier one,
    /// then look for scopes and configuration every [`POLL`] and follow the
    /// change streams.
    async fn session(&self, scopes: &mut BTreeMap<String, ScopeView>) -> Result<(), FollowError> {
        let mut reader = StreamReader::open(&self.client).await?;
        let known: Vec<String> = scopes.keys().cloned().collect();
        for scope in known {
            if let Some(view) = scopes.get_mut(&scope) {
                self.check_cursor(&scope, view).await?;
            }
        }
        let read = StreamRead::new(BATCH, POLL);
        let mut polled: Option<Instant> = None;
        loop {
            if polled.is_none_or(|t| t.elapsed() >= POLL) {
                self.discover(scopes).await?;
                for (scope, view) in scopes.iter_mut() {
                    self.refresh_configuration(scope, view).await?;
                }
                polled = Some(Instant::now());
            }
            if scopes.is_empty() {
                tokio::time::sleep(POLL).await;
                continue;
            }
            let keys: Vec<String> = scopes
                .keys()
                .map(|s| self.store.keys().changes(s))
                .collect();
            let ids: Vec<String> = scopes.values().map(|v| v.cursor.clone()).collect();
            let Some(reply) = reader.read(&keys, &ids, &read).await? else {
                continue;
            };
            for key in reply.keys {
                let Some((scope, view)) = scopes
                    .iter_mut()
                    .find(|(s, _)| self.store.keys().changes(s) == key.key)
                else {
                    continue;
                };
                self.advance(scope, view, &key.ids).await?;
            }
        }
    }

    /// Adopts every scope not followed yet: configured or known to Redis.
    async fn discover(&self, scopes: &mut BTreeMap<String, ScopeView>) -> Result<(), FollowError> {
        let mut all = self.configured.clone();
        all.extend(self.store.scopes().await?);
        for scope in all {
            if scopes.contains_key(&scope) {
                continue;
            }
            let created = {
                // A synchronous lock: taken and released without an
                // `.await` in between (never across one, P14).
                let mut space = self.manager.address_space().write();
                add_scope(&mut space, &self.ns, &scope)
            };
            if created > 0 {
                info!(
                    scope,
                    nodes = created,
                    "OPC UA JobManagement instance added for a scope first seen"
                );
            }
            let mut view = ScopeView::default();
            self.reload(&scope, &mut view).await?;
            self.refresh_configuration(&scope, &mut view).await?;
            scopes.insert(scope, view);
        }
        Ok(())
    }

    /// A new session goes on from a scope's cursor unless the stream no
    /// longer has it (trimmed past it, or Redis lost the stream).
    async fn check_cursor(&self, scope: &str, view: &mut ScopeView) -> Result<(), FollowError> {
        let info = self.store.change_stream_info(scope).await?;
        if cursor_is_stale(&view.cursor, info.as_ref()) {
            warn!(
                scope,
                cursor = view.cursor,
                "OPC UA face: the change stream no longer holds where it was read up to; changes were missed (no events for them); loading the scope again"
            );
            self.reload(scope, view).await?;
        }
        Ok(())
    }

    /// Loads a scope in full: the stream position first (a change made
    /// while the jobs are read is read again from the stream, which is
    /// harmless), then the live jobs; shows them.
    async fn reload(&self, scope: &str, view: &mut ScopeView) -> Result<(), FollowError> {
        let mut c = self.store.connection();
        let last: redis::streams::StreamRangeReply = redis::AsyncCommands::xrevrange_count(
            &mut c,
            self.store.keys().changes(scope),
            "+",
            "-",
            1,
        )
        .await?;
        let last = last.ids.into_iter().next();
        view.cursor = last
            .as_ref()
            .map_or_else(|| "0-0".to_owned(), |e| e.id.clone());
        let current = last
            .as_ref()
            .and_then(|e| read_change(scope, e))
            .and_then(|c| c.state);
        let ids = self.store.live_ids(scope).await?;
        let jobs = self.fetch(scope, &ids).await?;
        view.jobs = jobs
            .into_iter()
            .filter(|j| j.state.main.is_live())
            .map(|j| (j.id.clone(), j))
            .collect();
        debug!(
            scope,
            jobs = view.jobs.len(),
            cursor = view.cursor,
            "OPC UA face: scope loaded"
        );
        self.show_jobs(scope, view, current);
        Ok(())
    }

    /// Handles the entries read after a scope's cursor.
    async fn advance(
        &self,
        scope: &str,
        view: &mut ScopeView,
        entries: &[StreamId],
    ) -> Result<(), FollowError> {
        if entries.is_empty() {
            return Ok(());
        }
        // Checked after the read: an entry trimmed before it was read
        // leaves the first entry behind the cursor for good.
        if let Some(info) = self.store.change_stream_info(scope).await? {
            if info.lost_after(&view.cursor) {
                warn!(
                    scope,
                    cursor = view.cursor,
                    first_entry = info.first.as_deref().unwrap_or(""),
                    "OPC UA face: the change stream was trimmed past the last change read: changes were missed (no events for them); loading the scope again"
                );
                return self.reload(scope, view).await;
            }
        }
        let changes: Vec<Change> = entries
            .iter()
            .filter_map(|e| read_change(scope, e))
            .collect();
        let mut ids: Vec<String> = changes
            .iter()
            .filter(|c| c.state.is_some())
            .map(|c| c.job.clone())
            .collect();
        ids.sort();
        ids.dedup();
        let fetched: HashMap<String, StoredJob> = self
            .fetch(scope, &ids)
            .await?
            .into_iter()
            .map(|j| (j.id.clone(), j))
            .collect();
        let (raised, current) = view.apply(&changes, fetched);
        if let Some(last) = entries.last() {
            // Unreadable entries at the end are passed too.
            if cmp_stream_ids(&last.id, &view.cursor) == Ordering::Greater {
                view.cursor.clone_from(&last.id);
            }
        }
        self.show_jobs(scope, view, current);
        self.raise(scope, &raised);
        Ok(())
    }

    /// Reads jobs; a stored job that cannot be read is logged and left out
    /// rather than stopping the face.
    async fn fetch(&self, scope: &str, ids: &[String]) -> Result<Vec<StoredJob>, StoreError> {
        match self.store.get_many(scope, ids).await {
            Err(StoreError::Corrupt { .. }) => {
                let mut out = Vec::new();
                for id in ids {
                    match self.store.get(scope, id).await {
                        Ok(Some(j)) => out.push(j),
                        Ok(None) => {}
                        Err(e @ StoreError::Corrupt { .. }) => {
                            warn!(scope, job = id, error = %e, "OPC UA face: an unreadable job is not shown");
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(out)
            }
            r => r,
        }
    }

    /// Sets `JobOrderList` and, when a change says so, `CurrentState`, in
    /// one call (monitored items are notified).
    fn show_jobs(&self, scope: &str, view: &ScopeView, current: Option<JobState>) {
        let nodes = ScopeNodes::new(self.ns.station, scope);
        let mut values = vec![(
            nodes.job_order_list.clone(),
            self.job_order_list(scope, view),
        )];
        if let Some(state) = current {
            values.push((
                nodes.current_state.clone(),
                Variant::from(LocalizedText::new("en", state.main.name())),
            ));
            values.push((
                nodes.current_state_id,
                Variant::from(state_object(self.ns.jc, state.main)),
            ));
        }
        self.set(scope, &values);
    }

    /// Writes `values` to the address space and notifies subscriptions.
    fn set(&self, scope: &str, values: &[(NodeId, Variant)]) {
        let r = self.manager.set_values(
            &self.subscriptions,
            values
                .iter()
                .map(|(id, v)| (id, None, DataValue::new_now(v.clone()))),
        );
        if let Err(status) = r {
            warn!(scope, %status, "OPC UA face: variables of the scope could not be set");
        }
    }

    /// `ISA95JobOrderAndStateDataType[]` of the live jobs, by id.
    fn job_order_list(&self, scope: &str, view: &ScopeView) -> Variant {
        let items: Vec<Variant> = view
            .jobs
            .values()
            .filter_map(|j| {
                let v = serde_json::json!({
                    "JobOrder": raw_json(&j.order),
                    "State": j.state.to_wire(),
                });
                self.encode(scope, JOB_ORDER_AND_STATE, &v)
            })
            .collect();
        typed_array(scope, VariantScalarTypeId::ExtensionObject, items)
    }

    /// Raises the status events of a batch on the scope's receiver.
    fn raise(&self, scope: &str, raised: &[Raised]) {
        if raised.is_empty() {
            return;
        }
        let nodes = ScopeNodes::new(self.ns.station, scope);
        let events: Vec<JobOrderStatusEvent> = raised
            .iter()
            .map(|r| {
                let time = entry_time(&r.entry).map_or_else(DateTime::now, DateTime::from);
                JobOrderStatusEvent::new(
                    self.ns.jc,
                    nodes.receiver.clone(),
                    &format!("{scope}/JobManagement/JobOrderControl"),
                    &format!("{scope}:{}", r.entry),
                    &format!("job order {} is {}", r.job.id, r.job.state),
                    time,
                    self.status_fields(scope, &r.job),
                )
            })
            .collect();
        self.subscriptions
            .notify_events(events.iter().map(|e| (e as &dyn Event, &nodes.receiver)));
        debug!(
            scope,
            events = events.len(),
            "OPC UA job order status events raised"
        );
    }

    /// The event fields of `job` (in the state it is given).
    fn status_fields(&self, scope: &str, job: &StoredJob) -> StatusFields {
        let ev = status_event(job);
        let state: Vec<Value> = ev
            .job_state
            .iter()
            .filter_map(|s| serde_json::to_value(s).ok())
            .collect();
        StatusFields {
            job_order: self
                .encode(scope, JOB_ORDER, &raw_json(&ev.job_order))
                .unwrap_or_default(),
            job_response: ev
                .job_response
                .as_ref()
                .and_then(|r| self.encode(scope, JOB_RESPONSE, &raw_json(r)))
                .unwrap_or_default(),
            job_state: self.encode_array(scope, STATE, &state),
        }
    }

    /// Reads the scope's configuration and sets what changed.
    async fn refresh_configuration(
        &self,
        scope: &str,
        view: &mut ScopeView,
    ) -> Result<(), FollowError> {
        let now = self.store.configuration(scope).await?;
        if view.config.as_ref() == Some(&now) {
            return Ok(());
        }
        let before = view.config.take();
        let nodes = ScopeNodes::new(self.ns.station, scope);
        let mut values = Vec::new();
        for (kind, id) in &nodes.resources {
            if before.as_ref().map(|b| b.ids(*kind)) != Some(now.ids(*kind)) {
                let ids = now.ids(*kind).iter().map(|i| Variant::from(i.as_str()));
                values.push((
                    id.clone(),
                    typed_array(scope, VariantScalarTypeId::String, ids.collect()),
                ));
            }
        }
        if before.as_ref().map(|b| &b.work_masters) != Some(&now.work_masters) {
            let masters: Vec<Value> = now
                .work_masters
                .iter()
                .filter_map(|(id, doc)| work_master(scope, id, doc))
                .collect();
            values.push((
                nodes.work_master.clone(),
                self.encode_array(scope, WORK_MASTER, &masters),
            ));
        }
        let limit = max_downloadable(now.limit, self.default_limit);
        if before
            .as_ref()
            .map(|b| max_downloadable(b.limit, self.default_limit))
            != Some(limit)
        {
            values.push((nodes.max_downloadable, Variant::UInt16(limit)));
        }
        self.set(scope, &values);
        view.config = Some(now);
        Ok(())
    }

    /// A JC structure of `json`, `None` (logged) when it cannot be encoded
    /// or the types are not there (they failed to build at start: logged
    /// then).
    fn encode(&self, scope: &str, jc_type: u32, json: &Value) -> Option<Variant> {
        let types = self.manager.inner().types()?;
        match types.encode(jc_type, json) {
            Ok(v) => Some(v),
            Err(e) => {
                warn!(scope, data_type = jc_type, error = %e, "OPC UA face: a stored value does not convert to its OPC UA structure; left out");
                None
            }
        }
    }

    /// A typed array of JC structures; items that cannot be encoded are
    /// left out (logged).
    fn encode_array(&self, scope: &str, jc_type: u32, items: &[Value]) -> Variant {
        let items: Vec<Variant> = items
            .iter()
            .filter_map(|v| self.encode(scope, jc_type, v))
            .collect();
        typed_array(scope, VariantScalarTypeId::ExtensionObject, items)
    }
}

/// A one-dimensional array of `items` (all of type `of`); empty (logged)
/// if an item is of another type, which would be a defect here.
fn typed_array(scope: &str, of: VariantScalarTypeId, items: Vec<Variant>) -> Variant {
    match Array::new(of, items) {
        Ok(a) => Variant::from(a),
        Err(e) => {
            warn!(scope, error = %e, "OPC UA face: an array value could not be built");
            Variant::Empty
        }
    }
}

/// Whether a stream no longer holds what was read up to `cursor`: it is
/// gone (Redis lost it) though something was read, it was trimmed past the
/// cursor, or it is behind the cursor (a new stream under the old name).
fn cursor_is_stale(cursor: &str, info: Option<&StreamInfo>) -> bool {
    match info {
        None => cursor != "0-0",
        Some(info) => {
            info.lost_after(cursor)
                || cmp_stream_ids(cursor, &info.last_generated) == Ordering::Greater
        }
    }
}

/// `MaxDownloadableJobOrders` of a scope limit and the default (0: none →
/// 65535; larger limits are clamped to 65535).
fn max_downloadable(limit: Option<u64>, default: u64) -> u16 {
    match limit.unwrap_or(default) {
        0 => u16::MAX,
        n => u16::try_from(n).unwrap_or(u16::MAX),
    }
}

/// The state object of `ISA95JobOrderReceiverObjectType` for a main state
/// (`JC i=5035` NotAllowedToStart … `i=5040` Aborted); null for
/// InitialState and EndState, which the type has no object for.
fn state_object(jc: u16, main: MainState) -> NodeId {
    match main {
        MainState::NotAllowedToStart
        | MainState::AllowedToStart
        | MainState::Running
        | MainState::Interrupted
        | MainState::Ended
        | MainState::Aborted => NodeId::new(jc, 5034 + main.number()),
        MainState::InitialState | MainState::EndState => NodeId::null(),
    }
}

/// The `ISA95WorkMasterDataType` JSON (`ID`, `Description`, `Parameters`)
/// of a stored extended work master (`data` and `dataschema` are not part
/// of the type); `None` (logged) when the document does not parse.
fn work_master(scope: &str, id: &str, doc: &str) -> Option<Value> {
    let mut v: Value = match serde_json::from_str(doc) {
        Ok(v) => v,
        Err(e) => {
            warn!(scope, work_master = id, error = %e, "OPC UA face: a stored work master is unreadable; not shown");
            return None;
        }
    };
    let obj = v.as_object_mut()?;
    obj.retain(|k, _| matches!(k.as_str(), "ID" | "Description" | "Parameters"));
    obj.insert("ID".into(), Value::String(id.to_owned()));
    Some(v)
}

/// A stored JSON document as a value (a stored document always parses;
/// `Null` if not).
fn raw_json(raw: &serde_json::value::RawValue) -> Value {
    serde_json::from_str(raw.get()).unwrap_or(Value::Null)
}

/// Reads a change entry (`job`, `state`, `kind`); `None` (logged) when it
/// lacks them or its state is unreadable.
fn read_change(scope: &str, e: &StreamId) -> Option<Change> {
    let field = |name: &str| e.get::<String>(name);
    let (Some(job), Some(state), Some(kind)) = (field("job"), field("state"), field("kind")) else {
        warn!(scope, entry = %e.id, "OPC UA face: change entry without job, state or kind; skipped");
        return None;
    };
    let state = if kind == "purged" {
        None
    } else {
        match parse_state_key(&state) {
            Ok(s) => Some(s),
            Err(err) => {
                warn!(scope, job, entry = %e.id, error = %err, "OPC UA face: change entry with an unreadable state; skipped");
                return None;
            }
        }
    };
    Some(Change {
        entry: e.id.clone(),
        job,
        state,
    })
}

/// When a stream entry was added: the milliseconds of its id.
fn entry_time(id: &str) -> Option<chrono::DateTime<Utc>> {
    let ms: i64 = id.split('-').next()?.parse().ok()?;
    Utc.timestamp_millis_opt(ms).single()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::SubState;
    use serde_json::value::RawValue;

    fn job(id: &str, state: JobState) -> StoredJob {
        StoredJob {
            id: id.into(),
            version: 1,
            order: RawValue::from_string(format!(r#"{{"JobOrderID":"{id}"}}"#)).unwrap(),
            state,
            response: None,
            cause: None,
            trace: None,
        }
    }

    fn change(entry: &str, id: &str, state: Option<JobState>) -> Change {
        Change {
            entry: entry.into(),
            job: id.into(),
            state,
        }
    }

    const READY: JobState = JobState::new(MainState::AllowedToStart, Some(SubState::Ready));
    const RUNNING: JobState = JobState::new(MainState::Running, None);
    const CLEARED: JobState = JobState::new(MainState::EndState, None);

    /// Two quick transitions of one job raise two events with their own
    /// states, although the job was read once, after both.
    #[test]
    fn every_entry_raises_an_event_with_its_own_state() {
        let mut view = ScopeView {
            cursor: "0-0".into(),
            ..ScopeView::default()
        };
        let fetched = HashMap::from([("j1".to_owned(), job("j1", RUNNING))]);
        let (raised, current) = view.apply(
            &[
                change("1-0", "j1", Some(READY)),
                change("2-0", "j1", Some(RUNNING)),
            ],
            fetched,
        );
        let states: Vec<JobState> = raised.iter().map(|r| r.job.state).collect();
        assert_eq!(states, [READY, RUNNING]);
        assert_eq!(raised[0].entry, "1-0");
        assert_eq!(current, Some(RUNNING));
        assert_eq!(view.cursor, "2-0");
        assert_eq!(view.jobs["j1"].state, RUNNING);
    }

    /// Entries at or before the cursor (read again after a reload) raise
    /// nothing; a job that left the live states leaves the list; purges
    /// raise nothing.
    #[test]
    fn old_entries_are_skipped_and_ended_jobs_leave_the_list() {
        let mut view = ScopeView {
            cursor: "5-0".into(),
            ..ScopeView::default()
        };
        view.jobs.insert("j1".into(), job("j1", RUNNING));
        view.jobs.insert("j2".into(), job("j2", READY));
        let fetched = HashMap::from([("j1".to_owned(), job("j1", CLEARED))]);
        let (raised, current) = view.apply(
            &[
                change("4-0", "j1", Some(RUNNING)),
                change("6-0", "j1", Some(CLEARED)),
                change("7-0", "j2", None),
                change("8-0", "gone", Some(READY)),
            ],
            fetched,
        );
        assert_eq!(raised.len(), 1, "{raised:?}");
        assert_eq!(raised[0].job.state, CLEARED);
        assert_eq!(current, Some(CLEARED));
        assert!(view.jobs.is_empty(), "{:?}", view.jobs.keys());
        assert_eq!(view.cursor, "8-0");
    }

    /// A new session goes on from its cursor only if the stream still
    /// holds everything after it.
    #[test]
    fn a_cursor_the_stream_no_longer_holds_is_stale() {
        let info = StreamInfo {
            length: 10,
            added: 10,
            first: Some("100-0".into()),
            last_generated: "200-0".into(),
        };
        assert!(!cursor_is_stale("150-0", Some(&info)));
        assert!(!cursor_is_stale("0-0", Some(&info)), "nothing trimmed yet");
        assert!(!cursor_is_stale("0-0", None), "no stream, nothing read");
        assert!(cursor_is_stale("150-0", None), "Redis lost the stream");
        assert!(
            cursor_is_stale("300-0", Some(&info)),
            "a new stream behind the cursor"
        );
        let trimmed = StreamInfo { added: 50, ..info };
        assert!(cursor_is_stale("50-0", Some(&trimmed)), "trimmed past it");
        assert!(!cursor_is_stale("150-0", Some(&trimmed)));
    }

    #[test]
    fn max_downloadable_job_orders_is_the_limit_clamped() {
        assert_eq!(max_downloadable(Some(5), 10), 5);
        assert_eq!(max_downloadable(None, 10), 10);
        assert_eq!(max_downloadable(None, 0), u16::MAX);
        assert_eq!(max_downloadable(Some(0), 10), u16::MAX);
        assert_eq!(max_downloadable(Some(1 << 20), 10), u16::MAX);
    }

    #[test]
    fn current_state_ids_are_the_receiver_type_state_objects() {
        assert_eq!(
            state_object(3, MainState::NotAllowedToStart),
            NodeId::new(3, 5035u32)
        );
        assert_eq!(state_object(3, MainState::Aborted), NodeId::new(3, 5040u32));
        assert!(state_object(3, MainState::EndState).is_null());
    }

    #[test]
    fn work_masters_show_the_isa95_fields_only() {
        let doc = r#"{"ID":"wm-1","Description":{"Text":"axle"},"Parameters":[],"data":{"steps":[]},"dataschema":"x"}"#;
        let v = work_master("s", "wm-1", doc).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"ID":"wm-1","Description":{"Text":"axle"},"Parameters":[]})
        );
        assert!(work_master("s", "wm-1", "not json").is_none());
    }
}
