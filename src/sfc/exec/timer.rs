//! Timers: the typed key of every timer the evolution sets, and what a due
//! timer does. The runtime stores keys as text (the [`TimerKey`] text form
//! is part of the stored format) and feeds them back when due; a timer
//! that no longer matches the state is ignored.

use super::{ActionState, Effect, EvolutionContext, Execution, TICK_MS};
use crate::sfc::recipe::Interaction;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// What an action's timer is for.
///
/// Its text form (`delay`, `backoff:2`, `timeout:1`, `limit`) is the kind
/// part of a [`TimerKey`] and is stored as such in
/// [`ActionRun::timer`](super::ActionRun::timer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimerKind {
    /// A `D` action's delay after step entry.
    Delay,
    /// The back-off before send number `n` (`backoff:n`).
    Backoff(u32),
    /// The timeout of send number `n` (`timeout:n`).
    Timeout(u32),
    /// An `L` action's time limit.
    Limit,
}

impl fmt::Display for TimerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimerKind::Delay => f.write_str("delay"),
            TimerKind::Backoff(attempt) => write!(f, "backoff:{attempt}"),
            TimerKind::Timeout(attempt) => write!(f, "timeout:{attempt}"),
            TimerKind::Limit => f.write_str("limit"),
        }
    }
}

impl FromStr for TimerKind {
    type Err = TimerKeyError;

    fn from_str(text: &str) -> Result<TimerKind, TimerKeyError> {
        let kind = match text.split_once(':') {
            None if text == "delay" => TimerKind::Delay,
            None if text == "limit" => TimerKind::Limit,
            Some(("backoff", n)) => TimerKind::Backoff(attempt(n, text)?),
            Some(("timeout", n)) => TimerKind::Timeout(attempt(n, text)?),
            _ => return Err(TimerKeyError::new(text)),
        };
        Ok(kind)
    }
}

impl Serialize for TimerKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TimerKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<TimerKind, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A number in a key, in its canonical form only (`2`, not `02` or `+2`),
/// so that every key has one text.
fn attempt(n: &str, text: &str) -> Result<u32, TimerKeyError> {
    n.parse::<u32>()
        .ok()
        .filter(|v| v.to_string() == n)
        .ok_or_else(|| TimerKeyError::new(text))
}

/// The key of a timer: which run or step it belongs to and what it is for.
///
/// Text form: `a/{activation}/{kind}/{action}` for an action's timer,
/// `s/{activation}/tick/{step}` for the re-evaluation tick of a step whose
/// conditions use `elapsed`. The name comes last and may hold `/`.
///
/// # Example
///
/// ```
/// use microdcs::sfc::exec::{TimerKey, TimerKind};
///
/// let key = TimerKey::Action { action: "clamp".into(), activation: 1, kind: TimerKind::Timeout(2) };
/// assert_eq!(key.to_string(), "a/1/timeout:2/clamp");
/// assert_eq!("a/1/timeout:2/clamp".parse::<TimerKey>(), Ok(key));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TimerKey {
    /// A timer of an action's run.
    Action {
        /// The action.
        action: String,
        /// The activation of its step.
        activation: u32,
        /// What it is for.
        kind: TimerKind,
    },
    /// The re-evaluation tick of a step.
    Tick {
        /// The step.
        step: String,
        /// Its activation.
        activation: u32,
    },
}

impl fmt::Display for TimerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimerKey::Action {
                action,
                activation,
                kind,
            } => write!(f, "a/{activation}/{kind}/{action}"),
            TimerKey::Tick { step, activation } => write!(f, "s/{activation}/tick/{step}"),
        }
    }
}

/// Text that is not a timer key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a timer key: '{text}'")]
pub struct TimerKeyError {
    text: String,
}

impl TimerKeyError {
    fn new(text: &str) -> TimerKeyError {
        TimerKeyError {
            text: crate::envelope::escape_for_mqtt(text).into_owned(),
        }
    }
}

impl FromStr for TimerKey {
    type Err = TimerKeyError;

    fn from_str(text: &str) -> Result<TimerKey, TimerKeyError> {
        let error = || TimerKeyError::new(text);
        let mut parts = text.splitn(4, '/');
        let (Some(class), Some(activation), Some(kind), Some(name)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(error());
        };
        let activation = attempt(activation, text)?;
        match (class, kind) {
            ("a", kind) => Ok(TimerKey::Action {
                action: name.to_owned(),
                activation,
                kind: kind.parse().map_err(|_| error())?,
            }),
            ("s", "tick") => Ok(TimerKey::Tick {
                step: name.to_owned(),
                activation,
            }),
            _ => Err(error()),
        }
    }
}

impl Effect {
    /// The effect that feeds `key` back at `at_ms`.
    pub(crate) fn timer(key: &TimerKey, at_ms: u64) -> Effect {
        Effect::Timer {
            key: key.to_string(),
            at_ms,
        }
    }
}

impl Execution {
    /// The keys of the action timers this state still reacts to: a run's
    /// current timer while it has a deadline. A timer set before whose key
    /// is not among them would be ignored if it fired (another activation,
    /// another kind, or a run that is over), so the runtime may drop it.
    /// Step ticks are not listed (they are never dropped early).
    pub fn armed_timers(&self) -> std::collections::BTreeSet<String> {
        self.actions
            .iter()
            .filter(|(_, run)| run.deadline_ms.is_some())
            .filter_map(|(name, run)| {
                run.timer.map(|kind| {
                    TimerKey::Action {
                        action: name.clone(),
                        activation: run.activation,
                        kind,
                    }
                    .to_string()
                })
            })
            .collect()
    }

    /// A due timer. Ignored while paused (Resume issues every pending
    /// timer again with its deadline shifted), and when it no longer
    /// matches the state: another activation, another kind, or not due
    /// yet (the deadline moved).
    pub(super) fn on_timer(
        &mut self,
        key: &str,
        ctx: EvolutionContext<'_>,
        effects: &mut Vec<Effect>,
    ) {
        if self.paused_at_ms.is_some() {
            return;
        }
        let Ok(key) = key.parse::<TimerKey>() else {
            return;
        };
        match key {
            TimerKey::Tick { step, activation } => self.on_tick(step, activation, ctx, effects),
            TimerKey::Action {
                action,
                activation,
                kind,
            } => self.on_action_timer(&action, activation, kind, ctx, effects),
        }
    }

    /// A step's re-evaluation tick: the next one, while the step is in the
    /// same activation (the transitions are looked at after every input).
    fn on_tick(
        &mut self,
        step: String,
        activation: u32,
        ctx: EvolutionContext<'_>,
        effects: &mut Vec<Effect>,
    ) {
        if self
            .active
            .get(&step)
            .is_some_and(|r| r.activation == activation)
        {
            effects.push(Effect::timer(
                &TimerKey::Tick { step, activation },
                ctx.now_ms + TICK_MS,
            ));
        }
    }

    fn on_action_timer(
        &mut self,
        name: &str,
        activation: u32,
        kind: TimerKind,
        ctx: EvolutionContext<'_>,
        effects: &mut Vec<Effect>,
    ) {
        let Some(action) = ctx.recipe.action(name) else {
            return;
        };
        let Some(run) = self.actions.get(name).cloned() else {
            return;
        };
        let due = run.deadline_ms.is_some_and(|d| d <= ctx.now_ms);
        if run.activation != activation || !due || run.timer != Some(kind) {
            return; // stale or superseded
        }
        match (kind, run.state) {
            (TimerKind::Delay, ActionState::Scheduled) => {
                let step_active = self
                    .active
                    .get(&action.step)
                    .is_some_and(|s| s.activation == activation);
                if step_active {
                    self.dispatch(action, activation, 1, ctx, effects);
                } else if let Some(r) = self.actions.get_mut(name) {
                    r.cancel();
                }
            }
            (TimerKind::Backoff(_), ActionState::Scheduled) => {
                self.dispatch(action, activation, run.attempt + 1, ctx, effects);
            }
            (TimerKind::Timeout(_), ActionState::Running) => {
                let awaited = if action.interaction == Interaction::PushCommand {
                    "result"
                } else {
                    "event"
                };
                let reason = || {
                    format!(
                        "action '{name}' got no {awaited} within {} s ({} attempt{})",
                        action.timeout.as_secs_f64(),
                        run.attempt,
                        if run.attempt == 1 { "" } else { "s" }
                    )
                };
                self.retry_or_fail(action, &run, reason, ctx, effects);
            }
            (TimerKind::Limit, ActionState::Running) => {
                if let Some(r) = self.actions.get_mut(name) {
                    r.cancel();
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_text_of_a_timer_key_is_the_stored_format() {
        let action = |kind| TimerKey::Action {
            action: "clamp".into(),
            activation: 1,
            kind,
        };
        // Captured from the code before `TimerKey` existed.
        for (key, text) in [
            (action(TimerKind::Delay), "a/1/delay/clamp"),
            (action(TimerKind::Limit), "a/1/limit/clamp"),
            (action(TimerKind::Backoff(2)), "a/1/backoff:2/clamp"),
            (action(TimerKind::Timeout(1)), "a/1/timeout:1/clamp"),
            (
                TimerKey::Tick {
                    step: "press".into(),
                    activation: 3,
                },
                "s/3/tick/press",
            ),
        ] {
            assert_eq!(key.to_string(), text);
            assert_eq!(text.parse::<TimerKey>(), Ok(key));
        }
        assert_eq!(
            "a/2/delay/a/b".parse::<TimerKey>(),
            Ok(TimerKey::Action {
                action: "a/b".into(),
                activation: 2,
                kind: TimerKind::Delay
            }),
            "the name comes last and keeps its slashes"
        );
    }

    #[test]
    fn text_that_is_not_a_timer_key_is_refused() {
        for text in [
            "",
            "a/1/delay",
            "x/1/delay/clamp",
            "a/one/delay/clamp",
            "a/01/delay/clamp",
            "a/1/later/clamp",
            "a/1/timeout:/clamp",
            "a/1/timeout:x/clamp",
            "s/1/delay/press",
        ] {
            assert!(text.parse::<TimerKey>().is_err(), "{text}");
        }
    }

    #[test]
    fn a_timer_kind_is_stored_as_its_text() {
        let json = serde_json::to_string(&Some(TimerKind::Timeout(2))).unwrap();
        assert_eq!(json, "\"timeout:2\"");
        let back: Option<TimerKind> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Some(TimerKind::Timeout(2)));
        assert!(serde_json::from_str::<TimerKind>("\"soon\"").is_err());
    }

    fn kind() -> impl Strategy<Value = TimerKind> {
        prop_oneof![
            Just(TimerKind::Delay),
            Just(TimerKind::Limit),
            any::<u32>().prop_map(TimerKind::Backoff),
            any::<u32>().prop_map(TimerKind::Timeout),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn a_timer_key_reads_back_from_its_text(
            name in "\\PC{0,12}",
            activation in any::<u32>(),
            kind in kind(),
            tick in any::<bool>(),
        ) {
            let key = if tick {
                TimerKey::Tick { step: name, activation }
            } else {
                TimerKey::Action { action: name, activation, kind }
            };
            prop_assert_eq!(key.to_string().parse::<TimerKey>(), Ok(key));
        }
    }
}
