//! `microdcs jobs list|show`: the jobs a station keeps in Redis, read
//! through `microdcs::inspect`.

use super::output::{self, OutputArgs};
use microdcs::inspect::{ExecutionDetail, Inspector, JobDetail, JobSummary};
use microdcs::jobs::{JobState, MainState};
use microdcs::sfc::exec::Status;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;

/// `jobs …`.
#[derive(Debug, PartialEq, Eq, clap::Subcommand)]
pub(crate) enum JobsCommand {
    List(ListArgs),
    Show(ShowArgs),
}

/// List the jobs a station keeps: scope, id, state, version, last change
///
/// Reads the station's Redis (the configuration's [redis] settings) and
/// prints one row per job, by scope and id.
#[derive(Debug, PartialEq, Eq, clap::Args)]
#[command(verbatim_doc_comment, after_help = super::CONFIG_SOURCES)]
pub(crate) struct ListArgs {
    /// TOML configuration file.
    #[arg(short, long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Only the jobs of this scope.
    #[arg(long, value_name = "S")]
    pub(crate) scope: Option<String>,
    /// Only the jobs in this main state (any case).
    #[arg(long, value_name = "STATE", ignore_case = true, value_parser = state_parser())]
    pub(crate) state: Option<MainState>,
    #[command(flatten)]
    pub(crate) output: OutputArgs,
}

/// Show one job: order, state, SFC execution, timers, history, response
///
/// Prints the job order, its state (main state and substate), the current
/// steps of its SFC execution, the actions' runs and results, the pending
/// timers, the step history and the job response. Exit code 1 when there is
/// no such job, or when it exists in several scopes and --scope is missing.
#[derive(Debug, PartialEq, Eq, clap::Args)]
#[command(verbatim_doc_comment, after_help = super::CONFIG_SOURCES)]
pub(crate) struct ShowArgs {
    /// The job order id.
    #[arg(value_name = "ID")]
    pub(crate) id: String,
    /// TOML configuration file.
    #[arg(short, long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// The job's scope (needed when the id exists in several).
    #[arg(long, value_name = "S")]
    pub(crate) scope: Option<String>,
    #[command(flatten)]
    pub(crate) output: OutputArgs,
}

/// The main states a job can be stored in, by their wire names; matched
/// case-insensitively, a wrong one is a usage error listing them.
fn state_parser() -> impl clap::builder::TypedValueParser<Value = MainState> {
    let names: Vec<&'static str> = MainState::ALL
        .into_iter()
        .filter(|s| *s != MainState::InitialState)
        .map(MainState::name)
        .collect();
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(names).map(|v: String| {
        MainState::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(&v))
            .unwrap_or(MainState::InitialState)
    })
}

/// `jobs list`.
pub(crate) fn list(args: &ListArgs) -> ExitCode {
    super::with_station_redis(args.config.as_deref(), |config, redis| async move {
        let inspector = Inspector::new(redis.conn, config.redis.key_prefix.clone());
        let jobs = inspector
            .list(args.scope.as_deref(), args.state)
            .await
            .map_err(|e| e.to_string())?;
        if args.output.json {
            let rows: Vec<Value> = jobs.iter().map(summary_json).collect();
            super::out(&format!("{}\n", output::json(&rows)));
        } else if jobs.is_empty() {
            eprintln!("no jobs");
        } else {
            let rows = jobs.iter().map(|j| {
                vec![
                    j.scope.clone(),
                    j.job.id.clone(),
                    j.job.state.to_string(),
                    j.job.version.to_string(),
                    j.updated_ms.map_or_else(|| "-".into(), super::time),
                ]
            });
            super::out(&format!(
                "{}\n",
                output::table(["SCOPE", "ID", "STATE", "VERSION", "UPDATED"], rows)
            ));
        }
        Ok(())
    })
}

/// `jobs show`.
pub(crate) fn show(args: &ShowArgs) -> ExitCode {
    super::with_station_redis(args.config.as_deref(), |config, redis| async move {
        let inspector = Inspector::new(redis.conn, config.redis.key_prefix.clone());
        let id = &args.id;
        let scope = match &args.scope {
            Some(s) => s.clone(),
            None => {
                let scopes = inspector.scopes_of(id).await.map_err(|e| e.to_string())?;
                match scopes.as_slice() {
                    [] => return Err(format!("no job '{id}' in any scope")),
                    [one] => one.clone(),
                    many => {
                        return Err(format!(
                            "job '{id}' exists in several scopes: {}; choose one with --scope",
                            many.join(", ")
                        ))
                    }
                }
            }
        };
        let Some(detail) = inspector.job(&scope, id).await.map_err(|e| e.to_string())? else {
            return Err(format!("no job '{id}' in scope '{scope}'"));
        };
        if args.output.json {
            super::out(&format!("{}\n", output::json(&detail_json(&detail))));
        } else {
            super::out(&detail_text(&detail));
        }
        Ok(())
    })
}

fn state_json(s: JobState) -> Value {
    json!({"main": s.main.name(), "sub": s.sub.map(|x| x.name())})
}

fn raw(v: &serde_json::value::RawValue) -> Value {
    serde_json::from_str(v.get()).unwrap_or_else(|_| Value::String(v.get().to_owned()))
}

fn summary_json(j: &JobSummary) -> Value {
    json!({
        "scope": j.scope,
        "id": j.job.id,
        "state": state_json(j.job.state),
        "version": j.job.version,
        "updated": j.updated_ms.map(super::time),
        "has_response": j.job.response.is_some(),
    })
}

fn status_text(s: &Status) -> String {
    match s {
        Status::Failed(why) => format!("Failed: {why}"),
        other => format!("{other:?}"),
    }
}

fn execution_json(e: &ExecutionDetail) -> Value {
    let x = &e.execution;
    json!({
        "version": e.version,
        "status": status_text(x.status()),
        "started": super::time(x.started_ms()),
        "ended": x.ended_ms().map(super::time),
        "paused_since": x.paused_at_ms().map(super::time),
        "current_steps": x.active_steps().iter().map(|(step, run)| json!({
            "step": step, "activation": run.activation, "entered": super::time(run.entered_ms),
        })).collect::<Vec<_>>(),
        "actions": x.action_runs().iter().map(|(name, run)| json!({
            "action": name,
            "state": format!("{:?}", run.state),
            "activation": run.activation,
            "attempt": run.attempt,
            "command_id": run.command_id,
            "deadline": run.deadline_ms.map(super::time),
            "timer": run.timer.map(|t| t.to_string()),
        })).collect::<Vec<_>>(),
        "results": x.results(),
        "timers": e.timers.iter().map(|t| json!({"key": t.key, "due": super::time(t.due_ms)})).collect::<Vec<_>>(),
        "history": x.history().map(|h| json!({
            "step": h.step, "activation": h.activation,
            "entered": super::time(h.entered_ms), "left": h.left_ms.map(super::time),
        })).collect::<Vec<_>>(),
    })
}

fn detail_json(d: &JobDetail) -> Value {
    json!({
        "scope": d.scope,
        "id": d.job.id,
        "version": d.job.version,
        "updated": d.updated_ms.map(super::time),
        "state": state_json(d.job.state),
        "cause": d.job.cause,
        "order": raw(&d.job.order),
        "execution": d.execution.as_ref().map(execution_json),
        "response": d.job.response.as_deref().map(raw),
    })
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn section(out: &mut String, title: &str, body: &str) {
    out.push_str(&format!("\n{title}:\n{body}\n"));
}

fn detail_text(d: &JobDetail) -> String {
    let mut out = format!(
        "Job:      {}\nScope:    {}\nState:    {}\nVersion:  {}\nUpdated:  {}\nCause:    {}\n",
        d.job.id,
        d.scope,
        d.job.state,
        d.job.version,
        d.updated_ms.map_or_else(|| "-".into(), super::time),
        d.job.cause.as_deref().unwrap_or("-"),
    );
    section(&mut out, "Order", &pretty(&raw(&d.job.order)));
    match &d.execution {
        None => section(
            &mut out,
            "Execution",
            "(none: no SFC recipe started for this job)",
        ),
        Some(e) => {
            let x = &e.execution;
            let mut head = format!(
                "{} (version {}, started {}",
                status_text(x.status()),
                e.version,
                super::time(x.started_ms())
            );
            if let Some(end) = x.ended_ms() {
                head.push_str(&format!(", ended {}", super::time(end)));
            }
            if let Some(p) = x.paused_at_ms() {
                head.push_str(&format!(", paused since {}", super::time(p)));
            }
            head.push(')');
            section(&mut out, "Execution", &head);
            let steps = x.active_steps().iter().map(|(s, r)| {
                vec![
                    s.clone(),
                    r.activation.to_string(),
                    super::time(r.entered_ms),
                ]
            });
            section(
                &mut out,
                "Current steps",
                &or_none(
                    x.active_steps().is_empty(),
                    output::table(["STEP", "ACTIVATION", "ENTERED"], steps),
                ),
            );
            let actions = x.action_runs().iter().map(|(name, r)| {
                vec![
                    name.clone(),
                    format!("{:?}", r.state),
                    r.activation.to_string(),
                    r.attempt.to_string(),
                    r.command_id.clone(),
                ]
            });
            section(
                &mut out,
                "Actions",
                &or_none(
                    x.action_runs().is_empty(),
                    output::table(
                        ["ACTION", "STATE", "ACTIVATION", "ATTEMPT", "COMMAND ID"],
                        actions,
                    ),
                ),
            );
            let results = x
                .results()
                .iter()
                .map(|(name, v)| vec![name.clone(), v.to_string()]);
            section(
                &mut out,
                "Action results",
                &or_none(
                    x.results().is_empty(),
                    output::table(["ACTION", "RESULT"], results),
                ),
            );
            let timers = e
                .timers
                .iter()
                .map(|t| vec![t.key.clone(), super::time(t.due_ms)]);
            section(
                &mut out,
                "Pending timers",
                &or_none(e.timers.is_empty(), output::table(["TIMER", "DUE"], timers)),
            );
            let history = x.history().map(|h| {
                vec![
                    h.step.clone(),
                    h.activation.to_string(),
                    super::time(h.entered_ms),
                    h.left_ms.map_or_else(|| "-".into(), super::time),
                ]
            });
            section(
                &mut out,
                "Step history",
                &or_none(
                    x.history().len() == 0,
                    output::table(["STEP", "ACTIVATION", "ENTERED", "LEFT"], history),
                ),
            );
        }
    }
    section(
        &mut out,
        "Response",
        &d.job
            .response
            .as_deref()
            .map_or_else(|| "(none)".into(), |r| pretty(&raw(r))),
    );
    out
}

fn or_none(empty: bool, table: String) -> String {
    if empty {
        "(none)".into()
    } else {
        table
    }
}
