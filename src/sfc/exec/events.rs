//! What comes back from equipment: a command's result, an event a pull
//! action waits for (or that arrives before anything waits, and is kept),
//! and a command that could not be sent at all.

use super::{
    push_bounded, ActionState, EarlyEvent, Effect, EvolutionContext, Execution, EARLY_EVENTS,
    EARLY_EVENT_TTL_MS, SEEN_EVENTS,
};
use crate::sfc::recipe::Action;
use serde_json::Value;

impl Execution {
    /// Drops kept events that are too old or past their deadline.
    pub(super) fn expire_early(&mut self, now: u64) {
        self.early
            .retain(|e| now.saturating_sub(e.at_ms) < EARLY_EVENT_TTL_MS && e.live_at(now));
    }

    /// A `push_command`'s result: completes the run it names if that run
    /// is still awaited; an error fails the job. A late, duplicate or
    /// cancelled result is harmless.
    pub(super) fn on_result(
        &mut self,
        command_id: &str,
        outcome: Result<Value, String>,
        ctx: EvolutionContext<'_>,
        effects: &mut Vec<Effect>,
    ) {
        let Some((name, run)) = self
            .actions
            .iter_mut()
            .find(|(_, r)| r.command_id == command_id && r.state == ActionState::Running)
        else {
            return;
        };
        let name = name.clone();
        match outcome {
            Ok(data) => {
                run.end(ActionState::Done);
                self.results.insert(name, data);
            }
            Err(message) => {
                run.end(ActionState::Failed);
                self.fail(format!("action '{name}' failed: {message}"), ctx, effects);
            }
        }
    }

    /// An equipment event with identity `id`: the first waiting pull
    /// action (in recipe order) that takes it completes, else it is kept
    /// for one that will. Returns `false` when it changes nothing: it
    /// arrived expired, or it is a redelivery of an event seen before.
    pub(super) fn on_event(
        &mut self,
        event: EarlyEvent,
        id: Option<String>,
        ctx: EvolutionContext<'_>,
    ) -> bool {
        if !event.live_at(ctx.now_ms) {
            return false;
        }
        if let Some(id) = id {
            if self.seen_events.contains(&id) {
                return false;
            }
            push_bounded(&mut self.seen_events, SEEN_EVENTS, id);
        }
        let waiting = ctx.recipe.pull_actions().find(|a| {
            takes(a, &event)
                && self
                    .actions
                    .get(&a.name)
                    .is_some_and(|r| r.state == ActionState::Running)
        });
        match waiting {
            Some(a) => {
                if let Some(run) = self.actions.get_mut(&a.name) {
                    run.end(ActionState::Done);
                }
                self.results.insert(a.name.clone(), event.data);
            }
            None => push_bounded(&mut self.early, EARLY_EVENTS, event),
        }
        true
    }

    /// Takes the oldest kept event `action` takes that is still live, if
    /// any.
    pub(super) fn take_early(&mut self, action: &Action, now: u64) -> Option<EarlyEvent> {
        let i = self
            .early
            .iter()
            .position(|e| takes(action, e) && e.live_at(now))?;
        self.early.remove(i)
    }

    /// A send that never happened: the next attempt per the retry policy
    /// (after its back-off), or the action fails. Only for the attempt the
    /// action is at (an older one was superseded by a re-send).
    pub(super) fn on_unsent(
        &mut self,
        command_id: &str,
        attempt: u32,
        reason: &str,
        ctx: EvolutionContext<'_>,
        effects: &mut Vec<Effect>,
    ) {
        let Some((name, run)) = self.actions.iter().find(|(_, r)| {
            r.command_id == command_id && r.attempt == attempt && r.state == ActionState::Running
        }) else {
            return;
        };
        let (name, run) = (name.clone(), run.clone());
        let Some(action) = ctx.recipe.action(&name) else {
            return;
        };
        self.retry_or_fail(
            action,
            &run,
            || format!("action '{name}' not sent ({reason}; attempt {attempt})"),
            ctx,
            effects,
        );
    }
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
fn takes(a: &Action, ev: &EarlyEvent) -> bool {
    a.type_id == ev.type_id && selector_takes(a.equipment.as_deref(), ev.equipment.as_deref())
}
