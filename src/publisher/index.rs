//! A scope's state index kept in memory (wire contract §4): built once
//! when the publisher adopts the scope, then updated from the jobs each
//! change batch read anyway, so publishing it costs no Redis read however
//! many jobs the scope holds.
//!
//! Each entry is kept serialised: publishing joins them, it does not
//! serialise every job again.

use super::IndexEntry;
use crate::jobs::state::MainState;
use crate::jobs::store::StoredJob;
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Entries per step of the publish interval: an index of up to this many
/// jobs is published at most once per interval, a larger one once per
/// interval per started thousand jobs.
const ENTRIES_PER_INTERVAL: usize = 1000;

/// The live jobs of one scope, as the state index lists them.
#[derive(Debug, Default)]
pub(super) struct ScopeIndex {
    /// Job id → its entry, serialised (`{"has_result":…,"job_order_id":…,"state":[…]}`).
    entries: BTreeMap<String, String>,
    /// Changed since the last publish.
    dirty: bool,
    /// Earliest moment of the next publish.
    next_publish: Option<Instant>,
}

/// The state-index message body; `jobs` is the entries joined.
#[derive(Serialize)]
struct Body<'a> {
    seq: u64,
    scope: &'a str,
    published_at: chrono::DateTime<chrono::Utc>,
    jobs: &'a RawValue,
}

impl ScopeIndex {
    /// An index holding `entries` (read in full from Redis), due for
    /// publishing at once.
    pub(super) fn from_entries(entries: Vec<IndexEntry>) -> Self {
        let mut index = ScopeIndex {
            dirty: true,
            ..ScopeIndex::default()
        };
        for e in entries {
            index.put(e);
        }
        index
    }

    fn put(&mut self, e: IndexEntry) {
        let json = serde_json::to_string(&e).unwrap_or_default();
        self.entries.insert(e.job_order_id, json);
    }

    /// Takes the jobs of a change batch: `ids` changed, `jobs` is what
    /// Redis holds for them now (a changed id without a job was purged).
    pub(super) fn apply(&mut self, ids: &[String], jobs: &[StoredJob]) {
        for id in ids {
            match jobs.iter().find(|j| &j.id == id) {
                Some(j) if j.state.main != MainState::EndState => self.put(IndexEntry {
                    job_order_id: j.id.clone(),
                    state: j.state.to_wire(),
                    has_result: j.response.is_some(),
                }),
                _ => {
                    self.entries.remove(id);
                }
            }
        }
        self.dirty = true;
    }

    /// Jobs listed.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the index changed and its interval has passed at `now`.
    pub(super) fn due(&self, now: Instant) -> bool {
        self.dirty && self.next_publish.is_none_or(|t| t <= now)
    }

    /// Whether the index changed since it was last published.
    pub(super) fn changed(&self) -> bool {
        self.dirty
    }

    /// When a changed index becomes due, `now` at the latest (`None`:
    /// nothing changed).
    pub(super) fn due_at(&self, now: Instant) -> Option<Instant> {
        self.dirty
            .then(|| self.next_publish.unwrap_or(now))
    }

    /// The message body for `seq`; marks the index published at `now`, so
    /// the next publish waits `interval` (stretched for large indexes, see
    /// [`publish_interval`]).
    pub(super) fn publish(
        &mut self,
        scope: &str,
        seq: u64,
        now: Instant,
        interval: Duration,
    ) -> Vec<u8> {
        let mut jobs = String::with_capacity(
            2 + self.entries.values().map(|e| e.len() + 1).sum::<usize>(),
        );
        jobs.push('[');
        for (i, e) in self.entries.values().enumerate() {
            if i > 0 {
                jobs.push(',');
            }
            jobs.push_str(e);
        }
        jobs.push(']');
        let body = match RawValue::from_string(jobs) {
            Ok(raw) => serde_json::to_vec(&Body {
                seq,
                scope,
                published_at: chrono::Utc::now(),
                jobs: &raw,
            })
            .unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        self.dirty = false;
        self.next_publish = Some(now + publish_interval(interval, self.entries.len()));
        body
    }
}

/// The least time between two publishes of an index of `entries` jobs:
/// `interval` for up to [`ENTRIES_PER_INTERVAL`] jobs, one more `interval`
/// per started thousand beyond, so the bytes a scope's index puts on the
/// broker per second stay bounded however long its history grows (a scope
/// of 20,000 jobs: 20 × `interval`).
pub(super) fn publish_interval(interval: Duration, entries: usize) -> Duration {
    let steps = entries.div_ceil(ENTRIES_PER_INTERVAL).max(1);
    interval.saturating_mul(u32::try_from(steps).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::state::{JobState, SubState};

    fn job(id: &str, state: JobState, response: bool) -> StoredJob {
        StoredJob {
            id: id.into(),
            version: 1,
            order: RawValue::from_string("{}".into()).unwrap(),
            state,
            response: response.then(|| RawValue::from_string("{}".into()).unwrap()),
            cause: None,
        }
    }

    fn body(index: &mut ScopeIndex) -> serde_json::Value {
        let b = index.publish("s", 7, Instant::now(), Duration::ZERO);
        serde_json::from_slice(&b).unwrap()
    }

    #[test]
    fn changes_update_the_listed_jobs_and_the_body_is_a_state_index() {
        let mut index = ScopeIndex::default();
        let ids: Vec<String> = vec!["a".into(), "b".into(), "gone".into()];
        let ready = JobState::new(MainState::AllowedToStart, Some(SubState::Ready));
        let ended = JobState::new(MainState::Ended, Some(SubState::Completed));
        index.apply(&ids, &[job("a", ready, false), job("b", ended, true)]);
        let v = body(&mut index);
        assert_eq!(v["seq"], 7);
        assert_eq!(v["scope"], "s");
        let jobs = v["jobs"].as_array().unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0]["job_order_id"], "a");
        assert_eq!(jobs[1]["job_order_id"], "b");
        assert_eq!(jobs[1]["has_result"], true);
        // The generated type reads it back: the shape is the contract's.
        let typed: crate::models::mes_publishing::StateIndex =
            serde_json::from_value(v).unwrap();
        assert_eq!(typed.jobs.len(), 2);

        // `a` reaches EndState, `b` is purged: neither is listed any more.
        let end = JobState::new(MainState::EndState, None);
        index.apply(&ids[..2], &[job("a", end, false)]);
        assert_eq!(index.len(), 0);
        assert_eq!(body(&mut index)["jobs"], serde_json::json!([]));
    }

    #[test]
    fn a_published_index_waits_its_interval_and_large_indexes_wait_longer() {
        let t0 = Instant::now();
        let mut index = ScopeIndex::from_entries(Vec::new());
        assert!(index.due(t0), "a new index is published at once");
        index.publish("s", 1, t0, Duration::from_millis(50));
        assert!(!index.due(t0 + Duration::from_secs(1)), "nothing changed");
        index.apply(&["x".into()], &[]);
        assert!(!index.due(t0 + Duration::from_millis(49)));
        assert!(index.due(t0 + Duration::from_millis(50)));

        let i = Duration::from_millis(50);
        assert_eq!(publish_interval(i, 0), i);
        assert_eq!(publish_interval(i, 1000), i);
        assert_eq!(publish_interval(i, 1001), i * 2);
        assert_eq!(publish_interval(i, 20_000), i * 20);
        assert_eq!(publish_interval(Duration::ZERO, 20_000), Duration::ZERO);
    }
}
