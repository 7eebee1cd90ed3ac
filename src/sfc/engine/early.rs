//! Early events: events that arrived before the job that takes them runs
//! (or waits for them), kept per scope (`P:{S}:early`, capped, each for a
//! while) and adopted by the job when it starts or begins to wait.

use super::Engine;
use super::EngineError;
use crate::sfc::exec::{self, Input};
use crate::sfc::recipe::{Interaction, Recipe};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An event kept at scope level until its job runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ScopeEarly {
    pub(super) type_id: String,
    pub(super) job: Option<String>,
    pub(super) data: Value,
    pub(super) at_ms: u64,
    #[serde(default)]
    pub(super) id: Option<String>,
    /// Its subject below the scope ([`exec::equipment_of`]).
    #[serde(default)]
    pub(super) equipment: Option<String>,
    /// After this instant (ms) it completes nothing.
    #[serde(default)]
    pub(super) expires_ms: Option<u64>,
}

impl ScopeEarly {
    /// The event as an input to the job's execution.
    pub(super) fn input(self) -> Input {
        Input::Event {
            type_id: self.type_id,
            data: self.data,
            id: self.id,
            equipment: self.equipment,
            expires_ms: self.expires_ms,
        }
    }
}

/// Whether the recipe has a `pull_event` action that takes an event of
/// `type_id` from `equipment`.
pub(super) fn recipe_wants(recipe: &Recipe, type_id: &str, equipment: Option<&str>) -> bool {
    recipe.actions.iter().any(|a| {
        a.interaction == Interaction::PullEvent
            && a.type_id == type_id
            && exec::selector_takes(a.equipment.as_deref(), equipment)
    })
}

impl Engine {
    /// Takes the scope's kept events that `wanted` selects and applies them
    /// to `job`, each removed from the list in the write that applies it
    /// (so only one job gets it, and a crash between the two cannot lose
    /// it).
    pub(super) async fn adopt_early(
        &self,
        scope: &str,
        job: &str,
        wanted: impl Fn(&ScopeEarly) -> bool,
    ) -> Result<(), EngineError> {
        for (raw, ev) in self.early_events(scope).await? {
            if !wanted(&ev) {
                continue;
            }
            Box::pin(self.apply_taking(scope, job, ev.input(), Some(&raw))).await?;
        }
        Ok(())
    }

    /// The scope's kept early events (not yet expired), with their raw
    /// list entries. Expired ones are dropped from the list: an expired
    /// event completes nothing.
    async fn early_events(&self, scope: &str) -> Result<Vec<(String, ScopeEarly)>, EngineError> {
        let mut c = self.conn();
        let key = self.keys().early(scope);
        let raw: Vec<String> = c.lrange(&key, 0, -1).await?;
        let now = super::now_ms();
        let mut live = Vec::new();
        let mut expired = redis::pipe();
        let mut any_expired = false;
        for r in raw {
            let Ok(ev) = serde_json::from_str::<ScopeEarly>(&r) else {
                continue;
            };
            if now.saturating_sub(ev.at_ms) < exec::EARLY_EVENT_TTL_MS
                && ev.expires_ms.is_none_or(|x| x > now)
            {
                live.push((r, ev));
            } else {
                expired.lrem(&key, 1, r).ignore();
                any_expired = true;
            }
        }
        if any_expired {
            let _: () = expired.query_async(&mut c).await?;
        }
        Ok(live)
    }
}
