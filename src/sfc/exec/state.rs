//! The parts of a stored execution state: where the job is, each action's
//! latest run, each step's activation, kept early events. Their serde
//! names and shapes are the stored format.

use super::TimerKind;
use serde::{Deserialize, Serialize};
use serde_json::Value;

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
    /// The name conditions see in `states.<action>`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            ActionState::Scheduled => "pending",
            ActionState::Running => "running",
            ActionState::Done => "done",
            ActionState::Failed => "failed",
            ActionState::Cancelled => "cancelled",
        }
    }

    /// Whether the run is still awaited: scheduled or running.
    pub fn is_outstanding(self) -> bool {
        matches!(self, ActionState::Running | ActionState::Scheduled)
    }
}

/// The latest run of an action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionRun {
    /// The activation of its step this run belongs to.
    pub activation: u32,
    /// Its state.
    pub state: ActionState,
    /// Stable id of this dispatch: the same on every re-send (the text of
    /// a [`CommandId`](super::CommandId)).
    pub command_id: String,
    /// Sends so far (1 after the first).
    pub attempt: u32,
    /// When the current timer of this run is due (timeout, delay, limit or
    /// back-off), if any.
    pub deadline_ms: Option<u64>,
    /// The kind of that timer (stored as the kind part of its key:
    /// `timeout:2`, `delay`, …).
    pub timer: Option<TimerKind>,
}

impl ActionRun {
    /// No longer awaited: a run still outstanding is cancelled and its
    /// timer no longer matters (a late result or timer is ignored). A run
    /// that is over already keeps its state.
    pub(crate) fn cancel(&mut self) {
        if self.state.is_outstanding() {
            self.end(ActionState::Cancelled);
        }
    }

    /// The run is over with `state` (done, failed or cancelled): its
    /// timer, if any, no longer matches.
    pub(crate) fn end(&mut self, state: ActionState) {
        self.state = state;
        self.deadline_ms = None;
    }
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

impl EarlyEvent {
    /// Whether it still completes something at `now`.
    pub(crate) fn live_at(&self, now: u64) -> bool {
        self.expires_ms.is_none_or(|x| x > now)
    }
}
