//! Steps: entering one (a new activation, its history record, its actions
//! started), leaving one, and when one is finished.

use super::{
    push_bounded, ActionState, Effect, EvolutionContext, Execution, StepRecord, StepRun, TimerKey,
};
use super::{HISTORY, TICK_MS};

impl Execution {
    /// Enters a step: counts the activation, starts its actions.
    pub(super) fn enter(
        &mut self,
        step: &str,
        ctx: EvolutionContext<'_>,
        effects: &mut Vec<Effect>,
    ) {
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
        // A recipe that loops for a long time keeps its latest steps.
        push_bounded(
            &mut self.history,
            HISTORY,
            StepRecord {
                step: step.to_owned(),
                activation,
                entered_ms: ctx.now_ms,
                left_ms: None,
            },
        );
        effects.push(Effect::StepEntered {
            step: step.to_owned(),
            activation,
        });
        if super::firing::has_time_condition(ctx, step) {
            let key = TimerKey::Tick {
                step: step.to_owned(),
                activation,
            };
            effects.push(Effect::timer(&key, ctx.now_ms + TICK_MS));
        }
        for action in ctx.recipe.actions_of(step) {
            self.on_step_entered(action, activation, ctx, effects);
        }
    }

    /// Leaves a step: its actions see the exit (see `qualifiers`), its
    /// history record gets the time.
    pub(super) fn leave(
        &mut self,
        step: &str,
        ctx: EvolutionContext<'_>,
        effects: &mut Vec<Effect>,
    ) {
        let Some(run) = self.active.remove(step) else {
            return;
        };
        for action in ctx.recipe.actions_of(step) {
            self.on_step_left(action, run.activation, ctx, effects);
        }
        self.record_left(step, run.activation, ctx.now_ms);
        effects.push(Effect::StepLeft {
            step: step.to_owned(),
            activation: run.activation,
        });
    }

    /// Notes in the history when `activation` of `step` was left.
    pub(super) fn record_left(&mut self, step: &str, activation: u32, now: u64) {
        if let Some(r) = self
            .history
            .iter_mut()
            .rev()
            .find(|r| r.step == step && r.activation == activation)
        {
            r.left_ms = Some(now);
        }
    }

    /// Whether the step's actions that hold it (see `qualifiers`) are all
    /// complete in its current activation.
    pub(super) fn step_finished(&self, step: &str, ctx: EvolutionContext<'_>) -> bool {
        let Some(run) = self.active.get(step) else {
            return false;
        };
        ctx.recipe
            .actions_of(step)
            .filter(|a| super::qualifiers::holds_step(a.qualifier))
            .all(|a| {
                self.actions.get(&a.name).is_some_and(|r| {
                    r.activation == run.activation
                        && matches!(r.state, ActionState::Done | ActionState::Cancelled)
                })
            })
    }
}
