//! The execution state of one job's recipe and its evolution, as a pure
//! function: `Execution::apply(input) -> effects`, no I/O, no clock (the time is
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
//!
//! # Layout
//!
//! One concern per file, all of them `impl Execution` blocks over the state
//! defined here:
//!
//! - `state`: the parts of the stored state (`Status`, `ActionRun`, …);
//! - `command_id`: the typed [`CommandId`] and its text form;
//! - `timer`: the typed [`TimerKey`] and what a due timer does;
//! - `lifecycle`: start, pause, resume, stop, abort, failure;
//! - `events`: results, equipment events, unsent commands;
//! - `steps`: entering and leaving a step, and when a step is finished;
//! - `qualifiers`: what each qualifier does on step entry and exit;
//! - `dispatch`: sending an action, its deadline, retries;
//! - `firing`: which transitions are enabled, and firing them;
//! - `tests`, `proptests`: scenarios one behaviour each, and the
//!   invariants over random recipes and inputs.

use super::net::Net;
use super::recipe::Recipe;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, VecDeque};

mod command_id;
mod dispatch;
mod events;
mod firing;
mod lifecycle;
mod qualifiers;
mod state;
mod steps;
mod timer;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use command_id::{parse_command_id, CommandId, CommandIdError};
pub use events::{equipment_of, selector_takes};
pub use state::{ActionRun, ActionState, EarlyEvent, Status, StepRecord, StepRun};
pub use timer::{TimerKey, TimerKeyError, TimerKind};

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

/// The execution state of a job.
///
/// Stored by the engine as JSON: the field names and shapes are part of
/// the stored format and must not change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    /// The job order id.
    pub(crate) job: String,
    /// The job's scope.
    pub(crate) scope: String,
    /// Where it is.
    pub(crate) status: Status,
    /// Since when it is paused, if it is.
    pub(crate) paused_at_ms: Option<u64>,
    /// When execution started.
    pub(crate) started_ms: u64,
    /// When it ended.
    pub(crate) ended_ms: Option<u64>,
    /// Active steps by name.
    pub(crate) active: BTreeMap<String, StepRun>,
    /// Activations so far per step.
    pub(crate) activations: BTreeMap<String, u32>,
    /// Latest run per action.
    pub(crate) actions: BTreeMap<String, ActionRun>,
    /// Latest result per action.
    pub(crate) results: Map<String, Value>,
    /// Job parameters (`JobOrderParameters` by `ID`), visible to conditions.
    pub(crate) params: Map<String, Value>,
    /// Events that arrived early (the latest [`EARLY_EVENTS`]).
    pub(crate) early: VecDeque<EarlyEvent>,
    /// Step activations in order (the latest [`HISTORY`]).
    pub(crate) history: VecDeque<StepRecord>,
    /// Identities of the latest events applied (the latest
    /// [`SEEN_EVENTS`]), so that a redelivered event is not applied twice.
    #[serde(default)]
    pub(crate) seen_events: VecDeque<String>,
    /// The job's trace (#10): the W3C `traceparent` of its job span, the
    /// parent of every step and dispatch span of the job on any replica.
    /// Absent when traces were off as the job started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) trace: Option<String>,
}

/// What can happen to a running job.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A `push_command`'s result (or error) arrived.
    Result {
        /// The command id it answers (the text of a [`CommandId`]).
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
        /// The timer's key (the text of a [`TimerKey`]).
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
        /// Stable dispatch id (the CloudEvent `id`, the text of a
        /// [`CommandId`]).
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
        /// Timer key (the text of a [`TimerKey`]).
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
pub struct EvolutionContext<'a> {
    /// The recipe snapshot.
    pub recipe: &'a Recipe,
    /// Its compiled net.
    pub net: &'a Net,
    /// The current time (ms since the epoch).
    pub now_ms: u64,
}

impl Execution {
    /// Applies one input. Pure: the same state, input and time always give
    /// the same new state and effects. A finished execution takes nothing
    /// (no effects, no change).
    pub fn apply(&mut self, input: Input, ctx: EvolutionContext<'_>) -> Vec<Effect> {
        let mut effects = Vec::new();
        if self.is_finished() {
            return effects;
        }
        self.expire_early(ctx.now_ms);
        match input {
            Input::Result {
                command_id,
                outcome,
            } => self.on_result(&command_id, outcome, ctx, &mut effects),
            Input::Event {
                type_id,
                data,
                id,
                equipment,
                expires_ms,
            } => {
                let event = EarlyEvent {
                    type_id,
                    data,
                    at_ms: ctx.now_ms,
                    equipment,
                    expires_ms,
                };
                if !self.on_event(event, id, ctx) {
                    // Expired or a redelivery: nothing changes, not even
                    // the transitions are looked at.
                    return effects;
                }
            }
            Input::Unsent {
                command_id,
                attempt,
                reason,
            } => self.on_unsent(&command_id, attempt, &reason, ctx, &mut effects),
            Input::Timer { key } => self.on_timer(&key, ctx, &mut effects),
            Input::Pause => self.pause(ctx),
            Input::Resume => self.resume(ctx, &mut effects),
            Input::Stop => self.finish(Status::Stopped, ctx, &mut effects),
            Input::Abort => self.finish(Status::Aborted, ctx, &mut effects),
        }
        if !self.is_finished() && self.paused_at_ms.is_none() {
            self.settle(ctx, &mut effects);
        }
        effects
    }

    /// Whether execution is over.
    pub fn is_finished(&self) -> bool {
        self.status != Status::Running
    }

    /// The stable command id of an action run, as text: see [`CommandId`].
    pub fn command_id(&self, action: &str, activation: u32) -> String {
        CommandId::new(&self.scope, &self.job, action, activation).to_string()
    }

    /// The job order id.
    pub fn job(&self) -> &str {
        &self.job
    }

    /// The job's scope.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// Where the execution is.
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// Since when it is paused (ms), if it is.
    pub fn paused_at_ms(&self) -> Option<u64> {
        self.paused_at_ms
    }

    /// When execution started (ms since the epoch).
    pub fn started_ms(&self) -> u64 {
        self.started_ms
    }

    /// When execution ended (ms since the epoch), once it has.
    pub fn ended_ms(&self) -> Option<u64> {
        self.ended_ms
    }

    /// The active steps by name.
    pub fn active_steps(&self) -> &BTreeMap<String, StepRun> {
        &self.active
    }

    /// The latest run of action `name`, if it ran.
    pub fn action_run(&self, name: &str) -> Option<&ActionRun> {
        self.actions.get(name)
    }

    /// The latest run of every action that ran, by name.
    pub fn action_runs(&self) -> &BTreeMap<String, ActionRun> {
        &self.actions
    }

    /// The latest result per action.
    pub fn results(&self) -> &Map<String, Value> {
        &self.results
    }

    /// The job parameters conditions see.
    pub fn params(&self) -> &Map<String, Value> {
        &self.params
    }

    /// Events kept because no action waited for them yet, oldest first.
    pub fn early_events(&self) -> impl ExactSizeIterator<Item = &EarlyEvent> {
        self.early.iter()
    }

    /// The job's trace: the W3C `traceparent` of its job span, if traces
    /// were on when it started.
    pub fn trace(&self) -> Option<&str> {
        self.trace.as_deref()
    }

    /// Sets the job's trace (the `traceparent` of its job span).
    pub(crate) fn set_trace(&mut self, traceparent: Option<String>) {
        self.trace = traceparent;
    }

    /// Step activations in order (the latest [`HISTORY`]).
    pub fn history(&self) -> impl ExactSizeIterator<Item = &StepRecord> {
        self.history.iter()
    }
}

/// Appends `item` to a buffer that keeps the latest `cap` items, dropping
/// the oldest first.
fn push_bounded<T>(buffer: &mut VecDeque<T>, cap: usize, item: T) {
    while buffer.len() >= cap {
        buffer.pop_front();
    }
    buffer.push_back(item);
}

/// Milliseconds of a duration, saturating.
fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
