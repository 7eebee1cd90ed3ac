//! The spy: a client beside the equipment that sees every command, every
//! equipment reply and event, and every job event, each stamped with the
//! instant it arrived, and turns them into step latencies afterwards.

use super::mes::{job_state, STATUS};
use super::stats::Latencies;
use super::{BenchResult, Received};
use microdcs::testkit::mqtt::{user_prop, TestClient as Client};
use rumqttc::v5::mqttbytes::QoS;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The equipment's commands, replies (the shared response topic) and
/// events; the jobs' events.
const FILTERS: [&str; 4] = [
    "app/equipment/+/commands",
    "app/equipment/responses",
    "app/equipment/+/events",
    "app/jobs/+/events",
];

/// The recipe's CloudEvent types, in step order: two commands, one event.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepTypes {
    pub(crate) first: &'static str,
    pub(crate) second: &'static str,
    pub(crate) event: &'static str,
}

/// The spy client.
pub(crate) struct Spy(Client);

/// What one job looked like from the equipment's side.
#[derive(Debug, Default)]
struct Trace {
    first_command: Option<Instant>,
    first_reply: Option<Instant>,
    second_command: Option<Instant>,
    event: Option<Instant>,
    ended: Option<Instant>,
}

/// Step latencies of a set of jobs.
#[derive(Debug, Default)]
pub(crate) struct Steps {
    /// Reply to the first command → the second command.
    pub(crate) command_to_command: Latencies,
    /// The pull event → the job's Ended status event.
    pub(crate) event_to_end: Latencies,
    /// `StoreAndStart` sent → the first command (job start, not a step).
    pub(crate) start: Latencies,
}

impl Steps {
    /// Both step transitions together: the step latency.
    pub(crate) fn all(&self) -> Latencies {
        let mut l = self.command_to_command.clone();
        l.extend(&self.event_to_end);
        l
    }
}

impl Spy {
    /// Connects and subscribes (QoS 0: the spy must not slow the broker
    /// down with acknowledgements).
    pub(crate) async fn connect(port: u16) -> BenchResult<Self> {
        let mut c = Client::try_connect(port, "bench-spy")
            .await
            .map_err(|e| e.to_string())?;
        c.try_subscribe(&FILTERS, QoS::AtMostOnce)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Spy(c))
    }

    /// Everything received so far, after `settle` of quiet.
    pub(crate) async fn drain(&mut self, settle: Duration) -> Vec<Received> {
        let mut out = Vec::new();
        while let Some(r) = self.0.recv_at(settle).await {
            out.push(r);
        }
        out
    }
}

/// The step latencies of the jobs in `sent` (job id → when the MES sent
/// its order).
pub(crate) fn steps(
    records: &[Received],
    types: StepTypes,
    sent: &HashMap<String, Instant>,
) -> Steps {
    let mut traces: HashMap<&str, Trace> = HashMap::with_capacity(sent.len());
    for (at, p) in records {
        let topic = String::from_utf8_lossy(&p.topic);
        let ty = user_prop(p, "type").unwrap_or_default();
        if topic.starts_with("app/jobs/") {
            if ty != STATUS {
                continue;
            }
            let Some((job, state)) = job_state(&p.payload) else {
                continue;
            };
            if state != "Ended" {
                continue;
            }
            if let Some((job, _)) = sent.get_key_value(job.as_str()) {
                let t = traces.entry(job.as_str()).or_default();
                t.ended.get_or_insert(*at);
            }
            continue;
        }
        let Some((job, _)) = user_prop(p, "jobid").and_then(|j| sent.get_key_value(j)) else {
            continue;
        };
        let t = traces.entry(job.as_str()).or_default();
        let slot = if topic.ends_with("/commands") {
            match ty {
                x if x == types.first => &mut t.first_command,
                x if x == types.second => &mut t.second_command,
                _ => continue,
            }
        } else if topic.ends_with("/responses") && ty == types.first {
            &mut t.first_reply
        } else if topic.ends_with("/events") && ty == types.event {
            &mut t.event
        } else {
            continue;
        };
        // The first sighting counts: a re-sent command or a duplicate
        // reply is not a new step.
        slot.get_or_insert(*at);
    }
    let mut s = Steps::default();
    for (job, t) in &traces {
        if let (Some(a), Some(b)) = (t.first_reply, t.second_command) {
            s.command_to_command.push(b.saturating_duration_since(a));
        }
        if let (Some(a), Some(b)) = (t.event, t.ended) {
            s.event_to_end.push(b.saturating_duration_since(a));
        }
        if let (Some(a), Some(b)) = (sent.get(*job), t.first_command) {
            s.start.push(b.saturating_duration_since(*a));
        }
    }
    s
}
