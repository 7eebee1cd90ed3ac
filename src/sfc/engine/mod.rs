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
//! - Each evolution is one compare-and-swap (`redis/lua/exec_apply.lua`) on the
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
//!   atomically (`redis/lua/timers_due.lua`), so each fires once.
//! - Results and events reach the `equipment` processor on any replica (the
//!   command's Response Topic is shared); they are applied as inputs.
//! - Nothing is retried forever: an entry whose handling fails stays
//!   pending and is tried again, its failures counted in Redis; after
//!   [`EngineSettings::max_attempts`] a dispatch fails its action, and any
//!   other entry is dead-lettered (`P:{S}:deadletters`) and acknowledged.
//!
//! # Layout
//!
//! - this module: the [`Engine`] handle, its settings and public API;
//! - `streams`: the consumer session (read, take over, acknowledge, due
//!   timers), with `retry` around every entry's handler (bounded attempts,
//!   dead letters);
//! - `lifecycle`: job changes start, pause, resume and stop executions;
//!   each input is one compare-and-swap evolution;
//! - `work`: the work items (dispatch with expiry and fencing, progress,
//!   finished), `response` the job response of a finished execution;
//! - `routing`: results and events to the job waiting for them, `early`
//!   the events kept until then;
//! - `store`: load and compare-and-swap write of execution states, the
//!   compiled recipe cache (the scripts live in `crate::redis::scripts`);
//! - `error`: [`EngineError`], retryable or terminal.

mod early;
mod error;
mod lifecycle;
mod response;
mod retry;
mod routing;
mod store;
mod streams;
mod work;

pub use error::EngineError;

use crate::envelope::CloudEvent;
use crate::jobs::JobManager;
use crate::processor::{Emit, Emitter, Processor};
use crate::runtime::backoff::Backoff;
use crate::runtime::Shutdown;
use crate::sfc::exec::Input;
use crate::sfc::recipe::Recipe;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tracing::warn;

/// The `dataschema` of work masters whose `data` is an SFC recipe (the
/// one rule: [`super::source::carries_recipe`]).
pub const SFC_RECIPE_SCHEMA: &str = super::source::RECIPE_SCHEMA;
/// The consumer group of the engine on every stream it reads.
pub const GROUP: &str = "sfc-engine";
/// The name of the generic equipment processor.
pub const EQUIPMENT: &str = "equipment";
/// CloudEvent type of step progress events.
pub const PROGRESS_TYPE: &str = "com.github.aschamberger.microdcs.sfc.progress.v1";

/// Early events kept per scope at most, before any job waits for them.
pub const SCOPE_EARLY_EVENTS: usize = 256;

/// Dead-lettered entries kept per scope at most (`P:{S}:deadletters`, the
/// newest).
pub const DEAD_LETTERS: isize = 1000;

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
    /// Failed attempts at one stream entry before it is given up
    /// (`processing.max_attempts`). A dispatch work item whose send failed
    /// retryably (transport or Redis unavailable) this often fails its
    /// action with the attempt history, and the job ends Aborted; any other
    /// entry (a timer, progress or finished work item, a job change) is
    /// dead-lettered (`P:{S}:deadletters`), acknowledged and logged.
    pub max_attempts: u32,
    /// Whether each write that changes steps or actions adds a step entry
    /// to the job's audit trail (`jobs.audit_steps`; one `XADD` inside the
    /// write's script, no extra round trip). Commands, refusals and job
    /// state transitions are recorded by the job manager either way.
    pub audit_steps: bool,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            poll: Duration::from_millis(200),
            claim_idle: Duration::from_secs(3),
            batch: 256,
            message_expiry: None,
            max_attempts: 30,
            audit_steps: true,
        }
    }
}

/// The engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: JobManager,
    client: crate::redis::RedisClient,
    consumer: String,
    settings: EngineSettings,
    equipment: OnceLock<Emitter>,
    takeovers: std::sync::RwLock<HashMap<String, TakeOver>>,
    cache: Mutex<HashMap<u64, Arc<store::Compiled>>>,
    /// The executions this replica wrote last (see `store`).
    execs: store::ExecCache,
    /// The earliest due time (ms) of the timers this replica scheduled since
    /// it last moved due timers (`u64::MAX`: none), so the session calls
    /// `timers_due.lua` when something can be due, not on every batch.
    timer_hint: std::sync::atomic::AtomicU64,
    /// When the engine's loop last went round, in ms since `created`
    /// (liveness, see [`Engine::quiet_for`]).
    round_ms: std::sync::atomic::AtomicU64,
    created: std::time::Instant,
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

impl Engine {
    /// An engine using `jobs` for job state and the Redis `client` (one
    /// Redis's or a cluster's) for its own blocking connections; `consumer`
    /// names this replica in the consumer groups (its instance id).
    pub fn new(
        jobs: JobManager,
        client: impl Into<crate::redis::RedisClient>,
        consumer: impl Into<String>,
        settings: EngineSettings,
    ) -> Self {
        Engine {
            inner: Arc::new(Inner {
                jobs,
                client: client.into(),
                consumer: consumer.into(),
                settings,
                equipment: OnceLock::new(),
                takeovers: std::sync::RwLock::new(HashMap::new()),
                cache: Mutex::new(HashMap::new()),
                execs: store::ExecCache::default(),
                timer_hint: std::sync::atomic::AtomicU64::new(u64::MAX),
                round_ms: std::sync::atomic::AtomicU64::new(0),
                created: std::time::Instant::now(),
            }),
        }
    }

    /// How long the engine's loop has not gone round: it goes round at
    /// least every poll interval (200 ms) while Redis answers, and every
    /// reconnect attempt (at most 5 s apart) while not. Liveness calls an
    /// engine quiet for much longer than that wedged.
    pub fn quiet_for(&self) -> Duration {
        let last = self
            .inner
            .round_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        self.inner
            .created
            .elapsed()
            .saturating_sub(Duration::from_millis(last))
    }

    /// Notes that the engine's loop went round.
    pub(super) fn went_round(&self) {
        let ms = self.inner.created.elapsed().as_millis() as u64;
        self.inner
            .round_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
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
            .handle(routing::on_equipment_message)
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

    /// Applies an input to a job's execution (a result, an event, a timer,
    /// job control), retrying on concurrent changes. Unknown or finished
    /// executions ignore it.
    ///
    /// # Errors
    /// Redis is unavailable or the stored state is unreadable.
    pub async fn apply(&self, scope: &str, job: &str, input: Input) -> Result<(), EngineError> {
        self.apply_if_running(scope, job, input).await.map(|_| ())
    }

    /// Runs the engine until shutdown: follows the change and work streams
    /// of every scope through the consumer group, moves due timers, takes
    /// over entries of dead replicas. Errors are logged and retried.
    pub async fn run(self, mut shutdown: Shutdown) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut marks = super::resync::Marks::default();
        loop {
            self.went_round();
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

    /// The key schema (the job store's: the engine keeps its state beside
    /// the jobs, in the same scope hash slot).
    pub(super) fn keys(&self) -> &crate::redis::Keys {
        self.inner.jobs.store().keys()
    }

    pub(super) fn jobs_store(&self) -> &crate::jobs::JobStore {
        self.inner.jobs.store()
    }

    pub(super) fn conn(&self) -> crate::redis::RedisConnection {
        self.inner.jobs.store().connection()
    }
}

/// The subject (and topic levels) of a command: the job's scope, or the
/// action's `Equipment` below the scope (`line-1/press` addresses
/// `{scope}/line-1/press`), always below it: the same selector decides
/// which events a `pull_event` takes (their subject below the scope, see
/// [`exec::selector_takes`](crate::sfc::exec::selector_takes)), and a
/// recipe never addresses another scope.
pub fn command_subject(scope: &str, equipment: Option<&str>) -> String {
    match equipment {
        Some(e) => format!("{scope}/{e}"),
        None => scope.to_owned(),
    }
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
    fn every_entry_is_bounded_by_default() {
        assert_eq!(EngineSettings::default().max_attempts, 30);
    }

    #[test]
    fn event_types_are_the_engines() {
        assert_eq!(
            <crate::models::sfc_recipe::SfcRecipe as EventType>::DATASCHEMA,
            SFC_RECIPE_SCHEMA
        );
    }
}
