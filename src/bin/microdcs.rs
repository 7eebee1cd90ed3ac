//! The `microdcs` command line.
//!
//! ```text
//! microdcs run [--config FILE]            run a station
//! microdcs config check [--config FILE]   validate, print the effective configuration
//! microdcs --help | --version
//! ```
//!
//! Exit codes: 0 success, 1 the command failed (e.g. invalid configuration),
//! 2 the command line itself is wrong.
//!
//! Arguments are parsed by hand to keep the build lean. A command is a
//! variant of `Command`, a line in `COMMANDS` and an arm in `parse` and
//! `execute`.

use microdcs::config::{Config, InstanceIdSource};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Commands shown by `--help`: (usage, description).
const COMMANDS: &[(&str, &str)] = &[
    (
        "run [--config FILE]",
        "Run a station: the machinery-jobs processor and/or the MES publisher",
    ),
    (
        "config check [--config FILE]",
        "Validate the configuration and print the effective settings as TOML",
    ),
];

const ABOUT: &str = "microdcs: distributed sequence control for manufacturing stations \
(OPC UA Machinery Jobs over CloudEvents/MQTT v5, coordinated through Redis)";

const CONFIG_SOURCES: &str = "\
The configuration is read from an optional TOML file and from environment
variables (the MicroDCS names: APP_MQTT_HOSTNAME, APP_REDIS_HOSTNAME, POD_ID,
...); the environment wins. See microdcs.example.toml for every setting.";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    /// Print help for a command path (`[]` = the whole program).
    Help(&'static [&'static str]),
    /// Print the version.
    Version,
    /// `config check`.
    ConfigCheck { config: Option<PathBuf> },
    /// `run`.
    Run { config: Option<PathBuf> },
}

/// A command line that cannot be understood; printed with a usage hint.
#[derive(Debug, PartialEq, Eq)]
struct UsageError {
    message: String,
    /// The command path whose help to point at.
    help_for: &'static [&'static str],
}

fn usage_error(help_for: &'static [&'static str], message: impl Into<String>) -> UsageError {
    UsageError {
        message: message.into(),
        help_for,
    }
}

fn is_help(arg: &str) -> bool {
    matches!(arg, "-h" | "--help" | "help")
}

/// Parses the arguments after the program name.
fn parse(args: &[String]) -> Result<Command, UsageError> {
    let mut args = args.iter().map(String::as_str);
    match args.next() {
        None => Err(usage_error(&[], "no command given")),
        Some(a) if is_help(a) => Ok(Command::Help(&[])),
        Some("-V" | "--version") => Ok(Command::Version),
        Some("config") => match args.next() {
            None => Err(usage_error(
                &["config"],
                "`config` needs a subcommand: check",
            )),
            Some(a) if is_help(a) => Ok(Command::Help(&["config"])),
            Some("check") => parse_config_file(args, &["config", "check"], |config| {
                Command::ConfigCheck { config }
            }),
            Some(other) => Err(usage_error(
                &["config"],
                format!("unknown subcommand `config {other}`"),
            )),
        },
        Some("run") => parse_config_file(args, &["run"], |config| Command::Run { config }),
        Some(other) => Err(usage_error(&[], format!("unknown command `{other}`"))),
    }
}

/// A command whose only option is `--config FILE`: `make` turns the file
/// (if any) into the command; `-h` asks for the command's help.
fn parse_config_file<'a>(
    mut args: impl Iterator<Item = &'a str>,
    help_for: &'static [&'static str],
    make: fn(Option<PathBuf>) -> Command,
) -> Result<Command, UsageError> {
    let mut config = None;
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Command::Help(help_for));
        }
        if let Some(value) = option_value(arg, &["-c", "--config"], &mut args) {
            let value = value.map_err(|m| usage_error(help_for, m))?;
            if config.replace(PathBuf::from(value)).is_some() {
                return Err(usage_error(help_for, "--config given more than once"));
            }
            continue;
        }
        return Err(usage_error(
            help_for,
            format!("unexpected argument `{arg}`"),
        ));
    }
    Ok(make(config))
}

/// If `arg` is one of `names` (`--name value`, `--name=value`), its value.
fn option_value<'a>(
    arg: &'a str,
    names: &[&str],
    rest: &mut impl Iterator<Item = &'a str>,
) -> Option<Result<&'a str, String>> {
    for name in names {
        if arg == *name {
            return Some(match rest.next() {
                Some(v) if !v.is_empty() => Ok(v),
                _ => Err(format!("{name} needs a value")),
            });
        }
        if let Some(v) = arg.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            return Some(if v.is_empty() {
                Err(format!("{name} needs a value"))
            } else {
                Ok(v)
            });
        }
    }
    None
}

fn help(path: &[&str]) -> String {
    match path {
        ["config", "check"] => format!(
            "Usage: microdcs config check [--config FILE]\n\n\
             Loads the configuration exactly as the runtime would, checks every\n\
             setting, and prints the effective configuration as TOML on stdout\n\
             (passwords shown as \"***\"). Problems go to stderr; the exit code is\n\
             0 when the configuration is valid, 1 when it is not.\n\n\
             Options:\n  -c, --config FILE  TOML configuration file\n  -h, --help         Print this help\n\n\
             {CONFIG_SOURCES}\n"
        ),
        ["run"] => format!(
            "Usage: microdcs run [--config FILE]\n\n\
             Runs a station from its configuration: the machinery-jobs processor\n\
             (APP_IS_PROCESSOR_INSTANCE) and the MES publisher of retained topics\n\
             (APP_IS_PUBLISHER_INSTANCE), until SIGTERM or SIGINT, then shuts down\n\
             gracefully within processing.shutdown_grace_period.\n\n\
             Options:\n  -c, --config FILE  TOML configuration file\n  -h, --help         Print this help\n\n\
             {CONFIG_SOURCES}\n"
        ),
        ["config"] => {
            let mut s = String::from("Usage: microdcs config <subcommand>\n\nSubcommands:\n");
            for (usage, about) in COMMANDS {
                if let Some(sub) = usage.strip_prefix("config ") {
                    s.push_str(&format!("  {sub:<28} {about}\n"));
                }
            }
            s
        }
        _ => {
            let mut s = format!("{ABOUT}\n\nUsage: microdcs <command> [options]\n\nCommands:\n");
            for (usage, about) in COMMANDS {
                s.push_str(&format!("  {usage:<30} {about}\n"));
            }
            s.push_str(
                "\nOptions:\n  -h, --help     Print help (also after a command)\n  \
                 -V, --version  Print the version\n\n",
            );
            s.push_str(CONFIG_SOURCES);
            s.push('\n');
            s
        }
    }
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

fn execute(command: Command) -> ExitCode {
    match command {
        Command::Help(path) => {
            out(&help(path));
            ExitCode::SUCCESS
        }
        Command::Version => {
            out(&format!("microdcs {}\n", env!("CARGO_PKG_VERSION")));
            ExitCode::SUCCESS
        }
        Command::ConfigCheck { config } => config_check(config.as_deref()),
        Command::Run { config } => run(config.as_deref()),
    }
}

fn run(path: Option<&Path>) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    microdcs::telemetry::init_logging(config.log_format(), &config.log.level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(microdcs::station::run(&config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn config_check(path: Option<&Path>) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    out(&config.redacted_toml());
    for var in config.unrecognised_env() {
        eprintln!("warning: environment variable {var} is ignored: no setting reads it");
    }
    if config.instance.id_source == InstanceIdSource::Random {
        eprintln!(
            "warning: no POD_ID, instance.id or host name, so the instance id is random and \
             changes on every start (the broker cannot resume the MQTT session)"
        );
    }
    match path {
        Some(p) => eprintln!("configuration OK ({} and environment)", p.display()),
        None => eprintln!("configuration OK (environment only, no --config file)"),
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    match parse(&args) {
        Ok(command) => execute(command),
        Err(e) => {
            eprintln!("error: {}", e.message);
            let cmd = e.help_for.join(" ");
            let cmd = if cmd.is_empty() {
                String::new()
            } else {
                format!(" {cmd}")
            };
            eprintln!("Run `microdcs{cmd} --help` for usage.");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn config_check_takes_an_optional_file() {
        assert_eq!(
            parse(&args("config check")),
            Ok(Command::ConfigCheck { config: None })
        );
        for line in [
            "config check --config a.toml",
            "config check --config=a.toml",
            "config check -c a.toml",
        ] {
            assert_eq!(
                parse(&args(line)),
                Ok(Command::ConfigCheck {
                    config: Some("a.toml".into())
                }),
                "{line}"
            );
        }
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
            assert!(parse(&args(line)).is_err(), "{line:?}");
        }
    }

    #[test]
    fn help_is_available_at_every_level() {
        assert_eq!(parse(&args("--help")), Ok(Command::Help(&[])));
        assert_eq!(parse(&args("config help")), Ok(Command::Help(&["config"])));
        assert_eq!(
            parse(&args("config check --config x -h")),
            Ok(Command::Help(&["config", "check"]))
        );
        assert!(help(&[]).contains("config check"));
        assert!(help(&["config"]).contains("check"));
    }
}
