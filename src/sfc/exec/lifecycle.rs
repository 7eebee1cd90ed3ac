//! The life of an execution as a whole: it starts with the initial step,
//! is paused and resumed (timers held and shifted), and ends completed,
//! failed, stopped or aborted, with everything still outstanding
//! cancelled.

use super::{Effect, EvolutionContext, Execution, Status, TimerKey, TICK_MS};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, VecDeque};

impl Execution {
    /// Starts executing `recipe` for a job: activates the initial step.
    pub fn start(
        job: &str,
        scope: &str,
        params: Map<String, Value>,
        ctx: EvolutionContext<'_>,
    ) -> (Execution, Vec<Effect>) {
        let mut execution = Execution {
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
            early: VecDeque::new(),
            history: VecDeque::new(),
            seen_events: VecDeque::new(),
            trace: None,
        };
        let mut effects = Vec::new();
        let initial = ctx.net.steps[ctx.net.initial].clone();
        execution.enter(&initial, ctx, &mut effects);
        execution.settle(ctx, &mut effects);
        (execution, effects)
    }

    /// An execution that failed before it could start (`reason`), at
    /// `now_ms`: it has no steps and takes no input.
    pub fn failed(job: &str, scope: &str, reason: &str, now_ms: u64) -> Execution {
        Execution {
            job: job.to_owned(),
            scope: scope.to_owned(),
            status: Status::Failed(reason.to_owned()),
            paused_at_ms: None,
            started_ms: now_ms,
            ended_ms: Some(now_ms),
            active: BTreeMap::new(),
            activations: BTreeMap::new(),
            actions: BTreeMap::new(),
            results: Map::new(),
            params: Map::new(),
            early: VecDeque::new(),
            history: VecDeque::new(),
            seen_events: VecDeque::new(),
            trace: None,
        }
    }

    /// Paused (Interrupted): transitions and timers are held until Resume.
    /// Results and events still count while paused.
    pub(super) fn pause(&mut self, ctx: EvolutionContext<'_>) {
        if self.paused_at_ms.is_none() {
            self.paused_at_ms = Some(ctx.now_ms);
        }
    }

    /// Running again: every pending deadline moves by the pause and is
    /// issued again under its (unchanged) key; the steps' elapsed time
    /// does not count the pause either.
    pub(super) fn resume(&mut self, ctx: EvolutionContext<'_>, effects: &mut Vec<Effect>) {
        let Some(since) = self.paused_at_ms.take() else {
            return;
        };
        let shift = ctx.now_ms.saturating_sub(since);
        for (name, run) in &mut self.actions {
            if let (Some(d), Some(kind)) = (run.deadline_ms.as_mut(), run.timer) {
                *d += shift;
                let key = TimerKey::Action {
                    action: name.clone(),
                    activation: run.activation,
                    kind,
                };
                effects.push(Effect::timer(&key, *d));
            }
        }
        for run in self.active.values_mut() {
            run.entered_ms += shift;
        }
        for (step, run) in &self.active {
            if super::firing::has_time_condition(ctx, step) {
                let key = TimerKey::Tick {
                    step: step.clone(),
                    activation: run.activation,
                };
                effects.push(Effect::timer(&key, ctx.now_ms + TICK_MS));
            }
        }
    }

    /// The job fails with `reason`.
    pub(super) fn fail(
        &mut self,
        reason: String,
        ctx: EvolutionContext<'_>,
        effects: &mut Vec<Effect>,
    ) {
        self.finish(Status::Failed(reason), ctx, effects);
    }

    /// Execution ends with `status`: every outstanding run is cancelled and
    /// every active step left. Only the first end counts.
    pub(super) fn finish(
        &mut self,
        status: Status,
        ctx: EvolutionContext<'_>,
        effects: &mut Vec<Effect>,
    ) {
        if self.is_finished() {
            return;
        }
        for run in self.actions.values_mut() {
            run.cancel();
        }
        let steps = std::mem::take(&mut self.active);
        for (step, run) in steps {
            self.record_left(&step, run.activation, ctx.now_ms);
            effects.push(Effect::StepLeft {
                step,
                activation: run.activation,
            });
        }
        self.status = status.clone();
        self.ended_ms = Some(ctx.now_ms);
        effects.push(Effect::Finished(status));
    }
}
