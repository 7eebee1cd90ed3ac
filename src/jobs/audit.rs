//! The audit trail of a job: one Redis stream per job
//! (`P:{S}:audit:{id}`, beside the job's hash, in the scope's hash slot),
//! appended to by the scripts that apply the change it records, so an entry
//! costs no round trip of its own and exists exactly when its change does:
//!
//! - `job_apply.lua` appends a [`AuditEvent::Command`] for every job
//!   command it applies (a state change by the MES) and a
//!   [`AuditEvent::Transition`] for every internal transition (the SFC
//!   engine's Begin, Complete, Fail);
//! - `exec_apply.lua` appends one [`AuditEvent::Step`] per write of the
//!   job's execution that entered or left steps, dispatched actions, ended
//!   action runs or finished the recipe;
//! - `audit_append.lua` appends a refused command
//!   ([`AuditEvent::Command`] with a status other than `NoError`) if the
//!   job exists (a command for an unknown job has no trail to go to).
//!
//! Job response updates without a state change (progress) are not
//! recorded: the step entries carry the same information.
//!
//! Each stream entry has the field `e`, the [`AuditEvent`] as JSON, and,
//! for entries of `job_apply.lua`, `v`, the job's version after the
//! change. The entry id's milliseconds are the time (Redis's clock, the
//! station's shared clock). The stream is deleted with the job when its
//! retention has passed (`job_purge.lua`), and capped at about
//! [`AUDIT_MAX_ENTRIES`] entries against a recipe that loops for ever.
//!
//! The MQTT client that published a command is not known to the station:
//! an MQTT v5 PUBLISH does not carry its sender's client id or user name.
//! A command is identified by its CloudEvent `source`, `id` and
//! `correlationid`.

use serde::{Deserialize, Serialize};

/// Entries an audit stream keeps at most, about (`XADD MAXLEN ~`; the
/// number is written in `job_apply.lua`, `exec_apply.lua` and
/// `audit_append.lua`).
pub const AUDIT_MAX_ENTRIES: u64 = 10_000;

/// One entry of a job's audit trail, as read back by
/// [`JobStore::audit`](super::JobStore::audit).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    /// The stream entry id (`ms-seq`): the order of the trail.
    pub entry: String,
    /// When it was recorded: ms since the Unix epoch (Redis's clock).
    pub time_ms: u64,
    /// The job's version after the change, for command and transition
    /// entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// What happened.
    #[serde(flatten)]
    pub event: AuditEvent,
}

/// What one audit entry records. Serialised with a `kind` tag
/// (`command`, `transition`, `step`), which is also its stored form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuditEvent {
    /// A job command received over MQTT (OPC UA Machinery Jobs method,
    /// wire contract §7), applied or refused.
    Command(CommandRecord),
    /// An internal transition of the job's state machine, reported by the
    /// SFC engine.
    Transition {
        /// The internal trigger (`Begin`, `Complete`, `Fail`).
        trigger: String,
        /// The state before (`Main` or `Main/Sub`, the NodeSet names).
        from: String,
        /// The state after.
        to: String,
        /// The engine's cause of the change (which execution input).
        cause: String,
    },
    /// A write of the job's SFC execution (the `sfc` module): steps entered
    /// and left, actions dispatched and ended, the recipe's end.
    Step(StepRecord),
    /// An entry of a kind this version does not know (written by a newer
    /// one).
    #[serde(other)]
    Unknown,
}

/// A job command as received, with what it did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRecord {
    /// The OPC UA method (`Store`, `StoreAndStart`, `Update`, `Start`, …).
    pub method: String,
    /// The CloudEvent `source` of the command.
    pub source: String,
    /// The CloudEvent `id` of the command.
    pub id: String,
    /// The CloudEvent `correlationid`, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlationid: Option<String>,
    /// The `ReturnStatus` answered, by name (`NoError`,
    /// `InvalidJobOrderStatus`, …; OPC 40001-3 `ReturnStatus`).
    pub status: String,
    /// Why it was refused (absent when applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The state before an applied command (`Main` or `Main/Sub`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The state after an applied command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// What one write of a job's execution changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Steps that became active, with their activation number.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entered: Vec<StepActivation>,
    /// Steps that were left.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left: Vec<StepActivation>,
    /// Actions sent to equipment (or, for `pull_event`, started waiting).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dispatched: Vec<ActionDispatch>,
    /// Action runs that ended (done, failed, cancelled), with the result
    /// they took.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<ActionEnd>,
    /// How the recipe ended, if this write ended it (`Completed`,
    /// `Stopped`, `Aborted`, `Failed: reason`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
}

impl StepRecord {
    /// Whether there is nothing to record.
    pub fn is_empty(&self) -> bool {
        self.entered.is_empty()
            && self.left.is_empty()
            && self.dispatched.is_empty()
            && self.actions.is_empty()
            && self.finished.is_none()
    }
}

/// A step and one of its activations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepActivation {
    /// The step name (recipe `Steps[].Name`).
    pub step: String,
    /// Its activation number (1 for the first).
    pub activation: u32,
}

/// One dispatch of an action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionDispatch {
    /// The action name.
    pub action: String,
    /// The command id (the dispatched CloudEvent's `id`).
    pub command_id: String,
    /// Which send this is (1: the first).
    pub attempt: u32,
}

/// An action run that ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionEnd {
    /// The action name.
    pub action: String,
    /// `done`, `failed` or `cancelled`.
    pub state: String,
    /// The result it took (the equipment's reply or event data), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

/// What a job command is, for its audit entry: passed to the
/// [`JobManager`](super::JobManager) methods beside the cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandInfo {
    /// The OPC UA method name.
    pub method: &'static str,
    /// CloudEvent `source`.
    pub source: String,
    /// CloudEvent `id`.
    pub id: String,
    /// CloudEvent `correlationid`, as its attribute text.
    pub correlationid: Option<String>,
}

impl CommandInfo {
    /// The audit record of this command answered with `status`: applied
    /// (`from` → `to`) or refused (`reason`).
    pub(crate) fn record(
        &self,
        status: super::ReturnStatus,
        reason: Option<&str>,
        states: Option<(super::JobState, super::JobState)>,
    ) -> AuditEvent {
        AuditEvent::Command(CommandRecord {
            method: self.method.to_owned(),
            source: self.source.clone(),
            id: self.id.clone(),
            correlationid: self.correlationid.clone(),
            status: format!("{status:?}"),
            reason: reason.map(str::to_owned),
            from: states.map(|(f, _)| f.to_string()),
            to: states.map(|(_, t)| t.to_string()),
        })
    }
}

/// The cause of a job change: the text that makes a redelivered command
/// the same command (`source` and `id`), and for a command received over
/// MQTT what its audit entry says. A plain `&str` is a cause without a
/// command (the engine's, tests').
#[derive(Debug, Clone, Copy)]
pub struct Cause<'a> {
    pub(crate) key: &'a str,
    pub(crate) command: Option<&'a CommandInfo>,
}

impl<'a> Cause<'a> {
    /// The cause `key` of `command`.
    pub fn command(key: &'a str, command: &'a CommandInfo) -> Self {
        Cause {
            key,
            command: Some(command),
        }
    }
}

impl<'a> From<&'a str> for Cause<'a> {
    fn from(key: &'a str) -> Self {
        Cause { key, command: None }
    }
}

impl<'a> From<&'a String> for Cause<'a> {
    fn from(key: &'a String) -> Self {
        Cause {
            key: key.as_str(),
            command: None,
        }
    }
}

/// Reads one stream entry (`id`, its fields) back.
pub(crate) fn parse_entry(
    id: &str,
    fields: &std::collections::HashMap<String, String>,
) -> Result<AuditEntry, String> {
    let e = fields
        .get("e")
        .ok_or_else(|| format!("audit entry {id} has no field 'e'"))?;
    let event: AuditEvent =
        serde_json::from_str(e).map_err(|err| format!("audit entry {id}: {err}"))?;
    let time_ms = id
        .split('-')
        .next()
        .and_then(|ms| ms.parse().ok())
        .ok_or_else(|| format!("audit entry id '{id}' is not a stream id"))?;
    Ok(AuditEntry {
        entry: id.to_owned(),
        time_ms,
        version: fields.get("v").and_then(|v| v.parse().ok()),
        event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn entries_round_trip_through_their_stored_form() {
        let step = AuditEvent::Step(StepRecord {
            entered: vec![StepActivation {
                step: "Press".into(),
                activation: 1,
            }],
            actions: vec![ActionEnd {
                action: "press".into(),
                state: "done".into(),
                result: Some(serde_json::json!({"ok": true})),
            }],
            ..StepRecord::default()
        });
        let stored = serde_json::to_string(&step).unwrap();
        assert!(stored.starts_with(r#"{"kind":"step""#), "{stored}");
        let fields = HashMap::from([("e".to_owned(), stored)]);
        let read = parse_entry("1700000000123-4", &fields).unwrap();
        assert_eq!(read.time_ms, 1_700_000_000_123);
        assert_eq!(read.version, None);
        assert_eq!(read.event, step);
    }

    #[test]
    fn unreadable_entries_say_which_and_unknown_kinds_are_kept() {
        let fields = HashMap::from([("e".to_owned(), "{".to_owned())]);
        let err = parse_entry("5-0", &fields).unwrap_err();
        assert!(err.contains("5-0"), "{err}");
        assert!(parse_entry("5-0", &HashMap::new()).is_err());
        let fields = HashMap::from([
            ("e".to_owned(), r#"{"kind":"later"}"#.to_owned()),
            ("v".to_owned(), "3".to_owned()),
        ]);
        let read = parse_entry("6-1", &fields).unwrap();
        assert_eq!(read.event, AuditEvent::Unknown);
        assert_eq!(read.version, Some(3));
    }
}
