//! What each IEC 61131-3 qualifier does when its step is entered and left
//! (the table in the module docs of [`exec`](super)).

use super::{ActionRun, ActionState, Effect, EvolutionContext, Execution, TimerKey, TimerKind};
use crate::sfc::recipe::{Action, Qualifier};

/// Whether actions with qualifier `q` hold their step: the step is not
/// finished while they are outstanding, and they are cancelled when it is
/// left (N, L, D: the non-stored ones).
pub(super) fn holds_step(q: Qualifier) -> bool {
    matches!(q, Qualifier::N | Qualifier::L | Qualifier::D)
}

impl Execution {
    /// `action`'s part in entering `activation` of its step.
    pub(super) fn on_step_entered(
        &mut self,
        action: &Action,
        activation: u32,
        ctx: EvolutionContext<'_>,
        effects: &mut Vec<Effect>,
    ) {
        match action.qualifier {
            Qualifier::N | Qualifier::P | Qualifier::P1 | Qualifier::S | Qualifier::L => {
                self.dispatch(action, activation, 1, ctx, effects);
            }
            Qualifier::D => {
                let at = ctx.now_ms + action.delay.map_or(0, super::ms);
                self.actions.insert(
                    action.name.clone(),
                    ActionRun {
                        activation,
                        state: ActionState::Scheduled,
                        command_id: self.command_id(&action.name, activation),
                        attempt: 0,
                        deadline_ms: Some(at),
                        timer: Some(TimerKind::Delay),
                    },
                );
                let key = TimerKey::Action {
                    action: action.name.clone(),
                    activation,
                    kind: TimerKind::Delay,
                };
                effects.push(Effect::timer(&key, at));
            }
            Qualifier::R => {
                // Resets the stored action named by the R association's TypeId.
                if let Some(run) = self.actions.get_mut(&action.type_id) {
                    run.cancel();
                }
            }
            Qualifier::P0 => {}
        }
    }

    /// `action`'s part in leaving `activation` of its step: a holding
    /// action of this activation still outstanding is cancelled, a `P0`
    /// action is sent.
    pub(super) fn on_step_left(
        &mut self,
        action: &Action,
        activation: u32,
        ctx: EvolutionContext<'_>,
        effects: &mut Vec<Effect>,
    ) {
        if holds_step(action.qualifier) {
            if let Some(r) = self.actions.get_mut(&action.name) {
                if r.activation == activation {
                    r.cancel();
                }
            }
        } else if action.qualifier == Qualifier::P0 {
            self.dispatch(action, activation, 1, ctx, effects);
        }
    }
}
