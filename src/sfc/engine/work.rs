//! Work items (`P:{S}:work`): the effects of an evolution, performed after
//! its compare-and-swap committed them. A dispatch is sent as a command
//! (fenced against its job leaving Running, within the message expiry,
//! its failed sends counted), progress is published, a finished execution
//! is reported to the job manager, a due timer is applied.

use super::response::response_json;
use super::retry::Failure;
use super::store::Stored;
use super::streams::Settle;
use super::{command_subject, now_ms, Command, Engine, EngineError, PROGRESS_TYPE};
use crate::envelope::{CloudEvent, ContentType, CorrelationId};
use crate::jobs::store::DISPATCH_LEASE;
use crate::jobs::{Internal, JobState, MainState, SubState};
use crate::processor::Emit;
use crate::sfc::exec::{Input, Status};
use crate::sfc::fence;
use crate::transport::Intent;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::time::Duration;
use tracing::{debug, info, warn};

/// A follow-up work item (stream entry field `item`, JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum WorkItem {
    Dispatch {
        job: String,
        command_id: String,
        action: String,
        type_id: String,
        equipment: Option<String>,
        parameters: Map<String, Value>,
        attempt: u32,
        /// The job's trace (`traceparent` of its job span), the parent of
        /// the dispatch span (#10). Absent with traces off.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trace: Option<String>,
    },
    /// One step change (written by earlier versions; read for
    /// compatibility).
    Progress {
        job: String,
        step: String,
        activation: u32,
        entered: bool,
    },
    /// The step changes of one evolution, in order: one work item, one
    /// progress event each.
    Steps {
        job: String,
        changes: Vec<StepChange>,
        /// The job's trace, carried by the progress events (#10).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trace: Option<String>,
    },
    Finished {
        job: String,
    },
    Timer {
        job: String,
        key: String,
    },
}

impl WorkItem {
    /// The job the item is about.
    pub(super) fn job(&self) -> &str {
        match self {
            WorkItem::Dispatch { job, .. }
            | WorkItem::Progress { job, .. }
            | WorkItem::Steps { job, .. }
            | WorkItem::Finished { job }
            | WorkItem::Timer { job, .. } => job,
        }
    }
}

/// A step left or entered (one progress event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct StepChange {
    pub(super) step: String,
    pub(super) activation: u32,
    pub(super) entered: bool,
}

/// The creation time (ms, Redis server clock) of a stream entry, from its
/// id (`{ms}-{seq}`).
fn entry_ms(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

/// How long a dispatch work item created at `created_ms` may still be sent
/// as a command, under message expiry `expiry`: `Some(ms left)`, at least a
/// whole second (the Message Expiry Interval counts in seconds), or `None`
/// when it is too old. No expiry: `Some(u64::MAX)`.
fn send_window(created_ms: Option<u64>, now: u64, expiry: Option<Duration>) -> Option<u64> {
    let Some(expiry) = expiry else {
        return Some(u64::MAX);
    };
    let age = created_ms.map_or(0, |c| now.saturating_sub(c));
    let left = u64::try_from(expiry.as_millis())
        .unwrap_or(u64::MAX)
        .saturating_sub(age);
    (left >= 1000).then_some(left)
}

impl Engine {
    /// Performs one work item; `entry` is its stream entry id.
    pub(super) async fn on_work(
        &self,
        scope: &str,
        entry: &str,
        item: WorkItem,
        settle: &mut Settle,
    ) -> Result<(), Failure> {
        match item {
            WorkItem::Timer { job, key } => {
                Ok(self.apply(scope, &job, Input::Timer { key }).await?)
            }
            WorkItem::Dispatch { .. } => self.on_dispatch(scope, entry, item, settle).await,
            WorkItem::Progress {
                job,
                step,
                activation,
                entered,
            } => Ok(self.progress(
                scope,
                &job,
                &[StepChange {
                    step,
                    activation,
                    entered,
                }],
                None,
                settle,
            )?),
            WorkItem::Steps {
                job,
                changes,
                trace,
            } => Ok(self.progress(scope, &job, &changes, trace.as_deref(), settle)?),
            WorkItem::Finished { job } => Ok(self.report_finished(scope, &job).await?),
        }
    }

    /// Publishes step changes as progress events through the job manager's
    /// emitter, if it has one, in order. The sends run beside the job's
    /// next entries (a command is not delayed by its step's progress
    /// event) and are awaited before the job's entries that may end it and
    /// before the batch is settled ([`Settle::progress_after`]); one that
    /// cannot be sent is only logged.
    fn progress(
        &self,
        scope: &str,
        job: &str,
        changes: &[StepChange],
        trace: Option<&str>,
        settle: &mut Settle,
    ) -> Result<(), EngineError> {
        let Some(emitter) = self.inner.jobs.emitter() else {
            return Ok(());
        };
        let mut events = Vec::with_capacity(changes.len());
        for c in changes {
            let mut ev = CloudEvent::new(PROGRESS_TYPE, "");
            ev.subject = Some(job.to_owned());
            ev.set_data(
                ContentType::Json,
                &json!({"Scope": scope, "JobOrderID": job, "Step": c.step,
                        "Activation": c.activation,
                        "Event": if c.entered { "entered" } else { "left" }}),
            )
            .map_err(EngineError::Progress)?;
            crate::telemetry::inject_job(&mut ev, trace);
            events.push(ev);
        }
        let (scope, job) = (scope.to_owned(), job.to_owned());
        settle.progress_after(async move {
            for ev in events {
                if let Err(e) = emitter.emit(Emit::raw(ev)).await {
                    warn!(scope, job, error = %e, "progress event not sent");
                }
            }
        });
        Ok(())
    }

    /// A dispatch work item: sent as a command, unless it is older than
    /// the message expiry (then the action counts an unsent attempt). A
    /// send that can never succeed, or failed retryably
    /// `max_attempts` times, fails the action (and the job) with the
    /// reason, like an error reply from the equipment would.
    async fn on_dispatch(
        &self,
        scope: &str,
        entry: &str,
        item: WorkItem,
        settle: &mut Settle,
    ) -> Result<(), Failure> {
        let WorkItem::Dispatch {
            job,
            command_id,
            attempt,
            ..
        } = &item
        else {
            return Ok(());
        };
        let (job, command_id, attempt) = (job.clone(), command_id.clone(), *attempt);
        let expiry = self.inner.settings.message_expiry;
        let now = now_ms();
        let created = entry_ms(entry);
        let Some(left_ms) = send_window(created, now, expiry) else {
            let waited = created.map_or(0, |c| now.saturating_sub(c));
            let reason = format!(
                "the command waited {:.1} s to be sent, longer than the message expiry of {} s",
                waited as f64 / 1000.0,
                expiry.map_or(0, |e| e.as_secs())
            );
            info!(scope, job, command_id, attempt, %reason, "stale dispatch not sent");
            return Ok(self
                .apply(
                    scope,
                    &job,
                    Input::Unsent {
                        command_id,
                        attempt,
                        reason,
                    },
                )
                .await?);
        };
        let error = match self.send_command(scope, item, left_ms, settle).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let reason = match error.terminal_reason() {
            Some(r) => format!("command cannot be sent: {r}"),
            None => {
                // Counted in Redis: the item may be retried by another
                // replica. A failure that cannot be recorded (Redis gone)
                // is not counted, and the item stays pending.
                let key = self.keys().send_failures(scope, entry);
                let history = self.count_failure(&key, &error).await?;
                let n = history.len();
                if n < self.max_attempts() {
                    warn!(scope, job, command_id, attempt = n, error = %error, "command not sent; will try again");
                    return Err(Failure::Counted(error));
                }
                let listed: Vec<String> = history
                    .iter()
                    .enumerate()
                    .map(|(i, h)| format!("{}: {h}", i + 1))
                    .collect();
                format!(
                    "command not sent after {n} attempts ({})",
                    listed.join("; ")
                )
            }
        };
        warn!(scope, job, command_id, %reason, "command given up; the action fails");
        Ok(self
            .apply(
                scope,
                &job,
                Input::Result {
                    command_id,
                    outcome: Err(reason),
                },
            )
            .await?)
    }

    /// Sends a dispatch's command through its processor, fenced against
    /// the job leaving Running; `left_ms` is what is left of its message
    /// expiry (its Message Expiry Interval). The lease of a command the
    /// transport took is released when the batch is settled.
    async fn send_command(
        &self,
        scope: &str,
        item: WorkItem,
        left_ms: u64,
        settle: &mut Settle,
    ) -> Result<(), EngineError> {
        // A dispatch met while its job is paused is kept as it is, for Resume.
        let held = serde_json::to_string(&item)?;
        let WorkItem::Dispatch {
            job,
            command_id,
            action,
            type_id,
            equipment,
            parameters,
            attempt,
            trace,
        } = item
        else {
            return Ok(());
        };
        let subject = command_subject(scope, equipment.as_deref());
        let taken = self
            .inner
            .takeovers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&type_id)
            .cloned();
        let (emitter, emit) = match taken {
            // A hand-written processor shapes this type's commands.
            Some(t) => {
                let cmd = Command {
                    command_id: command_id.clone(),
                    job: job.clone(),
                    scope: scope.to_owned(),
                    action: action.clone(),
                    type_id: type_id.clone(),
                    subject: subject.clone(),
                    parameters,
                    attempt,
                };
                // A shaper is a function of the command: what it refuses
                // once it refuses every time.
                let emit = (t.shape)(&cmd).map_err(EngineError::Unshapeable)?;
                (t.emitter, emit)
            }
            None => {
                let Some(emitter) = self.inner.equipment.get() else {
                    return Err(EngineError::NoEmitter);
                };
                let mut ev = CloudEvent::new(type_id.clone(), "");
                ev.set_data(ContentType::Json, &Value::Object(parameters))
                    .map_err(EngineError::Payload)?;
                (emitter.clone(), Emit::raw(ev))
            }
        };
        let left_secs = u32::try_from(left_ms / 1000).ok();
        // Whoever shaped it, the identity is the engine's: the stable
        // command id, its correlation, the job, the subject.
        let emit = emit
            .map_event(|ev| {
                ev.id.clone_from(&command_id);
                if ev.subject.is_none() {
                    ev.subject = Some(subject.clone());
                }
                ev.correlationid = Some(CorrelationId::from_text(command_id.clone()));
                // A user property: percent-encoded like a topic level, so
                // any job id is a valid MQTT string (ids without `%`, `/`,
                // `+`, `#` or control characters are unchanged).
                ev.custom.insert(
                    "jobid".into(),
                    crate::envelope::encode_level(&job).into_owned(),
                );
                // What is left of the message expiry, not all of it again.
                if let Some(left) = left_secs {
                    ev.expiryinterval = Some(ev.expiryinterval.map_or(left, |e| e.min(left)));
                }
            })
            .intent(Intent::Commands)
            .shared_response();
        // Only while the job is Running, and never after its
        // Aborted/Ended/Interrupted status event (see `fence`).
        let store = self.inner.jobs.store();
        let lease = match fence::take(store, scope, &job, &command_id, &held).await? {
            fence::Verdict::Leased(lease) => lease,
            fence::Verdict::Held => {
                debug!(
                    scope,
                    job, action, command_id, "job interrupted; command held until it resumes"
                );
                return Ok(());
            }
            fence::Verdict::Recalled => {
                debug!(
                    scope,
                    job, action, command_id, "job no longer running; command recalled"
                );
                return Ok(());
            }
        };
        // The lease must outlive the send: a send stuck in back
        // pressure is given up (the item stays pending and is tried
        // again) well before the lease could expire.
        // The command goes out inside its dispatch span, a child of the
        // job's trace, and carries that span's trace context.
        let span = crate::telemetry::dispatch_span(
            trace.as_deref(),
            scope,
            &job,
            &action,
            &type_id,
            &command_id,
            attempt,
        );
        let sent = tokio::time::timeout(
            DISPATCH_LEASE / 2,
            tracing::Instrument::instrument(emitter.emit(emit), span.clone()),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            span.in_scope(|| crate::telemetry::span_failed("SEND_FAILED", "command not sent"));
        }
        if matches!(sent, Ok(Ok(()))) {
            // Released with the batch's acknowledgements, in the same
            // round trip.
            settle.release(scope, lease);
        } else if let Err(e) = fence::release(store, &lease).await {
            // It expires by itself; a transition out of Running
            // waits for it until then.
            warn!(scope, job, command_id, error = %e, "dispatch lease not released");
        }
        match sent {
            // A refusal of the transport as it is (e.g. a topic MQTT
            // forbids) is not retryable: it would refuse it every time.
            Ok(r) => r.map_err(EngineError::Emit)?,
            Err(_) => {
                return Err(EngineError::SendTimeout {
                    command_id,
                    after: DISPATCH_LEASE / 2,
                })
            }
        }
        debug!(scope, job, action, command_id, attempt, "command sent");
        Ok(())
    }

    /// Reports a finished execution to the job manager: its job ends (or is
    /// aborted) with the job response.
    async fn report_finished(&self, scope: &str, id: &str) -> Result<(), EngineError> {
        // The replica that finished the execution usually has its final
        // state cached (a finished state never changes).
        let finished = self
            .inner
            .execs
            .get(scope, id)
            .filter(|s| s.exec.is_finished());
        let stored = match finished {
            Some(s) => Some(s),
            None => self.load(scope, id).await?,
        };
        let Some(Stored { exec: e, .. }) = stored else {
            return Ok(());
        };
        // Its final status event goes out in the job's trace.
        crate::telemetry::record_job_ids(e.trace());
        let jobs = &self.inner.jobs;
        let (what, final_state) = match &e.status {
            Status::Completed => (
                Some(Internal::Complete),
                JobState::new(MainState::Ended, Some(SubState::Completed)),
            ),
            Status::Failed(_) => (
                Some(Internal::Fail),
                JobState::new(MainState::Aborted, None),
            ),
            Status::Stopped => (
                None,
                JobState::new(MainState::Ended, Some(SubState::Completed)),
            ),
            Status::Aborted => (None, JobState::new(MainState::Aborted, None)),
            Status::Running => return Ok(()),
        };
        let response = response_json(id, &e, &final_state);
        let raw = serde_json::value::to_raw_value(&response)?;
        let cause = format!("sfc/finished/{id}");
        match what {
            Some(internal) => {
                let r = jobs
                    .internal(scope, id, internal, Some(&raw), &cause)
                    .await?;
                info!(scope, job = id, status = ?e.status, outcome = r.status.value(), "recipe finished");
            }
            None => {
                jobs.set_response(scope, id, &raw, &cause).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dispatch_is_sent_only_within_the_message_expiry() {
        assert_eq!(entry_ms("1700000000123-4"), Some(1_700_000_000_123));
        assert_eq!(entry_ms("junk"), None);
        let now = 1_000_000;
        let expiry = Some(Duration::from_secs(60));
        // No expiry configured: always, for as long as it takes.
        assert_eq!(send_window(Some(0), now, None), Some(u64::MAX));
        // Fresh: nearly all of it is left for the command.
        assert_eq!(send_window(Some(now - 500), now, expiry), Some(59_500));
        // Older than the expiry, or with less than a whole second left
        // (the Message Expiry Interval counts seconds): not sent.
        assert_eq!(send_window(Some(now - 60_000), now, expiry), None);
        assert_eq!(send_window(Some(now - 59_001), now, expiry), None);
        assert_eq!(send_window(Some(now - 59_000), now, expiry), Some(1_000));
        // A re-dispatch (a new work item after a timeout) starts afresh.
        assert_eq!(send_window(Some(now), now, expiry), Some(60_000));
    }

    #[test]
    fn work_items_round_trip() {
        let i = WorkItem::Timer {
            job: "j".into(),
            key: "a/1/timeout:1/x".into(),
        };
        let t = serde_json::to_string(&i).unwrap();
        assert!(t.contains("\"kind\":\"timer\""));
        assert_eq!(serde_json::from_str::<WorkItem>(&t).unwrap(), i);
        // The Lua timer script writes this shape.
        let lua = r#"{"kind":"timer","job":"j","key":"k"}"#;
        assert!(matches!(
            serde_json::from_str::<WorkItem>(lua).unwrap(),
            WorkItem::Timer { .. }
        ));
    }
}
