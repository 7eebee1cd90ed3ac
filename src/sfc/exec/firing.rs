//! Transition firing: which net transitions are enabled (input steps
//! active, finished where required, guards true), and firing the first by
//! conflict order until none is enabled.

use super::{ActionState, Effect, EvolutionContext, Execution, Status, MAX_FIRINGS};
use crate::sfc::condition::{Condition, ConditionContext};
use crate::sfc::net::{NetTransition, StepId};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

impl Execution {
    /// Fires enabled transitions until none is enabled; completes the job
    /// when no step is active any more.
    pub(super) fn settle(&mut self, ctx: EvolutionContext<'_>, effects: &mut Vec<Effect>) {
        for _ in 0..MAX_FIRINGS {
            if self.is_finished() {
                return;
            }
            if self.active.is_empty() {
                self.finish(Status::Completed, ctx, effects);
                return;
            }
            let Some(t) = ctx
                .net
                .transitions
                .iter()
                .filter(|t| self.enabled(t, ctx))
                .min_by(|a, b| a.order.cmp(&b.order))
            else {
                return;
            };
            if !self.fire(t, ctx, effects) {
                return;
            }
        }
        self.fail(
            format!("more than {MAX_FIRINGS} transitions without waiting for anything: the recipe loops"),
            ctx,
            effects,
        );
    }

    /// Whether `t` can fire now.
    fn enabled(&self, t: &NetTransition, ctx: EvolutionContext<'_>) -> bool {
        t.inputs
            .iter()
            .all(|&s| self.active.contains_key(&ctx.net.steps[s]))
            && t.finished
                .iter()
                .all(|&s| self.step_finished(&ctx.net.steps[s], ctx))
            && t.guards
                .iter()
                .all(|g| self.guard_holds(&g.condition, &g.context, ctx))
    }

    /// Fires `t`: leaves its input steps, enters its output steps. Returns
    /// `false` when the job failed doing so.
    fn fire(
        &mut self,
        t: &NetTransition,
        ctx: EvolutionContext<'_>,
        effects: &mut Vec<Effect>,
    ) -> bool {
        for &s in &t.inputs {
            self.leave(&ctx.net.steps[s], ctx, effects);
        }
        for &s in &t.outputs {
            let name = &ctx.net.steps[s];
            if self.active.contains_key(name) {
                // A step can hold one token: re-entering an active step
                // (a loop racing a branch) is a recipe defect.
                self.fail(
                    format!("step '{name}' entered while active ({})", t.label),
                    ctx,
                    effects,
                );
                return false;
            }
            self.enter(name, ctx, effects);
        }
        true
    }

    /// Whether `condition` holds, evaluated over the results of the
    /// current activations of the `context` steps and their elapsed time.
    fn guard_holds(
        &self,
        condition: &Condition,
        context: &[StepId],
        ctx: EvolutionContext<'_>,
    ) -> bool {
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
            for a in ctx.recipe.actions_of(name) {
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
}

/// Whether a transition leaving `step` has a condition that uses time (and
/// so needs re-evaluation ticks while the step is active).
pub(super) fn has_time_condition(ctx: EvolutionContext<'_>, step: &str) -> bool {
    ctx.recipe
        .transitions
        .iter()
        .any(|t| t.source == step && uses_elapsed(&t.condition))
}

/// Whether an expression condition reads the step's `elapsed` time.
fn uses_elapsed(c: &Condition) -> bool {
    match c {
        Condition::Expr(e) => e.free_variables().contains("elapsed"),
        _ => false,
    }
}
