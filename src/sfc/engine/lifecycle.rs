//! A job's execution driven by its job's life: started when the job is
//! allowed to start, paused, resumed, stopped and aborted with it (the
//! change stream, see `streams`), and every input applied as one
//! compare-and-swap evolution, retried when it lost a race.

use super::early::recipe_wants;
use super::response::response_json;
use super::store::{waiting_types, Stored, Write, Written};
use super::{now_ms, Engine, EngineError};
use crate::jobs::store::parse_state_key;
use crate::jobs::{Internal, JobState, MainState};
use crate::sfc::exec::{EvolutionContext, Execution, Input};
use crate::sfc::fence;
use redis::AsyncCommands;
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use tracing::{debug, info, warn};

/// Compare-and-swap attempts of one input before it is given up (and its
/// entry retried later): a job's state changes only through its own
/// inputs, so losing this often means a storm, not bad luck.
const CAS_ATTEMPTS: usize = 50;

impl Engine {
    /// [`Engine::apply`], telling whether the job has an execution state.
    pub(super) async fn apply_if_running(
        &self,
        scope: &str,
        job: &str,
        input: Input,
    ) -> Result<bool, EngineError> {
        self.apply_taking(scope, job, input, None).await
    }

    /// [`Engine::apply_if_running`] of an event kept in the scope's early
    /// list (`consumed`, its raw entry): the entry is removed in the same
    /// write that applies it, and nothing is written if another job took it
    /// first. An event that changes nothing stays in the list.
    pub(super) async fn apply_taking(
        &self,
        scope: &str,
        job: &str,
        input: Input,
        consumed: Option<&str>,
    ) -> Result<bool, EngineError> {
        // The first attempt starts from the state this replica wrote last,
        // if it has it; what it cannot write, or would drop, is tried again
        // from Redis.
        let mut cached = self.inner.execs.get(scope, job);
        for _ in 0..CAS_ATTEMPTS {
            let from_cache = cached.is_some();
            let stored = match cached.take() {
                Some(s) => Some(s),
                None => self.load(scope, job).await?,
            };
            let Some(Stored {
                version: v,
                exec: mut e,
                recipe: recipe_json,
            }) = stored
            else {
                debug!(
                    scope,
                    job,
                    ?input,
                    "no execution for this job; input ignored"
                );
                return Ok(false);
            };
            crate::telemetry::record_job_ids(e.trace());
            if e.is_finished() {
                // Final, cached or not.
                return Ok(true);
            }
            let c = self
                .compiled(&recipe_json)
                .map_err(|reason| EngineError::Corrupt {
                    scope: scope.to_owned(),
                    job: job.to_owned(),
                    reason,
                })?;
            let before_state = e.clone();
            let waiting_before = waiting_types(&e, &c.recipe);
            let effects = e.apply(
                input.clone(),
                EvolutionContext {
                    recipe: &c.recipe,
                    net: &c.net,
                    now_ms: now_ms(),
                },
            );
            if effects.is_empty() && e == before_state {
                if from_cache {
                    continue;
                }
                return Ok(true);
            }
            let waiting_after = waiting_types(&e, &c.recipe);
            let armed_before = before_state.armed_timers();
            let armed_after = e.armed_timers();
            let disarmed: Vec<&String> = armed_before.difference(&armed_after).collect();
            let written = self
                .write(Write {
                    scope,
                    expected: v,
                    exec: &e,
                    recipe: None,
                    effects: &effects,
                    waiting_before: &waiting_before,
                    waiting_after: &waiting_after,
                    disarmed: &disarmed,
                    consumed,
                    before: Some(&before_state),
                })
                .await;
            let written = match written {
                Ok(w) => w,
                Err(err) => {
                    // Whether it was written is unknown.
                    self.inner.execs.forget(scope, job);
                    return Err(err);
                }
            };
            let version = match written {
                Written::Ok(version) => version,
                Written::Moved => {
                    self.inner.execs.forget(scope, job);
                    continue;
                }
                Written::Gone => return Ok(true),
            };
            // Committed: this replica records what the evolution did in
            // the job's trace.
            crate::telemetry::evolved(Some(&before_state), &e, Some(&input), &effects, &c.recipe);
            self.inner.execs.put(
                scope,
                Stored {
                    version,
                    exec: e.clone(),
                    recipe: recipe_json.clone(),
                },
            );
            {
                // It waits for new event types now: events of those types
                // kept for no job in particular are its.
                let new: BTreeSet<String> =
                    waiting_after.difference(&waiting_before).cloned().collect();
                if !new.is_empty() {
                    self.adopt_early(scope, job, |ev| {
                        ev.job.is_none()
                            && new.contains(&ev.type_id)
                            && recipe_wants(&c.recipe, &ev.type_id, ev.equipment.as_deref())
                    })
                    .await?;
                }
                return Ok(true);
            }
        }
        Err(EngineError::Contended {
            job: job.to_owned(),
        })
    }

    /// Starts a job that entered AllowedToStart, if its work master carries
    /// an SFC recipe: Running first, then the execution state (both steps
    /// idempotent, so a crash in between is repaired by the redelivered
    /// change).
    async fn start(&self, scope: &str, id: &str) -> Result<(), EngineError> {
        // This replica created the execution moments ago (the Running
        // change of its own Begin arrives after it): nothing to read.
        if self.inner.execs.get(scope, id).is_some() {
            return Ok(());
        }
        let store = self.inner.jobs.store();
        let Some(job) = store.get(scope, id).await? else {
            return Ok(());
        };
        let allowed = job.state.main == MainState::AllowedToStart;
        let running = job.state.main == MainState::Running;
        if !allowed && !running {
            return Ok(());
        }
        // A job that is not Running yet has no execution (Begin comes
        // first); one that is may have one already (a redelivered change,
        // or a replica that died after creating it): the events kept for it
        // are adopted now, in case that replica died before it did.
        if running {
            if let Some(stored) = self.load(scope, id).await? {
                let Ok(compiled) = self.compiled(&stored.recipe) else {
                    return Ok(());
                };
                return self.adopt_kept(scope, id, &compiled.recipe).await;
            }
        }
        let order: Value = serde_json::from_str(job.order.get()).unwrap_or(Value::Null);
        let Some(wm_id) = order["WorkMasterID"][0]["ID"].as_str() else {
            return Ok(()); // no work master: a hand-written executor's job
        };
        let Some(wm) = store.work_master(scope, wm_id).await? else {
            return Ok(());
        };
        let wm: Value = serde_json::from_str(&wm).unwrap_or(Value::Null);
        if !super::super::source::carries_recipe(&wm) {
            return Ok(()); // not an SFC recipe: left alone
        }
        let recipe_json = wm["data"].to_string();
        // Running first; its status event goes out beside the execution's
        // write (below), ahead of the first command either way.
        let mut begun = None;
        if allowed {
            let e = self
                .inner
                .jobs
                .internal_unsent(
                    scope,
                    id,
                    Internal::Begin,
                    &format!("sfc/begin/{id}/{}", job.version),
                )
                .await?;
            if e.status != crate::jobs::ReturnStatus::NoError {
                return Ok(()); // someone else moved it
            }
            begun = Some(e);
        }
        let running_event = async {
            if let Some(b) = &begun {
                self.inner.jobs.send_status(scope, b).await;
            }
        };
        let compiled = match self.compiled(&recipe_json) {
            Ok(c) => c,
            Err(reason) => {
                // Stored before validation existed, or edited by hand.
                warn!(scope, job = id, %reason, "recipe invalid; failing the job");
                running_event.await;
                let response = response_json(
                    id,
                    &Execution::failed(id, scope, &reason, now_ms()),
                    &JobState::new(MainState::Aborted, None),
                );
                let raw = serde_json::value::to_raw_value(&response)?;
                self.inner
                    .jobs
                    .internal(
                        scope,
                        id,
                        Internal::Fail,
                        Some(&raw),
                        &format!("sfc/invalid/{id}"),
                    )
                    .await?;
                return Ok(());
            }
        };
        let mut params = Map::new();
        if let Some(list) = order["JobOrderParameters"].as_array() {
            for p in list {
                if let Some(k) = p["ID"].as_str() {
                    params.insert(k.to_owned(), p["Value"].clone());
                }
            }
        }
        let ctx = EvolutionContext {
            recipe: &compiled.recipe,
            net: &compiled.net,
            now_ms: now_ms(),
        };
        let (mut e, effects) = Execution::start(id, scope, params, ctx);
        // The job's trace: a child of the MES command that made it
        // startable, kept with the execution for every replica.
        e.set_trace(crate::telemetry::job_started(
            scope,
            id,
            job.trace.as_deref(),
        ));
        crate::telemetry::record_job_ids(e.trace());
        let waiting = waiting_types(&e, &compiled.recipe);
        let none_before = BTreeSet::new();
        let (written, ()) = tokio::join!(
            self.write(Write {
                scope,
                expected: 0,
                exec: &e,
                recipe: Some(&recipe_json),
                effects: &effects,
                waiting_before: &none_before,
                waiting_after: &waiting,
                disarmed: &[],
                consumed: None,
                before: None,
            }),
            running_event
        );
        let Written::Ok(version) = written? else {
            return Ok(()); // another replica created it
        };
        crate::telemetry::evolved(None, &e, None, &effects, &compiled.recipe);
        info!(
            scope,
            job = id,
            steps = compiled.recipe.steps.len(),
            "recipe started"
        );
        self.adopt_kept(scope, id, &compiled.recipe).await?;
        // Cached only now: a start whose adoption failed is retried in
        // full (the cache would make it skip the adoption).
        self.inner.execs.put(
            scope,
            Stored {
                version,
                exec: e.clone(),
                recipe: std::sync::Arc::from(recipe_json.as_str()),
            },
        );
        Ok(())
    }

    /// Adopts the events kept before the job ran: those naming it, and
    /// unaddressed ones that one of its pull actions takes (type and
    /// equipment; once the execution exists no new event for it is kept,
    /// see `early_push.lua`).
    async fn adopt_kept(
        &self,
        scope: &str,
        id: &str,
        recipe: &crate::sfc::recipe::Recipe,
    ) -> Result<(), EngineError> {
        self.adopt_early(scope, id, |ev| match &ev.job {
            Some(j) => j == id,
            None => recipe_wants(recipe, &ev.type_id, ev.equipment.as_deref()),
        })
        .await
    }

    /// One entry of a scope's job change stream (also what reconciling a
    /// scope does per job with its current state, see `super::resync`).
    pub(in crate::sfc) async fn on_change(
        &self,
        scope: &str,
        job: &str,
        state: &str,
    ) -> Result<(), EngineError> {
        let Ok(state) = parse_state_key(state) else {
            return Ok(()); // purge entries carry no state
        };
        match state.main {
            MainState::AllowedToStart => self.start(scope, job).await,
            MainState::Running => {
                self.start(scope, job).await?; // repairs a crash after Begin
                self.apply(scope, job, Input::Resume).await?;
                // Commands held back while it was Interrupted go out now.
                let store = self.inner.jobs.store();
                let n = fence::resume_held(store, scope, job, &self.keys().work(scope)).await?;
                if n > 0 {
                    debug!(scope, job, commands = n, "held commands released");
                }
                Ok(())
            }
            MainState::Interrupted => self.apply(scope, job, Input::Pause).await,
            MainState::Ended | MainState::Aborted => {
                let input = if state.main == MainState::Ended {
                    Input::Stop
                } else {
                    Input::Abort
                };
                self.apply(scope, job, input).await?;
                self.inner.execs.forget(scope, job);
                // Held commands are never sent now.
                Ok(fence::forget_held(self.inner.jobs.store(), scope, job).await?)
            }
            MainState::EndState => {
                let mut c = self.conn();
                self.inner.execs.forget(scope, job);
                let _: () = c.del(self.keys().exec(scope, job)).await?;
                Ok(fence::forget_held(self.inner.jobs.store(), scope, job).await?)
            }
            _ => Ok(()),
        }
    }
}
