//! Sending an action (or, for a pull action, starting to wait for its
//! event), the one deadline of each run, and retries after a failed
//! attempt.

use super::{ms, ActionRun, ActionState, Effect, EvolutionContext, Execution, TimerKey, TimerKind};
use crate::sfc::recipe::{Action, Interaction, Qualifier};

impl Execution {
    /// Sends (or, for a pull action, starts waiting for) `action`'s
    /// `attempt` in `activation` of its step.
    pub(super) fn dispatch(
        &mut self,
        action: &Action,
        activation: u32,
        attempt: u32,
        ctx: EvolutionContext<'_>,
        effects: &mut Vec<Effect>,
    ) {
        let command_id = self.command_id(&action.name, activation);
        if attempt == 1 {
            // A new activation: conditions must not see the previous one's
            // result (a loop would otherwise decide on stale data).
            self.results.remove(&action.name);
        }
        let mut state = ActionState::Running;
        if action.interaction == Interaction::PullEvent && attempt == 1 {
            if let Some(ev) = self.take_early(action, ctx.now_ms) {
                self.results.insert(action.name.clone(), ev.data);
                state = ActionState::Done;
            }
        }
        let mut deadline = None;
        let mut timer = None;
        if state == ActionState::Running {
            if action.interaction == Interaction::PushCommand {
                effects.push(Effect::Dispatch {
                    command_id: command_id.clone(),
                    action: action.name.clone(),
                    type_id: action.type_id.clone(),
                    equipment: action.equipment.clone(),
                    parameters: action.parameters.clone(),
                    attempt,
                });
            }
            if let Some((at, kind)) = run_deadline(action, attempt, ctx.now_ms) {
                let key = TimerKey::Action {
                    action: action.name.clone(),
                    activation,
                    kind,
                };
                effects.push(Effect::timer(&key, at));
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

    /// After a failed attempt of a `push_command` (no result in time, or
    /// never sent): the next attempt if the retry policy allows one,
    /// else the job fails with `reason`.
    pub(super) fn retry_or_fail(
        &mut self,
        action: &Action,
        run: &ActionRun,
        reason: impl FnOnce() -> String,
        ctx: EvolutionContext<'_>,
        effects: &mut Vec<Effect>,
    ) {
        let name = &action.name;
        let activation = run.activation;
        let next = run.attempt + 1;
        if action.interaction == Interaction::PushCommand && run.attempt < action.retry.max_attempts
        {
            let backoff = ms(action.retry.backoff);
            if backoff == 0 {
                self.dispatch(action, activation, next, ctx, effects);
            } else if let Some(r) = self.actions.get_mut(name) {
                let kind = TimerKind::Backoff(next);
                let at = ctx.now_ms + backoff;
                r.state = ActionState::Scheduled;
                r.deadline_ms = Some(at);
                r.timer = Some(kind);
                let key = TimerKey::Action {
                    action: name.clone(),
                    activation,
                    kind,
                };
                effects.push(Effect::timer(&key, at));
            }
        } else {
            if let Some(r) = self.actions.get_mut(name) {
                r.end(ActionState::Failed);
            }
            self.fail(reason(), ctx, effects);
        }
    }
}

/// The one deadline of a run that starts now: the earlier of its timeout
/// and (for an `L` action) its time limit, with the kind of its timer;
/// `None` when it has neither.
fn run_deadline(action: &Action, attempt: u32, now: u64) -> Option<(u64, TimerKind)> {
    let timeout = ms(action.timeout);
    let by_limit = (action.qualifier == Qualifier::L)
        .then_some(action.duration)
        .flatten()
        .map(|l| now + ms(l));
    let by_timeout = (timeout > 0).then_some(now + timeout);
    match (by_limit, by_timeout) {
        (Some(l), Some(t)) if l <= t => Some((l, TimerKind::Limit)),
        (Some(l), None) => Some((l, TimerKind::Limit)),
        (_, Some(t)) => Some((t, TimerKind::Timeout(attempt))),
        (None, None) => None,
    }
}
