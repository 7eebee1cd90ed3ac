//! The engine's storage of execution states: load, the compare-and-swap
//! write of a new state with its timers and work items
//! (`redis/lua/exec_apply.lua`), and the cache of compiled recipes.

use super::work::WorkItem;
use super::{Engine, EngineError};
use crate::redis::scripts::EXEC_APPLY;
use crate::sfc::exec::{self, Effect, Execution};
use crate::sfc::net::Net;
use crate::sfc::recipe::{Interaction, Recipe};
use redis::AsyncCommands;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// Compiled recipes kept at most (the cache is cleared when full).
const CACHED_RECIPES: usize = 1000;

/// A recipe parsed, validated and compiled once, shared by every job that
/// runs it.
pub(super) struct Compiled {
    pub(super) recipe: Recipe,
    pub(super) net: Net,
}

/// A job's stored execution: its version (for the compare-and-swap), the
/// state, and the recipe it runs (JSON, as stored).
pub(super) struct Stored {
    pub(super) version: u64,
    pub(super) exec: Execution,
    pub(super) recipe: String,
}

/// One compare-and-swap write of a job's execution state with its effects.
pub(super) struct Write<'a> {
    pub(super) scope: &'a str,
    /// The version read; nothing is written if the state moved since (0: it
    /// must not exist yet).
    pub(super) expected: u64,
    pub(super) exec: &'a Execution,
    /// The recipe, stored with a new execution only.
    pub(super) recipe: Option<&'a str>,
    /// Timers are scheduled, the rest become work items.
    pub(super) effects: &'a [Effect],
    /// The event types the job waited for before and waits for after
    /// (its membership in the scope's `waiting:{type}` sets).
    pub(super) waiting_before: &'a BTreeSet<String>,
    pub(super) waiting_after: &'a BTreeSet<String>,
}

/// The pull event types a job's execution waits for right now.
pub(super) fn waiting_types(e: &Execution, recipe: &Recipe) -> BTreeSet<String> {
    if e.is_finished() {
        return BTreeSet::new();
    }
    recipe
        .actions
        .iter()
        .filter(|a| {
            a.interaction == Interaction::PullEvent
                && e.actions
                    .get(&a.name)
                    .is_some_and(|r| r.state == exec::ActionState::Running)
        })
        .map(|a| a.type_id.clone())
        .collect()
}

/// The work items of `job`'s effects, in order (timers are no work items:
/// they are scheduled).
fn work_items(job: &str, effects: &[Effect]) -> Vec<WorkItem> {
    effects
        .iter()
        .filter_map(|e| {
            Some(match e {
                Effect::Dispatch {
                    command_id,
                    action,
                    type_id,
                    equipment,
                    parameters,
                    attempt,
                } => WorkItem::Dispatch {
                    job: job.to_owned(),
                    command_id: command_id.clone(),
                    action: action.clone(),
                    type_id: type_id.clone(),
                    equipment: equipment.clone(),
                    parameters: parameters.clone(),
                    attempt: *attempt,
                },
                Effect::StepEntered { step, activation }
                | Effect::StepLeft { step, activation } => WorkItem::Progress {
                    job: job.to_owned(),
                    step: step.clone(),
                    activation: *activation,
                    entered: matches!(e, Effect::StepEntered { .. }),
                },
                Effect::Finished(_) => WorkItem::Finished {
                    job: job.to_owned(),
                },
                Effect::Timer { .. } => return None,
            })
        })
        .collect()
}

impl Engine {
    /// The compiled recipe of `recipe_json`, from the cache.
    pub(super) fn compiled(&self, recipe_json: &str) -> Result<Arc<Compiled>, String> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        recipe_json.hash(&mut h);
        let k = h.finish();
        let mut cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.get(&k) {
            return Ok(c.clone());
        }
        let value: serde_json::Value =
            serde_json::from_str(recipe_json).map_err(|e| e.to_string())?;
        let recipe = Recipe::parse(&value).map_err(|e| e.to_string())?;
        let net = Net::compile(&recipe).map_err(|e| e.to_string())?;
        let c = Arc::new(Compiled { recipe, net });
        if cache.len() > CACHED_RECIPES {
            cache.clear();
        }
        cache.insert(k, c.clone());
        Ok(c)
    }

    /// The stored execution of `job`, if it has one.
    pub(super) async fn load(&self, scope: &str, job: &str) -> Result<Option<Stored>, EngineError> {
        let mut c = self.conn();
        let h: HashMap<String, String> = c.hgetall(self.keys().exec(scope, job)).await?;
        if h.is_empty() {
            return Ok(None);
        }
        let corrupt = |reason: String| EngineError::Corrupt {
            scope: scope.to_owned(),
            job: job.to_owned(),
            reason,
        };
        let version = h
            .get("v")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| corrupt("no version".into()))?;
        let exec: Execution = serde_json::from_str(h.get("doc").map_or("", String::as_str))
            .map_err(|e| corrupt(e.to_string()))?;
        let recipe = h
            .get("recipe")
            .cloned()
            .ok_or_else(|| corrupt("no recipe".into()))?;
        Ok(Some(Stored {
            version,
            exec,
            recipe,
        }))
    }

    /// The compare-and-swap write of a new state with its effects: `true`
    /// if it was written, `false` if the state moved since it was read.
    pub(super) async fn write(&self, w: Write<'_>) -> Result<bool, EngineError> {
        let Write {
            scope,
            expected,
            exec,
            recipe,
            effects,
            waiting_before,
            waiting_after,
        } = w;
        let job = &exec.job;
        let doc = serde_json::to_string(exec)?;
        let mut inv = EXEC_APPLY.prepare_invoke();
        inv.key(self.keys().exec(scope, job))
            .key(self.keys().timers(scope))
            .key(self.keys().work(scope));
        let mut waiting_ops = Vec::new();
        for t in waiting_after.difference(waiting_before) {
            waiting_ops.push((t, "add"));
        }
        for t in waiting_before.difference(waiting_after) {
            waiting_ops.push((t, "rem"));
        }
        for (t, _) in &waiting_ops {
            inv.key(self.keys().waiting(scope, t));
        }
        inv.arg(expected)
            .arg(doc)
            .arg(recipe.unwrap_or(""))
            .arg(job);
        let timers: Vec<(&String, u64)> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Timer { key, at_ms } => Some((key, *at_ms)),
                _ => None,
            })
            .collect();
        inv.arg(timers.len());
        for (k, at) in timers {
            inv.arg(k).arg(at);
        }
        let items = work_items(job, effects)
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()?;
        inv.arg(items.len());
        for i in items {
            inv.arg(i);
        }
        for (_, op) in &waiting_ops {
            inv.arg(*op).arg(exec.started_ms);
        }
        let mut c = self.conn();
        let (tag, _v): (String, u64) = inv.invoke_async(&mut c).await?;
        Ok(tag == "OK")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effects_become_work_items_in_order_and_timers_do_not() {
        let effects = vec![
            Effect::StepEntered {
                step: "s".into(),
                activation: 2,
            },
            Effect::Timer {
                key: "k".into(),
                at_ms: 5,
            },
            Effect::StepLeft {
                step: "s".into(),
                activation: 2,
            },
        ];
        let items = work_items("j", &effects);
        assert_eq!(
            items,
            vec![
                WorkItem::Progress {
                    job: "j".into(),
                    step: "s".into(),
                    activation: 2,
                    entered: true
                },
                WorkItem::Progress {
                    job: "j".into(),
                    step: "s".into(),
                    activation: 2,
                    entered: false
                },
            ]
        );
    }
}
