//! The SFC engine runtime: runs on every replica, coordinated through
//! Redis. It performs what the pure evolution ([`super::exec`])
//! decides.
//!
//! - Job state changes come from the job manager's per-scope change stream
//!   (`P:{S}:changes`), read through the consumer group `sfc-engine`: a job
//!   entering AllowedToStart is started, Interrupted pauses, Running
//!   resumes, Ended/Aborted stop. Durable: an entry is acknowledged only
//!   after its effect is committed, and a dead replica's entries are
//!   reclaimed (`XAUTOCLAIM`) by a live one.
//! - Each evolution is one compare-and-swap (`lua/exec_apply.lua`) on the
//!   job's execution state that also schedules its timers (`P:{S}:timers`)
//!   and enqueues its effects as work items (`P:{S}:work`: dispatch,
//!   progress, finished, timer). Whoever loses a race re-reads and
//!   re-decides; stream entries are signals, the state is the truth.
//! - Work items are read through the same consumer group; a dispatch is
//!   sent with the action's stable command id, so a re-delivered item
//!   re-sends the same command, and only while the job is Running: the
//!   send is fenced against the job leaving Running (`super::fence`), so
//!   no command follows an Aborted, Ended or Interrupted status event.
//!   Due timers are moved into the work stream
//!   atomically (`lua/timers_due.lua`), so each fires once.
//! - Results and events reach the `equipment` processor on any replica (the
//!   command's Response Topic is shared); they are applied as inputs.

use super::exec::{self, Ctx, Effect, Exec, Input, Status};
use super::fence;
use super::net::Net;
use super::recipe::{Interaction, Recipe};
use crate::app::Redis;
use crate::envelope::{CloudEvent, ContentType, CorrelationId};
use crate::error::{redis_is_retryable, ErrorKind, HandlerError};
use crate::jobs::store::{parse_state_key, StoreError, DISPATCH_LEASE};
use crate::jobs::{Internal, JobManager, JobState, MainState, SubState};
use crate::processor::{Emit, Emitter, Meta, Processor, State};
use crate::runtime::backoff::Backoff;
use crate::runtime::Shutdown;
use crate::transport::Intent;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamReadOptions, StreamReadReply,
};
use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;
use tracing::{debug, info, warn};

static APPLY: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/exec_apply.lua")));
static EARLY: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/early_push.lua")));
static TIMERS: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/timers_due.lua")));

/// The `dataschema` of work masters whose `data` is an SFC recipe.
pub const SFC_RECIPE_SCHEMA: &str =
    "https://aschamberger.github.io/schemas/microdcs/sfc-recipe/v1.0.0/";
/// The consumer group of the engine on every stream it reads.
pub const GROUP: &str = "sfc-engine";
/// The name of the generic equipment processor.
pub const EQUIPMENT: &str = "equipment";
/// CloudEvent type of step progress events.
pub const PROGRESS_TYPE: &str = "com.github.aschamberger.microdcs.sfc.progress.v1";

/// Engine failures (logged; the work item stays pending and is retried).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The job store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Stored execution state cannot be read.
    #[error("execution state of job '{job}' in scope '{scope}': {reason}")]
    Corrupt {
        /// Scope.
        scope: String,
        /// Job.
        job: String,
        /// What is wrong.
        reason: String,
    },
    /// Sending failed; trying again may help.
    #[error("{0}")]
    Send(String),
    /// A command can never be sent as it is (the transport refuses it, or
    /// its processor cannot shape it): terminal for that command.
    #[error("{0}")]
    Unsendable(String),
}

impl EngineError {
    /// Why trying again cannot help, if it cannot: a command the transport
    /// or its processor refuses, or a command Redis refuses (a script
    /// error, a wrong type: the same request fails the same way forever).
    /// `None` for unavailability, which is worth another attempt.
    fn terminal_reason(&self) -> Option<String> {
        match self {
            EngineError::Unsendable(r) => Some(r.clone()),
            EngineError::Redis(e) | EngineError::Store(StoreError::Unavailable(e))
                if !redis_is_retryable(e) =>
            {
                Some(format!("redis refused: {e}"))
            }
            EngineError::Corrupt { .. } => Some(self.to_string()),
            _ => None,
        }
    }
}

impl From<EngineError> for HandlerError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Redis(e) => e.into(),
            EngineError::Store(e) => e.into(),
            e @ EngineError::Corrupt { .. } => {
                HandlerError::terminal(ErrorKind::InternalLogicError, e.to_string())
            }
            e @ EngineError::Send(_) => {
                HandlerError::retryable(ErrorKind::ServiceUnavailable, e.to_string())
            }
            e @ EngineError::Unsendable(_) => {
                HandlerError::terminal(ErrorKind::PropertyInvalid, e.to_string())
            }
        }
    }
}

/// A follow-up work item (stream entry field `item`, JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum WorkItem {
    Dispatch {
        job: String,
        command_id: String,
        action: String,
        type_id: String,
        equipment: Option<String>,
        parameters: Map<String, Value>,
        attempt: u32,
    },
    Progress {
        job: String,
        step: String,
        activation: u32,
        entered: bool,
    },
    Finished {
        job: String,
    },
    Timer {
        job: String,
        key: String,
    },
}

/// A stream entry read: (stream key, entry id, fields).
type StreamEntry = (String, String, HashMap<String, redis::Value>);

/// Early events kept per scope at most, before any job waits for them.
pub const SCOPE_EARLY_EVENTS: usize = 256;

/// An event kept at scope level until its job runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ScopeEarly {
    type_id: String,
    job: Option<String>,
    data: Value,
    at_ms: u64,
    #[serde(default)]
    id: Option<String>,
    /// Its subject below the scope ([`exec::equipment_of`]).
    #[serde(default)]
    equipment: Option<String>,
    /// After this instant (ms) it completes nothing.
    #[serde(default)]
    expires_ms: Option<u64>,
}

impl ScopeEarly {
    fn input(self) -> Input {
        Input::Event {
            type_id: self.type_id,
            data: self.data,
            id: self.id,
            equipment: self.equipment,
            expires_ms: self.expires_ms,
        }
    }
}

/// The deadline (ms) of a received message: the earlier of its
/// `expirytime` and `now` plus its `expiryinterval` (the MQTT Message
/// Expiry Interval, which the broker counts down while it holds the
/// message, so it is the time left on arrival).
fn deadline_of(ev: &CloudEvent, now: u64) -> Option<u64> {
    let by_time = ev
        .expirytime
        .map(|t| u64::try_from(t.timestamp_millis()).unwrap_or(0));
    let by_interval = ev
        .expiryinterval
        .map(|s| now.saturating_add(u64::from(s) * 1000));
    match (by_time, by_interval) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whether the recipe has a `pull_event` action that takes an event of
/// `type_id` from `equipment`.
fn recipe_wants(recipe: &Recipe, type_id: &str, equipment: Option<&str>) -> bool {
    recipe.actions.iter().any(|a| {
        a.interaction == Interaction::PullEvent
            && a.type_id == type_id
            && exec::selector_takes(a.equipment.as_deref(), equipment)
    })
}

/// Whether the execution has a `pull_event` action waiting right now that
/// takes an event of `type_id` from `equipment`.
fn waits_for(e: &Exec, recipe: &Recipe, type_id: &str, equipment: Option<&str>) -> bool {
    !e.is_finished()
        && recipe.actions.iter().any(|a| {
            a.interaction == Interaction::PullEvent
                && a.type_id == type_id
                && exec::selector_takes(a.equipment.as_deref(), equipment)
                && e.actions
                    .get(&a.name)
                    .is_some_and(|r| r.state == exec::ActionState::Running)
        })
}

/// `source` and `id` of an event: what makes a redelivery the same event.
fn event_identity(ev: &CloudEvent) -> String {
    format!("{}\u{1f}{}", ev.source, ev.id)
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Longest blocking read (new scopes and due timers are looked at
    /// least this often).
    pub poll: Duration,
    /// Entries pending this long at a consumer are taken over.
    pub claim_idle: Duration,
    /// Entries read per stream and round.
    pub batch: usize,
    /// The configured message expiry (`processing.message_expiry_interval`):
    /// a dispatch work item older than this is not sent (its command would
    /// be stale); the action counts it as a failed attempt
    /// ([`Input::Unsent`]). A command sent is given what is left of it as
    /// its Message Expiry Interval. `None`: commands never expire.
    pub message_expiry: Option<Duration>,
    /// Sends of one dispatch work item that failed retryably (transport or
    /// Redis unavailable) before it is given up: its action fails with the
    /// attempt history, and the job ends Aborted.
    pub max_send_attempts: u32,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            poll: Duration::from_millis(200),
            claim_idle: Duration::from_secs(3),
            batch: 256,
            message_expiry: None,
            max_send_attempts: 20,
        }
    }
}

/// The creation time (ms, Redis server clock) of a stream entry, from its
/// id (`{ms}-{seq}`).
fn entry_ms(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

/// How long a dispatch work item created at `created_ms` may still be sent
/// as a command, under message expiry `expiry`: `Some(ms left)`, at least a
/// whole second (the Message Expiry Interval counts in seconds), or `None`
/// when it is too old. No expiry: `Some(u64::MAX)`.
fn send_window(created_ms: Option<u64>, now: u64, expiry: Option<Duration>) -> Option<u64> {
    let Some(expiry) = expiry else {
        return Some(u64::MAX);
    };
    let age = created_ms.map_or(0, |c| now.saturating_sub(c));
    let left = u64::try_from(expiry.as_millis())
        .unwrap_or(u64::MAX)
        .saturating_sub(age);
    (left >= 1000).then_some(left)
}

struct Compiled {
    recipe: Recipe,
    net: Net,
}

/// The engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: JobManager,
    client: redis::Client,
    consumer: String,
    settings: EngineSettings,
    equipment: OnceLock<Emitter>,
    takeovers: std::sync::RwLock<HashMap<String, TakeOver>>,
    cache: Mutex<HashMap<u64, Arc<Compiled>>>,
}

/// A command as the engine is about to send it, for a hand-written
/// processor that shapes it ([`Engine::take_over`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// Stable id of this dispatch (also its correlation id).
    pub command_id: String,
    /// The job order id.
    pub job: String,
    /// The job's scope.
    pub scope: String,
    /// The recipe action.
    pub action: String,
    /// The action's `TypeId`.
    pub type_id: String,
    /// Subject (equipment) the command addresses.
    pub subject: String,
    /// The action's `Parameters`.
    pub parameters: Map<String, Value>,
    /// Which send this is (1: first).
    pub attempt: u32,
}

/// Shapes the CloudEvent of a command (its payload, type, extra metadata).
pub type Shaper = Arc<dyn Fn(&Command) -> Result<Emit, String> + Send + Sync>;

#[derive(Clone)]
struct TakeOver {
    emitter: Emitter,
    shape: Shaper,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("consumer", &self.inner.consumer)
            .finish_non_exhaustive()
    }
}

/// The shared clock (Redis's): deadlines and ages span replicas.
fn now_ms() -> u64 {
    crate::runtime::clock::now_ms()
}

fn rfc3339(ms: u64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX))
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The pull event types a job's execution waits for right now.
fn waiting_types(e: &Exec, recipe: &Recipe) -> BTreeSet<String> {
    if e.is_finished() {
        return BTreeSet::new();
    }
    recipe
        .actions
        .iter()
        .filter(|a| {
            a.interaction == Interaction::PullEvent
                && e.actions
                    .get(&a.name)
                    .is_some_and(|r| r.state == exec::ActionState::Running)
        })
        .map(|a| a.type_id.clone())
        .collect()
}

impl Engine {
    /// An engine using `jobs` for job state and the Redis `client` for its
    /// own (blocking) connection; `consumer` names this replica in the
    /// consumer groups (its instance id).
    pub fn new(
        jobs: JobManager,
        client: redis::Client,
        consumer: impl Into<String>,
        settings: EngineSettings,
    ) -> Self {
        Engine {
            inner: Arc::new(Inner {
                jobs,
                client,
                consumer: consumer.into(),
                settings,
                equipment: OnceLock::new(),
                takeovers: std::sync::RwLock::new(HashMap::new()),
                cache: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The generic `equipment` southbound processor: sends the engine's
    /// commands and receives results and events for it. Bind it with a
    /// [`TopicBinding`](crate::TopicBinding) whose `shared_response_topic` is
    /// set (every replica must receive the results) and a shared group.
    pub fn equipment_processor(&self) -> Processor {
        let p = Processor::southbound(EQUIPMENT)
            // Every input is a compare-and-swap that ignores what it already
            // applied: no dedupe round trips on the hot path.
            .idempotent()
            .handle(on_equipment_message)
            .state(self.clone())
            .build();
        let _ = self.inner.equipment.set(p.emitter());
        p
    }

    /// Lets a hand-written southbound processor send the commands of
    /// `type_id`: `shape` builds the CloudEvent (payload, type, extensions)
    /// from the recipe action, and it goes out through `via`'s topics. The
    /// engine still sets the command id, correlation, job id and (if the
    /// shaper left it empty) the subject, and asks for the reply on `via`'s
    /// shared response topic; `via`'s handlers pass results and events back
    /// with [`Engine::deliver`].
    pub fn take_over(
        &self,
        type_id: impl Into<String>,
        via: &Processor,
        shape: impl Fn(&Command) -> Result<Emit, String> + Send + Sync + 'static,
    ) {
        let mut t = self
            .inner
            .takeovers
            .write()
            .unwrap_or_else(|p| p.into_inner());
        t.insert(
            type_id.into(),
            TakeOver {
                emitter: via.emitter(),
                shape: Arc::new(shape),
            },
        );
    }

    /// Hands a result (a reply carrying a command's correlation) or an
    /// equipment event to the job it belongs to, as the built-in
    /// `equipment` processor does with everything it receives. For
    /// hand-written southbound processors.
    ///
    /// # Errors
    /// Redis is unavailable (the caller should answer retryable).
    pub async fn deliver(&self, ev: &CloudEvent) -> Result<(), EngineError> {
        self.route(ev).await
    }

    pub(super) fn key(&self, scope: &str, rest: &str) -> String {
        format!("{}{rest}", self.inner.jobs.store().scope_prefix(scope))
    }

    pub(super) fn jobs_store(&self) -> &crate::jobs::JobStore {
        self.inner.jobs.store()
    }

    pub(super) fn conn(&self) -> redis::aio::ConnectionManager {
        self.inner.jobs.store().connection()
    }

    fn compiled(&self, recipe_json: &str) -> Result<Arc<Compiled>, String> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        recipe_json.hash(&mut h);
        let k = h.finish();
        let mut cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.get(&k) {
            return Ok(c.clone());
        }
        let value: Value = serde_json::from_str(recipe_json).map_err(|e| e.to_string())?;
        let recipe = Recipe::parse(&value).map_err(|e| e.to_string())?;
        let net = Net::compile(&recipe).map_err(|e| e.to_string())?;
        let c = Arc::new(Compiled { recipe, net });
        if cache.len() > 1000 {
            cache.clear();
        }
        cache.insert(k, c.clone());
        Ok(c)
    }

    async fn load(
        &self,
        scope: &str,
        job: &str,
    ) -> Result<Option<(u64, Exec, String)>, EngineError> {
        let mut c = self.conn();
        let h: HashMap<String, String> = c.hgetall(self.key(scope, &format!("exec:{job}"))).await?;
        if h.is_empty() {
            return Ok(None);
        }
        let corrupt = |reason: String| EngineError::Corrupt {
            scope: scope.to_owned(),
            job: job.to_owned(),
            reason,
        };
        let v = h
            .get("v")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| corrupt("no version".into()))?;
        let doc: Exec = serde_json::from_str(h.get("doc").map_or("", String::as_str))
            .map_err(|e| corrupt(e.to_string()))?;
        let recipe = h
            .get("recipe")
            .cloned()
            .ok_or_else(|| corrupt("no recipe".into()))?;
        Ok(Some((v, doc, recipe)))
    }

    /// The compare-and-swap write of a new state with its effects.
    #[allow(clippy::too_many_arguments)]
    async fn write(
        &self,
        scope: &str,
        expected: u64,
        exec: &Exec,
        recipe: Option<&str>,
        effects: &[Effect],
        waiting_before: &BTreeSet<String>,
        waiting_after: &BTreeSet<String>,
    ) -> Result<bool, EngineError> {
        let job = &exec.job;
        let doc = serde_json::to_string(exec).map_err(|e| EngineError::Send(e.to_string()))?;
        let mut inv = APPLY.prepare_invoke();
        inv.key(self.key(scope, &format!("exec:{job}")))
            .key(self.key(scope, "timers"))
            .key(self.key(scope, "work"));
        let mut waiting_ops = Vec::new();
        for t in waiting_after.difference(waiting_before) {
            waiting_ops.push((t, "add"));
        }
        for t in waiting_before.difference(waiting_after) {
            waiting_ops.push((t, "rem"));
        }
        for (t, _) in &waiting_ops {
            inv.key(self.key(scope, &format!("waiting:{t}")));
        }
        inv.arg(expected)
            .arg(doc)
            .arg(recipe.unwrap_or(""))
            .arg(job);
        let timers: Vec<(&String, u64)> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Timer { key, at_ms } => Some((key, *at_ms)),
                _ => None,
            })
            .collect();
        inv.arg(timers.len());
        for (k, at) in timers {
            inv.arg(k).arg(at);
        }
        let mut items = Vec::new();
        for e in effects {
            let item = match e {
                Effect::Dispatch {
                    command_id,
                    action,
                    type_id,
                    equipment,
                    parameters,
                    attempt,
                } => WorkItem::Dispatch {
                    job: job.clone(),
                    command_id: command_id.clone(),
                    action: action.clone(),
                    type_id: type_id.clone(),
                    equipment: equipment.clone(),
                    parameters: parameters.clone(),
                    attempt: *attempt,
                },
                Effect::StepEntered { step, activation }
                | Effect::StepLeft { step, activation } => WorkItem::Progress {
                    job: job.clone(),
                    step: step.clone(),
                    activation: *activation,
                    entered: matches!(e, Effect::StepEntered { .. }),
                },
                Effect::Finished(_) => WorkItem::Finished { job: job.clone() },
                Effect::Timer { .. } => continue,
            };
            items.push(serde_json::to_string(&item).map_err(|e| EngineError::Send(e.to_string()))?);
        }
        inv.arg(items.len());
        for i in items {
            inv.arg(i);
        }
        for (_, op) in &waiting_ops {
            inv.arg(*op).arg(exec.started_ms);
        }
        let mut c = self.conn();
        let (tag, _v): (String, u64) = inv.invoke_async(&mut c).await?;
        Ok(tag == "OK")
    }

    /// Applies an input to a job's execution (a result, an event, a timer,
    /// job control), retrying on concurrent changes. Unknown or finished
    /// executions ignore it.
    ///
    /// # Errors
    /// Redis is unavailable or the stored state is unreadable.
    pub async fn apply(&self, scope: &str, job: &str, input: Input) -> Result<(), EngineError> {
        self.apply_if_running(scope, job, input).await.map(|_| ())
    }

    /// [`Engine::apply`], telling whether the job has an execution state.
    async fn apply_if_running(
        &self,
        scope: &str,
        job: &str,
        input: Input,
    ) -> Result<bool, EngineError> {
        for _ in 0..50 {
            let Some((v, mut e, recipe_json)) = self.load(scope, job).await? else {
                debug!(
                    scope,
                    job,
                    ?input,
                    "no execution for this job; input ignored"
                );
                return Ok(false);
            };
            if e.is_finished() {
                return Ok(true);
            }
            let c = self
                .compiled(&recipe_json)
                .map_err(|reason| EngineError::Corrupt {
                    scope: scope.to_owned(),
                    job: job.to_owned(),
                    reason,
                })?;
            let before_state = e.clone();
            let waiting_before = waiting_types(&e, &c.recipe);
            let effects = e.apply(
                input.clone(),
                Ctx {
                    recipe: &c.recipe,
                    net: &c.net,
                    now_ms: now_ms(),
                },
            );
            if effects.is_empty() && e == before_state {
                return Ok(true);
            }
            let waiting_after = waiting_types(&e, &c.recipe);
            if self
                .write(
                    scope,
                    v,
                    &e,
                    None,
                    &effects,
                    &waiting_before,
                    &waiting_after,
                )
                .await?
            {
                // It waits for new event types now: events of those types
                // kept for no job in particular are its.
                let new: BTreeSet<String> =
                    waiting_after.difference(&waiting_before).cloned().collect();
                if !new.is_empty() {
                    self.adopt_early(scope, job, |ev| {
                        ev.job.is_none()
                            && new.contains(&ev.type_id)
                            && recipe_wants(&c.recipe, &ev.type_id, ev.equipment.as_deref())
                    })
                    .await?;
                }
                return Ok(true);
            }
        }
        Err(EngineError::Send(format!(
            "job '{job}' changed concurrently too often"
        )))
    }

    /// Starts a job that entered AllowedToStart, if its work master carries
    /// an SFC recipe: Running first, then the execution state (both steps
    /// idempotent, so a crash in between is repaired by the redelivered
    /// change).
    async fn start(&self, scope: &str, id: &str) -> Result<(), EngineError> {
        let store = self.inner.jobs.store();
        let Some(job) = store.get(scope, id).await? else {
            return Ok(());
        };
        let allowed = job.state.main == MainState::AllowedToStart;
        let running = job.state.main == MainState::Running;
        if !allowed && !running {
            return Ok(());
        }
        if self.load(scope, id).await?.is_some() {
            return Ok(());
        }
        let order: Value = serde_json::from_str(job.order.get()).unwrap_or(Value::Null);
        let Some(wm_id) = order["WorkMasterID"][0]["ID"].as_str() else {
            return Ok(()); // no work master: a hand-written executor's job
        };
        let Some(wm) = store.work_master(scope, wm_id).await? else {
            return Ok(());
        };
        let wm: Value = serde_json::from_str(&wm).unwrap_or(Value::Null);
        if wm["dataschema"].as_str() != Some(SFC_RECIPE_SCHEMA) {
            return Ok(()); // not an SFC recipe: left alone
        }
        let recipe_json = wm["data"].to_string();
        if allowed {
            let e = self
                .inner
                .jobs
                .internal(
                    scope,
                    id,
                    Internal::Begin,
                    None,
                    &format!("sfc/begin/{id}/{}", job.version),
                )
                .await?;
            if e.status != crate::jobs::ReturnStatus::NoError {
                return Ok(()); // someone else moved it
            }
        }
        let compiled = match self.compiled(&recipe_json) {
            Ok(c) => c,
            Err(reason) => {
                // Stored before validation existed, or edited by hand.
                warn!(scope, job = id, %reason, "recipe invalid; failing the job");
                let response = response_json(
                    id,
                    &failed_exec(id, scope, &reason),
                    &JobState::new(MainState::Aborted, None),
                );
                let raw = serde_json::value::to_raw_value(&response)
                    .map_err(|e| EngineError::Send(e.to_string()))?;
                self.inner
                    .jobs
                    .internal(
                        scope,
                        id,
                        Internal::Fail,
                        Some(&raw),
                        &format!("sfc/invalid/{id}"),
                    )
                    .await?;
                return Ok(());
            }
        };
        let mut params = Map::new();
        if let Some(list) = order["JobOrderParameters"].as_array() {
            for p in list {
                if let Some(k) = p["ID"].as_str() {
                    params.insert(k.to_owned(), p["Value"].clone());
                }
            }
        }
        let ctx = Ctx {
            recipe: &compiled.recipe,
            net: &compiled.net,
            now_ms: now_ms(),
        };
        let (e, effects) = Exec::start(id, scope, params, ctx);
        let waiting = waiting_types(&e, &compiled.recipe);
        if !self
            .write(
                scope,
                0,
                &e,
                Some(&recipe_json),
                &effects,
                &BTreeSet::new(),
                &waiting,
            )
            .await?
        {
            return Ok(()); // another replica created it
        }
        info!(
            scope,
            job = id,
            steps = compiled.recipe.steps.len(),
            "recipe started"
        );
        // Events kept before the job ran: those naming it, and unaddressed
        // ones that one of its pull actions takes (type and equipment; the
        // execution exists now, so no new event for it can be kept any
        // more; see `early_push.lua`).
        self.adopt_early(scope, id, |ev| match &ev.job {
            Some(j) => j == id,
            None => recipe_wants(&compiled.recipe, &ev.type_id, ev.equipment.as_deref()),
        })
        .await
    }

    /// Takes the scope's kept events that `wanted` selects (each claimed with
    /// `LREM`, so only one job gets it) and applies them to `job`.
    async fn adopt_early(
        &self,
        scope: &str,
        job: &str,
        wanted: impl Fn(&ScopeEarly) -> bool,
    ) -> Result<(), EngineError> {
        for (raw, ev) in self.early_events(scope).await? {
            if !wanted(&ev) {
                continue;
            }
            let mut c = self.conn();
            let claimed: i64 = c.lrem(self.key(scope, "early"), 1, &raw).await?;
            if claimed == 1 {
                Box::pin(self.apply(scope, job, ev.input())).await?;
            }
        }
        Ok(())
    }

    /// The scope's kept early events (not yet expired), with their raw
    /// list entries. Expired ones are dropped from the list: an expired
    /// event completes nothing.
    async fn early_events(&self, scope: &str) -> Result<Vec<(String, ScopeEarly)>, EngineError> {
        let mut c = self.conn();
        let key = self.key(scope, "early");
        let raw: Vec<String> = c.lrange(&key, 0, -1).await?;
        let now = now_ms();
        let mut live = Vec::new();
        let mut expired = redis::pipe();
        let mut any_expired = false;
        for r in raw {
            let Ok(ev) = serde_json::from_str::<ScopeEarly>(&r) else {
                continue;
            };
            if now.saturating_sub(ev.at_ms) < exec::EARLY_EVENT_TTL_MS
                && ev.expires_ms.is_none_or(|x| x > now)
            {
                live.push((r, ev));
            } else {
                expired.lrem(&key, 1, r).ignore();
                any_expired = true;
            }
        }
        if any_expired {
            let _: () = expired.query_async(&mut c).await?;
        }
        Ok(live)
    }

    /// One entry of a scope's job change stream (also what reconciling a
    /// scope does per job with its current state, see `super::resync`).
    pub(super) async fn on_change(
        &self,
        scope: &str,
        job: &str,
        state: &str,
    ) -> Result<(), EngineError> {
        let Ok(state) = parse_state_key(state) else {
            return Ok(()); // purge entries carry no state
        };
        match state.main {
            MainState::AllowedToStart => self.start(scope, job).await,
            MainState::Running => {
                self.start(scope, job).await?; // repairs a crash after Begin
                self.apply(scope, job, Input::Resume).await?;
                // Commands held back while it was Interrupted go out now.
                let store = self.inner.jobs.store();
                let n = fence::resume_held(store, scope, job, &self.key(scope, "work")).await?;
                if n > 0 {
                    debug!(scope, job, commands = n, "held commands released");
                }
                Ok(())
            }
            MainState::Interrupted => self.apply(scope, job, Input::Pause).await,
            MainState::Ended | MainState::Aborted => {
                let input = if state.main == MainState::Ended {
                    Input::Stop
                } else {
                    Input::Abort
                };
                self.apply(scope, job, input).await?;
                // Held commands are never sent now.
                Ok(fence::forget_held(self.inner.jobs.store(), scope, job).await?)
            }
            MainState::EndState => {
                let mut c = self.conn();
                let _: () = c.del(self.key(scope, &format!("exec:{job}"))).await?;
                Ok(fence::forget_held(self.inner.jobs.store(), scope, job).await?)
            }
            _ => Ok(()),
        }
    }

    async fn on_work(&self, scope: &str, entry: &str, item: WorkItem) -> Result<(), EngineError> {
        match item {
            WorkItem::Timer { job, key } => self.apply(scope, &job, Input::Timer { key }).await,
            WorkItem::Dispatch { .. } => self.on_dispatch(scope, entry, item).await,
            WorkItem::Progress {
                job,
                step,
                activation,
                entered,
            } => {
                if let Some(emitter) = self.inner.jobs.emitter() {
                    let mut ev = CloudEvent::new(PROGRESS_TYPE, "");
                    ev.subject = Some(job.clone());
                    ev.set_data(
                        ContentType::Json,
                        &json!({"Scope": scope, "JobOrderID": job, "Step": step, "Activation": activation,
                                "Event": if entered { "entered" } else { "left" }}),
                    )
                    .map_err(EngineError::Send)?;
                    if let Err(e) = emitter.emit(Emit::raw(ev)).await {
                        warn!(scope, job, error = %e, "progress event not sent");
                    }
                }
                Ok(())
            }
            WorkItem::Finished { job } => self.report_finished(scope, &job).await,
        }
    }

    /// A dispatch work item: sent as a command, unless it is older than
    /// the message expiry (then the action counts an unsent attempt). A
    /// send that can never succeed, or failed retryably
    /// `max_send_attempts` times, fails the action (and the job) with the
    /// reason, like an error reply from the equipment would.
    async fn on_dispatch(
        &self,
        scope: &str,
        entry: &str,
        item: WorkItem,
    ) -> Result<(), EngineError> {
        let WorkItem::Dispatch {
            job,
            command_id,
            attempt,
            ..
        } = &item
        else {
            return Ok(());
        };
        let (job, command_id, attempt) = (job.clone(), command_id.clone(), *attempt);
        let expiry = self.inner.settings.message_expiry;
        let now = now_ms();
        let created = entry_ms(entry);
        let Some(left_ms) = send_window(created, now, expiry) else {
            let waited = created.map_or(0, |c| now.saturating_sub(c));
            let reason = format!(
                "the command waited {:.1} s to be sent, longer than the message expiry of {} s",
                waited as f64 / 1000.0,
                expiry.map_or(0, |e| e.as_secs())
            );
            info!(scope, job, command_id, attempt, %reason, "stale dispatch not sent");
            return self
                .apply(
                    scope,
                    &job,
                    Input::Unsent {
                        command_id,
                        attempt,
                        reason,
                    },
                )
                .await;
        };
        let error = match self.send_command(scope, item, left_ms).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let reason = match error.terminal_reason() {
            Some(r) => format!("command cannot be sent: {r}"),
            None => {
                // Counted in Redis: the item may be retried by another
                // replica. A failure that cannot be recorded (Redis gone)
                // is not counted, and the item stays pending.
                let key = self.key(scope, &format!("sendfail:{entry}"));
                let mut text = error.to_string();
                if text.len() > 200 {
                    let mut cut = 200;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.truncate(cut);
                    text.push('…');
                }
                let mut c = self.conn();
                let (history,): (Vec<String>,) = redis::pipe()
                    .rpush(&key, &text)
                    .ignore()
                    .expire(&key, 86_400)
                    .ignore()
                    .lrange(&key, 0, -1)
                    .query_async(&mut c)
                    .await?;
                let n = history.len();
                if n < self.inner.settings.max_send_attempts as usize {
                    warn!(scope, job, command_id, attempt = n, error = %error, "command not sent; will try again");
                    return Err(error);
                }
                let listed: Vec<String> = history
                    .iter()
                    .enumerate()
                    .map(|(i, h)| format!("{}: {h}", i + 1))
                    .collect();
                format!(
                    "command not sent after {n} attempts ({})",
                    listed.join("; ")
                )
            }
        };
        warn!(scope, job, command_id, %reason, "command given up; the action fails");
        self.apply(
            scope,
            &job,
            Input::Result {
                command_id,
                outcome: Err(reason),
            },
        )
        .await
    }

    /// Sends a dispatch's command through its processor, fenced against
    /// the job leaving Running; `left_ms` is what is left of its message
    /// expiry (its Message Expiry Interval).
    async fn send_command(
        &self,
        scope: &str,
        item: WorkItem,
        left_ms: u64,
    ) -> Result<(), EngineError> {
        // A dispatch met while its job is paused is kept as it is, for Resume.
        let held = serde_json::to_string(&item).map_err(|e| EngineError::Send(e.to_string()))?;
        let WorkItem::Dispatch {
            job,
            command_id,
            action,
            type_id,
            equipment,
            parameters,
            attempt,
        } = item
        else {
            return Ok(());
        };
        let subject = command_subject(scope, equipment.as_deref());
        let taken = self
            .inner
            .takeovers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&type_id)
            .cloned();
        let (emitter, emit) = match taken {
            // A hand-written processor shapes this type's commands.
            Some(t) => {
                let cmd = Command {
                    command_id: command_id.clone(),
                    job: job.clone(),
                    scope: scope.to_owned(),
                    action: action.clone(),
                    type_id: type_id.clone(),
                    subject: subject.clone(),
                    parameters,
                    attempt,
                };
                // A shaper is a function of the command: what it refuses
                // once it refuses every time.
                let emit = (t.shape)(&cmd).map_err(|e| {
                    EngineError::Unsendable(format!("its processor cannot shape it: {e}"))
                })?;
                (t.emitter, emit)
            }
            None => {
                let Some(emitter) = self.inner.equipment.get() else {
                    return Err(EngineError::Send("no equipment processor is bound".into()));
                };
                let mut ev = CloudEvent::new(type_id.clone(), "");
                ev.set_data(ContentType::Json, &Value::Object(parameters))
                    .map_err(EngineError::Unsendable)?;
                (emitter.clone(), Emit::raw(ev))
            }
        };
        let left_secs = u32::try_from(left_ms / 1000).ok();
        // Whoever shaped it, the identity is the engine's: the stable
        // command id, its correlation, the job, the subject.
        let emit = emit
            .map_event(|ev| {
                ev.id.clone_from(&command_id);
                if ev.subject.is_none() {
                    ev.subject = Some(subject.clone());
                }
                ev.correlationid = Some(CorrelationId::from_text(command_id.clone()));
                // A user property: percent-encoded like a topic level, so
                // any job id is a valid MQTT string (ids without `%`, `/`,
                // `+`, `#` or control characters are unchanged).
                ev.custom.insert(
                    "jobid".into(),
                    crate::envelope::encode_level(&job).into_owned(),
                );
                // What is left of the message expiry, not all of it again.
                if let Some(left) = left_secs {
                    ev.expiryinterval = Some(ev.expiryinterval.map_or(left, |e| e.min(left)));
                }
            })
            .intent(Intent::Commands)
            .shared_response();
        // Only while the job is Running, and never after its
        // Aborted/Ended/Interrupted status event (see `fence`).
        let store = self.inner.jobs.store();
        let lease = match fence::take(store, scope, &job, &command_id, &held).await? {
            fence::Verdict::Leased(lease) => lease,
            fence::Verdict::Held => {
                debug!(
                    scope,
                    job, action, command_id, "job interrupted; command held until it resumes"
                );
                return Ok(());
            }
            fence::Verdict::Recalled => {
                debug!(
                    scope,
                    job, action, command_id, "job no longer running; command recalled"
                );
                return Ok(());
            }
        };
        // The lease must outlive the send: a send stuck in back
        // pressure is given up (the item stays pending and is tried
        // again) well before the lease could expire.
        let sent = tokio::time::timeout(DISPATCH_LEASE / 2, emitter.emit(emit)).await;
        if let Err(e) = fence::release(store, &lease).await {
            // It expires by itself; a transition out of Running
            // waits for it until then.
            warn!(scope, job, command_id, error = %e, "dispatch lease not released");
        }
        match sent {
            // The transport refuses it as it is (e.g. a topic MQTT
            // forbids): it would refuse it every time.
            Ok(Err(e)) if !e.is_retryable() => return Err(EngineError::Unsendable(e.to_string())),
            Ok(r) => r.map_err(|e| EngineError::Send(e.to_string()))?,
            Err(_) => {
                return Err(EngineError::Send(format!(
                    "command '{command_id}' not handed to the transport within {:?}",
                    DISPATCH_LEASE / 2
                )))
            }
        }
        debug!(scope, job, action, command_id, attempt, "command sent");
        Ok(())
    }

    async fn report_finished(&self, scope: &str, id: &str) -> Result<(), EngineError> {
        let Some((_, e, _)) = self.load(scope, id).await? else {
            return Ok(());
        };
        let jobs = &self.inner.jobs;
        let (what, final_state) = match &e.status {
            Status::Completed => (
                Some(Internal::Complete),
                JobState::new(MainState::Ended, Some(SubState::Completed)),
            ),
            Status::Failed(_) => (
                Some(Internal::Fail),
                JobState::new(MainState::Aborted, None),
            ),
            Status::Stopped => (
                None,
                JobState::new(MainState::Ended, Some(SubState::Completed)),
            ),
            Status::Aborted => (None, JobState::new(MainState::Aborted, None)),
            Status::Running => return Ok(()),
        };
        let response = response_json(id, &e, &final_state);
        let raw = serde_json::value::to_raw_value(&response)
            .map_err(|e| EngineError::Send(e.to_string()))?;
        let cause = format!("sfc/finished/{id}");
        match what {
            Some(internal) => {
                let r = jobs
                    .internal(scope, id, internal, Some(&raw), &cause)
                    .await?;
                info!(scope, job = id, status = ?e.status, outcome = r.status.value(), "recipe finished");
            }
            None => {
                jobs.set_response(scope, id, &raw, &cause).await?;
            }
        }
        Ok(())
    }

    /// Runs the engine until shutdown: follows the change and work streams
    /// of every scope through the consumer group, moves due timers, takes
    /// over entries of dead replicas. Errors are logged and retried.
    pub async fn run(self, mut shutdown: Shutdown) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut marks = super::resync::Marks::default();
        loop {
            let started = std::time::Instant::now();
            let r = tokio::select! {
                r = self.session(&mut marks) => r,
                _ = shutdown.wait() => return,
            };
            if let Err(e) = r {
                warn!(error = %e, "SFC engine interrupted; reconnecting");
                if !backoff.wait(started.elapsed(), &mut shutdown).await {
                    return;
                }
            }
        }
    }

    async fn session(&self, marks: &mut super::resync::Marks) -> Result<(), EngineError> {
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
                    for stream in ["changes", "work"] {
                        let r: redis::RedisResult<()> = redis::cmd("XGROUP")
                            .arg("CREATE")
                            .arg(self.key(&scope, stream))
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
                keys.push(self.key(s, "changes"));
                keys.push(self.key(s, "work"));
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
                    first_error
                        .get_or_insert(EngineError::Send(format!("engine task failed: {e}")));
                }
            }
        }
        // A failed entry stays pending and is taken over later.
        first_error.map_or(Ok(()), Err)
    }

    /// Handles one stream entry and acknowledges it; an entry whose effect
    /// failed stays pending and is retried (by us or, after `claim_idle`,
    /// another replica).
    async fn handle_entry(
        &self,
        scopes: &BTreeSet<String>,
        stream: &str,
        id: &str,
        map: &HashMap<String, redis::Value>,
    ) -> Result<(), EngineError> {
        let Some(scope) = scopes
            .iter()
            .find(|s| stream == self.key(s, "changes") || stream == self.key(s, "work"))
        else {
            return Ok(());
        };
        let field = |k: &str| match map.get(k) {
            Some(redis::Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        };
        let is_work = stream == self.key(scope, "work");
        let result = if !is_work {
            match (field("job"), field("state")) {
                (Some(job), Some(state)) => self.on_change(scope, &job, &state).await,
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
                    pipe.del(self.key(scope, &format!("sendfail:{id}")))
                        .ignore();
                }
                let _: () = pipe.query_async(&mut c).await?;
                Ok(())
            }
            Err(e @ EngineError::Corrupt { .. }) => {
                warn!(scope, entry = id, error = %e, "entry cannot be processed; acknowledged");
                let mut c = self.conn();
                let _: i64 = c.xack(stream, GROUP, &[id]).await?;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Moves due timers into the work streams; returns the next due time.
    async fn move_due_timers(&self, scopes: &BTreeSet<String>) -> Result<Option<u64>, EngineError> {
        let now = now_ms();
        let mut next: Option<u64> = None;
        let mut c = self.conn();
        for s in scopes {
            let _: i64 = TIMERS
                .key(self.key(s, "timers"))
                .key(self.key(s, "work"))
                .arg(now)
                .arg(500)
                .invoke_async(&mut c)
                .await?;
            let first: Vec<(String, f64)> =
                c.zrange_withscores(self.key(s, "timers"), 0, 0).await?;
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
            for stream in ["changes", "work"] {
                let key = self.key(s, stream);
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

    /// Routes a result or event from equipment to its job.
    async fn route(&self, ev: &CloudEvent) -> Result<(), EngineError> {
        let now = now_ms();
        let expires_ms = deadline_of(ev, now);
        if expires_ms.is_some_and(|x| x <= now) {
            // The transport drops what expired before it was handled; this
            // is for [`Engine::deliver`] callers and redelivered handling.
            debug!(ty = %ev.ty, id = %ev.id, "expired result or event ignored");
            return Ok(());
        }
        // Matched by the Correlation Data bytes the command carried, never
        // by their rendering: a device may echo only the bytes, and a
        // 16-byte command id then renders as a UUID (wire contract §8).
        let correlation = ev
            .correlationid
            .as_ref()
            .map(|c| c.bytes_as_str().unwrap_or(c.as_str()).to_owned());
        if let Some((scope, job, _, _)) = correlation.as_deref().and_then(exec::parse_command_id) {
            // The command id names the action (and its activation): a
            // result completes that action, whichever equipment sends it.
            let outcome = match &ev.mdcserrorkind {
                Some(kind) => Err(format!(
                    "{kind}: {}",
                    ev.mdcserrormessage.as_deref().unwrap_or("")
                )),
                None => Ok(ev.data_as::<Value>().unwrap_or(Value::Null)),
            };
            return self
                .apply(
                    &scope,
                    &job,
                    Input::Result {
                        command_id: correlation.unwrap_or_default(),
                        outcome,
                    },
                )
                .await;
        }
        let Some(scope) = ev.scope().map(str::to_owned) else {
            debug!(ty = %ev.ty, "equipment event without subject ignored");
            return Ok(());
        };
        let equipment = exec::equipment_of(ev.subject.as_deref());
        let early = ScopeEarly {
            type_id: ev.ty.clone(),
            job: correlation.clone(),
            data: ev.data_as::<Value>().unwrap_or(Value::Null),
            at_ms: now,
            id: Some(event_identity(ev)),
            equipment: equipment.clone(),
            expires_ms,
        };
        // The job named by the correlation id if it runs (the common case,
        // one read), else the oldest job of the scope waiting for this
        // type from this equipment, else keep it (atomically, see
        // `early_push.lua`).
        if let Some(named) = &correlation {
            if self
                .apply_if_running(&scope, named, early.clone().input())
                .await?
            {
                return Ok(());
            }
        }
        let named = correlation.clone().unwrap_or_default();
        let text = serde_json::to_string(&early).map_err(|e| EngineError::Send(e.to_string()))?;
        let mut c = self.conn();
        let verdict: String = EARLY
            .key(self.key(&scope, &format!("exec:{named}")))
            .key(self.key(&scope, &format!("waiting:{}", ev.ty)))
            .key(self.key(&scope, "early"))
            .arg(text)
            .arg(SCOPE_EARLY_EVENTS)
            .invoke_async(&mut c)
            .await?;
        let job = match verdict.as_str() {
            "EXEC" => named,
            "WAITING" => match self
                .waiting_job(&scope, &ev.ty, equipment.as_deref())
                .await?
            {
                Some(j) => j,
                None => return Ok(()),
            },
            _ => {
                debug!(scope, ty = %ev.ty, "event kept until a job waits for it");
                return Ok(());
            }
        };
        self.apply(&scope, &job, early.input()).await
    }

    /// Of the jobs waiting for events of `type_id` (oldest first), the
    /// first with a pull action waiting right now whose `Equipment`
    /// selector takes `equipment`; else the oldest, which keeps the event
    /// with its own early events.
    async fn waiting_job(
        &self,
        scope: &str,
        type_id: &str,
        equipment: Option<&str>,
    ) -> Result<Option<String>, EngineError> {
        /// Waiting jobs looked at at most per event.
        const CANDIDATES: isize = 32;
        let mut c = self.conn();
        let jobs: Vec<String> = c
            .zrange(
                self.key(scope, &format!("waiting:{type_id}")),
                0,
                CANDIDATES - 1,
            )
            .await?;
        for j in &jobs {
            let Some((_, e, recipe_json)) = self.load(scope, j).await? else {
                continue;
            };
            let Ok(compiled) = self.compiled(&recipe_json) else {
                continue;
            };
            if waits_for(&e, &compiled.recipe, type_id, equipment) {
                return Ok(Some(j.clone()));
            }
        }
        Ok(jobs.into_iter().next())
    }
}

/// The subject (and topic levels) of a command: the job's scope, or the
/// action's `Equipment` below the scope (`line-1/press` addresses
/// `{scope}/line-1/press`), always below it: the same selector decides
/// which events a `pull_event` takes (their subject below the scope, see
/// [`exec::selector_takes`]), and a recipe never addresses another scope.
pub fn command_subject(scope: &str, equipment: Option<&str>) -> String {
    match equipment {
        Some(e) => format!("{scope}/{e}"),
        None => scope.to_owned(),
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

/// The `equipment` processor's only handler: every result and event.
async fn on_equipment_message(
    ev: CloudEvent,
    _meta: Meta,
    State(engine): State<Engine>,
) -> Result<(), HandlerError> {
    engine.route(&ev).await.map_err(HandlerError::from)
}

fn failed_exec(job: &str, scope: &str, reason: &str) -> Exec {
    let now = now_ms();
    Exec {
        job: job.to_owned(),
        scope: scope.to_owned(),
        status: Status::Failed(reason.to_owned()),
        paused_at_ms: None,
        started_ms: now,
        ended_ms: Some(now),
        active: Default::default(),
        activations: Default::default(),
        actions: Default::default(),
        results: Map::new(),
        params: Map::new(),
        early: Default::default(),
        history: Default::default(),
        seen_events: Default::default(),
    }
}

/// The job response of a finished execution (`ISA95JobResponseDataType`):
/// the action results as `JobResponseData`, the step history, start and end
/// times, and the failure reason as `Description`.
fn response_json(job: &str, e: &Exec, state: &JobState) -> Value {
    let data: Vec<Value> = e
        .results
        .iter()
        .map(|(k, v)| json!({"ID": k, "Value": v}))
        .chain(std::iter::once(json!({
            "ID": "steps",
            "Value": e.history.iter().map(|h| json!({
                "Step": h.step, "Activation": h.activation,
                "Entered": rfc3339(h.entered_ms), "Left": h.left_ms.map(rfc3339)
            })).collect::<Vec<_>>()
        })))
        .collect();
    let mut r = json!({
        "JobResponseID": format!("{job}-response"),
        "JobOrderID": job,
        "StartTime": rfc3339(e.started_ms),
        "EndTime": rfc3339(e.ended_ms.unwrap_or(e.started_ms)),
        "JobState": state.to_wire(),
        "JobResponseData": data,
    });
    if let Status::Failed(reason) = &e.status {
        r["Description"] = json!({"Locale": "en", "Text": reason});
    }
    r
}

/// Registers the recipe check for work masters whose `dataschema` is the
/// SFC recipe schema: invalid recipes are refused before they are stored.
pub fn recipe_validator() -> (String, crate::jobs::manager::WorkMasterValidator) {
    (
        SFC_RECIPE_SCHEMA.to_owned(),
        Arc::new(|data: &Value| {
            Recipe::parse(data)
                .map(|_| ())
                .map_err(|e| crate::jobs::manager::InvalidWorkMaster::new(e.to_string()))
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::EventType;

    #[test]
    fn equipment_is_addressed_below_the_scope() {
        assert_eq!(command_subject("line-1", None), "line-1");
        assert_eq!(command_subject("line-1", Some("press")), "line-1/press");
        assert_eq!(
            command_subject("line-1", Some("hall/press")),
            "line-1/hall/press"
        );
    }

    #[test]
    fn a_dispatch_is_sent_only_within_the_message_expiry() {
        assert_eq!(entry_ms("1700000000123-4"), Some(1_700_000_000_123));
        assert_eq!(entry_ms("junk"), None);
        let now = 1_000_000;
        let expiry = Some(Duration::from_secs(60));
        // No expiry configured: always, for as long as it takes.
        assert_eq!(send_window(Some(0), now, None), Some(u64::MAX));
        // Fresh: nearly all of it is left for the command.
        assert_eq!(send_window(Some(now - 500), now, expiry), Some(59_500));
        // Older than the expiry, or with less than a whole second left
        // (the Message Expiry Interval counts seconds): not sent.
        assert_eq!(send_window(Some(now - 60_000), now, expiry), None);
        assert_eq!(send_window(Some(now - 59_001), now, expiry), None);
        assert_eq!(send_window(Some(now - 59_000), now, expiry), Some(1_000));
        // A re-dispatch (a new work item after a timeout) starts afresh.
        assert_eq!(send_window(Some(now), now, expiry), Some(60_000));
    }

    #[test]
    fn only_a_send_that_can_never_succeed_is_terminal() {
        let refused =
            redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, "wrong type"));
        assert!(!redis_is_retryable(&refused));
        assert!(EngineError::Redis(refused)
            .terminal_reason()
            .is_some_and(|r| r.contains("refused")));
        let gone = redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "down",
        ));
        assert!(redis_is_retryable(&gone));
        assert_eq!(EngineError::Redis(gone).terminal_reason(), None);
        assert!(EngineError::Unsendable("bad topic".into())
            .terminal_reason()
            .is_some());
        assert_eq!(
            EngineError::Send("queue closed".into()).terminal_reason(),
            None
        );
        // The transport's own classification decides for a publish.
        use crate::transport::TransportError;
        let invalid: HandlerError = TransportError::Invalid {
            topic: "a/+/b".into(),
            reason: "wildcard".into(),
        }
        .into();
        assert!(!invalid.is_retryable());
        let closed: HandlerError = TransportError::Closed("mqtt".into()).into();
        assert!(closed.is_retryable());
        // As a handler error (deliver): terminal stays terminal.
        assert!(!HandlerError::from(EngineError::Unsendable("x".into())).is_retryable());
    }

    #[test]
    fn work_items_round_trip() {
        let i = WorkItem::Timer {
            job: "j".into(),
            key: "a/1/timeout:1/x".into(),
        };
        let t = serde_json::to_string(&i).unwrap();
        assert!(t.contains("\"kind\":\"timer\""));
        assert_eq!(serde_json::from_str::<WorkItem>(&t).unwrap(), i);
        // The Lua timer script writes this shape.
        let lua = r#"{"kind":"timer","job":"j","key":"k"}"#;
        assert!(matches!(
            serde_json::from_str::<WorkItem>(lua).unwrap(),
            WorkItem::Timer { .. }
        ));
    }

    #[test]
    fn responses_carry_results_history_and_reason() {
        let e = failed_exec("j", "s", "boom");
        let r = response_json("j", &e, &JobState::new(MainState::Aborted, None));
        assert_eq!(r["Description"]["Text"], "boom");
        assert_eq!(r["JobOrderID"], "j");
        let typed: crate::models::isa95_jobcontrol::ISA95JobResponseDataType =
            serde_json::from_value(r).unwrap();
        assert_eq!(typed.job_order_id, "j");
    }

    #[test]
    fn event_types_are_the_engines() {
        assert_eq!(
            <crate::models::sfc_recipe::SfcRecipe as EventType>::DATASCHEMA,
            SFC_RECIPE_SCHEMA
        );
    }
}
