//! `microdcs audit JOB`: a job's audit trail, read from the station's Redis.

use super::output::{self, OutputArgs};
use microdcs::config::Config;
use microdcs::jobs::audit::{AuditEntry, AuditEvent, StepActivation};
use microdcs::jobs::JobStore;
use std::path::PathBuf;
use std::process::ExitCode;

/// Show a job's audit trail: commands, transitions and steps
///
/// Prints, oldest first, every command received for the job (its method,
/// CloudEvent source, id and correlationid, the ReturnStatus answered),
/// every transition of its state and every step of its SFC recipe (steps
/// entered and left, actions dispatched and ended with their results). The
/// trail lives in Redis beside the job and is removed with it when its
/// retention (jobs.retention_seconds) has passed.
///
/// Without --scope the job is looked for in every scope of the station;
/// a job id found in several scopes needs --scope.
#[derive(Debug, PartialEq, Eq, clap::Args)]
#[command(verbatim_doc_comment, after_help = super::CONFIG_SOURCES)]
pub(crate) struct Args {
    /// The job order id (JobOrderID).
    #[arg(value_name = "JOB")]
    pub(crate) job: String,
    /// The job's scope (the subject of its commands).
    #[arg(long, value_name = "S")]
    pub(crate) scope: Option<String>,
    #[command(flatten)]
    pub(crate) output: OutputArgs,
    /// TOML configuration file.
    #[arg(short, long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
}

/// Reads and prints the trail; exit 1 when the job has none or Redis
/// cannot be read.
pub(crate) fn audit(args: &Args) -> ExitCode {
    let config = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match super::runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    match runtime.block_on(read(&config, args)) {
        Ok((scope, entries)) => {
            if args.output.json {
                super::out(&output::json(&serde_json::json!({
                    "scope": scope,
                    "job": args.job,
                    "entries": entries,
                })));
            } else {
                super::out(&table(&entries));
            }
            super::out("\n");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The scope and trail of the job: in `--scope`, or in the one scope that
/// has a trail for it.
async fn read(config: &Config, args: &Args) -> Result<(String, Vec<AuditEntry>), String> {
    let redis = microdcs::station::open_redis(config)
        .map_err(|e| format!("cannot connect to Redis: {e}"))?;
    super::reach(&redis).await?;
    let store = JobStore::new(
        redis.conn,
        config.redis.key_prefix.clone(),
        std::time::Duration::from_secs(config.jobs.retention_seconds),
    );
    let job = &args.job;
    let scopes = match &args.scope {
        Some(s) => vec![s.clone()],
        None => store.scopes().await.map_err(|e| e.to_string())?,
    };
    let mut found = Vec::new();
    for scope in scopes {
        let entries = store.audit(&scope, job).await.map_err(|e| e.to_string())?;
        if !entries.is_empty() {
            found.push((scope, entries));
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(match &args.scope {
            Some(s) => format!(
                "job '{job}' has no audit trail in scope '{s}' (unknown job, or purged with its trail)"
            ),
            None => format!(
                "job '{job}' has no audit trail in any scope (unknown job, or purged with its trail)"
            ),
        }),
        _ => Err(format!(
            "job '{job}' exists in several scopes ({}): choose one with --scope",
            found
                .iter()
                .map(|(s, _)| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// `TIME KIND WHAT RESULT DETAIL`, one row per entry.
fn table(entries: &[AuditEntry]) -> String {
    let rows = entries.iter().map(|e| {
        let time = chrono::DateTime::from_timestamp_millis(e.time_ms as i64)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_else(|| e.time_ms.to_string());
        let (kind, what, result, detail) = describe(&e.event);
        vec![time, kind.to_owned(), what, result, detail]
    });
    output::table(["TIME", "KIND", "WHAT", "RESULT", "DETAIL"], rows)
}

/// The kind, what happened, its result and the rest, as table cells.
fn describe(event: &AuditEvent) -> (&'static str, String, String, String) {
    let steps = |tag: &str, list: &[StepActivation]| {
        list.iter()
            .map(|s| format!("{tag}{}#{}", s.step, s.activation))
            .collect::<Vec<_>>()
    };
    match event {
        AuditEvent::Command(c) => {
            let mut result = c.status.clone();
            if let Some(r) = &c.reason {
                result.push_str(": ");
                result.push_str(r);
            }
            let mut detail = format!("source={} id={}", c.source, c.id);
            if let Some(corr) = &c.correlationid {
                detail.push_str(&format!(" correlationid={corr}"));
            }
            if let (Some(from), Some(to)) = (&c.from, &c.to) {
                detail = format!("{from} -> {to}  {detail}");
            }
            ("command", c.method.clone(), result, detail)
        }
        AuditEvent::Transition {
            trigger,
            from,
            to,
            cause,
        } => (
            "transition",
            trigger.clone(),
            String::new(),
            format!("{from} -> {to}  cause={cause}"),
        ),
        AuditEvent::Step(r) => {
            let mut what = steps("-", &r.left);
            what.extend(steps("+", &r.entered));
            let result = r
                .actions
                .iter()
                .map(|a| match &a.result {
                    Some(v) => format!("{}={} {v}", a.action, a.state),
                    None => format!("{}={}", a.action, a.state),
                })
                .chain(r.finished.iter().map(|f| format!("finished: {f}")))
                .collect::<Vec<_>>()
                .join("; ");
            let detail = r
                .dispatched
                .iter()
                .map(|d| {
                    format!(
                        "dispatch {} (attempt {}, id {})",
                        d.action, d.attempt, d.command_id
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            ("step", what.join(" "), result, detail)
        }
        AuditEvent::Unknown => ("unknown", String::new(), String::new(), String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use microdcs::jobs::audit::{ActionEnd, CommandRecord, StepRecord};

    fn parse(line: &str) -> Result<crate::Command, clap::Error> {
        let argv = std::iter::once("microdcs").chain(line.split_whitespace());
        crate::Cli::try_parse_from(argv).map(|cli| cli.command)
    }

    #[test]
    fn audit_takes_a_job_and_optional_scope_json_and_config() {
        assert_eq!(
            parse("audit a1 --scope line-1 --json --config s.toml").unwrap(),
            crate::Command::Audit(Args {
                job: "a1".into(),
                scope: Some("line-1".into()),
                output: OutputArgs { json: true },
                config: Some("s.toml".into()),
            })
        );
        assert_eq!(
            parse("audit a1").unwrap(),
            crate::Command::Audit(Args {
                job: "a1".into(),
                scope: None,
                output: OutputArgs::default(),
                config: None,
            })
        );
        assert!(parse("audit").is_err(), "JOB is required");
        assert!(parse("audit a1 b2").is_err(), "one job");
    }

    #[test]
    fn each_kind_reads_as_one_row() {
        let (kind, what, result, detail) = describe(&AuditEvent::Command(CommandRecord {
            method: "Start".into(),
            source: "mes".into(),
            id: "c-1".into(),
            correlationid: None,
            status: "InvalidJobOrderStatus".into(),
            reason: Some("Start is not allowed".into()),
            from: None,
            to: None,
        }));
        assert_eq!((kind, what.as_str()), ("command", "Start"));
        assert_eq!(result, "InvalidJobOrderStatus: Start is not allowed");
        assert_eq!(detail, "source=mes id=c-1");
        let (kind, what, result, _) = describe(&AuditEvent::Step(StepRecord {
            entered: vec![StepActivation {
                step: "B".into(),
                activation: 1,
            }],
            left: vec![StepActivation {
                step: "A".into(),
                activation: 1,
            }],
            actions: vec![ActionEnd {
                action: "a".into(),
                state: "done".into(),
                result: None,
            }],
            ..StepRecord::default()
        }));
        assert_eq!(
            (kind, what.as_str(), result.as_str()),
            ("step", "-A#1 +B#1", "a=done")
        );
    }
}
