//! A scope's state index (wire contract §4): when it is published, and the
//! message body.
//!
//! The entries live in Redis (`P:{S}:index`, job id → entry JSON), written
//! by `job_apply.lua` in the same atomic step as the job, so the publisher
//! holds nothing per job and reads no job to publish the index: one
//! `HGETALL` per publish, whatever changed.

use serde_json::value::RawValue;
use std::time::{Duration, Instant};

/// Entries per step of the publish interval: an index of up to this many
/// jobs is published at most once per interval, a larger one once per
/// interval per started thousand jobs.
const ENTRIES_PER_INTERVAL: usize = 1000;

/// When a scope's index is next due.
#[derive(Debug, Default)]
pub(super) struct Schedule {
    /// Changed since the last publish.
    dirty: bool,
    /// Earliest moment of the next publish.
    next_publish: Option<Instant>,
}

impl Schedule {
    /// A schedule due at once (a scope just adopted).
    pub(super) fn due_now() -> Self {
        Schedule {
            dirty: true,
            next_publish: None,
        }
    }

    /// The scope changed.
    pub(super) fn changed(&mut self) {
        self.dirty = true;
    }

    /// Whether the index changed since it was last published.
    pub(super) fn is_changed(&self) -> bool {
        self.dirty
    }

    /// Whether the index changed and its interval has passed at `now`.
    pub(super) fn due(&self, now: Instant) -> bool {
        self.dirty && self.next_publish.is_none_or(|t| t <= now)
    }

    /// When a changed index becomes due, `now` at the latest (`None`:
    /// nothing changed).
    pub(super) fn due_at(&self, now: Instant) -> Option<Instant> {
        self.dirty.then(|| self.next_publish.unwrap_or(now))
    }

    /// The index of `entries` jobs was published at `now`: the next waits
    /// [`publish_interval`].
    pub(super) fn published(&mut self, now: Instant, interval: Duration, entries: usize) {
        self.dirty = false;
        self.next_publish = Some(now + publish_interval(interval, entries));
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

/// The stored state-index entry of a job, as `job_apply.lua` writes it
/// (`{"has_result":…,"job_order_id":…,"state":[…]}`).
pub(super) fn entry(id: &str, state: crate::jobs::state::JobState, has_result: bool) -> String {
    format!(
        r#"{{"has_result":{has_result},"job_order_id":{},"state":{}}}"#,
        serde_json::to_string(id).unwrap_or_else(|_| "\"\"".into()),
        serde_json::to_string(&state.to_wire()).unwrap_or_else(|_| "[]".into())
    )
}

/// The body of index number `seq` of `scope` from the stored entries (id →
/// entry JSON), listed by job id, written in one buffer (the index is the
/// one message whose size grows with the jobs stored: it is not copied on
/// the way). An entry that is not JSON (written by hand) is left out.
pub(super) fn body<'a>(
    seq: u64,
    scope: &str,
    entries: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<u8> {
    let mut sorted: Vec<(&str, &str)> = entries
        .into_iter()
        .filter(|(_, e)| serde_json::from_str::<&RawValue>(e).is_ok())
        .collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let published_at = serde_json::to_string(&chrono::Utc::now()).unwrap_or_else(|_| "null".into());
    let scope = serde_json::to_string(scope).unwrap_or_else(|_| "\"\"".into());
    let size = 64
        + scope.len()
        + published_at.len()
        + sorted.iter().map(|(_, e)| e.len() + 1).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(
        format!(r#"{{"seq":{seq},"scope":{scope},"published_at":{published_at},"jobs":["#)
            .as_bytes(),
    );
    for (i, (_, e)) in sorted.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e.as_bytes());
    }
    out.extend_from_slice(b"]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::state::{JobState, MainState, SubState};

    #[test]
    fn the_body_lists_the_stored_entries_by_id_in_the_contracts_shape() {
        let ready = JobState::new(MainState::AllowedToStart, Some(SubState::Ready));
        let ended = JobState::new(MainState::Ended, Some(SubState::Completed));
        let b = entry("b", ended, true);
        let a = entry("PO#4711", ready, false);
        let b = body(
            7,
            "s",
            [("b", b.as_str()), ("PO#4711", a.as_str()), ("x", "{oops")],
        );
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["seq"], 7);
        assert_eq!(v["scope"], "s");
        let jobs = v["jobs"].as_array().unwrap();
        assert_eq!(jobs.len(), 2, "the entry that is no JSON is left out");
        assert_eq!(jobs[0]["job_order_id"], "PO#4711");
        assert_eq!(jobs[1]["job_order_id"], "b");
        assert_eq!(jobs[1]["has_result"], true);
        // The generated type reads it back: the shape is the contract's.
        let typed: crate::models::mes_publishing::StateIndex = serde_json::from_value(v).unwrap();
        assert_eq!(typed.jobs.len(), 2);
        let empty: serde_json::Value = serde_json::from_slice(&body(1, "s", [])).unwrap();
        assert_eq!(empty["jobs"], serde_json::json!([]));
    }

    #[test]
    fn a_published_index_waits_its_interval_and_large_indexes_wait_longer() {
        let t0 = Instant::now();
        let mut s = Schedule::due_now();
        assert!(s.due(t0), "a new scope's index is published at once");
        s.published(t0, Duration::from_millis(50), 10);
        assert!(!s.due(t0 + Duration::from_secs(1)), "nothing changed");
        s.changed();
        assert!(!s.due(t0 + Duration::from_millis(49)));
        assert!(s.due(t0 + Duration::from_millis(50)));

        let i = Duration::from_millis(50);
        assert_eq!(publish_interval(i, 0), i);
        assert_eq!(publish_interval(i, 1000), i);
        assert_eq!(publish_interval(i, 1001), i * 2);
        assert_eq!(publish_interval(i, 20_000), i * 20);
        assert_eq!(publish_interval(Duration::ZERO, 20_000), Duration::ZERO);
    }
}
