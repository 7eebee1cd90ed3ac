//! The execution state of one job's recipe and its evolution, as a pure
//! function: `Exec::apply(input) -> effects`, no I/O, no clock (the time is
//! an input). The runtime stores the state in Redis with a compare-and-swap
//! and performs the effects; any replica can apply the next input.
//!
//! # Qualifiers (what each means here)
//!
//! | qualifier | dispatched | holds the step | when the step is left |
//! |---|---|---|---|
//! | `N` | on step entry | yes | cancelled if still running |
//! | `P`, `P1` | on step entry | no | keeps its result if it arrives |
//! | `P0` | on step exit | no | — |
//! | `S` | on step entry | no | keeps running until an `R` resets it or the job ends |
//! | `R` | resets the stored action named by its `TypeId` on step entry | no | — |
//! | `L` | on step entry | yes, until its result or its time limit | cancelled at the limit |
//! | `D` | `DelaySeconds` after entry, if the step is still active | yes | never dispatched if left before |
//!
//! For a `pull_event` action "dispatched" means "starts waiting"; an event
//! that arrived before (kept in a bounded buffer) completes it at once.
//! "Cancelled" means the engine stops waiting: a late result is ignored.
//!
//! # Which event an action takes
//!
//! A `push_command` takes the result that carries its command id (which
//! names the job, the action and the activation), whatever equipment
//! answers. A `pull_event` takes an event of its `TypeId` whose equipment
//! (the event's subject below the scope, see [`equipment_of`]) its
//! `Equipment` selector matches: the same levels, or levels below them
//! (selector `line-1/press` takes `line-1/press` and `line-1/press/left`,
//! not `line-1/presses` nor `line-1`); an action without a selector takes
//! an event from any equipment of the scope. Of several waiting actions the
//! first in recipe order that matches takes it, so two actions of parallel
//! paths waiting for the same type from different equipment each get their
//! own equipment's event, in whatever order the events come.
//!
//! # Expiry
//!
//! An event may carry a deadline (its `expirytime`, or arrival plus its
//! MQTT Message Expiry Interval): after it the event completes nothing. It
//! is ignored when it arrives expired, and a kept early event is dropped
//! when its deadline passes (and after [`EARLY_EVENT_TTL_MS`] anyway). A
//! command the runtime could not send before its own expiry
//! ([`Input::Unsent`]) counts as a failed attempt: it is sent again per the
//! action's retry policy, or the action fails.
//!
//! # Timers
//!
//! Timeouts, delays, limits, retry back-offs and re-evaluation ticks are
//! [`Effect::Timer`]s with a key; the runtime keeps them in Redis and feeds
//! them back as [`Input::Timer`]. A timer that no longer matches the state
//! (the action completed, the step was left, the job was paused and the
//! deadline moved) is ignored, so stale or duplicated timers are harmless.

use super::condition::{Condition, ConditionContext};
use super::net::{Net, StepId};
use super::recipe::{Interaction, Qualifier, Recipe};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Early events kept per job at most (oldest dropped first).
pub const EARLY_EVENTS: usize = 64;
/// How long an early event is kept.
pub const EARLY_EVENT_TTL_MS: u64 = 10 * 60 * 1000;
/// Transitions fired in one evolution at most: more means the recipe loops
/// without waiting for anything (a livelock), and the job fails.
pub const MAX_FIRINGS: usize = 1000;
/// Step activations kept in a job's history (and its job response).
pub const HISTORY: usize = 1000;
/// Event identities remembered per job against redelivery.
pub const SEEN_EVENTS: usize = 128;
/// Re-evaluation period of conditions that use `elapsed`.
pub const TICK_MS: u64 = 1000;

/// Where a job's execution is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Running (possibly paused).
    Running,
    /// The recipe completed.
    Completed,
    /// An action failed, timed out for good, or the recipe is stuck.
    Failed(String),
    /// Stopped by the MES (Ended).
    Stopped,
    /// Aborted by the MES.
    Aborted,
}

/// State of one action run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionState {
    /// Waiting to be dispatched (`D` delay, retry back-off, or paused).
    Scheduled,
    /// Dispatched (or waiting for its event).
    Running,
    /// Its result arrived.
    Done,
    /// Its result was an error.
    Failed,
    /// No longer awaited (step left, reset, time limit).
    Cancelled,
}

impl ActionState {
    fn name(self) -> &'static str {
        match self {
            ActionState::Scheduled => "pending",
            ActionState::Running => "running",
            ActionState::Done => "done",
            ActionState::Failed => "failed",
            ActionState::Cancelled => "cancelled",
        }
    }
}

/// The latest run of an action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionRun {
    /// The activation of its step this run belongs to.
    pub activation: u32,
    /// Its state.
    pub state: ActionState,
    /// Stable id of this dispatch: the same on every re-send.
    pub command_id: String,
    /// Sends so far (1 after the first).
    pub attempt: u32,
    /// When the current timer of this run is due (timeout, delay, limit or
    /// back-off), if any.
    pub deadline_ms: Option<u64>,
    /// The kind part of that timer's key (`timeout:2`, `delay`, …).
    pub timer: Option<String>,
}

/// One active step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRun {
    /// Its activation number (1 for the first).
    pub activation: u32,
    /// When it became active.
    pub entered_ms: u64,
}

/// One step activation, for the job response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Step name.
    pub step: String,
    /// Activation number.
    pub activation: u32,
    /// Entered at (ms since the epoch).
    pub entered_ms: u64,
    /// Left at, once left.
    pub left_ms: Option<u64>,
}

/// An event that arrived before an action waited for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EarlyEvent {
    /// Its CloudEvent type.
    pub type_id: String,
    /// Its data.
    pub data: Value,
    /// Arrival (ms).
    pub at_ms: u64,
    /// Its equipment: subject levels below the scope (`None`: the scope).
    #[serde(default)]
    pub equipment: Option<String>,
    /// After this instant (ms) it completes nothing.
    #[serde(default)]
    pub expires_ms: Option<u64>,
}

/// The execution state of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exec {
    /// The job order id.
    pub job: String,
    /// The job's scope.
    pub scope: String,
    /// Where it is.
    pub status: Status,
    /// Since when it is paused, if it is.
    pub paused_at_ms: Option<u64>,
    /// When execution started.
    pub started_ms: u64,
    /// When it ended.
    pub ended_ms: Option<u64>,
    /// Active steps by name.
    pub active: BTreeMap<String, StepRun>,
    /// Activations so far per step.
    pub activations: BTreeMap<String, u32>,
    /// Latest run per action.
    pub actions: BTreeMap<String, ActionRun>,
    /// Latest result per action.
    pub results: Map<String, Value>,
    /// Job parameters (`JobOrderParameters` by `ID`), visible to conditions.
    pub params: Map<String, Value>,
    /// Events that arrived early.
    pub early: Vec<EarlyEvent>,
    /// Step activations in order (the latest [`HISTORY`]).
    pub history: Vec<StepRecord>,
    /// Identities of the latest events applied (bounded), so that a
    /// redelivered event is not applied twice.
    #[serde(default)]
    pub seen_events: Vec<String>,
}

/// What can happen to a running job.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A `push_command`'s result (or error) arrived.
    Result {
        /// The command id it answers.
        command_id: String,
        /// The result data, or the error message.
        outcome: Result<Value, String>,
    },
    /// An equipment event arrived for this job.
    Event {
        /// Its CloudEvent type.
        type_id: String,
        /// Its data.
        data: Value,
        /// Its identity (`source` and `id`), if known: a redelivered event
        /// with an identity seen before is ignored.
        id: Option<String>,
        /// The equipment it comes from: its subject below the scope
        /// ([`equipment_of`]); `None` for an event about the scope itself.
        equipment: Option<String>,
        /// Its deadline (ms), if it has one: after it the event completes
        /// nothing, kept or not.
        expires_ms: Option<u64>,
    },
    /// A command could not be sent: `attempt` of `command_id` never reached
    /// the equipment (it expired before it could be sent). Counts as a
    /// failed attempt: re-sent per the action's retry policy, else the
    /// action fails and with it the job.
    Unsent {
        /// The command id.
        command_id: String,
        /// Which send of it was not made.
        attempt: u32,
        /// Why, for the failure reason.
        reason: String,
    },
    /// A timer is due.
    Timer {
        /// The timer's key.
        key: String,
    },
    /// The job was paused (Interrupted).
    Pause,
    /// The job was resumed (Running again).
    Resume,
    /// The job was stopped (Ended): outstanding actions are cancelled.
    Stop,
    /// The job was aborted: outstanding actions are cancelled.
    Abort,
}

/// What the runtime must do after an evolution.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send a command to equipment (same `command_id` on every re-send).
    Dispatch {
        /// Stable dispatch id (the CloudEvent `id`).
        command_id: String,
        /// The action.
        action: String,
        /// CloudEvent type.
        type_id: String,
        /// Equipment (subject); `None`: the job's scope.
        equipment: Option<String>,
        /// The command's data.
        parameters: Map<String, Value>,
        /// Which send this is (1: first).
        attempt: u32,
    },
    /// Feed [`Input::Timer`] with `key` back at `at_ms`.
    Timer {
        /// Timer key.
        key: String,
        /// Due time (ms).
        at_ms: u64,
    },
    /// A step became active (progress).
    StepEntered {
        /// Step name.
        step: String,
        /// Activation number.
        activation: u32,
    },
    /// A step was left (progress).
    StepLeft {
        /// Step name.
        step: String,
        /// Activation number.
        activation: u32,
    },
    /// Execution ended: the runtime reports it to the job manager.
    Finished(Status),
}

/// What an evolution needs besides the state: the recipe, its net, now.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    /// The recipe snapshot.
    pub recipe: &'a Recipe,
    /// Its compiled net.
    pub net: &'a Net,
    /// The current time (ms since the epoch).
    pub now_ms: u64,
}

/// Timer key kinds.
fn timer_key(action: &str, activation: u32, kind: &str) -> String {
    format!("a/{activation}/{kind}/{action}")
}

fn tick_key(step: &str, activation: u32) -> String {
    format!("s/{activation}/tick/{step}")
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Exec {
    /// Starts executing `recipe` for a job: activates the initial step.
    pub fn start(
        job: &str,
        scope: &str,
        params: Map<String, Value>,
        ctx: Ctx<'_>,
    ) -> (Exec, Vec<Effect>) {
        let mut e = Exec {
            job: job.to_owned(),
            scope: scope.to_owned(),
            status: Status::Running,
            paused_at_ms: None,
            started_ms: ctx.now_ms,
            ended_ms: None,
            active: BTreeMap::new(),
            activations: BTreeMap::new(),
            actions: BTreeMap::new(),
            results: Map::new(),
            params,
            early: Vec::new(),
            history: Vec::new(),
            seen_events: Vec::new(),
        };
        let mut fx = Vec::new();
        let initial = ctx.net.steps[ctx.net.initial].clone();
        e.enter(&initial, ctx, &mut fx);
        e.settle(ctx, &mut fx);
        (e, fx)
    }

    /// Whether execution is over.
    pub fn is_finished(&self) -> bool {
        self.status != Status::Running
    }

    /// The stable command id of an action run:
    /// `{scope}/{job}/{action}/{activation}`, each part with `%`, `/`, `+`,
    /// `#` and control characters percent-encoded, so [`parse_command_id`]
    /// can take it apart again.
    pub fn command_id(&self, action: &str, activation: u32) -> String {
        format!(
            "{}/{}/{}/{activation}",
            enc(&self.scope),
            enc(&self.job),
            enc(action)
        )
    }

    /// Applies one input. Pure: the same state, input and time always give
    /// the same new state and effects.
    pub fn apply(&mut self, input: Input, ctx: Ctx<'_>) -> Vec<Effect> {
        let mut fx = Vec::new();
        if self.is_finished() {
            return fx;
        }
        self.expire_early(ctx.now_ms);
        match input {
            Input::Result {
                command_id,
                outcome,
            } => self.on_result(&command_id, outcome, ctx, &mut fx),
            Input::Event {
                type_id,
                data,
                id,
                equipment,
                expires_ms,
            } => {
                if expires_ms.is_some_and(|x| x <= ctx.now_ms) {
                    return fx; // expired: completes nothing
                }
                if let Some(id) = id {
                    if self.seen_events.contains(&id) {
                        return fx; // a redelivery
                    }
                    if self.seen_events.len() >= SEEN_EVENTS {
                        self.seen_events.remove(0);
                    }
                    self.seen_events.push(id);
                }
                self.on_event(
                    EarlyEvent {
                        type_id,
                        data,
                        at_ms: ctx.now_ms,
                        equipment,
                        expires_ms,
                    },
                    ctx,
                );
            }
            Input::Unsent {
                command_id,
                attempt,
                reason,
            } => self.on_unsent(&command_id, attempt, &reason, ctx, &mut fx),
            Input::Timer { key } => self.on_timer(&key, ctx, &mut fx),
            Input::Pause => {
                if self.paused_at_ms.is_none() {
                    self.paused_at_ms = Some(ctx.now_ms);
                }
            }
            Input::Resume => self.on_resume(ctx, &mut fx),
            Input::Stop => self.finish(Status::Stopped, ctx, &mut fx),
            Input::Abort => self.finish(Status::Aborted, ctx, &mut fx),
        }
        if !self.is_finished() && self.paused_at_ms.is_none() {
            self.settle(ctx, &mut fx);
        }
        fx
    }

    fn fail(&mut self, reason: String, ctx: Ctx<'_>, fx: &mut Vec<Effect>) {
        self.finish(Status::Failed(reason), ctx, fx);
    }

    fn finish(&mut self, status: Status, ctx: Ctx<'_>, fx: &mut Vec<Effect>) {
        if self.is_finished() {
            return;
        }
        for run in self.actions.values_mut() {
            if matches!(run.state, ActionState::Running | ActionState::Scheduled) {
                run.state = ActionState::Cancelled;
                run.deadline_ms = None;
            }
        }
        let steps: Vec<(String, StepRun)> = std::mem::take(&mut self.active).into_iter().collect();
        for (step, run) in steps {
            self.record_left(&step, run.activation, ctx.now_ms);
            fx.push(Effect::StepLeft {
                step,
                activation: run.activation,
            });
        }
        self.status = status.clone();
        self.ended_ms = Some(ctx.now_ms);
        fx.push(Effect::Finished(status));
    }

    fn record_left(&mut self, step: &str, activation: u32, now: u64) {
        if let Some(r) = self
            .history
            .iter_mut()
            .rev()
            .find(|r| r.step == step && r.activation == activation)
        {
            r.left_ms = Some(now);
        }
    }

    fn expire_early(&mut self, now: u64) {
        self.early.retain(|e| {
            now.saturating_sub(e.at_ms) < EARLY_EVENT_TTL_MS && e.expires_ms.is_none_or(|x| x > now)
        });
    }

    fn on_result(
        &mut self,
        command_id: &str,
        outcome: Result<Value, String>,
        ctx: Ctx<'_>,
        fx: &mut Vec<Effect>,
    ) {
        let Some((name, run)) = self
            .actions
            .iter_mut()
            .find(|(_, r)| r.command_id == command_id && r.state == ActionState::Running)
        else {
            return; // late, duplicate or cancelled: harmless
        };
        let name = name.clone();
        match outcome {
            Ok(data) => {
                run.state = ActionState::Done;
                run.deadline_ms = None;
                self.results.insert(name, data);
            }
            Err(message) => {
                run.state = ActionState::Failed;
                run.deadline_ms = None;
                self.fail(format!("action '{name}' failed: {message}"), ctx, fx);
            }
        }
    }

    fn on_event(&mut self, ev: EarlyEvent, ctx: Ctx<'_>) {
        // The first waiting pull action that takes it, in recipe order.
        let waiting = ctx.recipe.actions.iter().find(|a| {
            a.interaction == Interaction::PullEvent
                && takes(a, &ev)
                && self
                    .actions
                    .get(&a.name)
                    .is_some_and(|r| r.state == ActionState::Running)
        });
        match waiting {
            Some(a) => {
                if let Some(run) = self.actions.get_mut(&a.name) {
                    run.state = ActionState::Done;
                    run.deadline_ms = None;
                }
                self.results.insert(a.name.clone(), ev.data);
            }
            None => {
                if self.early.len() >= EARLY_EVENTS {
                    self.early.remove(0);
                }
                self.early.push(ev);
            }
        }
    }

    /// A send that never happened: the next attempt per the retry policy
    /// (after its back-off), or the action fails. Only for the attempt the
    /// action is at (an older one was superseded by a re-send).
    fn on_unsent(
        &mut self,
        command_id: &str,
        attempt: u32,
        reason: &str,
        ctx: Ctx<'_>,
        fx: &mut Vec<Effect>,
    ) {
        let Some((name, run)) = self.actions.iter().find(|(_, r)| {
            r.command_id == command_id && r.attempt == attempt && r.state == ActionState::Running
        }) else {
            return;
        };
        let (name, run) = (name.clone(), run.clone());
        let Some(action) = ctx.recipe.actions.iter().find(|a| a.name == name) else {
            return;
        };
        self.retry_or_fail(
            action,
            &run,
            || format!("action '{name}' not sent ({reason}; attempt {attempt})"),
            ctx,
            fx,
        );
    }

    /// After a failed attempt of a `push_command` (no result in time, or
    /// never sent): the next attempt if the retry policy allows one,
    /// else the job fails with `reason`.
    fn retry_or_fail(
        &mut self,
        action: &super::recipe::Action,
        run: &ActionRun,
        reason: impl FnOnce() -> String,
        ctx: Ctx<'_>,
        fx: &mut Vec<Effect>,
    ) {
        let name = &action.name;
        let activation = run.activation;
        if action.interaction == Interaction::PushCommand && run.attempt < action.retry.max_attempts
        {
            let backoff = ms(action.retry.backoff);
            if backoff == 0 {
                self.dispatch(action, activation, run.attempt + 1, ctx, fx);
            } else if let Some(r) = self.actions.get_mut(name) {
                let kind = format!("backoff:{}", run.attempt + 1);
                r.state = ActionState::Scheduled;
                r.deadline_ms = Some(ctx.now_ms + backoff);
                fx.push(Effect::Timer {
                    key: timer_key(name, activation, &kind),
                    at_ms: ctx.now_ms + backoff,
                });
                r.timer = Some(kind);
            }
        } else {
            if let Some(r) = self.actions.get_mut(name) {
                r.state = ActionState::Failed;
                r.deadline_ms = None;
            }
            self.fail(reason(), ctx, fx);
        }
    }

    fn on_timer(&mut self, key: &str, ctx: Ctx<'_>, fx: &mut Vec<Effect>) {
        if self.paused_at_ms.is_some() {
            return; // re-issued with shifted deadlines on Resume
        }
        let mut parts = key.splitn(4, '/');
        let (Some(class), Some(act), Some(kind), Some(name)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let Ok(activation) = act.parse::<u32>() else {
            return;
        };
        if class == "s" {
            // Re-evaluation tick of a step with time-based conditions.
            if self
                .active
                .get(name)
                .is_some_and(|r| r.activation == activation)
            {
                fx.push(Effect::Timer {
                    key: tick_key(name, activation),
                    at_ms: ctx.now_ms + TICK_MS,
                });
            }
            return;
        }
        let Some(action) = ctx.recipe.actions.iter().find(|a| a.name == name) else {
            return;
        };
        let Some(run) = self.actions.get(name).cloned() else {
            return;
        };
        let due = run.deadline_ms.is_some_and(|d| d <= ctx.now_ms);
        if run.activation != activation || !due || run.timer.as_deref() != Some(kind) {
            return; // stale or superseded
        }
        let kind_base = kind.split(':').next().unwrap_or(kind);
        match (kind_base, run.state) {
            ("delay", ActionState::Scheduled) => {
                let step_active = self
                    .active
                    .get(&action.step)
                    .is_some_and(|s| s.activation == activation);
                if step_active {
                    self.dispatch(action, activation, 1, ctx, fx);
                } else if let Some(r) = self.actions.get_mut(name) {
                    r.state = ActionState::Cancelled;
                    r.deadline_ms = None;
                }
            }
            ("backoff", ActionState::Scheduled) => {
                self.dispatch(action, activation, run.attempt + 1, ctx, fx);
            }
            ("timeout", ActionState::Running) => {
                self.retry_or_fail(
                    action,
                    &run,
                    || {
                        format!(
                            "action '{name}' got no {} within {} s ({} attempt{})",
                            if action.interaction == Interaction::PushCommand {
                                "result"
                            } else {
                                "event"
                            },
                            action.timeout.as_secs_f64(),
                            run.attempt,
                            if run.attempt == 1 { "" } else { "s" }
                        )
                    },
                    ctx,
                    fx,
                );
            }
            ("limit", ActionState::Running) => {
                if let Some(r) = self.actions.get_mut(name) {
                    r.state = ActionState::Cancelled;
                    r.deadline_ms = None;
                }
            }
            _ => {}
        }
    }

    fn on_resume(&mut self, ctx: Ctx<'_>, fx: &mut Vec<Effect>) {
        let Some(since) = self.paused_at_ms.take() else {
            return;
        };
        let shift = ctx.now_ms.saturating_sub(since);
        // Timers are held while paused: every pending deadline moves by the
        // pause and is issued again under its (unchanged) key.
        for (name, run) in &mut self.actions {
            if let (Some(d), Some(kind)) = (run.deadline_ms.as_mut(), run.timer.as_ref()) {
                *d += shift;
                fx.push(Effect::Timer {
                    key: timer_key(name, run.activation, kind),
                    at_ms: *d,
                });
            }
        }
        for run in self.active.values_mut() {
            run.entered_ms += shift;
        }
        for (step, run) in &self.active {
            if has_time_condition(ctx, step) {
                fx.push(Effect::Timer {
                    key: tick_key(step, run.activation),
                    at_ms: ctx.now_ms + TICK_MS,
                });
            }
        }
    }

    /// Enters a step: counts the activation, starts its actions.
    fn enter(&mut self, step: &str, ctx: Ctx<'_>, fx: &mut Vec<Effect>) {
        let n = self.activations.entry(step.to_owned()).or_insert(0);
        *n += 1;
        let activation = *n;
        self.active.insert(
            step.to_owned(),
            StepRun {
                activation,
                entered_ms: ctx.now_ms,
            },
        );
        if self.history.len() >= HISTORY {
            // A recipe that loops for a long time keeps its latest steps.
            self.history.remove(0);
        }
        self.history.push(StepRecord {
            step: step.to_owned(),
            activation,
            entered_ms: ctx.now_ms,
            left_ms: None,
        });
        fx.push(Effect::StepEntered {
            step: step.to_owned(),
            activation,
        });
        if has_time_condition(ctx, step) {
            fx.push(Effect::Timer {
                key: tick_key(step, activation),
                at_ms: ctx.now_ms + TICK_MS,
            });
        }
        for action in ctx.recipe.actions.iter().filter(|a| a.step == step) {
            match action.qualifier {
                Qualifier::N | Qualifier::P | Qualifier::P1 | Qualifier::S | Qualifier::L => {
                    self.dispatch(action, activation, 1, ctx, fx);
                }
                Qualifier::D => {
                    let delay = action.delay.map_or(0, ms);
                    self.actions.insert(
                        action.name.clone(),
                        ActionRun {
                            activation,
                            state: ActionState::Scheduled,
                            command_id: self.command_id(&action.name, activation),
                            attempt: 0,
                            deadline_ms: Some(ctx.now_ms + delay),
                            timer: Some("delay".into()),
                        },
                    );
                    fx.push(Effect::Timer {
                        key: timer_key(&action.name, activation, "delay"),
                        at_ms: ctx.now_ms + delay,
                    });
                }
                Qualifier::R => {
                    // Resets the stored action named by the R association's TypeId.
                    if let Some(run) = self.actions.get_mut(&action.type_id) {
                        if matches!(run.state, ActionState::Running | ActionState::Scheduled) {
                            run.state = ActionState::Cancelled;
                            run.deadline_ms = None;
                        }
                    }
                }
                Qualifier::P0 => {}
            }
        }
    }

    /// Leaves a step: cancels its non-stored actions still running, sends
    /// its `P0` actions.
    fn leave(&mut self, step: &str, ctx: Ctx<'_>, fx: &mut Vec<Effect>) {
        let Some(run) = self.active.remove(step) else {
            return;
        };
        for action in ctx.recipe.actions.iter().filter(|a| a.step == step) {
            match action.qualifier {
                Qualifier::N | Qualifier::L | Qualifier::D => {
                    if let Some(r) = self.actions.get_mut(&action.name) {
                        if r.activation == run.activation
                            && matches!(r.state, ActionState::Running | ActionState::Scheduled)
                        {
                            r.state = ActionState::Cancelled;
                            r.deadline_ms = None;
                        }
                    }
                }
                Qualifier::P0 => self.dispatch(action, run.activation, 1, ctx, fx),
                _ => {}
            }
        }
        self.record_left(step, run.activation, ctx.now_ms);
        fx.push(Effect::StepLeft {
            step: step.to_owned(),
            activation: run.activation,
        });
    }

    /// Sends (or, for a pull action, starts waiting for) an action.
    fn dispatch(
        &mut self,
        action: &super::recipe::Action,
        activation: u32,
        attempt: u32,
        ctx: Ctx<'_>,
        fx: &mut Vec<Effect>,
    ) {
        let command_id = self.command_id(&action.name, activation);
        if attempt == 1 {
            // A new activation: conditions must not see the previous one's
            // result (a loop would otherwise decide on stale data).
            self.results.remove(&action.name);
        }
        let mut state = ActionState::Running;
        if action.interaction == Interaction::PullEvent && attempt == 1 {
            let now = ctx.now_ms;
            if let Some(i) = self
                .early
                .iter()
                .position(|e| takes(action, e) && e.expires_ms.is_none_or(|x| x > now))
            {
                let ev = self.early.remove(i);
                self.results.insert(action.name.clone(), ev.data);
                state = ActionState::Done;
            }
        }
        let timeout = ms(action.timeout);
        let limit = limit_of(ctx.recipe, &action.name);
        let mut deadline = None;
        let mut timer = None;
        if state == ActionState::Running {
            if action.interaction == Interaction::PushCommand {
                fx.push(Effect::Dispatch {
                    command_id: command_id.clone(),
                    action: action.name.clone(),
                    type_id: action.type_id.clone(),
                    equipment: action.equipment.clone(),
                    parameters: action.parameters.clone(),
                    attempt,
                });
            }
            // One deadline per run: the earlier of timeout and time limit.
            let by_limit = limit.map(|l| ctx.now_ms + l);
            let by_timeout = (timeout > 0).then_some(ctx.now_ms + timeout);
            let (at, kind) = match (by_limit, by_timeout) {
                (Some(l), Some(t)) if l <= t => (Some(l), "limit".to_owned()),
                (Some(l), None) => (Some(l), "limit".to_owned()),
                (_, Some(t)) => (Some(t), format!("timeout:{attempt}")),
                (None, None) => (None, String::new()),
            };
            if let Some(at) = at {
                fx.push(Effect::Timer {
                    key: timer_key(&action.name, activation, &kind),
                    at_ms: at,
                });
                deadline = Some(at);
                timer = Some(kind);
            }
        }
        self.actions.insert(
            action.name.clone(),
            ActionRun {
                activation,
                state,
                command_id,
                attempt,
                deadline_ms: deadline,
                timer,
            },
        );
    }

    /// Whether the step's non-stored actions (N, L, D) of its current
    /// activation are all complete.
    fn step_finished(&self, step: &str, ctx: Ctx<'_>) -> bool {
        let Some(run) = self.active.get(step) else {
            return false;
        };
        ctx.recipe
            .actions
            .iter()
            .filter(|a| {
                a.step == step && matches!(a.qualifier, Qualifier::N | Qualifier::L | Qualifier::D)
            })
            .all(|a| {
                self.actions.get(&a.name).is_some_and(|r| {
                    r.activation == run.activation
                        && matches!(r.state, ActionState::Done | ActionState::Cancelled)
                })
            })
    }

    fn guard_holds(&self, condition: &Condition, context: &[StepId], ctx: Ctx<'_>) -> bool {
        if matches!(condition, Condition::Always) {
            return true;
        }
        let mut step_results = Map::new();
        let mut elapsed = 0.0f64;
        for &s in context {
            let name = &ctx.net.steps[s];
            let Some(run) = self.active.get(name) else {
                continue;
            };
            elapsed = elapsed.max(ctx.now_ms.saturating_sub(run.entered_ms) as f64 / 1000.0);
            for a in ctx.recipe.actions.iter().filter(|a| &a.step == name) {
                let current = self.actions.get(&a.name).is_some_and(|r| {
                    r.activation == run.activation && r.state == ActionState::Done
                });
                if let (true, Some(Value::Object(fields))) = (current, self.results.get(&a.name)) {
                    for (k, v) in fields {
                        step_results.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        let states: BTreeMap<String, String> = self
            .actions
            .iter()
            .map(|(k, r)| (k.clone(), r.state.name().to_owned()))
            .collect();
        let c = ConditionContext {
            results: &self.results,
            states: &states,
            params: &self.params,
            step_results: &step_results,
            elapsed_seconds: elapsed,
        };
        // An expression that cannot be evaluated yet (a result that has not
        // arrived) is simply not true yet.
        condition.evaluate(&c).unwrap_or(false)
    }

    /// Fires enabled transitions until none is enabled; completes the job
    /// when no step is active any more.
    fn settle(&mut self, ctx: Ctx<'_>, fx: &mut Vec<Effect>) {
        for _ in 0..MAX_FIRINGS {
            if self.is_finished() {
                return;
            }
            if self.active.is_empty() {
                self.finish(Status::Completed, ctx, fx);
                return;
            }
            let mut enabled: Vec<usize> = Vec::new();
            for (i, t) in ctx.net.transitions.iter().enumerate() {
                let ok = t
                    .inputs
                    .iter()
                    .all(|&s| self.active.contains_key(&ctx.net.steps[s]))
                    && t.finished
                        .iter()
                        .all(|&s| self.step_finished(&ctx.net.steps[s], ctx))
                    && t.guards
                        .iter()
                        .all(|g| self.guard_holds(&g.condition, &g.context, ctx));
                if ok {
                    enabled.push(i);
                }
            }
            let Some(&first) = enabled.iter().min_by(|&&a, &&b| {
                ctx.net.transitions[a]
                    .order
                    .cmp(&ctx.net.transitions[b].order)
            }) else {
                return;
            };
            let t = &ctx.net.transitions[first];
            for &s in &t.inputs {
                let name = ctx.net.steps[s].clone();
                self.leave(&name, ctx, fx);
            }
            for &s in &t.outputs {
                let name = ctx.net.steps[s].clone();
                if self.active.contains_key(&name) {
                    // A step can hold one token: re-entering an active step
                    // (a loop racing a branch) is a recipe defect.
                    self.fail(
                        format!("step '{name}' entered while active ({})", t.label),
                        ctx,
                        fx,
                    );
                    return;
                }
                self.enter(&name, ctx, fx);
            }
        }
        self.fail(
            format!("more than {MAX_FIRINGS} transitions without waiting for anything: the recipe loops"),
            ctx,
            fx,
        );
    }
}

/// A command id part: `%`, `/`, `+`, `#` and control characters
/// percent-encoded, so the id splits on `/` and is always a valid MQTT
/// string, whatever the job id holds (wire contract §8).
fn enc(s: &str) -> String {
    crate::envelope::encode_level(s).into_owned()
}

fn dec(s: &str) -> Option<String> {
    crate::envelope::decode_level(s)
}

/// Scope, job, action and activation of a command id made by
/// [`Exec::command_id`]; `None` for anything else.
pub fn parse_command_id(id: &str) -> Option<(String, String, String, u32)> {
    let mut parts = id.split('/');
    let (scope, job, action, activation) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || scope.is_empty() || job.is_empty() {
        return None;
    }
    Some((
        dec(scope)?,
        dec(job)?,
        dec(action)?,
        activation.parse().ok()?,
    ))
}

/// The equipment an event with `subject` comes from: the subject's levels
/// below the scope (`line-1/press` for `axle/line-1/press`), `None` when
/// the subject is the scope alone.
pub fn equipment_of(subject: Option<&str>) -> Option<String> {
    subject
        .and_then(|s| s.split_once('/'))
        .map(|(_, rest)| rest.to_owned())
        .filter(|rest| !rest.is_empty())
}

/// Whether an `Equipment` selector takes an event from `equipment`: the
/// same levels or levels below them; no selector takes any.
pub fn selector_takes(selector: Option<&str>, equipment: Option<&str>) -> bool {
    match (selector, equipment) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(sel), Some(eq)) => {
            eq == sel || (eq.starts_with(sel) && eq.as_bytes().get(sel.len()) == Some(&b'/'))
        }
    }
}

/// Whether pull action `a` takes event `ev` (type and equipment).
fn takes(a: &super::recipe::Action, ev: &EarlyEvent) -> bool {
    a.type_id == ev.type_id && selector_takes(a.equipment.as_deref(), ev.equipment.as_deref())
}

fn limit_of(recipe: &Recipe, action: &str) -> Option<u64> {
    recipe
        .actions
        .iter()
        .find(|a| a.name == action && a.qualifier == Qualifier::L)
        .and_then(|a| a.duration)
        .map(ms)
}

/// Whether a transition leaving `step` has a condition that uses time.
fn has_time_condition(ctx: Ctx<'_>, step: &str) -> bool {
    ctx.recipe
        .transitions
        .iter()
        .any(|t| t.source == step && uses_elapsed(&t.condition))
}

fn uses_elapsed(c: &Condition) -> bool {
    match c {
        Condition::Expr(e) => e.free_variables().contains("elapsed"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct T {
        recipe: Recipe,
        net: Net,
        now: u64,
    }

    impl T {
        #[allow(clippy::needless_pass_by_value)]
        fn new(recipe: Value) -> T {
            let recipe = Recipe::parse(&recipe).unwrap_or_else(|e| panic!("{e}"));
            let net = Net::compile(&recipe).unwrap();
            T {
                recipe,
                net,
                now: 1_000_000,
            }
        }
        fn ctx(&self) -> Ctx<'_> {
            Ctx {
                recipe: &self.recipe,
                net: &self.net,
                now_ms: self.now,
            }
        }
        fn start(&self) -> (Exec, Vec<Effect>) {
            Exec::start("j1", "line", Map::new(), self.ctx())
        }
    }

    fn action(name: &str, step: &str, q: &str, interaction: &str, ty: &str) -> Value {
        json!({"Name": name, "Step": step, "Qualifier": q, "Interaction": interaction, "TypeId": ty, "TimeoutSeconds": 0})
    }

    fn push(name: &str, step: &str) -> Value {
        action(
            name,
            step,
            "N",
            "push_command",
            &format!("com.example.{name}.v1"),
        )
    }

    fn steps(names: &[&str]) -> Vec<Value> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                if i == 0 {
                    json!({"Name": n, "Initial": true})
                } else {
                    json!({"Name": n})
                }
            })
            .collect()
    }

    fn tr(source: &str, target: &str, condition: &str) -> Value {
        json!({"Source": source, "Target": target, "Condition": condition})
    }

    fn dispatched(fx: &[Effect]) -> Vec<(String, String, u32)> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Dispatch {
                    action,
                    command_id,
                    attempt,
                    ..
                } => Some((action.clone(), command_id.clone(), *attempt)),
                _ => None,
            })
            .collect()
    }

    fn names(fx: &[Effect]) -> Vec<String> {
        dispatched(fx).into_iter().map(|d| d.0).collect()
    }

    fn entered(fx: &[Effect]) -> Vec<String> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::StepEntered { step, .. } => Some(step.clone()),
                _ => None,
            })
            .collect()
    }

    fn timers(fx: &[Effect]) -> Vec<(String, u64)> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Timer { key, at_ms } => Some((key.clone(), *at_ms)),
                _ => None,
            })
            .collect()
    }

    fn ok(e: &Exec, action: &str, data: Value) -> Input {
        Input::Result {
            command_id: e.actions[action].command_id.clone(),
            outcome: Ok(data),
        }
    }

    fn finished(fx: &[Effect]) -> Option<Status> {
        fx.iter().find_map(|e| match e {
            Effect::Finished(s) => Some(s.clone()),
            _ => None,
        })
    }

    fn sequence() -> Value {
        json!({
            "Steps": steps(&["load", "press", "inspect"]),
            "Transitions": [tr("load", "press", "always"), tr("press", "inspect", "")],
            "Actions": [
                push("clamp", "load"),
                push("press_in", "press"),
                action("inspection", "inspect", "N", "pull_event", "com.example.inspected.v1")
            ]
        })
    }

    #[test]
    fn a_sequence_runs_step_by_step_and_completes() {
        let t = T::new(sequence());
        let (mut e, fx) = t.start();
        assert_eq!(entered(&fx), ["load"]);
        assert_eq!(
            dispatched(&fx),
            [("clamp".into(), "line/j1/clamp/1".into(), 1)]
        );
        let fx = e.apply(ok(&e, "clamp", json!({"ok": true})), t.ctx());
        assert_eq!(entered(&fx), ["press"]);
        assert_eq!(names(&fx), ["press_in"]);
        let fx = e.apply(ok(&e, "press_in", json!({"force_kn": 12.5})), t.ctx());
        assert_eq!(entered(&fx), ["inspect"]);
        assert!(names(&fx).is_empty(), "a pull action sends nothing");
        let fx = e.apply(
            Input::Event {
                type_id: "com.example.inspected.v1".into(),
                data: json!({"passed": true}),
                id: None,
                equipment: None,
                expires_ms: None,
            },
            t.ctx(),
        );
        assert_eq!(finished(&fx), Some(Status::Completed));
        assert_eq!(e.results["press_in"]["force_kn"], 12.5);
        assert_eq!(e.history.len(), 3);
        assert_eq!(
            parse_command_id("line/j1/clamp/1"),
            Some(("line".into(), "j1".into(), "clamp".into(), 1))
        );
        assert!(e.history.iter().all(|h| h.left_ms.is_some()));
        // Nothing happens after the end.
        assert!(e.apply(ok(&e, "clamp", json!({})), t.ctx()).is_empty());
    }

    #[test]
    fn an_event_that_arrives_early_is_kept_and_matched_on_activation() {
        let t = T::new(sequence());
        let (mut e, _) = t.start();
        let fx = e.apply(
            Input::Event {
                type_id: "com.example.inspected.v1".into(),
                data: json!({"passed": true}),
                id: None,
                equipment: None,
                expires_ms: None,
            },
            t.ctx(),
        );
        assert!(fx.is_empty());
        assert_eq!(e.early.len(), 1);
        e.apply(ok(&e, "clamp", json!({})), t.ctx());
        let fx = e.apply(ok(&e, "press_in", json!({})), t.ctx());
        assert_eq!(
            finished(&fx),
            Some(Status::Completed),
            "inspect completes at once"
        );
        assert!(e.early.is_empty());
        assert_eq!(e.results["inspection"]["passed"], true);
    }

    fn event(ty: &str, data: Value, equipment: Option<&str>, expires_ms: Option<u64>) -> Input {
        Input::Event {
            type_id: ty.into(),
            data,
            id: None,
            equipment: equipment.map(str::to_owned),
            expires_ms,
        }
    }

    const PART: &str = "com.example.part.present.v1";

    /// A simultaneous branch whose two paths each wait for the same event
    /// type from a different equipment.
    fn two_sensors() -> Value {
        let mut left = action("left_part", "left", "N", "pull_event", PART);
        left["Equipment"] = json!("line-1/press");
        let mut right = action("right_part", "right", "N", "pull_event", PART);
        right["Equipment"] = json!("line-1/camera");
        json!({
            "Steps": steps(&["start", "left", "right", "join"]),
            "Transitions": [tr("start", "fork", "always"), tr("fork", "join", "always")],
            "Branches": [{"Name": "fork", "Type": "simultaneous", "Branches": [["left"], ["right"]]}],
            "Actions": [push("prep", "start"), left, right, push("check", "join")]
        })
    }

    #[test]
    fn an_equipment_selector_takes_its_level_and_the_levels_below() {
        assert!(selector_takes(None, None));
        assert!(selector_takes(None, Some("line-1/press")));
        assert!(selector_takes(Some("line-1/press"), Some("line-1/press")));
        assert!(selector_takes(
            Some("line-1/press"),
            Some("line-1/press/left")
        ));
        assert!(!selector_takes(
            Some("line-1/press"),
            Some("line-1/presses")
        ));
        assert!(!selector_takes(Some("line-1/press"), Some("line-1")));
        assert!(!selector_takes(Some("line-1/press"), None));
        assert_eq!(equipment_of(Some("axle")), None);
        assert_eq!(equipment_of(Some("axle/")), None);
        assert_eq!(
            equipment_of(Some("axle/line-1/press")).as_deref(),
            Some("line-1/press")
        );
        assert_eq!(equipment_of(None), None);
    }

    #[test]
    fn parallel_pull_actions_each_take_their_own_equipments_event() {
        let t = T::new(two_sensors());
        let (mut e, _) = t.start();
        let fx = e.apply(ok(&e, "prep", json!({})), t.ctx());
        assert_eq!(entered(&fx), ["left", "right"]);
        // Neither the scope itself nor a sibling equipment completes them.
        e.apply(event(PART, json!({"from": "scope"}), None, None), t.ctx());
        e.apply(
            event(
                PART,
                json!({"from": "presses"}),
                Some("line-1/presses"),
                None,
            ),
            t.ctx(),
        );
        assert_eq!(e.actions["left_part"].state, ActionState::Running);
        assert_eq!(e.actions["right_part"].state, ActionState::Running);
        assert_eq!(e.early.len(), 2, "kept, not applied");
        // The second path's event first: it goes to the second path.
        let fx = e.apply(
            event(PART, json!({"from": "camera"}), Some("line-1/camera"), None),
            t.ctx(),
        );
        assert!(entered(&fx).is_empty());
        assert_eq!(e.actions["left_part"].state, ActionState::Running);
        assert_eq!(e.results["right_part"]["from"], "camera");
        // A sub-level of the press is the press.
        let fx = e.apply(
            event(
                PART,
                json!({"from": "press"}),
                Some("line-1/press/left"),
                None,
            ),
            t.ctx(),
        );
        assert_eq!(entered(&fx), ["join"]);
        assert_eq!(e.results["left_part"]["from"], "press");
        assert_eq!(e.results["right_part"]["from"], "camera");
    }

    #[test]
    fn a_kept_event_is_taken_only_by_an_action_whose_selector_matches() {
        let t = T::new(two_sensors());
        let (mut e, _) = t.start();
        // Both arrive before the branch: the camera's first.
        e.apply(
            event(PART, json!({"from": "camera"}), Some("line-1/camera"), None),
            t.ctx(),
        );
        e.apply(
            event(PART, json!({"from": "press"}), Some("line-1/press"), None),
            t.ctx(),
        );
        let fx = e.apply(ok(&e, "prep", json!({})), t.ctx());
        assert_eq!(entered(&fx), ["left", "right", "join"]);
        assert_eq!(e.results["left_part"]["from"], "press");
        assert_eq!(e.results["right_part"]["from"], "camera");
        assert!(e.early.is_empty());
    }

    #[test]
    fn an_action_without_a_selector_takes_any_equipments_event() {
        let t = T::new(sequence());
        let (mut e, _) = t.start();
        e.apply(ok(&e, "clamp", json!({})), t.ctx());
        e.apply(ok(&e, "press_in", json!({})), t.ctx());
        let fx = e.apply(
            event(
                "com.example.inspected.v1",
                json!({"passed": true}),
                Some("line-1/camera"),
                None,
            ),
            t.ctx(),
        );
        assert_eq!(finished(&fx), Some(Status::Completed));
    }

    #[test]
    fn an_expired_event_completes_nothing() {
        let mut t = T::new(sequence());
        let (mut e, _) = t.start();
        e.apply(ok(&e, "clamp", json!({})), t.ctx());
        e.apply(ok(&e, "press_in", json!({})), t.ctx());
        let ty = "com.example.inspected.v1";
        // Expired on arrival: not applied, not kept.
        let fx = e.apply(event(ty, json!({"n": 1}), None, Some(t.now)), t.ctx());
        assert!(fx.is_empty());
        assert_eq!(e.actions["inspection"].state, ActionState::Running);
        assert!(e.early.is_empty());
        // Still valid: applied.
        t.now += 10;
        let fx = e.apply(event(ty, json!({"n": 2}), None, Some(t.now + 1)), t.ctx());
        assert_eq!(finished(&fx), Some(Status::Completed));
        assert_eq!(e.results["inspection"]["n"], 2);
    }

    #[test]
    fn a_kept_event_that_expires_before_its_step_is_dropped() {
        let mut t = T::new(sequence());
        let (mut e, _) = t.start();
        let ty = "com.example.inspected.v1";
        e.apply(event(ty, json!({"n": 1}), None, Some(t.now + 500)), t.ctx());
        e.apply(
            event(ty, json!({"n": 2}), None, Some(t.now + 5000)),
            t.ctx(),
        );
        assert_eq!(e.early.len(), 2);
        t.now += 1000;
        e.apply(ok(&e, "clamp", json!({})), t.ctx());
        assert_eq!(e.early.len(), 1, "the expired one is gone");
        let fx = e.apply(ok(&e, "press_in", json!({})), t.ctx());
        assert_eq!(finished(&fx), Some(Status::Completed));
        assert_eq!(e.results["inspection"]["n"], 2, "the live one completes it");

        // Only expired ones kept: the action waits.
        let mut t = T::new(sequence());
        let (mut e, _) = t.start();
        e.apply(event(ty, json!({"n": 1}), None, Some(t.now + 500)), t.ctx());
        e.apply(ok(&e, "clamp", json!({})), t.ctx());
        t.now += 500;
        let fx = e.apply(ok(&e, "press_in", json!({})), t.ctx());
        assert_eq!(entered(&fx), ["inspect"]);
        assert_eq!(e.actions["inspection"].state, ActionState::Running);
    }

    #[test]
    fn a_command_not_sent_before_its_expiry_is_retried_per_policy_or_fails() {
        let unsent = |e: &Exec, attempt| Input::Unsent {
            command_id: e.actions["clamp"].command_id.clone(),
            attempt,
            reason: "expired in the work stream".into(),
        };
        // With retries left: the next attempt, same command id.
        let mut r = sequence();
        r["Actions"][0]["TimeoutSeconds"] = json!(5);
        r["Actions"][0]["Retry"] = json!({"MaxAttempts": 2});
        let t = T::new(r);
        let (mut e, _) = t.start();
        let fx = e.apply(unsent(&e, 1), t.ctx());
        assert_eq!(
            dispatched(&fx),
            [("clamp".into(), "line/j1/clamp/1".into(), 2)]
        );
        // A stale report about attempt 1 changes nothing now.
        assert!(e.apply(unsent(&e, 1), t.ctx()).is_empty());
        // The last attempt unsent: the job fails with the reason.
        let fx = e.apply(unsent(&e, 2), t.ctx());
        assert!(
            matches!(finished(&fx), Some(Status::Failed(m)) if m.contains("not sent") && m.contains("expired in the work stream")),
            "{fx:?}"
        );
        assert_eq!(e.actions["clamp"].state, ActionState::Failed);

        // No retry policy: fails at once.
        let t = T::new(sequence());
        let (mut e, _) = t.start();
        let fx = e.apply(unsent(&e, 1), t.ctx());
        assert!(matches!(finished(&fx), Some(Status::Failed(_))));
    }

    #[test]
    fn a_redelivered_event_is_applied_once() {
        let t = T::new(sequence());
        let (mut e, _) = t.start();
        let ev = Input::Event {
            type_id: "com.example.inspected.v1".into(),
            data: json!({"n": 1}),
            id: Some("camera\u{1f}e-1".into()),
            equipment: None,
            expires_ms: None,
        };
        e.apply(ev.clone(), t.ctx());
        let before = e.clone();
        assert!(e.apply(ev, t.ctx()).is_empty());
        assert_eq!(e, before, "not kept a second time");
        assert_eq!(e.early.len(), 1);
    }

    #[test]
    fn duplicate_and_stale_results_are_harmless() {
        let t = T::new(sequence());
        let (mut e, _) = t.start();
        let first = ok(&e, "clamp", json!({"n": 1}));
        e.apply(first.clone(), t.ctx());
        let before = e.clone();
        assert!(e.apply(first, t.ctx()).is_empty());
        assert_eq!(e, before);
        let unknown = Input::Result {
            command_id: "nope".into(),
            outcome: Ok(json!({})),
        };
        assert!(e.apply(unknown, t.ctx()).is_empty());
    }

    #[test]
    fn an_equipment_error_fails_the_job() {
        let t = T::new(sequence());
        let (mut e, _) = t.start();
        let fx = e.apply(
            Input::Result {
                command_id: e.actions["clamp"].command_id.clone(),
                outcome: Err("COMMUNICATION_ERROR: jammed".into()),
            },
            t.ctx(),
        );
        assert!(
            matches!(finished(&fx), Some(Status::Failed(m)) if m.contains("clamp") && m.contains("jammed"))
        );
    }

    #[test]
    fn timeouts_resend_with_the_same_id_then_fail() {
        let mut r = sequence();
        r["Actions"][0]["TimeoutSeconds"] = json!(5);
        r["Actions"][0]["Retry"] = json!({"MaxAttempts": 3, "BackoffSeconds": 1});
        let mut t = T::new(r);
        let (mut e, fx) = t.start();
        let (key, at) = timers(&fx)[0].clone();
        assert_eq!(at, t.now + 5000);
        // A timer that fires early (another replica's clock) does nothing.
        assert!(e
            .apply(Input::Timer { key: key.clone() }, t.ctx())
            .is_empty());
        t.now += 5000;
        let fx = e.apply(Input::Timer { key }, t.ctx());
        assert!(names(&fx).is_empty(), "back-off first");
        let (backoff, at) = timers(&fx)[0].clone();
        assert_eq!(at, t.now + 1000);
        t.now += 1000;
        let fx = e.apply(Input::Timer { key: backoff }, t.ctx());
        assert_eq!(
            dispatched(&fx),
            [("clamp".into(), "line/j1/clamp/1".into(), 2)]
        );
        // Attempt 3, then exhausted.
        let mut key = timers(&fx)[0].0.clone();
        t.now += 5000;
        let fx = e.apply(Input::Timer { key: key.clone() }, t.ctx());
        t.now += 1000;
        let fx2 = e.apply(
            Input::Timer {
                key: timers(&fx)[0].0.clone(),
            },
            t.ctx(),
        );
        assert_eq!(dispatched(&fx2)[0].2, 3);
        key.clone_from(&timers(&fx2)[0].0);
        t.now += 5000;
        let fx = e.apply(Input::Timer { key }, t.ctx());
        assert!(matches!(finished(&fx), Some(Status::Failed(m)) if m.contains("3 attempts")));
    }

    #[test]
    fn a_result_after_a_resend_still_completes_the_action() {
        let mut r = sequence();
        r["Actions"][0]["TimeoutSeconds"] = json!(1);
        r["Actions"][0]["Retry"] = json!({"MaxAttempts": 2});
        let mut t = T::new(r);
        let (mut e, fx) = t.start();
        t.now += 1000;
        let fx = e.apply(
            Input::Timer {
                key: timers(&fx)[0].0.clone(),
            },
            t.ctx(),
        );
        assert_eq!(dispatched(&fx)[0].2, 2);
        let fx = e.apply(ok(&e, "clamp", json!({})), t.ctx());
        assert_eq!(entered(&fx), ["press"]);
    }

    #[test]
    fn qualifier_n_holds_the_step_and_is_cancelled_when_left() {
        let t = T::new(json!({
            "Steps": steps(&["a", "b"]),
            "Transitions": [tr("a", "b", "results.go.ok == true")],
            "Actions": [push("go", "a"), push("slow", "a"), push("next", "b")]
        }));
        let (mut e, fx) = t.start();
        assert_eq!(names(&fx), ["go", "slow"]);
        // The expression fires without waiting for `slow`, which is cancelled.
        let fx = e.apply(ok(&e, "go", json!({"ok": true})), t.ctx());
        assert_eq!(entered(&fx), ["b"]);
        assert_eq!(e.actions["slow"].state, ActionState::Cancelled);
        let late = ok(&e, "slow", json!({}));
        let _ = late;
        assert!(e
            .apply(
                Input::Result {
                    command_id: "line/j1/slow/1".into(),
                    outcome: Ok(json!({}))
                },
                t.ctx()
            )
            .is_empty());
    }

    #[test]
    fn qualifier_p_does_not_hold_the_step_and_p0_runs_on_exit() {
        let t = T::new(json!({
            "Steps": steps(&["a", "b"]),
            "Transitions": [tr("a", "b", "always")],
            "Actions": [
                action("pulse", "a", "P", "push_command", "com.example.pulse.v1"),
                action("bye", "a", "P0", "push_command", "com.example.bye.v1"),
                push("work", "b")
            ]
        }));
        let (mut e, fx) = t.start();
        // `a` has no non-stored action: it is finished at once.
        assert_eq!(names(&fx), ["pulse", "bye", "work"]);
        assert_eq!(entered(&fx), ["a", "b"]);
        // The pulse's late result is still recorded.
        e.apply(ok(&e, "pulse", json!({"v": 1})), t.ctx());
        assert_eq!(e.results["pulse"]["v"], 1);
    }

    #[test]
    fn qualifier_s_keeps_running_until_r_resets_it() {
        let t = T::new(json!({
            "Steps": steps(&["a", "b", "c"]),
            "Transitions": [tr("a", "b", "always"), tr("b", "c", "always")],
            "Actions": [
                action("conveyor", "a", "S", "push_command", "com.example.conveyor.v1"),
                push("weld", "b"),
                action("stop_conveyor", "c", "R", "push_command", "conveyor"),
                push("unload", "c")
            ]
        }));
        let (mut e, fx) = t.start();
        assert_eq!(names(&fx), ["conveyor", "weld"]);
        assert_eq!(
            e.actions["conveyor"].state,
            ActionState::Running,
            "still running in b"
        );
        let fx = e.apply(ok(&e, "weld", json!({})), t.ctx());
        assert_eq!(names(&fx), ["unload"], "R sends nothing itself");
        assert_eq!(e.actions["conveyor"].state, ActionState::Cancelled);
    }

    #[test]
    fn qualifier_l_is_cancelled_at_its_limit_and_releases_the_step() {
        let mut r = json!({
            "Steps": steps(&["a", "b"]),
            "Transitions": [tr("a", "b", "always")],
            "Actions": [action("blow", "a", "L", "push_command", "com.example.air.v1"), push("next", "b")]
        });
        r["Actions"][0]["DurationSeconds"] = json!(2.0);
        let mut t = T::new(r);
        let (mut e, fx) = t.start();
        let (key, at) = timers(&fx)[0].clone();
        assert_eq!(at, t.now + 2000);
        t.now += 2000;
        let fx = e.apply(Input::Timer { key }, t.ctx());
        assert_eq!(e.actions["blow"].state, ActionState::Cancelled);
        assert_eq!(entered(&fx), ["b"]);
    }

    #[test]
    fn qualifier_d_is_sent_after_its_delay_only_if_the_step_is_still_active() {
        let mut r = json!({
            "Steps": steps(&["a", "b"]),
            "Transitions": [tr("a", "b", "always")],
            "Actions": [action("late", "a", "D", "push_command", "com.example.late.v1"), push("next", "b")]
        });
        r["Actions"][0]["DelaySeconds"] = json!(3.0);
        let mut t = T::new(r.clone());
        let (mut e, fx) = t.start();
        assert!(names(&fx).is_empty());
        let (key, _) = timers(&fx)[0].clone();
        t.now += 3000;
        let fx = e.apply(Input::Timer { key }, t.ctx());
        assert_eq!(names(&fx), ["late"]);
        let fx = e.apply(ok(&e, "late", json!({})), t.ctx());
        assert_eq!(entered(&fx), ["b"], "D holds the step until done");

        // Left before the delay (an expression condition): never sent.
        r["Transitions"][0]["Condition"] = json!("params.skip == true");
        let mut t = T::new(r);
        let mut params = Map::new();
        params.insert("skip".into(), json!(true));
        let (e, fx) = Exec::start("j2", "line", params, t.ctx());
        assert_eq!(entered(&fx), ["a", "b"]);
        let mut e = e;
        t.now += 3000;
        let key = timers(&fx)[0].0.clone();
        assert!(names(&e.apply(Input::Timer { key }, t.ctx())).is_empty());
    }

    fn branches(kind: &str) -> Value {
        json!({
            "Steps": steps(&["start", "left", "right", "join"]),
            "Transitions": [tr("start", "fork", "always"), tr("fork", "join", "always")],
            "Branches": [{"Name": "fork", "Type": kind, "Branches": [["left"], ["right"]]}],
            "Actions": [push("prep", "start"), push("press_left", "left"), push("press_right", "right"), push("check", "join")]
        })
    }

    #[test]
    fn a_simultaneous_branch_runs_all_paths_and_joins_when_all_are_done() {
        let t = T::new(branches("simultaneous"));
        let (mut e, _) = t.start();
        let fx = e.apply(ok(&e, "prep", json!({})), t.ctx());
        assert_eq!(entered(&fx), ["left", "right"]);
        assert_eq!(names(&fx), ["press_left", "press_right"]);
        let fx = e.apply(ok(&e, "press_right", json!({})), t.ctx());
        assert!(entered(&fx).is_empty(), "waits for the other path");
        let fx = e.apply(ok(&e, "press_left", json!({})), t.ctx());
        assert_eq!(entered(&fx), ["join"]);
        let fx = e.apply(ok(&e, "check", json!({})), t.ctx());
        assert_eq!(finished(&fx), Some(Status::Completed));
    }

    #[test]
    fn a_selection_branch_takes_the_highest_priority_enabled_path() {
        let mut r = branches("selection");
        r["Transitions"] = json!([
            tr("start", "fork", "always"),
            {"Source": "fork", "Target": "left", "Condition": "results.prep.side == 'left'", "Priority": 2},
            {"Source": "fork", "Target": "right", "Condition": "results.prep.side != ''", "Priority": 1},
            tr("fork", "join", "always")
        ]);
        let t = T::new(r.clone());
        let (mut e, _) = t.start();
        // Both entries are true; priority 1 (right) wins.
        let fx = e.apply(ok(&e, "prep", json!({"side": "left"})), t.ctx());
        assert_eq!(entered(&fx), ["right"]);
        let fx = e.apply(ok(&e, "press_right", json!({})), t.ctx());
        assert_eq!(entered(&fx), ["join"], "the chosen path alone converges");

        r["Transitions"][2]["Condition"] = json!("results.prep.side == 'right'");
        let t = T::new(r);
        let (mut e, _) = t.start();
        let fx = e.apply(ok(&e, "prep", json!({"side": "left"})), t.ctx());
        assert_eq!(entered(&fx), ["left"]);
    }

    #[test]
    fn branches_nest() {
        let t = T::new(json!({
            "Steps": steps(&["s", "a1", "a2", "b1", "c1", "end"]),
            "Transitions": [
                tr("s", "outer", "always"),
                {"Source": "inner", "Target": "b1", "Condition": "results.a1.big == true"},
                {"Source": "inner", "Target": "c1", "Condition": "results.a1.big == false"},
                tr("outer", "end", "always")
            ],
            "Branches": [
                {"Name": "outer", "Type": "simultaneous", "Branches": [["a1", "inner"], ["a2"]]},
                {"Name": "inner", "Type": "selection", "Branches": [["b1"], ["c1"]]}
            ],
            "Actions": [push("s", "s"), push("a1", "a1"), push("a2", "a2"), push("b1", "b1"), push("c1", "c1"), push("end", "end")]
        }));
        let (mut e, _) = t.start();
        let fx = e.apply(ok(&e, "s", json!({})), t.ctx());
        assert_eq!(entered(&fx), ["a1", "a2"]);
        let fx = e.apply(ok(&e, "a1", json!({"big": false})), t.ctx());
        assert_eq!(entered(&fx), ["c1"]);
        let fx = e.apply(ok(&e, "c1", json!({})), t.ctx());
        assert!(entered(&fx).is_empty(), "a2 still running");
        let fx = e.apply(ok(&e, "a2", json!({})), t.ctx());
        assert_eq!(entered(&fx), ["end"]);
    }

    #[test]
    fn a_loop_reactivates_a_step_with_a_new_command_id() {
        let t = T::new(json!({
            "Steps": steps(&["screw", "check", "done"]),
            "Transitions": [
                tr("screw", "check", "always"),
                {"Source": "check", "Target": "screw", "Condition": "results.measure.torque < 40.0", "Priority": 1},
                {"Source": "check", "Target": "done", "Condition": "results.measure.torque >= 40.0", "Priority": 2}
            ],
            "Actions": [push("tighten", "screw"), push("measure", "check")]
        }));
        let (mut e, fx) = t.start();
        assert_eq!(dispatched(&fx)[0].1, "line/j1/tighten/1");
        e.apply(ok(&e, "tighten", json!({})), t.ctx());
        let fx = e.apply(ok(&e, "measure", json!({"torque": 31.0})), t.ctx());
        assert_eq!(
            dispatched(&fx),
            [("tighten".into(), "line/j1/tighten/2".into(), 1)]
        );
        e.apply(ok(&e, "tighten", json!({})), t.ctx());
        assert_eq!(e.actions["measure"].command_id, "line/j1/measure/2");
        let fx = e.apply(ok(&e, "measure", json!({"torque": 44.0})), t.ctx());
        assert_eq!(entered(&fx), ["done"]);
        assert_eq!(finished(&fx), Some(Status::Completed));
    }

    #[test]
    fn a_recipe_that_loops_without_waiting_fails_instead_of_spinning() {
        let t = T::new(json!({
            "Steps": steps(&["a", "b"]),
            "Transitions": [tr("a", "b", "always"), tr("b", "a", "always")],
            "Actions": []
        }));
        let (_, fx) = t.start();
        assert!(matches!(finished(&fx), Some(Status::Failed(m)) if m.contains("loops")));
    }

    #[test]
    fn pause_holds_transitions_and_timers_resume_shifts_them() {
        let mut r = sequence();
        r["Actions"][1]["TimeoutSeconds"] = json!(10);
        let mut t = T::new(r);
        let (mut e, _) = t.start();
        let fx = e.apply(ok(&e, "clamp", json!({})), t.ctx());
        let (key, at) = timers(&fx)[0].clone();
        assert_eq!(at, t.now + 10_000);
        e.apply(Input::Pause, t.ctx());
        // The result is recorded, but the step is not left while paused.
        let fx = e.apply(ok(&e, "press_in", json!({"f": 1})), t.ctx());
        assert!(entered(&fx).is_empty());
        assert_eq!(e.actions["press_in"].state, ActionState::Done);
        t.now += 60_000;
        let fx = e.apply(Input::Timer { key }, t.ctx());
        assert!(finished(&fx).is_none(), "timers are held while paused");
        let fx = e.apply(Input::Resume, t.ctx());
        assert_eq!(entered(&fx), ["inspect"]);
    }

    #[test]
    fn a_timeout_while_paused_counts_from_resume() {
        let mut r = sequence();
        r["Actions"][0]["TimeoutSeconds"] = json!(10);
        let mut t = T::new(r);
        let (mut e, _) = t.start();
        t.now += 4_000;
        e.apply(Input::Pause, t.ctx());
        t.now += 100_000;
        let fx = e.apply(Input::Resume, t.ctx());
        let (key, at) = timers(&fx)[0].clone();
        assert_eq!(at, t.now + 6_000, "6 s of the timeout were left");
        t.now += 6_000;
        let fx = e.apply(Input::Timer { key }, t.ctx());
        assert!(matches!(finished(&fx), Some(Status::Failed(_))));
    }

    #[test]
    fn stop_and_abort_end_execution_and_cancel_what_runs() {
        for (input, status) in [
            (Input::Stop, Status::Stopped),
            (Input::Abort, Status::Aborted),
        ] {
            let t = T::new(sequence());
            let (mut e, _) = t.start();
            let fx = e.apply(input, t.ctx());
            assert_eq!(finished(&fx), Some(status));
            assert_eq!(e.actions["clamp"].state, ActionState::Cancelled);
            assert!(e.active.is_empty());
            assert!(e.apply(ok(&e, "clamp", json!({})), t.ctx()).is_empty());
        }
    }

    #[test]
    fn a_bare_identifier_tests_the_steps_results() {
        let t = T::new(json!({
            "Steps": steps(&["tighten", "ok", "rework"]),
            "Transitions": [
                {"Source": "tighten", "Target": "ok", "Condition": "torque_ok", "Priority": 1},
                {"Source": "tighten", "Target": "rework", "Condition": "results.tighten.torque_ok == false", "Priority": 2}
            ],
            "Actions": [push("tighten", "tighten")]
        }));
        let (mut e, _) = t.start();
        let fx = e.apply(ok(&e, "tighten", json!({"torque_ok": true})), t.ctx());
        assert_eq!(entered(&fx), ["ok"]);
    }

    #[test]
    fn the_state_survives_serialisation() {
        let t = T::new(branches("simultaneous"));
        let (mut e, _) = t.start();
        e.apply(ok(&e, "prep", json!({})), t.ctx());
        let text = serde_json::to_string(&e).unwrap();
        let back: Exec = serde_json::from_str(&text).unwrap();
        assert_eq!(back, e);
    }
}
