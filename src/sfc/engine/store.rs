//! The engine's storage of execution states: load, the compare-and-swap
//! write of a new state with its timers and work items
//! (`redis/lua/exec_apply.lua`), the cache of compiled recipes, and the
//! cache of the executions this replica wrote last ([`ExecCache`]).

use super::work::{StepChange, WorkItem};
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
/// Executions kept at most by [`ExecCache`] (expired ones dropped, then all,
/// when full): well above the jobs a replica has in flight. A job's entry
/// is dropped when its end was handled, so the cache holds the jobs in
/// flight, not the history.
const CACHED_EXECUTIONS: usize = 4096;

/// The executions this replica wrote last, by (scope, job). A job's next
/// input usually reaches the replica that handled its last one, which then
/// skips reading the state back (one `HGETALL` of the state and its recipe
/// per step). Only the compare-and-swap path uses it: a write from a stale
/// entry finds another version and is retried from Redis, and an input
/// that looks like a no-op against a cached running state is evaluated
/// again against Redis before it is dropped. A finished execution is final,
/// so its cached state is used as it is.
///
/// Entries are used for [`EXEC_CACHE_AGE`] at most: a job id can be reused
/// after its job was purged, and a new execution under it could reach the
/// cached version number; within that time no job can end, be cleared,
/// purged (after `jobs.retention_seconds`), stored again and advanced.
#[derive(Default)]
pub(super) struct ExecCache(std::sync::Mutex<ExecMap>);

/// How long a cached execution is used (see [`ExecCache`]).
const EXEC_CACHE_AGE: std::time::Duration = std::time::Duration::from_secs(5);

type ExecMap = HashMap<(String, String), (std::time::Instant, Stored)>;

impl ExecCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, ExecMap> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The execution of `job` as this replica last wrote it, if that was
    /// recent.
    pub(super) fn get(&self, scope: &str, job: &str) -> Option<Stored> {
        self.lock()
            .get(&(scope.to_owned(), job.to_owned()))
            .filter(|(at, _)| at.elapsed() < EXEC_CACHE_AGE)
            .map(|(_, s)| s.clone())
    }

    /// Remembers what was written. A finished execution never changes
    /// again, so a cached finished state is final (its job end is reported
    /// from it, and inputs after it are dropped without a read).
    pub(super) fn put(&self, scope: &str, stored: Stored) {
        let key = (scope.to_owned(), stored.exec.job.clone());
        let mut m = self.lock();
        if m.len() >= CACHED_EXECUTIONS && !m.contains_key(&key) {
            m.retain(|_, (at, _)| at.elapsed() < EXEC_CACHE_AGE);
            if m.len() >= CACHED_EXECUTIONS {
                m.clear();
            }
        }
        m.insert(key, (std::time::Instant::now(), stored));
    }

    /// Forgets `job` (its cached state proved stale).
    pub(super) fn forget(&self, scope: &str, job: &str) {
        self.lock().remove(&(scope.to_owned(), job.to_owned()));
    }
}

/// A recipe parsed, validated and compiled once, shared by every job that
/// runs it.
pub(super) struct Compiled {
    pub(super) recipe: Recipe,
    pub(super) net: Net,
}

/// A job's stored execution: its version (for the compare-and-swap), the
/// state, and the recipe it runs (JSON, as stored).
#[derive(Clone)]
pub(super) struct Stored {
    pub(super) version: u64,
    pub(super) exec: Execution,
    pub(super) recipe: Arc<str>,
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
    /// Timers the state before had armed and the new one does not
    /// ([`Execution::armed_timers`]): removed in the same write.
    pub(super) disarmed: &'a [&'a String],
    /// The entry of the scope's early-event list this state took: removed
    /// in the same write, or nothing is written if it is gone.
    pub(super) consumed: Option<&'a str>,
    /// The state before (`None` for a new execution): the action runs
    /// that ended in this write are found against it, for the audit trail.
    pub(super) before: Option<&'a Execution>,
}

/// What a [`Engine::write`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Written {
    /// Written; the new version.
    Ok(u64),
    /// Not written: the state moved since it was read.
    Moved,
    /// Not written: the early event it took was taken by another job.
    Gone,
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
/// they are scheduled). Consecutive step changes become one item.
/// Counts the steps a committed write entered and records how long each
/// step it left was active (from the execution's history): once per
/// committed compare-and-swap, whichever replica wrote it.
fn record_steps(i: &crate::metrics::Instruments, exec: &Execution, effects: &[Effect]) {
    for e in effects {
        match e {
            Effect::StepEntered { step, .. } => i.step_entered(step),
            Effect::StepLeft { step, activation } => {
                let took = exec
                    .history()
                    .filter(|r| r.step == *step && r.activation == *activation)
                    .last()
                    .and_then(|r| r.left_ms.map(|l| l.saturating_sub(r.entered_ms)));
                if let Some(ms) = took {
                    i.step_left(step, ms as f64 / 1000.0);
                }
            }
            _ => {}
        }
    }
}

/// The audit entry of one write (`jobs::audit`): the steps entered and
/// left, the dispatches, the action runs that ended since `before` (with
/// the result each took) and the recipe's end; `None` when the write
/// changed none of these (a timer re-armed, an event kept).
fn step_record(
    exec: &Execution,
    before: Option<&Execution>,
    effects: &[Effect],
) -> Option<crate::jobs::audit::StepRecord> {
    use crate::jobs::audit::{ActionDispatch, ActionEnd, StepActivation, StepRecord};
    let mut r = StepRecord::default();
    for e in effects {
        match e {
            Effect::StepEntered { step, activation } => r.entered.push(StepActivation {
                step: step.clone(),
                activation: *activation,
            }),
            Effect::StepLeft { step, activation } => r.left.push(StepActivation {
                step: step.clone(),
                activation: *activation,
            }),
            Effect::Dispatch {
                command_id,
                action,
                attempt,
                ..
            } => r.dispatched.push(ActionDispatch {
                action: action.clone(),
                command_id: command_id.clone(),
                attempt: *attempt,
            }),
            Effect::Finished(status) => {
                r.finished = Some(match status {
                    exec::Status::Failed(why) => format!("Failed: {why}"),
                    other => format!("{other:?}"),
                })
            }
            Effect::Timer { .. } => {}
        }
    }
    for (name, run) in &exec.actions {
        if run.state.is_outstanding() {
            continue;
        }
        let was = before.and_then(|b| b.actions.get(name));
        if was.is_some_and(|w| w.activation == run.activation && w.state == run.state) {
            continue;
        }
        r.actions.push(ActionEnd {
            action: name.clone(),
            state: run.state.name().to_owned(),
            result: (run.state != exec::ActionState::Cancelled)
                .then(|| exec.results.get(name).cloned())
                .flatten(),
        });
    }
    (!r.is_empty()).then_some(r)
}

/// `trace` is the job's trace (its `traceparent`), kept on dispatches.
fn work_items(job: &str, trace: Option<&str>, effects: &[Effect]) -> Vec<WorkItem> {
    let mut items: Vec<WorkItem> = Vec::new();
    for e in effects {
        let item = match e {
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
                trace: trace.map(str::to_owned),
            },
            Effect::StepEntered { step, activation } | Effect::StepLeft { step, activation } => {
                let change = StepChange {
                    step: step.clone(),
                    activation: *activation,
                    entered: matches!(e, Effect::StepEntered { .. }),
                };
                if let Some(WorkItem::Steps { changes, .. }) = items.last_mut() {
                    changes.push(change);
                    continue;
                }
                WorkItem::Steps {
                    job: job.to_owned(),
                    changes: vec![change],
                    trace: trace.map(str::to_owned),
                }
            }
            Effect::Finished(_) => WorkItem::Finished {
                job: job.to_owned(),
            },
            Effect::Timer { .. } => continue,
        };
        items.push(item);
    }
    items
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
            .map(|r| Arc::from(r.as_str()))
            .ok_or_else(|| corrupt("no recipe".into()))?;
        Ok(Some(Stored {
            version,
            exec,
            recipe,
        }))
    }

    /// The compare-and-swap write of a new state with its effects.
    pub(super) async fn write(&self, w: Write<'_>) -> Result<Written, EngineError> {
        let Write {
            scope,
            expected,
            exec,
            recipe,
            effects,
            waiting_before,
            waiting_after,
            disarmed,
            consumed,
            before,
        } = w;
        let job = &exec.job;
        let doc = serde_json::to_string(exec)?;
        let mut inv = EXEC_APPLY.prepare_invoke();
        inv.key(self.keys().exec(scope, job))
            .key(self.keys().timers(scope))
            .key(self.keys().work(scope))
            .key(self.keys().early(scope))
            .key(self.keys().audit(scope, job));
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
            .arg(job)
            .arg(consumed.unwrap_or(""));
        inv.arg(disarmed.len());
        for k in disarmed {
            inv.arg(k.as_str());
        }
        let timers: Vec<(&String, u64)> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Timer { key, at_ms } => Some((key, *at_ms)),
                _ => None,
            })
            .collect();
        inv.arg(timers.len());
        let earliest = timers.iter().map(|(_, at)| *at).min();
        for (k, at) in timers {
            inv.arg(k).arg(at);
        }
        let items = work_items(job, exec.trace(), effects)
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
        // One audit entry per write that changed steps or actions: the
        // single XADD a step costs its trail.
        let audit = self
            .inner
            .settings
            .audit_steps
            .then(|| step_record(exec, before, effects))
            .flatten()
            .map(|r| crate::jobs::store::audit_json(&crate::jobs::audit::AuditEvent::Step(r)));
        inv.arg(audit.unwrap_or_default());
        let mut c = self.conn();
        let (tag, v): (String, u64) = inv.invoke_async(&mut c).await?;
        if let Some(at) = earliest {
            // Set even if the write lost: harmless, the session looks once more.
            self.inner
                .timer_hint
                .fetch_min(at, std::sync::atomic::Ordering::Relaxed);
        }
        if tag == "OK" {
            if let Some(i) = crate::metrics::instruments() {
                record_steps(i, exec, effects);
            }
        }
        Ok(match tag.as_str() {
            "OK" => Written::Ok(v),
            "GONE" => Written::Gone,
            _ => Written::Moved,
        })
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
        let items = work_items("j", None, &effects);
        let change = |entered| StepChange {
            step: "s".into(),
            activation: 2,
            entered,
        };
        assert_eq!(
            items,
            vec![WorkItem::Steps {
                job: "j".into(),
                changes: vec![change(true), change(false)],
                trace: None,
            }],
            "consecutive step changes are one item"
        );
        // A dispatch between step changes keeps its place.
        let effects = vec![
            Effect::StepEntered {
                step: "s".into(),
                activation: 2,
            },
            Effect::Dispatch {
                command_id: "c".into(),
                action: "a".into(),
                type_id: "t".into(),
                equipment: None,
                parameters: serde_json::Map::new(),
                attempt: 1,
            },
            Effect::StepLeft {
                step: "s".into(),
                activation: 2,
            },
        ];
        let items = work_items("j", None, &effects);
        assert_eq!(items.len(), 3);
        assert!(matches!(&items[0], WorkItem::Steps { changes, .. } if changes == &[change(true)]));
        assert!(matches!(&items[1], WorkItem::Dispatch { .. }));
        assert!(
            matches!(&items[2], WorkItem::Steps { changes, .. } if changes == &[change(false)])
        );
    }
}
