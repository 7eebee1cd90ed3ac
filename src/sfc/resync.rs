//! Change entries the engine never read: reconciling a scope from the
//! stored job states.
//!
//! The job change streams are capped (`jobs.change_stream_max_len`). An
//! engine whose consumer group fell more than the cap behind (every replica
//! down, or a long backlog), or whose pending entries were trimmed before a
//! dead replica's entries could be taken over, would simply never see those
//! changes: a job released meanwhile would never start, an execution whose
//! job was aborted would keep waiting. Two witnesses tell that it happened:
//!
//! - the stream's first entry is ahead of where the group stood at the
//!   previous check (and the stream was trimmed at all): the group's
//!   position only moves forward and a trimmed entry leaves the first entry
//!   ahead of it for good, so comparing with the *previous* observation
//!   catches a gap even when the group has read past it since;
//! - `XAUTOCLAIM` reports pending entries that no longer exist.
//!
//! Then the scope is reconciled in full: every live job, and every job that
//! still has an execution state, is handled as if its change entry had just
//! arrived, with its *current* state (the engine's own change handler, so
//! there is one definition of what a state means for an execution). Stream
//! entries are signals and the stored states the truth, so doing this once
//! too often changes nothing.

use super::engine::{Engine, EngineError, GROUP};
use crate::jobs::store::StoreError;
use crate::jobs::{JobState, MainState};
use redis::AsyncCommands;
use std::collections::{BTreeSet, HashMap};
use tracing::{info, warn};

/// Where the consumer group stood on each scope's change stream at the
/// previous check. Kept across reconnects of the engine's session.
#[derive(Debug, Default)]
pub(super) struct Marks {
    group_at: HashMap<String, String>,
}

/// Escapes a literal for a Redis `MATCH` glob.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

impl Engine {
    /// Looks at each scope's change stream for entries the cap removed
    /// before the group delivered them, and reconciles those scopes.
    pub(super) async fn check_change_gaps(
        &self,
        scopes: &BTreeSet<String>,
        marks: &mut Marks,
    ) -> Result<(), EngineError> {
        for scope in scopes {
            let key = self.keys().changes(scope);
            let mut c = self.conn();
            // The group first, then the stream: a trim after this read of
            // the group is seen by the next check.
            let groups: redis::streams::StreamInfoGroupsReply = match c.xinfo_groups(&key).await {
                Ok(g) => g,
                Err(e) if e.to_string().contains("no such key") => continue,
                Err(e) => return Err(e.into()),
            };
            let Some(group) = groups.groups.into_iter().find(|g| g.name == GROUP) else {
                continue;
            };
            let Some(info) = crate::jobs::store::stream_info(&mut c, &key).await? else {
                continue;
            };
            let now = group.last_delivered_id;
            let before = marks
                .group_at
                .get(scope)
                .cloned()
                .unwrap_or_else(|| now.clone());
            if info.lost_after(&before) {
                // Entries the group has not delivered yet and the cap
                // removed, when the group has not moved past them.
                let lost = group
                    .entries_read
                    .filter(|_| info.lost_after(&now))
                    .map(|read| info.trimmed().saturating_sub(read as u64));
                warn!(
                    scope,
                    lost = ?lost,
                    group_at = %before,
                    first_entry = info.first.as_deref().unwrap_or(""),
                    "job changes were trimmed from the change stream before the SFC engine read them; reconciling every job of the scope"
                );
                self.reconcile_scope(scope).await?;
            }
            // Only after a successful reconcile: a failed one is retried.
            marks.group_at.insert(scope.clone(), now);
        }
        Ok(())
    }

    /// `XAUTOCLAIM` found pending change entries of `scope` that were
    /// trimmed before anyone handled them.
    pub(super) async fn on_trimmed_pending(
        &self,
        scope: &str,
        ids: &[String],
    ) -> Result<(), EngineError> {
        warn!(
            scope,
            lost = ids.len(),
            "pending job changes were trimmed from the change stream before the SFC engine handled them; reconciling every job of the scope"
        );
        self.reconcile_scope(scope).await
    }

    /// Handles every live job of `scope`, and every job that still has an
    /// execution state, as if its latest change entry had just arrived.
    pub(super) async fn reconcile_scope(&self, scope: &str) -> Result<(), EngineError> {
        let store = self.jobs_store();
        let mut ids: BTreeSet<String> = store.live_ids(scope).await?.into_iter().collect();
        // Executions whose job ended or was purged meanwhile.
        let exec_prefix = self.keys().exec_prefix(scope);
        let pattern = format!("{}*", glob_escape(&exec_prefix));
        let mut c = self.conn();
        let mut cursor: u64 = 0;
        loop {
            // The scope's keys share one slot: on a cluster, its owner
            // holds them all.
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500);
            let (next, keys): (u64, Vec<String>) = c.query_at_key(&exec_prefix, &scan).await?;
            ids.extend(
                keys.iter()
                    .filter_map(|k| k.strip_prefix(&exec_prefix))
                    .map(str::to_owned),
            );
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let gone = JobState::new(MainState::EndState, None).key();
        for id in &ids {
            let state = match store.get(scope, id).await {
                Ok(Some(job)) => job.state.key(),
                Ok(None) => gone.clone(), // purged
                Err(StoreError::Corrupt { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            match self.on_change(scope, id, &state).await {
                Ok(()) => {}
                Err(e @ EngineError::Corrupt { .. }) => {
                    warn!(scope, job = %id, error = %e, "job skipped while reconciling");
                }
                Err(e) => return Err(e),
            }
        }
        info!(
            scope,
            jobs = ids.len(),
            "scope reconciled from the stored job states"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::glob_escape;

    #[test]
    fn scopes_with_glob_characters_match_only_themselves() {
        assert_eq!(glob_escape("t:{a*b}:exec:"), "t:{a\\*b}:exec:");
        assert_eq!(glob_escape("[x]?\\"), "\\[x\\]\\?\\\\");
    }
}
