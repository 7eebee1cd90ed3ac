//! Results and events from equipment to the job they belong to: a result
//! by the command id its correlation carries, an event to the job it
//! names, else the oldest job waiting for it, else kept as an early event
//! (atomically, `redis/lua/early_push.lua`).

use super::early::ScopeEarly;
use super::store::Stored;
use super::{now_ms, Engine, EngineError, SCOPE_EARLY_EVENTS};
use crate::envelope::CloudEvent;
use crate::error::HandlerError;
use crate::processor::{Meta, State};
use crate::redis::scripts::EARLY_PUSH;
use crate::sfc::exec::{self, Execution, Input};
use crate::sfc::recipe::{Interaction, Recipe};
use redis::AsyncCommands;
use serde_json::Value;
use tracing::debug;

/// The deadline (ms) of a received message: the earlier of its
/// `expirytime` and `now` plus its `expiryinterval` (the MQTT Message
/// Expiry Interval, which the broker counts down while it holds the
/// message, so it is the time left on arrival).
fn deadline_of(ev: &CloudEvent, now: u64) -> Option<u64> {
    let by_time = ev
        .expirytime
        .map(|t| u64::try_from(t.timestamp_millis()).unwrap_or(0));
    let by_interval = ev
        .expiryinterval
        .map(|s| now.saturating_add(u64::from(s) * 1000));
    match (by_time, by_interval) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whether the execution has a `pull_event` action waiting right now that
/// takes an event of `type_id` from `equipment`.
fn waits_for(e: &Execution, recipe: &Recipe, type_id: &str, equipment: Option<&str>) -> bool {
    !e.is_finished()
        && recipe.actions.iter().any(|a| {
            a.interaction == Interaction::PullEvent
                && a.type_id == type_id
                && exec::selector_takes(a.equipment.as_deref(), equipment)
                && e.actions
                    .get(&a.name)
                    .is_some_and(|r| r.state == exec::ActionState::Running)
        })
}

/// `source` and `id` of an event: what makes a redelivery the same event.
fn event_identity(ev: &CloudEvent) -> String {
    format!("{}\u{1f}{}", ev.source, ev.id)
}

/// The `equipment` processor's only handler: every result and event.
pub(super) async fn on_equipment_message(
    ev: CloudEvent,
    _meta: Meta,
    State(engine): State<Engine>,
) -> Result<(), HandlerError> {
    engine.route(&ev).await.map_err(HandlerError::from)
}

impl Engine {
    /// Routes a result or event from equipment to its job.
    pub(super) async fn route(&self, ev: &CloudEvent) -> Result<(), EngineError> {
        let now = now_ms();
        let expires_ms = deadline_of(ev, now);
        if expires_ms.is_some_and(|x| x <= now) {
            // The transport drops what expired before it was handled; this
            // is for [`Engine::deliver`] callers and redelivered handling.
            debug!(ty = %ev.ty, id = %ev.id, "expired result or event ignored");
            return Ok(());
        }
        // Matched by the Correlation Data bytes the command carried, never
        // by their rendering: a device may echo only the bytes, and a
        // 16-byte command id then renders as a UUID (wire contract §8).
        let correlation = ev
            .correlationid
            .as_ref()
            .map(|c| c.bytes_as_str().unwrap_or(c.as_str()).to_owned());
        if let Some((scope, job, _, _)) = correlation.as_deref().and_then(exec::parse_command_id) {
            // The command id names the action (and its activation): a
            // result completes that action, whichever equipment sends it.
            let outcome = match &ev.mdcserrorkind {
                Some(kind) => Err(format!(
                    "{kind}: {}",
                    ev.mdcserrormessage.as_deref().unwrap_or("")
                )),
                None => Ok(ev.data_as::<Value>().unwrap_or(Value::Null)),
            };
            return self
                .apply(
                    &scope,
                    &job,
                    Input::Result {
                        command_id: correlation.unwrap_or_default(),
                        outcome,
                    },
                )
                .await;
        }
        let Some(scope) = ev.scope().map(str::to_owned) else {
            debug!(ty = %ev.ty, "equipment event without subject ignored");
            return Ok(());
        };
        let equipment = exec::equipment_of(ev.subject.as_deref());
        let early = ScopeEarly {
            type_id: ev.ty.clone(),
            job: correlation.clone(),
            data: ev.data_as::<Value>().unwrap_or(Value::Null),
            at_ms: now,
            id: Some(event_identity(ev)),
            equipment: equipment.clone(),
            expires_ms,
        };
        // The job named by the correlation id if it runs (the common case,
        // one read), else the oldest job of the scope waiting for this
        // type from this equipment, else keep it (atomically, see
        // `early_push.lua`).
        if let Some(named) = &correlation {
            if self
                .apply_if_running(&scope, named, early.clone().input())
                .await?
            {
                return Ok(());
            }
        }
        let named = correlation.clone().unwrap_or_default();
        let text = serde_json::to_string(&early)?;
        let mut c = self.conn();
        let verdict: String = EARLY_PUSH
            .key(self.keys().exec(&scope, &named))
            .key(self.keys().waiting(&scope, &ev.ty))
            .key(self.keys().early(&scope))
            .arg(text)
            .arg(SCOPE_EARLY_EVENTS)
            .invoke_async(&mut c)
            .await?;
        let job = match verdict.as_str() {
            "EXEC" => named,
            "WAITING" => match self
                .waiting_job(&scope, &ev.ty, equipment.as_deref())
                .await?
            {
                Some(j) => j,
                None => return Ok(()),
            },
            _ => {
                debug!(scope, ty = %ev.ty, "event kept until a job waits for it");
                return Ok(());
            }
        };
        self.apply(&scope, &job, early.input()).await
    }

    /// Of the jobs waiting for events of `type_id` (oldest first), the
    /// first with a pull action waiting right now whose `Equipment`
    /// selector takes `equipment`; else the oldest, which keeps the event
    /// with its own early events.
    async fn waiting_job(
        &self,
        scope: &str,
        type_id: &str,
        equipment: Option<&str>,
    ) -> Result<Option<String>, EngineError> {
        /// Waiting jobs looked at at most per event.
        const CANDIDATES: isize = 32;
        let mut c = self.conn();
        let jobs: Vec<String> = c
            .zrange(self.keys().waiting(scope, type_id), 0, CANDIDATES - 1)
            .await?;
        for j in &jobs {
            let Some(Stored {
                exec: e,
                recipe: recipe_json,
                ..
            }) = self.load(scope, j).await?
            else {
                continue;
            };
            let Ok(compiled) = self.compiled(&recipe_json) else {
                continue;
            };
            if waits_for(&e, &compiled.recipe, type_id, equipment) {
                return Ok(Some(j.clone()));
            }
        }
        Ok(jobs.into_iter().next())
    }
}
