//! The `microdcs` command line: one file per command, the flags defined once
//! (clap derive) and the help generated from them.
//!
//! Exit codes: 0 success, 1 the command failed (e.g. invalid configuration),
//! 2 the command line itself is wrong.
//!
//! The `APP_*` environment variables are the configuration module's
//! (`microdcs::config`), not options of this command line.

mod audit;
mod completions;
mod config_check;
mod dlq;
mod init;
mod jobs;
mod output;
mod recipe;
mod run;
mod sim;

use clap::{CommandFactory, Parser, Subcommand};
use std::io::Write;
use std::process::ExitCode;

/// Where the configuration comes from; shown by every command that reads it.
const CONFIG_SOURCES: &str = "\
The configuration is read from an optional TOML file (--config FILE) and from
environment variables (the MicroDCS names: APP_MQTT_HOSTNAME,
APP_REDIS_HOSTNAME, POD_ID, ...); the environment wins. See
microdcs.example.toml for every setting.";

/// What a recipe FILE may hold; shown by the `recipe` commands.
const RECIPE_FILE: &str = "\
FILE is JSON: the recipe itself ({\"Steps\": ..., \"Transitions\": ..., \"Actions\": ...}),
or a work master that carries it ({\"ID\": ..., \"data\": <recipe>, \"dataschema\": ...}),
whose dataschema must be exactly the SFC recipe schema (else the station never
runs it). `-` reads standard input.";

/// microdcs: distributed sequence control for manufacturing stations (OPC UA
/// Machinery Jobs over CloudEvents/MQTT v5, coordinated through Redis).
#[derive(Debug, Parser)]
#[command(
    name = "microdcs",
    version,
    override_usage = "microdcs run [--config FILE]\n       \
                      microdcs config check [--config FILE]\n       \
                      microdcs recipe check FILE\n       \
                      microdcs recipe graph FILE\n       \
                      microdcs sim [--config FILE] [--host H] [--port P] [--seed N]\n       \
                      microdcs jobs list [--scope S] [--state STATE] [--json]\n       \
                      microdcs jobs show ID [--scope S] [--json]\n       \
                      microdcs dlq list [--processor P] [--json]\n       \
                      microdcs dlq show|replay|delete ID [--processor P]\n       \
                      microdcs dlq purge [--processor P]\n       \
                      microdcs audit JOB [--scope S] [--json] [--config FILE]\n       \
                      microdcs init PATH [--name NAME] [--microdcs-path DIR | --microdcs-version V]\n       \
                      microdcs completions SHELL",
    after_help = CONFIG_SOURCES,
    subcommand_required = true,
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The commands.
#[derive(Debug, PartialEq, Eq, Subcommand)]
enum Command {
    Run(run::Args),
    Sim(sim::Args),
    /// Validate the configuration (`config check`)
    #[command(subcommand_required = true, arg_required_else_help = true)]
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Validate or draw an SFC recipe (`recipe check`, `recipe graph`)
    #[command(
        subcommand_required = true,
        arg_required_else_help = true,
        override_usage = "microdcs recipe check FILE\n       microdcs recipe graph FILE",
        after_help = RECIPE_FILE
    )]
    Recipe {
        #[command(subcommand)]
        command: RecipeCommand,
    },
    /// Inspect the jobs a station keeps in Redis (`jobs list`, `jobs show`)
    #[command(
        subcommand_required = true,
        arg_required_else_help = true,
        override_usage = "microdcs jobs list [--scope S] [--state STATE] [--json]\n       \
                          microdcs jobs show ID [--scope S] [--json]"
    )]
    Jobs {
        #[command(subcommand)]
        command: jobs::JobsCommand,
    },
    /// Inspect and replay dead letters kept in Redis (`dlq list|show|replay|delete|purge`)
    #[command(
        subcommand_required = true,
        arg_required_else_help = true,
        override_usage = "microdcs dlq list [--processor P] [--limit N] [--json]\n       \
                          microdcs dlq show ID [--processor P] [--json]\n       \
                          microdcs dlq replay ID [--processor P] [--force]\n       \
                          microdcs dlq delete ID [--processor P]\n       \
                          microdcs dlq purge [--processor P]"
    )]
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    Audit(audit::Args),
    Init(init::Args),
    Completions(completions::Args),
}

/// `config …`.
#[derive(Debug, PartialEq, Eq, Subcommand)]
enum ConfigCommand {
    Check(config_check::Args),
}

/// `recipe …`.
#[derive(Debug, PartialEq, Eq, Subcommand)]
enum RecipeCommand {
    Check(recipe::CheckArgs),
    Graph(recipe::GraphArgs),
}

impl Command {
    fn execute(self) -> ExitCode {
        match self {
            Command::Run(args) => run::run(&args),
            Command::Sim(args) => sim::sim(args),
            Command::Config {
                command: ConfigCommand::Check(args),
            } => config_check::config_check(&args),
            Command::Recipe {
                command: RecipeCommand::Check(args),
            } => recipe::check(&args),
            Command::Recipe {
                command: RecipeCommand::Graph(args),
            } => recipe::graph(&args),
            Command::Jobs { command } => match command {
                jobs::JobsCommand::List(args) => jobs::list(&args),
                jobs::JobsCommand::Show(args) => jobs::show(&args),
            },
            Command::Dlq { command } => match command {
                dlq::DlqCommand::List(args) => dlq::list(&args),
                dlq::DlqCommand::Show(args) => dlq::show(&args),
                dlq::DlqCommand::Replay(args) => dlq::replay(&args),
                dlq::DlqCommand::Delete(args) => dlq::delete(&args),
                dlq::DlqCommand::Purge(args) => dlq::purge(&args),
            },
            Command::Audit(args) => audit::audit(&args),
            Command::Init(args) => init::init(&args),
            Command::Completions(args) => completions::completions(&args),
        }
    }
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// Prints a command-line error, or the help or version asked for; the exit
/// code is clap's (0 for help and version, 2 for a usage error). A usage
/// error ends by naming the help of the command it is about (clap's own
/// hint does not say which command's).
fn usage(error: &clap::Error, args: &[String]) -> ExitCode {
    let code = u8::try_from(error.exit_code()).unwrap_or(2);
    if !error.use_stderr()
        || error.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    {
        // Help or version asked for (stdout), or help instead of an error
        // for a bare `microdcs` or `microdcs recipe` (stderr).
        let _ = error.print();
        return ExitCode::from(code);
    }
    let rendered = error.render().to_string();
    let rendered = rendered.trim_end();
    let rendered = rendered
        .strip_suffix("For more information, try '--help'.")
        .unwrap_or(rendered)
        .trim_end();
    eprintln!(
        "{rendered}\n\nRun `{} --help` for usage.",
        command_path(args)
    );
    ExitCode::from(code)
}

/// `microdcs` followed by the subcommands named at the start of `args`
/// (`microdcs recipe check` for `recipe check --frob`).
fn command_path(args: &[String]) -> String {
    let mut command = Cli::command();
    let mut path = String::from("microdcs");
    for arg in args {
        let Some(sub) = command.find_subcommand(arg).cloned() else {
            break;
        };
        path.push(' ');
        path.push_str(sub.get_name());
        command = sub;
    }
    path
}

/// Starts the multi-threaded async runtime, or says why it cannot.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}

/// For the operator commands: loads the configuration (`--config` and the
/// environment, as `microdcs run` does), opens the station's Redis as the
/// station opens it (`microdcs::station::open_redis`) and runs `f` on a
/// runtime. An error is printed (`error: …`) with exit code 1.
fn with_station_redis<F, Fut>(config: Option<&std::path::Path>, f: F) -> ExitCode
where
    F: FnOnce(microdcs::config::Config, microdcs::Redis) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let config = match microdcs::config::Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let result = runtime.block_on(async move {
        let redis = microdcs::station::open_redis(&config)
            .map_err(|e| format!("cannot open Redis: {e}"))?;
        reach(&redis).await?;
        f(config, redis).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// PINGs `redis` (at most 5 s), so that an operator command that cannot
/// reach it says where it looked, before any query fails less clearly.
async fn reach(redis: &microdcs::Redis) -> Result<(), String> {
    let at = redis.client.addresses();
    let mut conn = redis.conn.clone();
    let cmd = redis::cmd("PING");
    let ping = cmd.query_async::<String>(&mut conn);
    match tokio::time::timeout(std::time::Duration::from_secs(5), ping).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!(
            "cannot reach Redis at {at} (APP_REDIS_HOSTNAME, APP_REDIS_PORT, APP_REDIS_CLUSTER_NODES): {e}"
        )),
        Err(_) => Err(format!("Redis at {at} did not answer PING within 5 s")),
    }
}

/// A time in ms since the Unix epoch as RFC 3339 UTC with milliseconds
/// (`2026-11-30T04:12:07.123Z`), as the operator commands print times.
fn time(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(
            || ms.to_string(),
            |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        )
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let argv = std::iter::once("microdcs".to_owned()).chain(args.iter().cloned());
    match Cli::try_parse_from(argv) {
        Ok(cli) => cli.command.execute(),
        Err(e) => usage(&e, &args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(line: &str) -> Result<Command, clap::Error> {
        let argv = std::iter::once("microdcs").chain(line.split_whitespace());
        Cli::try_parse_from(argv).map(|cli| cli.command)
    }

    fn help(line: &str) -> String {
        match parse(line) {
            Err(e) if e.kind() == ErrorKind::DisplayHelp => e.render().to_string(),
            other => panic!("{line:?} gave no help: {other:?}"),
        }
    }

    fn config_check(config: Option<&str>) -> Command {
        Command::Config {
            command: ConfigCommand::Check(config_check::Args {
                config: config.map(Into::into),
            }),
        }
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn completions_name_every_command_and_bash_accepts_the_script() {
        assert_eq!(
            parse("completions bash").ok(),
            Some(Command::Completions(completions::Args {
                shell: clap_complete::Shell::Bash
            }))
        );
        assert!(parse("completions tcsh").is_err());
        for shell in ["bash", "elvish", "fish", "powershell", "zsh"] {
            let Ok(Command::Completions(args)) = parse(&format!("completions {shell}")) else {
                panic!("{shell} is not accepted");
            };
            let mut out = Vec::new();
            completions::script(args.shell, &mut out);
            let text = String::from_utf8(out).expect("UTF-8");
            for word in [
                "run",
                "config",
                "recipe",
                "sim",
                "completions",
                "init",
                "check",
                "graph",
                "jobs",
                "dlq",
                "replay",
            ] {
                assert!(text.contains(word), "{shell} script lacks {word}");
            }
        }
        // The bash script parses (bash -n) and completes the subcommands.
        let mut out = Vec::new();
        completions::script(clap_complete::Shell::Bash, &mut out);
        let dir = tempfile::tempdir().expect("temporary directory");
        let file = dir.path().join("microdcs.bash");
        std::fs::write(&file, &out).expect("write");
        let probe = format!(
            "source {}; COMP_WORDS=(microdcs re); COMP_CWORD=1; _microdcs microdcs re microdcs; echo \"${{COMPREPLY[@]}}\"",
            file.display()
        );
        let done = std::process::Command::new("bash")
            .args(["-c", &probe])
            .output()
            .expect("bash runs");
        assert!(
            done.status.success(),
            "{}",
            String::from_utf8_lossy(&done.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&done.stdout).trim(), "recipe");
    }

    #[test]
    fn config_check_takes_an_optional_file() {
        assert_eq!(parse("config check").ok(), Some(config_check(None)));
        for line in [
            "config check --config a.toml",
            "config check --config=a.toml",
            "config check -c a.toml",
        ] {
            assert_eq!(
                parse(line).ok(),
                Some(config_check(Some("a.toml"))),
                "{line}"
            );
        }
    }

    #[test]
    fn run_takes_an_optional_file() {
        assert_eq!(
            parse("run -c a.toml").ok(),
            Some(Command::Run(run::Args {
                config: Some("a.toml".into())
            }))
        );
        assert!(parse("run extra").is_err());
    }

    #[test]
    fn recipe_commands_take_one_file() {
        assert_eq!(
            parse("recipe check a.json").ok(),
            Some(Command::Recipe {
                command: RecipeCommand::Check(recipe::CheckArgs {
                    file: "a.json".into()
                })
            })
        );
        assert_eq!(
            parse("recipe graph -").ok(),
            Some(Command::Recipe {
                command: RecipeCommand::Graph(recipe::GraphArgs { file: "-".into() })
            })
        );
        for line in [
            "recipe",
            "recipe frobnicate a.json",
            "recipe check",
            "recipe check a.json b.json",
            "recipe graph --frob a.json",
        ] {
            assert!(parse(line).is_err(), "{line:?}");
        }
    }

    #[test]
    fn init_takes_a_path_a_name_and_one_microdcs_source() {
        assert_eq!(
            parse("init plants/axle --name axle-1 --microdcs-path ../microdcs").ok(),
            Some(Command::Init(init::Args {
                path: "plants/axle".into(),
                name: Some("axle-1".into()),
                microdcs_path: Some("../microdcs".into()),
                microdcs_version: None,
            }))
        );
        assert!(matches!(
            parse("init app --microdcs-version 0.1.0"),
            Ok(Command::Init(init::Args { microdcs_version: Some(v), .. })) if v == "0.1.0"
        ));
        for line in [
            "init",
            "init a b",
            "init app --name",
            "init app --microdcs-path x --microdcs-version 0.1.0",
        ] {
            assert_eq!(parse(line).expect_err(line).exit_code(), 2, "{line:?}");
        }
        assert!(help("--help").contains("init PATH [--name NAME]"));
        assert!(help("init --help").contains("--microdcs-path <DIR>"));
    }

    #[test]
    fn bad_command_lines_are_usage_errors() {
        for line in [
            "",
            "frobnicate",
            "config",
            "config frobnicate",
            "config check --config",
            "config check --config=",
            "config check --config a --config b",
            "config check extra",
        ] {
            let e = parse(line).expect_err(line);
            assert_eq!(e.exit_code(), 2, "{line:?}");
        }
    }

    #[test]
    fn jobs_state_is_a_wire_state_name_in_any_case() {
        use microdcs::jobs::MainState;
        let state = |line: &str| match parse(line) {
            Ok(Command::Jobs {
                command: jobs::JobsCommand::List(a),
            }) => a.state,
            other => panic!("{line}: {other:?}"),
        };
        assert_eq!(state("jobs list"), None);
        assert_eq!(
            state("jobs list --state allowedtostart"),
            Some(MainState::AllowedToStart)
        );
        assert_eq!(
            state("jobs list --state RUNNING --scope s --json"),
            Some(MainState::Running)
        );
        let e = parse("jobs list --state Jogging").expect_err("bad state");
        assert_eq!(e.exit_code(), 2);
        let text = e.render().to_string();
        assert!(
            text.contains("NotAllowedToStart") && text.contains("EndState"),
            "{text}"
        );
        assert!(!text.contains("InitialState"), "{text}");
        for line in [
            "jobs",
            "jobs show",
            "jobs show a b",
            "dlq",
            "dlq show",
            "dlq list x",
        ] {
            assert!(parse(line).is_err(), "{line:?}");
        }
    }

    #[test]
    fn dlq_replay_needs_force_to_say_so() {
        let Ok(Command::Dlq {
            command: dlq::DlqCommand::Replay(a),
        }) = parse("dlq replay 1-0 --processor gate --force")
        else {
            panic!("not a replay");
        };
        assert_eq!(a.id, "1-0");
        assert_eq!(a.processor.as_deref(), Some("gate"));
        assert!(a.force);
    }

    #[test]
    fn operator_times_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(time(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(time(u64::MAX), u64::MAX.to_string());
    }

    #[test]
    fn sim_takes_config_host_port_and_seed() {
        assert_eq!(parse("sim").ok(), Some(Command::Sim(sim::Args::default())));
        assert_eq!(
            parse("sim --config s.toml --host broker -p 1884 --seed=7").ok(),
            Some(Command::Sim(sim::Args {
                config: Some("s.toml".into()),
                host: Some("broker".into()),
                port: Some(1884),
                seed: Some(7),
            }))
        );
        for line in [
            "sim --port x",
            "sim --port 0",
            "sim --seed -1",
            "sim --host",
            "sim extra",
        ] {
            assert!(parse(line).is_err(), "{line:?}");
        }
        assert!(help("--help").contains("sim [--config FILE]"));
        assert!(help("sim -h").contains("--seed"));
    }

    #[test]
    fn help_is_available_at_every_level() {
        let top = help("--help");
        assert!(top.contains("config check"), "{top}");
        assert!(top.contains("recipe graph FILE"), "{top}");
        assert!(help("config help").contains("check"));
        assert!(help("config check --config x -h").contains("--config"));
        assert!(help("recipe -h").contains("graph FILE"));
        assert!(help("recipe check x.json --help").contains("OK: <counts>"));
        let version = parse("--version").expect_err("version");
        assert_eq!(version.kind(), ErrorKind::DisplayVersion);
        assert_eq!(version.exit_code(), 0);
    }

    #[test]
    fn usage_errors_point_at_the_help_of_their_command() {
        let args = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(command_path(&args("recipe check")), "microdcs recipe check");
        assert_eq!(
            command_path(&args("config check -c")),
            "microdcs config check"
        );
        assert_eq!(command_path(&args("frobnicate")), "microdcs");
        assert_eq!(command_path(&args("sim --port x")), "microdcs sim");
    }
}

/// The README's processor snippet is `examples/hello.rs` (built by CI),
/// copied verbatim; this keeps the copy honest.
#[cfg(test)]
mod readme {
    #[test]
    fn the_readme_shows_the_hello_example_verbatim() {
        let readme = include_str!("../../../README.md");
        let example = include_str!("../../../examples/hello.rs");
        assert!(
            readme.contains(&format!("```rust\n{example}```\n")),
            "README.md's processor snippet differs from examples/hello.rs: copy the file again"
        );
    }
}
