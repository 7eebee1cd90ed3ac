//! The job manager: the state machine applied to stored jobs, with
//! acceptance checks, compare-and-swap writes and status events. The
//! `machinery-jobs` processor's handlers and the SFC engine both call it.

use super::acceptance::{self, Checks};
use super::audit::{AuditEvent, Cause};
use super::machine::{Internal, Machine, Method, Trigger};
use super::state::{JobState, MainState};
use super::status::ReturnStatus;
use super::store::{Applied, Change, JobStore, StoreError, StoredJob};
use super::wire::StatusEvent;
use crate::processor::{Emit, Emitter};
use serde_json::value::RawValue;
use serde_json::Value;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tracing::{debug, info, warn};

/// Checks a work master's `data` before it is stored, for one `dataschema`,
/// matched exactly (the SFC engine registers the recipe validator under
/// [`RECIPE_SCHEMA`](crate::sfc::source::RECIPE_SCHEMA), the rule of
/// [`is_recipe_schema`](crate::sfc::source::is_recipe_schema)).
pub type WorkMasterValidator = Arc<dyn Fn(&Value) -> Result<(), InvalidWorkMaster> + Send + Sync>;

/// Why a [`WorkMasterValidator`] refused a work master's `data`: the reason,
/// quoted in the refusal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct InvalidWorkMaster {
    reason: String,
}

impl InvalidWorkMaster {
    /// A refusal for `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        InvalidWorkMaster {
            reason: reason.into(),
        }
    }

    /// The reason.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// Job management settings.
#[derive(Clone)]
pub struct JobSettings {
    /// Which acceptance checks run.
    pub checks: Checks,
    /// Live-job limit of scopes that set none (0: unlimited).
    pub default_limit: u64,
    /// How long EndState jobs are kept before they are purged.
    pub retention: Duration,
    /// Validators of work master `data`, by `dataschema`.
    pub validators: Vec<(String, WorkMasterValidator)>,
}

impl std::fmt::Debug for JobSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobSettings")
            .field("checks", &self.checks)
            .field("default_limit", &self.default_limit)
            .field("retention", &self.retention)
            .field(
                "validators",
                &self.validators.iter().map(|(s, _)| s).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings {
            checks: Checks::default(),
            default_limit: 0,
            retention: Duration::from_secs(24 * 3600),
            validators: Vec::new(),
        }
    }
}

/// What a command did: the status to answer with, the status event to send
/// (only on a transition) and, for a refusal, why.
#[derive(Debug, Clone)]
pub struct CommandOutcome {
    /// The `ReturnStatus`.
    pub status: ReturnStatus,
    /// The status event of the transition, if one happened.
    pub event: Option<StatusEvent>,
    /// Why the command was refused (logged; not on the wire).
    pub reason: Option<String>,
}

impl CommandOutcome {
    fn refused(status: ReturnStatus, reason: impl Into<String>) -> Self {
        CommandOutcome {
            status,
            event: None,
            reason: Some(reason.into()),
        }
    }

    /// The refusal of a job order without a JobOrderID.
    fn no_order_id() -> Self {
        CommandOutcome::refused(
            ReturnStatus::InvalidRequest,
            "the job order has no JobOrderID",
        )
    }

    fn done(job: &StoredJob) -> Self {
        CommandOutcome {
            status: ReturnStatus::NoError,
            event: Some(status_event(job)),
            reason: None,
        }
    }
}

/// The status event for a job's current state.
pub fn status_event(job: &StoredJob) -> StatusEvent {
    StatusEvent {
        job_order: job.order.clone(),
        job_state: job.state.to_wire(),
        job_response: job.response.clone(),
    }
}

/// How often a compare-and-swap is retried when other replicas keep
/// changing the same job; past this the command fails as retryable.
const CAS_ATTEMPTS: usize = 50;

/// The job manager. Cheap to clone.
#[derive(Clone)]
pub struct JobManager {
    inner: Arc<Inner>,
}

struct Inner {
    store: JobStore,
    settings: JobSettings,
    machine: &'static Machine,
    emitter: OnceLock<Emitter>,
}

impl std::fmt::Debug for JobManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobManager")
            .field("store", &self.inner.store)
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl JobManager {
    /// A manager over `store`.
    pub fn new(store: JobStore, settings: JobSettings) -> Self {
        JobManager {
            inner: Arc::new(Inner {
                store,
                settings,
                machine: Machine::standard(),
                emitter: OnceLock::new(),
            }),
        }
    }

    /// The store.
    pub fn store(&self) -> &JobStore {
        &self.inner.store
    }

    /// The settings.
    pub fn settings(&self) -> &JobSettings {
        &self.inner.settings
    }

    /// The `machinery-jobs` processor's emitter, once the processor exists
    /// (for other northbound events about jobs, like SFC progress).
    pub fn emitter(&self) -> Option<Emitter> {
        self.inner.emitter.get().cloned()
    }

    /// Sets the emitter used for status events of internal transitions
    /// (the `machinery-jobs` processor's). Only the first call counts.
    pub fn set_emitter(&self, emitter: Emitter) {
        let _ = self.inner.emitter.set(emitter);
    }

    /// Store (`start` false) or StoreAndStart (`start` true) of a normalised
    /// job order. `cause` identifies the command (`source` + `id`), so a
    /// redelivered command that was already applied answers NoError again
    /// instead of "already exists"; with its [`CommandInfo`](super::audit::CommandInfo)
    /// the command is recorded in the job's audit trail.
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn store_order(
        &self,
        scope: &str,
        order: &Value,
        start: bool,
        cause: impl Into<Cause<'_>>,
    ) -> Result<CommandOutcome, StoreError> {
        let cause: Cause<'_> = cause.into();
        let Some(id) = order_id(order) else {
            return Ok(CommandOutcome::no_order_id());
        };
        let store = &self.inner.store;
        store.register_scope(scope).await?;
        if let Some(job) = store.get(scope, id).await? {
            return Ok(if job.cause.as_deref() == Some(cause.key) {
                CommandOutcome::done(&job)
            } else {
                self.refused_audited(
                    scope,
                    id,
                    cause,
                    CommandOutcome::refused(
                        ReturnStatus::UnableToAcceptJobOrder,
                        format!("job order '{id}' already exists"),
                    ),
                )
                .await?
            });
        }
        if let Some(refusal) = self.check_resources(scope, order).await? {
            return Ok(refusal);
        }
        let limit = if self.inner.settings.checks.limit {
            store
                .limit(scope)
                .await?
                .unwrap_or(self.inner.settings.default_limit)
        } else {
            0
        };
        let method = if start {
            Method::StoreAndStart
        } else {
            Method::Store
        };
        let to = match self
            .inner
            .machine
            .next(JobState::INITIAL, Trigger::Method(method))
        {
            Ok(s) => s,
            Err(e) => {
                return Ok(CommandOutcome::refused(
                    ReturnStatus::InvalidJobOrderStatus,
                    e.to_string(),
                ))
            }
        };
        let raw = to_raw(order);
        let audit = audit_event(cause, Trigger::Method(method), JobState::INITIAL, to);
        let change = Change {
            id,
            expected_version: 0,
            from: JobState::INITIAL,
            to,
            order: Some(&raw),
            response: None,
            cause: cause.key,
            limit,
            kind: "store",
            audit: Some(&audit),
        };
        match store.apply(scope, &change).await? {
            Applied::Ok(version) => {
                info!(scope, job = id, state = %to, "job stored");
                Ok(CommandOutcome::done(&StoredJob {
                    id: id.to_owned(),
                    version,
                    order: raw,
                    state: to,
                    response: None,
                    cause: Some(cause.key.to_owned()),
                    trace: crate::telemetry::current_traceparent(),
                }))
            }
            Applied::Conflict(_) => Ok(CommandOutcome::refused(
                ReturnStatus::UnableToAcceptJobOrder,
                format!("job order '{id}' already exists"),
            )),
            Applied::Limit(live) => Ok(CommandOutcome::refused(
                ReturnStatus::UnableToAcceptJobOrder,
                format!("scope '{scope}' has {live} live jobs, its limit is {limit}"),
            )),
        }
    }

    /// Update: replaces the job order (no merge), keeps the main state,
    /// resets the substate to Ready. Not blocked by the live-job limit.
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn update_order(
        &self,
        scope: &str,
        order: &Value,
        cause: impl Into<Cause<'_>>,
    ) -> Result<CommandOutcome, StoreError> {
        let cause: Cause<'_> = cause.into();
        let Some(id) = order_id(order) else {
            return Ok(CommandOutcome::no_order_id());
        };
        if self.inner.store.get(scope, id).await?.is_none() {
            return Ok(CommandOutcome::refused(
                ReturnStatus::UnknownJobOrderId,
                format!("no job order '{id}'"),
            ));
        }
        if let Some(refusal) = self.check_resources(scope, order).await? {
            return self.refused_audited(scope, id, cause, refusal).await;
        }
        let raw = to_raw(order);
        self.change(
            scope,
            id,
            Some(Trigger::Method(Method::Update)),
            Some(&raw),
            None,
            cause,
        )
        .await
    }

    /// A method that only changes the state (Start, RevokeStart, Pause,
    /// Resume, Stop, Abort, Cancel, Clear). A command with its
    /// [`CommandInfo`](super::audit::CommandInfo) is recorded in the job's
    /// audit trail, applied or refused.
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn call(
        &self,
        scope: &str,
        id: &str,
        method: Method,
        cause: impl Into<Cause<'_>>,
    ) -> Result<CommandOutcome, StoreError> {
        self.change(scope, id, Some(Trigger::Method(method)), None, None, cause)
            .await
    }

    /// An internal transition reported by the execution side (the SFC
    /// engine), optionally storing a job response with it. The status event
    /// is sent through the `machinery-jobs` processor's emitter.
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn internal(
        &self,
        scope: &str,
        id: &str,
        what: Internal,
        response: Option<&RawValue>,
        cause: &str,
    ) -> Result<CommandOutcome, StoreError> {
        let effect = self
            .change(
                scope,
                id,
                Some(Trigger::Internal(what)),
                None,
                response,
                cause,
            )
            .await?;
        self.emit(scope, &effect).await;
        Ok(effect)
    }

    /// [`JobManager::internal`] without its status event, which the caller
    /// sends with [`JobManager::send_status`] when it suits it: the SFC
    /// engine sends a job's Running event beside the write of its
    /// execution, so the event does not delay the first command.
    pub(crate) async fn internal_unsent(
        &self,
        scope: &str,
        id: &str,
        what: Internal,
        cause: &str,
    ) -> Result<CommandOutcome, StoreError> {
        self.change(scope, id, Some(Trigger::Internal(what)), None, None, cause)
            .await
    }

    /// Sends the status event of an outcome of
    /// [`JobManager::internal_unsent`] (a failure is logged).
    pub(crate) async fn send_status(&self, scope: &str, outcome: &CommandOutcome) {
        self.emit(scope, outcome).await;
    }

    /// Stores (replaces) the job response of a job without changing its
    /// state: progress of a running job. Sends a status event.
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn set_response(
        &self,
        scope: &str,
        id: &str,
        response: &RawValue,
        cause: &str,
    ) -> Result<CommandOutcome, StoreError> {
        let effect = self
            .change(scope, id, None, None, Some(response), cause)
            .await?;
        self.emit(scope, &effect).await;
        Ok(effect)
    }

    async fn emit(&self, scope: &str, effect: &CommandOutcome) {
        let (Some(ev), Some(emitter)) = (&effect.event, self.inner.emitter.get()) else {
            return;
        };
        if let Err(e) = emitter.emit(Emit::new(ev).subject(scope)).await {
            // The state is stored; the publisher's retained topics carry it
            // even if this event is lost with a closing transport.
            warn!(scope, error = %e, "status event not sent");
        }
    }

    /// Read, compute, compare-and-swap; again on a concurrent change.
    /// Without a trigger the state stays as it is (a job response update).
    async fn change(
        &self,
        scope: &str,
        id: &str,
        trigger: Option<Trigger>,
        order: Option<&RawValue>,
        response: Option<&RawValue>,
        cause: impl Into<Cause<'_>>,
    ) -> Result<CommandOutcome, StoreError> {
        let cause: Cause<'_> = cause.into();
        let store = &self.inner.store;
        for attempt in 0..CAS_ATTEMPTS {
            let Some(job) = store.get(scope, id).await? else {
                return Ok(CommandOutcome::refused(
                    ReturnStatus::UnknownJobOrderId,
                    format!("no job order '{id}'"),
                ));
            };
            if job.cause.as_deref() == Some(cause.key) {
                // This very command was applied before (a redelivery after a
                // crash between the write and the dedupe record). Its first
                // delivery may have failed while fencing: fence again.
                if stops_dispatch(job.state.main) {
                    self.fence(scope, id).await?;
                }
                return Ok(CommandOutcome::done(&job));
            }
            let next = match trigger {
                Some(t) => self.inner.machine.next(job.state, t),
                None => Ok(job.state),
            };
            let to = match next {
                Ok(s) => s,
                Err(e) => {
                    let refusal =
                        CommandOutcome::refused(ReturnStatus::InvalidJobOrderStatus, e.to_string());
                    return self.refused_audited(scope, id, cause, refusal).await;
                }
            };
            // A job response stored without a state change (progress) is
            // not audited: the execution's step entries say the same.
            let audit = trigger.map(|t| audit_event(cause, t, job.state, to));
            let change = Change {
                id,
                expected_version: job.version,
                from: job.state,
                to,
                order,
                response,
                cause: cause.key,
                limit: 0,
                audit: audit.as_ref(),
                kind: if trigger.is_some() {
                    "transition"
                } else {
                    "response"
                },
            };
            match store.apply(scope, &change).await? {
                Applied::Ok(version) => {
                    // Every status event showing the job not Running (the
                    // transition, and a job response stored afterwards)
                    // waits for the commands still being sent.
                    if stops_dispatch(to.main) {
                        self.fence(scope, id).await?;
                    }
                    match trigger {
                        Some(t) => {
                            info!(scope, job = id, from = %job.state, to = %to, trigger = %t, "job transition")
                        }
                        None => info!(scope, job = id, state = %to, "job response stored"),
                    }
                    return Ok(CommandOutcome::done(&StoredJob {
                        id: id.to_owned(),
                        version,
                        order: order.map_or(job.order, RawValue::to_owned),
                        state: to,
                        response: response.map(RawValue::to_owned).or(job.response),
                        cause: Some(cause.key.to_owned()),
                        trace: crate::telemetry::current_traceparent().or(job.trace),
                    }));
                }
                Applied::Conflict(_) | Applied::Limit(_) => {
                    debug!(scope, job = id, attempt, "concurrent change; retrying");
                    // Spread competing replicas apart a little.
                    tokio::time::sleep(Duration::from_micros(200 * (attempt as u64 + 1))).await;
                }
            }
        }
        Err(contention(scope, id))
    }

    /// Records a refused command in the trail of job `id` (if the job
    /// exists and the cause is a command) and returns the refusal.
    async fn refused_audited(
        &self,
        scope: &str,
        id: &str,
        cause: Cause<'_>,
        refusal: CommandOutcome,
    ) -> Result<CommandOutcome, StoreError> {
        if let Some(cmd) = cause.command {
            let event = cmd.record(refusal.status, refusal.reason.as_deref(), None);
            self.inner.store.append_audit(scope, id, &event).await?;
        }
        Ok(refusal)
    }

    /// Waits until no command decided while the job was Running is still
    /// being sent, so that the status event of leaving Running is
    /// published after every command of the job: "no command follows
    /// Aborted". See [`JobStore::await_dispatches`].
    async fn fence(&self, scope: &str, id: &str) -> Result<(), StoreError> {
        if !self.inner.store.await_dispatches(scope, id).await? {
            warn!(
                scope,
                job = id,
                "dispatch leases outlived their expiry; status event sent anyway"
            );
        }
        Ok(())
    }

    async fn check_resources(
        &self,
        scope: &str,
        order: &Value,
    ) -> Result<Option<CommandOutcome>, StoreError> {
        let wanted = acceptance::requirements(order, &self.inner.settings.checks);
        let unknown = self.inner.store.unknown_resources(scope, &wanted).await?;
        Ok((!unknown.is_empty()).then(|| {
            CommandOutcome::refused(
                ReturnStatus::UnableToAcceptJobOrder,
                acceptance::describe_unknown(&unknown),
            )
        }))
    }

    /// The stored job response of a job: `Ok(None)` when the job does not
    /// exist or has no response yet.
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn response(
        &self,
        scope: &str,
        id: &str,
    ) -> Result<Option<Box<RawValue>>, StoreError> {
        Ok(self
            .inner
            .store
            .get(scope, id)
            .await?
            .and_then(|j| j.response))
    }

    /// The job responses of every job of the scope in exactly `state`.
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn responses_in_state(
        &self,
        scope: &str,
        state: JobState,
    ) -> Result<Vec<Box<RawValue>>, StoreError> {
        let store = &self.inner.store;
        let ids = store.ids_in_state(scope, state).await?;
        Ok(store
            .get_many(scope, &ids)
            .await?
            .into_iter()
            .filter(|j| j.state == state)
            .filter_map(|j| j.response)
            .collect())
    }
}

/// The states in which no command may be sent for a job: it was paused
/// (Interrupted), stopped or completed (Ended), or aborted.
fn stops_dispatch(main: MainState) -> bool {
    matches!(
        main,
        MainState::Interrupted | MainState::Ended | MainState::Aborted
    )
}

/// The audit entry of an applied change by `trigger`: the command as
/// received when the cause carries one, else a transition with the cause
/// as its reason (the engine's internal triggers, and methods called
/// through the library without a command).
fn audit_event(cause: Cause<'_>, trigger: Trigger, from: JobState, to: JobState) -> AuditEvent {
    match (cause.command, trigger) {
        (Some(cmd), Trigger::Method(_)) => {
            cmd.record(ReturnStatus::NoError, None, Some((from, to)))
        }
        (_, t) => AuditEvent::Transition {
            trigger: match t {
                Trigger::Method(m) => m.name().to_owned(),
                Trigger::Internal(i) => format!("{i:?}"),
            },
            from: from.to_string(),
            to: to.to_string(),
            cause: cause.key.replace('\u{1f}', " "),
        },
    }
}

fn contention(scope: &str, id: &str) -> StoreError {
    StoreError::Unavailable(redis::RedisError::from((
        redis::ErrorKind::Io,
        "job changed concurrently too often",
        format!("scope '{scope}', job '{id}'"),
    )))
}

fn order_id(order: &Value) -> Option<&str> {
    order
        .get("JobOrderID")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn to_raw(v: &Value) -> Box<RawValue> {
    // A `Value` always serialises, and always to valid JSON: the fallback
    // is unreachable but keeps this free of panics.
    serde_json::value::to_raw_value(v).unwrap_or_else(|_| Box::<RawValue>::default())
}
